// Drives joining and leaving a pool that serves I/O: writer threads check their disks against
// models while a committer runs and drives are added, emptied and forgotten; the pool then
// reopens with the new drive set (and with a removed drive's leftover line) and reads the same.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class DriveMembershipTests: XCTestCase {
    func testDrivesAddedAndRemovedWhileThreadsWriteAndCommit() throws {
        let size: UInt64 = 64 << 20
        let drives = MemoryDrives(count: 5, sizeBytes: size)
        let extra = (0..<3).map { MemoryDevice(name: "added\($0)", sizeBytes: size) }
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        // Slot 5 joins and is at once marked for removal: new stores take nothing on it.
        XCTAssertEqual(try pool.addDrive(device: extra[2]), 5)
        try pool.beginRemoval(5)
        XCTAssertEqual(pool.drainingDriveIndexes, [5])
        let failures = ThreadFailures()
        let models = ThreadModels()
        let committer = BackgroundCommitter(pool, failures: failures, pauseMicroseconds: 3000)
        let group = DispatchGroup()
        let diskBytes = 6 << 20
        for t in 0..<3 {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SeededRandom(seed: UInt64(t) &* 104_729 &+ 5)
                do {
                    let id = try pool.createDisk(named: "w\(t)")
                    try pool.resize(id, to: UInt64(diskBytes))
                    var image = [UInt8](repeating: 0, count: diskBytes)
                    for step in 0..<120 {
                        if rng.below(100) < 80 {
                            let len = [4096, 65536, 1 << 20][Int(rng.below(3))]
                            let off = Int(rng.below(UInt64(diskBytes - len))) & ~511
                            let bytes = rng.bytes(len)
                            try pool.write(id, at: UInt64(off), bytes)
                            image.replaceSubrange(off..<off + len, with: bytes)
                        } else if !sameBytes(try pool.image(id), image) {
                            failures.add("thread \(t) step \(step): disk \(id) differs")
                        }
                    }
                    models.lock.withLock { models.images[id] = image }
                } catch {
                    failures.add("thread \(t): \(error)")
                }
            }.start()
        }
        usleep(20_000)
        XCTAssertEqual(try pool.addDrive(device: extra[0]), 6)
        usleep(20_000)
        XCTAssertEqual(try pool.addDrive(device: extra[1]), 7)
        XCTAssertEqual(pool.usedSegments(onDrive: 5), 0, "a drive being emptied took new stores")
        try pool.forgetDrive(5)
        // Drive 3 holds data: it is emptied by leveling steps taken while the writers go on.
        XCTAssertGreaterThan(pool.usedSegments(onDrive: 3), 0)
        XCTAssertFalse(try pool.removeDrive(3))
        var moves = 0
        while moves < 400, let step = try pool.levelingStep() { if step > 0 { moves += 1 } }
        group.wait()
        try pool.levelCompletely()
        XCTAssertGreaterThan(moves, 0)
        committer.stop()
        XCTAssertEqual(failures.messages, [])
        XCTAssertGreaterThan(pool.usedSegments(onDrive: 6) + pool.usedSegments(onDrive: 7), 0, "added drives took no stores")
        XCTAssertEqual(pool.driveListing().map(\.index), [0, 1, 2, 4, 6, 7])
        XCTAssertEqual(pool.usage().driveCount, 6)
        XCTAssertEqual(pool.usage().missingDrives, 0)
        XCTAssertThrowsError(try pool.forgetDrive(5))
        XCTAssertThrowsError(try pool.forgetDrive(0), "a metadata mirror cannot leave")
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        try pool.close()

        var sizes = [UInt64](repeating: size, count: 5) + [0, size, size]
        sizes[3] = 0
        let original: [BlockDevice?] = drives.devices
        let list: [BlockDevice?] = original[0..<3] + [nil, original[4]] + [nil, extra[0], extra[1]]
        // The removed drives' lines may be left behind by a crash: open ignores them.
        for given in [list, original + [extra[2], extra[0], extra[1]]] {
            let reopened = try Pool.open(devices: given, sizes: sizes)
            XCTAssertEqual(reopened.driveListing().map(\.index), [0, 1, 2, 4, 6, 7])
            XCTAssertEqual(reopened.usage().missingDrives, 0)
            XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
            for (id, expected) in models.images { assertSameBytes(try reopened.image(id), expected, "disk \(id) after reopen") }
            try reopened.close()
        }
        // The forgotten drives lost their identity: they can join a pool again.
        XCTAssertNil(DriveIdentity.read(extra[2]))
        XCTAssertNil(DriveIdentity.read(drives.devices[3]))
    }

    /// Leveling after three drives join: each drive ends within one PSEG (and a half, for the
    /// rounding) of its share of the used PSEGs, and no disk's map changed.
    func testLevelingSpreadsUsedPSEGsInProportionToSizeAndKeepsMaps() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
            try drives.format(raid: level)
            let pool = try drives.open()
            var rng = SeededRandom(seed: 77)
            var images: [DiskID: [UInt8]] = [:]
            for n in 0..<2 {
                let id = try pool.createDisk(named: "d\(n)", raid: level)
                let bytes = rng.bytes(24 << 20)
                try pool.write(id, at: 0, bytes)
                images[id] = bytes
            }
            try pool.commit()
            func maps() -> [DiskID: [Int: UInt32]] {
                pool.stateLock.withLock {
                    var out: [DiskID: [Int: UInt32]] = [:]
                    for d in pool.state.disks.values { d.map.forEachMapped { k, e in out[d.id, default: [:]][k] = e.raw } }
                    return out
                }
            }
            let before = maps()
            for n in 0..<3 { _ = try pool.addDrive(device: MemoryDevice(name: "new\(n)", sizeBytes: 64 << 20)) }
            XCTAssertFalse(pool.levelingBacklog().isLevel)
            try pool.levelCompletely()
            XCTAssertTrue(pool.levelingBacklog().isLevel, "\(level): \(pool.levelingBacklog())")
            XCTAssertEqual(maps(), before, "\(level): leveling changed a map")
            let shares = pool.stateLock.withLock { pool.levelingSharesLocked() }
            for s in shares { XCTAssertLessThanOrEqual(abs(s.excess), 1.5, "\(level): drive \(s.drive) holds \(s.used), its share is \(s.ideal)") }
            XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
            for (id, expected) in images { assertSameBytes(try pool.image(id), expected, "\(level) disk \(id)") }
            try pool.close()
        }
    }

    func testAddRefusesMembersForeignDrivesAndTooSmallOnes() throws {
        let drives = MemoryDrives(count: 2, sizeBytes: 32 << 20)
        try drives.format(raid: .raid1)
        let pool = try drives.open()
        XCTAssertThrowsError(try pool.addDrive(device: drives.devices[1])) { XCTAssertEqual(($0 as? LunError)?.errno, EEXIST) }
        let other = MemoryDrives(count: 1, sizeBytes: 32 << 20)
        try other.format(raid: .raid0)
        XCTAssertThrowsError(try pool.addDrive(device: other.devices[0])) { XCTAssertEqual(($0 as? LunError)?.errno, EEXIST) }
        XCTAssertThrowsError(try pool.addDrive(device: MemoryDevice(name: "tiny", sizeBytes: 4 << 20))) {
            XCTAssertEqual(($0 as? LunError)?.errno, EINVAL)
        }
        XCTAssertEqual(pool.driveListing().count, 2, "a refused drive changed the pool")
        XCTAssertEqual(try pool.addDrive(device: other.devices[0], force: true), 2)
        try pool.close()
    }

    /// A drive that is gone is removed too: its members are rebuilt from redundancy onto the
    /// others by the moves, then its slot is retired and the pool is no longer degraded.
    func testMissingDriveIsRemovedByRebuildingItsMembers() throws {
        let drives = MemoryDrives(count: 6, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        var pool = try drives.open()
        let id = try pool.createDisk(named: "d")
        var rng = SeededRandom(seed: 9)
        let bytes = rng.bytes(20 << 20)
        try pool.write(id, at: 0, bytes)
        try pool.close()
        pool = try drives.open(missing: [4])
        XCTAssertEqual(pool.usage().missingDrives, 1)
        XCTAssertGreaterThan(pool.usedSegments(onDrive: 4), 0)
        XCTAssertFalse(try pool.removeDrive(4))
        try pool.levelCompletely()
        XCTAssertEqual(pool.driveListing().map(\.index), [0, 1, 2, 3, 5])
        XCTAssertEqual(pool.usage().missingDrives, 0)
        XCTAssertFalse(pool.redundancyRisk().isDegraded)
        assertSameBytes(try pool.image(id), bytes, "after the missing drive was removed")
        try pool.close()
        var given: [BlockDevice?] = drives.devices
        given[4] = nil
        var sizes = drives.devices.map(\.sizeBytes)
        sizes[4] = 0
        let reopened = try Pool.open(devices: given, sizes: sizes)
        XCTAssertEqual(reopened.usage().missingDrives, 0)
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        assertSameBytes(try reopened.image(id), bytes, "after reopening")
        try reopened.close()
    }
}
