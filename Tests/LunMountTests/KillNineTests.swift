// kill -9 of the daemon at random moments while a writer makes fsync'd writes of known
// content to several disks and takes snapshots. After each kill the stale mount is cleared,
// the pool remounted, and every disk and snapshot compared with what the writer knew to be
// durable: every fsync'd byte must be there, the one write in flight may be old or new, and
// a snapshot equals its disk at the moment of mkdir. LUNFS_KILL_CYCLES sets the cycle count.
import Foundation
import XCTest

final class KillNineTests: XCTestCase {
    static let diskSize = 16 << 20
    static let block = 64 << 10

    final class StopFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.withLock { value } }
        func set() { lock.withLock { value = true } }
    }

    /// What the writer knows; shared between the writer thread and the test.
    final class Knowledge: @unchecked Sendable {
        let lock = NSLock()
        var images: [String: [UInt8]] = [:]           // disk or snapshot path -> durable image
        var inFlight: (path: String, offset: Int, bytes: [UInt8])?
        var snapshotInFlight: (path: String, image: [UInt8])?
        var writes = 0, snapshots = 0
    }

    func testKillNineKeepsFsyncedData() throws {
        let cycles = ProcessInfo.processInfo.environment["LUNFS_KILL_CYCLES"].flatMap(Int.init) ?? 10
        var rng = SeededGenerator(seed: newSeed("KillNineTests"))
        let pool = try MountedPool(drives: 5, driveSize: "256M")
        defer { pool.tearDown() }
        let knowledge = Knowledge()
        for name in ["a", "b", "c"] {
            try makeDirectory(pool.path(name))
            try check(truncate(pool.path(name + "/disk.img"), off_t(Self.diskSize)))
            knowledge.images[name] = [UInt8](repeating: 0, count: Self.diskSize)
        }
        try check(sync_and_return())
        var totalVerified = 0
        for cycle in 0..<cycles {
            let seed = rng.next()
            let stop = StopFlag()
            let mountpoint = pool.mountpoint
            let writer = Thread {
                var r = SeededGenerator(seed: seed)
                var counter = 0
                while !stop.isSet {
                    if Self.step(mountpoint: mountpoint, knowledge: knowledge, random: &r, cycle: cycle, counter: &counter) == false { return }
                }
            }
            writer.start()
            usleep(UInt32.random(in: 100_000...700_000, using: &rng))
            let pid = try daemonPid(pool)
            kill(pid, SIGKILL)
            _ = waitForExit(pid)
            stop.set()
            while !writer.isFinished { usleep(10_000) }
            _ = try runProgram("fusermount3", ["-u", "-z", pool.mountpoint])
            try pool.mount()
            totalVerified += try verify(pool: pool, knowledge: knowledge, cycle: cycle)
        }
        try pool.unmount()
        let check = try pool.lunfs(["check", pool.poolPath])
        XCTAssertEqual(check.status, 0, check.output + check.errorOutput)
        print("KillNineTests: \(cycles) kill -9 cycles, \(knowledge.writes) fsync'd writes, \(knowledge.snapshots) snapshots, \(totalVerified) bytes verified, fsync'd bytes lost 0")
    }

    /// One writer step: an fsync'd 64 KiB write to a live disk, or (1 in 12) a snapshot.
    /// Returns false once the mount is gone.
    static func step(mountpoint: String, knowledge: Knowledge, random r: inout SeededGenerator, cycle: Int, counter: inout Int) -> Bool {
        func path(_ relative: String) -> String { mountpoint + "/" + relative }
        let disks = ["a", "b", "c"]
        let disk = disks[Int(r.next() % 3)]
        counter += 1
        if r.next() % 12 == 0 {
            let snap = "\(disk)/k\(cycle)-\(counter)"
            let image = knowledge.lock.withLock { knowledge.images[disk]! }
            knowledge.lock.withLock { knowledge.snapshotInFlight = (snap, image) }
            guard mkdir(path(snap), 0o755) == 0 else { return false }
            knowledge.lock.withLock {
                knowledge.images[snap] = image
                knowledge.snapshotInFlight = nil
                knowledge.snapshots += 1
            }
            return true
        }
        let offset = Int(r.next() % UInt64(diskSize / block)) * block
        var bytes = r.bytes(block)
        bytes[0] = UInt8(truncatingIfNeeded: cycle)
        let fd = open(path(disk + "/disk.img"), O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        knowledge.lock.withLock { knowledge.inFlight = (disk, offset, bytes) }
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress!, block, off_t(offset)) }
        guard written == block, fsync(fd) == 0 else { return false }
        knowledge.lock.withLock {
            knowledge.images[disk]!.replaceSubrange(offset..<offset + block, with: bytes)
            knowledge.inFlight = nil
            knowledge.writes += 1
        }
        return true
    }

    func verify(pool: MountedPool, knowledge: Knowledge, cycle: Int) throws -> Int {
        knowledge.lock.lock()
        defer { knowledge.lock.unlock() }
        // A snapshot whose mkdir was cut off may or may not exist; if it does, it is whole.
        if let s = knowledge.snapshotInFlight {
            if FileManager.default.fileExists(atPath: pool.path(s.path + "/disk.img")) { knowledge.images[s.path] = s.image }
            knowledge.snapshotInFlight = nil
        }
        var verified = 0
        for (path, expected) in knowledge.images.sorted(by: { $0.key < $1.key }) {
            let actual = try readWholeFile(pool.path(path + "/disk.img"))
            var ok = actual.count == expected.count && actual.withUnsafeBytes { a in expected.withUnsafeBytes { e in memcmp(a.baseAddress!, e.baseAddress!, a.count) == 0 } }
            if !ok, let f = knowledge.inFlight, f.path == path, actual.count == expected.count {
                // The write in flight at the kill may have landed, in part or whole.
                var withWrite = expected
                withWrite.replaceSubrange(f.offset..<f.offset + f.bytes.count, with: f.bytes)
                let outside = (0..<expected.count).allSatisfy { i in
                    (i >= f.offset && i < f.offset + f.bytes.count) || actual[i] == expected[i]
                }
                let inside = (f.offset..<f.offset + f.bytes.count).allSatisfy { i in actual[i] == expected[i] || actual[i] == withWrite[i] }
                ok = outside && inside
                if ok { knowledge.images[path] = actual }
            }
            XCTAssertTrue(ok, "cycle \(cycle): \(path) lost fsync'd bytes or shows bytes it never had")
            if !ok { throw FixtureError("verification failed at cycle \(cycle) for \(path)\(pool.logTail())") }
            verified += actual.count
        }
        knowledge.inFlight = nil
        return verified
    }

    func daemonPid(_ pool: MountedPool) throws -> pid_t {
        let text = try String(contentsOfFile: pool.poolPath + "/lunfs.pid", encoding: .utf8)
        guard let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw FixtureError("no daemon pid") }
        return pid
    }

    /// The daemon is not our child (it daemonized): poll until it is gone.
    func waitForExit(_ pid: pid_t) -> Bool {
        for _ in 0..<500 {
            if kill(pid, 0) != 0 && errno == ESRCH { return true }
            usleep(10_000)
        }
        return false
    }
}

private func sync_and_return() -> Int32 { sync(); return 0 }
