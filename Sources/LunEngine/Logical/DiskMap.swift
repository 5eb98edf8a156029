// A logical disk's map: an L2MAP of 2 GiB entries, each pointing to an LMAP of RSEG entries
// that exists only once something in its range is mapped (003 [0061]-[0065]). Dense use costs
// 4 bytes per RSEG; unwritten space costs nothing below the L2MAP.

/// One LMAP: `count` packed entries in one allocation, and how many of them are mapped.
final class LMap {
    let entries: UnsafeMutablePointer<UInt32>
    let count: Int
    var mappedCount = 0

    init(count: Int) {
        self.count = count
        entries = .allocate(capacity: count)
        entries.initialize(repeating: 0, count: count)
    }

    deinit { entries.deallocate() }
}

struct DiskMap {
    /// Entries per LMAP (2048 for 1 MiB RSEGs).
    let entriesPerLMap: Int
    private(set) var l2: [LMap?] = []
    /// Mapped entries in the whole map.
    private(set) var mappedCount = 0
    /// Mapped entries with a share bit set (kept so `info` need not walk the map).
    private(set) var sharedCount = 0

    init(entriesPerLMap: Int) { self.entriesPerLMap = entriesPerLMap }

    func entry(_ segment: Int) -> LMapEntry {
        let l2i = segment / entriesPerLMap
        guard l2i < l2.count, let lmap = l2[l2i] else { return .unmapped }
        return LMapEntry(raw: lmap.entries[segment % entriesPerLMap])
    }

    mutating func set(_ segment: Int, _ e: LMapEntry) {
        precondition(e.isWellFormed, "malformed LMAP entry \(e.raw)")
        let l2i = segment / entriesPerLMap
        if l2i >= l2.count {
            if !e.isMapped { return }
            l2.append(contentsOf: repeatElement(nil, count: l2i + 1 - l2.count))
        }
        let lmap: LMap
        if let m = l2[l2i] {
            lmap = m
        } else {
            if !e.isMapped { return }
            lmap = LMap(count: entriesPerLMap)
            l2[l2i] = lmap
        }
        let i = segment % entriesPerLMap
        let old = LMapEntry(raw: lmap.entries[i])
        lmap.entries[i] = e.raw
        let delta = (e.isMapped ? 1 : 0) - (old.isMapped ? 1 : 0)
        lmap.mappedCount += delta
        mappedCount += delta
        sharedCount += (e.sp || e.ss ? 1 : 0) - (old.sp || old.ss ? 1 : 0)
        if lmap.mappedCount == 0 { l2[l2i] = nil }
    }

    /// The snapshot split over whole LMAPs: `predecessor` (empty) gets an entry with Ss set
    /// and this map's Sp for every mapped segment, and every mapped segment here gets Sp.
    /// Branch-free over each LMAP, so its cost is a memory pass, not a lookup per segment.
    mutating func split(into predecessor: inout DiskMap) {
        precondition(predecessor.mappedCount == 0 && predecessor.entriesPerLMap == entriesPerLMap)
        let mapped = LMapEntry.mappedBit, sp = LMapEntry.spBit, ss = LMapEntry.ssBit
        predecessor.l2 = l2.map { lmap -> LMap? in
            guard let lmap else { return nil }
            let copy = LMap(count: lmap.count)
            let from = lmap.entries, to = copy.entries
            for i in 0..<lmap.count {
                let e = from[i]
                let isMapped = e & mapped
                to[i] = isMapped &* (mapped | ss) | (e & sp)
                from[i] = e | (isMapped << 1)
            }
            copy.mappedCount = lmap.mappedCount
            return copy
        }
        predecessor.mappedCount = mappedCount
        predecessor.sharedCount = mappedCount
        sharedCount = mappedCount
    }

    /// Calls `body` for every mapped entry in segment order.
    func forEachMapped(_ body: (Int, LMapEntry) throws -> Void) rethrows {
        for (l2i, lmap) in l2.enumerated() {
            guard let lmap else { continue }
            let base = l2i * entriesPerLMap
            for i in 0..<lmap.count where lmap.entries[i] != 0 {
                try body(base + i, LMapEntry(raw: lmap.entries[i]))
            }
        }
    }

    /// Mapped segments at or above `segment`, in order.
    func mappedSegments(from segment: Int) -> [Int] {
        var out: [Int] = []
        forEachMapped { k, _ in if k >= segment { out.append(k) } }
        return out
    }

    /// First mapped (or unmapped when `mapped` is false) segment at or after `from`, below `limit`.
    func firstSegment(from: Int, limit: Int, mapped: Bool) -> Int? {
        var k = from
        while k < limit {
            let l2i = k / entriesPerLMap
            let lmap = l2i < l2.count ? l2[l2i] : nil
            if lmap == nil {
                if !mapped { return k }
                k = (l2i + 1) * entriesPerLMap
                continue
            }
            if (lmap!.entries[k % entriesPerLMap] != 0) == mapped { return k }
            k += 1
        }
        return nil
    }

    /// First mapped segment at or after `from` whose entry passes `test`, skipping empty LMAPs.
    func firstSegment(from: Int, where test: (Int, LMapEntry) -> Bool) -> Int? {
        var l2i = max(0, from) / entriesPerLMap
        while l2i < l2.count {
            if let lmap = l2[l2i] {
                let base = l2i * entriesPerLMap
                for i in max(0, from - base)..<lmap.count where lmap.entries[i] != 0 {
                    if test(base + i, LMapEntry(raw: lmap.entries[i])) { return base + i }
                }
            }
            l2i += 1
        }
        return nil
    }

    /// Bytes of heap this map uses (for the memory-per-MiB figure).
    var memoryBytes: Int {
        l2.count * MemoryLayout<LMap?>.stride + l2.reduce(0) { $0 + ($1 == nil ? 0 : $1!.count * 4 + 48) }
    }
}
