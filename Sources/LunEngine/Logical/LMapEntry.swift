// One LMAP entry: the state of one RSEG-sized segment of a logical disk, packed in 32 bits.
//
//   bit 0      mapped: the disk has data for this segment (its own or its successor's)
//   bit 1      Sp: shared with the predecessor (the predecessor reads this disk's data)
//   bit 2      Ss: shared with the successor (this disk reads its successor's data)
//   bits 3..5  RSEG number inside the RStore        (only when mapped and Ss is clear)
//   bits 6..31 RStore id (RSD table index)           (only when mapped and Ss is clear)
//
// A mapped entry with Ss clear "holds" the segment: it is the only entry that names that
// physical RSEG, so every allocated RSEG has exactly one holder. Entries with Ss set carry
// no location; a read follows successor links until it meets the holder (003 [0096]).

public struct LMapEntry: Equatable, Sendable {
    public var raw: UInt32

    public init(raw: UInt32) { self.raw = raw }

    public static let unmapped = LMapEntry(raw: 0)
    public static let mappedBit: UInt32 = 1 << 0
    public static let spBit: UInt32 = 1 << 1
    public static let ssBit: UInt32 = 1 << 2
    public static let maxStoreID: UInt32 = (1 << 26) - 1

    /// An entry that holds RSEG `rseg` of store `store`.
    public static func held(store: UInt32, rseg: Int, sp: Bool) -> LMapEntry {
        precondition(store <= maxStoreID && rseg >= 0 && rseg < 8)
        return LMapEntry(raw: mappedBit | (sp ? spBit : 0) | UInt32(rseg) << 3 | store << 6)
    }

    /// An entry whose data lives in the successor.
    public static func sharedWithSuccessor(sp: Bool) -> LMapEntry {
        LMapEntry(raw: mappedBit | ssBit | (sp ? spBit : 0))
    }

    public var isMapped: Bool { raw & Self.mappedBit != 0 }
    public var sp: Bool { raw & Self.spBit != 0 }
    public var ss: Bool { raw & Self.ssBit != 0 }
    /// Mapped with no share bit: writes go in place.
    public var isExclusive: Bool { raw & (Self.mappedBit | Self.spBit | Self.ssBit) == Self.mappedBit }
    /// Mapped with the location here (Ss clear).
    public var holdsData: Bool { isMapped && !ss }
    public var store: UInt32 { raw >> 6 }
    public var rseg: Int { Int((raw >> 3) & 7) }

    public func with(sp: Bool) -> LMapEntry {
        LMapEntry(raw: sp ? raw | Self.spBit : raw & ~Self.spBit)
    }

    /// Entries that violate the packing (Ss set with a location, bits without mapped).
    public var isWellFormed: Bool {
        if !isMapped { return raw == 0 }
        if ss { return raw >> 3 == 0 }
        return true
    }
}
