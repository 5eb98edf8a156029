// The engine's front door: a pool of drives holding thin logical disks and their snapshots.
// Everything above the engine (FUSE, CLI, tests) goes through this class; it owns the locks.

public final class Pool: @unchecked Sendable {
    public let directory: String

    init(directory: String) { self.directory = directory }

    /// Creates the pool directory's drives, formats them and opens the pool.
    /// The directory may be missing or empty; anything else is `.exists`.
    public static func create(directory: String, options: PoolOptions, log: @escaping @Sendable (String) -> Void = { _ in }) throws(LunError) -> Pool { fatalError("unimplemented") }
    /// Opens an existing pool: picks the newest good metadata copy, replays the journal,
    /// takes the pool lock (`.busy` if another process holds it).
    public static func open(directory: String, log: @escaping @Sendable (String) -> Void = { _ in }) throws(LunError) -> Pool { fatalError("unimplemented") }
    /// True when `directory` holds a pool (its drive list file exists).
    public static func exists(directory: String) -> Bool { fatalError("unimplemented") }

    /// Commits everything and releases the drives and the lock. The pool is unusable after.
    public func close() throws(LunError) { fatalError("unimplemented") }
    /// Makes every completed write and every metadata change durable (fsync of any image).
    public func commit() throws(LunError) { fatalError("unimplemented") }

    public func usage() -> PoolUsage { fatalError("unimplemented") }
    /// Every node, images and hollow ones, in id order.
    public func disks() -> [DiskInfo] { fatalError("unimplemented") }
    public func info(_ id: DiskID) -> DiskInfo? { fatalError("unimplemented") }
    /// The node named `name` in directory `parent` (nil = the pool's root).
    public func child(named name: String, of parent: DiskID?) -> DiskID? { fatalError("unimplemented") }
    public func children(of parent: DiskID?) -> [DiskID] { fatalError("unimplemented") }

    /// mkdir at the root: a new, empty (size 0) disk.
    public func createDisk(named name: String, raid: RAIDLevel? = nil) throws(LunError) -> DiskID { fatalError("unimplemented") }
    /// mkdir inside a disk: the predecessor/successor split. `.busy` if writes do not drain
    /// within the timeout; `.noSpace` if `reserved` and the pool cannot set the space aside.
    public func createSnapshot(of id: DiskID, named name: String, reserved: Bool? = nil, quiesceTimeoutSeconds: Double = 5) throws(LunError) -> DiskID { fatalError("unimplemented") }
    /// unlink of disk.img: drops the disk's data; the directory stays (hollow) for its snapshots.
    public func deleteImage(_ id: DiskID) throws(LunError) { fatalError("unimplemented") }
    /// rmdir: removes a node with no children, its image too. `.notEmpty` if it has children.
    public func removeNode(_ id: DiskID) throws(LunError) { fatalError("unimplemented") }
    /// Renames within the same directory. `.exists` if the name is taken.
    public func rename(_ id: DiskID, to name: String) throws(LunError) { fatalError("unimplemented") }
    /// `.notPermitted` once the disk has been written.
    public func setRAID(_ id: DiskID, _ level: RAIDLevel) throws(LunError) { fatalError("unimplemented") }
    /// Reserve (or release) space for the whole disk; `.noSpace` if the pool cannot.
    public func setReserved(_ id: DiskID, _ reserved: Bool) throws(LunError) { fatalError("unimplemented") }
    /// Whether snapshots taken of this disk are created reserved by default.
    public func setReserveSnapshots(_ id: DiskID, _ on: Bool) throws(LunError) { fatalError("unimplemented") }
    /// truncate: grows (new space reads zeros) or shrinks (frees segments) the disk.
    public func resize(_ id: DiskID, to sizeBytes: UInt64) throws(LunError) { fatalError("unimplemented") }

    /// Reads up to `buffer.count` bytes at `offset`; returns fewer at the end of the disk.
    public func read(_ id: DiskID, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int { fatalError("unimplemented") }
    /// Writes all of `buffer` at `offset`, growing the disk if it ends past the size.
    public func write(_ id: DiskID, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) { fatalError("unimplemented") }
    /// Makes a range read as zeros, unmapping whole segments (fallocate PUNCH_HOLE).
    public func discard(_ id: DiskID, at offset: UInt64, length: UInt64) throws(LunError) { fatalError("unimplemented") }
    /// lseek SEEK_DATA (`data` true) or SEEK_HOLE from `offset`, at segment granularity;
    /// nil when there is no such position before the end of the disk (ENXIO).
    public func seek(_ id: DiskID, from offset: UInt64, data: Bool) throws(LunError) -> UInt64? { fatalError("unimplemented") }
}
