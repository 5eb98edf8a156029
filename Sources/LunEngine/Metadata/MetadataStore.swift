// Reads and writes the pool's metadata in quorum space, mirrored on the drives the superblock
// names. A commit appends one checksummed journal record to every mirror and syncs them; a
// checkpoint writes the whole state into the idle checkpoint slot, syncs, and only then
// writes a new superblock generation pointing at it. Opening takes the newest valid
// superblock, the first checkpoint copy whose checksum holds, and every journal record that
// follows it in sequence; a torn or stale record ends the replay.

struct RecoveredMetadata {
    var superblock: Superblock
    var checkpoint: [UInt8]
    var records: [[UInt8]]
    /// The ring offset after the last good record, and that record's sequence number.
    var journalEnd: UInt64
    var lastSeq: UInt64
    var notes: [String]
}

final class MetadataStore: @unchecked Sendable {
    private let drives: DriveSet
    private(set) var superblock: Superblock
    let layout: QuorumLayout
    private(set) var nextSeq: UInt64
    private var writePosition: UInt64
    /// The size the pool uses for each drive (recorded at format), written into each drive's
    /// superblock; empty when not known (the field is then left as it was).
    var driveSizes: [UInt64] = []
    /// Journal bytes written since the checkpoint; the ring must never lap them.
    private(set) var journalBytesSinceCheckpoint: UInt64 = 0

    static let recordMagic: UInt32 = 0x4A4E_554C   // "LUNJ"
    static let recordHeaderSize = 32
    static let checkpointMagic: [UInt8] = Array("LUNFSCP1".utf8)

    init(drives: DriveSet, superblock: Superblock, nextSeq: UInt64, writePosition: UInt64) {
        self.drives = drives
        self.superblock = superblock
        self.layout = QuorumLayout(quorumBytes: superblock.geometry.quorumBytes)
        self.nextSeq = nextSeq
        self.writePosition = writePosition
    }

    var mirrors: [Int] { superblock.mirrors.map(Int.init) }

    /// A change of the pool's drive set (Pool+Drives.swift): the next checkpoint's superblock
    /// records it, on every drive, and that superblock on the mirrors is the change's commit.
    func setDriveSet(count: Int, retired: UInt64, sizes: [UInt64]) {
        superblock.driveCount = UInt32(count)
        superblock.retiredDrives = retired
        driveSizes = sizes
    }

    /// Drives being emptied to be removed, recorded by the next checkpoint.
    func setDraining(_ mask: UInt64) { superblock.drainingDrives = mask }

    /// The drives that hold the metadata from the next checkpoint on (the caller writes one at
    /// once, under `commitLock`, and puts the old list back if it fails). Records appended
    /// before that checkpoint go to the new list too, which is harmless: no superblock names
    /// a mirror whose checkpoint it did not get first.
    func setMirrors(_ list: [Int]) {
        precondition(!list.isEmpty && list.count <= 3 && Set(list).count == list.count)
        superblock.mirrors = list.map(UInt32.init)
    }

    // MARK: Format

    /// Writes identity superblocks (both slots) to every drive and the first checkpoint to the mirrors.
    static func format(drives: DriveSet, template: Superblock, sizes: [UInt64], checkpoint: [UInt8]) throws(LunError) -> MetadataStore {
        let store = MetadataStore(drives: drives, superblock: template, nextSeq: 1, writePosition: 0)
        store.driveSizes = sizes
        for d in 0..<drives.count {
            var sb = template
            sb.driveIndex = UInt32(d)
            sb.driveSizeBytes = sizes[d]
            sb.generation = 0
            // Both slots: a drive formatted over another pool (init --force) keeps nothing of it.
            for offset in Superblock.slotOffsets { try drives.write(d, bytes: sb.encode(), at: offset) }
            try drives.sync(d)
        }
        try store.writeCheckpoint(checkpoint)
        return store
    }

    // MARK: Commit

    /// Appends one record and makes it durable on every available mirror.
    func append(_ payload: [UInt8]) throws(LunError) {
        let record = Self.encodeRecord(seq: nextSeq, uuid: superblock.poolUUID, payload: payload)
        precondition(fits(recordBytes: record.count), "journal record must fit; caller checkpoints first")
        if writePosition + UInt64(record.count) > layout.journalCapacity { writePosition = 0 }
        try writeToMirrors(record, at: layout.journalOffset + writePosition)
        writePosition += UInt64(record.count)
        journalBytesSinceCheckpoint += UInt64(record.count)
        nextSeq += 1
    }

    /// Whether a record of this size can be appended without lapping the checkpoint's records.
    func fits(recordBytes: Int) -> Bool {
        let padded = UInt64((recordBytes + 4095) & ~4095)
        // Wrapping may waste up to one record's worth at the end of the ring.
        return journalBytesSinceCheckpoint + 2 * padded <= layout.journalCapacity
    }

    func recordSize(payloadBytes: Int) -> Int { (Self.recordHeaderSize + payloadBytes + 4095) & ~4095 }

    // MARK: Checkpoint

    /// Writes the full state to the idle slot, then a new superblock generation that points at it.
    /// Before the mirrors' superblocks, every other present, in-service drive gets an identity
    /// block of the new generation (`currentThrough`), so a drive that misses checkpoints is
    /// known stale when it comes back (`DriveIdentity`, docs/DESIGN.md section 2).
    func writeCheckpoint(_ payload: [UInt8], clean: Bool = false) throws(LunError) {
        var w = ByteWriter(capacity: payload.count + 16)
        w.raw(Self.checkpointMagic)
        w.u64(nextSeq - 1)
        w.raw(payload)
        w.pad(toMultipleOf: 4096)
        let bytes = w.bytes
        guard UInt64(bytes.count) <= layout.checkpointCapacity else {
            throw .noSpace("metadata checkpoint of \(bytes.count) bytes exceeds its slot of \(layout.checkpointCapacity) bytes")
        }
        var sb = superblock
        sb.generation += 1
        sb.checkpointSlot = UInt32(sb.generation % 2)
        sb.checkpointSeq = nextSeq - 1
        sb.checkpointLength = UInt64(bytes.count)
        sb.checkpointCRC = CRC32C.checksum(bytes)
        sb.journalStart = writePosition
        sb.flags = clean ? Superblock.cleanFlag : 0
        sb.currentThrough = sb.generation
        sb.identityFlags = 0
        try writeToMirrors(bytes, at: layout.checkpointOffsets[Int(sb.checkpointSlot)])
        // The stale mask, and the generation at which a drive last left service: drives
        // current through an older generation missed writes.
        func markStale() {
            let stale = (0..<min(64, drives.count)).reduce(UInt64(0)) { $0 | (drives.isAvailable($1) || drives.isRetired($1) ? 0 : 1 << UInt64($1)) }
            sb.staleDrives = stale
            if stale & ~superblock.staleDrives != 0 || (stale != 0 && superblock.lastDegradedGeneration == 0) {
                sb.lastDegradedGeneration = sb.generation
            }
        }
        markStale()
        for d in 0..<drives.count where !mirrors.contains(d) && drives.isAvailable(d) {
            var identity = sb
            identity.driveIndex = UInt32(d)
            if d < driveSizes.count { identity.driveSizeBytes = driveSizes[d] }
            // A drive that fails this leaves service; the stale mask is then made again.
            try? drives.write(d, bytes: identity.encode(), at: Superblock.slotOffsets[Int(sb.generation % 2)])
            try? drives.sync(d)
        }
        markStale()
        var landed = 0
        for m in mirrors where drives.isAvailable(m) {
            var copy = sb
            copy.driveIndex = UInt32(m)
            copy.driveSizeBytes = m < driveSizes.count ? driveSizes[m] : superblock.driveSizeBytes
            do {
                try drives.write(m, bytes: copy.encode(), at: Superblock.slotOffsets[Int(sb.generation % 2)])
                try drives.sync(m)
                landed += 1
            } catch { continue }
        }
        guard landed > 0 else { throw .io("no metadata mirror accepted the superblock") }
        superblock = sb
        journalBytesSinceCheckpoint = 0
    }

    private func writeToMirrors(_ bytes: [UInt8], at offset: UInt64) throws(LunError) {
        var landed = 0
        var lastError = LunError.io("no metadata mirror is available")
        for m in mirrors where drives.isAvailable(m) {
            do {
                try drives.write(m, bytes: bytes, at: offset)
                try drives.sync(m)
                landed += 1
            } catch { lastError = error }
        }
        if landed == 0 { throw lastError }
    }

    static func encodeRecord(seq: UInt64, uuid: [UInt8], payload: [UInt8]) -> [UInt8] {
        var w = ByteWriter(capacity: recordHeaderSize + payload.count + 4096)
        w.u32(recordMagic)                     // 0  magic
        w.u32(0)                               // 4  header CRC (bytes 0..<32 with this zero)
        w.u64(seq)                             // 8  sequence number, one more than the last
        w.u32(UInt32(payload.count))           // 16 payload length
        w.u32(CRC32C.checksum(payload))        // 20 payload CRC
        w.raw(Array(uuid[0..<8]))              // 24 first half of the pool UUID
        w.raw(payload)
        w.pad(toMultipleOf: 4096)
        let headerCRC = w.bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<recordHeaderSize])) }
        w.patchU32(headerCRC, at: 4)
        return w.bytes
    }

    // MARK: Recovery

    /// Finds the newest consistent metadata across the drives; `.corrupt` if none survives.
    /// With `reconstruct` (check --repair), a pool whose every superblock copy is damaged gets
    /// one rebuilt from its checkpoint and journal (`reconstructSuperblock`).
    static func recover(drives: DriveSet, sizes: [UInt64] = [], reconstruct: Bool = false) throws(LunError) -> RecoveredMetadata {
        var notes: [String] = []
        var best: Superblock?
        var copy: (sb: Superblock, drive: Int)?
        var identities: [Superblock] = []
        for d in 0..<drives.count where drives.isAvailable(d) {
            var good = 0
            for (slot, offset) in Superblock.slotOffsets.enumerated() {
                guard let block = try? readBlock(drives, d, offset, Superblock.blockSize) else { continue }
                guard let sb = try? Superblock.decode(block) else {
                    if block.contains(where: { $0 != 0 }) { notes.append("drive \(d): superblock slot \(slot) is damaged; ignoring it") }
                    continue
                }
                good += 1
                identities.append(sb)
                if sb.generation > 0, sb.mirrors.contains(UInt32(d)), best == nil || sb.generation > best!.generation { best = sb }
                // The other drives' identities are copies of the superblock of their checkpoint.
                if sb.generation > 0, !sb.mirrors.contains(UInt32(d)), copy == nil || sb.generation > copy!.sb.generation { copy = (sb, d) }
            }
            if good == 0 { notes.append("drive \(d) (\(drives.name(d))): no valid superblock") }
        }
        if best == nil, let copy {
            // Every mirror's superblock is damaged: the newest copy in another drive's identity
            // points at the same checkpoint (its checksum is verified below).
            best = copy.sb
            notes.append("no metadata mirror holds a valid superblock; using the copy of generation \(copy.sb.generation) in drive \(copy.drive)'s identity")
        }
        if best == nil, identities.isEmpty, reconstruct, let (rebuilt, why) = reconstructSuperblock(drives: drives, sizes: sizes) {
            best = rebuilt
            notes += why
        }
        guard let chosen = best else {
            throw .corrupt("no valid superblock with metadata on any drive of the pool"
                           + (reconstruct ? "" : "; 'lunfs check --repair' can rebuild one if a checkpoint survives"))
        }
        guard identities.allSatisfy({ $0.poolUUID == chosen.poolUUID }) else {
            throw .corrupt("drives belong to different pools")
        }
        let layout = QuorumLayout(quorumBytes: chosen.geometry.quorumBytes)
        // The checkpoint: the first mirror whose copy matches the superblock's checksum.
        var checkpoint: [UInt8]?
        for m in chosen.mirrors.map(Int.init) where drives.isAvailable(m) {
            let offset = layout.checkpointOffsets[Int(chosen.checkpointSlot)]
            guard chosen.checkpointLength <= layout.checkpointCapacity,
                  let bytes = try? readBlock(drives, m, offset, Int(chosen.checkpointLength)) else { continue }
            if CRC32C.checksum(bytes) == chosen.checkpointCRC, Array(bytes[0..<8]) == checkpointMagic {
                checkpoint = bytes
                break
            }
            notes.append("drive \(m): metadata checkpoint copy is damaged; using another mirror")
        }
        guard let checkpoint else { throw .corrupt("every copy of the metadata checkpoint is damaged") }
        // The journal: records seq+1, seq+2, ... from journalStart, wrapping to the ring start.
        var records: [[UInt8]] = []
        var seq = chosen.checkpointSeq + 1
        var position = chosen.journalStart
        while true {
            var found: (payload: [UInt8], size: Int, at: UInt64)?
            for candidate in [position, 0] where found == nil {
                for m in chosen.mirrors.map(Int.init) where drives.isAvailable(m) {
                    if let r = readRecord(drives, m, layout, candidate, seq, chosen.poolUUID) {
                        found = (r.payload, r.size, candidate)
                        break
                    }
                }
            }
            guard let f = found else { break }
            records.append(f.payload)
            position = f.at + UInt64(f.size)
            seq += 1
        }
        return RecoveredMetadata(superblock: chosen, checkpoint: Array(checkpoint[16...]), records: records,
                                 journalEnd: position, lastSeq: seq - 1, notes: notes)
    }

    /// Whether mirror `m` holds the checkpoint `sb` points at (a mirror whose superblocks are
    /// damaged but whose metadata is current).
    static func holdsCheckpoint(drives: DriveSet, mirror m: Int, of sb: Superblock) -> Bool {
        let layout = QuorumLayout(quorumBytes: sb.geometry.quorumBytes)
        guard sb.checkpointLength <= layout.checkpointCapacity,
              let bytes = try? readBlock(drives, m, layout.checkpointOffsets[Int(sb.checkpointSlot)], Int(sb.checkpointLength))
        else { return false }
        return CRC32C.checksum(bytes) == sb.checkpointCRC && Array(bytes[0..<8]) == checkpointMagic
    }

    private static func readBlock(_ drives: DriveSet, _ d: Int, _ offset: UInt64, _ count: Int) throws(LunError) -> [UInt8] {
        try drives.readBytes(d, count: count, at: offset)
    }

    private static func readRecord(_ drives: DriveSet, _ m: Int, _ layout: QuorumLayout, _ position: UInt64,
                                   _ seq: UInt64, _ uuid: [UInt8]) -> (payload: [UInt8], size: Int)? {
        guard position + UInt64(recordHeaderSize) <= layout.journalCapacity,
              var header = try? readBlock(drives, m, layout.journalOffset + position, recordHeaderSize) else { return nil }
        var r = ByteReader(header)
        guard (try? r.u32()) == recordMagic, let headerCRC = try? r.u32(), let s = try? r.u64(), s == seq,
              let length = try? r.u32(), let payloadCRC = try? r.u32(), let id = try? r.raw(8), id == Array(uuid[0..<8])
        else { return nil }
        for i in 4..<8 { header[i] = 0 }
        guard CRC32C.checksum(header) == headerCRC else { return nil }
        let size = (recordHeaderSize + Int(length) + 4095) & ~4095
        guard position + UInt64(size) <= layout.journalCapacity,
              let payload = try? readBlock(drives, m, layout.journalOffset + position + UInt64(recordHeaderSize), Int(length)),
              CRC32C.checksum(payload) == payloadCRC else { return nil }
        return (payload, size)
    }
}
