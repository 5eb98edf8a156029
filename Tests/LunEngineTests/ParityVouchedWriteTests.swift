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

    /// Writes 4 KiB over a block after `damage`, then reads every byte back with all drives,
    /// and again with the block's data drive missing (so through the parity). Returns the
    /// number of writes the new parity vouched for and the checksum errors counted.
    @discardableResult
    private func writeOver(_ damage: Damage, offset: Int = 3 * 4096, seed: UInt64) throws -> (vouched: Int, checksumErrors: Int) {
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: seed)
        var data = rng.bytes(Int(pool.geometry.rsegSizeBytes))
        try pool.write(id, at: 0, data)   // a whole stripe row: no read-modify-write yet
        try pool.commit()
        let place = places(pool, id, offset: offset)
        XCTAssertNotEqual(place.data.drive, place.parity.drive)
        let byte = UInt64(1 + rng.below(4094))
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
        let errorsBefore = (0..<5).map { pool.drives.errorCounts[$0].checksumErrors.load(ordering: .relaxed) }.reduce(0, +)
        let vouchedBefore = pool.storeIO.checksums.parityVouched.load(ordering: .relaxed)
        let patch = rng.bytes(4096)
        try pool.write(id, at: UInt64(offset), patch)
        data.replaceSubrange(offset..<offset + 4096, with: patch)
        let vouched = pool.storeIO.checksums.parityVouched.load(ordering: .relaxed) - vouchedBefore
        let errors = (0..<5).map { pool.drives.errorCounts[$0].checksumErrors.load(ordering: .relaxed) }.reduce(0, +) - errorsBefore
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

    func testDamageInBothOldBlocksIsCaught() throws {
        let r = try writeOver(.bothDifferent, seed: 4)
        XCTAssertEqual(r.vouched, 0)
        XCTAssertGreaterThanOrEqual(r.checksumErrors, 2)
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
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let id = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 77)
        let rowBytes = Int(pool.geometry.rsegSizeBytes)
        var data = rng.bytes(rowBytes)
        try pool.write(id, at: 0, data)
        try pool.commit()
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
}
