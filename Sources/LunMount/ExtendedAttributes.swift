// The user.lunfs.* extended attributes of a disk's directory: the knobs of a disk (RAID level,
// reservation) and read-only facts the engine knows (size, allocation, sharing, neighbours).
// Values are ASCII decimal numbers or names, without a trailing newline.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import LunEngine

enum ExtendedAttribute: String, CaseIterable {
    /// RAID level of new allocations: "0", "1" or "5"; settable until the disk's first write.
    case raid = "user.lunfs.raid"
    /// "1" if the disk's whole size is set aside in the pool, "0" if thin; settable.
    case reserved = "user.lunfs.reserved"
    /// "1" if snapshots taken of this disk are created reserved; settable.
    case reserveSnapshots = "user.lunfs.reserve_snapshots"
    /// Size of the disk in bytes (the same as disk.img's st_size).
    case size = "user.lunfs.size"
    /// Bytes of segments the disk maps, its own plus shared ones.
    case allocated = "user.lunfs.allocated"
    /// Bytes held by this disk alone.
    case unique = "user.lunfs.unique"
    /// Bytes shared with a neighbour in the sharing chain.
    case shared = "user.lunfs.shared"
    /// Creation time, Unix seconds.
    case created = "user.lunfs.created"
    /// Path (from the mount's root) of the older neighbour in the sharing chain; absent if none.
    case predecessor = "user.lunfs.predecessor"
    /// Path of the newer neighbour; absent if none.
    case successor = "user.lunfs.successor"
    /// "disk", "snapshot", "snapclone" (copying into a disk of its own) or "independent" (a
    /// snapclone that left its chain). Writing "snapclone" makes a snapshot one; writing
    /// "snapshot" turns a copying snapclone back (the copy stops, unchanged copies are shared
    /// again).
    case kind = "user.lunfs.kind"
    /// Of a snapclone or independent disk: "copied/total" segments of the background copy;
    /// of a snapshot on separate storage: "copied/total" blocks (64 KiB) of its file.
    case copyProgress = "user.lunfs.copy_progress"
    /// Of a snapshot on separate storage: the path of the file that holds its blocks.
    case externalFile = "user.lunfs.external_file"
    /// What a write to this disk does when the pool is full: "fail" (ENOSPC, the default) or
    /// "drop-snapshots" (delete the chain's expendable snapshots, oldest first); settable.
    case onFull = "user.lunfs.on_full"
    /// "1" if this snapshot may be deleted by a drop-snapshots disk of its chain; settable on
    /// snapshots.
    case expendable = "user.lunfs.expendable"
    /// The disk group whose drives hold the disk's stores (`drive add --group`); settable
    /// before the disk's first write.
    case group = "user.lunfs.group"
    /// Of a disk rolled back at least once: the name of the snapshot in its directory that
    /// keeps the state before its last rollback (`before-rollback-<UTC time>`).
    case lastRollback = "user.lunfs.last_rollback"

    static let namespacePrefix = "user.lunfs."
    /// On the mount's root: writing `check` or `repair` scrubs the whole pool (every block
    /// against its checksum; `repair` rewrites damaged copies from good ones) and answers when
    /// done; reading gives the last scrub's result, one damaged place per line after the first.
    static let scrubName = "user.lunfs.scrub"
    /// On a disk's directory, write-only: writing `1` deletes the directory's disk.img even
    /// while it is open (which unlink refuses with EBUSY); the open handles turn stale.
    static let forceDeleteName = "user.lunfs.force_delete"
    /// On a disk's directory, write-only: `NAME=FILE` (FILE an absolute path outside the
    /// mount) makes NAME, a snapshot of the disk whose blocks live in FILE (`lunfs snapshot --to`).
    static let snapshotToName = "user.lunfs.snapshot_to"
    /// On a disk's directory, write-only: `NAME` rolls the disk back to its snapshot NAME,
    /// keeping the state before as a new snapshot (`lunfs rollback`, FileSystem+Rollback.swift).
    static let rollbackName = "user.lunfs.rollback"
    /// On the mount's root, write-only: `NAME` takes snapshot NAME of every disk at one
    /// instant; `NAME` then one disk path per line, of those disks (`lunfs snapshot --name`).
    static let groupSnapshotName = "user.lunfs.snapshot"

    var isSettable: Bool {
        switch self {
        case .raid, .reserved, .reserveSnapshots, .kind, .onFull, .expendable, .group: return true
        default: return false
        }
    }
}

/// What getxattr and listxattr send: the size a caller must allocate, or the bytes.
enum AttributeReply {
    case size(Int)
    case bytes([UInt8])
}

extension FileSystem {
    /// The attributes live on disk directories only; the root and images have none.
    private func attributeDisk(_ ino: fuse_ino_t) throws(FuseFailure) -> DiskInfo? {
        if case .directory(let info) = try resolve(ino) { return info }
        return nil
    }

    func attributeValue(_ attribute: ExtendedAttribute, of info: DiskInfo) -> String? {
        switch attribute {
        case .raid: return String(info.raid.rawValue)
        case .reserved: return reservationFlags(of: info).reserved ? "1" : "0"
        case .reserveSnapshots: return reservationFlags(of: info).reserveSnapshots ? "1" : "0"
        case .size: return String(info.sizeBytes)
        case .allocated: return String(info.allocatedBytes)
        case .unique: return String(info.uniqueBytes)
        case .shared: return String(info.sharedBytes)
        case .created: return String(info.createdAt)
        case .predecessor: return info.predecessor.flatMap(pool.treePath(of:))
        case .successor: return info.successor.flatMap(pool.treePath(of:))
        case .kind: return info.kind.rawValue
        case .copyProgress: return (pool.externalCopyProgress(info.id) ?? pool.copyProgress(info.id)).map { "\($0.copied)/\($0.total)" }
        case .externalFile: return pool.externalFile(of: info.id)
        case .onFull: return info.onFull.rawValue
        case .expendable: return info.expendable ? "1" : "0"
        case .group: return info.group
        case .lastRollback: return lastRollback(of: info)
        }
    }

    func getAttribute(_ ino: fuse_ino_t, name: String, capacity: Int) throws(FuseFailure) -> AttributeReply {
        // Names outside our namespace are answered without a trip into the engine.
        guard name.hasPrefix(ExtendedAttribute.namespacePrefix) else {
            if name == "security.capability" { capabilityLookups.wrappingAdd(1, ordering: .relaxed) }
            throw FuseFailure.absentAttribute(name)
        }
        if case .root = try resolve(ino), name == ExtendedAttribute.scrubName {
            return try fitted(Array(lastScrub.withLock { $0 }.utf8), capacity: capacity)
        }
        guard let info = try attributeDisk(ino),
              let attribute = ExtendedAttribute(rawValue: name),
              let value = attributeValue(attribute, of: info) else {
            throw FuseFailure.absentAttribute(name)
        }
        return try fitted(Array(value.utf8), capacity: capacity)
    }

    func listAttributes(_ ino: fuse_ino_t, capacity: Int) throws(FuseFailure) -> AttributeReply {
        var list: [UInt8] = []
        if case .root = try resolve(ino) { list = Array(ExtendedAttribute.scrubName.utf8) + [0] }
        if let info = try attributeDisk(ino) {
            for attribute in ExtendedAttribute.allCases where attributeValue(attribute, of: info) != nil {
                list += Array(attribute.rawValue.utf8)
                list.append(0)
            }
        }
        return try fitted(list, capacity: capacity)
    }

    /// The getxattr/listxattr convention: capacity 0 asks for the size; too small is ERANGE.
    private func fitted(_ bytes: [UInt8], capacity: Int) throws(FuseFailure) -> AttributeReply {
        if capacity == 0 { return .size(bytes.count) }
        guard bytes.count <= capacity else { throw FuseFailure(ERANGE, "value of \(bytes.count) bytes, buffer of \(capacity)") }
        return .bytes(bytes)
    }

    func setAttribute(_ ino: fuse_ino_t, name: String, value: UnsafeRawBufferPointer, flags: Int32) throws(FuseFailure) {
        if case .root = try resolve(ino), name == ExtendedAttribute.scrubName {
            let text = String(decoding: value, as: UTF8.self).trimmingEdges(of: " \t\n\r\0")
            guard text == "check" || text == "repair" else { throw FuseFailure(EINVAL, "\(name) takes check or repair, not \"\(text)\"") }
            log.write("scrub (\(text)) started")
            let report = pool.scrub(repair: text == "repair")
            let summary = ([report.description] + report.findings).joined(separator: "\n")
            lastScrub.withLock { $0 = summary }
            log.write("scrub (\(text)) done: " + ([report.description] + report.findings).joined(separator: "; "))
            return
        }
        if case .root = try resolve(ino), name == ExtendedAttribute.groupSnapshotName {
            try groupSnapshot(request: String(decoding: value, as: UTF8.self).trimmingEdges(of: " \t\n\r\0"))
            return
        }
        if name == ExtendedAttribute.rollbackName, let info = try attributeDisk(ino) {
            let text = String(decoding: value, as: UTF8.self).trimmingEdges(of: " \t\n\r\0")
            _ = try rollback(of: info, toSnapshot: text, how: "setxattr \(name)", insideDirectoryRequest: true)
            return
        }
        if name == ExtendedAttribute.forceDeleteName, let info = try attributeDisk(ino) {
            let text = String(decoding: value, as: UTF8.self).trimmingEdges(of: " \t\n\r\0")
            guard text == "1" else { throw FuseFailure(EINVAL, "\(name) takes 1, not \"\(text)\"") }
            guard info.hasImage else { throw FuseFailure(ENOENT, "\(info.name) has no disk.img to delete") }
            try deleteImage(of: info, how: "force_delete")
            return
        }
        if name == ExtendedAttribute.snapshotToName, let info = try attributeDisk(ino) {
            try snapshotToFile(of: info, String(decoding: value, as: UTF8.self).trimmingEdges(of: " \t\n\r\0"))
            return
        }
        guard let info = try attributeDisk(ino), let attribute = ExtendedAttribute(rawValue: name) else {
            // Arbitrary attributes cannot be stored; EOPNOTSUPP lets cp -a carry on quietly.
            throw FuseFailure(EOPNOTSUPP, "no attribute \(name) can be set here")
        }
        guard attribute.isSettable else { throw FuseFailure(EPERM, "\(name) is read-only") }
        if flags & LUNFS_XATTR_CREATE != 0 { throw FuseFailure(EEXIST, "\(name) always exists") }
        let text = String(decoding: value, as: UTF8.self)
            .trimmingEdges(of: " \t\n\r\0")
        switch attribute {
        case .raid:
            guard let level = RAIDLevel(text: text) else { throw FuseFailure(EINVAL, "RAID level \"\(text)\" is not 0, 1 or 5") }
            try engine { () throws(LunError) in try pool.setRAID(info.id, level) }
        case .reserved:
            let on = try flag(text, name: name)
            try engine { () throws(LunError) in try pool.setReserved(info.id, on) }
        case .reserveSnapshots:
            let on = try flag(text, name: name)
            try engine { () throws(LunError) in try pool.setReserveSnapshots(info.id, on) }
        case .kind:
            switch text {
            case DiskKind.snapclone.rawValue: try engine { () throws(LunError) in try pool.makeSnapclone(info.id) }
            case DiskKind.snapshot.rawValue: try engine { () throws(LunError) in try pool.revertSnapclone(info.id) }
            default: throw FuseFailure(EINVAL, "\(name) takes snapclone or snapshot, not \"\(text)\"")
            }
        case .onFull:
            guard let policy = OnFullPolicy(rawValue: text) else {
                throw FuseFailure(EINVAL, "\(name) takes fail or drop-snapshots, not \"\(text)\"")
            }
            try engine { () throws(LunError) in try pool.setOnFull(info.id, policy) }
        case .expendable:
            let on = try flag(text, name: name)
            try engine { () throws(LunError) in try pool.setExpendable(info.id, on) }
        case .group:
            try engine { () throws(LunError) in try pool.setGroup(info.id, text) }
        default:
            preconditionFailure("\(name) is not settable")
        }
        log.write("setxattr: \(name)=\(text) on \(info.name) (disk \(info.id))")
    }

    /// `user.lunfs.snapshot_to` = `NAME=FILE`: a snapshot on separate storage. FILE must be
    /// absolute and outside this mount (the daemon writing its own mount would wait on itself).
    private func snapshotToFile(of info: DiskInfo, _ text: String) throws(FuseFailure) {
        let name = ExtendedAttribute.snapshotToName
        guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
            throw FuseFailure(EINVAL, "\(name) takes NAME=FILE, not \"\(text)\"")
        }
        let snapshot = String(text[..<eq]), file = String(text[text.index(after: eq)...])
        guard file.hasPrefix("/") else { throw FuseFailure(EINVAL, "\(name): \(file) is not an absolute path") }
        let slash = file.lastIndex(of: "/")!
        let parent = slash == file.startIndex ? "/" : String(file[..<slash])
        guard let resolved = realpath(parent, nil) else { throw FuseFailure(ENOENT, "\(name): directory \(parent) does not exist") }
        let directory = String(cString: resolved)
        free(resolved)
        if let mountpoint = options.mountpoint, directory == mountpoint || directory.hasPrefix(mountpoint + "/") {
            throw FuseFailure(EINVAL, "\(name): \(file) is inside this mount")
        }
        // As mkdir does: the snapshot holds every write(2) that returned before this call,
        // so the kernel hands over the image's dirty pages first (writeback cache).
        try kernelCache.writeBackDirty(info.id, generation: generation(of: .image(info.id)))
        let id = try engine { () throws(LunError) -> DiskID in
            try pool.createExternalSnapshot(of: info.id, named: snapshot, file: directory + String(file[slash...]),
                                            blockBytes: Pool.externalBlockBytes, quiesceTimeoutSeconds: 5)
        }
        log.write("setxattr: \(name)=\(text) on \(info.name) (disk \(info.id)): snapshot \(snapshot) is disk \(id)")
    }

    private func flag(_ text: String, name: String) throws(FuseFailure) -> Bool {
        switch text {
        case "1": return true
        case "0": return false
        default: throw FuseFailure(EINVAL, "\(name) takes 0 or 1, not \"\(text)\"")
        }
    }

    func removeAttribute(_ ino: fuse_ino_t, name: String) throws(FuseFailure) {
        guard try attributeDisk(ino) != nil, ExtendedAttribute(rawValue: name) != nil else {
            throw FuseFailure.absentAttribute(name)
        }
        throw FuseFailure(EPERM, "\(name) cannot be removed")
    }
}

extension String {
    /// The string without any of `characters` at either end (Foundation-free).
    func trimmingEdges(of characters: String) -> String {
        let set = Set(characters.unicodeScalars)
        var scalars = Substring(self).unicodeScalars
        while let first = scalars.first, set.contains(first) { scalars.removeFirst() }
        while let last = scalars.last, set.contains(last) { scalars.removeLast() }
        return String(scalars)
    }
}
