// Snapclones through the mounted tree: `user.lunfs.kind` makes a snapshot a snapclone, the
// daemon copies it in the background while its disk is written, it ends independent with its
// bytes, moves to the root with mv, and turns back into a snapshot on request; rmdir deletes a
// snapshot with nothing below it; `lunfs clone --wait` follows a copy to the end; an ext4 on
// a loop device is cloned while fio writes to it, and the clone checks clean.
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

    /// Issue 12's mount test: a 1 GiB disk holding ext4 on a loop device, fio writing to it
    /// through the loop device; the file system is frozen for the snapshot (as a backup tool
    /// does), made a snapclone and copied while fio goes on. The clone checks clean with
    /// e2fsck -fn and its files read back.
    func testExt4ClonedWhileFioWritesChecksClean() throws {
        XCTAssertEqual(getuid(), 0, "loop mounts need root")
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/fio") else { return XCTFail("fio is missing (.ci/run installs it)") }
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        try check(truncate(image, 1 << 30))
        let mkfs = try runProgram("mkfs.ext4", ["-q", "-F", image])
        XCTAssertEqual(mkfs.status, 0, mkfs.errorOutput + pool.logTail())
        let source = try LoopMount(image: image, target: pool.root.appendingPathComponent("ext4-source").path)
        defer { source.release() }
        try source.mount()
        var files: [String: [UInt8]] = [:]
        for index in 0..<10 {
            let bytes = random.bytes(index == 0 ? 32 << 20 : Int.random(in: 1...3 << 20, using: &random))
            XCTAssertTrue(FileManager.default.createFile(atPath: source.target + "/file\(index)", contents: Data(bytes)))
            files["file\(index)"] = bytes
        }
        try makeDirectory(source.target + "/load")
        XCTAssertEqual(try runProgram("sync", []).status, 0)
        let fio = try startProgram("/usr/bin/fio", ["--name=load", "--directory=\(source.target)/load", "--rw=randwrite",
                                                    "--bs=4k", "--size=256M", "--ioengine=psync", "--fsync=32",
                                                    "--time_based", "--runtime=600", "--thread"])
        var fioRunning = true
        defer { if fioRunning { kill(fio, SIGKILL); _ = waitForProgram(fio, timeoutSeconds: 30) } }
        sleep(3)
        XCTAssertNil(waitForProgram(fio, timeoutSeconds: 0), "fio is writing")

        let freeze = try runProgram("fsfreeze", ["-f", source.target])
        XCTAssertEqual(freeze.status, 0, freeze.errorOutput)
        let snapshot = Result { try makeDirectory(pool.path("vm/monday")) }
        XCTAssertEqual(try runProgram("fsfreeze", ["-u", source.target]).status, 0)
        try snapshot.get()
        try setAttribute(pool.path("vm/monday"), "user.lunfs.kind", "snapclone")
        try waitForKind(pool.path("vm/monday"), "independent", seconds: 300)
        XCTAssertNil(waitForProgram(fio, timeoutSeconds: 0), "fio wrote to the source throughout the copy")
        kill(fio, SIGKILL)
        _ = waitForProgram(fio, timeoutSeconds: 30)
        fioRunning = false
        let progress = try getAttribute(pool.path("vm/monday"), "user.lunfs.copy_progress").split(separator: "/")
        XCTAssertEqual(progress.count, 2)
        XCTAssertEqual(progress.first, progress.last, "all copied")

        let clone = pool.path("vm/monday/disk.img")
        let fsck = try runProgram("e2fsck", ["-f", "-n", clone])
        XCTAssertEqual(fsck.status, 0, fsck.output + fsck.errorOutput + pool.logTail())
        let cloneMount = try LoopMount(image: clone, target: pool.root.appendingPathComponent("ext4-clone").path)
        defer { cloneMount.release() }
        try cloneMount.mount(["-o", "ro"])
        for (name, bytes) in files {
            XCTAssertEqual(try readWholeFile(cloneMount.target + "/" + name), bytes, name)
        }
        try cloneMount.unmount()
        try cloneMount.detach()
        try source.unmount()
        try source.detach()
        // losetup -d lets a loop device go once the kernel is done with it, not at once.
        let deadline = Date(timeIntervalSinceNow: 30)
        while Date() < deadline, try runProgram("losetup", ["-j", image]).output.contains("/dev/loop")
                                  || runProgram("losetup", ["-j", clone]).output.contains("/dev/loop") {
            usleep(100_000)
        }
        XCTAssertNil(pool.unmountAndCheck())
    }

    /// Item 6 of issue 12: cp of an image to an empty disk of the same mount arrives as
    /// copy_file_range and is copied inside the daemon; the result is a plain disk with the
    /// source's bytes (DESIGN 8b says why it is no snapclone).
    func testCpWithinTheMountCopiesToAPlainDisk() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let original = random.bytes(20 << 20)
        try makeDiskWithSnapshot(original)
        try makeDirectory(pool.path("new"))
        let cp = try runProgram("cp", [pool.path("vm/disk.img"), pool.path("new/disk.img")])
        XCTAssertEqual(cp.status, 0, cp.errorOutput)
        XCTAssertEqual(try readWholeFile(pool.path("new/disk.img")), original)
        XCTAssertEqual(try getAttribute(pool.path("new"), "user.lunfs.kind"), "disk")
        XCTAssertEqual(errnoOf { _ = try getAttribute(pool.path("new"), "user.lunfs.copy_progress") }, ENODATA)
        try pool.remount()
        XCTAssertEqual(try readWholeFile(pool.path("new/disk.img")), original, "after a remount")
        XCTAssertNil(pool.unmountAndCheck())
    }

    /// `-o snapclone=` names one of the two variants; anything else is a usage error that
    /// creates nothing, and a named variant mounts.
    func testSnapcloneVariantMountOption() throws {
        let otherPool = pool.root.appendingPathComponent("pool2").path
        let other = pool.root.appendingPathComponent("mnt2").path
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let refused = try pool.lunfs(["mount", otherPool, other, "--create", "-o", "snapclone=fourth-copy"])
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.errorOutput.contains("second-pass or third-copy"), refused.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: otherPool))
        let mounted = try pool.lunfs(["mount", otherPool, other, "--create", "-o", "snapclone=third-copy"])
        XCTAssertEqual(mounted.status, 0, mounted.errorOutput)
        XCTAssertEqual(try pool.lunfs(["unmount", other]).status, 0)
    }
}
