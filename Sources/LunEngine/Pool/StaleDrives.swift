// The freshness rule: a drive that missed writes (stale) is only ever rebuilt, never read as
// current. At open it is known stale from the superblock's stale mask, from its identity's
// generation (current through a generation older than the last time a drive left service),
// or because it is a replacement (blank or foreign). It stays out of service until every
// chunk on it is rebuilt; a pool whose data would come only from stale drives is refused
// read-write, with the drives and disks named.

extension Pool {
    /// The present drives that missed writes, and which of them are replacements.
    static func staleDrives(resolution: DriveResolution, superblock sb: Superblock) -> (stale: [Int], notes: [String]) {
        var stale: [Int] = []
        var notes: [String] = []
        for d in 0..<resolution.devices.count where resolution.devices[d] != nil {
            if resolution.replacements.contains(d) {
                stale.append(d)
            } else if d < 64 && sb.staleDrives & (1 << UInt64(d)) != 0 {
                stale.append(d)
            } else if let identity = resolution.identities[d], identity.identityFlags & Superblock.replacementFlag != 0 {
                stale.append(d)
                notes.append("drive \(d) is a replacement not yet fully rebuilt")
            } else if let identity = resolution.identities[d], identity.currentThrough < sb.lastDegradedGeneration,
                      !missedOnlyItsSuperblockWrite(drive: d, identity: identity, superblock: sb) {
                stale.append(d)
                notes.append("drive \(d) is current through generation \(identity.currentThrough), older than generation \(sb.lastDegradedGeneration) when a drive last left service: stale")
            }
        }
        return (stale, notes)
    }

    /// True for a metadata mirror that holds the generation before `sb`'s and that `sb`'s stale
    /// mask does not name: it was in service when that checkpoint computed its mask, and the
    /// checkpoint writes the mirrors' superblocks last, one after another, so all it missed is
    /// its own superblock write, cut by a crash. It missed no data: it is not stale, even when
    /// that checkpoint was the one that recorded another drive leaving service (and so raised
    /// `lastDegradedGeneration` to its own generation). Drives past the 64 the mask can name
    /// get no such benefit of the doubt.
    static func missedOnlyItsSuperblockWrite(drive d: Int, identity: Superblock, superblock sb: Superblock) -> Bool {
        d < 64 && sb.staleDrives & (1 << UInt64(d)) == 0 && sb.mirrors.contains(UInt32(d))
            && identity.currentThrough + 1 == sb.generation
    }

    /// Replacements: slots whose drive holds nothing of the pool's yet.
    static func replacementDrives(resolution: DriveResolution) -> Set<Int> {
        var out = resolution.replacements
        for (d, identity) in resolution.identities.enumerated() where identity.map({ $0.identityFlags & Superblock.replacementFlag != 0 }) ?? false {
            out.insert(d)
        }
        return out
    }

    /// Fails when some used chunk could be read only from `stale` drives (present, out of
    /// service, holding old copies): their other copies are on missing drives. Names the
    /// drives and the disks whose data that is.
    func refuseDataOnlyOnStaleDrives(_ stale: Set<Int>) throws(LunError) {
        let rsds = state.rsds
        var locations = Set<UInt32>()
        var staleInvolved = Set<Int>(), missingInvolved = Set<Int>()
        for id in 0..<rsds.highWater where rsds.isLive(id) {
            guard let layout = rsds.layout(id, geometry) else { continue }
            let level = layout.level
            let members = rsds.memberList(id)
            for group in layout.redundancyGroups.map({ $0.map { members[$0] } }) {
                let out = group.map(\.drive).filter { !drives.isAvailable($0) }
                let outStale = out.filter(stale.contains), outMissing = out.filter { !stale.contains($0) }
                let lost: Bool
                switch level {
                case .raid1: lost = out.count == 2 && !outStale.isEmpty
                case .raid5: lost = out.count >= 2 && outMissing.count <= 1
                case .raid0: lost = !out.isEmpty && outMissing.isEmpty
                }
                guard lost else { continue }
                var any = false
                for r in 0..<geometry.rsegsPerStore where rsds.isUsed(id, rseg: r) {
                    locations.insert(UInt32(id) << 3 | UInt32(r))
                    any = true
                }
                if any { staleInvolved.formUnion(outStale); missingInvolved.formUnion(outMissing) }
            }
        }
        guard !locations.isEmpty else { return }
        var names: [String] = []
        for d in state.disks.values.sorted(by: { $0.id < $1.id }) where d.hasImage {
            var hit = false
            d.map.forEachMapped { _, e in if !hit && e.holdsData && locations.contains(SharingChain.location(e)) { hit = true } }
            if hit { names.append(diskPath(d)) }
        }
        let missing = missingInvolved.isEmpty ? "" : "; their other copies were on missing drives \(missingInvolved.sorted())"
        throw .io("drives \(staleInvolved.sorted()) missed writes while they were away (stale) and could not be rebuilt: "
                  + "\(locations.count) segments of disks \(names.isEmpty ? "(none)" : names.joined(separator: ", ")) "
                  + "would be read only from their old copies\(missing). Bring the missing drives back, or open the pool read-only "
                  + "(reads of those segments fail with EIO); refusing to open it read-write")
    }

    /// "dir/sub/disk" for log lines and messages.
    func diskPath(_ d: Disk) -> String {
        var parts = [d.name]
        var parent = d.parent
        var guardCount = 0
        while let p = parent, let x = state.disks[p], guardCount < 256 { parts.append(x.name); parent = x.parent; guardCount += 1 }
        return parts.reversed().joined(separator: "/")
    }
}
