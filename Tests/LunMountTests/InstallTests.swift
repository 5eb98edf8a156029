// What scripts/install sets up, exercised as far as a test may go without installing into the
// system: `lunfs --version`, the mount(8) helper examples/mount.fuse.lunfs (the options it
// keeps and drops, and that it never creates a pool), and the commands of the systemd unit
// examples/lunfs.service (start in the foreground, stop with its KillSignal). scripts/test
// runs scripts/install itself into a temporary prefix.
import Foundation
import XCTest

/// The checkout this test was built from.
private let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

final class VersionTests: XCTestCase {
    func testVersionNamesTheReleaseAndTheCommitOrSaysItIsUnknown() throws {
        let result = try runProgram(try lunfsBinaryPath(), ["--version"])
        XCTAssertEqual(result.status, 0, result.errorOutput)
        let line = result.output.trimmingCharacters(in: .newlines)
        XCTAssertNotNil(line.wholeMatch(of: /lunfs [0-9]+\.[0-9]+\.[0-9]+ \(commit ([0-9a-f]{40}(-dirty)?|unknown: built without scripts\/install)\)/), line)
    }
}

final class MountHelperTests: MountTestCase {
    private func runHelper(_ arguments: [String]) throws -> ProgramResult {
        setenv("LUNFS", pool.binary, 1)
        defer { unsetenv("LUNFS") }
        return try runProgram(repositoryRoot + "/examples/mount.fuse.lunfs", arguments)
    }

    /// What mount(8) passes for an fstab line: lunfs gets ro, and nofail, _netdev and the
    /// x-systemd options (which `lunfs mount` would refuse) are dropped.
    func testHelperKeepsLunfsOptionsAndDropsMountOnes() throws {
        try makeDirectory(pool.path("vm"))
        try pool.unmount()
        let mounted = try runHelper([pool.poolPath, pool.mountpoint, "-n", "-o", "rw,nofail,_netdev,x-systemd.requires-mounts-for=/srv,ro,max_threads=4"])
        XCTAssertEqual(mounted.status, 0, mounted.errorOutput + pool.logTail())
        XCTAssertTrue(isMountPoint(pool.mountpoint))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint), ["vm"])
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("other")) }, EROFS, "ro reached lunfs")
        try pool.unmount()
        try pool.mount()
    }

    func testHelperNeverCreatesAPool() throws {
        let missing = pool.root.appendingPathComponent("not-mounted-yet/pool").path
        let other = pool.root.appendingPathComponent("mnt2").path
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let result = try runHelper([missing, other, "-o", "defaults"])
        XCTAssertEqual(result.status, 2, result.errorOutput)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pool.root.appendingPathComponent("not-mounted-yet").path))
        XCTAssertFalse(isMountPoint(other))
        let empty = pool.root.appendingPathComponent("empty").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        XCTAssertEqual(try runHelper([empty, other]).status, 2)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: empty), [])
    }

    /// The unit's ExecStart, with its paths replaced by this test's, serves the pool until the
    /// unit's KillSignal, then exits 0 with the pool closed.
    func testSystemdUnitCommandsServeAndStopThePool() throws {
        let unit = try String(contentsOfFile: repositoryRoot + "/examples/lunfs.service", encoding: .utf8)
        func value(_ key: String) throws -> String {
            let line = try XCTUnwrap(unit.split(separator: "\n").first { $0.hasPrefix(key + "=") }, "\(key) in the unit")
            return String(line.dropFirst(key.count + 1))
        }
        let start = try value("ExecStart")
            .replacingOccurrences(of: "/usr/local/bin/lunfs", with: pool.binary)
            .replacingOccurrences(of: "/srv/lunfs/pool", with: pool.poolPath)
            .replacingOccurrences(of: "/mnt/lunfs", with: pool.mountpoint)
        let words = start.split(separator: " ").map(String.init)
        XCTAssertFalse(words.contains("--create"), "the unit must never create a pool")
        XCTAssertEqual(try value("KillSignal"), "SIGTERM")
        // systemd's own check of the unit, where systemd is installed.
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") {
            let copy = pool.root.appendingPathComponent("lunfs.service").path
            try unit.replacingOccurrences(of: "/usr/local/bin/lunfs", with: pool.binary).write(toFile: copy, atomically: true, encoding: .utf8)
            let verified = try runProgram("/usr/bin/systemd-analyze", ["verify", copy])
            XCTAssertEqual(verified.status, 0, verified.output + verified.errorOutput)
        }
        try makeDirectory(pool.path("vm"))
        try pool.unmount()

        let daemon = try startProgram(words[0], Array(words.dropFirst()))
        var exitStatus: Int32?
        defer { if exitStatus == nil { kill(daemon, SIGKILL); _ = waitForProgram(daemon, timeoutSeconds: 5) } }
        let deadline = Date().addingTimeInterval(20)
        while !isMountPoint(pool.mountpoint) && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(isMountPoint(pool.mountpoint), "the unit's ExecStart did not mount" + pool.logTail())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint), ["vm"])
        kill(daemon, SIGTERM)
        exitStatus = waitForProgram(daemon, timeoutSeconds: 60)
        XCTAssertEqual(exitStatus, 0, pool.logTail())
        XCTAssertFalse(isMountPoint(pool.mountpoint))
        try pool.mount()
    }
}
