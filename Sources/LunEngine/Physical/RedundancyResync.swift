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

extension Pool {
    /// A drive that was missing while the pool was written holds old copies. Before it serves
    /// reads, each of its chunks is rewritten from the partner (RAID 1) or rebuilt from the
    /// other members (RAID 5); RAID 0 chunks on it cannot be repaired and stay as they are.
    /// Returns how many chunks it rewrote.
    func rebuildStaleDrives(_ stale: [Int]) -> Int {
        for d in stale { drives.setInService(d, false) }
        defer { for d in stale { drives.setInService(d, true) } }
        let rsds = state.rsds
        let unit = Int(geometry.stripeUnitBytes)
        let a = scratchBuffer(unit), b = scratchBuffer(unit)
        defer { a.deallocate(); b.deallocate() }
        var rebuilt = 0
        log("rebuilding drives \(stale) from redundancy: \(rsds.highWater) stores to visit")
        for id in 0..<rsds.highWater where rsds.isLive(id) {
            if id > 0 && id % 2048 == 0 { log("rebuilding drives \(stale): store \(id) of \(rsds.highWater) (\(id * 100 / rsds.highWater)%)") }
            guard let level = rsds.level(id), level != .raid0 else { continue }
            let members = rsds.memberList(id)
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
                        rebuilt += 1
                    } catch {
                        log("rebuild of store \(id) RSEG \(r) on drive \(member.drive) failed: \(error)")
                    }
                }
            }
        }
        for d in stale { try? drives.devices(d)?.sync() }
        log("rebuilt \(rebuilt) chunks on drives \(stale)")
        return rebuilt
    }
}
