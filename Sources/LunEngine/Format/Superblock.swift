// The superblock: the first 4 KiB block of a drive's quorum space, written in two alternating
// slots (A at byte 0, B at 4096) so that a torn update leaves the other slot whole. It names
// the pool, this drive's place in it, the geometry, and (on metadata mirrors) where the
// latest checkpoint and the journal that follows it are. docs/DESIGN.md maps it field by field.

public struct Superblock: Equatable, Sendable {
    public static let magic: [UInt8] = Array("LUNFSSB1".utf8)
    public static let formatVersion: UInt32 = 2
    public static let blockSize = 4096
    public static let slotOffsets: [UInt64] = [0, 4096]

    public var poolUUID: [UInt8]            // 16 bytes
    public var generation: UInt64           // bumped by every checkpoint; newest valid wins
    public var driveIndex: UInt32
    public var driveCount: UInt32
    public var geometry: PoolGeometry
    public var defaultRAID: RAIDLevel
    public var mirrors: [UInt32]            // drives holding the metadata (2 or 3, or 1 alone)
    public var checkpointSlot: UInt32       // 0 or 1
    public var checkpointSeq: UInt64        // last journal sequence the checkpoint contains
    public var checkpointLength: UInt64
    public var checkpointCRC: UInt32
    public var journalStart: UInt64         // ring offset of the first record after the checkpoint
    public var createdAt: UInt64
    public var driveSizeBytes: UInt64
    /// Bit 0: the pool was closed cleanly after this checkpoint. Cleared by every open, so
    /// an open that finds it clear knows a crash may have left mirrors or parity out of step.
    public var flags: UInt32 = 0
    public static let cleanFlag: UInt32 = 1

    public var isClean: Bool { flags & Self.cleanFlag != 0 }
    /// Bit d: drive d was missing or out of service when this checkpoint was written, so its
    /// copies may be older than the pool's; if it comes back it is rebuilt before use.
    public var staleDrives: UInt64 = 0
    /// Bit d: slot d held a drive that was removed from the pool (`lunfs drive remove`); the
    /// slot holds nothing, is not missing, and its drives.list line is `-`. Zero before it existed.
    public var retiredDrives: UInt64 = 0
    /// The generation of the last checkpoint at which this drive was present and in service:
    /// every checkpoint writes it into the identity of each such drive (md's event counter).
    /// 0 on pools written before it existed (unknown).
    public var currentThrough: UInt64 = 0
    /// The generation of the last checkpoint written while some drive was missing or out of
    /// service. A drive whose `currentThrough` is below it missed writes: it is stale even if
    /// `staleDrives` was lost (`DriveIdentity` applies the rule).
    public var lastDegradedGeneration: UInt64 = 0
    /// Flags of this drive's identity; bit 0: a replacement (a blank or foreign drive given
    /// this slot), which holds no data until every chunk on it has been rebuilt.
    public var identityFlags: UInt32 = 0
    public static let replacementFlag: UInt32 = 1
    /// Bit d: drive d is being emptied to be removed (`lunfs drive remove`): new stores take
    /// nothing on it, leveling moves its PSEGs away, and it is forgotten once it holds nothing.
    public var drainingDrives: UInt64 = 0
    /// Where the fields added after the first format begin (152..<160 came later: retired drives).
    static let extensionOffset = 160

    public func encode() -> [UInt8] {
        var w = ByteWriter(capacity: Self.blockSize)
        w.raw(Self.magic)                    // 0   magic
        w.u32(Self.formatVersion)            // 8   format version
        w.u32(0)                             // 12  CRC-32C of the block with this field zero
        w.raw(poolUUID)                      // 16  pool UUID
        w.u64(generation)                    // 32
        w.u32(driveIndex)                    // 40
        w.u32(driveCount)                    // 44
        w.u64(geometry.psegSizeBytes)        // 48
        w.u64(geometry.rsegSizeBytes)        // 56
        w.u32(UInt32(geometry.dataColumns))  // 64
        w.u32(UInt32(geometry.quorumPSEGs))  // 68
        w.u32(UInt32(defaultRAID.rawValue))  // 72
        w.u32(UInt32(mirrors.count))         // 76
        for i in 0..<3 { w.u32(i < mirrors.count ? mirrors[i] : 0) }  // 80..92
        w.u32(checkpointSlot)                // 92
        w.u64(checkpointSeq)                 // 96
        w.u64(checkpointLength)              // 104
        w.u32(checkpointCRC)                 // 112
        w.u64(journalStart)                  // 116
        w.u64(createdAt)                     // 124
        w.u64(driveSizeBytes)                // 132
        w.u32(flags)                         // 140
        w.u64(staleDrives)                   // 144
        w.u64(retiredDrives)                 // 152
        precondition(w.bytes.count == Self.extensionOffset)
        w.u64(currentThrough)                // 160
        w.u64(lastDegradedGeneration)        // 168
        w.u32(identityFlags)                 // 176
        w.u32(0)                             // 180 free
        w.u64(drainingDrives)                // 184
        w.pad(toMultipleOf: Self.blockSize)
        var bytes = w.bytes
        let crc = CRC32C.checksum(bytes)
        withUnsafeBytes(of: crc.littleEndian) { for i in 0..<4 { bytes[12 + i] = $0[i] } }
        return bytes
    }

    /// Decodes a block; throws `.corrupt` on a bad magic, version, checksum or geometry.
    public static func decode(_ block: [UInt8]) throws(LunError) -> Superblock {
        guard block.count == blockSize, Array(block[0..<8]) == magic else { throw .corrupt("no superblock magic") }
        var r = ByteReader(block, position: 8)
        let version = try r.u32()
        guard version == formatVersion else { throw .corrupt("superblock format version \(version), this lunfs reads \(formatVersion)") }
        let stored = try r.u32()
        var zeroed = block
        for i in 12..<16 { zeroed[i] = 0 }
        guard CRC32C.checksum(zeroed) == stored else { throw .corrupt("superblock checksum mismatch") }
        let uuid = try r.raw(16)
        let generation = try r.u64()
        let driveIndex = try r.u32()
        let driveCount = try r.u32()
        let pseg = try r.u64(), rseg = try r.u64()
        let columns = Int(try r.u32()), quorum = Int(try r.u32())
        let geometry = PoolGeometry(psegSizeBytes: pseg, rsegSizeBytes: rseg, dataColumns: columns, quorumPSEGs: quorum)
        guard geometry.isValid else { throw .corrupt("superblock geometry is invalid") }
        guard let raid = RAIDLevel(rawValue: UInt8(truncatingIfNeeded: try r.u32())) else { throw .corrupt("superblock RAID level") }
        let mirrorCount = Int(try r.u32())
        guard (1...3).contains(mirrorCount) else { throw .corrupt("superblock mirror count \(mirrorCount)") }
        var mirrors: [UInt32] = []
        for i in 0..<3 { let m = try r.u32(); if i < mirrorCount { mirrors.append(m) } }
        guard driveCount >= 1, driveIndex < driveCount, mirrors.allSatisfy({ $0 < driveCount }) else {
            throw .corrupt("superblock drive numbers out of range")
        }
        var sb = Superblock(poolUUID: uuid, generation: generation, driveIndex: driveIndex, driveCount: driveCount,
                            geometry: geometry, defaultRAID: raid, mirrors: mirrors,
                            checkpointSlot: try r.u32(), checkpointSeq: try r.u64(), checkpointLength: try r.u64(),
                            checkpointCRC: try r.u32(), journalStart: try r.u64(), createdAt: try r.u64(),
                            driveSizeBytes: try r.u64(), flags: try r.u32(), staleDrives: try r.u64())
        var retired = ByteReader(block, position: 152)
        sb.retiredDrives = try retired.u64()
        guard mirrors.allSatisfy({ sb.retiredDrives & (1 << UInt64($0 & 63)) == 0 }) else {
            throw .corrupt("superblock names a removed drive as a metadata mirror")
        }
        var x = ByteReader(block, position: extensionOffset)
        sb.currentThrough = try x.u64()
        sb.lastDegradedGeneration = try x.u64()
        sb.identityFlags = try x.u32()
        _ = try x.u32()
        sb.drainingDrives = try x.u64()
        return sb
    }
}

/// Where the metadata lives inside quorum space, derived from the quorum size alone:
/// two superblock slots, two checkpoint slots, then the journal ring.
public struct QuorumLayout: Equatable, Sendable {
    public let checkpointOffsets: [UInt64]
    public let checkpointCapacity: UInt64
    public let journalOffset: UInt64
    public let journalCapacity: UInt64

    public init(quorumBytes: UInt64) {
        let start: UInt64 = 8192
        let available = quorumBytes - start
        let journal = (available / 4) & ~4095
        let checkpoint = ((available - journal) / 2) & ~4095
        checkpointCapacity = checkpoint
        checkpointOffsets = [start, start + checkpoint]
        journalOffset = start + 2 * checkpoint
        journalCapacity = journal
    }
}
