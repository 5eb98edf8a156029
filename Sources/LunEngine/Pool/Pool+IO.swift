// Reads and writes of a logical disk. A read walks the sharing chain to the holder of each
// segment (unmapped reads zeros). A write to a segment this disk holds alone goes in place.
// A write to a shared or unmapped segment unshares it: the writer always gets a fresh
// segment (old bytes copied in, new bytes on top, written as one full stripe) and a
// predecessor that needed the old bytes inherits the old segment (the handoff) or, in the
// middle of a chain, gets a copy. A segment some committed state maps is therefore never
// written in place, so a crash can never show a snapshot new bytes. Both kinds of write run
// with the chain's lock taken shared; only the switch of the maps takes it exclusive.

extension Pool {
    var segmentBytes: Int { Int(geometry.rsegSizeBytes) }

    /// Reads up to `buffer.count` bytes at `offset`; returns fewer at the end of the disk.
    public func read(_ id: DiskID, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int {
        try read(try openDisk(id), at: offset, into: buffer)
    }

    /// The same through a disk looked up once (an open image's): no `stateLock` to find it.
    public func read(_ opened: OpenDisk, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int {
        let d = opened.disk
        let id = d.id
        if isExternalSnapshot(id) { return try readExternal(d, at: offset, into: buffer) }
        d.family.lock.lockShared()
        defer { d.family.lock.unlock() }
        guard !d.removed, d.hasImage else { throw .stale("disk \(id) was deleted") }
        return try readLocked(d, at: offset, into: buffer)
    }

    /// `read` with the family lock already held (shared or exclusive) and the disk checked.
    func readLocked(_ d: Disk, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int {
        guard offset < d.sizeBytes, buffer.count > 0 else { return 0 }
        let n = Int(min(UInt64(buffer.count), d.sizeBytes - offset))
        try forEachSegmentPiece(offset: offset, count: n) { k, within, at, len throws(LunError) in
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[at..<at + len])
            let e = SharingChain.lookup(d, k).holder
            if e.isMapped {
                try readHeld(e, offset: within, into: piece,
                             describe: { "disk \(d.name) (id \(d.id)) offset \(UInt64(k) * UInt64(segmentBytes) + UInt64(within))" })
            } else {
                piece.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
        return n
    }

    @inline(__always)
    func forEachSegmentPiece<E: Error>(offset: UInt64, count: Int, _ body: (Int, Int, Int, Int) throws(E) -> Void) throws(E) {
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
        try write(try openDisk(id), at: offset, from: buffer)
    }

    /// The same through a disk looked up once (an open image's): no `stateLock` to find it.
    public func write(_ opened: OpenDisk, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        try checkWritable()
        let (end, overflow) = offset.addingReportingOverflow(UInt64(buffer.count))
        guard !overflow, end <= PoolGeometry.maxDiskSizeBytes else {
            throw .tooLarge("write ending at \(offset) + \(buffer.count) is past the largest disk size")
        }
        let d = opened.disk
        if isExternalSnapshot(d.id) { return try writeExternal(d, at: offset, from: buffer) }
        // A pool found full may drop expendable snapshots and try again (SpacePolicy.swift).
        try writeMakingRoom(d) { () throws(LunError) in
            if try !writeWithSharedLock(d, at: offset, from: buffer) {
                try writeWithExclusiveLock(d, at: offset, from: buffer)
            }
        }
        // Zeros are holes: a segment this write left all zeros is freed (Pool+ZeroSegments).
        let zeroed = zeroedSegmentCandidates(at: offset, buffer)
        if !zeroed.isEmpty { try freeZeroedSegments(d, zeroed) }
    }

    /// One segment's piece of a write: segment k, bytes [within, within + len) of it, taken
    /// from buffer[at...], and the map entry the plan was made from.
    struct WriteStep {
        let k: Int, within: Int, at: Int, len: Int
        let entry: LMapEntry
        let plan: SegmentPlan
        /// Fresh segments given to it: its own new one, and one for the predecessor.
        var mine: (store: Int, rseg: Int)? = nil
        var theirs: (store: Int, rseg: Int)? = nil
        /// Under the first snapclone variant: the old bytes also go to the predecessor of a
        /// copying snapclone below (`SharingChain.cloneBelowNeedsCopy`), in `below`.
        var copiesBelowClone = false
        var below: (store: Int, rseg: Int)? = nil
        /// An in-place step into a partial segment: its record (section 8, "Partial segments").
        var partial: PartialSegment? = nil
        /// A step that made its fresh segment partial: the source and the units it wrote.
        var partialSource: UInt32? = nil
        var partialBits = BlockBits.none
    }

    /// Whether a write step under `plan` makes the third copy (first snapclone variant).
    func copiesBelowClone(_ d: Disk, _ k: Int, _ plan: SegmentPlan) -> Bool {
        snapcloneVariant == .thirdCopy && SharingChain.cloneBelowNeedsCopy(d, k, plan)
    }

    /// The steps of a write as the maps stand. Caller holds the family lock (either way).
    /// `mustCommitFirst`: an in-place piece lands on a segment that the committed maps still
    /// show shared; a crash must not show its new bytes to the other disk, so a commit goes first.
    /// A piece of zeros for a segment that is unmapped (and so reads zeros already) needs no
    /// step at all: it allocates nothing, so zeros written into a thin disk stay holes.
    /// `mustFillFirst`: an in-place piece lands on the source of partial segments, which must be
    /// completed first (section 8, "Partial segments").
    private func planSteps(_ d: Disk, at offset: UInt64, _ buffer: UnsafeRawBufferPointer)
        -> (steps: [WriteStep], mustCommitFirst: Bool, mustFillFirst: [UInt32]) {
        var steps: [WriteStep] = []
        var mustCommitFirst = false
        var mustFillFirst: [UInt32] = []
        forEachSegmentPiece(offset: offset, count: buffer.count) { k, within, at, len in
            let e = d.map.entry(k)
            let p = SharingChain.plan(d, k)
            if case .fresh = p, Self.isAllZero(UnsafeRawBufferPointer(rebasing: buffer[at..<at + len])) { return }
            // Zeros over a whole segment held alone are not written: `write` frees the segment
            // after (Pool+ZeroSegments.swift).
            if case .inPlace = p, len == segmentBytes, e.isExclusive, !SharingChain.isShadowed(d, k),
               Self.isAllZero(UnsafeRawBufferPointer(rebasing: buffer[at..<at + len])) { return }
            if case .inPlace = p, !mustCommitFirst, state.unsharedCount.load(ordering: .acquiring) > 0 {
                mustCommitFirst = stateLock.withLock { state.isUnsharedUncommitted(SharingChain.location(e)) }
            }
            var partial: PartialSegment?
            if case .inPlace = p, !state.partials.isEmpty {
                partial = state.partials.record(SharingChain.location(e))
                if state.partials.isSource(SharingChain.location(e)) { mustFillFirst.append(SharingChain.location(e)) }
            }
            steps.append(WriteStep(k: k, within: within, at: at, len: len, entry: e, plan: p,
                                   copiesBelowClone: copiesBelowClone(d, k, p), partial: partial))
        }
        return (steps, mustCommitFirst, mustFillFirst)
    }

    /// Whether every byte is zero (word by word; it stops at the first other byte).
    static func isAllZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        while i + 8 <= bytes.count {
            if bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < bytes.count {
            if bytes[i] != 0 { return false }
            i += 1
        }
        return true
    }

    /// The usual write path, with the family lock taken shared so that reads and other writes
    /// of the chain go on. In-place pieces land at once. Pieces that need a fresh segment
    /// claim their segment numbers (see SharingFamily), get their segments filled, and only
    /// the switch of the maps takes the lock exclusive. Returns false, having done nothing,
    /// for a write that grows the disk or is its first: the exclusive path logs those.
    private func writeWithSharedLock(_ d: Disk, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) -> Bool {
        let end = offset + UInt64(buffer.count)
        while true {
            d.family.lock.lockShared()
            var locked = true
            defer { if locked { d.family.lock.unlock() } }
            guard !d.removed, d.hasImage else { throw .stale("disk \(d.id) was deleted") }
            if end > d.sizeBytes || !d.hasWritten { return false }
            try copyBeforeChange(of: d, from: offset, to: end)
            let epoch = d.family.changeEpoch
            var (steps, mustCommitFirst, mustFillFirst) = planSteps(d, at: offset, buffer)
            if !mustFillFirst.isEmpty {
                d.family.lock.unlock()
                locked = false
                try completePartialSegments(readingFrom: mustFillFirst)
                continue
            }
            if mustCommitFirst {
                try commit()
                continue
            }
            let unsharing = steps.filter { $0.plan.segmentsNeeded > 0 }.map(\.k)
            if unsharing.isEmpty {
                for step in steps {
                    try writeHeldInPlace(step.entry, partial: step.partial, at: step.within,
                                         UnsafeRawBufferPointer(rebasing: buffer[step.at..<step.at + step.len]))
                }
                return true
            }
            guard d.family.claim(unsharing) else {
                d.family.lock.unlock()
                locked = false
                d.family.waitUntilUnclaimed(unsharing)
                continue
            }
            defer { d.family.release(unsharing) }
            var fresh = try allocateSteps(&steps, for: d)
            defer { releaseUnmapped(fresh) }
            try fillSegments(d, &steps, from: buffer)
            // The data is in place; the maps may now point at it. Anything that changed the
            // chain or these entries in between means the plan is stale: plan again.
            d.family.lock.unlock()
            d.family.lock.lockExclusive()
            guard !d.removed, d.hasImage else { throw .stale("disk \(d.id) was deleted") }
            guard d.family.changeEpoch == epoch,
                  steps.allSatisfy({ d.map.entry($0.k).raw == $0.entry.raw && SharingChain.plan(d, $0.k) == $0.plan
                                     && copiesBelowClone(d, $0.k, $0.plan) == $0.copiesBelowClone }) else { continue }
            d.family.invalidate(unsharing)
            switchMaps(d, steps)
            fresh = []
            return true
        }
    }

    /// The write path for a write that grows the disk or is its first: the family lock
    /// exclusive throughout, the disk's new size logged before the data lands.
    private func writeWithExclusiveLock(_ d: Disk, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        while true {
            d.family.lock.lockExclusive()
            var locked = true
            defer { if locked { d.family.lock.unlock() } }
            guard !d.removed, d.hasImage else { throw .stale("disk \(d.id) was deleted") }
            try copyBeforeChange(of: d, from: offset, to: offset + UInt64(buffer.count))
            var (steps, mustCommitFirst, mustFillFirst) = planSteps(d, at: offset, buffer)
            // A write with the lock shared may be between filling its segments and switching
            // the maps: let it finish first.
            let unsharing = steps.filter { $0.plan.segmentsNeeded > 0 }.map(\.k)
            if d.family.isClaimed(unsharing) {
                d.family.lock.unlock()
                locked = false
                d.family.waitUntilUnclaimed(unsharing)
                continue
            }
            // Sources of partial segments about to change in place: those are completed first.
            if !mustFillFirst.isEmpty {
                d.family.lock.unlock()
                locked = false
                try completePartialSegments(readingFrom: mustFillFirst)
                continue
            }
            if mustCommitFirst { try commit() }
            var fresh = try allocateSteps(&steps, for: d)
            defer { releaseUnmapped(fresh) }
            // In-place pieces join the write-intent set now: joining may commit, and that
            // commit must not carry the new size without the data it covers.
            let inPlaceStores = Set(steps.filter { $0.mine == nil }.map { Int($0.entry.store) })
            var joined: [Int] = []
            defer { for s in joined { endInPlaceWrite(s) } }
            for s in inPlaceStores { try beginInPlaceWrite(s); joined.append(s) }
            let end = offset + UInt64(buffer.count)
            if end > d.sizeBytes || !d.hasWritten {
                stateLock.withLock {
                    state.update(d) { $0.sizeBytes = max($0.sizeBytes, end); $0.hasWritten = true }
                }
            }
            try fillSegments(d, &steps, from: buffer)
            switchMaps(d, steps)
            fresh = []
            return
        }
    }

    /// Allocates the fresh segments the steps need and records them in the steps; returns
    /// them all, for release if the write does not get to map them.
    func allocateSteps(_ steps: inout [WriteStep], for d: Disk) throws(LunError) -> [(store: Int, rseg: Int)] {
        let needed = steps.reduce(0) { $0 + $1.plan.segmentsNeeded }
        let shared = steps.filter { $0.plan.isShared }.map(\.k)
        var fresh = try allocate(needed, for: d, sharedSegments: shared)
        var next = 0
        for i in steps.indices where steps[i].plan.segmentsNeeded > 0 {
            steps[i].mine = fresh[next]; next += 1
            if steps[i].plan.segmentsNeeded == 2 { steps[i].theirs = fresh[next]; next += 1 }
        }
        // The third copies, charged as a snapclone's copies are: to the disk that gets them.
        for i in steps.indices where steps[i].copiesBelowClone {
            do {
                let below = try allocateCopy(for: d.predecessor!.predecessor!)[0]
                steps[i].below = below
                fresh.append(below)
            } catch {
                releaseUnmapped(fresh)
                throw error
            }
        }
        return fresh
    }

    /// Fresh segments that no map points at go back to the free pool.
    func releaseUnmapped(_ fresh: [(store: Int, rseg: Int)]) {
        if fresh.isEmpty { return }
        stateLock.withLock { for f in fresh { state.releaseRSEG(store: f.store, rseg: f.rseg) } }
    }

    /// Writes every step's bytes: in place, or into its fresh segment as a whole segment (the
    /// old bytes copied in, the new ones on top; the predecessor's copy first if it gets one).
    /// Caller holds the family lock, either way, and the claim of every unsharing step.
    /// A hand-off or a copy in of part of a segment from a complete one only writes the blocks
    /// it touches, and its step records them (`partialSource`, `partialBits`; section 8).
    func fillSegments(_ d: Disk, _ steps: inout [WriteStep], from buffer: UnsafeRawBufferPointer) throws(LunError) {
        let seg = segmentBytes
        var staging: UnsafeMutableRawBufferPointer?
        defer { staging?.deallocate() }
        for i in steps.indices {
            let step = steps[i]
            let piece = UnsafeRawBufferPointer(rebasing: buffer[step.at..<step.at + step.len])
            guard let mine = step.mine else {
                try writeHeldInPlace(step.entry, partial: step.partial, at: step.within, piece)
                continue
            }
            if step.within == 0 && step.len == seg && step.theirs == nil && step.below == nil {
                try storeIO.write(store: mine.store, rseg: mine.rseg, offset: 0, from: piece)
                continue
            }
            if staging == nil { staging = scratchBuffer(seg) }
            let buf = staging!
            let old = SharingChain.lookup(d, step.k).holder
            if makesPartialSegments, step.theirs == nil, step.below == nil, old.isMapped,
               state.partials.record(SharingChain.location(old)) == nil {
                switch step.plan {
                case .handOff, .copyIn:
                    steps[i].partialBits = try fillPartially(mine: mine, old: old, within: step.within, piece, staging: buf)
                    steps[i].partialSource = SharingChain.location(old)
                    continue
                default: break
                }
            }
            if old.isMapped {
                try readHeld(old, offset: 0, into: buf)
            } else {
                buf.initializeMemory(as: UInt8.self, repeating: 0)
            }
            if let theirs = step.theirs {
                try storeIO.write(store: theirs.store, rseg: theirs.rseg, offset: 0, from: UnsafeRawBufferPointer(buf))
            }
            if let below = step.below {
                try storeIO.write(store: below.store, rseg: below.rseg, offset: 0, from: UnsafeRawBufferPointer(buf))
            }
            (buf.baseAddress! + step.within).copyMemory(from: piece.baseAddress!, byteCount: step.len)
            try storeIO.write(store: mine.store, rseg: mine.rseg, offset: 0, from: UnsafeRawBufferPointer(buf))
        }
    }

    /// Overwrites part of a segment that committed maps point at, inside the write-intent set.
    func writeInPlace(_ e: LMapEntry, at within: Int, _ piece: UnsafeRawBufferPointer) throws(LunError) {
        let store = Int(e.store)
        try beginInPlaceWrite(store)
        defer { endInPlaceWrite(store) }
        try storeIO.write(store: store, rseg: e.rseg, offset: within, from: piece)
    }

    /// Points the maps at the filled segments (see `switchMapsLocked`).
    /// Caller holds the family lock exclusive.
    private func switchMaps(_ d: Disk, _ steps: [WriteStep]) {
        stateLock.withLock { switchMapsLocked(d, steps) }
    }

    /// Points the maps at the filled segments (`SharingChain.afterWrite`). Only map edits, so
    /// a caller can log more in the same record. Caller holds the family lock exclusive and
    /// `stateLock`.
    func switchMapsLocked(_ d: Disk, _ steps: [WriteStep]) {
        for step in steps {
            guard let mine = step.mine else { continue }
            state.apply(SharingChain.afterWrite(d, step.k, step.plan, mine: mine, theirs: step.theirs, below: step.below))
            if let source = step.partialSource {
                let location = UInt32(mine.store) << 3 | UInt32(mine.rseg)
                state.apply(.putPartial(location: location, source: source, valid: step.partialBits))
                let record = state.partials.record(location)!
                record.family = d.family
                record.createdAt = Self.uptimeSeconds()
            }
        }
    }

    /// Takes `count` RSEGs of the disk's level, or none (`.noSpace`). Segments a write unshares
    /// are charged first to a fully reserved snapshot of the same sharing run, if there is one;
    /// the rest must leave every reservation intact.
    func allocate(_ count: Int, for d: Disk, sharedSegments: [Int]) throws(LunError) -> [(store: Int, rseg: Int)] {
        try allocate(count, for: d) {
            var charged: [Disk] = []
            for k in sharedSegments {
                if let r = reservedDisk(sharingWith: d, segment: k, excluding: charged) { charged.append(r) }
            }
            return charged
        }
    }

    /// One RSEG for a snapclone's copy of a segment it (or its predecessor) shares: charged to
    /// the reservation of the disk that gets the copy, and to no other disk's.
    func allocateCopy(for owner: Disk) throws(LunError) -> [(store: Int, rseg: Int)] {
        try allocate(1, for: owner) { owner.reservedSegments > 0 ? [owner] : [] }
    }

    /// The common part: `charging` (called under `stateLock`) names the reserved disks that pay
    /// for one segment each; the rest must leave every reservation intact.
    private func allocate(_ count: Int, for d: Disk, charging: () -> [Disk]) throws(LunError) -> [(store: Int, rseg: Int)] {
        if count == 0 { return [] }
        return try stateLock.withLock { () throws(LunError) -> [(store: Int, rseg: Int)] in
            var charged: [Disk] = []
            if state.reservedTotal > 0 {
                charged = charging()
                let general = count - charged.count
                let free = state.freeSegments(level: d.raid) - (state.reservedTotal - charged.count)
                guard free >= general else {
                    throw .noSpace("\(general) segments needed, \(max(0, free)) free outside reservations")
                }
            }
            var got: [(store: Int, rseg: Int)] = []
            for _ in 0..<count {
                guard let r = state.allocateRSEG(level: d.raid, group: d.group, available: drives.isAvailable) else {
                    for g in got { state.releaseRSEG(store: g.store, rseg: g.rseg) }
                    throw .noSpace("the pool has no free \(d.raid) segment for \(d.name)")
                }
                got.append(r)
            }
            for r in charged {
                state.update(r) { $0.reservedSegments -= 1 }
                state.reservedTotal -= 1
            }
            return got
        }
    }

    /// A fully reserved disk, with reservation left, among the disks that read segment k
    /// with d (nearest first), or d itself.
    private func reservedDisk(sharingWith d: Disk, segment k: Int, excluding: [Disk]) -> Disk? {
        func usable(_ x: Disk) -> Bool {
            x.reservedSegments - excluding.filter({ $0 === x }).count > 0
        }
        let sharers = SharingChain.sharers(of: d, k)
        if let r = sharers.first(where: usable) { return r }
        return usable(d) && !sharers.isEmpty ? d : nil
    }
}
