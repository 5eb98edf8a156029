// Rollback that keeps everything (issue 15, docs/DESIGN.md section 7, "Rollback"): a disk
// goes back to one of its chain's snapshots, and the state it leaves is kept as a new
// snapshot, so no snapshot is destroyed and the rollback can itself be rolled back. Metadata
// only: one split and one exchange of two disks' contents, logged as one op and committed
// before the chain's I/O goes on.
#if canImport(Glibc)
import Glibc
#endif

/// What a rollback did: the snapshot that keeps the state before it.
public struct RollbackOutcome: Sendable, Equatable {
    /// The new snapshot (a child of the rolled-back disk) holding what the disk held before.
    public let before: DiskID
    public let beforeName: String
}

extension Pool {
    /// The name of the snapshot that keeps the state before a rollback at `seconds` (UTC).
    static func beforeRollbackName(at seconds: UInt64) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "before-rollback-\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))"
            + "-\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))"
    }

    /// Rolls disk `id` back to `target`, a snapshot of its chain: afterwards `id` reads what
    /// `target` reads, `target` and every other disk read what they read before, and a new
    /// snapshot of `id` (named `before-rollback-<UTC time>`, or `beforeName`) reads what `id`
    /// read before. The disk keeps its identity: open handles read the rolled-back bytes.
    /// In-flight I/O of the chain finishes first and new I/O waits (`.busy` after
    /// `quiesceTimeoutSeconds`, nothing changed); the change is durable when this returns.
    /// Refused, with nothing changed: a target outside the chain (`.invalid`), a disk or
    /// target on separate storage or reserved (`.notPermitted`), a chain with a snapclone
    /// copying or a disk whose snapshot on separate storage is still copying (`.busy`).
    public func rollback(_ id: DiskID, to target: DiskID, beforeName: String? = nil,
                         quiesceTimeoutSeconds: Double = 5) throws(LunError) -> RollbackOutcome {
        try checkWritable()
        if let beforeName { try Self.validate(name: beforeName) }
        guard id != target else { throw .invalid("a disk cannot be rolled back to itself") }
        let x = try liveDisk(id), t = try liveDisk(target)
        guard x.hasImage else { throw .notFound("\(x.name) has no image to roll back") }
        guard t.hasImage else { throw .notFound("\(t.name) has no image to roll back to") }
        for d in [x, t] where isExternalSnapshot(d.id) {
            throw .notPermitted("\(d.name) lives on separate storage, outside the chain; copy its file instead")
        }
        guard x.family === t.family else { throw .invalid("\(t.name) is not a snapshot in the chain of \(x.name)") }
        try x.family.blocking.raise(on: x.family, for: "a rollback of \(x.name)", timeoutSeconds: quiesceTimeoutSeconds)
        defer { x.family.blocking.lower(on: x.family) }
        let outcome = try stateLock.withLock { () throws(LunError) -> RollbackOutcome in
            try rollbackStateLocked(x, to: t, beforeName: beforeName)
        }
        // Committed before the chain's I/O goes on: the kept snapshot holds the disk's old
        // segments alone where the disk did, so an in-place write to it before the commit
        // would land on bytes the committed maps still give to the disk.
        try commit()
        log("rollback of \(x.name) (id \(id)) to \(t.name) (id \(target)); the state before is snapshot \(outcome.beforeName) (id \(outcome.before))")
        return outcome
    }

    /// The checks and the change, under the chain's lock (exclusive) and `stateLock`.
    private func rollbackStateLocked(_ x: Disk, to t: Disk, beforeName: String?) throws(LunError) -> RollbackOutcome {
        guard !x.removed, x.hasImage, !t.removed, t.hasImage else { throw .stale("the disk or its target was removed") }
        guard SharingChain.sameChain(x, t) else { throw .invalid("\(t.name) is not a snapshot in the chain of \(x.name)") }
        if let c = SharingChain.copyingSnapclone(inChainOf: x) {
            throw .busy("\(c.name), a snapclone of this chain, is still copying; roll back once it is independent")
        }
        try refuseWhileExternalCopying(x)
        for d in [x, t] where d.reserved || d.reservedSegments > 0 {
            throw .notPermitted("\(d.name) is reserved (its reservation counts the segments it shares, which a rollback changes); set user.lunfs.reserved to 0 first")
        }
        guard !x.reserveSnapshots else {
            throw .notPermitted("\(x.name) takes reserved snapshots, and a rollback's kept snapshot would not be; set user.lunfs.reserve_snapshots to 0 first")
        }
        let siblings = Set(state.disks.values.filter { $0.parent == x.id }.map(\.name))
        var name = beforeName ?? Self.beforeRollbackName(at: now())
        if siblings.contains(name) {
            guard beforeName == nil else { throw .exists(name) }
            let base = name
            var n = 2
            while siblings.contains("\(base)-\(n)") { n += 1 }
            name = "\(base)-\(n)"
        }
        // The kept snapshot starts as a snapshot of the target (the split gives it the
        // target's bytes), then takes the disk's contents in the exchange.
        let kept = state.newDisk(name: name, parent: x.id, family: x.family, size: t.sizeBytes, raid: t.raid, now: now()) {
            $0.hasWritten = t.hasWritten
        }
        state.apply(.rollback(disk: x.id, target: t.id, keeping: kept.id))
        return RollbackOutcome(before: kept.id, beforeName: name)
    }
}
