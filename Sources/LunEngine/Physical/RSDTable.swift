// The RSDs (redundancy store descriptors, 003 [0069]): for every RStore, its RAID level and
// the (drive, PSEG) of each member, plus which of its RSEGs are in use. Fixed-capacity arrays
// allocated once at open, so readers can look members up while another thread adds a store.
// Member order is the layout, which `StoreLayout` states.

final class RSDTable: @unchecked Sendable {
    static let maxMembers = 8
    static let freeLevel: UInt8 = 0xFF
    let capacity: Int
    private let levels: UnsafeMutablePointer<UInt8>
    private let usedMasks: UnsafeMutablePointer<UInt8>
    private let members: UnsafeMutablePointer<UInt32>
    /// One past the highest store id ever defined.
    private(set) var highWater = 0
    private(set) var liveCount = 0

    init(capacity: Int) {
        self.capacity = capacity
        levels = .allocate(capacity: capacity)
        levels.initialize(repeating: Self.freeLevel, count: capacity)
        usedMasks = .allocate(capacity: capacity)
        usedMasks.initialize(repeating: 0, count: capacity)
        members = .allocate(capacity: capacity * Self.maxMembers)
        members.initialize(repeating: 0, count: capacity * Self.maxMembers)
    }

    deinit { levels.deallocate(); usedMasks.deallocate(); members.deallocate() }

    func level(_ id: Int) -> RAIDLevel? {
        id < capacity ? RAIDLevel(rawValue: levels[id]) : nil
    }

    func isLive(_ id: Int) -> Bool { id < capacity && levels[id] != Self.freeLevel }

    @inline(__always) func member(_ id: Int, _ m: Int) -> StoreMember {
        StoreMember(packed: members[id * Self.maxMembers + m])
    }

    /// The layout of a live store; nil for a free id.
    @inline(__always)
    func layout(_ id: Int, _ geometry: PoolGeometry) -> StoreLayout? {
        guard let level = level(id) else { return nil }
        return StoreLayout(store: id, level: level, geometry: geometry)
    }

    func memberList(_ id: Int) -> [StoreMember] {
        guard let level = level(id) else { return [] }
        return (0..<level.memberCount).map { member(id, $0) }
    }

    func define(_ id: Int, level: RAIDLevel, members list: [StoreMember]) {
        precondition(id < capacity && list.count == level.memberCount)
        if levels[id] == Self.freeLevel { liveCount += 1 }
        levels[id] = level.rawValue
        usedMasks[id] = 0
        for m in 0..<Self.maxMembers {
            members[id * Self.maxMembers + m] = m < list.count ? list[m].packed : 0
        }
        highWater = max(highWater, id + 1)
    }

    /// Member `m` of a live store now is `member` (a PSEG move; readers see the old or the new one).
    func setMember(_ id: Int, _ m: Int, _ member: StoreMember) {
        precondition(isLive(id) && m < (level(id)?.memberCount ?? 0))
        members[id * Self.maxMembers + m] = member.packed
    }

    func undefine(_ id: Int) {
        precondition(isLive(id) && usedMasks[id] == 0, "freeing store \(id) that is in use")
        levels[id] = Self.freeLevel
        liveCount -= 1
    }

    func usedMask(_ id: Int) -> UInt8 { usedMasks[id] }
    func isUsed(_ id: Int, rseg: Int) -> Bool { usedMasks[id] & (1 << UInt8(rseg)) != 0 }

    func markUsed(_ id: Int, rseg: Int) {
        precondition(!isUsed(id, rseg: rseg), "RSEG \(id).\(rseg) allocated twice")
        usedMasks[id] |= 1 << UInt8(rseg)
    }

    func release(_ id: Int, rseg: Int) {
        precondition(isUsed(id, rseg: rseg), "RSEG \(id).\(rseg) freed twice")
        usedMasks[id] &= ~(1 << UInt8(rseg))
    }

    /// Lowest store id not in use, or nil when the table is full.
    func firstFreeID() -> Int? {
        for id in 0..<capacity where levels[id] == Self.freeLevel { return id }
        return nil
    }

    /// Bytes of memory per live store that this table costs.
    static let bytesPerStore = 2 + maxMembers * 4
}
