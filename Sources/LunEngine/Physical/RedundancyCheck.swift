// Checks stores block by block against their checksums and settles what it finds, trusting
// checksums, never positions: a copy that fails its checksum is rebuilt from one that holds
// (the RAID 1 partner, the other RAID 5 members), whichever of them is the primary.
//
// Two callers, two rules for a block that has no good copy left:
// - recovery after an unclean shutdown visits only the stores of the write-intent set
//   (PoolState.intent). There a failing block is one a crash cut between its data and its
//   checksum, or between two copies: an unsynced write, whose old or new bytes are both
//   allowed. It is taken as it is (checksum recomputed, mirror and parity made to agree).
// - scrub visits every used RSEG. There a failing block is damage: it is repaired from a good
//   copy when asked to, and with none it is reported (disk and offset), never made to pass.
#if canImport(Glibc)
import Glibc
#endif

/// What a scrub or a recovery found and did.
public struct ScrubReport: Sendable, CustomStringConvertible {
    public var description: String {
        "\(rsegsChecked) segments, \(blocksChecked) blocks checked: \(damagedBlocks) damaged, \(repairedBlocks) repaired, "
            + "\(unrecoverableBlocks) without a good copy, \(inconsistentBlocks) mirror or parity blocks out of step"
    }

    public var rsegsChecked = 0
    public var blocksChecked = 0
    /// Blocks that failed their checksum.
    public var damagedBlocks = 0
    /// Damaged blocks rewritten from a good copy.
    public var repairedBlocks = 0
    /// Blocks in flight at a crash, taken as they are (recovery only).
    public var acceptedBlocks = 0
    /// Blocks whose copies all pass their checksums but disagree (a mirror or parity that a
    /// crash left behind); made to agree when settling is allowed.
    public var inconsistentBlocks = 0
    /// Damaged blocks with no good copy: the data there is lost (reads fail with EIO).
    public var unrecoverableBlocks = 0
    /// One line per damaged place: drive, offset, and the disk and offset it belongs to.
    public var findings: [String] = []
    /// Stores of the write-intent set of a pool not closed cleanly, not scrubbed read-only:
    /// the next read-write open settles them.
    public var storesLeftToRecovery = 0
}

enum RedundancyCheckMode {
    /// After an unclean shutdown, on the stores of the write-intent set.
    case recoverInFlight
    /// Every used RSEG; `repair` rewrites damaged copies from good ones.
    case scrub(repair: Bool)

    var settles: Bool {
        switch self {
        case .recoverInFlight: return true
        case .scrub(let repair): return repair
        }
    }
    var acceptsInFlight: Bool { if case .recoverInFlight = self { return true } else { return false } }
}

extension Pool {
    /// Reads every used RSEG of every store and checks every block (`lunfs check --scrub`,
    /// `--repair`, and `user.lunfs.scrub` on a mounted pool, which serves I/O meanwhile: each
    /// RSEG is checked holding it whole, which excludes every write of it: StripeLocks).
    public func scrub(repair: Bool) -> ScrubReport {
        let rsds = state.rsds
        // Read-only, a pool that was not closed cleanly still holds the writes a crash cut in
        // its write-intent set: not damage, and settled by the next read-write open.
        let cut = readOnly && !metadata.superblock.isClean ? stateLock.withLock { state.intent } : []
        let stores = (0..<rsds.highWater).filter { rsds.isLive($0) && !cut.contains($0) }
        var report = checkRedundancy(stores: stores, mode: .scrub(repair: repair && !readOnly))
        report.storesLeftToRecovery = cut.count
        return report
    }

    /// Checks the used RSEGs of `stores` and settles them by `mode`.
    func checkRedundancy(stores: [Int], mode: RedundancyCheckMode) -> ScrubReport {
        var report = ScrubReport()
        var places: [DamagedPlace] = []
        let rsds = state.rsds
        let total = stores.reduce(0) { $0 + rsds.usedMask($1).nonzeroBitCount }
        let unit = Int(geometry.stripeUnitBytes)
        let buffers = (0..<RSDTable.maxMembers).map { _ in scratchBuffer(unit) }
        defer { for b in buffers { b.deallocate() } }
        // Only RSEGs some map points at: one being filled for a write (allocated, not yet
        // mapped) holds no data yet, and one freed meanwhile no longer matters.
        var mapped = Set<Int>()
        stateLock.withLock {
            for d in state.disks.values {
                d.map.forEachMapped { _, e in if e.holdsData { mapped.insert(Int(e.store) << 3 | e.rseg) } }
            }
            // Sources of partial segments that no entry holds any more are still read.
            for o in state.partials.orphans { mapped.insert(Int(o)) }
        }
        var done = 0
        for id in stores where rsds.isLive(id) {
            guard let level = rsds.level(id) else { continue }
            for r in 0..<geometry.rsegsPerStore where mapped.contains(id << 3 | r) {
                done += 1
                if done % 4096 == 0 { log("checking blocks: \(done) of \(total) segments (\(done * 100 / max(total, 1))%)") }
                storeIO.stripes.withRSEG(id, r) {
                    guard rsds.isLive(id), rsds.level(id) == level else { return }
                    var row = RowCheck(pool: self, store: id, level: level, rseg: r, buffers: buffers, mode: mode)
                    row.run(&report, &places)
                }
            }
        }
        report.findings = describe(places)
        return report
    }

    /// Names the disks (and offsets in them) that map each damaged place.
    private func describe(_ places: [DamagedPlace]) -> [String] {
        if places.isEmpty { return [] }
        let wanted = Set(places.map { $0.store << 3 | $0.rseg })
        var holders: [Int: [(Disk, Int)]] = [:]
        stateLock.withLock {
            for d in state.disks.values {
                d.map.forEachMapped { k, e in
                    guard e.holdsData else { return }
                    let key = Int(e.store) << 3 | e.rseg
                    if wanted.contains(key) { holders[key, default: []].append((d, k)) }
                }
            }
        }
        return places.map { p in
            let where_ = "drive \(p.drive) (\(drives.name(p.drive))) offset \(p.driveOffset), \(p.blocks * 4) KiB"
            let owners = holders[p.store << 3 | p.rseg] ?? []
            let disk: String
            if owners.isEmpty {
                disk = "store \(p.store) RSEG \(p.rseg), mapped by no disk"
            } else if let column = p.column {
                disk = owners.map { "disk \($0.0.name) (id \($0.0.id)) offset \(UInt64($0.1) * geometry.rsegSizeBytes + UInt64(column) * geometry.stripeUnitBytes + UInt64(p.withinColumn))" }
                    .joined(separator: ", ")
            } else {
                disk = "RAID 5 parity of " + owners.map { "disk \($0.0.name) (id \($0.0.id)) segment at \(UInt64($0.1) * geometry.rsegSizeBytes)" }.joined(separator: ", ")
            }
            return "\(where_): \(p.what); \(disk)"
        }
    }
}

/// A damaged or inconsistent place on a drive, before it is named by disk.
struct DamagedPlace {
    var store: Int, rseg: Int, drive: Int, driveOffset: UInt64, blocks: Int
    /// The data column it holds, nil for RAID 5 parity.
    var column: Int?
    var withinColumn: Int
    var what: String
}

/// One RSEG row of one store: every member's chunk read and checked, then settled block by block.
private struct RowCheck {
    let pool: Pool
    let store: Int, level: RAIDLevel, rseg: Int
    let buffers: [UnsafeMutableRawBufferPointer]
    let mode: RedundancyCheckMode
    let members: [StoreMember]
    let layout: StoreLayout
    /// Whether each member could be read, and the blocks of it that fail their checksum.
    var present: [Bool]
    var bad: [Set<Int>]
    let blocks: Int
    /// Blocks of a partial segment it does not hold yet (docs/DESIGN.md section 8): nothing
    /// reads them, so they are not checked (indexed `column * blocks + row`).
    let invalid: BlockBits
    static let bb = ChecksumArea.blockBytes

    init(pool: Pool, store: Int, level: RAIDLevel, rseg: Int, buffers: [UnsafeMutableRawBufferPointer], mode: RedundancyCheckMode) {
        self.pool = pool
        self.store = store
        self.level = level
        self.rseg = rseg
        self.buffers = buffers
        self.mode = mode
        members = pool.state.rsds.memberList(store)
        layout = StoreLayout(store: store, level: level, geometry: pool.geometry)
        present = Array(repeating: false, count: members.count)
        bad = Array(repeating: [], count: members.count)
        blocks = Int(pool.geometry.stripeUnitBytes) / Self.bb
        invalid = pool.invalidBlocks(store: store, rseg: rseg)
    }

    var checksums: BlockChecksums { pool.storeIO.checksums }

    func offset(_ m: Int, block b: Int = 0) -> UInt64 {
        layout.driveOffset(members[m], rseg: rseg, within: b * Self.bb)
    }

    func block(_ m: Int, _ b: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(rebasing: buffers[m][(b * Self.bb)..<((b + 1) * Self.bb)])
    }

    /// The data column member m holds, nil for RAID 5 parity.
    func column(_ m: Int) -> Int? { layout.column(ofMember: m) }

    mutating func run(_ report: inout ScrubReport, _ places: inout [DamagedPlace]) {
        report.rsegsChecked += 1
        for m in members.indices where pool.drives.isAvailable(members[m].drive) {
            do {
                bad[m] = Set(try checksums.read(members[m].drive, into: buffers[m], at: offset(m)))
                present[m] = true
                report.blocksChecked += blocks
            } catch {
                places.append(place(m, 0, blocks, "unreadable: \(error)"))
            }
        }
        for b in 0..<blocks {
            switch level {
            case .raid0: for m in 0..<4 where !invalid.contains(m * blocks + b) { settleAlone(m, b, &report, &places) }
            case .raid1:
                for pair in layout.redundancyGroups where !invalid.contains(column(pair[0])! * blocks + b) {
                    settleMirror(pair[0], pair[1], b, &report, &places)
                }
            case .raid5: if !invalid.contains(b) { settleParityRow(b, &report, &places) }
            }
        }
    }

    func place(_ m: Int, _ b: Int, _ count: Int, _ what: String) -> DamagedPlace {
        DamagedPlace(store: store, rseg: rseg, drive: members[m].drive, driveOffset: offset(m, block: b), blocks: count,
                     column: column(m), withinColumn: b * Self.bb, what: what)
    }

    /// Block b of every present member but `except` XORed into `target` (RAID 5: what the
    /// missing member must hold, or with `except` the parity, the parity of the data).
    func xorOfOthers(_ b: Int, except: Int, into target: UnsafeMutableRawBufferPointer) {
        target.initializeMemory(as: UInt8.self, repeating: 0)
        for m in 0..<5 where m != except { xorBytes(into: target.baseAddress!, from: block(m, b).baseAddress!, count: Self.bb) }
    }

    /// Rewrites block b of member m from the buffer (data and checksum).
    func rewrite(_ m: Int, _ b: Int) {
        do { try checksums.write(members[m].drive, UnsafeRawBufferPointer(block(m, b)), at: offset(m, block: b)) } catch {
            pool.log("could not rewrite drive \(members[m].drive) offset \(offset(m, block: b)): \(error)")
        }
    }

    /// Takes block b of member m as it is: only its checksum is written.
    func accept(_ m: Int, _ b: Int) {
        do { try checksums.writeChecksums(members[m].drive, of: UnsafeRawBufferPointer(block(m, b)), at: offset(m, block: b)) } catch {
            pool.log("could not rewrite the checksum of drive \(members[m].drive) offset \(offset(m, block: b)): \(error)")
        }
    }

    /// A block with no other copy (RAID 0, or a RAID 1 partner that is missing).
    func settleAlone(_ m: Int, _ b: Int, _ report: inout ScrubReport, _ places: inout [DamagedPlace]) {
        guard present[m], bad[m].contains(b) else { return }
        report.damagedBlocks += 1
        if mode.acceptsInFlight {
            accept(m, b)
            report.acceptedBlocks += 1
        } else {
            report.unrecoverableBlocks += 1
            places.append(place(m, b, 1, "fails its checksum and has no other copy"))
        }
    }

    func settleMirror(_ p: Int, _ q: Int, _ b: Int, _ report: inout ScrubReport, _ places: inout [DamagedPlace]) {
        guard present[p] && present[q] else {
            settleAlone(present[p] ? p : q, b, &report, &places)
            return
        }
        let pOK = !bad[p].contains(b), qOK = !bad[q].contains(b)
        switch (pOK, qOK) {
        case (true, true):
            guard memcmp(block(p, b).baseAddress!, block(q, b).baseAddress!, Self.bb) != 0 else { return }
            report.inconsistentBlocks += 1
            if mode.settles { block(q, b).copyMemory(from: UnsafeRawBufferPointer(block(p, b))); rewrite(q, b) }
            if !mode.acceptsInFlight { places.append(place(q, b, 1, "mirror copies differ, both pass their checksums" + (mode.settles ? "; made equal to the primary" : ""))) }
        case (true, false), (false, true):
            let (good, broken) = pOK ? (p, q) : (q, p)
            report.damagedBlocks += 1
            if mode.settles {
                block(broken, b).copyMemory(from: UnsafeRawBufferPointer(block(good, b)))
                rewrite(broken, b)
                report.repairedBlocks += 1
            }
            if !mode.acceptsInFlight { places.append(place(broken, b, 1, "fails its checksum" + (mode.settles ? "; repaired from the mirror copy" : "; the mirror copy is good"))) }
        case (false, false):
            report.damagedBlocks += 2
            if mode.acceptsInFlight {
                accept(p, b)
                block(q, b).copyMemory(from: UnsafeRawBufferPointer(block(p, b)))
                rewrite(q, b)
                report.acceptedBlocks += 2
            } else {
                report.unrecoverableBlocks += 1
                places.append(place(p, b, 1, "both mirror copies fail their checksums"))
            }
        }
    }

    func settleParityRow(_ b: Int, _ report: inout ScrubReport, _ places: inout [DamagedPlace]) {
        let parity = layout.parityMember!
        let absent = (0..<5).filter { !present[$0] }
        let broken = (0..<5).filter { present[$0] && bad[$0].contains(b) }
        if broken.isEmpty {
            guard absent.isEmpty else { return }
            let sum = scratchBuffer(Self.bb)
            defer { sum.deallocate() }
            sum.copyMemory(from: UnsafeRawBufferPointer(block(0, b)))
            for m in 1..<5 { xorBytes(into: sum.baseAddress!, from: block(m, b).baseAddress!, count: Self.bb) }
            guard sum.contains(where: { $0 != 0 }) else { return }
            report.inconsistentBlocks += 1
            if mode.settles {
                xorBytes(into: block(parity, b).baseAddress!, from: sum.baseAddress!, count: Self.bb)
                rewrite(parity, b)
            }
            if !mode.acceptsInFlight { places.append(place(parity, b, 1, "RAID 5 parity does not match the data, all pass their checksums" + (mode.settles ? "; parity computed again" : ""))) }
            return
        }
        report.damagedBlocks += broken.count
        // Rebuild a failing member from the others, and trust the result only if it passes
        // the checksum that member holds: then it is the version that was written, even when
        // writes cut by a crash left the row's other members at different versions.
        var remaining = broken
        if absent.isEmpty {
            let candidate = scratchBuffer(Self.bb)
            defer { candidate.deallocate() }
            var progress = true
            while progress && !remaining.isEmpty {
                progress = false
                for x in remaining {
                    xorOfOthers(b, except: x, into: candidate)
                    // Outside recovery a single failing member with four good ones is damage
                    // (perhaps of its checksum entry): the rebuild is right, as a read's is.
                    let alone = !mode.acceptsInFlight && broken.count == 1
                    guard alone || (try? checksums.verify(members[x].drive, UnsafeRawBufferPointer(candidate), at: offset(x, block: b)))?.isEmpty == true else { continue }
                    block(x, b).copyMemory(from: UnsafeRawBufferPointer(candidate))
                    if mode.settles { rewrite(x, b); report.repairedBlocks += 1 }
                    if !mode.acceptsInFlight {
                        places.append(place(x, b, 1, "fails its checksum" + (mode.settles ? "; rebuilt from the other members" : "; the other members can rebuild it")))
                    }
                    remaining.removeAll { $0 == x }
                    progress = true
                }
            }
        }
        guard !remaining.isEmpty else { return }
        if mode.acceptsInFlight && absent.isEmpty {
            for m in remaining { accept(m, b) }
            report.acceptedBlocks += remaining.count
            if absent.isEmpty {
                // The data blocks as they are now define the parity.
                xorOfOthers(b, except: parity, into: block(parity, b))
                rewrite(parity, b)
            }
        } else {
            // With a member missing, a block taken as it is would also define what the missing
            // one rebuilds as: it stays failing (EIO) rather than make up bytes.
            report.unrecoverableBlocks += remaining.count
            for m in remaining { places.append(place(m, b, 1, "fails its checksum and the other RAID 5 members cannot rebuild it")) }
            if mode.acceptsInFlight {
                pool.log("recovery: drive \(members[remaining[0]].drive) offset \(offset(remaining[0], block: b)): a write cut by the crash on a RAID 5 row with a member missing; left failing")
            }
        }
    }
}
