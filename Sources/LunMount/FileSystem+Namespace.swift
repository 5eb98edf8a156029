// The tree's names: looking them up and listing them, and the directory operations that map
// onto the engine (mkdir = new disk or snapshot, rmdir = remove node, unlink disk.img = drop
// the image, rename = rename within a directory). Everything else that would create a name
// is refused with EPERM: the tree holds only disks, snapshots and their images.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import LunEngine

/// The one file name inside a disk's directory.
let imageFileName = "disk.img"
/// The read-only file beside disk.img of a disk that has a predecessor: what the disk changed
/// since it (Pool+Changes.swift).
let changesFileName = "changes.img"

/// One line of a directory listing.
struct DirectoryEntry {
    var name: String
    var inodeNumber: fuse_ino_t
    var isDirectory: Bool
}

extension FileSystem {
    /// A name from the kernel as a Swift string: ENAMETOOLONG past 255 bytes, EINVAL if it is
    /// not UTF-8 (the engine stores names as strings).
    func checkedName(_ name: UnsafePointer<CChar>) throws(FuseFailure) -> String {
        let length = strlen(name)
        guard length <= maximumNameBytes else {
            throw FuseFailure(ENAMETOOLONG, "name of \(length) bytes")
        }
        guard let text = String(validatingCString: name) else {
            throw FuseFailure(EINVAL, "name is not UTF-8")
        }
        return text
    }

    /// A name that is about to be given (mkdir, rename, create): EINVAL if it holds a control
    /// character (a newline would forge lines in the log and in `lunfs status`). Names made
    /// before this rule can still be looked up, renamed from and removed.
    func checkNewName(_ name: String) throws(FuseFailure) {
        if let bad = name.unicodeScalars.first(where: { $0.value < 0x20 || (0x7f...0x9f).contains($0.value) }) {
            throw FuseFailure(EINVAL, "name holds control character U+\(String(bad.value, radix: 16, uppercase: true))")
        }
    }

    func lookup(parent: fuse_ino_t, name: String) throws(FuseFailure) -> fuse_entry_param {
        let directory = try directoryDisk(parent)
        if let directory, name == imageFileName {
            guard directory.hasImage else { throw FuseFailure(ENOENT, "\(directory.name) is hollow (its image was deleted)") }
            return entry(for: .image(directory))
        }
        let child = pool.child(named: name, of: directory?.id)
        // A snapshot named changes.img from before the name was reserved keeps its name.
        if let directory, name == changesFileName, child == nil {
            guard hasChangeFile(directory) else {
                // As for any name that does not exist: not worth a log line.
                var failure = FuseFailure(ENOENT, "\(directory.name) has no predecessor, so no changes.img")
                failure.isRoutineProbe = true
                throw failure
            }
            return entry(for: .changes(directory))
        }
        guard let id = child, let info = pool.info(id) else {
            // The normal answer before every mkdir and create: not worth a log line.
            var failure = FuseFailure(ENOENT, "no such name")
            failure.isRoutineProbe = true
            throw failure
        }
        return entry(for: .directory(info))
    }

    func directoryEntries(_ ino: fuse_ino_t) throws(FuseFailure) -> [DirectoryEntry] {
        let directory = try directoryDisk(ino)
        let selfNumber = directory.map { MountedNode.directory($0.id).inodeNumber } ?? MountedNode.rootInodeNumber
        let parentNumber = directory?.parent.map { MountedNode.directory($0).inodeNumber } ?? MountedNode.rootInodeNumber
        var entries = [
            DirectoryEntry(name: ".", inodeNumber: selfNumber, isDirectory: true),
            DirectoryEntry(name: "..", inodeNumber: parentNumber, isDirectory: true),
        ]
        if let directory, directory.hasImage {
            entries.append(DirectoryEntry(name: imageFileName, inodeNumber: MountedNode.image(directory.id).inodeNumber, isDirectory: false))
        }
        if let directory, hasChangeFile(directory), pool.child(named: changesFileName, of: directory.id) == nil {
            entries.append(DirectoryEntry(name: changesFileName, inodeNumber: MountedNode.changes(directory.id).inodeNumber, isDirectory: false))
        }
        for id in pool.children(of: directory?.id) {
            guard let child = pool.info(id) else { continue }  // removed since the listing was taken
            entries.append(DirectoryEntry(name: child.name, inodeNumber: MountedNode.directory(id).inodeNumber, isDirectory: true))
        }
        return entries
    }

    /// Packs the listing from position `offset` into a reply of at most `capacity` bytes. The
    /// offset the kernel gives back is the index of the next entry.
    func readDirectory(_ request: fuse_req_t?, ino: fuse_ino_t, capacity: Int, offset: Int) throws(FuseFailure) -> ReplyBuffer {
        let entries = try directoryEntries(ino)
        var buffer = ReplyBuffer(capacity: capacity)
        var index = max(0, offset)
        while index < entries.count {
            let listed = entries[index]
            var attributes = stat()
            attributes.st_ino = UInt(listed.inodeNumber)
            attributes.st_mode = listed.isDirectory ? S_IFDIR : S_IFREG
            let remaining = capacity - buffer.count
            let needed = listed.name.withCString { name in
                fuse_add_direntry(request, buffer.end, remaining, name, &attributes, off_t(index + 1))
            }
            guard needed <= remaining else { break }
            buffer.count += needed
            index += 1
        }
        return buffer
    }

    func makeDirectory(parent: fuse_ino_t, name: String) throws(FuseFailure) -> fuse_entry_param {
        try checkNewName(name)
        let id: DiskID
        if let directory = try directoryDisk(parent) {
            if name == imageFileName {
                throw directory.hasImage
                    ? FuseFailure(EEXIST, "disk.img exists")
                    : FuseFailure(EPERM, "disk.img is reserved for the image")
            }
            if name == changesFileName {
                throw hasChangeFile(directory)
                    ? FuseFailure(EEXIST, "changes.img exists")
                    : FuseFailure(EPERM, "changes.img is reserved for the change file")
            }
            // Every write(2) that returned before this mkdir must be in the snapshot, also
            // those the kernel still holds in its page cache (writeback cache, shared mmap):
            // it hands them over first. No lock is held here that those writes need.
            if directory.hasImage { try kernelCache.writeBackDirty(directory.id, generation: generation(of: .image(directory.id))) }
            id = try engine { () throws(LunError) in
                try pool.createSnapshot(of: directory.id, named: name, reserved: nil, quiesceTimeoutSeconds: 5)
            }
            log.write("mkdir: snapshot \(name) of \(directory.name) created (disk \(id))")
        } else {
            id = try engine { () throws(LunError) in try pool.createDisk(named: name, raid: nil) }
            log.write("mkdir: disk \(name) created (disk \(id))")
        }
        guard let info = pool.info(id) else { throw FuseFailure(EIO, "new disk \(id) vanished") }
        return entry(for: .directory(info))
    }

    func removeDirectory(parent: fuse_ino_t, name: String) throws(FuseFailure) {
        let directory = try directoryDisk(parent)
        if directory != nil, name == imageFileName {
            throw FuseFailure(ENOTDIR, "disk.img is not a directory")
        }
        if let directory, name == changesFileName, hasChangeFile(directory), pool.child(named: name, of: directory.id) == nil {
            throw FuseFailure(ENOTDIR, "changes.img is not a directory")
        }
        guard let id = pool.child(named: name, of: directory?.id), let info = pool.info(id) else {
            throw FuseFailure(ENOENT, "no such name")
        }
        // A snapshot with nothing below it goes with its image, as ZFS's rmdir of
        // .zfs/snapshot/NAME; a disk at the root keeps POSIX's rule (delete disk.img first).
        guard !pool.children(of: id).contains(where: { pool.info($0) != nil }) else {
            throw FuseFailure(ENOTEMPTY, "\(name) has snapshots below it")
        }
        if info.hasImage {
            guard info.parent != nil else { throw FuseFailure(ENOTEMPTY, "\(name) still holds disk.img") }
            try refuseIfOpen(id, doing: .delete)
        }
        try engine { () throws(LunError) in try pool.removeNode(id) }
        retire(id, imageOnly: false)
        log.write("rmdir: \(name) removed (disk \(id))")
    }

    func unlink(parent: fuse_ino_t, name: String) throws(FuseFailure) {
        let directory = try directoryDisk(parent)
        if let directory, name == changesFileName, hasChangeFile(directory), pool.child(named: name, of: directory.id) == nil {
            throw FuseFailure(EPERM, "changes.img cannot be deleted: it shows what the disk changed since its predecessor")
        }
        guard let directory, name == imageFileName else {
            if pool.child(named: name, of: directory?.id) != nil {
                throw FuseFailure(EISDIR, "\(name) is a directory")
            }
            throw FuseFailure(ENOENT, "no such file")
        }
        guard directory.hasImage else { throw FuseFailure(ENOENT, "\(directory.name) is hollow") }
        try refuseIfOpen(directory.id, doing: .delete)
        try deleteImage(of: directory, how: "unlink")
    }

    /// Whether a disk directory shows changes.img: the disk has an image and a predecessor in
    /// its chain (a snapshot on separate storage has none).
    func hasChangeFile(_ info: DiskInfo) -> Bool {
        info.hasImage && info.predecessor != nil
    }

    /// Deletes a disk's image (its directory stays for the snapshots below it); handles still
    /// open on it turn stale.
    func deleteImage(of directory: DiskInfo, how: String) throws(FuseFailure) {
        let holders = openImages.holders(of: directory.id, generation: generation(of: .image(directory.id)))
        try engine { () throws(LunError) in try pool.deleteImage(directory.id) }
        retire(directory.id, imageOnly: true)
        log.write("\(how): image of \(directory.name) deleted (disk \(directory.id))" + (holders.map { " while it had \($0.description), now stale" } ?? ""))
    }

    func rename(parent: fuse_ino_t, name: String, newParent: fuse_ino_t, newName: String, flags: UInt32) throws(FuseFailure) {
        // Only RENAME_NOREPLACE (bit 0) is honoured; exchange and whiteout cannot be done.
        if flags & ~UInt32(1) != 0 {
            throw FuseFailure(EINVAL, flags & LUNFS_RENAME_EXCHANGE != 0 ? "RENAME_EXCHANGE is not supported" : "rename flags \(flags) are not supported")
        }
        try checkNewName(newName)
        let directory = try directoryDisk(parent)
        let newDirectory = try directoryDisk(newParent)
        if directory != nil && name == imageFileName || newDirectory != nil && newName == imageFileName {
            throw FuseFailure(EPERM, "disk.img cannot be renamed or replaced")
        }
        if directory != nil && name == changesFileName && pool.child(named: name, of: directory?.id) == nil
            || newDirectory != nil && newName == changesFileName {
            throw FuseFailure(EPERM, "changes.img cannot be renamed or replaced")
        }
        guard let id = pool.child(named: name, of: directory?.id) else { throw FuseFailure(ENOENT, "no such name") }
        guard directory?.id == newDirectory?.id else {
            // An independent disk (a snapclone done copying) may move up to the root.
            guard newDirectory == nil, pool.info(id)?.kind == .independent else {
                throw FuseFailure(EPERM, "a disk or snapshot cannot move to another directory (only an independent disk can move to the root)")
            }
            // The inode numbers follow the disk, so open handles keep working.
            try engine { () throws(LunError) in try pool.moveToRoot(id, as: newName) }
            log.write("rename: \(name) moved to the root as \(newName) (disk \(id))")
            return
        }
        if name == newName { return }
        try engine { () throws(LunError) in try pool.rename(id, to: newName) }
        log.write("rename: \(name) -> \(newName) (disk \(id))")
    }

    /// create(2) of a new file: only disk.img exists in the tree, so this succeeds only in the
    /// race where disk.img appeared after the kernel's lookup, and then acts as open.
    func createFile(parent: fuse_ino_t, name: String, flags: Int32, openerPID: pid_t) throws(FuseFailure) -> (fuse_entry_param, OpenImage) {
        try checkNewName(name)
        guard let directory = try directoryDisk(parent), name == imageFileName else {
            throw FuseFailure(EPERM, "only disk.img can exist here, and only mkdir makes one")
        }
        guard directory.hasImage else {
            throw FuseFailure(EPERM, "a hollow directory cannot get a new image")
        }
        if flags & O_EXCL != 0 { throw FuseFailure(EEXIST, "disk.img exists") }
        let opened = try openImage(MountedNode.image(directory.id).inodeNumber, flags: flags, openerPID: openerPID)
        return (entry(for: .image(pool.info(directory.id) ?? directory)), opened)
    }
}

/// A reply assembled in memory: allocated by a handler, sent and freed by the reply.
struct ReplyBuffer {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    var count = 0

    init(capacity: Int) {
        precondition(capacity >= 0)
        self.base = .allocate(byteCount: max(capacity, 1), alignment: 4096)
        self.capacity = capacity
    }

    var end: UnsafeMutablePointer<CChar> { (base + count).assumingMemoryBound(to: CChar.self) }

    /// Sends the bytes and frees the buffer; it must not be used after.
    func send(_ request: fuse_req_t?) -> Int32 {
        assert(count <= capacity)
        defer { base.deallocate() }
        return fuse_reply_buf(request, base.assumingMemoryBound(to: CChar.self), count)
    }

    func discard() { base.deallocate() }
}
