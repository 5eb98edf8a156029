// The drive I/O rule (docs/PERFORMANCE.md section 12): transfers to the drives keep the host
// page cache, so the bytes just written to a disk are in memory for the reads that follow. 1 MiB
// O_DIRECT writes through the mount leave their bytes resident in the drive files' pages; with
// direct drive transfers (the rule before) the kernel dropped those pages.
import Foundation
import XCTest

final class DrivePageCacheTests: MountTestCase {
    func testLargeWritesLeaveTheirBytesInTheHostPageCache() throws {
        let bytes = 8 << 20
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let fd = open(image, O_RDWR | O_DIRECT_FLAG)
        try check(fd >= 0 ? 0 : -1)
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        let before = try residentDriveBytes()
        for mib in 0..<(bytes >> 20) {
            for i in 0..<buffer.count { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ mib &+ 1) }
            XCTAssertEqual(pwrite(fd, buffer.baseAddress, buffer.count, off_t(mib << 20)), buffer.count)
        }
        try check(fsync(fd))
        let after = try residentDriveBytes()
        print("DrivePageCacheTests: drive files' resident pages went from \(before >> 10) KiB to \(after >> 10) KiB for \(bytes >> 20) MiB written")
        XCTAssertGreaterThanOrEqual(after - before, bytes, "the written bytes are not in the drive files' page cache")
        // And they read back right.
        for mib in 0..<(bytes >> 20) {
            XCTAssertEqual(pread(fd, buffer.baseAddress, buffer.count, off_t(mib << 20)), buffer.count)
            XCTAssertTrue((0..<buffer.count).allSatisfy { buffer[$0] == UInt8(truncatingIfNeeded: $0 &* 31 &+ mib &+ 1) }, "MiB \(mib)")
        }
    }

    /// Bytes of all drive files in the host page cache (mincore over a read-only mapping).
    private func residentDriveBytes() throws -> Int {
        var total = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: pool.poolPath) where name.hasPrefix("drive-") {
            let fd = open(pool.poolPath + "/" + name, O_RDONLY)
            try check(fd >= 0 ? 0 : -1)
            defer { close(fd) }
            var st = stat()
            try check(fstat(fd, &st))
            let size = Int(st.st_size)
            guard size > 0, let map = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { continue }
            defer { munmap(map, size) }
            var vector = [UInt8](repeating: 0, count: (size + 4095) / 4096)
            try check(mincore(map, size, &vector))
            total += vector.filter { $0 & 1 != 0 }.count * 4096
        }
        return total
    }
}
