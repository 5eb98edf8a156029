// The pool end to end on in-memory drives: bytes round-trip, survive reopen, grow and
// shrink, and read zeros where nothing was written.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class PoolTests: XCTestCase {
    func testWriteReadReopenAllLevels() throws {
        for level in RAIDLevel.allCases {
            let drives = MemoryDrives(count: 8, sizeBytes: 256 << 20)
            try drives.format(raid: level)
            var rng = TestRandom(seed: 7)
            var model = [UInt8](repeating: 0, count: 24 << 20)
            var pool = try drives.open()
            let id = try pool.createDisk(named: "vm")
            for _ in 0..<60 {
                let size = [1, 512, 4096, 65536, 1 << 20, 3 << 20][Int.random(in: 0..<6, using: &rng)]
                let offset = Int.random(in: 0..<(model.count - size), using: &rng)
                let bytes = rng.bytes(size)
                try pool.write(id, at: UInt64(offset), bytes)
                model.replaceSubrange(offset..<offset + size, with: bytes)
            }
            let size = Int(pool.info(id)!.sizeBytes)
            assertSameBytes(try pool.image(id), Array(model[0..<size]), "\(level) before reopen")
            try pool.close()
            pool = try drives.open()
            assertSameBytes(try pool.image(id), Array(model[0..<size]), "\(level) after reopen")
            XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [], "\(level)")
            try pool.close()
        }
    }

    func testUnwrittenReadsZerosAndShrinkFrees() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let id = try pool.createDisk(named: "d")
        try pool.resize(id, to: 10 << 20)
        assertSameBytes(try pool.image(id), [UInt8](repeating: 0, count: 10 << 20))
        try pool.write(id, at: 3 << 20, [UInt8](repeating: 0xAB, count: 3 << 20))
        let usedBefore = pool.usage().usedBytes
        XCTAssertEqual(usedBefore, 3 << 20)
        try pool.resize(id, to: (3 << 20) + 100)
        try pool.resize(id, to: 10 << 20)
        var expected = [UInt8](repeating: 0, count: 10 << 20)
        for i in (3 << 20)..<((3 << 20) + 100) { expected[i] = 0xAB }
        assertSameBytes(try pool.image(id), expected)
        try pool.commit()
        XCTAssertEqual(pool.usage().usedBytes, 1 << 20)
    }

    /// Zeros written where nothing is mapped allocate nothing (a thin disk filled with zeros by
    /// rsync --inplace or dd stays a hole); zeros over mapped data still overwrite it; a write
    /// mixing zeros and data allocates only the segments with data.
    func testZerosIntoUnmappedSpaceAllocateNothing() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let seg = Int(pool.geometry.rsegSizeBytes)
        let id = try pool.createDisk(named: "d")
        try pool.write(id, at: 0, [UInt8](repeating: 0, count: 8 * seg + 100))
        XCTAssertEqual(pool.info(id)!.sizeBytes, UInt64(8 * seg + 100), "the disk grew")
        XCTAssertEqual(pool.info(id)!.allocatedBytes, 0, "nothing allocated for zeros")
        var expected = [UInt8](repeating: 0, count: 8 * seg + 100)
        var mixed = [UInt8](repeating: 0, count: 3 * seg)
        mixed[seg + 17] = 5                                       // only segment 3 of the disk has data
        try pool.write(id, at: UInt64(2 * seg), mixed)
        expected[3 * seg + 17] = 5
        XCTAssertEqual(pool.info(id)!.allocatedBytes, UInt64(seg))
        try pool.write(id, at: UInt64(3 * seg), [UInt8](repeating: 0, count: seg))   // mapped: overwritten
        expected[3 * seg + 17] = 0
        assertSameBytes(try pool.image(id), expected, "image")
        try pool.close()
        let again = try drives.open()
        assertSameBytes(try again.image(id), expected, "after reopen")
        XCTAssertEqual(try PoolChecker(pool: again).run().problems, [])
    }
}
