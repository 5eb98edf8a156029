// Drives joining and leaving a mounted pool (issue 14's mount test): while fio writes and
// verifies (crc32c) a 64 MiB disk through the tree, `lunfs drive add` grows the pool from 5
// to 8 drives and `lunfs drive remove --wait` shrinks it to 6 (a metadata mirror among them);
// another disk's bytes read back the same after every step and after a remount, and `lunfs
// drive list` and `status` show the drive set. Unmounted, add, remove and replace (of a
// mirror) level the pool before they return. The fixture's `check --scrub` afterwards proves
// the maps and stores agree.
import Foundation
import XCTest

final class DriveMountTests: MountTestCase {
    override var driveSize: String { "128M" }

    func testPoolGrowsFromFiveToEightDrivesAndShrinksToSixWhileFioVerifies() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/fio") else { return XCTFail("fio is missing (.ci/run installs it)") }
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("kept"))
        let kept = random.bytes(16 << 20)
        let fd = try openFile(pool.path("kept/disk.img"), O_RDWR)
        try writeAll(fd, kept, at: 0)
        XCTAssertEqual(fsync(fd), 0)
        close(fd)
        try makeDirectory(pool.path("vm"))
        try check(truncate(pool.path("vm/disk.img"), 64 << 20))
        let fio = try startProgram("/usr/bin/fio", ["--name=verify", "--filename=\(pool.path("vm/disk.img"))", "--rw=randwrite",
                                                    "--bs=64k", "--size=64M", "--ioengine=psync", "--verify=crc32c",
                                                    "--verify_backlog=32", "--verify_fatal=1", "--verify_state_save=0", "--fsync=16",
                                                    "--time_based", "--runtime=25"])
        var fioRunning = true
        defer { if fioRunning { kill(fio, SIGKILL); _ = waitForProgram(fio, timeoutSeconds: 30) } }
        sleep(2)

        let files = (5..<8).map { root in pool.root.appendingPathComponent("extra-\(root).img").path }
        for f in files { XCTAssertTrue(FileManager.default.createFile(atPath: f, contents: nil)); try check(truncate(f, 128 << 20)) }
        let add = try pool.lunfs(["drive", "add", pool.poolPath] + files + ["--wait"])
        XCTAssertEqual(add.status, 0, add.errorOutput + pool.logTail())
        XCTAssertTrue(add.output.contains("added drive 5") && add.output.contains("added drive 7"), add.output)
        XCTAssertEqual(try readWholeFile(pool.path("kept/disk.img")), kept, "after growing to 8 drives")
        let list = try pool.lunfs(["drive", "list", pool.poolPath])
        XCTAssertEqual(list.status, 0, list.errorOutput)
        let rows = list.output.split(separator: "\n").dropFirst()
        XCTAssertEqual(rows.count, 8, list.output)
        XCTAssertTrue(rows.allSatisfy { $0.contains("online") }, list.output)
        XCTAssertTrue(rows.last!.contains("extra-7.img"), list.output)
        // Leveling gave the new drives a share of the used space.
        let grown = try driveUse()
        XCTAssertTrue((5..<8).allSatisfy { (grown[$0] ?? 0) > 0 }, "used bytes per drive after leveling: \(grown)")

        // Drive 0 holds a metadata mirror: it moves to another drive first.
        for n in [0, 6] {
            let remove = try pool.lunfs(["drive", "remove", pool.poolPath, String(n), "--wait"])
            XCTAssertEqual(remove.status, 0, remove.output + remove.errorOutput + pool.logTail())
            XCTAssertEqual(try readWholeFile(pool.path("kept/disk.img")), kept, "after removing drive \(n)")
        }
        XCTAssertEqual(try driveUse().keys.sorted(), [1, 2, 3, 4, 5, 7])
        let refused = try pool.lunfs(["drive", "remove", pool.poolPath, "42"])
        XCTAssertNotEqual(refused.status, 0, "drive 42 does not exist")
        XCTAssertTrue(refused.errorOutput.contains("no drive 42"), refused.errorOutput)

        let status = waitForProgram(fio, timeoutSeconds: 120)
        fioRunning = false
        XCTAssertEqual(status, 0, "fio's crc32c verification failed or fio did not finish" + pool.logTail())
        try pool.remount()
        XCTAssertEqual(try readWholeFile(pool.path("kept/disk.img")), kept, "after remounting the pool of 6 drives")
        XCTAssertEqual(try driveUse().keys.sorted(), [1, 2, 3, 4, 5, 7])

        // Unmounted, the verbs open the pool themselves and level it before they return.
        try pool.unmount()
        let files8and9 = (8...9).map { pool.root.appendingPathComponent("extra-\($0).img").path }
        for file in files8and9 {
            XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: nil))
            try check(truncate(file, 128 << 20))
        }
        // Drive 1 holds a metadata mirror: replace moves it to the new drive 9.
        for args in [["add", pool.poolPath, files8and9[0]], ["remove", pool.poolPath, "7"], ["replace", pool.poolPath, "1", files8and9[1]]] {
            let r = try pool.lunfs(["drive"] + args)
            XCTAssertEqual(r.status, 0, "drive \(args): " + r.output + r.errorOutput)
        }
        let offline = try pool.lunfs(["drive", "list", pool.poolPath])
        let offlineRows = offline.output.split(separator: "\n").dropFirst()
        XCTAssertEqual(offlineRows.map { $0.split(separator: " ").first.map(String.init) ?? "" }, ["2", "3", "4", "5", "8", "9"], offline.output)
        XCTAssertTrue(offlineRows.last!.contains("metadata"), offline.output)
        try pool.mount()
        XCTAssertEqual(try readWholeFile(pool.path("kept/disk.img")), kept, "after the unmounted add and remove")
        XCTAssertGreaterThan(try driveUse()[8] ?? 0, 0, "the unmounted add levelled onto the new drive")
    }

    /// Used bytes per drive index, from `lunfs status --json` (the daemon's live figures).
    private func driveUse() throws -> [Int: UInt64] {
        let result = try pool.lunfs(["status", "--json", pool.poolPath])
        guard result.status == 0, let object = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any],
              let drives = object["drives"] as? [[String: Any]] else { throw FixtureError("status --json: \(result.errorOutput)") }
        var use: [Int: UInt64] = [:]
        for d in drives { use[d["index"] as! Int] = (d["usedBytes"] as? NSNumber)?.uint64Value ?? 0 }
        return use
    }
}
