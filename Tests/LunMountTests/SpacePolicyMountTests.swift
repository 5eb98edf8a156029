// The space policy through the mount (issue 15 item 4): `user.lunfs.on_full` and
// `user.lunfs.expendable` as attributes, a small pool filled through disk.img with snapshots
// in the way: writes go on while expendable snapshots remain (the oldest goes first, the
// directory disappears, the log and `lunfs status` say so), a snapshot that is not expendable
// keeps its bytes, and ENOSPC comes back once only it is left.
import Foundation
import XCTest
import LunEngineTesting

final class SpacePolicyMountTests: MountTestCase {
    override var driveSize: String { "32M" }
    let segment = 1 << 20

    func freeBytes() throws -> Int {
        let numbers = try statistics(pool.mountpoint)
        return Int(numbers.f_bavail) * Int(numbers.f_frsize)
    }

    func testWritesDropExpendableSnapshotsOldestFirst() throws {
        var rng = SeededRandom(seed: newSeed("testWritesDropExpendableSnapshotsOldestFirst"))
        try makeDirectory(pool.path("vm"))
        let vm = pool.path("vm")
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.on_full"), "fail")
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.lunfs.on_full", "sometimes") }, EINVAL)
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.lunfs.expendable", "1") }, EPERM, "a disk at the root is not a snapshot")
        let n = try freeBytes() / 6 / segment * segment
        XCTAssertGreaterThan(n, 4 * segment)
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        defer { close(fd) }
        var image = rng.bytes(n)
        try writeAll(fd, image, at: 0)
        try check(fsync(fd))
        // old (expendable), keep, young (expendable); each followed by a rewrite of vm.
        var kept: [UInt8] = []
        for (name, expendable) in [("old", true), ("keep", false), ("young", true)] {
            try makeDirectory(pool.path("vm/\(name)"))
            if expendable { try setAttribute(pool.path("vm/\(name)"), "user.lunfs.expendable", "1") }
            if name == "keep" { kept = image }
            image = rng.bytes(n)
            try writeAll(fd, image, at: 0)
            try check(fsync(fd))
        }
        XCTAssertEqual(try getAttribute(pool.path("vm/old"), "user.lunfs.expendable"), "1")
        XCTAssertEqual(try getAttribute(pool.path("vm/keep"), "user.lunfs.expendable"), "0")
        try setAttribute(vm, "user.lunfs.on_full", "drop-snapshots")
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.on_full"), "drop-snapshots")

        // More than the free space plus one snapshot's worth: both expendable snapshots go.
        let more = rng.bytes(try freeBytes() + n + n / 2)
        try writeAll(fd, more, at: n)
        XCTAssertEqual(fsync(fd), 0, "the writes fit once the expendable snapshots are gone: \(String(cString: strerror(errno)))")
        image += more
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: vm).sorted(), ["changes.img", "disk.img", "keep"])
        XCTAssertEqual(try readWholeFile(pool.path("vm/keep/disk.img")), kept, "the snapshot that is not expendable keeps its bytes")
        var st = stat()
        let deadline = Date().addingTimeInterval(3)
        while stat(pool.path("vm/old"), &st) == 0 && Date() < deadline { usleep(20_000) }
        XCTAssertEqual(errnoOf { try check(stat(pool.path("vm/old"), &st)) }, ENOENT, "a dropped snapshot's directory is gone")
        XCTAssertEqual(try readBytes(fd, count: image.count, at: 0), image)
        let log = try String(contentsOfFile: pool.poolPath + "/lunfs.log", encoding: .utf8)
        let drops = log.split(separator: "\n").filter { $0.contains("space policy:") }
        XCTAssertEqual(drops.count, 2, log)
        XCTAssertTrue(drops.first?.contains("vm/old") == true, "the oldest went first: \(drops)")
        let status = try pool.lunfs(["status", pool.poolPath])
        XCTAssertTrue(status.output.contains("snapshots dropped for space since the pool was opened: 2"), status.output)
        XCTAssertTrue(status.output.contains("on_full drop-snapshots"), status.output)

        // Only keep is left: a write past the free space fails (at fsync, with the writeback
        // cache; at write(2) without it) and keep is still there.
        let tooMuch = rng.bytes(try freeBytes() + 2 * segment)
        var failedWith: Int32 = 0
        do { try writeAll(fd, tooMuch, at: image.count) } catch let error as SystemError { failedWith = error.code }
        if failedWith == 0 && fsync(fd) != 0 { failedWith = errno }
        XCTAssertEqual(failedWith, ENOSPC)
        XCTAssertEqual(try readWholeFile(pool.path("vm/keep/disk.img")), kept)
        XCTAssertEqual(try readBytes(fd, count: image.count, at: 0), image, "what fitted before is intact")
    }
}
