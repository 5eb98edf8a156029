// The offline checker (in the spirit of thin_check): verifies the metadata copies' checksums,
// that every mapped segment has exactly one holder and is allocated exactly once, that share
// bits pair up along each chain, that free space adds up, and, with `scrub`, that every block
// of user data passes its checksum and every mirror copy and RAID 5 parity agrees with its data.
#if canImport(Glibc)
import Glibc
#endif

public struct CheckReport: Sendable {
    /// Inconsistencies: any one makes `lunfs check` exit non-zero.
    public var problems: [String] = []
    /// Things worth knowing that are not inconsistencies (a damaged copy that a mirror covers).
    public var notes: [String] = []
    public var disksChecked = 0
    public var segmentsChecked = 0
    public var storesChecked = 0
    public var rsegsScrubbed = 0
    /// What the scrub found, block by block.
    public var scrub: ScrubReport?
}

public struct PoolChecker {
    let pool: Pool
    public var scrub: Bool

    /// With `scrub`: rewrite damaged copies from good ones (the pool must be open read-write).
    public var repair: Bool

    public init(pool: Pool, scrub: Bool = false, repair: Bool = false) { self.pool = pool; self.scrub = scrub; self.repair = repair }

    public func run() throws(LunError) -> CheckReport {
        var report = CheckReport()
        report.notes = pool.openNotes
        checkMetadataCopies(&report)
        pool.commitLock.lock()
        defer { pool.commitLock.unlock() }
        pool.stateLock.withLock {
            checkMaps(&report)
            checkSpace(&report)
        }
        // The scrub takes the state lock itself, to name the disks of what it finds.
        if scrub { scrubStores(&report) }
        for d in pool.drives.memberSlots where !pool.drives.isAvailable(d) {
            report.problems.append("drive \(d) (\(pool.drives.name(d))) is missing or failed; redundant disks run degraded")
        }
        // What those drives took with them: RAID 0 members, or a second member of a store.
        for range in pool.unreadableRanges() {
            report.problems.append("\(range): data lost with the drives out of service (reads fail with EIO)")
        }
        noteFrozenStates(&report)
        return report
    }

    /// Every mirror's superblock and current checkpoint copy, not only the first good one.
    private func checkMetadataCopies(_ report: inout CheckReport) {
        let sb = pool.metadata.superblock
        let layout = pool.metadata.layout
        for m in sb.mirrors.map(Int.init) where pool.drives.isAvailable(m) {
            let slot = Superblock.slotOffsets[Int(sb.generation % 2)]
            if let block = try? pool.drives.readBytes(m, count: Superblock.blockSize, at: slot),
               let copy = try? Superblock.decode(block), copy.generation == sb.generation {
            } else {
                report.problems.append("drive \(m): superblock generation \(sb.generation) is missing or damaged")
            }
            let offset = layout.checkpointOffsets[Int(sb.checkpointSlot)]
            if let bytes = try? pool.drives.readBytes(m, count: Int(sb.checkpointLength), at: offset),
               CRC32C.checksum(bytes) == sb.checkpointCRC {
            } else {
                report.problems.append("drive \(m): metadata checkpoint copy fails its checksum")
            }
        }
    }

    private func checkMaps(_ report: inout CheckReport) {
        let state = pool.state
        let seg = state.geometry.rsegSizeBytes
        var holders: [UInt32: DiskID] = [:]
        for d in state.disks.values.sorted(by: { $0.id < $1.id }) {
            report.disksChecked += 1
            if let s = d.successor, s.predecessor !== d { report.problems.append("disk \(d.id): successor \(s.id) does not link back") }
            if let p = d.predecessor, p.successor !== d { report.problems.append("disk \(d.id): predecessor \(p.id) does not link back") }
            if !d.hasImage && (d.map.mappedCount > 0 || d.predecessor != nil || d.successor != nil) {
                report.problems.append("disk \(d.id): hollow node still maps segments or sits in a chain")
            }
            if d.clone == .copying && SharingChain.copyingSnapclone(inChainOf: d) !== d {
                report.problems.append("disk \(d.id): a second snapclone copying in its chain")
            }
            if let parent = d.parent, state.disks[parent] == nil {
                report.problems.append("disk \(d.id): its directory parent \(parent) does not exist")
            }
            d.map.forEachMapped { k, e in
                report.segmentsChecked += 1
                let at = "disk \(d.id) (\(d.name)) segment \(k)"
                if !e.isWellFormed { report.problems.append("\(at): malformed entry \(e.raw)") }
                if UInt64(k) * seg >= d.sizeBytes { report.problems.append("\(at): mapped past the disk's end") }
                if e.ss {
                    if let s = d.successor {
                        let se = s.map.entry(k)
                        if !se.isMapped || !se.sp { report.problems.append("\(at): Ss set but successor \(s.id) has no Sp") }
                    } else { report.problems.append("\(at): Ss set without a successor") }
                } else {
                    let loc = SharingChain.location(e)
                    if let other = holders[loc] {
                        report.problems.append("\(at): RSEG \(e.store).\(e.rseg) is also held by disk \(other)")
                    }
                    holders[loc] = d.id
                    if !state.rsds.isLive(Int(e.store)) || e.rseg >= state.geometry.rsegsPerStore {
                        report.problems.append("\(at): RSEG \(e.store).\(e.rseg) is not in a defined store")
                    } else if !state.rsds.isUsed(Int(e.store), rseg: e.rseg) {
                        report.problems.append("\(at): RSEG \(e.store).\(e.rseg) is mapped but marked free")
                    }
                }
                if e.sp {
                    if let p = d.predecessor {
                        // A shadow (the predecessor, a copying snapclone, holds its own copy) is
                        // the one Sp without an Ss below it.
                        if !p.map.entry(k).ss && !SharingChain.isShadow(d, k) {
                            report.problems.append("\(at): Sp set but predecessor \(p.id) has no Ss")
                        }
                    } else { report.problems.append("\(at): Sp set without a predecessor") }
                }
            }
        }
        checkPartialSegments(holders, &report)
        // Every RSEG marked used is held by someone, waiting for a commit to be freed, or the
        // source of a partial segment (an orphan).
        let pending = Set(state.pendingFree.map { UInt32($0.store) << 3 | UInt32($0.rseg) }).union(state.partials.orphans)
        var used = 0
        for id in 0..<state.rsds.highWater where state.rsds.isLive(id) {
            report.storesChecked += 1
            for r in 0..<state.geometry.rsegsPerStore where state.rsds.isUsed(id, rseg: r) {
                used += 1
                let loc = UInt32(id) << 3 | UInt32(r)
                if holders[loc] == nil && !pending.contains(loc) {
                    report.problems.append("RSEG \(id).\(r) is allocated but no disk maps it (leaked)")
                }
            }
        }
        if used != state.usedRSEGs {
            report.problems.append("used RSEG count is \(state.usedRSEGs), the stores say \(used)")
        }
    }

    /// Partial segments (docs/DESIGN.md section 8): each held by one disk, reading from a
    /// complete source that is held or an orphan (never both), with bits inside the segment
    /// and, on RAID 5, whole stripe rows.
    private func checkPartialSegments(_ holders: [UInt32: DiskID], _ report: inout CheckReport) {
        let state = pool.state
        let orphans = state.partials.orphans
        func name(_ l: UInt32) -> String { "RSEG \(l >> 3).\(l & 7)" }
        for p in state.partials.all() {
            let bits = state.partials.bits(of: p)
            if holders[p.location] == nil { report.problems.append("partial segment \(name(p.location)) is held by no disk") }
            if state.partials.record(p.source) != nil {
                report.problems.append("partial segment \(name(p.location)) reads from \(name(p.source)), itself partial")
            }
            if !BlockBits.all(pool.blocksPerSegment).isSuperset(of: bits) || pool.widenedUnits(store: Int(p.location >> 3), bits) != bits {
                report.problems.append("partial segment \(name(p.location)): validity bits outside the segment or not whole stripe rows")
            }
        }
        for (source, _) in state.partials.sources() {
            let held = holders[source] != nil, orphan = orphans.contains(source)
            if held == orphan {
                report.problems.append("\(name(source)), the source of partial segments, is " + (held ? "held and an orphan" : "neither held nor an orphan"))
            }
            if !state.rsds.isLive(Int(source >> 3)) || !state.rsds.isUsed(Int(source >> 3), rseg: Int(source & 7)) {
                report.problems.append("\(name(source)), the source of partial segments, is marked free")
            }
        }
        for o in orphans where state.partials.sources()[o] == nil {
            report.problems.append("\(name(o)) is kept as an orphan source but no partial segment reads it")
        }
    }

    private func checkSpace(_ report: inout CheckReport) {
        let state = pool.state
        var psegsInStores = 0
        var seen = Set<UInt64>()
        for id in 0..<state.rsds.highWater where state.rsds.isLive(id) {
            for m in state.rsds.memberList(id) {
                psegsInStores += 1
                if !seen.insert(UInt64(m.drive) << 32 | UInt64(m.pseg)).inserted {
                    report.problems.append("PSEG \(m.drive):\(m.pseg) belongs to two stores")
                }
                if !state.psegs.isUsed(drive: m.drive, pseg: m.pseg) {
                    report.problems.append("PSEG \(m.drive):\(m.pseg) is in store \(id) but marked free")
                }
            }
        }
        let total = state.psegs.psegCount.reduce(0, +)
        let quorum = state.psegs.psegCount.reduce(0) { $0 + min($1, state.geometry.quorumPSEGs) }
        if quorum + psegsInStores + state.psegs.totalFree != total {
            report.problems.append("PSEGs do not add up: \(quorum) quorum + \(psegsInStores) in stores + \(state.psegs.totalFree) free != \(total)")
        }
        let reserved = state.disks.values.reduce(0) { $0 + $1.reservedSegments }
        if reserved != state.reservedTotal {
            report.problems.append("reservations do not add up: disks hold \(reserved), the pool counts \(state.reservedTotal)")
        }
    }

    /// Reads every used RSEG from every member and checks every block against its checksum,
    /// then RAID 1 copies against each other and RAID 5 parity against the data.
    /// With `repair`, damaged copies are rewritten from good ones: what was repaired becomes a
    /// note, and only what a second pass still finds is a problem.
    private func scrubStores(_ report: inout CheckReport) {
        let scrub = pool.scrub(repair: repair)
        report.rsegsScrubbed = scrub.rsegsChecked
        report.scrub = scrub
        if scrub.storesLeftToRecovery > 0 {
            report.notes.append("\(scrub.storesLeftToRecovery) stores may hold writes cut by an unclean shutdown and were not scrubbed; the next read-write open (mount, check --repair) settles them")
        }
        guard repair && !pool.readOnly, !scrub.findings.isEmpty else {
            report.problems += scrub.findings
            return
        }
        report.notes += scrub.findings.map { "scrub: \($0)" }
        report.problems += pool.scrub(repair: false).findings
    }

    /// The maps as I/O sees them now: chains with segments in Nw or invalid, or I/O held by
    /// the blocking flag (seed 002), noted once per chain. A read-only open has none.
    private func noteFrozenStates(_ report: inout CheckReport) {
        var seen = Set<ObjectIdentifier>()
        let disks = pool.stateLock.withLock { pool.state.disks.values.filter { !$0.removed }.sorted { $0.id < $1.id } }
        for d in disks where seen.insert(ObjectIdentifier(d.family)).inserted {
            let f = d.family.frozenState()
            if f.isQuiet { continue }
            report.notes.append("chain of \(d.name): \(f.noWriteSegments.count) segments in Nw \(f.noWriteSegments), "
                                + "\(f.invalidSegments.count) invalid \(f.invalidSegments)"
                                + (f.blockedFor.map { ", I/O blocked for \($0)" } ?? ""))
        }
    }
}
