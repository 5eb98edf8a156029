// Checksums derived instead of computed: a mirror copy's (the same bytes elsewhere) and a RAID 5
// parity block's (the XOR of the data blocks) must equal the CRC-32C run over the bytes where
// they are written, for any drive, any block number and runs of several blocks.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class BlockSumsTests: XCTestCase {
    private static let bb = ChecksumArea.blockBytes

    private func offset(_ rng: inout TestRandom) -> UInt64 {
        rng.below(1 << 28) * UInt64(Self.bb)
    }

    func testMirrorCopiesGetTheChecksumsOfTheirBytes() {
        var rng = TestRandom(seed: 4101)
        for _ in 0..<200 {
            let blocks = 1 + Int(rng.below(8))
            let data = rng.bytes(blocks * Self.bb)
            let from = Int(rng.below(16)), to = Int(rng.below(16))
            let fromAt = offset(&rng), toAt = offset(&rng)
            data.withUnsafeBytes { bytes in
                let copied = BlockSums(of: bytes, drive: from, at: fromAt).copy(toDrive: to, at: toAt)
                let direct = BlockSums(of: bytes, drive: to, at: toAt)
                XCTAssertEqual(copied.stored, direct.stored, "\(blocks) blocks from drive \(from) to \(to)")
                XCTAssertEqual(copied.drive, to)
                XCTAssertEqual(copied.first, toAt / UInt64(Self.bb))
            }
        }
    }

    func testParityGetsTheChecksumsOfTheXorOfTheColumns() {
        var rng = TestRandom(seed: 4102)
        for _ in 0..<100 {
            let blocks = 1 + Int(rng.below(4))
            let columns = (0..<4).map { _ in rng.bytes(blocks * Self.bb) }
            var parity = [UInt8](repeating: 0, count: blocks * Self.bb)
            for c in columns { for i in parity.indices { parity[i] ^= c[i] } }
            let sums = columns.enumerated().map { c, bytes in
                bytes.withUnsafeBytes { BlockSums(of: $0, drive: c, at: offset(&rng)) }
            }
            let drive = 4 + Int(rng.below(4)), at = offset(&rng)
            let derived = BlockSums.parity(of: sums, drive: drive, at: at)
            let direct = parity.withUnsafeBytes { BlockSums(of: $0, drive: drive, at: at) }
            XCTAssertEqual(derived.stored, direct.stored, "parity of \(blocks) blocks on drive \(drive)")
        }
    }

    /// A damaged copy must not be able to hide behind a derived checksum: the checksum of the
    /// copy is the one of the bytes it was derived from, which a flipped bit fails.
    func testDerivedChecksumsStillCatchAFlippedBit() {
        var rng = TestRandom(seed: 4103)
        var data = rng.bytes(2 * Self.bb)
        let copied = data.withUnsafeBytes { BlockSums(of: $0, drive: 0, at: 0).copy(toDrive: 4, at: 8192) }
        data[Int(rng.below(UInt64(data.count)))] ^= 1 << UInt8(rng.below(8))
        let flipped = data.withUnsafeBytes { BlockSums(of: $0, drive: 4, at: 8192) }
        XCTAssertNotEqual(copied.stored, flipped.stored)
    }
}
