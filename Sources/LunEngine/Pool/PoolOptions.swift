// The choices `lunfs init` (and `lunfs mount` on an empty directory) makes for a new pool.

public struct PoolOptions: Sendable {
    /// Number of drive files to create when `drivePaths` is empty.
    public var driveCount: Int = 8
    /// Size of each created drive file (sparse).
    public var driveSizeBytes: UInt64 = 16 << 30
    /// Existing files or block devices to use instead of created drive files.
    public var drivePaths: [String] = []
    /// RAID level of new disks; nil picks the most redundant level the drive count allows:
    /// RAID 5 with 5 or more drives, RAID 1 with 2 to 4, RAID 0 with one.
    public var raid: RAIDLevel? = nil
    public var psegSizeBytes: UInt64 = PoolGeometry.defaultPSEGSizeBytes
    /// Format drives named by `drivePaths` even when they hold a lunfs superblock (never one
    /// whose pool is open).
    public var force = false
    /// How snapclones give their predecessor its copies (not stored: set at each open).
    public var snapcloneVariant = SnapcloneVariant.secondPass
    /// Copy on first write in blocks: the first small write to a shared segment writes only
    /// the blocks it touches, the rest is filled in the background (not stored: set at each open).
    public var blockCopyOnWrite = true

    public init() {}

    /// The RAID level a pool of `drives` drives uses when none is asked for.
    public static func defaultRAID(drives: Int) -> RAIDLevel {
        drives >= 5 ? .raid5 : drives >= 2 ? .raid1 : .raid0
    }
}
