// A disk looked up once and kept by whoever reads and writes it many times (an open image,
// an NBD export), so that the I/O path does not take the pool's `stateLock` to find the disk
// on every request. Holding one keeps no disk alive in the pool: when the disk or its image
// goes, I/O through it answers `.stale`, checked under the chain's lock as before.

public struct OpenDisk: @unchecked Sendable {
    let disk: Disk
    public var id: DiskID { disk.id }
}

extension Pool {
    /// The disk `id`, for I/O through `read(_:at:into:)` and `write(_:at:from:)`.
    public func openDisk(_ id: DiskID) throws(LunError) -> OpenDisk {
        OpenDisk(disk: try liveDisk(id))
    }
}
