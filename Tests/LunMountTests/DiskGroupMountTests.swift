// Disk groups through the mounted tree (issue 14 item 4): `lunfs drive add --group fast`
// puts five new drives in group "fast"; `setfattr user.lunfs.group fast` on a new disk puts
// its stores there (ENOENT for a group with no drive, EINVAL for a malformed name, EBUSY once
// written); its bytes read back, before and after a remount; `drive list` and `status` show
// each drive's and each disk's group, and only the fast drives took the disk's data.
import Foundation
import XCTest

final class DiskGroupMountTests: MountTestCase {
    override var driveSize: String { "64M" }

    func testDiskInFastGroupReadsBackAndStaysOnItsDrives() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let files = (5..<10).map { pool.root.appendingPathComponent("fast-\($0).img").path }
        for f in files { XCTAssertTrue(FileManager.default.createFile(atPath: f, contents: nil)); try check(truncate(f, 64 << 20)) }
        let add = try pool.lunfs(["drive", "add", pool.poolPath] + files + ["--group", "fast", "--wait"])
        XCTAssertEqual(add.status, 0, add.errorOutput + pool.logTail())
        let usedBefore = try driveUse()

        try makeDirectory(pool.path("db"))
        let dir = pool.path("db")
        XCTAssertEqual(try getAttribute(dir, "user.lunfs.group"), "default")
        XCTAssertEqual(errnoOf { try setAttribute(dir, "user.lunfs.group", "slow") }, ENOENT)
        XCTAssertEqual(errnoOf { try setAttribute(dir, "user.lunfs.group", "no good") }, EINVAL)
        try setAttribute(dir, "user.lunfs.group", "fast")
        XCTAssertEqual(try getAttribute(dir, "user.lunfs.group"), "fast")

        let bytes = random.bytes(12 << 20)
        let fd = try openFile(pool.path("db/disk.img"), O_RDWR | O_CREAT)
        try writeAll(fd, bytes, at: 0)
        XCTAssertEqual(fsync(fd), 0)
        close(fd)
        XCTAssertEqual(try readWholeFile(pool.path("db/disk.img")), bytes)
        XCTAssertEqual(errnoOf { try setAttribute(dir, "user.lunfs.group", "default") }, EBUSY)

        // The disk's segments went to the fast drives only.
        let usedAfter = try driveUse()
        for d in 0..<5 { XCTAssertEqual(usedAfter[d], usedBefore[d], "default drive \(d) took the fast disk's data") }
        XCTAssertGreaterThanOrEqual((5..<10).reduce(UInt64(0)) { $0 + (usedAfter[$1] ?? 0) - (usedBefore[$1] ?? 0) }, 12 << 20)

        let list = try pool.lunfs(["drive", "list", pool.poolPath])
        let rows = list.output.split(separator: "\n").dropFirst().map(String.init)
        XCTAssertEqual(rows.count, 10, list.output)
        for (i, row) in rows.enumerated() { XCTAssertTrue(row.contains(i < 5 ? " default " : " fast "), list.output) }
        let status = try pool.lunfs(["status", pool.poolPath])
        XCTAssertTrue(status.output.split(separator: "\n").contains { $0.hasPrefix("db") && $0.contains("group fast") }, status.output)
        XCTAssertTrue(status.output.contains("fast-9.img") && status.output.contains("group fast"), status.output)

        try pool.remount()
        XCTAssertEqual(try getAttribute(dir, "user.lunfs.group"), "fast")
        XCTAssertEqual(try readWholeFile(pool.path("db/disk.img")), bytes, "after the remount")
        XCTAssertEqual(try driveUse()[0], usedBefore[0])
    }
}

extension MountTestCase {
    /// Used bytes per drive index, from `lunfs status --json` (the daemon's live figures).
    func driveUse() throws -> [Int: UInt64] {
        let result = try pool.lunfs(["status", "--json", pool.poolPath])
        guard result.status == 0, let object = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any],
              let drives = object["drives"] as? [[String: Any]] else { throw FixtureError("status --json: \(result.errorOutput)") }
        var use: [Int: UInt64] = [:]
        for d in drives { use[d["index"] as! Int] = (d["usedBytes"] as? NSNumber)?.uint64Value ?? 0 }
        return use
    }
}
