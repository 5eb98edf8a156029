// The pool's health as `lunfs status` shows it: each drive's state, size, use and error counts,
// and what the drives out of service put at risk. Plain values copied out under `stateLock`,
// so the daemon can answer while I/O goes on.
#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// Every drive with its state, the space stores use on it, and its errors.
    public func driveStatuses() -> [DriveStatus] {
        let pseg = geometry.psegSizeBytes, quorum = geometry.quorumPSEGs
        return stateLock.withLock {
            drives.memberSlots.map { i in
                let data = max(0, state.psegs.psegCount[i] - quorum)
                let used = max(0, data - state.psegs.freeCount[i])
                return DriveStatus(index: i, name: drives.name(i), state: driveState(i), sizeBytes: UInt64(data) * pseg,
                                   usedBytes: UInt64(used) * pseg, errors: drives.errorCounts[i].snapshot)
            }
        }
    }

    func driveState(_ i: Int) -> DriveState {
        if drives.isAvailable(i) { return .online }
        if drives.devices(i) == nil { return .missing }
        return staleDriveIndexes.contains(i) ? .stale : .failed
    }

    /// Which stores in use lost redundancy or data to drives out of service, and whose disks
    /// they hold. Visits every store and, when some are at risk, every map.
    public func redundancyRisk() -> RedundancyRisk {
        stateLock.withLock {
            var risk = RedundancyRisk()
            let rsds = state.rsds
            var degraded = Set<UInt32>(), unreadable = Set<UInt32>()
            for id in 0..<rsds.highWater where rsds.isLive(id) && rsds.usedMask(id) != 0 {
                guard let layout = rsds.layout(id, geometry) else { continue }
                let out = rsds.memberList(id).map { !drives.isAvailable($0.drive) }
                let lost = layout.redundancyGroups.contains { group in
                    !layout.groupReadable(outCount: group.filter { out[$0] }.count, groupSize: group.count)
                }
                let weakened = !lost && layout.level != .raid0 && out.contains(true)
                guard lost || weakened else { continue }
                if lost { risk.unreadableStores += 1 } else { risk.degradedStores += 1 }
                for r in 0..<geometry.rsegsPerStore where rsds.isUsed(id, rseg: r) {
                    let location = UInt32(id) << 3 | UInt32(r)
                    if lost { unreadable.insert(location) } else { degraded.insert(location) }
                }
            }
            guard risk.isDegraded else { return risk }
            for d in state.disks.values.sorted(by: { $0.id < $1.id }) {
                var weak = false, gone = false
                d.map.forEachMapped { k, e in
                    // A shared segment is the holder's: follow the chain to it.
                    let holder = e.holdsData ? e : SharingChain.lookup(d, k).holder
                    guard holder.holdsData else { return }
                    let location = SharingChain.location(holder)
                    if degraded.contains(location) { weak = true }
                    if unreadable.contains(location) { gone = true }
                }
                if weak { risk.disksWithoutRedundancy.append(d.id) }
                if gone { risk.disksWithUnreadableData.append(d.id) }
            }
            return risk
        }
    }
}

extension Pool {
    /// A drive file deleted under a running pool still reads and writes through its open
    /// descriptor, but its bytes are gone when the pool closes: such a drive is taken out of
    /// service now (and so rebuilt into free space, Pool/RebuildIntoFreeSpace.swift).
    func noticeDeletedDriveFiles() {
        for d in 0..<drives.count where drives.isAvailable(d) {
            guard let file = drives.devices(d) as? FileDevice else { continue }
            var st = stat()
            if fstat(file.fileDescriptor, &st) == 0 && st.st_nlink == 0 {
                drives.markFailed(d, .io("its file \(file.name) was deleted"))
            }
        }
    }
}
