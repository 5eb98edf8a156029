// Faults the engine must survive or refuse cleanly: damaged metadata copies, drives that fail
// or vanish under a redundant disk, a full pool, and a second process opening the same pool.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class FaultTests: XCTestCase {
    func makePool(level: RAIDLevel, drives: Int = 8, size: UInt64 = 64 << 20, seed: UInt64 = 1) throws -> (SimulatedDriveSet, Pool) {
        let set = SimulatedDriveSet(count: drives, sizeBytes: size, seed: seed)
        try Pool.format(devices: set.devices, raid: level)
        return (set, try Pool.open(devices: set.devices))
    }

    // MARK: Metadata damage

    func testDamagedSuperblockAndCheckpointOpenFromMirror() throws {
        let (set, pool) = try makePool(level: .raid5)
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 3)
        let data = rng.bytes(3 << 20)
        try pool.write(id, at: 0, data)
        try pool.close()
        // Smash both superblock slots and both checkpoint slots of mirror 0.
        let layout = QuorumLayout(quorumBytes: pool.poolGeometry.quorumBytes)
        let junk = [UInt8](repeating: 0xA5, count: 8192)
        try junk.withUnsafeBytes { try set[0].write($0, at: 0) }
        for offset in layout.checkpointOffsets { try junk.withUnsafeBytes { try set[0].write($0, at: offset) } }
        let reopened = try Pool.open(devices: set.devices)
        XCTAssertTrue(reopened.openNotes.contains { $0.contains("drive 0") }, "\(reopened.openNotes)")
        assertSameBytes(try reopened.image(id), data)
        try reopened.close()
        // The open rewrote the metadata on every mirror: the check is clean again.
        let again = try Pool.open(devices: set.devices)
        XCTAssertEqual(try PoolChecker(pool: again).run().problems, [])
        try again.close()
    }

    func testAllMetadataCopiesDamagedIsRefused() throws {
        let (set, pool) = try makePool(level: .raid1)
        _ = try pool.createDisk(named: "vm")
        try pool.close()
        let junk = [UInt8](repeating: 0x3C, count: 8192)
        for d in 0..<set.count { try junk.withUnsafeBytes { try set[d].write($0, at: 0) } }
        XCTAssertThrowsError(try Pool.open(devices: set.devices)) { error in
            guard case .corrupt(let message)? = error as? LunError else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("superblock"), message)
        }
    }

    func testTornJournalRecordEndsReplayAtLastGoodCommit() throws {
        let (set, pool) = try makePool(level: .raid0, drives: 4)
        let id = try pool.createDisk(named: "vm")
        try pool.write(id, at: 0, [UInt8](repeating: 1, count: 4096))
        try pool.commit()
        try pool.write(id, at: 8 << 20, [UInt8](repeating: 2, count: 4096))
        try pool.commit()
        // Records since the last checkpoint: the disk's creation, then one per commit. Damage
        // the third (the second write's) on every mirror: replay stops after the second.
        let layout = QuorumLayout(quorumBytes: pool.poolGeometry.quorumBytes)
        let sb = pool.metadata.superblock
        let second = layout.journalOffset + sb.journalStart + 2 * 4096
        for m in sb.mirrors.map(Int.init) { try [UInt8](repeating: 0, count: 64).withUnsafeBytes { try set[m].write($0, at: second) } }
        let reopened = try Pool.open(devices: set.devices)
        XCTAssertEqual(reopened.info(id)!.sizeBytes, 4096)
        assertSameBytes(try reopened.readBytes(id, at: 0, count: 4096), [UInt8](repeating: 1, count: 4096))
        XCTAssertEqual(try PoolChecker(pool: reopened).run().problems, [])
    }

    // MARK: Drive faults within redundancy

    func testFailingAndVanishingDriveUnderRAID1AndRAID5() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            for fault in ["read errors", "vanishes", "write errors"] {
                let (set, pool) = try makePool(level: level, seed: UInt64(level.rawValue) * 7)
                let id = try pool.createDisk(named: "vm")
                var rng = TestRandom(seed: 5)
                var model = rng.bytes(12 << 20)
                try pool.write(id, at: 0, model)
                let victim = 4   // not a metadata mirror
                switch fault {
                case "read errors": set[victim].failReads(in: 0..<set[victim].sizeBytes)
                case "vanishes": set[victim].disappear()
                default: set[victim].failWrites(in: 0..<set[victim].sizeBytes)
                }
                // Writes keep working (partial and whole segments), reads return the right bytes.
                for _ in 0..<40 {
                    let len = [512, 4096, 100_000, 1 << 20][Int.random(in: 0..<4, using: &rng)]
                    let off = Int.random(in: 0..<(model.count - len), using: &rng)
                    let bytes = rng.bytes(len)
                    try pool.write(id, at: UInt64(off), bytes)
                    model.replaceSubrange(off..<off + len, with: bytes)
                }
                assertSameBytes(try pool.image(id), model, "\(level) \(fault)")
                if fault != "read errors" || level == .raid5 {
                    // (A RAID 1 drive holding only mirror copies is never read.)
                    XCTAssertGreaterThan(pool.driveErrorCount, 0, "\(level) \(fault): errors are counted")
                }
                let report = try PoolChecker(pool: pool).run()
                if fault != "read errors" {
                    XCTAssertTrue(report.problems.contains { $0.contains("drive \(victim)") }, "\(level) \(fault): \(report.problems)")
                }
            }
        }
    }

    /// A drive missing while the pool was written comes back with old copies: the open rebuilds
    /// it from redundancy, so no read ever returns its stale bytes.
    func testReturningDriveIsRebuiltBeforeUse() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let drives = MemoryDrives(count: 8, sizeBytes: 64 << 20)
            try drives.format(raid: level)
            var rng = TestRandom(seed: 21)
            var pool = try drives.open()
            let id = try pool.createDisk(named: "vm")
            var model = rng.bytes(10 << 20)
            try pool.write(id, at: 0, model)
            try pool.close()
            for victim in [3, 6] {
                pool = try drives.open(missing: [victim])
                let fresh = rng.bytes(10 << 20)
                try pool.write(id, at: 0, fresh)
                model = fresh
                try pool.close()
                pool = try drives.open()
                XCTAssertTrue(pool.openNotes.contains { $0.contains("rebuilt") }, "\(level): \(pool.openNotes)")
                assertSameBytes(try pool.image(id), model, "\(level) after drive \(victim) came back")
                XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [], "\(level)")
                try pool.close()
                // Every copy is current: losing any other single drive still reads right.
                // (Read-only: a read-write open would mark the missing drive stale.)
                for other in 0..<8 where other != victim {
                    let degraded = try drives.open(missing: [other], readOnly: true)
                    assertSameBytes(try degraded.image(id), model, "\(level) without drive \(other)")
                    try degraded.close()
                }
            }
        }
    }

    /// Silent corruption is caught by the scrub: the mirror copies or the parity disagree.
    func testScrubReportsCorruptedDrive() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let (set, pool) = try makePool(level: level)
            let id = try pool.createDisk(named: "vm")
            var rng = TestRandom(seed: 8)
            try pool.write(id, at: 0, rng.bytes(8 << 20))
            try pool.commit()
            XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
            // Flip bytes in the data area of every drive but the metadata mirrors.
            let dataStart = pool.poolGeometry.quorumBytes
            for d in 3..<set.count {
                try [UInt8](repeating: 0xFF, count: 1 << 20).withUnsafeBytes { try set[d].write($0, at: dataStart) }
            }
            let report = try PoolChecker(pool: pool, scrub: true).run()
            XCTAssertFalse(report.problems.isEmpty, "\(level): scrub must see the damage")
        }
    }

    // MARK: Full pool

    func testFullPoolGivesENOSPCAndChangesNothing() throws {
        let (_, pool) = try makePool(level: .raid0, drives: 4, size: 24 << 20)
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 11)
        var written: [UInt8] = []
        var filled = false
        for _ in 0..<100 {
            let chunk = rng.bytes(1 << 20)
            do {
                try pool.write(id, at: UInt64(written.count), chunk)
                written += chunk
            } catch let e as LunError {
                XCTAssertEqual(e.errno, ENOSPC)
                filled = true
                break
            }
        }
        XCTAssertTrue(filled, "the pool must fill up")
        XCTAssertEqual(pool.info(id)!.sizeBytes, UInt64(written.count), "a refused write does not grow the disk")
        assertSameBytes(try pool.image(id), written)
        // A snapshot shares everything; a write to the live disk then needs a copy: ENOSPC.
        let snap = try pool.createSnapshot(of: id, named: "snap")
        XCTAssertThrowsError(try pool.write(id, at: 100, [9, 9, 9])) { XCTAssertEqual(($0 as? LunError)?.errno, ENOSPC) }
        assertSameBytes(try pool.image(id), written)
        assertSameBytes(try pool.image(snap), written)
        // Deleting the snapshot makes the segments exclusive again: writes continue.
        try pool.removeNode(snap)
        try pool.write(id, at: 100, [9, 9, 9])
        written.replaceSubrange(100..<103, with: [9, 9, 9])
        assertSameBytes(try pool.image(id), written)
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
    }

    func testReservedSnapshot() throws {
        let (_, pool) = try makePool(level: .raid0, drives: 4, size: 40 << 20)
        let id = try pool.createDisk(named: "vm")
        try pool.write(id, at: 0, [UInt8](repeating: 7, count: 8 << 20))
        let freeBefore = pool.usage().freeBytes
        let snap = try pool.createSnapshot(of: id, named: "r", reserved: true)
        XCTAssertEqual(pool.info(snap)!.reservedBytes, 8 << 20)
        XCTAssertEqual(pool.usage().freeBytes, freeBefore - (8 << 20))
        // Copy on write after the snapshot draws from the reservation, not from free space.
        try pool.write(id, at: 0, [UInt8](repeating: 8, count: 4 << 20))
        XCTAssertEqual(pool.info(snap)!.reservedBytes, 4 << 20)
        assertSameBytes(try pool.readBytes(snap, at: 0, count: 8 << 20), [UInt8](repeating: 7, count: 8 << 20))
        // A second reserved snapshot that does not fit is refused and changes nothing.
        let other = try pool.createDisk(named: "big")
        let free = Int(pool.usage().freeBytes)
        try pool.write(other, at: 0, [UInt8](repeating: 1, count: free))
        let disksBefore = pool.disks().count
        XCTAssertThrowsError(try pool.createSnapshot(of: other, named: "r2", reserved: true)) {
            XCTAssertEqual(($0 as? LunError)?.errno, ENOSPC)
        }
        XCTAssertEqual(pool.disks().count, disksBefore)
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
    }

    // MARK: Lock and fresh segments

    func testSecondOpenOfAPoolDirectoryIsBusy() throws {
        let dir = NSTemporaryDirectory() + "lunfs-lock-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = PoolOptions()
        options.driveCount = 2
        options.driveSizeBytes = 32 << 20
        let pool = try Pool.create(directory: dir, options: options)
        XCTAssertThrowsError(try Pool.open(directory: dir)) { XCTAssertEqual(($0 as? LunError)?.errno, EBUSY) }
        try pool.close()
        try Pool.open(directory: dir).close()
    }

    func testFreshSegmentNeverShowsADeletedDisksBytes() throws {
        let (_, pool) = try makePool(level: .raid5, drives: 5, size: 48 << 20)
        let secret = try pool.createDisk(named: "secret")
        try pool.write(secret, at: 0, [UInt8](repeating: 0x77, count: 20 << 20))
        try pool.removeNode(secret)
        try pool.commit()
        let fresh = try pool.createDisk(named: "fresh")
        // Small writes into new segments: the rest of each segment must read zeros.
        for i in 0..<20 { try pool.write(fresh, at: UInt64(i) << 20 + 4096, [1]) }
        let image = try pool.image(fresh)
        XCTAssertFalse(image.contains(0x77))
        XCTAssertEqual(image.filter { $0 != 0 }.count, 20)
    }
}
