// Redundancy comes back without the lost drive: when a drive is missing or out of service,
// each member of a RAID 1 or RAID 5 store on it is rebuilt from the store's redundancy onto a
// free PSEG of another drive (a PSEG move whose source is unreadable, Pool/PSEGMove.swift),
// and the metadata mirrors on it move to another drive. A drive that comes back afterwards is
// a member of nothing: its PSEGs are free. RAID 0 members have nothing to be rebuilt from;
// their ranges are reported as gone (`unreadableRanges`) and left as they are.
//
// The same moves empty a drive that is still readable (`evacuateDrive`, for `drive remove`
// and `drive replace`): its members are copied instead of rebuilt.
import Foundation
import Synchronization

/// A range of a logical disk whose data is gone (a RAID 0 member, or a RAID 1 pair or two
/// RAID 5 members, on drives out of service).
public struct UnreadableRange: Sendable, Equatable, CustomStringConvertible {
    public var disk: DiskID
    public var path: String
    public var offset: UInt64
    public var length: UInt64
    public var description: String { "\(path) bytes \(offset)..<\(offset + length)" }
}

extension Pool {
    /// Members on drives out of service that redundancy can rebuild now and that have a drive
    /// to go to: RAID 1 members whose partner is in service, RAID 5 members whose four others are.
    /// `onDrives` limits it to members on those drives.
    func rebuildableMembers(onDrives: Set<Int>? = nil) -> [StoreMemberSlot] {
        stateLock.withLock {
            let rsds = state.rsds
            var out: [StoreMemberSlot] = []
            for id in 0..<rsds.highWater where rsds.isLive(id) {
                guard let layout = rsds.layout(id, geometry), layout.level != .raid0 else { continue }
                let members = rsds.memberList(id)
                for (m, member) in members.enumerated() where !drives.isAvailable(member.drive) && onDrives.map({ $0.contains(member.drive) }) ?? true {
                    let slot = StoreMemberSlot(store: id, member: m)
                    guard layout.redundancySources(ofMember: m).allSatisfy({ drives.isAvailable(members[$0].drive) }),
                          !moveTargetsLocked(slot).isEmpty else { continue }
                    out.append(slot)
                }
            }
            return out
        }
    }

    /// Members one step of a rebuild takes (with one commit for all).
    static let rebuildBatch = 8

    /// Rebuilds each member still on a drive out of service onto the best drive it may go to,
    /// with one commit for all; returns how many it rebuilt and why the others failed.
    @discardableResult
    func rebuildMembers(_ slots: [StoreMemberSlot]) throws(LunError) -> (rebuilt: Int, failed: [String]) {
        let result = try movePSEGs(slots) { [self] slot throws(LunError) -> Int in
            guard !drives.isAvailable(state.rsds.member(slot.store, slot.member).drive) else {
                throw .exists("\(slot) is no longer on a drive out of service")
            }
            guard let drive = moveTargetsLocked(slot).first else { throw .noSpace("no drive may take \(slot)") }
            return drive
        }
        return (slots.count - result.failed.count, result.failed.map { "\($0.slot): \($0.error)" })
    }

    /// Rebuilds every member that can be rebuilt now, and moves the metadata mirrors off
    /// drives out of service. Runs in the caller's thread without throttling (the background
    /// job, `MemberRebuilder`, throttles). A member whose rebuild fails stays where it is (the
    /// move changed nothing) and is named in `failed`; the others go on.
    @discardableResult
    public func rebuildLostMembers() throws(LunError) -> (rebuilt: Int, failed: [String]) {
        try checkWritable()
        try moveMetadataMirrorsOffLostDrives()
        let slots = rebuildableMembers()
        guard !slots.isEmpty else { return (0, []) }
        let job = jobs.start(PoolJob(kind: .rebuild, drive: nil, bytesDone: 0,
                                     bytesTotal: UInt64(slots.count) * geometry.psegSizeBytes, startedAt: Date()))
        defer { jobs.finish(job) }
        var rebuilt = 0
        var failed: [String] = []
        var done = 0
        for batch in slots.chunked(Self.rebuildBatch) {
            do {
                let result = try rebuildMembers(batch)
                rebuilt += result.rebuilt
                failed += result.failed
            } catch {
                failed += batch.map { "\($0): \(error)" }
            }
            done += batch.count
            jobs.progress(job, bytesDone: UInt64(done) * geometry.psegSizeBytes)
        }
        log("rebuilt \(rebuilt) members of drives out of service onto free space" + (failed.isEmpty ? "" : "; \(failed.count) could not be rebuilt"))
        return (rebuilt, failed)
    }

    /// Moves every member off drive `drive` (`drive remove`, `drive replace`): copied while the
    /// drive is in service, rebuilt from redundancy when it is not. With `onto`, members go to
    /// that drive where the distinct-drive rules allow, elsewhere otherwise. The metadata
    /// mirror on it, if any, moves too. Throws when a member cannot move (a RAID 0 member of a
    /// drive out of service, a store that lost its redundancy too, or no drive to go to); the
    /// members moved before stay moved. Progress shows in `runningJobs()`.
    public func evacuateDrive(_ drive: Int, onto: Int? = nil) throws(LunError) {
        try checkWritable()
        guard drive >= 0 && drive < drives.count else { throw .invalid("there is no drive \(drive)") }
        if let onto, onto < 0 || onto >= drives.count || onto == drive || !drives.isAvailable(onto) {
            throw .invalid("drive \(onto) cannot take the members of drive \(drive): it is the same drive, absent or out of service")
        }
        try moveMetadataMirrors(off: drive, preferring: onto)
        let slots = members(onDrive: drive)
        let job = jobs.start(PoolJob(kind: .evacuate, drive: drive, bytesDone: 0,
                                     bytesTotal: UInt64(slots.count) * geometry.psegSizeBytes, startedAt: Date()))
        defer { jobs.finish(job) }
        var stuck: [String] = []
        var done = 0
        for batch in slots.chunked(Self.rebuildBatch) {
            do {
                let result = try movePSEGs(batch) { [self] slot throws(LunError) -> Int in
                    let targets = moveTargetsLocked(slot)
                    guard let target = onto.flatMap({ targets.contains($0) ? $0 : nil }) ?? targets.first else {
                        throw .noSpace("no drive it may go to")
                    }
                    return target
                }
                stuck += result.failed.map { "\($0.slot): \($0.error)" }
            } catch {
                stuck += batch.map { "\($0): \(error)" }
            }
            done += batch.count
            jobs.progress(job, bytesDone: UInt64(done) * geometry.psegSizeBytes)
        }
        guard stuck.isEmpty else {
            throw .io("drive \(drive) still holds \(stuck.count) members that could not move: " + stuck.prefix(4).joined(separator: "; "))
        }
        log("drive \(drive) holds no store member any more (\(slots.count) moved)")
    }

    /// Replaces each metadata mirror on a drive out of service by a drive in service that is
    /// not a mirror, with one checkpoint.
    func moveMetadataMirrorsOffLostDrives(_ only: Set<Int>? = nil) throws(LunError) {
        let lost = metadata.mirrors.filter { d in !drives.isAvailable(d) && (only?.contains(d) ?? true) }
        for d in lost { try moveMetadataMirrors(off: d, preferring: nil) }
    }

    /// Moves the metadata mirror on `drive` (if it is one) to another drive in service, `preferring`
    /// one if it may: a new mirror list, written by a checkpoint (docs/DESIGN.md section 5c).
    func moveMetadataMirrors(off drive: Int, preferring: Int?) throws(LunError) {
        try commitLock.withLock { () throws(LunError) in
            let old = metadata.mirrors
            guard let at = old.firstIndex(of: drive) else { return }
            let candidates = (0..<drives.count).filter { !old.contains($0) && drives.isAvailable($0) && !drainingDriveIndexes.contains($0) }
            guard let replacement = preferring.flatMap({ candidates.contains($0) ? $0 : nil }) ?? candidates.first else {
                log("metadata mirror on drive \(drive) stays: no other drive in service to take it")
                return
            }
            var list = old
            list[at] = replacement
            metadata.setMirrors(list)
            do throws(LunError) {
                try checkpointLocked()
            } catch {
                metadata.setMirrors(old)
                throw error
            }
            log("metadata mirror moved from drive \(drive) to drive \(replacement): mirrors are now drives \(list)")
        }
    }

    /// Ranges of logical disks whose data is gone: a used RSEG of a store that lost a RAID 0
    /// member, both copies of a RAID 1 pair, or two RAID 5 members to drives out of service.
    /// Visits every store, and every map when some store lost data.
    public func unreadableRanges() -> [UnreadableRange] {
        stateLock.withLock {
            let rsds = state.rsds
            var gone = Set<UInt32>()
            for id in 0..<rsds.highWater where rsds.isLive(id) && rsds.usedMask(id) != 0 {
                guard let layout = rsds.layout(id, geometry) else { continue }
                let members = rsds.memberList(id)
                let lost = layout.redundancyGroups.contains { group in
                    !layout.groupReadable(outCount: group.filter { !drives.isAvailable(members[$0].drive) }.count, groupSize: group.count)
                }
                guard lost else { continue }
                for r in 0..<geometry.rsegsPerStore where rsds.isUsed(id, rseg: r) { gone.insert(UInt32(id) << 3 | UInt32(r)) }
            }
            guard !gone.isEmpty else { return [] }
            var out: [UnreadableRange] = []
            let segment = geometry.rsegSizeBytes
            for d in state.disks.values.sorted(by: { $0.id < $1.id }) where d.hasImage {
                var keys: [Int] = []
                d.map.forEachMapped { k, e in
                    let holder = e.holdsData ? e : SharingChain.lookup(d, k).holder
                    if holder.holdsData && gone.contains(SharingChain.location(holder)) { keys.append(k) }
                }
                for k in keys.sorted() {
                    let offset = UInt64(k) * segment
                    if var last = out.last, last.disk == d.id, last.offset + last.length == offset {
                        last.length += segment
                        out[out.count - 1] = last
                    } else {
                        out.append(UnreadableRange(disk: d.id, path: diskPath(d), offset: offset, length: segment))
                    }
                }
            }
            return out
        }
    }
}

/// The background rebuild of a mounted pool: one member per step on a ThrottledCopyThread (at
/// most half of the time), its progress a `PoolJob` of kind `.rebuild` while there is work.
///
/// A drive is rebuilt only once it has been out of service for `delaySeconds`
/// (`LUNFS_REBUILD_DELAY`, 30 s by default): a drive file put back, or a cable replugged,
/// within that time costs nothing but its stale chunks' rebuild in place.
final class MemberRebuilder: @unchecked Sendable {
    private var thread: ThrottledCopyThread<[StoreMemberSlot]>!
    private let job = Mutex<Int?>(nil)
    private let done = Atomic<Int>(0)
    /// When the rebuilder first saw each drive out of service (only its own thread uses it).
    private var outSince: [Int: Date] = [:]
    let delaySeconds: Double
    static var defaultDelaySeconds: Double { getenv("LUNFS_REBUILD_DELAY").flatMap { Double(String(cString: $0)) } ?? 30 }

    /// Rest after each step, as a multiple of its time: 2, not the 1 of the other background
    /// copies, because a RAID 5 rebuild reads four bytes for each it writes, so that copying a
    /// third of the time leaves user reads at least half of their throughput (scripts/rebuild-throughput).
    static let restFactor = 2.0

    init(pool: Pool, restFactor: Double = MemberRebuilder.restFactor, delaySeconds: Double = MemberRebuilder.defaultDelaySeconds) {
        self.delaySeconds = delaySeconds
        thread = ThrottledCopyThread(
            name: "lunfs-rebuild", restFactor: restFactor,
            work: { [weak pool, unowned self] in
                guard let pool else { return nil }
                return work(pool)
            },
            step: { [weak pool, unowned self] (batch) throws(LunError) in
                guard let pool else { return }
                let result = try pool.rebuildMembers(batch)
                for failure in result.failed.prefix(2) { pool.log("rebuild of \(failure)") }
                let n = done.add(batch.count, ordering: .relaxed).newValue
                if let id = job.withLock({ $0 }) { pool.jobs.progress(id, bytesDone: UInt64(n) * pool.geometry.psegSizeBytes) }
            },
            failed: { [weak pool] batch, error in pool?.log("rebuild of \(batch.count) members: \(error); trying again in 5 s") })
    }

    /// What is left to rebuild; registers the job while there is some, and drops it after.
    private func work(_ pool: Pool) -> [[StoreMemberSlot]] {
        pool.noticeDeletedDriveFiles()
        let now = Date()
        var due = Set<Int>()
        for d in 0..<pool.drives.count {
            if pool.drives.isAvailable(d) { outSince[d] = nil; continue }
            let since = outSince[d] ?? now
            outSince[d] = since
            if now.timeIntervalSince(since) >= delaySeconds { due.insert(d) }
        }
        guard !due.isEmpty else { return [] }
        do { try pool.moveMetadataMirrorsOffLostDrives(due) } catch { pool.log("moving metadata mirrors off lost drives: \(error)") }
        let slots = pool.rebuildableMembers(onDrives: due)
        let pseg = pool.geometry.psegSizeBytes
        job.withLock { id in
            if slots.isEmpty {
                if let running = id { pool.jobs.finish(running); pool.log("rebuild into free space finished: \(done.load(ordering: .relaxed)) members") }
                id = nil
                done.store(0, ordering: .relaxed)
            } else if let running = id {
                pool.jobs.setTotal(running, bytesTotal: UInt64(done.load(ordering: .relaxed) + slots.count) * pseg)
            } else {
                pool.log("rebuilding \(slots.count) members of drives out of service onto free space")
                id = pool.jobs.start(PoolJob(kind: .rebuild, drive: nil, bytesDone: 0, bytesTotal: UInt64(slots.count) * pseg, startedAt: Date()))
            }
        }
        return slots.chunked(Pool.rebuildBatch)
    }

    func start() { thread.start() }
    /// A drive left service: look again now.
    func wake() { thread.wake() }
    func stop() {
        thread.stop()
    }
}

extension Pool {
    /// Starts the background rebuild into free space (the mounted daemon does this, with the
    /// other background copies).
    func startRebuilds() {
        guard !readOnly else { return }
        let rebuilder = jobs.rebuilder.withLock { slot -> MemberRebuilder? in
            guard slot == nil else { return nil }
            slot = MemberRebuilder(pool: self)
            return slot
        }
        rebuilder?.start()
    }
}

extension Array {
    /// The elements in consecutive pieces of at most `size`.
    func chunked(_ size: Int) -> [[Element]] {
        stride(from: 0, to: count, by: size).map { Array(self[$0..<Swift.min($0 + size, count)]) }
    }
}
