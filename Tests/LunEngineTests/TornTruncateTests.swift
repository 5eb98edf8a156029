// A truncate to a size inside a segment, cut short by a power loss after every possible number
// of device calls: the disk must come back either at its old size with its old bytes or at
// the new size with the old bytes up to it, and bytes past the new size must read zeros when
// it grows again. A snapshot taken before keeps all its bytes whatever happens.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class TornTruncateTests: XCTestCase {
    static let oldSize = 4 << 20

    struct Outcome { var calls = 0; var crashes = 0; var oldSeen = 0; var newSeen = 0 }

    func testShrinkToUnalignedSizesSurvivesACrashAfterEveryDeviceCall() throws {
        let seg = 1 << 20
        let cases: [(RAIDLevel, Int, Bool)] = [
            (.raid0, 1, false), (.raid5, 700_001, false), (.raid1, 2 * seg + 12_345, false),
            (.raid5, Self.oldSize - 1, false), (.raid0, seg + 512, true), (.raid5, 3 * seg + 99, true),
        ]
        var total = Outcome()
        for (index, (level, size, snapshot)) in cases.enumerated() {
            // How many device calls the shrink and its commit make when nothing stops them.
            let full = try run(level: level, newSize: size, snapshot: snapshot, cutAfter: nil,
                               tearing: .dropUnsynced, seed: UInt64(index))
            XCTAssertTrue(full.newSeen == 1, "\(level) shrink to \(size): a committed shrink must survive")
            for k in 0..<full.calls {
                // Every unsynced write landing, and in turn none or a seeded mix of fates.
                for (t, tearing) in [CrashTearing.keepUnsynced, k % 2 == 0 ? .dropUnsynced : .default].enumerated() {
                    let seed = UInt64(index * 1000 + k * 3 + t)
                    let o = try run(level: level, newSize: size, snapshot: snapshot, cutAfter: k, tearing: tearing, seed: seed)
                    total.crashes += 1
                    total.oldSeen += o.oldSeen
                    total.newSeen += o.newSeen
                }
            }
            total.calls += full.calls
        }
        print("TornTruncateTests: \(cases.count) shrinks of \(total.calls) device calls, \(total.crashes) crash points: old size seen \(total.oldSeen), new size \(total.newSeen)")
    }

    /// Writes a pattern, commits, shrinks to `newSize` and commits with the power cut after
    /// `cutAfter` device calls (nil: never), crashes, reopens and checks the disk.
    private func run(level: RAIDLevel, newSize: Int, snapshot: Bool, cutAfter: Int?,
                     tearing: CrashTearing, seed: UInt64) throws -> Outcome {
        let what = "\(level) shrink to \(newSize)\(snapshot ? " with a snapshot" : "") cut after \(cutAfter.map(String.init) ?? "-") calls, \(tearing), seed \(seed)"
        var set = SimulatedDriveSet(count: level == .raid5 ? 5 : 4, sizeBytes: 64 << 20, seed: seed)
        let cut = DeviceCallCut.Plan()
        func devices() -> [BlockDevice] { set.drives.map { DeviceCallCut($0, cut) } }
        try Pool.format(devices: devices(), raid: level)
        let pool = try Pool.open(devices: devices())
        let id = try pool.createDisk(named: "vm")
        var rng = SeededRandom(seed: seed &+ 77)
        let pattern = rng.bytes(Self.oldSize)
        try pool.write(id, at: 0, pattern)
        let snap = snapshot ? try pool.createSnapshot(of: id, named: "before") : nil
        try pool.commit()

        cut.arm(limit: cutAfter)
        var committed = false
        do {
            try pool.resize(id, to: UInt64(newSize))
            try pool.commit()
            committed = true
        } catch {}
        var outcome = Outcome(calls: cut.calls)
        set.crash(seed: seed, tearing: tearing)
        cut.arm(limit: nil)

        let reopened = try Pool.open(devices: devices())
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [], what)
        if let snap { assertSameBytes(try reopened.image(snap), pattern, "\(what): the snapshot") }
        let image = try reopened.image(id)
        if image.count == Self.oldSize && !committed {
            assertSameBytes(image, pattern, "\(what): old size")
            outcome.oldSeen = 1
        } else if image.count == newSize {
            assertSameBytes(image, Array(pattern[0..<newSize]), "\(what): new size")
            try reopened.resize(id, to: UInt64(Self.oldSize))
            let grown = try reopened.readBytes(id, at: UInt64(newSize), count: Self.oldSize - newSize)
            assertSameBytes(grown, [UInt8](repeating: 0, count: Self.oldSize - newSize), "\(what): grown again past the new size")
            outcome.newSeen = 1
        } else {
            XCTFail("\(what): size \(image.count) after the crash\(committed ? ", though the shrink committed" : "")")
        }
        try reopened.close()
        return outcome
    }
}
