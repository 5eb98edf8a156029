// What a simulated power loss does to each write that was not yet synced: the weights of its
// five possible fates, a cap on misdirections, and the fate names that crash counters report.

/// The fate of one unsynced write (or zero) at a crash.
public enum CrashOutcome: Sendable, Equatable, CaseIterable {
    /// Every byte reached the medium.
    case landed
    /// The first k of its n sectors reached the medium, 0 < k < n.
    case tornPrefix
    /// A random proper, non-empty subset of its sectors reached the medium (as a drive that
    /// reorders inside a request). A zero's subset is taken as a prefix.
    case tornSubset
    /// Nothing reached the medium.
    case lost
    /// Every byte reached the medium, a non-zero whole number of sectors away from where it was
    /// sent (on the same drive); the intended place keeps the bytes it had.
    case misdirected
}

/// Relative weights of the outcomes; a write of a single sector cannot tear, so a torn roll
/// for it becomes `landed` or `lost` with even odds. A misdirection moves a write by up to the
/// drive's `FaultProbabilities.misdirectionDistanceSectorsMax`; past `misdirectedWritesMax`
/// misdirections on one drive in one crash (or where no shift fits the drive), a misdirected
/// roll lands where it was sent.
public struct CrashTearing: Sendable, Equatable {
    public var landedWeight: UInt64
    public var tornPrefixWeight: UInt64
    public var tornSubsetWeight: UInt64
    public var lostWeight: UInt64
    public var misdirectedWeight: UInt64
    public var misdirectedWritesMax: Int

    public init(landedWeight: UInt64, tornPrefixWeight: UInt64, tornSubsetWeight: UInt64, lostWeight: UInt64,
                misdirectedWeight: UInt64 = 0, misdirectedWritesMax: Int = .max) {
        precondition(landedWeight + tornPrefixWeight + tornSubsetWeight + lostWeight + misdirectedWeight > 0,
                     "all crash weights are zero")
        precondition(misdirectedWritesMax >= 0, "a negative cap on misdirections")
        self.landedWeight = landedWeight
        self.tornPrefixWeight = tornPrefixWeight
        self.tornSubsetWeight = tornSubsetWeight
        self.lostWeight = lostWeight
        self.misdirectedWeight = misdirectedWeight
        self.misdirectedWritesMax = misdirectedWritesMax
    }

    /// Each of the four fates equally likely.
    public static let `default` = CrashTearing(landedWeight: 1, tornPrefixWeight: 1, tornSubsetWeight: 1, lostWeight: 1)
    /// Only what was synced survives (LevelDB's fault-injection model).
    public static let dropUnsynced = CrashTearing(landedWeight: 0, tornPrefixWeight: 0, tornSubsetWeight: 0, lostWeight: 1)
    /// Every write survives whole, as if the crash came just after a sync.
    public static let keepUnsynced = CrashTearing(landedWeight: 1, tornPrefixWeight: 0, tornSubsetWeight: 0, lostWeight: 0)
    /// Every multi-sector write tears, half as prefixes and half as subsets.
    public static let tearAll = CrashTearing(landedWeight: 0, tornPrefixWeight: 1, tornSubsetWeight: 1, lostWeight: 0)

    /// With `misdirectedWeight` 0 the draws are the ones the four-fate model always made, so
    /// seeds recorded before misdirection existed replay the same fates.
    func roll(_ random: inout SeededRandom) -> CrashOutcome {
        var draw = random.below(landedWeight + tornPrefixWeight + tornSubsetWeight + lostWeight + misdirectedWeight)
        if draw < landedWeight { return .landed }
        draw -= landedWeight
        if draw < tornPrefixWeight { return .tornPrefix }
        draw -= tornPrefixWeight
        if draw < tornSubsetWeight { return .tornSubset }
        draw -= tornSubsetWeight
        if draw < lostWeight { return .lost }
        return .misdirected
    }
}
