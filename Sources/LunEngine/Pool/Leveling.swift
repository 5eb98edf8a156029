// Leveling (003 [0076]-[0077], [0111]): after drives join or leave, PSEGs move one at a time
// (Pool.movePSEG: copy, then switch the RSD member) until each drive in service holds a share
// of the used PSEGs proportional to its size, and a drive being removed holds none, at which
// point it is forgotten. The disks' maps never change. Nothing of a leveling is stored: after
// a crash it starts again from the RSDs as they are (the drives being emptied are recorded in
// the superblock), so each step is chosen from the current state alone.
import Foundation

/// How far the pool is from level: the moves leveling still has to make.
public struct LevelingBacklog: Sendable, Equatable {
    /// PSEGs to move so that no drive holds a whole PSEG more than its share, those of drives
    /// being emptied included.
    public var psegs: Int
    /// Drives being emptied (until they are forgotten, which leveling does once they hold nothing).
    public var draining: [Int]
    public var isLevel: Bool { psegs == 0 && draining.isEmpty }
}

/// One drive's place in the plan: the data PSEGs it holds, and the share it should hold.
struct LevelingShare {
    var drive: Int
    var used: Int
    var ideal: Double
    var draining: Bool
    var excess: Double { Double(used) - ideal }
}

extension Pool {
    /// Each drive in service (and each being emptied) with what it holds and should hold: the
    /// used PSEGs of each RSS, shared in proportion to the data PSEGs of its drives. Caller
    /// holds `stateLock`.
    func levelingSharesLocked() -> [LevelingShare] {
        let quorum = geometry.quorumPSEGs
        let draining = Set(drainingDriveIndexes)
        // A drive being emptied takes part even when it is gone: its members are rebuilt from
        // redundancy by the move. Other drives out of service are the rebuild's business.
        let drivesInService = drives.memberSlots.filter { drives.isAvailable($0) || draining.contains($0) }
        var shares: [LevelingShare] = []
        var capacity: [Int: Int] = [:]
        for d in drivesInService {
            capacity[d] = draining.contains(d) ? 0 : max(0, state.psegs.psegCount[d] - quorum)
            shares.append(LevelingShare(drive: d, used: state.psegs.usedData(drive: d), ideal: 0, draining: draining.contains(d)))
        }
        // Shares are computed within each RSS (DiskGroups.swift): PSEGs never leave theirs. A
        // drive being emptied is in none (its ideal is 0 in any case).
        var rssOf: [Int: Int] = [:]
        var rssNumber = 0
        for group in Set(drivesInService.map { state.group(ofDrive: $0) }).sorted() {
            for rss in state.redundantStorageSets(of: group) {
                for d in rss { rssOf[d] = rssNumber }
                rssNumber += 1
            }
        }
        var used: [Int: Int] = [:], room: [Int: Int] = [:]
        for s in shares {
            let bucket = rssOf[s.drive] ?? -1 - s.drive
            used[bucket, default: 0] += s.used
            room[bucket, default: 0] += capacity[s.drive]!
        }
        for i in shares.indices {
            let bucket = rssOf[shares[i].drive] ?? -1 - shares[i].drive
            guard room[bucket]! > 0 else { continue }
            shares[i].ideal = Double(used[bucket]!) * Double(capacity[shares[i].drive]!) / Double(room[bucket]!)
        }
        return shares
    }

    /// The moves leveling still has to make, from the state as it is now.
    public func levelingBacklog() -> LevelingBacklog {
        stateLock.withLock {
            let shares = levelingSharesLocked()
            // Whole PSEGs over the share: zero everywhere once no move helps (the gaps are then
            // at most one PSEG, and the excesses sum to zero).
            let psegs = shares.reduce(0) { $0 + ($1.draining ? $1.used : Int(max(0, $1.excess).rounded(.down))) }
                + state.strayMembers().count
            return LevelingBacklog(psegs: psegs, draining: drainingDriveIndexes)
        }
    }

    /// The next PSEGs to move and where (at most `limit`), empty when no move brings the pool
    /// nearer to level: first members outside their store's RSS, into it; then each a member
    /// of the drive furthest over its share (a drive being emptied first) to the drive furthest
    /// under its share that the store's distinct-drive rules allow, planned one after another
    /// on the shares as the moves before leave them.
    func nextLevelingMoves(limit: Int) -> [(slot: StoreMemberSlot, target: Int)] {
        var shares = Dictionary(uniqueKeysWithValues: stateLock.withLock { levelingSharesLocked() }.map { ($0.drive, $0) })
        var members: [Int: ArraySlice<StoreMemberSlot>] = [:]
        var plan: [(slot: StoreMemberSlot, target: Int)] = []
        var planned = Set<StoreMemberSlot>()
        // First the members a re-forming of RSSs left outside their store's RSS (DiskGroups.swift).
        for slot in stateLock.withLock({ state.strayMembers(limit: limit).filter(isMovableLocked) }) {
            let targets = moveTargets(for: slot).filter { shares[$0]?.draining == false }
            guard let target = targets.min(by: { shares[$0]!.excess < shares[$1]!.excess || (shares[$0]!.excess == shares[$1]!.excess && $0 < $1) })
            else { continue }
            let source = stateLock.withLock { state.rsds.memberList(slot.store)[slot.member].drive }
            plan.append((slot, target))
            planned.insert(slot)
            shares[source]?.used -= 1
            shares[target]!.used += 1
        }
        while plan.count < limit {
            let sources = shares.values.filter { $0.used > 0 && ($0.draining || $0.excess > 0.5) }
                .sorted { ($0.draining ? 1 : 0, $0.excess, -$0.drive) > ($1.draining ? 1 : 0, $1.excess, -$1.drive) }
            var found: (slot: StoreMemberSlot, source: Int, target: Int)?
            search: for source in sources {
                if members[source.drive] == nil {
                    // Only members a move can copy or rebuild: planning one that cannot would
                    // fail the step again and again, ahead of every member that could move.
                    let all = self.members(onDrive: source.drive)
                    members[source.drive] = stateLock.withLock { all.filter(isMovableLocked) }.prefix(256)
                }
                // Every member is one PSEG; the first that may go somewhere better will do.
                for slot in members[source.drive]! where !planned.contains(slot) {
                    let targets = moveTargets(for: slot).compactMap { shares[$0] }.filter { !$0.draining }
                        .sorted { $0.excess < $1.excess || ($0.excess == $1.excess && $0.drive < $1.drive) }
                    // A move must shrink the gap: the target ends below where the source started.
                    if let best = targets.first, source.draining || source.excess - best.excess > 1 {
                        found = (slot, source.drive, best.drive)
                        break search
                    }
                }
            }
            guard let found else { break }
            plan.append((found.slot, found.target))
            planned.insert(found.slot)
            shares[found.source]!.used -= 1
            shares[found.target]!.used += 1
        }
        return plan
    }

    /// Whether a move can fill a new PSEG for `slot` now: copied from its drive, or rebuilt
    /// from the store's redundancy when that drive is out of service (so never a RAID 0 member
    /// of such a drive, nor one whose store has another member out of service too).
    /// Caller holds `stateLock`.
    func isMovableLocked(_ slot: StoreMemberSlot) -> Bool {
        let rsds = state.rsds
        guard let layout = rsds.layout(slot.store, geometry), slot.member < layout.memberCount else { return false }
        let members = rsds.memberList(slot.store)
        if drives.isAvailable(members[slot.member].drive) { return true }
        return layout.level != .raid0
            && layout.redundancySources(ofMember: slot.member).allSatisfy { drives.isAvailable(members[$0].drive) }
    }

    /// PSEGs moved by one leveling step, with one commit: a commit per PSEG would cost more
    /// than its copy.
    static let levelingBatch = 8

    /// One leveling step: moves up to `levelingBatch` PSEGs with one commit (returns how many
    /// moved), or forgets a drive that was being emptied and now holds nothing (returns 0);
    /// nil when there is nothing to do.
    public func levelingStep() throws(LunError) -> Int? {
        try checkWritable()
        for d in drainingDriveIndexes where usedSegments(onDrive: d) == 0 {
            try forgetDrive(d)
            return 0
        }
        let plan = nextLevelingMoves(limit: Pool.levelingBatch)
        guard !plan.isEmpty else { return nil }
        let planned = Dictionary(uniqueKeysWithValues: plan.map { ($0.slot, $0.target) })
        let result = try movePSEGs(plan.map(\.slot)) { (slot) throws(LunError) -> Int in
            // The moves before this one are switched now: the planned drive must still be one
            // this member may go to (a store's other member may have gone there meanwhile).
            guard let target = planned[slot], moveTargetsLocked(slot).contains(target) else {
                throw .invalid("\(slot): its planned drive is no longer one it may go to")
            }
            return target
        }
        let moved = plan.count - result.failed.count
        if moved == 0, let failure = result.failed.first?.error {
            if case .invalid = failure { return nil }
            throw failure
        }
        return moved
    }

    /// Levels the pool in this thread until nothing is left to do (an unmounted pool's
    /// `drive` verbs, tests); `progress` gets the PSEGs moved so far and the backlog left.
    /// Fails when a drive being emptied is left holding PSEGs no move can take.
    public func levelCompletely(progress: (Int, LevelingBacklog) -> Void = { _, _ in }) throws(LunError) {
        var moved = 0
        while let step = try levelingStep() {
            moved += step
            progress(moved, levelingBacklog())
        }
        let left = levelingBacklog()
        guard left.draining.isEmpty else {
            throw .noSpace("drives \(left.draining) cannot be emptied: no other drive has room for their PSEGs under the RAID rules, or they hold members with nothing to rebuild them from (RAID 0, or a store with another member out of service)")
        }
    }
}
