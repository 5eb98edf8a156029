// FileDevice's default transfer rule, on real files of the host's file system: a large write
// goes direct; one the engine keeps in the cache starts its own write-back, a small one does
// not; a large read of a range the page cache holds no page of goes direct, one of a range it
// holds a page of (a dirty one included) goes through the cache, and either returns the bytes
// last written. The rules LUNFS_DIRECT_MIN_BYTES chooses keep their behaviour. Asserted on
// bytes read back and on cachestat's view of the cache. Under threads on RAID 0, 1 and 5, the
// checksums computed while a write is in flight hold when read back and scrubbed.
import XCTest
import Foundation
import CLunSys
import Dispatch
import Synchronization
@testable import LunEngine

final class FileDeviceTransferTests: XCTestCase {
    private static let fileBytes: UInt64 = 8 << 20
    private let MiB = 1 << 20
    private var root = ""

    override func setUpWithError() throws {
        // Not tmpfs: O_DIRECT and write-back need a disk file system (the pools' /var/tmp).
        root = "/var/tmp/lunfs-transfer-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    private func pattern(_ count: Int, seed: UInt64) -> UnsafeMutableRawBufferPointer {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
        var rng = TestRandom(seed: seed)
        for i in 0..<count { b[i] = UInt8(truncatingIfNeeded: rng.next()) }
        return b
    }

    /// (cached, dirty) pages of the range.
    private func cacheState(_ device: FileDevice, _ offset: UInt64, _ count: Int) throws -> (UInt64, UInt64) {
        var cached: UInt64 = 0, dirty: UInt64 = 0
        guard lunsys_cachestat(device.fileDescriptor, Int64(offset), Int64(count), &cached, &dirty) == 0 else {
            throw XCTSkip("cachestat is not available on this kernel (errno \(errno))")
        }
        return (cached, dirty)
    }

    /// Syncs the file and asks the kernel to drop its (clean) pages, then checks it did.
    private func dropCache(_ device: FileDevice) throws {
        try device.sync()
        XCTAssertEqual(posix_fadvise(device.fileDescriptor, 0, 0, POSIX_FADV_DONTNEED), 0)
        XCTAssertEqual(try cacheState(device, 0, Int(Self.fileBytes)).0, 0, "the test's setup: nothing cached")
    }

    private func readBack(_ device: FileDevice, _ offset: UInt64, _ count: Int) throws -> UnsafeMutableRawBufferPointer {
        let back = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
        back.initializeMemory(as: UInt8.self, repeating: 0xEE)
        try device.read(into: back, at: offset)
        return back
    }

    func testLargeTransfersGoDirectUnlessTheCacheHoldsTheirRange() throws {
        let device = try FileDevice.createFile(path: root + "/d", sizeBytes: Self.fileBytes)
        let a = pattern(MiB, seed: 1), b = pattern(4096, seed: 2)
        defer { a.deallocate(); b.deallocate() }
        try device.write(UnsafeRawBufferPointer(a), at: UInt64(MiB))
        XCTAssertEqual(try cacheState(device, UInt64(MiB), MiB).0, 0, "a large write goes direct and leaves nothing cached")
        let cold = try readBack(device, UInt64(MiB), MiB)
        defer { cold.deallocate() }
        XCTAssertTrue(cold.elementsEqual(a), "a cold read")
        XCTAssertEqual(device.coldDirectReads.load(ordering: .relaxed), 1, "a 1 MiB read of a range with nothing cached goes direct")
        XCTAssertEqual(try cacheState(device, UInt64(MiB), MiB).0, 0, "and leaves nothing cached")

        // One dirty page in an otherwise cold range: the read goes through the cache and sees it.
        try device.write(UnsafeRawBufferPointer(b), at: UInt64(MiB + 65536))
        XCTAssertEqual(try cacheState(device, UInt64(MiB), MiB).1, 1, "a small write leaves its page dirty")
        let mixed = try readBack(device, UInt64(MiB), MiB)
        defer { mixed.deallocate() }
        var expected = [UInt8](a)
        expected.replaceSubrange(65536..<65536 + 4096, with: b)
        XCTAssertTrue(mixed.elementsEqual(expected), "a read of a range with a dirty page returns that page's new bytes")
        XCTAssertEqual(device.coldDirectReads.load(ordering: .relaxed), 1, "a range with a cached page is read through the cache")

        // Small reads and reads into unaligned memory stay with the cache, and are right.
        try dropCache(device)
        let small = try readBack(device, UInt64(MiB + 65536), 4096)
        defer { small.deallocate() }
        XCTAssertTrue(small.elementsEqual(b))
        try dropCache(device)
        let unaligned = UnsafeMutableRawBufferPointer.allocate(byteCount: MiB + 16, alignment: 4096)
        defer { unaligned.deallocate() }
        try device.read(into: UnsafeMutableRawBufferPointer(rebasing: unaligned[16..<MiB + 16]), at: UInt64(MiB))
        XCTAssertTrue(unaligned[16..<MiB + 16].elementsEqual(expected), "a read into unaligned memory")
        XCTAssertEqual(device.coldDirectReads.load(ordering: .relaxed), 1, "neither went direct")
    }

    func testALargeWriteKeptInTheCacheStartsItsWriteBackAndASmallOneDoesNot() throws {
        let device = try FileDevice.createFile(path: root + "/d", sizeBytes: Self.fileBytes)
        let a = pattern(MiB, seed: 3), b = pattern(4096, seed: 4)
        defer { a.deallocate(); b.deallocate() }
        try device.write(UnsafeRawBufferPointer(b), at: 0, keepInCache: true)
        try device.write(UnsafeRawBufferPointer(a), at: UInt64(2 * MiB), keepInCache: true)
        XCTAssertEqual(try cacheState(device, 0, 4096).1, 1, "a small write stays dirty until the commit's fdatasync")
        // The kernel's own flusher would leave the pages dirty for 30 s (dirty_expire_centisecs).
        let deadline = Date().addingTimeInterval(5)
        var state = try cacheState(device, UInt64(2 * MiB), MiB)
        while state.1 > 0 && Date() < deadline {
            usleep(10_000)
            state = try cacheState(device, UInt64(2 * MiB), MiB)
        }
        XCTAssertEqual(state.1, 0, "a large write's pages are written back without an fdatasync")
        XCTAssertEqual(state.0, UInt64(MiB / 4096), "and stay in the cache, clean")
        let back = try readBack(device, UInt64(2 * MiB), MiB)
        defer { back.deallocate() }
        XCTAssertTrue(back.elementsEqual(a))
        XCTAssertEqual(device.coldDirectReads.load(ordering: .relaxed), 0, "read from the cache")
    }

    /// The engine's side: a pool on file drives under the default rule. A RAID 1 1 MiB write in
    /// place goes direct and leaves its two copies out of the cache; a RAID 5 write of part of
    /// a stripe (a read-modify-write, whose data and parity the next one reads back) leaves its
    /// data and parity cached. Every byte reads back through the pool, also after a reopen.
    func testTheEngineKeepsRAID5PartialStripeWritesCachedAndSendsOthersDirect() throws {
        let size: UInt64 = 64 << 20
        let files = FileDrivePool(prefix: "\(root)/p", count: 5)
        var (pool, devices) = try files.create(size: size, raid: .raid5)
        let mirror = try pool.createDisk(named: "m", raid: .raid1)
        let striped = try pool.createDisk(named: "s", raid: .raid5)
        let first = pattern(MiB, seed: 6), second = pattern(MiB, seed: 7), piece = pattern(65536, seed: 8)
        defer { first.deallocate(); second.deallocate(); piece.deallocate() }
        for disk in [mirror, striped] { try pool.write(disk, at: 0, from: UnsafeRawBufferPointer(first)) }
        try pool.commit()
        func cachedPages() throws -> UInt64 {
            try devices.reduce(0) { try $0 + cacheState($1, 0, Int(size)).0 }
        }
        func dropAll() throws { for d in devices { try dropCache(d) } }

        try dropAll()
        try pool.write(mirror, at: 0, from: UnsafeRawBufferPointer(second))
        let mirrorPages = try cachedPages()
        XCTAssertLessThan(mirrorPages, 64, "a 1 MiB RAID 1 write went direct (caching its copies would be 512 pages)")

        try dropAll()
        try pool.write(striped, at: 65536, from: UnsafeRawBufferPointer(piece))
        let stripedPages = try cachedPages()
        XCTAssertGreaterThanOrEqual(stripedPages, 32, "a 64 KiB RAID 5 read-modify-write keeps its data and parity (16 pages each) cached")

        var expected = [UInt8](first)
        expected.replaceSubrange(65536..<131072, with: piece)
        for reopen in [false, true] {
            if reopen {
                try pool.close()
                (pool, devices) = try files.reopen()
            }
            let back = UnsafeMutableRawBufferPointer.allocate(byteCount: MiB, alignment: 4096)
            defer { back.deallocate() }
            XCTAssertEqual(try pool.read(mirror, at: 0, into: back), MiB)
            XCTAssertTrue(back.elementsEqual(second), "RAID 1 bytes, reopened: \(reopen)")
            XCTAssertEqual(try pool.read(striped, at: 0, into: back), MiB)
            XCTAssertTrue(back.elementsEqual(expected), "RAID 5 bytes, reopened: \(reopen)")
        }
        try pool.close()
    }

    /// The rule under threads: on a RAID 5 pool of file drives, three writers mix 1 MiB writes
    /// (direct) and 64 KiB read-modify-writes (kept cached) in their own ranges and read each
    /// change back with 1 MiB reads, while a committer commits and the drive files' pages are
    /// dropped now and then (so reads go direct cold, or through the cache). Every read returns
    /// the bytes last written, and so does every range after a reopen; scrub finds no damage.
    /// Halfway, a snapshot is taken while the committer runs: the writes after it copy shared
    /// segments, and the snapshot still reads what the first half wrote after the reopen.
    /// RAID 0 and 1 the same, with writes made direct: there the 1 MiB writes' checksums are
    /// computed while their data is in flight (DriveSubmission), as in RAID 5's full stripes.
    func testMixedTransfersFromSeveralThreadsWithACommitterReadBackRight() throws {
        try mixedTransfersFromSeveralThreads(.raid5)
    }

    func testMixedTransfersOnRAID0AndRAID1FromSeveralThreadsWithACommitterReadBackRight() throws {
        try mixedTransfersFromSeveralThreads(.raid0)
        try mixedTransfersFromSeveralThreads(.raid1)
    }

    private func mixedTransfersFromSeveralThreads(_ level: RAIDLevel) throws {
        let size: UInt64 = 96 << 20
        let driveFiles = FileDrivePool(prefix: "\(root)/t\(level)", count: 5)
        var (pool, devices) = try driveFiles.create(size: size, raid: level)
        let disk = try pool.createDisk(named: "vm", raid: level)
        let writers = 3, range = 4 * MiB, steps = 30
        // Each writer keeps its own expectation and hands it over when done; a second phase
        // starts from it, after a snapshot taken while the committer runs.
        try pool.resize(disk, to: UInt64(writers * range))
        final class Expected: @unchecked Sendable {
            let lock = NSLock()
            var bytes: [Int: [UInt8]] = [:]
        }
        let expected = Expected()
        let failures = ThreadFailures()
        let stop = Atomic(false)
        let writing = DispatchGroup(), committing = DispatchGroup()
        let open = pool, files = devices
        DispatchQueue.global().async(group: committing) {
            var k = 0
            while !stop.load(ordering: .relaxed) {
                do { try open.commit() } catch { failures.add("commit: \(error)") }
                k += 1
                if k % 4 == 0 { for d in files { _ = posix_fadvise(d.fileDescriptor, 0, 0, POSIX_FADV_DONTNEED) } }
                usleep(3000)
            }
        }
        let mib = MiB
        var snapshot: DiskID?
        var atSnapshot: [Int: [UInt8]] = [:]
        for phase in 0..<2 {
            if phase == 1 {
                snapshot = try pool.createSnapshot(of: disk, named: "mid")
                atSnapshot = expected.lock.withLock { expected.bytes }
            }
            for w in 0..<writers {
                DispatchQueue.global().async(group: writing) {
                    var rng = TestRandom(seed: UInt64(900 + 10 * phase + w))
                    let base = w * range
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: mib, alignment: 4096)
                    defer { buffer.deallocate() }
                    var mine = expected.lock.withLock { expected.bytes[w] } ?? [UInt8](repeating: 0, count: range)
                    defer { expected.lock.withLock { expected.bytes[w] = mine } }
                    for step in 0..<steps {
                        let large = step < 4 || rng.next() % 3 == 0
                        let count = large ? mib : 65536
                        let at = large ? Int(rng.next() % 4) * mib : Int(rng.next() % UInt64(range / 65536)) * 65536
                        for i in 0..<count { buffer[i] = UInt8(truncatingIfNeeded: rng.next()) }
                        mine.replaceSubrange(at..<at + count, with: buffer[0..<count])
                        do {
                            try open.write(disk, at: UInt64(base + at), from: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
                            let read = at / mib * mib
                            buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
                            let n = try open.read(disk, at: UInt64(base + read), into: buffer)
                            if n != mib || !buffer.elementsEqual(mine[read..<read + mib]) {
                                let bad = (0..<mib).filter { buffer[$0] != mine[read + $0] }
                                failures.add("writer \(w) step \(step) (\(count) bytes at \(at)): MiB at \(read) read \(n) bytes, \(bad.count) wrong, first at \(bad.first ?? -1)")
                            }
                        } catch { failures.add("writer \(w) step \(step): \(error)") }
                    }
                }
            }
            writing.wait()
        }
        // The writers end first; then the committer.
        stop.store(true, ordering: .relaxed)
        committing.wait()
        XCTAssertEqual(failures.messages, [], "\(level)")
        if DriveSubmission.ringEnabled {
            XCTAssertGreaterThan(pool.drives.workWhileInFlight.load(ordering: .relaxed), 0,
                                 "\(level): no write's checksums were computed while its data was in flight")
        }
        XCTAssertEqual(pool.scrub(repair: false).damagedBlocks, 0, "\(level)")
        try pool.close()
        (pool, devices) = try driveFiles.reopen()
        let back = UnsafeMutableRawBufferPointer.allocate(byteCount: range, alignment: 4096)
        defer { back.deallocate() }
        for w in 0..<writers {
            XCTAssertEqual(try pool.read(disk, at: UInt64(w * range), into: back), range)
            XCTAssertTrue(back.elementsEqual(try XCTUnwrap(expected.bytes[w])), "\(level): writer \(w)'s range after a reopen")
            XCTAssertEqual(try pool.read(try XCTUnwrap(snapshot), at: UInt64(w * range), into: back), range)
            XCTAssertTrue(back.elementsEqual(try XCTUnwrap(atSnapshot[w])), "\(level): writer \(w)'s range in the snapshot after a reopen")
        }
        try pool.close()
    }

    func testTheRulesLUNFS_DIRECT_MIN_BYTESChoosesKeepTheirBehaviour() throws {
        let a = pattern(MiB, seed: 5)
        defer { a.deallocate() }
        // 0: everything through the cache as it is; a large write stays dirty, a cold read is cached.
        let cached = try FileDevice.createFile(path: root + "/cached", sizeBytes: Self.fileBytes, directMinimumBytes: 0)
        try cached.write(UnsafeRawBufferPointer(a), at: 0)
        XCTAssertEqual(try cacheState(cached, 0, MiB).1, UInt64(MiB / 4096), "no write-back started")
        try dropCache(cached)
        let one = try readBack(cached, 0, MiB)
        defer { one.deallocate() }
        XCTAssertTrue(one.elementsEqual(a))
        XCTAssertEqual(try cacheState(cached, 0, MiB).0, UInt64(MiB / 4096), "read through the cache")
        XCTAssertEqual(cached.coldDirectReads.load(ordering: .relaxed), 0)
        // 65536: the rule until 2026-12-01; large transfers go direct both ways and leave nothing cached.
        let direct = try FileDevice.createFile(path: root + "/direct", sizeBytes: Self.fileBytes, directMinimumBytes: 64 << 10)
        try direct.write(UnsafeRawBufferPointer(a), at: 0)
        XCTAssertEqual(try cacheState(direct, 0, MiB).0, 0, "a direct write leaves nothing cached")
        let two = try readBack(direct, 0, MiB)
        defer { two.deallocate() }
        XCTAssertTrue(two.elementsEqual(a))
        XCTAssertEqual(try cacheState(direct, 0, MiB).0, 0, "a direct read leaves nothing cached")
    }
}
