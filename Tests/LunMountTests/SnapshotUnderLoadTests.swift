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

    /// Snapshots taken, a fraction of a second apart, while the writer runs.
    static let snapshotCount = 4

    func testSnapshotOfBusyExt4IsCrashConsistentAndChecksClean() throws {
        XCTAssertEqual(getuid(), 0, "loop devices and mount need root")
        let seed = newSeed(#function)
        var random = SeededGenerator(seed: seed)
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

        // The first batch is synced; the writer goes on creating (every other one fsynced) and
        // deleting files. Snapshot once some of those have reached the disk, then again and
        // again at random moments, the writer never pausing.
        try writer.waitUntil(timeoutSeconds: 30) { $0.firstBatchSynced && $0.laterFilesWritten >= 4 }
        var snapshots: [(name: String, durable: Set<Int>, writtenBefore: Int)] = []
        for index in 0..<Self.snapshotCount {
            let name = "under-load-\(index)"
            let before = writer.state
            let started = Date()
            try makeDirectory(pool.path("fs/" + name))
            let after = writer.state
            print("SnapshotUnderLoadTests: mkdir fs/\(name) took \(String(format: "%.3f", Date().timeIntervalSince(started))) s, \(before.laterFilesWritten) files written since the sync")
            // Files fsynced before the mkdir and not deleted by the time it returned.
            let durable = Set(before.existingLaterFiles.filter(Ext4Writer.isFsynced)).intersection(after.existingLaterFiles)
            snapshots.append((name, durable.union(0..<Ext4Writer.firstBatchCount), before.laterFilesWritten))
            usleep(UInt32.random(in: 100_000...400_000, using: &random))
        }

        // Each snapshot on a loop device of its own, read-write (mounting replays ext4's
        // journal), while the writer keeps going on the live disk.
        let snapshotMount = pool.root.appendingPathComponent("ext4-snapshot").path
        var snapshotFiles: [(whole: Int, partial: Int)] = []
        for (name, durable, _) in snapshots {
            let image = pool.path("fs/\(name)/disk.img")
            let snapshot = try LoopMount(image: image, target: snapshotMount)
            defer { snapshot.release() }
            try snapshot.mount()
            let files = try checkFiles(in: snapshot.target + "/files", writer: writer, mustBeWhole: durable)
            print("SnapshotUnderLoadTests: \(name) holds \(files.whole) whole and \(files.partial) partial files")
            snapshotFiles.append(files)
            try snapshot.unmount()
            try snapshot.detach()
            let fsck = try runProgram("e2fsck", ["-f", "-n", image])
            XCTAssertEqual(fsck.status, 0, "e2fsck of snapshot \(name):\n" + fsck.output + fsck.errorOutput + pool.logTail())
        }

        // A snapshot of the first snapshot reads as its parent did at that moment; changes to
        // the parent afterwards do not reach it.
        let parentImage = pool.path("fs/\(snapshots[0].name)/disk.img")
        try makeDirectory(pool.path("fs/\(snapshots[0].name)/again"))
        let childImage = pool.path("fs/\(snapshots[0].name)/again/disk.img")
        let compared = try runProgram("cmp", [parentImage, childImage])
        XCTAssertEqual(compared.status, 0, "a snapshot of the snapshot must read as its parent: \(compared.output)\(compared.errorOutput)")
        let parent = try LoopMount(image: parentImage, target: snapshotMount)
        defer { parent.release() }
        try parent.mount()
        let removedFromParent = "/files/" + Ext4Writer.name(Ext4Writer.firstBatchCount - 1)
        XCTAssertEqual(try runProgram("rm", [parent.target + removedFromParent]).status, 0)
        XCTAssertTrue(FileManager.default.createFile(atPath: parent.target + "/after-the-second-snapshot",
                                                    contents: Data(repeating: 0x5A, count: 3 << 20)))
        try parent.unmount()
        try parent.detach()
        XCTAssertEqual(try runProgram("e2fsck", ["-f", "-n", parentImage]).status, 0, "e2fsck of the parent after its change")
        let child = try LoopMount(image: childImage, target: pool.root.appendingPathComponent("ext4-child").path)
        defer { child.release() }
        try child.mount(["-o", "ro"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: child.target + "/after-the-second-snapshot"), "a file added to the parent shows in its snapshot")
        let childFiles = try checkFiles(in: child.target + "/files", writer: writer, mustBeWhole: snapshots[0].durable)
        XCTAssertTrue(childFiles == snapshotFiles[0], "the snapshot of the snapshot holds \(childFiles), its parent held \(snapshotFiles[0])")
        try child.unmount()
        try child.detach()

        // The writer went on all along; stop it, check every file it left, then the image.
        XCTAssertGreaterThan(writer.state.laterFilesWritten, snapshots.last!.writtenBefore + 10, "the writer must keep going while the snapshots are checked")
        writer.stopAndWait()
        XCTAssertNil(writer.state.failure, "the writer failed" + pool.logTail())
        let existing = writer.state.existingLaterFiles
        let liveFiles = try checkFiles(in: writer.directory, writer: writer, mustBeWhole: Set(existing).union(0..<Ext4Writer.firstBatchCount), nothingElse: true)
        print("SnapshotUnderLoadTests: the live file system holds \(liveFiles.whole) files; \(writer.state.laterFilesWritten) were written after the sync")
        try live.unmount()
        try live.detach()
        let fsck = try runProgram("e2fsck", ["-f", "-n", liveImage])
        XCTAssertEqual(fsck.status, 0, "e2fsck of the live image:\n" + fsck.output + fsck.errorOutput + pool.logTail())
    }

    /// Compares every file in `directory` with what the writer put there. The files in
    /// `mustBeWhole` (synced or fsynced) must be there, whole; any other file must be whole
    /// or a prefix of its content, which is what ext4's ordered mode leaves of a file caught
    /// mid-write (or, with `nothingElse`, must not be there). Returns how many files were whole
    /// and how many partial.
    func checkFiles(in directory: String, writer: Ext4Writer, mustBeWhole: Set<Int>, nothingElse: Bool = false) throws -> (whole: Int, partial: Int) {
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: directory))
        for index in mustBeWhole.sorted() where !names.contains(Ext4Writer.name(index)) {
            XCTFail("\(directory): \(Ext4Writer.name(index)), synced before, is missing")
        }
        var whole = 0, partial = 0
        for name in names.sorted() {
            guard let index = Ext4Writer.index(of: name), nothingElse ? mustBeWhole.contains(index) : true else {
                XCTFail("\(directory): unexpected file \(name)")
                continue
            }
            let actual = try readWholeFile(directory + "/" + name)
            let expected = writer.content(index)
            if actual.count == expected.count && sameBytes(actual[...], expected[...]) {
                whole += 1
            } else if !mustBeWhole.contains(index) && actual.count < expected.count && sameBytes(actual[...], expected[..<actual.count]) {
                partial += 1
            } else {
                XCTFail("\(directory)/\(name): \(actual.count) bytes that are not \(mustBeWhole.contains(index) ? "" : "a prefix of ")the \(expected.count) written")
            }
        }
        return (whole, partial)
    }
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
    /// The writer fsyncs every other later file (and none of the first batch, which it syncs).
    static func isFsynced(_ index: Int) -> Bool { index >= firstBatchCount && index % 2 == 0 }

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
            try write(index, fsync: Self.isFsynced(index))
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
