// Where a drive keeps the checksums of its data: the CRC-32C of every 4 KiB block of its data
// PSEGs, 4 bytes each, in an area at the END of the drive (the last PSEGs, which therefore
// never hold data). The area's size follows from the drive's size as recorded when the pool
// was made, so it is never stored: 1/1024 of the drive (8 PSEGs of a 16 GiB drive).
//
//     drive:  [quorum PSEGs | data PSEGs ............................ | checksum area]
//     checksum of the block at byte offset o:  area start + (o / 4096) * 4
//
// Each checksum is seeded with the drive index and the block's number on the drive, so a
// block written to the wrong place (a misdirected write) or a drive put in the wrong slot
// fails its check as surely as a flipped bit.

struct ChecksumArea: Sendable {
    /// The unit a checksum covers; reads and writes of user data are widened to it.
    static let blockBytes = 4096
    static let checksumBytes = 4

    /// PSEGs of the area at the end of a drive of `driveSizeBytes`.
    static func psegs(driveSizeBytes: UInt64, psegSizeBytes: UInt64) -> Int {
        let total = driveSizeBytes / psegSizeBytes
        let bytes = total * (psegSizeBytes / UInt64(blockBytes)) * UInt64(checksumBytes)
        return Int((bytes + psegSizeBytes - 1) / psegSizeBytes)
    }

    /// PSEGs usable for quorum space and data: everything before the area.
    static func usablePSEGs(driveSizeBytes: UInt64, psegSizeBytes: UInt64) -> Int {
        Int(driveSizeBytes / psegSizeBytes) - psegs(driveSizeBytes: driveSizeBytes, psegSizeBytes: psegSizeBytes)
    }

    /// Byte offset of the area on a drive of `driveSizeBytes`.
    static func start(driveSizeBytes: UInt64, psegSizeBytes: UInt64) -> UInt64 {
        UInt64(usablePSEGs(driveSizeBytes: driveSizeBytes, psegSizeBytes: psegSizeBytes)) * psegSizeBytes
    }

    /// The checksum of one block: CRC-32C seeded with where the block belongs.
    @inline(__always)
    static func checksum(_ block: UnsafeRawBufferPointer, drive: Int, blockNumber: UInt64) -> UInt32 {
        CRC32C.checksum(block, seed: seed(drive: drive, blockNumber: blockNumber))
    }

    /// What the checksum of the block at `blockNumber` of `drive` continues from.
    @inline(__always)
    static func seed(drive: Int, blockNumber: UInt64) -> UInt32 {
        let place = (UInt64(drive) << 48) ^ blockNumber
        return UInt32(truncatingIfNeeded: (place &* 0x9E37_79B9_7F4A_7C15) >> 32)
    }
}
