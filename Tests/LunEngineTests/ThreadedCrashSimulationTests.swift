// Simulated power loss while several threads write and fsync at once and a background thread
// commits, on RAID 1 and RAID 5 pools of simulated drives. Each writer owns a disk (some with
// a snapshot taken before the threads start) and keeps a log of its writes, stamped from one
// clock when they return; a commit is stamped when it starts and, once it returns, covers every
// write stamped before. The power is cut after a seeded number of device calls, the unsynced
// writes land, tear or vanish by seeded weights, and the pool is reopened: `check` must find
// nothing, every byte a finished commit covered must be there, every other byte must be one
// the disk had (its covered value or a later write's), and snapshots keep their bytes.
// LUNFS_THREADED_CRASH_POINTS sets how many points run (default 24); LUNFS_THREADED_SEED
// replays one point's workload, cut and fates (the threads' interleaving is the scheduler's).
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class ThreadedCrashSimulationTests: XCTestCase {
    static let writers = 3
    static let diskBytes = 3 << 20
    static let opsPerWriter = 40

    /// What the threads of one point share: the clock that orders returns and commit starts,
    /// and the counts the test reports.
    final class Shared: @unchecked Sendable {
        /// Stamps write returns and commit starts, in one order.
        let clock = Atomic<Int>(0)
        /// The largest start stamp of a commit that returned: writes stamped below it are durable.
        let covered = Atomic<Int>(0)
        let inFlight = Atomic<Int>(0)
        let writesStarted = Atomic<Int>(0)
        let commitsWithWritesInFlight = Atomic<Int>(0)
        let failures = Mutex<[String]>([])

        func stamp() -> Int { clock.add(1, ordering: .sequentiallyConsistent).newValue }

        /// A commit, stamped; true when it returned.
        func commit(_ pool: Pool) -> Bool {
            let startedBefore = writesStarted.load(ordering: .sequentiallyConsistent)
            let busyAtStart = inFlight.load(ordering: .sequentiallyConsistent) > 0
            let start = stamp()
            guard (try? pool.commit()) != nil else { return false }
            var seen = covered.load(ordering: .sequentiallyConsistent)
            while seen < start {
                let (done, now) = covered.compareExchange(expected: seen, desired: start, ordering: .sequentiallyConsistent)
                if done { break }
                seen = now
            }
            if busyAtStart || writesStarted.load(ordering: .sequentiallyConsistent) != startedBefore {
                commitsWithWritesInFlight.add(1, ordering: .relaxed)
            }
            return true
        }
    }

    /// One writer's disk as it knew it: the image committed before the threads started, and
    /// every write it made since, in order, with its return stamp (nil: it failed).
    struct WriterLog {
        let disk: DiskID
        let snapshot: DiskID?
        let initial: [UInt8]
        var writes: [(offset: Int, bytes: [UInt8], stamp: Int?)] = []
    }

    struct Totals {
        var points = 0, cutsDuringWork = 0, commitsWithWritesInFlight = 0, writes = 0, coveredWrites = 0
        var tornWrites = 0, lostWrites = 0, bytesVerified = 0
    }

    func testThreadedCrashPoints() throws {
        let env = ProcessInfo.processInfo.environment
        let replay = env["LUNFS_THREADED_SEED"].flatMap(UInt64.init)
        let points = replay != nil ? 1 : env["LUNFS_THREADED_CRASH_POINTS"].flatMap(Int.init) ?? 24
        let base = replay ?? UInt64(Date().timeIntervalSince1970)
        print("ThreadedCrashSimulationTests base seed \(base), \(points) crash points")
        var totals = Totals()
        for point in 0..<points {
            let seed = replay ?? base &+ UInt64(point) &* 0x9E37_79B9
            let failures = try runCrashPoint(seed: seed, level: point % 2 == 0 ? .raid1 : .raid5, totals: &totals)
            if !failures.isEmpty {
                for f in failures { XCTFail("seed \(seed): \(f)") }
                XCTFail("stopping at seed \(seed) (replay with LUNFS_THREADED_SEED=\(seed); the interleaving may differ)")
                break
            }
        }
        print("ThreadedCrashSimulationTests: \(totals.points) crash points (\(totals.cutsDuringWork) cut while the threads ran), \(totals.commitsWithWritesInFlight) commits ran with writes in flight, \(totals.writes) writes of which \(totals.coveredWrites) fsync'd, \(totals.tornWrites) torn and \(totals.lostWrites) lost unsynced writes, \(totals.bytesVerified) bytes verified")
    }

    private func runCrashPoint(seed: UInt64, level: RAIDLevel, totals: inout Totals) throws -> [String] {
        var rng = SeededRandom(seed: seed)
        var set = SimulatedDriveSet(count: 8, sizeBytes: 64 << 20, seed: rng.next())
        let cut = DeviceCallCut.Plan()
        func devices() -> [BlockDevice] { set.drives.map { DeviceCallCut($0, cut) } }
        try Pool.format(devices: devices(), raid: level)
        let pool = try Pool.open(devices: devices())

        // Before the threads: each disk gets some committed bytes, and some a snapshot, so that
        // writes go in place, to fresh segments, and unshare (hand off or copy) alike.
        var logs: [WriterLog] = []
        for w in 0..<Self.writers {
            let id = try pool.createDisk(named: "w\(w)")
            let initial = rng.bytes(Int(rng.below(UInt64(Self.diskBytes))))
            if !initial.isEmpty { try pool.write(id, at: 0, initial) }
            let snap = rng.chance(0.5) ? try pool.createSnapshot(of: id, named: "before") : nil
            logs.append(WriterLog(disk: id, snapshot: snap, initial: initial))
        }
        try pool.commit()

        let shared = Shared()
        let limit = Int(rng.below(1500))
        cut.arm(limit: limit)
        let writerSeeds = (0..<Self.writers).map { _ in rng.next() }
        let finished = Mutex<[Int: WriterLog]>([:])
        let group = DispatchGroup()
        for w in 0..<Self.writers {
            group.enter()
            let start = logs[w]
            Thread {
                defer { group.leave() }
                var log = start
                var r = SeededRandom(seed: writerSeeds[w])
                for _ in 0..<Self.opsPerWriter {
                    if r.chance(0.15) {
                        // fsync: it covers every write of this thread, which all returned.
                        if !shared.commit(pool) { break }
                        continue
                    }
                    let len = [1, 700, 4096, 65536, 300_000, 1 << 20][Int(r.below(6))]
                    let off = Int(r.below(UInt64(Self.diskBytes - len)))
                    let bytes = r.bytes(len)
                    shared.writesStarted.add(1, ordering: .sequentiallyConsistent)
                    shared.inFlight.add(1, ordering: .sequentiallyConsistent)
                    let ok = (try? pool.write(log.disk, at: UInt64(off), bytes)) != nil
                    let stamp = ok ? shared.stamp() : nil
                    shared.inFlight.subtract(1, ordering: .sequentiallyConsistent)
                    log.writes.append((off, bytes, stamp))
                    if !ok { break }
                }
                finished.withLock { $0[w] = log }
            }.start()
        }
        let stop = Atomic<Bool>(false)
        var committerRandom = rng.split()
        let committerDone = DispatchSemaphore(value: 0)
        let committerSleeps = (0..<10_000).map { _ in UInt32(committerRandom.below(5000)) }
        Thread {
            var i = 0
            while !stop.load(ordering: .acquiring) {
                if !shared.commit(pool) { break }
                usleep(committerSleeps[i % committerSleeps.count])
                i += 1
            }
            committerDone.signal()
        }.start()
        group.wait()
        stop.store(true, ordering: .releasing)
        committerDone.wait()
        if cut.isDead { totals.cutsDuringWork += 1 }

        // The power goes out now (if the cut has not come yet), and the unsynced writes meet
        // seeded fates.
        let weights = (0..<4).map { _ in rng.below(4) }
        let tearing = weights.reduce(0, +) == 0 ? CrashTearing.default
            : CrashTearing(landedWeight: weights[0], tornPrefixWeight: weights[1], tornSubsetWeight: weights[2], lostWeight: weights[3])
        let before = set.counters
        set.crash(seed: rng.next(), tearing: tearing)
        let after = set.counters
        totals.tornWrites += (after.crashTornPrefix + after.crashTornSubset) - (before.crashTornPrefix + before.crashTornSubset)
        totals.lostWrites += after.crashLost - before.crashLost
        cut.arm(limit: nil)

        let what = "\(level), cut after \(limit) calls, \(tearing)"
        let reopened = try Pool.open(devices: devices())
        let problems = try PoolChecker(pool: reopened, scrub: true).run().problems
        if !problems.isEmpty { return ["\(what): check after crash: \(problems)"] }
        let covered = shared.covered.load(ordering: .sequentiallyConsistent)
        totals.commitsWithWritesInFlight += shared.commitsWithWritesInFlight.load(ordering: .relaxed)
        var failures: [String] = []
        for w in 0..<Self.writers {
            let log = finished.withLock { $0[w]! }
            totals.writes += log.writes.count
            totals.coveredWrites += log.writes.filter { ($0.stamp ?? .max) < covered }.count
            let image = try reopened.image(log.disk)
            if let p = Self.problem(log, covered: covered, actual: image) { failures.append("\(what): writer \(w): \(p)") }
            totals.bytesVerified += image.count
            if let snap = log.snapshot {
                let kept = try reopened.image(snap)
                if !sameBytes(kept, log.initial) { failures.append("\(what): writer \(w)'s snapshot changed") }
                totals.bytesVerified += kept.count
            }
        }
        try reopened.close()
        totals.points += 1
        return failures
    }

    /// nil when `actual` is a state the writer's disk may show: the writes a commit covered
    /// (a prefix of the log, since each writer's writes return in order) are all there, and
    /// any other byte is the covered value or one a later write put there.
    static func problem(_ log: WriterLog, covered: Int, actual: [UInt8]) -> String? {
        var committed = log.initial
        var pending: [(offset: Int, bytes: [UInt8])] = []
        for w in log.writes {
            if let s = w.stamp, s < covered, pending.isEmpty {
                if committed.count < w.offset + w.bytes.count {
                    committed += [UInt8](repeating: 0, count: w.offset + w.bytes.count - committed.count)
                }
                committed.replaceSubrange(w.offset..<w.offset + w.bytes.count, with: w.bytes)
            } else {
                pending.append((w.offset, w.bytes))
            }
        }
        // Writes only grow a disk: its size is the committed one or a later write's end.
        var sizes: Set<Int> = [committed.count]
        var grown = committed.count
        for p in pending { grown = max(grown, p.offset + p.bytes.count); sizes.insert(grown) }
        guard sizes.contains(actual.count) else {
            return "size \(actual.count), fsync'd size \(committed.count), possible \(sizes.sorted())"
        }
        for i in 0..<actual.count {
            let old: UInt8 = i < committed.count ? committed[i] : 0
            if actual[i] == old { continue }
            let had = pending.contains { p in i >= p.offset && i < p.offset + p.bytes.count && p.bytes[i - p.offset] == actual[i] }
            if !had {
                return "byte \(i) is \(actual[i]): neither fsync'd (\(old)) nor written since (\(log.writes.count) writes, \(pending.count) not covered)"
            }
        }
        return nil
    }
}
