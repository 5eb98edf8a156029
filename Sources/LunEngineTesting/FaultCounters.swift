// A tally of every fault a simulated drive injected and of how its unsynced writes fared at
// crashes, so that a simulation can print what it put the engine through.

public struct FaultCounters: Sendable, Equatable, CustomStringConvertible {
    public var readErrors = 0
    public var corruptedReads = 0
    public var writeErrors = 0
    public var misdirectedWrites = 0
    public var syncErrors = 0
    /// Times a drive went away (at most once per drive between crashes).
    public var disappearances = 0
    /// Calls refused because the drive had disappeared or been crashed.
    public var refusedCalls = 0
    public var crashes = 0
    /// Unsynced writes and zeros by their fate at a crash.
    public var crashLanded = 0
    public var crashTornPrefix = 0
    public var crashTornSubset = 0
    public var crashLost = 0
    public var crashMisdirected = 0

    public init() {}

    /// Faults injected into calls: errors, corruptions, misdirections and disappearances
    /// (refused calls and crash fates are not counted again here).
    public var faultsInjected: Int {
        readErrors + corruptedReads + writeErrors + misdirectedWrites + syncErrors + disappearances
    }

    mutating func count(_ outcome: CrashOutcome) {
        switch outcome {
        case .landed: crashLanded += 1
        case .tornPrefix: crashTornPrefix += 1
        case .tornSubset: crashTornSubset += 1
        case .lost: crashLost += 1
        case .misdirected: crashMisdirected += 1
        }
    }

    public static func + (a: FaultCounters, b: FaultCounters) -> FaultCounters {
        var sum = FaultCounters()
        sum.readErrors = a.readErrors + b.readErrors
        sum.corruptedReads = a.corruptedReads + b.corruptedReads
        sum.writeErrors = a.writeErrors + b.writeErrors
        sum.misdirectedWrites = a.misdirectedWrites + b.misdirectedWrites
        sum.syncErrors = a.syncErrors + b.syncErrors
        sum.disappearances = a.disappearances + b.disappearances
        sum.refusedCalls = a.refusedCalls + b.refusedCalls
        sum.crashes = a.crashes + b.crashes
        sum.crashLanded = a.crashLanded + b.crashLanded
        sum.crashTornPrefix = a.crashTornPrefix + b.crashTornPrefix
        sum.crashTornSubset = a.crashTornSubset + b.crashTornSubset
        sum.crashLost = a.crashLost + b.crashLost
        sum.crashMisdirected = a.crashMisdirected + b.crashMisdirected
        return sum
    }

    public var description: String {
        "faults injected \(faultsInjected) (read errors \(readErrors), corrupted reads \(corruptedReads), "
            + "write errors \(writeErrors), misdirected writes \(misdirectedWrites), sync errors \(syncErrors), "
            + "disappearances \(disappearances)); refused calls \(refusedCalls); crashes \(crashes) "
            + "(unsynced writes landed \(crashLanded), torn prefix \(crashTornPrefix), "
            + "torn subset \(crashTornSubset), lost \(crashLost), misdirected \(crashMisdirected))"
    }
}
