// The drive I/O rule (docs/PERFORMANCE.md section 12), through the mount: 1 MiB O_DIRECT writes
// reach the drives direct and leave the drive files' pages out of the host page cache; 64 KiB
// writes into part of a RAID 5 stripe (read-modify-writes, whose data and parity the next one
// reads back) stay in it; 1 MiB reads of ranges the cache holds nothing of go direct and leave
// nothing cached. Every byte reads back through the mount.
import Foundation
import XCTest

final class DrivePageCacheTests: MountTestCase {
    func testLargeTransfersBypassTheHostPageCacheAndRAID5ReadModifyWritesKeepIt() throws {
        let mib = 1 << 20, count = 8
        try makeDirectory(pool.path("vm"))
        try setAttribute(pool.path("vm"), "user.lunfs.raid", "5")
        let image = pool.path("vm/disk.img")
        let fd = open(image, O_RDWR | O_DIRECT_FLAG)
        try check(fd >= 0 ? 0 : -1)
        defer { close(fd) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: mib, alignment: 4096)
        defer { buffer.deallocate() }
        var expected = [UInt8](repeating: 0, count: count * mib)
        for i in expected.indices { expected[i] = UInt8(truncatingIfNeeded: i &* 31 &+ i >> 20 &+ 1) }

        var before = try residentDriveBytes()
        for k in 0..<count {
            buffer.copyBytes(from: expected[k * mib..<(k + 1) * mib])
            XCTAssertEqual(pwrite(fd, buffer.baseAddress, mib, off_t(k * mib)), mib)
        }
        try check(fsync(fd))
        var after = try residentDriveBytes()
        print("DrivePageCacheTests: 1 MiB writes: resident drive pages \(before >> 10) -> \(after >> 10) KiB for \(count) MiB")
        XCTAssertLessThan(after - before, count * mib / 4, "1 MiB writes went direct (cached, they would add \(count * mib * 5 / 4) bytes)")

        // 64 KiB into the second stripe unit of each RSEG: a read-modify-write of data and parity.
        before = after
        for k in 0..<count {
            let at = k * mib + 256 << 10
            for i in 0..<65536 { expected[at + i] = UInt8(truncatingIfNeeded: i &* 7 &+ k &+ 3) }
            buffer.copyBytes(from: expected[at..<at + 65536])
            XCTAssertEqual(pwrite(fd, buffer.baseAddress, 65536, off_t(at)), 65536)
        }
        try check(fsync(fd))
        after = try residentDriveBytes()
        print("DrivePageCacheTests: 64 KiB read-modify-writes: resident \(before >> 10) -> \(after >> 10) KiB")
        XCTAssertGreaterThanOrEqual(after - before, count * 2 * 65536, "RAID 5 read-modify-writes keep their data and parity cached")

        // Cold 1 MiB reads go direct and leave nothing cached.
        try dropDriveCaches()
        before = try residentDriveBytes()
        XCTAssertLessThan(before, mib, "the test's setup: the drive files' pages were dropped")
        for k in 0..<count {
            XCTAssertEqual(pread(fd, buffer.baseAddress, mib, off_t(k * mib)), mib)
            XCTAssertTrue(buffer.elementsEqual(expected[k * mib..<(k + 1) * mib]), "MiB \(k)")
        }
        after = try residentDriveBytes()
        print("DrivePageCacheTests: cold 1 MiB reads: resident \(before >> 10) -> \(after >> 10) KiB")
        XCTAssertLessThan(after - before, count * mib / 4, "cold 1 MiB reads went direct")
    }

    /// Writes the drive files' dirty pages back and asks the kernel to drop their pages.
    private func dropDriveCaches() throws {
        for name in try FileManager.default.contentsOfDirectory(atPath: pool.poolPath) where name.hasPrefix("drive-") {
            let fd = open(pool.poolPath + "/" + name, O_RDONLY)
            try check(fd >= 0 ? 0 : -1)
            defer { close(fd) }
            try check(fdatasync(fd))
            try check(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0 ? 0 : -1)
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
