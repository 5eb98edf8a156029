// Per-drive error counters since the pool was opened, for `lunfs status`: a failing drive is
// usually seen first as a rising count of read errors, checksum failures or repairs on it
// while redundancy still hides them from users.
import Synchronization

/// One drive's counts. Relaxed atomics: they are figures for people, not for decisions.
final class DriveErrorCounts: Sendable {
    /// Reads the device failed (EIO and the like).
    let readErrors = Atomic<Int>(0)
    /// Writes, zeroings and syncs the device failed (each takes the drive out of service).
    let writeErrors = Atomic<Int>(0)
    /// 4 KiB blocks read back whose checksum did not hold.
    let checksumErrors = Atomic<Int>(0)
    /// Blocks rewritten on this drive from a good copy after a failed read.
    let repairs = Atomic<Int>(0)
}

/// A plain copy of one drive's counts.
public struct DriveErrors: Sendable, Equatable, Codable {
    public var readErrors = 0, writeErrors = 0, checksumErrors = 0, repairs = 0
    public init() {}
    public var total: Int { readErrors + writeErrors + checksumErrors }
}

extension DriveErrorCounts {
    var snapshot: DriveErrors {
        var e = DriveErrors()
        e.readErrors = readErrors.load(ordering: .relaxed)
        e.writeErrors = writeErrors.load(ordering: .relaxed)
        e.checksumErrors = checksumErrors.load(ordering: .relaxed)
        e.repairs = repairs.load(ordering: .relaxed)
        return e
    }
}
