// A read looks up a store's members and then reads their drives, holding no lock (writes hold
// the stripe lock). When a PSEG move switches a member, a read that looked the old PSEG up may
// still be about to read it; the old PSEG can be given to another store only after every such
// read has finished. This gate tells the mover when that is, at the cost of two atomic adds
// per read: reads count themselves in one of two halves before they look members up, and the
// mover, after the switch, waits until each half has been seen empty once. A read that looked
// up the old member counted itself before the switch and stays counted until it ends, so
// both waits cover it. Flipping the half new reads use before each wait keeps new reads from
// starving the mover.
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

final class MemberSwitchGate: Sendable {
    private let half = Atomic<Int>(0)
    private let readers0 = Atomic<Int>(0)
    private let readers1 = Atomic<Int>(0)
    private let flips = Mutex(())

    /// Counts a read in; pass the result to `leave`.
    @inline(__always)
    func enter() -> Int {
        let h = half.load(ordering: .sequentiallyConsistent)
        if h == 0 { readers0.add(1, ordering: .sequentiallyConsistent) } else { readers1.add(1, ordering: .sequentiallyConsistent) }
        return h
    }

    @inline(__always)
    func leave(_ h: Int) {
        if h == 0 { readers0.subtract(1, ordering: .sequentiallyConsistent) } else { readers1.subtract(1, ordering: .sequentiallyConsistent) }
    }

    private func readers(_ h: Int) -> Int {
        h == 0 ? readers0.load(ordering: .sequentiallyConsistent) : readers1.load(ordering: .sequentiallyConsistent)
    }

    /// Returns once every read that could have looked up members before this call has ended.
    /// Caller has already switched the members it cares about.
    func waitForReadsBefore() {
        flips.withLock { _ in
            for _ in 0..<2 {
                let old = half.load(ordering: .sequentiallyConsistent)
                half.store(1 - old, ordering: .sequentiallyConsistent)
                while readers(old) != 0 { usleep(100) }
            }
        }
    }
}
