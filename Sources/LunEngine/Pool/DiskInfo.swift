// What callers outside the engine (the FUSE layer, the CLI, tests) see of a logical disk and
// of the pool: plain values, copied out under the engine's locks.

public typealias DiskID = UInt32

/// What a disk is, as `user.lunfs.kind` names it: a disk at the root, a snapshot, a snapclone
/// copying into a disk of its own, or an independent disk (a snapclone that left its chain).
public enum DiskKind: String, Sendable {
    case disk, snapshot, snapclone, independent
}

public struct DiskInfo: Sendable, Equatable {
    public var id: DiskID
    public var name: String
    /// The directory this disk lives in: nil for a disk at the pool's root, otherwise the disk
    /// it is a snapshot of (`mkdir vm/monday` makes monday's parent vm).
    public var parent: DiskID?
    public var sizeBytes: UInt64
    public var raid: RAIDLevel
    /// False once the image was deleted (`rm vm/disk.img`) while snapshots remain below it.
    public var hasImage: Bool
    /// Unix seconds.
    public var createdAt: UInt64
    /// Segments this disk maps, its own plus those it shares, times the segment size.
    public var allocatedBytes: UInt64
    /// Bytes held by this disk alone (no share bit set).
    public var uniqueBytes: UInt64
    /// Bytes shared with a neighbour in the sharing chain.
    public var sharedBytes: UInt64
    /// Neighbours in the sharing chain (older = predecessor, newer = successor).
    public var predecessor: DiskID?
    public var successor: DiskID?
    /// Segments set aside for a fully reserved snapshot and not used yet.
    public var reservedBytes: UInt64
    /// The disk was made (or set) fully reserved.
    public var reserved: Bool
    /// Snapshots of this disk are created fully reserved.
    public var reserveSnapshots: Bool
    /// The RAID level can change only before the first write.
    public var hasWritten: Bool
    /// Disk, snapshot, snapclone (copying) or independent (a snapclone that left its chain).
    public var kind: DiskKind
    /// Mode and owner set by chmod/chown on its directory and its image (nil: never set).
    public var directoryAccess: NodeAccess? = nil
    public var imageAccess: NodeAccess? = nil
    /// `user.lunfs.on_full` and `user.lunfs.expendable` (SpacePolicy.swift).
    public var onFull: OnFullPolicy = .fail
    public var expendable = false
}

extension DiskInfo {
    /// A plain disk of `sizeBytes` with nothing shared or reserved: what a face that serves a
    /// single image outside any pool (`lunfs attach`) shows of it.
    public init(id: DiskID, name: String, sizeBytes: UInt64, kind: DiskKind) {
        self.init(id: id, name: name, parent: nil, sizeBytes: sizeBytes, raid: .raid0, hasImage: true, createdAt: 0,
                  allocatedBytes: sizeBytes, uniqueBytes: sizeBytes, sharedBytes: 0, predecessor: nil, successor: nil,
                  reservedBytes: 0, reserved: false, reserveSnapshots: false, hasWritten: true, kind: kind)
    }
}

public struct PoolUsage: Sendable, Equatable {
    public var driveCount: Int
    public var missingDrives: Int
    /// Bytes users can write at RAID 0 efficiency: all PSEGs outside quorum space.
    public var capacityBytes: UInt64
    /// PSEG bytes that belong to RStores (including their parity and mirror copies).
    public var rawUsedBytes: UInt64
    /// Logical bytes mapped by all disks (each segment counted once).
    public var usedBytes: UInt64
    /// Logical bytes still allocatable at the pool's default RAID level.
    public var freeBytes: UInt64
    /// Part of the free space held back for fully reserved snapshots.
    public var reservedBytes: UInt64
    public var defaultRAID: RAIDLevel
    public var segmentSizeBytes: UInt64

    /// What the pool holds at its default RAID level: used, reserved and free together (the
    /// size `df` shows). It moves when disks at another level allocate, since their copies
    /// cost a different share of the drives.
    public var usableBytes: UInt64 { usedBytes + reservedBytes + freeBytes }
}

/// Whether a drive serves I/O, as `status` shows it.
public enum DriveState: String, Sendable, Codable {
    /// Present and in service.
    case online
    /// Its file or device could not be opened.
    case missing
    /// Present but missed writes (or replaces a drive): out of service until rebuilt.
    case stale
    /// Taken out of service during this session after an I/O error.
    case failed
}

/// One drive as `status` shows it: its data area, what stores use of it, and its errors.
public struct DriveStatus: Sendable, Equatable {
    public var index: Int
    public var name: String
    public var state: DriveState
    /// The drive's PSEGs outside quorum space, in bytes.
    public var sizeBytes: UInt64
    /// Bytes of those PSEGs that belong to stores (data, mirror copies and parity).
    public var usedBytes: UInt64
    /// Errors since the pool was opened.
    public var errors: DriveErrors
}

/// What missing or out-of-service drives put at risk: stores running on fewer members than
/// their level needs for redundancy, and the disks whose data is in them.
public struct RedundancyRisk: Sendable, Equatable {
    /// RAID 1 or RAID 5 stores in use with a member on a drive that is not in service: they
    /// still read, but one more lost drive loses data.
    public var degradedStores = 0
    /// Stores in use that cannot be read whole any more (RAID 0 with a member out, RAID 5 with
    /// two, a RAID 1 column with both copies out).
    public var unreadableStores = 0
    /// Disks (snapshots included) with data in degraded stores, and in unreadable ones.
    public var disksWithoutRedundancy: [DiskID] = []
    public var disksWithUnreadableData: [DiskID] = []
    public var isDegraded: Bool { degradedStores + unreadableStores > 0 }
}

/// The mode and owner a node of the tree shows, set by chmod and chown and kept in the pool
/// (the disk record, docs/DESIGN.md). Nil on a disk that was never changed: the mount's
/// defaults apply (docs/MOUNT.md).
public struct NodeAccess: Sendable, Equatable {
    /// Permission bits (0o7777 at most).
    public var mode: UInt16
    public var uid: UInt32
    public var gid: UInt32
    public init(mode: UInt16, uid: UInt32, gid: UInt32) {
        precondition(mode & ~0o7777 == 0, "permission bits only")
        self.mode = mode; self.uid = uid; self.gid = gid
    }
}

/// Which of a disk's two nodes: its directory or its image.
public enum DiskNode: Sendable { case directory, image }
