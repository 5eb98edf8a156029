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
    /// used PSEGs of all of them, shared in proportion to the data PSEGs of those not being
    /// emptied. Caller holds `stateLock`.
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
        let used = shares.reduce(0) { $0 + $1.used }
        let room = capacity.values.reduce(0, +)
        guard room > 0 else { return shares }
        for i in shares.indices { shares[i].ideal = Double(used) * Double(capacity[shares[i].drive]!) / Double(room) }
        return shares
    }

    /// The moves leveling still has to make, from the state as it is now.
    public func levelingBacklog() -> LevelingBacklog {
        stateLock.withLock {
            let shares = levelingSharesLocked()
            // Whole PSEGs over the share: zero everywhere once no move helps (the gaps are then
            // at most one PSEG, and the excesses sum to zero).
            let psegs = shares.reduce(0) { $0 + ($1.draining ? $1.used : Int(max(0, $1.excess).rounded(.down))) }
            return LevelingBacklog(psegs: psegs, draining: drainingDriveIndexes)
        }
    }

    /// The next PSEG to move and where, or nil when no move brings the pool nearer to level:
    /// a member of the drive furthest over its share (a drive being emptied first) to the
    /// drive furthest under its share that the store's distinct-drive rules allow.
    func nextLevelingMove() -> (slot: StoreMemberSlot, target: Int)? {
        let shares = stateLock.withLock { levelingSharesLocked() }
        let byDrive = Dictionary(uniqueKeysWithValues: shares.map { ($0.drive, $0) })
        let sources = shares.filter { $0.used > 0 && ($0.draining || $0.excess > 0.5) }
            .sorted { ($0.draining ? 1 : 0, $0.excess) > ($1.draining ? 1 : 0, $1.excess) }
        for source in sources {
            // Every member is one PSEG; the first that may go somewhere better will do.
            for slot in members(onDrive: source.drive).prefix(256) {
                let targets = moveTargets(for: slot).compactMap { byDrive[$0] }.filter { !$0.draining }
                    .sorted { $0.excess < $1.excess || ($0.excess == $1.excess && $0.drive < $1.drive) }
                // A move must shrink the gap: the target ends below where the source started.
                if let best = targets.first, source.draining || source.excess - best.excess > 1 {
                    return (slot, best.drive)
                }
            }
        }
        return nil
    }

    /// One leveling step: moves one PSEG (returns the bytes copied), or forgets a drive that
    /// was being emptied and now holds nothing (returns 0); nil when there is nothing to do.
    public func levelingStep() throws(LunError) -> UInt64? {
        try checkWritable()
        for d in drainingDriveIndexes where usedSegments(onDrive: d) == 0 {
            try forgetDrive(d)
            return 0
        }
        guard let move = nextLevelingMove() else { return nil }
        return try movePSEG(move.slot, toDrive: move.target)
    }

    /// Levels the pool in this thread until nothing is left to do (an unmounted pool's
    /// `drive` verbs, tests); `progress` gets the PSEGs moved so far and the backlog left.
    /// Fails when a drive being emptied is left holding PSEGs no move can take.
    public func levelCompletely(progress: (Int, LevelingBacklog) -> Void = { _, _ in }) throws(LunError) {
        var moved = 0
        while let bytes = try levelingStep() {
            if bytes > 0 { moved += 1 }
            progress(moved, levelingBacklog())
        }
        let left = levelingBacklog()
        guard left.draining.isEmpty else {
            throw .noSpace("drives \(left.draining) cannot be emptied: no other drive has room for their PSEGs under the RAID rules")
        }
    }
}
