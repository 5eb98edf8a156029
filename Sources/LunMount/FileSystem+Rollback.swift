// Rollback and group snapshots as the mounted tree offers them (docs/MOUNT.md, "Rollback and
// group snapshots"): what the kernel's page cache must hand over before the engine changes a
// disk's bytes under it, and what it must forget afterwards (with the writeback cache the
// kernel trusts its own size of an image, so a rolled-back image is a new inode generation).
// The xattrs and the control verb both come here, so a rollback does the same either way.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine

extension FileSystem {
    /// Prefix of the snapshots that keep the state before a rollback.
    static let beforeRollbackPrefix = "before-rollback-"

    /// Rolls the disk of directory `info` back to its snapshot `name` (a child of that
    /// directory). Dirty pages of its image go to the pool first, so the kept snapshot holds
    /// every write(2) that returned before. Afterwards the image is a new inode generation:
    /// handles opened before turn stale (a VM or loop device still running on the old bytes
    /// must not write into the rolled-back ones), the kernel drops its pages of the old inode
    /// and its name `disk.img`, and the next lookup gets the new size and bytes.
    /// `insideDirectoryRequest`: called from a request on the directory (setxattr), whose
    /// lock the kernel needs to drop the name, so that happens right after the reply.
    func rollback(of info: DiskInfo, toSnapshot name: String, how: String,
                  insideDirectoryRequest: Bool) throws(FuseFailure) -> RollbackOutcome {
        guard info.hasImage else { throw FuseFailure(ENOENT, "\(info.name) has no disk.img to roll back") }
        guard !name.isEmpty, !name.contains("/"), let target = pool.child(named: name, of: info.id) else {
            throw FuseFailure(ENOENT, "\(info.name) has no snapshot named \(name.debugDescription)")
        }
        try kernelCache.writeBack(info.id)
        let holders = openImages.holders(of: info.id, generation: generation(of: .image(info.id)))
        let outcome = try engine { () throws(LunError) -> RollbackOutcome in
            try pool.rollback(info.id, to: target, beforeName: nil, quiesceTimeoutSeconds: 5)
        }
        retire(info.id, imageOnly: true)
        forgetCachedPages(of: info.id)
        kernelCache.forgetImageName(info.id, afterReply: insideDirectoryRequest)
        touch(info.id)
        log.write("\(how): \(info.name) (disk \(info.id)) rolled back to \(name) (disk \(target)); the state before is snapshot \(info.name)/\(outcome.beforeName) (disk \(outcome.before))"
                  + (holders.map { "; its image had \($0.description), now stale" } ?? ""))
        return outcome
    }

    /// The kernel's pages and attributes of `id`'s image belong to the bytes before a
    /// rollback: they must go. The flush that drops them needs a free request thread; when
    /// every other one is flushing for a snapshot, it waits its turn (up to 10 s, then a log
    /// line: pages then stay until the attribute timeout and the next open or write).
    private func forgetCachedPages(of id: DiskID) {
        for attempt in 0..<1000 {
            do {
                try kernelCache.writeBack(id)
                return
            } catch {
                if attempt == 999 { log.write("rollback: the kernel's pages of disk \(id) could not be dropped: \(error.message)") }
                usleep(10_000)
            }
        }
    }

    /// The snapshot kept by the disk's last rollback: its newest child named
    /// `before-rollback-*` (ids grow, so the highest is the newest), nil if it has none.
    func lastRollback(of info: DiskInfo) -> String? {
        pool.children(of: info.id).reversed().lazy.compactMap { self.pool.info($0) }
            .first { $0.name.hasPrefix(Self.beforeRollbackPrefix) }?.name
    }

    /// Snapshot `name` of every disk in `ids` at one instant (`Pool.createGroupSnapshot`),
    /// after the kernel handed over each image's dirty pages.
    func groupSnapshot(named name: String, of ids: [DiskID], how: String) throws(FuseFailure) -> [DiskID: DiskID] {
        guard !ids.isEmpty else { throw FuseFailure(ENOENT, "no disk with an image to snapshot") }
        for id in ids { try kernelCache.writeBackDirty(id, generation: generation(of: .image(id))) }
        let snapshots = try engine { () throws(LunError) -> [DiskID: DiskID] in
            try pool.createGroupSnapshot(of: ids, named: name, quiesceTimeoutSeconds: 5)
        }
        let names = ids.map { pool.treePath(of: $0) ?? "disk \($0)" }
        log.write("\(how): group snapshot \(name) of \(names.joined(separator: ", ")) taken (disks \(ids.map { String(snapshots[$0]!) }.joined(separator: ", ")))")
        return snapshots
    }

    /// `user.lunfs.snapshot` on the root: `NAME` snapshots every disk (each disk at the root,
    /// and each independent disk, that has an image); `NAME` followed by lines of tree paths
    /// snapshots those disks.
    func groupSnapshot(request text: String) throws(FuseFailure) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true).map { String($0).trimmingEdges(of: " \t\r") }
        guard let name = lines.first, !name.isEmpty else {
            throw FuseFailure(EINVAL, "\(ExtendedAttribute.groupSnapshotName) takes NAME, then optionally one disk path per line")
        }
        var ids: [DiskID] = []
        if lines.count == 1 {
            ids = pool.disks().filter { $0.hasImage && ($0.kind == .disk || $0.kind == .independent) }.map(\.id)
        } else {
            for path in lines.dropFirst() {
                let trimmed = path.split(separator: "/").joined(separator: "/")
                guard let id = pool.disk(atTreePath: trimmed), let info = pool.info(id) else {
                    throw FuseFailure(ENOENT, "no disk at \(path.debugDescription)")
                }
                guard info.hasImage else { throw FuseFailure(EPERM, "\(path) has no image to snapshot") }
                ids.append(id)
            }
        }
        _ = try groupSnapshot(named: name, of: ids, how: "setxattr \(ExtendedAttribute.groupSnapshotName)")
    }
}

extension ControlVerbs {
    /// `rollback`: {"disk": tree path, "snapshot": name of a snapshot in its directory};
    /// the result names the snapshot that keeps the state before.
    static func rollbackVerb(_ fileSystem: FileSystem, _ request: ControlRequest) throws(ControlFailure) -> Data {
        guard let path = request.arguments["disk"] as? String, let snapshot = request.arguments["snapshot"] as? String,
              request.arguments.count == 2 else {
            throw ControlFailure(EINVAL, "rollback takes \"disk\" (a tree path) and \"snapshot\" (a name in its directory)")
        }
        let trimmed = path.split(separator: "/").joined(separator: "/")
        guard let id = fileSystem.pool.disk(atTreePath: trimmed), let info = fileSystem.pool.info(id) else {
            throw ControlFailure(ENOENT, "no disk at \(path.debugDescription)")
        }
        let outcome: RollbackOutcome
        do {
            outcome = try fileSystem.rollback(of: info, toSnapshot: snapshot, how: "control rollback", insideDirectoryRequest: false)
        } catch {
            throw ControlFailure(error.errno, error.message)
        }
        return try encodeResult(["disk": trimmed, "snapshot": snapshot, "before": outcome.beforeName,
                                 "beforePath": trimmed + "/" + outcome.beforeName])
    }
}
