// Rollback and group snapshots through the mounted tree (docs/MOUNT.md, "Rollback and group
// snapshots"): bytes read back through the mount after `setfattr user.lunfs.rollback`, after
// `lunfs rollback` on the mounted pool and on the unmounted one, through handles opened
// before; and group snapshots of two busy disks, ext4 on both, and a writer alternating
// sequence numbers between two disks.
import Foundation
import XCTest

final class RollbackMountTests: MountTestCase {
    func testRollbackBySetfattrAndByCommandKeepsEveryState() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let monday = random.bytes(3 << 20)
        var fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        try writeAll(fd, monday, at: 0)
        try makeDirectory(pool.path("vm/monday"))
        // Buffered writes left dirty in the kernel (writeback cache), and pages read into it:
        // the rollback must keep the first in the state before and forget the second.
        var tuesday = monday
        let patch = random.bytes(1 << 20)
        try writeAll(fd, patch, at: 1 << 20)
        tuesday.replaceSubrange(1 << 20 ..< 2 << 20, with: patch)
        let grown = random.bytes(4096)
        try writeAll(fd, grown, at: monday.count)
        tuesday += grown
        assertSame(try readBytes(fd, count: tuesday.count, at: 0), tuesday, "before the rollback")

        XCTAssertEqual(errnoOf { try setAttribute(self.pool.path("vm"), "user.lunfs.rollback", "nonesuch") }, ENOENT)
        XCTAssertEqual(errnoOf { _ = try getAttribute(self.pool.path("vm"), "user.lunfs.last_rollback") }, ENODATA)
        try setAttribute(pool.path("vm"), "user.lunfs.rollback", "monday")
        let before = try getAttribute(pool.path("vm"), "user.lunfs.last_rollback")
        XCTAssertTrue(before.hasPrefix("before-rollback-"), before)
        // The handle opened before is stale: its reads fail, never showing either state.
        let staleRead = errnoOf { _ = try readBytes(fd, count: 4096, at: 0) }
        XCTAssertTrue(staleRead == ESTALE || staleRead == EIO, "read through a stale handle: errno \(staleRead)")
        close(fd)
        fd = -1
        // The kernel drops its name of the old inode as soon as the setxattr is answered.
        try waitForSize(image, monday.count)
        assertSame(try readWholeFile(image), monday, "vm after the rollback")
        assertSame(try readWholeFile(pool.path("vm/monday/disk.img")), monday, "monday, unchanged")
        assertSame(try readWholeFile(pool.path("vm/\(before)/disk.img")), tuesday, "the state before, kept")
        XCTAssertTrue(try String(contentsOfFile: pool.poolPath + "/lunfs.log", encoding: .utf8).contains(before))

        // Through the control socket: back to the state before, which is itself kept.
        fd = try openFile(image, O_RDWR)
        var wednesday = monday
        let change = random.bytes(8192)
        try writeAll(fd, change, at: 4096)
        wednesday.replaceSubrange(4096..<12288, with: change)
        let command = try pool.lunfs(["rollback", pool.poolPath, "vm", before])
        XCTAssertEqual(command.status, 0, command.errorOutput + pool.logTail())
        let second = try getAttribute(pool.path("vm"), "user.lunfs.last_rollback")
        XCTAssertNotEqual(second, before)
        XCTAssertTrue(command.output.contains("vm/\(second)"), command.output)
        XCTAssertEqual(try fileSize(image), tuesday.count, "lunfs rollback returns after the kernel dropped the old inode")
        assertSame(try readWholeFile(image), tuesday, "vm rolled forward")
        assertSame(try readWholeFile(pool.path("vm/\(second)/disk.img")), wednesday, "the rolled-back state, kept")
        assertSame(try readWholeFile(pool.path("vm/monday/disk.img")), monday, "monday")
        assertSame(try readWholeFile(pool.path("vm/\(before)/disk.img")), tuesday, "the first state before")
        let refused = try pool.lunfs(["rollback", pool.poolPath, "vm", "nonesuch"])
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertTrue(refused.errorOutput.contains("errno \(ENOENT)"), refused.errorOutput)
        close(fd)
        fd = -1

        // On the unmounted pool the command opens it itself.
        try pool.unmount()
        let offline = try pool.lunfs(["rollback", pool.poolPath, "vm", "monday"])
        XCTAssertEqual(offline.status, 0, offline.errorOutput)
        try pool.mount()
        assertSame(try readWholeFile(image), monday, "vm rolled back while unmounted")
        let third = try getAttribute(pool.path("vm"), "user.lunfs.last_rollback")
        XCTAssertTrue(offline.output.contains("vm/\(third)"), offline.output)
        assertSame(try readWholeFile(pool.path("vm/\(third)/disk.img")), tuesday, "the third state before")
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: pool.path("vm"))).subtracting(["changes.img"]),
                       ["disk.img", "monday", before, second, third])

        // Rollbacks in a row by setfattr: each drops the image's name after its reply, while
        // the next one holds the directory (once, that waited on the daemon and hung it).
        for i in 0..<6 {
            let target = i % 2 == 0 ? "monday" : try getAttribute(pool.path("vm"), "user.lunfs.last_rollback")
            try setAttribute(pool.path("vm"), "user.lunfs.rollback", target)
        }
        try waitForSize(image, monday.count)
        assertSame(try readWholeFile(image), monday, "vm after rollbacks in a row")
    }

    private func assertSame(_ actual: [UInt8], _ expected: [UInt8], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        guard actual.count != expected.count || !sameBytes(actual[...], expected[...]) else { return }
        let first = (0..<min(actual.count, expected.count)).first { actual[$0] != expected[$0] }
        XCTFail("\(what): \(actual.count) bytes, expected \(expected.count); first difference at \(first.map(String.init) ?? "the end")" + pool.logTail(),
                file: file, line: line)
    }

    private func waitForSize(_ path: String, _ size: Int) throws {
        for _ in 0..<200 where try fileSize(path) != size { usleep(10_000) }
        XCTAssertEqual(try fileSize(path), size, "\(path): the kernel still has the size before the rollback")
    }

    /// 4 KiB blocks carrying one sequence number in every 8 bytes.
    private static func stamp(_ n: UInt64, into buffer: AlignedBuffer) {
        for i in stride(from: 0, to: buffer.count, by: 8) { buffer.bytes.storeBytes(of: n.littleEndian, toByteOffset: i, as: UInt64.self) }
    }

    private static func sequence(_ bytes: [UInt8]) -> UInt64? {
        guard bytes.count >= 8 else { return nil }
        let n = bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        for i in stride(from: 0, to: bytes.count, by: 8) where bytes.withUnsafeBytes({ $0.loadUnaligned(fromByteOffset: i, as: UInt64.self) }) != n { return nil }
        return UInt64(littleEndian: n)
    }

    /// ext4 on two disks, each busy with a file writer, and a third thread writing sequence
    /// numbers with O_DIRECT alternately to two raw disks (first c, then d). Group snapshots by
    /// `lunfs snapshot --name` and by `setfattr user.lunfs.snapshot` on the root: in every
    /// one c's number equals d's or is one ahead, and both ext4 snapshots, once their journal
    /// is replayed, are clean for `e2fsck -fn`.
    func testGroupSnapshotsOfBusyDisksAreOneInstant() throws {
        XCTAssertEqual(getuid(), 0, "loop devices and mount need root")
        for name in ["a", "b", "c", "d"] { try makeDirectory(pool.path(name)) }
        for name in ["a", "b"] {
            try check(truncate(pool.path("\(name)/disk.img"), 48 << 20))
            let mkfs = try runProgram("mkfs.ext4", ["-q", "-F", pool.path("\(name)/disk.img")])
            XCTAssertEqual(mkfs.status, 0, mkfs.errorOutput)
        }
        let mounts = try ["a", "b"].map { try LoopMount(image: pool.path("\($0)/disk.img"), target: pool.root.appendingPathComponent("ext4-\($0)").path) }
        defer { for m in mounts { m.release() } }
        for m in mounts { try m.mount() }
        let shared = WriterState()
        var threads: [Thread] = []
        for (index, target) in mounts.map(\.target).enumerated() {
            threads.append(Thread {
                var random = SeededGenerator(seed: UInt64(index) + 1)
                var n = 0
                while shared.running {
                    let path = target + "/f\(n % 40)"
                    let bytes = random.bytes(Int.random(in: 1...200_000, using: &random))
                    if !FileManager.default.createFile(atPath: path, contents: Data(bytes)) {
                        shared.fail("write \(path) failed")
                        return
                    }
                    n += 1
                }
            })
        }
        let (pathC, pathD) = (pool.path("c/disk.img"), pool.path("d/disk.img"))
        threads.append(Thread {
            let buffer = AlignedBuffer(count: 4096)
            guard let c = try? openFile(pathC, O_RDWR | O_DIRECT_FLAG), let d = try? openFile(pathD, O_RDWR | O_DIRECT_FLAG) else {
                shared.fail("open c or d with O_DIRECT failed: \(errno)")
                return
            }
            defer { close(c); close(d) }
            var n: UInt64 = 0
            while shared.running {
                n += 1
                Self.stamp(n, into: buffer)
                guard pwrite(c, buffer.pointer, 4096, 0) == 4096, pwrite(d, buffer.pointer, 4096, 0) == 4096 else {
                    shared.fail("O_DIRECT write \(n) failed: \(errno)")
                    return
                }
                shared.pairsWritten = n
            }
        })
        for t in threads { t.start() }
        defer {
            shared.stop()
            while threads.contains(where: { !$0.isFinished }) { usleep(1000) }
        }
        while shared.pairsWritten < 20 && shared.problems.isEmpty { usleep(10_000) }
        var groups: [String] = []
        for i in 0..<6 {
            let name = "g\(i)"
            if i % 2 == 0 {
                let result = try pool.lunfs(["snapshot", "--name", name, pool.path("a"), pool.path("b"), pool.path("c"), pool.path("d")])
                XCTAssertEqual(result.status, 0, result.errorOutput + pool.logTail())
            } else {
                try setAttribute(pool.mountpoint, "user.lunfs.snapshot", name)
            }
            groups.append(name)
            let c = Self.sequence(try readWholeFile(pool.path("c/\(name)/disk.img")))
            let d = Self.sequence(try readWholeFile(pool.path("d/\(name)/disk.img")))
            if let c, let d, c == d || c == d + 1, c > 0 {} else { XCTFail("group snapshot \(name): c reads \(String(describing: c)), d \(String(describing: d))") }
            usleep(UInt32.random(in: 50_000...200_000))
        }
        shared.stop()
        while threads.contains(where: { !$0.isFinished }) { usleep(1000) }
        XCTAssertEqual(shared.problems, [])
        XCTAssertEqual(errnoOf { try setAttribute(self.pool.mountpoint, "user.lunfs.snapshot", "g0") }, EEXIST, "a name taken refuses the whole group")
        XCTAssertEqual(errnoOf { try setAttribute(self.pool.mountpoint, "user.lunfs.snapshot", "x\nnonesuch") }, ENOENT)
        XCTAssertNil(try? FileManager.default.contentsOfDirectory(atPath: pool.path("a/x")))
        // Each ext4 snapshot: mount (replays its journal, as after a power cut), unmount, check.
        for name in ["a", "b"] {
            for group in [groups.first!, groups.last!] {
                let image = pool.path("\(name)/\(group)/disk.img")
                let replay = try LoopMount(image: image, target: pool.root.appendingPathComponent("replay").path)
                defer { replay.release() }
                try replay.mount()
                try replay.unmount()
                try replay.detach()
                let fsck = try runProgram("e2fsck", ["-f", "-n", image])
                XCTAssertEqual(fsck.status, 0, "\(name)/\(group): " + fsck.output + fsck.errorOutput + pool.logTail())
            }
        }
    }
}

/// What the writer threads of a test share with it.
private final class WriterState: @unchecked Sendable {
    private let lock = NSLock()
    private var stopped = false, found: [String] = [], pairs: UInt64 = 0
    var running: Bool { lock.withLock { !stopped } }
    func stop() { lock.withLock { stopped = true } }
    func fail(_ problem: String) { lock.withLock { found.append(problem) } }
    var problems: [String] { lock.withLock { found } }
    var pairsWritten: UInt64 {
        get { lock.withLock { pairs } }
        set { lock.withLock { pairs = newValue } }
    }
}
