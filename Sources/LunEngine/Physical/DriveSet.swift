// The pool's drives as the engine sees them: each slot holds a device, or nothing when the
// drive is missing, and a drive that fails a write is taken out of service for the session
// so that no later read trusts bytes it may not hold. Slots are allocated for the most drives
// a pool can have, so that a drive added while the pool serves I/O only fills a slot
// (`install`) and a removed one only leaves it (`retire`): readers never see an array change.
import Synchronization

final class DriveSet: @unchecked Sendable {
    /// The most slots a pool has (the stale mask of the superblock has 64 bits).
    static let maxDrives = 64
    /// One device per slot; a slot is written only before it is published (`install`).
    private let devices: UnsafeMutablePointer<BlockDevice?>
    private let failed: [AtomicFlag]
    /// Slots whose drive was removed from the pool: never read, not missing.
    private let retired: [AtomicFlag]
    /// Slots in use (members, missing drives and retired slots); published after a slot is filled.
    private let slotCount: Atomic<Int>
    /// Byte offset of each slot's checksum area (BlockChecksums, ChecksumPages), set with its device.
    private let areaStarts: UnsafeMutablePointer<UInt64>
    /// What a commit must sync, per drive: two counters, not a dirty flag. `completed` counts
    /// the writes and zeros to the drive that have RETURNED (bumped after the device call,
    /// never before it); `synced` is the largest value of `completed` that a finished device
    /// sync covers: a sync reads `completed` before it calls the device and raises `synced` to
    /// what it read only after the device sync returned.
    /// Invariant: the first `synced` writes to return are durable.
    ///
    /// Why no interleaving of `write`, `syncDirty` and `sync(i)` loses a write W, with no lock
    /// among them. A caller that saw W return and then asks for a sync reads `completed` = c,
    /// and c counts W (W's bump came before W returned). If `synced` >= c, a sync S read
    /// `completed` >= c, hence after W returned, and S's device call (after that read) has
    /// returned: W is durable. Otherwise this call syncs the device itself, after W returned.
    /// A write still in flight during a sync is either not yet counted, so the sync cannot
    /// raise `synced` over it, or counted, so it had returned before the sync's device call.
    /// The dirty flag this replaces was set before the device write and cleared by a commit's
    /// sync that could run while the write was in flight; the next fsync then skipped the
    /// drive although the write landed after that sync. Two syncs at once each compare with
    /// `synced` as a *finished* sync left it, so neither skips a drive because the other has
    /// only started; `synced` only grows, so a slow sync that read less cannot lower it.
    private let counts: [SyncCounts]
    /// Errors hidden by redundancy or reported to callers, for `status` and `check`.
    let errorCount = Atomic<Int>(0)
    /// The same errors per drive and by kind (DriveErrorCounters.swift).
    let errorCounts: [DriveErrorCounts]
    let log: @Sendable (String) -> Void
    /// Runs the pieces of one large transfer side by side, when every drive allows it.
    let transfers: TransferPool?

    init(devices given: [BlockDevice?], log: @escaping @Sendable (String) -> Void) {
        precondition(given.count <= Self.maxDrives, "a pool has at most \(Self.maxDrives) drives")
        let capacity = Self.maxDrives
        devices = .allocate(capacity: capacity)
        devices.initialize(repeating: nil, count: capacity)
        areaStarts = .allocate(capacity: capacity)
        areaStarts.initialize(repeating: 0, count: capacity)
        for (i, d) in given.enumerated() { devices[i] = d }
        self.failed = (0..<capacity).map { AtomicFlag($0 >= given.count || given[$0] == nil) }
        self.retired = (0..<capacity).map { _ in AtomicFlag(false) }
        self.counts = (0..<capacity).map { _ in SyncCounts() }
        self.errorCounts = (0..<capacity).map { _ in DriveErrorCounts() }
        self.slotCount = Atomic(given.count)
        self.log = log
        let parallel = given.allSatisfy { $0?.takesParallelTransfers ?? true } && given.contains { $0 != nil }
        self.transfers = parallel ? TransferPool.shared : nil
    }

    deinit {
        devices.deinitialize(count: Self.maxDrives)
        devices.deallocate()
        areaStarts.deallocate()
    }

    /// Where slot `i`'s checksum area starts (section 12 of DESIGN.md).
    @inline(__always) func checksumAreaStart(_ i: Int) -> UInt64 { areaStarts[i] }

    /// Sets the checksum areas of the slots there are, before the pool serves I/O.
    func setChecksumAreaStarts(_ starts: [UInt64]) {
        precondition(starts.count == count)
        for (i, s) in starts.enumerated() {
            areaStarts[i] = s
            devices[i]?.mapForTinyWrites(from: s)
        }
    }

    var count: Int { slotCount.load(ordering: .acquiring) }

    /// The device in slot `i` when it is present and in service.
    func device(_ i: Int) -> BlockDevice? {
        failed[i].value.load(ordering: .acquiring) ? nil : devices[i]
    }

    /// Fills the next slot with a new drive, in service, and returns its index. The caller
    /// (Pool+Drives.swift) serialises membership changes and makes the slot durable.
    func install(_ device: BlockDevice, checksumAreaStart: UInt64) -> Int {
        let i = slotCount.load(ordering: .acquiring)
        precondition(i < Self.maxDrives, "no free drive slot")
        precondition(devices[i] == nil)
        devices[i] = device
        areaStarts[i] = checksumAreaStart
        device.mapForTinyWrites(from: checksumAreaStart)
        failed[i].value.store(false, ordering: .releasing)
        slotCount.store(i + 1, ordering: .releasing)
        return i
    }

    /// Takes a slot out of the pool for good: it is never read or written again and does not
    /// count as missing.
    func retire(_ i: Int) {
        retired[i].value.store(true, ordering: .releasing)
        failed[i].value.store(true, ordering: .releasing)
    }

    func isRetired(_ i: Int) -> Bool { retired[i].value.load(ordering: .acquiring) }

    /// Slots that hold (or should hold) a drive of the pool: every slot but the retired ones.
    var memberSlots: [Int] { (0..<count).filter { !isRetired($0) } }

    func isAvailable(_ i: Int) -> Bool { device(i) != nil }

    /// Takes a present drive out of service (a stale drive while it is rebuilt) or puts it back.
    func setInService(_ i: Int, _ on: Bool) {
        failed[i].value.store(!on || devices[i] == nil || isRetired(i), ordering: .releasing)
    }
    var availableCount: Int { (0..<count).filter(isAvailable).count }
    /// Member slots without a drive in service (retired slots are not missing).
    var missingCount: Int { memberSlots.count - availableCount }

    /// The device in slot `i` whether or not it is in service (for rebuilding it).
    func devices(_ i: Int) -> BlockDevice? { devices[i] }

    func name(_ i: Int) -> String { devices[i]?.name ?? (isRetired(i) ? "drive \(i) (removed)" : "drive \(i) (missing)") }

    /// Set when a drive leaves service: the next commit writes a checkpoint, whose superblock
    /// records the drive as stale.
    let serviceChanged = AtomicFlag(false)

    func markFailed(_ i: Int, _ why: LunError) {
        if !failed[i].value.exchange(true, ordering: .acquiringAndReleasing) {
            log("drive \(i) (\(name(i))) taken out of service: \(why)")
            serviceChanged.value.store(true, ordering: .releasing)
        }
        errorCount.add(1, ordering: .relaxed)
    }

    func noteError() { errorCount.add(1, ordering: .relaxed) }

    private func noteWriteError(_ i: Int) { errorCounts[i].writeErrors.add(1, ordering: .relaxed) }

    func read(_ i: Int, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        guard let d = device(i) else { throw .io("drive \(i) is not available") }
        do { try d.read(into: buffer, at: offset) } catch {
            errorCounts[i].readErrors.add(1, ordering: .relaxed)
            throw error
        }
    }

    /// Writes to a drive; a failing drive is taken out of service and the error rethrown.
    /// `keepInCache`: the engine will read the range back soon (BlockDevice).
    func write(_ i: Int, _ buffer: UnsafeRawBufferPointer, at offset: UInt64, keepInCache: Bool = false) throws(LunError) {
        guard let d = device(i) else { throw .io("drive \(i) is not available") }
        do { try d.write(buffer, at: offset, keepInCache: keepInCache) } catch { noteWriteError(i); markFailed(i, error); throw error }
        counts[i].completed.add(1, ordering: .releasing)
    }

    /// Whether `writeAll` may use io_uring (LUNFS_DRIVE_URING=0 says no; a test compares both).
    var usesRing = DriveSubmission.ringEnabled
    /// Writes the ring made whole, and batches whose `whileInFlight` ran before the ring had
    /// waited for any of their writes (for tests).
    let ringWrites = Atomic<Int>(0)
    let workWhileInFlight = Atomic<Int>(0)

    /// Makes every write of a batch and returns what each threw. Direct writes to file drives
    /// go together through this thread's io_uring (DriveSubmission) when `usesRing`; the
    /// others, and the rest of any the ring did not finish, go through `write`, side by side
    /// on the transfer pool when `sideBySide` asks and the drives allow it. A write the ring
    /// failed is made again by `write`, which takes the drive out of service if it fails again.
    /// `whileInFlight` is called once, for work that needs the buffers but not the writes'
    /// result: while the ring's writes are in flight, or else before the others are made.
    func writeAll(_ writes: [DriveWrite], sideBySide: Bool, whileInFlight: () -> Void = {}) -> [LunError?] {
        var rest: [(index: Int, done: Int)] = []
        let submitted = usesRing ? DriveSubmission.submit(writes, device: device, whileInFlight: whileInFlight) : nil
        if submitted?.workDone != true { whileInFlight() }
        if submitted?.workInFlight == true { workWhileInFlight.add(1, ordering: .relaxed) }
        if let made = submitted?.made {
            for (i, w) in writes.enumerated() {
                if let n = made[i], n == w.data.count {
                    counts[w.drive].completed.add(1, ordering: .releasing)
                    ringWrites.add(1, ordering: .relaxed)
                } else {
                    rest.append((i, max(made[i] ?? 0, 0)))
                }
            }
        } else {
            rest = writes.indices.map { ($0, 0) }
        }
        let errors = UnsafeMutableBufferPointer<LunError?>.allocate(capacity: writes.count)
        errors.initialize(repeating: nil)
        defer { errors.deinitialize(); errors.deallocate() }
        let finish = { (k: Int) in
            let (i, done) = rest[k], w = writes[i]
            do throws(LunError) {
                try self.write(w.drive, UnsafeRawBufferPointer(rebasing: w.data[done...]), at: w.offset + UInt64(done),
                               keepInCache: w.keepInCache)
            } catch { errors[i] = error }
        }
        if sideBySide, let pool = transfers, rest.count > 1 {
            pool.run(rest.count, finish)
        } else {
            for k in rest.indices { finish(k) }
        }
        return Array(errors)
    }

    func write(_ i: Int, bytes: [UInt8], at offset: UInt64) throws(LunError) {
        try typed { try bytes.withUnsafeBytes { try write(i, $0, at: offset) } }
    }

    func readBytes(_ i: Int, count: Int, at offset: UInt64) throws(LunError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try typed { try bytes.withUnsafeMutableBytes { try read(i, into: $0, at: offset) } }
        return bytes
    }

    /// Starts reading a range in the background, if the drive can (a hint; never fails).
    func prefetch(_ i: Int, at offset: UInt64, length: Int) {
        device(i)?.prefetch(at: offset, length: length)
    }

    func zero(_ i: Int, at offset: UInt64, length: UInt64) throws(LunError) {
        guard let d = device(i) else { throw .io("drive \(i) is not available") }
        do { try d.zero(at: offset, length: length) } catch { noteWriteError(i); markFailed(i, error); throw error }
        counts[i].completed.add(1, ordering: .releasing)
    }

    /// fdatasync every drive with a write that returned and no finished sync since. Every
    /// write that returned before this call is durable when it returns. A drive that fails to
    /// sync is taken out of service and the call fails: the caller must not commit metadata
    /// that points at data which may not be durable.
    func syncDirty() throws(LunError) {
        var failure: LunError?
        for i in 0..<count {
            let upTo = counts[i].completed.load(ordering: .acquiring)
            guard upTo != counts[i].synced.load(ordering: .acquiring), let d = device(i) else { continue }
            do { try d.sync(); noteSynced(i, upTo) } catch { noteWriteError(i); markFailed(i, error); failure = error }
        }
        if let failure { throw failure }
    }

    /// fdatasync one drive (metadata mirrors), whatever the counters say.
    func sync(_ i: Int) throws(LunError) {
        guard let d = device(i) else { throw .io("drive \(i) is not available") }
        let upTo = counts[i].completed.load(ordering: .acquiring)
        do { try d.sync() } catch { noteWriteError(i); markFailed(i, error); throw error }
        noteSynced(i, upTo)
    }

    /// Raises `synced[i]` to `upTo` (never lowers it: a slower sync that read a smaller count
    /// may finish after a faster one).
    private func noteSynced(_ i: Int, _ upTo: UInt64) {
        var seen = counts[i].synced.load(ordering: .relaxed)
        while seen < upTo {
            let (done, now) = counts[i].synced.compareExchange(expected: seen, desired: upTo, ordering: .acquiringAndReleasing)
            if done { return }
            seen = now
        }
    }
}

/// One drive's `completed` and `synced` counts (see `DriveSet.counts`).
final class SyncCounts: Sendable {
    let completed = Atomic<UInt64>(0)
    let synced = Atomic<UInt64>(0)
}

/// An atomic Bool that can live in an array.
final class AtomicFlag: Sendable {
    let value: Atomic<Bool>
    init(_ v: Bool) { value = Atomic(v) }
}
