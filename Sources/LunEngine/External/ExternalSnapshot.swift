// A virtual snapshot on separate storage at run time (seed 004 [0022]-[0034]): the external
// file, its validity map, and the lock that orders every copy into the file against reads
// that still go to V. Block n of the snapshot reads from the file once its bit is set and
// from V before; whoever is about to change V's block n (a write, a discard, a shrink), the
// background copy and a partial write to the snapshot itself copy V's block into the file
// first and set the bit (`copyIn`). What each caller must hold is said at each function;
// `Pool+External.swift` takes the locks.
//
// Lock order: the snapshot's own family lock, then V's family lock, then `copyLock`. Reads
// of the snapshot hold `copyLock` shared while they read V, so V's block cannot be copied
// and overwritten under them; `copyIn` holds it exclusive.
import Synchronization

final class ExternalSnapshot: @unchecked Sendable {
    let id: DiskID
    let source: DiskID
    let blockBytes: Int
    let sizeBytes: UInt64
    let data: BlockDevice
    let validity: ValidityMap
    let copyLock = ReadWriteLock()
    /// Where the background copy looks next (block number); guarded by `copyLock`.
    var cursor = 0
    /// Writes to `data` that have returned, and how many of them a finished sync covers (the
    /// count read before it began). Counted, not flagged, as the pool's drives are: two
    /// commits at once must not let the second skip a sync the first has not finished.
    let writesReturned = Atomic<Int>(0)
    let writesSynced = Atomic<Int>(0)

    init(record: ExternalSnapshotRecord, data: BlockDevice, validity: ValidityMap) {
        self.id = record.id
        self.source = record.source
        self.blockBytes = Int(record.blockBytes)
        self.sizeBytes = record.sizeBytes
        self.data = data
        self.validity = validity
    }

    var blockCount: Int { validity.blockCount }
    var isComplete: Bool { validity.isComplete }

    /// The blocks that bytes [start, end) touch, clipped to the snapshot.
    func blocks(from start: UInt64, to end: UInt64) -> Range<Int> {
        let e = min(end, sizeBytes)
        guard start < e else { return 0..<0 }
        return Int(start / UInt64(blockBytes))..<Int((e + UInt64(blockBytes) - 1) / UInt64(blockBytes))
    }

    /// Bytes [offset, end) of block b, clipped to the snapshot's size.
    func extent(of b: Int) -> (offset: UInt64, count: Int) {
        let offset = UInt64(b) * UInt64(blockBytes)
        return (offset, Int(min(UInt64(blockBytes), sizeBytes - offset)))
    }

    /// Copies the blocks of `blocks` whose bit is clear from V into the file, syncs it, and
    /// sets their bits durably. `readSource` reads V (the caller holds V's family lock) and
    /// returns how many bytes V had there (the rest reads as zeros). Caller holds `copyLock`
    /// exclusive. Consecutive blocks move as one transfer.
    func copyIn(_ blocks: [Int], readSource: (UInt64, UnsafeMutableRawBufferPointer) throws(LunError) -> Int) throws(LunError) {
        let missing = blocks.filter { !validity.isValid($0) }.sorted()
        if missing.isEmpty { return }
        let runBlocks = max(1, (4 << 20) / blockBytes)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: runBlocks * blockBytes, alignment: 4096)
        defer { buffer.deallocate() }
        var i = 0
        while i < missing.count {
            var j = i + 1
            while j < missing.count, missing[j] == missing[j - 1] + 1, j - i < runBlocks { j += 1 }
            let start = extent(of: missing[i]).offset
            let last = extent(of: missing[j - 1])
            let count = Int(last.offset - start) + last.count
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            let got = try readSource(start, piece)
            if got < count { UnsafeMutableRawBufferPointer(rebasing: piece[got...]).initializeMemory(as: UInt8.self, repeating: 0) }
            // V's holes stay holes in the file (a hole punched: the range may hold bytes of
            // a copy that a crash cut before its bit was set).
            if Pool.isAllZero(UnsafeRawBufferPointer(piece)) {
                try data.zero(at: start, length: UInt64(count))
            } else {
                try data.write(UnsafeRawBufferPointer(piece), at: start)
            }
            i = j
        }
        try data.sync()
        try validity.setDurably(missing)
    }

    /// Reads bytes of the snapshot: from the file where the bit is set, from V (`readSource`)
    /// where it is clear. Caller holds V's family lock and `copyLock`, at least shared.
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
              readSource: (UInt64, UnsafeMutableRawBufferPointer) throws(LunError) -> Int) throws(LunError) {
        var done = 0
        while done < buffer.count {
            let pos = offset + UInt64(done)
            let b = Int(pos / UInt64(blockBytes))
            let valid = validity.isValid(b)
            // A run of blocks with the same bit is one transfer.
            var end = extent(of: b).offset + UInt64(extent(of: b).count)
            while end < offset + UInt64(buffer.count), validity.isValid(Int(end / UInt64(blockBytes))) == valid {
                let e = extent(of: Int(end / UInt64(blockBytes)))
                end = e.offset + UInt64(e.count)
            }
            let len = Int(min(end, offset + UInt64(buffer.count)) - pos)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + len])
            if valid {
                try data.read(into: piece, at: pos)
            } else {
                let got = try readSource(pos, piece)
                if got < len { UnsafeMutableRawBufferPointer(rebasing: piece[got...]).initializeMemory(as: UInt8.self, repeating: 0) }
            }
            done += len
        }
    }

    /// Writes bytes to the snapshot itself. A block whose bit is clear gets V's bytes under
    /// the new ones first unless the write covers it whole; such blocks are synced and their
    /// bits set before this returns. Blocks already valid are written in place (durable at the
    /// next sync, like any file). Caller holds V's family lock and `copyLock` exclusive.
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer,
               readSource: (UInt64, UnsafeMutableRawBufferPointer) throws(LunError) -> Int) throws(LunError) {
        let end = offset + UInt64(buffer.count)
        var newlyValid: [Int] = []
        let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: blockBytes, alignment: 4096)
        defer { staging.deallocate() }
        var validStart: UInt64? = nil
        func flushValid(upTo stop: UInt64) throws(LunError) {
            guard let s = validStart else { return }
            let from = Int(s - offset), to = Int(stop - offset)
            try data.write(UnsafeRawBufferPointer(rebasing: buffer[from..<to]), at: s)
            validStart = nil
        }
        for b in blocks(from: offset, to: end) {
            let e = extent(of: b)
            let lo = max(e.offset, offset), hi = min(e.offset + UInt64(e.count), end)
            if validity.isValid(b) {
                if validStart == nil { validStart = lo }
                continue
            }
            try flushValid(upTo: lo)
            let block = UnsafeMutableRawBufferPointer(rebasing: staging[0..<e.count])
            if lo > e.offset || hi < e.offset + UInt64(e.count) {
                let got = try readSource(e.offset, block)
                if got < e.count { UnsafeMutableRawBufferPointer(rebasing: block[got...]).initializeMemory(as: UInt8.self, repeating: 0) }
            }
            (block.baseAddress! + Int(lo - e.offset)).copyMemory(from: buffer.baseAddress! + Int(lo - offset), byteCount: Int(hi - lo))
            try data.write(UnsafeRawBufferPointer(block), at: e.offset)
            newlyValid.append(b)
        }
        try flushValid(upTo: end)
        writesReturned.add(1, ordering: .releasing)
        if !newlyValid.isEmpty {
            try data.sync()
            try validity.setDurably(newlyValid)
        }
    }

    /// Makes the snapshot's own writes durable (the file's fdatasync) if any returned since
    /// the last finished sync began.
    func syncIfWritten() throws(LunError) {
        let seen = writesReturned.load(ordering: .acquiring)
        guard writesSynced.load(ordering: .acquiring) < seen else { return }
        try data.sync()
        var current = writesSynced.load(ordering: .acquiring)
        while current < seen {
            let (done, now) = writesSynced.compareExchange(expected: current, desired: seen, ordering: .acquiringAndReleasing)
            if done { break }
            current = now
        }
    }
}
