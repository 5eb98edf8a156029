// Simulated power loss while several threads write, read and fsync at once and a background
// thread commits, on RAID 1, RAID 5 and RAID 0 pools of simulated drives. Each writer owns a
// disk (some with a snapshot taken before the threads start) and keeps a log of its writes,
// stamped from one clock when they return; a commit is stamped when it starts and, once it
// returns, covers every write stamped before. One drive misbehaves (`ThreadedFaultPlan`): its
// reads are corrupted at a chance, on redundant pools it may disappear in the middle of the run
// (writes go on degraded) and come back stale at the reopen, and it may misdirect unsynced
// writes at the crash. Every read a writer makes is checked against what it wrote. The power is
// cut after a seeded number of device calls (or after the run), the unsynced writes land, tear,
// vanish or go to a wrong place by seeded weights, and the pool is reopened: a drive that left
// service must have been rebuilt, `check --scrub` must find nothing, every byte a finished
// commit covered must be there, every other byte must be one the disk had (its covered value or
// a later write's), and snapshots keep their bytes.
// LUNFS_THREADED_CRASH_POINTS sets how many points run (default 24); LUNFS_THREADED_SEED
// replays one point's workload, faults, cut and fates (the threads' interleaving is the
// scheduler's).
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class ThreadedCrashSimulationTests: XCTestCase {
    static let writers = 3
    static let diskBytes = 3 << 20
    static let opsPerWriter = 40
    static let driveCount = 8
    /// The levels, by point number: redundant pools twice as often as RAID 0.
    static let levels: [RAIDLevel] = [.raid1, .raid5, .raid1, .raid5, .raid0]

    /// What the threads of one point share: the clock that orders returns and commit starts,
    /// what each thread saw of the faults, and the counts the test reports.
    final class Shared: @unchecked Sendable {
        let plan: ThreadedFaultPlan
        let cut: DeviceCallCut.Plan
        /// The faulty drive as the run found it (the crash replaces it).
        let faultyDrive: SimulatedDrive
        /// Stamps write returns and commit starts, in one order.
        let clock = Atomic<Int>(0)
        /// The largest start stamp of a commit that returned: writes stamped below it are durable.
        let covered = Atomic<Int>(0)
        let inFlight = Atomic<Int>(0)
        let writesStarted = Atomic<Int>(0)
        let commitsWithWritesInFlight = Atomic<Int>(0)
        /// A commit that started with the faulty drive gone returned: the pool recorded it as
        /// out of service, so the reopen must rebuild it.
        let goneDriveRecorded = Atomic<Bool>(false)
        let commitsRefusedAfterDriveLoss = Atomic<Int>(0)
        let bytesReadVerified = Atomic<Int>(0)
        let wrongBytesRead = Atomic<Int>(0)
        let readsRefusedOnRAID0 = Atomic<Int>(0)
        /// Writers that reached the operations that fsync nothing (`unsyncedTailOperations`).
        let writersInUnsyncedTail = Atomic<Int>(0)
        let failures = Mutex<[String]>([])

        init(plan: ThreadedFaultPlan, cut: DeviceCallCut.Plan, faultyDrive: SimulatedDrive) {
            self.plan = plan
            self.cut = cut
            self.faultyDrive = faultyDrive
        }

        func stamp() -> Int { clock.add(1, ordering: .sequentiallyConsistent).newValue }

        func fail(_ message: String) { failures.withLock { $0.append(message) } }

        /// A commit, stamped; true when it returned. A refusal is allowed only once the power
        /// is off or while the faulty drive is gone (until a checkpoint records it).
        func commit(_ pool: Pool) -> Bool {
            let startedBefore = writesStarted.load(ordering: .sequentiallyConsistent)
            let busyAtStart = inFlight.load(ordering: .sequentiallyConsistent) > 0
            let goneAtStart = !faultyDrive.isPresent
            let start = stamp()
            do {
                try pool.commit()
            } catch {
                if !cut.isDead {
                    if faultyDrive.isPresent { fail("a commit failed with every drive present and the power on: \(error)") }
                    commitsRefusedAfterDriveLoss.add(1, ordering: .relaxed)
                }
                return false
            }
            if goneAtStart { goneDriveRecorded.store(true, ordering: .sequentiallyConsistent) }
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

        /// Reads `count` bytes at `offset` and compares them with `expected`; false when the
        /// read failed and the writer should stop (the power is off, or a redundant pool could
        /// not hide its one faulty drive).
        func verifiedRead(_ pool: Pool, _ disk: DiskID, at offset: Int, expected: ArraySlice<UInt8>) -> Bool {
            let got: [UInt8]
            do {
                got = try pool.readBytes(disk, at: UInt64(offset), count: expected.count)
            } catch {
                if cut.isDead { return false }
                if plan.level == .raid0 {
                    readsRefusedOnRAID0.add(1, ordering: .relaxed)
                    return true
                }
                fail("read of disk \(disk) at \(offset), \(expected.count) bytes, failed with one faulty drive: \(error)")
                return false
            }
            var wrong = got.count == expected.count ? 0 : abs(got.count - expected.count)
            for (a, b) in zip(got, expected) where a != b { wrong += 1 }
            if wrong > 0 {
                wrongBytesRead.add(wrong, ordering: .relaxed)
                fail("read of disk \(disk) at \(offset), \(expected.count) bytes, returned \(wrong) wrong bytes")
            }
            bytesReadVerified.add(got.count, ordering: .relaxed)
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
        /// Snapshots the writer took of its own disk during the run (mkdir commits with the
        /// chain's I/O going on again): the name, the disk's bytes then, and whether mkdir
        /// returned (then it must be there after the crash; otherwise it may be).
        var midSnapshots: [(name: String, image: [UInt8], returned: Bool)] = []
    }

    struct Totals {
        var points = 0, cutsDuringWork = 0, commitsWithWritesInFlight = 0, writes = 0, coveredWrites = 0
        var tornWrites = 0, lostWrites = 0, misdirectedWrites = 0
        var corruptedReadsHealed = 0, corruptedReadsOnRAID0 = 0, readsRefusedOnRAID0 = 0
        var drivesGone = 0, commitsRefusedAfterDriveLoss = 0, drivesRebuilt = 0, latentBlocksRepairedByScrub = 0
        var bytesVerifiedAfterCrashes = 0, bytesReadVerified = 0, fsyncedBytesLost = 0, wrongBytes = 0
        var midSnapshotsVerified = 0, psegMoves = 0
        /// Partial segments (copy on first write in blocks): filled during the runs, and found
        /// partial after a crash (then filled after the reopen, the images checked again).
        var partialSegmentsFilled = 0, partialSegmentsAfterCrashes = 0

        var summary: String {
            "\(points) crash points (\(cutsDuringWork) cut while the threads ran), "
                + "\(commitsWithWritesInFlight) commits ran with writes in flight, \(writes) writes of which \(coveredWrites) fsync'd, "
                + "\(misdirectedWrites) misdirected (\(latentBlocksRepairedByScrub) blocks they hit outside in-flight stores repaired by scrub), "
                + "\(tornWrites) torn and \(lostWrites) lost unsynced writes, "
                + "\(corruptedReadsHealed) corrupted reads served on RAID 1/5 (healed), "
                + "\(corruptedReadsOnRAID0) on RAID 0 (\(readsRefusedOnRAID0) reads refused, never wrong bytes), "
                + "\(drivesGone) drives gone (\(commitsRefusedAfterDriveLoss) commits refused until recorded), "
                + "\(drivesRebuilt) gone stale and rebuilt, \(midSnapshotsVerified) snapshots taken mid-run verified, \(psegMoves) PSEG moves beside the writers, "
                + "\(partialSegmentsFilled) partial segments filled during the runs and \(partialSegmentsAfterCrashes) after crashes, \(bytesVerifiedAfterCrashes) bytes verified after crashes "
                + "and \(bytesReadVerified) read during the runs, fsync'd bytes lost \(fsyncedBytesLost), wrong bytes \(wrongBytes)"
        }
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
            let failures = try runCrashPoint(seed: seed, totals: &totals)
            if !failures.isEmpty {
                for f in failures { XCTFail("seed \(seed): \(f)") }
                XCTFail("stopping at seed \(seed) (replay with LUNFS_THREADED_SEED=\(seed); the interleaving may differ)")
                break
            }
            // Long runs say how far they got, so a run stopped early still has its figures.
            if points >= 1000 && (point + 1) % 250 == 0 && point + 1 < points {
                print("ThreadedCrashSimulationTests so far: \(totals.summary)")
                fflush(nil)  // a long run piped into grep shows each line as it comes
            }
        }
        print("ThreadedCrashSimulationTests: \(totals.summary)")
        XCTAssertEqual(totals.fsyncedBytesLost, 0)
        XCTAssertEqual(totals.wrongBytes, 0)
    }

    private func runCrashPoint(seed: UInt64, totals: inout Totals) throws -> [String] {
        var rng = SeededRandom(seed: seed)
        let level = Self.levels[Int(seed % UInt64(Self.levels.count))]
        var set = SimulatedDriveSet(count: Self.driveCount, sizeBytes: 64 << 20, seed: rng.next())
        let plan = ThreadedFaultPlan(level: level, driveCount: Self.driveCount, random: &rng)
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

        let shared = Shared(plan: plan, cut: cut, faultyDrive: set[plan.faultyDrive])
        plan.arm(set)
        switch plan.powerCut {
        case .duringWork(let calls): cut.arm(limit: calls)
        case .afterWork: cut.arm(limit: nil)
        }
        let writerSeeds = (0..<Self.writers).map { _ in rng.next() }
        let finished = Mutex<[Int: WriterLog]>([:])
        let group = DispatchGroup()
        for w in 0..<Self.writers {
            group.enter()
            let start = logs[w]
            Thread {
                defer { group.leave() }
                var log = start
                var image = start.initial
                var r = SeededRandom(seed: writerSeeds[w])
                for op in 0..<Self.opsPerWriter {
                    let roll = r.below(100)
                    let inUnsyncedTail = op >= Self.opsPerWriter - plan.unsyncedTailOperations
                    if op == Self.opsPerWriter - plan.unsyncedTailOperations {
                        shared.writersInUnsyncedTail.add(1, ordering: .sequentiallyConsistent)
                    }
                    if roll < 15 && !inUnsyncedTail {
                        // fsync: it covers every write of this thread, which all returned.
                        if !shared.commit(pool) && shared.cut.isDead { break }
                        continue
                    }
                    if roll < 18 && !inUnsyncedTail && log.midSnapshots.count < 2 {
                        let name = "mid\(op)"
                        let returned = (try? pool.createSnapshot(of: log.disk, named: name)) != nil
                        log.midSnapshots.append((name, image, returned))
                        if !returned {
                            if shared.cut.isDead { break }
                            // Its commit may be refused while the faulty drive is gone; the
                            // split stays and a later commit carries it.
                            if shared.faultyDrive.isPresent { shared.fail("mkdir \(name) of disk \(log.disk) failed with every drive present and the power on") }
                        }
                        continue
                    }
                    if roll < 35 {
                        // A read of the disk (or of its snapshot), checked against what it holds.
                        let fromSnapshot = log.snapshot != nil && r.chance(0.25)
                        let source = fromSnapshot ? log.initial : image
                        guard !source.isEmpty else { continue }
                        let off = Int(r.below(UInt64(source.count)))
                        let len = min(source.count - off, [1, 4096, 65536, 300_000][Int(r.below(4))])
                        let disk = fromSnapshot ? log.snapshot! : log.disk
                        if !shared.verifiedRead(pool, disk, at: off, expected: source[off..<off + len]) { break }
                        continue
                    }
                    let len = [1, 700, 4096, 65536, 300_000, 1 << 20][Int(r.below(6))]
                    let off = Int(r.below(UInt64(Self.diskBytes - len)))
                    // Some writes are zeros: on unmapped segments they allocate nothing.
                    let bytes = r.chance(0.15) ? [UInt8](repeating: 0, count: len) : r.bytes(len)
                    shared.writesStarted.add(1, ordering: .sequentiallyConsistent)
                    shared.inFlight.add(1, ordering: .sequentiallyConsistent)
                    var ok = true
                    do {
                        try pool.write(log.disk, at: UInt64(off), bytes)
                    } catch {
                        ok = false
                        if !shared.cut.isDead && plan.level != .raid0 {
                            shared.fail("write of disk \(log.disk) at \(off), \(len) bytes, failed with one faulty drive: \(error)")
                        }
                    }
                    let stamp = ok ? shared.stamp() : nil
                    shared.inFlight.subtract(1, ordering: .sequentiallyConsistent)
                    log.writes.append((off, bytes, stamp))
                    if !ok { break }
                    if image.count < off + len { image += [UInt8](repeating: 0, count: off + len - image.count) }
                    image.replaceSubrange(off..<off + len, with: bytes)
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
            while !stop.load(ordering: .acquiring)
                && shared.writersInUnsyncedTail.load(ordering: .sequentiallyConsistent) < Self.writers {
                if !shared.commit(pool) && shared.cut.isDead { break }
                usleep(committerSleeps[i % committerSleeps.count])
                i += 1
            }
            committerDone.signal()
        }.start()
        // A mover beside the writers and the committer (at half the points): random members of
        // random stores to other drives, until the writers reach their unsynced tail (its
        // commits would sync it). Its own draws, so the seeds' other draws stay; a move that
        // fails changes nothing.
        let moverDone = DispatchSemaphore(value: 0)
        let moves = Atomic<Int>(0)
        let moving = seed & 2 == 0   // half the points, to keep the suite's time
        Thread {
            var r = SeededRandom(seed: seed ^ 0x6D6F_7665)
            while moving && !stop.load(ordering: .acquiring) && !shared.cut.isDead
                && shared.writersInUnsyncedTail.load(ordering: .sequentiallyConsistent) < Self.writers {
                let stores = pool.stateLock.withLock { (0..<pool.state.rsds.highWater).filter { pool.state.rsds.isLive($0) } }
                if let store = stores.randomElement(using: &r), let level = pool.state.rsds.level(store) {
                    let slot = StoreMemberSlot(store: store, member: Int(r.below(UInt64(level.memberCount))))
                    if let target = pool.moveTargets(for: slot).randomElement(using: &r), (try? pool.movePSEG(slot, toDrive: target)) != nil {
                        moves.add(1, ordering: .relaxed)
                    }
                }
                usleep(30_000 + UInt32(r.below(30_000)))
            }
            moverDone.signal()
        }.start()
        // The background fill of partial segments, at seeded moments among the writes.
        var fillerRandom = rng.split()
        let fillerDone = DispatchSemaphore(value: 0)
        let fillerSleeps = (0..<10_000).map { _ in UInt32(fillerRandom.below(3000)) }
        let filled = Atomic<Int>(0)
        Thread {
            var i = 0
            while !stop.load(ordering: .acquiring) && !shared.cut.isDead {
                do {
                    filled.add(try pool.fillPartialSegments(limit: 1), ordering: .relaxed)
                } catch {
                    if !shared.cut.isDead && plan.level != .raid0 { shared.fail("fill of a partial segment failed with one faulty drive: \(error)") }
                    if shared.cut.isDead { break }
                }
                usleep(fillerSleeps[i % fillerSleeps.count])
                i += 1
            }
            fillerDone.signal()
        }.start()
        group.wait()
        stop.store(true, ordering: .releasing)
        committerDone.wait()
        moverDone.wait()
        totals.psegMoves += moves.load(ordering: .relaxed)
        fillerDone.wait()
        totals.partialSegmentsFilled += filled.load(ordering: .relaxed)
        if cut.isDead { totals.cutsDuringWork += 1 }

        // The power goes out now (if the cut has not come yet), and the unsynced writes meet
        // seeded fates. The faults stop: the reopen and the checks see the medium as it is.
        let before = set.counters
        set.crash(seed: rng.next(), tearings: plan.tearings)
        set.stopInjecting()
        let after = set.counters
        totals.tornWrites += (after.crashTornPrefix + after.crashTornSubset) - (before.crashTornPrefix + before.crashTornSubset)
        totals.lostWrites += after.crashLost - before.crashLost
        totals.misdirectedWrites += after.crashMisdirected - before.crashMisdirected
        if level == .raid0 { totals.corruptedReadsOnRAID0 += before.corruptedReads } else { totals.corruptedReadsHealed += before.corruptedReads }
        totals.drivesGone += before.disappearances
        totals.commitsRefusedAfterDriveLoss += shared.commitsRefusedAfterDriveLoss.load(ordering: .relaxed)
        totals.readsRefusedOnRAID0 += shared.readsRefusedOnRAID0.load(ordering: .relaxed)
        totals.bytesReadVerified += shared.bytesReadVerified.load(ordering: .relaxed)
        totals.wrongBytes += shared.wrongBytesRead.load(ordering: .relaxed)
        cut.arm(limit: nil)

        let what = "\(plan)"
        var failures = shared.failures.withLock { $0 }.map { "\(what): during the run: \($0)" }
        let reopened = try Pool.open(devices: devices())
        // A drive the pool recorded as gone is stale when it comes back: rebuilt, never read as it is.
        let rebuilt = reopened.rebuiltStaleDriveIndexes
        totals.drivesRebuilt += rebuilt.count
        if shared.goneDriveRecorded.load(ordering: .sequentiallyConsistent) && !rebuilt.contains(plan.faultyDrive) {
            failures.append("\(what): drive \(plan.faultyDrive) left service at a commit but was not rebuilt (rebuilt: \(rebuilt.sorted()))")
        }
        if !rebuilt.subtracting([plan.faultyDrive]).isEmpty || (before.disappearances == 0 && !rebuilt.isEmpty) {
            failures.append("\(what): rebuilt drives \(rebuilt.sorted()) that never went away")
        }
        if !reopened.staleDriveIndexes.isEmpty {
            failures.append("\(what): drives \(reopened.staleDriveIndexes.sorted()) stay stale after the reopen")
        }
        // A misdirected write can land on blocks of a store no write had in flight: recovery
        // reads only those, so such a block waits, damaged on the faulty drive with a good copy
        // elsewhere, for a read or a scrub to repair it. Anything else the check finds is wrong.
        let misdirected = after.crashMisdirected - before.crashMisdirected
        let problems = try PoolChecker(pool: reopened, scrub: true).run().problems
        let latent = problems.filter { p in
            misdirected > 0 && p.hasPrefix("drive \(plan.faultyDrive) (")
                && (p.contains("the mirror copy is good") || p.contains("the other members can rebuild it"))
        }
        if latent.count != problems.count {
            return failures + ["\(what): check after crash: \(problems.filter { !latent.contains($0) })"]
        }
        if !latent.isEmpty {
            let left = try PoolChecker(pool: reopened, scrub: true, repair: true).run().problems
            if !left.isEmpty { return failures + ["\(what): scrub could not repair what misdirected writes damaged: \(left)"] }
            totals.latentBlocksRepairedByScrub += latent.count
        }
        let covered = shared.covered.load(ordering: .sequentiallyConsistent)
        totals.commitsWithWritesInFlight += shared.commitsWithWritesInFlight.load(ordering: .relaxed)
        for w in 0..<Self.writers {
            let log = finished.withLock { $0[w]! }
            totals.writes += log.writes.count
            totals.coveredWrites += log.writes.filter { ($0.stamp ?? .max) < covered }.count
            let image = try reopened.image(log.disk)
            let verdict = Self.verdict(log, covered: covered, actual: image)
            totals.fsyncedBytesLost += verdict.fsyncedBytesLost
            totals.wrongBytes += verdict.wrongBytes
            if let p = verdict.problem { failures.append("\(what): writer \(w): \(p)") }
            totals.bytesVerifiedAfterCrashes += image.count
            if let snap = log.snapshot {
                let kept = try reopened.image(snap)
                if !sameBytes(kept, log.initial) {
                    let lost = kept.count == log.initial.count ? zip(kept, log.initial).filter { $0 != $1 }.count : log.initial.count
                    totals.fsyncedBytesLost += lost
                    failures.append("\(what): writer \(w)'s snapshot changed (\(lost) bytes)")
                }
                totals.bytesVerifiedAfterCrashes += kept.count
            }
            for mid in log.midSnapshots {
                guard let id = reopened.child(named: mid.name, of: log.disk) else {
                    if mid.returned { failures.append("\(what): writer \(w)'s snapshot \(mid.name) returned but is gone") }
                    continue
                }
                let kept = try reopened.image(id)
                if !sameBytes(kept, mid.image) {
                    let lost = kept.count == mid.image.count ? zip(kept, mid.image).filter { $0 != $1 }.count : mid.image.count
                    if mid.returned { totals.fsyncedBytesLost += lost } else { totals.wrongBytes += lost }
                    failures.append("\(what): writer \(w)'s snapshot \(mid.name) (mkdir \(mid.returned ? "returned" : "cut")) differs in \(lost) bytes")
                }
                totals.midSnapshotsVerified += 1
                totals.bytesVerifiedAfterCrashes += kept.count
            }
        }
        // Partial segments the crash left: filling them changes no byte any disk shows.
        let partialsLeft = reopened.partialSegmentProgress.segments
        if partialsLeft > 0 && failures.isEmpty {
            totals.partialSegmentsAfterCrashes += partialsLeft
            let ids = finished.withLock { $0.values.flatMap { l in [l.disk] + (l.snapshot.map { [$0] } ?? []) } }.sorted()
            let before = try ids.map { try reopened.image($0) }
            try reopened.fillPartialSegments()
            try reopened.commit()
            for (id, image) in zip(ids, before) where !sameBytes(try reopened.image(id), image) {
                failures.append("\(what): disk \(id) changed when its partial segments were filled after the reopen")
            }
            let left = try PoolChecker(pool: reopened, scrub: true).run().problems
            if !left.isEmpty { failures.append("\(what): check after the fill: \(left)") }
        }
        try reopened.close()
        totals.points += 1
        return failures
    }

    /// What the reopened disk shows against the writer's log.
    struct Verdict {
        /// Bytes a commit covered (before the threads, or by a covered write) that are not there.
        var fsyncedBytesLost = 0
        /// Bytes the disk never held at their place: never covered, and no write since put them there.
        var wrongBytes = 0
        /// The first thing wrong, for the failure message; nil when the disk may show `actual`.
        var problem: String?
    }

    /// The writes a commit covered (a prefix of the log, since each writer's writes return in
    /// order) must all be there, and any other byte must be the covered value or one a later
    /// write put there.
    static func verdict(_ log: WriterLog, covered: Int, actual: [UInt8]) -> Verdict {
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
        // Which bytes a commit made durable: the initial image and every covered write.
        var fsynced = [Bool](repeating: false, count: committed.count)
        for i in 0..<log.initial.count { fsynced[i] = true }
        for w in log.writes {
            guard let s = w.stamp, s < covered else { break }
            for i in w.offset..<w.offset + w.bytes.count { fsynced[i] = true }
        }
        var verdict = Verdict()
        // Writes only grow a disk: its size is the committed one or a later write's end.
        var sizes: Set<Int> = [committed.count]
        var grown = committed.count
        for p in pending { grown = max(grown, p.offset + p.bytes.count); sizes.insert(grown) }
        if !sizes.contains(actual.count) {
            verdict.problem = "size \(actual.count), fsync'd size \(committed.count), possible \(sizes.sorted())"
            verdict.fsyncedBytesLost += max(0, committed.count - actual.count)
        }
        for i in 0..<actual.count {
            let old: UInt8 = i < committed.count ? committed[i] : 0
            if actual[i] == old { continue }
            let had = pending.contains { p in i >= p.offset && i < p.offset + p.bytes.count && p.bytes[i - p.offset] == actual[i] }
            if had { continue }
            if i < fsynced.count && fsynced[i] { verdict.fsyncedBytesLost += 1 } else { verdict.wrongBytes += 1 }
            if verdict.problem == nil {
                verdict.problem = "byte \(i) is \(actual[i]): neither fsync'd (\(old)) nor written since (\(log.writes.count) writes, \(pending.count) not covered)"
            }
        }
        return verdict
    }
}
