// An in-memory drive for crash and fault simulations. It keeps a durable image (what the last
// sync made safe) beside the live one, and the writes since, so that `crash` can cut the power
// and decide from a seed which unsynced sectors survive; and it injects seeded faults: read
// errors, corrupted reads, write and sync errors, misdirected writes, a drive that disappears.
//
// Every fault is either left to chance (`FaultProbabilities`, drawn from the drive's own
// `SeededRandom`) or triggered explicitly (a byte range, a one-shot, `disappear`). Outcomes are
// reproducible from the seed when the calls come in the same order, i.e. from one thread.
// A write can also be held in flight at a `WriteGate`, to put another call beside it.
import LunEngine
import Synchronization

public final class SimulatedDrive: BlockDevice {
    /// Writes tear, and misdirected writes move, in whole sectors of this size.
    public static let sectorSizeBytes: UInt64 = 512

    public let name: String
    public let sizeBytes: UInt64
    private let state: Mutex<State>

    /// A blank (all zeros, fully synced) drive whose chance faults are drawn from `seed`.
    public convenience init(name: String, sizeBytes: UInt64, seed: UInt64, faults: FaultProbabilities = .none) {
        self.init(name: name, sizeBytes: sizeBytes,
                  state: State(image: SparseImage(), probabilities: faults, random: SeededRandom(seed: seed)))
    }

    private init(name: String, sizeBytes: UInt64, state: State) {
        precondition(sizeBytes > 0, "a drive needs a size")
        self.name = name
        self.sizeBytes = sizeBytes
        self.state = Mutex(state)
    }

    // MARK: BlockDevice

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "read past the end of drive \(name)")
        let range = offset..<(offset + UInt64(buffer.count))
        try state.withLock { (s: inout State) throws(LunError) in
            try s.admit(drive: name, call: "read")
            if s.injecting {
                var fails = s.failingReadRanges.contains { $0.overlaps(range) }
                if !fails && s.readErrorsArmed > 0 {
                    s.readErrorsArmed -= 1
                    fails = true
                }
                if fails || s.random.chance(s.probabilities.readErrorProbability) {
                    s.counters.readErrors += 1
                    throw .io("read \(name) at \(offset): injected I/O error")
                }
            }
            s.live.read(into: buffer, at: offset)
            guard s.injecting, !buffer.isEmpty else { return }

            var corrupted = false
            for bad in s.corruptingReadRanges where bad.overlaps(range) {
                // One flipped bit in every sector of the overlap.
                let overlap = range.clamped(to: bad)
                let sectors = SectorPieces(offset: overlap.lowerBound, lengthBytes: UInt64(overlap.count))
                for piece in 0..<sectors.count {
                    let start = sectors.start(ofPiece: piece)
                    let position = start + s.random.below(sectors.end(ofPiece: piece) - start)
                    Self.flipBit(in: buffer, at: Int(position - offset), random: &s.random)
                }
                corrupted = true
            }
            var flipOne = s.readCorruptionsArmed > 0
            if flipOne { s.readCorruptionsArmed -= 1 }
            flipOne = flipOne || s.random.chance(s.probabilities.readCorruptionProbability)
            if flipOne {
                Self.flipBit(in: buffer, at: Int(s.random.below(UInt64(buffer.count))), random: &s.random)
                corrupted = true
            }
            if corrupted { s.counters.corruptedReads += 1 }
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        precondition(offset + UInt64(buffer.count) <= sizeBytes, "write past the end of drive \(name)")
        let range = offset..<(offset + UInt64(buffer.count))
        // Held outside the state lock, so that every other call of this drive goes on meanwhile.
        if let gate = state.withLock({ s in defer { s.gate = nil }; return s.gate }) { gate.pass() }
        try state.withLock { (s: inout State) throws(LunError) in
            try s.admit(drive: name, call: "write")
            var landing = offset
            if s.injecting {
                var fails = s.failingWriteRanges.contains { $0.overlaps(range) }
                if !fails && s.writeErrorsArmed > 0 {
                    s.writeErrorsArmed -= 1
                    fails = true
                }
                if fails || s.random.chance(s.probabilities.writeErrorProbability) {
                    s.counters.writeErrors += 1
                    throw .io("write \(name) at \(offset): injected I/O error")
                }
                var shiftBytes: Int64?
                if !s.misdirectionsArmed.isEmpty {
                    let armed = s.misdirectionsArmed.removeFirst()
                    shiftBytes = armed ?? randomShiftBytes(offset: offset, count: buffer.count, state: &s)
                } else if s.random.chance(s.probabilities.misdirectedWriteProbability) {
                    shiftBytes = randomShiftBytes(offset: offset, count: buffer.count, state: &s)
                }
                if let shiftBytes, shiftBytes != 0 {
                    let target = Int64(offset) + shiftBytes
                    precondition(target >= 0 && UInt64(target) + UInt64(buffer.count) <= sizeBytes,
                                 "misdirected write on \(name) would leave the drive")
                    landing = UInt64(target)
                    s.counters.misdirectedWrites += 1
                }
            }
            s.live.write(buffer, at: landing)
            s.unsynced.append(.write(offset: landing, bytes: Array(buffer)))
            if s.injecting, let remaining = s.writesUntilDisappearance {
                s.writesUntilDisappearance = remaining - 1
                if remaining == 1 { s.vanish() }
            }
        }
    }

    /// Makes the live image durable. An injected sync error leaves the writes unsynced.
    public func sync() throws(LunError) {
        try state.withLock { (s: inout State) throws(LunError) in
            try s.admit(drive: name, call: "sync")
            if s.injecting && s.syncErrorsArmed > 0 {
                s.syncErrorsArmed -= 1
                s.counters.syncErrors += 1
                throw .io("sync \(name): injected I/O error")
            }
            s.syncAll()
        }
    }

    /// Zeros are not subject to write faults, only to disappearance; at a crash they tear
    /// like writes.
    public func zero(at offset: UInt64, length: UInt64) throws(LunError) {
        precondition(offset + length <= sizeBytes, "zero past the end of drive \(name)")
        try state.withLock { (s: inout State) throws(LunError) in
            try s.admit(drive: name, call: "zero")
            guard length > 0 else { return }
            s.live.zero(at: offset, length: length)
            s.unsynced.append(.zero(offset: offset, length: length))
        }
    }

    // MARK: Crash

    /// Cuts the power: the synced image survives exactly, and each unsynced write or zero, in
    /// order, lands whole, torn (a sector prefix or subset), misdirected (whole, some sectors
    /// away) or not at all, as `tearing` weighs them and `seed` draws. Returns a new drive over the surviving bytes, as found after a
    /// reboot (fully synced, present, with this drive's probabilities, byte-range faults,
    /// injecting switch and counters, but no pending one-shots). This drive is dead from then
    /// on: every call throws `.io`, so a stale engine cannot write into the new world.
    public func crash(seed: UInt64, tearing: CrashTearing = .default) -> SimulatedDrive {
        var random = SeededRandom(seed: seed)
        return crash(using: &random, tearing: tearing)
    }

    /// As `crash(seed:tearing:)`, drawing from (and advancing) a shared generator.
    public func crash(using random: inout SeededRandom, tearing: CrashTearing = .default) -> SimulatedDrive {
        let reborn: State = state.withLock { s in
            precondition(s.life != .crashed, "drive \(name) was crashed already; crash the drive its crash returned")
            var image = s.durable
            var counters = s.counters
            counters.crashes += 1
            var misdirections = 0
            for operation in s.unsynced {
                let room = MisdirectionRoom(allowed: misdirections < tearing.misdirectedWritesMax,
                                            distanceSectorsMax: s.probabilities.misdirectionDistanceSectorsMax,
                                            driveSizeBytes: sizeBytes)
                let outcome = operation.land(on: &image, random: &random, tearing: tearing, misdirection: room)
                if outcome == .misdirected { misdirections += 1 }
                counters.count(outcome)
            }
            var next = State(image: image, probabilities: s.probabilities, random: random.split())
            next.injecting = s.injecting
            next.failingReadRanges = s.failingReadRanges
            next.corruptingReadRanges = s.corruptingReadRanges
            next.failingWriteRanges = s.failingWriteRanges
            next.counters = counters
            s.life = .crashed
            s.live = SparseImage()
            s.durable = SparseImage()
            s.unsynced = []
            return next
        }
        return SimulatedDrive(name: name, sizeBytes: sizeBytes, state: reborn)
    }

    /// A new drive holding this drive's durable bytes and nothing unsynced (what a crash that
    /// dropped every unsynced write would leave), with its probabilities, byte-range faults,
    /// injecting switch and counters, drawing chance faults from `seed`. This drive goes on
    /// as it was: a test can run many futures, each on its own copy, from one synced state.
    /// Pages are shared until written, so a copy costs little.
    public func durableCopy(seed: UInt64) -> SimulatedDrive {
        let copy: State = state.withLock { s in
            precondition(s.life != .crashed, "drive \(name) was crashed; copy the drive its crash returned")
            var next = State(image: s.durable, probabilities: s.probabilities, random: SeededRandom(seed: seed))
            next.injecting = s.injecting
            next.failingReadRanges = s.failingReadRanges
            next.corruptingReadRanges = s.corruptingReadRanges
            next.failingWriteRanges = s.failingWriteRanges
            next.counters = s.counters
            return next
        }
        return SimulatedDrive(name: name, sizeBytes: sizeBytes, state: copy)
    }

    // MARK: Chance faults and the master switch

    /// The chances of faults on each call; may be changed at any time.
    public var faultProbabilities: FaultProbabilities {
        get { state.withLock { $0.probabilities } }
        set { state.withLock { $0.probabilities = newValue } }
    }

    /// False after `stopInjecting()`: no fault fires, by chance, by range or by one-shot
    /// (armed one-shots wait, the `disappear(afterWrites:)` count pauses). A drive that has
    /// already disappeared stays gone.
    public var isInjecting: Bool { state.withLock { $0.injecting } }

    /// Silences every fault, e.g. while the engine recovers.
    public func stopInjecting() { state.withLock { $0.injecting = false } }

    public func resumeInjecting() { state.withLock { $0.injecting = true } }

    // MARK: Explicit faults

    /// Reads overlapping `range` (bytes) throw `.io` until `clearRangeFaults()`: a bad spot.
    public func failReads(in range: Range<UInt64>) { state.withLock { $0.failingReadRanges.append(range) } }

    /// Reads overlapping `range` return one flipped bit in each sector of the overlap, a new
    /// bit each read, until `clearRangeFaults()`. The stored bytes stay good.
    public func corruptReads(in range: Range<UInt64>) { state.withLock { $0.corruptingReadRanges.append(range) } }

    /// Writes overlapping `range` throw `.io` and land nothing until `clearRangeFaults()`.
    public func failWrites(in range: Range<UInt64>) { state.withLock { $0.failingWriteRanges.append(range) } }

    public func clearRangeFaults() {
        state.withLock {
            $0.failingReadRanges = []
            $0.corruptingReadRanges = []
            $0.failingWriteRanges = []
        }
    }

    /// The next read throws `.io`. Calls add up: two calls fail two reads.
    public func failNextRead() { state.withLock { $0.readErrorsArmed += 1 } }

    /// The next read that succeeds returns one flipped bit.
    public func corruptNextRead() { state.withLock { $0.readCorruptionsArmed += 1 } }

    /// The next write throws `.io` and lands nothing.
    public func failNextWrite() { state.withLock { $0.writeErrorsArmed += 1 } }

    /// The next sync throws `.io`; the writes it would have made durable stay unsynced.
    public func failNextSync() { state.withLock { $0.syncErrorsArmed += 1 } }

    /// The next write lands `shiftBytes` away from where it was sent (a whole number of sectors,
    /// not 0, inside the drive), or a random number of sectors away when nil.
    public func misdirectNextWrite(shiftBytes: Int64? = nil) {
        if let shiftBytes {
            precondition(shiftBytes != 0 && shiftBytes % Int64(Self.sectorSizeBytes) == 0,
                         "a misdirection is a non-zero whole number of sectors")
        }
        state.withLock { $0.misdirectionsArmed.append(shiftBytes) }
    }

    /// The drive goes away now: every later call throws `.io` (until it is crashed, which
    /// brings back a present drive).
    public func disappear() { state.withLock { $0.vanish() } }

    /// The drive goes away just after `writes` more writes have landed (0: now).
    public func disappear(afterWrites writes: Int) {
        precondition(writes >= 0)
        state.withLock { s in
            if writes == 0 { s.vanish() } else { s.writesUntilDisappearance = writes }
        }
    }

    /// Holds the next write (not a zero) in flight: it blocks inside `write`, before it lands
    /// or meets any fault, until the returned gate is opened. One-shot: the write after it
    /// passes freely. Open the gate on every path of the test, or the writing thread hangs.
    public func holdNextWrite() -> WriteGate {
        let gate = WriteGate()
        state.withLock { $0.gate = gate }
        return gate
    }

    // MARK: Inspection

    /// What was injected so far, summed over this drive and the drives it was crashed from.
    public var counters: FaultCounters { state.withLock { $0.counters } }

    /// False once the drive has disappeared or been crashed.
    public var isPresent: Bool { state.withLock { $0.life == .present } }

    /// Writes and zeros since the last sync, which a crash would put at risk.
    public var unsyncedOperationCount: Int { state.withLock { $0.unsynced.count } }

    /// Memory held by the live and durable images (shared pages counted twice).
    public var residentBytes: Int { state.withLock { $0.live.residentBytes + $0.durable.residentBytes } }

    /// The live bytes at `offset`, bypassing every fault and working on a drive that has
    /// disappeared: for tests that check what the engine put on the medium.
    public func contents(at offset: UInt64, count: Int) -> [UInt8] {
        precondition(offset + UInt64(count) <= sizeBytes, "contents past the end of drive \(name)")
        return state.withLock { s in
            precondition(s.life != .crashed, "drive \(name) was crashed; read the drive its crash returned")
            var bytes = [UInt8](repeating: 0, count: count)
            bytes.withUnsafeMutableBytes { s.live.read(into: $0, at: offset) }
            return bytes
        }
    }

    /// Makes everything written so far durable, whatever faults are set or whether the drive
    /// is present, so that a following crash keeps it all.
    public func makeFullySynced() {
        state.withLock { s in
            precondition(s.life != .crashed, "drive \(name) was crashed; use the drive its crash returned")
            s.syncAll()
        }
    }

    // MARK: Private

    /// A random non-zero sector shift that keeps the write inside the drive, or 0 if none does.
    private func randomShiftBytes(offset: UInt64, count: Int, state s: inout State) -> Int64 {
        let room = MisdirectionRoom(allowed: true, distanceSectorsMax: s.probabilities.misdirectionDistanceSectorsMax,
                                    driveSizeBytes: sizeBytes)
        return room.shiftBytes(offset: offset, lengthBytes: UInt64(count), random: &s.random) ?? 0
    }

    private static func flipBit(in buffer: UnsafeMutableRawBufferPointer, at index: Int, random: inout SeededRandom) {
        buffer[index] ^= UInt8(1) << UInt8(random.below(8))
    }

    private struct State: Sendable {
        enum Life { case present, disappeared, crashed }

        var life = Life.present
        /// What reads see: the durable image with every unsynced operation applied.
        var live: SparseImage
        /// What survives any crash.
        var durable: SparseImage
        var unsynced: [UnsyncedOperation] = []

        var probabilities: FaultProbabilities
        var injecting = true
        var failingReadRanges: [Range<UInt64>] = []
        var corruptingReadRanges: [Range<UInt64>] = []
        var failingWriteRanges: [Range<UInt64>] = []
        var readErrorsArmed = 0
        var readCorruptionsArmed = 0
        var writeErrorsArmed = 0
        var syncErrorsArmed = 0
        /// One entry per armed misdirection, oldest first; nil draws the shift at random.
        var misdirectionsArmed: [Int64?] = []
        var writesUntilDisappearance: Int?
        /// Armed by `holdNextWrite`, taken by the next write.
        var gate: WriteGate?

        var random: SeededRandom
        var counters = FaultCounters()

        init(image: SparseImage, probabilities: FaultProbabilities, random: SeededRandom) {
            live = image
            durable = image
            self.probabilities = probabilities
            self.random = random
        }

        /// Throws if the drive is gone, or goes now by chance.
        mutating func admit(drive: String, call: String) throws(LunError) {
            switch life {
            case .present:
                break
            case .disappeared:
                counters.refusedCalls += 1
                throw .io("\(call) \(drive): the drive has disappeared")
            case .crashed:
                counters.refusedCalls += 1
                throw .io("\(call) \(drive): the drive was crashed (power lost)")
            }
            if injecting && random.chance(probabilities.disappearanceProbability) {
                vanish()
                throw .io("\(call) \(drive): the drive disappeared")
            }
        }

        mutating func vanish() {
            guard life == .present else { return }
            life = .disappeared
            writesUntilDisappearance = nil
            counters.disappearances += 1
        }

        mutating func syncAll() {
            for operation in unsynced { operation.apply(to: &durable) }
            unsynced = []
        }
    }
}
