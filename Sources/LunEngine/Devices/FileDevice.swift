// A drive backed by a file or a block device: pread/pwrite with EINTR retried, fdatasync as
// the durability barrier, and holes punched to zero a range where the file system allows it.
//
// Which transfers use the host's page cache (docs/PERFORMANCE.md section 12):
// - small ones (under 64 KiB) go through it: a 4 KiB block just written is read from memory,
//   and many small writes reach the disk together;
// - a large write goes through a second descriptor opened O_DIRECT, straight from the
//   request's memory to the disk (no copy, no dirty pages for the kernel to throttle), unless
//   the engine will read it back soon (RAID 5: a read-modify-write reads old data and parity):
//   then it goes through the cache and starts its own write-back at once (sync_file_range, not
//   waited for), so a stream of such writes does not pile dirty pages up either;
// - a large read goes direct when the cache holds no page of its range (cachestat), and
//   through the cache otherwise, where the bytes already are.
// The kernel keeps the two views coherent (a direct read first writes back cached dirty pages
// of its range, a direct write drops the cached pages of its range), and fdatasync works on
// the file, so it covers both.
//
// `LUNFS_DIRECT_MIN_BYTES` (or a caller's `directMinimumBytes`) chooses another rule: N > 0
// sends aligned transfers of at least N bytes direct both ways, reads included and whatever
// the engine will read back (65536: the rule until 2026-12-01); 0 sends everything through the
// page cache (the rule of 2026-12-01). Direct writes of one request go to all their drives in
// one io_uring submission (DriveSubmission).
//
// The checksum area (mapForTinyWrites) is mapped shared and written by copying into the
// mapping: a 4-byte checksum costs a store, not a pwrite (docs/PERFORMANCE.md section 7).
// The mapping is the same page cache a pwrite writes into, so a crash or kill -9 keeps what
// a pwrite would, and fdatasync writes it back the same way. A page the kernel cannot back
// raises SIGBUS, which the copy catches (lunsys_guarded_copy) and turns into an I/O error.
#if canImport(Glibc)
import Glibc
#endif
import CLunSys
import Synchronization

public final class FileDevice: BlockDevice, @unchecked Sendable {
    public let name: String
    public let sizeBytes: UInt64
    /// Open for the life of the device; exposed so the FUSE layer can reply from it directly.
    public let fileDescriptor: Int32
    /// The same file opened O_DIRECT, or -1 where that is refused (tmpfs) or not used.
    private let directDescriptor: Int32
    /// Which transfers go direct.
    let rule: TransferRule
    /// Reads that went direct because the cache held nothing of their range (for tests).
    let coldDirectReads = Atomic<Int>(0)
    private var punchWorks = true
    /// The tail of the drive mapped for tiny writes: set before the drive serves I/O.
    private var mappedTail: (start: UInt64, base: UnsafeMutableRawPointer, length: UInt64)?
    private var replacedTails: [(start: UInt64, base: UnsafeMutableRawPointer, length: UInt64)] = []
    /// Whether tiny writes go into a mapping (for tests).
    var mapsTinyWrites: Bool { mappedTail != nil }
    /// Aligned buffers for direct writes whose source memory is not aligned.
    private let bounceBuffers = BounceBuffers(byteCount: 1 << 20, alignment: FileDevice.directAlignment)

    /// Offset, length and memory alignment of a direct transfer (a page covers every common
    /// logical block size).
    static let directAlignment = 4096
    /// The size from which a transfer is large (the default rule).
    static let largeTransferBytes = 64 << 10

    /// The three rules of the top of the file.
    enum TransferRule: Equatable {
        /// Large writes direct (or written back at once when kept in the cache), large reads
        /// direct when nothing of their range is cached, the rest through the cache.
        case largeBypassCache
        /// Aligned transfers of at least this many bytes direct both ways.
        case directFrom(Int)
        /// Everything through the page cache.
        case pageCache
    }

    /// Opens an existing drive file or block device read-write. `directMinimumBytes`: nil for
    /// the environment's rule or, without one, the default (see the top of the file).
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
        var chosen: Int? = nil
        if let text = getenv("LUNFS_DIRECT_MIN_BYTES"), let value = Int(String(cString: text)), value >= 0 {
            chosen = value
        }
        if let directMinimumBytes { chosen = directMinimumBytes }
        switch chosen {
        case nil: rule = .largeBypassCache
        case 0: rule = .pageCache
        case let bytes?: rule = .directFrom(bytes)
        }
        self.directDescriptor = rule == .pageCache ? -1 : lunsys_open_direct(path, O_RDWR | O_CLOEXEC)
    }

    /// Whether a transfer of `count` bytes at `offset` may go direct at all: aligned, and a
    /// direct descriptor open.
    @inline(__always)
    private func directPossible(_ count: Int, _ offset: UInt64) -> Bool {
        let a = Self.directAlignment
        return directDescriptor >= 0 && count > 0 && count % a == 0 && offset % UInt64(a) == 0
    }

    /// Whether a write of `count` bytes at `offset` goes direct (the memory side: unaligned
    /// memory is copied into a bounce buffer).
    @inline(__always)
    private func writesDirect(_ count: Int, _ offset: UInt64, keepInCache: Bool) -> Bool {
        guard directPossible(count, offset) else { return false }
        switch rule {
        case .largeBypassCache: return !keepInCache && count >= Self.largeTransferBytes
        case .directFrom(let bytes): return count >= bytes
        case .pageCache: return false
        }
    }

    /// Whether a read of `count` bytes at `offset` into `memory` goes direct.
    private func readsDirect(_ count: Int, _ offset: UInt64, into memory: UnsafeRawPointer) -> Bool {
        guard directPossible(count, offset), Self.isAligned(memory) else { return false }
        switch rule {
        case .largeBypassCache:
            guard count >= Self.largeTransferBytes else { return false }
            var cached: UInt64 = 0, dirty: UInt64 = 0
            // A kernel without cachestat (before 6.5): through the cache.
            return lunsys_cachestat(fileDescriptor, Int64(offset), Int64(count), &cached, &dirty) == 0 && cached == 0
        case .directFrom(let bytes): return count >= bytes
        case .pageCache: return false
        }
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

    /// Maps the tail once; a pool opened again on this device maps it again only if the tail
    /// starts elsewhere, and keeps the old mapping to the end (a thread may still copy into it).
    public func mapForTinyWrites(from offset: UInt64) {
        if let tail = mappedTail {
            if tail.start == offset { return }
            replacedTails.append(tail)
            mappedTail = nil
        }
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        guard offset % page == 0, offset < sizeBytes,
              let base = lunsys_map_shared(fileDescriptor, Int64(offset), sizeBytes - offset) else { return }
        mappedTail = (offset, base, sizeBytes - offset)
    }

    deinit {
        for tail in replacedTails + (mappedTail.map { [$0] } ?? []) { lunsys_unmap(tail.base, tail.length) }
        close(fileDescriptor)
        if directDescriptor >= 0 { close(directDescriptor) }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        guard let base = buffer.baseAddress else { return }
        var fd = fileDescriptor
        if readsDirect(buffer.count, offset, into: base) {
            fd = directDescriptor
            if rule == .largeBypassCache { coldDirectReads.add(1, ordering: .relaxed) }
        }
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
        // Only reads that will go through the page cache gain from it (a large one whose range
        // is not cached goes direct under the default rule).
        switch rule {
        case .largeBypassCache: guard length < Self.largeTransferBytes else { return }
        case .directFrom(let bytes): guard length < bytes || !directPossible(length, offset) else { return }
        case .pageCache: break
        }
        _ = posix_fadvise(fileDescriptor, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        try write(buffer, at: offset, keepInCache: false)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, keepInCache: Bool) throws(LunError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "write past the end of drive \(name)")
        guard let base = buffer.baseAddress else { return }
        if let tail = mappedTail, offset >= tail.start {
            guard lunsys_guarded_copy(tail.base + Int(offset - tail.start), base, UInt64(buffer.count)) == 0 else {
                throw .io("write \(name) at \(offset): the mapped page could not be written (SIGBUS: a disk error, no space, or the drive was cut short)")
            }
            return
        }
        guard writesDirect(buffer.count, offset, keepInCache: keepInCache) else {
            try write(fileDescriptor, buffer, at: offset)
            if rule == .largeBypassCache && buffer.count >= Self.largeTransferBytes {
                // Not waited for; a failure of the write-back is fdatasync's to report.
                _ = lunsys_start_write_back(fileDescriptor, Int64(offset), Int64(buffer.count))
            }
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
    func directDescriptor(forWriteOf buffer: UnsafeRawBufferPointer, at offset: UInt64, keepInCache: Bool) -> Int32? {
        guard let base = buffer.baseAddress, writesDirect(buffer.count, offset, keepInCache: keepInCache), Self.isAligned(base),
              offset < mappedTail?.start ?? .max,
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
