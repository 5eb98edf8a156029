// The persistent fields of a disk, as journal records (`MetadataOp.putDisk`) and checkpoints
// store them, and the one way the in-memory state takes a record: `PoolState.install`. A
// disk's persistent fields change only through it, at run time and in replay alike.

struct DiskRecord: Equatable {
    var id: DiskID
    var name: String
    var parent: DiskID?
    var predecessor: DiskID?
    var successor: DiskID?
    var sizeBytes: UInt64
    var raid: RAIDLevel
    var hasImage: Bool
    var hasWritten: Bool
    var reserveSnapshots: Bool
    var reserved: Bool
    var createdAt: UInt64
    var reservedSegments: Int
    var clone: CloneState = .none
    /// Set by chmod/chown. Encoded only when one is set (flag 64): records without them read
    /// as they did in pools written before the field existed, which keep the mount's defaults.
    var directoryAccess: NodeAccess? = nil
    var imageAccess: NodeAccess? = nil
    /// The space policy (flag 128, then a byte after everything else: 1 on_full is
    /// drop-snapshots, 2 expendable). Encoded only when one is set, as for access.
    var onFull: OnFullPolicy = .fail
    var expendable = false

    /// The space policy's byte, 0 when neither is set.
    private var policyBits: UInt8 { (onFull == .dropSnapshots ? 1 : 0) | (expendable ? 2 : 0) }

    /// A missing link or parent in the encoding.
    private static let none: UInt32 = 0xFFFF_FFFF

    func encode(into w: inout ByteWriter) {
        w.u32(id)
        w.string(name)
        w.u32(parent ?? Self.none)
        w.u32(predecessor ?? Self.none)
        w.u32(successor ?? Self.none)
        w.u64(sizeBytes)
        w.u8(raid.rawValue)
        w.u8((hasImage ? 1 : 0) | (hasWritten ? 2 : 0) | (reserveSnapshots ? 4 : 0) | (reserved ? 8 : 0)
             | (clone == .copying ? 16 : 0) | (clone == .independent ? 32 : 0)
             | (directoryAccess != nil || imageAccess != nil ? 64 : 0) | (policyBits != 0 ? 128 : 0))
        w.u64(createdAt)
        w.varint(UInt64(reservedSegments))
        if directoryAccess != nil || imageAccess != nil {
            // Which follow (1: directory, 2: image), then mode, uid, gid of each.
            w.u8((directoryAccess != nil ? 1 : 0) | (imageAccess != nil ? 2 : 0))
            for access in [directoryAccess, imageAccess].compactMap({ $0 }) {
                w.varint(UInt64(access.mode)); w.u32(access.uid); w.u32(access.gid)
            }
        }
        if policyBits != 0 { w.u8(policyBits) }
    }

    static func decode(from r: inout ByteReader) throws(LunError) -> DiskRecord {
        func link(_ v: UInt32) -> DiskID? { v == none ? nil : v }
        let id = try r.u32()
        let name = try r.string()
        let parent = link(try r.u32()), predecessor = link(try r.u32()), successor = link(try r.u32())
        let size = try r.u64()
        guard id != none, size <= PoolGeometry.maxDiskSizeBytes, let raid = RAIDLevel(rawValue: try r.u8()) else {
            throw .corrupt("disk record \(id): bad id, size or RAID level")
        }
        let flags = try r.u8()
        guard flags & 48 != 48 else { throw .corrupt("disk record \(id): flags \(flags)") }
        let createdAt = try r.u64()
        let reservedSegments = try r.varint()
        guard reservedSegments <= UInt64(Int32.max) else { throw .corrupt("disk record \(id): \(reservedSegments) reserved segments") }
        var access: [NodeAccess?] = [nil, nil]
        if flags & 64 != 0 {
            let present = try r.u8()
            guard present != 0, present & ~3 == 0 else { throw .corrupt("disk record \(id): access mask \(present)") }
            for i in 0..<2 where present & (1 << i) != 0 {
                let mode = try r.varint()
                guard mode & ~0o7777 == 0 else { throw .corrupt("disk record \(id): mode \(mode)") }
                access[i] = NodeAccess(mode: UInt16(mode), uid: try r.u32(), gid: try r.u32())
            }
        }
        var policy: UInt8 = 0
        if flags & 128 != 0 {
            policy = try r.u8()
            guard policy != 0, policy & ~3 == 0 else { throw .corrupt("disk record \(id): space policy \(policy)") }
        }
        return DiskRecord(id: id, name: name, parent: parent, predecessor: predecessor, successor: successor,
                          sizeBytes: size, raid: raid, hasImage: flags & 1 != 0, hasWritten: flags & 2 != 0,
                          reserveSnapshots: flags & 4 != 0, reserved: flags & 8 != 0, createdAt: createdAt,
                          reservedSegments: Int(reservedSegments),
                          clone: flags & 16 != 0 ? .copying : flags & 32 != 0 ? .independent : .none,
                          directoryAccess: access[0], imageAccess: access[1],
                          onFull: policy & 1 != 0 ? .dropSnapshots : .fail, expendable: policy & 2 != 0)
    }
}

extension Disk {
    /// The disk's persistent fields as they stand.
    var record: DiskRecord {
        DiskRecord(id: id, name: name, parent: parent, predecessor: predecessor?.id, successor: successor?.id,
                   sizeBytes: sizeBytes, raid: raid, hasImage: hasImage, hasWritten: hasWritten,
                   reserveSnapshots: reserveSnapshots, reserved: reserved, createdAt: createdAt,
                   reservedSegments: reservedSegments, clone: clone,
                   directoryAccess: directoryAccess, imageAccess: imageAccess,
                   onFull: onFull, expendable: expendable)
    }
}

extension PoolState {
    /// Brings disk `record.id` to `record`, creating it if it is new, and links it to its
    /// neighbours. `.corrupt` (nothing changed) if a neighbour does not exist.
    func install(_ record: DiskRecord) throws(LunError) {
        let predecessor = try neighbour(record.predecessor, of: record)
        let successor = try neighbour(record.successor, of: record)
        let d = createOrUpdate(record)
        if d.predecessor !== predecessor { d.predecessor = predecessor }
        if d.successor !== successor { d.successor = successor }
    }

    /// The record's fields without its links (a checkpoint loads every disk before linking).
    /// Only fields that change are written: other threads may be reading the disk.
    @discardableResult
    func createOrUpdate(_ record: DiskRecord) -> Disk {
        guard let d = disks[record.id] else {
            let d = Disk(id: record.id, name: record.name, parent: record.parent, family: SharingFamily(),
                         sizeBytes: record.sizeBytes, raid: record.raid, createdAt: record.createdAt,
                         entriesPerLMap: geometry.rsegsPerLMAP)
            d.hasImage = record.hasImage
            d.hasWritten = record.hasWritten
            d.reserveSnapshots = record.reserveSnapshots
            d.reserved = record.reserved
            d.reservedSegments = record.reservedSegments
            d.clone = record.clone
            d.directoryAccess = record.directoryAccess
            d.imageAccess = record.imageAccess
            d.onFull = record.onFull
            d.expendable = record.expendable
            disks[record.id] = d
            nextDiskID = max(nextDiskID, record.id + 1)
            return d
        }
        func set<T: Equatable>(_ field: ReferenceWritableKeyPath<Disk, T>, _ value: T) {
            if d[keyPath: field] != value { d[keyPath: field] = value }
        }
        set(\.name, record.name)
        set(\.parent, record.parent)
        set(\.sizeBytes, record.sizeBytes)
        set(\.raid, record.raid)
        set(\.hasImage, record.hasImage)
        set(\.hasWritten, record.hasWritten)
        set(\.reserveSnapshots, record.reserveSnapshots)
        set(\.reserved, record.reserved)
        set(\.createdAt, record.createdAt)
        set(\.reservedSegments, record.reservedSegments)
        set(\.clone, record.clone)
        set(\.directoryAccess, record.directoryAccess)
        set(\.imageAccess, record.imageAccess)
        set(\.onFull, record.onFull)
        set(\.expendable, record.expendable)
        return d
    }

    func neighbour(_ id: DiskID?, of record: DiskRecord) throws(LunError) -> Disk? {
        guard let id else { return nil }
        guard let d = disks[id], id != record.id else { throw .corrupt("disk \(record.id) links to missing disk \(id)") }
        return d
    }
}
