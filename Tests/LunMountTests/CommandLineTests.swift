// `lunfs mount` and `lunfs unmount` as a user meets them: a pool created only with --create, clear
// errors with exit status 2 for bad paths, a busy pool refused, a clean exit on SIGTERM.
import Foundation
import XCTest

final class CommandLineTests: MountTestCase {
    func testPoolPathThatIsAFileIsRefused() throws {
        let file = pool.root.appendingPathComponent("not-a-pool").path
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data("x".utf8)))
        let other = pool.root.appendingPathComponent("mnt2").path
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let result = try pool.lunfs(["mount", file, other])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.errorOutput.contains("is a file"), result.errorOutput)
        XCTAssertFalse(isMountPoint(other))
    }

    func testMountingOnAMountIsRefusedAndChangesNothing() throws {
        try makeDirectory(pool.path("vm"))
        let otherPool = pool.root.appendingPathComponent("pool2").path
        let result = try pool.lunfs(["mount", otherPool, pool.mountpoint, "--create", "--drives", "2", "--drive-size", "64M"])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.errorOutput.contains("already a mount point"), result.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: otherPool), "no pool may be created")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint), ["vm"], "the first mount still serves")
    }

    func testBusyPoolIsRefused() throws {
        let other = pool.root.appendingPathComponent("mnt2").path
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let result = try pool.lunfs(["mount", pool.poolPath, other])
        XCTAssertNotEqual(result.status, 0)
        XCTAssertTrue(result.errorOutput.contains("in use"), result.errorOutput)
        XCTAssertEqual(result.errorOutput.components(separatedBy: "in use").count, 2, "said once: \(result.errorOutput)")
        XCTAssertFalse(isMountPoint(other))
    }

    func testUnknownMountOptionIsRefusedBeforeAnythingIsCreated() throws {
        let otherPool = pool.root.appendingPathComponent("pool2").path
        let other = pool.root.appendingPathComponent("mnt2").path
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let result = try pool.lunfs(["mount", otherPool, other, "--create", "-o", "no_such_option"])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.errorOutput.contains("no_such_option"), result.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: otherPool))
    }

    /// One request thread cannot serve a snapshot's flush of the writeback cache (the flush
    /// waits for WRITEs that another thread must serve): refused unless the cache is off.
    func testOneThreadNeedsTheWritebackCacheOff() throws {
        let otherPool = pool.root.appendingPathComponent("pool2").path
        let other = pool.root.appendingPathComponent("mnt2").path
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let result = try pool.lunfs(["mount", otherPool, other, "--create", "-o", "max_threads=1"])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.errorOutput.contains("no_writeback_cache"), result.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: otherPool))
        let off = try pool.lunfs(["mount", otherPool, other, "--create", "-o", "max_threads=1,no_writeback_cache"])
        XCTAssertEqual(off.status, 0, off.errorOutput)
        // Snapshots still work there (no flush: nothing waits for a second thread).
        try makeDirectory(other + "/vm")
        let fd = try openFile(other + "/vm/disk.img", O_RDWR)
        try writeAll(fd, [1, 2, 3], at: 0)
        close(fd)
        try makeDirectory(other + "/vm/snap")
        XCTAssertEqual(try readWholeFile(other + "/vm/snap/disk.img"), [1, 2, 3])
        XCTAssertEqual(try pool.lunfs(["unmount", other]).status, 0)
    }

    func testReadOnlyMountRefusesChanges() throws {
        try makeDirectory(pool.path("vm"))
        let bytes = [UInt8](repeating: 3, count: 65536)
        let fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, bytes, at: 0)
        close(fd)
        try pool.unmount()
        try pool.mount(["-o", "ro"])
        XCTAssertEqual(try readWholeFile(pool.path("vm/disk.img")), bytes)
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("vm/disk.img"), O_WRONLY) }, EROFS)
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("other")) }, EROFS)
    }

    func testUnmountOfAPlainDirectoryFails() throws {
        let result = try pool.lunfs(["unmount", pool.root.path])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.errorOutput.contains("not a mount point"), result.errorOutput)
    }

    func testDeadMountIsReportedAndUnmountClearsIt() throws {
        try makeDirectory(pool.path("vm"))
        let pidText = try String(contentsOfFile: pool.poolPath + "/lunfs.pid", encoding: .utf8)
        let daemon = try XCTUnwrap(pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(daemon, SIGKILL)
        var info = stat()
        let deadline = Date().addingTimeInterval(10)
        // A request the daemon was reading as it died fails with EIO; after that the mount
        // answers ENOTCONN.
        var lastErrno: Int32 = 0
        while Date() < deadline {
            if stat(pool.mountpoint, &info) != 0 {
                lastErrno = errno
                if [ENOTCONN, ECONNABORTED].contains(lastErrno) { break }
            }
            usleep(20_000)
        }
        XCTAssertTrue([ENOTCONN, ECONNABORTED].contains(lastErrno), "stat of a dead mount: errno \(lastErrno)")

        let refused = try pool.lunfs(["mount", pool.poolPath, pool.mountpoint])
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.errorOutput.contains("dead FUSE mount"), refused.errorOutput)

        // Relative path with a dot component, as a user might type it.
        let unmount = try pool.lunfs(["unmount", pool.root.path + "/./mnt/"])
        XCTAssertEqual(unmount.status, 0, unmount.errorOutput)
        XCTAssertFalse(isMountPoint(pool.mountpoint))
        try pool.mount()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint), ["vm"], "mkdir was committed")
    }

    func testForegroundDaemonStopsCleanlyOnSIGTERM() throws {
        try makeDirectory(pool.path("vm"))
        let bytes = [UInt8](repeating: 0x42, count: 1 << 20)
        let fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, bytes, at: 0)
        close(fd)
        try pool.unmount()

        let daemon = try startProgram(pool.binary, ["mount", pool.poolPath, pool.mountpoint, "--foreground"])
        var exitStatus: Int32?
        defer { if exitStatus == nil { kill(daemon, SIGKILL); _ = waitForProgram(daemon, timeoutSeconds: 5) } }
        let deadline = Date().addingTimeInterval(20)
        while !isMountPoint(pool.mountpoint) && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(isMountPoint(pool.mountpoint), "foreground mount did not appear" + pool.logTail())
        XCTAssertEqual(try readWholeFile(pool.path("vm/disk.img")), bytes)

        kill(daemon, SIGTERM)
        exitStatus = waitForProgram(daemon, timeoutSeconds: 30)
        XCTAssertEqual(exitStatus, 0, pool.logTail())
        XCTAssertFalse(isMountPoint(pool.mountpoint))
        // The pool was closed: it mounts again at once.
        try pool.mount()
        XCTAssertEqual(try readWholeFile(pool.path("vm/disk.img")), bytes)
    }
}

final class NewPoolTests: XCTestCase {
    func testMountCreatesAPoolInAnEmptyDirectoryOnlyWithCreate() throws {
        try requireFUSE()
        let binary = try lunfsBinaryPath()
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-new-\(UUID().uuidString.prefix(8))")
        let poolPath = root.appendingPathComponent("pool").path
        let mountpoint = root.appendingPathComponent("mnt").path
        try FileManager.default.createDirectory(atPath: poolPath, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        defer {
            if isMountPoint(mountpoint) { _ = try? runProgram("fusermount3", ["-u", "-z", mountpoint]) }
            if !isMountPoint(mountpoint) { try? FileManager.default.removeItem(at: root) }
        }
        // Without --create an empty directory is not a pool, and nothing is made in it.
        let refused = try runProgram(binary, ["mount", poolPath, mountpoint])
        XCTAssertEqual(refused.status, 2, refused.errorOutput)
        XCTAssertTrue(refused.errorOutput.contains("--create"), refused.errorOutput)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: poolPath), [])
        XCTAssertFalse(isMountPoint(mountpoint))
        // Pool-shaping options without --create are a usage error.
        let shaped = try runProgram(binary, ["mount", poolPath, mountpoint, "--drives", "3"])
        XCTAssertEqual(shaped.status, 2, shaped.errorOutput)
        XCTAssertTrue(shaped.errorOutput.contains("needs --create"), shaped.errorOutput)

        let result = try runProgram(binary, ["mount", poolPath, mountpoint, "--create", "--drives", "3", "--drive-size", "128M", "--raid", "1"])
        XCTAssertEqual(result.status, 0, result.errorOutput)
        XCTAssertTrue(result.output.contains("created a new pool"), result.output)
        XCTAssertTrue(isMountPoint(mountpoint))
        try makeDirectory(mountpoint + "/vm")
        XCTAssertEqual(try getAttribute(mountpoint + "/vm", "user.lunfs.raid"), "1")
        XCTAssertEqual(try runProgram(binary, ["unmount", mountpoint]).status, 0)
        XCTAssertFalse(isMountPoint(mountpoint))
        XCTAssertFalse(FileManager.default.fileExists(atPath: poolPath + "/lunfs.pid"), "the daemon removes its pid file when done")
        let log = try String(contentsOfFile: poolPath + "/lunfs.log", encoding: .utf8)
        XCTAssertTrue(log.contains("pool closed"), log)
    }

    /// A mistyped path (or a drive directory not mounted yet) never becomes a new pool: without
    /// --create a missing directory is refused, and even with it missing parents are not made.
    func testMountOfAMissingPathCreatesNothing() throws {
        try requireFUSE()
        let binary = try lunfsBinaryPath()
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-typo-\(UUID().uuidString.prefix(8))")
        let mountpoint = root.appendingPathComponent("mnt").path
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        defer {
            if isMountPoint(mountpoint) { _ = try? runProgram("fusermount3", ["-u", "-z", mountpoint]) }
            if !isMountPoint(mountpoint) { try? FileManager.default.removeItem(at: root) }
        }
        let missing = root.appendingPathComponent("pool").path
        let plain = try runProgram(binary, ["mount", missing, mountpoint])
        XCTAssertEqual(plain.status, 2, plain.errorOutput)
        XCTAssertTrue(plain.errorOutput.contains("does not exist"), plain.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: missing))

        let typo = root.appendingPathComponent("typo/x/pool").path
        let created = try runProgram(binary, ["mount", typo, mountpoint, "--create", "--drives", "1", "--drive-size", "64M"])
        XCTAssertEqual(created.status, 2, created.errorOutput)
        XCTAssertTrue(created.errorOutput.contains("parent"), created.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: root.appendingPathComponent("typo").path), "no parent directory is made")
        XCTAssertFalse(isMountPoint(mountpoint))

        // init does not make parents either.
        let initialized = try runProgram(binary, ["init", typo, "--drives", "1", "--drive-size", "64M"])
        XCTAssertNotEqual(initialized.status, 0, initialized.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: root.appendingPathComponent("typo").path))
    }

    /// A pool that is there but cannot be opened is bad input: exit 2, as README and MOUNT.md
    /// say, and nothing is mounted or changed.
    func testPoolThatCannotBeOpenedExitsWith2() throws {
        try requireFUSE()
        let binary = try lunfsBinaryPath()
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-broken-\(UUID().uuidString.prefix(8))")
        let poolPath = root.appendingPathComponent("pool").path
        let mountpoint = root.appendingPathComponent("mnt").path
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        defer {
            if isMountPoint(mountpoint) { _ = try? runProgram("fusermount3", ["-u", "-z", mountpoint]) }
            if !isMountPoint(mountpoint) { try? FileManager.default.removeItem(at: root) }
        }
        XCTAssertEqual(try runProgram(binary, ["init", poolPath, "--drives", "1", "--drive-size", "64M"]).status, 0)
        try check(truncate(poolPath + "/drive-00.img", 0), "truncate the only drive")
        let result = try runProgram(binary, ["mount", poolPath, mountpoint])
        XCTAssertEqual(result.status, 2, result.errorOutput)
        XCTAssertTrue(result.errorOutput.contains("cannot open the pool"), result.errorOutput)
        XCTAssertFalse(isMountPoint(mountpoint))
        XCTAssertEqual(try fileSize(poolPath + "/drive-00.img"), 0, "a refused mount changes nothing")
    }
}
