// Copy on first write in blocks through the mount (docs/DESIGN.md section 8, "Partial
// segments"): after mkdir of a snapshot, 4 KiB writes to the live image make partial segments;
// both images read back right (O_DIRECT, so the bytes come from the daemon) while the segments
// are partial, after the background fill has completed them, and after a remount.
import Foundation
import XCTest

final class PartialSegmentMountTests: MountTestCase {
    func testSmallWritesAfterSnapshotReadBackBeforeAndAfterTheFill() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let live = pool.path("vm/disk.img"), snapshot = pool.path("vm/monday/disk.img")
        let size = 8 << 20
        let original = random.bytes(size)
        let fd = try openFile(live, O_RDWR)
        defer { close(fd) }
        try writeAll(fd, original, at: 0)
        try check(fsync(fd))
        try makeDirectory(pool.path("vm/monday"))

        // One O_DIRECT 4 KiB write into each of the first six segments, and a buffered write of
        // 700 bytes across a block boundary of the seventh.
        var changed = original
        let direct = try openFile(live, O_RDWR | O_DIRECT_FLAG)
        defer { close(direct) }
        let block = AlignedBuffer(count: 4096)
        for segment in 0..<6 {
            let offset = segment << 20 + Int(random.below(256)) * 4096
            let bytes = random.bytes(4096)
            block.bytes.copyBytes(from: bytes)
            try writeAll(direct, UnsafeRawBufferPointer(block.bytes), at: offset)
            changed.replaceSubrange(offset..<offset + 4096, with: bytes)
        }
        let small = random.bytes(700), smallOffset = 6 << 20 + 4096 - 300
        try writeAll(fd, small, at: smallOffset)
        changed.replaceSubrange(smallOffset..<smallOffset + 700, with: small)
        try check(fsync(fd))

        // The segments are partial now (the fill waits `Pool.partialFillDelaySeconds` first).
        let partial = try statusJSON()["partialSegments"] as? Int ?? 0
        XCTAssertEqual(partial, 7, "each small write after the snapshot made one partial segment")
        XCTAssertTrue(sameBytes(try readDirect(live, size)[...], changed[...]), "the live image while its segments are partial")
        XCTAssertTrue(sameBytes(try readDirect(snapshot, size)[...], original[...]), "the snapshot keeps its bytes")

        // The background fill completes them; nothing changes.
        let deadline = Date(timeIntervalSinceNow: 90)
        while try (statusJSON()["partialSegments"] as? Int ?? 0) > 0 {
            guard Date() < deadline else { return XCTFail("the fill did not complete the partial segments in 90 s\n\(pool.logTail())") }
            usleep(500_000)
        }
        XCTAssertTrue(sameBytes(try readDirect(live, size)[...], changed[...]), "the live image after the fill")
        XCTAssertTrue(sameBytes(try readDirect(snapshot, size)[...], original[...]), "the snapshot after the fill")

        close(direct)
        close(fd)
        try pool.remount()
        XCTAssertTrue(sameBytes(try readWholeFile(live)[...], changed[...]), "the live image after a remount")
        XCTAssertTrue(sameBytes(try readWholeFile(snapshot)[...], original[...]), "the snapshot after a remount")
    }

    private func statusJSON() throws -> [String: Any] {
        let status = try pool.lunfs(["status", "--json", pool.poolPath])
        XCTAssertEqual(status.status, 0, status.errorOutput)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [String: Any])
    }

    /// The whole of `path` read with O_DIRECT: every byte comes from the daemon.
    private func readDirect(_ path: String, _ count: Int) throws -> [UInt8] {
        let fd = try openFile(path, O_RDONLY | O_DIRECT_FLAG)
        defer { close(fd) }
        let buffer = AlignedBuffer(count: count)
        var done = 0
        while done < count {
            let n = pread(fd, buffer.pointer + done, count - done, off_t(done))
            if n < 0 { throw SystemError(code: errno) }
            if n == 0 { break }
            done += n
        }
        return Array(UnsafeRawBufferPointer(start: buffer.pointer, count: done))
    }
}
