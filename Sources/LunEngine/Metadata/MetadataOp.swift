// The journal's vocabulary. Every metadata change is one `MetadataOp`; this file holds, for
// each op, its encoding, its decoding and the one `apply` that performs it, both on the
// running pool (`PoolState.apply`, which then logs the op into the pending record) and when a
// journal record is replayed at open (`PoolState.replay`). What recovery rebuilds is thus what
// was running, by construction. Map entries, store definitions and disk records are logged as
// their new values; the snapshot split and the removal from a chain are one op each, because
// their effect on the maps follows deterministically from the state they act on.
//
// A new op is added here once: a case, its code, its bytes, its checks and its effect.

enum MetadataOp: Equatable {
    /// Segment `segment` of `disk` now maps as `entry`.
    case setEntry(disk: DiskID, segment: Int, entry: LMapEntry)
    /// A store is built from these PSEGs (one per member, in member order).
    case defineStore(store: Int, level: RAIDLevel, members: [StoreMember])
    /// A store that holds no RSEG gives its PSEGs back.
    case freeStore(store: Int)
    /// A disk is created, or its persistent fields change, to this record.
    case putDisk(DiskRecord)
    /// A disk with no map and no chain neighbours is forgotten.
    case dropDisk(DiskID)
    /// The snapshot split: new, empty `predecessor` goes directly below `successor` and shares
    /// everything it has.
    case split(successor: DiskID, predecessor: DiskID)
    /// The disk leaves its chain; its neighbours keep every byte.
    case unlink(DiskID)
    /// The store joins the write-intent set (in-place writes to it may be in flight).
    case intentAdd(store: Int)
    /// The store leaves the write-intent set (its in-place writes are all synced).
    case intentClear(store: Int)
    /// A snapshot on separate storage is created, or its record changes (it became independent).
    case putExternal(ExternalSnapshotRecord)
    /// The pool forgets a snapshot on separate storage (its node stays, without an image).
    case dropExternal(DiskID)
    /// Member `member` of a store now lives on PSEG `to` instead of `from`, whose bytes were
    /// copied there first (a PSEG move or a rebuild, Pool/PSEGMove.swift). Maps never change.
    case moveMember(store: Int, member: Int, from: StoreMember, to: StoreMember)
    /// Rollback (docs/DESIGN.md section 7): new, empty `keeping` is split below `target` (so it
    /// reads target's bytes), then `disk` and `keeping` exchange their contents: map, place in
    /// the chain, size and written flag. `disk` reads what target reads; `keeping` holds what
    /// `disk` held. Every other disk keeps its map and its place.
    case rollback(disk: DiskID, target: DiskID, keeping: DiskID)
    /// The RSEG at `location` is a partial segment: blocks with a bit in `valid` are its own,
    /// the others read from `source` (created, or more bits set; docs/DESIGN.md section 8).
    case putPartial(location: UInt32, source: UInt32, valid: BlockBits)
    /// The partial segment at `location` is complete (filled) or freed: its record goes.
    case dropPartial(location: UInt32)

    /// The op's first byte in a journal record. Codes are part of the on-disk format
    /// (docs/DESIGN.md section 4): never reuse or renumber one.
    enum Code: UInt8, CaseIterable {
        case setEntry = 1, defineStore = 2, freeStore = 3, putDisk = 4, dropDisk = 5
        case split = 6, unlink = 7, intentAdd = 8, intentClear = 9
        case putExternal = 10, dropExternal = 11
        case moveMember = 12
        case rollback = 13
        case putPartial = 14, dropPartial = 15
    }

    var code: Code {
        switch self {
        case .setEntry: .setEntry
        case .defineStore: .defineStore
        case .freeStore: .freeStore
        case .putDisk: .putDisk
        case .dropDisk: .dropDisk
        case .split: .split
        case .unlink: .unlink
        case .intentAdd: .intentAdd
        case .intentClear: .intentClear
        case .putExternal: .putExternal
        case .dropExternal: .dropExternal
        case .moveMember: .moveMember
        case .rollback: .rollback
        case .putPartial: .putPartial
        case .dropPartial: .dropPartial
        }
    }

    // MARK: Encoding

    func encode(into w: inout ByteWriter) {
        w.u8(code.rawValue)
        switch self {
        case .setEntry(let disk, let segment, let entry):
            w.varint(UInt64(disk)); w.varint(UInt64(segment)); w.u32(entry.raw)
        case .defineStore(let store, let level, let members):
            w.varint(UInt64(store)); w.u8(level.rawValue)
            for m in members { w.u32(m.packed) }
        case .freeStore(let store), .intentAdd(let store), .intentClear(let store):
            w.varint(UInt64(store))
        case .putDisk(let record):
            record.encode(into: &w)
        case .dropDisk(let disk), .unlink(let disk), .dropExternal(let disk):
            w.varint(UInt64(disk))
        case .putExternal(let record):
            record.encode(into: &w)
        case .split(let successor, let predecessor):
            w.varint(UInt64(successor)); w.varint(UInt64(predecessor))
        case .moveMember(let store, let member, let from, let to):
            w.varint(UInt64(store)); w.u8(UInt8(member)); w.u32(from.packed); w.u32(to.packed)
        case .rollback(let disk, let target, let keeping):
            w.varint(UInt64(disk)); w.varint(UInt64(target)); w.varint(UInt64(keeping))
        case .putPartial(let location, let source, let valid):
            w.varint(UInt64(location)); w.varint(UInt64(source))
            for i in 0..<4 { w.u64(valid.words[i]) }
        case .dropPartial(let location):
            w.varint(UInt64(location))
        }
    }

    // MARK: Decoding

    /// Reads one op; `.corrupt` if its bytes cannot be one (a record's checksum held, so this
    /// means a format mismatch or a bug, and replay stops there).
    static func decode(from r: inout ByteReader) throws(LunError) -> MetadataOp {
        let byte = try r.u8()
        guard let code = Code(rawValue: byte) else { throw .corrupt("unknown journal op \(byte)") }
        func disk() throws(LunError) -> DiskID {
            let v = try r.varint()
            guard v <= UInt64(DiskID.max) else { throw .corrupt("journal disk id \(v) is out of range") }
            return DiskID(v)
        }
        func store() throws(LunError) -> Int {
            let v = try r.varint()
            guard v <= UInt64(LMapEntry.maxStoreID) else { throw .corrupt("journal store id \(v) is out of range") }
            return Int(v)
        }
        func rsegLocation() throws(LunError) -> UInt32 {
            let v = try r.varint()
            guard v <= UInt64(LMapEntry.maxStoreID) << 3 | 7 else { throw .corrupt("journal RSEG location \(v) is out of range") }
            return UInt32(v)
        }
        switch code {
        case .setEntry:
            let d = try disk()
            let k = try r.varint()
            let e = LMapEntry(raw: try r.u32())
            guard e.isWellFormed, k < UInt64(Int.max) else { throw .corrupt("journal entry \(e.raw) for disk \(d) segment \(k)") }
            return .setEntry(disk: d, segment: Int(k), entry: e)
        case .defineStore:
            let id = try store()
            let raw = try r.u8()
            guard let level = RAIDLevel(rawValue: raw) else { throw .corrupt("journal store \(id): RAID level \(raw)") }
            var members: [StoreMember] = []
            for _ in 0..<level.memberCount { members.append(StoreMember(packed: try r.u32())) }
            return .defineStore(store: id, level: level, members: members)
        case .freeStore: return .freeStore(store: try store())
        case .putDisk: return .putDisk(try DiskRecord.decode(from: &r))
        case .dropDisk: return .dropDisk(try disk())
        case .split: return .split(successor: try disk(), predecessor: try disk())
        case .unlink: return .unlink(try disk())
        case .intentAdd: return .intentAdd(store: try store())
        case .intentClear: return .intentClear(store: try store())
        case .putExternal: return .putExternal(try ExternalSnapshotRecord.decode(from: &r))
        case .dropExternal: return .dropExternal(try disk())
        case .moveMember:
            let id = try store()
            let member = Int(try r.u8())
            return .moveMember(store: id, member: member, from: StoreMember(packed: try r.u32()), to: StoreMember(packed: try r.u32()))
        case .rollback: return .rollback(disk: try disk(), target: try disk(), keeping: try disk())
        case .putPartial:
            let location = try rsegLocation(), source = try rsegLocation()
            var valid = BlockBits.none
            for i in 0..<4 { valid.words[i] = try r.u64() }
            return .putPartial(location: location, source: source, valid: valid)
        case .dropPartial: return .dropPartial(location: try rsegLocation())
        }
    }

    // MARK: Applying

    /// Performs the op on `state`. Throws `.corrupt` when the state cannot take it (in replay:
    /// damaged or mismatched metadata; at run time `PoolState.apply` turns it into a crash,
    /// since the engine itself broke an invariant). Nothing is changed when it throws. Returns
    /// the RSEGs the op left without a holder (only `unlink` frees any).
    @discardableResult
    func apply(to state: PoolState) throws(LunError) -> [(store: Int, rseg: Int)] {
        func disk(_ id: DiskID) throws(LunError) -> Disk {
            guard let d = state.disks[id] else { throw .corrupt("\(self) names missing disk \(id)") }
            return d
        }
        switch self {
        case .setEntry(let id, let k, let e):
            let d = try disk(id)
            guard UInt64(k) < PoolGeometry.maxDiskSizeBytes / state.segmentSize else { throw .corrupt("\(self): segment out of range") }
            d.map.set(k, e)
        case .defineStore(let id, let level, let members):
            guard id < state.rsds.capacity, !state.rsds.isLive(id) else { throw .corrupt("\(self): store \(id) is out of range or defined") }
            state.rsds.define(id, level: level, members: members)
        case .freeStore(let id):
            guard state.rsds.isLive(id) else { throw .corrupt("\(self): store \(id) is not defined") }
            // In replay the allocator is not built yet; `rebuildDerivedState` builds it after.
            if !state.replaying {
                for m in state.rsds.memberList(id) { state.psegs.release(drive: m.drive, pseg: m.pseg) }
            }
            state.rsds.undefine(id)
            state.forgetIntent(id)
        case .putDisk(let record):
            try state.install(record)
        case .dropDisk(let id):
            let d = try disk(id)
            guard d.map.mappedCount == 0, d.predecessor == nil, d.successor == nil, state.externals[id] == nil else {
                throw .corrupt("\(self): disk \(id) still maps segments, sits in a chain or has an external file")
            }
            state.disks[id] = nil
            d.removed = true
        case .split(let xID, let pID):
            let x = try disk(xID), p = try disk(pID)
            guard xID != pID, p.map.mappedCount == 0, p.predecessor == nil, p.successor == nil else {
                throw .corrupt("\(self): the new predecessor \(pID) is not an empty disk outside any chain")
            }
            // At run time the snapshot was created in its disk's family; in replay nobody else
            // sees the disks yet, so it joins it here.
            if state.replaying { p.family = x.family }
            guard p.family === x.family else { throw .corrupt("\(self): the snapshot is not in its disk's family") }
            SharingChain.insert(p, below: x)
        case .unlink(let id):
            let x = try disk(id)
            let change = SharingChain.afterRemoval(x)
            // The edits are part of this op: applied here, at run time and in replay alike,
            // and never logged on their own.
            for edit in change.edits { try edit.apply(to: state) }
            state.pendingUnshared.formUnion(change.unshared)
            SharingChain.remove(x, entriesPerLMap: state.geometry.rsegsPerLMAP)
            return change.freed
        case .intentAdd(let store):
            state.intent.insert(store)
            if !state.replaying { state.intentJoinsPending.insert(store) }
        case .intentClear(let store):
            state.forgetIntent(store)
        case .putExternal(let record):
            let d = try disk(record.id)
            guard d.map.mappedCount == 0, d.predecessor == nil, d.successor == nil, record.sizeBytes == d.sizeBytes else {
                throw .corrupt("\(self): disk \(record.id) maps segments, sits in a chain or differs in size")
            }
            if state.externals[record.id] == nil { _ = try disk(record.source) }
            state.externals[record.id] = record
        case .dropExternal(let id):
            guard state.externals[id] != nil else { throw .corrupt("\(self): disk \(id) has no external file") }
            state.externals[id] = nil
        case .moveMember(let id, let m, let from, let to):
            guard let level = state.rsds.level(id), m < level.memberCount, state.rsds.member(id, m) == from, to != from,
                  to.drive < state.psegs.psegCount.count, to.pseg >= state.geometry.quorumPSEGs,
                  to.pseg < state.psegs.psegCount[to.drive] else {
                throw .corrupt("\(self): store \(id) has no such member, or the new PSEG is out of range")
            }
            // At run time the mover took `to` from the allocator and gives `from` back once
            // this op is durable; in replay the allocator is built after, from the RSDs.
            state.rsds.setMember(id, m, to)
        case .rollback(let xID, let tID, let nID):
            let x = try disk(xID), t = try disk(tID), n = try disk(nID)
            guard Set([xID, tID, nID]).count == 3, n.map.mappedCount == 0, n.predecessor == nil, n.successor == nil,
                  SharingChain.sameChain(x, t) else {
                throw .corrupt("\(self): the target is not in the disk's chain, or the kept disk is not new and empty")
            }
            // As for the split: in replay the new disk joins the chain's family here.
            if state.replaying { n.family = x.family }
            guard n.family === x.family else { throw .corrupt("\(self): the kept disk is not in the chain's family") }
            SharingChain.insert(n, below: t)
            SharingChain.exchangeContents(x, n)
        case .putPartial(let location, let source, let valid):
            for loc in [location, source] where !state.rsds.isLive(Int(loc >> 3)) || Int(loc & 7) >= state.geometry.rsegsPerStore {
                throw .corrupt("\(self): RSEG \(loc >> 3).\(loc & 7) is not in a defined store")
            }
            try state.partials.put(location: location, source: source, bits: valid)
        case .dropPartial(let location):
            if let source = try state.partials.drop(location), !state.replaying {
                // The committed records may still read the source: no in-place write to it
                // before this drop is durable, and an orphan is freed with it.
                state.pendingUnshared.insert(source)
                if state.partials.orphans.remove(source) != nil {
                    state.pendingFree.append((Int(source >> 3), Int(source & 7)))
                }
            }
        }
        return []
    }
}
