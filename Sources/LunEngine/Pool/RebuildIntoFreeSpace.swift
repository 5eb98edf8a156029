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
    func rebuildableMembers() -> [StoreMemberSlot] {
        stateLock.withLock {
            let rsds = state.rsds
            var out: [StoreMemberSlot] = []
            for id in 0..<rsds.highWater where rsds.isLive(id) {
                guard let layout = rsds.layout(id, geometry), layout.level != .raid0 else { continue }
                let members = rsds.memberList(id)
                for (m, member) in members.enumerated() where !drives.isAvailable(member.drive) {
                    let slot = StoreMemberSlot(store: id, member: m)
                    guard layout.redundancySources(ofMember: m).allSatisfy({ drives.isAvailable(members[$0].drive) }),
                          !moveTargetsLocked(slot).isEmpty else { continue }
                    out.append(slot)
                }
            }
            return out
        }
    }

    /// Rebuilds one member onto the best drive it may go to, if it is still on a drive out of
    /// service; returns the bytes written (0 when there was nothing to do).
    @discardableResult
    func rebuildMember(_ slot: StoreMemberSlot) throws(LunError) -> UInt64 {
        let target = stateLock.withLock { () -> Int? in
            guard state.rsds.isLive(slot.store), slot.member < (state.rsds.level(slot.store)?.memberCount ?? 0),
                  !drives.isAvailable(state.rsds.member(slot.store, slot.member).drive) else { return nil }
            return moveTargetsLocked(slot).first
        }
        guard let target else { return 0 }
        return try movePSEG(slot, toDrive: target)
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
        for (i, slot) in slots.enumerated() {
            do {
                try rebuildMember(slot)
                rebuilt += 1
            } catch {
                failed.append("\(slot): \(error)")
            }
            jobs.progress(job, bytesDone: UInt64(i + 1) * geometry.psegSizeBytes)
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
        for (i, slot) in slots.enumerated() {
            let targets = moveTargets(for: slot)
            guard let target = onto.flatMap({ targets.contains($0) ? $0 : nil }) ?? targets.first else {
                stuck.append("\(slot): no drive it may go to")
                continue
            }
            do { try movePSEG(slot, toDrive: target) } catch { stuck.append("\(slot): \(error)") }
            jobs.progress(job, bytesDone: UInt64(i + 1) * geometry.psegSizeBytes)
        }
        guard stuck.isEmpty else {
            throw .io("drive \(drive) still holds \(stuck.count) members that could not move: " + stuck.prefix(4).joined(separator: "; "))
        }
        log("drive \(drive) holds no store member any more (\(slots.count) moved)")
    }

    /// Replaces each metadata mirror on a drive out of service by a drive in service that is
    /// not a mirror, with one checkpoint.
    func moveMetadataMirrorsOffLostDrives() throws(LunError) {
        let lost = metadata.mirrors.filter { !drives.isAvailable($0) }
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
final class MemberRebuilder: @unchecked Sendable {
    private var thread: ThrottledCopyThread<StoreMemberSlot>!
    private let job = Mutex<Int?>(nil)
    private let done = Atomic<Int>(0)

    init(pool: Pool, restFactor: Double = 1) {
        thread = ThrottledCopyThread(
            name: "lunfs-rebuild", restFactor: restFactor,
            work: { [weak pool, unowned self] in
                guard let pool else { return nil }
                return work(pool)
            },
            step: { [weak pool, unowned self] (slot) throws(LunError) in
                guard let pool else { return }
                try pool.rebuildMember(slot)
                let n = done.add(1, ordering: .relaxed).newValue
                if let id = job.withLock({ $0 }) { pool.jobs.progress(id, bytesDone: UInt64(n) * pool.geometry.psegSizeBytes) }
            },
            failed: { [weak pool] slot, error in pool?.log("rebuild of \(slot): \(error); trying again in 5 s") })
    }

    /// What is left to rebuild; registers the job while there is some, and drops it after.
    private func work(_ pool: Pool) -> [StoreMemberSlot] {
        do { try pool.moveMetadataMirrorsOffLostDrives() } catch { pool.log("moving metadata mirrors off lost drives: \(error)") }
        let slots = pool.rebuildableMembers()
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
        return slots
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
