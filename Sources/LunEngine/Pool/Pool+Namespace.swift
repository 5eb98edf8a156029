// The pool's directory tree: creating disks and snapshots, removing, renaming, and the
// per-disk settings (RAID level, reservations). Each of these commits before it returns, as
// mkdir and rename do on a journaling file system: a crash never undoes what a user saw done.
import Synchronization

extension Pool {
    /// Reserved inside every disk directory for the disk's image.
    public static let imageName = "disk.img"

    static func validate(name: String) throws(LunError) {
        guard !name.isEmpty, name != ".", name != ".." else { throw .invalid("empty or dot name") }
        guard name.utf8.count <= 255 else { throw .nameTooLong("\(name.utf8.count) bytes; at most 255") }
        guard !name.contains("/"), !name.utf8.contains(0) else { throw .invalid("name \(name.debugDescription) contains '/' or NUL") }
        guard name != imageName else { throw .invalid("\(imageName) is reserved for the image") }
    }

    func info(of d: Disk) -> DiskInfo {
        let shared = d.map.sharedCount, unique = d.map.mappedCount - shared
        let seg = geometry.rsegSizeBytes
        return DiskInfo(id: d.id, name: d.name, parent: d.parent, sizeBytes: d.sizeBytes, raid: d.raid,
                        hasImage: d.hasImage, createdAt: d.createdAt,
                        allocatedBytes: UInt64(d.map.mappedCount) * seg, uniqueBytes: UInt64(unique) * seg,
                        sharedBytes: UInt64(shared) * seg, predecessor: d.predecessor?.id, successor: d.successor?.id,
                        reservedBytes: UInt64(d.reservedSegments) * seg, reserved: d.reserved,
                        reserveSnapshots: d.reserveSnapshots, hasWritten: d.hasWritten, kind: kind(of: d),
                        directoryAccess: d.directoryAccess, imageAccess: d.imageAccess,
                        onFull: d.onFull, expendable: d.expendable, group: d.group)
            .withExternalBytes(state.externals[d.id] != nil)
    }

    public func disks() -> [DiskInfo] {
        stateLock.withLock { state.disks.keys.sorted().map { info(of: state.disks[$0]!) } }
    }

    public func info(_ id: DiskID) -> DiskInfo? {
        stateLock.withLock { state.disk(id).map(info(of:)) }
    }

    /// What disk `id` is (`DiskInfo.kind`), nil if it does not exist.
    public func kind(_ id: DiskID) -> DiskKind? {
        stateLock.withLock { state.disk(id).map(kind(of:)) }
    }

    func kind(of d: Disk) -> DiskKind {
        if let external = state.externals[d.id] { return external.independent ? .independent : .snapshot }
        switch d.clone {
        case .copying: return .snapclone
        case .independent: return .independent
        case .none: return d.parent == nil ? .disk : .snapshot
        }
    }

    public func child(named name: String, of parent: DiskID?) -> DiskID? {
        stateLock.withLock { state.disks.values.first { $0.parent == parent && $0.name == name }?.id }
    }

    public func children(of parent: DiskID?) -> [DiskID] {
        stateLock.withLock { state.disks.values.filter { $0.parent == parent }.map(\.id).sorted() }
    }

    public func usage() -> PoolUsage {
        stateLock.withLock {
            let seg = geometry.rsegSizeBytes
            let dataPSEGs = state.psegs.psegCount.reduce(0) { $0 + max(0, $1 - geometry.quorumPSEGs) }
            let rawUsed = UInt64(dataPSEGs - state.psegs.totalFree) * geometry.psegSizeBytes
            let free = max(0, state.freeSegments(level: defaultRAID) - state.reservedTotal)
            return PoolUsage(driveCount: drives.memberSlots.count, missingDrives: drives.missingCount,
                             capacityBytes: UInt64(dataPSEGs) * geometry.psegSizeBytes, rawUsedBytes: rawUsed,
                             usedBytes: UInt64(state.usedRSEGs) * seg, freeBytes: UInt64(free) * seg,
                             reservedBytes: UInt64(state.reservedTotal) * seg, defaultRAID: defaultRAID,
                             segmentSizeBytes: seg)
        }
    }

    /// mkdir at the root: a new, empty (size 0) disk.
    public func createDisk(named name: String, raid: RAIDLevel? = nil) throws(LunError) -> DiskID {
        try checkWritable()
        try Self.validate(name: name)
        let level = raid ?? defaultRAID
        try checkRAIDPossible(level)
        let id = try stateLock.withLock { () throws(LunError) -> DiskID in
            guard !state.disks.values.contains(where: { $0.parent == nil && $0.name == name }) else { throw .exists(name) }
            return state.newDisk(name: name, parent: nil, family: SharingFamily(), size: 0, raid: level, now: now()).id
        }
        try commit()
        log("created disk \(name) (id \(id), \(level))")
        return id
    }

    func checkRAIDPossible(_ level: RAIDLevel) throws(LunError) {
        let needed = level == .raid5 ? 5 : level == .raid1 ? 2 : 1
        guard drives.count >= needed else { throw .invalid("\(level) needs \(needed) drives; the pool has \(drives.count)") }
    }

    /// mkdir inside a disk: the predecessor/successor split. In-flight writes finish and new
    /// ones wait (the family lock taken exclusive); `.busy` if that takes longer than the
    /// timeout. No data moves; the cost is one pass over the map and one commit.
    public func createSnapshot(of id: DiskID, named name: String, reserved: Bool? = nil,
                               quiesceTimeoutSeconds: Double = 5) throws(LunError) -> DiskID {
        try checkWritable()
        try Self.validate(name: name)
        let x = try liveDisk(id)
        guard x.hasImage else { throw .notPermitted("\(x.name) has no image to snapshot") }
        guard !isExternalSnapshot(id) else { throw .notPermitted("\(x.name) lives on separate storage; snapshot its file instead") }
        try x.family.blocking.raise(on: x.family, for: "a snapshot of \(x.name)", timeoutSeconds: quiesceTimeoutSeconds)
        let split = Result { () throws(LunError) -> Disk in try splitLocked(x, named: name, reserved: reserved) }
        x.family.blocking.lower(on: x.family)
        let p = try split.get()
        // The commit runs with the chain's I/O going on again. Redirect-on-write keeps the
        // committed state intact meanwhile: the split shows every segment of x shared with the
        // snapshot, so no write lands in place in one until it is unshared, and the ops that
        // unshare it are logged after the split, so no record carries them without it.
        try commit()
        log("snapshot \(name) of \(x.name) (id \(p.id)) taken")
        return p.id
    }

    /// The split of `createSnapshot`. Caller holds x's family lock exclusive.
    private func splitLocked(_ x: Disk, named name: String, reserved: Bool?) throws(LunError) -> Disk {
        let id = x.id
        guard !x.removed, x.hasImage else { throw .stale("disk \(id) was removed") }
        // Checked with the lock held: makeSnapclone changes it under the same lock.
        guard x.clone != .copying else {
            throw .busy("\(x.name) is a snapclone still copying; snapshot it once it is independent")
        }
        return try stateLock.withLock { () throws(LunError) -> Disk in try splitStateLocked(x, named: name, reserved: reserved) }
    }

    /// The part of the split made under `stateLock` (a group snapshot makes several in one
    /// section, so that one record carries them all). Checks, then changes; nothing changed
    /// when it throws.
    func splitStateLocked(_ x: Disk, named name: String, reserved: Bool?) throws(LunError) -> Disk {
        let id = x.id
        guard !state.disks.values.contains(where: { $0.parent == id && $0.name == name }) else { throw .exists(name) }
        let reserve = (reserved ?? x.reserveSnapshots) ? x.map.mappedCount : 0
        if reserve > 0 {
            let free = state.freeSegments(level: x.raid) - state.reservedTotal
            guard free >= reserve else {
                throw .noSpace("a reserved snapshot of \(x.name) needs \(reserve) segments; \(max(0, free)) are free")
            }
        }
        let p = state.newDisk(name: name, parent: id, family: x.family, size: x.sizeBytes, raid: x.raid, now: now()) {
            $0.hasWritten = x.hasWritten
            $0.reserved = reserved ?? x.reserveSnapshots
            $0.reservedSegments = reserve
            $0.group = x.group
        }
        state.reservedTotal += reserve
        state.apply(.split(successor: x.id, predecessor: p.id))
        return p
    }

    /// The frame of every change to one disk's place in the tree or chain: its family lock
    /// exclusive (no I/O in flight), the state lock, a check that it still exists, the change,
    /// and a commit before returning.
    func changeCommitted(_ id: DiskID, _ change: (Disk) throws(LunError) -> Void) throws(LunError) {
        try checkWritable()
        let x = try liveDisk(id)
        x.family.lockForChange()
        defer { x.family.lock.unlock() }
        try stateLock.withLock { () throws(LunError) in
            guard !x.removed else { throw .stale("disk \(id) was removed") }
            try change(x)
        }
        try commit()
    }

    /// unlink of disk.img: the disk leaves its chain (its neighbours keep their bytes) and its
    /// segments are freed; the directory stays, hollow, for the snapshots below it.
    public func deleteImage(_ id: DiskID) throws(LunError) {
        if isExternalSnapshot(id) { return try dropExternalImage(id) }
        try changeCommitted(id) { (x) throws(LunError) in
            guard x.hasImage else { throw .notFound("\(x.name) has no image") }
            try refuseWhileExternalCopying(x)
            dropImageLocked(x)
            log("deleted image of \(x.name) (id \(id))")
        }
    }

    private func dropImageLocked(_ x: Disk) {
        state.freeAfterCommit(state.apply(.unlink(x.id)))
        state.reservedTotal -= x.reservedSegments
        // A hollow node is no snapclone: nothing is left to copy or to move.
        state.update(x) { $0.reservedSegments = 0; $0.hasImage = false; $0.sizeBytes = 0; $0.clone = .none }
    }

    /// rmdir: removes a node with no children, and its image. `.notEmpty` if it has children.
    public func removeNode(_ id: DiskID) throws(LunError) {
        try removeNode(id, onlyIf: { _ in nil })
    }

    /// `removeNode`, unless `refusal` (asked with the chain's lock and `stateLock` held) names
    /// a reason not to: then `.busy` with that reason, and nothing changes.
    func removeNode(_ id: DiskID, onlyIf refusal: (Disk) -> String?) throws(LunError) {
        if isExternalSnapshot(id) { try dropExternalImage(id) }
        try changeCommitted(id) { (x) throws(LunError) in
            if let reason = refusal(x) { throw .busy(reason) }
            guard !state.disks.values.contains(where: { $0.parent == id }) else {
                throw .notEmpty("\(x.name) has snapshots below it")
            }
            if x.hasImage { dropImageLocked(x) }
            state.apply(.dropDisk(x.id))
            log("removed \(x.name) (id \(id))")
        }
    }

    /// Renames within the same directory. `.exists` if the name is taken.
    public func rename(_ id: DiskID, to name: String) throws(LunError) {
        try checkWritable()
        try Self.validate(name: name)
        try stateLock.withLock { () throws(LunError) in
            guard let d = state.disk(id) else { throw .notFound("disk \(id)") }
            if d.name == name { return }
            guard !state.disks.values.contains(where: { $0.parent == d.parent && $0.name == name }) else { throw .exists(name) }
            state.update(d) { $0.name = name }
        }
        try commit()
    }

    /// Moves an independent disk (a snapclone that finished copying) from its directory to the
    /// pool's root as `name`: it becomes a disk like one made by mkdir at the root. Other disks
    /// and snapshots never move (`.notPermitted`); `.exists` if the name is taken.
    public func moveToRoot(_ id: DiskID, as name: String) throws(LunError) {
        try checkWritable()
        try Self.validate(name: name)
        try stateLock.withLock { () throws(LunError) in
            guard let d = state.disk(id) else { throw .notFound("disk \(id)") }
            guard d.clone == .independent else {
                throw .notPermitted("\(d.name) is in a sharing chain; only an independent disk (a snapclone that finished copying) can move")
            }
            guard !state.disks.values.contains(where: { $0.parent == nil && $0.name == name }) else { throw .exists(name) }
            state.update(d) { $0.parent = nil; $0.name = name; $0.clone = .none }
        }
        try commit()
        log("moved disk \(id) to the root as \(name)")
    }

    /// Changes a disk's RAID level; `.notPermitted` once it has been written.
    public func setRAID(_ id: DiskID, _ level: RAIDLevel) throws(LunError) {
        try checkRAIDPossible(level)
        try changeCommitted(id) { (d) throws(LunError) in
            if d.raid == level { return }
            guard !d.hasWritten, d.map.mappedCount == 0, d.predecessor == nil, d.successor == nil else {
                throw .notPermitted("the RAID level of \(d.name) is fixed once it has been written or snapshotted")
            }
            state.update(d) { $0.raid = level }
        }
    }

    /// Reserves (or releases) a segment for every segment the disk shares, which is all that
    /// copy-on-write can ever need on its behalf. `.noSpace` if the pool cannot set it aside.
    public func setReserved(_ id: DiskID, _ reserved: Bool) throws(LunError) {
        try changeCommitted(id) { (d) throws(LunError) in
            let want = reserved ? d.map.sharedCount : 0
            let extra = want - d.reservedSegments
            if extra > 0 {
                let free = state.freeSegments(level: d.raid) - state.reservedTotal
                guard free >= extra else { throw .noSpace("reserving \(d.name) needs \(extra) more segments; \(max(0, free)) are free") }
            }
            state.reservedTotal += extra
            state.update(d) { $0.reservedSegments = want; $0.reserved = reserved }
        }
    }

    /// Whether snapshots taken of this disk are created reserved.
    public func setReserveSnapshots(_ id: DiskID, _ on: Bool) throws(LunError) {
        try checkWritable()
        try stateLock.withLock { () throws(LunError) in
            guard let d = state.disk(id) else { throw .notFound("disk \(id)") }
            state.update(d) { $0.reserveSnapshots = on }
        }
        try commit()
    }
}

extension Pool {
    /// Heap bytes of the in-memory map (L2MAPs, LMAPs and the RSDs of live stores) and the
    /// MiB it maps; the PSEG bitmaps, a fixed cost of the pool's capacity (1 bit per PSEG),
    /// come separately.
    public func mapMemory() -> (bytes: Int, allocatedMiB: Int, psegBitmapBytes: Int) {
        stateLock.withLock {
            var bytes = state.rsds.liveCount * RSDTable.bytesPerStore
            for d in state.disks.values { bytes += d.map.memoryBytes }
            let bitmaps = state.psegs.psegCount.reduce(0) { $0 + ($1 + 63) / 64 * 8 }
            return (bytes, Int((UInt64(state.usedRSEGs) * geometry.rsegSizeBytes) >> 20), bitmaps)
        }
    }

    /// Drives as `status` shows them: name, size, and whether they are in service.
    public func driveStates() -> [(name: String, available: Bool)] {
        drives.memberSlots.map { (drives.name($0), drives.isAvailable($0)) }
    }

    /// Errors that redundancy hid or that reached a caller since the pool was opened.
    public var driveErrorCount: Int { drives.errorCount.load(ordering: .relaxed) }

    public var poolGeometry: PoolGeometry { geometry }
}
