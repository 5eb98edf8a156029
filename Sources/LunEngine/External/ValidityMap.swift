// The validity map of a snapshot on separate storage (seed 004 [0022]-[0026]): one bit per
// block, set once the external file holds that block of the snapshot (copied from V, or
// written to the snapshot itself). It lives in its own file beside the external one:
//
//     offset 0     4 KiB header: "LUNFSVM1", u32 version 1, u32 CRC-32C of the header with
//                  this field zero, u64 token (the pool record's), u32 block size,
//                  u64 snapshot size, u64 block count
//     offset 4096  the bits: block i is bit (i % 8) of byte i / 8
//
// Bits only ever go from 0 to 1, and a bit is written (and synced) only after the block's
// bytes in the external file are synced. So whatever a crash leaves of a map page, every bit
// in it is either its old value or its new one, and a set bit always covers durable bytes.
// The bits held in memory are the durable ones: a caller sets them with `setDurably`, which
// returns once they are on the device. Callers serialise changes (the snapshot's copy lock).
import Synchronization

final class ValidityMap: @unchecked Sendable {
    static let headerBytes = 4096
    static let pageBytes = 4096
    static let magic: [UInt8] = Array("LUNFSVM1".utf8)

    let device: BlockDevice
    let blockCount: Int
    private var words: [UInt64]
    /// Blocks whose bit is set; read without a lock by the write path's quick check.
    let validCount = Atomic<Int>(0)

    private init(device: BlockDevice, blockCount: Int, words: [UInt64]) {
        self.device = device
        self.blockCount = blockCount
        self.words = words
        validCount.store(words.reduce(0) { $0 + $1.nonzeroBitCount }, ordering: .releasing)
    }

    /// Bytes of the whole map file for `blockCount` blocks.
    static func fileBytes(blockCount: Int) -> UInt64 {
        UInt64(headerBytes + (blockCount + 8 * pageBytes - 1) / (8 * pageBytes) * pageBytes)
    }

    private static func header(for record: ExternalSnapshotRecord) -> [UInt8] {
        var w = ByteWriter(capacity: headerBytes)
        w.raw(magic); w.u32(1); w.u32(0); w.u64(record.token)
        w.u32(record.blockBytes); w.u64(record.sizeBytes); w.u64(UInt64(record.blockCount))
        w.pad(toMultipleOf: headerBytes)
        var bytes = w.bytes
        let crc = CRC32C.checksum(bytes)
        withUnsafeBytes(of: crc.littleEndian) { bytes.replaceSubrange(12..<16, with: $0) }
        return bytes
    }

    /// Writes a header and an all-clear map on `device` and syncs it.
    static func create(on device: BlockDevice, for record: ExternalSnapshotRecord) throws(LunError) -> ValidityMap {
        let total = fileBytes(blockCount: record.blockCount)
        try device.zero(at: UInt64(headerBytes), length: total - UInt64(headerBytes))
        let bytes = header(for: record)
        try typed { try bytes.withUnsafeBytes { try device.write($0, at: 0) } }
        try device.sync()
        return ValidityMap(device: device, blockCount: record.blockCount,
                           words: [UInt64](repeating: 0, count: (record.blockCount + 63) / 64))
    }

    /// Reads the map of `record` from `device`; `.corrupt` if its header is not that map's.
    static func open(on device: BlockDevice, for record: ExternalSnapshotRecord) throws(LunError) -> ValidityMap {
        var head = [UInt8](repeating: 0, count: headerBytes)
        try typed { try head.withUnsafeMutableBytes { try device.read(into: $0, at: 0) } }
        guard head == header(for: record) else {
            throw .corrupt("\(device.name) is not the validity map of this snapshot (header differs)")
        }
        var words = [UInt64](repeating: 0, count: (record.blockCount + 63) / 64)
        let bitmapBytes = (record.blockCount + 7) / 8
        if bitmapBytes > 0 {
            var raw = [UInt8](repeating: 0, count: words.count * 8)
            try typed { try raw.withUnsafeMutableBytes { try device.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<bitmapBytes]), at: UInt64(headerBytes)) } }
            for i in words.indices {
                var w: UInt64 = 0
                for b in 0..<8 { w |= UInt64(raw[i * 8 + b]) << (8 * b) }
                words[i] = w
            }
            // Bits past the last block are never set; a map that has them is damaged.
            if record.blockCount % 64 != 0, words.last! >> (record.blockCount % 64) != 0 {
                throw .corrupt("\(device.name): bits set past the last block")
            }
        }
        return ValidityMap(device: device, blockCount: record.blockCount, words: words)
    }

    /// The map of a snapshot recorded complete: every bit set, nothing ever written to `device`.
    static func complete(blockCount: Int, device: BlockDevice) -> ValidityMap {
        var words = [UInt64](repeating: UInt64.max, count: (blockCount + 63) / 64)
        if blockCount % 64 != 0 { words[words.count - 1] = (1 << UInt64(blockCount % 64)) - 1 }
        return ValidityMap(device: device, blockCount: blockCount, words: words)
    }

    func isValid(_ block: Int) -> Bool { words[block >> 6] & (1 << UInt64(block & 63)) != 0 }

    var isComplete: Bool { validCount.load(ordering: .acquiring) == blockCount }

    /// The first clear bit at or after `start`, wrapping around once; nil when all are set.
    func firstInvalid(from start: Int) -> Int? {
        if isComplete || blockCount == 0 { return nil }
        let from = start % blockCount
        for (lo, hi) in [(from, blockCount), (0, from)] {
            var i = lo
            while i < hi {
                let w = words[i >> 6] >> UInt64(i & 63)
                if w == UInt64.max >> UInt64(i & 63) { i = (i | 63) + 1; continue }
                let clear = (~w).trailingZeroBitCount
                if i + clear < hi { return i + clear }
                i = (i | 63) + 1
            }
        }
        return nil
    }

    /// Sets the bits of `blocks` on the device (the map pages that hold them, then a sync)
    /// and only then in memory. The blocks' bytes must be durable in the external file.
    func setDurably(_ blocks: [Int]) throws(LunError) {
        var changed: [Int: UInt64] = [:]
        for b in blocks where !isValid(b) {
            precondition(b >= 0 && b < blockCount, "block \(b) outside the map")
            changed[b >> 6, default: words[b >> 6]] |= 1 << UInt64(b & 63)
        }
        if changed.isEmpty { return }
        let wordsPerPage = Self.pageBytes / 8
        var page = [UInt8](repeating: 0, count: Self.pageBytes)
        for p in Set(changed.keys.map { $0 / wordsPerPage }).sorted() {
            for i in 0..<wordsPerPage {
                let index = p * wordsPerPage + i
                let w = index < words.count ? changed[index] ?? words[index] : 0
                for b in 0..<8 { page[i * 8 + b] = UInt8(truncatingIfNeeded: w >> (8 * b)) }
            }
            try typed { try page.withUnsafeBytes { try device.write($0, at: UInt64(Self.headerBytes + p * Self.pageBytes)) } }
        }
        try device.sync()
        var added = 0
        for (i, w) in changed {
            added += (w ^ words[i]).nonzeroBitCount
            words[i] = w
        }
        validCount.add(added, ordering: .releasing)
    }
}
