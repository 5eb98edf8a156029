// The drives of one simulated pool, made and crashed together, so that an engine test reads:
// make drives, format and open the pool, run a workload, crash them all with one seed, reopen.
import LunEngine

public struct SimulatedDriveSet: Sendable {
    /// The current drives, in the order they were made; `crash` replaces them.
    public private(set) var drives: [SimulatedDrive]

    /// `count` blank drives named "\(namePrefix)0", "\(namePrefix)1", ..., each drawing its
    /// chance faults from its own generator split off `seed`.
    public init(count: Int, sizeBytes: UInt64, seed: UInt64, faults: FaultProbabilities = .none,
                namePrefix: String = "sim") {
        precondition(count > 0, "a drive set needs drives")
        var random = SeededRandom(seed: seed)
        drives = (0..<count).map { index in
            SimulatedDrive(name: "\(namePrefix)\(index)", sizeBytes: sizeBytes, seed: random.next(), faults: faults)
        }
    }

    /// The drives as the engine takes them.
    public var devices: [any BlockDevice] { drives }

    public var count: Int { drives.count }

    public subscript(index: Int) -> SimulatedDrive { drives[index] }

    /// Cuts the power to every drive at once (see `SimulatedDrive.crash`), drawing the fates
    /// of all unsynced writes, drive by drive in order, from the one `seed`; the set then holds
    /// the rebooted drives and the old ones throw `.io`.
    public mutating func crash(seed: UInt64, tearing: CrashTearing = .default) {
        var random = SeededRandom(seed: seed)
        drives = drives.map { $0.crash(using: &random, tearing: tearing) }
    }

    /// As `crash(seed:tearing:)`, with each drive's unsynced writes meeting the fates of its
    /// own entry of `tearings` (one per drive, in order): e.g. one drive that misdirects while
    /// the others keep what they were sent.
    public mutating func crash(seed: UInt64, tearings: [CrashTearing]) {
        precondition(tearings.count == drives.count, "one crash tearing per drive")
        var random = SeededRandom(seed: seed)
        drives = zip(drives, tearings).map { $0.crash(using: &random, tearing: $1) }
    }

    /// Independent copies of the drives' durable images (see `SimulatedDrive.durableCopy`),
    /// their chance faults drawn from generators split off `seed`; this set goes on as it was.
    public func durableCopies(seed: UInt64) -> SimulatedDriveSet {
        var random = SeededRandom(seed: seed)
        var copy = self
        copy.drives = drives.map { $0.durableCopy(seed: random.next()) }
        return copy
    }

    public func stopInjecting() { drives.forEach { $0.stopInjecting() } }

    public func resumeInjecting() { drives.forEach { $0.resumeInjecting() } }

    public func makeFullySynced() { drives.forEach { $0.makeFullySynced() } }

    /// The counters of all drives summed.
    public var counters: FaultCounters { drives.reduce(FaultCounters()) { $0 + $1.counters } }
}
