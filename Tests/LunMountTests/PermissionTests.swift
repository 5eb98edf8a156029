// chmod and chown of disk directories and images are kept in the pool, so an admin can share
// one disk with one user under `-o allow_other`; until then that user reads nothing, because
// under allow_other images default to 0600 and directories to 0700 (issue 11 item 7).
import Foundation
import XCTest
import LunEngineTesting

final class PermissionTests: MountTestCase {
    private func modeAndOwner(_ path: String) throws -> (mode: mode_t, uid: uid_t, gid: gid_t) {
        var info = stat()
        try check(stat(path, &info), path)
        return (info.st_mode & 0o7777, info.st_uid, info.st_gid)
    }

    /// `command` run as user and group 65534 (nobody).
    private func asNobody(_ command: String, _ arguments: [String]) throws -> ProgramResult {
        try runProgram("setpriv", ["--reuid", "65534", "--regid", "65534", "--clear-groups", command] + arguments)
    }

    func testChmodAndChownSurviveUnmountAndMount() throws {
        try makeDirectory(pool.path("vm"))
        try makeDirectory(pool.path("vm/monday"))
        XCTAssertEqual(try modeAndOwner(pool.path("vm/disk.img")).mode, 0o644, "the default without allow_other")
        try check(chmod(pool.path("vm/disk.img"), 0o640))
        try check(chown(pool.path("vm/disk.img"), 65534, 100))
        try check(chmod(pool.path("vm"), 0o750))
        try check(chown(pool.path("vm/monday"), 1000, 1000))
        XCTAssertEqual(chmod(pool.mountpoint, 0o700), -1, "the root's mode is fixed")
        XCTAssertEqual(errno, EPERM)
        try check(chmod(pool.mountpoint, 0o755), "an unchanged mode is a success")
        try pool.remount()
        XCTAssertTrue(try modeAndOwner(pool.path("vm/disk.img")) == (0o640, 65534, 100))
        XCTAssertTrue(try modeAndOwner(pool.path("vm")) == (0o750, 0, 0))
        XCTAssertTrue(try modeAndOwner(pool.path("vm/monday")) == (0o755, 1000, 1000))
        XCTAssertTrue(try modeAndOwner(pool.path("vm/monday/disk.img")) == (0o644, 0, 0), "a snapshot's image keeps the defaults")
    }

    func testUnderAllowOtherOnlyWhomTheAdminLetsInReadsAnImage() throws {
        let shared = try MountedPool(mountArguments: ["-o", "allow_other"])
        defer { shared.tearDown() }
        var rng = SeededRandom(seed: newSeed("testUnderAllowOtherOnlyWhomTheAdminLetsInReadsAnImage"))
        let bytes = rng.bytes(3 << 20 + 512)
        try makeDirectory(shared.path("vm"))
        let fd = try openFile(shared.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, bytes, at: 0)
        close(fd)
        let expected = shared.root.appendingPathComponent("expected").path
        XCTAssertTrue(FileManager.default.createFile(atPath: expected, contents: Data(bytes), attributes: [.posixPermissions: 0o644]))
        XCTAssertTrue(try modeAndOwner(shared.path("vm")) == (0o700, 0, 0))
        XCTAssertTrue(try modeAndOwner(shared.path("vm/disk.img")) == (0o600, 0, 0))

        let refused = try asNobody("cat", [shared.path("vm/disk.img")])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.errorOutput.contains("Permission denied"), refused.errorOutput)
        XCTAssertTrue(refused.output.isEmpty, "not a byte")

        // The admin gives the disk to nobody: directory and image.
        try check(chown(shared.path("vm"), 65534, 65534))
        try check(chown(shared.path("vm/disk.img"), 65534, 65534))
        let allowed = try asNobody("cmp", [shared.path("vm/disk.img"), expected])
        XCTAssertEqual(allowed.status, 0, allowed.output + allowed.errorOutput)
        // And it stays given after a remount.
        try shared.unmount()
        try shared.mount(["-o", "allow_other"])
        XCTAssertEqual(try asNobody("cmp", [shared.path("vm/disk.img"), expected]).status, 0)
        // Taken back with chmod: the owner bits only, for the owner.
        try check(chmod(shared.path("vm/disk.img"), 0o000))
        XCTAssertNotEqual(try asNobody("cat", [shared.path("vm/disk.img")]).status, 0)
        XCTAssertNil(shared.unmountAndCheck())
    }
}
