// A disk's tree path ("vm/monday": the names from the root down, joined by "/") is how the
// mounted tree, `lunfs status` and the NBD server name a disk; this file turns ids into paths
// and back, so every face of the pool spells them the same way.

extension Pool {
    /// "vm/monday" for snapshot monday of disk vm; nil if the disk is gone.
    public func treePath(of id: DiskID) -> String? {
        stateLock.withLock {
            var names: [String] = []
            var next: DiskID? = id
            while let current = next {
                guard let disk = state.disk(current), names.count <= 1 << 16 else { return nil }
                names.append(disk.name)
                next = disk.parent
            }
            return names.reversed().joined(separator: "/")
        }
    }

    /// The disk a tree path names, or nil (an empty path, an empty part, an unknown name).
    public func disk(atTreePath path: String) -> DiskID? {
        let names = path.split(separator: "/", omittingEmptySubsequences: false)
        guard !path.isEmpty, !names.contains(where: \.isEmpty) else { return nil }
        var parent: DiskID? = nil
        for name in names {
            guard let found = child(named: String(name), of: parent) else { return nil }
            parent = found
        }
        return parent
    }
}
