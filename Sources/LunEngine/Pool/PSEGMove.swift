// Moving one member of a store to a free PSEG of another drive, while the pool serves I/O
// (003 [0046]-[0047], [0076]-[0077]: data moves by copying PSEGs and changing only the RSDs,
// so the disks' maps never notice). Leveling, `drive remove`, `drive replace` and the rebuild
// into free space are all made of such moves.
//
// The move holds each RSEG of the store whole (StripeLocks: every write of the store holds
// rows of one RSEG from its first block to its last checksum, and waits meanwhile), copies
// each used RSEG's piece of the member to the new PSEG, checked block by block (a piece whose
// drive is gone, or a block that fails its checksum, comes from the RAID 1 partner or the
// other RAID 5 members), then switches the member with one journal op (`moveMember`) and
// releases the locks: writes from then on go to the new PSEG. The move commits before it
// returns. The old PSEG is given back to the allocator only once that record is durable and
// no read that looked the old member up is still running (`MemberSwitchGate`). A crash
// before the record leaves the old member in use (the new PSEG is free again at open, since
// the allocator is rebuilt from the RSDs); after it, the new one, whose bytes the commit
// synced before writing the record.

/// One member of one store: what a PSEG move moves.
public struct StoreMemberSlot: Hashable, Sendable, CustomStringConvertible {
    public let store: Int
    public let member: Int
    public init(store: Int, member: Int) { self.store = store; self.member = member }
    public var description: String { "store \(store) member \(member)" }
}

extension Pool {
    /// Every member of a live store that lives on drive `drive`.
    public func members(onDrive drive: Int) -> [StoreMemberSlot] {
        stateLock.withLock {
            let rsds = state.rsds
            var out: [StoreMemberSlot] = []
            for id in 0..<rsds.highWater where rsds.isLive(id) {
                for (m, member) in rsds.memberList(id).enumerated() where member.drive == drive {
                    out.append(StoreMemberSlot(store: id, member: m))
                }
            }
            return out
        }
    }

    /// Drives that may take `slot`: in service, with a free PSEG, not its present drive, and
    /// keeping the distinct-drive rules of `PoolState.chooseMembers`: never a RAID 1 partner's
    /// drive or another RAID 5 member's; for RAID 0 and RAID 1 a drive that holds another
    /// member of the store only when every candidate does. Best first: the most free PSEGs.
    public func moveTargets(for slot: StoreMemberSlot) -> [Int] {
        stateLock.withLock { moveTargetsLocked(slot) }
    }

    func moveTargetsLocked(_ slot: StoreMemberSlot) -> [Int] {
        let rsds = state.rsds
        guard let layout = rsds.layout(slot.store, geometry), slot.member < layout.memberCount else { return [] }
        let members = rsds.memberList(slot.store)
        let others = Set(members.enumerated().filter { $0.offset != slot.member }.map(\.element.drive))
        let partner = layout.partner(ofMember: slot.member).map { members[$0].drive }
        // Not onto a drive being emptied to be removed (Pool+Drives.swift).
        let free = state.psegs.allocatableFreeCount
        // Inside the store's group and RSS (DiskGroups.swift).
        let rss = state.homeRSS(ofStore: slot.store)
        let usable = (0..<drives.count).filter {
            $0 != members[slot.member].drive && drives.isAvailable($0) && free[$0] > 0 && $0 != partner && rss.contains($0)
        }
        let distinct = usable.filter { !others.contains($0) }
        let candidates = layout.level == .raid5 || !distinct.isEmpty ? distinct : usable
        return candidates.sorted { state.psegs.freeCount[$0] > state.psegs.freeCount[$1] || (state.psegs.freeCount[$0] == state.psegs.freeCount[$1] && $0 < $1) }
    }

    /// Moves `slot` to a free PSEG of drive `target` (see the top of this file). Returns the
    /// bytes copied. Throws `.invalid` when the slot or the target breaks the rules (nothing
    /// changes), `.io` when a piece can be read neither from the member nor from redundancy,
    /// or the copy cannot be written (nothing changes: the new PSEG is given back).
    @discardableResult
    public func movePSEG(_ slot: StoreMemberSlot, toDrive target: Int) throws(LunError) -> UInt64 {
        let result = try movePSEGs([slot]) { [self] slot throws(LunError) -> Int in
            guard moveTargetsLocked(slot).contains(target) else {
                throw .invalid("\(slot) cannot move to drive \(target): the drive is out of service, full, or holds a member it must not share a drive with")
            }
            return target
        }
        if let failure = result.failed.first { throw failure.error }
        return result.copied
    }

    /// Moves several members, each to the drive `target` picks for it (called under
    /// `stateLock` just before its copy, so it sees the moves before it), with one commit for
    /// all: a rebuild's step, where a commit per member would cost more than the copies. A
    /// member whose move fails stays where it was and is returned in `failed`.
    func movePSEGs(_ slots: [StoreMemberSlot], target: (StoreMemberSlot) throws(LunError) -> Int)
        throws(LunError) -> (copied: UInt64, failed: [(slot: StoreMemberSlot, error: LunError)]) {
        try checkWritable()
        jobs.moveLock.lock()
        defer { jobs.moveLock.unlock() }
        var copied: UInt64 = 0
        var failed: [(slot: StoreMemberSlot, error: LunError)] = []
        var oldMembers: [StoreMember] = []
        for slot in slots {
            do {
                let moved = try copyAndSwitch(slot, target: target)
                oldMembers.append(moved.old)
                copied += moved.copied
            } catch {
                failed.append((slot, error))
            }
        }
        guard !oldMembers.isEmpty else { return (copied, failed) }
        // Make the switches durable, then give the old PSEGs back.
        do {
            try commit()
        } catch {
            // The old PSEGs stay held (a leak until the next open rebuilds the allocator from
            // the RSDs): a later commit may make the switches durable.
            log("PSEG moves: the commit failed (\(error)); \(oldMembers.count) old PSEGs stay held until the pool is opened again")
            throw error
        }
        storeIO.memberSwitch.waitForReadsBefore()
        stateLock.withLock { for old in oldMembers { state.psegs.release(drive: old.drive, pseg: old.pseg) } }
        return (copied, failed)
    }

    /// Takes a PSEG on the drive `target` picks, copies the member there under the store's
    /// stripe locks and switches it (logged, not yet committed). Caller holds `moveLock`.
    private func copyAndSwitch(_ slot: StoreMemberSlot, target: (StoreMemberSlot) throws(LunError) -> Int)
        throws(LunError) -> (old: StoreMember, copied: UInt64) {
        // 1. Take the new PSEG.
        let taken = try stateLock.withLock { () throws(LunError) -> (StoreLayout, StoreMember, StoreMember) in
            guard let layout = state.rsds.layout(slot.store, geometry), slot.member < layout.memberCount else {
                throw .invalid("\(slot) does not exist")
            }
            let drive = try target(slot)
            guard let pseg = state.psegs.take(drive: drive) else { throw .noSpace("drive \(drive) has no free PSEG") }
            return (layout, state.rsds.member(slot.store, slot.member), StoreMember(drive: drive, pseg: pseg))
        }
        let (layout, old, new) = taken
        // 2. Copy holding every RSEG of the store, then switch.
        let locks = (0..<layout.rsegsPerStore).map { storeIO.stripes.lockRSEG(slot.store, $0) }
        var copied: UInt64 = 0
        do {
            copied = try copyMember(layout, member: slot.member, from: old, to: new)
        } catch {
            for l in locks { storeIO.stripes.unlock(l) }
            stateLock.withLock { state.psegs.release(drive: new.drive, pseg: new.pseg) }
            log("move of \(slot) from drive \(old.drive) to drive \(new.drive) failed, nothing changed: \(error)")
            throw error
        }
        let switched = stateLock.withLock { () -> Bool in
            // The store cannot have changed members (moves are serialised) nor been freed (its
            // used RSEGs are held until a commit, and our stripe locks keep writers out), but
            // say so rather than assume it.
            guard state.rsds.isLive(slot.store), state.rsds.member(slot.store, slot.member) == old else {
                state.psegs.release(drive: new.drive, pseg: new.pseg)
                return false
            }
            state.apply(.moveMember(store: slot.store, member: slot.member, from: old, to: new))
            return true
        }
        for l in locks { storeIO.stripes.unlock(l) }
        guard switched else { throw .busy("\(slot) changed during its move; nothing moved") }
        return (old, copied)
    }

    /// Copies each used RSEG's piece of member `m` from `old` to `new`, checked; a piece or block
    /// that cannot be read from `old` comes from the store's redundancy. Caller holds every
    /// stripe lock of the store.
    private func copyMember(_ layout: StoreLayout, member m: Int, from old: StoreMember, to new: StoreMember) throws(LunError) -> UInt64 {
        let unit = layout.stripeUnitBytes
        let buffer = scratchBuffer(unit)
        defer { buffer.deallocate() }
        let checksums = storeIO.checksums
        let bb = ChecksumArea.blockBytes
        var copied: UInt64 = 0
        for r in 0..<layout.rsegsPerStore where state.rsds.isUsed(layout.store, rseg: r) {
            var bad: [Int]? = nil
            if drives.isAvailable(old.drive) {
                do { bad = try checksums.read(old.drive, into: buffer, at: layout.driveOffset(old, rseg: r)) } catch { drives.noteError() }
            }
            let missing = bad.map { StoreIO.runs($0) } ?? [0..<(unit / bb)]
            var unwritten = Set<Int>()
            for run in missing {
                let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[(run.lowerBound * bb)..<(run.upperBound * bb)])
                do {
                    try storeIO.readRedundantCopy(store: layout.store, level: layout.level, rseg: r, member: m,
                                                  within: run.lowerBound * bb, into: piece)
                } catch {
                    // An RSEG taken for a write that has not reached it yet (it waits for our
                    // stripe locks) holds no data: its blocks pass no checksum anywhere, and
                    // the write will go to the new PSEG. A mapped RSEG without a good copy is
                    // damage: the move stops there.
                    // So are blocks a partial segment does not hold yet (DESIGN 8): nothing reads them.
                    let invalid = invalidBlocks(store: layout.store, rseg: r), column = layout.column(ofMember: m) ?? 0
                    if isMapped(store: layout.store, rseg: r) && !run.allSatisfy({ invalid.contains(column * (unit / bb) + $0) }) {
                        throw .io("drive \(old.drive) offset \(layout.driveOffset(old, rseg: r, within: run.lowerBound * bb)), \(run.count * 4) KiB: no good copy to move (\(error))")
                    }
                    unwritten.formUnion(run)
                }
            }
            // The blocks that hold data, in runs; never-written ones keep failing their checksum.
            let keep = StoreIO.runs((0..<(unit / bb)).filter { !unwritten.contains($0) })
            for run in keep {
                try checksums.write(new.drive, UnsafeRawBufferPointer(rebasing: buffer[(run.lowerBound * bb)..<(run.upperBound * bb)]),
                                    at: layout.driveOffset(new, rseg: r, within: run.lowerBound * bb))
                copied += UInt64(run.count * bb)
            }
        }
        return copied
    }

    /// Whether some disk's map points at RSEG `rseg` of `store` (visits every map), or partial
    /// segments still read it (an orphan source, DESIGN 8).
    func isMapped(store: Int, rseg: Int) -> Bool {
        stateLock.withLock {
            if state.partials.orphans.contains(UInt32(store) << 3 | UInt32(rseg)) { return true }
            for d in state.disks.values {
                var hit = false
                d.map.forEachMapped { _, e in if !hit && e.holdsData && Int(e.store) == store && e.rseg == rseg { hit = true } }
                if hit { return true }
            }
            return false
        }
    }
}
