// Power loss while drives join and leave: a seeded workload writes and commits, then adds
// drives, marks one for removal and forgets it, with the power cut at a chosen sync of those
// steps. The reopened pool (given every drive the list might name, as after a crash between
// a drive's identity and its commit) must count a drive whose add returned, ignore one whose
// add never committed, pass `check`, and hold every committed byte. LUNFS_DRIVE_CRASH_POINTS
// sets how many points run (default 30); LUNFS_SEED replays one.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class DriveMembershipCrashTests: XCTestCase {
    func testCrashWhileDrivesAreAddedAndRemoved() throws {
        let env = ProcessInfo.processInfo.environment
        let points = env["LUNFS_DRIVE_CRASH_POINTS"].flatMap(Int.init) ?? 30
        let base = env["LUNFS_SEED"].flatMap(UInt64.init) ?? UInt64(Date().timeIntervalSince1970)
        print("DriveMembershipCrashTests base seed \(base), \(points) crash points")
        var cut = 0
        for point in 0..<points {
            let seed = base &+ UInt64(point) &* 0x9E37_79B9
            do {
                if try runCrashPoint(seed: seed) { cut += 1 }
            } catch {
                XCTFail("seed \(seed): \(error) (replay with LUNFS_SEED=\(seed) LUNFS_DRIVE_CRASH_POINTS=1)")
                break
            }
        }
        print("DriveMembershipCrashTests: \(points) points, \(cut) with a drive step cut by the power loss")
    }

    /// Returns whether a drive step was cut.
    func runCrashPoint(seed: UInt64) throws -> Bool {
        var rng = TestRandom(seed: seed)
        let level = [RAIDLevel.raid0, .raid1, .raid5][Int.random(in: 0..<3, using: &rng)]
        var set = SimulatedDriveSet(count: 8, sizeBytes: 48 << 20, seed: seed)
        let plan = PowerCut.Plan()
        func devices(_ n: Int) -> [BlockDevice] { set.drives.prefix(n).map { PowerCut($0, plan) } }
        try Pool.format(devices: devices(5), raid: level)
        let pool = try Pool.open(devices: devices(5))
        var model = CrashModel()
        let disk = try pool.createDisk(named: "d")
        model.disks[disk] = .init(current: [], committed: [], parent: nil)
        func write() throws {
            let len = [4096, 65536, 1 << 20][Int.random(in: 0..<3, using: &rng)]
            let off = Int.random(in: 0..<((4 << 20) - len), using: &rng)
            let bytes = rng.bytes(len)
            let commitsBefore = pool.commitCount
            try pool.write(disk, at: UInt64(off), bytes)
            if pool.commitCount != commitsBefore { model.commitAll() }
            model.write(disk, off, bytes)
        }
        for _ in 0..<Int.random(in: 1...6, using: &rng) { try write() }
        try pool.commit()
        model.commitAll()
        // The power goes out at one of the next syncs (or not at all).
        plan.syncsLeft = Bool.random(using: &rng) ? Int.random(in: 0..<40, using: &rng) : nil
        var added: [Int] = []
        var offered = 5
        var forgotten: Set<Int> = []
        var inDoubt = false
        do {
            for step in 0..<3 {
                offered += 1
                added.append(try pool.addDrive(device: devices(offered)[offered - 1]))
                model.commitAll()
                if step == 0 {
                    try pool.beginRemoval(added[0])
                    model.commitAll()
                }
                for _ in 0..<Int.random(in: 0...3, using: &rng) { try write() }
                try pool.commit()
                model.commitAll()
            }
            try pool.forgetDrive(added[0])
            forgotten.insert(added[0])
            model.commitAll()
            // Drive 3 holds data: a few leveling moves empty it, cut anywhere by the power.
            if try pool.removeDrive(3) { forgotten.insert(3) }
            model.commitAll()
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                guard try pool.levelingStep() != nil else { break }
                model.commitAll()
            }
            if !pool.driveListing().contains(where: { $0.index == 3 }) { forgotten.insert(3) }
            try write()
            try pool.commit()
            model.commitAll()
        } catch {
            inDoubt = true
        }
        set.crash(seed: rng.next())
        plan.syncsLeft = nil
        plan.dead = false
        let reopened = try Pool.open(devices: devices(offered), sizes: [UInt64](repeating: 48 << 20, count: offered))
        let members = Set(reopened.driveListing().map(\.index))
        for d in added where !forgotten.contains(d) {
            XCTAssertTrue(members.contains(d) || (added[0] == d && inDoubt), "seed \(seed): drive \(d) was added but is not a member")
        }
        for d in forgotten { XCTAssertFalse(members.contains(d), "seed \(seed): drive \(d) was removed but is a member") }
        // Drive 3 may be gone if its removal was cut after its commit.
        let kept = Set(0..<5).subtracting(forgotten).subtracting(inDoubt ? [3] : [])
        XCTAssertTrue(members.isSuperset(of: kept), "seed \(seed): members \(members.sorted())")
        XCTAssertEqual(reopened.usage().missingDrives, 0, "seed \(seed)")
        let report = try PoolChecker(pool: reopened, scrub: true).run()
        XCTAssertEqual(report.problems, [], "seed \(seed) \(level)")
        if let p = model.problem(disk, actual: try reopened.image(disk), commitInDoubt: inDoubt) {
            XCTFail("seed \(seed) \(level): \(p)")
        }
        // The pool goes on: a write lands, and a drive still being emptied can be forgotten.
        try reopened.write(disk, at: 0, [7, 7, 7])
        for d in reopened.drainingDriveIndexes where reopened.usedSegments(onDrive: d) == 0 { try reopened.forgetDrive(d) }
        try reopened.close()
        let again = try Pool.open(devices: devices(offered), sizes: [UInt64](repeating: 48 << 20, count: offered))
        XCTAssertEqual(try again.readBytes(disk, at: 0, count: 3), [7, 7, 7], "seed \(seed)")
        XCTAssertEqual(try PoolChecker(pool: again).run().problems, [], "seed \(seed)")
        try again.close()
        return inDoubt
    }
}
