// Zeros are holes, second half (issue 11 item 5): a write that leaves a mapped segment this
// disk holds alone all zeros frees that segment, so the disk reads zeros there from a hole.
// The check costs one scan of the written bytes that end at a segment's end, which stops at
// the first non-zero word, so ordinary writes pay nearly nothing. A piece of zeros that
// covers its whole segment frees it without reading anything: the write itself made the
// segment zeros, and a write that raced it into the same segment overlapped it, so either
// order is a right outcome. A piece of zeros that only reaches the segment's end leads to one
// read of the whole segment under the chain's exclusive lock. Zeros written from the end
// backwards, or in the middle of a segment that is never zeroed up to its end, are not found:
// that is the price of keeping the read off the path of every other write. A shared segment
// (a snapshot reads it too) is never freed by this.

extension Pool {
    /// Segments of a write's range that the write may have left all zeros: pieces of zeros
    /// that cover their segment or end where it ends.
    /// `whole`: the zeros cover the segment, so it is all zeros without a look.
    func zeroedSegmentCandidates(at offset: UInt64, _ buffer: UnsafeRawBufferPointer) -> [(k: Int, whole: Bool)] {
        var candidates: [(k: Int, whole: Bool)] = []
        let seg = segmentBytes
        forEachSegmentPiece(offset: offset, count: buffer.count) { k, within, at, len in
            guard within + len == seg, Self.isAllZero(UnsafeRawBufferPointer(rebasing: buffer[at..<at + len])) else { return }
            candidates.append((k, within == 0))
        }
        return candidates
    }

    /// Unmaps those of `segments` that `d` holds alone and that read all zeros, freeing their
    /// RSEGs at the next commit (like a discard). Nothing else in the chain changes.
    /// The write has succeeded by then: a failure here (the read) only leaves the segment mapped.
    func freeZeroedSegments(_ d: Disk, _ segments: [(k: Int, whole: Bool)]) {
        // Zeros into holes (the common case: dd of zeros into a thin image) stop here, with
        // the lock taken shared only.
        d.family.lock.lockShared()
        let held = segments.filter { d.map.entry($0.k).isExclusive }
        d.family.lock.unlock()
        guard !held.isEmpty else { return }
        do { try freeZeroedSegmentsHeld(d, held) } catch {
            log("disk \(d.name): segments \(held.map(\.k)) were not checked for zeros: \(error)")
        }
    }

    private func freeZeroedSegmentsHeld(_ d: Disk, _ segments: [(k: Int, whole: Bool)]) throws(LunError) {
        d.family.lockForChange()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { return }
        var buffer: UnsafeMutableRawBufferPointer?
        defer { buffer?.deallocate() }
        for (k, whole) in segments {
            let e = d.map.entry(k)
            guard e.isExclusive, !SharingChain.isShadowed(d, k), !d.family.isClaimed([k]) else { continue }
            if !whole {
                if buffer == nil { buffer = scratchBuffer(segmentBytes) }
                try storeIO.read(store: Int(e.store), rseg: e.rseg, offset: 0, into: buffer!,
                                 describe: { "disk \(d.name) (id \(d.id)) segment \(k), checked for zeros" })
                guard Self.isAllZero(UnsafeRawBufferPointer(buffer!)) else { continue }
            }
            stateLock.withLock {
                let change = SharingChain.afterDrop(d, k, copy: nil)
                assert(change.freed.count == 1, "an exclusive segment is freed, not handed on")
                state.apply(change)
            }
        }
    }
}
