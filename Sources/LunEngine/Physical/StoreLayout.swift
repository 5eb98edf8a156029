// The RAID layout of one RStore in one place: which member holds data column c and which the
// parity, which members are RAID 1 partners, where RSEG r of the store lies on each member,
// and which members a byte range of an RSEG touches. Reads, writes, both resyncs, the scrub,
// the health report and PSEG moves all ask it, so the layout is stated once.
//
// Member order is the layout: RAID 0 members 0-3 are data columns 0-3; RAID 1 column c lives
// on members c and c+4; RAID 5 puts parity on member `id % 5` and column c on member
// `(parity + 1 + c) % 5`, so parity rotates from store to store. RSEG r is one stripe row:
// column c of it is the stripe unit at `r * stripeUnit` inside the PSEG of column c's member.

/// A member of a store: the PSEG `pseg` of drive `drive`.
struct StoreMember: Equatable, Hashable {
    var drive: Int
    var pseg: Int
    var packed: UInt32 { UInt32(drive) << 24 | UInt32(pseg) }
    init(drive: Int, pseg: Int) { self.drive = drive; self.pseg = pseg }
    init(packed: UInt32) { drive = Int(packed >> 24); pseg = Int(packed & 0xFF_FFFF) }
}

/// Where one member's piece of a store lies on its drive.
struct DriveExtent: Equatable {
    var drive: Int
    var offset: UInt64
    var length: Int
}

struct StoreLayout {
    let store: Int
    let level: RAIDLevel
    let psegSizeBytes: UInt64
    /// Bytes of one data column in one RSEG (256 KiB by default).
    let stripeUnitBytes: Int
    let rsegsPerStore: Int

    @inline(__always)
    init(store: Int, level: RAIDLevel, geometry: PoolGeometry) {
        self.store = store
        self.level = level
        psegSizeBytes = geometry.psegSizeBytes
        stripeUnitBytes = Int(geometry.stripeUnitBytes)
        rsegsPerStore = geometry.rsegsPerStore
    }

    static let dataColumns = 4

    var memberCount: Int { level.memberCount }

    /// Member that holds RAID 5 parity; nil for other levels.
    var parityMember: Int? { level == .raid5 ? store % 5 : nil }

    /// Member holding data column `column` (the primary copy for RAID 1).
    @inline(__always)
    func dataMember(column: Int) -> Int {
        switch level {
        case .raid0, .raid1: return column
        case .raid5: return (store % 5 + 1 + column) % 5
        }
    }

    /// Every member holding a copy of data column `column`, primary first.
    func copies(column: Int) -> [Int] {
        level == .raid1 ? [column, column + 4] : [dataMember(column: column)]
    }

    /// The data column member `m` holds, nil for RAID 5 parity.
    func column(ofMember m: Int) -> Int? {
        switch level {
        case .raid0: return m
        case .raid1: return m % 4
        case .raid5:
            let p = store % 5
            return m == p ? nil : (m - p - 1 + 5) % 5
        }
    }

    /// The RAID 1 partner of member `m`; nil for other levels.
    func partner(ofMember m: Int) -> Int? { Self.partner(level: level, member: m) }

    /// The same for any store of `level` (partners do not depend on the store id).
    static func partner(level: RAIDLevel, member m: Int) -> Int? {
        level == .raid1 ? (m < 4 ? m + 4 : m - 4) : nil
    }

    /// Members from which member `m`'s contents can be rebuilt: its RAID 1 partner, or the
    /// other four RAID 5 members (XORed); none for RAID 0.
    func redundancySources(ofMember m: Int) -> [Int] {
        switch level {
        case .raid0: return []
        case .raid1: return [partner(ofMember: m)!]
        case .raid5: return (0..<5).filter { $0 != m }
        }
    }

    /// Groups of members that share one redundancy: a RAID 1 pair, the five RAID 5 members,
    /// the four RAID 0 members (where any loss loses data).
    var redundancyGroups: [[Int]] {
        switch level {
        case .raid1: return (0..<4).map { [$0, $0 + 4] }
        case .raid5: return [Array(0..<5)]
        case .raid0: return [Array(0..<4)]
        }
    }

    /// Whether a group with the given members out (missing, stale or failed) still has every
    /// byte: a RAID 1 pair with one copy left, a RAID 5 row with at most one member out.
    func groupReadable(outCount: Int, groupSize: Int) -> Bool {
        switch level {
        case .raid0: return outCount == 0
        case .raid1: return outCount < groupSize
        case .raid5: return outCount <= 1
        }
    }

    /// Byte offset on its drive of `within` bytes into RSEG `rseg`'s piece on member `member`.
    @inline(__always)
    func driveOffset(_ member: StoreMember, rseg: Int, within: Int = 0) -> UInt64 {
        UInt64(member.pseg) * psegSizeBytes + UInt64(rseg) * UInt64(stripeUnitBytes) + UInt64(within)
    }

    /// The same for any store of `geometry` (the place does not depend on level or store id).
    @inline(__always)
    static func driveOffset(_ member: StoreMember, rseg: Int, within: Int, _ geometry: PoolGeometry) -> UInt64 {
        UInt64(member.pseg) * geometry.psegSizeBytes + UInt64(rseg) * geometry.stripeUnitBytes + UInt64(within)
    }

    /// Where RSEG `rseg` lies on `member`: one stripe unit of its drive.
    func extent(_ member: StoreMember, rseg: Int) -> DriveExtent {
        DriveExtent(drive: member.drive, offset: driveOffset(member, rseg: rseg), length: stripeUnitBytes)
    }

    /// The whole PSEG of `member` on its drive.
    func extent(_ member: StoreMember) -> DriveExtent {
        DriveExtent(drive: member.drive, offset: UInt64(member.pseg) * psegSizeBytes, length: Int(psegSizeBytes))
    }

    /// Calls `body(column, offsetInColumn, bufferOffset, length)` for each column piece of the
    /// range `offset..<offset+count` of one RSEG.
    @inline(__always)
    func forEachColumn<E: Error>(offset: Int, count: Int, _ body: (Int, Int, Int, Int) throws(E) -> Void) throws(E) {
        try Self.forEachColumn(stripeUnitBytes: stripeUnitBytes, offset: offset, count: count, body)
    }

    /// The same for any store whose stripe unit is `stripeUnitBytes`.
    @inline(__always)
    static func forEachColumn<E: Error>(stripeUnitBytes: Int, offset: Int, count: Int,
                                        _ body: (Int, Int, Int, Int) throws(E) -> Void) throws(E) {
        var done = 0
        while done < count {
            let pos = offset + done
            let column = pos / stripeUnitBytes
            let within = pos % stripeUnitBytes
            let n = min(stripeUnitBytes - within, count - done)
            try body(column, within, done, n)
            done += n
        }
    }

    /// Members a write of `offset..<offset+count` of one RSEG touches: every copy of each column
    /// it covers, and the RAID 5 parity.
    func membersTouched(offset: Int, count: Int) -> [Int] {
        var out: [Int] = []
        forEachColumn(offset: offset, count: count) { column, _, _, _ in
            for m in copies(column: column) where !out.contains(m) { out.append(m) }
        }
        if let p = parityMember, count > 0 { out.append(p) }
        return out.sorted()
    }
}
