// Zeros are holes, second half (issue 11 item 5): a write that leaves a mapped segment this
// disk holds alone all zeros frees that segment, so the disk reads zeros there from a hole.
// A piece of zeros that covers a whole segment held alone is not written at all
// (`Pool.planSteps` leaves it out): the segment is unmapped instead, as a discard would. That
// is right even when another write raced into the same segment, since the two overlapped
// and either order is a right outcome; if a snapshot came in between and now shares the
// segment, the zeros are written after all (copy on write) and that copy is freed. A piece of
// zeros that only reaches the segment's end leads to one read of the whole segment under the
// chain's exclusive lock. The scan for zeros runs only on pieces that cover or end a segment
// and stops at the first non-zero word, so other writes pay nearly nothing. Zeros written
// from a segment's end backwards, or that never reach its end, leave it mapped: the price of
// keeping the read off the path of every other write. A segment a snapshot shares is never
// freed by this: the snapshot keeps its bytes.

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

    /// Unmaps those of `segments` that `d` holds alone and that read all zeros (`whole`: the
    /// write's zeros cover them), freeing their RSEGs at the next commit (like a discard).
    /// A whole one that is shared by now gets its zeros written (`write` again). A failed read
    /// only leaves a segment mapped: the write has succeeded by then.
    func freeZeroedSegments(_ d: Disk, _ segments: [(k: Int, whole: Bool)]) throws(LunError) {
        // Zeros into holes (the common case: dd of zeros into a thin image) stop here, with
        // the lock taken shared only.
        d.family.lock.lockShared()
        let held = segments.filter { d.map.entry($0.k).isMapped && ($0.whole || d.map.entry($0.k).isExclusive) }
        d.family.lock.unlock()
        guard !held.isEmpty else { return }
        let unwritten = freeZeroedSegmentsHeld(d, held)
        let seg = segmentBytes
        for k in unwritten {
            let zeros = scratchBuffer(seg)
            defer { zeros.deallocate() }
            zeros.initializeMemory(as: UInt8.self, repeating: 0)
            try write(d.id, at: UInt64(k) * UInt64(seg), from: UnsafeRawBufferPointer(zeros))
        }
    }

    /// The unmapping, under the chain's exclusive lock; returns the whole segments that are
    /// shared by now and so still need their zeros written.
    private func freeZeroedSegmentsHeld(_ d: Disk, _ segments: [(k: Int, whole: Bool)]) -> [Int] {
        d.family.lockForChange()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { return [] }
        var buffer: UnsafeMutableRawBufferPointer?
        defer { buffer?.deallocate() }
        var unwritten: [Int] = []
        for (k, whole) in segments {
            let e = d.map.entry(k)
            guard e.isMapped else { continue }
            guard e.isExclusive, !SharingChain.isShadowed(d, k), !d.family.isClaimed([k]) else {
                if whole { unwritten.append(k) }
                continue
            }
            if !whole {
                if buffer == nil { buffer = scratchBuffer(segmentBytes) }
                do {
                    try readHeld(e, offset: 0, into: buffer!,
                                     describe: { "disk \(d.name) (id \(d.id)) segment \(k), checked for zeros" })
                } catch {
                    log("disk \(d.name) segment \(k) was not checked for zeros: \(error)")
                    continue
                }
                guard Self.isAllZero(UnsafeRawBufferPointer(buffer!)) else { continue }
            }
            if whole {
                // The zeros were never written, so the segment still holds its old bytes: a
                // snapshot on separate storage taken since the write (it may have got the lock
                // first) must copy them before they go. Failing that, the zeros are written.
                let seg = UInt64(segmentBytes)
                do { try copyBeforeChange(of: d, from: UInt64(k) * seg, to: UInt64(k + 1) * seg) } catch {
                    unwritten.append(k)
                    continue
                }
            }
            stateLock.withLock {
                let change = SharingChain.afterDrop(d, k, copy: nil)
                assert(change.freed.count == 1, "an exclusive segment is freed, not handed on")
                state.apply(change)
            }
        }
        return unwritten
    }
}
