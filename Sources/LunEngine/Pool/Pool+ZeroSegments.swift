// Zeros are holes, second half (issue 11 item 5): a write that leaves a mapped segment this
// disk holds alone all zeros frees that segment, so the disk reads zeros there from a hole.
// The check costs one scan of the written bytes, which stops at the first non-zero word, so
// ordinary writes pay nearly nothing; only a piece of zeros that covers its segment or reaches
// the segment's end leads to a look at the whole segment (one read of it under the chain's
// exclusive lock). Zeros written from the end backwards, or in the middle of a segment that
// is never zeroed up to its end, are not found: that is the price of keeping the check off
// the path of every other write. A shared segment (a snapshot reads it too) is never freed.

extension Pool {
    /// Segments of a write's range that the write may have left all zeros: pieces of zeros
    /// that cover their segment or end where it ends.
    func zeroedSegmentCandidates(at offset: UInt64, _ buffer: UnsafeRawBufferPointer) -> [Int] {
        var candidates: [Int] = []
        let seg = segmentBytes
        forEachSegmentPiece(offset: offset, count: buffer.count) { k, within, at, len in
            guard within + len == seg, Self.isAllZero(UnsafeRawBufferPointer(rebasing: buffer[at..<at + len])) else { return }
            candidates.append(k)
        }
        return candidates
    }

    /// Unmaps those of `segments` that `d` holds alone and that read all zeros, freeing their
    /// RSEGs at the next commit (like a discard). Nothing else in the chain changes.
    /// The write has succeeded by then: a failure here (the read) only leaves the segment mapped.
    func freeZeroedSegments(_ d: Disk, _ segments: [Int]) {
        // Zeros into holes (the common case: dd of zeros into a thin image) stop here, with
        // the lock taken shared only.
        d.family.lock.lockShared()
        let held = segments.filter { d.map.entry($0).isExclusive }
        d.family.lock.unlock()
        guard !held.isEmpty else { return }
        do { try freeZeroedSegmentsHeld(d, held) } catch {
            log("disk \(d.name): segments \(held) were not checked for zeros: \(error)")
        }
    }

    private func freeZeroedSegmentsHeld(_ d: Disk, _ segments: [Int]) throws(LunError) {
        d.family.lockForChange()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { return }
        var buffer: UnsafeMutableRawBufferPointer?
        defer { buffer?.deallocate() }
        for k in segments {
            let e = d.map.entry(k)
            guard e.isExclusive, !SharingChain.isShadowed(d, k), !d.family.isClaimed([k]) else { continue }
            if buffer == nil { buffer = scratchBuffer(segmentBytes) }
            try storeIO.read(store: Int(e.store), rseg: e.rseg, offset: 0, into: buffer!,
                             describe: { "disk \(d.name) (id \(d.id)) segment \(k), checked for zeros" })
            guard Self.isAllZero(UnsafeRawBufferPointer(buffer!)) else { continue }
            stateLock.withLock {
                let change = SharingChain.afterDrop(d, k, copy: nil)
                assert(change.freed.count == 1, "an exclusive segment is freed, not handed on")
                state.apply(change)
            }
        }
    }
}
