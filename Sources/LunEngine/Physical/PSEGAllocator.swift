// Which PSEGs of each drive belong to an RStore. Rebuilt from the RSD table when a pool opens,
// never stored: a PSEG is in use exactly when some RSD names it, or it is quorum space.

struct PSEGAllocator {
    private var used: [[UInt64]]
    private(set) var freeCount: [Int]
    private(set) var psegCount: [Int]
    private var hint: [Int]
    /// Drives being emptied (`drive remove`): their free PSEGs are not given to new stores.
    private(set) var closedDrives: Set<Int> = []
    private let quorumPSEGs: Int

    /// `psegCount[d]` PSEGs on drive d, the first `quorumPSEGs` of each reserved for metadata.
    init(psegCount: [Int], quorumPSEGs: Int) {
        self.psegCount = psegCount
        self.quorumPSEGs = quorumPSEGs
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

    /// The free PSEGs new stores and moves may take: none on a drive being emptied.
    var allocatableFreeCount: [Int] {
        var free = freeCount
        for d in closedDrives where d < free.count { free[d] = 0 }
        return free
    }

    /// A drive added to the pool, in slot `drive` (the next one): its PSEGs are free at once.
    mutating func addDrive(_ drive: Int, psegs: Int) {
        precondition(drive == psegCount.count, "drives are added in the next slot")
        psegCount.append(psegs)
        used.append([UInt64](repeating: 0, count: (psegs + 63) / 64))
        freeCount.append(psegs)
        hint.append(quorumPSEGs)
        for p in 0..<min(quorumPSEGs, psegs) { markUsed(drive: drive, pseg: p) }
    }

    /// Stops (or resumes) giving a drive's PSEGs to new stores.
    mutating func setClosed(_ drive: Int, _ closed: Bool) {
        if closed { closedDrives.insert(drive) } else { closedDrives.remove(drive) }
    }

    /// PSEGs of a drive held by stores.
    func usedData(drive: Int) -> Int { max(0, psegCount[drive] - quorumPSEGs) - freeCount[drive] }

    /// A drive that holds nothing leaves the pool: it has no PSEGs from now on.
    mutating func retire(drive: Int) {
        precondition(usedData(drive: drive) == 0, "retiring drive \(drive) that holds PSEGs")
        psegCount[drive] = 0
        used[drive] = []
        freeCount[drive] = 0
        closedDrives.remove(drive)
    }
}
