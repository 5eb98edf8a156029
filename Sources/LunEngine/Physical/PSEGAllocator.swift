// Which PSEGs of each drive belong to an RStore. Rebuilt from the RSD table when a pool opens,
// never stored: a PSEG is in use exactly when some RSD names it, or it is quorum space.

struct PSEGAllocator {
    private var used: [[UInt64]]
    private(set) var freeCount: [Int]
    let psegCount: [Int]
    private var hint: [Int]

    /// `psegCount[d]` PSEGs on drive d, the first `quorumPSEGs` of each reserved for metadata.
    init(psegCount: [Int], quorumPSEGs: Int) {
        self.psegCount = psegCount
        used = psegCount.map { [UInt64](repeating: 0, count: ($0 + 63) / 64) }
        freeCount = psegCount
        hint = psegCount.map { _ in quorumPSEGs }
        for d in 0..<psegCount.count {
            for p in 0..<min(quorumPSEGs, psegCount[d]) { markUsed(drive: d, pseg: p) }
        }
    }

    func isUsed(drive: Int, pseg: Int) -> Bool { used[drive][pseg / 64] & (1 << UInt64(pseg % 64)) != 0 }

    mutating func markUsed(drive: Int, pseg: Int) {
        precondition(!isUsed(drive: drive, pseg: pseg), "PSEG \(drive):\(pseg) used twice")
        used[drive][pseg / 64] |= 1 << UInt64(pseg % 64)
        freeCount[drive] -= 1
    }

    mutating func release(drive: Int, pseg: Int) {
        precondition(isUsed(drive: drive, pseg: pseg), "PSEG \(drive):\(pseg) freed twice")
        used[drive][pseg / 64] &= ~(1 << UInt64(pseg % 64))
        freeCount[drive] += 1
        hint[drive] = min(hint[drive], pseg)
    }

    /// Takes the lowest free PSEG of a drive.
    mutating func take(drive: Int) -> Int? {
        guard freeCount[drive] > 0 else { return nil }
        var word = hint[drive] / 64
        let words = used[drive]
        while word < words.count {
            let free = ~words[word]
            if free != 0 {
                let p = word * 64 + free.trailingZeroBitCount
                if p >= psegCount[drive] { break }
                markUsed(drive: drive, pseg: p)
                hint[drive] = p + 1
                return p
            }
            word += 1
        }
        return nil
    }

    var totalFree: Int { freeCount.reduce(0, +) }
}
