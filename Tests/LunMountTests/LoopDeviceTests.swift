// The images as block devices: a file system made with mkfs.ext4, mounted through a loop
// device, filled, unmounted and checked clean by e2fsck.
import Foundation
import XCTest

final class LoopDeviceTests: MountTestCase {
    func testExt4OnLoopDeviceChecksClean() throws {
        // Only a missing /dev/fuse skips; without root or loop devices this test fails.
        XCTAssertEqual(getuid(), 0, "loop mounts need root")
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("fs"))
        let image = pool.path("fs/disk.img")
        try check(truncate(image, 128 << 20))
        let mkfs = try runProgram("mkfs.ext4", ["-q", "-F", image])
        XCTAssertEqual(mkfs.status, 0, mkfs.errorOutput + pool.logTail())

        let target = pool.root.appendingPathComponent("ext4").path
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        let mount = try runProgram("mount", ["-o", "loop", image, target])
        guard mount.status == 0 else {
            XCTFail("mount -o loop failed: \(mount.errorOutput)")
            return
        }
        var files: [String: [UInt8]] = [:]
        do {
            defer { _ = try? runProgram("umount", [target]) }
            for index in 0..<12 {
                let bytes = random.bytes(index == 0 ? 9 << 20 : Int.random(in: 1...400_000, using: &random))
                let name = "file\(index)"
                XCTAssertTrue(FileManager.default.createFile(atPath: target + "/" + name, contents: Data(bytes)))
                files[name] = bytes
            }
            XCTAssertEqual(try runProgram("sync", []).status, 0)
        }
        XCTAssertFalse(isMountPoint(target))

        let fsck = try runProgram("e2fsck", ["-f", "-n", image])
        XCTAssertEqual(fsck.status, 0, fsck.output + fsck.errorOutput + pool.logTail())

        // The files are still there after a remount of the pool.
        try pool.remount()
        XCTAssertEqual(try runProgram("mount", ["-o", "loop,ro", image, target]).status, 0)
        defer { _ = try? runProgram("umount", [target]) }
        for (name, bytes) in files {
            XCTAssertEqual(try readWholeFile(target + "/" + name), bytes, name)
        }
    }
}
