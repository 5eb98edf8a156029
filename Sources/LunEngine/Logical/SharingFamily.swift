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
//
// The claim is the Nw state of seed 002 (FrozenStates.swift): a claimed segment number takes
// no writes, on any disk of the chain, while reads go on; just before the maps switch the
// claimer marks it invalid (the lock is exclusive then, so reads wait too), and the release
// unfreezes it.

final class SharingFamily: @unchecked Sendable {
    let lock = ReadWriteLock()
    /// Bumped, with the lock held exclusive, by every change to the chain or its maps that
    /// is not a write's own unsharing.
    private(set) var changeEpoch: UInt64 = 0
    /// Segment numbers that writes or the snapclone copy are unsharing right now, and how far.
    private var claimed: [Int: SegmentFreeze] = [:]
    private let claims = Condition()
    /// Holds the chain's I/O for a change that needs it still (the split, the last copy pass).
    let blocking = BlockingFlag()

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
            if segments.contains(where: { claimed[$0] != nil }) { return false }
            for k in segments { claimed[k] = .noWrite }
            return true
        }
    }

    func release(_ segments: [Int]) {
        claims.withLock {
            for k in segments {
                let was = claimed.removeValue(forKey: k)
                assert(was != nil, "segment \(k) released without a claim")
            }
            claims.broadcast()
        }
    }

    func isClaimed(_ segments: [Int]) -> Bool {
        claims.withLock { segments.contains(where: { claimed[$0] != nil }) }
    }

    /// The claimer is about to switch the maps of `segments` (it holds the lock exclusive):
    /// they go from Nw to invalid until released.
    func invalidate(_ segments: [Int]) {
        claims.withLock {
            for k in segments {
                assert(claimed[k] == .noWrite, "segment \(k) switched without a claim")
                claimed[k] = .invalid
            }
        }
    }

    /// The frozen segment numbers and the blocking flag, as they are now.
    func frozenState() -> FrozenState {
        let (noWrite, invalid) = claims.withLock { () -> ([Int], [Int]) in
            (claimed.filter { $0.value == .noWrite }.keys.sorted(), claimed.filter { $0.value == .invalid }.keys.sorted())
        }
        return FrozenState(noWriteSegments: noWrite, invalidSegments: invalid, blockedFor: blocking.reason)
    }

    /// Waits until none of `segments` is claimed. Call it holding no family lock: the
    /// claim's owner needs the lock exclusive to finish.
    func waitUntilUnclaimed(_ segments: [Int]) {
        claims.withLock {
            while segments.contains(where: { claimed[$0] != nil }) { claims.wait() }
        }
    }
}
