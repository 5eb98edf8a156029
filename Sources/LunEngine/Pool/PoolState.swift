// The pool's metadata in memory: disks and their maps, the RSD table, the PSEG allocator and
// the journal ops not yet committed. Every persistent change is a `MetadataOp` passed to
// `apply`, which performs it and logs it; replay applies the same ops the same way, so what
// is recovered is what was running. Callers hold `Pool.stateLock` (and, to change a map, the
// family lock).
import Synchronization

final class PoolState: @unchecked Sendable {
    let geometry: PoolGeometry
    var disks: [DiskID: Disk] = [:]
    var nextDiskID: DiskID = 1
    let rsds: RSDTable
    var psegs: PSEGAllocator
    /// Stores of each level and group that have a free RSEG, most recent last (ids may be
    /// stale), by `partialKey`.
    private var partialStores: [String: [Int]] = [:]
    /// The group of each drive not in the default one (DiskGroups.swift), kept in the checkpoint.
    var driveGroups: [Int: String] = [:]
    /// Ops applied since the last commit, encoded as the next journal record's payload.
    var journal = ByteWriter(capacity: 4096)
    /// RSEGs freed by ops in `journal`: reusable only once that record is durable.
    var pendingFree: [(store: Int, rseg: Int)] = []
    /// RSEGs that ops in `journal` made less shared than the committed state says: a handoff
    /// to a predecessor, or a neighbour that took its own copy. Their new sole holder must not
    /// write them in place before the commit, or a crash would show the bytes to a disk that
    /// still shares them in the committed maps. Such a write commits first.
    var pendingUnshared = Set<UInt32>() { didSet { updateUnsharedCount() } }
    /// The same for the record a commit is writing now; cleared once it is durable.
    var unsharedInFlight = Set<UInt32>() { didSet { updateUnsharedCount() } }
    /// Size of both sets, readable without the state lock by the in-place write path.
    let unsharedCount = Atomic<Int>(0)

    private func updateUnsharedCount() {
        unsharedCount.store(pendingUnshared.count + unsharedInFlight.count, ordering: .releasing)
    }

    /// Whether an in-place write to this RSEG must wait for a commit.
    func isUnsharedUncommitted(_ location: UInt32) -> Bool {
        pendingUnshared.contains(location) || unsharedInFlight.contains(location)
    }

    // The write-intent set (docs/DESIGN.md section 9): stores that may hold an in-place write
    // whose data and checksum, or whose copies, a crash could leave out of step. Recovery after
    // an unclean shutdown checks these stores and no others.
    /// Stores in the set as logged (durable or in the pending record).
    var intent = Set<Int>()
    /// Stores whose joining is durable: in-place writes to them may go ahead.
    var intentDurable = Set<Int>()
    /// Joins logged in the pending record, and in the record a commit is writing.
    var intentJoinsPending = Set<Int>()
    var intentJoinsInFlight = Set<Int>()
    /// In-place writes running, per store, and the `intentClock` when one last finished.
    var intentWriters: [Int: Int] = [:]
    var intentLastWrite: [Int: (clock: Int, seconds: Double)] = [:]
    /// Commits whose data sync succeeded. A write that ended at clock c is synced once the
    /// clock reads c + 2 (the sync that moved it to c + 2 began after the write ended).
    var intentClock = 0
    /// A store leaves the set after this many synced commits without an in-place write, and
    /// no sooner than this many seconds after the last one. The commits make it safe; the
    /// seconds keep a store that is written now and then from joining (one commit each time)
    /// over and over, since joins are commits and would otherwise age the set themselves.
    static let intentIdleCommits = 3
    static let intentIdleSeconds = 30.0

    /// Takes a store out of the set and out of its bookkeeping (`intentClear`, `freeStore`).
    func forgetIntent(_ store: Int) {
        intent.remove(store); intentDurable.remove(store); intentJoinsPending.remove(store); intentLastWrite[store] = nil
    }

    /// Logs the departure of every store whose in-place writes are all synced and that has
    /// had none for a while. Called by a commit before it takes the pending record.
    func clearIdleIntents(now seconds: Double) {
        for s in intent where intentWriters[s] == nil && intentDurable.contains(s) {
            let last = intentLastWrite[s] ?? (0, 0)
            if last.clock <= intentClock - Self.intentIdleCommits && seconds - last.seconds >= Self.intentIdleSeconds {
                apply(.intentClear(store: s))
            }
        }
    }

    /// Snapshots on separate storage, by their own disk id (External/), and how many there
    /// are, and how many still copy, readable without the state lock by the I/O paths.
    var externals: [DiskID: ExternalSnapshotRecord] = [:] {
        didSet {
            externalCount.store(externals.count, ordering: .releasing)
            activeExternalCount.store(externals.values.filter { !$0.independent && !$0.lost }.count, ordering: .releasing)
        }
    }
    let externalCount = Atomic<Int>(0)
    let activeExternalCount = Atomic<Int>(0)

    /// Partial segments (copy on first write in blocks, docs/DESIGN.md section 8).
    let partials = PartialSegmentTable()

    /// Segments set aside for fully reserved snapshots (sum of their `reservedSegments`).
    var reservedTotal = 0
    /// RSEGs in use or pending free.
    var usedRSEGs = 0
    /// Set while journal records are applied at open (ops skip what only the running pool needs).
    private(set) var replaying = false

    init(geometry: PoolGeometry, psegCount: [Int]) {
        self.geometry = geometry
        let dataPSEGs = psegCount.reduce(0) { $0 + max(0, $1 - geometry.quorumPSEGs) }
        // Twice the stores the drives at open can hold: drives added while the pool is open
        // get stores up to that; a pool grown further uses the rest after its next open.
        rsds = RSDTable(capacity: 2 * (dataPSEGs / 4 + 1))
        psegs = PSEGAllocator(psegCount: psegCount, quorumPSEGs: geometry.quorumPSEGs)
    }

    var segmentSize: UInt64 { geometry.rsegSizeBytes }

    func disk(_ id: DiskID) -> Disk? { disks[id] }

    // MARK: Metadata ops

    /// Performs `op` on the running pool and logs it into the pending journal record. An op
    /// the state cannot take here is a bug in the engine, not damage: it stops the process.
    @discardableResult
    func apply(_ op: MetadataOp) -> [(store: Int, rseg: Int)] {
        precondition(!replaying)
        do {
            let freed = try op.apply(to: self)
            op.encode(into: &journal)
            return freed
        } catch {
            preconditionFailure("metadata op \(op) breaks an invariant: \(error)")
        }
    }

    /// Changes a disk's persistent fields through `MetadataOp.putDisk`.
    func update(_ d: Disk, _ change: (inout DiskRecord) -> Void) {
        var record = d.record
        change(&record)
        apply(.putDisk(record))
    }

    /// Applies a change of the sharing chain at run time: each map edit as a logged op, then
    /// its effect on sharing (`pendingUnshared`, `pendingFree`).
    func apply(_ change: ChainChange) {
        for edit in change.edits { apply(edit) }
        pendingUnshared.formUnion(change.unshared)
        freeAfterCommit(change.freed)
    }

    /// RSEGs no entry holds any more: free once the pending record is durable. A partial
    /// segment's record goes with it; a source some partial segment still reads stays
    /// allocated as an orphan until the last such record is dropped (section 8).
    func freeAfterCommit(_ freed: [(store: Int, rseg: Int)]) {
        for f in freed {
            let location = UInt32(f.store) << 3 | UInt32(f.rseg)
            if partials.record(location) != nil { apply(.dropPartial(location: location)) }
            if partials.isSource(location) {
                partials.orphans.insert(location)
            } else {
                pendingFree.append(f)
            }
        }
    }


    // MARK: Disk records

    /// Creates a disk (id, record, and the family whose lock will guard its map) and logs it.
    @discardableResult
    func newDisk(name: String, parent: DiskID?, family: SharingFamily, size: UInt64, raid: RAIDLevel, now: UInt64,
                 _ configure: (inout DiskRecord) -> Void = { _ in }) -> Disk {
        var record = DiskRecord(id: nextDiskID, name: name, parent: parent, predecessor: nil, successor: nil,
                                sizeBytes: size, raid: raid, hasImage: true, hasWritten: false, reserveSnapshots: false,
                                reserved: false, createdAt: now, reservedSegments: 0)
        configure(&record)
        apply(.putDisk(record))
        let d = disks[record.id]!
        // Nobody else knows the disk yet: its family is set before any lock is taken through it.
        d.family = family
        return d
    }

    // MARK: Allocation

    /// Free RSEGs a level could still get: free ones in its stores plus whole new stores.
    func freeSegments(level: RAIDLevel) -> Int {
        var inStores = 0
        for id in 0..<rsds.highWater where rsds.level(id) == level {
            inStores += geometry.rsegsPerStore - rsds.usedMask(id).nonzeroBitCount
        }
        return inStores + newStoresPossible(level: level) * geometry.rsegsPerStore
    }

    /// How many more stores of `level` the free PSEGs allow, counting distinct-drive rules.
    func newStoresPossible(level: RAIDLevel) -> Int {
        var free = psegs.allocatableFreeCount
        var n = 0
        while chooseMembers(level: level, freeCount: &free) != nil { n += 1; if n > 1 << 20 { break } }
        return n
    }

    /// Picks drives for a new store's members: the drives with the most free PSEGs, all distinct
    /// when there are enough drives; RAID 1 partners and all RAID 5 members are always distinct.
    /// Only drives in service (`available`) are chosen, except that a RAID 1 or RAID 5 store
    /// that cannot be placed on them alone is built degraded from birth: the one member per
    /// RAID 5 store (per RAID 1 pair) that finds no drive in service of its own goes on a
    /// drive out of service (missing, stale or failed) with a free PSEG. Nothing is written
    /// there; the store reads and writes as any degraded store does, and when the drive comes
    /// back as stale, its rebuild (RedundancyResync) fills that member like every other. So
    /// a pool with a drive missing still accepts writes until space is really gone.
    /// Only drives in `allowed` (one RSS) are considered, when it is given.
    private func chooseMembers(level: RAIDLevel, freeCount free: inout [Int], available: (Int) -> Bool = { _ in true },
                               allowed: Set<Int>? = nil) -> [Int]? {
        var chosen: [Int] = []
        let inRSS = { (d: Int) in allowed?.contains(d) ?? true }
        for member in 0..<level.memberCount {
            let usable = (0..<free.count).filter { free[$0] > 0 && available($0) && inRSS($0) }
            var candidates = usable.filter { !chosen.contains($0) }
            // A RAID 1 partner chosen before this member (StoreLayout pairs members c and c + 4).
            let partner = StoreLayout.partner(level: level, member: member).flatMap { $0 < member ? chosen[$0] : nil } ?? -1
            if candidates.isEmpty {
                switch level {
                case .raid5: break
                case .raid0: candidates = usable
                case .raid1: candidates = usable.filter { $0 != partner }
                }
            }
            if candidates.isEmpty && level != .raid0 {
                // Degraded from birth, while the store keeps a full copy on drives in service.
                let outAlready = level == .raid5 ? chosen.contains { !available($0) } : (partner >= 0 && !available(partner))
                if !outAlready {
                    let out = (0..<free.count).filter { free[$0] > 0 && !available($0) && $0 != partner && inRSS($0) }
                    candidates = level == .raid1 ? out : out.filter { !chosen.contains($0) }
                }
            }
            guard let best = candidates.max(by: { free[$0] < free[$1] || (free[$0] == free[$1] && $0 > $1) }) else { return nil }
            chosen.append(best)
            free[best] -= 1
        }
        return chosen
    }

    /// Allocates one RSEG of `level` in `group`, creating a store if needed (its members all
    /// in one RSS of the group: the one where it finds the most free PSEGs); nil when the
    /// group is full.
    func allocateRSEG(level: RAIDLevel, group: String = DiskGroups.defaultGroup, available: (Int) -> Bool) -> (store: Int, rseg: Int)? {
        let key = partialKey(level, group)
        var stack = partialStores[key] ?? []
        while let id = stack.last {
            if rsds.level(id) == level && rsds.usedMask(id) != UInt8(truncatingIfNeeded: (1 << geometry.rsegsPerStore) - 1)
                && self.group(ofStore: id) == group {
                let mask = rsds.usedMask(id)
                let rseg = (~mask).trailingZeroBitCount
                rsds.markUsed(id, rseg: rseg)
                usedRSEGs += 1
                partialStores[key] = stack
                return (id, rseg)
            }
            stack.removeLast()
        }
        partialStores[key] = stack
        let free = psegs.allocatableFreeCount
        var best: (drives: [Int], free: Int)?
        for rss in redundantStorageSets(of: group) {
            var scratch = free
            guard let drives = chooseMembers(level: level, freeCount: &scratch, available: available, allowed: Set(rss)) else { continue }
            let room = rss.reduce(0) { $0 + free[$1] }
            if best == nil || room > best!.free { best = (drives, room) }
        }
        guard let drives = best?.drives,
              let id = rsds.firstFreeID(), id <= Int(LMapEntry.maxStoreID) else { return nil }
        var members: [StoreMember] = []
        for d in drives {
            guard let p = psegs.take(drive: d) else { preconditionFailure("free count of drive \(d) is wrong") }
            members.append(StoreMember(drive: d, pseg: p))
        }
        apply(.defineStore(store: id, level: level, members: members))
        rsds.markUsed(id, rseg: 0)
        usedRSEGs += 1
        partialStores[key, default: []].append(id)
        return (id, 0)
    }

    /// Returns an RSEG to the free pool now (only for RSEGs no committed state can reference).
    func releaseRSEG(store: Int, rseg: Int) {
        rsds.release(store, rseg: rseg)
        usedRSEGs -= 1
        if rsds.usedMask(store) == 0 {
            apply(.freeStore(store: store))
        } else if let level = rsds.level(store) {
            partialStores[partialKey(level, group(ofStore: store)), default: []].append(store)
        }
    }

    // MARK: Rebuild after load

    /// Derives the allocator, usage counts and families from the maps and the RSD table.
    func rebuildDerivedState() throws(LunError) {
        for id in 0..<rsds.highWater where rsds.isLive(id) {
            for m in rsds.memberList(id) {
                guard m.drive < psegs.psegCount.count, m.pseg < psegs.psegCount[m.drive],
                      !psegs.isUsed(drive: m.drive, pseg: m.pseg) else {
                    throw .corrupt("store \(id) names PSEG \(m.drive):\(m.pseg) that is out of range or used twice")
                }
                psegs.markUsed(drive: m.drive, pseg: m.pseg)
            }
        }
        usedRSEGs = 0
        reservedTotal = 0
        for d in disks.values {
            reservedTotal += d.reservedSegments
            var bad: String?
            d.map.forEachMapped { k, e in
                guard bad == nil, e.holdsData else { return }
                let id = Int(e.store)
                if !rsds.isLive(id) || e.rseg >= geometry.rsegsPerStore || rsds.isUsed(id, rseg: e.rseg) {
                    bad = "disk \(d.id) segment \(k) names RSEG \(id).\(e.rseg) that is undefined or held twice"
                    return
                }
                rsds.markUsed(id, rseg: e.rseg)
                usedRSEGs += 1
            }
            if let bad { throw .corrupt(bad) }
        }
        // Partial segments: each is held by an entry; a source no entry holds is an orphan,
        // allocated for the records that read it.
        partials.orphans = []
        for (source, _) in partials.sources() {
            let id = Int(source >> 3), r = Int(source & 7)
            guard rsds.isLive(id), r < geometry.rsegsPerStore else { throw .corrupt("partial segment source \(id).\(r) is undefined") }
            if !rsds.isUsed(id, rseg: r) {
                rsds.markUsed(id, rseg: r)
                usedRSEGs += 1
                partials.orphans.insert(source)
            }
        }
        for p in partials.all() where !rsds.isLive(Int(p.location >> 3)) || !rsds.isUsed(Int(p.location >> 3), rseg: Int(p.location & 7))
            || partials.orphans.contains(p.location) {
            throw .corrupt("partial segment \(p.location >> 3).\(p.location & 7) is held by no disk")
        }
        for id in 0..<rsds.highWater where rsds.isLive(id) {
            if rsds.usedMask(id) == 0 { apply(.freeStore(store: id)) } else if let level = rsds.level(id) {
                partialStores[partialKey(level, group(ofStore: id)), default: []].append(id)
            }
        }
        // Families: one per chain.
        for d in disks.values where d.predecessor == nil {
            let family = SharingFamily()
            var c: Disk? = d
            while let x = c { x.family = family; c = x.successor }
        }
        if !partials.isEmpty {
            for d in disks.values {
                d.map.forEachMapped { _, e in
                    if e.holdsData, let p = partials.record(SharingChain.location(e)) { p.family = d.family }
                }
            }
        }
    }

    // MARK: Replay

    /// Applies one journal record's ops, as they were applied when they ran.
    func replay(_ payload: [UInt8]) throws(LunError) {
        replaying = true
        defer { replaying = false }
        var r = ByteReader(payload)
        while r.remaining > 0 { try MetadataOp.decode(from: &r).apply(to: self) }
        pendingUnshared.removeAll()
        intentJoinsPending.removeAll()
    }
}
