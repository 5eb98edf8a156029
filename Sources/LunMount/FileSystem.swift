// The mounted file system's state, shared by every libfuse worker thread: the pool it serves,
// the log, and the little the kernel needs that the engine does not keep (modification times,
// inode generations). Callbacks find it through `fuse_req_userdata`; there are no globals.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import LunEngine
import Synchronization

/// Choices made at mount time that change how the file system answers.
struct FileSystemOptions: Sendable {
    /// Open images with FOPEN_DIRECT_IO (bypass the page cache); off by default.
    var directIO = false
    /// The kernel's writeback cache (FUSE_WRITEBACK_CACHE): on by default, -o no_writeback_cache.
    var writebackCache = true
    /// How long the kernel may trust names and attributes it was given.
    var entryTimeoutSeconds = 1.0
    var attributeTimeoutSeconds = 1.0
    /// The mount point, resolved: files of snapshots on separate storage may not lie below it.
    var mountpoint: String? = nil
    /// Under `-o allow_other` other users reach the tree: disks nobody chmod'ed or chown'ed
    /// show 0700 directories and 0600 images instead of 0755 and 0644.
    var ownerOnlyByDefault = false
}

/// The changes to an image that are refused while something holds it open.
enum ImageChange { case delete, shrink }

final class FileSystem: Sendable {
    let pool: any MountablePool
    let log: DaemonLog
    let options: FileSystemOptions
    /// Everything in the tree belongs to the user who mounted it.
    let ownerUID: uid_t
    let ownerGID: gid_t
    /// The root directory's times: when this mount started.
    let mountedAt: timespec

    /// Modification times set by writes, truncates and `touch` during this mount. The engine
    /// keeps only the creation time, which is what a disk shows until it is first changed.
    private let modificationTimes = Mutex<[DiskID: timespec]>([:])
    /// Per inode number, bumped whenever a node or its image goes away, so that open handles
    /// turn stale and a later disk reusing the id gets fresh kernel inodes (and no stale page
    /// cache) under the same number. Absent means generation 0.
    private let generations = Mutex<[fuse_ino_t: UInt64]>([:])
    /// Open handles per image, for the busy guards of unlink and shrinking truncates.
    let openImages = OpenImageTable()
    /// The result of the last scrub asked for through `user.lunfs.scrub`.
    let lastScrub = Mutex<String>("no scrub has run during this mount")
    /// Lookups of `security.capability`: the kernel's check before a write when it does not
    /// know that lunfs removes privileges itself (FUSE_HANDLE_KILLPRIV_V2). Logged at unmount.
    let capabilityLookups = Atomic<Int>(0)
    /// The kernel's cached pages of the images: write-back before a snapshot, refused write-backs.
    let kernelCache = KernelPageCache()

    init(pool: any MountablePool, log: DaemonLog, options: FileSystemOptions) {
        self.pool = pool
        self.log = log
        self.options = options
        self.ownerUID = getuid()
        self.ownerGID = getgid()
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        self.mountedAt = now
        // A snapshot the space policy dropped is gone as if by rmdir: its handles turn stale and
        // the kernel forgets its name (the engine logs the drop).
        pool.observeDroppedSnapshots { [weak self] dropped in
            guard let self else { return }
            retire(dropped.id, imageOnly: false)
            let parent = dropped.parent.map { MountedNode.directory($0).inodeNumber } ?? MountedNode.rootInodeNumber
            kernelCache.nameRemoved(parent: parent, dropped.name)
        }
    }

    /// The file system a request belongs to: the userdata given to `fuse_session_new`.
    @inline(__always)
    static func of(_ request: fuse_req_t?) -> FileSystem {
        guard let userdata = fuse_req_userdata(request) else {
            preconditionFailure("a fuse session without userdata")
        }
        return Unmanaged<FileSystem>.fromOpaque(userdata).takeUnretainedValue()
    }

    // MARK: Times and generations

    func modificationTime(of info: DiskInfo) -> timespec {
        modificationTimes.withLock { $0[info.id] } ?? timespec(tv_sec: Int(truncatingIfNeeded: info.createdAt), tv_nsec: 0)
    }

    func setModificationTime(of id: DiskID, to time: timespec) {
        modificationTimes.withLock { $0[id] = time }
    }

    func touch(_ id: DiskID) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        setModificationTime(of: id, to: now)
    }

    func generation(of node: MountedNode) -> UInt64 {
        generations.withLock { $0[node.inodeNumber] } ?? 0
    }

    /// Called after a disk's image is deleted (`imageOnly`) or its whole node removed.
    func retire(_ id: DiskID, imageOnly: Bool) {
        generations.withLock { table in
            table[MountedNode.image(id).inodeNumber, default: 0] += 1
            if !imageOnly { table[MountedNode.directory(id).inodeNumber, default: 0] += 1 }
        }
        modificationTimes.withLock { _ = $0.removeValue(forKey: id) }
        openImages.forget(id)
        kernelCache.forget(id)
    }

    /// EBUSY if `id`'s image is open (other than through `exceptHandle`): deleting or
    /// shrinking it would pull data from under a loop device, a VM or a process.
    func refuseIfOpen(_ id: DiskID, doing action: ImageChange, exceptHandle: UInt64? = nil) throws(FuseFailure) {
        let current = generation(of: .image(id))
        var except = 0
        if let exceptHandle, let opened = OpenImage.of(handle: exceptHandle), opened.id == id, opened.generation == current {
            except = 1
        }
        guard let holders = openImages.holdersAfterGrace(of: id, generation: current, except: except) else { return }
        let name = pool.treePath(of: id) ?? "disk \(id)"
        switch action {
        case .delete:
            throw FuseFailure(EBUSY, "cannot delete \(name)/disk.img: it has \(holders.description); close it first (losetup -d, stop the VM), or delete it anyway with setfattr -n \(ExtendedAttribute.forceDeleteName) -v 1 on its directory")
        case .shrink:
            throw FuseFailure(EBUSY, "cannot shrink \(name)/disk.img: it has \(holders.description); close it first (growing is allowed)")
        }
    }

    // MARK: Reservation flags

    func reservationFlags(of info: DiskInfo) -> (reserved: Bool, reserveSnapshots: Bool) {
        (info.reserved, info.reserveSnapshots)
    }
}
