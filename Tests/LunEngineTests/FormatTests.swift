// Unit tests of the on-disk format pieces: CRC-32C, the byte coder, the superblock, the
// quorum layout, journal records and the geometry's derived sizes.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class FormatTests: XCTestCase {
    func testCRC32CKnownValue() {
        // The standard check value of CRC-32C over "123456789".
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([]), 0)
    }

    func testByteCodingRoundTripAndTruncation() throws {
        var w = ByteWriter()
        w.u8(7); w.u16(0xBEEF); w.u32(0xDEAD_BEEF); w.u64(1 << 60)
        w.varint(0); w.varint(127); w.varint(128); w.varint(UInt64.max); w.string("vm/é")
        var r = ByteReader(w.bytes)
        XCTAssertEqual(try r.u8(), 7)
        XCTAssertEqual(try r.u16(), 0xBEEF)
        XCTAssertEqual(try r.u32(), 0xDEAD_BEEF)
        XCTAssertEqual(try r.u64(), 1 << 60)
        XCTAssertEqual(try r.varint(), 0)
        XCTAssertEqual(try r.varint(), 127)
        XCTAssertEqual(try r.varint(), 128)
        XCTAssertEqual(try r.varint(), UInt64.max)
        XCTAssertEqual(try r.string(), "vm/é")
        XCTAssertEqual(r.remaining, 0)
        var short = ByteReader(Array(w.bytes.prefix(5)))
        _ = try short.u8()
        XCTAssertThrowsError(try short.u64()) { guard case .corrupt? = $0 as? LunError else { return XCTFail("\($0)") } }
    }

    func sampleSuperblock() -> Superblock {
        Superblock(poolUUID: Array(1...16), generation: 9, driveIndex: 2, driveCount: 5,
                   geometry: PoolGeometry(quorumPSEGs: 8), defaultRAID: .raid5, mirrors: [0, 1, 2],
                   checkpointSlot: 1, checkpointSeq: 77, checkpointLength: 8192, checkpointCRC: 0x1234,
                   journalStart: 4096, createdAt: 1_700_000_000, driveSizeBytes: 1 << 30,
                   flags: Superblock.cleanFlag, staleDrives: 0b1000)
    }

    func testSuperblockRoundTrip() throws {
        let sb = sampleSuperblock()
        let block = sb.encode()
        XCTAssertEqual(block.count, Superblock.blockSize)
        XCTAssertEqual(try Superblock.decode(block), sb)
    }

    func testSuperblockRejectsEveryFlippedByte() {
        let block = sampleSuperblock().encode()
        for i in stride(from: 0, to: 160, by: 7) {
            var damaged = block
            damaged[i] ^= 0x40
            XCTAssertThrowsError(try Superblock.decode(damaged), "byte \(i)")
        }
    }

    func testQuorumLayoutFitsAndDoesNotOverlap() {
        for psegs in [4, 8, 128, 512] {
            let quorum = UInt64(psegs) * PoolGeometry.defaultPSEGSizeBytes
            let l = QuorumLayout(quorumBytes: quorum)
            XCTAssertEqual(l.checkpointOffsets[0], 8192)
            XCTAssertEqual(l.checkpointOffsets[1], 8192 + l.checkpointCapacity)
            XCTAssertEqual(l.journalOffset, 8192 + 2 * l.checkpointCapacity)
            XCTAssertLessThanOrEqual(l.journalOffset + l.journalCapacity, quorum)
            XCTAssertEqual(l.journalCapacity % 4096, 0)
            XCTAssertGreaterThan(l.journalCapacity, 1 << 20)
        }
    }

    func testGeometryDerivedSizes() {
        let g = PoolGeometry(quorumPSEGs: 8)
        XCTAssertTrue(g.isValid)
        XCTAssertEqual(g.rstoreSizeBytes, 8 << 20)
        XCTAssertEqual(g.rsegsPerStore, 8)
        XCTAssertEqual(g.stripeUnitBytes, 256 << 10)
        XCTAssertEqual(g.rsegsPerLMAP, 2048)
        XCTAssertFalse(PoolGeometry(psegSizeBytes: 3 << 20, quorumPSEGs: 8).isValid)
        XCTAssertEqual(PoolGeometry.defaultQuorumPSEGs(driveSizeBytes: 16 << 30), 256)
        XCTAssertEqual(PoolGeometry.defaultQuorumPSEGs(driveSizeBytes: 64 << 20), 4)
    }

    func testJournalRecordChecksumsCoverHeaderAndPayload() {
        let uuid: [UInt8] = Array(1...16)
        let record = MetadataStore.encodeRecord(seq: 5, uuid: uuid, payload: [1, 2, 3])
        XCTAssertEqual(record.count % 4096, 0)
        XCTAssertEqual(Array(record[32..<35]), [1, 2, 3])
        let other = MetadataStore.encodeRecord(seq: 6, uuid: uuid, payload: [1, 2, 3])
        XCTAssertNotEqual(Array(record[0..<32]), Array(other[0..<32]))
    }

    func testRAIDLevelParsing() {
        XCTAssertEqual(RAIDLevel(text: "5"), .raid5)
        XCTAssertEqual(RAIDLevel(text: "raid1"), .raid1)
        XCTAssertEqual(RAIDLevel(text: "RAID0"), .raid0)
        XCTAssertNil(RAIDLevel(text: "7"))
        XCTAssertNil(RAIDLevel(text: ""))
    }
}
