// The busy guards: an image that a process or a loop device holds open cannot be deleted
// (unlink, rm -r) or shrunk, and the pool cannot be unmounted from under it; each refusal is
// EBUSY (or exit 1) and changes nothing. user.lunfs.force_delete and unmount --lazy are the
// documented ways through.
import Foundation
import XCTest

final class BusyImageTests: MountTestCase {
    /// A process that holds `path` open read-write until it is killed: a shell with the
    /// image on descriptor 3, sleeping. Returns once the open has happened.
    private func startHolder(of path: String) throws -> pid_t {
        let marker = pool.root.appendingPathComponent("holder-\(UUID().uuidString.prefix(6))").path
        let pid = try startProgram("/bin/sh", ["-c", "exec 3<>\"$0\" && touch \"$1\" && exec sleep 600", path, marker])
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: marker) && Date() < deadline { usleep(10_000) }
        guard FileManager.default.fileExists(atPath: marker) else {
            kill(pid, SIGKILL)
            _ = waitForProgram(pid, timeoutSeconds: 5)
            throw FixtureError("the holder of \(path) did not start")
        }
        return pid
    }

    private func stopHolder(_ pid: pid_t) {
        kill(pid, SIGKILL)
        _ = waitForProgram(pid, timeoutSeconds: 10)
    }

    private func writePattern(_ path: String, count: Int, seed: UInt8) throws -> [UInt8] {
        let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) ^ seed }
        let fd = try openFile(path, O_WRONLY)
        defer { close(fd) }
        try writeAll(fd, bytes, at: 0)
        return bytes
    }

    func testImageHeldByAProcessIsNeitherDeletedNorShrunkNorUnmounted() throws {
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let bytes = try writePattern(image, count: 3 << 20, seed: 7)
        let holder = try startHolder(of: image)
        var holderRunning = true
        defer { if holderRunning { stopHolder(holder) } }

        XCTAssertEqual(errnoOf { try check(unlink(image)) }, EBUSY)
        let removal = try runProgram("rm", ["-r", pool.path("vm")])
        XCTAssertNotEqual(removal.status, 0, "rm -r of a disk whose image is open")
        XCTAssertTrue(removal.errorOutput.contains("busy"), removal.errorOutput)
        XCTAssertEqual(errnoOf { try check(truncate(image, 1 << 20)) }, EBUSY, "shrinking an open image")
        XCTAssertEqual(errnoOf { _ = try openFile(image, O_WRONLY | O_TRUNC) }, EBUSY, "O_TRUNC of an open image")
        XCTAssertEqual(try readWholeFile(image), bytes, "the refusals changed nothing")
        // Growing is harmless to a holder.
        try check(truncate(image, 4 << 20))
        XCTAssertEqual(try fileSize(image), 4 << 20)

        let log = try String(contentsOfFile: pool.poolPath + "/lunfs.log", encoding: .utf8)
        XCTAssertTrue(log.contains("EBUSY") && log.contains("opened by pid \(holder)"), pool.logTail())

        // unmount names the holder and leaves the mount serving.
        let unmount = try pool.lunfs(["unmount", pool.mountpoint])
        XCTAssertEqual(unmount.status, 1, unmount.errorOutput)
        XCTAssertTrue(unmount.errorOutput.contains("pid \(holder) (sleep)") && unmount.errorOutput.contains("vm/disk.img"), unmount.errorOutput)
        XCTAssertTrue(isMountPoint(pool.mountpoint))
        XCTAssertEqual(try readWholeFile(image).prefix(bytes.count), bytes[...])
        let logged = try String(contentsOfFile: pool.poolPath + "/lunfs.log", encoding: .utf8)
        XCTAssertTrue(logged.contains("unmount: refused") && logged.contains("pid \(holder) (sleep)"), pool.logTail())

        // Once the holder is gone, everything goes through.
        stopHolder(holder)
        holderRunning = false
        try check(truncate(image, 1 << 20))
        XCTAssertEqual(try runProgram("rm", ["-r", pool.path("vm")]).status, 0, pool.logTail())
        XCTAssertFalse(FileManager.default.fileExists(atPath: pool.path("vm")))
    }

    /// The handle a truncate comes through does not count against it: a program may shrink
    /// what it alone holds (fsx does), but not while another handle is open.
    func testFtruncateThroughTheOnlyHandleShrinks() throws {
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        _ = try writePattern(image, count: 2 << 20, seed: 1)
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        try check(ftruncate(fd, 1 << 20))
        XCTAssertEqual(try fileSize(image), 1 << 20)
        let second = try openFile(image, O_RDONLY)
        XCTAssertEqual(errnoOf { try check(ftruncate(fd, 4096)) }, EBUSY, "another handle is open")
        close(second)
        try check(ftruncate(fd, 4096))
        XCTAssertEqual(try fileSize(image), 4096)
    }

    func testForceDeleteRemovesAnOpenImageAndItsHandlesTurnStale() throws {
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        _ = try writePattern(image, count: 1 << 20, seed: 3)
        let fd = try openFile(image, O_RDWR | O_DIRECT_FLAG)
        defer { close(fd) }
        XCTAssertEqual(errnoOf { try check(unlink(image)) }, EBUSY)
        XCTAssertEqual(errnoOf { try setAttribute(pool.path("vm"), "user.lunfs.force_delete", "yes") }, EINVAL)
        XCTAssertTrue(FileManager.default.fileExists(atPath: image), "a bad value deletes nothing")
        try setAttribute(pool.path("vm"), "user.lunfs.force_delete", "1")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm")), [], "the listing has no disk.img")
        // The kernel may keep the name it looked up for the entry timeout (1 s).
        let deadline = Date().addingTimeInterval(3)
        while FileManager.default.fileExists(atPath: image) && Date() < deadline { usleep(50_000) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: image))
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { buffer.deallocate() }
        XCTAssertEqual(pread(fd, buffer, 4096, 0), -1)
        XCTAssertEqual(errno, ESTALE)
        XCTAssertEqual(errnoOf { try setAttribute(pool.path("vm"), "user.lunfs.force_delete", "1") }, ENOENT, "nothing left to delete")
        // The directory is hollow now and goes with rmdir.
        try check(rmdir(pool.path("vm")))
    }

    func testSnapshotHeldByALoopDeviceIsNotDeletedAndTheMountNotUnmounted() throws {
        XCTAssertEqual(getuid(), 0, "loop devices need root")
        try makeDirectory(pool.path("vm"))
        let bytes = try writePattern(pool.path("vm/disk.img"), count: 2 << 20, seed: 9)
        try makeDirectory(pool.path("vm/monday"))
        let snapshotImage = pool.path("vm/monday/disk.img")
        let loop = try LoopMount(image: snapshotImage, target: pool.root.appendingPathComponent("loop-target").path)
        defer { loop.release() }

        XCTAssertEqual(errnoOf { try check(unlink(snapshotImage)) }, EBUSY)
        XCTAssertNotEqual(try runProgram("rm", ["-r", pool.path("vm/monday")]).status, 0)
        XCTAssertNotEqual(try runProgram("rm", ["-r", pool.path("vm")]).status, 0, "rm -r of the disk reaches the held snapshot")
        XCTAssertEqual(try readWholeFile(snapshotImage), bytes, "the snapshot is whole")
        XCTAssertEqual(errnoOf { try check(truncate(snapshotImage, 4096)) }, EBUSY)

        let unmount = try pool.lunfs(["unmount", pool.mountpoint])
        XCTAssertEqual(unmount.status, 1)
        XCTAssertTrue(unmount.errorOutput.contains("loop device \(loop.device)") && unmount.errorOutput.contains("vm/monday/disk.img"), unmount.errorOutput)
        XCTAssertTrue(isMountPoint(pool.mountpoint), "a refused unmount leaves the mount serving")

        try loop.detach()
        XCTAssertEqual(try runProgram("rm", ["-r", pool.path("vm/monday")]).status, 0, pool.logTail())
        XCTAssertFalse(FileManager.default.fileExists(atPath: pool.path("vm/monday")))
    }

    /// unmount is for lunfs mounts only: another file system's mount is left alone (exit 2).
    func testUnmountOfAnotherFileSystemIsRefused() throws {
        XCTAssertEqual(getuid(), 0, "mounting tmpfs needs root")
        let other = pool.root.appendingPathComponent("tmpfs").path
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        XCTAssertEqual(try runProgram("mount", ["-t", "tmpfs", "-o", "size=1m", "none", other]).status, 0)
        defer { _ = try? runProgram("umount", [other]) }
        let result = try pool.lunfs(["unmount", other])
        XCTAssertEqual(result.status, 2, result.errorOutput)
        XCTAssertTrue(result.errorOutput.contains("not a lunfs pool"), result.errorOutput)
        XCTAssertTrue(isMountPoint(other))
    }

    /// --lazy detaches a busy mount; the daemon keeps serving the holder until it lets go,
    /// then closes the pool, which mounts again with the holder's writes in it.
    func testLazyUnmountDetachesABusyMount() throws {
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let bytes = try writePattern(image, count: 1 << 20, seed: 5)
        let holder = try startHolder(of: image)
        var holderRunning = true
        defer { if holderRunning { stopHolder(holder) } }
        let lazy = try pool.lunfs(["unmount", "--lazy", pool.mountpoint])
        XCTAssertEqual(lazy.status, 0, lazy.errorOutput)
        XCTAssertFalse(isMountPoint(pool.mountpoint))
        stopHolder(holder)
        holderRunning = false
        let pidPath = pool.poolPath + "/lunfs.pid"
        let deadline = Date().addingTimeInterval(30)
        while FileManager.default.fileExists(atPath: pidPath) && Date() < deadline { usleep(20_000) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: pidPath), "the daemon closed the pool once the holder let go" + pool.logTail())
        try pool.mount()
        XCTAssertEqual(try readWholeFile(image), bytes)
    }
}
