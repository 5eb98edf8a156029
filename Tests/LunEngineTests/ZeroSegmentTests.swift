// Zeros are holes, second half: a write that leaves a segment the disk holds alone all zeros
// frees it (Pool+ZeroSegments.swift), when the zeros cover the segment or reach its end. A
// segment a snapshot shares is never freed by this; the snapshot keeps its bytes.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class ZeroSegmentTests: XCTestCase {
    func testZerosThatEmptyAnUnsharedSegmentFreeIt() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let seg = Int(pool.geometry.rsegSizeBytes)
        let id = try pool.createDisk(named: "d")
        var rng = SeededRandom(seed: 1201)
        var expected = rng.bytes(4 * seg)
        try pool.write(id, at: 0, expected)
        try pool.commit()
        XCTAssertEqual(pool.usage().usedBytes, UInt64(4 * seg))
        func zeros(_ at: Int, _ count: Int) throws {
            try pool.write(id, at: UInt64(at), [UInt8](repeating: 0, count: count))
            expected.replaceSubrange(at..<at + count, with: [UInt8](repeating: 0, count: count))
        }

        try zeros(seg, seg)
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(3 * seg), "a whole segment of zeros frees it")
        try zeros(2 * seg + seg / 2, seg / 2)
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(3 * seg), "half the segment still holds data")
        try zeros(2 * seg, seg / 2 - 4096)
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(3 * seg), "zeros that stop short of the end are not looked at")
        try zeros(2 * seg + seg / 2 - 4096, 4096 + 100)
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(3 * seg), "not all zeros yet: 100 bytes before the end")
        try zeros(3 * seg - 4096, 4096)
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(2 * seg), "zeros reaching the end of an all-zero segment free it")
        // A write of zeros spanning two segments, one of which keeps data.
        var mixed = [UInt8](repeating: 0, count: 2 * seg)
        mixed[7] = 1
        try pool.write(id, at: 0, mixed)
        expected.replaceSubrange(0..<2 * seg, with: mixed)
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(2 * seg), "segment 0 keeps a byte; segment 1 was a hole already")
        assertSameBytes(try pool.image(id), expected, "image")
        try pool.commit()
        XCTAssertEqual(pool.usage().usedBytes, UInt64(2 * seg), "the freed segments are free after the commit")
        try pool.close()
        let again = try drives.open()
        assertSameBytes(try again.image(id), expected, "after reopen")
        XCTAssertEqual(again.info(id)!.allocatedBytes, UInt64(2 * seg))
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [])
        try again.close()
    }

    func testZerosOverASharedSegmentLeaveTheSnapshotItsBytes() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let seg = Int(pool.geometry.rsegSizeBytes)
        let id = try pool.createDisk(named: "d")
        var rng = SeededRandom(seed: 1202)
        let old = rng.bytes(2 * seg)
        try pool.write(id, at: 0, old)
        let snap = try pool.createSnapshot(of: id, named: "monday")
        try pool.write(id, at: 0, [UInt8](repeating: 0, count: seg))
        var live = old
        live.replaceSubrange(0..<seg, with: [UInt8](repeating: 0, count: seg))
        assertSameBytes(try pool.image(snap), old, "the snapshot keeps the shared segment")
        assertSameBytes(try pool.image(id), live, "the disk reads zeros")
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(seg), "the disk's own copy of zeros was freed")
        XCTAssertEqual(pool.info(snap)!.allocatedBytes, UInt64(2 * seg))
        try pool.close()
        let again = try drives.open()
        assertSameBytes(try again.image(snap), old, "snapshot after reopen")
        assertSameBytes(try again.image(id), live, "disk after reopen")
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [])
        try again.close()
    }
}
