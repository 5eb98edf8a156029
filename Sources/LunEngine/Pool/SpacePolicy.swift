// The space policy (docs/DESIGN.md section 11b): what a write does when the pool has no segment
// for it. By default it fails with ENOSPC and changes nothing. A disk set to `drop-snapshots`
// instead gives up the oldest expendable thin snapshot of its own chain, one at a time, until
// the write fits or none is left. The write has changed nothing when it finds the pool full,
// so it lets go of its locks first and deletes the snapshot as `rmdir` would: no lock of the
// chain is ever held across the deletion, and none is taken twice.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// `user.lunfs.on_full`: what a write to the disk does when the pool is full.
public enum OnFullPolicy: String, Sendable, Equatable {
    /// ENOSPC, nothing changed (the default).
    case fail
    /// Delete the chain's oldest expendable snapshots until the write fits.
    case dropSnapshots = "drop-snapshots"
}

/// A snapshot the space policy deleted, for the log, `lunfs status` and the file system.
public struct DroppedSnapshot: Sendable, Equatable {
    public var id: DiskID
    /// Its directory's name and the disk whose directory held it.
    public var name: String, parent: DiskID?
    /// Its tree path when it was dropped (`vm/monday`).
    public var path: String
    /// The disk whose write needed the space.
    public var forDisk: String
    /// Unix seconds.
    public var at: UInt64
    /// What the pool's free space grew by (its segments nobody else read).
    public var freedBytes: UInt64
}

/// What the space policy did since the pool was opened, and who is told when it drops a
/// snapshot. `dropLock` lets one writer drop at a time: a writer that finds another has
/// dropped since its own write failed tries again before dropping more.
final class SpacePolicyState: @unchecked Sendable {
    private let lock = NSLock()
    let dropLock = NSLock()
    private var dropCount = 0
    private var recent: [DroppedSnapshot] = []
    private var observers: [@Sendable (DroppedSnapshot) -> Void] = []
    /// How many recent drops `lunfs status` lists.
    static let keptRecent = 8

    var drops: Int { lock.withLock { dropCount } }

    func record(_ dropped: DroppedSnapshot) {
        let toTell = lock.withLock { () -> [@Sendable (DroppedSnapshot) -> Void] in
            dropCount += 1
            recent.append(dropped)
            if recent.count > Self.keptRecent { recent.removeFirst(recent.count - Self.keptRecent) }
            return observers
        }
        for observer in toTell { observer(dropped) }
    }

    func report() -> (count: Int, recent: [DroppedSnapshot]) {
        lock.withLock { (dropCount, recent) }
    }

    func observe(_ body: @escaping @Sendable (DroppedSnapshot) -> Void) {
        lock.withLock { observers.append(body) }
    }
}

extension Pool {
    /// Sets `user.lunfs.on_full` of disk `id` (committed before it returns).
    public func setOnFull(_ id: DiskID, _ policy: OnFullPolicy) throws(LunError) {
        try changeSpacePolicy(id) { d throws(LunError) in
            guard d.onFull != policy else { return false }
            state.update(d) { $0.onFull = policy }
            return true
        }
    }

    /// Sets `user.lunfs.expendable` of snapshot `id` (committed before it returns). Only a
    /// snapshot can be expendable: `.notPermitted` for a disk at the root.
    public func setExpendable(_ id: DiskID, _ expendable: Bool) throws(LunError) {
        try changeSpacePolicy(id) { d throws(LunError) in
            guard d.expendable != expendable else { return false }
            if expendable && kind(of: d) != .snapshot && kind(of: d) != .snapclone {
                throw .notPermitted("\(d.name) is a \(kind(of: d).rawValue): only a snapshot can be expendable")
            }
            state.update(d) { $0.expendable = expendable }
            return true
        }
    }

    private func changeSpacePolicy(_ id: DiskID, _ change: (Disk) throws(LunError) -> Bool) throws(LunError) {
        try checkWritable()
        let changed = try stateLock.withLock { () throws(LunError) -> Bool in
            guard let d = state.disk(id) else { throw .notFound("disk \(id)") }
            return try change(d)
        }
        if changed { try commit() }
    }

    /// Snapshots dropped for space since the pool was opened: how many, and the last few.
    public func droppedSnapshots() -> (count: Int, recent: [DroppedSnapshot]) {
        spacePolicy.report()
    }

    /// Calls `body` (from the writing thread) for every snapshot the space policy drops, so
    /// that the file system can forget its nodes.
    public func observeDroppedSnapshots(_ body: @escaping @Sendable (DroppedSnapshot) -> Void) {
        spacePolicy.observe(body)
    }

    /// Runs `write` (one attempt of a write to `d`, which changes nothing when it throws
    /// `.noSpace`). If it finds the pool full and d's policy is drop-snapshots, drops the
    /// oldest expendable snapshot of d's chain and tries again, until it fits or nothing
    /// is left to drop (then the last `.noSpace`). Called with no lock held.
    func writeMakingRoom(_ d: Disk, _ write: () throws(LunError) -> Void) throws(LunError) {
        while true {
            let dropsBefore = spacePolicy.drops
            do {
                return try write()
            } catch {
                guard case .noSpace = error, d.onFull == .dropSnapshots else { throw error }
                spacePolicy.dropLock.lock()
                defer { spacePolicy.dropLock.unlock() }
                // Another writer dropped one meanwhile: try with the room it made first.
                if spacePolicy.drops != dropsBefore { continue }
                guard try dropOldestExpendable(inChainOf: d) else { throw error }
            }
        }
    }

    /// Why the space policy must not drop `x` (nil: it may). Caller holds `stateLock`.
    func reasonToKeep(_ x: Disk, writer d: Disk) -> String? {
        if x === d { return "it is the disk being written" }
        if x.removed || !x.hasImage { return "it is gone" }
        if !x.expendable { return "it is not expendable" }
        if kind(of: x) != .snapshot { return "it is a \(kind(of: x).rawValue), not a snapshot" }
        if x.reserved || x.reservedSegments > 0 { return "it is reserved" }
        if x.clone != .none { return "it is a snapclone" }
        if state.externals[x.id] != nil { return "it is a snapshot on separate storage" }
        if state.disks.values.contains(where: { $0.parent == x.id }) { return "it has snapshots below it" }
        return nil
    }

    /// Deletes the oldest snapshot of d's chain that the policy may drop (chain order: the
    /// predecessor-most first). False when there is none. Caller holds `dropLock` only.
    private func dropOldestExpendable(inChainOf d: Disk) throws(LunError) -> Bool {
        var refused: Set<DiskID> = []
        while true {
            d.family.lock.lockShared()
            let candidate = stateLock.withLock { () -> Disk? in
                var head = d
                while let p = head.predecessor { head = p }
                var x: Disk? = head
                while let c = x {
                    if !refused.contains(c.id) && reasonToKeep(c, writer: d) == nil { return c }
                    x = c.successor
                }
                return nil
            }
            d.family.lock.unlock()
            guard let victim = candidate else { return false }
            let path = treePath(of: victim.id) ?? victim.name
            let freeBefore = usage().freeBytes
            do {
                // Checked again under the chain's lock: it may have changed since.
                try removeNode(victim.id, onlyIf: { reasonToKeep($0, writer: d) })
            } catch {
                if case .busy = error { refused.insert(victim.id); continue }
                if case .stale = error { refused.insert(victim.id); continue }
                throw error
            }
            let freed = usage().freeBytes.subtractingReportingOverflow(freeBefore)
            let dropped = DroppedSnapshot(id: victim.id, name: victim.name, parent: victim.parent, path: path,
                                          forDisk: treePath(of: d.id) ?? d.name,
                                          at: UInt64(Date().timeIntervalSince1970),
                                          freedBytes: freed.overflow ? 0 : freed.partialValue)
            log("space policy: the pool is full; dropped expendable snapshot \(path) (id \(victim.id)) for a write to \(dropped.forDisk), \(dropped.freedBytes) bytes freed")
            spacePolicy.record(dropped)
            return true
        }
    }
}
