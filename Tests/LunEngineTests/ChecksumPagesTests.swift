// The checksum pages kept in memory: what a read gets is what the last write put on the drive,
// while pages come and go through a cache far smaller than the working set and several threads
// write and read at once. And through a whole pool on every RAID level: reads after writes find
// the pages in memory, and the drives hold every checksum at once (a pool opened on them
// without a commit verifies every block).
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class ChecksumPagesTests: XCTestCase {
    private static let areaBytes: UInt64 = 64 << 10      // 16 pages per drive
    private static let sumsPerDrive = Int(areaBytes) / ChecksumArea.checksumBytes

    private func rawSums(_ device: MemoryDevice) throws -> [UInt32] {
        var out = [UInt32](repeating: 0, count: Self.sumsPerDrive)
        try out.withUnsafeMutableBytes { try device.read(into: $0, at: 0) }
        return out
    }

    /// Four threads each own a disjoint set of checksum slots (as stripe locks make writers of
    /// one block exclusive) and write and read them at random: 48 pages through 16 slots in memory.
    func testReadsSeeTheLastWriteWhilePagesComeAndGo() throws {
        let driveCount = 3, sumsPerDrive = Self.sumsPerDrive
        let devices = (0..<driveCount).map { MemoryDevice(name: "d\($0)", sizeBytes: Self.areaBytes) }
        let drives = DriveSet(devices: devices, log: { _ in })
        drives.setChecksumAreaStarts(Array(repeating: 0, count: driveCount))
        let pages = ChecksumPages(drives: drives, capacity: 16)
        let threads = 4
        let failures = Atomic<Int>(0)
        let models = Mutex<[[UInt32]]>(Array(repeating: Array(repeating: 0, count: sumsPerDrive), count: driveCount))
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = TestRandom(seed: 900 + UInt64(t))
            var mine = Array(repeating: [UInt32](repeating: 0, count: sumsPerDrive), count: driveCount)
            for step in 0..<4000 {
                let drive = Int(rng.below(UInt64(driveCount)))
                // Runs of slots owned by this thread: slot s belongs to thread (s / 8) % threads.
                let run = Int(rng.below(UInt64(sumsPerDrive / 8 / threads))) * threads + t
                let first = run * 8 + Int(rng.below(4))
                let count = 1 + Int(rng.below(4))
                if step % 3 == 0 {
                    var got = [UInt32](repeating: 0, count: count)
                    do {
                        try got.withUnsafeMutableBufferPointer { try pages.read(drive, first: UInt64(first), into: $0) }
                    } catch { failures.add(1, ordering: .relaxed); continue }
                    if got != Array(mine[drive][first..<first + count]) { failures.add(1, ordering: .relaxed) }
                } else {
                    let sums = (0..<count).map { _ in UInt32(truncatingIfNeeded: rng.next()) }
                    // As BlockChecksums does: the drive first, then the page in memory.
                    do {
                        try sums.withUnsafeBytes { try drives.write(drive, $0, at: UInt64(first * 4)) }
                    } catch { failures.add(1, ordering: .relaxed); continue }
                    sums.withUnsafeBufferPointer { pages.noteWritten(drive, first: UInt64(first), $0) }
                    mine[drive].replaceSubrange(first..<first + count, with: sums)
                }
            }
            models.withLock { all in
                for d in 0..<driveCount {
                    for s in 0..<sumsPerDrive where (s / 8) % threads == t { all[d][s] = mine[d][s] }
                }
            }
        }
        XCTAssertEqual(failures.load(ordering: .relaxed), 0, "reads that did not return the last write, or errors")
        XCTAssertGreaterThan(pages.loads.load(ordering: .relaxed), 100, "the cache was small enough to evict")
        let model = models.withLock { $0 }
        for d in 0..<driveCount {
            XCTAssertEqual(try rawSums(devices[d]), model[d], "drive \(d)'s checksum area")
            var cached = [UInt32](repeating: 0, count: sumsPerDrive)
            try cached.withUnsafeMutableBufferPointer { try pages.read(d, first: 0, into: $0) }
            XCTAssertEqual(cached, model[d], "drive \(d) read through the pages")
        }
    }

    /// A read straight after writes costs no pread of checksums once the page is in memory, and
    /// the drives hold every checksum as soon as the write returned: a pool opened on them
    /// without a commit reads every block without a checksum failure, and a scrub of every
    /// store finds nothing, on every RAID level.
    func testChecksumsReachTheDrivesAtOnceAndReadsFindThePagesInMemory() throws {
        for level in [RAIDLevel.raid0, .raid1, .raid5] {
            let drives = MemoryDrives(count: 8, sizeBytes: 96 << 20)
            try drives.format(raid: level)
            let pool = try drives.open()
            let id = try pool.createDisk(named: "vm")
            var rng = TestRandom(seed: 77)
            var data = rng.bytes(8 << 20)
            try pool.write(id, at: 0, data)
            try pool.commit()
            for _ in 0..<200 {
                let at = Int(rng.below(UInt64(data.count - 8192)))
                let piece = rng.bytes(1 + Int(rng.below(8192)))
                try pool.write(id, at: UInt64(at), piece)
                data.replaceSubrange(at..<at + piece.count, with: piece)
            }
            assertSameBytes(try pool.image(id), data, "\(level) first read, loads the pages")
            let loads = pool.storeIO.checksums.pages.loads.load(ordering: .relaxed)
            assertSameBytes(try pool.image(id), data, "\(level) second read")
            XCTAssertEqual(pool.storeIO.checksums.pages.loads.load(ordering: .relaxed), loads, "\(level): reads found the pages in memory")
            let other = try drives.open(readOnly: true)
            assertSameBytes(try other.image(id), data, "\(level) read by a pool opened without a commit")
            XCTAssertEqual(other.drives.errorCount.load(ordering: .relaxed), 0, "\(level): checksum failures on read")
            // Every store, those of the write-intent set too (a read-only scrub of a pool that
            // is still open elsewhere leaves them out).
            let stores = (0..<other.state.rsds.highWater).filter { other.state.rsds.isLive($0) }
            let scrub = other.checkRedundancy(stores: stores, mode: .scrub(repair: false))
            XCTAssertEqual(scrub.damagedBlocks, 0, "\(level): \(scrub.findings)")
            try other.close()
            try pool.close()
        }
    }
}
