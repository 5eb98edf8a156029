// How often a simulated drive injects each kind of fault on its own, as a chance per call, so
// that a seeded simulation can sprinkle faults without the test naming each one.

public struct FaultProbabilities: Sendable, Equatable {
    /// A read throws `.io` and fills nothing.
    public var readErrorProbability: Double
    /// A read returns the stored bytes with one bit flipped (the medium keeps the good bytes).
    public var readCorruptionProbability: Double
    /// A write throws `.io` and nothing of it lands.
    public var writeErrorProbability: Double
    /// A write lands whole, but shifted by a random non-zero number of sectors (up to
    /// `misdirectionDistanceSectorsMax`, either way); the intended place keeps its old bytes.
    public var misdirectedWriteProbability: Double
    /// Any call (read, write, zero, sync) finds the drive gone; it and every later call throw `.io`.
    public var disappearanceProbability: Double
    /// The farthest a misdirected write is shifted, in 512-byte sectors.
    public var misdirectionDistanceSectorsMax: UInt64

    public init(
        readErrorProbability: Double = 0,
        readCorruptionProbability: Double = 0,
        writeErrorProbability: Double = 0,
        misdirectedWriteProbability: Double = 0,
        disappearanceProbability: Double = 0,
        misdirectionDistanceSectorsMax: UInt64 = 16
    ) {
        for p in [readErrorProbability, readCorruptionProbability, writeErrorProbability,
                  misdirectedWriteProbability, disappearanceProbability] {
            precondition(p >= 0 && p <= 1, "fault probability \(p) is outside 0...1")
        }
        precondition(misdirectionDistanceSectorsMax > 0, "a misdirected write must move")
        self.readErrorProbability = readErrorProbability
        self.readCorruptionProbability = readCorruptionProbability
        self.writeErrorProbability = writeErrorProbability
        self.misdirectedWriteProbability = misdirectedWriteProbability
        self.disappearanceProbability = disappearanceProbability
        self.misdirectionDistanceSectorsMax = misdirectionDistanceSectorsMax
    }

    /// No fault ever happens by chance (explicit triggers still fire).
    public static let none = FaultProbabilities()
}
