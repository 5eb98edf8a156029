// A drive backed by a file or a block device: pread/pwrite with EINTR retried, fdatasync as
// the durability barrier, and holes punched to zero a range where the file system allows it.
#if canImport(Glibc)
import Glibc
#endif
import CLunSys

public final class FileDevice: BlockDevice, @unchecked Sendable {
    public let name: String
    public let sizeBytes: UInt64
    /// Open for the life of the device; exposed so the FUSE layer can reply from it directly.
    public let fileDescriptor: Int32
    private var punchWorks = true

    /// Opens an existing drive file or block device read-write.
    public init(path: String) throws(LunError) {
        let fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw .io("cannot open drive \(path): \(String(cString: strerror(errno)))") }
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw .io("cannot stat drive \(path)") }
        var size = UInt64(st.st_size)
        if (st.st_mode & S_IFMT) == S_IFBLK {
            var bytes: UInt64 = 0
            // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
            if ioctl(fd, 0x8008_1272, &bytes) == 0 { size = bytes }
        }
        self.name = path
        self.sizeBytes = size
        self.fileDescriptor = fd
    }

    /// Creates (or extends) a sparse drive file of `sizeBytes`.
    public static func createFile(path: String, sizeBytes: UInt64) throws(LunError) -> FileDevice {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io("cannot create drive \(path): \(String(cString: strerror(errno)))") }
        let ok = ftruncate(fd, off_t(sizeBytes)) == 0
        close(fd)
        guard ok else { throw .io("cannot size drive \(path) to \(sizeBytes) bytes") }
        return try FileDevice(path: path)
    }

    deinit { close(fileDescriptor) }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        var done = 0
        while done < buffer.count {
            let n = pread(fileDescriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n > 0 { done += n; continue }
            if n == 0 {  // past the end of a file: zeros, as for a sparse tail
                (buffer.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return
            }
            if errno == EINTR { continue }
            throw .io("read \(name) at \(offset + UInt64(done)): \(String(cString: strerror(errno)))")
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "write past the end of drive \(name)")
        var done = 0
        while done < buffer.count {
            let n = pwrite(fileDescriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            throw .io("write \(name) at \(offset + UInt64(done)): \(String(cString: strerror(errno)))")
        }
    }

    public func sync() throws(LunError) {
        while fdatasync(fileDescriptor) != 0 {
            if errno == EINTR { continue }
            throw .io("fdatasync \(name): \(String(cString: strerror(errno)))")
        }
    }

    public func zero(at offset: UInt64, length: UInt64) throws(LunError) {
        if length == 0 { return }
        if punchWorks {
            // FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            if lunsys_fallocate(fileDescriptor, 0x02 | 0x01, Int64(offset), Int64(length)) == 0 { return }
            punchWorks = false
        }
        try writeZeros(at: offset, length: length)
    }

    private func writeZeros(at offset: UInt64, length: UInt64) throws(LunError) {
        let chunk = Int(min(length, 1 << 20))
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let n = Int(min(UInt64(chunk), length - done))
            try write(UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: offset + done)
            done += UInt64(n)
        }
    }
}
