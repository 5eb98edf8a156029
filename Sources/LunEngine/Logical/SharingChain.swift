// The sharing chain (docs/DESIGN.md sections 7 and 8): every rule about which disk of a chain
// holds a segment, which others read it, and what a change to one disk's segment must hand
// to its neighbours. The write path, discard, resize, unlink and reservation charging ask
// this type and nothing else; it answers with lookups and with `ChainChange`s (lists of map
// edits and their effect on sharing) that the state applies. It reads maps and links, and
// changes them only in `insert` and `remove` (the split and the removal from the chain).
//
// The bits: Sp on d's entry means d's predecessor reads d's data for that segment; Ss means d
// reads its successor's. An entry with Ss clear holds the RSEG, so each RSEG has one holder.
//
// One state exists only beside a copying snapclone C (section 8b): a **shadow**, Sp set on C's
// successor for a segment that C already holds a copy of. It says "these bytes are still the
// ones C copied": when C leaves the chain, C's predecessor reads them directly instead of
// needing a copy of its own, and a snapclone turned back into a snapshot shares them again.
// Any change to either side ends the shadow.

/// Where a disk reads a segment from.
struct SegmentLookup {
    /// The entry that holds the data (unmapped: the segment reads zeros).
    let holder: LMapEntry
    /// Another disk of the chain reads the same RSEG: bytes must not land on it in place.
    let shared: Bool
}

/// What a write to one segment needs before its bytes can land, from the writer's entry.
enum SegmentPlan: Equatable {
    /// Held alone: write in place.
    case inPlace(LMapEntry)
    /// Held, but its bytes must not change in place: a truncate zeroing its kept tail (the
    /// committed maps still point at the old bytes), or a segment a shadow says is equal to a
    /// snapclone's copy. A fresh segment, old bytes copied in, new ones on top; the old
    /// segment is freed by the switch.
    case replace(LMapEntry)
    /// Unmapped: a fresh segment, zeros around the new bytes.
    case fresh
    /// Held, and the predecessor reads it: the predecessor inherits it, the writer moves.
    case handOff(LMapEntry)
    /// Read from the successor, not needed by the predecessor: the writer takes a copy.
    case copyIn
    /// Read from the successor and needed by the predecessor: both take copies (003 [0099]).
    case copyInAndOut

    /// The segment is shared with a neighbour (its copy may be charged to a reservation).
    var isShared: Bool {
        switch self {
        case .handOff, .copyIn, .copyInAndOut: return true
        case .inPlace, .replace, .fresh: return false
        }
    }

    /// Fresh segments the write needs: its own, and one for the predecessor.
    var segmentsNeeded: Int {
        switch self {
        case .inPlace: return 0
        case .replace, .fresh, .handOff, .copyIn: return 1
        case .copyInAndOut: return 2
        }
    }
}

/// Map edits in order (`setEntry` ops) and what they do to sharing: RSEGs that the committed
/// state shows more shared than the new one (a write to them in place must commit first) and
/// RSEGs that nobody maps afterwards (free once the change is durable).
struct ChainChange {
    var edits: [MetadataOp] = []
    var unshared: [UInt32] = []
    var freed: [(store: Int, rseg: Int)] = []

    fileprivate mutating func set(_ d: Disk, _ k: Int, _ e: LMapEntry) {
        edits.append(.setEntry(disk: d.id, segment: k, entry: e))
    }

    /// `held` passes from its holder to the holder's predecessor `p`, which read it (Sp).
    fileprivate mutating func handOff(_ held: LMapEntry, to p: Disk, _ k: Int) {
        set(p, k, .held(store: held.store, rseg: held.rseg, sp: p.map.entry(k).sp))
        unshared.append(SharingChain.location(held))
    }

    /// `d` (a copying snapclone) changes or gives up its copy of segment k: a shadow its
    /// successor keeps for it ends.
    fileprivate mutating func endShadow(above d: Disk, _ k: Int) {
        if SharingChain.isShadowed(d, k) { release(d.successor!, k) }
    }

    /// `s`'s Sp on segment k is a shadow and this change ends it: the snapclone below now holds
    /// its copy alone, but the committed maps still say it equals s's bytes. An in-place write
    /// to the copy must commit first, or a crash keeps those bytes under a committed shadow
    /// (and a revert would then drop them).
    fileprivate mutating func endShadow(below s: Disk, _ k: Int) {
        if SharingChain.isShadow(s, k) { unshared.append(SharingChain.location(s.predecessor!.map.entry(k))) }
    }

    /// Successor `s` of a disk that stops reading s's segment k: s's copy loses its Sp.
    fileprivate mutating func release(_ s: Disk, _ k: Int) {
        unshared.append(SharingChain.location(SharingChain.lookup(s, k).holder))
        set(s, k, s.map.entry(k).with(sp: false))
    }
}

enum SharingChain {
    /// The RSEG an entry holds, as one number (for the sets of unshared RSEGs).
    static func location(_ e: LMapEntry) -> UInt32 { e.store << 3 | UInt32(e.rseg) }

    // MARK: Lookup

    /// Where `d` reads segment k: follow successors while Ss is set (003 [0096]).
    static func lookup(_ d: Disk, _ k: Int) -> SegmentLookup {
        var x = d
        var e = d.map.entry(k)
        let shared = e.sp || e.ss
        while e.ss {
            guard let s = x.successor else { preconditionFailure("disk \(x.id) segment \(k): Ss set without a successor") }
            x = s
            e = x.map.entry(k)
        }
        return SegmentLookup(holder: e, shared: shared)
    }

    /// The other disks that read the RSEG `d` reads for segment k: predecessors while Sp
    /// is set (and no shadow), nearest first, then successors while Ss is set, nearest first.
    static func sharers(of d: Disk, _ k: Int) -> [Disk] {
        var run: [Disk] = []
        var x = d
        while x.map.entry(k).sp, !isShadow(x, k), let p = x.predecessor { run.append(p); x = p }
        x = d
        while x.map.entry(k).ss, let s = x.successor { run.append(s); x = s }
        return run
    }

    /// The copying snapclone of x's chain, if any (there is at most one).
    static func copyingSnapclone(inChainOf x: Disk) -> Disk? {
        var head = x
        while let p = head.predecessor { head = p }
        var d: Disk? = head
        while let c = d {
            if c.clone == .copying { return c }
            d = c.successor
        }
        return nil
    }

    /// d's Sp on segment k is a shadow: its predecessor, a copying snapclone, holds its own copy.
    static func isShadow(_ d: Disk, _ k: Int) -> Bool {
        guard d.map.entry(k).sp, let p = d.predecessor, p.clone == .copying else { return false }
        return p.map.entry(k).holdsData
    }

    /// d holds segment k and its successor shadows it (d is a copying snapclone that copied k).
    static func isShadowed(_ d: Disk, _ k: Int) -> Bool {
        guard d.clone == .copying, d.map.entry(k).holdsData, let s = d.successor else { return false }
        return s.map.entry(k).sp
    }

    /// What a write to segment k of `d` needs, from its entry and its neighbours'.
    static func plan(_ d: Disk, _ k: Int) -> SegmentPlan {
        let e = d.map.entry(k)
        if !e.isMapped { return .fresh }
        if e.holdsData {
            // Old bytes that only a shadow keeps (here or above) are needed by nobody once
            // this write lands, but the shadow must end before they change: redirect.
            if isShadow(d, k) || (!e.sp && isShadowed(d, k)) { return .replace(e) }
            return e.sp ? .handOff(e) : .inPlace(e)
        }
        return e.sp && !isShadow(d, k) ? .copyInAndOut : .copyIn
    }

    /// As `plan`, for bytes that must never land on a segment the committed maps point at:
    /// a segment held alone is replaced rather than written in place.
    static func redirectingPlan(_ d: Disk, _ k: Int) -> SegmentPlan {
        if case .inPlace(let held) = plan(d, k) { return .replace(held) }
        return plan(d, k)
    }

    /// The first variant's rule (003 [0104], `SnapcloneVariant.thirdCopy`): a write to segment
    /// k of `d` under `plan` whose old bytes end up kept for d's predecessor C, a copying
    /// snapclone that its own predecessor reads through (C's Sp), also gives that predecessor
    /// a copy of the old bytes, so nothing is left for the second pass. Two cases: C is the
    /// copy's destination (a hand-off or a copy out, C had not copied k yet), or C copied k
    /// already and the write ends the shadow that let C's predecessor read d later.
    static func cloneBelowNeedsCopy(_ d: Disk, _ k: Int, _ plan: SegmentPlan) -> Bool {
        guard d.map.entry(k).sp, let c = d.predecessor, c.clone == .copying, c.predecessor != nil,
              c.map.entry(k).sp else { return false }
        switch plan {
        case .handOff, .copyInAndOut: return true
        case .replace, .copyIn: return isShadow(d, k)
        case .inPlace, .fresh: return false
        }
    }

    // MARK: Changes

    /// After a write filled `mine` (and `theirs`, the predecessor's copy) for segment k of
    /// `d` under `plan`: the writer holds its new segment alone; a predecessor that read the
    /// old bytes inherits them or gets its copy; a successor no longer read loses Sp; a
    /// replaced segment is freed.
    /// `below`, under the first variant (`cloneBelowNeedsCopy`): the copy of the old bytes
    /// for the predecessor of d's predecessor, a copying snapclone that then keeps its segment
    /// with no Sp, for itself alone.
    static func afterWrite(_ d: Disk, _ k: Int, _ plan: SegmentPlan,
                           mine: (store: Int, rseg: Int), theirs: (store: Int, rseg: Int)?,
                           below: (store: Int, rseg: Int)? = nil) -> ChainChange {
        var c = ChainChange()
        switch plan {
        case .inPlace, .fresh: break
        case .replace(let e):
            c.freed.append((Int(e.store), e.rseg))
            c.endShadow(above: d, k)
            c.endShadow(below: d, k)
        case .handOff(let e):
            c.handOff(e, to: d.predecessor!, k)
            c.endShadow(above: d, k)
        case .copyIn:
            c.endShadow(below: d, k)
            c.release(d.successor!, k)
        case .copyInAndOut:
            let p = d.predecessor!, theirs = theirs!
            c.release(d.successor!, k)
            c.set(p, k, .held(store: UInt32(theirs.store), rseg: theirs.rseg, sp: p.map.entry(k).sp))
        }
        if let below {
            precondition(cloneBelowNeedsCopy(d, k, plan), "disk \(d.id) segment \(k): a copy below a clone that needs none")
            let clone = d.predecessor!, p = clone.predecessor!
            c.set(p, k, .held(store: UInt32(below.store), rseg: below.rseg, sp: p.map.entry(k).sp))
            // The clone's entry after the change above, now for the clone alone.
            let kept: LMapEntry
            switch plan {
            case .handOff(let e): kept = .held(store: e.store, rseg: e.rseg, sp: false)
            case .copyInAndOut: kept = .held(store: UInt32(theirs!.store), rseg: theirs!.rseg, sp: false)
            default: kept = clone.map.entry(k).with(sp: false)
            }
            c.set(clone, k, kept)
        }
        c.set(d, k, .held(store: UInt32(mine.store), rseg: mine.rseg, sp: false))
        return c
    }

    /// Whether unmapping segment k of `d` (which stays in the chain) needs a copy for the
    /// predecessor: it reads the segment through `d` from the successor, and nothing would
    /// lead it there afterwards.
    static func dropNeedsCopy(_ d: Disk, _ k: Int) -> Bool {
        let e = d.map.entry(k)
        return e.ss && e.sp && d.predecessor != nil && !isShadow(d, k)
    }

    /// Unmapping segment k of `d` (discard, shrink): a held segment the predecessor reads
    /// passes to it, else is freed; a successor no longer read loses Sp; a predecessor that
    /// read through `d` gets `copy` (see `dropNeedsCopy`).
    static func afterDrop(_ d: Disk, _ k: Int, copy: (store: Int, rseg: Int)?) -> ChainChange {
        var c = ChainChange()
        let e = d.map.entry(k)
        guard e.isMapped else { return c }
        c.endShadow(below: d, k)
        if e.holdsData {
            if e.sp, !isShadow(d, k), let p = d.predecessor { c.handOff(e, to: p, k) } else { c.freed.append((Int(e.store), e.rseg)) }
            c.endShadow(above: d, k)
        } else {
            c.release(d.successor!, k)
            if e.sp, !isShadow(d, k), let p = d.predecessor {
                guard let copy else { preconditionFailure("disk \(d.id) segment \(k): dropped without the predecessor's copy") }
                c.set(p, k, .held(store: UInt32(copy.store), rseg: copy.rseg, sp: p.map.entry(k).sp))
            }
        }
        c.set(d, k, .unmapped)
        return c
    }

    /// The map edits of taking `x` out of its chain (applied by `remove`): as a drop of every
    /// segment, except that a predecessor reading through x from the successor needs no copy,
    /// since it becomes the successor's neighbour and reads it directly. The same holds for a
    /// segment x copied under a shadow: its successor still has the bytes, so x's copy goes.
    /// A shadow on x itself moves up with the predecessor's view: where x read its successor,
    /// the successor's Sp now shadows the snapclone below.
    static func afterRemoval(_ x: Disk) -> ChainChange {
        var c = ChainChange()
        let p = x.predecessor, s = x.successor
        x.map.forEachMapped { k, e in
            if e.holdsData {
                if isShadowed(x, k) {
                    c.freed.append((Int(e.store), e.rseg))
                    if !e.sp { c.release(s!, k) }
                } else if e.sp, !isShadow(x, k), let p {
                    c.handOff(e, to: p, k)
                } else {
                    c.endShadow(below: x, k)
                    c.freed.append((Int(e.store), e.rseg))
                }
            } else if !e.sp, let s {
                c.release(s, k)
            }
        }
        return c
    }

    // MARK: Snapclone copies

    /// BGCOPY, first pass (003 [0103]): the copying snapclone `clone` now holds `fresh`, a copy
    /// of segment k that it read from its successor; the successor keeps its Sp as a shadow.
    static func afterCopy(_ clone: Disk, _ k: Int, fresh: (store: Int, rseg: Int)) -> ChainChange {
        var c = ChainChange()
        precondition(clone.clone == .copying && clone.map.entry(k).ss)
        c.set(clone, k, .held(store: UInt32(fresh.store), rseg: fresh.rseg, sp: clone.map.entry(k).sp))
        return c
    }

    /// Segments of a copying snapclone that its predecessor reads and no shadow keeps: the
    /// successor changed them after the copy (or they reached the clone by a hand-off). The
    /// predecessor needs its own copy before the clone can leave (the second pass, Fig. 15).
    static func predecessorNeedsCopy(_ clone: Disk, _ k: Int) -> Bool {
        let e = clone.map.entry(k)
        return e.holdsData && e.sp && !isShadowed(clone, k)
    }

    /// BGCOPY, second pass: the predecessor holds `fresh`, its own copy of the clone's segment k.
    static func afterPredecessorCopy(_ clone: Disk, _ k: Int, fresh: (store: Int, rseg: Int)) -> ChainChange {
        var c = ChainChange()
        precondition(predecessorNeedsCopy(clone, k))
        let e = clone.map.entry(k), p = clone.predecessor!
        c.set(p, k, .held(store: UInt32(fresh.store), rseg: fresh.rseg, sp: p.map.entry(k).sp))
        c.set(clone, k, e.with(sp: false))
        c.unshared.append(location(e))
        return c
    }

    /// Segments a snapclone still has to copy (both passes); zero when it can leave.
    static func segmentsToCopy(_ clone: Disk) -> Int {
        var n = 0
        clone.map.forEachMapped { k, e in if e.ss || predecessorNeedsCopy(clone, k) { n += 1 } }
        return n
    }

    /// The map edits of a finished snapclone leaving its chain (003 [0105], Fig. 14): where a
    /// shadow keeps its copy, the predecessor reads the successor directly (its Ss stays, the
    /// successor's Sp stays, the clone's Sp goes); a shadow nobody below needs is cleared.
    /// The links change with the disk records (`Pool.detachLocked`); the clone keeps its map.
    static func afterDetach(_ clone: Disk) -> ChainChange {
        var c = ChainChange()
        precondition(clone.clone == .copying && segmentsToCopy(clone) == 0)
        clone.map.forEachMapped { k, e in
            guard isShadowed(clone, k) else { return }
            if e.sp {
                c.set(clone, k, e.with(sp: false))
                c.unshared.append(location(e))
            } else {
                c.release(clone.successor!, k)
            }
        }
        return c
    }

    /// A snapclone turned back into a snapshot: every copy a shadow keeps is given up and the
    /// clone reads its successor again; what it wrote, or what changed above it, stays its own.
    static func afterRevert(_ clone: Disk) -> ChainChange {
        var c = ChainChange()
        precondition(clone.clone == .copying)
        clone.map.forEachMapped { k, e in
            guard isShadowed(clone, k) else { return }
            c.set(clone, k, .sharedWithSuccessor(sp: e.sp))
            c.freed.append((Int(e.store), e.rseg))
        }
        return c
    }

    // MARK: The chain itself

    /// The snapshot split (000 claims 1-6): `p`, new and empty, goes directly below `x`, and
    /// every segment x has becomes shared: p reads it through x (Ss), and x knows its
    /// predecessor needs it (Sp). No data moves.
    static func insert(_ p: Disk, below x: Disk) {
        precondition(p.map.mappedCount == 0 && p.predecessor == nil && p.successor == nil)
        p.predecessor = x.predecessor
        x.predecessor?.successor = p
        p.successor = x
        x.predecessor = p
        x.map.split(into: &p.map)
    }

    /// Takes `x` out of its chain after its `afterRemoval` edits were applied: its map
    /// empties and its neighbours become each other's. x keeps its family (a disk's family
    /// never changes while other threads may lock through it): a deleted disk has no image,
    /// and an independent snapclone shares the old chain's lock until the next open gives
    /// it one of its own, which costs waits, never bytes.
    static func remove(_ x: Disk, entriesPerLMap: Int) {
        let p = x.predecessor, s = x.successor
        x.map = DiskMap(entriesPerLMap: entriesPerLMap)
        p?.successor = s
        s?.predecessor = p
        x.predecessor = nil
        x.successor = nil
    }

    /// Whether `a` and `b` sit in one chain (a disk is in its own).
    static func sameChain(_ a: Disk, _ b: Disk) -> Bool {
        members(ofChainOf: a).contains { $0 === b }
    }

    /// The disks of x's chain, oldest first.
    static func members(ofChainOf x: Disk) -> [Disk] {
        var head = x
        while let p = head.predecessor { head = p }
        var order: [Disk] = []
        var d: Disk? = head
        while let c = d { order.append(c); d = c.successor }
        return order
    }

    /// Rollback's exchange: `a` and `b`, of one chain, swap everything their bytes consist of
    /// (map, place in the chain, size, written flag) and keep the rest (id, name, directory,
    /// settings). Sharing bits belong to places, so every other disk reads what it read.
    static func exchangeContents(_ a: Disk, _ b: Disk) {
        precondition(a !== b && a.family === b.family && sameChain(a, b))
        var order = members(ofChainOf: a)
        let i = order.firstIndex { $0 === a }!, j = order.firstIndex { $0 === b }!
        order.swapAt(i, j)
        for (k, d) in order.enumerated() {
            let p = k > 0 ? order[k - 1] : nil, s = k + 1 < order.count ? order[k + 1] : nil
            if d.predecessor !== p { d.predecessor = p }
            if d.successor !== s { d.successor = s }
        }
        swap(&a.map, &b.map)
        (a.sizeBytes, b.sizeBytes) = (b.sizeBytes, a.sizeBytes)
        (a.hasWritten, b.hasWritten) = (b.hasWritten, a.hasWritten)
    }
}
