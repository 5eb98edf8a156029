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
        let all = getenv("LUNFS_RECOVER_ALL").map { String(cString: $0) } == "1"
        let stores = all ? (0..<state.rsds.highWater).filter { state.rsds.isLive($0) } : state.intent.sorted()
        if !stores.isEmpty { log("recovery after an unclean shutdown: checking \(stores.count) stores" + (all ? "" : " of the write-intent set")) }
        return checkRedundancy(stores: stores, mode: .recoverInFlight)
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
            guard let layout = rsds.layout(id, geometry) else { continue }
            let level = layout.level
            let members = rsds.memberList(id)
            if level == .raid0 {
                for member in members where replacements.contains(member.drive) {
                    result.failed[member.drive, default: 0] += rsds.usedMask(id).nonzeroBitCount
                }
                continue
            }
            for (m, member) in members.enumerated() where stale.contains(member.drive) {
                for r in 0..<geometry.rsegsPerStore where rsds.isUsed(id, rseg: r) {
                    func at(_ x: StoreMember) -> UInt64 { layout.driveOffset(x, rseg: r) }
                    // Blocks of a partial segment it does not hold yet may fail: nothing reads them.
                    let invalid = invalidBlocks(store: id, rseg: r), perColumn = unit / ChecksumArea.blockBytes
                    func readable(_ bad: [Int], column: Int) -> Bool { bad.allSatisfy { invalid.contains(column * perColumn + $0) } }
                    do {
                        let checksums = storeIO.checksums
                        if level == .raid1 {
                            let partner = members[layout.partner(ofMember: m)!]
                            guard readable(try checksums.read(partner.drive, into: a, at: at(partner)), column: layout.column(ofMember: m)!) else {
                                throw LunError.io("the mirror copy on drive \(partner.drive) fails its checksum")
                            }
                        } else {
                            a.initializeMemory(as: UInt8.self, repeating: 0)
                            for other in layout.redundancySources(ofMember: m).map({ members[$0] }) {
                                // RAID 5 rows are valid or not as a whole: column 0 stands for the row.
                                guard readable(try checksums.read(other.drive, into: b, at: at(other)), column: 0) else {
                                    throw LunError.io("RAID 5 member on drive \(other.drive) fails its checksum")
                                }
                                xorBytes(into: a.baseAddress!, from: b.baseAddress!, count: unit)
                            }
                        }
                        try checksums.writeOutOfService(member.drive, UnsafeRawBufferPointer(a), at: at(member))
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
