// A write or zero that a simulated drive accepted since its last sync, kept so that a crash can
// decide, sector by sector, which of its bytes reached the medium.

enum UnsyncedOperation: Sendable {
    /// `bytes` landed (in the live image) at `offset`; for a misdirected write, the wrong offset.
    case write(offset: UInt64, bytes: [UInt8])
    case zero(offset: UInt64, length: UInt64)

    var offset: UInt64 {
        switch self {
        case .write(let offset, _), .zero(let offset, _): return offset
        }
    }

    var lengthBytes: UInt64 {
        switch self {
        case .write(_, let bytes): return UInt64(bytes.count)
        case .zero(_, let length): return length
        }
    }

    /// Applies the whole operation, as a sync does.
    func apply(to image: inout SparseImage) {
        applyBytes(offset..<(offset + lengthBytes), to: &image)
    }

    /// Applies what survives a power loss, by a fate rolled from `random`, and returns the fate.
    /// A misdirected roll lands the whole operation shifted inside `misdirection`'s drive, or
    /// where it was sent when misdirection is not allowed or no shift fits.
    func land(on image: inout SparseImage, random: inout SeededRandom, tearing: CrashTearing,
              misdirection: MisdirectionRoom) -> CrashOutcome {
        let sectors = SectorPieces(offset: offset, lengthBytes: lengthBytes)
        var outcome = tearing.roll(&random)
        if sectors.count < 2 && (outcome == .tornPrefix || outcome == .tornSubset) {
            outcome = random.chance(0.5) ? .landed : .lost
        }
        if outcome == .misdirected {
            guard misdirection.allowed, let shift = misdirection.shiftBytes(offset: offset, lengthBytes: lengthBytes, random: &random) else {
                apply(to: &image)
                return .landed
            }
            shifted(by: shift).apply(to: &image)
            return .misdirected
        }
        if case .zero = self, outcome == .tornSubset {
            // A zero may span GiBs of sectors; its subset is drawn as a prefix.
            let prefixSectors = 1 + random.below(sectors.count - 1)
            applyBytes(offset..<sectors.end(ofPiece: prefixSectors - 1), to: &image)
            return outcome
        }
        switch outcome {
        case .landed:
            apply(to: &image)
        case .lost:
            break
        case .misdirected:
            preconditionFailure("a misdirected fate is settled above")
        case .tornPrefix:
            let prefixSectors = 1 + random.below(sectors.count - 1)
            applyBytes(offset..<sectors.end(ofPiece: prefixSectors - 1), to: &image)
        case .tornSubset:
            var landing = (0..<sectors.count).map { _ in random.chance(0.5) }
            if landing.allSatisfy({ $0 }) { landing[Int(random.below(sectors.count))] = false }
            if landing.allSatisfy({ !$0 }) { landing[Int(random.below(sectors.count))] = true }
            for piece in 0..<sectors.count where landing[Int(piece)] {
                applyBytes(sectors.start(ofPiece: piece)..<sectors.end(ofPiece: piece), to: &image)
            }
        }
        return outcome
    }

    /// The same bytes sent `shiftBytes` further (a misdirection).
    private func shifted(by shiftBytes: Int64) -> UnsyncedOperation {
        let target = UInt64(Int64(offset) + shiftBytes)
        switch self {
        case .write(_, let bytes): return .write(offset: target, bytes: bytes)
        case .zero(_, let length): return .zero(offset: target, length: length)
        }
    }

    /// Applies the part of the operation that covers `range` (a sub-range of it).
    private func applyBytes(_ range: Range<UInt64>, to image: inout SparseImage) {
        assert(range.lowerBound >= offset && range.upperBound <= offset + lengthBytes)
        switch self {
        case .write(let offset, let bytes):
            bytes.withUnsafeBytes { all in
                let from = Int(range.lowerBound - offset)
                image.write(UnsafeRawBufferPointer(rebasing: all[from..<(from + range.count)]), at: range.lowerBound)
            }
        case .zero:
            image.zero(at: range.lowerBound, length: UInt64(range.count))
        }
    }
}

/// Where a crash may move a misdirected operation: whole sectors, up to a distance, inside the
/// drive, and only while the crash's cap on misdirections is not reached.
struct MisdirectionRoom {
    let allowed: Bool
    let distanceSectorsMax: UInt64
    let driveSizeBytes: UInt64

    /// A non-zero shift that keeps `offset..<offset+lengthBytes` inside the drive, nil if none does.
    func shiftBytes(offset: UInt64, lengthBytes: UInt64, random: inout SeededRandom) -> Int64? {
        let sector = Int64(SimulatedDrive.sectorSizeBytes)
        let distance = Int64(1 + random.below(distanceSectorsMax)) * sector
        let fits = { (shift: Int64) in
            let target = Int64(offset) + shift
            return target >= 0 && UInt64(target) + lengthBytes <= driveSizeBytes
        }
        let first = random.chance(0.5) ? distance : -distance
        if fits(first) { return first }
        if fits(-first) { return -first }
        return nil
    }
}

/// `offset..<offset+lengthBytes` cut at absolute multiples of the sector size, numbered from 0;
/// an unaligned head or tail is a (short) piece of its own.
struct SectorPieces {
    let offset: UInt64
    let lengthBytes: UInt64
    private let sector = SimulatedDrive.sectorSizeBytes

    var count: UInt64 {
        guard lengthBytes > 0 else { return 0 }
        return (offset + lengthBytes - 1) / sector - offset / sector + 1
    }

    func start(ofPiece piece: UInt64) -> UInt64 {
        assert(piece < count)
        return piece == 0 ? offset : (offset / sector + piece) * sector
    }

    func end(ofPiece piece: UInt64) -> UInt64 {
        assert(piece < count)
        return min(offset + lengthBytes, (offset / sector + piece + 1) * sector)
    }
}
