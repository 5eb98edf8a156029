// Model-based randomized test of snapclones on one busy chain: a snapclone copies one segment
// at a time while its successor, its predecessor, itself and new snapshots are written,
// resized, discarded, deleted and reopened, and it is turned back into a snapshot now and
// then. Every image is compared with a byte-array model after every step and the checker runs
// on the maps (shadows included). Seeded; LUNFS_SEED replays.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class SnapcloneModelTests: XCTestCase {
    func testSnapcloneCopyUnderChainActivityMatchesModel() throws {
        for variant in SnapcloneVariant.allCases {
            for level in [RAIDLevel.raid1, .raid5] {
                let fallback = UInt64(Date().timeIntervalSince1970) ^ (UInt64(level.rawValue) << 32)
                let seed = ProcessInfo.processInfo.environment["LUNFS_SEED"].flatMap(UInt64.init) ?? fallback
                print("SnapcloneModelTests seed \(seed) level \(level) variant \(variant.rawValue)")
                try run(seed: seed, level: level, variant: variant, steps: 300)
            }
        }
    }

    private func run(seed: UInt64, level: RAIDLevel, variant: SnapcloneVariant, steps: Int) throws {
        var rng = TestRandom(seed: seed)
        let drives = MemoryDrives(count: 6, sizeBytes: 256 << 20)
        try drives.format(raid: level)
        var pool = try drives.open()
        pool.snapcloneVariant = variant
        let seg = Int(pool.geometry.rsegSizeBytes)
        let size = 12 * seg
        var model: [DiskID: [UInt8]] = [:]
        var counter = 0
        var stats = (copies: 0, independent: 0, reverts: 0, shadowsSeen: 0, clonesMade: 0, leftToSecondPass: 0, partialsSeen: 0)
        let base = try pool.createDisk(named: "vm")
        try pool.write(base, at: 0, rng.bytes(size))
        model[base] = try pool.image(base)

        /// Segments of the copying snapclone that only it keeps for its predecessor.
        func secondPassWork() -> Int {
            guard let c = pool.copyingSnapclones().first, let d = pool.state.disks[c] else { return 0 }
            var n = 0
            d.map.forEachMapped { k, _ in if SharingChain.predecessorNeedsCopy(d, k) { n += 1 } }
            return n
        }
        func chainDisks() -> [DiskID] { model.keys.filter { pool.info($0)?.hasImage == true }.sorted() }
        func write(_ id: DiskID) throws {
            let len = [512, 4096, seg / 2, seg, 2 * seg + 7][Int(rng.below(5))]
            let off = Int(rng.below(UInt64(size - len)))
            let bytes = rng.bytes(len)
            try pool.write(id, at: UInt64(off), bytes)
            var img = model[id]!
            if img.count < off + len { img += [UInt8](repeating: 0, count: off + len - img.count) }
            img.replaceSubrange(off..<off + len, with: bytes)
            model[id] = img
        }

        for step in 0..<steps {
            let context = "seed \(seed) step \(step) level \(level) variant \(variant.rawValue)"
            let disks = chainDisks()
            let clones = pool.copyingSnapclones()
            pool.quiescedCopySegments = rng.chance(0.8) ? 0 : Int(rng.below(3))
            if pool.partialSegmentProgress.segments > 0 {
                stats.partialsSeen += 1
                // The background fill of partial segments, between any two steps.
                if rng.chance(0.2) { _ = try pool.fillPartialSegments(limit: Int(rng.below(3)) + 1) }
            }
            let roll = rng.below(100)
            switch roll {
            case 0..<30:
                // The copy goes on, one or two segments at a time.
                guard let c = clones.first else { try write(disks.randomElement(using: &rng)!); continue }
                let progress = try pool.copySnapclone(c, segments: Int(rng.below(2)) + 1)
                stats.copies += 1
                if progress.independent {
                    stats.independent += 1
                    XCTAssertEqual(pool.kind(c), .independent, context)
                }
            case 30..<38:
                // A snapshot (not the newest disk) becomes a snapclone.
                let candidates = disks.filter { pool.info($0)?.successor != nil && pool.kind($0) == .snapshot }
                guard clones.isEmpty, let x = candidates.randomElement(using: &rng) else { try write(disks.randomElement(using: &rng)!); continue }
                try pool.makeSnapclone(x)
                stats.clonesMade += 1
            case 38..<70:
                // Writes around the clone: its successor, its predecessor, itself, anyone.
                var targets = disks
                if let c = clones.first, let info = pool.info(c) {
                    targets += [c, c] + [info.successor, info.predecessor].compactMap { $0 }.flatMap { [$0, $0] }
                }
                guard let id = targets.randomElement(using: &rng), model[id] != nil else { continue }
                let before = secondPassWork()
                try write(id)
                // The first variant's point: a write leaves the second pass nothing new.
                if variant == .thirdCopy { XCTAssertLessThanOrEqual(secondPassWork(), before, "\(context): write to \(id)") }
                if secondPassWork() > before { stats.leftToSecondPass += 1 }
            case 70..<80:
                // A snapshot of any disk but a copying snapclone (refused: checked).
                guard disks.count < 10, let id = disks.randomElement(using: &rng) else { continue }
                counter += 1
                if pool.kind(id) == .snapclone {
                    XCTAssertThrowsError(try pool.createSnapshot(of: id, named: "s\(counter)"), context)
                } else {
                    let s = try pool.createSnapshot(of: id, named: "s\(counter)")
                    model[s] = model[id]!
                }
            case 80..<84:
                guard let c = clones.first else { continue }
                try pool.revertSnapclone(c)
                stats.reverts += 1
                XCTAssertEqual(pool.kind(c), .snapshot, context)
            case 84..<88:
                guard let id = disks.randomElement(using: &rng) else { continue }
                let newSize = Int(rng.below(UInt64(size)))
                try pool.resize(id, to: UInt64(newSize))
                var img = model[id]!
                if newSize < img.count { img.removeSubrange(newSize...) } else { img += [UInt8](repeating: 0, count: newSize - img.count) }
                model[id] = img
            case 88..<91:
                guard let id = disks.randomElement(using: &rng), let n = model[id]?.count, n > 0 else { continue }
                let off = Int(rng.below(UInt64(n))), len = Int(rng.below(UInt64(3 * seg))) + 1
                try pool.discard(id, at: UInt64(off), length: UInt64(len))
                let end = min(n, off + len)
                model[id]!.replaceSubrange(off..<end, with: [UInt8](repeating: 0, count: end - off))
            case 91..<95:
                // Delete a disk with nothing below it: often the clone's neighbour.
                let leaves = disks.filter { id in id != base && !model.keys.contains { pool.info($0)?.parent == id } }
                guard let id = leaves.randomElement(using: &rng) else { continue }
                try pool.removeNode(id)
                model[id] = nil
            default:
                try pool.close()
                pool = try drives.open()
                pool.snapcloneVariant = variant
            }
            if let c = pool.copyingSnapclones().first, let d = pool.state.disks[c], let s = d.successor {
                var shadows = 0
                d.map.forEachMapped { k, _ in if SharingChain.isShadow(s, k) { shadows += 1 } }
                if shadows > 0 { stats.shadowsSeen += 1 }
            }
            for (id, expected) in model {
                let image = try pool.image(id)
                if !sameBytes(image, expected) { return assertSameBytes(image, expected, "\(context): disk \(id) (\(pool.kind(id).map { "\($0)" } ?? "?"))") }
            }
            let problems = try PoolChecker(pool: pool).run().problems
            if !problems.isEmpty { return XCTFail("\(context): \(problems)") }
        }
        try pool.close()
        pool = try drives.open()
        for (id, expected) in model { assertSameBytes(try pool.image(id), expected, "seed \(seed) after reopen: disk \(id)") }
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        print("SnapcloneModelTests seed \(seed) level \(level): \(steps) steps, \(stats.clonesMade) snapclones made, "
              + "\(stats.copies) copy steps, \(stats.independent) became independent, \(stats.reverts) reverted, "
              + "shadows present after \(stats.shadowsSeen) steps, \(stats.leftToSecondPass) writes left the second pass work, "
              + "partial segments present after \(stats.partialsSeen) steps")
        XCTAssertGreaterThan(stats.partialsSeen, 0, "the test reaches partial segments")
        XCTAssertGreaterThan(stats.shadowsSeen, 0, "the test reaches the shadow states it is for")
        try pool.close()
    }
}
