// Disk groups and redundant storage sets (003's LDADs and RSSs, docs/DESIGN.md section 14c):
// each drive belongs to one group, each logical disk lives in one, and within a group the
// drives are split into RSSs of 6 to 11. A new store takes its members from one RSS of its
// disk's group, and PSEG moves keep a member inside its store's group and RSS, so one failed
// drive touches the stores of one RSS only. Groups are recorded (drives in the checkpoint,
// disks in their records); RSSs are not: they are derived from the drives as they are.

/// The naming and splitting rules of disk groups.
public enum DiskGroups {
    /// The group of every drive and disk that was never put in another.
    public static let defaultGroup = "default"
    /// An RSS holds at most this many drives; a group with more is split.
    static let largestRSS = 11

    /// A group name: 1 to 32 of letters, digits, `-`, `_` and `.`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 32 && name.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D || $0 == 0x5F || $0 == 0x2E
        }
    }

    /// Splits a group's drives (ascending indexes) into RSSs: one when there are at most 11,
    /// otherwise the fewest that hold at most 11 each, contiguous by index and as even as
    /// possible (the first ones one drive larger), which makes every one 6 or more.
    static func split(_ drives: [Int]) -> [[Int]] {
        guard drives.count > largestRSS else { return drives.isEmpty ? [] : [drives] }
        let count = (drives.count + largestRSS - 1) / largestRSS
        let base = drives.count / count, larger = drives.count % count
        var sets: [[Int]] = []
        var start = 0
        for i in 0..<count {
            let size = base + (i < larger ? 1 : 0)
            sets.append(Array(drives[start..<start + size]))
            start += size
        }
        return sets
    }

    /// The RSS among `sets` that holds most of `drives` (the first such), nil when there is none.
    static func home(of drives: [Int], in sets: [[Int]]) -> [Int]? {
        sets.max { a, b in
            let ca = drives.filter(a.contains).count, cb = drives.filter(b.contains).count
            return ca < cb || (ca == cb && a.first! > b.first!)
        }
    }
}

extension PoolState {
    /// The group of drive `d`.
    func group(ofDrive d: Int) -> String { driveGroups[d] ?? DiskGroups.defaultGroup }

    /// Whether some drive of the pool (retired ones aside) is in `group`.
    func groupExists(_ group: String) -> Bool {
        (0..<psegs.psegCount.count).contains { psegs.psegCount[$0] > 0 && self.group(ofDrive: $0) == group }
    }

    /// The RSSs of `group` as the drives stand now: its drives that are members and take new
    /// stores (not retired, not being emptied), split by `DiskGroups.split`.
    func redundantStorageSets(of group: String) -> [[Int]] {
        let drives = (0..<psegs.psegCount.count).filter {
            psegs.psegCount[$0] > 0 && !psegs.closedDrives.contains($0) && self.group(ofDrive: $0) == group
        }
        return DiskGroups.split(drives)
    }

    /// The group of store `id`: that of its first member's drive (all members share it).
    func group(ofStore id: Int) -> String {
        guard let first = rsds.memberList(id).first else { return DiskGroups.defaultGroup }
        return group(ofDrive: first.drive)
    }

    /// The drives a member of store `id` may be on: the RSS of its group that holds most of its
    /// members (the first such): a store that a re-forming left across two RSSs moves only into it.
    func homeRSS(ofStore id: Int) -> Set<Int> {
        Set(DiskGroups.home(of: rsds.memberList(id).map(\.drive), in: redundantStorageSets(of: group(ofStore: id))) ?? [])
    }

    /// Members on a drive outside their store's home RSS (a re-forming left the store across
    /// two), at most one per store and `limit` in all; members of drives being emptied aside.
    func strayMembers(limit: Int = .max) -> [StoreMemberSlot] {
        var sets: [String: [[Int]]] = [:]
        var out: [StoreMemberSlot] = []
        for id in 0..<rsds.highWater where rsds.isLive(id) && out.count < limit {
            let g = group(ofStore: id)
            if sets[g] == nil { sets[g] = redundantStorageSets(of: g) }
            let drives = rsds.memberList(id).map(\.drive)
            guard let home = DiskGroups.home(of: drives, in: sets[g]!) else { continue }
            if let m = drives.firstIndex(where: { !home.contains($0) && !psegs.closedDrives.contains($0) }) {
                out.append(StoreMemberSlot(store: id, member: m))
            }
        }
        return out
    }

    /// The key of the stack of partly used stores of a level in a group.
    func partialKey(_ level: RAIDLevel, _ group: String) -> String { "\(level.rawValue)/\(group)" }
}

extension Pool {
    /// `.invalid` unless `name` is a well-formed group name.
    static func checkGroupName(_ name: String) throws(LunError) {
        guard DiskGroups.isValidName(name) else {
            throw .invalid("group name \(name.debugDescription): use 1 to 32 letters, digits, '-', '_' or '.'")
        }
    }

    /// Puts disk `id` in `group` (`user.lunfs.group`): `.invalid` for a malformed name,
    /// `.notFound` when no drive is in that group, `.busy` once the disk has been written or
    /// snapshotted (its stores are where they are).
    public func setGroup(_ id: DiskID, _ group: String) throws(LunError) {
        try Pool.checkGroupName(group)
        try changeCommitted(id) { (d) throws(LunError) in
            if d.group == group { return }
            guard state.groupExists(group) else { throw .notFound("the pool has no drive in group \(group)") }
            guard !d.hasWritten, d.map.mappedCount == 0, d.predecessor == nil, d.successor == nil else {
                throw .busy("the group of \(d.name) is fixed once it has been written or snapshotted")
            }
            state.update(d) { $0.group = group }
        }
        log("disk \(id) is in group \(group)")
    }

    /// Each group with its RSSs as they stand (drive indexes), for status and tests.
    public func redundantStorageSets() -> [String: [[Int]]] {
        stateLock.withLock {
            var groups = Set(state.driveGroups.values)
            groups.insert(DiskGroups.defaultGroup)
            var result: [String: [[Int]]] = [:]
            for g in groups { result[g] = state.redundantStorageSets(of: g) }
            return result
        }
    }

    /// The drives of each member of store `id`, and the store's group (tests, check).
    public func storeDrives(_ id: Int) -> (group: String, drives: [Int])? {
        stateLock.withLock {
            guard state.rsds.isLive(id) else { return nil }
            return (state.group(ofStore: id), state.rsds.memberList(id).map(\.drive))
        }
    }

    /// Every live store's id.
    public func liveStores() -> [Int] {
        stateLock.withLock { (0..<state.rsds.highWater).filter { state.rsds.isLive($0) } }
    }
}
