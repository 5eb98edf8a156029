// A second host on a snapshot on separate storage (issue 16 item 3): `lunfs attach` runs in
// its own network namespace (unshare -n: no network but a downed loopback) and reaches the
// coordinator, the mounted daemon that owns V and the validity map, over a Unix socket. While
// the first host writes V through the tree and the background copy runs, the second host
// writes the snapshot and reads all of it back through its own NBD export; every byte must
// be the snapshot's or its own writes, the coordinator's tree must show the same, and once
// the copy is done the file alone must hold them.
import Foundation
import XCTest

final class SecondHostTests: XCTestCase {
    func testSecondHostReadsAndWritesTheSnapshotWhileTheFirstWritesV() throws {
        try requireFUSE()
        try requireNBDClients()
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare") else { throw XCTSkip("no unshare") }
        var random = SeededGenerator(seed: newSeed(#function))
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-vss2-\(UUID().uuidString.prefix(6))").path
        try FileManager.default.createDirectory(atPath: scratch + "/ext", withIntermediateDirectories: true)
        let coordinatorSocket = scratch + "/coordinator.sock", localSocket = scratch + "/second-host.sock"
        let pool = try MountedPool(drives: 5, driveSize: "512M", mountArguments: ["--nbd", coordinatorSocket, "--nbd-writable"])
        var attachPid: pid_t = 0
        defer {
            if attachPid > 0 { kill(attachPid, SIGKILL); _ = waitForProgram(attachPid, timeoutSeconds: 5) }
            pool.tearDown()
            try? FileManager.default.removeItem(atPath: scratch)
        }
        let size = 256 << 20
        try makeDirectory(pool.path("vm"))
        var vImage = random.bytes(size)
        let vfd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        try writeAll(vfd, vImage, at: 0)
        try check(fsync(vfd))
        let file = scratch + "/ext/monday.img"
        let made = try pool.lunfs(["snapshot", "--to", file, pool.path("vm"), "monday"])
        XCTAssertEqual(made.status, 0, made.errorOutput)
        var snapshot = vImage

        // The second host: its own network namespace, the coordinator over a Unix socket.
        attachPid = try startProgram("/usr/bin/unshare", ["-n", pool.binary, "attach", coordinatorSocket, "vm/monday", "--nbd", localSocket])
        let deadline = Date().addingTimeInterval(20)
        while !FileManager.default.fileExists(atPath: localSocket) {
            guard Date() < deadline, waitForProgram(attachPid, timeoutSeconds: 0) == nil else { throw FixtureError("lunfs attach did not come up\(pool.logTail())") }
            usleep(20_000)
        }
        let ours = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/net")
        let theirs = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(attachPid)/ns/net")
        XCTAssertNotEqual(ours, theirs, "the second host runs in a network namespace of its own")
        let progressAtAttach = try getAttribute(pool.path("vm/monday"), "user.lunfs.copy_progress")
        let uri = "nbd+unix:///vm/monday?socket=\(localSocket)"

        // The first host writes V (fsync'd 64 KiB writes) all along.
        final class Shared: @unchecked Sendable {
            let lock = NSLock()
            var stopping = false
            var writes: [(Int, [UInt8])] = []
        }
        let shared = Shared(), done = DispatchSemaphore(value: 0)
        let writerSeed = random.next()
        Thread {
            var r = SeededGenerator(seed: writerSeed)
            while !shared.lock.withLock({ shared.stopping }) {
                let off = Int(r.next() % UInt64(size / 65536)) * 65536
                let bytes = r.bytes(65536)
                guard (try? writeAll(vfd, bytes, at: off)) != nil, fsync(vfd) == 0 else { break }
                shared.lock.withLock { shared.writes.append((off, bytes)) }
            }
            done.signal()
        }.start()

        // The first host's tree holds the snapshot open and has its pages cached.
        let treeFd = try openFile(pool.path("vm/monday/disk.img"), O_RDONLY)
        XCTAssertTrue(try readBytes(treeFd, count: 16 << 20, at: 0) == Array(snapshot[0..<16 << 20]))
        // The second host writes: whole blocks, parts of blocks, across block edges.
        for (i, (off, len)) in [(1000, 70_000), (65536 * 7, 65536), (size / 2 - 100, 300_000), (size - 5000, 5000), (12 << 20, 3 << 20)].enumerated() {
            let pattern = UInt8(0x11 * (i + 1))
            let result = try runProgram("qemu-io", ["-f", "raw", "-c", "write -P \(pattern) \(off) \(len)", uri])
            XCTAssertEqual(result.status, 0, result.errorOutput + result.output)
            snapshot.replaceSubrange(off..<off + len, with: [UInt8](repeating: pattern, count: len))
        }
        // ... and reads everything back through its own export while V is still written.
        let copied = scratch + "/read-back.img"
        let read = try runProgram("nbdcopy", [uri, copied])
        XCTAssertEqual(read.status, 0, read.errorOutput)
        XCTAssertTrue(try readWholeFile(copied) == snapshot, "the second host reads the snapshot's bytes and its own writes")
        shared.lock.withLock { shared.stopping = true }
        done.wait()
        close(vfd)
        for (off, bytes) in shared.lock.withLock({ shared.writes }) { vImage.replaceSubrange(off..<off + bytes.count, with: bytes) }

        // The first host's tree shows the same snapshot (the pages it had cached too); V has its own writes.
        XCTAssertTrue(try readBytes(treeFd, count: 16 << 20, at: 0) == Array(snapshot[0..<16 << 20]), "pages the tree had cached")
        XCTAssertTrue(try readWholeFile(pool.path("vm/monday/disk.img")) == snapshot, "the coordinator's tree shows the second host's writes")
        XCTAssertTrue(try readWholeFile(pool.path("vm/disk.img")) == vImage, "V has its writes")
        // Once the copy is done the file alone holds the snapshot, the second host's writes included.
        let copyDeadline = Date().addingTimeInterval(120)
        while try getAttribute(pool.path("vm/monday"), "user.lunfs.kind") != "independent" {
            guard Date() < copyDeadline else { throw FixtureError("the copy did not finish") }
            usleep(100_000)
        }
        close(treeFd)
        kill(attachPid, SIGTERM)
        XCTAssertEqual(waitForProgram(attachPid, timeoutSeconds: 10), 0)
        attachPid = 0
        XCTAssertTrue(try readWholeFile(file) == snapshot, "the file alone after the copy")
        print("SecondHostTests: copy at \(progressAtAttach) blocks when the second host attached, \(shared.lock.withLock { shared.writes.count }) writes to V meanwhile")
        if let problem = pool.unmountAndCheck() { XCTFail(problem) }
    }
}
