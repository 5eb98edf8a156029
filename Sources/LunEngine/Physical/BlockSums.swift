// The checksums of a run of whole blocks bound for one place on one drive, computed before
// the blocks are written. A write's CRC runs once over the bytes it was given: the copies a
// mirror makes of them and the parity of a RAID 5 row take their checksums from sums already
// computed, since CRC-32C is linear in the bytes (lunsys_crc32c_block_unseeded in CLunSys).
// For a 1 MiB write to RAID 1 that is half the CRC work (docs/PERFORMANCE.md section 7).
import CLunSys

struct BlockSums {
    /// The drive and the number on it of the first block these checksums are for.
    let drive: Int
    let first: UInt64
    /// One checksum per block, little-endian, as the checksum area stores them.
    let stored: [UInt32]

    private static let blockBytes = ChecksumArea.blockBytes

    /// The checksums of `data` (whole blocks) written at byte `offset` of `drive`.
    init(of data: UnsafeRawBufferPointer, drive: Int, at offset: UInt64) {
        let bb = Self.blockBytes
        precondition(offset % UInt64(bb) == 0 && data.count % bb == 0, "checksums cover whole blocks")
        let first = offset / UInt64(bb)
        self.init(drive: drive, first: first, count: data.count / bb) { b in
            ChecksumArea.checksum(UnsafeRawBufferPointer(rebasing: data[b * bb..<(b + 1) * bb]), drive: drive,
                                  blockNumber: first + UInt64(b))
        }
    }

    /// Checksums as the checksum area stores them (little-endian), for blocks from `first`.
    init(stored: [UInt32], drive: Int, first: UInt64) {
        self.drive = drive
        self.first = first
        self.stored = stored
    }

    private init(drive: Int, first: UInt64, count: Int, _ checksum: (Int) -> UInt32) {
        self.drive = drive
        self.first = first
        stored = [UInt32](unsafeUninitializedCapacity: count) { values, initialized in
            for b in 0..<count { values[b] = checksum(b).littleEndian }
            initialized = count
        }
    }

    var count: Int { stored.count }

    /// The part of block `b`'s checksum that its bytes decide (linear in the bytes).
    @inline(__always)
    private func unseeded(_ b: Int) -> UInt32 {
        lunsys_crc32c_block_unseeded(UInt32(littleEndian: stored[b]),
                                     ChecksumArea.seed(drive: drive, blockNumber: first + UInt64(b)))
    }

    /// The checksums of the same bytes written at byte `offset` of `drive` (a mirror's copy).
    func copy(toDrive drive: Int, at offset: UInt64) -> BlockSums {
        let first = offset / UInt64(Self.blockBytes)
        return BlockSums(drive: drive, first: first, count: count) { b in
            lunsys_crc32c_block_seeded(unseeded(b), ChecksumArea.seed(drive: drive, blockNumber: first + UInt64(b)))
        }
    }

    /// The checksums of the XOR of the blocks that `columns` are the sums of (a RAID 5 row's
    /// parity), written at byte `offset` of `drive`. Every column covers as many blocks.
    static func parity(of columns: [BlockSums], drive: Int, at offset: UInt64) -> BlockSums {
        let first = offset / UInt64(blockBytes)
        let count = columns[0].count
        precondition(columns.allSatisfy { $0.count == count })
        return BlockSums(drive: drive, first: first, count: count) { b in
            var part: UInt32 = 0
            for c in columns { part ^= c.unseeded(b) }
            return lunsys_crc32c_block_seeded(part, ChecksumArea.seed(drive: drive, blockNumber: first + UInt64(b)))
        }
    }
}
