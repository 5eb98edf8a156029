// A drive backed by a file or a block device: pread/pwrite with EINTR retried, fdatasync as
// the durability barrier, and holes punched to zero a range where the file system allows it.
//
// Transfers go through the host's page cache (docs/PERFORMANCE.md section 12): what was just
// written is then read from memory, as a file read right after it was written is for
// qemu-storage-daemon, and RAID 5's read-modify-writes find their old data and parity there.
// With `directMinimumBytes` set (LUNFS_DIRECT_MIN_BYTES in the environment, or a caller),
// aligned transfers of at least that many bytes go through a second descriptor opened
// O_DIRECT instead, straight between the request's memory and the disk; large writes then go
// to all their drives in one io_uring submission (DriveSubmission). The kernel keeps the two
// views coherent: a direct read first writes back cached dirty pages of its range, a direct
// write drops the cached pages of its range. fdatasync works on the file, so it covers both.
#if canImport(Glibc)
import Glibc
#endif
import CLunSys

public final class FileDevice: BlockDevice, @unchecked Sendable {
    public let name: String
    public let sizeBytes: UInt64
    /// Open for the life of the device; exposed so the FUSE layer can reply from it directly.
    public let fileDescriptor: Int32
    /// The same file opened O_DIRECT, or -1 where that is refused (tmpfs) or turned off.
    private let directDescriptor: Int32
    /// Transfers of at least this many bytes, aligned to `directAlignment`, go direct; 0: none.
    private let directMinimumBytes: Int
    private var punchWorks = true
    /// Aligned buffers for direct writes whose source memory is not aligned.
    private let bounceBuffers = BounceBuffers(byteCount: 1 << 20, alignment: FileDevice.directAlignment)

    /// Offset, length and memory alignment of a direct transfer (a page covers every common
    /// logical block size).
    static let directAlignment = 4096
    /// Default for `directMinimumBytes`: no direct transfers. `LUNFS_DIRECT_MIN_BYTES`
    /// overrides it (65536 is the rule before 2026-12-01: 64 KiB and more direct).
    static let defaultDirectMinimumBytes = 0

    /// Opens an existing drive file or block device read-write. `directMinimumBytes`: nil for
    /// the environment's or the default rule.
    public init(path: String, directMinimumBytes: Int? = nil) throws(LunError) {
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
        var minimum = Self.defaultDirectMinimumBytes
        if let text = getenv("LUNFS_DIRECT_MIN_BYTES"), let value = Int(String(cString: text)), value >= 0 {
            minimum = value
        }
        if let directMinimumBytes { minimum = directMinimumBytes }
        self.directMinimumBytes = minimum
        self.directDescriptor = minimum == 0 ? -1 : lunsys_open_direct(path, O_RDWR | O_CLOEXEC)
    }

    /// Whether a transfer of `count` bytes at `offset` goes direct (the memory side: reads
    /// need aligned memory, writes copy unaligned memory into a bounce buffer).
    @inline(__always)
    private func goesDirect(_ count: Int, _ offset: UInt64) -> Bool {
        let a = Self.directAlignment
        return directDescriptor >= 0 && count >= directMinimumBytes && count % a == 0 && offset % UInt64(a) == 0
    }

    @inline(__always)
    private static func isAligned(_ memory: UnsafeRawPointer) -> Bool {
        Int(bitPattern: memory) % directAlignment == 0
    }

    /// Creates (or extends) a sparse drive file of `sizeBytes`.
    public static func createFile(path: String, sizeBytes: UInt64, directMinimumBytes: Int? = nil) throws(LunError) -> FileDevice {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io("cannot create drive \(path): \(String(cString: strerror(errno)))") }
        let ok = ftruncate(fd, off_t(sizeBytes)) == 0
        close(fd)
        guard ok else { throw .io("cannot size drive \(path) to \(sizeBytes) bytes") }
        return try FileDevice(path: path, directMinimumBytes: directMinimumBytes)
    }

    /// Takes a non-blocking exclusive flock() on the drive file: false when another open of
    /// it holds one (a pool open read-write elsewhere). Released by `unlock` or on close.
    public func lockExclusive() -> Bool { flock(fileDescriptor, LOCK_EX | LOCK_NB) == 0 }

    public func unlock() { _ = flock(fileDescriptor, LOCK_UN) }

    deinit {
        close(fileDescriptor)
        if directDescriptor >= 0 { close(directDescriptor) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        guard let base = buffer.baseAddress else { return }
        var fd = goesDirect(buffer.count, offset) && Self.isAligned(base) ? directDescriptor : fileDescriptor
        var done = 0
        while done < buffer.count {
            let n = pread(fd, base + done, buffer.count - done, off_t(offset) + off_t(done))
            if n > 0 { done += n; continue }
            if n == 0 {  // past the end of a file: zeros, as for a sparse tail
                (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done)
                return
            }
            if errno == EINTR { continue }
            // A file system may take O_DIRECT at open and refuse an alignment later.
            if errno == EINVAL && fd == directDescriptor { fd = fileDescriptor; continue }
            throw .io("read \(name) at \(offset + UInt64(done)): \(String(cString: strerror(errno)))")
        }
    }

    public var takesParallelTransfers: Bool { true }

    public func prefetch(at offset: UInt64, length: Int) {
        // Only reads that will go through the page cache gain from it.
        guard !goesDirect(length, offset) else { return }
        _ = posix_fadvise(fileDescriptor, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "write past the end of drive \(name)")
        guard let base = buffer.baseAddress else { return }
        guard goesDirect(buffer.count, offset) else {
            try write(fileDescriptor, buffer, at: offset)
            return
        }
        if !Self.isAligned(base) {
            // Aligned on the disk but not in memory: copy it into aligned memory, a piece at
            // a time. FUSE payloads (RequestLoop) and the engine's scratch buffers are aligned
            // already; this is for any other caller's memory.
            let bounce = bounceBuffers.take()
            defer { bounceBuffers.give(bounce) }
            var done = 0
            while done < buffer.count {
                let n = min(bounce.count, buffer.count - done)
                bounce.baseAddress!.copyMemory(from: base + done, byteCount: n)
                try write(directDescriptor, UnsafeRawBufferPointer(rebasing: bounce[0..<n]), at: offset + UInt64(done))
                done += n
            }
            return
        }
        try write(directDescriptor, buffer, at: offset)
    }

    /// The descriptor a write of `buffer` at `offset` goes to when it goes direct from the
    /// caller's memory as it is, for a caller that makes the write itself (DriveSubmission's
    /// io_uring); nil when it would go through the page cache or a bounce buffer.
    func directDescriptor(forWriteOf buffer: UnsafeRawBufferPointer, at offset: UInt64) -> Int32? {
        guard let base = buffer.baseAddress, goesDirect(buffer.count, offset), Self.isAligned(base),
              buffer.count <= Int(UInt32.max) else { return nil }
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "write past the end of drive \(name)")
        return directDescriptor
    }

    private func write(_ descriptor: Int32, _ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        var fd = descriptor
        var done = 0
        while done < buffer.count {
            let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n > 0 { done += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EINVAL && fd == directDescriptor { fd = fileDescriptor; continue }
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

/// A few aligned buffers reused across calls and threads, so that a direct write of unaligned
/// memory costs a copy and no allocation (a fresh 1 MiB buffer would be mapped and faulted in
/// each time).
final class BounceBuffers: @unchecked Sendable {
    private let byteCount: Int
    private let alignment: Int
    private let lock = Lock()
    private var free: [UnsafeMutableRawBufferPointer] = []

    init(byteCount: Int, alignment: Int) {
        self.byteCount = byteCount
        self.alignment = alignment
    }

    deinit { for b in free { b.deallocate() } }

    func take() -> UnsafeMutableRawBufferPointer {
        if let b = lock.withLock({ free.popLast() }) { return b }
        return .allocate(byteCount: byteCount, alignment: alignment)
    }

    func give(_ buffer: UnsafeMutableRawBufferPointer) {
        lock.withLock { free.append(buffer) }
    }
}
