// Reads and writes inside one RStore, by RAID level. Every RSEG is one stripe row: data
// column c of RSEG r sits at `r * stripeUnit` inside the PSEG of the member that holds column
// c, so a whole-RSEG write on RAID 5 is a full-stripe write and computes parity without
// reading. Reads of RAID 1 and 5 survive one missing or failing member; RAID 0 cannot.

struct StoreIO: @unchecked Sendable {
    let table: RSDTable
    let drives: DriveSet
    let geometry: PoolGeometry
    /// RAID 5 read-modify-write of one stripe must not interleave with another on the same stripe.
    private let stripeLocks: [Lock]

    init(table: RSDTable, drives: DriveSet, geometry: PoolGeometry) {
        self.table = table
        self.drives = drives
        self.geometry = geometry
        stripeLocks = (0..<256).map { _ in Lock() }
    }

    private var stripeUnit: Int { Int(geometry.stripeUnitBytes) }

    @inline(__always)
    private func physicalOffset(_ member: StoreMember, rseg: Int, within: Int) -> UInt64 {
        UInt64(member.pseg) * geometry.psegSizeBytes + UInt64(rseg) * geometry.stripeUnitBytes + UInt64(within)
    }

    /// Calls `body(column, offsetInColumn, bufferOffset, length)` for each column piece of a range.
    @inline(__always)
    private func forEachColumn<E: Error>(offset: Int, count: Int, _ body: (Int, Int, Int, Int) throws(E) -> Void) throws(E) {
        var done = 0
        while done < count {
            let pos = offset + done
            let column = pos / stripeUnit
            let within = pos % stripeUnit
            let n = min(stripeUnit - within, count - done)
            try body(column, within, done, n)
            done += n
        }
    }

    /// Pieces of at least this size go side by side to their drives.
    private static let sideBySideMinimumBytes = 64 << 10

    /// Like forEachColumn, but the pieces of a large range run side by side (see `runAll`).
    /// Every piece runs; the first error is thrown after.
    private func forEachColumnSideBySide(offset: Int, count: Int, _ body: (Int, Int, Int, Int) throws(LunError) -> Void) throws(LunError) {
        guard drives.transfers != nil, count >= 2 * Self.sideBySideMinimumBytes else {
            try forEachColumn(offset: offset, count: count, body)
            return
        }
        var pieces: [(column: Int, within: Int, at: Int, n: Int)] = []
        forEachColumn(offset: offset, count: count) { pieces.append(($0, $1, $2, $3)) }
        let errors = runAll(pieces.count) { (i) throws(LunError) in
            let p = pieces[i]
            try body(p.column, p.within, p.at, p.n)
        }
        if let first = errors.first(where: { $0 != nil }) { throw first! }
    }

    /// Runs body(0..<count), side by side on the drive set's transfer pool when it has one
    /// (file drives), else one after another; returns what each threw.
    private func runAll(_ count: Int, _ body: (Int) throws(LunError) -> Void) -> [LunError?] {
        guard let pool = drives.transfers, count > 1 else {
            return (0..<count).map { i in
                do throws(LunError) { try body(i); return nil } catch { return error }
            }
        }
        let errors = UnsafeMutableBufferPointer<LunError?>.allocate(capacity: count)
        errors.initialize(repeating: nil)
        defer { errors.deinitialize(); errors.deallocate() }
        pool.run(count) { i in
            do throws(LunError) { try body(i) } catch { errors[i] = error }
        }
        return Array(errors)
    }

    // MARK: Read

    func read(store: Int, rseg: Int, offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) {
        precondition(offset >= 0 && offset + buffer.count <= Int(geometry.rsegSizeBytes))
        guard let level = table.level(store) else { preconditionFailure("read of undefined store \(store)") }
        try forEachColumnSideBySide(offset: offset, count: buffer.count) { column, within, at, n throws(LunError) in
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[at..<at + n])
            try readColumn(store: store, level: level, rseg: rseg, column: column, within: within, into: piece)
        }
    }

    private func readColumn(store: Int, level: RAIDLevel, rseg: Int, column: Int, within: Int,
                            into piece: UnsafeMutableRawBufferPointer) throws(LunError) {
        let primary = level.dataMember(store: store, column: column)
        let m = table.member(store, primary)
        do {
            try drives.read(m.drive, into: piece, at: physicalOffset(m, rseg: rseg, within: within))
            return
        } catch {
            drives.noteError()
            if level == .raid0 { throw error }
        }
        if level == .raid1 {
            let mirror = table.member(store, column + 4)
            try drives.read(mirror.drive, into: piece, at: physicalOffset(mirror, rseg: rseg, within: within))
            return
        }
        // RAID 5: the column is the XOR of the other four members at the same place.
        piece.initializeMemory(as: UInt8.self, repeating: 0)
        let temp = scratchBuffer(piece.count)
        defer { temp.deallocate() }
        for other in 0..<5 where other != primary {
            let o = table.member(store, other)
            try drives.read(o.drive, into: temp, at: physicalOffset(o, rseg: rseg, within: within))
            xorBytes(into: piece.baseAddress!, from: temp.baseAddress!, count: piece.count)
        }
    }

    // MARK: Write

    func write(store: Int, rseg: Int, offset: Int, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        precondition(offset >= 0 && offset + buffer.count <= Int(geometry.rsegSizeBytes))
        guard let level = table.level(store) else { preconditionFailure("write to undefined store \(store)") }
        switch level {
        case .raid0:
            try forEachColumnSideBySide(offset: offset, count: buffer.count) { column, within, at, n throws(LunError) in
                let m = table.member(store, column)
                try drives.write(m.drive, UnsafeRawBufferPointer(rebasing: buffer[at..<at + n]),
                                 at: physicalOffset(m, rseg: rseg, within: within))
            }
        case .raid1:
            try forEachColumnSideBySide(offset: offset, count: buffer.count) { column, within, at, n throws(LunError) in
                let piece = UnsafeRawBufferPointer(rebasing: buffer[at..<at + n])
                try writeCopies([column, column + 4], store: store, rseg: rseg, within: within, piece)
            }
        case .raid5:
            let lock = stripeLocks[(store &* 8 &+ rseg) & 255]
            lock.lock()
            defer { lock.unlock() }
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

    /// Writes the same bytes to several members; succeeds while at least one copy lands.
    private func writeCopies(_ members: [Int], store: Int, rseg: Int, within: Int, _ piece: UnsafeRawBufferPointer) throws(LunError) {
        var landed = 0
        var lastError = LunError.io("no member of store \(store) is available")
        for member in members {
            let m = table.member(store, member)
            guard drives.isAvailable(m.drive) else { continue }
            do {
                try drives.write(m.drive, piece, at: physicalOffset(m, rseg: rseg, within: within))
                landed += 1
            } catch { lastError = error }
        }
        if landed == 0 { throw lastError }
    }

    private func writeFullStripe(store: Int, rseg: Int, _ buffer: UnsafeRawBufferPointer) throws(LunError) {
        let parity = scratchBuffer(stripeUnit)
        defer { parity.deallocate() }
        parity.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[0..<stripeUnit]))
        for column in 1..<4 {
            xorBytes(into: parity.baseAddress!, from: buffer.baseAddress! + column * stripeUnit, count: stripeUnit)
        }
        let writeMember = { (member: Int) throws(LunError) in
            let m = table.member(store, member)
            let isParity = member == RAIDLevel.parityMember(store: store)
            let column = (member - RAIDLevel.parityMember(store: store) - 1 + 5) % 5
            let bytes = isParity ? UnsafeRawBufferPointer(parity)
                : UnsafeRawBufferPointer(rebasing: buffer[column * stripeUnit..<(column + 1) * stripeUnit])
            guard drives.isAvailable(m.drive) else { throw .io("drive \(m.drive) is not available") }
            try drives.write(m.drive, bytes, at: physicalOffset(m, rseg: rseg, within: 0))
        }
        let failures = runAll(5, writeMember).filter { $0 != nil }.count
        if failures > 1 { throw .io("RAID 5 store \(store) lost \(failures) members") }
    }

    /// new parity = old parity ^ old data ^ new data; with the data member gone, the parity
    /// alone carries the new bytes, which reconstruction then returns.
    private func readModifyWrite(store: Int, rseg: Int, column: Int, within: Int, _ piece: UnsafeRawBufferPointer) throws(LunError) {
        let dataMember = table.member(store, RAIDLevel.raid5.dataMember(store: store, column: column))
        let parityMember = table.member(store, RAIDLevel.parityMember(store: store))
        let n = piece.count
        let delta = scratchBuffer(n)
        defer { delta.deallocate() }
        // The two old reads go to different drives: let the parity's start while the data's runs.
        if drives.isAvailable(parityMember.drive) {
            drives.prefetch(parityMember.drive, at: physicalOffset(parityMember, rseg: rseg, within: within), length: n)
        }
        try readColumn(store: store, level: .raid5, rseg: rseg, column: column, within: within, into: delta)
        xorBytes(into: delta.baseAddress!, from: piece.baseAddress!, count: n)   // old ^ new
        var landed = 0
        if drives.isAvailable(parityMember.drive) {
            let parity = scratchBuffer(n)
            defer { parity.deallocate() }
            let at = physicalOffset(parityMember, rseg: rseg, within: within)
            do {
                try drives.read(parityMember.drive, into: parity, at: at)
                xorBytes(into: parity.baseAddress!, from: delta.baseAddress!, count: n)
                // The data goes first: a crash between the two leaves parity stale for this
                // range, which only matters if a drive is lost before the range is rewritten.
                if drives.isAvailable(dataMember.drive) {
                    do { try drives.write(dataMember.drive, piece, at: physicalOffset(dataMember, rseg: rseg, within: within)); landed += 1 } catch {}
                }
                try drives.write(parityMember.drive, UnsafeRawBufferPointer(parity), at: at)
                landed += 1
            } catch {
                drives.noteError()
            }
            if landed > 0 { return }
        }
        try drives.write(dataMember.drive, piece, at: physicalOffset(dataMember, rseg: rseg, within: within))
    }

    /// Makes a whole RSEG read as zeros on every member (parity of zeros is zeros).
    func zero(store: Int, rseg: Int) throws(LunError) {
        guard let level = table.level(store) else { preconditionFailure("zero of undefined store \(store)") }
        var failures = 0
        for member in 0..<level.memberCount {
            let m = table.member(store, member)
            guard drives.isAvailable(m.drive) else { failures += 1; continue }
            do { try drives.zero(m.drive, at: physicalOffset(m, rseg: rseg, within: 0), length: geometry.stripeUnitBytes) } catch { failures += 1 }
        }
        if failures > 0 && level == .raid0 || failures > 1 && level == .raid5 {
            throw .io("cannot zero RSEG \(store).\(rseg): \(failures) members failed")
        }
    }
}
