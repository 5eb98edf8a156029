// A small seeded pseudo-random generator (SplitMix64), so that every injected fault and every
// crash outcome of a simulation can be replayed from the one seed the test prints.

public struct SeededRandom: RandomNumberGenerator, Sendable {
    /// The whole generator state; two generators with equal states produce equal sequences.
    public private(set) var state: UInt64

    public init(seed: UInt64) {
        state = seed
    }

    /// The next 64 random bits (SplitMix64, Steele et al. 2014).
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform number in `0..<bound` (Lemire's multiply-shift, rejecting the biased low part).
    /// Written out rather than taken from the standard library, whose algorithm may change.
    public mutating func below(_ bound: UInt64) -> UInt64 {
        precondition(bound > 0, "below(0) has no value to return")
        let threshold = (0 &- bound) % bound
        while true {
            let (high, low) = bound.multipliedFullWidth(by: next())
            if low >= threshold { return high }
        }
    }

    /// True with probability `probability`; 0 and 1 are answered without drawing.
    public mutating func chance(_ probability: Double) -> Bool {
        precondition(probability >= 0 && probability <= 1, "probability \(probability) is outside 0...1")
        if probability == 0 { return false }
        if probability == 1 { return true }
        return Double(next() >> 11) * 0x1p-53 < probability
    }

    /// An independent generator seeded from this one, for a drive or a sub-simulation.
    public mutating func split() -> SeededRandom {
        SeededRandom(seed: next())
    }
}

extension SeededRandom {
    /// `count` random bytes, eight at a time.
    public mutating func bytes(_ count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { raw in
            var i = 0
            while i + 8 <= count { raw.storeBytes(of: next(), toByteOffset: i, as: UInt64.self); i += 8 }
            if i < count {
                var last = next()
                while i < count { raw[i] = UInt8(truncatingIfNeeded: last); last >>= 8; i += 1 }
            }
        }
        return result
    }
}
