// The mapping between kernel inode numbers and the nodes of the mounted tree. It is pure
// arithmetic on disk ids, so numbers are stable across remounts and need no table:
//
//     1          the mount's root directory
//     2*d + 2    the directory of the node with DiskID d
//     2*d + 3    that node's disk.img
//
// DiskID is 32 bits wide, so every number fits in 34 bits and none collides with the root.
import CFuse3
import LunEngine

enum MountedNode: Equatable {
    case root
    case directory(DiskID)
    case image(DiskID)

    static let rootInodeNumber: fuse_ino_t = 1

    init?(inodeNumber ino: fuse_ino_t) {
        if ino == MountedNode.rootInodeNumber {
            self = .root
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
        }
    }

    /// The disk this node belongs to; nil for the root.
    var diskID: DiskID? {
        switch self {
        case .root: return nil
        case .directory(let id), .image(let id): return id
        }
    }
}
