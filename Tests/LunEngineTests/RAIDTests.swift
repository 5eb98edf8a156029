// Degraded reads: RAID 1 and RAID 5 disks return the same bytes with any one drive missing;
// RAID 0 returns EIO for data on the missing drive.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class RAIDTests: XCTestCase {
    func testDegradedReadEveryDrive() throws {
        for level in RAIDLevel.allCases {
            let drives = MemoryDrives(count: 8, sizeBytes: 128 << 20)
            try drives.format(raid: level)
            var rng = TestRandom(seed: UInt64(level.rawValue) + 11)
            let data = rng.bytes(20 << 20)
            let pool = try drives.open()
            let id = try pool.createDisk(named: "vm")
            try pool.write(id, at: 0, data)
            try pool.write(id, at: 12345, Array(data[0..<7777]))   // a partial-stripe write too
            var expected = data
            expected.replaceSubrange(12345..<(12345 + 7777), with: data[0..<7777])
            try pool.close()
            // Lose each drive in turn (drives 0-2 also hold the metadata mirrors). Read-only, so
            // that no drive is marked stale by a degraded open.
            var raid0Failures = 0
            for missing in 0..<8 {
                let degraded = try drives.open(missing: [missing], readOnly: true)
                if level == .raid0 {
                    // A RAID 0 disk fails exactly when the missing drive holds part of it.
                    do { let img = try degraded.image(id); assertSameBytes(img, expected) } catch let e as LunError {
                        XCTAssertEqual(e.errno, EIO); raid0Failures += 1
                    }
                } else {
                    assertSameBytes(try degraded.image(id), expected, "\(level) without drive \(missing)")
                }
                try degraded.close()
            }
            if level == .raid0 { XCTAssertGreaterThan(raid0Failures, 0) }
        }
    }
}
