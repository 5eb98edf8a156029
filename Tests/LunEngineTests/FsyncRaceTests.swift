// A commit that runs while a write is still on its way to a drive must not make the next fsync
// skip that drive. The write is held in flight at a gate of its simulated drive while another
// thread commits (the daemon's background commit); then the write finishes, the test fsyncs,
// cuts the power with every unsynced write dropped, and reads the bytes back.
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class FsyncRaceTests: XCTestCase {
    /// The first write of a disk: a fresh segment, and a map entry logged for it.
    func testFsyncAfterACommitThatRanDuringTheFirstWrite() throws {
        try checkFsyncAfterCommitDuringWrite(overwrite: false)
    }

    /// An in-place overwrite of a segment the disk holds alone: no map change at all.
    func testFsyncAfterACommitThatRanDuringAnInPlaceWrite() throws {
        try checkFsyncAfterCommitDuringWrite(overwrite: true)
    }

    private func checkFsyncAfterCommitDuringWrite(overwrite: Bool) throws {
        // RAID 0 on 4 drives: a whole-segment write puts a 256 KiB column on each. Drives 0-2
        // hold the metadata mirrors, which every commit syncs anyway; drive 3 is synced only
        // because data went to it, so that is where the write is held.
        var set = SimulatedDriveSet(count: 4, sizeBytes: 64 << 20, seed: 1)
        try Pool.format(devices: set.devices, raid: .raid0)
        let pool = try Pool.open(devices: set.devices)
        let id = try pool.createDisk(named: "vm")
        var rng = SeededRandom(seed: overwrite ? 2 : 3)
        if overwrite {
            try pool.write(id, at: 0, rng.bytes(1 << 20))
            try pool.commit()
        }
        let bytes = rng.bytes(1 << 20)
        let gate = set[3].holdNextWrite()
        defer { gate.open() }
        let writerDone = DispatchSemaphore(value: 0)
        let writeError = Atomic<Bool>(false)
        Thread {
            do { try pool.write(id, at: 0, bytes) } catch { writeError.store(true, ordering: .releasing) }
            writerDone.signal()
        }.start()
        XCTAssertTrue(gate.waitUntilReached(), "the write never reached drive 3")
        // The background commit, while the column for drive 3 is in flight.
        let committed = DispatchSemaphore(value: 0)
        Thread {
            do { try pool.commit() } catch { XCTFail("background commit: \(error)") }
            committed.signal()
        }.start()
        XCTAssertEqual(committed.wait(timeout: .now() + 30), .success, "the background commit waited for the write")
        gate.open()
        XCTAssertEqual(writerDone.wait(timeout: .now() + 30), .success)
        XCTAssertFalse(writeError.load(ordering: .acquiring))
        // fsync: the write returned before it, so its bytes must survive any crash from here.
        try pool.commit()
        set.crash(seed: 4, tearing: .dropUnsynced)
        let reopened = try Pool.open(devices: set.devices)
        assertSameBytes(try reopened.readBytes(id, at: 0, count: bytes.count), bytes, "bytes fsync'd after the race")
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        try reopened.close()
    }
}
