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
    /// RAID 5 read-modify-writes whose old blocks the new parity's checksum vouched for
    /// (StoreIO.parityVouchedForByItsChecksum), for tests.
    let parityVouched = Atomic<Int>(0)

    static let blockBytes = ChecksumArea.blockBytes

    init(drives: DriveSet, driveSizes: [UInt64], psegSizeBytes: UInt64) {
        precondition(driveSizes.count == drives.count)
        self.drives = drives
        drives.setChecksumAreaStarts(driveSizes.map { ChecksumArea.start(driveSizeBytes: $0, psegSizeBytes: psegSizeBytes) })
        pages = ChecksumPages(drives: drives)
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
    /// `keepInCache`: the engine will read the blocks back soon (BlockDevice).
    func write(_ drive: Int, _ data: UnsafeRawBufferPointer, at offset: UInt64, keepInCache: Bool = false) throws(LunError) {
        Self.assertBlocks(offset, data.count)
        try write(data, sums: BlockSums(of: data, drive: drive, at: offset), keepInCache: keepInCache)
    }

    /// Writes whole blocks and then `sums`, their checksums computed beforehand (a mirror's
    /// copy or a parity block, see BlockSums), to the place the sums are for.
    func write(_ data: UnsafeRawBufferPointer, sums: BlockSums, keepInCache: Bool = false) throws(LunError) {
        let offset = sums.first * UInt64(Self.blockBytes)
        precondition(data.count == sums.count * Self.blockBytes, "checksums for other blocks")
        try drives.write(sums.drive, data, at: offset, keepInCache: keepInCache)
        try store(sums) { (bytes, at) throws(LunError) in try drives.write(sums.drive, bytes, at: at) }
    }

    /// Writes several runs of whole blocks, each with its checksums after it: the data of all
    /// of them first, together (DriveSet.writeAll), then the checksums of each run whose data
    /// landed. Returns what each run threw.
    func writeAll(_ runs: [(data: UnsafeRawBufferPointer, sums: BlockSums)], sideBySide: Bool) -> [LunError?] {
        let bb = UInt64(Self.blockBytes)
        return writeAll(runs.map { DriveWrite(drive: $0.sums.drive, data: $0.data, offset: $0.sums.first * bb) },
                        sideBySide: sideBySide) { runs.map(\.sums) }
    }

    /// The same, with the checksums computed by `sums` (one per write, in order) while the data
    /// is in flight, when the drives take it that way (DriveSet.writeAll): the CRC pass over a
    /// large write then takes none of its time. The checksums still reach the drive only after
    /// the data has returned, as above.
    func writeAll(_ writes: [DriveWrite], sideBySide: Bool, sums: () -> [BlockSums]) -> [LunError?] {
        var computed: [BlockSums] = []
        var errors = drives.writeAll(writes, sideBySide: sideBySide) { computed = sums() }
        precondition(computed.count == writes.count)
        for (i, w) in writes.enumerated() {
            let run = computed[i]
            precondition(run.drive == w.drive && run.first * UInt64(Self.blockBytes) == w.offset
                         && run.count * Self.blockBytes == w.data.count, "checksums for other blocks")
            guard errors[i] == nil else { continue }
            do throws(LunError) {
                try store(run) { (bytes, at) throws(LunError) in try drives.write(run.drive, bytes, at: at) }
            } catch { errors[i] = error }
        }
        return errors
    }

    /// Writes whole blocks and their checksums to a drive that is out of service (a stale drive
    /// being rebuilt before it serves reads again).
    func writeOutOfService(_ drive: Int, _ data: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        Self.assertBlocks(offset, data.count)
        guard let device = drives.devices(drive) else { throw .io("drive \(drive) is missing") }
        try device.write(data, at: offset)
        try store(BlockSums(of: data, drive: drive, at: offset)) { (sums, at) throws(LunError) in try device.write(sums, at: at) }
    }

    /// Rewrites only the checksums, for blocks whose bytes are to be taken as they are (blocks
    /// a crash cut in flight, see RedundancyCheck).
    func writeChecksums(_ drive: Int, of data: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        Self.assertBlocks(offset, data.count)
        try store(BlockSums(of: data, drive: drive, at: offset)) { (sums, at) throws(LunError) in
            try drives.write(drive, sums, at: at)
        }
    }

    /// Writes checksums with `write(bytes, offset on the drive)` and, once that returned, puts
    /// them in the pages in memory.
    private func store(_ sums: BlockSums, _ write: (UnsafeRawBufferPointer, UInt64) throws(LunError) -> Void) throws(LunError) {
        try sums.stored.withUnsafeBufferPointer { (values) throws(LunError) in
            try write(UnsafeRawBufferPointer(values), drives.checksumAreaStart(sums.drive) + sums.first * UInt64(ChecksumArea.checksumBytes))
            pages.noteWritten(sums.drive, first: sums.first, values)
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

    /// The checksums stored for `count` blocks at byte `offset` of `drive`.
    func stored(_ drive: Int, at offset: UInt64, count: Int) throws(LunError) -> BlockSums {
        Self.assertBlocks(offset, count * Self.blockBytes)
        var values = [UInt32](repeating: 0, count: count)
        try values.withUnsafeMutableBufferPointer { (sums) throws(LunError) in
            try pages.read(drive, first: Self.firstBlock(offset), into: sums)
        }
        return BlockSums(stored: values, drive: drive, first: Self.firstBlock(offset))
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
