// A plain in-memory drive with no faults and no crash model, for tests that only need storage:
// sparse (unwritten bytes read as zeros) and safe to call from many threads at once.
import LunEngine
import Synchronization

public final class MemoryDevice: BlockDevice {
    public let name: String
    public let sizeBytes: UInt64
    private let image = Mutex(SparseImage())

    public init(name: String = "memory", sizeBytes: UInt64) {
        precondition(sizeBytes > 0, "a drive needs a size")
        self.name = name
        self.sizeBytes = sizeBytes
    }

    /// Memory held by the pages written so far.
    public var residentBytes: Int { image.withLock { $0.residentBytes } }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "read past the end of drive \(name)")
        image.withLock { $0.read(into: buffer, at: offset) }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "write past the end of drive \(name)")
        image.withLock { $0.write(buffer, at: offset) }
    }

    /// Every write is already as durable as it will get.
    public func sync() throws(LunError) {}

    public func zero(at offset: UInt64, length: UInt64) throws(LunError) {
        precondition(offset + length <= sizeBytes, "zero past the end of drive \(name)")
        image.withLock { $0.zero(at: offset, length: length) }
    }
}
