// The frozen states of a sharing chain (seed 002 claims 2-7 and 17-18, docs/DESIGN.md section
// 8b): a segment number under copy or hand-off is in the no-write (Nw) state, where writes to
// it on any disk of the chain wait and reads go on; while the maps switch to the copy it is
// invalid, where neither reads nor writes may see it. The blocking flag holds all I/O of a
// chain for an operation that needs it still, for a bounded time, then gives up with EBUSY.

/// The state of one frozen segment number of a chain (unfrozen numbers are not listed).
enum SegmentFreeze: Sendable {
    /// Under copy or hand-off: writes wait, reads go on (the family lock is held shared).
    case noWrite
    /// The maps switch to the copy: reads wait too (the family lock is held exclusive).
    case invalid
}

/// The blocking flag of one chain: raised by an operation that must see the chain's maps
/// with no I/O in flight (the snapshot split, a snapclone's last copy pass). While raised
/// it holds new I/O (the chain's lock is writer-preferring, so new readers and writers queue
/// behind it); if in-flight I/O does not drain within the bound, the flag is lowered again
/// and the operation fails with `.busy` (EBUSY), having changed nothing.
final class BlockingFlag: @unchecked Sendable {
    private let reasonLock = Lock()
    private var raisedFor: String?

    /// What the flag is raised for, nil when it is down.
    var reason: String? { reasonLock.withLock { raisedFor } }

    /// Raises the flag and waits up to `timeoutSeconds` for the chain's I/O to drain; on
    /// return the family lock is held exclusive (for a change: the epoch is bumped).
    func raise(on family: SharingFamily, for reason: String, timeoutSeconds: Double) throws(LunError) {
        reasonLock.withLock { raisedFor = reason }
        guard family.lockForChange(timeoutSeconds: timeoutSeconds) else {
            reasonLock.withLock { raisedFor = nil }
            throw .busy("I/O did not drain within \(timeoutSeconds) s for \(reason)")
        }
    }

    /// Lowers the flag and lets the held I/O go on.
    func lower(on family: SharingFamily) {
        reasonLock.withLock { raisedFor = nil }
        family.lock.unlock()
    }
}

/// What `lunfs status --json` and `lunfs check` show of a disk's chain: its frozen segment
/// numbers and its blocking flag. Only a pool open read-write, with I/O running, has any.
public struct FrozenState: Sendable, Equatable, Codable {
    /// Segment numbers in the Nw state (under copy or hand-off: writes wait, reads go on).
    public var noWriteSegments: [Int]
    /// Segment numbers whose maps are switching (invalid: reads and writes wait).
    public var invalidSegments: [Int]
    /// What the blocking flag holds the chain's I/O for, nil when it is down.
    public var blockedFor: String?

    public var isQuiet: Bool { noWriteSegments.isEmpty && invalidSegments.isEmpty && blockedFor == nil }
}
