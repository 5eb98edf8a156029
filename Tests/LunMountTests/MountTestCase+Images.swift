// Two disks of random bytes written through the mount, and the check that they read back:
// the fixture of the tests that meddle with drive files (DriveFileTests, RebuildMountTests).
import Foundation
import XCTest
import LunEngineTesting

extension MountTestCase {
    /// Two disks of random bytes written through the mount and fsync'd; returns path -> contents.
    func writeImages(seed: UInt64) throws -> [String: [UInt8]] {
        var rng = SeededRandom(seed: seed)
        var images: [String: [UInt8]] = [:]
        for (name, size) in [("vm", 6 << 20), ("db", 3 << 20 + 12345)] {
            try makeDirectory(pool.path(name))
            let bytes = rng.bytes(size)
            let fd = try openFile(pool.path(name + "/disk.img"), O_WRONLY)
            try writeAll(fd, bytes, at: 0)
            try check(fsync(fd))
            close(fd)
            images[name + "/disk.img"] = bytes
        }
        return images
    }

    func assertImages(_ images: [String: [UInt8]], _ what: String) throws {
        for (path, bytes) in images.sorted(by: { $0.key < $1.key }) {
            let read = try readWholeFile(pool.path(path))
            XCTAssertTrue(read.count == bytes.count && sameBytes(read[...], bytes[...]), "\(path) after \(what)")
        }
    }
}
