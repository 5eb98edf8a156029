// Partial segments (docs/DESIGN.md section 8, "Partial segments"): a segment that a first
// small write after a snapshot filled only in the blocks it touched. Its record names the
// RSEG the other blocks still read from (its source) and holds one validity bit per 4 KiB
// block, so copy on first write moves kilobytes, not the whole segment. Records are keyed by
// the partial RSEG's location (`store << 3 | rseg`), so they follow the RSEG through hand-offs,
// splits and unlinks without any map entry changing. This file holds the records and the
// table of them; `MetadataOp.putPartial`/`dropPartial` change it, the I/O paths read it.
import Synchronization

/// One validity bit per 4 KiB block of a segment (at most 256 blocks: a 1 MiB RSEG).
struct BlockBits: Equatable, Sendable {
    var words: SIMD4<UInt64>

    static let capacity = 256
    static let none = BlockBits(words: .zero)

    /// Every block of a segment of `blocks` blocks.
    static func all(_ blocks: Int) -> BlockBits {
        precondition(blocks > 0 && blocks <= capacity)
        var b = BlockBits.none
        for i in 0..<blocks { b.insert(i) }
        return b
    }

    /// Blocks [lower, upper).
    static func range(_ r: Range<Int>) -> BlockBits {
        var b = BlockBits.none
        for i in r { b.insert(i) }
        return b
    }

    @inline(__always) func contains(_ block: Int) -> Bool { words[block >> 6] >> UInt64(block & 63) & 1 != 0 }
    @inline(__always) mutating func insert(_ block: Int) { words[block >> 6] |= 1 << UInt64(block & 63) }

    var isEmpty: Bool { words == .zero }
    var count: Int { (0..<4).reduce(0) { $0 + words[$1].nonzeroBitCount } }
    func union(_ o: BlockBits) -> BlockBits { BlockBits(words: words | o.words) }
    func intersection(_ o: BlockBits) -> BlockBits { BlockBits(words: words & o.words) }
    func subtracting(_ o: BlockBits) -> BlockBits { BlockBits(words: words & ~o.words) }
    func isSuperset(of o: BlockBits) -> Bool { o.words & ~words == .zero }

    /// Runs of consecutive set blocks, in order.
    var runs: [Range<Int>] {
        var out: [Range<Int>] = []
        var b = 0
        while b < Self.capacity {
            if !contains(b) { b += 1; continue }
            let start = b
            while b < Self.capacity && contains(b) { b += 1 }
            out.append(start..<b)
        }
        return out
    }

    /// The same blocks, widened to whole RAID 5 stripe rows: block `c * perColumn + r` of each
    /// column c for every row r any of them touches (the unit that carries parity), and to
    /// aligned groups of `rowsPerGroup` rows.
    func widenedToRows(perColumn: Int, columns: Int, rowsPerGroup: Int = 1) -> BlockBits {
        var rows = BlockBits.none
        for c in 0..<columns {
            for r in 0..<perColumn where contains(c * perColumn + r) {
                let first = r / rowsPerGroup * rowsPerGroup
                for g in first..<min(first + rowsPerGroup, perColumn) { rows.insert(g) }
            }
        }
        var out = BlockBits.none
        for c in 0..<columns { for r in 0..<perColumn where rows.contains(r) { out.insert(c * perColumn + r) } }
        return out
    }
}

/// A partial segment's record. `bits` and the table's maps are guarded by the table's mutex
/// (and changed only by ops, under the pool's `stateLock`); `writers` orders the writes that
/// set bits and the fill; `family` is the chain whose lock guards the segment (memory only).
final class PartialSegment: @unchecked Sendable {
    let location: UInt32
    let source: UInt32
    fileprivate(set) var bits: BlockBits
    var family: SharingFamily?
    /// When the segment became partial (seconds since boot; 0 for records loaded at open).
    var createdAt = 0.0
    let writers = Lock()

    init(location: UInt32, source: UInt32, bits: BlockBits) {
        self.location = location
        self.source = source
        self.bits = bits
    }
}

/// Every partial segment of the pool, by location, and how many records name each source.
/// Sources no map entry holds any more (their holder dropped them) are **orphans**: kept
/// allocated for their records and freed with the last one (`orphans` is the pool state's,
/// guarded by `stateLock`).
final class PartialSegmentTable: @unchecked Sendable {
    private let mutex = Lock()
    private var records: [UInt32: PartialSegment] = [:]
    private var sourceRefs: [UInt32: Int] = [:]
    /// Sources that no entry holds: allocated only for their records.
    var orphans = Set<UInt32>()
    /// How many records exist, readable without any lock by the I/O paths.
    let count = Atomic<Int>(0)

    var isEmpty: Bool { count.load(ordering: .acquiring) == 0 }

    func record(_ location: UInt32) -> PartialSegment? {
        if isEmpty { return nil }
        return mutex.withLock { records[location] }
    }

    /// The source and a copy of the bits of the partial segment at `location`, if it is one.
    func lookup(_ location: UInt32) -> (source: UInt32, bits: BlockBits)? {
        if isEmpty { return nil }
        return mutex.withLock { records[location].map { ($0.source, $0.bits) } }
    }

    func bits(of record: PartialSegment) -> BlockBits { mutex.withLock { record.bits } }

    /// Whether some record reads blocks from `location`.
    func isSource(_ location: UInt32) -> Bool {
        if isEmpty { return false }
        return mutex.withLock { sourceRefs[location] != nil }
    }

    /// The partial segments reading from `source`.
    func dependents(of source: UInt32) -> [UInt32] {
        mutex.withLock { records.values.filter { $0.source == source }.map(\.location).sorted() }
    }

    /// Every record, by location.
    func all() -> [PartialSegment] { mutex.withLock { records.values.sorted { $0.location < $1.location } } }

    /// Every source named, with how many records name it.
    func sources() -> [UInt32: Int] { mutex.withLock { sourceRefs } }

    /// Creates a record or sets more of its bits (`put partial`). Returns the record.
    @discardableResult
    func put(location: UInt32, source: UInt32, bits: BlockBits) throws(LunError) -> PartialSegment {
        try mutex.withLock { () throws(LunError) -> PartialSegment in
            if let r = records[location] {
                guard r.source == source, bits.isSuperset(of: r.bits) else {
                    throw .corrupt("partial segment \(location >> 3).\(location & 7): source or bits go back")
                }
                r.bits = bits
                return r
            }
            guard records[source] == nil, sourceRefs[location] == nil, location != source else {
                throw .corrupt("partial segment \(location >> 3).\(location & 7) reads from a partial segment or is a source")
            }
            let r = PartialSegment(location: location, source: source, bits: bits)
            records[location] = r
            sourceRefs[source, default: 0] += 1
            count.store(records.count, ordering: .releasing)
            return r
        }
    }

    /// Forgets a record (`drop partial`); returns its source when no record names it any more.
    func drop(_ location: UInt32) throws(LunError) -> UInt32? {
        try mutex.withLock { () throws(LunError) -> UInt32? in
            guard let r = records.removeValue(forKey: location) else {
                throw .corrupt("partial segment \(location >> 3).\(location & 7) has no record")
            }
            count.store(records.count, ordering: .releasing)
            let left = sourceRefs[r.source, default: 1] - 1
            sourceRefs[r.source] = left == 0 ? nil : left
            return left == 0 ? r.source : nil
        }
    }
}
