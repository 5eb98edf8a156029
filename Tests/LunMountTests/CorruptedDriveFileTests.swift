// Bytes flipped in the drive files of an unmounted pool, as a failing disk or a stray write
// would: through the mount every image of a RAID 1 and a RAID 5 disk still reads back exact
// (the damaged blocks are repaired from the partner or the parity), `check --scrub` names what
// reads did not touch, `check --scrub --repair` fixes it; a RAID 0 disk answers EIO, never
// wrong bytes.
import Foundation
import XCTest
import LunEngineTesting

final class CorruptedDriveFileTests: MountTestCase {
    override var driveSize: String { "64M" }

    private func drivePath(_ i: Int) -> String { pool.poolPath + String(format: "/drive-%02d.img", i) }

    /// Writes a disk of `level` through the mount; returns its bytes.
    private func writeDisk(_ name: String, level: Int, size: Int, _ rng: inout SeededRandom) throws -> [UInt8] {
        try makeDirectory(pool.path(name))
        try setAttribute(pool.path(name), "user.lunfs.raid", String(level))
        let bytes = rng.bytes(size)
        let fd = try openFile(pool.path(name + "/disk.img"), O_WRONLY)
        try writeAll(fd, bytes, at: 0)
        try check(fsync(fd))
        close(fd)
        return bytes
    }

    /// Flips `count` bytes in distinct 4 KiB blocks at random non-zero places (written data) of
    /// the data area of one drive file: a redundant store keeps its members on distinct drives,
    /// so each damaged block keeps a good copy.
    private func flipBytes(_ count: Int, onDrive d: Int, _ rng: inout SeededRandom) throws -> Int {
        var flipped = Set<Int>()
        var tries = 0
        while flipped.count < count && tries < 20_000 {
            tries += 1
            let fd = try openFile(drivePath(d), O_RDWR)
            defer { close(fd) }
            // Quorum space is the first 8 MiB of a 64 MiB drive; data follows.
            let offset = (8 << 20) + Int(rng.below(16 << 20))
            var byte: UInt8 = 0
            guard !flipped.contains(offset / 4096), pread(fd, &byte, 1, off_t(offset)) == 1, byte != 0 else { continue }
            byte ^= UInt8(1 + rng.below(255))
            XCTAssertEqual(pwrite(fd, &byte, 1, off_t(offset)), 1)
            flipped.insert(offset / 4096)
        }
        return flipped.count
    }

    func testFlippedBytesUnderRAID1AndRAID5ReadBackExactAndScrubRepairs() throws {
        var rng = SeededRandom(seed: newSeed("testFlippedBytesUnderRAID1AndRAID5ReadBackExactAndScrubRepairs"))
        let images = ["mirror/disk.img": try writeDisk("mirror", level: 1, size: 5 << 20, &rng),
                      "parity/disk.img": try writeDisk("parity", level: 5, size: 7 << 20 + 4321, &rng)]
        try pool.unmount()
        XCTAssertEqual(try flipBytes(40, onDrive: 2, &rng), 40)
        try pool.mount()
        for (path, bytes) in images {
            let read = try readWholeFile(pool.path(path))
            XCTAssertTrue(read.count == bytes.count && sameBytes(read[...], bytes[...]), "\(path) with flipped bytes on its drives")
        }
        XCTAssertTrue(pool.logTail().contains("repaired"), "reads log their repairs: \(pool.logTail())")
        try pool.unmount()
        // What reads did not touch (mirror copies, parity) the scrub finds, names and repairs.
        let found = try pool.lunfs(["check", "--scrub", pool.poolPath])
        let repaired = try pool.lunfs(["check", "--scrub", "--repair", pool.poolPath])
        XCTAssertEqual(repaired.status, 0, repaired.output + repaired.errorOutput)
        if found.status != 0 {
            XCTAssertTrue(found.output.contains("disk mirror") || found.output.contains("disk parity"), found.output)
            XCTAssertTrue(repaired.output.contains("repaired"), repaired.output)
        }
        let clean = try pool.lunfs(["check", "--scrub", pool.poolPath])
        XCTAssertEqual(clean.status, 0, clean.output)
        XCTAssertTrue(clean.output.contains("0 damaged"), clean.output)
        try pool.mount()
        for (path, bytes) in images {
            let read = try readWholeFile(pool.path(path))
            XCTAssertTrue(read.count == bytes.count && sameBytes(read[...], bytes[...]), "\(path) after the repair")
        }
    }

    /// A mounted pool scrubs on request (`user.lunfs.scrub` on the root) while it serves I/O.
    func testScrubOfAMountedPoolRepairsOnRequest() throws {
        var rng = SeededRandom(seed: newSeed("testScrubOfAMountedPoolRepairsOnRequest"))
        let bytes = try writeDisk("vm", level: 1, size: 6 << 20, &rng)
        XCTAssertEqual(try getAttribute(pool.mountpoint, "user.lunfs.scrub"), "no scrub has run during this mount")
        XCTAssertEqual(try flipBytes(12, onDrive: 3, &rng), 12)
        try setAttribute(pool.mountpoint, "user.lunfs.scrub", "repair")
        let repaired = try getAttribute(pool.mountpoint, "user.lunfs.scrub", capacity: 1 << 16)
        XCTAssertTrue(repaired.contains("12 damaged, 12 repaired, 0 without a good copy"), repaired)
        XCTAssertTrue(repaired.contains("disk vm"), repaired)
        try setAttribute(pool.mountpoint, "user.lunfs.scrub", "check")
        XCTAssertTrue(try getAttribute(pool.mountpoint, "user.lunfs.scrub").contains(" 0 damaged"))
        XCTAssertEqual(errnoOf { try setAttribute(pool.mountpoint, "user.lunfs.scrub", "now") }, EINVAL)
        let read = try readWholeFile(pool.path("vm/disk.img"))
        XCTAssertTrue(sameBytes(read[...], bytes[...]))
    }

    func testFlippedByteUnderRAID0IsEIO() throws {
        var rng = SeededRandom(seed: newSeed("testFlippedByteUnderRAID0IsEIO"))
        let bytes = try writeDisk("stripe", level: 0, size: 4 << 20, &rng)
        try pool.unmount()
        // One byte on the first drive that holds some of the disk (a RAID 0 store spans 4 of the 5).
        var flipped = 0
        for d in 0..<driveCount where flipped == 0 { flipped = try flipBytes(1, onDrive: d, &rng) }
        XCTAssertEqual(flipped, 1)
        try pool.mount()
        let fd = try openFile(pool.path("stripe/disk.img"), O_RDONLY)
        defer { close(fd) }
        var failed = 0
        var buffer = [UInt8](repeating: 0, count: 4096)
        for offset in stride(from: 0, to: bytes.count, by: buffer.count) {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
            if n < 0 {
                XCTAssertEqual(errno, EIO)
                failed += 1
            } else {
                XCTAssertEqual(Array(buffer[0..<n]), Array(bytes[offset..<offset + n]), "RAID 0 returned wrong bytes at \(offset)")
            }
        }
        XCTAssertEqual(failed, 1, "exactly the damaged page fails")
        pool.checksAfterTest = false   // the damage has no good copy, by design
    }
}
