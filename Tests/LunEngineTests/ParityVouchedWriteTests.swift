// A RAID 5 read-modify-write reads the old data and old parity without checking them one by
// one: the new parity's checksum, derived from the stored checksums (CRC-32C is linear), vouches
// for both (StoreIO.parityVouchedForByItsChecksum). These tests damage the old blocks under
// such a write and read the result back through the parity, with the data drive missing: a
// check that let damage through would leave a parity that rebuilds wrong bytes or fails.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class ParityVouchedWriteTests: XCTestCase {
    private enum Damage { case none, oldData, oldParity, bothTheSame, bothDifferent }

    /// The data and parity places of the block at disk offset `offset` of segment 0.
    private func places(_ pool: Pool, _ id: DiskID, offset: Int) -> (data: (drive: Int, at: UInt64), parity: (drive: Int, at: UInt64)) {
        let e = pool.state.disks[id]!.map.entry(0)
        let store = Int(e.store)
        let unit = Int(pool.geometry.stripeUnitBytes)
        let layout = pool.storeIO.layout(store, .raid5)
        let d = pool.state.rsds.member(store, layout.dataMember(column: offset / unit))
        let p = pool.state.rsds.member(store, layout.parityMember!)
        let within = offset % unit
        return ((d.drive, pool.storeIO.physicalOffset(d, rseg: e.rseg, within: within)),
                (p.drive, pool.storeIO.physicalOffset(p, rseg: e.rseg, within: within)))
    }

    private func xorByte(_ device: BlockDevice, at offset: UInt64, _ mask: UInt8) throws {
        var b = [UInt8](repeating: 0, count: 1)
        try b.withUnsafeMutableBytes { try device.read(into: $0, at: offset) }
        b[0] ^= mask
        try b.withUnsafeBytes { try device.write($0, at: offset) }
    }

    /// A RAID 5 pool on five memory drives whose disk holds `rows` whole stripe rows (written
    /// as full stripes: no read-modify-write yet), committed.
    private func rowPool(seed: UInt64, rows: Int = 1) throws -> (drives: MemoryDrives, pool: Pool, id: DiskID, data: [UInt8], rng: TestRandom) {
        let drives = MemoryDrives(count: 5, sizeBytes: 96 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: seed)
        let data = rng.bytes(rows * Int(pool.geometry.rsegSizeBytes))
        try pool.write(id, at: 0, data)
        try pool.commit()
        return (drives, pool, id, data, rng)
    }

    private func checksumErrors(_ pool: Pool) -> Int {
        (0..<5).map { pool.drives.errorCounts[$0].checksumErrors.load(ordering: .relaxed) }.reduce(0, +)
    }

    /// Writes `blocks` blocks at `offset` after `damage` to block `damagedBlock` of them, then
    /// reads every byte back with all drives, and again with the data drive missing (so
    /// through the parity). Returns the number of writes the new parity vouched for and the
    /// checksum errors counted.
    @discardableResult
    private func writeOver(_ damage: Damage, offset: Int = 3 * 4096, blocks: Int = 1, damagedBlock: Int = 0,
                           seed: UInt64) throws -> (vouched: Int, checksumErrors: Int) {
        var (drives, pool, id, data, rng) = try rowPool(seed: seed)
        let place = places(pool, id, offset: offset)
        XCTAssertNotEqual(place.data.drive, place.parity.drive)
        let byte = UInt64(damagedBlock * 4096) + UInt64(1 + rng.below(4094))
        switch damage {
        case .none: break
        case .oldData: try xorByte(drives.devices[place.data.drive], at: place.data.at + byte, 0x5A)
        case .oldParity: try xorByte(drives.devices[place.parity.drive], at: place.parity.at + byte, 0x5A)
        case .bothTheSame:
            try xorByte(drives.devices[place.data.drive], at: place.data.at + byte, 0x5A)
            try xorByte(drives.devices[place.parity.drive], at: place.parity.at + byte, 0x5A)
        case .bothDifferent:
            try xorByte(drives.devices[place.data.drive], at: place.data.at + byte, 0x5A)
            try xorByte(drives.devices[place.parity.drive], at: place.parity.at + byte + 1, 0x21)
        }
        let errorsBefore = checksumErrors(pool)
        let vouchedBefore = pool.storeIO.checksums.parityVouched.load(ordering: .relaxed)
        let patch = rng.bytes(blocks * 4096)
        try pool.write(id, at: UInt64(offset), patch)
        data.replaceSubrange(offset..<offset + patch.count, with: patch)
        let vouched = pool.storeIO.checksums.parityVouched.load(ordering: .relaxed) - vouchedBefore
        let errors = checksumErrors(pool) - errorsBefore
        assertSameBytes(try pool.readBytes(id, at: 0, count: data.count), data, "\(damage): read with every drive")
        let scrub = pool.scrub(repair: false)
        XCTAssertEqual(scrub.damagedBlocks, 0, "\(damage): the write left damage behind")
        XCTAssertEqual(scrub.inconsistentBlocks, 0, "\(damage): the parity does not match the data")
        try pool.close()
        let degraded = try drives.open(missing: [place.data.drive], readOnly: true)
        assertSameBytes(try degraded.readBytes(id, at: 0, count: data.count), data, "\(damage): read through the parity")
        try degraded.close()
        return (vouched, errors)
    }

    func testUndamagedBlocksAreVouchedForByTheNewParity() throws {
        let r = try writeOver(.none, seed: 1)
        XCTAssertEqual(r.vouched, 1)
        XCTAssertEqual(r.checksumErrors, 0)
    }

    func testDamagedOldDataIsCaughtAndTheParityStaysRight() throws {
        let r = try writeOver(.oldData, seed: 2)
        XCTAssertEqual(r.vouched, 0, "damage in the old data must fail the new parity's check")
        XCTAssertGreaterThanOrEqual(r.checksumErrors, 1, "the checked path names the damaged block")
    }

    func testDamagedOldParityIsCaughtAndComputedAgain() throws {
        let r = try writeOver(.oldParity, seed: 3)
        XCTAssertEqual(r.vouched, 0, "damage in the old parity must fail the new parity's check")
        XCTAssertGreaterThanOrEqual(r.checksumErrors, 1)
    }

    /// Old data and old parity both damaged: the old data cannot be repaired, and is not
    /// needed; the new parity comes from the other data columns.
    func testDamageInBothOldBlocksIsCaught() throws {
        let r = try writeOver(.bothDifferent, seed: 4)
        XCTAssertEqual(r.vouched, 0)
        XCTAssertGreaterThanOrEqual(r.checksumErrors, 2)
    }

    /// A write of several blocks with one damaged block among them (the fourth): the check
    /// is per block, and one failing block sends the whole piece down the checked path.
    func testOneDamagedBlockOfAMultiBlockWriteIsCaught() throws {
        for damage in [Damage.oldData, .oldParity] {
            let r = try writeOver(damage, offset: 2 * 4096, blocks: 4, damagedBlock: 3, seed: 6)
            XCTAssertEqual(r.vouched, 0, "\(damage)")
            XCTAssertGreaterThanOrEqual(r.checksumErrors, 1, "\(damage)")
        }
        XCTAssertEqual(try writeOver(.none, offset: 2 * 4096, blocks: 4, seed: 7).vouched, 1)
    }

    /// The old data damaged and the same block of another data column too: nothing can give
    /// the new parity, so the write fails with EIO and changes neither the row's blocks nor
    /// their checksums (the write-intent commit before it may change metadata).
    func testDamageInTwoDataColumnsFailsTheWriteAndWritesNothing() throws {
        var (drives, pool, id, _, rng) = try rowPool(seed: 8)
        let offset = 5 * 4096
        let place = places(pool, id, offset: offset)
        let other = places(pool, id, offset: offset + Int(pool.geometry.stripeUnitBytes))
        XCTAssertNotEqual(other.data.drive, place.data.drive)
        try xorByte(drives.devices[place.data.drive], at: place.data.at + 17, 0x5A)
        try xorByte(drives.devices[other.data.drive], at: other.data.at + 900, 0x33)
        let row = [place.data, place.parity, other.data]
        func snapshot() throws -> [[UInt8]] {
            try row.map { p in
                var block = [UInt8](repeating: 0, count: 4096)
                try block.withUnsafeMutableBytes { try drives.devices[p.drive].read(into: $0, at: p.at) }
                let sum = try pool.storeIO.checksums.stored(p.drive, at: p.at, count: 1).stored[0]
                return block + withUnsafeBytes(of: sum) { Array($0) }
            }
        }
        let before = try snapshot()
        XCTAssertThrowsError(try pool.write(id, at: UInt64(offset), rng.bytes(4096))) { error in
            XCTAssertEqual((error as? LunError)?.errno, EIO, "\(error)")
        }
        XCTAssertTrue(try snapshot() == before, "the refused write changed a block or checksum of its row")
        XCTAssertTrue(pool.drives.isAvailable(place.parity.drive), "no drive leaves service for damage in two columns")
        try pool.close()
    }

    /// A member missing: with the parity gone the new data is written alone, with the data
    /// gone the parity alone carries it. Either way it reads back, and again after the drive
    /// returns and is rebuilt.
    func testWritesWithTheDataOrTheParityDriveMissing() throws {
        for missingParity in [true, false] {
            var (drives, pool, id, data, rng) = try rowPool(seed: missingParity ? 9 : 10)
            let offset = 6 * 4096
            let place = places(pool, id, offset: offset)
            try pool.close()
            let missing = missingParity ? place.parity.drive : place.data.drive
            let degraded = try drives.open(missing: [missing])
            let patch = rng.bytes(4096)
            try degraded.write(id, at: UInt64(offset), patch)
            data.replaceSubrange(offset..<offset + 4096, with: patch)
            XCTAssertEqual(degraded.storeIO.checksums.parityVouched.load(ordering: .relaxed), 0)
            assertSameBytes(try degraded.readBytes(id, at: 0, count: data.count), data, "drive \(missing) missing")
            try degraded.close()
            let healed = try drives.open()
            XCTAssertEqual(healed.rebuiltStaleDriveIndexes, [missing])
            assertSameBytes(try healed.readBytes(id, at: 0, count: data.count), data, "after drive \(missing) was rebuilt")
            XCTAssertEqual(healed.scrub(repair: false).damagedBlocks, 0)
            try healed.close()
        }
    }

    /// The same byte flipped the same way in old data and old parity cancels out in their XOR:
    /// the check passes, and the new parity is right all the same.
    func testDamageThatCancelsOutLeavesTheRightParity() throws {
        let r = try writeOver(.bothTheSame, seed: 5)
        XCTAssertEqual(r.vouched, 1)
    }

    /// Many writes over randomly damaged blocks of several columns: every outcome reads back
    /// right, with all drives and through the parity.
    func testRandomDamageUnderManyWritesNeverLeavesAWrongParity() throws {
        var (drives, pool, id, data, rng) = try rowPool(seed: 77)
        let rowBytes = data.count
        var damaged = 0
        for _ in 0..<200 {
            let offset = Int(rng.below(UInt64(rowBytes / 4096))) * 4096
            let place = places(pool, id, offset: offset)
            let which = rng.below(4)
            if which == 1 || which == 3 {
                try xorByte(drives.devices[place.data.drive], at: place.data.at + rng.below(4096), UInt8(1 + rng.below(255)))
            }
            if which == 2 || which == 3 {
                try xorByte(drives.devices[place.parity.drive], at: place.parity.at + rng.below(4096), UInt8(1 + rng.below(255)))
            }
            if which != 0 { damaged += 1 }
            let patch = rng.bytes(4096)
            try pool.write(id, at: UInt64(offset), patch)
            data.replaceSubrange(offset..<offset + 4096, with: patch)
        }
        let vouched = pool.storeIO.checksums.parityVouched.load(ordering: .relaxed)
        XCTAssertGreaterThanOrEqual(vouched, 200 - damaged, "every undamaged write is vouched for")
        XCTAssertLessThan(vouched, 200, "damaged writes take the checked path")
        assertSameBytes(try pool.readBytes(id, at: 0, count: rowBytes), data, "with every drive")
        let scrub = pool.scrub(repair: false)
        XCTAssertEqual(scrub.damagedBlocks, 0)
        XCTAssertEqual(scrub.inconsistentBlocks, 0)
        try pool.close()
        for missing in 0..<5 {
            let degraded = try drives.open(missing: [missing], readOnly: true)
            assertSameBytes(try degraded.readBytes(id, at: 0, count: rowBytes), data, "with drive \(missing) missing")
            try degraded.close()
        }
    }

    /// Three writers on disjoint blocks of the same stripe rows, a committer, and a snapshot
    /// taken in the middle: the read-modify-writes run beside each other's (on other rows'
    /// locks) and beside commits and the snapshot's copy on write. Every byte of the disk reads
    /// back, with all drives and through the parity with each drive missing; every block of
    /// the snapshot holds a version its writer wrote.
    func testWritersACommitterAndASnapshotReadBackThroughTheParity() throws {
        let made = try rowPool(seed: 91, rows: 4)
        let (drives, pool, id) = (made.drives, made.pool, made.id)
        var image = made.data
        let blocks = image.count / 4096
        let failures = ThreadFailures()
        let committer = BackgroundCommitter(pool, failures: failures)
        let writers = 3
        // history[b]: every version block b ever had, oldest first.
        var history = (0..<blocks).map { [Array(image[$0 * 4096..<($0 + 1) * 4096])] }
        let histories = (0..<writers).map { _ in BlockHistory() }
        let halfway = DispatchSemaphore(value: 0)
        let threads = (0..<writers).map { t in
            Thread {
                var r = TestRandom(seed: 100 + UInt64(t))
                var mine: [Int: [[UInt8]]] = [:]
                for step in 0..<400 {
                    let b = Int(r.below(UInt64(blocks / writers))) * writers + t
                    let bytes = r.bytes(4096)
                    do { try pool.write(id, at: UInt64(b * 4096), bytes) } catch { failures.add("writer \(t): \(error)"); break }
                    mine[b, default: []].append(bytes)
                    if step == 200 { halfway.signal() }
                }
                histories[t].lock.withLock { histories[t].blocks = mine }
            }
        }
        threads.forEach { $0.start() }
        for _ in 0..<writers { halfway.wait() }
        let snapshot = try pool.createSnapshot(of: id, named: "mid")
        while !threads.allSatisfy(\.isFinished) { usleep(1000) }
        committer.stop()
        XCTAssertEqual(failures.messages, [])
        for h in histories { h.lock.withLock { for (b, v) in h.blocks { history[b] += v } } }
        for b in 0..<blocks { image.replaceSubrange(b * 4096..<(b + 1) * 4096, with: history[b].last!) }
        XCTAssertGreaterThan(pool.storeIO.checksums.parityVouched.load(ordering: .relaxed), 600,
                             "most writes were read-modify-writes vouched for by their parity")
        assertSameBytes(try pool.image(id), image, "the disk")
        let taken = try pool.image(snapshot)
        for b in 0..<blocks where !history[b].contains(where: { sameBytes($0, Array(taken[b * 4096..<(b + 1) * 4096])) }) {
            XCTFail("snapshot block \(b) holds bytes its writer never wrote"); break
        }
        XCTAssertEqual(pool.scrub(repair: false).inconsistentBlocks, 0)
        try pool.close()
        for missing in 0..<5 {
            let degraded = try drives.open(missing: [missing], readOnly: true)
            assertSameBytes(try degraded.image(id), image, "the disk with drive \(missing) missing")
            assertSameBytes(try degraded.image(snapshot), taken, "the snapshot with drive \(missing) missing")
            try degraded.close()
        }
    }
}

/// The versions one writer thread wrote to its blocks, oldest first.
private final class BlockHistory: @unchecked Sendable {
    let lock = NSLock()
    var blocks: [Int: [[UInt8]]] = [:]
}
