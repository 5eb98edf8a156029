// After an unclean shutdown, an in-place write may have reached a block and not its checksum,
// one mirror copy and not the other, or the data and not the parity. Only stores of the
// write-intent set can hold such a write; recovery checks them block by block against their
// checksums before the pool serves I/O (Physical/RedundancyCheck.swift). A stale drive, one
// that was out of service while the pool was written, is rebuilt from redundancy instead.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

extension Pool {
    /// Settles the stores of the write-intent set. `LUNFS_RECOVER_ALL=1` checks every store
    /// instead (to measure what the set saves).
    func recoverInFlightWrites() -> ScrubReport {
        let all = ProcessInfo.processInfo.environment["LUNFS_RECOVER_ALL"] == "1"
        let stores = all ? (0..<state.rsds.highWater).filter { state.rsds.isLive($0) } : state.intent.sorted()
        if !stores.isEmpty { log("recovery after an unclean shutdown: checking \(stores.count) stores" + (all ? "" : " of the write-intent set")) }
        return checkRedundancy(stores: stores, mode: .recoverInFlight)
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
                        let checksums = storeIO.checksums
                        if level == .raid1 {
                            let partner = members[m < 4 ? m + 4 : m - 4]
                            guard try checksums.read(partner.drive, into: a, at: at(partner)).isEmpty else {
                                throw LunError.io("the mirror copy on drive \(partner.drive) fails its checksum")
                            }
                        } else {
                            a.initializeMemory(as: UInt8.self, repeating: 0)
                            for (o, other) in members.enumerated() where o != m {
                                guard try checksums.read(other.drive, into: b, at: at(other)).isEmpty else {
                                    throw LunError.io("RAID 5 member on drive \(other.drive) fails its checksum")
                                }
                                xorBytes(into: a.baseAddress!, from: b.baseAddress!, count: unit)
                            }
                        }
                        try checksums.writeOutOfService(member.drive, UnsafeRawBufferPointer(a), at: at(member))
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
