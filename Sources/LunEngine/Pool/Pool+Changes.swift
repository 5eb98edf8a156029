// Change files (docs/DESIGN.md section 7b): what a disk changed since its predecessor in the
// sharing chain, read from the maps alone, for the mounted tree's `changes.img` and for
// incremental backups. A change file is the disk's size; it reads as the disk where a segment
// differs from the predecessor and as a hole (zeros) elsewhere, and SEEK_DATA/SEEK_HOLE and
// its allocation follow the same segments, so copying its data extents onto the predecessor's
// image (resized to the disk's size) gives the disk's image.

extension SharingChain {
    /// Whether segment k of `d` differs from d's predecessor (d must have one). A mapped entry
    /// differs unless its Sp is set: then the predecessor reads the very same RSEG (directly,
    /// or through d from a successor) or, under a shadow, a copy of it that a copying
    /// snapclone made and that nothing has changed since. An unmapped entry reads zeros; it
    /// differs where the predecessor maps the segment (d discarded, shrank or zeroed it after
    /// the split: the predecessor inherited the old bytes). The answer is by segment, not by
    /// byte: a segment written with the bytes it already had, or whose predecessor also holds
    /// zeros, still differs.
    static func differsFromPredecessor(_ d: Disk, _ k: Int) -> Bool {
        guard let p = d.predecessor else { preconditionFailure("disk \(d.id) has no predecessor") }
        let e = d.map.entry(k)
        if e.isMapped { return !e.sp }
        return p.map.entry(k).isMapped
    }
}

/// A disk's change file as a whole: how many segments differ from the predecessor.
public struct ChangeSummary: Sendable, Equatable {
    /// The disk the changes are against (the older neighbour in the chain).
    public var predecessor: DiskID
    public var changedSegments: Int
    /// changedSegments times the segment size: the change file's allocation (st_blocks).
    public var changedBytes: UInt64
}

extension Pool {
    /// The change file of disk `id`: nil when the disk has no predecessor (the oldest of a
    /// chain, a disk never snapshotted, an independent disk, a snapshot on separate storage)
    /// or no image. Counts the differing segments among those either disk maps.
    public func changeSummary(_ id: DiskID) throws(LunError) -> ChangeSummary? {
        let d = try liveDisk(id)
        if isExternalSnapshot(id) { return nil }
        return try withShared(d) { () throws(LunError) -> ChangeSummary? in
            guard d.hasImage, let p = d.predecessor else { return nil }
            let limit = segmentCount(d)
            var changed = 0
            d.map.forEachMapped { k, e in if k < limit && !e.sp { changed += 1 } }
            p.map.forEachMapped { k, _ in if k < limit && !d.map.entry(k).isMapped { changed += 1 } }
            return ChangeSummary(predecessor: p.id, changedSegments: changed,
                                 changedBytes: UInt64(changed) * geometry.rsegSizeBytes)
        }
    }

    /// Reads disk `id`'s change file: the disk's bytes in segments that differ from its
    /// predecessor, zeros elsewhere; short only at the end of the disk. `.notFound` when the
    /// disk has no change file (see `changeSummary`).
    public func readChanges(_ opened: OpenDisk, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int {
        let d = opened.disk
        if isExternalSnapshot(d.id) { throw .notFound("disk \(d.id) is a snapshot on separate storage: it has no change file") }
        d.family.lock.lockShared()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { throw .stale("disk \(d.id) was deleted") }
        guard d.predecessor != nil else { throw .notFound("disk \(d.id) has no predecessor: it has no change file") }
        guard offset < d.sizeBytes, buffer.count > 0 else { return 0 }
        let n = Int(min(UInt64(buffer.count), d.sizeBytes - offset))
        // Runs of differing segments are read as the disk reads them; the rest is zeros.
        var runStart = 0, runLength = 0
        func flushRun() throws(LunError) {
            guard runLength > 0 else { return }
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[runStart..<runStart + runLength])
            _ = try readLocked(d, at: offset + UInt64(runStart), into: piece)
            runLength = 0
        }
        try forEachSegmentPiece(offset: offset, count: n) { k, _, at, len throws(LunError) in
            if SharingChain.differsFromPredecessor(d, k) {
                if runLength == 0 { runStart = at }
                runLength += len
            } else {
                try flushRun()
                UnsafeMutableRawBufferPointer(rebasing: buffer[at..<at + len]).initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
        try flushRun()
        return n
    }

    /// SEEK_DATA (`data` true) or SEEK_HOLE from `offset` in disk `id`'s change file, at
    /// segment granularity: data is the differing segments. nil when there is no such
    /// position before the end (ENXIO).
    public func seekChanges(_ id: DiskID, from offset: UInt64, data: Bool) throws(LunError) -> UInt64? {
        let d = try liveDisk(id)
        if isExternalSnapshot(id) { throw .notFound("disk \(id) is a snapshot on separate storage: it has no change file") }
        return try withShared(d) { () throws(LunError) -> UInt64? in
            guard d.hasImage else { throw .stale("disk \(id) was deleted") }
            guard let p = d.predecessor else { throw .notFound("disk \(id) has no predecessor: it has no change file") }
            guard offset < d.sizeBytes else { return nil }
            let seg = geometry.rsegSizeBytes
            let limit = segmentCount(d)
            var k = Int(offset / seg)
            var found: Int? = nil
            if data {
                // Only segments that one of the two maps has can differ: skip the rest.
                while k < limit {
                    let mine = d.map.firstSegment(from: k, limit: limit, mapped: true)
                    let theirs = p.map.firstSegment(from: k, limit: limit, mapped: true)
                    guard let next = [mine, theirs].compactMap({ $0 }).min() else { break }
                    if SharingChain.differsFromPredecessor(d, next) { found = next; break }
                    k = next + 1
                }
                guard let found else { return nil }
                return max(offset, UInt64(found) * seg)
            }
            while k < limit && SharingChain.differsFromPredecessor(d, k) { k += 1 }
            return min(max(offset, UInt64(k) * seg), d.sizeBytes)
        }
    }

    /// Segments that cover the disk's size (the last one may be partly past the end).
    private func segmentCount(_ d: Disk) -> Int {
        let seg = geometry.rsegSizeBytes
        return Int((d.sizeBytes + seg - 1) / seg)
    }
}
