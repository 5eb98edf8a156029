// Simulated power loss at many points of a random workload. Each crash point runs a seeded
// workload on simulated drives (writes, fsyncs, snapshots, deletes, creates, resizes,
// discards), optionally a last commit whose syncs never reach the drives, then cuts the
// power: synced data survives, every unsynced write lands whole, torn or not at all. The pool
// must reopen, `check` must find nothing, every byte a successful commit covered must be
// there, and every other byte must be one the disk really had. LUNFS_CRASH_POINTS sets how
// many points run (the CI default is 300); LUNFS_SEED replays one.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

/// Passes everything through until the process "dies" at a chosen sync: from that sync on,
/// every call fails, as if the power went out while the engine waited for it.
final class PowerCut: BlockDevice, @unchecked Sendable {
    let drive: BlockDevice
    let plan: Plan
    final class Plan: @unchecked Sendable {
        /// Syncs still allowed before the cut; nil = no cut planned.
        var syncsLeft: Int?
        var dead = false
    }
    init(_ drive: BlockDevice, _ plan: Plan) { self.drive = drive; self.plan = plan }
    var sizeBytes: UInt64 { drive.sizeBytes }
    var name: String { drive.name }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) { try drive.read(into: buffer, at: offset) }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        if plan.dead { throw .io("power cut") }
        try drive.write(buffer, at: offset)
    }
    func sync() throws(LunError) {
        if let left = plan.syncsLeft {
            if left == 0 { plan.dead = true }
            plan.syncsLeft = left - 1
        }
        if plan.dead { throw .io("power cut") }
        try drive.sync()
    }
    func zero(at offset: UInt64, length: UInt64) throws(LunError) {
        if plan.dead { throw .io("power cut") }
        try drive.zero(at: offset, length: length)
    }
}

struct CrashModel {
    struct Disk {
        var current: [UInt8]
        var committed: [UInt8]
        /// Writes since the last commit: after a crash their bytes may or may not be there.
        var pending: [(offset: Int, bytes: [UInt8])] = []
        var parent: DiskID?
    }
    var disks: [DiskID: Disk] = [:]

    mutating func write(_ id: DiskID, _ offset: Int, _ bytes: [UInt8]) {
        var img = disks[id]!.current
        if img.count < offset + bytes.count { img += [UInt8](repeating: 0, count: offset + bytes.count - img.count) }
        img.replaceSubrange(offset..<offset + bytes.count, with: bytes)
        disks[id]!.current = img
        disks[id]!.pending.append((offset, bytes))
    }

    /// A commit makes every disk's current state the one that must survive.
    mutating func commitAll() {
        for id in disks.keys {
            disks[id]!.committed = disks[id]!.current
            disks[id]!.pending = []
        }
    }

    /// Empty when `actual` is a state the disk may show after a crash. When the last commit
    /// was cut short its record may have landed, so the current size is allowed too.
    func problem(_ id: DiskID, actual: [UInt8], commitInDoubt: Bool) -> String? {
        let d = disks[id]!
        guard actual.count == d.committed.count || (commitInDoubt && actual.count == d.current.count) else {
            return "size \(actual.count), committed size \(d.committed.count)"
        }
        var i = 0
        while i < actual.count {
            let old: UInt8 = i < d.committed.count ? d.committed[i] : 0
            if actual[i] != old {
                let had = d.pending.contains { w in i >= w.offset && i < w.offset + w.bytes.count && w.bytes[i - w.offset] == actual[i] }
                if !had { return "byte \(i) is \(actual[i]): neither committed (\(old)) nor written since" }
            }
            i += 1
        }
        return nil
    }
}

final class CrashSimulationTests: XCTestCase {
    func testCrashPoints() throws {
        let env = ProcessInfo.processInfo.environment
        let points = env["LUNFS_CRASH_POINTS"].flatMap(Int.init) ?? 300
        let base = env["LUNFS_SEED"].flatMap(UInt64.init) ?? UInt64(Date().timeIntervalSince1970)
        print("CrashSimulationTests base seed \(base), \(points) crash points")
        var totals = CrashTotals()
        for point in 0..<points {
            let seed = base &+ UInt64(point) &* 0x9E37_79B9
            do {
                try runCrashPoint(seed: seed, totals: &totals)
            } catch {
                XCTFail("crash point seed \(seed): \(error)")
            }
            if totals.failures > 0 { XCTFail("stopping at seed \(seed) (replay with LUNFS_SEED=\(seed) LUNFS_CRASH_POINTS=1)"); break }
        }
        print("CrashSimulationTests: \(totals.points) crash points, \(totals.operations) operations, \(totals.unacknowledgedCommits) commits cut before their syncs, \(totals.tornWrites) torn and \(totals.lostWrites) lost unsynced writes, \(totals.bytesVerified) bytes verified, \(totals.snapcloneCopySteps) snapclone copy steps, \(totals.snapclonesFinishedAfterCrash) snapclones finished copying and \(totals.snapclonesRevertedAfterCrash) turned back after a crash, \(totals.psegMoves) PSEG moves and \(totals.psegMovesCut) cut by the power, \(totals.partialSegmentsFilled) partial segments filled, fsync'd bytes lost 0, wrong bytes 0")
    }

    struct CrashTotals {
        var points = 0, operations = 0, unacknowledgedCommits = 0, tornWrites = 0, lostWrites = 0, bytesVerified = 0, failures = 0
        var snapcloneCopySteps = 0, snapclonesFinishedAfterCrash = 0, snapclonesRevertedAfterCrash = 0
        var psegMoves = 0, psegMovesCut = 0
        var partialSegmentsFilled = 0
    }

    /// Moves a random member of a random live store to a drive it may go to; false when
    /// there was nothing to move. A move commits (everything pending) before it returns.
    private func movePSEG(_ pool: Pool, _ rng: inout TestRandom, trace: Bool) throws -> Bool {
        let stores = pool.stateLock.withLock { (0..<pool.state.rsds.highWater).filter { pool.state.rsds.isLive($0) } }
        guard let store = stores.randomElement(using: &rng), let level = pool.state.rsds.level(store) else { return false }
        let slot = StoreMemberSlot(store: store, member: Int.random(in: 0..<level.memberCount, using: &rng))
        guard let target = pool.moveTargets(for: slot).randomElement(using: &rng) else { return false }
        if trace { print("move \(slot) to drive \(target)") }
        try pool.movePSEG(slot, toDrive: target)
        return true
    }

    /// Half the time, a snapclone step instead of a snapshot: make one, copy a few segments,
    /// or turn it back. Nil when the draw says "snapshot"; otherwise whether it committed.
    private func snapcloneStep(_ pool: Pool, _ rng: inout TestRandom, live: [DiskID], totals: inout CrashTotals,
                               trace: Bool) throws -> (committed: Bool, Void)? {
        let clones = pool.copyingSnapclones()
        let pick = Int.random(in: 0..<6, using: &rng)
        let commitsBefore = pool.commitCount
        if let c = clones.first, pick < 3 || pool.kind(live.randomElement(using: &rng)!) == .snapclone {
            if pick == 0 {
                try pool.revertSnapclone(c)
                if trace { print("revert snapclone \(c)") }
            } else {
                pool.quiescedCopySegments = Int.random(in: 0..<3, using: &rng)
                let progress = try pool.copySnapclone(c, segments: Int.random(in: 1...3, using: &rng))
                totals.snapcloneCopySteps += 1
                if trace { print("copy snapclone \(c): \(progress)") }
            }
        } else if clones.isEmpty, pick < 2, let x = live.filter({ pool.info($0)?.successor != nil }).randomElement(using: &rng) {
            try pool.makeSnapclone(x)
            if trace { print("make snapclone \(x)") }
        } else {
            return nil
        }
        return (pool.commitCount != commitsBefore, ())
    }

    func runCrashPoint(seed: UInt64, totals: inout CrashTotals) throws {
        var rng = TestRandom(seed: seed)
        var moveRng = TestRandom(seed: seed ^ 0x6D6F_7665)
        let level = [RAIDLevel.raid0, .raid1, .raid5][Int.random(in: 0..<3, using: &rng)]
        var set = SimulatedDriveSet(count: 8, sizeBytes: 64 << 20, seed: seed)
        let plan = PowerCut.Plan()
        func devices() -> [BlockDevice] { set.drives.map { PowerCut($0, plan) } }
        try Pool.format(devices: devices(), raid: level)
        let pool = try Pool.open(devices: devices())
        // Both snapclone variants, from the seed without a draw (old seeds replay their workload).
        pool.snapcloneVariant = seed & 1 == 0 ? .secondPass : .thirdCopy
        var model = CrashModel()
        let maxSize = 3 << 20
        let ops = Int.random(in: 1...40, using: &rng)
        let trace = ProcessInfo.processInfo.environment["LUNFS_TRACE"] != nil
        // Names carry the step, so two draws of the same number cannot collide (EEXIST); the
        // draws stay, so every seed replays the workload it always did.
        for step in 0..<ops {
            let live = model.disks.keys.sorted()
            let roll = Int.random(in: 0..<100, using: &rng)
            if live.isEmpty || roll < 6 {
                let id = try pool.createDisk(named: "d\(rng.next() % 100_000)-\(step)")
                model.disks[id] = .init(current: [], committed: [], parent: nil)
                if trace { print("create \(id)") }
                model.commitAll()
            } else if roll < 60 {
                let id = live.randomElement(using: &rng)!
                let len = [1, 700, 4096, 65536, 1 << 20][Int.random(in: 0..<5, using: &rng)]
                let off = Int.random(in: 0..<(maxSize - len), using: &rng)
                // Some writes are zeros: on unmapped segments they allocate nothing.
                let bytes = rng.chance(0.2) ? [UInt8](repeating: 0, count: len) : rng.bytes(len)
                let commitsBefore = pool.commitCount
                try pool.write(id, at: UInt64(off), bytes)
                // A write into a segment unshared since the last commit commits first.
                if pool.commitCount != commitsBefore { model.commitAll() }
                model.write(id, off, bytes)
                if trace { print("write \(id) at \(off) len \(len) first \(bytes[0])") }
            } else if roll < 75 {
                try pool.commit()
                model.commitAll()
                if trace { print("commit") }
            } else if roll < 85, let clone = try snapcloneStep(pool, &rng, live: live, totals: &totals, trace: trace) {
                // Snapclone steps change no byte any disk reads; what they commit is committed.
                if clone.committed { model.commitAll() }
            } else if roll < 85 {
                // A copying snapclone cannot be snapshotted (EBUSY, tested elsewhere).
                guard let id = live.filter({ pool.kind($0) != .snapclone }).randomElement(using: &rng) else { continue }
                let snap = try pool.createSnapshot(of: id, named: "s\(rng.next() % 100_000)-\(step)")
                model.disks[snap] = .init(current: model.disks[id]!.current, committed: [], parent: id)
                if trace { print("snapshot \(snap) of \(id)") }
                model.commitAll()
            } else if roll < 90 {
                // Delete a leaf disk (its image and node).
                let leaves = live.filter { id in !model.disks.values.contains { $0.parent == id } }
                if let id = leaves.randomElement(using: &rng) {
                    try pool.removeNode(id)
                    model.disks[id] = nil
                    if trace { print("remove \(id)") }
                    model.commitAll()
                }
            } else if roll < 95 {
                let id = live.randomElement(using: &rng)!
                let size = Int.random(in: 0..<maxSize, using: &rng)
                try pool.resize(id, to: UInt64(size))
                if trace { print("resize \(id) to \(size)") }
                try pool.commit()
                var img = model.disks[id]!.current
                if size < img.count { img.removeSubrange(size...) } else { img += [UInt8](repeating: 0, count: size - img.count) }
                model.disks[id]!.current = img
                model.commitAll()
            } else {
                let id = live.randomElement(using: &rng)!
                let size = model.disks[id]!.current.count
                if size > 0 {
                    let off = Int.random(in: 0..<size, using: &rng)
                    let len = min(size - off, Int.random(in: 1...(2 << 20), using: &rng))
                    let commitsBefore = pool.commitCount
                    try pool.discard(id, at: UInt64(off), length: UInt64(len))
                    if pool.commitCount != commitsBefore { model.commitAll() }
                    model.write(id, off, [UInt8](repeating: 0, count: len))
                    if trace { print("discard \(id) at \(off) len \(len)") }
                }
            }
            totals.operations += 1
            // PSEG moves between the steps, from their own draws (the workload's stay as they were).
            if moveRng.chance(0.12), try movePSEG(pool, &moveRng, trace: trace) {
                totals.psegMoves += 1
                model.commitAll()
            }
            // The background fill of partial segments, between steps, chosen without a draw
            // (old seeds replay their workload). It changes no byte; joining the write-intent
            // set may commit.
            if (seed >> 8 &+ UInt64(step)) % 3 == 0 {
                let commitsBefore = pool.commitCount
                totals.partialSegmentsFilled += try pool.fillPartialSegments(limit: 1)
                if pool.commitCount != commitsBefore { model.commitAll() }
            }
        }
        var commitInDoubt = false
        if moveRng.chance(0.3) {
            // The power goes out at one of the syncs of a PSEG move's commit.
            plan.syncsLeft = Int.random(in: 0..<8, using: &moveRng)
            do {
                // A move commits; when there was nothing to move, nothing was committed.
                if try movePSEG(pool, &moveRng, trace: trace) {
                    totals.psegMoves += 1
                    model.commitAll()
                }
            } catch {
                commitInDoubt = true
                totals.psegMovesCut += 1
            }
            if trace { print("power cut in a PSEG move after \(plan.syncsLeft.map(String.init) ?? "-") syncs left; in doubt \(commitInDoubt)") }
        } else if Bool.random(using: &rng) {
            // The power goes out at one of the commit's syncs: data or journal record.
            plan.syncsLeft = Int.random(in: 0..<12, using: &rng)
            commitInDoubt = (try? pool.commit()) == nil
            if commitInDoubt { totals.unacknowledgedCommits += 1 } else { model.commitAll() }
            if trace { print("power cut commit after \(plan.syncsLeft.map(String.init) ?? "-") syncs left; in doubt \(commitInDoubt)") }
        }
        let before = set.counters
        set.crash(seed: rng.next())
        let after = set.counters
        totals.tornWrites += (after.crashTornPrefix + after.crashTornSubset) - (before.crashTornPrefix + before.crashTornSubset)
        totals.lostWrites += after.crashLost - before.crashLost
        plan.syncsLeft = nil
        plan.dead = false

        let reopened = try Pool.open(devices: devices())
        let report = try PoolChecker(pool: reopened, scrub: true).run()
        if !report.problems.isEmpty {
            XCTFail("seed \(seed) \(level): check after crash: \(report.problems)")
            totals.failures += 1
            return
        }
        let ids = Set(reopened.disks().filter(\.hasImage).map(\.id))
        if ids != Set(model.disks.keys) {
            XCTFail("seed \(seed) \(level): disks after crash \(ids.sorted()), expected \(model.disks.keys.sorted())")
            totals.failures += 1
            return
        }
        for id in ids.sorted() {
            let image = try reopened.image(id)
            if let p = model.problem(id, actual: image, commitInDoubt: commitInDoubt) {
                XCTFail("seed \(seed) \(level): disk \(id): \(p)")
                totals.failures += 1
                return
            }
            totals.bytesVerified += image.count
        }
        // The recovered pool keeps working: write, commit, reopen.
        // A snapclone cut mid-copy goes on from its last commit, or is turned back into a
        // snapshot, and every disk reads the same bytes either way.
        for c in reopened.copyingSnapclones() {
            let revert = (seed >> 8) % 3 == 0
            if revert {
                try reopened.revertSnapclone(c)
                totals.snapclonesRevertedAfterCrash += 1
            } else {
                reopened.quiescedCopySegments = 0
                while try !reopened.copySnapclone(c, segments: 8).independent {}
                totals.snapclonesFinishedAfterCrash += 1
            }
            for id in ids.sorted() {
                if let p = model.problem(id, actual: try reopened.image(id), commitInDoubt: commitInDoubt) {
                    XCTFail("seed \(seed) \(level): disk \(id) after the snapclone \(c) \(revert ? "turned back" : "finished copying"): \(p)")
                    totals.failures += 1
                    return
                }
            }
        }
        // Partial segments the crash left are filled, and no disk changes a byte.
        if reopened.partialSegmentProgress.segments > 0 {
            let images = try ids.sorted().map { try reopened.image($0) }
            totals.partialSegmentsFilled += try reopened.fillPartialSegments()
            for (id, image) in zip(ids.sorted(), images) where !sameBytes(try reopened.image(id), image) {
                XCTFail("seed \(seed) \(level): disk \(id) changed when partial segments were filled after the crash")
                totals.failures += 1
                return
            }
        }
        if let id = ids.first {
            try reopened.write(id, at: 0, [1, 2, 3])
            try reopened.close()
            let again = try Pool.open(devices: devices())
            XCTAssertEqual(try again.readBytes(id, at: 0, count: 3), [1, 2, 3])
            XCTAssertEqual(try PoolChecker(pool: again).run().problems, [], "seed \(seed)")
            try again.close()
        }
        totals.points += 1
    }
}
