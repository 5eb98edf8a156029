// The journal's vocabulary. Every metadata change is one of these ops: applied to the
// in-memory state when it happens and encoded into the pending journal record, and applied
// the same way when the journal is replayed. Map entries and store definitions are logged as
// their new values; the snapshot split and the removal from a chain are logged as one op each,
// because their effect on the maps follows deterministically from the state they act on.

enum MetadataOpCode: UInt8 {
    /// disk varint, segment varint, entry u32
    case setEntry = 1
    /// store varint, level u8, members u32 x memberCount
    case defineStore = 2
    /// store varint
    case freeStore = 3
    /// a whole disk record (see DiskRecordCoding)
    case putDisk = 4
    /// disk varint
    case dropDisk = 5
    /// successor varint, new predecessor varint: insert the predecessor below, share everything
    case split = 6
    /// disk varint: hand the disk's share relations to its neighbours and leave the chain
    case unlink = 7
    /// store varint: the store joins the write-intent set (in-place writes may be in flight)
    case intentAdd = 8
    /// store varint: the store leaves the write-intent set (its writes are all synced)
    case intentClear = 9
}

/// The persistent fields of a disk, in journal records and checkpoints alike.
enum DiskRecordCoding {
    static let none: UInt32 = 0xFFFF_FFFF

    static func encode(_ d: Disk, into w: inout ByteWriter) {
        w.u32(d.id)
        w.string(d.name)
        w.u32(d.parent ?? none)
        w.u32(d.predecessor?.id ?? none)
        w.u32(d.successor?.id ?? none)
        w.u64(d.sizeBytes)
        w.u8(d.raid.rawValue)
        w.u8((d.hasImage ? 1 : 0) | (d.hasWritten ? 2 : 0) | (d.reserveSnapshots ? 4 : 0) | (d.reserved ? 8 : 0))
        w.u64(d.createdAt)
        w.varint(UInt64(d.reservedSegments))
    }

    struct Record {
        var id: DiskID, name: String, parent: DiskID?, predecessor: DiskID?, successor: DiskID?
        var sizeBytes: UInt64, raid: RAIDLevel, hasImage: Bool, hasWritten: Bool, reserveSnapshots: Bool, reserved: Bool
        var createdAt: UInt64, reservedSegments: Int
    }

    static func decode(_ r: inout ByteReader) throws(LunError) -> Record {
        func opt(_ v: UInt32) -> DiskID? { v == none ? nil : v }
        let id = try r.u32()
        let name = try r.string()
        let parent = opt(try r.u32()), pred = opt(try r.u32()), succ = opt(try r.u32())
        let size = try r.u64()
        guard size <= PoolGeometry.maxDiskSizeBytes, let raid = RAIDLevel(rawValue: try r.u8()) else {
            throw .corrupt("disk record \(id): bad size or RAID level")
        }
        let flags = try r.u8()
        return Record(id: id, name: name, parent: parent, predecessor: pred, successor: succ, sizeBytes: size,
                      raid: raid, hasImage: flags & 1 != 0, hasWritten: flags & 2 != 0, reserveSnapshots: flags & 4 != 0, reserved: flags & 8 != 0,
                      createdAt: try r.u64(), reservedSegments: Int(try r.varint()))
    }
}
