// A RAID 5 pool mounted with a drive file missing still takes writes and copies on write
// (new stores are built degraded from the drives that remain), and `status` says at the top
// that it is degraded and which disks lost their redundancy. When the drive file comes back
// it is rebuilt at mount; after that another drive can go and every byte still reads back.
import Foundation
import XCTest
import LunEngineTesting

final class DegradedPoolTests: MountTestCase {
    private func drivePath(_ i: Int) -> String { pool.poolPath + String(format: "/drive-%02d.img", i) }

    private func assertImage(_ path: String, _ bytes: [UInt8], _ what: String) throws {
        let read = try readWholeFile(pool.path(path))
        XCTAssertTrue(read.count == bytes.count && sameBytes(read[...], bytes[...]), "\(path) \(what)")
    }

    func testMissingDriveLeavesThePoolWritableAndStatusSaysWhatIsAtRisk() throws {
        var rng = SeededRandom(seed: newSeed("testMissingDriveLeavesThePoolWritableAndStatusSaysWhatIsAtRisk"))
        try makeDirectory(pool.path("vm"))
        var vm = rng.bytes(8 << 20)
        var fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, vm, at: 0)
        close(fd)
        try makeDirectory(pool.path("vm/monday"))
        let monday = vm
        try pool.unmount()

        let aside = pool.root.appendingPathComponent("drive-04.aside").path
        try check(rename(drivePath(4), aside))
        try pool.mount()
        let before = try pool.lunfs(["status", pool.poolPath])
        XCTAssertTrue(before.output.split(separator: "\n").dropFirst().first?.hasPrefix("health: DEGRADED") ?? false,
                      "the second line says so: \(before.output)")
        XCTAssertTrue(before.output.contains("disks at risk: vm, vm/monday"), before.output)

        // Copy on write over the snapshot's segments, and 40 MiB more: both need new stores.
        let overwrite = rng.bytes(3 << 20)
        let more = rng.bytes(40 << 20)
        fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, overwrite, at: 1 << 20)
        try writeAll(fd, more, at: 8 << 20)
        try check(fsync(fd))
        close(fd)
        vm.replaceSubrange((1 << 20)..<(4 << 20), with: overwrite)
        vm += more
        try makeDirectory(pool.path("db"))
        let db = rng.bytes(5 << 20 + 4096)
        fd = try openFile(pool.path("db/disk.img"), O_WRONLY)
        try writeAll(fd, db, at: 0)
        close(fd)
        try assertImage("vm/disk.img", vm, "with drive 4 missing")
        try assertImage("vm/monday/disk.img", monday, "with drive 4 missing")
        try assertImage("db/disk.img", db, "with drive 4 missing")
        let json = try pool.lunfs(["status", "--json", pool.poolPath])
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any])
        let health = try XCTUnwrap(report["health"] as? [String: Any])
        XCTAssertEqual(health["degraded"] as? Bool, true)
        XCTAssertEqual(health["disksWithoutRedundancy"] as? [String], ["db", "vm", "vm/monday"])
        XCTAssertEqual(health["unreadableStores"] as? Int, 0)
        XCTAssertEqual((report["drives"] as? [[String: Any]])?[4]["state"] as? String, "missing")
        try pool.unmount()

        // Back: rebuilt at mount, healthy, and then it carries the loss of another drive.
        try check(rename(aside, drivePath(4)))
        try pool.mount()
        let after = try pool.lunfs(["status", pool.poolPath])
        XCTAssertTrue(after.output.contains("health: ok"), after.output)
        try pool.unmount()
        XCTAssertEqual(unlink(drivePath(1)), 0)
        try pool.mount(["-o", "ro"])
        try assertImage("vm/disk.img", vm, "after drive 4 was rebuilt and drive 1 lost")
        try assertImage("vm/monday/disk.img", monday, "after drive 4 was rebuilt and drive 1 lost")
        try assertImage("db/disk.img", db, "after drive 4 was rebuilt and drive 1 lost")
        pool.checksAfterTest = false   // drive 1 is gone on purpose
    }
}
