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

    /// Whole segments of zeros (not written: unmapped) and of data, written while another
    /// thread takes snapshots of the same disk and a third commits. A snapshot taken between a
    /// zero write's plan and its unmapping must not lose its bytes nor see half of a write: each
    /// of its segments reads as one of the values the writer gave that segment (never a mix), and
    /// the disk ends as the writer left it.
    func testWholeSegmentZerosRacingSnapshotsAndCommits() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let seg = Int(pool.geometry.rsegSizeBytes)
        let segments = 6
        let id = try pool.createDisk(named: "d")
        var rng = SeededRandom(seed: 1203)
        /// Every value each segment held, oldest first (a value is its first byte: whole
        /// segments of one byte each).
        var history = (0..<segments).map { _ in [UInt8(0)] }
        try pool.write(id, at: 0, [UInt8](repeating: 1, count: segments * seg))
        for k in 0..<segments { history[k].append(1) }
        let failures = ConcurrencyTests.Failures()
        let stop = AtomicFlag(false)
        let committer = Thread {
            while !stop.value.load(ordering: .acquiring) {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(500)
            }
        }
        let snapshots = ConcurrencyTests.Models()
        let snapshotter = Thread {
            var n = 0
            while !stop.value.load(ordering: .acquiring) && n < 20 {
                do {
                    let snap = try pool.createSnapshot(of: id, named: "s\(n)")
                    snapshots.lock.withLock { snapshots.images[snap] = [] }
                } catch { failures.add("snapshot: \(error)") }
                n += 1
                usleep(1000)
            }
        }
        committer.start()
        snapshotter.start()
        for _ in 0..<200 {
            let k = Int(rng.below(UInt64(segments)))
            let value: UInt8 = rng.chance(0.5) ? 0 : UInt8(2 + rng.below(200))
            try pool.write(id, at: UInt64(k * seg), [UInt8](repeating: value, count: seg))
            if history[k].last != value { history[k].append(value) }
        }
        stop.value.store(true, ordering: .releasing)
        while !committer.isFinished || !snapshotter.isFinished { usleep(1000) }
        XCTAssertEqual(failures.messages, [])
        func check(_ p: Pool, _ what: String) throws {
            let image = try p.image(id)
            for k in 0..<segments {
                XCTAssertTrue(image[k * seg..<(k + 1) * seg].allSatisfy { $0 == history[k].last! }, "\(what): disk segment \(k)")
            }
            for snap in snapshots.images.keys.sorted() {
                let bytes = try p.image(snap)
                for k in 0..<segments {
                    let first = bytes[k * seg]
                    XCTAssertTrue(history[k].contains(first) && bytes[k * seg..<(k + 1) * seg].allSatisfy { $0 == first },
                                  "\(what): snapshot \(snap) segment \(k) is not one whole value the disk had")
                }
            }
        }
        try check(pool, "running")
        XCTAssertLessThanOrEqual(pool.info(id)!.allocatedBytes, UInt64(segments * seg))
        try pool.close()
        let again = try drives.open()
        try check(again, "after reopen")
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [])
        try again.close()
    }
}
