// What the daemon does about the kernel's page cache of the images when the writeback cache
// is on (docs/MOUNT.md, "Writeback cache"): it makes the kernel hand over an image's dirty
// pages before a snapshot splits the disk, and it keeps a write-back the engine refused
// (ENOSPC, EIO) from vanishing: the next fsync and the next close of that image fail with it,
// and the kernel's copy of the refused bytes is dropped so that reads show what is stored.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import CLunSys
import Foundation
import LunEngine
import Synchronization

/// A write-back the engine refused, owed to the image's next fsync and next close.
struct RefusedWriteBack: Sendable {
    var errno: Int32
    var owedToFsync = true
    var owedToClose = true
}

final class KernelPageCache: @unchecked Sendable {
    /// The session, while it exists (notify calls need it); nil before and after.
    private let session = Mutex<UInt>(0)
    private let refused = Mutex<[DiskID: RefusedWriteBack]>([:])

    /// Flushes in progress, and how many may run at once: each holds a request thread until
    /// the kernel's WRITEs are served by others, so one thread must always stay free.
    private let flushes = Mutex<Int>(0)
    private let flushLimit = Mutex<Int>(0)

    /// The number of threads serving requests (at least 2 with the writeback cache).
    func serve(withThreads count: Int) { flushLimit.withLock { $0 = max(0, count - 1) } }

    /// Set once the session exists; set to nil before it is destroyed (this waits for a
    /// drop of refused pages still running on its own thread, and for names being dropped).
    func attach(_ session: OpaquePointer?) {
        let bits = session.map { UInt(bitPattern: Int(bitPattern: UnsafeRawPointer($0))) } ?? 0
        self.session.withLock { $0 = bits }
        if bits == 0 { while notifiesInKernel.withLock({ $0 }) > 0 { usleep(1000) } }
    }

    /// Notify calls made off the request threads (`withSessionOutsideLock`), inside the
    /// kernel now: they hold no lock of ours (the kernel may wait in them for a directory or a
    /// page whose request needs the session), so this count keeps the session alive instead.
    private let notifiesInKernel = Mutex<Int>(0)

    /// Runs `call` with the session, unless it is gone, without holding the session mutex:
    /// counted under it, so that a detach either comes first (no call) or waits for this one.
    private func withSessionOutsideLock(_ call: (OpaquePointer) -> Void) {
        let bits = session.withLock { bits in
            if bits != 0 { notifiesInKernel.withLock { $0 += 1 } }
            return bits
        }
        guard let session = OpaquePointer(bitPattern: bits) else { return }
        call(session)
        notifiesInKernel.withLock { $0 -= 1 }
    }

    /// Makes the kernel write back every dirty page of `id`'s image (buffered writes and
    /// shared mmaps alike) and waits until the daemon has taken them: the kernel launders
    /// them through WRITE requests inside the notify, served by other worker threads. So the
    /// caller must hold no lock those writes need, and other workers must be free. Clean
    /// pages are dropped too: for changes to the image's bytes (a rollback). Without a session
    /// (no mount) or cached pages it does nothing.
    /// `from`: only the pages from that offset to the end. The kernel walks every page of the
    /// range and launders each dirty one it meets, one at a time, also pages written while it
    /// walks (docs/PERFORMANCE.md section 11); only this image's pages are written.
    /// EBUSY when every other request thread is already in a flush (waiting would leave none
    /// to serve the WRITEs).
    func writeBack(_ id: DiskID, from offset: off_t = 0) throws(FuseFailure) {
        // libfuse's notify calls are safe from any thread while the session exists; the
        // session outlives every request, so holding the mutex across the call is not needed.
        guard let session = OpaquePointer(bitPattern: session.withLock({ $0 })) else { return }
        try inFlushSlot {
            // -ENOENT: the kernel holds no inode for the image, so no pages either.
            _ = fuse_lowlevel_notify_inval_inode(session, MountedNode.image(id).inodeNumber, offset, 0)
        }
    }

    /// The mount point and the device number of this session's mount, once mounted.
    private let mount = Mutex<(String, dev_t)?>(nil)

    /// Called once the session is mounted at `mountpoint` (resolved) as file system `device`.
    func mounted(at mountpoint: String, device: dev_t) { mount.withLock { $0 = (mountpoint, device) } }

    /// Threads of this daemon inside `writeBackDirty`: the FLUSH their close(2) sends must not
    /// take an error owed to the user's next close.
    private let internalClosers = Mutex<Set<Int32>>([])

    /// Whether a FLUSH comes from this daemon's own close in `writeBackDirty`.
    func isInternalClose(pid: pid_t) -> Bool { internalClosers.withLock { $0.contains(pid) } }

    /// Makes the kernel write back the pages of `id`'s image that are dirty now (buffered
    /// writes and shared mmaps alike) and waits until the daemon has taken them, keeping clean
    /// pages cached: for what leaves the image's bytes as they are (a snapshot, opening
    /// changes.img). The daemon opens the kernel's inode of the image by file handle on its own
    /// mount (no name is looked up, so no directory that mkdir or setxattr holds locked is
    /// waited for) and calls sync_file_range with WAIT_BEFORE|WRITE|WAIT_AFTER, a
    /// data-integrity write-back: the kernel tags the pages dirty at the call and writes only
    /// those, many in flight (docs/PERFORMANCE.md section 11). ESTALE: the kernel holds no inode
    /// of this generation, so no pages of it. When the handle cannot be used otherwise (no
    /// CAP_DAC_READ_SEARCH, the mount point no longer this mount), `writeBack` does the job.
    /// Not for a caller inside a request on the image itself (lseek holds the image's inode
    /// lock, which the close of the handle takes on kernels before about 6.16): that one uses
    /// `writeBack`. Same admission rule as `writeBack`: other request threads serve the OPEN,
    /// the WRITEs and the FLUSH.
    func writeBackDirty(_ id: DiskID, generation: UInt64) throws(FuseFailure) {
        guard let (mountpoint, device) = mount.withLock({ $0 }), session.withLock({ $0 }) != 0 else {
            return try writeBack(id)
        }
        var handedOver = false
        try inFlushSlot {
            let tid = Int32(lunsys_gettid())
            internalClosers.withLock { _ = $0.insert(tid) }
            defer { internalClosers.withLock { _ = $0.remove(tid) } }
            let fd = lunsys_open_fuse_inode(mountpoint, UInt64(device), MountedNode.image(id).inodeNumber, UInt32(truncatingIfNeeded: generation))
            guard fd >= 0 else {
                handedOver = errno == ESTALE
                return
            }
            handedOver = true
            // A refused write-back is owed to the user's next fsync and close
            // (refusedWriteBack), not to this call: its result is not looked at.
            _ = lunsys_write_back_and_wait(fd, 0)
            close(fd)
        }
        if !handedOver { try writeBack(id) }
    }

    /// Runs `flush` holding one of the request threads that may wait for others, or throws
    /// EBUSY when none is left. With one request thread (max_threads=1, allowed only with the
    /// writeback cache off) no other thread could serve the WRITEs, so it does nothing; only
    /// stores through a shared mmap not yet msync'd are then missed (docs/MOUNT.md).
    private func inFlushSlot(_ flush: () -> Void) throws(FuseFailure) {
        let limit = flushLimit.withLock { $0 }
        if limit == 0 { return }
        let admitted = flushes.withLock { running in
            guard running < limit else { return false }
            running += 1
            return true
        }
        guard admitted else {
            throw FuseFailure(EBUSY, "\(limit) flushes of dirty pages already hold every request thread but one; try again")
        }
        defer { flushes.withLock { $0 -= 1 } }
        flush()
    }

    /// Makes the kernel ask again for the image's attributes (st_blocks changes as dirty
    /// pages reach the pool, and with the writeback cache no write tells the kernel so).
    func attributesChanged(_ id: DiskID) {
        guard let session = OpaquePointer(bitPattern: session.withLock({ $0 })) else { return }
        // A negative offset: the attributes only, no pages.
        _ = fuse_lowlevel_notify_inval_inode(session, MountedNode.image(id).inodeNumber, -1, 0)
    }

    /// Records a write-back of `count` bytes at `offset` that the engine refused, and drops
    /// the kernel's copy of that range (off this thread: the kernel waits for this WRITE's
    /// reply before it lets the pages go).
    func refusedWriteBack(_ id: DiskID, offset: off_t, count: Int, errno: Int32) {
        refused.withLock { $0[id] = RefusedWriteBack(errno: errno) }
        pageDrops.withLock { $0[id, default: 0] += 1 }
        let ino = MountedNode.image(id).inodeNumber
        Thread { [self] in
            withSessionOutsideLock { _ = fuse_lowlevel_notify_inval_inode($0, ino, offset, off_t(count)) }
            pageDrops.withLock { drops in
                drops[id]! -= 1
                if drops[id] == 0 { drops[id] = nil }
            }
        }.start()
    }

    /// Drops of refused pages not yet done, per image.
    private let pageDrops = Mutex<[DiskID: Int]>([:])

    /// Before an fsync or close reports a refused write-back: waits (up to 5 s) until the
    /// kernel's copies of the refused bytes are dropped, so that a read after the error never
    /// returns them. The drop needs nothing this request holds.
    private func awaitPageDrops(_ id: DiskID) {
        for _ in 0..<5000 {
            if pageDrops.withLock({ $0[id] == nil }) { return }
            usleep(1000)
        }
    }

    /// Makes the kernel forget the name `name` in directory `parent` (a node the engine removed
    /// on its own: a snapshot the space policy dropped). Off this thread and under the mutex, as
    /// above: the caller may be serving a request, and the kernel locks the directory.
    func nameRemoved(parent: fuse_ino_t, _ name: String) {
        Thread { [self] in
            withSessionOutsideLock { session in
                _ = name.withCString { fuse_lowlevel_notify_inval_entry(session, parent, $0, strlen($0)) }
            }
        }.start()
    }

    /// The error owed to this fsync of `id`'s image, if a write-back failed since the last one.
    func takeForFsync(_ id: DiskID) -> Int32? {
        awaitPageDrops(id)
        return refused.withLock { table in
            guard var entry = table[id], entry.owedToFsync else { return nil }
            entry.owedToFsync = false
            table[id] = entry.owedToClose ? entry : nil
            return entry.errno
        }
    }

    /// The error owed to this close (FLUSH) of `id`'s image, if a write-back failed since the last.
    func takeForClose(_ id: DiskID) -> Int32? {
        awaitPageDrops(id)
        return refused.withLock { table in
            guard var entry = table[id], entry.owedToClose else { return nil }
            entry.owedToClose = false
            table[id] = entry.owedToFsync ? entry : nil
            return entry.errno
        }
    }

    /// Makes the kernel drop its names `disk.img` and `changes.img` in `id`'s directory, so
    /// that the next lookup meets the image's new inode generation (after a rollback) and the
    /// kernel takes a fresh inode, with the size the pool now has. `afterReply`: from a thread of its own, for a
    /// caller inside a request on the directory (setxattr holds the directory's lock, which
    /// the kernel needs for this); it runs as soon as that request is answered.
    func forgetImageName(_ id: DiskID, afterReply: Bool) {
        let parent = MountedNode.directory(id).inodeNumber
        let drop: @Sendable () -> Void = { [self] in
            withSessionOutsideLock { session in
                // changes.img shares the image's generation (and its size).
                for name in ["disk.img", "changes.img"] {
                    _ = fuse_lowlevel_notify_inval_entry(session, parent, name, name.utf8.count)
                }
            }
        }
        if afterReply { Thread { drop() }.start() } else { drop() }
    }

    /// A deleted image owes nothing any more.
    func forget(_ id: DiskID) {
        refused.withLock { _ = $0.removeValue(forKey: id) }
    }
}
