// Snapclones (docs/DESIGN.md section 8b, 003 [0100]-[0109]): a snapshot that a background copy
// (BGCOPY) turns into an independent disk. Making one, turning it back, one step of the copy
// and the quiesced last step that takes it out of its chain. The rules of which entry changes
// how live in `SharingChain`; this file moves the data and holds the locks, as a write does.

/// How far a snapclone's copy has come, in segments.
public struct CopyProgress: Sendable, Equatable {
    /// Segments the background copy has nothing more to do for: the clone holds them, and
    /// its predecessor either does not read them or can read them from the successor later.
    public var copied: Int
    /// Segments the clone maps (its own and those it still reads from its successor).
    public var total: Int
    /// The clone has left its chain.
    public var independent: Bool
}

/// A snapclone's copy in bytes, with the rate the background copy makes and the time left.
public struct CopyEstimate: Sendable, Equatable, Codable {
    public var bytesDone: UInt64, bytesLeft: UInt64
    /// Over the last seconds of the background copy in this process; nil when unknown (no
    /// copy runs here, as in a read-only open, or it has only just started).
    public var bytesPerSecond: Double?
    public var secondsLeft: Double?
}

extension Pool {
    /// The copy of snapclone `id` in bytes, and the time left at the background copy's
    /// current rate; nil for a disk that is not copying.
    public func copyEstimate(_ id: DiskID) -> CopyEstimate? {
        guard let p = copyProgress(id), !p.independent else { return nil }
        let seg = UInt64(segmentBytes), left = UInt64(p.total - p.copied)
        let rate = snapcloneCopier?.segmentsPerSecond(id).map { $0 * Double(seg) }
        return CopyEstimate(bytesDone: UInt64(p.copied) * seg, bytesLeft: left * seg, bytesPerSecond: rate,
                            secondsLeft: rate.flatMap { $0 > 0 ? Double(left * seg) / $0 : nil })
    }

    /// Makes snapshot `id` a snapclone: from now on the background copy (or `copySnapclone`)
    /// gives it its own copy of every segment it shares, and it leaves its chain when done.
    /// `.invalid` for a disk that reads no other disk, `.busy` if its chain already has a
    /// snapclone copying, `.notPermitted` for an independent disk.
    public func makeSnapclone(_ id: DiskID) throws(LunError) {
        try changeCommitted(id) { (x) throws(LunError) in
            switch x.clone {
            case .copying: return
            case .independent: throw .notPermitted("\(x.name) is already independent")
            case .none: break
            }
            guard x.hasImage else { throw .notFound("\(x.name) has no image") }
            guard x.successor != nil else { throw .invalid("\(x.name) shares nothing it could copy: it is not a snapshot in a chain") }
            if let other = SharingChain.copyingSnapclone(inChainOf: x) {
                throw .busy("\(other.name) in the same chain is still copying; one snapclone copies at a time")
            }
            state.update(x) { $0.clone = .copying }
            log("\(x.name) (id \(id)) is a snapclone: copying \(x.map.sharedCount) shared segments in the background")
        }
        snapcloneCopier?.wake()
    }

    /// Turns a copying snapclone back into a snapshot: the copy stops and every copied segment
    /// that is still equal to its successor's is shared again (and its space freed).
    public func revertSnapclone(_ id: DiskID) throws(LunError) {
        try changeCommitted(id) { (x) throws(LunError) in
            switch x.clone {
            case .none: return
            case .independent: throw .notPermitted("\(x.name) is independent: it shares nothing it could return to")
            case .copying: break
            }
            let change = SharingChain.afterRevert(x)
            state.apply(change)
            state.update(x) { $0.clone = .none }
            log("\(x.name) (id \(id)) is a snapshot again: \(change.freed.count) copied segments shared again")
        }
    }

    /// The copy's progress, nil for a disk that is not and was not a snapclone.
    public func copyProgress(_ id: DiskID) -> CopyProgress? {
        guard let d = try? liveDisk(id) else { return nil }
        return try? withShared(d) { () -> CopyProgress? in
            switch d.clone {
            case .none: return nil
            case .independent: return CopyProgress(copied: d.map.mappedCount, total: d.map.mappedCount, independent: true)
            case .copying:
                let left = SharingChain.segmentsToCopy(d)
                return CopyProgress(copied: d.map.mappedCount - left, total: d.map.mappedCount, independent: false)
            }
        }
    }

    /// Disks copying as snapclones now.
    public func copyingSnapclones() -> [DiskID] {
        stateLock.withLock { state.disks.values.filter { $0.clone == .copying && !$0.removed }.map(\.id).sorted() }
    }

    /// One step of the background copy: copies up to `segments` segments of snapclone `id`
    /// (first those it still reads from its successor, then those only it keeps for its
    /// predecessor), and once at most `quiescedCopySegments` are left, copies those with the
    /// chain's I/O held and takes the clone out of its chain. Returns the progress after.
    @discardableResult
    public func copySnapclone(_ id: DiskID, segments budget: Int) throws(LunError) -> CopyProgress {
        try checkWritable()
        let c = try liveDisk(id)
        var copied = 0
        var cursor = copyCursors.withLock { $0[id] ?? 0 }
        while copied < budget {
            guard let k = try withShared(c, { () -> Int? in
                guard c.clone == .copying else { return nil }
                return c.map.firstSegment(from: cursor) { k, e in e.ss || SharingChain.predecessorNeedsCopy(c, k) }
            }) else { break }
            if try copyOneSegment(c, k) { copied += 1 }
            cursor = k + 1
        }
        let left = try withShared(c) { () -> Int? in c.clone == .copying ? SharingChain.segmentsToCopy(c) : nil }
        if copied < budget { cursor = 0 }     // the pass reached the end: the next one starts over
        copyCursors.withLock { $0[id] = cursor }
        if let left, left <= quiescedCopySegments { try finishSnapclone(c) }
        return copyProgress(id) ?? CopyProgress(copied: 0, total: 0, independent: false)
    }

    /// Copies segment k for the clone (first pass) or for its predecessor (second pass), as a
    /// write would: the chain's lock shared and the segment claimed while the data moves, the
    /// lock exclusive for the switch. False if the maps changed meanwhile (a later pass sees it).
    private func copyOneSegment(_ c: Disk, _ k: Int) throws(LunError) -> Bool {
        c.family.lock.lockShared()
        // Released either way: the lock is taken exclusive below for the switch.
        defer { c.family.lock.unlock() }
        guard !c.removed, c.clone == .copying else { return false }
        let entry = c.map.entry(k)
        let forClone = entry.ss
        guard forClone || SharingChain.predecessorNeedsCopy(c, k) else { return false }
        guard c.family.claim([k]) else { return false }
        defer { c.family.release([k]) }
        let epoch = c.family.changeEpoch
        var fresh = try allocateCopy(for: forClone ? c : c.predecessor!)
        defer { releaseUnmapped(fresh) }
        try copySegment(from: SharingChain.lookup(c, k).holder, to: fresh[0])
        c.family.lock.unlock()
        c.family.lock.lockExclusive()
        guard !c.removed, c.clone == .copying, c.family.changeEpoch == epoch, c.map.entry(k) == entry else { return false }
        c.family.invalidate([k])
        stateLock.withLock {
            state.apply(forClone ? SharingChain.afterCopy(c, k, fresh: fresh[0]) : SharingChain.afterPredecessorCopy(c, k, fresh: fresh[0]))
        }
        fresh = []
        return true
    }

    private func copySegment(from holder: LMapEntry, to fresh: (store: Int, rseg: Int)) throws(LunError) {
        let buf = scratchBuffer(segmentBytes)
        defer { buf.deallocate() }
        try readHeld(holder, offset: 0, into: buf)
        try storeIO.write(store: fresh.store, rseg: fresh.rseg, offset: 0, from: UnsafeRawBufferPointer(buf))
    }

    /// The last step (Fig. 15d): with the chain's I/O held, copy what is left and take the
    /// clone out of its chain (`SharingChain.afterDetach`), in one commit.
    private func finishSnapclone(_ c: Disk) throws(LunError) {
        let copies = try detachLocked(c)
        try commit()
        copyCursors.withLock { $0[c.id] = nil }
        if let copies { log("\(c.name) (id \(c.id)) is independent: left its chain after the last \(copies) copies") }
    }

    /// The held part of `finishSnapclone`; the number of segments copied, nil if there was
    /// nothing to do (another caller finished it).
    private func detachLocked(_ c: Disk) throws(LunError) -> Int? {
        try c.family.blocking.raise(on: c.family, for: "the last copy pass of snapclone \(c.name)", timeoutSeconds: lastPassQuiesceSeconds)
        defer { c.family.blocking.lower(on: c.family) }
        guard !c.removed, c.clone == .copying else { return nil }
        var copies = 0
        for pass in 0..<2 {
            var work: [Int] = []
            c.map.forEachMapped { k, e in if pass == 0 ? e.ss : SharingChain.predecessorNeedsCopy(c, k) { work.append(k) } }
            for k in work {
                var fresh = try allocateCopy(for: pass == 0 ? c : c.predecessor!)
                defer { releaseUnmapped(fresh) }
                try copySegment(from: SharingChain.lookup(c, k).holder, to: fresh[0])
                stateLock.withLock {
                    state.apply(pass == 0 ? SharingChain.afterCopy(c, k, fresh: fresh[0]) : SharingChain.afterPredecessorCopy(c, k, fresh: fresh[0]))
                }
                fresh = []
                copies += 1
            }
        }
        stateLock.withLock {
            let p = c.predecessor, s = c.successor
            state.apply(SharingChain.afterDetach(c))
            // It shares nothing now: what it had set aside for copies goes back to the pool.
            state.reservedTotal -= c.reservedSegments
            state.update(c) { $0.predecessor = nil; $0.successor = nil; $0.clone = .independent; $0.reservedSegments = 0 }
            if let p { state.update(p) { $0.successor = s?.id } }
            if let s { state.update(s) { $0.predecessor = p?.id } }
        }
        return copies
    }
}
