// Group snapshots (issue 15, docs/DESIGN.md sections 7 and 10): one snapshot of several disks
// taken at one instant, so that what a writer did to them in some order is either in all of
// the snapshots or in none. Every chain involved is quiesced before any is split, all splits
// are made in one `stateLock` section (hence one journal record), and only then does I/O go on.

extension Pool {
    /// Takes snapshot `name` of every disk in `ids` at one instant: each chain's blocking flag
    /// is raised in one fixed order (`quiesceOrder`), so two group snapshots cannot wait on
    /// each other; with all of them held, every split is made and logged in one record, which
    /// is committed before this returns. Returns the new snapshot of each disk. Refused with
    /// nothing changed as a single snapshot would be (`.exists` if a disk already has a child
    /// `name`, `.busy` for a copying snapclone or a quiesce that times out, `.noSpace` when
    /// the reserved snapshots among them do not fit together).
    public func createGroupSnapshot(of ids: [DiskID], named name: String,
                                    quiesceTimeoutSeconds: Double = 5) throws(LunError) -> [DiskID: DiskID] {
        try checkWritable()
        try Self.validate(name: name)
        guard !ids.isEmpty else { throw .invalid("a group snapshot needs at least one disk") }
        guard Set(ids).count == ids.count else { throw .invalid("a disk is named twice in the group") }
        var disks: [Disk] = []
        for id in ids {
            let x = try liveDisk(id)
            guard x.hasImage else { throw .notPermitted("\(x.name) has no image to snapshot") }
            guard !isExternalSnapshot(id) else { throw .notPermitted("\(x.name) lives on separate storage; snapshot its file instead") }
            disks.append(x)
        }
        let families = Self.quiesceOrder(disks.map(\.family))
        var raised: [SharingFamily] = []
        defer { for f in raised.reversed() { f.blocking.lower(on: f) } }
        for f in families {
            try f.blocking.raise(on: f, for: "a group snapshot \(name) of \(disks.count) disks", timeoutSeconds: quiesceTimeoutSeconds)
            raised.append(f)
        }
        let snapshots = try stateLock.withLock { () throws(LunError) -> [DiskID: DiskID] in
            try groupSplitStateLocked(disks, named: name)
        }
        for f in raised.reversed() { f.blocking.lower(on: f) }
        raised = []
        // As for one snapshot, the commit runs with I/O going on again (section 10).
        try commit()
        log("group snapshot \(name) of \(disks.map { "\($0.name) (id \($0.id))" }.joined(separator: ", ")) taken: ids \(ids.map { snapshots[$0]! })")
        return snapshots
    }

    /// The order in which an operation that needs several chains still takes their blocking
    /// flags (and so their locks): by the family object's identity, which is fixed for as long
    /// as the family exists and the same in every thread. Each family once.
    static func quiesceOrder(_ families: [SharingFamily]) -> [SharingFamily] {
        var seen = Set<ObjectIdentifier>()
        return families.filter { seen.insert(ObjectIdentifier($0)).inserted }.sorted { ObjectIdentifier($0) < ObjectIdentifier($1) }
    }

    /// Every check first, then every split: nothing is changed unless all of them can be made.
    private func groupSplitStateLocked(_ disks: [Disk], named name: String) throws(LunError) -> [DiskID: DiskID] {
        // The splits add their reservations one after another: check them in the same order.
        var reservedSoFar = state.reservedTotal
        for x in disks {
            guard !x.removed, x.hasImage else { throw .stale("disk \(x.id) was removed") }
            guard x.clone != .copying else {
                throw .busy("\(x.name) is a snapclone still copying; snapshot it once it is independent")
            }
            guard !state.disks.values.contains(where: { $0.parent == x.id && $0.name == name }) else {
                throw .exists("\(x.name)/\(name)")
            }
            let reserve = x.reserveSnapshots ? x.map.mappedCount : 0
            if reserve > 0 {
                let free = state.freeSegments(level: x.raid) - reservedSoFar
                guard free >= reserve else {
                    throw .noSpace("a reserved snapshot of \(x.name) in the group needs \(reserve) segments; \(max(0, free)) are free")
                }
                reservedSoFar += reserve
            }
        }
        var snapshots: [DiskID: DiskID] = [:]
        for x in disks {
            do {
                snapshots[x.id] = try splitStateLocked(x, named: name, reserved: nil).id
            } catch {
                preconditionFailure("group snapshot \(name): the split of \(x.name) failed after its checks passed: \(error)")
            }
        }
        return snapshots
    }
}
