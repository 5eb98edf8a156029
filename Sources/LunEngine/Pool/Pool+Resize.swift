// Changing how much of a disk exists: truncate (grow or shrink), discard of a range
// (fallocate PUNCH_HOLE) and the SEEK_DATA/SEEK_HOLE view of what is mapped. Dropping a
// segment follows the same sharing rules as a write, so neighbours keep their bytes.

extension Pool {
    /// truncate: grows (new space reads zeros) or shrinks (frees segments) the disk.
    ///
    /// A shrink to a size inside a segment leaves the bytes past the end of that segment
    /// zero, so that growing again reads zeros. Those zeros never land on the segment the
    /// committed maps point at: the kept tail segment is redirected (`SharingChain.redirectingPlan`: a
    /// fresh segment, the old bytes copied in, zeros on top) and the switch to it, the dropped
    /// segments and the new size are logged in one `stateLock` section, so one journal record
    /// holds all of them and a crash shows either the old size with the old bytes or the new.
    /// An unaligned shrink of a mapped segment therefore needs one free segment (`.noSpace`
    /// otherwise, with nothing changed).
    public func resize(_ id: DiskID, to sizeBytes: UInt64) throws(LunError) {
        try checkWritable()
        guard sizeBytes <= PoolGeometry.maxDiskSizeBytes else {
            throw .tooLarge("\(sizeBytes) bytes is past the largest disk size \(PoolGeometry.maxDiskSizeBytes)")
        }
        let d = try liveDisk(id)
        if isExternalSnapshot(id) { throw .notPermitted("a snapshot on separate storage keeps its size") }
        let seg = geometry.rsegSizeBytes
        d.family.lockForChange()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { throw .stale("disk \(id) was deleted") }
        guard sizeBytes < d.sizeBytes else {
            stateLock.withLock { state.update(d) { $0.sizeBytes = sizeBytes } }
            return
        }
        try copyBeforeChange(of: d, from: sizeBytes, to: d.sizeBytes)
        var tail: [WriteStep] = []
        let k = Int(sizeBytes / seg), within = Int(sizeBytes % seg)
        if within != 0, d.map.entry(k).isMapped {
            let e = d.map.entry(k)
            let plan = SharingChain.redirectingPlan(d, k)
            tail.append(WriteStep(k: k, within: within, at: 0, len: segmentBytes - within, entry: e, plan: plan,
                                  copiesBelowClone: copiesBelowClone(d, k, plan)))
        }
        let dropped = d.map.mappedSegments(from: Int((sizeBytes + seg - 1) / seg))
        var fresh = try allocateSteps(&tail, for: d)
        defer { releaseUnmapped(fresh) }
        if !tail.isEmpty {
            let zeros = scratchBuffer(tail[0].len)
            defer { zeros.deallocate() }
            zeros.initializeMemory(as: UInt8.self, repeating: 0)
            try fillSegments(d, &tail, from: UnsafeRawBufferPointer(zeros))
        }
        var copies = try copiesForDrop(d, dropped)
        defer { releaseUnmapped(Array(copies.values)) }
        stateLock.withLock {
            switchMapsLocked(d, tail)
            dropSegmentsLocked(d, dropped, copies: copies)
            state.update(d) { $0.sizeBytes = sizeBytes }
        }
        fresh = []
        copies = [:]
    }

    /// Makes a range read as zeros: whole segments are unmapped, partial ones overwritten.
    public func discard(_ id: DiskID, at offset: UInt64, length: UInt64) throws(LunError) {
        try checkWritable()
        let d = try liveDisk(id)
        if isExternalSnapshot(id) { return try discardExternal(d, at: offset, length: length) }
        let size = try withShared(d) { () throws(LunError) -> UInt64 in d.sizeBytes }
        let (rawEnd, overflow) = offset.addingReportingOverflow(length)
        let end = min(overflow ? UInt64.max : rawEnd, size)
        guard offset < end else { return }
        let seg = geometry.rsegSizeBytes
        let firstWhole = (offset + seg - 1) / seg, endWhole = end / seg
        if firstWhole >= endWhole {
            try writeZeros(id, from: offset, to: end)
            return
        }
        if offset < firstWhole * seg { try writeZeros(id, from: offset, to: firstWhole * seg) }
        if endWhole * seg < end { try writeZeros(id, from: endWhole * seg, to: end) }
        d.family.lockForChange()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { throw .stale("disk \(id) was deleted") }
        try copyBeforeChange(of: d, from: firstWhole * seg, to: endWhole * seg)
        try dropSegments(d, d.map.mappedSegments(from: Int(firstWhole)).filter { $0 < Int(endWhole) })
    }

    /// lseek SEEK_DATA (`data` true) or SEEK_HOLE from `offset`, at segment granularity;
    /// nil when there is no such position before the end of the disk (ENXIO).
    public func seek(_ id: DiskID, from offset: UInt64, data: Bool) throws(LunError) -> UInt64? {
        let d = try liveDisk(id)
        return try withShared(d) { () throws(LunError) -> UInt64? in
            guard d.hasImage else { throw .stale("disk \(id) was deleted") }
            guard offset < d.sizeBytes else { return nil }
            // A snapshot on separate storage has no holes: all of it is data.
            if isExternalSnapshot(id) { return data ? offset : d.sizeBytes }
            let seg = geometry.rsegSizeBytes
            let limit = Int((d.sizeBytes + seg - 1) / seg)
            let k = Int(offset / seg)
            guard let found = d.map.firstSegment(from: k, limit: limit, mapped: data) else {
                return data ? nil : d.sizeBytes
            }
            return min(max(offset, UInt64(found) * seg), d.sizeBytes)
        }
    }

    func withShared<T>(_ d: Disk, _ body: () throws(LunError) -> T) throws(LunError) -> T {
        d.family.lock.lockShared()
        defer { d.family.lock.unlock() }
        guard !d.removed else { throw .stale("disk \(d.id) was deleted") }
        return try body()
    }

    private func writeZeros(_ id: DiskID, from start: UInt64, to end: UInt64) throws(LunError) {
        guard end > start else { return }
        let zeros = scratchBuffer(Int(end - start))
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        try write(id, at: start, from: UnsafeRawBufferPointer(zeros))
    }

    /// Unmaps segments of `d`, handing what neighbours need to them (`copiesForDrop`, then
    /// `dropSegmentsLocked`). Caller holds the family lock exclusive.
    private func dropSegments(_ d: Disk, _ segments: [Int]) throws(LunError) {
        var copies = try copiesForDrop(d, segments)
        defer { releaseUnmapped(Array(copies.values)) }
        stateLock.withLock { dropSegmentsLocked(d, segments, copies: copies) }
        copies = [:]
    }

    /// The data I/O of dropping `segments`: a segment that both neighbours read through `d`
    /// needs a copy for the predecessor, allocated up front so that `.noSpace` changes
    /// nothing, and filled here. Returns the copies by segment number; the caller maps them
    /// (`dropSegmentsLocked`) or releases them. Caller holds the family lock exclusive.
    private func copiesForDrop(_ d: Disk, _ segments: [Int]) throws(LunError) -> [Int: (store: Int, rseg: Int)] {
        let middle = segments.filter { SharingChain.dropNeedsCopy(d, $0) }
        if middle.isEmpty { return [:] }
        var copies = try allocate(middle.count, for: d, sharedSegments: middle)
        defer { releaseUnmapped(copies) }
        var copied: [Int: (store: Int, rseg: Int)] = [:]
        let buf = scratchBuffer(segmentBytes)
        defer { buf.deallocate() }
        for k in middle {
            let holder = SharingChain.lookup(d, k).holder
            let c = copies.removeLast()
            do throws(LunError) {
                try readHeld(holder, offset: 0, into: buf)
                try storeIO.write(store: c.store, rseg: c.rseg, offset: 0, from: UnsafeRawBufferPointer(buf))
            } catch {
                copies.append(c)
                copies += copied.values
                throw error
            }
            copied[k] = c
        }
        return copied
    }

    /// The map edits of dropping `segments` (`SharingChain.afterDrop`), the predecessor's
    /// copies taken from `copies`. Caller holds the family lock exclusive and `stateLock`.
    private func dropSegmentsLocked(_ d: Disk, _ segments: [Int], copies: [Int: (store: Int, rseg: Int)]) {
        for k in segments { state.apply(SharingChain.afterDrop(d, k, copy: copies[k])) }
    }
}
