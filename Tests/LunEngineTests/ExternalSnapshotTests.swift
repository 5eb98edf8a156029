// Snapshots on separate storage (VSS, seed 004) on simulated drives and simulated external
// files: the snapshot reads V's bytes of its instant plus its own writes while V is written,
// the background copy runs and a committer commits, before and after it is complete, after a
// reopen, and after power cuts that drop or tear unsynced writes on the pool's drives and on
// the external file and its validity map alike. LUNFS_VSS_SEED replays one crash point.
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

/// External files as simulated drives, by path, that outlive the pools opened on them; the
/// opener a pool uses, and the crash of all of them at once.
final class SimulatedExternalFiles: @unchecked Sendable {
    let files = Mutex<[String: SimulatedDrive]>([:])
    let cut: DeviceCallCut.Plan?
    init(cut: DeviceCallCut.Plan? = nil) { self.cut = cut }

    var opener: ExternalDeviceOpener {
        { [self] (path: String, create: UInt64?) throws(LunError) -> BlockDevice in
            let drive = try files.withLock { (f) throws(LunError) -> SimulatedDrive in
                if let bytes = create {
                    guard f[path] == nil else { throw LunError.exists(path) }
                    let sectors = (bytes + 511) / 512 * 512
                    f[path] = SimulatedDrive(name: path, sizeBytes: sectors, seed: UInt64(truncatingIfNeeded: path.hashValue))
                }
                guard let d = f[path] else { throw LunError.io("no file \(path)") }
                return d
            }
            if let cut { return DeviceCallCut(drive, cut) }
            return drive
        }
    }

    func crash(using random: inout SeededRandom, tearing: CrashTearing = .default) {
        files.withLock { f in
            for key in f.keys.sorted() { f[key] = f[key]!.crash(using: &random, tearing: tearing) }
        }
    }

    func contents(_ path: String, count: Int) -> [UInt8] {
        files.withLock { $0[path]!.contents(at: 0, count: count) }
    }
}

final class ExternalSnapshotTests: XCTestCase {
    /// The whole life of one VSS on one thread, checked at every step against byte models.
    func testReadsWritesCopyAndReopen() throws {
        for level in [RAIDLevel.raid1, .raid5, .raid0] {
            var rng = TestRandom(seed: 0x5EED_0004 &+ UInt64(level.rawValue))
            let drives = MemoryDrives(count: 6, sizeBytes: 128 << 20)
            try drives.format(raid: level)
            let files = SimulatedExternalFiles()
            var pool = try drives.open()
            pool.setExternalDeviceOpener(files.opener)
            let v = try pool.createDisk(named: "vm")
            let size = 3 << 20 + 12345
            var vModel = rng.bytes(size)
            vModel.replaceSubrange(1 << 20..<(2 << 20), with: [UInt8](repeating: 0, count: 1 << 20))  // a hole
            try pool.write(v, at: 0, vModel)
            let vss = try pool.createExternalSnapshot(of: v, named: "monday", file: "/ext/monday.img", blockBytes: 16384)
            var sModel = vModel
            XCTAssertEqual(pool.info(vss)?.parent, v)
            XCTAssertEqual(pool.kind(vss), .snapshot)
            XCTAssertEqual(pool.externalFile(of: vss), "/ext/monday.img")
            assertSameBytes(try pool.image(vss), sModel, "\(level): fresh VSS")
            XCTAssertEqual(pool.externalCopyProgress(vss)?.copied, 0)
            XCTAssertEqual(try pool.seek(vss, from: 5, data: true), 5)
            // Refusals that change nothing (the copy has not begun).
            XCTAssertThrowsError(try pool.write(vss, at: UInt64(size - 10), [UInt8](repeating: 1, count: 20)))
            XCTAssertThrowsError(try pool.resize(vss, to: 100))
            XCTAssertThrowsError(try pool.createSnapshot(of: vss, named: "x"))
            XCTAssertThrowsError(try pool.createExternalSnapshot(of: vss, named: "y", file: "/ext/y"))
            XCTAssertThrowsError(try pool.deleteImage(v)) { XCTAssertEqual(($0 as? LunError)?.errno, EBUSY) }
            XCTAssertThrowsError(try pool.removeNode(v)) { XCTAssertEqual(($0 as? LunError)?.errno, ENOTEMPTY) }
            XCTAssertThrowsError(try pool.createExternalSnapshot(of: v, named: "monday", file: "/ext/other")) { XCTAssertEqual(($0 as? LunError)?.errno, EEXIST) }
            XCTAssertThrowsError(try pool.createExternalSnapshot(of: v, named: "again", file: "/ext/monday.img")) { XCTAssertEqual(($0 as? LunError)?.errno, EEXIST) }
            assertSameBytes(try pool.image(vss), sModel, "\(level): VSS after the refusals")

            func writeV(_ off: Int, _ bytes: [UInt8]) throws {
                try pool.write(v, at: UInt64(off), bytes)
                vModel.replaceSubrange(off..<off + bytes.count, with: bytes)
            }
            func writeS(_ off: Int, _ bytes: [UInt8]) throws {
                try pool.write(vss, at: UInt64(off), bytes)
                sModel.replaceSubrange(off..<off + bytes.count, with: bytes)
            }
            for step in 0..<60 {
                let len = [1, 700, 4096, 16384, 50_000, 1 << 20][Int(rng.below(6))]
                let off = Int(rng.below(UInt64(size - len)))
                switch rng.below(10) {
                case 0..<4: try writeV(off, rng.bytes(len))
                case 4..<6: try writeS(off, rng.bytes(len))
                case 6:
                    try pool.discard(v, at: UInt64(off), length: UInt64(len))
                    vModel.replaceSubrange(off..<off + len, with: [UInt8](repeating: 0, count: len))
                case 7: try pool.copyExternalSnapshot(vss, blocks: Int(rng.below(5)) + 1)
                case 8:
                    try pool.discard(vss, at: UInt64(off), length: UInt64(len))
                    sModel.replaceSubrange(off..<off + len, with: [UInt8](repeating: 0, count: len))
                default:
                    try pool.close()
                    pool = try drives.open()
                    pool.setExternalDeviceOpener(files.opener)
                }
                assertSameBytes(try pool.image(v), vModel, "\(level) step \(step): V")
                assertSameBytes(try pool.image(vss), sModel, "\(level) step \(step): VSS")
            }
            // Shrinking V copies what it drops first.
            try pool.resize(v, to: UInt64(size / 2))
            vModel = Array(vModel[0..<size / 2])
            assertSameBytes(try pool.image(vss), sModel, "\(level): VSS after V shrank")
            // The copy finishes: the file alone is the snapshot, and says so.
            var progress = try pool.copyExternalSnapshot(vss, blocks: 7)
            while !progress.independent { progress = try pool.copyExternalSnapshot(vss, blocks: 7) }
            XCTAssertEqual(pool.kind(vss), .independent)
            XCTAssertEqual(progress.copied, progress.total)
            try writeV(0, rng.bytes(size / 2))
            try writeS(100, rng.bytes(5000))
            try pool.commit()
            assertSameBytes(try pool.image(vss), sModel, "\(level): independent VSS")
            assertSameBytes(files.contents("/ext/monday.img", count: size), sModel, "\(level): the file alone")
            try pool.close()
            pool = try drives.open()
            pool.setExternalDeviceOpener(files.opener)
            XCTAssertEqual(pool.kind(vss), .independent)
            assertSameBytes(try pool.image(vss), sModel, "\(level): independent VSS after reopen")
            // V can go now; the snapshot stays (its node keeps V's directory).
            try pool.deleteImage(v)
            assertSameBytes(try pool.image(vss), sModel, "\(level): VSS after V's image was deleted")
            try pool.removeNode(vss)
            XCTAssertNil(pool.info(vss))
            try pool.removeNode(v)
            try pool.close()
            _ = try drives.open()
        }
    }

    /// A snapshot whose file cannot be opened when V is written is recorded lost before V goes
    /// on: V is never held up by storage that is gone, and the snapshot answers EIO from then
    /// on (even once its file is back), never V's new bytes.
    /// A write of zeros over a whole segment skips the segment and then unmaps it under the
    /// chain's exclusive lock; a snapshot on separate storage can be taken in between (it may
    /// get the lock first). The unmapping must copy the old bytes to it first: here the second
    /// half runs right after the snapshot, as in that interleaving.
    func testZeroedSegmentFreedAfterASnapshotOnSeparateStorageIsCopiedFirst() throws {
        let drives = MemoryDrives(count: 6, sizeBytes: 128 << 20)
        try drives.format(raid: .raid1)
        let files = SimulatedExternalFiles()
        let pool = try drives.open()
        pool.setExternalDeviceOpener(files.opener)
        let v = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 0x2E50)
        let seg = pool.segmentBytes
        let before = rng.bytes(4 * seg)
        try pool.write(v, at: 0, before)
        let vss = try pool.createExternalSnapshot(of: v, named: "s", file: "/ext/s.img", blockBytes: 16384)
        // The zeros over segment 2 were "skipped" before the snapshot; now the unmapping.
        try pool.freeZeroedSegments(try pool.liveDisk(v), [(k: 2, whole: true)])
        var after = before
        after.replaceSubrange(2 * seg..<3 * seg, with: [UInt8](repeating: 0, count: seg))
        assertSameBytes(try pool.image(v), after, "the disk reads the zeros")
        assertSameBytes(try pool.image(vss), before, "the snapshot still reads the bytes of its instant")
        try pool.close()
    }

    func testSnapshotWhoseFileIsGoneIsLostNotWrong() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        let files = SimulatedExternalFiles()
        var pool = try drives.open()
        pool.setExternalDeviceOpener(files.opener)
        let v = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 16)
        let image = rng.bytes(1 << 20)
        try pool.write(v, at: 0, image)
        let vss = try pool.createExternalSnapshot(of: v, named: "s", file: "/ext/s.img")
        try pool.close()
        pool = try drives.open()
        pool.setExternalDeviceOpener { (path: String, _: UInt64?) throws(LunError) -> BlockDevice in throw LunError.io("\(path) is not mounted") }
        try pool.write(v, at: 4096, rng.bytes(4096))
        XCTAssertThrowsError(try pool.readBytes(vss, at: 0, count: 4096)) { XCTAssertEqual(($0 as? LunError)?.errno, EIO) }
        XCTAssertNil(pool.externalCopyProgress(vss))
        XCTAssertEqual(pool.copyingExternalSnapshots(), [])
        try pool.close()
        pool = try drives.open()
        pool.setExternalDeviceOpener(files.opener)
        XCTAssertThrowsError(try pool.readBytes(vss, at: 4096, count: 4096)) { XCTAssertEqual(($0 as? LunError)?.errno, EIO) }
        try pool.removeNode(vss)
        try pool.close()
    }

    /// The power cut at every device call of the snapshot's creation (file, map, commit): after
    /// the reopen the snapshot either does not exist or reads V's bytes of its instant, and its
    /// copy then completes to them; V is intact either way.
    func testPowerCutDuringCreationLeavesNoSnapshotOrItsInstant() throws {
        var outcomes = (absent: 0, present: 0)
        for limit in 0..<40 {
            var rng = SeededRandom(seed: 0xC0FFEE &+ UInt64(limit))
            var set = SimulatedDriveSet(count: 5, sizeBytes: 64 << 20, seed: rng.next())
            let cut = DeviceCallCut.Plan()
            let files = SimulatedExternalFiles(cut: cut)
            func devices() -> [BlockDevice] { set.drives.map { DeviceCallCut($0, cut) } }
            try Pool.format(devices: devices(), raid: .raid5)
            let pool = try Pool.open(devices: devices())
            pool.setExternalDeviceOpener(files.opener)
            let v = try pool.createDisk(named: "vm")
            let initial = rng.bytes(1 << 20)
            try pool.write(v, at: 0, initial)
            try pool.commit()
            cut.arm(limit: limit)
            let made = (try? pool.createExternalSnapshot(of: v, named: "s", file: "/ext/s.img", blockBytes: 16384)) != nil
            set.crash(seed: rng.next())
            files.crash(using: &rng)
            cut.arm(limit: nil)
            let reopened = try Pool.open(devices: devices())
            reopened.setExternalDeviceOpener(files.opener)
            assertSameBytes(try reopened.image(v), initial, "limit \(limit): V")
            if let s = reopened.child(named: "s", of: v) {
                outcomes.present += 1
                assertSameBytes(try reopened.image(s), initial, "limit \(limit): the snapshot after the cut")
                try reopened.write(v, at: 0, rng.bytes(1 << 20))
                var p = try reopened.copyExternalSnapshot(s, blocks: 8)
                while !p.independent { p = try reopened.copyExternalSnapshot(s, blocks: 8) }
                assertSameBytes(files.contents("/ext/s.img", count: 1 << 20), initial, "limit \(limit): the file after the copy")
            } else {
                outcomes.absent += 1
                XCTAssertFalse(made, "limit \(limit): a snapshot whose creation returned is gone")
            }
            try reopened.close()
        }
        print("ExternalSnapshotTests: power cut during creation: \(outcomes.absent) times no snapshot, \(outcomes.present) times the snapshot of its instant")
        XCTAssertGreaterThan(outcomes.absent, 0)
        XCTAssertGreaterThan(outcomes.present, 0)
    }

    /// One writer log per thread: the shape ThreadedCrashSimulationTests.verdict reads.
    typealias WriterLog = ThreadedCrashSimulationTests.WriterLog

    func testThreadedCrashPoints() throws {
        let env = ProcessInfo.processInfo.environment
        let replay = env["LUNFS_VSS_SEED"].flatMap(UInt64.init)
        let points = replay != nil ? 1 : env["LUNFS_VSS_CRASH_POINTS"].flatMap(Int.init) ?? 16
        let base = replay ?? UInt64(Date().timeIntervalSince1970)
        print("ExternalSnapshotTests base seed \(base), \(points) crash points")
        var stats = (cutDuringWork: 0, vWrites: 0, sWrites: 0, copySteps: 0, completed: 0, bytes: 0)
        for point in 0..<points {
            let seed = replay ?? base &+ UInt64(point) &* 0x9E37_79B9
            let failures = try runCrashPoint(seed: seed, stats: &stats)
            if !failures.isEmpty {
                for f in failures { XCTFail("seed \(seed): \(f)") }
                XCTFail("stopping at seed \(seed) (replay with LUNFS_VSS_SEED=\(seed); the interleaving may differ)")
                break
            }
        }
        print("ExternalSnapshotTests: \(points) points, \(stats.cutDuringWork) cut during the run, \(stats.vWrites) writes to V, "
              + "\(stats.sWrites) to the VSS, \(stats.copySteps) copy steps, \(stats.completed) copies completed before the cut, "
              + "\(stats.bytes) bytes verified after crashes")
    }

    private func runCrashPoint(seed: UInt64, stats: inout (cutDuringWork: Int, vWrites: Int, sWrites: Int, copySteps: Int, completed: Int, bytes: Int)) throws -> [String] {
        var rng = SeededRandom(seed: seed)
        let level = [RAIDLevel.raid1, .raid5, .raid0][Int(seed % 3)]
        var set = SimulatedDriveSet(count: 6, sizeBytes: 64 << 20, seed: rng.next())
        let cut = DeviceCallCut.Plan()
        let files = SimulatedExternalFiles(cut: cut)
        func devices() -> [BlockDevice] { set.drives.map { DeviceCallCut($0, cut) } }
        try Pool.format(devices: devices(), raid: level)
        let pool = try Pool.open(devices: devices())
        pool.setExternalDeviceOpener(files.opener)
        let size = 2 << 20
        let v = try pool.createDisk(named: "vm")
        let initial = rng.bytes(size)
        try pool.write(v, at: 0, initial)
        if rng.chance(0.5) { _ = try pool.createSnapshot(of: v, named: "inside") }
        let blockBytes = UInt32([4096, 16384, 65536][Int(rng.below(3))])
        let vss = try pool.createExternalSnapshot(of: v, named: "outside", file: "/ext/vss.img", blockBytes: blockBytes)
        let what = "\(level), blocks of \(blockBytes)"

        let clock = Atomic<Int>(0)
        let covered = Atomic<Int>(0)
        let failures = Mutex<[String]>([])
        @Sendable func stamp() -> Int { clock.add(1, ordering: .sequentiallyConsistent).newValue }
        @Sendable func commit() -> Bool {
            let start = stamp()
            do { try pool.commit() } catch {
                if !cut.isDead { failures.withLock { $0.append("commit failed with the power on: \(error)") } }
                return false
            }
            var seen = covered.load(ordering: .sequentiallyConsistent)
            while seen < start {
                let (done, now) = covered.compareExchange(expected: seen, desired: start, ordering: .sequentiallyConsistent)
                if done { break }
                seen = now
            }
            return true
        }
        // Thread 0 and 1 write V (each its own half, so each knows what its half holds),
        // thread 2 writes the VSS; each reads back what it knows and checks it.
        let limit = rng.chance(0.8) ? Int(rng.below(400)) + 5 : nil
        cut.arm(limit: limit)
        let seeds = (0..<3).map { _ in rng.next() }
        let logs = Mutex<[Int: WriterLog]>([:])
        let group = DispatchGroup()
        let copySteps = Atomic<Int>(0)
        for t in 0..<3 {
            group.enter()
            Thread {
                defer { group.leave() }
                var r = SeededRandom(seed: seeds[t])
                let disk = t < 2 ? v : vss
                let lo = t == 0 ? 0 : t == 1 ? size / 2 : 0, hi = t == 0 ? size / 2 : size
                var log = WriterLog(disk: disk, snapshot: nil, initial: initial)
                var image = initial
                for _ in 0..<30 {
                    let roll = r.below(100)
                    if roll < 10 { if !commit() && cut.isDead { break }; continue }
                    let len = [1, 700, 4096, 20_000, 65536, 300_000][Int(r.below(6))]
                    let off = lo + Int(r.below(UInt64(hi - lo - len)))
                    if roll < 35 {
                        do {
                            let got = try pool.readBytes(disk, at: UInt64(off), count: len)
                            if !sameBytes(got, Array(image[off..<off + len])) {
                                failures.withLock { $0.append("thread \(t): read at \(off), \(len) bytes, differs from what it holds") }
                            }
                        } catch {
                            if !cut.isDead { failures.withLock { $0.append("thread \(t): read failed with the power on: \(error)") } }
                            break
                        }
                        continue
                    }
                    let discard = t < 2 && roll < 45
                    let bytes = discard ? [UInt8](repeating: 0, count: len) : r.bytes(len)
                    var ok = true
                    do {
                        if discard { try pool.discard(disk, at: UInt64(off), length: UInt64(len)) } else { try pool.write(disk, at: UInt64(off), bytes) }
                    } catch {
                        ok = false
                        if !cut.isDead { failures.withLock { $0.append("thread \(t): write failed with the power on: \(error)") } }
                    }
                    log.writes.append((off, bytes, ok ? stamp() : nil))
                    if !ok { break }
                    image.replaceSubrange(off..<off + len, with: bytes)
                }
                logs.withLock { $0[t] = log }
            }.start()
        }
        let stop = Atomic<Bool>(false)
        let helpersDone = DispatchGroup()
        // The background copy, a few blocks at a time, and a committer.
        var copyRandom = rng.split()
        let budgets = (0..<1000).map { _ in Int(copyRandom.below(6)) + 1 }
        helpersDone.enter()
        Thread {
            defer { helpersDone.leave() }
            var i = 0
            while !stop.load(ordering: .acquiring) {
                do {
                    let p = try pool.copyExternalSnapshot(vss, blocks: budgets[i % budgets.count])
                    copySteps.add(1, ordering: .relaxed)
                    if p.independent { break }
                } catch {
                    if !cut.isDead { failures.withLock { $0.append("copy step failed with the power on: \(error)") } }
                    break
                }
                i += 1
                usleep(200)
            }
        }.start()
        helpersDone.enter()
        Thread {
            defer { helpersDone.leave() }
            while !stop.load(ordering: .acquiring) {
                if !commit() && cut.isDead { break }
                usleep(1500)
            }
        }.start()
        group.wait()
        stop.store(true, ordering: .releasing)
        helpersDone.wait()
        if cut.isDead { stats.cutDuringWork += 1 }
        stats.copySteps += copySteps.load(ordering: .relaxed)
        if pool.kind(vss) == .independent { stats.completed += 1 }

        // The power goes out: unsynced writes land, tear or vanish, on the drives and the files.
        set.crash(seed: rng.next())
        files.crash(using: &rng)
        cut.arm(limit: nil)
        var problems = failures.withLock { $0 }.map { "\(what): during the run: \($0)" }
        let reopened = try Pool.open(devices: devices())
        reopened.setExternalDeviceOpener(files.opener)
        let checked = try PoolChecker(pool: reopened, scrub: false).run().problems
        if !checked.isEmpty { problems.append("\(what): check after the crash: \(checked)") }
        let mark = covered.load(ordering: .sequentiallyConsistent)
        let all = logs.withLock { $0 }
        // V: both halves' writes in the order they returned (disjoint, so the order between
        // threads does not matter), failed ones last.
        var vLog = WriterLog(disk: v, snapshot: nil, initial: initial)
        vLog.writes = (all[0]!.writes + all[1]!.writes).sorted { ($0.stamp ?? .max) < ($1.stamp ?? .max) }
        stats.vWrites += vLog.writes.count
        stats.sWrites += all[2]!.writes.count
        let vImage = try reopened.image(v)
        if let p = ThreadedCrashSimulationTests.verdict(vLog, covered: mark, actual: vImage).problem { problems.append("\(what): V: \(p)") }
        // The VSS: V's bytes at its instant plus its own writes, never a later byte of V.
        let sImage = try reopened.image(vss)
        if let p = ThreadedCrashSimulationTests.verdict(all[2]!, covered: mark, actual: sImage).problem {
            let x = try reopened.externalObject(vss)
            let first = (0..<size).first { i in sImage[i] != initial[i] && !all[2]!.writes.contains { w in i >= w.offset && i < w.offset + w.bytes.count } } ?? 0
            problems.append("\(what): VSS: \(p) (first byte \(first): V holds \(vImage[first]), block \(first / Int(blockBytes)) valid \(x.validity.isValid(first / Int(blockBytes))), file holds \(files.contents("/ext/vss.img", count: size)[first]))")
        }
        stats.bytes += vImage.count + sImage.count
        // The copy resumes and finishes; V's writes after that leave the VSS alone, and the
        // file alone holds it.
        var progress = try reopened.copyExternalSnapshot(vss, blocks: 16)
        while !progress.independent { progress = try reopened.copyExternalSnapshot(vss, blocks: 16) }
        try reopened.write(v, at: 0, rng.bytes(size))
        if !sameBytes(try reopened.image(vss), sImage) { problems.append("\(what): the VSS changed when its copy resumed after the crash") }
        try reopened.commit()
        if !sameBytes(files.contents("/ext/vss.img", count: size), sImage) { problems.append("\(what): the completed file differs from the VSS") }
        try reopened.close()
        return problems
    }
}
