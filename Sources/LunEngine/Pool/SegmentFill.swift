// Partial segments on the I/O paths (docs/DESIGN.md section 8, "Partial segments"): reading a
// held segment block by block from itself or its source, the first write that makes a segment
// partial, later writes into it, and the fill that completes it. Every path that reads a
// holder's bytes goes through `readHeld`; every in-place write goes through `writeHeldInPlace`.
import Foundation

extension Pool {
    static let validityBlockBytes = ChecksumArea.blockBytes

    /// Seconds on the monotonic clock (the age of partial segments, write-intent times). Not
    /// ProcessInfo: its first use from two threads at once hung a daemon for good (both
    /// waiting in swift_once, the main thread and a background thread, right after open).
    static func uptimeSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// Blocks of a segment (256 for 1 MiB); partial segments need at most `BlockBits.capacity`.
    var blocksPerSegment: Int { segmentBytes / Self.validityBlockBytes }
    /// Whether a write may make a segment partial on this pool now.
    var makesPartialSegments: Bool { blockCopyOnWrite && blocksPerSegment <= BlockBits.capacity }

    /// Reads bytes of the segment that entry `e` holds: from the RSEG itself, or, for blocks of
    /// a partial segment that it does not hold yet, from its source.
    func readHeld(_ e: LMapEntry, offset: Int, into buffer: UnsafeMutableRawBufferPointer,
                  describe: () -> String = { "" }) throws(LunError) {
        guard let (source, bits) = state.partials.lookup(SharingChain.location(e)) else {
            try storeIO.read(store: Int(e.store), rseg: e.rseg, offset: offset, into: buffer, describe: describe)
            return
        }
        let bb = Self.validityBlockBytes
        let end = offset + buffer.count
        var pos = offset
        while pos < end {
            let valid = bits.contains(pos / bb)
            var runEnd = (pos / bb + 1) * bb
            while runEnd < end && bits.contains(runEnd / bb) == valid { runEnd += bb }
            runEnd = min(runEnd, end)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[(pos - offset)..<(runEnd - offset)])
            if valid {
                try storeIO.read(store: Int(e.store), rseg: e.rseg, offset: pos, into: piece, describe: describe)
            } else {
                try storeIO.read(store: Int(source >> 3), rseg: Int(source & 7), offset: pos, into: piece, describe: describe)
            }
            pos = runEnd
        }
    }

    /// The blocks a write of [within, within + count) touches, widened to the unit that is
    /// written whole into a partial segment of `store`: the block, or on RAID 5 the stripe row.
    func partialUnits(store: Int, within: Int, count: Int) -> BlockBits {
        let bb = Self.validityBlockBytes
        let touched = BlockBits.range((within / bb)..<((within + count + bb - 1) / bb))
        return widenedUnits(store: store, touched)
    }

    func widenedUnits(store: Int, _ blocks: BlockBits) -> BlockBits {
        guard state.rsds.level(store) == .raid5 else { return blocks }
        return blocks.widenedToRows(perColumn: Int(geometry.stripeUnitBytes) / Self.validityBlockBytes, columns: geometry.dataColumns,
                                    rowsPerGroup: Self.raid5RowsPerUnit)
    }

    /// Stripe rows a RAID 5 partial segment gets at once (16: 64 KiB of each column). A row
    /// written into a partial segment costs the same calls whether it is one block deep or
    /// sixteen (three reads of the source, five writes), and every later write that falls in
    /// the group finds it valid and costs a read-modify-write instead.
    static let raid5RowsPerUnit = 16

    /// Lays out `units` of a segment in `image` (the whole segment's bytes as reads see them):
    /// the source's bytes where `piece` (at `within`) does not cover a run, then the piece.
    private func composeUnits(_ units: BlockBits, source: UInt32, within: Int, _ piece: UnsafeRawBufferPointer,
                              into image: UnsafeMutableRawBufferPointer) throws(LunError) {
        let bb = Self.validityBlockBytes
        for run in units.runs {
            let lo = run.lowerBound * bb, hi = run.upperBound * bb
            if within <= lo && within + piece.count >= hi { continue }
            try storeIO.read(store: Int(source >> 3), rseg: Int(source & 7), offset: lo,
                             into: UnsafeMutableRawBufferPointer(rebasing: image[lo..<hi]))
        }
        if piece.count > 0 { (image.baseAddress! + within).copyMemory(from: piece.baseAddress!, byteCount: piece.count) }
    }

    /// Writes `units` of `image` into RSEG `rseg` of `store`: block runs, or on RAID 5 whole
    /// stripe rows with their parity, reading nothing of the RSEG.
    private func writeUnits(_ units: BlockBits, store: Int, rseg: Int, from image: UnsafeRawBufferPointer) throws(LunError) {
        let bb = Self.validityBlockBytes
        if state.rsds.level(store) == .raid5 {
            let perColumn = Int(geometry.stripeUnitBytes) / bb
            for run in units.runs where run.lowerBound < perColumn {
                let rows = run.lowerBound..<min(run.upperBound, perColumn)
                try storeIO.writeRows(store: store, rseg: rseg, within: rows.lowerBound * bb, count: rows.count * bb, from: image)
            }
            return
        }
        for run in units.runs {
            let lo = run.lowerBound * bb, hi = run.upperBound * bb
            try storeIO.write(store: store, rseg: rseg, offset: lo, from: UnsafeRawBufferPointer(rebasing: image[lo..<hi]))
        }
    }

    /// The first write of a segment it unshares by a hand-off or a copy in, in blocks: only
    /// the units the piece touches go into the fresh segment `mine`; the rest stay with
    /// `old`, which the new segment's record names as its source. Returns the units written.
    func fillPartially(mine: (store: Int, rseg: Int), old: LMapEntry, within: Int, _ piece: UnsafeRawBufferPointer,
                       staging image: UnsafeMutableRawBufferPointer) throws(LunError) -> BlockBits {
        let units = partialUnits(store: mine.store, within: within, count: piece.count)
        try composeUnits(units, source: SharingChain.location(old), within: within, piece, into: image)
        try writeUnits(units, store: mine.store, rseg: mine.rseg, from: UnsafeRawBufferPointer(image))
        return units
    }

    /// An in-place write of `piece` at `within` of the segment `e` holds (`partial`: its record,
    /// if it is a partial segment). Units the segment does not hold yet are composed with the
    /// source's bytes, written whole, and only then get their bits (logged).
    func writeHeldInPlace(_ e: LMapEntry, partial: PartialSegment?, at within: Int, _ piece: UnsafeRawBufferPointer) throws(LunError) {
        guard let partial else { return try writeInPlace(e, at: within, piece) }
        let store = Int(e.store)
        partial.writers.lock()
        defer { partial.writers.unlock() }
        // Dropped meanwhile (a fill completed it): an ordinary segment now.
        guard state.partials.record(partial.location) === partial else { return try writeInPlace(e, at: within, piece) }
        let bits = state.partials.bits(of: partial)
        let touched = partialUnits(store: store, within: within, count: piece.count)
        let missing = touched.subtracting(bits)
        if missing.isEmpty { return try writeInPlace(e, at: within, piece) }
        let bb = Self.validityBlockBytes
        try beginInPlaceWrite(store)
        defer { endInPlaceWrite(store) }
        let image = scratchBuffer(segmentBytes)
        defer { image.deallocate() }
        try composeUnits(missing, source: partial.source, within: within, piece, into: image)
        try writeUnits(missing, store: store, rseg: e.rseg, from: UnsafeRawBufferPointer(image))
        // The rest of the piece falls on blocks the segment holds: written as usual.
        for run in touched.intersection(bits).runs {
            let lo = max(run.lowerBound * bb, within), hi = min(run.upperBound * bb, within + piece.count)
            if lo >= hi { continue }
            try storeIO.write(store: store, rseg: e.rseg, offset: lo,
                              from: UnsafeRawBufferPointer(rebasing: piece[(lo - within)..<(hi - within)]))
        }
        _ = stateLock.withLock {
            state.apply(.putPartial(location: partial.location, source: partial.source, valid: state.partials.bits(of: partial).union(missing)))
        }
    }

    /// Blocks of RSEG `rseg` of `store` that nothing reads: those a partial segment does not
    /// hold yet (none for any other RSEG). Indexed as `BlockBits` are, `column * perColumn + row`.
    func invalidBlocks(store: Int, rseg: Int) -> BlockBits {
        guard let (_, bits) = state.partials.lookup(UInt32(store) << 3 | UInt32(rseg)) else { return .none }
        return BlockBits.all(blocksPerSegment).subtracting(bits)
    }

    // MARK: The fill

    /// Completes the partial segment at `location`: copies the blocks it does not hold from its
    /// source, then drops its record with the chain's lock exclusive, so no read still reads
    /// the source under a copy of the old bits. Caller holds no chain lock. False when there
    /// was nothing (left) to do.
    @discardableResult
    func completePartialSegment(_ location: UInt32) throws(LunError) -> Bool {
        guard let partial = state.partials.record(location) else { return false }
        guard let family = stateLock.withLock({ partial.family }) else {
            preconditionFailure("partial segment \(location >> 3).\(location & 7) has no chain")
        }
        do {
            family.lock.lockShared()
            defer { family.lock.unlock() }
            partial.writers.lock()
            defer { partial.writers.unlock() }
            guard state.partials.record(location) === partial else { return false }
            let missing = BlockBits.all(blocksPerSegment).subtracting(state.partials.bits(of: partial))
            if !missing.isEmpty {
                let store = Int(location >> 3), rseg = Int(location & 7)
                try beginInPlaceWrite(store)
                defer { endInPlaceWrite(store) }
                let image = scratchBuffer(segmentBytes)
                defer { image.deallocate() }
                try composeUnits(missing, source: partial.source, within: 0, UnsafeRawBufferPointer(start: nil, count: 0), into: image)
                try writeUnits(missing, store: store, rseg: rseg, from: UnsafeRawBufferPointer(image))
            }
        }
        family.lock.lockExclusive()
        defer { family.lock.unlock() }
        return stateLock.withLock {
            guard state.partials.record(location) === partial else { return false }
            state.apply(.dropPartial(location: location))
            return true
        }
    }

    /// Completes every partial segment that reads from one of `sources`, before they change
    /// in place. Caller holds no chain lock.
    func completePartialSegments(readingFrom sources: [UInt32]) throws(LunError) {
        for source in sources {
            for location in state.partials.dependents(of: source) { try completePartialSegment(location) }
        }
    }

    /// How long a segment stays partial before the background fill takes it: writes that
    /// come soon after the first one often touch the same segment again, and each block they
    /// write is one the fill need not copy.
    public static let partialFillDelaySeconds = 10.0

    /// Completes up to `limit` partial segments that have been partial for at least
    /// `minimumAgeSeconds` (the background fill's step, and tests); returns how many it completed.
    @discardableResult
    public func fillPartialSegments(limit: Int = Int.max, minimumAgeSeconds: Double = 0) throws(LunError) -> Int {
        var done = 0
        for p in partialSegments(minimumAgeSeconds: minimumAgeSeconds) where done < limit {
            if try completePartialSegment(p.location) { done += 1 }
        }
        return done
    }

    /// Partial segments made at least `minimumAgeSeconds` ago.
    func partialSegments(minimumAgeSeconds: Double) -> [PartialSegment] {
        let all = state.partials.all()
        if minimumAgeSeconds <= 0 { return all }
        let now = Self.uptimeSeconds()
        return stateLock.withLock { all.filter { now - $0.createdAt >= minimumAgeSeconds } }
    }

    /// Partial segments left, and the bytes their fill still has to copy (`lunfs status`).
    public var partialSegmentProgress: (segments: Int, bytesLeft: UInt64) {
        let all = state.partials.all()
        let blocks = all.reduce(0) { $0 + blocksPerSegment - state.partials.bits(of: $1).count }
        return (all.count, UInt64(blocks) * UInt64(Self.validityBlockBytes))
    }
}
