// Drive identity and freshness: a pool directory whose drive files were swapped, blanked,
// replaced by another pool's, truncated or grown opens with the right bytes or treats the
// drive as missing; a drive that missed writes is only ever rebuilt, never read as current;
// `init` will not format a drive of another pool; a read-only open writes nothing.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class DriveIdentityTests: XCTestCase {
    private var directories: [String] = []

    override func tearDown() {
        for d in directories { try? FileManager.default.removeItem(atPath: d) }
        directories = []
        super.tearDown()
    }

    /// A new pool of file drives in a temporary directory, one disk "vm" of random bytes, closed.
    private func makeFilePool(drives: Int = 5, raid: RAIDLevel = .raid5, seed: UInt64 = 1) throws -> (dir: String, id: DiskID, data: [UInt8]) {
        let dir = NSTemporaryDirectory() + "lunfs-identity-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        directories.append(dir)
        var options = PoolOptions()
        options.driveCount = drives
        options.driveSizeBytes = 64 << 20
        options.raid = raid
        let pool = try Pool.create(directory: dir, options: options)
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: seed)
        let data = rng.bytes(12 << 20)
        try pool.write(id, at: 0, data)
        try pool.close()
        return (dir, id, data)
    }

    private func drive(_ dir: String, _ i: Int) -> String { dir + String(format: "/drive-%02d.img", i) }

    private func listLines(_ dir: String) throws -> [String] {
        try String(contentsOfFile: dir + "/drives.list", encoding: .utf8).split(separator: "\n").map(String.init)
    }

    private func setSize(_ path: String, _ size: UInt64) { XCTAssertEqual(truncate(path, off_t(size)), 0) }

    /// Replaces a drive file by an empty one of the same size.
    private func blank(_ path: String) {
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64) ?? 0
        setSize(path, 0)
        setSize(path, size)
    }

    // MARK: Swapped, blank, foreign, truncated, grown

    func testSwappedDriveListLinesAreReordered() throws {
        let (dir, id, data) = try makeFilePool()
        var lines = try listLines(dir)
        let original = lines
        lines.swapAt(1, 3)
        try (lines.joined(separator: "\n") + "\n").write(toFile: dir + "/drives.list", atomically: true, encoding: .utf8)
        let pool = try Pool.open(directory: dir)
        assertSameBytes(try pool.image(id), data, "after swapping drives 1 and 3 in drives.list")
        XCTAssertTrue(pool.openNotes.contains { $0.contains("out of order") }, "\(pool.openNotes)")
        try pool.close()
        XCTAssertEqual(try listLines(dir), original, "drives.list is rewritten in slot order")
        let again = try Pool.open(directory: dir)
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [])
        try again.close()
    }

    func testBlankDriveIsMissingAndRebuilt() throws {
        for victim in [3, 0] {   // a data drive, then a metadata mirror
            let (dir, id, data) = try makeFilePool(seed: UInt64(victim) + 2)
            blank(drive(dir, victim))
            let pool = try Pool.open(directory: dir)
            XCTAssertTrue(pool.openNotes.contains { $0.contains("no lunfs superblock") }, "\(pool.openNotes)")
            assertSameBytes(try pool.image(id), data, "blank drive \(victim)")
            XCTAssertTrue(pool.driveStates().allSatisfy(\.available), "drive \(victim) is rebuilt and back in service")
            try pool.close()
            // Every chunk on the blank drive was rebuilt: losing another drive still reads right.
            let other = victim == 0 ? 4 : 1
            let lines = try listLines(dir)
            try (lines.enumerated().map { $0.offset == other ? "missing.img \(UInt64(64 << 20))" : $0.element }.joined(separator: "\n") + "\n")
                .write(toFile: dir + "/drives.list", atomically: true, encoding: .utf8)
            let degraded = try Pool.open(directory: dir, readOnly: true)
            assertSameBytes(try degraded.image(id), data, "blank drive \(victim) rebuilt, drive \(other) missing")
            try degraded.close()
        }
    }

    func testForeignDriveIsTreatedAsMissing() throws {
        for victim in [4, 1] {
            let (dir, id, data) = try makeFilePool(seed: UInt64(victim) + 5)
            let (other, _, _) = try makeFilePool(seed: 99)
            XCTAssertEqual(unlink(drive(dir, victim)), 0)
            try FileManager.default.copyItem(atPath: drive(other, victim), toPath: drive(dir, victim))
            let pool = try Pool.open(directory: dir)
            XCTAssertTrue(pool.openNotes.contains { $0.contains("another pool") }, "\(pool.openNotes)")
            assertSameBytes(try pool.image(id), data, "foreign drive in slot \(victim)")
            XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
            try pool.close()
        }
    }

    func testTruncatedDriveIsMissing() throws {
        let (dir, id, data) = try makeFilePool()
        setSize(drive(dir, 4), 20 << 20)
        let pool = try Pool.open(directory: dir)
        XCTAssertTrue(pool.openNotes.contains { $0.contains("truncated") }, "\(pool.openNotes)")
        XCTAssertFalse(pool.driveStates()[4].available)
        assertSameBytes(try pool.image(id), data, "drive 4 truncated")
        try pool.close()
    }

    func testGrownDriveIsUsedWithItsRecordedSize() throws {
        let (dir, id, data) = try makeFilePool()
        let before = try Pool.open(directory: dir, readOnly: true)
        let capacity = before.usage().capacityBytes
        try before.close()
        setSize(drive(dir, 2), 256 << 20)
        let pool = try Pool.open(directory: dir)
        XCTAssertTrue(pool.openNotes.contains { $0.contains("grown") }, "\(pool.openNotes)")
        XCTAssertEqual(pool.usage().capacityBytes, capacity, "a grown drive adds no segments")
        assertSameBytes(try pool.image(id), data)
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        try pool.close()
        // A drive list without sizes: the superblocks' recorded sizes rule.
        let bare = try listLines(dir).map { String($0.split(separator: " ")[0]) }
        try (bare.joined(separator: "\n") + "\n").write(toFile: dir + "/drives.list", atomically: true, encoding: .utf8)
        setSize(drive(dir, 3), 128 << 20)
        let unsized = try Pool.open(directory: dir)
        XCTAssertEqual(unsized.usage().capacityBytes, capacity, "\(unsized.openNotes)")
        assertSameBytes(try unsized.image(id), data)
        try unsized.close()
    }

    // MARK: Freshness

    /// Drive 5 misses a write; then its RAID 1 partner goes and drive 5 comes back. Its old
    /// copies must never be read: read-write is refused, read-only reads fail with EIO.
    func testStaleDriveWhosePartnerIsMissingIsNeverRead() throws {
        let drives = MemoryDrives(count: 8, sizeBytes: 64 << 20)
        try drives.format(raid: .raid1)
        var rng = TestRandom(seed: 31)
        var pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        let old = rng.bytes(8 << 20)
        try pool.write(id, at: 0, old)
        try pool.close()
        pool = try drives.open(missing: [5])
        let new = rng.bytes(8 << 20)
        try pool.write(id, at: 0, new)
        try pool.commit()
        try pool.close()
        // Drive 5's partner in the store that holds the disk.
        let rsds = pool.state.rsds
        let store = try XCTUnwrap((0..<rsds.highWater).first { rsds.isLive($0) && rsds.memberList($0).contains { $0.drive == 5 } })
        let members = rsds.memberList(store)
        let m = members.firstIndex { $0.drive == 5 }!
        let partner = members[m < 4 ? m + 4 : m - 4].drive

        XCTAssertThrowsError(try drives.open(missing: [partner])) { error in
            guard case .io(let message)? = error as? LunError else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("drives [5]") && message.contains("vm") && message.contains("[\(partner)]"), message)
        }
        let readOnly = try drives.open(missing: [partner], readOnly: true)
        XCTAssertThrowsError(try readOnly.image(id), "reads needing drive 5's old copies fail") {
            XCTAssertEqual(($0 as? LunError)?.errno, EIO)
        }
        try readOnly.close()
        // With every drive back, drive 5 is rebuilt and its stale bit clears.
        pool = try drives.open()
        XCTAssertEqual(pool.metadata.superblock.staleDrives, 0)
        assertSameBytes(try pool.image(id), new)
        try pool.close()
        let degraded = try drives.open(missing: [partner], readOnly: true)
        assertSameBytes(try degraded.image(id), new, "drive 5 rebuilt, its partner missing")
    }

    /// The stale mask lost (a superblock written without it): the identity's generation still
    /// says drive 5 missed writes, and it is rebuilt before anything reads it.
    func testGenerationMarksAReturningDriveStale() throws {
        let drives = MemoryDrives(count: 8, sizeBytes: 64 << 20)
        try drives.format(raid: .raid1)
        var rng = TestRandom(seed: 41)
        var pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        try pool.write(id, at: 0, rng.bytes(8 << 20))
        try pool.close()
        pool = try drives.open(missing: [5])
        let new = rng.bytes(8 << 20)
        try pool.write(id, at: 0, new)
        try pool.close()
        let rsds = pool.state.rsds
        let store = try XCTUnwrap((0..<rsds.highWater).first { rsds.isLive($0) && rsds.memberList($0).contains { $0.drive == 5 } })
        let members = rsds.memberList(store)
        let m = members.firstIndex { $0.drive == 5 }!
        let partner = members[m < 4 ? m + 4 : m - 4].drive
        // Clear the stale mask in every superblock copy on the mirrors.
        for d in 0..<3 {
            for offset in Superblock.slotOffsets {
                var block = [UInt8](repeating: 0, count: Superblock.blockSize)
                try block.withUnsafeMutableBytes { try drives.devices[d].read(into: $0, at: offset) }
                guard var sb = try? Superblock.decode(block) else { continue }
                sb.staleDrives = 0
                try sb.encode().withUnsafeBytes { try drives.devices[d].write($0, at: offset) }
            }
        }
        pool = try drives.open()
        XCTAssertTrue(pool.openNotes.contains { $0.contains("rebuilt") }, "\(pool.openNotes)")
        assertSameBytes(try pool.image(id), new)
        try pool.close()
        let degraded = try drives.open(missing: [partner], readOnly: true)
        assertSameBytes(try degraded.image(id), new, "drive 5 rebuilt, its partner missing")
    }

    /// A crash in the middle of the checkpoint that records a drive leaving service: the first
    /// mirror has the new superblock, the other two still the one before. Those two were in
    /// service all along (the new stale mask does not name them) and missed only their own
    /// superblock write: they are current, and only the drive that left is rebuilt. (Before,
    /// the generation rule took them for stale: a rebuild of good drives, and a pool refused
    /// read-write when one of them held the only copy of the gone drive's chunks.)
    func testMirrorsACrashCutFromADegradedCheckpointStayCurrent() throws {
        var set = SimulatedDriveSet(count: 8, sizeBytes: 64 << 20, seed: 51)
        try Pool.format(devices: set.devices, raid: .raid1)
        let pool = try Pool.open(devices: set.devices)
        XCTAssertEqual(pool.metadata.mirrors, [0, 1, 2])
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 52)
        let data = rng.bytes(8 << 20)
        try pool.write(id, at: 0, data)
        try pool.commit()
        let generationBefore = pool.metadata.superblock.generation

        // Drive 5 goes; the checkpoint that records it reaches mirror 0's superblock, and the
        // power goes out there: mirror 0 vanishes just after that write (the crash keeps it),
        // mirrors 1 and 2 never get theirs.
        set[5].disappear()
        let more = rng.bytes(1 << 20)
        try pool.write(id, at: 0, more)
        let superblockSlots = 0..<(Superblock.slotOffsets.last! + UInt64(Superblock.blockSize))
        for m in [1, 2] { set[m].failWrites(in: superblockSlots) }
        set[0].disappear(afterWrites: 2)   // the checkpoint copy, then the superblock
        XCTAssertThrowsError(try pool.commit())
        set.crash(seed: 53, tearing: .keepUnsynced)
        set.stopInjecting()
        set.drives.forEach { $0.clearRangeFaults() }
        func newest(_ drive: Int) throws -> Superblock {
            try XCTUnwrap(Superblock.slotOffsets.compactMap { try? Superblock.decode(set[drive].contents(at: $0, count: Superblock.blockSize)) }
                .max { $0.generation < $1.generation })
        }
        let cut = try newest(0)
        XCTAssertEqual(cut.generation, generationBefore + 1)
        XCTAssertEqual(cut.staleDrives, 1 << 5)
        XCTAssertEqual(cut.lastDegradedGeneration, cut.generation)
        XCTAssertEqual(try newest(1).generation, generationBefore)
        XCTAssertEqual(try newest(2).generation, generationBefore)

        let reopened = try Pool.open(devices: set.devices)
        XCTAssertEqual(reopened.rebuiltStaleDriveIndexes, [5], "\(reopened.openNotes)")
        XCTAssertEqual(reopened.staleDriveIndexes, [])
        assertSameBytes(try reopened.image(id), more + data[(1 << 20)...], "the checkpoint holds the last write")
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        try reopened.close()
    }

    // MARK: init and read-only opens

    func testCreateRefusesADriveOfAnotherPoolAndCleansUpAfterFailure() throws {
        let (dir, _, _) = try makeFilePool(drives: 2, raid: .raid1)
        let target = dir + "-new"
        directories.append(target)
        var options = PoolOptions()
        options.drivePaths = [drive(dir, 0), drive(dir, 1)]
        XCTAssertThrowsError(try Pool.create(directory: target, options: options)) { error in
            XCTAssertEqual((error as? LunError)?.errno, EEXIST, "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: target), "a failed create leaves nothing behind")
        // The old pool is untouched.
        try Pool.open(directory: dir).close()

        // A create that fails after making its drive files removes them: the next one works.
        var bad = PoolOptions()
        bad.driveCount = 2
        bad.driveSizeBytes = 64 << 20
        bad.raid = .raid5
        XCTAssertThrowsError(try Pool.create(directory: target, options: bad))
        XCTAssertFalse(FileManager.default.fileExists(atPath: target + "/drive-00.img"))
        bad.raid = .raid1
        try Pool.create(directory: target, options: bad).close()
    }

    func testReadOnlyOpenOfAnUncleanPoolWritesNothing() throws {
        let (dir, id, _) = try makeFilePool()
        do {
            let pool = try Pool.open(directory: dir)
            try pool.write(id, at: 4096, [UInt8](repeating: 9, count: 100_000))
            try pool.commit()
            // Dropped without close: the pool was not shut down cleanly.
        }
        let before = try (0..<5).map { try Data(contentsOf: URL(fileURLWithPath: drive(dir, $0))) }
        let pool = try Pool.open(directory: dir, readOnly: true)
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
        let after = try (0..<5).map { try Data(contentsOf: URL(fileURLWithPath: drive(dir, $0))) }
        XCTAssertTrue(before == after, "a read-only open and check change no byte of any drive")
    }
}

extension DriveIdentityTests {
    /// Every superblock copy on the metadata mirrors damaged, checkpoint and journal intact:
    /// a read-only open finds the superblock in another drive's identity and the check names
    /// the damage; a read-write open (check --repair) rewrites the superblocks.
    func testSuperblocksDamagedOnEveryMirrorAreRebuilt() throws {
        let (dir, id, data) = try makeFilePool()
        do {   // a journal record after the checkpoint, so that replay matters
            let pool = try Pool.open(directory: dir)
            try pool.write(id, at: 0, [UInt8](repeating: 0x5A, count: 4096))
            try pool.commit()
        }
        var expected = data
        expected.replaceSubrange(0..<4096, with: [UInt8](repeating: 0x5A, count: 4096))
        let junk = Data(repeating: 0xC3, count: 8192)
        for m in 0..<3 {
            let handle = try XCTUnwrap(FileHandle(forWritingAtPath: drive(dir, m)))
            try handle.write(contentsOf: junk)
            try handle.close()
        }
        let readOnly = try Pool.open(directory: dir, readOnly: true)
        assertSameBytes(try readOnly.image(id), expected, "read-only, from the identity copy")
        let report = try PoolChecker(pool: readOnly).run()
        XCTAssertTrue(report.problems.contains { $0.contains("superblock") }, "\(report.problems)")
        try readOnly.close()
        let repaired = try Pool.open(directory: dir)
        XCTAssertTrue(repaired.repairs.contains { $0.contains("superblock") }, "\(repaired.repairs)")
        XCTAssertTrue(repaired.driveStates().allSatisfy(\.available), "the mirrors' data is current: nothing to rebuild")
        assertSameBytes(try repaired.image(id), expected)
        try repaired.close()
        let again = try Pool.open(directory: dir, readOnly: true)
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [])
        XCTAssertFalse(again.openNotes.contains { $0.contains("superblock") }, "\(again.openNotes)")
    }
}

extension DriveIdentityTests {
    /// A blank drive in a RAID 0 pool: its chunks cannot be rebuilt, so it stays out of service
    /// and stale, across checkpoints and opens; reads of the data it held fail with EIO, never
    /// return its zeros.
    func testUnrebuildableReplacementStaysOutOfServiceAndStale() throws {
        let drives = MemoryDrives(count: 4, sizeBytes: 64 << 20)
        try drives.format(raid: .raid0)
        var pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 51)
        try pool.write(id, at: 0, rng.bytes(4 << 20))
        try pool.close()
        var devices: [BlockDevice?] = drives.devices
        devices[3] = MemoryDevice(name: "blank", sizeBytes: 64 << 20)
        for round in 0..<2 {
            pool = try Pool.open(devices: devices)
            XCTAssertFalse(pool.driveStates()[3].available, "round \(round)")
            XCTAssertThrowsError(try pool.image(id), "round \(round)") { XCTAssertEqual(($0 as? LunError)?.errno, EIO) }
            try pool.commit()
            try pool.close()
            XCTAssertNotEqual(pool.metadata.superblock.staleDrives & (1 << 3), 0, "round \(round): the stale bit stays")
        }
    }
}

extension DriveIdentityTests {
    /// A pool of two drives (both metadata mirrors) with every superblock copy damaged and
    /// its checkpoint and journal intact: a plain open refuses it, a repair open rebuilds the
    /// superblocks from the checkpoint and replays the journal.
    func testSuperblocksDamagedOnEveryDriveAreRebuiltByRepair() throws {
        let (dir, id, data) = try makeFilePool(drives: 2, raid: .raid1)
        do {   // journal records after the checkpoint, and no clean close
            let pool = try Pool.open(directory: dir)
            try pool.write(id, at: 8192, [UInt8](repeating: 0x6B, count: 4096))
            try pool.commit()
        }
        var expected = data
        expected.replaceSubrange(8192..<12288, with: [UInt8](repeating: 0x6B, count: 4096))
        let junk = Data(repeating: 0x3C, count: 8192)
        for m in 0..<2 {
            let handle = try XCTUnwrap(FileHandle(forWritingAtPath: drive(dir, m)))
            try handle.write(contentsOf: junk)
            try handle.close()
        }
        XCTAssertThrowsError(try Pool.open(directory: dir)) { error in
            guard case .corrupt(let message)? = error as? LunError else { return XCTFail("\(error)") }
            XCTAssertTrue(message.contains("--repair"), message)
        }
        let repaired = try Pool.open(directory: dir, repair: true)
        XCTAssertTrue(repaired.repairs.contains { $0.contains("rebuilt one from the checkpoint") }, "\(repaired.repairs)")
        assertSameBytes(try repaired.image(id), expected)
        try repaired.close()
        let again = try Pool.open(directory: dir, readOnly: true)
        assertSameBytes(try again.image(id), expected)
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [])
    }
}

extension DriveIdentityTests {
    /// A copy of drive 1 in slot 3: the indexes are no permutation, so the drive that says it
    /// is another one is treated as missing, and the data reads right from redundancy.
    func testMisplacedDriveThatIsNoPermutationIsMissing() throws {
        let (dir, id, data) = try makeFilePool()
        XCTAssertEqual(unlink(drive(dir, 3)), 0)
        try FileManager.default.copyItem(atPath: drive(dir, 1), toPath: drive(dir, 3))
        let pool = try Pool.open(directory: dir)
        XCTAssertTrue(pool.openNotes.contains { $0.contains("says it is drive 1") }, "\(pool.openNotes)")
        XCTAssertFalse(pool.driveStates()[3].available)
        assertSameBytes(try pool.image(id), data)
        try pool.close()
    }
}
