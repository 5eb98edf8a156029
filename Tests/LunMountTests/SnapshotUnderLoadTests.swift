// Snapshots the way they are taken in production: mkdir of a snapshot of a disk whose ext4 is
// mounted and busy, without freezing the file system. Such a snapshot is what a power cut at
// that instant would have left, so once ext4 has replayed its journal every file synced
// before the mkdir must be there byte for byte, a file caught mid-write may be short but never
// wrong, and e2fsck must find the file system clean. The live file system, which the writer
// kept using throughout, and a snapshot of the snapshot are checked too.
import Foundation
import XCTest

final class SnapshotUnderLoadTests: MountTestCase {
    /// 1 GiB of ext4 plus the copies that copy on write makes: larger drives than the default.
    override var driveSize: String { "1G" }

    func testSnapshotOfBusyExt4IsCrashConsistentAndChecksClean() throws {
        XCTAssertEqual(getuid(), 0, "loop devices and mount need root")
        let seed = newSeed(#function)
        try makeDirectory(pool.path("fs"))
        let liveImage = pool.path("fs/disk.img")
        try check(truncate(liveImage, 1 << 30))
        let mkfs = try runProgram("mkfs.ext4", ["-q", "-F", liveImage])
        XCTAssertEqual(mkfs.status, 0, mkfs.errorOutput + pool.logTail())

        let live = try LoopMount(image: liveImage, target: pool.root.appendingPathComponent("ext4-live").path)
        defer { live.release() }
        try live.mount()
        let writer = Ext4Writer(directory: live.target + "/files", seed: seed)
        try FileManager.default.createDirectory(atPath: writer.directory, withIntermediateDirectories: true)
        writer.start()
        defer { writer.stopAndWait() }

        // The first batch is synced; the writer goes on creating (and every other time
        // fsyncing, and deleting) files. Snapshot once a few of those have reached the disk.
        try writer.waitUntil(timeoutSeconds: 30) { $0.firstBatchSynced && $0.laterFilesWritten >= 6 }
        let started = Date()
        try makeDirectory(pool.path("fs/under-load"))
        let mkdirSeconds = Date().timeIntervalSince(started)
        let writtenAtSnapshot = writer.state.laterFilesWritten
        print("SnapshotUnderLoadTests: mkdir of the snapshot took \(String(format: "%.3f", mkdirSeconds)) s with \(writtenAtSnapshot) files written after the sync")

        // The snapshot, on a loop device of its own, read-write: mounting replays the journal.
        let snapshotImage = pool.path("fs/under-load/disk.img")
        let snapshot = try LoopMount(image: snapshotImage, target: pool.root.appendingPathComponent("ext4-snapshot").path)
        defer { snapshot.release() }
        try snapshot.mount()
        let snapshotFiles = try checkFiles(in: snapshot.target + "/files", writer: writer)
        XCTAssertGreaterThanOrEqual(snapshotFiles.whole, Ext4Writer.firstBatchCount, "every synced file must be whole")
        try snapshot.unmount()
        try snapshot.detach()
        let snapshotCheck = try runProgram("e2fsck", ["-f", "-n", snapshotImage])
        XCTAssertEqual(snapshotCheck.status, 0, "e2fsck of the snapshot:\n" + snapshotCheck.output + snapshotCheck.errorOutput + pool.logTail())

        // A snapshot of the snapshot reads as its parent did at that moment, and keeps doing so
        // when the parent changes afterwards.
        let parentDigest = try sha256(snapshotImage)
        try makeDirectory(pool.path("fs/under-load/again"))
        let childImage = pool.path("fs/under-load/again/disk.img")
        XCTAssertEqual(try sha256(childImage), parentDigest, "a snapshot of the snapshot must read as its parent")
        let parentAgain = try LoopMount(image: snapshotImage, target: snapshot.target)
        defer { parentAgain.release() }
        try parentAgain.mount()
        XCTAssertTrue(FileManager.default.createFile(atPath: parentAgain.target + "/after-the-second-snapshot",
                                                    contents: Data(repeating: 0x5A, count: 3 << 20)))
        try parentAgain.unmount()
        try parentAgain.detach()
        XCTAssertNotEqual(try sha256(snapshotImage), parentDigest, "the parent was written to")
        XCTAssertEqual(try sha256(childImage), parentDigest, "writes to the parent must not show in its snapshot")

        // The writer went on all along; stop it and check everything it wrote, then the image.
        XCTAssertGreaterThan(writer.state.laterFilesWritten, writtenAtSnapshot, "the writer must keep going while the snapshot is checked")
        writer.stopAndWait()
        XCTAssertNil(writer.state.failure, "the writer failed" + pool.logTail())
        let liveFiles = try checkFiles(in: writer.directory, writer: writer, expectEveryFile: true)
        print("SnapshotUnderLoadTests: snapshot held \(snapshotFiles.whole) whole and \(snapshotFiles.partial) partial files; live holds \(liveFiles.whole) files, \(writer.state.laterFilesWritten) written after the sync")
        try live.unmount()
        try live.detach()
        let liveCheck = try runProgram("e2fsck", ["-f", "-n", liveImage])
        XCTAssertEqual(liveCheck.status, 0, "e2fsck of the live image:\n" + liveCheck.output + liveCheck.errorOutput + pool.logTail())
    }

    /// Compares every file in `directory` with what the writer put there: every first-batch
    /// file must be whole; a later file must be whole, or (unless `expectEveryFile`) a prefix
    /// of its content, which is what ext4's ordered mode leaves of a file caught mid-write.
    /// Returns how many files were whole and how many partial.
    func checkFiles(in directory: String, writer: Ext4Writer, expectEveryFile: Bool = false) throws -> (whole: Int, partial: Int) {
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: directory))
        for index in 0..<Ext4Writer.firstBatchCount where !names.contains(Ext4Writer.name(index)) {
            XCTFail("\(directory): synced file \(Ext4Writer.name(index)) is missing")
        }
        if expectEveryFile {
            let expected = Set(writer.state.existingLaterFiles.map(Ext4Writer.name) + (0..<Ext4Writer.firstBatchCount).map(Ext4Writer.name))
            XCTAssertEqual(names, expected, "\(directory): the files the writer left")
        }
        var whole = 0, partial = 0
        for name in names.sorted() {
            guard let index = Ext4Writer.index(of: name) else {
                XCTFail("\(directory): unexpected file \(name)")
                continue
            }
            let actual = try readWholeFile(directory + "/" + name)
            let expected = writer.content(index)
            if actual.count == expected.count && sameBytes(actual[...], expected[...]) {
                whole += 1
            } else if index >= Ext4Writer.firstBatchCount && !expectEveryFile && actual.count < expected.count
                        && sameBytes(actual[...], expected[..<actual.count]) {
                partial += 1
            } else {
                XCTFail("\(directory)/\(name): \(actual.count) bytes that are not (a prefix of) the \(expected.count) written")
            }
        }
        return (whole, partial)
    }

    func sha256(_ path: String) throws -> String {
        let result = try runProgram("sha256sum", [path])
        guard result.status == 0, let digest = result.output.split(separator: " ").first else {
            throw FixtureError("sha256sum \(path) failed: \(result.errorOutput)")
        }
        return String(digest)
    }
}

func sameBytes(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Bool {
    a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in a.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } }
}

/// A thread that writes files of seeded content into a directory of the live ext4: a first
/// batch, then sync(2), then file after file until stopped, fsyncing every other one and
/// deleting the oldest later file once there are 40, so that ext4 also frees and reuses blocks.
final class Ext4Writer: @unchecked Sendable {
    static let firstBatchCount = 24
    static let laterFilesKept = 40

    struct State {
        var firstBatchSynced = false
        var laterFilesWritten = 0
        /// Indexes of the later files that exist now, oldest first.
        var existingLaterFiles: [Int] = []
        var failure: String?
        var finished = false
    }

    let directory: String
    let seed: UInt64
    private let lock = NSLock()
    private var current = State()
    private var stopRequested = false
    private var thread: Thread?

    init(directory: String, seed: UInt64) {
        self.directory = directory
        self.seed = seed
    }

    var state: State { lock.withLock { current } }

    static func name(_ index: Int) -> String {
        index < firstBatchCount ? String(format: "synced-%03d", index) : String(format: "later-%06d", index)
    }

    static func index(of name: String) -> Int? {
        if name.hasPrefix("synced-") { return Int(name.dropFirst("synced-".count)) }
        if name.hasPrefix("later-") { return Int(name.dropFirst("later-".count)) }
        return nil
    }

    /// The bytes of file `index`: 1 byte to 1 MiB (some a whole number of blocks), or 4 MiB
    /// for one file in eight so that some span several ext4 extents.
    func content(_ index: Int) -> [UInt8] {
        var random = SeededGenerator(seed: seed &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
        let size: Int
        switch random.next() % 8 {
        case 0: size = 4 << 20
        case 1: size = Int(random.next() % 256 + 1) * 4096
        default: size = Int(random.next() % (1 << 20)) + 1
        }
        return random.bytes(size)
    }

    func start() {
        let thread = Thread { [self] in
            do {
                try run()
            } catch {
                lock.withLock { current.failure = "\(error)" }
            }
            lock.withLock { current.finished = true }
        }
        self.thread = thread
        thread.start()
    }

    private func run() throws {
        for index in 0..<Self.firstBatchCount {
            try write(index, fsync: false)
        }
        sync()
        lock.withLock { current.firstBatchSynced = true }
        var index = Self.firstBatchCount
        while !lock.withLock({ stopRequested }) {
            try write(index, fsync: index % 2 == 0)
            let oldest: Int? = lock.withLock {
                current.laterFilesWritten += 1
                current.existingLaterFiles.append(index)
                return current.existingLaterFiles.count > Self.laterFilesKept ? current.existingLaterFiles.removeFirst() : nil
            }
            if let oldest {
                try check(unlink(directory + "/" + Self.name(oldest)), "unlink")
            }
            index += 1
        }
    }

    private func write(_ index: Int, fsync wantsFsync: Bool) throws {
        let fd = try openFile(directory + "/" + Self.name(index), O_WRONLY | O_CREAT | O_TRUNC)
        defer { close(fd) }
        try writeAll(fd, content(index), at: 0)
        if wantsFsync { try check(fsync(fd)) }
    }

    /// Polls the writer's state until `condition` holds; throws if the writer failed or the
    /// time is up.
    func waitUntil(timeoutSeconds: Double, _ condition: (State) -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while true {
            let now = state
            if let failure = now.failure { throw FixtureError("the writer failed: \(failure)") }
            if condition(now) { return }
            if now.finished || Date() > deadline { throw FixtureError("the writer did not get there: \(now)") }
            usleep(20_000)
        }
    }

    func stopAndWait() {
        lock.withLock { stopRequested = true }
        guard thread != nil else { return }
        while !state.finished { usleep(10_000) }
    }
}
