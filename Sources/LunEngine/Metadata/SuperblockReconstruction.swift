// The last resort of recovery: every superblock copy of a pool is damaged, on every drive,
// while the checkpoints and the journal behind them are intact. The superblock is rebuilt from
// what the quorum space still shows: the geometry that puts a decodable checkpoint at its
// slot, the newest such checkpoint and its checksum, and the journal records that follow it.
// A read-write open (`lunfs check --repair`) then writes it to every mirror.

extension MetadataStore {
    /// A superblock pointing at the newest checkpoint found on the mirrors, or nil.
    /// `sizes` are the drives' sizes (the quorum size follows from the smallest).
    static func reconstructSuperblock(drives: DriveSet, sizes: [UInt64]) -> (Superblock, [String])? {
        let count = drives.count
        let mirrors = (0..<min(3, count)).map(UInt32.init)
        guard let smallest = sizes.filter({ $0 > 0 }).min() else { return nil }
        // Candidates are ranked by checkpoint sequence, then whether the journal record after
        // it was found (the geometry fits the ring), then the default PSEG size.
        var best: (sb: Superblock, rank: (UInt64, Int, Int))?
        var pseg: UInt64 = 64 << 10
        while pseg <= 256 << 20 {
            defer { pseg <<= 1 }
            let geometry = PoolGeometry(psegSizeBytes: pseg, quorumPSEGs: PoolGeometry.defaultQuorumPSEGs(driveSizeBytes: smallest, psegSizeBytes: pseg))
            guard geometry.isValid, smallest / pseg > UInt64(geometry.quorumPSEGs) else { continue }
            let layout = QuorumLayout(quorumBytes: geometry.quorumBytes)
            for m in mirrors.map(Int.init) where drives.isAvailable(m) {
                for (slot, offset) in layout.checkpointOffsets.enumerated() {
                    guard let head = try? drives.readBytes(m, count: 16, at: offset), Array(head[0..<8]) == checkpointMagic else { continue }
                    var r = ByteReader(head, position: 8)
                    guard let seq = try? r.u64(), best == nil || seq >= best!.rank.0 else { continue }
                    // The checkpoint's length is where its payload ends, padded to 4 KiB.
                    var length = 64 << 10
                    var found: [UInt8]?
                    while found == nil && UInt64(length) <= layout.checkpointCapacity {
                        if let bytes = try? drives.readBytes(m, count: length, at: offset) {
                            let state = PoolState(geometry: geometry, psegCount: sizes.map { Int($0 / pseg) })
                            // It must decode, and its stores must fit this geometry's drives.
                            if let used = try? state.loadCheckpoint(Array(bytes[16...])), (try? state.rebuildDerivedState()) != nil {
                                let padded = (16 + used + 4095) & ~4095
                                found = Array(bytes[0..<padded])
                            }
                        }
                        length *= 2
                    }
                    guard let checkpoint = found else { continue }
                    var sb = Superblock(poolUUID: (0..<16).map { _ in UInt8.random(in: 0...255) },
                                        generation: slot == 0 ? 2 : 1, driveIndex: 0, driveCount: UInt32(count),
                                        geometry: geometry, defaultRAID: PoolOptions.defaultRAID(drives: count), mirrors: mirrors,
                                        checkpointSlot: UInt32(slot), checkpointSeq: seq, checkpointLength: UInt64(checkpoint.count),
                                        checkpointCRC: CRC32C.checksum(checkpoint), journalStart: 0, createdAt: 0, driveSizeBytes: 0)
                    sb.flags = 0   // not known to be clean: the open resynchronises redundancy
                    // The journal: the record after the checkpoint, wherever it is in the ring.
                    var position: UInt64 = 0
                    var journalFound = 0
                    scan: while position + 4096 <= layout.journalCapacity {
                        for j in mirrors.map(Int.init) where drives.isAvailable(j) {
                            if let header = try? drives.readBytes(j, count: recordHeaderSize, at: layout.journalOffset + position),
                               var h = Optional(ByteReader(header)), (try? h.u32()) == recordMagic,
                               (try? h.u32()) != nil, (try? h.u64()) == seq + 1 {
                                sb.journalStart = position
                                journalFound = 1
                                for i in 0..<8 { sb.poolUUID[i] = header[24 + i] }
                                break scan
                            }
                        }
                        position += 4096
                    }
                    let rank = (seq, journalFound, pseg == PoolGeometry.defaultPSEGSizeBytes ? 1 : 0)
                    if best == nil || rank > best!.rank { best = (sb, rank) }
                }
            }
        }
        guard let chosen = best?.sb else { return nil }
        return (chosen, ["every superblock copy is damaged; rebuilt one from the checkpoint of sequence \(chosen.checkpointSeq) "
                         + "(PSEG size \(chosen.geometry.psegSizeBytes), journal at \(chosen.journalStart)); the default RAID level "
                         + "of new disks is taken as \(chosen.defaultRAID) and the pool gets a new UUID"])
    }
}
