// What the engine needs from a drive: positional reads and writes, a durability barrier, a
// way to zero a range, and an optional read-ahead hint. The engine is written against this protocol only, so tests can hand
// it in-memory drives that inject faults (LunEngineTesting) instead of files.

public protocol BlockDevice: AnyObject, Sendable {
    /// Size of the drive; the engine uses whole PSEGs below it.
    var sizeBytes: UInt64 { get }
    /// A short name for log lines and `lunfs status` (a path for file drives).
    var name: String { get }
    /// Fills all of `buffer` from `offset`. Reads past the end of a sparse file read zeros.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError)
    /// Writes all of `buffer` at `offset`.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError)
    /// The same, saying whether the engine will read the range back soon (a RAID 5
    /// read-modify-write reads old data and parity), so that a drive with a cache keeps it.
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, keepInCache: Bool) throws(LunError)
    /// Makes every completed write durable (fdatasync).
    func sync() throws(LunError)
    /// Makes the range read as zeros (a hole punched in a file, or zeros written).
    func zero(at offset: UInt64, length: UInt64) throws(LunError)
    /// A hint that the range will be read soon: the read may start now, in the background.
    func prefetch(at offset: UInt64, length: Int)
    /// A hint, given once before the drive serves I/O, that the range from `offset` to the end
    /// takes many tiny writes (the checksum area): a drive may map it and copy them into
    /// memory, a store instead of a system call each. `sync` still covers them.
    func mapForTinyWrites(from offset: UInt64)
    /// Whether the engine may have several transfers to this drive in flight from one request
    /// (real drives); false keeps every call in program order (simulated drives).
    var takesParallelTransfers: Bool { get }
}

extension BlockDevice {
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, keepInCache: Bool) throws(LunError) {
        try write(buffer, at: offset)
    }
    public func prefetch(at offset: UInt64, length: Int) {}
    public func mapForTinyWrites(from offset: UInt64) {}
    public var takesParallelTransfers: Bool { false }
}
