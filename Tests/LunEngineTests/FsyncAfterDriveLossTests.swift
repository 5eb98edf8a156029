// An fsync must not succeed while writes that returned are durable nowhere: after the drives
// holding them leave service, every commit must fail until a checkpoint has recorded those
// drives as stale, not only the first one. And no journal record may map a segment whose copy
// on a drive that left service is missing before a checkpoint has recorded that drive as stale.
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

    /// A drive leaves service during a write to a fresh segment (the write returns degraded),
    /// and the commit's checkpoint cannot be written. Before, the commit appended its record
    /// first: after a crash the segment was mapped and the drive, never recorded stale, was
    /// read as current though it lacked the write (found by the threaded crash simulation,
    /// seed 15118807806357). Now that record waits for the checkpoint that names the drive.
    func testNoRecordMapsWritesADriveThatLeftServiceMissedBeforeItIsRecordedStale() throws {
        var set = SimulatedDriveSet(count: 8, sizeBytes: 64 << 20, seed: 61)
        try Pool.format(devices: set.devices, raid: .raid1)
        let pool = try Pool.open(devices: set.devices)
        let id = try pool.createDisk(named: "vm")
        try pool.commit()
        // A RAID 1 store spans all eight drives; a 1 MiB write at 0 puts a copy on each.
        set[5].disappear()
        var rng = SeededRandom(seed: 62)
        let bytes = rng.bytes(1 << 20)
        try pool.write(id, at: 0, bytes)
        let layout = pool.metadata.layout
        for m in pool.metadata.mirrors {
            for offset in layout.checkpointOffsets { set[m].failWrites(in: offset..<(offset + layout.checkpointCapacity)) }
        }
        XCTAssertThrowsError(try pool.commit(), "the checkpoint recording drive 5 cannot be written")
        set.crash(seed: 63, tearing: .keepUnsynced)
        set.stopInjecting()
        let reopened = try Pool.open(devices: set.devices)
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [],
                       "drive 5's copy of the segment, never written, is not read as current")
        XCTAssertEqual(reopened.info(id)?.sizeBytes, 0, "nothing was committed after the disk was made")
        try reopened.close()
    }
}
