// The pool's drives as the engine sees them: each slot holds a device, or nothing when the
// drive is missing, and a drive that fails a write is taken out of service for the session
// so that no later read trusts bytes it may not hold.
import Synchronization

final class DriveSet: @unchecked Sendable {
    private let devices: [BlockDevice?]
    private let failed: [AtomicFlag]
    private let dirty: [AtomicFlag]
    /// Errors hidden by redundancy or reported to callers, for `status` and `check`.
    let errorCount = Atomic<Int>(0)
    let log: @Sendable (String) -> Void
    /// Runs the pieces of one large transfer side by side, when every drive allows it.
    let transfers: TransferPool?

    init(devices: [BlockDevice?], log: @escaping @Sendable (String) -> Void) {
        self.devices = devices
        self.failed = devices.map { AtomicFlag($0 == nil) }
        self.dirty = devices.map { _ in AtomicFlag(false) }
        self.log = log
        let parallel = devices.allSatisfy { $0?.takesParallelTransfers ?? true } && devices.contains { $0 != nil }
        self.transfers = parallel ? TransferPool.shared : nil
    }

    var count: Int { devices.count }

    /// The device in slot `i` when it is present and in service.
    func device(_ i: Int) -> BlockDevice? {
        failed[i].value.load(ordering: .acquiring) ? nil : devices[i]
    }

    func isAvailable(_ i: Int) -> Bool { device(i) != nil }

    /// Takes a present drive out of service (a stale drive while it is rebuilt) or puts it back.
    func setInService(_ i: Int, _ on: Bool) {
        failed[i].value.store(!on || devices[i] == nil, ordering: .releasing)
    }
    var availableCount: Int { (0..<count).filter(isAvailable).count }
    var missingCount: Int { count - availableCount }

    /// The device in slot `i` whether or not it is in service (for rebuilding it).
    func devices(_ i: Int) -> BlockDevice? { devices[i] }

    func name(_ i: Int) -> String { devices[i]?.name ?? "drive \(i) (missing)" }

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

    func read(_ i: Int, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        guard let d = device(i) else { throw .io("drive \(i) is not available") }
        try d.read(into: buffer, at: offset)
    }

    /// Writes to a drive; a failing drive is taken out of service and the error rethrown.
    func write(_ i: Int, _ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        guard let d = device(i) else { throw .io("drive \(i) is not available") }
        dirty[i].value.store(true, ordering: .releasing)
        do { try d.write(buffer, at: offset) } catch { markFailed(i, error); throw error }
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
        dirty[i].value.store(true, ordering: .releasing)
        do { try d.zero(at: offset, length: length) } catch { markFailed(i, error); throw error }
    }

    /// fdatasync every drive written since the last call. A drive that fails to sync is taken
    /// out of service and the call fails: the caller must not commit metadata that points at
    /// data which may not be durable.
    func syncDirty() throws(LunError) {
        var failure: LunError?
        for i in 0..<count where dirty[i].value.exchange(false, ordering: .acquiringAndReleasing) {
            guard let d = device(i) else { continue }
            do { try d.sync() } catch { markFailed(i, error); failure = error }
        }
        if let failure { throw failure }
    }

    /// fdatasync one drive (metadata mirrors).
    func sync(_ i: Int) throws(LunError) {
        guard let d = device(i) else { throw .io("drive \(i) is not available") }
        dirty[i].value.store(false, ordering: .releasing)
        do { try d.sync() } catch { markFailed(i, error); throw error }
    }
}

/// An atomic Bool that can live in an array.
final class AtomicFlag: Sendable {
    let value: Atomic<Bool>
    init(_ v: Bool) { value = Atomic(v) }
}
