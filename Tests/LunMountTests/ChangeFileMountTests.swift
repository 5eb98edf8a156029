// changes.img through the mounted tree (issue 15 item 3): which directories show it, that it
// is read-only, that st_blocks and SEEK_DATA/SEEK_HOLE follow the differing segments, and that
// incremental backups made from it (cp --sparse=always where no zeros were written over data;
// `lunfs apply-changes` onto an empty file always) and applied with `lunfs apply-changes`
// rebuild each newer image from the oldest, byte for byte.
import Foundation
import XCTest
import LunEngineTesting

final class ChangeFileMountTests: MountTestCase {
    let segment = 1 << 20

    /// The data extents of a file, by SEEK_DATA/SEEK_HOLE.
    func dataExtents(_ path: String) throws -> [Range<Int>] {
        let fd = try openFile(path, O_RDONLY)
        defer { close(fd) }
        var st = stat()
        try check(fstat(fd, &st))
        var extents: [Range<Int>] = [], position: off_t = 0
        while position < st.st_size {
            let start = lseek(fd, position, SEEK_DATA_WHENCE)
            if start < 0 { XCTAssertEqual(errno, ENXIO, "SEEK_DATA in \(path)"); break }
            let end = lseek(fd, start, SEEK_HOLE_WHENCE)
            guard end > start else { XCTFail("SEEK_HOLE after \(start) in \(path) gave \(end)"); break }
            extents.append(Int(start)..<Int(end))
            position = end
        }
        return extents
    }

    func allocatedBytes(_ path: String) throws -> Int {
        var st = stat()
        try check(stat(path, &st))
        return Int(st.st_blocks) * 512
    }

    func testIncrementalBackupsFromChangeFiles() throws {
        var rng = SeededRandom(seed: newSeed("testIncrementalBackupsFromChangeFiles"))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        try writeAll(fd, rng.bytes(8 * segment), at: 0)
        try check(fsync(fd))
        try makeDirectory(pool.path("vm/monday"))
        XCTAssertEqual(errnoOf { _ = try openFile(pool.path("vm/monday/changes.img"), O_RDONLY) }, ENOENT, "the oldest snapshot has no changes.img")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm")).sorted(), ["changes.img", "disk.img", "monday"])

        // Monday to tuesday: data written into segments 1 and 6, and a whole segment 3 rewritten.
        try writeAll(fd, rng.bytes(5000), at: segment + 4096)
        try writeAll(fd, rng.bytes(2 * segment), at: 6 * segment)
        try writeAll(fd, try readBytes(fd, count: segment, at: 3 * segment), at: 3 * segment)
        try check(fsync(fd))
        try makeDirectory(pool.path("vm/tuesday"))
        let tuesdayChanges = pool.path("vm/tuesday/changes.img")
        var st = stat()
        try check(stat(tuesdayChanges, &st))
        XCTAssertEqual(Int(st.st_size), 8 * segment)
        XCTAssertEqual(st.st_mode & 0o777, 0o444, "read-only")
        XCTAssertEqual(Int(st.st_blocks) * 512, 4 * segment, "segments 1, 3, 6 and 7")
        XCTAssertEqual(try dataExtents(tuesdayChanges), [segment..<2 * segment, 3 * segment..<4 * segment, 6 * segment..<8 * segment])
        // Who may read disk.img may read its changes, nobody else; chmod of changes.img itself is refused.
        try check(chmod(pool.path("vm/tuesday/disk.img"), 0o640))
        // The kernel may keep changes.img's attributes for their timeout (1 s).
        let deadline = Date().addingTimeInterval(3)
        repeat { try check(stat(tuesdayChanges, &st)) } while st.st_mode & 0o7777 != 0o440 && Date() < deadline && usleep(50_000) == 0
        XCTAssertEqual(st.st_mode & 0o7777, 0o440)
        XCTAssertEqual(errnoOf { try check(chmod(tuesdayChanges, 0o644)) }, EPERM)
        try check(chmod(pool.path("vm/tuesday/disk.img"), 0o644))
        XCTAssertEqual(errnoOf { _ = try openFile(tuesdayChanges, O_RDWR) }, EACCES)
        XCTAssertEqual(errnoOf { try check(truncate(tuesdayChanges, 0)) }, EACCES)
        XCTAssertEqual(errnoOf { try check(unlink(tuesdayChanges)) }, EPERM)
        XCTAssertEqual(errnoOf { try check(mkdir(pool.path("vm/tuesday/changes.img"), 0o755)) }, EEXIST)

        // Tuesday to now: zeros over the whole segment 2 (it is unmapped) and over part of 4,
        // a discard of segment 5, new data in segment 0, and the disk grows by a segment.
        try writeAll(fd, [UInt8](repeating: 0, count: segment), at: 2 * segment)
        try writeAll(fd, [UInt8](repeating: 0, count: 8192), at: 4 * segment + 65536)
        try allocate(fd, mode: FALLOC_FL_PUNCH_HOLE_FLAG | FALLOC_FL_KEEP_SIZE_FLAG, offset: 5 * segment, length: segment)
        try writeAll(fd, rng.bytes(100), at: 10)
        try writeAll(fd, rng.bytes(300), at: 8 * segment + 7)
        try check(fsync(fd))
        let liveChanges = pool.path("vm/changes.img")
        XCTAssertEqual(try dataExtents(liveChanges), [0..<segment, 2 * segment..<3 * segment, 4 * segment..<6 * segment, 8 * segment..<8 * segment + 307],
                       "segments 0, 2, 4, 5 and the new last one, which ends with the disk")
        XCTAssertEqual(try allocatedBytes(liveChanges), 5 * segment)

        // Backups: monday in full, tuesday's changes with cp --sparse=always (no zeros were
        // written over data between monday and tuesday), the live disk's with apply-changes
        // onto an empty file, which keeps the zeroed segments as data.
        let scratch = pool.root.appendingPathComponent("changes-backup").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let full = scratch + "/full.img", tuesdayDelta = scratch + "/tuesday.delta", liveDelta = scratch + "/live.delta"
        var result = try runProgram("cp", [pool.path("vm/monday/disk.img"), full])
        XCTAssertEqual(result.status, 0, result.errorOutput)
        result = try runProgram("cp", ["--sparse=always", tuesdayChanges, tuesdayDelta])
        XCTAssertEqual(result.status, 0, result.errorOutput)
        XCTAssertTrue(FileManager.default.createFile(atPath: liveDelta, contents: nil))
        result = try pool.lunfs(["apply-changes", liveChanges, liveDelta])
        XCTAssertEqual(result.status, 0, result.errorOutput)
        XCTAssertEqual(try readWholeFile(liveDelta), try readWholeFile(liveChanges), "the kept delta reads as the change file")
        XCTAssertLessThanOrEqual(try allocatedBytes(liveDelta), 5 * segment + 65536, "the kept delta stays sparse")

        // Restore: monday, then tuesday's delta, then the live disk's.
        result = try pool.lunfs(["apply-changes", tuesdayDelta, full])
        XCTAssertEqual(result.status, 0, result.errorOutput)
        XCTAssertEqual(try readWholeFile(full), try readWholeFile(pool.path("vm/tuesday/disk.img")), "monday + tuesday's delta")
        result = try pool.lunfs(["apply-changes", liveDelta, full])
        XCTAssertEqual(result.status, 0, result.errorOutput)
        XCTAssertEqual(try readWholeFile(full), try readWholeFile(image), "monday + both deltas")

        // Bad input changes nothing and says why.
        let before = try readWholeFile(full)
        result = try pool.lunfs(["apply-changes", scratch + "/missing.delta", full])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.errorOutput.contains("missing.delta"), result.errorOutput)
        result = try pool.lunfs(["apply-changes", liveDelta])
        XCTAssertEqual(result.status, 2)
        XCTAssertEqual(try readWholeFile(full), before)
    }
}
