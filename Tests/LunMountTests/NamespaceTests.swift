// The shape of the tree and the errno of every refusal: mkdir makes disks, rename stays in its
// directory, rm -r gives the space back, names the tree cannot hold are refused.
import Foundation
import XCTest

final class NamespaceTests: MountTestCase {
    func testNewDiskIsAnEmptyImageInADirectory() throws {
        try makeDirectory(pool.path("vm"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm")), ["disk.img"])
        var info = stat()
        try check(stat(pool.path("vm/disk.img"), &info))
        XCTAssertEqual(info.st_size, 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFREG)
        XCTAssertEqual(info.st_mode & 0o777, 0o644)
        try check(stat(pool.path("vm"), &info))
        XCTAssertEqual(info.st_mode & 0o777, 0o755)
        // Inode numbers follow the documented scheme and survive a remount.
        var root = stat()
        try check(stat(pool.mountpoint, &root))
        XCTAssertEqual(root.st_ino, 1)
        let directoryInode = info.st_ino
        try check(stat(pool.path("vm/disk.img"), &info))
        XCTAssertEqual(info.st_ino, directoryInode + 1)
        try pool.remount()
        try check(stat(pool.path("vm"), &info))
        XCTAssertEqual(info.st_ino, directoryInode)
    }

    func testRenameWithinTheRootAndRefusalsAcrossDirectories() throws {
        try makeDirectory(pool.path("old"))
        try makeDirectory(pool.path("other"))
        let bytes = [UInt8](repeating: 7, count: 100_000)
        let fd = try openFile(pool.path("old/disk.img"), O_WRONLY)
        try writeAll(fd, bytes, at: 0)
        close(fd)
        try check(rename(pool.path("old"), pool.path("new")))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint).sorted(), ["new", "other"])
        XCTAssertEqual(try readWholeFile(pool.path("new/disk.img")), bytes)
        XCTAssertEqual(errnoOf { try check(rename(pool.path("new"), pool.path("other/inside"))) }, EPERM)
        XCTAssertEqual(errnoOf { try check(rename(pool.path("new/disk.img"), pool.path("new/other.img"))) }, EPERM)
        XCTAssertEqual(errnoOf { try check(rename(pool.path("new"), pool.path("other"))) }, EEXIST)
    }

    func testRemoveDiskGivesSpaceBack() throws {
        let before = try statistics(pool.mountpoint)
        XCTAssertEqual(before.f_bsize, 4096)
        XCTAssertGreaterThan(before.f_blocks, 0)
        try makeDirectory(pool.path("big"))
        let fd = try openFile(pool.path("big/disk.img"), O_WRONLY)
        let chunk = [UInt8](repeating: 0x5A, count: 1 << 20)
        for i in 0..<48 { try writeAll(fd, chunk, at: i << 20) }
        try check(fsync(fd))
        close(fd)
        let during = try statistics(pool.mountpoint)
        XCTAssertLessThan(during.f_bfree, before.f_bfree - UInt((40 << 20) / 4096), "48 MiB written should use space")

        XCTAssertEqual(try runProgram("rm", ["-r", pool.path("big")]).status, 0, pool.logTail())
        XCTAssertFalse(FileManager.default.fileExists(atPath: pool.path("big")))
        let after = try statistics(pool.mountpoint)
        XCTAssertGreaterThanOrEqual(after.f_bfree, before.f_bfree, "rm -r should give all the space back")
        let df = try runProgram("df", ["-k", pool.mountpoint])
        XCTAssertEqual(df.status, 0)
        XCTAssertTrue(df.output.contains("lunfs"), df.output)
    }

    func testBadNamesAndOperations() throws {
        try makeDirectory(pool.path("vm"))
        // Unknown names.
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("nothing"), O_RDONLY) }, ENOENT)
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("vm/nothing"), O_RDONLY) }, ENOENT)
        XCTAssertEqual(errnoOf { try check(unlink(pool.path("vm/nothing"))) }, ENOENT)
        XCTAssertEqual(errnoOf { try check(rmdir(pool.path("nothing"))) }, ENOENT)
        // Only mkdir creates names.
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("file"), O_CREAT | O_WRONLY) }, EPERM)
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("vm/other.img"), O_CREAT | O_WRONLY) }, EPERM)
        XCTAssertEqual(errnoOf { try check(symlink("vm", pool.path("link"))) }, EPERM)
        XCTAssertEqual(errnoOf { try check(link(pool.path("vm/disk.img"), pool.path("vm/hard"))) }, EPERM)
        XCTAssertEqual(errnoOf { try check(mknod(pool.path("fifo"), S_IFIFO | 0o644, 0)) }, EPERM)
        // Names that exist, are too long, or are the image.
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("vm")) }, EEXIST)
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("vm/disk.img")) }, EEXIST)
        let long = String(repeating: "n", count: 256)
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path(long)) }, ENAMETOOLONG)
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path(long), O_RDONLY) }, ENAMETOOLONG)
        try makeDirectory(pool.path(String(repeating: "n", count: 255)))
        // Directories: rmdir refuses while disk.img is there; unlink refuses a directory.
        XCTAssertEqual(errnoOf { try check(rmdir(pool.path("vm"))) }, ENOTEMPTY)
        XCTAssertEqual(errnoOf { try check(unlink(pool.path("vm"))) }, EISDIR)
        // chmod of the root to another mode is refused; to the same mode (cp -p) it is fine.
        // (Disk directories and images keep what chmod gives them: PermissionTests.)
        XCTAssertEqual(errnoOf { try check(chmod(pool.mountpoint, 0o700)) }, EPERM)
        try check(chmod(pool.mountpoint, 0o755))
        XCTAssertEqual(try runProgram("touch", [pool.path("vm/disk.img")]).status, 0)
    }

    func testWriteToDeletedImageIsStale() throws {
        // write(2) itself must answer ESTALE: without the writeback cache, which would take
        // the bytes into the page cache first.
        try pool.unmount()
        try pool.mount(["-o", "no_writeback_cache"])
        try makeDirectory(pool.path("vm"))
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        defer { close(fd) }
        try writeAll(fd, [UInt8](repeating: 1, count: 8192), at: 0)
        // Open, so only a forced delete takes it (BusyImageTests has the refusals).
        try setAttribute(pool.path("vm"), "user.lunfs.force_delete", "1")
        XCTAssertEqual(errnoOf { try writeAll(fd, [UInt8](repeating: 2, count: 4096), at: 0) }, ESTALE)
        let direct = try? openFile(pool.path("vm/disk.img"), O_RDONLY)
        XCTAssertNil(direct, "a deleted image must be gone from the directory")
        // The directory is now empty and can go.
        try check(rmdir(pool.path("vm")))
    }

    func testListingHasDotEntriesAndSnapshots() throws {
        try makeDirectory(pool.path("vm"))
        try makeDirectory(pool.path("vm/s1"))
        guard let handle = opendir(pool.path("vm")) else { throw SystemError(code: errno) }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            names.append(withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) })
        }
        XCTAssertEqual(names.sorted(), [".", "..", "changes.img", "disk.img", "s1"], "changes.img: vm has a predecessor, s1")
    }
}
