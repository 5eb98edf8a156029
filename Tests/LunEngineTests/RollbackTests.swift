// Rollback and group snapshots (issue 15, docs/DESIGN.md section 7): what each refuses, what
// each leaves on disk, power cuts in the middle of both (all or nothing, never a mix), and
// both running beside writers and a committer on other threads.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting
import Synchronization

final class RollbackTests: XCTestCase {
    /// A pool of five in-memory drives at `raid`, and the drives to reopen it from.
    private func newPool(_ raid: RAIDLevel) throws -> (MemoryDrives, Pool) {
        let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
        try drives.format(raid: raid)
        return (drives, try drives.open())
    }

    /// vm -> monday -> tuesday, written between; a rollback to monday, then back again.
    func testRollbackKeepsEveryStateAndReplays() throws {
        var rng = TestRandom(seed: 15)
        var (drives, pool) = try newPool(.raid5)
        let vm = try pool.createDisk(named: "vm")
        var current = rng.bytes(3 << 20)
        try pool.write(vm, at: 0, current)
        let monday = try pool.createSnapshot(of: vm, named: "monday")
        let mondayBytes = current
        let patch = rng.bytes(1 << 20)
        try pool.write(vm, at: 2 << 20, patch)   // grows the disk to 3 MiB still, then 4 MiB below
        current.replaceSubrange(2 << 20 ..< 3 << 20, with: patch)
        try pool.write(vm, at: 3 << 20, patch)
        current += patch
        let tuesday = try pool.createSnapshot(of: vm, named: "tuesday")
        let tuesdayBytes = current
        try pool.write(vm, at: 4096, [9, 9, 9])
        current.replaceSubrange(4096..<4099, with: [9, 9, 9])
        let handle = try pool.openDisk(vm)

        let first = try pool.rollback(vm, to: monday)
        XCTAssertTrue(first.beforeName.hasPrefix("before-rollback-"))
        XCTAssertEqual(pool.info(first.before)?.parent, vm)
        assertSameBytes(try pool.image(vm), mondayBytes, "vm after the rollback")
        XCTAssertEqual(pool.info(vm)?.sizeBytes, UInt64(mondayBytes.count))
        assertSameBytes(try pool.image(first.before), current, "the state before")
        assertSameBytes(try pool.image(monday), mondayBytes, "monday")
        assertSameBytes(try pool.image(tuesday), tuesdayBytes, "tuesday")
        // An image opened before reads the rolled-back bytes.
        var head = [UInt8](repeating: 0, count: 8192)
        _ = try head.withUnsafeMutableBytes { try pool.read(handle, at: 0, into: $0) }
        XCTAssertEqual(head, Array(mondayBytes[0..<8192]))
        // Writes to the rolled-back disk touch nobody else.
        try pool.write(vm, at: 0, [7])
        var rolled = mondayBytes
        rolled[0] = 7
        assertSameBytes(try pool.image(monday), mondayBytes, "monday after a write to vm")
        // Rolling back to the state before undoes the rollback; nothing is lost either way.
        let second = try pool.rollback(vm, to: first.before)
        XCTAssertNotEqual(second.beforeName, first.beforeName)
        assertSameBytes(try pool.image(vm), current, "vm rolled forward")
        assertSameBytes(try pool.image(second.before), rolled, "the rolled-back state, kept")
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        // Replayed from the journal, then from a checkpoint.
        let expected: [DiskID: [UInt8]] = [vm: current, monday: mondayBytes, tuesday: tuesdayBytes,
                                           first.before: current, second.before: rolled]
        for reopen in 0..<2 {
            if reopen == 0 { try pool.commit() } else { try pool.close() }
            pool = try drives.open()
            XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
            for (id, bytes) in expected { assertSameBytes(try pool.image(id), bytes, "disk \(id) after reopen \(reopen)") }
        }
        try pool.close()
    }

    func testRollbackRefusals() throws {
        let (_, pool) = try newPool(.raid5)
        let vm = try pool.createDisk(named: "vm"), other = try pool.createDisk(named: "other")
        try pool.write(vm, at: 0, [UInt8](repeating: 1, count: 3 << 20))
        try pool.write(other, at: 0, [2])
        let monday = try pool.createSnapshot(of: vm, named: "monday")
        let tuesday = try pool.createSnapshot(of: vm, named: "tuesday")
        func refused(_ errno: Int32, _ body: () throws -> Void, _ what: String) {
            let disksBefore = pool.disks()
            XCTAssertThrowsError(try body(), what) { XCTAssertEqual(($0 as? LunError)?.errno, errno, "\(what): \($0)") }
            XCTAssertEqual(pool.disks(), disksBefore, "\(what) changed something")
        }
        refused(EINVAL, { _ = try pool.rollback(vm, to: vm) }, "to itself")
        refused(EINVAL, { _ = try pool.rollback(vm, to: other) }, "to another chain")
        refused(EINVAL, { _ = try pool.rollback(vm, to: monday, beforeName: "a/b") }, "a bad name")
        refused(EEXIST, { _ = try pool.rollback(vm, to: monday, beforeName: "tuesday") }, "a taken name")
        try pool.setReserved(monday, true)
        refused(EPERM, { _ = try pool.rollback(vm, to: monday) }, "to a reserved snapshot")
        try pool.setReserved(monday, false)
        try pool.setReserveSnapshots(vm, true)
        refused(EPERM, { _ = try pool.rollback(vm, to: monday) }, "a disk that takes reserved snapshots")
        try pool.setReserveSnapshots(vm, false)
        try pool.makeSnapclone(tuesday)
        let disksCopying = pool.disks()
        XCTAssertThrowsError(try pool.rollback(vm, to: monday)) { XCTAssertEqual(($0 as? LunError)?.errno, EBUSY, "\($0)") }
        XCTAssertEqual(pool.disks(), disksCopying)
        try pool.revertSnapclone(tuesday)
        XCTAssertNoThrow(try pool.rollback(vm, to: monday))
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        try pool.close()
    }

    /// A group snapshot makes all or nothing: one taken name refuses the whole group.
    func testGroupSnapshotAllOrNothing() throws {
        var (drives, pool) = try newPool(.raid1)
        let a = try pool.createDisk(named: "a"), b = try pool.createDisk(named: "b")
        try pool.write(a, at: 0, [UInt8](repeating: 1, count: 2 << 20))
        try pool.write(b, at: 0, [UInt8](repeating: 2, count: 1 << 20))
        let snapB = try pool.createSnapshot(of: b, named: "night")
        try pool.write(b, at: 0, [3])
        let before = pool.disks()
        XCTAssertThrowsError(try pool.createGroupSnapshot(of: [a, b], named: "night")) {
            XCTAssertEqual(($0 as? LunError)?.errno, EEXIST, "\($0)")
        }
        XCTAssertThrowsError(try pool.createGroupSnapshot(of: [a, a], named: "x")) {
            XCTAssertEqual(($0 as? LunError)?.errno, EINVAL, "\($0)")
        }
        XCTAssertEqual(pool.disks(), before)
        let snaps = try pool.createGroupSnapshot(of: [b, a], named: "noon")
        try pool.write(a, at: 0, [4])
        try pool.close()
        pool = try drives.open()
        assertSameBytes(try pool.image(snaps[a]!), [UInt8](repeating: 1, count: 2 << 20), "a/noon")
        assertSameBytes(try pool.image(snaps[b]!), [3] + [UInt8](repeating: 2, count: (1 << 20) - 1), "b/noon")
        assertSameBytes(try pool.image(snapB), [UInt8](repeating: 2, count: 1 << 20), "b/night")
        XCTAssertEqual(pool.info(snaps[a]!)?.name, "noon")
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
    }

    // MARK: Power cuts

    /// Seeded workloads of writes, snapshots, rollbacks and group snapshots on simulated
    /// drives, the power cut at a random sync of a last rollback or group snapshot (or of a
    /// plain commit). After the crash the pool shows the state before that operation (writes
    /// since the last commit whole, torn or absent) or the state after it, never a mix.
    /// LUNFS_ROLLBACK_CRASH_POINTS sets how many (default 50); LUNFS_SEED replays one.
    func testRollbackAndGroupSnapshotCrashPoints() throws {
        let env = ProcessInfo.processInfo.environment
        let points = env["LUNFS_ROLLBACK_CRASH_POINTS"].flatMap(Int.init) ?? 50
        let base = env["LUNFS_SEED"].flatMap(UInt64.init) ?? UInt64(Date().timeIntervalSince1970)
        print("RollbackTests crash points: base seed \(base), \(points) points")
        var outcomes = (before: 0, after: 0, rollbacks: 0, groups: 0)
        for point in 0..<points {
            let seed = base &+ UInt64(point) &* 0x9E37_79B9
            do {
                guard let applied = try runCrashPoint(seed: seed, counts: &outcomes) else {
                    XCTFail("stopping at seed \(seed) (replay with LUNFS_SEED=\(seed) LUNFS_ROLLBACK_CRASH_POINTS=1)")
                    break
                }
                if applied { outcomes.after += 1 } else { outcomes.before += 1 }
            } catch {
                XCTFail("crash point seed \(seed): \(error)")
                break
            }
        }
        print("RollbackTests crash points: \(outcomes.rollbacks) rollbacks and \(outcomes.groups) group snapshots run; after the cut, the last operation had taken effect at \(outcomes.after) points and not at \(outcomes.before) (cut before its record, or none drawn)")
    }

    /// One crash point: whether the cut operation's state after was found, nil on a failure.
    private func runCrashPoint(seed: UInt64, counts: inout (before: Int, after: Int, rollbacks: Int, groups: Int)) throws -> Bool? {
        var rng = TestRandom(seed: seed)
        let level = [RAIDLevel.raid0, .raid1, .raid5][Int(rng.below(3))]
        var set = SimulatedDriveSet(count: 6, sizeBytes: 48 << 20, seed: seed)
        let plan = PowerCut.Plan()
        func devices() -> [BlockDevice] { set.drives.map { PowerCut($0, plan) } }
        try Pool.format(devices: devices(), raid: level)
        let pool = try Pool.open(devices: devices())
        var model = CrashModel()
        let maxSize = 2 << 20
        let disks = [try pool.createDisk(named: "a"), try pool.createDisk(named: "b")]
        for d in disks { model.disks[d] = .init(current: [], committed: [], parent: nil) }
        func write() throws {
            let id = model.disks.keys.sorted().randomElement(using: &rng)!
            let len = [700, 4096, 65536, 1 << 20][Int(rng.below(4))]
            let off = Int(rng.below(UInt64(maxSize - len)))
            let bytes = rng.bytes(len)
            let commits = pool.commitCount
            try pool.write(id, at: UInt64(off), bytes)
            if pool.commitCount != commits { model.commitAll() }
            model.write(id, off, bytes)
        }
        /// A rollback (x to t) or group snapshot, as the model sees it once its new snapshots
        /// (each with its directory, a disk of the group) are known.
        enum Operation { case rollback(DiskID, to: DiskID), group([DiskID]) }
        func applying(_ op: Operation, _ created: [(id: DiskID, parent: DiskID)], to model: CrashModel) -> CrashModel {
            var m = model
            for c in created { m.disks[c.id] = .init(current: model.disks[c.parent]!.current, committed: [], parent: c.parent) }
            if case .rollback(let x, let t) = op { m.disks[x]!.current = model.disks[t]!.current }
            m.commitAll()
            return m
        }
        /// Draws an operation and runs it; nil if it drew nothing to do. `attempted` is set
        /// just before the pool is called.
        var attempted: Operation?
        func operation() throws -> [(id: DiskID, parent: DiskID)]? {
            let live = model.disks.keys.sorted()
            if rng.chance(0.5) {
                let x = live.randomElement(using: &rng)!
                let family = pool.state.disks[x]!.family
                let chain = live.filter { $0 != x && pool.state.disks[$0]!.family === family }
                guard let t = chain.randomElement(using: &rng) else { return nil }
                let name = "r\(rng.below(1_000_000))"
                counts.rollbacks += 1
                attempted = .rollback(x, to: t)
                return [(try pool.rollback(x, to: t, beforeName: name).before, x)]
            }
            let group = Array(disks.shuffled(using: &rng).prefix(Int(rng.below(2)) + 1))
            counts.groups += 1
            attempted = .group(group)
            return try pool.createGroupSnapshot(of: group, named: "g\(rng.below(1_000_000))").map { ($0.value, $0.key) }
        }
        for _ in 0..<Int(rng.below(25)) + 1 {
            switch rng.below(10) {
            case 0..<6: try write()
            case 6: try pool.commit(); model.commitAll()
            case 7:
                let x = disks.randomElement(using: &rng)!
                let s = try pool.createSnapshot(of: x, named: "s\(rng.below(1_000_000))")
                model.disks[s] = .init(current: model.disks[x]!.current, committed: [], parent: x)
                model.commitAll()
            default:
                if let created = try operation() { model = applying(attempted!, created, to: model) }
            }
        }
        // The last operation, with the power cut at one of its syncs.
        let before = model
        attempted = nil
        plan.syncsLeft = Int(rng.below(12))
        var inDoubt = false, created: [(id: DiskID, parent: DiskID)]?
        do {
            created = try operation()
            if created == nil { try pool.commit() }
        } catch {
            guard (error as? LunError)?.errno == EIO else { throw error }
            inDoubt = true
        }
        set.crash(seed: rng.next())
        plan.syncsLeft = nil
        plan.dead = false
        let reopened = try Pool.open(devices: devices())
        defer { try? reopened.close() }
        let problems = try PoolChecker(pool: reopened, scrub: true).run().problems
        guard problems.isEmpty else { XCTFail("seed \(seed) \(level): check after the crash: \(problems)"); return nil }
        let ids = Set(reopened.disks().filter(\.hasImage).map(\.id))
        // The operation took effect exactly when its new snapshots are there, all of them:
        // a rollback's one, one per disk of a group.
        let new = ids.subtracting(before.disks.keys).sorted().map { (id: $0, parent: reopened.info($0)!.parent!) }
        var expectedCount = 0
        switch attempted {
        case .rollback?: expectedCount = 1
        case .group(let g)?: expectedCount = g.count
        case nil: break
        }
        let tookEffect = attempted != nil && !new.isEmpty
        guard ids.isSuperset(of: before.disks.keys), new.isEmpty || new.count == expectedCount,
              inDoubt || attempted == nil || tookEffect else {
            XCTFail("seed \(seed) \(level): disks after the crash \(ids.sorted()), before \(before.disks.keys.sorted()), \(attempted.map { "\($0)" } ?? "no operation"), in doubt \(inDoubt)")
            return nil
        }
        if let created { XCTAssertEqual(created.map(\.id).sorted(), new.map(\.id), "seed \(seed)") }
        var after = before
        if let op = attempted, tookEffect { after = applying(op, new, to: before) } else if !inDoubt { after.commitAll() }
        for id in ids.sorted() {
            let image = try reopened.image(id)
            // After: every byte as the operation left it (its commit covered every write).
            // Before: the last commit's bytes, and what was written since whole, torn or not.
            let problem = tookEffect
                ? (sameBytes(image, after.disks[id]!.current) ? nil : "differs from the state after the operation")
                : after.problem(id, actual: image, commitInDoubt: inDoubt)
            if let problem {
                XCTFail("seed \(seed) \(level): disk \(id) (\(tookEffect ? "after" : "before") the cut operation): \(problem)")
                return nil
            }
        }
        return tookEffect
    }

    // MARK: Threads

    /// 4 KiB blocks that say which write made them: the sequence number in every 8 bytes.
    static func stamp(_ seq: UInt64) -> [UInt8] {
        var block = [UInt8](repeating: 0, count: 4096)
        for i in stride(from: 0, to: 4096, by: 8) { withUnsafeBytes(of: seq.littleEndian) { block.replaceSubrange(i..<i + 8, with: $0) } }
        return block
    }

    /// The sequence number of a block, nil if it is not one whole stamp (or zeros: 0).
    static func sequence(of bytes: ArraySlice<UInt8>) -> UInt64? {
        let first = bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        var i = bytes.startIndex
        while i < bytes.endIndex { if bytes[i] != bytes[bytes.startIndex + (i - bytes.startIndex) % 8] { return nil }; i += 1 }
        return first
    }

    /// A writer alternating sequence numbers between disks a and b (a first) while another
    /// thread takes group snapshots of both: in every pair, a's number equals b's or is one
    /// ahead. Beside them a writer stamps blocks of disk c while a third thread snapshots c
    /// and rolls it back to earlier snapshots: right after a rollback every block of c reads
    /// as the target's or as a write that started after the rollback began, the target is
    /// unchanged, and no block is ever torn. A committer runs throughout.
    func testRollbacksAndGroupSnapshotsBesideWritersAndACommitter() throws {
        let drives = MemoryDrives(count: 6, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let failures = ThreadFailures()
        let a = try pool.createDisk(named: "a"), b = try pool.createDisk(named: "b"), c = try pool.createDisk(named: "c")
        let blocks = 128
        for d in [a, b, c] { try pool.resize(d, to: UInt64(blocks * 4096)) }
        let stop = AtomicFlag(false)
        let pairSeq = Atomic<UInt64>(0), cStarted = Atomic<UInt64>(0)
        var threads: [Thread] = []
        func spawn(_ name: String, _ body: @escaping @Sendable () throws -> Void) {
            let t = Thread {
                do { try body() } catch { failures.add("\(name): \(error)") }
            }
            threads.append(t)
        }
        spawn("committer") {
            while !stop.value.load(ordering: .acquiring) { try pool.commit(); usleep(3000) }
        }
        spawn("pair writer") {
            var rng = TestRandom(seed: 1)
            while !stop.value.load(ordering: .acquiring) {
                let n = pairSeq.load(ordering: .relaxed) + 1
                try pool.write(a, at: 0, Self.stamp(n))
                // Copy on write elsewhere in the chain too, so splits find work in flight.
                try pool.write(a, at: 4096 * UInt64(1 + rng.below(UInt64(blocks - 1))), rng.bytes(4096))
                try pool.write(b, at: 0, Self.stamp(n))
                pairSeq.store(n, ordering: .releasing)
            }
        }
        spawn("group snapshots") {
            var taken: [(DiskID, DiskID)] = []
            for i in 0..<24 {
                let snaps = try pool.createGroupSnapshot(of: i % 2 == 0 ? [a, b] : [b, a], named: "g\(i)")
                let sa = Self.sequence(of: try pool.readBytes(snaps[a]!, at: 0, count: 4096)[...])
                let sb = Self.sequence(of: try pool.readBytes(snaps[b]!, at: 0, count: 4096)[...])
                if let sa, let sb, sa == sb || sa == sb + 1 {} else { failures.add("group snapshot g\(i): a reads \(String(describing: sa)), b \(String(describing: sb))") }
                taken.append((snaps[a]!, snaps[b]!))
                if taken.count > 6 { let (x, y) = taken.removeFirst(); try pool.removeNode(x); try pool.removeNode(y) }
                usleep(2000)
            }
        }
        spawn("c writer") {
            var rng = TestRandom(seed: 2)
            while !stop.value.load(ordering: .acquiring) {
                let n = cStarted.add(1, ordering: .acquiringAndReleasing).newValue
                try pool.write(c, at: 4096 * rng.below(UInt64(blocks)), Self.stamp(n))
            }
        }
        spawn("rollbacks") {
            var rng = TestRandom(seed: 3)
            var snapshots: [(id: DiskID, image: [UInt8])] = []
            for i in 0..<24 {
                if snapshots.isEmpty || rng.chance(0.5) {
                    let s = try pool.createSnapshot(of: c, named: "s\(i)")
                    snapshots.append((s, try pool.image(s)))
                } else {
                    let target = snapshots.randomElement(using: &rng)!
                    let began = cStarted.load(ordering: .acquiring)
                    let kept = try pool.rollback(c, to: target.id).before
                    let now = try pool.image(c)
                    if !sameBytes(try pool.image(target.id), target.image) { failures.add("rollback \(i): the target changed") }
                    for k in 0..<blocks {
                        let got = now[k * 4096 ..< (k + 1) * 4096]
                        guard let seq = Self.sequence(of: got) else { failures.add("rollback \(i): block \(k) is torn"); continue }
                        if got.elementsEqual(target.image[k * 4096 ..< (k + 1) * 4096]) || seq >= began { continue }
                        failures.add("rollback \(i): block \(k) reads write \(seq), neither the target's nor one after \(began)")
                    }
                    for k in 0..<blocks where Self.sequence(of: try pool.readBytes(kept, at: UInt64(k * 4096), count: 4096)[...]) == nil {
                        failures.add("rollback \(i): block \(k) of the kept state is torn")
                    }
                    if snapshots.count > 5 { let old = snapshots.removeFirst(); try? pool.removeNode(old.id) }
                }
                usleep(2000)
            }
        }
        for t in threads { t.start() }
        // The snapshot threads end by themselves; then the writers and the committer stop.
        while !threads[2].isFinished || !threads[4].isFinished { usleep(5000) }
        stop.value.store(true, ordering: .releasing)
        while threads.contains(where: { !$0.isFinished }) { usleep(1000) }
        XCTAssertEqual(failures.messages, [])
        let images = try Dictionary(uniqueKeysWithValues: pool.disks().filter(\.hasImage).map { ($0.id, try pool.image($0.id)) })
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
        let reopened = try drives.open()
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        for (id, image) in images { assertSameBytes(try reopened.image(id), image, "disk \(id) after reopen") }
        try reopened.close()
    }
}
