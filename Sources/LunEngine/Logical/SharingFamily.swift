// What the disks of one sharing chain have in common: the read-write lock that guards their
// maps, and what lets a write copy a shared segment without holding that lock exclusive.
//
// A write that must unshare segments plans and copies with the lock taken shared, so reads
// and in-place writes of the whole chain go on meanwhile; it takes the lock exclusive only
// to switch the maps. Two things keep its plan true across that switch: it claims the
// segment numbers it unshares (any other write to the same segment number of any disk in
// the chain waits for the claim), and it compares the chain's change epoch, which every
// other map change (snapshot, delete, resize, discard) bumps; a changed epoch means "plan
// again".

final class SharingFamily: @unchecked Sendable {
    let lock = ReadWriteLock()
    /// Bumped, with the lock held exclusive, by every change to the chain or its maps that
    /// is not a write's own unsharing.
    private(set) var changeEpoch: UInt64 = 0
    /// Segment numbers that writes are unsharing right now.
    private var claimed = Set<Int>()
    private let claims = Condition()

    /// Takes the lock exclusive for a change to the chain or to maps outside the write path.
    func lockForChange() {
        lock.lockExclusive()
        changeEpoch &+= 1
    }

    /// The same, giving up after `seconds` (false).
    func lockForChange(timeoutSeconds seconds: Double) -> Bool {
        guard lock.lockExclusive(timeoutSeconds: seconds) else { return false }
        changeEpoch &+= 1
        return true
    }

    /// Claims every segment number in `segments`, or none if one is already claimed.
    func claim(_ segments: [Int]) -> Bool {
        claims.withLock {
            if segments.contains(where: { claimed.contains($0) }) { return false }
            claimed.formUnion(segments)
            return true
        }
    }

    func release(_ segments: [Int]) {
        claims.withLock {
            for k in segments {
                let was = claimed.remove(k)
                assert(was != nil, "segment \(k) released without a claim")
            }
            claims.broadcast()
        }
    }

    func isClaimed(_ segments: [Int]) -> Bool {
        claims.withLock { segments.contains(where: { claimed.contains($0) }) }
    }

    /// Waits until none of `segments` is claimed. Call it holding no family lock: the
    /// claim's owner needs the lock exclusive to finish.
    func waitUntilUnclaimed(_ segments: [Int]) {
        claims.withLock {
            while segments.contains(where: { claimed.contains($0) }) { claims.wait() }
        }
    }
}
