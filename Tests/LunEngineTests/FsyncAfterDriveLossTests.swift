// An fsync must not succeed while writes that returned are durable nowhere: after the drives
// holding them leave service, every commit must fail until a checkpoint has recorded those
// drives as stale, not only the first one.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class FsyncAfterDriveLossTests: XCTestCase {
    func testEveryFsyncFailsAfterAllCopiesOfAnUnsyncedWriteLeftService() throws {
        var set = SimulatedDriveSet(count: 2, sizeBytes: 64 << 20, seed: 5)
        try Pool.format(devices: set.devices, raid: .raid1)
        let pool = try Pool.open(devices: set.devices)
        let id = try pool.createDisk(named: "vm")
        var rng = SeededRandom(seed: 6)
        let old = rng.bytes(1 << 20)
        try pool.write(id, at: 0, old)
        try pool.commit()
        // An in-place write lands, unsynced, on both copies; then both drives go away, and a
        // write finds it out, taking them out of service.
        let bytes = rng.bytes(4096)
        try pool.write(id, at: 0, bytes)
        for d in set.drives { d.disappear() }
        XCTAssertThrowsError(try pool.write(id, at: 8192, rng.bytes(4096)))
        // The first commit fails at its checkpoint; the later ones must fail too, for the
        // write above was never synced anywhere.
        for attempt in 0..<3 {
            XCTAssertThrowsError(try pool.commit(), "commit \(attempt) after the drives left service")
        }
        set.crash(seed: 7, tearing: .dropUnsynced)
        let reopened = try Pool.open(devices: set.devices)
        assertSameBytes(try reopened.readBytes(id, at: 0, count: old.count), old, "no fsync succeeded after the write")
        try reopened.close()
    }
}
