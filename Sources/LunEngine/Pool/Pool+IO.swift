// Reads and writes of a logical disk. A read walks the sharing chain to the holder of each
// segment (unmapped reads zeros). A write to a segment this disk holds alone goes in place
// under the family lock taken shared; anything else takes it exclusive and unshares first:
// the writer always gets a fresh segment (old bytes copied in, new bytes on top, written as
// one full stripe) and a predecessor that needed the old bytes inherits the old segment
// (the handoff) or, in the middle of a chain, gets a copy. A segment some committed state
// maps is therefore never written in place, so a crash can never show a snapshot new bytes.

extension Pool {
    var segmentBytes: Int { Int(geometry.rsegSizeBytes) }

    /// Reads up to `buffer.count` bytes at `offset`; returns fewer at the end of the disk.
    public func read(_ id: DiskID, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int {
        let d = try liveDisk(id)
        d.family.lock.lockShared()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { throw .stale("disk \(id) was deleted") }
        guard offset < d.sizeBytes, buffer.count > 0 else { return 0 }
        let n = Int(min(UInt64(buffer.count), d.sizeBytes - offset))
        try forEachSegmentPiece(offset: offset, count: n) { k, within, at, len throws(LunError) in
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[at..<at + len])
            let e = d.holderEntry(k)
            if e.isMapped {
                try storeIO.read(store: Int(e.store), rseg: e.rseg, offset: within, into: piece)
            } else {
                piece.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
        return n
    }

    @inline(__always)
    func forEachSegmentPiece(offset: UInt64, count: Int, _ body: (Int, Int, Int, Int) throws(LunError) -> Void) throws(LunError) {
        let seg = segmentBytes
        var done = 0
        while done < count {
            let pos = offset + UInt64(done)
            let k = Int(pos / UInt64(seg))
            let within = Int(pos % UInt64(seg))
            let len = min(seg - within, count - done)
            try body(k, within, done, len)
            done += len
        }
    }

    /// Writes all of `buffer` at `offset`, growing the disk if it ends past the size.
    public func write(_ id: DiskID, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        try checkWritable()
        let (end, overflow) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !overflow, end <= PoolGeometry.maxDiskSizeBytes else {
            throw .tooLarge("write ending at \(offset) + \(buffer.count) is past the largest disk size")
        }
        let d = try liveDisk(id)
        d.family.lock.lockShared()
        var fast = !d.removed && d.hasImage && end <= d.sizeBytes && state.unsharedCount.load(ordering: .acquiring) == 0
        if fast {
            var k = Int(offset / geometry.rsegSizeBytes)
            let last = buffer.isEmpty ? k - 1 : Int((end - 1) / geometry.rsegSizeBytes)
            while fast && k <= last { fast = d.map.entry(k).isExclusive; k += 1 }
        }
        if fast {
            defer { d.family.lock.unlock() }
            try forEachSegmentPiece(offset: offset, count: buffer.count) { k, within, at, len throws(LunError) in
                let e = d.map.entry(k)
                try storeIO.write(store: Int(e.store), rseg: e.rseg, offset: within,
                                  from: UnsafeRawBufferPointer(rebasing: buffer[at..<at + len]))
            }
            return
        }
        d.family.lock.unlock()
        d.family.lock.lockExclusive()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { throw .stale("disk \(id) was deleted") }
        try writeUnsharing(d, at: offset, from: buffer)
    }

    /// What one segment of a write needs before its bytes can land.
    private enum SegmentPlan {
        /// Held alone: write in place.
        case inPlace(LMapEntry)
        /// Unmapped: a fresh segment, zeros around the new bytes.
        case fresh
        /// Held, and the predecessor reads it: the predecessor inherits it, the writer moves.
        case handOff(LMapEntry)
        /// Read from the successor, not needed by the predecessor: the writer takes a copy.
        case copyIn
        /// Read from the successor and needed by the predecessor: both take copies (003 [0099]).
        case copyInAndOut

        var isFresh: Bool { if case .fresh = self { return true } else { return false } }

        var segmentsNeeded: Int {
            switch self {
            case .inPlace: return 0
            case .fresh, .handOff, .copyIn: return 1
            case .copyInAndOut: return 2
            }
        }
    }

    private func plan(_ e: LMapEntry) -> SegmentPlan {
        if !e.isMapped { return .fresh }
        if e.isExclusive { return .inPlace(e) }
        if !e.ss { return .handOff(e) }
        return e.sp ? .copyInAndOut : .copyIn
    }

    /// The exclusive-lock write path. Caller holds `d.family.lock` exclusive.
    private func writeUnsharing(_ d: Disk, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        let seg = segmentBytes
        var plans: [(k: Int, within: Int, at: Int, len: Int, plan: SegmentPlan)] = []
        var needed = 0
        var mustCommitFirst = false
        try forEachSegmentPiece(offset: offset, count: buffer.count) { k, within, at, len throws(LunError) in
            let p = plan(d.map.entry(k))
            if case .inPlace(let e) = p, state.unsharedCount.load(ordering: .acquiring) > 0 {
                mustCommitFirst = mustCommitFirst || stateLock.withLock { state.isUnsharedUncommitted(PoolState.location(e)) }
            }
            needed += p.segmentsNeeded
            plans.append((k, within, at, len, p))
        }
        // A disk that still shares the segment in the committed maps must not see these bytes
        // after a crash.
        if mustCommitFirst { try commit() }
        var fresh = try allocate(needed, for: d, sharedSegments: plans.filter { $0.plan.segmentsNeeded > 0 && !($0.plan.isFresh) }.map(\.k))
        defer { if !fresh.isEmpty { stateLock.withLock { for f in fresh { state.releaseRSEG(store: f.store, rseg: f.rseg) } } } }
        let end = offset + UInt64(buffer.count)
        if end > d.sizeBytes || !d.hasWritten {
            stateLock.withLock {
                d.sizeBytes = max(d.sizeBytes, end)
                d.hasWritten = true
                state.logDisk(d)
            }
        }
        var staging: UnsafeMutableRawBufferPointer?
        defer { staging?.deallocate() }
        for step in plans {
            let piece = UnsafeRawBufferPointer(rebasing: buffer[step.at..<step.at + step.len])
            if case .inPlace(let e) = step.plan {
                try storeIO.write(store: Int(e.store), rseg: e.rseg, offset: step.within, from: piece)
                continue
            }
            let k = step.k
            let mine = fresh.removeFirst()
            let theirs = step.plan.segmentsNeeded == 2 ? fresh.removeFirst() : nil
            let whole = step.within == 0 && step.len == seg
            if whole && theirs == nil {
                do throws(LunError) { try storeIO.write(store: mine.store, rseg: mine.rseg, offset: 0, from: piece) } catch {
                    fresh.append(mine); throw error
                }
            } else {
                if staging == nil { staging = scratchBuffer(seg) }
                let buf = staging!
                do throws(LunError) {
                    let old = d.holderEntry(k)
                    if old.isMapped {
                        try storeIO.read(store: Int(old.store), rseg: old.rseg, offset: 0, into: buf)
                    } else {
                        buf.initializeMemory(as: UInt8.self, repeating: 0)
                    }
                    if let theirs {
                        try storeIO.write(store: theirs.store, rseg: theirs.rseg, offset: 0, from: UnsafeRawBufferPointer(buf))
                    }
                    (buf.baseAddress! + step.within).copyMemory(from: piece.baseAddress!, byteCount: step.len)
                    try storeIO.write(store: mine.store, rseg: mine.rseg, offset: 0, from: UnsafeRawBufferPointer(buf))
                } catch {
                    fresh.append(mine)
                    if let theirs { fresh.append(theirs) }
                    throw error
                }
            }
            // The bytes are in place; now the maps may point at them.
            stateLock.withLock {
                switch step.plan {
                case .inPlace: break
                case .fresh: break
                case .handOff(let e):
                    let p = d.predecessor!
                    state.applySetEntry(p, k, .held(store: e.store, rseg: e.rseg, sp: p.map.entry(k).sp))
                    state.pendingUnshared.insert(PoolState.location(e))
                case .copyIn:
                    let s = d.successor!
                    state.pendingUnshared.insert(PoolState.location(s.holderEntry(k)))
                    state.applySetEntry(s, k, s.map.entry(k).with(sp: false))
                case .copyInAndOut:
                    let p = d.predecessor!, s = d.successor!
                    state.pendingUnshared.insert(PoolState.location(s.holderEntry(k)))
                    state.applySetEntry(p, k, .held(store: UInt32(theirs!.store), rseg: theirs!.rseg, sp: p.map.entry(k).sp))
                    state.applySetEntry(s, k, s.map.entry(k).with(sp: false))
                }
                state.applySetEntry(d, k, .held(store: UInt32(mine.store), rseg: mine.rseg, sp: false))
            }
        }
    }

    /// Takes `count` RSEGs of the disk's level, or none (`.noSpace`). Segments a write unshares
    /// are charged first to a fully reserved snapshot of the same sharing run, if there is one;
    /// the rest must leave every reservation intact.
    func allocate(_ count: Int, for d: Disk, sharedSegments: [Int]) throws(LunError) -> [(store: Int, rseg: Int)] {
        if count == 0 { return [] }
        return try stateLock.withLock { () throws(LunError) -> [(store: Int, rseg: Int)] in
            var charged: [Disk] = []
            if state.reservedTotal > 0 {
                for k in sharedSegments {
                    if let r = reservedDisk(sharingWith: d, segment: k, excluding: charged) { charged.append(r) }
                }
                let general = count - charged.count
                let free = state.freeSegments(level: d.raid) - (state.reservedTotal - charged.count)
                guard free >= general else {
                    throw .noSpace("\(general) segments needed, \(max(0, free)) free outside reservations")
                }
            }
            var got: [(store: Int, rseg: Int)] = []
            for _ in 0..<count {
                guard let r = state.allocateRSEG(level: d.raid, available: drives.isAvailable) else {
                    for g in got { state.releaseRSEG(store: g.store, rseg: g.rseg) }
                    throw .noSpace("the pool has no free \(d.raid) segment for \(d.name)")
                }
                got.append(r)
            }
            for r in charged {
                r.reservedSegments -= 1
                state.reservedTotal -= 1
                state.logDisk(r)
            }
            return got
        }
    }

    /// A fully reserved disk, with reservation left, in the run of disks sharing segment k with d.
    private func reservedDisk(sharingWith d: Disk, segment k: Int, excluding: [Disk]) -> Disk? {
        func usable(_ x: Disk) -> Bool {
            x.reservedSegments - excluding.filter({ $0 === x }).count > 0
        }
        var x = d
        while x.map.entry(k).sp, let p = x.predecessor { if usable(p) { return p }; x = p }
        x = d
        while x.map.entry(k).ss, let s = x.successor { if usable(s) { return s }; x = s }
        return usable(d) && (d.map.entry(k).sp || d.map.entry(k).ss) ? d : nil
    }
}
