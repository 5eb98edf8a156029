// What `lunfs status` says of each drive comes from the engine's counters: a read the drive
// fails, a block whose checksum fails and the repair of it from the mirror are counted on
// the drive they happened on, and a drive that fails a write is shown as failed.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class DriveStatusTests: XCTestCase {
    func testErrorsAndRepairsAreCountedOnTheirDrive() throws {
        let set = SimulatedDriveSet(count: 2, sizeBytes: 64 << 20, seed: 1401)
        try Pool.format(devices: set.devices, raid: .raid1)
        let pool = try Pool.open(devices: set.devices)
        let id = try pool.createDisk(named: "vm")
        var rng = SeededRandom(seed: 1402)
        let bytes = rng.bytes(1 << 20)
        try pool.write(id, at: 0, bytes)
        try pool.commit()
        XCTAssertEqual(pool.driveStatuses().map(\.errors), [DriveErrors(), DriveErrors()])
        XCTAssertEqual(pool.driveStatuses().map(\.state), [.online, .online])
        XCTAssertEqual(pool.driveStatuses().map(\.usedBytes), [8 << 20, 8 << 20], "one RAID 1 store: four 2 MiB PSEGs on each drive")

        // The primary copy of the first column is the one a read tries first.
        let e = try XCTUnwrap(pool.state.disk(id)?.map.entry(0))
        let primary = pool.state.rsds.member(Int(e.store), 0).drive
        // A bad spot: every read of it returns flipped bits, so the block is rewritten.
        set[primary].corruptReads(in: 0..<(64 << 20))
        assertSameBytes(try pool.readBytes(id, at: 0, count: 4096), Array(bytes[0..<4096]), "read from the mirror")
        set[primary].clearRangeFaults()
        var counts = pool.driveStatuses()[primary].errors
        XCTAssertEqual(counts.checksumErrors, 2, "the first read and the one under the stripe lock")
        XCTAssertEqual(counts.repairs, 1, "rewritten from the mirror")
        XCTAssertEqual(pool.driveStatuses()[1 - primary].errors, DriveErrors())

        set[primary].failNextRead()
        assertSameBytes(try pool.readBytes(id, at: 0, count: 4096), Array(bytes[0..<4096]), "read from the mirror")
        counts = pool.driveStatuses()[primary].errors
        XCTAssertEqual(counts.readErrors, 1)

        set[1 - primary].failNextWrite()
        try pool.write(id, at: 0, rng.bytes(4096))
        let other = pool.driveStatuses()[1 - primary]
        XCTAssertEqual(other.errors.writeErrors, 1)
        XCTAssertEqual(other.state, .failed)
        let risk = pool.redundancyRisk()
        XCTAssertEqual(risk.degradedStores, 1)
        XCTAssertEqual(risk.disksWithoutRedundancy, [id])
    }
}
