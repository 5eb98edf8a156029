// The checkpoint's payload: the whole metadata state in one piece (stores, disk records with
// their maps, the write-intent set), written by a checkpoint and loaded at open before the
// journal records that follow it are replayed. docs/DESIGN.md section 4 maps its bytes.

extension PoolState {
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
            d.record.encode(into: &w)
            w.varint(UInt64(d.map.mappedCount))
            var last = 0
            d.map.forEachMapped { k, e in
                w.varint(UInt64(k - last)); w.u32(e.raw); last = k
            }
        }
        let intentStores = intent.sorted()
        w.varint(UInt64(intentStores.count))
        for s in intentStores { w.varint(UInt64(s)) }
        // Snapshots on separate storage (absent in checkpoints written before they existed:
        // the zero padding reads as a count of 0).
        w.varint(UInt64(externals.count))
        for id in externals.keys.sorted() { externals[id]!.encode(into: &w) }
        // Partial segments (absent likewise in older checkpoints).
        let partialRecords = partials.all()
        w.varint(UInt64(partialRecords.count))
        for p in partialRecords {
            w.varint(UInt64(p.location)); w.varint(UInt64(p.source))
            let bits = partials.bits(of: p)
            for i in 0..<4 { w.u64(bits.words[i]) }
        }
        // Drives not in the default group (DiskGroups.swift; absent before groups existed).
        w.varint(UInt64(driveGroups.count))
        for d in driveGroups.keys.sorted() { w.varint(UInt64(d)); w.string(driveGroups[d]!) }
        return w.bytes
    }

    /// Loads a checkpoint payload into an empty state; returns how many bytes of it it took.
    @discardableResult
    func loadCheckpoint(_ bytes: [UInt8]) throws(LunError) -> Int {
        var r = ByteReader(bytes)
        nextDiskID = try r.u32()
        let storeCount = try r.varint()
        for _ in 0..<storeCount {
            let id = Int(try r.varint())
            guard id < rsds.capacity, !rsds.isLive(id), let level = RAIDLevel(rawValue: try r.u8()) else {
                throw .corrupt("checkpoint store \(id)")
            }
            var members: [StoreMember] = []
            for _ in 0..<level.memberCount { members.append(StoreMember(packed: try r.u32())) }
            rsds.define(id, level: level, members: members)
        }
        let diskCount = try r.varint()
        var records: [DiskRecord] = []
        let segmentLimit = Int(PoolGeometry.maxDiskSizeBytes / segmentSize)
        for _ in 0..<diskCount {
            let record = try DiskRecord.decode(from: &r)
            let d = createOrUpdate(record)
            let n = try r.varint()
            var k = 0
            for _ in 0..<n {
                k += Int(truncatingIfNeeded: try r.varint())
                let e = LMapEntry(raw: try r.u32())
                guard k >= 0, k < segmentLimit, e.isWellFormed, e.isMapped else {
                    throw .corrupt("checkpoint disk \(record.id) segment \(k) entry \(e.raw)")
                }
                d.map.set(k, e)
            }
            records.append(record)
        }
        // Links once every disk exists.
        for record in records { try install(record) }
        let intentCount = try r.varint()
        for _ in 0..<intentCount { intent.insert(Int(try r.varint())) }
        if r.remaining > 0 {
            let externalCount = try r.varint()
            for _ in 0..<externalCount {
                let record = try ExternalSnapshotRecord.decode(from: &r)
                guard disks[record.id] != nil else { throw .corrupt("checkpoint: external snapshot of missing disk \(record.id)") }
                externals[record.id] = record
            }
        }
        if r.remaining > 0 {
            let partialCount = try r.varint()
            for _ in 0..<partialCount {
                let location = try r.varint(), source = try r.varint()
                var bits = BlockBits.none
                for i in 0..<4 { bits.words[i] = try r.u64() }
                guard location <= UInt64(UInt32.max), source <= UInt64(UInt32.max) else {
                    throw .corrupt("checkpoint: partial segment \(location) reads from \(source)")
                }
                try MetadataOp.putPartial(location: UInt32(location), source: UInt32(source), valid: bits).apply(to: self)
            }
        }
        if r.remaining > 0 {
            let groupCount = try r.varint()
            guard groupCount <= UInt64(DriveSet.maxDrives) else { throw .corrupt("checkpoint: \(groupCount) drive groups") }
            for _ in 0..<groupCount {
                let d = try r.varint()
                let name = try r.string()
                guard d < UInt64(DriveSet.maxDrives), DiskGroups.isValidName(name) else {
                    throw .corrupt("checkpoint: drive \(d) in group \(name)")
                }
                driveGroups[Int(d)] = name
            }
        }
        return r.position
    }
}
