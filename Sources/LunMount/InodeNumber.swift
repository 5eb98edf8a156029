// The mapping between kernel inode numbers and the nodes of the mounted tree. It is pure
// arithmetic on disk ids, so numbers are stable across remounts and need no table:
//
//     1          the mount's root directory
//     2*d + 2    the directory of the node with DiskID d
//     2*d + 3    that node's disk.img
//     2^35 + d   that node's changes.img (what it changed since its predecessor)
//
// DiskID is 32 bits wide, so the first three fit in 34 bits and none collides with the root
// or with the change files' numbers above them.
import CFuse3
import LunEngine

enum MountedNode: Equatable {
    case root
    case directory(DiskID)
    case image(DiskID)
    case changes(DiskID)

    static let rootInodeNumber: fuse_ino_t = 1
    static let firstChangesInodeNumber: fuse_ino_t = 1 << 35

    init?(inodeNumber ino: fuse_ino_t) {
        if ino == MountedNode.rootInodeNumber {
            self = .root
            return
        }
        if ino >= MountedNode.firstChangesInodeNumber {
            guard ino - MountedNode.firstChangesInodeNumber <= fuse_ino_t(DiskID.max) else { return nil }
            self = .changes(DiskID(ino - MountedNode.firstChangesInodeNumber))
            return
        }
        guard ino >= 2, (ino - 2) / 2 <= fuse_ino_t(DiskID.max) else { return nil }
        let id = DiskID((ino - 2) / 2)
        self = ino % 2 == 0 ? .directory(id) : .image(id)
    }

    var inodeNumber: fuse_ino_t {
        switch self {
        case .root: return MountedNode.rootInodeNumber
        case .directory(let id): return 2 * fuse_ino_t(id) + 2
        case .image(let id): return 2 * fuse_ino_t(id) + 3
        case .changes(let id): return MountedNode.firstChangesInodeNumber + fuse_ino_t(id)
        }
    }

    /// The disk this node belongs to; nil for the root.
    var diskID: DiskID? {
        switch self {
        case .root: return nil
        case .directory(let id), .image(let id), .changes(let id): return id
        }
    }
}
