// Snapshots on separate storage (issue 16 item 2) through the mounted tree and NBD: `lunfs
// snapshot --to` makes DIR/NAME readable at once with the disk's bytes of that instant while
// the disk is written; its own writes read back through the tree and over NBD (nbdcopy,
// qemu-img compare); when the copy is done the file alone equals the snapshot; bad requests
// get their errno and change nothing; and a kill -9 in the middle of the copy resumes after
// the remount with every byte intact.
import Foundation
import XCTest

final class ExternalSnapshotMountTests: MountTestCase {
    var port: UInt16 = 0

    override func setUpWithError() throws {
        try requireFUSE()
        try requireNBDClients()
        port = try freeLocalPort()
        pool = try MountedPool(drives: 5, driveSize: "512M", mountArguments: ["--nbd", "127.0.0.1:\(port)"])
    }

    var externalDirectory: String { pool.root.appendingPathComponent("ext").path }

    func uri(_ export: String) -> String { "nbd://127.0.0.1:\(port)/\(export)" }

    @discardableResult
    func client(_ program: String, _ arguments: [String]) throws -> String {
        let result = try runProgram(program, arguments)
        guard result.status == 0 else {
            throw FixtureError("\(program) \(arguments.joined(separator: " ")) exited \(result.status): \(result.errorOutput)\(result.output)\(pool.logTail())")
        }
        return result.output
    }

    /// Disk `name` of `size` bytes filled with random bytes (a hole left in the middle).
    func makeDisk(_ name: String, size: Int, random: inout SeededGenerator) throws -> [UInt8] {
        try makeDirectory(pool.path(name))
        let fd = try openFile(pool.path(name + "/disk.img"), O_RDWR)
        defer { close(fd) }
        try check(ftruncate(fd, off_t(size)))
        var image = random.bytes(size)
        image.replaceSubrange(size / 2..<size / 2 + (3 << 20), with: [UInt8](repeating: 0, count: 3 << 20))
        try writeAll(fd, Array(image[0..<size / 2]), at: 0)
        try writeAll(fd, Array(image[size / 2 + (3 << 20)..<size]), at: size / 2 + (3 << 20))
        try check(fsync(fd))
        return image
    }

    func writeFile(_ path: String, _ bytes: [UInt8], at offset: Int) throws {
        let fd = try openFile(path, O_RDWR)
        defer { close(fd) }
        try writeAll(fd, bytes, at: offset)
        try check(fsync(fd))
    }

    /// Polls until the snapshot says `independent`; fails after `seconds`.
    func waitIndependent(_ relative: String, seconds: Double = 120) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while try getAttribute(pool.path(relative), "user.lunfs.kind") != "independent" {
            guard Date() < deadline else { throw FixtureError("\(relative) still copying after \(seconds) s: \(try getAttribute(pool.path(relative), "user.lunfs.copy_progress"))") }
            usleep(100_000)
        }
    }

    func testSnapshotToFileReadsItsInstantThroughTreeAndNBD() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try FileManager.default.createDirectory(atPath: externalDirectory, withIntermediateDirectories: true)
        let size = 40 << 20
        var image = try makeDisk("vm", size: size, random: &random)
        let file = externalDirectory + "/monday.img"
        let made = try pool.lunfs(["snapshot", "--to", file, pool.path("vm"), "monday"])
        XCTAssertEqual(made.status, 0, made.errorOutput)
        var snapshot = image
        // Readable at once, and the disk's later writes do not reach it.
        assertSameBytes(try readWholeFile(pool.path("vm/monday/disk.img")), snapshot, "VSS at once")
        for _ in 0..<20 {
            let len = [4096, 100_000, 1 << 20][Int(random.next() % 3)]
            let off = Int(random.next() % UInt64(size - len))
            let bytes = random.bytes(len)
            try writeFile(pool.path("vm/disk.img"), bytes, at: off)
            image.replaceSubrange(off..<off + len, with: bytes)
        }
        // Its own writes, partial blocks included.
        for (off, len) in [(5, 700), (70_000, 200_000), (size - 4096, 4096)] {
            let bytes = random.bytes(len)
            try writeFile(pool.path("vm/monday/disk.img"), bytes, at: off)
            snapshot.replaceSubrange(off..<off + len, with: bytes)
        }
        assertSameBytes(try readWholeFile(pool.path("vm/monday/disk.img")), snapshot, "VSS through the tree")
        assertSameBytes(try readWholeFile(pool.path("vm/disk.img")), image, "V through the tree")
        XCTAssertEqual(try getAttribute(pool.path("vm/monday"), "user.lunfs.external_file"), file)
        // All of its bytes are its own (in its file): st_blocks says so, never "all hole".
        var st = stat()
        try check(stat(pool.path("vm/monday/disk.img"), &st))
        XCTAssertEqual(Int(st.st_blocks) * 512, size)
        // Over NBD, as any snapshot: nbdcopy and qemu-img compare against the expected bytes.
        let expected = pool.root.appendingPathComponent("expected.img").path
        XCTAssertTrue(FileManager.default.createFile(atPath: expected, contents: Data(snapshot)))
        let copied = pool.root.appendingPathComponent("copied.img").path
        try client("nbdcopy", [uri("vm/monday"), copied])
        assertSameBytes(try readWholeFile(copied), snapshot, "nbdcopy of the VSS")
        try client("qemu-img", ["compare", "-f", "raw", "-F", "raw", expected, uri("vm/monday")])
        // The copy finishes: the file alone is the snapshot (qemu-img reads it without lunfs).
        try waitIndependent("vm/monday")
        let progress = try getAttribute(pool.path("vm/monday"), "user.lunfs.copy_progress").split(separator: "/")
        XCTAssertEqual(progress.first, progress.last)
        try client("qemu-img", ["compare", "-f", "raw", "-F", "raw", expected, file])
        let status = try pool.lunfs(["status", pool.poolPath])
        XCTAssertTrue(status.output.contains("independent  " + file), status.output)
        // After a remount it is still there, still independent, still the same bytes.
        try pool.remount()
        XCTAssertEqual(try getAttribute(pool.path("vm/monday"), "user.lunfs.kind"), "independent")
        assertSameBytes(try readWholeFile(pool.path("vm/monday/disk.img")), snapshot, "VSS after remount")
        // rmdir forgets it; the complete file stays, its map goes.
        try check(rmdir(pool.path("vm/monday")))
        XCTAssertFalse(FileManager.default.fileExists(atPath: file + ".lunfs-valid"))
        assertSameBytes(try readWholeFile(file), snapshot, "the file after rmdir")
    }

    func testBadRequestsGetTheirErrnoAndChangeNothing() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try FileManager.default.createDirectory(atPath: externalDirectory, withIntermediateDirectories: true)
        _ = try makeDisk("vm", size: 8 << 20, random: &random)
        let name = "user.lunfs.snapshot_to"
        let taken = externalDirectory + "/taken.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: taken, contents: Data([1, 2, 3])))
        let cases: [(String, Int32)] = [
            ("no-equals-sign", EINVAL),
            ("x=relative/path.img", EINVAL),
            ("x=\(pool.path("vm"))/inside.img", EINVAL),
            ("x=/nonexistent-dir-vss/a.img", ENOENT),
            ("x=\(taken)", EEXIST),
            ("disk.img=\(externalDirectory)/a.img", EINVAL),
        ]
        for (value, expected) in cases {
            XCTAssertEqual(errnoOf { try setAttribute(pool.path("vm"), name, value) }, expected, value)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm")).sorted(), ["disk.img"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: externalDirectory), ["taken.img"])
        try setAttribute(pool.path("vm"), name, "monday=\(externalDirectory)/monday.img")
        XCTAssertEqual(errnoOf { try setAttribute(pool.path("vm"), name, "monday=\(externalDirectory)/other.img") }, EEXIST)
        XCTAssertEqual(errnoOf { try setAttribute(pool.path("vm/monday"), name, "y=\(externalDirectory)/y.img") }, EPERM)
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("vm/monday/snap")) }, EPERM)
        XCTAssertEqual(errnoOf { try check(truncate(pool.path("vm/monday/disk.img"), 4096)) }, EPERM)
        let usage = try pool.lunfs(["snapshot", "--to", externalDirectory + "/z.img", pool.path("vm")])
        XCTAssertEqual(usage.status, 2)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: externalDirectory).sorted(),
                       ["monday.img", "monday.img.lunfs-valid", "taken.img"])
        // The source keeps its image while the copy needs it (or the copy is done already).
        let deleted = unlink(pool.path("vm/disk.img")) == 0 ? 0 : errno
        if deleted != 0 { XCTAssertEqual(deleted, EBUSY) } else { XCTAssertEqual(try getAttribute(pool.path("vm/monday"), "user.lunfs.kind"), "independent") }
    }

    func testKillNineDuringTheCopyResumes() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try FileManager.default.createDirectory(atPath: externalDirectory, withIntermediateDirectories: true)
        let size = 384 << 20
        let image = try makeDisk("vm", size: size, random: &random)
        let file = externalDirectory + "/big.img"
        try setAttribute(pool.path("vm"), "user.lunfs.snapshot_to", "big=\(file)")
        // Kill the daemon once part of the copy is done.
        var before = 0
        let deadline = Date().addingTimeInterval(60)
        while before == 0 {
            let p = try getAttribute(pool.path("vm/big"), "user.lunfs.copy_progress").split(separator: "/").compactMap { Int($0) }
            if p[0] > 0 {
                XCTAssertLessThan(p[0], p[1], "the copy finished before the kill; the test needs a larger disk")
                before = p[0]
            }
            guard Date() < deadline else { throw FixtureError("the copy never started") }
            usleep(20_000)
        }
        let pidText = try String(contentsOfFile: pool.poolPath + "/lunfs.pid", encoding: .utf8)
        let pid = pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines))!
        kill(pid, SIGKILL)
        while kill(pid, 0) == 0 { usleep(10_000) }
        _ = try runProgram("fusermount3", ["-u", "-z", pool.mountpoint])
        try pool.mount()
        let after = try getAttribute(pool.path("vm/big"), "user.lunfs.copy_progress").split(separator: "/").compactMap { Int($0) }
        XCTAssertGreaterThanOrEqual(after[0], before, "blocks copied before the kill are still valid")
        // The disk moves on while the copy resumes; the snapshot keeps its instant.
        try writeFile(pool.path("vm/disk.img"), random.bytes(8 << 20), at: 100 << 20)
        assertSameBytes(try readWholeFile(pool.path("vm/big/disk.img")), image, "VSS after kill -9")
        try waitIndependent("vm/big")
        assertSameBytes(try readWholeFile(file), image, "the file alone after the resumed copy")
        print("ExternalSnapshotMountTests: killed at \(before)/\(after[1]) blocks, \(after[0]) valid after the remount")
    }
}

/// Byte equality that names the first difference instead of printing megabytes.
private func assertSameBytes(_ actual: [UInt8], _ expected: [UInt8], _ message: String, file: StaticString = #filePath, line: UInt = #line) {
    if actual == expected { return }
    let first = (0..<min(actual.count, expected.count)).first { actual[$0] != expected[$0] }
    XCTFail("\(message): sizes \(actual.count) and \(expected.count), first difference at \(first.map(String.init) ?? "the end")", file: file, line: line)
}
