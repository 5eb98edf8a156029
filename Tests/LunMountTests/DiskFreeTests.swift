// df on the mount tells the truth about the pool: writing 64 MiB takes 64 MiB of free space,
// a snapshot takes none until copy on write does, deleting an image gives back only what no
// snapshot still holds, and rm -r of the disk gives everything back, to the block, as df(1)
// and a remount both confirm. On every RAID level df's size, used and available are the
// figures `lunfs status` gives (usable, used by disks, free), so parity never shows as used.
import Foundation
import XCTest

final class DiskFreeTests: MountTestCase {
    static let mebibyte = 1 << 20

    /// Free bytes as statvfs reports them, after a commit (fsync of the root directory), so
    /// that segments freed by the last operation are counted.
    func freeBytes() throws -> Int {
        let root = try openFile(pool.mountpoint, O_RDONLY | O_DIRECTORY)
        defer { close(root) }
        try check(fsync(root))
        let figures = try statistics(pool.mountpoint)
        XCTAssertEqual(figures.f_bavail, figures.f_bfree, "no space is held back from users")
        return Int(figures.f_bfree) * Int(figures.f_frsize)
    }

    func testFreeSpaceFollowsWritesSnapshotsAndRemoval() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let empty = try freeBytes()
        let capacity = try statistics(pool.mountpoint)
        XCTAssertGreaterThan(Int(capacity.f_blocks) * Int(capacity.f_frsize), empty - 1, "free space within capacity")

        try makeDirectory(pool.path("big"))
        XCTAssertEqual(try freeBytes(), empty, "a new disk maps nothing")
        let image = pool.path("big/disk.img")
        try check(truncate(image, off_t(1 << 30)))
        XCTAssertEqual(try freeBytes(), empty, "a size is no allocation")

        // 64 MiB written: 64 segments of 1 MiB, out of the pool's free space. A snapshot then
        // shares them all; copy on write of 16 of them takes 16 more.
        let (written, copied) = try { () throws -> (Int, Int) in
            let fd = try openFile(image, O_RDWR)
            defer { close(fd) }  // before the remount below, which an open image would hold up
            for index in 0..<64 { try writeAll(fd, random.bytes(Self.mebibyte), at: index * Self.mebibyte) }
            try check(fsync(fd))
            let written = try freeBytes()
            XCTAssertEqual(empty - written, 64 * Self.mebibyte, "64 MiB written must take 64 MiB")
            XCTAssertEqual(try getAttribute(pool.path("big"), "user.lunfs.allocated"), String(64 * Self.mebibyte))
            try expectDf(written)

            try makeDirectory(pool.path("big/snap"))
            XCTAssertEqual(try freeBytes(), written, "a snapshot copies nothing")
            for index in 0..<16 { try writeAll(fd, random.bytes(4096), at: index * 4 * Self.mebibyte + 12345) }
            try check(fsync(fd))
            return (written, try freeBytes())
        }()
        XCTAssertEqual(written - copied, 16 * Self.mebibyte, "16 segments written after the snapshot must be copied once each")

        // Deleting the image gives back what only it held; the snapshot keeps the rest.
        try check(unlink(image))
        let hollow = try freeBytes()
        XCTAssertEqual(hollow - copied, 16 * Self.mebibyte, "rm disk.img frees the segments the snapshot does not need")
        XCTAssertEqual(try getAttribute(pool.path("big/snap"), "user.lunfs.allocated"), String(64 * Self.mebibyte))

        // rm -r of the disk gives back everything, to the block.
        let removal = try runProgram("rm", ["-r", pool.path("big")])
        XCTAssertEqual(removal.status, 0, removal.errorOutput + pool.logTail())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint), [])
        XCTAssertEqual(try freeBytes(), empty, "rm -r must give back all the space")
        try expectDf(empty)
        try pool.remount()
        XCTAssertEqual(try freeBytes(), empty, "free space after a remount")
    }

    /// df(1)'s figure agrees with statvfs.
    func expectDf(_ freeBytes: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let df = try runProgram("df", ["-B1", "--output=avail,source", pool.mountpoint])
        XCTAssertEqual(df.status, 0, df.errorOutput, file: file, line: line)
        let row = df.output.split(separator: "\n").last.map { $0.split(separator: " ") } ?? []
        XCTAssertEqual(row.first.flatMap { Int($0) }, freeBytes, "df: \(df.output)", file: file, line: line)
        XCTAssertEqual(row.last.map(String.init), "lunfs:" + pool.poolPath, "df: \(df.output)", file: file, line: line)
    }

    /// df against `lunfs status --json` on a pool of each RAID level: size is the usable
    /// capacity at that level, used is what the disks hold (0 on a fresh pool, whatever the
    /// parity costs), available is the free space, and a write moves used and available by
    /// its size while the size stays put.
    func testDfAgreesWithStatusOnEveryRAIDLevel() throws {
        for level in ["0", "1", "5"] {
            let levelPool = try MountedPool(drives: 5, driveSize: "256M", raid: level)
            defer { levelPool.tearDown() }
            func commit() throws {
                let root = try openFile(levelPool.mountpoint, O_RDONLY | O_DIRECTORY)
                defer { close(root) }
                try check(fsync(root))
            }
            /// (size, used, available) from statvfs, and the same three from status.
            func figures() throws -> (df: [Int], status: [Int]) {
                try commit()
                let numbers = try statistics(levelPool.mountpoint)
                let block = Int(numbers.f_frsize)
                let df = [Int(numbers.f_blocks) * block, Int(numbers.f_blocks - numbers.f_bfree) * block, Int(numbers.f_bavail) * block]
                let status = try levelPool.lunfs(["status", "--json", levelPool.poolPath])
                XCTAssertEqual(status.status, 0, status.errorOutput)
                let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(status.output.utf8)) as? [String: Any])
                func number(_ key: String) throws -> Int { try XCTUnwrap(report[key] as? Int, "status has no \(key)") }
                let statusFigures = [try number("usableBytes"), try number("usedBytes") + number("reservedBytes"), try number("freeBytes")]
                return (df, statusFigures)
            }
            let fresh = try figures()
            XCTAssertEqual(fresh.df, fresh.status, "raid\(level): df and status on a fresh pool")
            XCTAssertEqual(fresh.df[1], 0, "raid\(level): a fresh pool has nothing used, parity or not")
            XCTAssertGreaterThan(fresh.df[0], 0)

            try makeDirectory(levelPool.path("vm"))
            let fd = try openFile(levelPool.path("vm/disk.img"), O_WRONLY)
            for index in 0..<24 { try writeAll(fd, [UInt8](repeating: UInt8(index + 1), count: Self.mebibyte), at: index * Self.mebibyte) }
            close(fd)
            let written = try figures()
            XCTAssertEqual(written.df, written.status, "raid\(level): df and status after 24 MiB")
            XCTAssertEqual(written.df[1], 24 * Self.mebibyte, "raid\(level): used is what the disk holds")
            XCTAssertEqual(written.df[0], fresh.df[0], "raid\(level): the size stays put")
            XCTAssertEqual(fresh.df[2] - written.df[2], 24 * Self.mebibyte, "raid\(level): available drops by what was written")
            let df = try runProgram("df", ["-B1", "--output=size,used,avail", levelPool.mountpoint])
            let row = df.output.split(separator: "\n").last.map { $0.split(separator: " ").compactMap { Int($0) } } ?? []
            XCTAssertEqual(row, written.df, "raid\(level): df(1): \(df.output)")
            XCTAssertNil(levelPool.unmountAndCheck(), "raid\(level)")
        }
    }
}
