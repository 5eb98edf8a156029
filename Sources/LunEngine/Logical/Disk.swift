// A logical disk (a LUN) in memory: its directory entry, its place in the sharing chain and
// its map. Disks linked by a chain share one `SharingFamily`, whose read-write lock guards
// their maps: I/O takes it shared, anything that changes a map takes it exclusive.

final class Disk: @unchecked Sendable {
    let id: DiskID
    var name: String
    /// The directory this node lives in (nil: the pool's root).
    var parent: DiskID?
    /// Fixed once the disk is visible to other threads (set at creation or while loading), so
    /// a lock taken through it is the lock released through it.
    var family: SharingFamily
    /// Older neighbour in the sharing chain (the snapshot taken just before this state).
    var predecessor: Disk?
    /// Newer neighbour in the sharing chain.
    var successor: Disk?
    var sizeBytes: UInt64
    var raid: RAIDLevel
    var hasImage: Bool
    var hasWritten: Bool
    var createdAt: UInt64
    /// Created (or set) fully reserved: space for every segment it shares is set aside.
    var reserved = false
    /// Segments still set aside for this (fully reserved) snapshot.
    var reservedSegments: Int
    /// New snapshots of this disk are created reserved.
    var reserveSnapshots: Bool
    var map: DiskMap
    /// Set when the node is gone, so open handles answer ESTALE.
    var removed = false
    /// Whether the disk is a snapclone on its way out of the chain, or one that left it.
    var clone: CloneState = .none
    /// Mode and owner of its directory and image, once chmod or chown set them (DiskRecord).
    var directoryAccess: NodeAccess?
    var imageAccess: NodeAccess?
    /// What a write that finds the pool full does (SpacePolicy.swift): fail, or drop this
    /// chain's expendable snapshots; and whether this snapshot may be dropped so (DiskRecord).
    var onFull: OnFullPolicy = .fail
    var expendable = false

    init(id: DiskID, name: String, parent: DiskID?, family: SharingFamily, sizeBytes: UInt64, raid: RAIDLevel,
         createdAt: UInt64, entriesPerLMap: Int) {
        self.id = id
        self.name = name
        self.parent = parent
        self.family = family
        self.sizeBytes = sizeBytes
        self.raid = raid
        self.hasImage = true
        self.hasWritten = false
        self.createdAt = createdAt
        self.reservedSegments = 0
        self.reserveSnapshots = false
        self.map = DiskMap(entriesPerLMap: entriesPerLMap)
    }
}

/// Where a disk stands as a copy (docs/DESIGN.md section 8b). A snapclone is a snapshot whose
/// shared segments a background copy makes its own; when none is left it leaves its chain and
/// is independent. A disk that is neither is a plain disk or snapshot.
enum CloneState: UInt8, Sendable {
    case none
    /// Copying: its successor may keep Sp on segments it already copied (a shadow).
    case copying
    /// Left its chain with all its data; it stays in its directory until moved.
    case independent
}

