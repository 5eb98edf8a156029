// Copy on first write in blocks (docs/DESIGN.md section 8, "Partial segments"), rule by rule:
// the first small write after a snapshot writes only the unit it touches; a write in place to
// the source completes its partial segments first; a source whose holder goes away stays as
// an orphan until the fill, then is freed; a stale drive's rebuild and the scrub skip the
// blocks a partial segment does not hold. Every step checks the images and the checker.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class PartialSegmentTests: XCTestCase {
    private let segment = 1 << 20

    private func assertClean(_ pool: Pool, _ context: String) throws {
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [], context)
    }

    func testFirstSmallWriteAfterSnapshotWritesOnlyItsUnit() throws {
        for level in [RAIDLevel.raid0, .raid1, .raid5] {
            var rng = TestRandom(seed: 11)
            let drives = MemoryDrives(count: 6, sizeBytes: 128 << 20)
            try drives.format(raid: level)
            let pool = try drives.open()
            let vm = try pool.createDisk(named: "vm")
            var live = rng.bytes(3 * segment)
            try pool.write(vm, at: 0, live)
            let snap = try pool.createSnapshot(of: vm, named: "snap")
            let before = live
            let bytes = rng.bytes(4096)
            try pool.write(vm, at: UInt64(segment + 8192), bytes)
            live.replaceSubrange(segment + 8192..<segment + 12288, with: bytes)
            let progress = pool.partialSegmentProgress
            XCTAssertEqual(progress.segments, 1, "\(level)")
            // RAID 0 and 1 write the block; RAID 5 its stripe row (4 blocks, one per column).
            XCTAssertEqual(progress.bytesLeft, UInt64(segment - (level == .raid5 ? 4 * 4096 : 4096)), "\(level)")
            assertSameBytes(try pool.image(vm), live, "\(level): live")
            assertSameBytes(try pool.image(snap), before, "\(level): snapshot")
            // A second write into another unit of the same segment sets more bits.
            let more = rng.bytes(700)
            try pool.write(vm, at: UInt64(segment + 300_000), more)
            live.replaceSubrange(segment + 300_000..<segment + 300_700, with: more)
            XCTAssertLessThan(pool.partialSegmentProgress.bytesLeft, progress.bytesLeft, "\(level)")
            try assertClean(pool, "\(level): partial")
            try pool.close()
            let reopened = try drives.open()
            XCTAssertEqual(reopened.partialSegmentProgress.segments, 1, "\(level): the record survives a reopen")
            assertSameBytes(try reopened.image(vm), live, "\(level): live after reopen")
            XCTAssertEqual(try reopened.fillPartialSegments(), 1)
            XCTAssertEqual(reopened.partialSegmentProgress.segments, 0)
            assertSameBytes(try reopened.image(vm), live, "\(level): live after the fill")
            assertSameBytes(try reopened.image(snap), before, "\(level): snapshot after the fill")
            try assertClean(reopened, "\(level): filled")
            try reopened.close()
        }
    }

    func testWriteInPlaceToSourceCompletesItsPartialSegmentsFirst() throws {
        var rng = TestRandom(seed: 12)
        let drives = MemoryDrives(count: 6, sizeBytes: 128 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        var live = rng.bytes(2 * segment)
        try pool.write(vm, at: 0, live)
        let snap = try pool.createSnapshot(of: vm, named: "snap")
        var old = live
        let a = rng.bytes(4096)
        try pool.write(vm, at: 4096, a)
        live.replaceSubrange(4096..<8192, with: a)
        try pool.commit()
        XCTAssertEqual(pool.partialSegmentProgress.segments, 1)
        // The snapshot now holds the old segment alone: its write goes in place, so the live
        // disk's partial segment, which reads the other blocks from it, is completed first.
        let commits = pool.commitCount
        let b = rng.bytes(8192)
        try pool.write(snap, at: 100_000, b)
        old.replaceSubrange(100_000..<108_192, with: b)
        XCTAssertEqual(pool.partialSegmentProgress.segments, 0, "filled before the source changed")
        XCTAssertGreaterThan(pool.commitCount, commits, "the drop was committed before the write in place")
        assertSameBytes(try pool.image(vm), live, "live")
        assertSameBytes(try pool.image(snap), old, "snapshot")
        try assertClean(pool, "after")
        try pool.close()
    }

    func testSourceOfDeletedSnapshotStaysUntilTheFill() throws {
        var rng = TestRandom(seed: 13)
        let drives = MemoryDrives(count: 4, sizeBytes: 128 << 20)
        try drives.format(raid: .raid1)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        var live = rng.bytes(segment)
        try pool.write(vm, at: 0, live)
        let snap = try pool.createSnapshot(of: vm, named: "snap")
        let a = rng.bytes(4096)
        try pool.write(vm, at: 0, a)
        live.replaceSubrange(0..<4096, with: a)
        let used = pool.state.usedRSEGs
        try pool.removeNode(snap)
        // The snapshot held the old segment: it stays allocated, an orphan, for the live disk.
        XCTAssertEqual(pool.state.partials.orphans.count, 1)
        XCTAssertEqual(pool.state.usedRSEGs, used)
        assertSameBytes(try pool.image(vm), live, "live, source orphaned")
        try assertClean(pool, "orphan")
        try pool.close()
        let reopened = try drives.open()
        XCTAssertEqual(reopened.state.partials.orphans.count, 1, "the orphan is found again at open")
        assertSameBytes(try reopened.image(vm), live, "live after reopen")
        try assertClean(reopened, "orphan after reopen")
        try reopened.fillPartialSegments()
        try reopened.commit()
        XCTAssertTrue(reopened.state.partials.orphans.isEmpty)
        XCTAssertEqual(reopened.state.usedRSEGs, used - 1, "the orphan is freed after the fill's commit")
        assertSameBytes(try reopened.image(vm), live, "live after the fill")
        try assertClean(reopened, "freed")
        try reopened.close()
    }

    func testStaleDriveRebuildSkipsBlocksAPartialSegmentDoesNotHold() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            var rng = TestRandom(seed: 14)
            let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
            try drives.format(raid: level)
            var pool = try drives.open()
            let vm = try pool.createDisk(named: "vm")
            var live = rng.bytes(2 * segment)
            try pool.write(vm, at: 0, live)
            _ = try pool.createSnapshot(of: vm, named: "snap")
            try pool.close()
            // Drive 4 misses the writes that make the partial segments, then comes back stale.
            pool = try drives.open(missing: [4])
            for k in 0..<2 {
                let bytes = rng.bytes(4096)
                try pool.write(vm, at: UInt64(k * segment + 4096 * (k + 3)), bytes)
                live.replaceSubrange(k * segment + 4096 * (k + 3)..<k * segment + 4096 * (k + 4), with: bytes)
            }
            XCTAssertEqual(pool.partialSegmentProgress.segments, 2, "\(level)")
            try pool.close()
            pool = try drives.open()
            XCTAssertEqual(pool.staleDriveIndexes, [], "\(level): the stale drive was rebuilt whole")
            assertSameBytes(try pool.image(vm), live, "\(level): after the rebuild")
            try assertClean(pool, "\(level): after the rebuild")
            try pool.fillPartialSegments()
            assertSameBytes(try pool.image(vm), live, "\(level): after the fill")
            try assertClean(pool, "\(level): after the fill")
            try pool.close()
        }
    }
}
