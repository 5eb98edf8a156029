// Snapclones through the mounted tree: `user.lunfs.kind` makes a snapshot a snapclone, the
// daemon copies it in the background while its disk is written, it ends independent with its
// bytes, moves to the root with mv, and turns back into a snapshot on request; rmdir deletes a
// snapshot with nothing below it; `lunfs clone --wait` follows a copy to the end.
import Foundation
import XCTest

final class SnapcloneMountTests: MountTestCase {
    private func waitForKind(_ dir: String, _ kind: String, seconds: Double = 60) throws {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while try getAttribute(dir, "user.lunfs.kind") != kind {
            guard Date() < deadline else { return XCTFail("\(dir) is not \(kind) after \(seconds) s: \(pool.logTail())") }
            usleep(50_000)
        }
    }

    /// Disk vm holding `bytes`, and its snapshot vm/monday.
    private func makeDiskWithSnapshot(_ bytes: [UInt8]) throws {
        try makeDirectory(pool.path("vm"))
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        defer { close(fd) }
        try writeAll(fd, bytes, at: 0)
        try makeDirectory(pool.path("vm/monday"))
    }

    func testSnapcloneCopiesWhileItsDiskIsWrittenThenMovesToTheRoot() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let original = random.bytes(48 << 20)
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        var open = true
        defer { if open { close(fd) } }
        try writeAll(fd, original, at: 0)
        try makeDirectory(pool.path("vm/monday"))
        XCTAssertEqual(try getAttribute(pool.path("vm/monday"), "user.lunfs.kind"), "snapshot")
        XCTAssertEqual(try getAttribute(pool.path("vm"), "user.lunfs.kind"), "disk")
        XCTAssertEqual(errnoOf { try setAttribute(pool.path("vm"), "user.lunfs.kind", "snapclone") }, EINVAL, "vm reads no other disk")
        XCTAssertEqual(errnoOf { try setAttribute(pool.path("vm/monday"), "user.lunfs.kind", "clone") }, EINVAL)

        try setAttribute(pool.path("vm/monday"), "user.lunfs.kind", "snapclone")
        let kind = try getAttribute(pool.path("vm/monday"), "user.lunfs.kind")
        XCTAssertTrue(kind == "snapclone" || kind == "independent", kind)
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("vm/monday/early")) }, kind == "snapclone" ? EBUSY : 0)
        // The disk is written while the copy runs; the clone must keep the old bytes.
        var live = original
        for _ in 0..<40 {
            let size = [4096, 300_000, 1 << 20][Int(random.next() % 3)]
            let offset = Int(random.next() % UInt64(live.count - size))
            let bytes = random.bytes(size)
            try writeAll(fd, bytes, at: offset)
            live.replaceSubrange(offset..<offset + size, with: bytes)
        }
        XCTAssertEqual(try readWholeFile(pool.path("vm/monday/disk.img")), original, "the clone reads its bytes while it copies")
        try waitForKind(pool.path("vm/monday"), "independent")
        XCTAssertEqual(try getAttribute(pool.path("vm/monday"), "user.lunfs.copy_progress"), "48/48")
        XCTAssertThrowsError(try getAttribute(pool.path("vm/monday"), "user.lunfs.successor"), "out of the chain")
        XCTAssertEqual(try readWholeFile(pool.path("vm/monday/disk.img")), original)
        XCTAssertEqual(try readWholeFile(pool.path("vm/disk.img")), live)
        close(fd)
        open = false

        // Only an independent disk moves, and only to the root.
        try makeDirectory(pool.path("vm/tuesday"))
        XCTAssertEqual(errnoOf { try check(rename(pool.path("vm/tuesday"), pool.path("tuesday"))) }, EPERM)
        try check(rename(pool.path("vm/monday"), pool.path("monday-vm")))
        XCTAssertEqual(try getAttribute(pool.path("monday-vm"), "user.lunfs.kind"), "disk")
        XCTAssertEqual(try readWholeFile(pool.path("monday-vm/disk.img")), original)
        let clone = try openFile(pool.path("monday-vm/disk.img"), O_RDWR)
        try writeAll(clone, [1, 2, 3], at: 0)
        close(clone)
        XCTAssertEqual(try readWholeFile(pool.path("vm/disk.img")), live, "writing the clone changes nobody else")
        XCTAssertEqual(try readWholeFile(pool.path("vm/tuesday/disk.img")), live)
        try pool.remount()
        XCTAssertEqual(Array(try readWholeFile(pool.path("monday-vm/disk.img")).prefix(4)), [1, 2, 3, original[3]])
        XCTAssertNil(pool.unmountAndCheck())
    }

    func testSnapcloneTurnsBackIntoASnapshot() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let original = random.bytes(8 << 20)
        try makeDiskWithSnapshot(original)
        try setAttribute(pool.path("vm/monday"), "user.lunfs.kind", "snapclone")
        try setAttribute(pool.path("vm/monday"), "user.lunfs.kind", "snapshot")
        let kind = try getAttribute(pool.path("vm/monday"), "user.lunfs.kind")
        XCTAssertTrue(kind == "snapshot" || kind == "independent", "turned back, unless the copy was already done: \(kind)")
        XCTAssertEqual(try readWholeFile(pool.path("vm/monday/disk.img")), original)
        XCTAssertNil(pool.unmountAndCheck())
    }

    func testRmdirDeletesASnapshotWithNothingBelowIt() throws {
        try makeDirectory(pool.path("vm"))
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        try writeAll(fd, [UInt8](repeating: 7, count: 1 << 20), at: 0)
        close(fd)
        try makeDirectory(pool.path("vm/monday"))
        try makeDirectory(pool.path("vm/monday/early"))
        XCTAssertEqual(errnoOf { try check(rmdir(pool.path("vm/monday"))) }, ENOTEMPTY, "a snapshot below it")
        let held = try openFile(pool.path("vm/monday/early/disk.img"), O_RDONLY)
        XCTAssertEqual(errnoOf { try check(rmdir(pool.path("vm/monday/early"))) }, EBUSY, "its image is open")
        close(held)
        try check(rmdir(pool.path("vm/monday/early")))
        try check(rmdir(pool.path("vm/monday")))
        XCTAssertEqual(errnoOf { try check(rmdir(pool.path("vm"))) }, ENOTEMPTY, "a disk at the root keeps POSIX's rule")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm")), ["disk.img"])
        XCTAssertNil(pool.unmountAndCheck())
    }

    func testCloneCommandWaitsUntilIndependent() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let original = random.bytes(24 << 20)
        try makeDiskWithSnapshot(original)
        let result = try pool.lunfs(["clone", pool.path("vm/monday"), "--wait"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("independent"), result.output)
        XCTAssertEqual(try getAttribute(pool.path("vm/monday"), "user.lunfs.kind"), "independent")
        XCTAssertEqual(try readWholeFile(pool.path("vm/monday/disk.img")), original)
        XCTAssertNotEqual(try pool.lunfs(["clone", pool.path("vm")]).status, 0, "vm is a disk, not a snapshot")
        XCTAssertNil(pool.unmountAndCheck())
    }
}
