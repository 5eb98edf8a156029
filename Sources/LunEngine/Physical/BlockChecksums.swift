// Data blocks with their checksums: every write of user data to a drive writes whole 4 KiB
// blocks and then their CRC-32Cs into the drive's checksum area (Format/ChecksumArea.swift);
// every read checks them and says which blocks failed. Choosing a good copy and repairing a
// bad one is the store's business (StoreIO); this type only moves blocks and verdicts.
//
// Reads take the stored checksums from ChecksumPages, which keeps the pages in use in memory;
// writes put them on the drive and then into those pages.
//
// Data and checksum are two writes. Between commits a crash can leave a block whose data and
// checksum disagree; such a block is in a store of the write-intent set (PoolState.intent),
// which recovery visits (Physical/RedundancyCheck.swift). Everywhere else a mismatch is damage.
import Synchronization

final class BlockChecksums: @unchecked Sendable {
    let drives: DriveSet
    /// The pages of the checksum areas in memory.
    let pages: ChecksumPages
    /// Blocks a read rewrote from a good copy.
    let repairs = Atomic<Int>(0)

    static let blockBytes = ChecksumArea.blockBytes

    init(drives: DriveSet, driveSizes: [UInt64], psegSizeBytes: UInt64) {
        precondition(driveSizes.count == drives.count)
        self.drives = drives
        drives.setChecksumAreaStarts(driveSizes.map { ChecksumArea.start(driveSizeBytes: $0, psegSizeBytes: psegSizeBytes) })
        pages = ChecksumPages(drives: drives)
    }

    @inline(__always)
    private func checksumOffset(_ drive: Int, _ offset: UInt64) -> UInt64 {
        drives.checksumAreaStart(drive) + offset / UInt64(Self.blockBytes) * UInt64(ChecksumArea.checksumBytes)
    }

    @inline(__always)
    private static func firstBlock(_ offset: UInt64) -> UInt64 { offset / UInt64(blockBytes) }

    @inline(__always)
    private static func assertBlocks(_ offset: UInt64, _ count: Int) {
        precondition(offset % UInt64(blockBytes) == 0 && count % blockBytes == 0 && count > 0,
                     "data I/O must cover whole checksum blocks: \(offset) + \(count)")
    }

    /// The checksums `data` (whole blocks at `offset` of `drive`) must have.
    private func compute(_ drive: Int, _ data: UnsafeRawBufferPointer, at offset: UInt64,
                         into sums: UnsafeMutableBufferPointer<UInt32>) {
        let first = offset / UInt64(Self.blockBytes)
        for b in 0..<sums.count {
            let block = UnsafeRawBufferPointer(rebasing: data[b * Self.blockBytes..<(b + 1) * Self.blockBytes])
            sums[b] = ChecksumArea.checksum(block, drive: drive, blockNumber: first + UInt64(b)).littleEndian
        }
    }

    /// Writes whole blocks and then their checksums. A failing drive leaves service (DriveSet).
    func write(_ drive: Int, _ data: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        Self.assertBlocks(offset, data.count)
        try drives.write(drive, data, at: offset)
        try writeChecksums(drive, of: data, at: offset)
    }

    /// Writes whole blocks and their checksums to a drive that is out of service (a stale drive
    /// being rebuilt before it serves reads again).
    func writeOutOfService(_ drive: Int, _ data: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        Self.assertBlocks(offset, data.count)
        guard let device = drives.devices(drive) else { throw .io("drive \(drive) is missing") }
        try device.write(data, at: offset)
        try storeChecksums(drive, of: data, at: offset) { (sums, at) throws(LunError) in try device.write(sums, at: at) }
    }

    /// Rewrites only the checksums, for blocks whose bytes are to be taken as they are (blocks
    /// a crash cut in flight, see RedundancyCheck).
    func writeChecksums(_ drive: Int, of data: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        Self.assertBlocks(offset, data.count)
        try storeChecksums(drive, of: data, at: offset) { (sums, at) throws(LunError) in try drives.write(drive, sums, at: at) }
    }

    /// Computes the checksums of `data`, writes them with `write(bytes, offset on the drive)`
    /// and, once that returned, puts them in the pages in memory.
    private func storeChecksums(_ drive: Int, of data: UnsafeRawBufferPointer, at offset: UInt64,
                                _ write: (UnsafeRawBufferPointer, UInt64) throws(LunError) -> Void) throws(LunError) {
        let n = data.count / Self.blockBytes
        try withUnsafeTemporaryAllocation(of: UInt32.self, capacity: n) { (sums) throws(LunError) in
            compute(drive, data, at: offset, into: sums)
            try write(UnsafeRawBufferPointer(sums), checksumOffset(drive, offset))
            pages.noteWritten(drive, first: Self.firstBlock(offset), UnsafeBufferPointer(sums))
        }
    }

    /// Reads whole blocks and checks them. Returns the numbers (0-based within `buffer`) of the
    /// blocks whose checksum does not hold; an unreadable drive throws.
    func read(_ drive: Int, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) -> [Int] {
        Self.assertBlocks(offset, buffer.count)
        try drives.read(drive, into: buffer, at: offset)
        let bad = try verify(drive, UnsafeRawBufferPointer(buffer), at: offset)
        if !bad.isEmpty { drives.errorCounts[drive].checksumErrors.add(bad.count, ordering: .relaxed) }
        return bad
    }

    /// The blocks of `data` (read from `offset` of `drive`) whose stored checksum differs.
    func verify(_ drive: Int, _ data: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) -> [Int] {
        let n = data.count / Self.blockBytes
        return try withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 2 * n) { (both) throws(LunError) -> [Int] in
            let stored = UnsafeMutableBufferPointer(rebasing: both[0..<n])
            let actual = UnsafeMutableBufferPointer(rebasing: both[n..<2 * n])
            try pages.read(drive, first: Self.firstBlock(offset), into: stored)
            compute(drive, data, at: offset, into: actual)
            var bad: [Int] = []
            for b in 0..<n where stored[b] != actual[b] { bad.append(b) }
            return bad
        }
    }
}
