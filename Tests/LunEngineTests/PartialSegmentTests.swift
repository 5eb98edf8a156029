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

    /// Every disk reads its model's bytes, and the checker (with a scrub) finds nothing.
    private func assertImages(_ pool: Pool, _ expected: [DiskID: [UInt8]], _ context: String) throws {
        for (id, image) in expected.sorted(by: { $0.key < $1.key }) {
            assertSameBytes(try pool.image(id), image, "\(context): disk \(id)")
        }
        try assertClean(pool, context)
    }

    /// Writes `count` random bytes at `offset` of disk `id` and into its model `image`.
    private func writeRandom(_ pool: Pool, _ id: DiskID, at offset: Int, count: Int, _ image: inout [UInt8],
                             _ rng: inout TestRandom) throws {
        let bytes = rng.bytes(count)
        try pool.write(id, at: UInt64(offset), bytes)
        image.replaceSubrange(offset..<offset + count, with: bytes)
    }

    /// A pool of `count` drives with disk "vm" written with `segments` random segments, and
    /// its snapshot "snap" taken after that.
    private func poolWithSnapshot(_ level: RAIDLevel, drives count: Int, segments: Int, _ rng: inout TestRandom)
        throws -> (drives: MemoryDrives, pool: Pool, vm: DiskID, snap: DiskID, image: [UInt8]) {
        let drives = MemoryDrives(count: count, sizeBytes: 128 << 20)
        try drives.format(raid: level)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        let image = rng.bytes(segments * segment)
        try pool.write(vm, at: 0, image)
        return (drives, pool, vm, try pool.createSnapshot(of: vm, named: "snap"), image)
    }

    func testFirstSmallWriteAfterSnapshotWritesOnlyItsUnit() throws {
        for level in [RAIDLevel.raid0, .raid1, .raid5] {
            var rng = TestRandom(seed: 11)
            let (drives, pool, vm, snap, before) = try poolWithSnapshot(level, drives: 6, segments: 3, &rng)
            var live = before
            try writeRandom(pool, vm, at: segment + 8192, count: 4096, &live, &rng)
            let progress = pool.partialSegmentProgress
            XCTAssertEqual(progress.segments, 1, "\(level)")
            // RAID 0 and 1 write the block; RAID 5 its group of 16 stripe rows (64 KiB of each column).
            XCTAssertEqual(progress.bytesLeft, UInt64(segment - (level == .raid5 ? 4 * Pool.raid5RowsPerUnit * 4096 : 4096)), "\(level)")
            assertSameBytes(try pool.image(vm), live, "\(level): live")
            assertSameBytes(try pool.image(snap), before, "\(level): snapshot")
            // A second write into another unit of the same segment sets more bits.
            try writeRandom(pool, vm, at: segment + 430_000, count: 700, &live, &rng)
            XCTAssertLessThan(pool.partialSegmentProgress.bytesLeft, progress.bytesLeft, "\(level)")
            try assertClean(pool, "\(level): partial")
            try pool.close()
            let reopened = try drives.open()
            XCTAssertEqual(reopened.partialSegmentProgress.segments, 1, "\(level): the record survives a reopen")
            assertSameBytes(try reopened.image(vm), live, "\(level): live after reopen")
            XCTAssertEqual(try reopened.fillPartialSegments(), 1)
            XCTAssertEqual(reopened.partialSegmentProgress.segments, 0)
            try assertImages(reopened, [vm: live, snap: before], "\(level): after the fill")
            try reopened.close()
        }
    }

    func testWriteInPlaceToSourceCompletesItsPartialSegmentsFirst() throws {
        var rng = TestRandom(seed: 12)
        let (_, pool, vm, snap, initial) = try poolWithSnapshot(.raid5, drives: 6, segments: 2, &rng)
        var live = initial, old = initial
        try writeRandom(pool, vm, at: 4096, count: 4096, &live, &rng)
        try pool.commit()
        XCTAssertEqual(pool.partialSegmentProgress.segments, 1)
        // The snapshot now holds the old segment alone: its write goes in place, so the live
        // disk's partial segment, which reads the other blocks from it, is completed first.
        let commits = pool.commitCount
        try writeRandom(pool, snap, at: 100_000, count: 8192, &old, &rng)
        XCTAssertEqual(pool.partialSegmentProgress.segments, 0, "filled before the source changed")
        XCTAssertGreaterThan(pool.commitCount, commits, "the drop was committed before the write in place")
        try assertImages(pool, [vm: live, snap: old], "after the write in place")
        try pool.close()
    }

    func testSourceOfDeletedSnapshotStaysUntilTheFill() throws {
        var rng = TestRandom(seed: 13)
        let (drives, pool, vm, snap, initial) = try poolWithSnapshot(.raid1, drives: 4, segments: 1, &rng)
        var live = initial
        try writeRandom(pool, vm, at: 0, count: 4096, &live, &rng)
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
            let (drives, first, vm, _, initial) = try poolWithSnapshot(level, drives: 5, segments: 2, &rng)
            var pool = first, live = initial
            try pool.close()
            // Drive 4 misses the writes that make the partial segments, then comes back stale.
            pool = try drives.open(missing: [4])
            for k in 0..<2 {
                try writeRandom(pool, vm, at: k * segment + 4096 * (k + 3), count: 4096, &live, &rng)
            }
            XCTAssertEqual(pool.partialSegmentProgress.segments, 2, "\(level)")
            try pool.close()
            pool = try drives.open()
            XCTAssertEqual(pool.staleDriveIndexes, [], "\(level): the stale drive was rebuilt whole")
            try assertImages(pool, [vm: live], "\(level): after the rebuild")
            try pool.fillPartialSegments()
            try assertImages(pool, [vm: live], "\(level): after the fill")
            try pool.close()
        }
    }
    func testPSEGMoveOfAPartialSegmentsStoreKeepsItsBytes() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            var rng = TestRandom(seed: 15)
            let (_, pool, vm, snap, before) = try poolWithSnapshot(level, drives: 6, segments: 2, &rng)
            var live = before
            try writeRandom(pool, vm, at: 20_000, count: 4096, &live, &rng)
            try writeRandom(pool, vm, at: segment + 700_000, count: 4096, &live, &rng)
            // The new segments' stores are fresh: the blocks they do not hold were never written.
            let store = Int(try XCTUnwrap(pool.state.partials.all().first).location >> 3)
            for member in 0..<level.memberCount {
                let slot = StoreMemberSlot(store: store, member: member)
                guard let target = pool.moveTargets(for: slot).first else { continue }
                try pool.movePSEG(slot, toDrive: target)
            }
            try assertImages(pool, [vm: live, snap: before], "\(level): after the moves")
            try pool.fillPartialSegments()
            try assertImages(pool, [vm: live, snap: before], "\(level): after the fill")
            try pool.close()
        }
    }
}
