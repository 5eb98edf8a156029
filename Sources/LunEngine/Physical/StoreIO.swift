// Reads and writes inside one RStore, by RAID level. Every RSEG is one stripe row (StoreLayout
// says where each column and the parity lie), so a whole-RSEG write on RAID 5 is a
// full-stripe write and computes parity without reading. Reads of RAID 1 and 5 survive one
// missing or failing member; RAID 0 cannot.
//
// Every block read is checked against its checksum (BlockChecksums). A block that fails is
// read again holding its rows (StripeLocks: an in-place write holds them from a block to its
// checksum, so a second failure is damage, not a race), then taken from the RAID 1 partner or
// rebuilt from the other RAID 5 members, each of them checked too; the good bytes are returned
// and written over the bad copy. With no good copy the read fails with EIO: never wrong bytes.
// Writes cover whole 4 KiB blocks: a partial first or last block is merged with what it holds.
// The old blocks a RAID 5 read-modify-write reads are checked through the new parity's
// checksum instead, one CRC pass where each would need its own (readModifyWrite).

struct StoreIO: @unchecked Sendable {
    let table: RSDTable
    let drives: DriveSet
    let checksums: BlockChecksums
    let geometry: PoolGeometry
    /// An in-place write holds the lock of its rows from the first block to the last
    /// checksum; a read that finds damage takes it before it believes what it found.
    let stripes: StripeLocks
    /// Reads count themselves here, so that a PSEG move knows when no read can still be using
    /// a member it switched away from.
    let memberSwitch = MemberSwitchGate()

    /// False on a read-only pool: reads still return the good copy but write nothing (another
    /// process may be writing the same drives).
    let repairs: Bool

    init(table: RSDTable, checksums: BlockChecksums, geometry: PoolGeometry, repairs: Bool) {
        self.repairs = repairs
        self.table = table
        self.drives = checksums.drives
        self.checksums = checksums
        self.geometry = geometry
        stripes = StripeLocks(geometry: geometry)
    }

    private var stripeUnit: Int { Int(geometry.stripeUnitBytes) }
    private static let blockBytes = ChecksumArea.blockBytes

    /// Runs `body` holding the rows of `within..<within+count` (one column's range), unless
    /// the caller holds them already.
    private func withRows<T>(_ store: Int, _ rseg: Int, within: Int, count: Int, held: Bool,
                             _ body: () throws(LunError) -> T) throws(LunError) -> T {
        if held { return try body() }
        return try stripes.withRows(store, rseg, StripeLocks.rows(within: within, count: count), body)
    }

    @inline(__always)
    func layout(_ store: Int, _ level: RAIDLevel) -> StoreLayout { StoreLayout(store: store, level: level, geometry: geometry) }

    /// Byte offset on its drive of `within` bytes into RSEG `rseg`'s piece on `member`.
    @inline(__always)
    func physicalOffset(_ member: StoreMember, rseg: Int, within: Int) -> UInt64 {
        StoreLayout.driveOffset(member, rseg: rseg, within: within, geometry)
    }

    /// Calls `body(column, offsetInColumn, bufferOffset, length)` for each column piece of a range.
    @inline(__always)
    private func forEachColumn<E: Error>(offset: Int, count: Int, _ body: (Int, Int, Int, Int) throws(E) -> Void) throws(E) {
        try StoreLayout.forEachColumn(stripeUnitBytes: stripeUnit, offset: offset, count: count, body)
    }

    /// Pieces of at least this size go side by side to their drives.
    private static let sideBySideMinimumBytes = 64 << 10

    // MARK: Read

    /// Reads `buffer.count` bytes at `offset` of RSEG `rseg`. `describe` names what is read
    /// (disk and offset) for the log line of a repair or a failure.
    func read(store: Int, rseg: Int, offset: Int, into buffer: UnsafeMutableRawBufferPointer,
              describe: () -> String = { "" }) throws(LunError) {
        precondition(offset >= 0 && offset + buffer.count <= Int(geometry.rsegSizeBytes))
        let gate = memberSwitch.enter()
        defer { memberSwitch.leave(gate) }
        guard let level = table.level(store) else { preconditionFailure("read of undefined store \(store)") }
        let bb = Self.blockBytes
        let start = offset & ~(bb - 1), end = (offset + buffer.count + bb - 1) & ~(bb - 1)
        if start == offset && end == offset + buffer.count {
            try readBlocks(store, level, rseg, offset, buffer, lockHeld: false, describe)
            return
        }
        let whole = scratchBuffer(end - start)
        defer { whole.deallocate() }
        try readBlocks(store, level, rseg, start, whole, lockHeld: false, describe)
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: whole[(offset - start)..<(offset - start + buffer.count)]))
    }

    /// Reads whole blocks of a range. The pieces' fast paths may run side by side on the
    /// transfer pool; anything that needs the rows' lock runs after, on the calling thread,
    /// so that no pool thread ever waits for a lock a writer holds while it waits for the pool.
    private func readBlocks(_ store: Int, _ level: RAIDLevel, _ rseg: Int, _ offset: Int, _ buffer: UnsafeMutableRawBufferPointer,
                            lockHeld: Bool, _ describe: () -> String) throws(LunError) {
        guard let pool = drives.transfers, buffer.count >= 2 * Self.sideBySideMinimumBytes else {
            try forEachColumn(offset: offset, count: buffer.count) { column, within, at, n throws(LunError) in
                try readColumn(store: store, level: level, rseg: rseg, column: column, within: within,
                               into: UnsafeMutableRawBufferPointer(rebasing: buffer[at..<at + n]), lockHeld: lockHeld, describe)
            }
            return
        }
        var pieces: [(column: Int, within: Int, at: Int, n: Int)] = []
        forEachColumn(offset: offset, count: buffer.count) { pieces.append(($0, $1, $2, $3)) }
        let good = UnsafeMutableBufferPointer<Bool>.allocate(capacity: pieces.count)
        good.initialize(repeating: false)
        defer { good.deallocate() }
        pool.run(pieces.count) { i in
            let p = pieces[i]
            good[i] = readPrimary(store: store, level: level, rseg: rseg, column: p.column, within: p.within,
                                  into: UnsafeMutableRawBufferPointer(rebasing: buffer[p.at..<p.at + p.n]))
        }
        for (i, p) in pieces.enumerated() where !good[i] {
            try withRows(store, rseg, within: p.within, count: p.n, held: lockHeld) { () throws(LunError) in
                try recoverColumn(store: store, level: level, rseg: rseg, column: p.column, within: p.within,
                                  into: UnsafeMutableRawBufferPointer(rebasing: buffer[p.at..<p.at + p.n]), describe)
            }
        }
    }

    /// The fast path: the primary copy read and checked; false when anything failed.
    private func readPrimary(store: Int, level: RAIDLevel, rseg: Int, column: Int, within: Int,
                             into piece: UnsafeMutableRawBufferPointer) -> Bool {
        let primary = table.member(store, layout(store, level).dataMember(column: column))
        guard drives.isAvailable(primary.drive) else { return false }
        do {
            return try checksums.read(primary.drive, into: piece, at: physicalOffset(primary, rseg: rseg, within: within)).isEmpty
        } catch {
            drives.noteError()
            return false
        }
    }

    /// One data column's blocks, checked; the slow path when the primary copy fails.
    private func readColumn(store: Int, level: RAIDLevel, rseg: Int, column: Int, within: Int,
                            into piece: UnsafeMutableRawBufferPointer, lockHeld: Bool, _ describe: () -> String) throws(LunError) {
        if readPrimary(store: store, level: level, rseg: rseg, column: column, within: within, into: piece) { return }
        try withRows(store, rseg, within: within, count: piece.count, held: lockHeld) { () throws(LunError) in
            try recoverColumn(store: store, level: level, rseg: rseg, column: column, within: within, into: piece, describe)
        }
    }

    /// Caller holds the piece's rows. Reads the primary copy again; blocks that still fail (or
    /// all of them, when the drive cannot be read) come from redundancy and are rewritten.
    private func recoverColumn(store: Int, level: RAIDLevel, rseg: Int, column: Int, within: Int,
                               into piece: UnsafeMutableRawBufferPointer, _ describe: () -> String) throws(LunError) {
        let bb = Self.blockBytes
        let memberIndex = layout(store, level).dataMember(column: column)
        let primary = table.member(store, memberIndex)
        let at = physicalOffset(primary, rseg: rseg, within: within)
        var bad = Array(0..<(piece.count / bb))
        var readable = false
        if drives.isAvailable(primary.drive) {
            do {
                bad = try checksums.read(primary.drive, into: piece, at: at)
                readable = true
            } catch {
                drives.noteError()
            }
        }
        if bad.isEmpty { return }
        for run in Self.runs(bad) {
            let runPiece = UnsafeMutableRawBufferPointer(rebasing: piece[(run.lowerBound * bb)..<(run.upperBound * bb)])
            let runAt = at + UInt64(run.lowerBound * bb)
            let place = "drive \(primary.drive) (\(drives.name(primary.drive))) offset \(runAt), \(run.count * 4) KiB"
            do {
                try readRedundantCopy(store: store, level: level, rseg: rseg, member: memberIndex,
                                      within: within + run.lowerBound * bb, into: runPiece)
            } catch {
                guard readable else { throw error }
                drives.log("read of \(describe()) failed: \(place) fails its checksum and no good copy is left (\(error))")
                throw .io("\(place) fails its checksum and no good copy is left")
            }
            guard readable && repairs else { continue }
            do {
                try checksums.write(primary.drive, UnsafeRawBufferPointer(runPiece), at: runAt)
                checksums.repairs.add(run.count, ordering: .relaxed)
                drives.errorCounts[primary.drive].repairs.add(run.count, ordering: .relaxed)
                drives.log("repaired \(describe()): \(place) failed its checksum; rewritten from "
                           + (level == .raid1 ? "the mirror copy" : "the other RAID 5 members"))
            } catch {
                drives.log("could not repair \(place): \(error)")
            }
        }
    }

    /// Fills `piece` (blocks at `within` of data member `member`) from the store's redundancy,
    /// checking every block it reads.
    func readRedundantCopy(store: Int, level: RAIDLevel, rseg: Int, member: Int, within: Int,
                                   into piece: UnsafeMutableRawBufferPointer) throws(LunError) {
        let sources = layout(store, level).redundancySources(ofMember: member)
        switch level {
        case .raid0:
            throw .io("RAID 0 keeps one copy")
        case .raid1:
            let partner = table.member(store, sources[0])
            let bad = try checksums.read(partner.drive, into: piece, at: physicalOffset(partner, rseg: rseg, within: within))
            if !bad.isEmpty {
                throw .io("the mirror copy on drive \(partner.drive) fails its checksum too")
            }
        case .raid5:
            piece.initializeMemory(as: UInt8.self, repeating: 0)
            let temp = scratchBuffer(piece.count)
            defer { temp.deallocate() }
            for other in sources {
                let o = table.member(store, other)
                let bad = try checksums.read(o.drive, into: temp, at: physicalOffset(o, rseg: rseg, within: within))
                if !bad.isEmpty {
                    throw .io("RAID 5 member on drive \(o.drive) fails its checksum too")
                }
                xorBytes(into: piece.baseAddress!, from: temp.baseAddress!, count: piece.count)
            }
        }
    }

    /// Sorted block numbers grouped into runs of consecutive ones.
    static func runs(_ blocks: [Int]) -> [Range<Int>] {
        var result: [Range<Int>] = []
        for b in blocks {
            if let last = result.last, last.upperBound == b { result[result.count - 1] = last.lowerBound..<(b + 1) } else { result.append(b..<(b + 1)) }
        }
        return result
    }

    // MARK: Write

    func write(store: Int, rseg: Int, offset: Int, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        precondition(offset >= 0 && offset + buffer.count <= Int(geometry.rsegSizeBytes))
        guard let level = table.level(store) else { preconditionFailure("write to undefined store \(store)") }
        if buffer.isEmpty { return }
        let bb = Self.blockBytes
        let start = offset & ~(bb - 1), end = (offset + buffer.count + bb - 1) & ~(bb - 1)
        let held = stripes.lock(store, rseg, rows: rows(offset: start, count: end - start))
        defer { stripes.unlock(held) }
        if start == offset && end == offset + buffer.count {
            try writeBlocks(store, level, rseg, offset, buffer)
            return
        }
        // Checksums cover whole blocks: merge a partial first and last block with what they hold.
        let whole = scratchBuffer(end - start)
        defer { whole.deallocate() }
        if offset != start {
            try readBlocks(store, level, rseg, start, UnsafeMutableRawBufferPointer(rebasing: whole[0..<bb]), lockHeld: true, { "" })
        }
        if offset + buffer.count != end && (end - bb > start || offset == start) {
            try readBlocks(store, level, rseg, end - bb, UnsafeMutableRawBufferPointer(rebasing: whole[(end - start - bb)...]),
                           lockHeld: true, { "" })
        }
        (whole.baseAddress! + (offset - start)).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count)
        try writeBlocks(store, level, rseg, start, UnsafeRawBufferPointer(whole))
    }

    /// The rows a range of the RSEG touches, in all its columns: from the lowest to the highest
    /// (a range across a column boundary touches the first column's last rows and the next
    /// one's first, and so locks them all).
    private func rows(offset: Int, count: Int) -> ClosedRange<Int> {
        var low = Int.max, high = 0
        forEachColumn(offset: offset, count: count) { _, within, _, n in
            let r = StripeLocks.rows(within: within, count: n)
            low = min(low, r.lowerBound)
            high = max(high, r.upperBound)
        }
        return low...high
    }

    /// Caller holds the range's rows; the range covers whole blocks.
    private func writeBlocks(_ store: Int, _ level: RAIDLevel, _ rseg: Int, _ offset: Int, _ buffer: UnsafeRawBufferPointer) throws(LunError) {
        switch level {
        case .raid0, .raid1:
            try writeColumns(store, level, rseg, offset, buffer)
        case .raid5:
            if offset == 0 && buffer.count == Int(geometry.rsegSizeBytes) {
                try writeFullStripe(store: store, rseg: rseg, buffer)
            } else {
                try forEachColumn(offset: offset, count: buffer.count) { column, within, at, n throws(LunError) in
                    try readModifyWrite(store: store, rseg: rseg, column: column, within: within,
                                        UnsafeRawBufferPointer(rebasing: buffer[at..<at + n]))
                }
            }
        }
    }

    /// RAID 0 and 1: each column piece to its member, or to both members of its mirror; the
    /// data of every piece first, together (DriveSet.writeAll), then their checksums. A RAID 1
    /// piece is written while one copy lands. The CRC runs over the bytes once, while the data
    /// is in flight where the ring takes it; the second copy's checksums are derived (BlockSums).
    private func writeColumns(_ store: Int, _ level: RAIDLevel, _ rseg: Int, _ offset: Int, _ buffer: UnsafeRawBufferPointer) throws(LunError) {
        var runs: [DriveWrite] = []
        var pieceOfRun: [Int] = []
        var pieces = 0
        var unwritable: LunError?
        forEachColumn(offset: offset, count: buffer.count) { column, within, at, n in
            let piece = UnsafeRawBufferPointer(rebasing: buffer[at..<at + n])
            let before = runs.count
            for member in layout(store, level).copies(column: column) {
                let m = table.member(store, member)
                // RAID 0 has no other copy: a missing drive fails the write in DriveSet.
                guard level == .raid0 || drives.isAvailable(m.drive) else { continue }
                runs.append(DriveWrite(drive: m.drive, data: piece, offset: physicalOffset(m, rseg: rseg, within: within)))
                pieceOfRun.append(pieces)
            }
            if runs.count == before { unwritable = .io("no member of store \(store) is available") }
            pieces += 1
        }
        if let unwritable { throw unwritable }
        // One CRC pass per piece; a mirror's copy takes its checksums from the first copy's.
        let sums = { () -> [BlockSums] in
            var sums: [BlockSums] = []
            sums.reserveCapacity(runs.count)
            for (r, run) in runs.enumerated() {
                if r > 0 && pieceOfRun[r] == pieceOfRun[r - 1] {
                    sums.append(sums[r - 1].copy(toDrive: run.drive, at: run.offset))
                } else {
                    sums.append(BlockSums(of: run.data, drive: run.drive, at: run.offset))
                }
            }
            return sums
        }
        let errors = checksums.writeAll(runs, sideBySide: buffer.count >= 2 * Self.sideBySideMinimumBytes, sums: sums)
        var landed = [Bool](repeating: false, count: pieces)
        var lastError: LunError?
        for (r, error) in errors.enumerated() {
            if let error { lastError = error } else { landed[pieceOfRun[r]] = true }
        }
        if let lastError, level == .raid0 || landed.contains(false) { throw lastError }
    }

    private func writeFullStripe(store: Int, rseg: Int, _ buffer: UnsafeRawBufferPointer) throws(LunError) {
        let parity = scratchBuffer(stripeUnit)
        defer { parity.deallocate() }
        parity.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[0..<stripeUnit]))
        for column in 1..<4 {
            xorBytes(into: parity.baseAddress!, from: buffer.baseAddress! + column * stripeUnit, count: stripeUnit)
        }
        let layout = layout(store, .raid5)
        let bytes = { (member: Int) -> UnsafeRawBufferPointer in
            layout.column(ofMember: member).map { column in
                UnsafeRawBufferPointer(rebasing: buffer[column * stripeUnit..<(column + 1) * stripeUnit])
            } ?? UnsafeRawBufferPointer(parity)
        }
        let place = (0..<5).map { member -> (drive: Int, offset: UInt64) in
            let m = table.member(store, member)
            return (m.drive, physicalOffset(m, rseg: rseg, within: 0))
        }
        let present = (0..<5).filter { drives.isAvailable(place[$0].drive) }
        // The data columns' checksums, computed while the row is in flight; the parity's follow
        // from them without a CRC pass.
        let sums = { () -> [BlockSums] in
            let dataSums = (0..<5).map { member -> BlockSums? in
                guard layout.column(ofMember: member) != nil else { return nil }
                return BlockSums(of: bytes(member), drive: place[member].drive, at: place[member].offset)
            }
            let pm = place[layout.parityMember!]
            let paritySums = BlockSums.parity(of: dataSums.compactMap { $0 }, drive: pm.drive, at: pm.offset)
            return present.map { dataSums[$0] ?? paritySums }
        }
        let errors = checksums.writeAll(present.map { DriveWrite(drive: place[$0].drive, data: bytes($0), offset: place[$0].offset) },
                                        sideBySide: true, sums: sums)
        let failures = 5 - present.count + errors.filter { $0 != nil }.count
        if failures > 1 { throw .io("RAID 5 store \(store) lost \(failures) members") }
    }

    /// Writes stripe rows [within, within + count) of every column of RSEG `rseg` and their
    /// parity, computed from `segment` (the whole RSEG's bytes as reads see them; only those
    /// rows are used), reading nothing: a partial segment's rows (docs/DESIGN.md section 8)
    /// hold nothing anyone reads until this write, so their old bytes and parity do not matter.
    func writeRows(store: Int, rseg: Int, within: Int, count: Int, from segment: UnsafeRawBufferPointer) throws(LunError) {
        let bb = Self.blockBytes
        precondition(within % bb == 0 && count % bb == 0 && count > 0 && within + count <= stripeUnit
                      && segment.count == Int(geometry.rsegSizeBytes))
        guard table.level(store) == .raid5 else { preconditionFailure("stripe rows of store \(store), which is not RAID 5") }
        let held = stripes.lock(store, rseg, rows: StripeLocks.rows(within: within, count: count))
        defer { stripes.unlock(held) }
        let parity = scratchBuffer(count)
        defer { parity.deallocate() }
        parity.copyMemory(from: UnsafeRawBufferPointer(rebasing: segment[within..<within + count]))
        for column in 1..<4 {
            xorBytes(into: parity.baseAddress!, from: segment.baseAddress! + column * stripeUnit + within, count: count)
        }
        let layout = layout(store, .raid5)
        func writeMember(_ member: Int) throws(LunError) {
            let m = table.member(store, member)
            let bytes = layout.column(ofMember: member).map { column in
                UnsafeRawBufferPointer(rebasing: segment[column * stripeUnit + within..<column * stripeUnit + within + count])
            } ?? UnsafeRawBufferPointer(parity)
            guard drives.isAvailable(m.drive) else { throw .io("drive \(m.drive) is not available") }
            try checksums.write(m.drive, bytes, at: physicalOffset(m, rseg: rseg, within: within), keepInCache: true)
        }
        // A few blocks per member, written on the calling thread: handing them to the
        // transfer pool costs more than the writes.
        let errors: [LunError?] = (0..<5).map { member in
            do throws(LunError) { try writeMember(member); return nil } catch { return error }
        }
        let failures = errors.filter { $0 != nil }.count
        if failures > 1 { throw .io("RAID 5 store \(store) lost \(failures) members") }
    }

    /// new parity = old parity ^ old data ^ new data; with the data member gone, the parity
    /// alone carries the new bytes, which reconstruction then returns; with the parity member
    /// gone, the new data is written alone and nothing is read. With both members in
    /// service the old blocks are vouched for by the new parity's checksum (below); otherwise,
    /// or when that check fails, old data and old parity are checked one by one, a damaged old
    /// data block is repaired from the others and a damaged old parity computed afresh.
    private func readModifyWrite(store: Int, rseg: Int, column: Int, within: Int, _ piece: UnsafeRawBufferPointer) throws(LunError) {
        let layout = layout(store, .raid5)
        let dataMember = table.member(store, layout.dataMember(column: column))
        let parityMember = table.member(store, layout.parityMember!)
        let dataAt = physicalOffset(dataMember, rseg: rseg, within: within)
        let parityAt = physicalOffset(parityMember, rseg: rseg, within: within)
        let newData = BlockSums(of: piece, drive: dataMember.drive, at: dataAt)
        let n = piece.count
        let parity = scratchBuffer(n)
        defer { parity.deallocate() }
        // The two old reads go to different drives: let the parity's start while the data's runs.
        if drives.isAvailable(parityMember.drive) { drives.prefetch(parityMember.drive, at: parityAt, length: n) }
        var paritySums = vouchedNewParity(dataDrive: dataMember.drive, dataAt: dataAt,
                                          parityDrive: parityMember.drive, parityAt: parityAt,
                                          piece, newData, into: parity)
        if paritySums == nil && drives.isAvailable(parityMember.drive) {
            let delta = scratchBuffer(n)
            defer { delta.deallocate() }
            var oldDataError: LunError?
            do throws(LunError) {
                try readColumn(store: store, level: .raid5, rseg: rseg, column: column, within: within, into: delta, lockHeld: true, { "" })
            } catch { oldDataError = error }
            do throws(LunError) {
                if oldDataError == nil, try checksums.read(parityMember.drive, into: parity, at: parityAt).isEmpty {
                    xorBytes(into: delta.baseAddress!, from: piece.baseAddress!, count: n)   // old ^ new
                    xorBytes(into: parity.baseAddress!, from: delta.baseAddress!, count: n)
                } else {
                    // The old data is not needed: the new bytes replace all of it.
                    try parityFromData(store: store, rseg: rseg, within: within, column: column, newData: piece, into: parity)
                    drives.log("RAID 5 store \(store) RSEG \(rseg): "
                               + (oldDataError.map { "old data on drive \(dataMember.drive) offset \(dataAt) unreadable (\($0))" }
                                  ?? "parity on drive \(parityMember.drive) offset \(parityAt) failed its checksum")
                               + "; parity computed again from the other data columns")
                }
                paritySums = BlockSums(of: UnsafeRawBufferPointer(parity), drive: parityMember.drive, at: parityAt)
            } catch {
                if let oldDataError {
                    // Neither the old data nor the other columns can be read: damage in two
                    // columns of the row. Nothing is written.
                    drives.log("RAID 5 store \(store) RSEG \(rseg): write refused: old data on drive \(dataMember.drive) "
                               + "offset \(dataAt) unreadable (\(oldDataError)), and so is another column (\(error))")
                    throw error
                }
                drives.noteError()
                // Parity not rewritten would pass its checksum with old contents and rebuild
                // old bytes later: the parity drive leaves service instead.
                if drives.isAvailable(parityMember.drive) { drives.markFailed(parityMember.drive, error) }
            }
        }
        if let paritySums {
            var landed = 0
            do {
                // The data goes first: a crash between the two leaves parity stale for this
                // range; the store is in the write-intent set, so recovery settles it.
                if drives.isAvailable(dataMember.drive) {
                    do {
                        try checksums.write(piece, sums: newData, keepInCache: true)
                        landed += 1
                    } catch {}
                }
                try checksums.write(UnsafeRawBufferPointer(parity), sums: paritySums, keepInCache: true)
                landed += 1
            } catch {
                drives.noteError()
                if landed < 2 && drives.isAvailable(parityMember.drive) { drives.markFailed(parityMember.drive, error) }
            }
            if landed > 0 { return }
        }
        try checksums.write(piece, sums: newData, keepInCache: true)
    }

    /// The new parity of a read-modify-write from old data and old parity read without a
    /// check of their own, and its checksums; nil, with `parity` to be filled again, when a
    /// member is out of service or unreadable or the check fails.
    ///
    /// The check: CRC-32C is linear (BlockSums), so the parity P' = P ^ D ^ D' must have the
    /// checksum that follows from the stored checksums of the old parity P and old data D and
    /// the new data's. If P ^ D is not what those stored checksums describe, P' fails that
    /// comparison unless the difference is one a CRC cannot see: the odds of any checked read.
    /// So two CRC passes (new data, new parity) do the work of four (two checks and two new
    /// checksums). Damage in P and D that cancels out in P ^ D is missed, and harmless: P' is
    /// right, and both old blocks are overwritten.
    private func vouchedNewParity(dataDrive: Int, dataAt: UInt64, parityDrive: Int, parityAt: UInt64,
                                               _ piece: UnsafeRawBufferPointer, _ newData: BlockSums,
                                               into parity: UnsafeMutableRawBufferPointer) -> BlockSums? {
        guard drives.isAvailable(dataDrive) && drives.isAvailable(parityDrive) else { return nil }
        let old = scratchBuffer(piece.count)
        defer { old.deallocate() }
        do throws(LunError) {
            try drives.read(dataDrive, into: old, at: dataAt)
            try drives.read(parityDrive, into: parity, at: parityAt)
            let expected = BlockSums.parity(of: [try checksums.stored(parityDrive, at: parityAt, count: newData.count),
                                                 try checksums.stored(dataDrive, at: dataAt, count: newData.count), newData],
                                            drive: parityDrive, at: parityAt)
            xorBytes(into: parity.baseAddress!, from: old.baseAddress!, count: piece.count)
            xorBytes(into: parity.baseAddress!, from: piece.baseAddress!, count: piece.count)
            let actual = BlockSums(of: UnsafeRawBufferPointer(parity), drive: parityDrive, at: parityAt)
            if actual.stored == expected.stored {
                checksums.parityVouched.add(1, ordering: .relaxed)
                return actual
            }
        } catch {
            drives.noteError()   // the checked path reads again and deals with the drive
        }
        return nil
    }

    /// Parity of a range with column `column` replaced by `newData`, from the checked data columns.
    private func parityFromData(store: Int, rseg: Int, within: Int, column: Int, newData: UnsafeRawBufferPointer,
                                into parity: UnsafeMutableRawBufferPointer) throws(LunError) {
        parity.copyMemory(from: newData)
        let temp = scratchBuffer(parity.count)
        defer { temp.deallocate() }
        for other in 0..<4 where other != column {
            try readColumn(store: store, level: .raid5, rseg: rseg, column: other, within: within, into: temp, lockHeld: true, { "" })
            xorBytes(into: parity.baseAddress!, from: temp.baseAddress!, count: parity.count)
        }
    }
}
