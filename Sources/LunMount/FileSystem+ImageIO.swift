// The disk.img files: open, read, write, sync, truncate, fallocate and SEEK_DATA/SEEK_HOLE,
// each a direct call into the engine; and the read-only changes.img files beside them. The
// file handle names the disk and the generation it was opened in, so a handle outlives
// neither its disk nor its image (ESTALE).
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import LunEngine

/// What an open image's file handle (`fuse_file_info.fh`) points at: the disk, looked up
/// once so that reads and writes do not look it up again (`OpenDisk`), and the generation of
/// the image it was opened in (see `FileSystem.retire`). The handle holds one reference from
/// the open reply to the release.
final class OpenImage: @unchecked Sendable {
    let id: DiskID
    let generation: UInt64
    let disk: OpenDisk
    /// A handle of the disk's changes.img (read-only), not of its disk.img.
    let isChanges: Bool

    init(disk: OpenDisk, generation: UInt64, isChanges: Bool = false) {
        self.id = disk.id
        self.generation = generation
        self.disk = disk
        self.isChanges = isChanges
    }

    /// The handle for the open reply; it keeps this object until `release(handle:)`.
    func retainedHandle() -> UInt64 {
        UInt64(UInt(bitPattern: Unmanaged.passRetained(self).toOpaque()))
    }

    /// The image behind a handle from `retainedHandle` (nil for 0, a directory's handle).
    static func of(handle: UInt64) -> OpenImage? {
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(handle)) else { return nil }
        return Unmanaged<OpenImage>.fromOpaque(pointer).takeUnretainedValue()
    }

    /// Drops the handle's reference (release, or an open reply that could not be sent).
    static func release(handle: UInt64) {
        guard let pointer = UnsafeRawPointer(bitPattern: UInt(handle)) else { return }
        Unmanaged<OpenImage>.fromOpaque(pointer).release()
    }
}

extension FileSystem {
    /// Opens an image and counts the handle (see `OpenImageTable`); the caller must call
    /// `closeImage` if the open reply cannot be sent.
    func openImage(_ ino: fuse_ino_t, flags: Int32, openerPID: pid_t) throws(FuseFailure) -> OpenImage {
        let node = try resolve(ino)
        if case .changes(let info) = node { return try openChanges(info, flags: flags) }
        guard case .image(let info) = node else {
            throw FuseFailure(EISDIR, "directories hold no data")
        }
        // The kernel hands O_TRUNC to open (ATOMIC_O_TRUNC) instead of sending a setattr.
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY && info.sizeBytes != 0 {
            try refuseIfOpen(info.id, doing: .shrink)
            try engine { () throws(LunError) in try pool.resize(info.id, to: 0) }
            touch(info.id)
        }
        let disk = try engine { () throws(LunError) in try pool.openDisk(info.id) }
        let opened = OpenImage(disk: disk, generation: generation(of: .image(info.id)))
        openImages.opened(opened.id, generation: opened.generation, by: openerPID)
        return opened
    }

    /// Opens a changes.img, for reading only. It is not counted as holding disk.img: deleting
    /// the image turns it stale like the image's own handles.
    private func openChanges(_ info: DiskInfo, flags: Int32) throws(FuseFailure) -> OpenImage {
        guard flags & O_ACCMODE == O_RDONLY, flags & O_TRUNC == 0 else {
            throw FuseFailure(EACCES, "changes.img of \(info.name) is read-only")
        }
        // Writes the kernel still holds dirty for disk.img are changes too: it hands them over.
        try kernelCache.writeBackDirty(info.id, generation: generation(of: .image(info.id)))
        let disk = try engine { () throws(LunError) in try pool.openDisk(info.id) }
        return OpenImage(disk: disk, generation: generation(of: .image(info.id)), isChanges: true)
    }

    /// release: the handle no longer holds its image.
    func closeImage(handle: UInt64) {
        guard let opened = OpenImage.of(handle: handle) else { return }
        if !opened.isChanges { openImages.released(opened.id, generation: opened.generation) }
        OpenImage.release(handle: handle)
    }

    /// The image behind a file handle, or ESTALE if it was deleted since it was opened.
    @inline(__always)
    func image(of handle: UInt64) throws(FuseFailure) -> OpenImage {
        guard let opened = OpenImage.of(handle: handle) else { throw FuseFailure(EBADF, "no image handle") }
        guard generation(of: .image(opened.id)) == opened.generation else {
            throw FuseFailure(ESTALE, "disk \(opened.id) was deleted while open")
        }
        return opened
    }

    /// The disk behind a file handle, or ESTALE if its image was deleted since it was opened.
    @inline(__always)
    func disk(of handle: UInt64) throws(FuseFailure) -> DiskID {
        try image(of: handle).id
    }

    func read(handle: UInt64, size: Int, offset: off_t) throws(FuseFailure) -> ReplyBuffer {
        let opened = try image(of: handle)
        let disk = opened.disk
        guard offset >= 0 else { throw FuseFailure(EINVAL, "negative offset") }
        var buffer = ReplyBuffer(capacity: size)
        do {
            let target = UnsafeMutableRawBufferPointer(start: buffer.base, count: size)
            buffer.count = try engine { () throws(LunError) in
                opened.isChanges ? try pool.readChanges(disk, at: UInt64(offset), into: target) : try pool.read(disk, at: UInt64(offset), into: target)
            }
        } catch {
            buffer.discard()
            throw error
        }
        assert(buffer.count <= size, "the engine read more than asked")
        return buffer
    }

    /// `fromWriteBack`: the kernel sends it from its writeback cache, and no write(2) waits
    /// for the answer. A refusal (the pool is full, a drive failed, the write is past the
    /// largest disk size) is then owed to the image's next fsync and next close
    /// (KernelPageCache) and the kernel's copy of the range is dropped, and the kernel is told
    /// the write went through: given the error, it would report it at one fsync or one close
    /// (whichever comes first clears it) and the daemon could not tell which, so the daemon
    /// does the reporting alone, exactly once at each. A write-back to a deleted image
    /// (ESTALE) is answered as such: its handles are stale, nothing is owed.
    func write(handle: UInt64, bytes: UnsafeRawBufferPointer, offset: off_t, fromWriteBack: Bool = false) throws(FuseFailure) -> Int {
        let opened = try image(of: handle)
        do throws(FuseFailure) {
            let written = try write(opened, bytes: bytes, offset: offset)
            if fromWriteBack && written < bytes.count {
                throw FuseFailure(EFBIG, "write-back past the largest disk size")
            }
            return written
        } catch {
            guard fromWriteBack else { throw error }
            kernelCache.refusedWriteBack(opened.id, offset: offset, count: bytes.count, errno: error.errno)
            log.write("write-back of \(bytes.count) bytes at \(offset) to disk \(opened.id) refused (\(error.description)); the kernel had accepted them: the next fsync and close of the image fail with \(errnoName(error.errno))")
            return bytes.count
        }
    }

    private func write(_ opened: OpenImage, bytes: UnsafeRawBufferPointer, offset: off_t) throws(FuseFailure) -> Int {
        let id = opened.id
        guard !opened.isChanges else { throw FuseFailure(EBADF, "changes.img is open for reading only") }
        guard offset >= 0 else { throw FuseFailure(EINVAL, "negative offset") }
        guard UInt64(offset) < PoolGeometry.maxDiskSizeBytes else {
            throw FuseFailure(EFBIG, "write at or past the largest disk size")
        }
        // A write across the limit is cut short there, as a local file system does at its
        // largest file size: the caller gets the count below it, and EFBIG on the next write.
        let count = Int(min(UInt64(bytes.count), PoolGeometry.maxDiskSizeBytes - UInt64(offset)))
        let below = UnsafeRawBufferPointer(rebasing: bytes[..<count])
        try engine { () throws(LunError) in try pool.write(opened.disk, at: UInt64(offset), from: below) }
        touch(id)
        return count
    }

    /// copy_file_range(2) between images of this mount (cp uses it): reads and writes in
    /// 1 MiB pieces inside the daemon instead of a round trip through the caller for each.
    /// Short at the source's end; a failure after some bytes were copied returns that count.
    func copyRange(from sourceHandle: UInt64, at sourceOffset: off_t, to targetHandle: UInt64, at targetOffset: off_t, length: Int) throws(FuseFailure) -> Int {
        let sourceImage = try image(of: sourceHandle)
        let source = sourceImage.id
        let targetImage = try image(of: targetHandle)
        let target = targetImage.id
        guard !targetImage.isChanges else { throw FuseFailure(EBADF, "changes.img is open for reading only") }
        guard sourceOffset >= 0, targetOffset >= 0 else { throw FuseFailure(EINVAL, "negative offset") }
        guard UInt64(targetOffset) < PoolGeometry.maxDiskSizeBytes else {
            throw FuseFailure(EFBIG, "copy to or past the largest disk size")
        }
        // Cut short at the limit, like write.
        let length = Int(min(UInt64(length), PoolGeometry.maxDiskSizeBytes - UInt64(targetOffset)))
        let pieceBytes = min(length, Int(maximumRequestBytes))
        let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: max(pieceBytes, 1), alignment: 4096)
        defer { piece.deallocate() }
        var copied = 0
        do {
            while copied < length {
                let wanted = min(pieceBytes, length - copied)
                let room = UnsafeMutableRawBufferPointer(rebasing: piece[..<wanted])
                let at = UInt64(sourceOffset) + UInt64(copied)
                let got = try engine { () throws(LunError) in
                    sourceImage.isChanges ? try pool.readChanges(sourceImage.disk, at: at, into: room) : try pool.read(source, at: at, into: room)
                }
                if got == 0 { break }
                let bytes = UnsafeRawBufferPointer(rebasing: piece[..<got])
                try engine { () throws(LunError) in try pool.write(target, at: UInt64(targetOffset) + UInt64(copied), from: bytes) }
                copied += got
                if got < wanted { break }
            }
        } catch {
            guard copied > 0 else { throw error }
            log.failure(op: "copy_file_range", subject: "disk \(source) to disk \(target) after \(copied) bytes", error)
        }
        if copied > 0 { touch(target) }
        return copied
    }

    /// fsync and fsyncdir: the engine's commit makes every completed write durable. An fsync
    /// of an image (`handle`) also fails if a write-back of it was refused since the last one.
    func synchronize(handle: UInt64? = nil) throws(FuseFailure) {
        try engine { () throws(LunError) in try pool.commit() }
        guard let handle, let opened = OpenImage.of(handle: handle) else { return }
        kernelCache.attributesChanged(opened.id)
        if let errno = kernelCache.takeForFsync(opened.id) {
            throw FuseFailure(errno, "a write-back of disk \(opened.id) was refused earlier (see the log); its bytes are not stored")
        }
    }

    /// flush, at every close(2) of an image: fails if a write-back of it was refused since the
    /// last close. (Committing here would make every close an fsync.)
    func flushImage(handle: UInt64, pid: pid_t) throws(FuseFailure) {
        // The daemon's own close after a flush of dirty pages owes nothing.
        if kernelCache.isInternalClose(pid: pid) { return }
        if let opened = OpenImage.of(handle: handle), let errno = kernelCache.takeForClose(opened.id) {
            throw FuseFailure(errno, "a write-back of disk \(opened.id) was refused earlier (see the log); its bytes are not stored")
        }
    }

    /// fallocate(2). Allocation in the engine is lazy, so mode 0 only grows the size. Punching
    /// a hole and zeroing a range both become a discard (the range then reads zeros); other
    /// modes are EOPNOTSUPP, which tells fsx and friends to stop trying them.
    func allocate(handle: UInt64, mode: Int32, offset: off_t, length: off_t) throws(FuseFailure) {
        let opened = try image(of: handle)
        guard !opened.isChanges else { throw FuseFailure(EBADF, "changes.img is open for reading only") }
        let id = opened.id
        guard offset >= 0, length > 0 else { throw FuseFailure(EINVAL, "bad range") }
        let end = UInt64(offset) + UInt64(length)
        guard end <= PoolGeometry.maxDiskSizeBytes else { throw FuseFailure(EFBIG, "range past the largest disk size") }
        guard let info = pool.info(id) else { throw FuseFailure(ESTALE, "disk \(id) is gone") }
        let keepSize = mode & LUNFS_FALLOC_FL_KEEP_SIZE != 0
        switch mode & ~LUNFS_FALLOC_FL_KEEP_SIZE {
        case 0:
            if !keepSize && end > info.sizeBytes {
                try engine { () throws(LunError) in try pool.resize(id, to: end) }
            }
        case LUNFS_FALLOC_FL_PUNCH_HOLE where keepSize, LUNFS_FALLOC_FL_ZERO_RANGE:
            let oldSize = info.sizeBytes
            if !keepSize && end > oldSize {
                // New space reads zeros already; only the part inside the old size needs a discard.
                try engine { () throws(LunError) in try pool.resize(id, to: end) }
            }
            let discardEnd = min(end, oldSize)
            if UInt64(offset) < discardEnd {
                try engine { () throws(LunError) in try pool.discard(id, at: UInt64(offset), length: discardEnd - UInt64(offset)) }
            }
        default:
            throw FuseFailure(EOPNOTSUPP, "fallocate mode 0x\(String(mode, radix: 16)) is not supported")
        }
        touch(id)
    }

    /// lseek(2) for SEEK_DATA and SEEK_HOLE; the kernel answers the other kinds itself.
    func seek(handle: UInt64, offset: off_t, whence: Int32) throws(FuseFailure) -> off_t {
        let opened = try image(of: handle)
        let id = opened.id
        guard whence == LUNFS_SEEK_DATA || whence == LUNFS_SEEK_HOLE else {
            throw FuseFailure(EINVAL, "lseek whence \(whence)")
        }
        guard offset >= 0 else { throw FuseFailure(EINVAL, "negative offset") }
        // Data the kernel still holds dirty (writeback cache, shared mmap) is data too (cp skips holes):
        // it hands the dirty pages past `offset` over first, as mkdir does.
        try kernelCache.writeBack(id, from: offset)
        let found = try engine { () throws(LunError) in
            opened.isChanges ? try pool.seekChanges(id, from: UInt64(offset), data: whence == LUNFS_SEEK_DATA)
                : try pool.seek(id, from: UInt64(offset), data: whence == LUNFS_SEEK_DATA)
        }
        guard let found else {
            // The normal answer at the end of the data (cp and qemu-img ask on every file).
            var failure = FuseFailure(ENXIO, "no \(whence == LUNFS_SEEK_DATA ? "data" : "hole") after \(offset)")
            failure.isRoutineProbe = true
            throw failure
        }
        return off_t(found)
    }

    /// setattr: the size of an image is the disk's size (truncate); modification times are kept
    /// for this mount; mode and owner of disk directories and images are kept in the pool
    /// (the kernel checks who may change them: default_permissions). The root's are fixed, but
    /// "changing" them to what they already are succeeds (cp -p, install and tar do that).
    /// `handle` is the file handle an ftruncate came through (nil for truncate by path).
    func setAttributes(_ ino: fuse_ino_t, _ wanted: stat, fields: Int32, handle: UInt64? = nil) throws(FuseFailure) -> stat {
        let node = try resolve(ino)
        if case .changes = node {
            // Its mode and owner follow disk.img's; its size is the disk's; times are dropped.
            if fields & FUSE_SET_ATTR_SIZE != 0 { throw FuseFailure(EACCES, "changes.img is read-only") }
            if fields & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID) != 0 {
                let current = attributes(of: node)
                let same = (fields & FUSE_SET_ATTR_MODE == 0 || wanted.st_mode & 0o7777 == current.st_mode & 0o7777)
                    && (fields & FUSE_SET_ATTR_UID == 0 || wanted.st_uid == current.st_uid)
                    && (fields & FUSE_SET_ATTR_GID == 0 || wanted.st_gid == current.st_gid)
                if !same { throw FuseFailure(EPERM, "changes.img takes its mode and owner from disk.img") }
            }
            return attributes(of: node)
        }
        try changeAccess(node, wanted, fields: fields)
        if fields & FUSE_SET_ATTR_SIZE != 0 {
            guard case .image(let info) = node else { throw FuseFailure(EISDIR, "directories have no size") }
            guard wanted.st_size >= 0 else { throw FuseFailure(EINVAL, "negative size") }
            guard UInt64(wanted.st_size) <= PoolGeometry.maxDiskSizeBytes else { throw FuseFailure(EFBIG, "larger than the largest disk") }
            // fsx and others truncate to the current size; that must be a cheap success. It is
            // no modification either (the kernel sends one after a failed O_DIRECT write past the
            // end; ftruncate(2) sends MTIME_NOW along, which touches below).
            if UInt64(wanted.st_size) != info.sizeBytes {
                // Shrinking frees data an open holder may still use (a loop device's file
                // system past the new end): refused while another handle is open.
                if UInt64(wanted.st_size) < info.sizeBytes {
                    try refuseIfOpen(info.id, doing: .shrink, exceptHandle: handle)
                }
                try engine { () throws(LunError) in try pool.resize(info.id, to: UInt64(wanted.st_size)) }
                touch(info.id)
            }
        }
        if case .image(let info) = node {
            if fields & FUSE_SET_ATTR_MTIME_NOW != 0 {
                touch(info.id)
            } else if fields & FUSE_SET_ATTR_MTIME != 0 {
                setModificationTime(of: info.id, to: wanted.st_mtim)
            }
        }
        // Access times are not kept (they read as the modification time); directories keep
        // their creation time. Both kinds of change are accepted and dropped.
        return attributes(of: try resolve(ino))
    }

    /// chmod and chown: kept in the pool for disk directories and images; the root's mode and
    /// owner are fixed (EPERM unless unchanged).
    private func changeAccess(_ node: ResolvedNode, _ wanted: stat, fields: Int32) throws(FuseFailure) {
        let current = attributes(of: node)
        var mode = current.st_mode & 0o7777, uid = current.st_uid, gid = current.st_gid
        if fields & FUSE_SET_ATTR_MODE != 0 { mode = wanted.st_mode & 0o7777 }
        if case .image = node, mode & Self.imageDroppedModeBits != 0 {
            log.write("chmod: set-user-ID and set-group-ID are dropped on images (mode \(String(mode, radix: 8)))")
            mode &= ~Self.imageDroppedModeBits
        }
        if fields & FUSE_SET_ATTR_UID != 0 { uid = wanted.st_uid }
        if fields & FUSE_SET_ATTR_GID != 0 { gid = wanted.st_gid }
        guard mode != current.st_mode & 0o7777 || uid != current.st_uid || gid != current.st_gid else { return }
        let access = NodeAccess(mode: UInt16(mode), uid: uid, gid: gid)
        switch node {
        case .root:
            throw FuseFailure(EPERM, "the mount's root keeps mode 0755 and the mounting user")
        case .directory(let info):
            try engine { () throws(LunError) in try pool.setAccess(info.id, of: .directory, access) }
        case .image(let info):
            try engine { () throws(LunError) in try pool.setAccess(info.id, of: .image, access) }
        case .changes:
            throw FuseFailure(EPERM, "changes.img takes its mode and owner from disk.img")
        }
    }
}
