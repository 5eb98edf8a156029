// Which users of one RSEG must wait for each other. An RSEG is rows of 4 KiB, one block of
// each column per row (on RAID 5 the row's parity block too). Two in-place writes conflict only
// where their rows meet: each writes a block and then its checksum, and a RAID 5 write reads and
// rewrites its row's parity. So a small write locks just its rows, and the kernel's writeback
// of an image's dirty pages, which arrives in file order with many requests to the same RSEG,
// runs side by side instead of queueing on one lock per RSEG (a 4 KiB write then waited about
// ten times as long as it wrote: docs/PERFORMANCE.md section 7). Work on a whole RSEG (large
// writes, full stripes, a check, a member move) locks the RSEG, which excludes all its rows.
//
// Lock order: an RSEG's lock first (shared for rows, exclusive for the whole), then its rows'
// locks in increasing index. An RSEG's rows take consecutive row-lock indices, so rows are
// always taken in increasing order and two row lockers never wait on each other in a cycle.
// Nothing holds rows or an RSEG and then waits for another RSEG, except a member move, which
// takes the RSEGs of one store exclusive in increasing index.
#if canImport(Glibc)
import Glibc
#endif

final class StripeLocks: @unchecked Sendable {
    /// A row: one checksum block of every column.
    static let rowBytes = ChecksumArea.blockBytes
    /// Writes that touch at most this many rows lock rows; larger ones lock their RSEG.
    static let mostRows = 16

    private static let rsegLockCount = 256
    /// One mutex per cache line, so that neighbouring rows' writers do not share one.
    private static let rowLockStride = 64

    private let rsegLocks: [ReadWriteLock]
    private let rowLocks: UnsafeMutableRawPointer
    private let rowLockCount: Int
    /// Rows in one column of an RSEG.
    let rowsPerRSEG: Int
    /// How many RSEGs' rows fit side by side in the row locks.
    private let rowSlots: Int

    /// What a caller holds, to give back to `unlock`.
    struct Held {
        fileprivate let rseg: Int
        /// The first row lock and how many; 0: the RSEG is held exclusive.
        fileprivate let firstRow: Int
        fileprivate let rows: Int
    }

    init(geometry: PoolGeometry) {
        rowsPerRSEG = max(1, Int(geometry.stripeUnitBytes) / Self.rowBytes)
        // 4,096 row locks: the rows of 64 RSEGs of the default geometry, more for larger RSEGs.
        rowLockCount = max(4096, rowsPerRSEG)
        rowSlots = rowLockCount / rowsPerRSEG
        rsegLocks = (0..<Self.rsegLockCount).map { _ in ReadWriteLock() }
        precondition(MemoryLayout<pthread_mutex_t>.size <= Self.rowLockStride)
        rowLocks = .allocate(byteCount: rowLockCount * Self.rowLockStride, alignment: Self.rowLockStride)
        for i in 0..<rowLockCount {
            let mutex = (rowLocks + i * Self.rowLockStride).bindMemory(to: pthread_mutex_t.self, capacity: 1)
            pthread_mutex_init(mutex, nil)
        }
    }

    deinit {
        for i in 0..<rowLockCount { pthread_mutex_destroy(rowLock(i)) }
        rowLocks.deallocate()
    }

    @inline(__always)
    private func rowLock(_ i: Int) -> UnsafeMutablePointer<pthread_mutex_t> {
        (rowLocks + i * Self.rowLockStride).assumingMemoryBound(to: pthread_mutex_t.self)
    }

    /// The 8 RSEGs of one store take consecutive locks (a member move takes them in order).
    @inline(__always)
    private func rsegIndex(_ store: Int, _ rseg: Int) -> Int { (store &* 8 &+ rseg) & (Self.rsegLockCount - 1) }

    /// RSEG `rseg` of `store` exclusive: no row of it is in use by anyone else.
    func lockRSEG(_ store: Int, _ rseg: Int) -> Held {
        let i = rsegIndex(store, rseg)
        rsegLocks[i].lockExclusive()
        return Held(rseg: i, firstRow: 0, rows: 0)
    }

    /// Rows `rows` (within one column; every column's row of that number) of RSEG `rseg` of
    /// `store`; more than `mostRows` of them lock the whole RSEG.
    func lock(_ store: Int, _ rseg: Int, rows: ClosedRange<Int>) -> Held {
        precondition(rows.lowerBound >= 0 && rows.upperBound < rowsPerRSEG, "rows \(rows) of an RSEG of \(rowsPerRSEG)")
        guard rows.count <= Self.mostRows else { return lockRSEG(store, rseg) }
        let i = rsegIndex(store, rseg)
        rsegLocks[i].lockShared()
        let slot = Int((UInt64(truncatingIfNeeded: store &* 8 &+ rseg) &* 0x9E37_79B9_7F4A_7C15) >> 40) % rowSlots
        let first = slot * rowsPerRSEG + rows.lowerBound
        for r in first..<first + rows.count { pthread_mutex_lock(rowLock(r)) }
        return Held(rseg: i, firstRow: first, rows: rows.count)
    }

    /// The rows a byte range `within..<within+count` of one column falls in.
    @inline(__always)
    static func rows(within: Int, count: Int) -> ClosedRange<Int> {
        (within / rowBytes)...((within + count - 1) / rowBytes)
    }

    func unlock(_ held: Held) {
        if held.rows > 0 {
            for r in (held.firstRow..<held.firstRow + held.rows).reversed() { pthread_mutex_unlock(rowLock(r)) }
        }
        rsegLocks[held.rseg].unlock()
    }

    @inline(__always)
    func withRSEG<T, E: Error>(_ store: Int, _ rseg: Int, _ body: () throws(E) -> T) throws(E) -> T {
        let held = lockRSEG(store, rseg)
        defer { unlock(held) }
        return try body()
    }

    @inline(__always)
    func withRows<T, E: Error>(_ store: Int, _ rseg: Int, _ rows: ClosedRange<Int>, _ body: () throws(E) -> T) throws(E) -> T {
        let held = lock(store, rseg, rows: rows)
        defer { unlock(held) }
        return try body()
    }
}
