// After an unclean shutdown, an in-place write may have reached one mirror copy and not the
// other, or the data and not the parity. Either version is a state the disk really had, but
// the copies must agree before a drive fails, or a degraded read could return the other one.
// So a pool that was not closed cleanly rewrites, for every used RSEG, the mirror copies from
// the primary and the RAID 5 parity from the data, as md does after a crash without a bitmap.
#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// Returns how many chunks it rewrote. Runs before the pool serves I/O.
    func resynchronizeRedundancy() -> Int {
        let rsds = state.rsds
        let unit = Int(geometry.stripeUnitBytes)
        let a = scratchBuffer(unit), b = scratchBuffer(unit)
        defer { a.deallocate(); b.deallocate() }
        var fixed = 0
        var done = 0
        let total = (0..<rsds.highWater).reduce(0) { $0 + (rsds.isLive($1) ? rsds.usedMask($1).nonzeroBitCount : 0) }
        if total > 0 { log("resync after an unclean shutdown: checking mirror and parity copies of \(total) segments") }
        for id in 0..<rsds.highWater where rsds.isLive(id) {
            guard let level = rsds.level(id), level != .raid0 else { continue }
            let members = rsds.memberList(id)
            for r in 0..<geometry.rsegsPerStore where rsds.isUsed(id, rseg: r) {
                done += 1
                if done % 4096 == 0 { log("resync after an unclean shutdown: \(done) of \(total) segments (\(done * 100 / max(total, 1))%)") }
                func at(_ m: StoreMember) -> UInt64 { UInt64(m.pseg) * geometry.psegSizeBytes + UInt64(r) * geometry.stripeUnitBytes }
                do {
                    if level == .raid1 {
                        for c in 0..<4 {
                            let primary = members[c], mirror = members[c + 4]
                            guard drives.isAvailable(primary.drive), drives.isAvailable(mirror.drive) else { continue }
                            try drives.read(primary.drive, into: a, at: at(primary))
                            try drives.read(mirror.drive, into: b, at: at(mirror))
                            if memcmp(a.baseAddress!, b.baseAddress!, unit) != 0 {
                                try drives.write(mirror.drive, UnsafeRawBufferPointer(a), at: at(mirror))
                                fixed += 1
                            }
                        }
                    } else {
                        guard members.allSatisfy({ drives.isAvailable($0.drive) }) else { continue }
                        let p = RAIDLevel.parityMember(store: id)
                        a.initializeMemory(as: UInt8.self, repeating: 0)
                        for m in 0..<5 where m != p {
                            try drives.read(members[m].drive, into: b, at: at(members[m]))
                            xorBytes(into: a.baseAddress!, from: b.baseAddress!, count: unit)
                        }
                        try drives.read(members[p].drive, into: b, at: at(members[p]))
                        if memcmp(a.baseAddress!, b.baseAddress!, unit) != 0 {
                            try drives.write(members[p].drive, UnsafeRawBufferPointer(a), at: at(members[p]))
                            fixed += 1
                        }
                    }
                } catch {
                    log("resync of store \(id) RSEG \(r) failed: \(error)")
                }
            }
        }
        return fixed
    }
}

/// What `rebuildStaleDrives` did: chunks rewritten, and per drive the chunks it could not rebuild.
struct StaleRebuild {
    var rebuilt = 0
    var failed: [Int: Int] = [:]
    /// Drives that went back into service (every chunk on them is current again).
    var restored: [Int] = []
}

extension Pool {
    /// A drive that was missing while the pool was written holds old copies. Before it serves
    /// reads, each of its chunks is rewritten from the partner (RAID 1) or rebuilt from the
    /// other members (RAID 5). A drive goes back into service only when every chunk was
    /// rebuilt; otherwise it stays out (and stale in the next superblock), so that its old
    /// copies are never read: a read that needs them fails with EIO.
    /// RAID 0 chunks have nothing to rebuild from. On a drive that comes back they are kept:
    /// a RAID 0 write needs every member, so none can have been written while it was away.
    /// On a replacement (blank or foreign drive) they are lost, and keep it out of service.
    func rebuildStaleDrives(_ stale: [Int], replacements: Set<Int> = []) -> StaleRebuild {
        for d in stale { drives.setInService(d, false) }
        let rsds = state.rsds
        let unit = Int(geometry.stripeUnitBytes)
        let a = scratchBuffer(unit), b = scratchBuffer(unit)
        defer { a.deallocate(); b.deallocate() }
        var result = StaleRebuild()
        log("rebuilding drives \(stale) from redundancy: \(rsds.highWater) stores to visit")
        for id in 0..<rsds.highWater where rsds.isLive(id) {
            if id > 0 && id % 2048 == 0 { log("rebuilding drives \(stale): store \(id) of \(rsds.highWater) (\(id * 100 / rsds.highWater)%)") }
            guard let level = rsds.level(id) else { continue }
            let members = rsds.memberList(id)
            if level == .raid0 {
                for member in members where replacements.contains(member.drive) {
                    result.failed[member.drive, default: 0] += rsds.usedMask(id).nonzeroBitCount
                }
                continue
            }
            for (m, member) in members.enumerated() where stale.contains(member.drive) {
                for r in 0..<geometry.rsegsPerStore where rsds.isUsed(id, rseg: r) {
                    func at(_ x: StoreMember) -> UInt64 { UInt64(x.pseg) * geometry.psegSizeBytes + UInt64(r) * geometry.stripeUnitBytes }
                    do {
                        if level == .raid1 {
                            let partner = members[m < 4 ? m + 4 : m - 4]
                            try drives.read(partner.drive, into: a, at: at(partner))
                        } else {
                            a.initializeMemory(as: UInt8.self, repeating: 0)
                            for (o, other) in members.enumerated() where o != m {
                                try drives.read(other.drive, into: b, at: at(other))
                                xorBytes(into: a.baseAddress!, from: b.baseAddress!, count: unit)
                            }
                        }
                        try drives.devices(member.drive)?.write(UnsafeRawBufferPointer(a), at: at(member))
                        result.rebuilt += 1
                    } catch {
                        result.failed[member.drive, default: 0] += 1
                        // The first few, then only the count at the end.
                        if result.failed.values.reduce(0, +) <= 8 {
                            log("rebuild of store \(id) RSEG \(r) on drive \(member.drive) failed: \(error)")
                        }
                    }
                }
            }
        }
        for d in stale { try? drives.devices(d)?.sync() }
        for d in stale where result.failed[d] == nil {
            drives.setInService(d, true)
            result.restored.append(d)
        }
        for (d, n) in result.failed.sorted(by: { $0.key < $1.key }) {
            log("drive \(d) stays out of service and stale: \(n) chunks on it could not be rebuilt")
        }
        log("rebuilt \(result.rebuilt) chunks on drives \(stale)")
        return result
    }
}
