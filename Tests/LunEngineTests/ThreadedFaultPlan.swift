// What one point of the threaded crash simulation does to its drives besides cutting the
// power: the one drive that misbehaves and how (reads corrupted at a chance, a disappearance
// in the middle of the run, misdirected writes at the crash), when the power goes out, and the
// fates of the unsynced writes. Drawn from the point's seed, and placed so that on RAID 1 and
// RAID 5 a good copy of every block always survives:
//
// - only one drive ever misbehaves, so at most one is gone at a time and a corrupted read
//   always has a partner or a RAID 5 row to heal from;
// - a RAID 5 pool whose drive went away loses power only after the run: a crash that cuts a
//   write between data and parity while a member is gone leaves that row's missing block with
//   no source (the RAID 5 write hole; recovery then reports the row and keeps the drive out
//   rather than make bytes up);
// - a misdirected write damages blocks of the faulty drive, and recovery takes a block that
//   fails on every copy of an in-flight store for a cut write (as it is), so the other
//   drives must hold every block whole: the power goes out after the
//   threads finished (no write is between its data and its checksum) and every other drive
//   keeps all it was sent. On RAID 5 the faulty drive's other unsynced writes land too and it
//   misdirects at most one write: a block hit by a misdirected write whose own new checksum
//   was lost would fail both as it is and as rebuilt from the row, with no copy to tell which
//   is right. RAID 1 keeps the partner's copy whole, so there the faulty drive tears and
//   loses writes as well.
//
// RAID 0 has no other copy: its faulty drive only corrupts reads, and a read must then give
// the right bytes or an error, never wrong bytes. It neither disappears nor misdirects (both
// lose data that no RAID 0 pool can give back).
import LunEngine
import LunEngineTesting

struct ThreadedFaultPlan: CustomStringConvertible {
    enum PowerCut: Equatable {
        /// Every drive fails every call after this many writes, zeros and syncs of the run.
        case duringWork(afterDeviceCalls: Int)
        /// The threads and the committer run to their end; the power goes out just after.
        case afterWork
    }

    let level: RAIDLevel
    /// The slot of the one drive that misbehaves.
    let faultyDrive: Int
    /// The chance that a read of the faulty drive returns one flipped bit (the medium stays good).
    let readCorruptionProbability: Double
    /// The faulty drive goes away after this many of its writes in the run (nil: it stays).
    let disappearsAfterWrites: Int?
    let powerCut: PowerCut
    /// The fates of each drive's unsynced writes at the crash, one per slot.
    let tearings: [CrashTearing]
    /// Each writer's last operations that fsync nothing, and the committer stops once every
    /// writer reached them: a power cut after the run then finds writes to misdirect.
    let unsyncedTailOperations: Int

    /// Largest number of device calls before a cut during the work: about what three writers
    /// beside a committer issue in one point, so the cut falls anywhere in it.
    static let deviceCallsBeforeCutMax: UInt64 = 1500

    init(level: RAIDLevel, driveCount: Int, random: inout SeededRandom) {
        self.level = level
        let faultyDrive = Int(random.below(UInt64(driveCount)))
        self.faultyDrive = faultyDrive
        readCorruptionProbability = [0.01, 0.02][Int(random.below(2))]
        let redundant = level != .raid0
        disappearsAfterWrites = redundant && random.chance(level == .raid1 ? 0.4 : 0.3) ? 1 + Int(random.below(80)) : nil
        // RAID 5 with a member gone cannot survive a write cut between data and parity (the
        // write hole: the gone member's blocks of that row are lost), so it loses power after the
        // run, and its faulty drive misdirects nothing (a misdirected block in a row written
        // while the drive was gone would fail as it is and as rebuilt alike).
        let raid5Degraded = level == .raid5 && disappearsAfterWrites != nil
        if redundant && (raid5Degraded || random.chance(1.0 / 3)) {
            powerCut = .afterWork
            let faulty = switch level {
            case .raid1:
                CrashTearing(landedWeight: 1 + random.below(4), tornPrefixWeight: random.below(3), tornSubsetWeight: random.below(3),
                             lostWeight: random.below(3), misdirectedWeight: 1 + random.below(3))
            case .raid5 where !raid5Degraded:
                CrashTearing(landedWeight: 1 + random.below(8), tornPrefixWeight: 0, tornSubsetWeight: 0, lostWeight: 0,
                             misdirectedWeight: 1, misdirectedWritesMax: 1)
            default:
                CrashTearing.keepUnsynced
            }
            tearings = (0..<driveCount).map { $0 == faultyDrive ? faulty : .keepUnsynced }
            unsyncedTailOperations = 8 + Int(random.below(8))
        } else {
            powerCut = .duringWork(afterDeviceCalls: Int(random.below(Self.deviceCallsBeforeCutMax)))
            let weights = (0..<4).map { _ in random.below(4) }
            let shared = weights.reduce(0, +) == 0 ? CrashTearing.default
                : CrashTearing(landedWeight: weights[0], tornPrefixWeight: weights[1], tornSubsetWeight: weights[2], lostWeight: weights[3])
            tearings = Array(repeating: shared, count: driveCount)
            unsyncedTailOperations = 0
        }
        assert(level != .raid0 || (disappearsAfterWrites == nil && tearings.allSatisfy { $0.misdirectedWeight == 0 }),
               "RAID 0 has no copy to survive a lost drive or a misdirected write")
    }

    /// Sets the faulty drive's chance faults and its disappearance (before the run starts).
    func arm(_ drives: SimulatedDriveSet) {
        let drive = drives[faultyDrive]
        drive.faultProbabilities = FaultProbabilities(readCorruptionProbability: readCorruptionProbability)
        if let disappearsAfterWrites { drive.disappear(afterWrites: disappearsAfterWrites) }
    }

    var description: String {
        let cut = switch powerCut {
        case .duringWork(let calls): "power cut after \(calls) device calls"
        case .afterWork: "power cut after the run (last \(unsyncedTailOperations) operations of each writer unsynced)"
        }
        let gone = disappearsAfterWrites.map { ", gone after \($0) of its writes" } ?? ""
        return "\(level), faulty drive \(faultyDrive) (reads corrupted at \(readCorruptionProbability)\(gone)), \(cut), "
            + "faulty drive's crash fates \(tearings[faultyDrive]), others' \(tearings[(faultyDrive + 1) % tearings.count])"
    }
}
