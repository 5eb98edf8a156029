// A drive file deleted under a mounted RAID 5 pool: the daemon notices, rebuilds the drive's
// members into free space on the other drives and moves its metadata mirror; then a second
// drive file is deleted, and after a remount without both every image reads back byte for byte.
import Foundation
import XCTest
import LunEngineTesting

final class RebuildMountTests: MountTestCase {
    override var driveCount: Int { 7 }
    override var driveSize: String { "64M" }

    override func setUpWithError() throws {
        // The rebuild starts as soon as a drive leaves service (not after the usual 30 s).
        setenv("LUNFS_REBUILD_DELAY", "0", 1)
        defer { unsetenv("LUNFS_REBUILD_DELAY") }
        pool = try MountedPool(drives: driveCount, driveSize: driveSize, raid: "5")
    }

    private func drivePath(_ i: Int) -> String { pool.poolPath + String(format: "/drive-%02d.img", i) }

    private func status() throws -> [String: Any] {
        let json = try pool.lunfs(["status", "--json", pool.poolPath])
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any], json.output)
    }

    func testDeletedDriveFileIsRebuiltIntoFreeSpaceThenASecondOneGoes() throws {
        let images = try writeImages(seed: newSeed("testDeletedDriveFileIsRebuiltIntoFreeSpaceThenASecondOneGoes"))
        // Drive 2 (a metadata mirror) goes; the daemon still holds it open, so reads and writes
        // would go on working until the unmount, when its bytes would be gone.
        XCTAssertEqual(unlink(drivePath(2)), 0)
        let deadline = Date(timeIntervalSinceNow: 90)
        var rebuilt = false
        while Date() < deadline {
            let report = try status()
            let health = report["health"] as? [String: Any]
            let drive2 = (report["drives"] as? [[String: Any]])?[2]["state"] as? String
            // The drive stays listed as failed (until `drive remove`); no store lacks redundancy.
            if drive2 != "online" && health?["degradedStores"] as? Int == 0 && health?["unreadableStores"] as? Int == 0 {
                rebuilt = true
                break
            }
            usleep(200_000)
        }
        let text = try pool.lunfs(["status", pool.poolPath]).output
        XCTAssertTrue(rebuilt, "drive 2 left service and every store has its redundancy again: \(text)\(pool.logTail())")
        try assertImages(images, "drive 2 was rebuilt into free space")
        XCTAssertEqual(unlink(drivePath(5)), 0)
        try assertImages(images, "drive 5 was deleted too")
        // Without both files: every image still reads (no page cache between: a fresh mount).
        try pool.unmount()
        try pool.mount()
        try assertImages(images, "a remount without drives 2 and 5")
        pool.checksAfterTest = false   // drives 2 and 5 are gone on purpose
    }
}
