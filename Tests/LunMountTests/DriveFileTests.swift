// The drive files of an unmounted pool meddled with from outside (one blanked, two lines of
// drives.list swapped), then mounted: every image reads back byte-exact. And the command line
// around drives: `init` refuses another pool's drives, `check` writes nothing, `check --repair`
// recovers and says what it did.
import Foundation
import XCTest
import LunEngineTesting

final class DriveFileTests: MountTestCase {
    /// Small drives: the read-only check test compares every byte of them.
    override var driveSize: String { "64M" }

    private func drivePath(_ i: Int) -> String { pool.poolPath + String(format: "/drive-%02d.img", i) }

    func testBlankedDriveFileIsRebuiltOnMount() throws {
        let images = try writeImages(seed: newSeed("testBlankedDriveFileIsRebuiltOnMount"))
        try pool.unmount()
        let size = try fileSize(drivePath(3))
        XCTAssertEqual(truncate(drivePath(3), 0), 0)
        XCTAssertEqual(truncate(drivePath(3), off_t(size)), 0)
        try pool.mount()
        try assertImages(images, "blanking drive 3")
        let status = try pool.lunfs(["status", pool.poolPath])
        XCTAssertTrue(status.output.contains("all present"), status.output)
        // Rebuilt: with another drive gone, the images still read right.
        try pool.unmount()
        XCTAssertEqual(unlink(drivePath(1)), 0)
        try pool.mount(["-o", "ro"])
        try assertImages(images, "blanking drive 3, rebuilding it, then losing drive 1")
        pool.checksAfterTest = false   // drive 1 is gone on purpose
    }

    func testSwappedDriveListLinesMountInOrder() throws {
        let images = try writeImages(seed: newSeed("testSwappedDriveListLinesMountInOrder"))
        try pool.unmount()
        let listPath = pool.poolPath + "/drives.list"
        let original = try String(contentsOfFile: listPath, encoding: .utf8)
        var lines = original.split(separator: "\n").map(String.init)
        lines.swapAt(0, 3)
        try (lines.joined(separator: "\n") + "\n").write(toFile: listPath, atomically: true, encoding: .utf8)
        try pool.mount()
        try assertImages(images, "swapping drives 0 and 3 in drives.list")
        XCTAssertEqual(try String(contentsOfFile: listPath, encoding: .utf8), original, "drives.list is put back in order")
    }

    func testInitRefusesTheDrivesOfAMountedPoolEvenWithForce() throws {
        let other = pool.root.appendingPathComponent("pool2").path
        for force in [false, true] {
            let result = try pool.lunfs(["init", other, "--drive", drivePath(0), "--drive", drivePath(1)] + (force ? ["--force"] : []))
            XCTAssertEqual(result.status, 2, result.output)
            XCTAssertTrue(result.errorOutput.contains("in use"), result.errorOutput)
            XCTAssertFalse(FileManager.default.fileExists(atPath: other), "a refused init leaves nothing behind")
        }
        let repair = try pool.lunfs(["check", "--repair", pool.poolPath])
        XCTAssertEqual(repair.status, 2, repair.output)
        XCTAssertTrue(repair.errorOutput.contains("unmount"), repair.errorOutput)
        let check = try pool.lunfs(["check", pool.poolPath])
        XCTAssertEqual(check.status, 0, check.output + check.errorOutput)
        XCTAssertTrue(check.output.contains("mounted"), check.output)
        try makeDirectory(pool.path("still-works"))
    }

    /// `check` on a pool whose daemon was killed changes no byte of its drives; `check
    /// --repair` runs the recovery and says so; a plain check is then clean.
    func testCheckIsReadOnlyAndRepairRecovers() throws {
        _ = try writeImages(seed: newSeed("testCheckIsReadOnlyAndRepairRecovers"))
        let pidText = try String(contentsOfFile: pool.poolPath + "/lunfs.pid", encoding: .utf8)
        let daemon = try XCTUnwrap(pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(daemon, SIGKILL)
        // Gone once its pool lock is free (it may linger as a zombie nobody reaps).
        let deadline = Date().addingTimeInterval(10)
        let lockFD = open(pool.poolPath + "/lock", O_RDWR)
        while flock(lockFD, LOCK_EX | LOCK_NB) != 0 && Date() < deadline { usleep(20_000) }
        close(lockFD)
        _ = try runProgram("fusermount3", ["-u", "-z", pool.mountpoint])
        let drives = (0..<5).map(drivePath)
        let before = try drives.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        let check = try pool.lunfs(["check", "--scrub", pool.poolPath])
        XCTAssertNotEqual(check.status, 2, check.errorOutput)
        let after = try drives.map { try Data(contentsOf: URL(fileURLWithPath: $0)) }
        XCTAssertTrue(before == after, "lunfs check wrote to the drives")
        let repair = try pool.lunfs(["check", "--repair", pool.poolPath])
        XCTAssertEqual(repair.status, 0, repair.output + repair.errorOutput)
        XCTAssertTrue(repair.output.contains("repaired:"), repair.output)
        let again = try pool.lunfs(["check", "--scrub", pool.poolPath])
        XCTAssertEqual(again.status, 0, again.output + again.errorOutput)
        try pool.mount()
    }
}

final class InitCommandTests: XCTestCase {
    func testInitRefusesAnotherPoolsDrivesAndCleansUpAfterFailure() throws {
        let binary = try lunfsBinaryPath()
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-init-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: root) }
        // init makes the pool directory, never its parents.
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let first = root.appendingPathComponent("first").path, second = root.appendingPathComponent("second").path
        XCTAssertEqual(try runProgram(binary, ["init", first, "--drives", "2", "--drive-size", "64M"]).status, 0)
        let drives = ["--drive", first + "/drive-00.img", "--drive", first + "/drive-01.img"]
        let refused = try runProgram(binary, ["init", second] + drives)
        XCTAssertEqual(refused.status, 2, refused.output)
        XCTAssertTrue(refused.errorOutput.contains("--force"), refused.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: second))
        XCTAssertEqual(try runProgram(binary, ["check", first]).status, 0, "the first pool is untouched")
        let forced = try runProgram(binary, ["init", second, "--force"] + drives)
        XCTAssertEqual(forced.status, 0, forced.errorOutput)

        // An init that fails after creating its drive files removes them; the next one works.
        let third = root.appendingPathComponent("third").path
        let failed = try runProgram(binary, ["init", third, "--drives", "2", "--drive-size", "64M", "--raid", "5"])
        XCTAssertEqual(failed.status, 2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: third + "/drive-00.img"), "drive files of a failed init are removed")
        let retried = try runProgram(binary, ["init", third, "--drives", "2", "--drive-size", "64M"])
        XCTAssertEqual(retried.status, 0, retried.errorOutput)
    }
}
