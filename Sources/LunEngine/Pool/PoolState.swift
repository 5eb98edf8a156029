// The pool's metadata in memory: disks and their maps, the RSD table, the PSEG allocator and
// the journal ops not yet committed. Every change goes through an `apply...` method that both
// changes the state and logs the op, and replay calls the same methods, so what is recovered
// is what was running. Callers hold `Pool.stateLock` (and, to change a map, the family lock).
import Synchronization

final class PoolState: @unchecked Sendable {
    let geometry: PoolGeometry
    var disks: [DiskID: Disk] = [:]
    var nextDiskID: DiskID = 1
    let rsds: RSDTable
    var psegs: PSEGAllocator
    /// Stores of each level that have a free RSEG, most recent last (ids may be stale).
    private var partialStores: [UInt8: [Int]] = [:]
    /// Ops applied since the last commit, encoded as the next journal record's payload.
    var journal = ByteWriter(capacity: 4096)
    var journalOpCount = 0
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

    func applyIntentAdd(_ store: Int, now seconds: Double) {
        intent.insert(store)
        intentJoinsPending.insert(store)
        intentLastWrite[store] = (intentClock, seconds)
        log(.intentAdd) { $0.varint(UInt64(store)) }
    }

    func applyIntentClear(_ store: Int) {
        intent.remove(store)
        intentDurable.remove(store)
        intentJoinsPending.remove(store)
        intentLastWrite[store] = nil
        log(.intentClear) { $0.varint(UInt64(store)) }
    }

    /// A freed store leaves the set with it (no op: replay of the free does the same).
    func forgetIntent(_ store: Int) {
        intent.remove(store); intentDurable.remove(store); intentJoinsPending.remove(store); intentLastWrite[store] = nil
    }

    /// Logs the departure of every store whose in-place writes are all synced and that has
    /// had none for a while. Called by a commit before it takes the pending record.
    func clearIdleIntents(now seconds: Double) {
        for s in intent where intentWriters[s] == nil && intentDurable.contains(s) {
            let last = intentLastWrite[s] ?? (0, 0)
            if last.clock <= intentClock - Self.intentIdleCommits && seconds - last.seconds >= Self.intentIdleSeconds {
                applyIntentClear(s)
            }
        }
    }

    /// Segments set aside for fully reserved snapshots (sum of their `reservedSegments`).
    var reservedTotal = 0
    /// RSEGs in use or pending free.
    var usedRSEGs = 0
    private var replaying = false

    init(geometry: PoolGeometry, psegCount: [Int]) {
        self.geometry = geometry
        let dataPSEGs = psegCount.reduce(0) { $0 + max(0, $1 - geometry.quorumPSEGs) }
        rsds = RSDTable(capacity: dataPSEGs / 4 + 1)
        psegs = PSEGAllocator(psegCount: psegCount, quorumPSEGs: geometry.quorumPSEGs)
    }

    var segmentSize: UInt64 { geometry.rsegSizeBytes }

    func disk(_ id: DiskID) -> Disk? { disks[id] }

    // MARK: Logged ops

    private func log(_ op: MetadataOpCode, _ body: (inout ByteWriter) -> Void) {
        if replaying { return }
        journal.u8(op.rawValue)
        body(&journal)
        journalOpCount += 1
    }

    func applySetEntry(_ d: Disk, _ k: Int, _ e: LMapEntry) {
        d.map.set(k, e)
        log(.setEntry) { $0.varint(UInt64(d.id)); $0.varint(UInt64(k)); $0.u32(e.raw) }
    }

    func applyDefineStore(_ id: Int, level: RAIDLevel, members: [StoreMember]) {
        rsds.define(id, level: level, members: members)
        log(.defineStore) { w in
            w.varint(UInt64(id)); w.u8(level.rawValue)
            for m in members { w.u32(m.packed) }
        }
    }

    func applyFreeStore(_ id: Int) {
        for m in rsds.memberList(id) where !replaying { psegs.release(drive: m.drive, pseg: m.pseg) }
        rsds.undefine(id)
        forgetIntent(id)
        log(.freeStore) { $0.varint(UInt64(id)) }
    }

    /// Logs a disk's record as it now stands (creation or any field change).
    func logDisk(_ d: Disk) {
        log(.putDisk) { DiskRecordCoding.encode(d, into: &$0) }
    }

    func applyDropDisk(_ d: Disk) {
        precondition(d.map.mappedCount == 0 && d.predecessor == nil && d.successor == nil)
        disks[d.id] = nil
        d.removed = true
        log(.dropDisk) { $0.varint(UInt64(d.id)) }
    }

    /// The snapshot split (000 claims 1-6): `p`, new and empty, goes directly below `x` in the
    /// chain, and every segment x has becomes shared: p reads it through x (Ss), and x knows
    /// its predecessor needs it (Sp). No data moves.
    func applySplit(_ x: Disk, _ p: Disk) {
        precondition(p.map.mappedCount == 0 && p.predecessor == nil && p.successor == nil)
        p.predecessor = x.predecessor
        x.predecessor?.successor = p
        p.successor = x
        x.predecessor = p
        if replaying { p.family = x.family }   // nobody else sees the disks during replay
        precondition(p.family === x.family, "a snapshot is created in its disk's family")
        x.map.split(into: &p.map)
        log(.split) { $0.varint(UInt64(x.id)); $0.varint(UInt64(p.id)) }
    }

    /// Takes `x` out of its chain. Its neighbours keep every byte: a segment x held for its
    /// predecessor passes to the predecessor; a segment x read from its successor stays shared
    /// between the neighbours when the predecessor read it too. Returns the RSEGs that nobody
    /// needs any more.
    @discardableResult
    func applyUnlink(_ x: Disk) -> [(store: Int, rseg: Int)] {
        var freed: [(store: Int, rseg: Int)] = []
        let p = x.predecessor, s = x.successor
        x.map.forEachMapped { k, e in
            if e.holdsData {
                if e.sp, let p {
                    p.map.set(k, .held(store: e.store, rseg: e.rseg, sp: p.map.entry(k).sp))
                    pendingUnshared.insert(Self.location(e))
                } else {
                    freed.append((Int(e.store), e.rseg))
                }
            } else if !e.sp, let s {
                pendingUnshared.insert(Self.location(x.holderEntry(k)))
                s.map.set(k, s.map.entry(k).with(sp: false))
            }
        }
        x.map = DiskMap(entriesPerLMap: geometry.rsegsPerLMAP)
        p?.successor = s
        s?.predecessor = p
        x.predecessor = nil
        x.successor = nil
        // x keeps its family: other threads may hold that lock through x, and a disk out of
        // a chain has no image, so sharing a lock with its old chain costs nothing.
        log(.unlink) { $0.varint(UInt64(x.id)) }
        return freed
    }

    static func location(_ e: LMapEntry) -> UInt32 { e.store << 3 | UInt32(e.rseg) }

    // MARK: Disk records

    func newDisk(name: String, parent: DiskID?, family: SharingFamily, size: UInt64, raid: RAIDLevel, now: UInt64) -> Disk {
        let d = Disk(id: nextDiskID, name: name, parent: parent, family: family, sizeBytes: size, raid: raid,
                     createdAt: now, entriesPerLMap: geometry.rsegsPerLMAP)
        nextDiskID += 1
        disks[d.id] = d
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
        var free = psegs.freeCount
        var n = 0
        while chooseMembers(level: level, freeCount: &free) != nil { n += 1; if n > 1 << 20 { break } }
        return n
    }

    /// Picks drives for a new store's members: the drives with the most free PSEGs, all distinct
    /// when there are enough drives; RAID 1 partners and all RAID 5 members are always distinct.
    private func chooseMembers(level: RAIDLevel, freeCount free: inout [Int], available: (Int) -> Bool = { _ in true }) -> [Int]? {
        var chosen: [Int] = []
        for member in 0..<level.memberCount {
            let usable = (0..<free.count).filter { free[$0] > 0 && available($0) }
            var candidates = usable.filter { !chosen.contains($0) }
            if candidates.isEmpty {
                switch level {
                case .raid5: return nil
                case .raid0: candidates = usable
                case .raid1:
                    let partner = member >= 4 ? chosen[member - 4] : -1
                    candidates = usable.filter { $0 != partner }
                }
            }
            guard let best = candidates.max(by: { free[$0] < free[$1] || (free[$0] == free[$1] && $0 > $1) }) else { return nil }
            chosen.append(best)
            free[best] -= 1
        }
        return chosen
    }

    /// Allocates one RSEG of `level`, creating a store if needed; nil when the pool is full.
    func allocateRSEG(level: RAIDLevel, available: (Int) -> Bool) -> (store: Int, rseg: Int)? {
        var stack = partialStores[level.rawValue] ?? []
        while let id = stack.last {
            if rsds.level(id) == level && rsds.usedMask(id) != UInt8(truncatingIfNeeded: (1 << geometry.rsegsPerStore) - 1) {
                let mask = rsds.usedMask(id)
                let rseg = (~mask).trailingZeroBitCount
                rsds.markUsed(id, rseg: rseg)
                usedRSEGs += 1
                partialStores[level.rawValue] = stack
                return (id, rseg)
            }
            stack.removeLast()
        }
        partialStores[level.rawValue] = stack
        var free = psegs.freeCount
        guard let drives = chooseMembers(level: level, freeCount: &free, available: available),
              let id = rsds.firstFreeID(), id <= Int(LMapEntry.maxStoreID) else { return nil }
        var members: [StoreMember] = []
        for d in drives {
            guard let p = psegs.take(drive: d) else { preconditionFailure("free count of drive \(d) is wrong") }
            members.append(StoreMember(drive: d, pseg: p))
        }
        applyDefineStore(id, level: level, members: members)
        rsds.markUsed(id, rseg: 0)
        usedRSEGs += 1
        partialStores[level.rawValue, default: []].append(id)
        return (id, 0)
    }

    /// Returns an RSEG to the free pool now (only for RSEGs no committed state can reference).
    func releaseRSEG(store: Int, rseg: Int) {
        rsds.release(store, rseg: rseg)
        usedRSEGs -= 1
        if rsds.usedMask(store) == 0 {
            applyFreeStore(store)
        } else if let level = rsds.level(store) {
            partialStores[level.rawValue, default: []].append(store)
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
        for id in 0..<rsds.highWater where rsds.isLive(id) {
            if rsds.usedMask(id) == 0 { applyFreeStore(id) } else if let level = rsds.level(id) {
                partialStores[level.rawValue, default: []].append(id)
            }
        }
        // Families: one per chain.
        for d in disks.values where d.predecessor == nil {
            let family = SharingFamily()
            var c: Disk? = d
            while let x = c { x.family = family; c = x.successor }
        }
    }

    // MARK: Checkpoint coding

    func encodeCheckpoint() -> [UInt8] {
        var w = ByteWriter(capacity: 1 << 16)
        w.u32(nextDiskID)
        let live = (0..<rsds.highWater).filter { rsds.isLive($0) }
        w.varint(UInt64(live.count))
        for id in live {
            w.varint(UInt64(id))
            w.u8(rsds.level(id)!.rawValue)
            for m in rsds.memberList(id) { w.u32(m.packed) }
        }
        let ids = disks.keys.sorted()
        w.varint(UInt64(ids.count))
        for id in ids {
            let d = disks[id]!
            DiskRecordCoding.encode(d, into: &w)
            w.varint(UInt64(d.map.mappedCount))
            var last = 0
            d.map.forEachMapped { k, e in
                w.varint(UInt64(k - last)); w.u32(e.raw); last = k
            }
        }
        let intentStores = intent.sorted()
        w.varint(UInt64(intentStores.count))
        for s in intentStores { w.varint(UInt64(s)) }
        return w.bytes
    }

    /// Loads a checkpoint payload; returns how many bytes of it the state took.
    @discardableResult
    func loadCheckpoint(_ bytes: [UInt8]) throws(LunError) -> Int {
        var r = ByteReader(bytes)
        nextDiskID = try r.u32()
        let storeCount = try r.varint()
        for _ in 0..<storeCount {
            let id = Int(try r.varint())
            guard id < rsds.capacity, let level = RAIDLevel(rawValue: try r.u8()) else { throw .corrupt("checkpoint store \(id)") }
            var members: [StoreMember] = []
            for _ in 0..<level.memberCount { members.append(StoreMember(packed: try r.u32())) }
            rsds.define(id, level: level, members: members)
        }
        let diskCount = try r.varint()
        var records: [DiskRecordCoding.Record] = []
        for _ in 0..<diskCount {
            let rec = try DiskRecordCoding.decode(&r)
            let d = upsert(rec)
            let n = try r.varint()
            var k = 0
            for _ in 0..<n {
                k += Int(try r.varint())
                let e = LMapEntry(raw: try r.u32())
                guard e.isWellFormed, e.isMapped else { throw .corrupt("checkpoint disk \(rec.id) segment \(k) entry \(e.raw)") }
                d.map.set(k, e)
            }
            records.append(rec)
        }
        for rec in records { try link(rec) }
        let intentCount = try r.varint()
        for _ in 0..<intentCount { intent.insert(Int(try r.varint())) }
        return r.position
    }

    /// Creates or updates a disk from a record (links are resolved by `link`).
    @discardableResult
    private func upsert(_ rec: DiskRecordCoding.Record) -> Disk {
        let d = disks[rec.id] ?? {
            let n = Disk(id: rec.id, name: rec.name, parent: rec.parent, family: SharingFamily(), sizeBytes: rec.sizeBytes,
                         raid: rec.raid, createdAt: rec.createdAt, entriesPerLMap: geometry.rsegsPerLMAP)
            disks[rec.id] = n
            return n
        }()
        d.name = rec.name
        d.parent = rec.parent
        d.sizeBytes = rec.sizeBytes
        d.raid = rec.raid
        d.hasImage = rec.hasImage
        d.hasWritten = rec.hasWritten
        d.reserveSnapshots = rec.reserveSnapshots
        d.reserved = rec.reserved
        d.createdAt = rec.createdAt
        d.reservedSegments = rec.reservedSegments
        nextDiskID = max(nextDiskID, rec.id + 1)
        return d
    }

    private func link(_ rec: DiskRecordCoding.Record) throws(LunError) {
        let d = disks[rec.id]!
        func find(_ id: DiskID?) throws(LunError) -> Disk? {
            guard let id else { return nil }
            guard let x = disks[id] else { throw .corrupt("disk \(rec.id) links to missing disk \(id)") }
            return x
        }
        d.predecessor = try find(rec.predecessor)
        d.successor = try find(rec.successor)
    }

    // MARK: Replay

    func replay(_ payload: [UInt8]) throws(LunError) {
        replaying = true
        defer { replaying = false }
        var r = ByteReader(payload)
        func disk(_ id: UInt64) throws(LunError) -> Disk {
            guard let d = disks[DiskID(truncatingIfNeeded: id)] else { throw .corrupt("journal names missing disk \(id)") }
            return d
        }
        while r.remaining > 0 {
            guard let op = MetadataOpCode(rawValue: try r.u8()) else { throw .corrupt("unknown journal op") }
            switch op {
            case .setEntry:
                let d = try disk(try r.varint())
                let k = Int(try r.varint())
                let e = LMapEntry(raw: try r.u32())
                guard e.isWellFormed else { throw .corrupt("journal entry \(e.raw)") }
                d.map.set(k, e)
            case .defineStore:
                let id = Int(try r.varint())
                guard id < rsds.capacity, let level = RAIDLevel(rawValue: try r.u8()) else { throw .corrupt("journal store \(id)") }
                var members: [StoreMember] = []
                for _ in 0..<level.memberCount { members.append(StoreMember(packed: try r.u32())) }
                rsds.define(id, level: level, members: members)
            case .freeStore:
                let id = Int(try r.varint())
                guard rsds.isLive(id) else { throw .corrupt("journal frees undefined store \(id)") }
                rsds.undefine(id)
                forgetIntent(id)
            case .putDisk:
                let rec = try DiskRecordCoding.decode(&r)
                upsert(rec)
                try link(rec)
            case .dropDisk:
                let d = try disk(try r.varint())
                disks[d.id] = nil
            case .split:
                let x = try disk(try r.varint()), p = try disk(try r.varint())
                applySplit(x, p)
            case .unlink:
                applyUnlink(try disk(try r.varint()))
            case .intentAdd:
                intent.insert(Int(try r.varint()))
            case .intentClear:
                intent.remove(Int(try r.varint()))
            }
        }
        pendingUnshared.removeAll()
    }
}
