// The sizes that cut drives into segments and segments into stores. They are named constants
// of the pool format: `lunfs init` writes them into every superblock and `open` reads them
// back, so a pool keeps the geometry it was made with.

/// Units: every size is in bytes unless its name says otherwise.
public struct PoolGeometry: Equatable, Sendable {
    /// A drive is cut into PSEGs of this size (003 [0059]: 2 MiB).
    public var psegSizeBytes: UInt64
    /// A logical disk is allocated, shared and copied in RSEGs of this size (003 [0066]: 1 MiB).
    public var rsegSizeBytes: UInt64
    /// Data columns of an RStore: RAID 0 stripes over 4 PSEGs, RAID 5 has 4 data + 1 parity,
    /// RAID 1 has 4 mirrored pairs. An RStore's address space is `dataColumns * psegSizeBytes`.
    public var dataColumns: Int
    /// The first PSEGs of every drive hold metadata (quorum space), never user data.
    public var quorumPSEGs: Int

    public static let defaultPSEGSizeBytes: UInt64 = 2 << 20
    public static let defaultRSEGSizeBytes: UInt64 = 1 << 20
    public static let defaultDataColumns = 4
    /// One L2MAP entry covers this much of a logical disk (1024 entries cover 2 TiB).
    public static let l2EntrySizeBytes: UInt64 = 2 << 30
    /// Largest disk size the map format accepts (16 TiB and then some: 64 TiB).
    public static let maxDiskSizeBytes: UInt64 = 64 << 40

    public init(psegSizeBytes: UInt64 = defaultPSEGSizeBytes,
                rsegSizeBytes: UInt64 = defaultRSEGSizeBytes,
                dataColumns: Int = defaultDataColumns,
                quorumPSEGs: Int) {
        self.psegSizeBytes = psegSizeBytes
        self.rsegSizeBytes = rsegSizeBytes
        self.dataColumns = dataColumns
        self.quorumPSEGs = quorumPSEGs
    }

    /// Virtual address space of one RStore (8 MiB by default).
    public var rstoreSizeBytes: UInt64 { psegSizeBytes * UInt64(dataColumns) }
    /// RSEGs per RStore (8 by default).
    public var rsegsPerStore: Int { Int(rstoreSizeBytes / rsegSizeBytes) }
    /// Each RSEG is one full stripe row: `dataColumns` chunks of this size, one per data column,
    /// at the same offset in every PSEG of the store (256 KiB by default).
    public var stripeUnitBytes: UInt64 { rsegSizeBytes / UInt64(dataColumns) }
    /// LMAP entries per L2MAP entry (2048 by default).
    public var rsegsPerLMAP: Int { Int(Self.l2EntrySizeBytes / rsegSizeBytes) }
    /// Bytes of quorum space at the start of every drive.
    public var quorumBytes: UInt64 { UInt64(quorumPSEGs) * psegSizeBytes }

    /// Broken geometry is a programming or format error: the superblock check rejects it first.
    public var isValid: Bool {
        psegSizeBytes >= 64 << 10 && psegSizeBytes.nonzeroBitCount == 1
            && rsegSizeBytes.nonzeroBitCount == 1 && dataColumns == 4
            && rstoreSizeBytes % rsegSizeBytes == 0 && rsegSizeBytes % UInt64(dataColumns) == 0
            && stripeUnitBytes % 4096 == 0 && rsegsPerStore <= 8 && rsegsPerStore >= 1
            && Self.l2EntrySizeBytes % rsegSizeBytes == 0 && quorumPSEGs >= 2
    }

    /// Quorum space for a drive of `driveSizeBytes`: 1/32 of it, at least 4 and at most 512 PSEGs.
    /// On sparse drive files it costs nothing until metadata is written.
    public static func defaultQuorumPSEGs(driveSizeBytes: UInt64, psegSizeBytes: UInt64 = defaultPSEGSizeBytes) -> Int {
        let psegs = Int(driveSizeBytes / psegSizeBytes)
        return min(512, max(4, psegs / 32))
    }
}

/// The RAID level of a logical disk; its raw value is the number users type.
public enum RAIDLevel: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case raid0 = 0
    case raid1 = 1
    case raid5 = 5

    /// Drives one RStore of this level spans.
    public var memberCount: Int {
        switch self {
        case .raid0: return 4
        case .raid1: return 8
        case .raid5: return 5
        }
    }

    public init?(text: String) {
        var t = text.lowercased()
        if t.hasPrefix("raid") { t.removeFirst(4) }
        guard let n = UInt8(t), let level = RAIDLevel(rawValue: n) else { return nil }
        self = level
    }

    public var description: String { "raid\(rawValue)" }
}
