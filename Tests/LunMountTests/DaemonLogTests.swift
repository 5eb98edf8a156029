// The daemon log against a user who makes requests fail on purpose: failure lines are
// rate-limited per cause (with a line saying how many were left out) and the file is rotated
// by size, so it stays bounded; names cannot forge lines.
import Foundation
import XCTest

/// Sets daemon environment variables for the mounts of one test class (the daemon inherits
/// this process's environment).
class DaemonLogTestCase: MountTestCase {
    var environment: [String: String] { [:] }

    override func setUpWithError() throws {
        for (name, value) in environment { setenv(name, value, 1) }
        defer { for name in environment.keys { unsetenv(name) } }
        try super.setUpWithError()
    }

    var logPath: String { pool.poolPath + "/lunfs.log" }

    func logLines(_ path: String? = nil) -> [String] {
        let text = (try? String(contentsOfFile: path ?? logPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init)
    }

    /// getxattr of a user.lunfs name that does not exist: a failure the daemon logs.
    func failingGetxattr(_ path: String) {
        XCTAssertEqual(errnoOf { _ = try getAttribute(path, "user.lunfs.no_such_attribute", capacity: 64) }, ENODATA)
    }
}

final class DaemonLogRateLimitTests: DaemonLogTestCase {
    override var environment: [String: String] { ["LUNFS_LOG_FAILURES_PER_SECOND": "5"] }

    func testFailuresOfOneCauseAreRateLimitedAndCounted() throws {
        try makeDirectory(pool.path("vm"))
        let started = Date()
        for _ in 0..<2000 { failingGetxattr(pool.path("vm")) }
        let seconds = Int(Date().timeIntervalSince(started).rounded(.up)) + 1
        let logged = logLines().filter { $0.contains("getxattr ino") && $0.contains("ENODATA") }
        XCTAssertGreaterThan(logged.count, 0, "failures are still logged")
        XCTAssertLessThanOrEqual(logged.count, 5 * seconds, "at most 5 lines a second for one cause")
        // Another cause has its own budget.
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("disk.img")) }, EINVAL)
        XCTAssertTrue(logLines().contains { $0.contains("mkdir") && $0.contains("EINVAL") }, pool.logTail())
        // In a later second the next failure of the cause reports what was left out: every
        // one of the 2001 failures is either logged or counted in such a line.
        sleep(1)
        failingGetxattr(pool.path("vm"))
        let lines = logLines()
        let summaries = lines.filter { $0.contains("getxattr ENODATA") && $0.contains("more failures not logged") }
        XCTAssertFalse(summaries.isEmpty, pool.logTail())
        let counted = summaries.compactMap { line -> Int? in
            guard let range = line.range(of: "): ") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
        XCTAssertEqual(counted.count, summaries.count, summaries.joined(separator: "\n"))
        let loggedInTheEnd = lines.filter { $0.contains("getxattr ino") && $0.contains("ENODATA") }.count
        XCTAssertEqual(loggedInTheEnd + counted.reduce(0, +), 2001, summaries.joined(separator: "\n"))
    }

    /// A name with a newline or other control character is refused; the log line for the
    /// refusal shows the character escaped, so no name can add a line of its own.
    func testNamesWithControlCharactersAreRefusedAndCannotForgeLogLines() throws {
        try makeDirectory(pool.path("vm"))
        let forged = "x\n2026-01-01T00:00:00.000Z [1-1] mount: pool closed"
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path(forged)) }, EINVAL)
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("vm/tab\there")) }, EINVAL, "snapshot name")
        XCTAssertEqual(errnoOf { try check(rename(pool.path("vm"), pool.path("bell\u{7}"))) }, EINVAL)
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("vm/new\u{1b}line"), O_CREAT | O_WRONLY) }, EINVAL, "create")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint), ["vm"], "nothing was made or renamed")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm")), ["disk.img"])
        let lines = logLines()
        XCTAssertFalse(lines.contains { $0.hasPrefix("2026-01-01T00:00:00.000Z") }, "a forged line reached the log")
        XCTAssertTrue(lines.contains { $0.contains("mkdir") && $0.contains("x\\xa2026") && $0.contains("EINVAL") }, pool.logTail())
        let status = try pool.lunfs(["status", pool.poolPath])
        XCTAssertFalse(status.output.contains("pool closed"), status.output)
    }
}

final class DaemonLogRotationTests: DaemonLogTestCase {
    override var environment: [String: String] {
        ["LUNFS_LOG_MAX_BYTES": "65536", "LUNFS_LOG_FAILURES_PER_SECOND": "1000000"]
    }

    func testTheLogIsRotatedBySize() throws {
        try makeDirectory(pool.path("vm"))
        for _ in 0..<2000 { failingGetxattr(pool.path("vm")) }
        var info = stat()
        XCTAssertEqual(stat(logPath, &info), 0)
        XCTAssertLessThanOrEqual(Int(info.st_size), 65536)
        XCTAssertEqual(stat(logPath + ".1", &info), 0, "the previous part is kept")
        XCTAssertLessThanOrEqual(Int(info.st_size), 65536)
        XCTAssertGreaterThan(Int(info.st_size), 60000)
        XCTAssertTrue(logLines().first?.contains("rotated") ?? false, logLines().first ?? "")
        XCTAssertTrue(logLines(logPath + ".1").last?.contains("ENODATA") ?? false)
        // The daemon goes on logging into the new file.
        XCTAssertEqual(errnoOf { try makeDirectory(pool.path("disk.img")) }, EINVAL)
        XCTAssertTrue(logLines().last?.contains("EINVAL") ?? false, pool.logTail())
    }
}
