// Every block of user data carries a checksum: flipped bytes on any member come back right
// (RAID 1, RAID 5) or as EIO (RAID 0), never wrong; scrub names and repairs what reads did not
// touch; and a crash that cuts in-place writes leaves blocks that recovery settles, so reads
// neither fail nor return a byte the disk never had.
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class ChecksumTests: XCTestCase {
    /// A place on a drive holding bytes of a used RSEG: (drive, byte offset).
    private func randomUsedPlace(_ pool: Pool, _ rng: inout TestRandom) -> (drive: Int, offset: UInt64, store: Int, rseg: Int, member: Int) {
        let rsds = pool.state.rsds
        let stores = (0..<rsds.highWater).filter { rsds.isLive($0) && rsds.usedMask($0) != 0 }
        let store = stores[Int(rng.below(UInt64(stores.count)))]
        let rsegs = (0..<pool.geometry.rsegsPerStore).filter { rsds.isUsed(store, rseg: $0) }
        let rseg = rsegs[Int(rng.below(UInt64(rsegs.count)))]
        let member = Int(rng.below(UInt64(rsds.level(store)!.memberCount)))
        let m = rsds.member(store, member)
        let within = Int(rng.below(pool.geometry.stripeUnitBytes))
        return (m.drive, pool.storeIO.physicalOffset(m, rseg: rseg, within: within), store, rseg, member)
    }

    private func flipByte(_ device: BlockDevice, at offset: UInt64, _ rng: inout TestRandom) throws {
        var b = [UInt8](repeating: 0, count: 1)
        try b.withUnsafeMutableBytes { try device.read(into: $0, at: offset) }
        b[0] ^= UInt8(1 + rng.below(255))
        try b.withUnsafeBytes { try device.write($0, at: offset) }
    }

    /// 1,000 single-byte corruptions, eight at a time on distinct stripe rows: every read
    /// returns the written bytes, and what reads did not repair, scrub does.
    private func healsRandomCorruptions(level: RAIDLevel) throws {
        let drives = MemoryDrives(count: 8, sizeBytes: 96 << 20)
        try drives.format(raid: level)
        let pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: level == .raid1 ? 11 : 15)
        let data = rng.bytes(16 << 20)
        try pool.write(id, at: 0, data)
        try pool.commit()
        var corruptions = 0, rightReads = 0
        let readRepairsBefore = pool.storeIO.checksums.repairs.load(ordering: .relaxed)
        var scrubRepaired = 0
        for round in 0..<125 {
            var rows = Set<Int>()
            var batch = 0
            while batch < 8 {
                let p = randomUsedPlace(pool, &rng)
                guard rows.insert(p.store << 3 | p.rseg).inserted else { continue }
                try flipByte(drives.devices[p.drive], at: p.offset, &rng)
                batch += 1
            }
            corruptions += batch
            let image = try pool.image(id)
            if sameBytes(image, data) { rightReads += batch } else { assertSameBytes(image, data, "\(level) read after corruption") }
            let scrub = pool.scrub(repair: true)
            XCTAssertEqual(scrub.unrecoverableBlocks, 0, "\(scrub.findings)")
            scrubRepaired += scrub.repairedBlocks
            if round % 25 == 24 { XCTAssertEqual(pool.scrub(repair: false).damagedBlocks, 0, "\(level): scrub left damage behind") }
        }
        let readRepaired = pool.storeIO.checksums.repairs.load(ordering: .relaxed) - readRepairsBefore
        print("checksums \(level): \(corruptions) corruptions, reads right after \(rightReads), repaired by reads \(readRepaired), by scrub \(scrubRepaired)")
        XCTAssertEqual(rightReads, corruptions)
        XCTAssertEqual(readRepaired + scrubRepaired, corruptions, "every corrupted block is repaired once")
        try pool.close()
        let again = try drives.open()
        assertSameBytes(try again.image(id), data, "after reopen")
        XCTAssertEqual(again.scrub(repair: false).damagedBlocks, 0)
        try again.close()
    }

    func testRAID1CorruptionsAreHealed() throws { try healsRandomCorruptions(level: .raid1) }
    func testRAID5CorruptionsAreHealed() throws { try healsRandomCorruptions(level: .raid5) }

    func testRAID0CorruptionIsEIONeverWrongBytes() throws {
        let drives = MemoryDrives(count: 4, sizeBytes: 64 << 20)
        try drives.format(raid: .raid0)
        let pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 21)
        let data = rng.bytes(8 << 20)
        try pool.write(id, at: 0, data)
        try pool.commit()
        var eio = 0
        for i in 0..<100 {
            let p = randomUsedPlace(pool, &rng)
            try flipByte(drives.devices[p.drive], at: p.offset, &rng)
            do {
                _ = try pool.image(id)
                XCTFail("corruption \(i) read back without an error")
            } catch LunError.io {
                eio += 1
            }
            let scrub = pool.scrub(repair: true)
            XCTAssertEqual(scrub.unrecoverableBlocks, 1, "\(scrub.findings)")
            XCTAssertTrue(scrub.findings.first?.contains("disk vm") ?? false, "\(scrub.findings)")
            // Writing the disk again makes it whole.
            try pool.write(id, at: 0, data)
            assertSameBytes(try pool.image(id), data)
        }
        print("checksums raid0: 100 corruptions, \(eio) reads failed with EIO, 0 returned bytes")
        XCTAssertEqual(eio, 100)
        try pool.close()
    }

    func testUnalignedWritesKeepChecksums() throws {
        for level in [RAIDLevel.raid0, .raid1, .raid5] {
            let drives = MemoryDrives(count: 8, sizeBytes: 64 << 20)
            try drives.format(raid: level)
            let pool = try drives.open()
            let id = try pool.createDisk(named: "vm")
            var rng = TestRandom(seed: 31)
            var model = rng.bytes(4 << 20)
            try pool.write(id, at: 0, model)
            try pool.commit()
            for _ in 0..<300 {
                let n = 1 + Int(rng.below(9000))
                let at = Int(rng.below(UInt64(model.count - n)))
                let bytes = rng.bytes(n)
                model.replaceSubrange(at..<at + n, with: bytes)
                try pool.write(id, at: UInt64(at), bytes)
                let r = Int(rng.below(UInt64(model.count - 5000)))
                XCTAssertEqual(try pool.readBytes(id, at: UInt64(r), count: 4999), Array(model[r..<r + 4999]))
            }
            assertSameBytes(try pool.image(id), model, "\(level)")
            let scrub = pool.scrub(repair: false)
            XCTAssertEqual(scrub.damagedBlocks + scrub.inconsistentBlocks, 0, "\(level): \(scrub.findings)")
            try pool.close()
        }
    }

    /// Defect 3 of issue 10: after an unclean shutdown, recovery used to copy the RAID 1
    /// primary over its mirror (and recompute RAID 5 parity from the data), so a corrupted
    /// primary overwrote the last good copy. Now the copy whose checksum holds wins: a byte
    /// flipped in the first member of a store in the write-intent set, then a crash, and the
    /// disk still reads what was written, with nothing left damaged.
    func testRecoveryAfterACrashKeepsTheGoodCopyOfACorruptedBlock() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let drives = MemoryDrives(count: 6, sizeBytes: 64 << 20)
            try drives.format(raid: level)
            let pool = try drives.open()
            let id = try pool.createDisk(named: "vm")
            var rng = TestRandom(seed: 33)
            var data = rng.bytes(2 << 20)
            try pool.write(id, at: 0, data)
            try pool.commit()
            let patch = rng.bytes(4096)
            try pool.write(id, at: 8192, patch)               // in place: its store joins the intent set
            data.replaceSubrange(8192..<8192 + 4096, with: patch)
            try pool.commit()
            let e = pool.state.disks[id]!.map.entry(0)
            XCTAssertTrue(pool.state.intent.contains(Int(e.store)), "\(level): the store is in the write-intent set")
            let m = pool.state.rsds.member(Int(e.store), 0)
            try flipByte(drives.devices[m.drive], at: pool.storeIO.physicalOffset(m, rseg: e.rseg, within: 8192 + 100), &rng)
            // No close: the next open is a recovery after an unclean shutdown.
            let recovered = try drives.open()
            assertSameBytes(try recovered.image(id), data, "\(level) after recovery")
            XCTAssertEqual(recovered.scrub(repair: false).damagedBlocks, 0, "\(level): nothing left damaged")
            try recovered.close()
        }
    }

    /// In-place writes cut by crashes (dropped, torn and misdirected unsynced writes): after
    /// recovery every block reads without error and holds the old or a newer version.
    func testCrashInPlaceWritesRecoverWithoutErrors() throws {
        for (index, level) in [RAIDLevel.raid0, .raid1, .raid5].enumerated() {
            for round in 0..<8 {
                let seed = UInt64(1000 * index + round)
                var set = SimulatedDriveSet(count: 8, sizeBytes: 64 << 20, seed: seed)
                try Pool.format(devices: set.devices, raid: level)
                var pool = try Pool.open(devices: set.devices)
                let id = try pool.createDisk(named: "vm")
                var rng = TestRandom(seed: seed)
                let size = 2 << 20
                let base = rng.bytes(size)
                try pool.write(id, at: 0, base)
                try pool.commit()
                // Every version each block had since the last commit.
                var versions: [[UInt8]] = [base]
                var current = base
                for _ in 0..<20 {
                    let n = 1 + Int(rng.below(20000))
                    let at = Int(rng.below(UInt64(size - n)))
                    current.replaceSubrange(at..<at + n, with: rng.bytes(n))
                    try pool.write(id, at: UInt64(at), Array(current[at..<at + n]))
                    versions.append(current)
                }
                set.crash(seed: seed)
                pool = try Pool.open(devices: set.devices)
                let image = try pool.image(id)
                XCTAssertEqual(image.count, size)
                for b in stride(from: 0, to: size, by: 512) {
                    let sector = image[b..<b + 512]
                    XCTAssertTrue(versions.contains { $0[b..<b + 512] == sector }, "seed \(seed) \(level): sector at \(b) holds bytes it never had")
                }
                XCTAssertEqual(pool.scrub(repair: false).damagedBlocks, 0, "seed \(seed) \(level)")
                XCTAssertTrue(pool.state.intent.isEmpty)
                try pool.close()
            }
        }
    }

    /// One member drive that flips bits in reads and sends writes to the wrong place, at
    /// random, under a mix of writes and reads: every read returns the model's bytes, and a
    /// scrub with repair leaves nothing damaged.
    func testFaultyMemberNeverReturnsWrongBytes() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let seed: UInt64 = level == .raid1 ? 41 : 45
            let set = SimulatedDriveSet(count: 8, sizeBytes: 64 << 20, seed: seed)
            try Pool.format(devices: set.devices, raid: level)
            let pool = try Pool.open(devices: set.devices)
            let id = try pool.createDisk(named: "vm")
            var rng = TestRandom(seed: seed)
            var model = rng.bytes(6 << 20)
            try pool.write(id, at: 0, model)
            try pool.commit()
            // Drive 3 holds no metadata: its faults touch data and checksums only.
            set[3].faultProbabilities = FaultProbabilities(readCorruptionProbability: 0.05, misdirectedWriteProbability: 0.05)
            for step in 0..<400 {
                let n = 1 + Int(rng.below(150_000))
                let at = Int(rng.below(UInt64(model.count - n)))
                if step % 2 == 0 {
                    let bytes = rng.bytes(n)
                    try pool.write(id, at: UInt64(at), bytes)
                    model.replaceSubrange(at..<at + n, with: bytes)
                } else {
                    XCTAssertEqual(try pool.readBytes(id, at: UInt64(at), count: n), Array(model[at..<at + n]), "\(level) step \(step)")
                }
                if step % 50 == 49 { try pool.commit() }
            }
            let faults = set[3].counters
            set[3].faultProbabilities = .none
            assertSameBytes(try pool.image(id), model, "\(level)")
            let scrub = pool.scrub(repair: true)
            XCTAssertEqual(scrub.unrecoverableBlocks, 0, "\(level): \(scrub.findings.prefix(5))")
            XCTAssertEqual(pool.scrub(repair: false).damagedBlocks, 0, "\(level)")
            print("checksums \(level) faulty member: \(faults.corruptedReads) corrupted reads, \(faults.misdirectedWrites) misdirected writes; "
                  + "\(pool.storeIO.checksums.repairs.load(ordering: .relaxed)) blocks repaired by reads, \(scrub.repairedBlocks) by scrub; 0 wrong bytes")
            XCTAssertGreaterThan(faults.corruptedReads + faults.misdirectedWrites, 3)
            try pool.close()
        }
    }

    /// Readers of blocks that writers overwrite in place at the same time, with a committer
    /// and a snapshot in the middle: a read that catches a block between its data and its
    /// checksum must wait for the write, never call it damage and never "repair" it with the
    /// other copy's older bytes. Every block read is whole (one version), nothing is repaired.
    func testReadsRacingInPlaceWritesSeeWholeBlocksAndRepairNothing() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            // Writes that take a while, so that reads land between a block and its checksum.
            let devices = (0..<8).map { SlowWrites(MemoryDevice(name: "mem\($0)", sizeBytes: 64 << 20)) }
            try Pool.format(devices: devices, raid: level)
            let pool = try Pool.open(devices: devices)
            let id = try pool.createDisk(named: "vm")
            let blocks = 64
            try pool.write(id, at: 0, [UInt8](repeating: 1, count: blocks * 4096))
            try pool.commit()
            let stop = Atomic<Bool>(false)
            let bad = Atomic<Int>(0)
            let group = DispatchGroup()
            for w in 0..<2 {
                DispatchQueue.global().async(group: group) {
                    var rng = TestRandom(seed: UInt64(100 + w))
                    for i in 0..<600 {
                        let b = Int(rng.below(UInt64(blocks)))
                        // Every block holds one byte value throughout: the version's.
                        try? pool.write(id, at: UInt64(b * 4096), [UInt8](repeating: UInt8(2 + (i + w) % 250), count: 4096))
                    }
                }
            }
            for r in 0..<2 {
                DispatchQueue.global().async(group: group) {
                    var rng = TestRandom(seed: UInt64(200 + r))
                    while !stop.load(ordering: .relaxed) {
                        let b = Int(rng.below(UInt64(blocks)))
                        guard let got = try? pool.readBytes(id, at: UInt64(b * 4096), count: 4096) else { bad.add(1, ordering: .relaxed); continue }
                        if got.contains(where: { $0 != got[0] }) { bad.add(1, ordering: .relaxed) }
                    }
                }
            }
            DispatchQueue.global().async(group: group) {
                while !stop.load(ordering: .relaxed) { try? pool.commit() }
            }
            _ = try pool.createSnapshot(of: id, named: "mid")
            Thread.sleep(forTimeInterval: 1.5)
            stop.store(true, ordering: .relaxed)
            group.wait()
            XCTAssertEqual(bad.load(ordering: .relaxed), 0, "\(level): torn or failed reads")
            XCTAssertEqual(pool.storeIO.checksums.repairs.load(ordering: .relaxed), 0, "\(level): a race taken for damage")
            XCTAssertEqual(pool.scrub(repair: false).damagedBlocks, 0, "\(level)")
            try pool.close()
        }
    }

    func testIntentSetEmptiesWhenWritesStop() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        try pool.write(id, at: 0, [UInt8](repeating: 7, count: 1 << 20))
        try pool.commit()
        XCTAssertTrue(pool.state.intent.isEmpty, "a fresh segment needs no intent")
        try pool.write(id, at: 4096, [UInt8](repeating: 8, count: 4096))
        XCTAssertEqual(pool.state.intent.count, 1, "an in-place write joins its store first")
        XCTAssertEqual(pool.state.intentDurable.count, 1)
        for _ in 0..<(PoolState.intentIdleCommits + 2) { try pool.commit() }
        XCTAssertEqual(pool.state.intent.count, 1, "a store stays in the set for a while after its last write")
        pool.intentClockOffset.withLock { $0 = PoolState.intentIdleSeconds }
        for _ in 0..<2 { try pool.commit() }
        XCTAssertTrue(pool.state.intent.isEmpty, "idle stores leave the set")
        try pool.close()
    }
}

/// A device whose writes take 100 µs longer.
private final class SlowWrites: BlockDevice, @unchecked Sendable {
    let inner: MemoryDevice
    init(_ inner: MemoryDevice) { self.inner = inner }
    var sizeBytes: UInt64 { inner.sizeBytes }
    var name: String { inner.name }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) { try inner.read(into: buffer, at: offset) }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        usleep(100)
        try inner.write(buffer, at: offset)
    }
    func sync() throws(LunError) { try inner.sync() }
    func zero(at offset: UInt64, length: UInt64) throws(LunError) { try inner.zero(at: offset, length: length) }
}

