// How nodes of the tree look to stat(2) and the pool to statfs(2): directories and images
// with the mode and owner chmod and chown gave them (kept in the pool), else directories
// 0755 and images 0644 (0700 and 0600 under allow_other) owned by the user who mounted;
// images with the disk's size and allocation.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import LunEngine

/// A node of the tree together with the engine's view of its disk.
enum ResolvedNode {
    case root
    case directory(DiskInfo)
    case image(DiskInfo)
    /// The disk's changes.img (see `hasChangeFile`).
    case changes(DiskInfo)
}

/// Names longer than this are refused with ENAMETOOLONG, as local file systems do.
let maximumNameBytes = 255
/// stat's st_blocks counts 512-byte units whatever the block size.
let statBlockUnitBytes: UInt64 = 512
/// statfs reports the pool in blocks of this size.
let statfsBlockSizeBytes: UInt64 = 4096
/// The I/O size stat suggests for images (cp and friends size their buffers from it); the
/// same as the largest read and write request the session accepts.
let preferredImageIOSizeBytes = 1 << 20

extension FileSystem {
    /// The node an inode number names, or ENOENT if it names nothing (any more).
    func resolve(_ ino: fuse_ino_t) throws(FuseFailure) -> ResolvedNode {
        guard let node = MountedNode(inodeNumber: ino) else {
            throw FuseFailure(ENOENT, "inode number names no node")
        }
        switch node {
        case .root:
            return .root
        case .directory(let id):
            guard let info = pool.info(id) else { throw FuseFailure(ENOENT, "disk \(id) is gone") }
            return .directory(info)
        case .image(let id):
            guard let info = pool.info(id) else { throw FuseFailure(ENOENT, "disk \(id) is gone") }
            guard info.hasImage else { throw FuseFailure(ENOENT, "disk \(info.name) has no image") }
            return .image(info)
        case .changes(let id):
            guard let info = pool.info(id) else { throw FuseFailure(ENOENT, "disk \(id) is gone") }
            guard hasChangeFile(info) else { throw FuseFailure(ENOENT, "disk \(info.name) has no change file") }
            return .changes(info)
        }
    }

    /// The disk a directory inode stands for (nil for the root); ENOTDIR for an image.
    func directoryDisk(_ ino: fuse_ino_t) throws(FuseFailure) -> DiskInfo? {
        switch try resolve(ino) {
        case .root: return nil
        case .directory(let info): return info
        case .image: throw FuseFailure(ENOTDIR, "disk.img is not a directory")
        case .changes: throw FuseFailure(ENOTDIR, "changes.img is not a directory")
        }
    }

    func attributes(of node: ResolvedNode) -> stat {
        var attributes = stat()
        attributes.st_uid = ownerUID
        attributes.st_gid = ownerGID
        switch node {
        case .root:
            attributes.st_ino = UInt(MountedNode.rootInodeNumber)
            attributes.st_mode = S_IFDIR | 0o755
            attributes.st_nlink = UInt(2 + pool.children(of: nil).count)
            attributes.st_size = 4096
            setTimes(&attributes, mountedAt)
        case .directory(let info):
            attributes.st_ino = UInt(MountedNode.directory(info.id).inodeNumber)
            applyAccess(&attributes, info.directoryAccess, type: S_IFDIR, defaultMode: options.ownerOnlyByDefault ? 0o700 : 0o755)
            attributes.st_nlink = UInt(2 + pool.children(of: info.id).count)
            attributes.st_size = 4096
            setTimes(&attributes, timespec(tv_sec: Int(truncatingIfNeeded: info.createdAt), tv_nsec: 0))
        case .image(let info):
            attributes.st_ino = UInt(MountedNode.image(info.id).inodeNumber)
            applyAccess(&attributes, info.imageAccess, type: S_IFREG, defaultMode: options.ownerOnlyByDefault ? 0o600 : 0o644)
            attributes.st_mode &= ~Self.imageDroppedModeBits
            attributes.st_nlink = 1
            attributes.st_size = Int(truncatingIfNeeded: info.sizeBytes)
            attributes.st_blocks = Int(truncatingIfNeeded: info.allocatedBytes / statBlockUnitBytes)
            attributes.st_blksize = preferredImageIOSizeBytes
            setTimes(&attributes, modificationTime(of: info))
        case .changes(let info):
            // Read-only, and readable by whoever may read disk.img and nobody else.
            attributes.st_ino = UInt(MountedNode.changes(info.id).inodeNumber)
            applyAccess(&attributes, info.imageAccess, type: S_IFREG, defaultMode: options.ownerOnlyByDefault ? 0o600 : 0o644)
            attributes.st_mode &= ~mode_t(0o7333)
            attributes.st_nlink = 1
            attributes.st_size = Int(truncatingIfNeeded: info.sizeBytes)
            let changed = (try? pool.changeSummary(info.id))??.changedBytes ?? 0
            attributes.st_blocks = Int(truncatingIfNeeded: changed / statBlockUnitBytes)
            attributes.st_blksize = preferredImageIOSizeBytes
            setTimes(&attributes, modificationTime(of: info))
        }
        return attributes
    }

    /// Images never carry set-user-ID or set-group-ID: the session tells the kernel at INIT that
    /// the file system removes them on write, chown and truncate (FUSE_HANDLE_KILLPRIV_V2), which
    /// spares a `security.capability` round trip before every buffered write, and an image that
    /// never has them keeps that promise with no work on the write path. chmod drops them.
    static let imageDroppedModeBits: mode_t = 0o6000

    /// Mode and owner: as chmod/chown set them, else the defaults.
    private func applyAccess(_ attributes: inout stat, _ access: NodeAccess?, type: mode_t, defaultMode: mode_t) {
        guard let access else { attributes.st_mode = type | defaultMode; return }
        attributes.st_mode = type | mode_t(access.mode)
        attributes.st_uid = access.uid
        attributes.st_gid = access.gid
    }

    private func setTimes(_ attributes: inout stat, _ time: timespec) {
        attributes.st_atim = time
        attributes.st_mtim = time
        attributes.st_ctim = time
    }

    /// What `lookup`, `mkdir` and `create` hand the kernel for a node.
    func entry(for node: ResolvedNode) -> fuse_entry_param {
        var entry = fuse_entry_param()
        let attributes = attributes(of: node)
        entry.ino = fuse_ino_t(attributes.st_ino)
        switch node {
        case .root: entry.generation = 0
        case .directory(let info): entry.generation = generation(of: .directory(info.id))
        case .image(let info), .changes(let info): entry.generation = generation(of: .image(info.id))
        }
        entry.attr = attributes
        entry.attr_timeout = options.attributeTimeoutSeconds
        entry.entry_timeout = options.entryTimeoutSeconds
        return entry
    }

    /// statfs in the pool's own terms: the size is what the pool holds at its default RAID
    /// level (`PoolUsage.usableBytes`: used + reserved + free), used is what the disks map
    /// (each segment once) plus what reservations set aside, and free and available are what
    /// a write at the default level can still get. Parity and mirror copies are the price of
    /// the level, so they shrink the size instead of showing as used.
    func fileSystemStatistics() -> statvfs {
        let usage = pool.usage()
        var statistics = statvfs()
        statistics.f_bsize = UInt(statfsBlockSizeBytes)
        statistics.f_frsize = UInt(statfsBlockSizeBytes)
        statistics.f_blocks = UInt(usage.usableBytes / statfsBlockSizeBytes)
        statistics.f_bfree = UInt(usage.freeBytes / statfsBlockSizeBytes)
        statistics.f_bavail = statistics.f_bfree
        // Inodes are not a resource here: their numbers come from 32-bit disk ids. Counting the
        // nodes would cost a walk of the engine's tables on every df, so none are reported used.
        statistics.f_files = 2 * UInt(DiskID.max) + 2
        statistics.f_ffree = statistics.f_files
        statistics.f_favail = statistics.f_ffree
        statistics.f_namemax = UInt(maximumNameBytes)
        return statistics
    }
}
