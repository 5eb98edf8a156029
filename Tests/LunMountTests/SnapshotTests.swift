// Snapshots as the tree shows them: mkdir inside a disk's directory freezes its bytes, the live
// image moves on, and the sharing chain shows in the xattrs.
import Foundation
import XCTest

final class SnapshotTests: MountTestCase {
    func testSnapshotKeepsBytesWhileLiveDiskChanges() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let live = pool.path("vm/disk.img")
        let original = random.bytes(6 << 20 + 12345)
        var fd = try openFile(live, O_RDWR)
        defer { if fd >= 0 { close(fd) } }
        try writeAll(fd, original, at: 0)

        try makeDirectory(pool.path("vm/monday"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm/monday")), ["disk.img"])

        // Overwrite parts of the live disk, including a partial segment, and grow it.
        var changed = original
        for (offset, size) in [(0, 4096), (1 << 20 + 17, 300_000), (5 << 20, 1 << 20)] {
            let bytes = random.bytes(size)
            try writeAll(fd, bytes, at: offset)
            changed.replaceSubrange(offset..<offset + size, with: bytes)
        }
        let tail = random.bytes(1 << 20)
        try writeAll(fd, tail, at: changed.count)
        changed += tail

        XCTAssertEqual(try readWholeFile(pool.path("vm/monday/disk.img")), original, "the snapshot must keep the old bytes")
        XCTAssertEqual(try readWholeFile(live), changed)

        // A snapshot of the snapshot, then the chain as xattrs.
        try makeDirectory(pool.path("vm/monday/early"))
        XCTAssertEqual(try readWholeFile(pool.path("vm/monday/early/disk.img")), original)
        XCTAssertEqual(try getAttribute(pool.path("vm"), "user.lunfs.predecessor"), "vm/monday")
        XCTAssertEqual(try getAttribute(pool.path("vm/monday"), "user.lunfs.successor"), "vm")

        // rm -r of the whole disk removes snapshots too, once nothing holds the image open.
        XCTAssertNotEqual(try runProgram("rm", ["-r", pool.path("vm")]).status, 0, "the live image is still open")
        close(fd)
        fd = -1
        XCTAssertEqual(try runProgram("rm", ["-r", pool.path("vm")]).status, 0, pool.logTail())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint), [])
    }

    func testHollowDirectoryKeepsSnapshots() throws {
        try makeDirectory(pool.path("vm"))
        let bytes = [UInt8](repeating: 9, count: 3 << 20)
        let fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, bytes, at: 0)
        close(fd)
        try makeDirectory(pool.path("vm/snap"))
        try check(unlink(pool.path("vm/disk.img")))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm")), ["snap"])
        XCTAssertEqual(try readWholeFile(pool.path("vm/snap/disk.img")), bytes)
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("vm/disk.img"), O_CREAT | O_WRONLY) }, EPERM, "a hollow directory gets no new image")
        XCTAssertEqual(errnoOf { try check(rmdir(pool.path("vm"))) }, ENOTEMPTY)
    }
}
