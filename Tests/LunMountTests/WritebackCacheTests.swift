// The kernel's writeback cache against the promises lunfs makes: a snapshot (mkdir) holds every
// write(2) that returned before mkdir was called, from any process, buffered or through a
// shared mmap, even though the kernel still held them in its page cache; and a write-back the
// pool cannot store (ENOSPC) is not lost silently: the next fsync and the next close of the
// image fail, the refused bytes do not read back as if stored, and nothing else changes.
import Foundation
import XCTest

/// Writer processes for the snapshot test: each writes `count` 4 KiB blocks of the image, in a
/// shuffled order and each to a different block, block content stamped with the write's index;
/// after each write returns it records how many have returned in a progress file (outside the
/// mount). `mode` "write" uses pwrite(2), "mmap" stores into a shared mapping (no msync).
private let writerScript = """
import mmap, os, random, struct, sys, time
image, progress, mode, first, count, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
order = list(range(count)); random.Random(seed).shuffle(order)
fd = os.open(image, os.O_RDWR)
p = os.open(progress, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
m = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) if mode == "mmap" else None
for i, b in enumerate(order):
    block = first + b
    data = struct.pack("<QQ", i + 1, block) * 256
    if m is None: os.pwrite(fd, data, block * 4096)
    else: m[block * 4096:(block + 1) * 4096] = data
    os.pwrite(p, struct.pack("<Q", i + 1), 0)
    time.sleep(0.0005)
if m is not None: m.close()
os.close(fd)
"""

final class WritebackCacheTests: MountTestCase {
    /// Writes returned before mkdir are in the snapshot, writes begun after it are not; the
    /// ones in between may be either. Two processes write at once, one buffered, one through a
    /// shared mmap, and mkdir lands in the middle of their runs.
    func testSnapshotHoldsEveryWriteThatReturnedBeforeMkdir() throws {
        let blocksPerWriter = 1024
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        try check(truncate(image, off_t(2 * blocksPerWriter * 4096)))
        let script = pool.root.appendingPathComponent("writer.py").path
        try writerScript.write(toFile: script, atomically: true, encoding: .utf8)
        let seed = newSeed(#function)
        let modes = ["write", "mmap"]
        let progress = modes.map { pool.root.appendingPathComponent("progress-\($0)").path }
        var writers: [pid_t] = []
        for (index, mode) in modes.enumerated() {
            writers.append(try startProgram(try pythonPath(), [script, image, progress[index], mode,
                                                               String(index * blocksPerWriter), String(blocksPerWriter), String(seed &+ UInt64(index))]))
        }
        func returned(_ index: Int) -> Int {
            guard let data = FileManager.default.contents(atPath: progress[index]), data.count >= 8 else { return 0 }
            return data.withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self)) }
        }
        let deadline = Date().addingTimeInterval(60)
        while (returned(0) < blocksPerWriter / 4 || returned(1) < blocksPerWriter / 4) && Date() < deadline { usleep(5000) }
        let before = [returned(0), returned(1)]
        XCTAssertTrue(before.allSatisfy { $0 >= blocksPerWriter / 4 }, "the writers did not get going: \(before)")
        let started = Date()
        try makeDirectory(pool.path("vm/snap"))
        let mkdirSeconds = Date().timeIntervalSince(started)
        let after = [returned(0), returned(1)]
        print("WritebackCacheTests: mkdir took \(String(format: "%.3f", mkdirSeconds)) s with \(before) writes returned before, \(after) after")
        for pid in writers { XCTAssertEqual(waitForProgram(pid, timeoutSeconds: 120), 0, "a writer failed") }
        XCTAssertLessThan(before[0], blocksPerWriter, "mkdir came after the buffered writer finished: the test proves little")
        XCTAssertLessThan(before[1], blocksPerWriter, "mkdir came after the mmap writer finished: the test proves little")

        let snapshot = try readWholeFile(pool.path("vm/snap/disk.img"))
        let live = try readWholeFile(image)
        XCTAssertEqual(snapshot.count, 2 * blocksPerWriter * 4096)
        var checked = 0
        for writer in 0..<2 {
            for block in writer * blocksPerWriter..<(writer + 1) * blocksPerWriter {
                let stamp = Self.stamp(snapshot, block)
                let liveStamp = Self.stamp(live, block)
                // Every block is written exactly once, so the live image holds each stamp.
                XCTAssertNotNil(liveStamp, "live block \(block) is not a whole written block")
                guard let liveStamp else { continue }
                if liveStamp <= before[writer] {
                    XCTAssertEqual(stamp, liveStamp, "write \(liveStamp) to block \(block) returned before mkdir but is not in the snapshot")
                    checked += 1
                } else if liveStamp > after[writer] {
                    XCTAssertEqual(stamp, 0, "write \(liveStamp) to block \(block) began after mkdir returned but is in the snapshot")
                } else {
                    XCTAssertTrue(stamp == 0 || stamp == liveStamp, "block \(block) of the snapshot is neither before nor after write \(liveStamp)")
                }
            }
        }
        XCTAssertEqual(checked, before[0] + before[1])
    }

    /// mkdir hands over only the pages that are dirty (sync_file_range on the image's inode,
    /// opened by file handle), so the image's clean pages stay in the kernel's cache: a snapshot does not make the next
    /// reads of the disk go to the drives. (The notify it replaced dropped every cached page.)
    func testSnapshotKeepsTheImagesCleanPagesCached() throws {
        let bytes = 16 << 20
        try makeDirectory(pool.path("db"))
        let image = pool.path("db/disk.img")
        let fd = open(image, O_RDWR)
        try check(fd >= 0 ? 0 : -1)
        defer { close(fd) }
        var block = [UInt8](repeating: 0, count: 1 << 20)
        for mib in 0..<(bytes >> 20) {
            for i in stride(from: 0, to: block.count, by: 512) { block[i] = UInt8(truncatingIfNeeded: mib &+ i >> 9 &+ 1) }
            XCTAssertEqual(block.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(mib << 20)) }, block.count)
        }
        try check(fsync(fd))
        // Half the pages dirty again when mkdir comes: those are handed over, the rest stay.
        for mib in stride(from: 0, to: bytes >> 20, by: 2) {
            XCTAssertEqual(block.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(mib << 20)) }, block.count)
        }
        func residentPages() -> Int {
            guard let map = mmap(nil, bytes, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else { return -1 }
            defer { munmap(map, bytes) }
            var vector = [UInt8](repeating: 0, count: bytes / 4096)
            guard mincore(map, bytes, &vector) == 0 else { return -1 }
            return vector.filter { $0 & 1 != 0 }.count
        }
        let before = residentPages()
        // Past the entry timeout (1 s): the hand-over must not depend on a fresh name.
        usleep(1_500_000)
        try makeDirectory(pool.path("db/snap"))
        let after = residentPages()
        print("WritebackCacheTests: \(before) pages of the image cached before mkdir, \(after) after")
        XCTAssertEqual(before, bytes / 4096, "the written image is not in the page cache: the test proves nothing")
        XCTAssertGreaterThanOrEqual(after, before * 9 / 10, "mkdir dropped the image's cached pages")
        // The snapshot holds the second round of writes, which were dirty at mkdir.
        let snapshot = try readWholeFile(pool.path("db/snap/disk.img"))
        let live = try readWholeFile(image)
        XCTAssertEqual(snapshot.count, bytes)
        XCTAssertTrue(snapshot == live, "the snapshot differs from the image nobody wrote since")
    }

    /// The write index a block holds (0 for a block of zeros), nil if it is neither a whole
    /// stamped block nor zeros.
    private static func stamp(_ image: [UInt8], _ block: Int) -> Int? {
        let bytes = image[block * 4096..<(block + 1) * 4096]
        if bytes.allSatisfy({ $0 == 0 }) { return 0 }
        let pattern = bytes.withUnsafeBytes { Array($0.prefix(16)) }
        let index = pattern.withUnsafeBytes { Int($0.loadUnaligned(as: UInt64.self)) }
        let named = pattern.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
        guard named == block else { return nil }
        for offset in stride(from: 0, to: 4096, by: 16) where !sameBytes(bytes[bytes.startIndex + offset..<bytes.startIndex + offset + 16], pattern[...]) {
            return nil
        }
        return index
    }

    /// More buffered writes than the pool can hold all return (the kernel took them); the
    /// next fsync and the next close fail with ENOSPC, the log says so, the refused range does
    /// not read back as written, and another disk's bytes and the pool's consistency (checked
    /// after the test) are untouched.
    func testWriteBackThePoolCannotStoreFailsFsyncAndClose() throws {
        try makeDirectory(pool.path("keep"))
        let kept = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        let keepFD = try openFile(pool.path("keep/disk.img"), O_RDWR)
        try writeAll(keepFD, kept, at: 0)
        try check(fsync(keepFD))
        try check(close(keepFD))

        try makeDirectory(pool.path("big"))
        let fd = try openFile(pool.path("big/disk.img"), O_RDWR)
        let capacity = Int(try statistics(pool.mountpoint).f_blocks) * Int(try statistics(pool.mountpoint).f_frsize)
        let piece = [UInt8](repeating: 0x5A, count: 1 << 20)
        let total = capacity / (1 << 20) + 16
        for index in 0..<total {
            // With the writeback cache each write(2) returns once the kernel has the bytes.
            XCTAssertEqual(errnoOf { try writeAll(fd, piece, at: index << 20) }, 0, "write \(index) was refused at write(2)")
        }
        XCTAssertEqual(errnoOf { try check(fsync(fd)) }, ENOSPC, "fsync did not report the refused write-back" + pool.logTail())
        XCTAssertEqual(close(fd) == 0 ? 0 : errno, ENOSPC, "close did not report the refused write-back")
        XCTAssertTrue(pool.logTail().contains("write-back of"), "the refusal is not in the log" + pool.logTail())

        // What reads back past the stored part is what the pool holds (zeros), not the
        // refused bytes the kernel had cached.
        let back = try readWholeFile(pool.path("big/disk.img"))
        let last = back.suffix(1 << 20)
        XCTAssertTrue(last.allSatisfy { $0 == 0 }, "the last MiB, refused, reads back as if it had been stored")
        // The owed errors are paid: a new handle's fsync succeeds.
        let again = try openFile(pool.path("big/disk.img"), O_RDWR)
        XCTAssertEqual(errnoOf { try check(fsync(again)) }, 0)
        try check(close(again))
        XCTAssertEqual(try readWholeFile(pool.path("keep/disk.img")), kept)
    }
}

extension WritebackCacheTests {
    /// A buffered write past the largest disk size (64 TiB) is taken by the kernel's cache;
    /// its write-back is refused, and the next fsync and close fail with EFBIG.
    func testWriteBackPastTheLargestDiskFailsFsyncAndClose() throws {
        try makeDirectory(pool.path("vm"))
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        XCTAssertEqual(errnoOf { try writeAll(fd, [UInt8](repeating: 7, count: 4096), at: (64 << 40) + 8192) }, 0,
                       "the kernel takes the write into its cache")
        XCTAssertEqual(errnoOf { try check(fsync(fd)) }, EFBIG, pool.logTail())
        XCTAssertEqual(close(fd) == 0 ? 0 : errno, EFBIG)
        XCTAssertEqual(try getAttribute(pool.path("vm"), "user.lunfs.size"), "0", "nothing was stored")
    }
}

/// python3 for the writer processes.
private func pythonPath() throws -> String {
    for candidate in ["/usr/bin/python3", "/usr/local/bin/python3"] where FileManager.default.isExecutableFile(atPath: candidate) {
        return candidate
    }
    throw XCTSkip("python3 is needed for the writer processes")
}
