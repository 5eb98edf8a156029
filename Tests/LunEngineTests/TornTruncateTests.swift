// A truncate to a size inside a segment, cut short by a power loss after every possible number
// of device calls: the disk must come back either at its old size with its old bytes or at
// the new size with the old bytes up to it, and bytes past the new size must read zeros when
// it grows again. The other disks of its chain keep all their bytes whatever happens. The
// shapes cover every plan of the tail segment: held alone (replaced), held and read by a
// snapshot (handed off), and read from the successor by a snapshot in the middle of a chain
// (copied for both).
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class TornTruncateTests: XCTestCase {
    static let oldSize = 4 << 20

    struct Outcome { var calls = 0; var crashes = 0; var oldSeen = 0; var newSeen = 0 }

    enum Shape: CustomStringConvertible {
        /// The disk alone.
        case alone
        /// The disk, with a snapshot taken before the shrink.
        case withSnapshot
        /// The newer of two snapshots of a disk, which sits between the other two.
        case middleOfChain

        var description: String {
            switch self {
            case .alone: return "a disk alone"
            case .withSnapshot: return "a disk with a snapshot"
            case .middleOfChain: return "a snapshot in the middle of a chain"
            }
        }
    }

    func testShrinkToUnalignedSizesSurvivesACrashAfterEveryDeviceCall() throws {
        let seg = 1 << 20
        let cases: [(RAIDLevel, Int, Shape)] = [
            (.raid0, 1, .alone), (.raid5, 700_001, .alone), (.raid1, 2 * seg + 12_345, .alone),
            (.raid5, Self.oldSize - 1, .alone), (.raid0, seg + 512, .withSnapshot), (.raid5, 3 * seg + 99, .withSnapshot),
            (.raid1, seg + 4097, .middleOfChain), (.raid5, 100_000, .middleOfChain),
        ]
        var total = Outcome()
        for (index, (level, size, shape)) in cases.enumerated() {
            let start = try Start(level: level, shape: shape, seed: UInt64(index))
            // How many device calls the shrink and its commit make when nothing stops them.
            let full = try run(start, newSize: size, cutAfter: nil, tearing: .dropUnsynced, seed: UInt64(index))
            XCTAssertTrue(full.newSeen == 1, "\(level) shrink of \(shape) to \(size): a committed shrink must survive")
            for k in 0..<full.calls {
                // Every unsynced write landing, and in turn none or a seeded mix of fates.
                for (t, tearing) in [CrashTearing.keepUnsynced, k % 2 == 0 ? .dropUnsynced : .default].enumerated() {
                    let seed = UInt64(index * 1000 + k * 3 + t)
                    let o = try run(start, newSize: size, cutAfter: k, tearing: tearing, seed: seed)
                    total.crashes += 1
                    total.oldSeen += o.oldSeen
                    total.newSeen += o.newSeen
                }
            }
            total.calls += full.calls
        }
        print("TornTruncateTests: \(cases.count) shrinks of \(total.calls) device calls, \(total.crashes) crash points: old size seen \(total.oldSeen), new size \(total.newSeen)")
    }

    /// The synced state every crash point of a case starts from: a pool, closed cleanly,
    /// holding the pattern on every disk of the shape's chain.
    struct Start {
        let level: RAIDLevel
        let shape: Shape
        let drives: SimulatedDriveSet
        let pattern: [UInt8]
        /// The disk to shrink, and the disks that must keep the whole pattern.
        let id: DiskID
        let kept: [DiskID]

        init(level: RAIDLevel, shape: Shape, seed: UInt64) throws {
            var set = SimulatedDriveSet(count: level == .raid5 ? 5 : 4, sizeBytes: 64 << 20, seed: seed)
            try Pool.format(devices: set.devices, raid: level)
            let pool = try Pool.open(devices: set.devices)
            let vm = try pool.createDisk(named: "vm")
            var rng = SeededRandom(seed: seed &+ 77)
            pattern = rng.bytes(TornTruncateTests.oldSize)
            try pool.write(vm, at: 0, pattern)
            var id = vm
            var kept: [DiskID] = []
            switch shape {
            case .alone:
                break
            case .withSnapshot:
                kept = [try pool.createSnapshot(of: vm, named: "before")]
            case .middleOfChain:
                let older = try pool.createSnapshot(of: vm, named: "older")
                id = try pool.createSnapshot(of: vm, named: "newer")
                kept = [older, vm]
            }
            try pool.close()
            // A clean close synced everything: a crash keeps it all, and nothing else.
            set.crash(seed: seed, tearing: .dropUnsynced)
            self.level = level
            self.shape = shape
            self.drives = set
            self.id = id
            self.kept = kept
        }
    }

    /// Opens a copy of `start`, shrinks its disk to `newSize` and commits with the power cut
    /// after `cutAfter` device calls (nil: never), crashes, reopens and checks the disks.
    private func run(_ start: Start, newSize: Int, cutAfter: Int?, tearing: CrashTearing, seed: UInt64) throws -> Outcome {
        let what = "\(start.level) shrink of \(start.shape) to \(newSize) cut after \(cutAfter.map(String.init) ?? "-") calls, \(tearing), seed \(seed)"
        var set = start.drives.durableCopies(seed: seed)
        let cut = DeviceCallCut.Plan()
        func devices() -> [BlockDevice] { set.drives.map { DeviceCallCut($0, cut) } }
        let pool = try Pool.open(devices: devices())
        let id = start.id, pattern = start.pattern

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
        for other in start.kept { assertSameBytes(try reopened.image(other), pattern, "\(what): disk \(other), not shrunk") }
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
