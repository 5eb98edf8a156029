// Zeros written over data through the mount give the space back (issue 11 item 5):
// `dd if=/dev/zero conv=notrunc` over an image's data frees the segments it empties, so
// st_blocks and df's used go down, and the image still reads zeros there.
import Foundation
import XCTest
import LunEngineTesting

final class ZeroedSegmentTests: MountTestCase {
    func testZerosOverDataFreeTheSegments() throws {
        var rng = SeededRandom(seed: newSeed("testZerosOverDataFreeTheSegments"))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let segment = 1 << 20
        var expected = rng.bytes(16 * segment)
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        try writeAll(fd, expected, at: 0)
        // Under the writeback cache the pages reach the pool (and st_blocks) at fsync.
        try check(fsync(fd))
        var st = stat()
        try check(fstat(fd, &st))
        XCTAssertEqual(Int(st.st_blocks) * 512, 16 * segment)
        let dd = try runProgram("dd", ["if=/dev/zero", "of=\(image)", "bs=64K", "seek=64", "count=128", "conv=notrunc,fsync", "status=none"])
        XCTAssertEqual(dd.status, 0, dd.errorOutput)
        expected.replaceSubrange((4 * segment)..<(12 * segment), with: [UInt8](repeating: 0, count: 8 * segment))
        try check(fstat(fd, &st))
        XCTAssertEqual(Int(st.st_blocks) * 512, 8 * segment, "the 8 MiB zeroed in 64 KiB writes were freed")
        XCTAssertEqual(try readBytes(fd, count: 16 * segment, at: 0), expected)
        XCTAssertEqual(lseek(fd, off_t(4 * segment), SEEK_DATA_WHENCE), off_t(12 * segment), "a hole now")
        var numbers = statvfs()
        try check(statvfs(pool.mountpoint, &numbers))
        XCTAssertEqual(Int(numbers.f_blocks - numbers.f_bfree) * Int(numbers.f_frsize), 8 * segment, "df's used went down")
    }
}
