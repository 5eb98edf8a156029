// The background copy of snapshots on separate storage (seed 004 [0027]-[0029]): one thread
// that copies a run of blocks of each copying snapshot in turn and then rests as long as the
// step took, so the copy takes at most half of the time and user I/O keeps at least half of
// its throughput. It sleeps while nothing copies and wakes when a snapshot is made. A
// snapshot found copying at open resumes: its validity map says what is left.
import Foundation

final class ExternalSnapshotCopier: @unchecked Sendable {
    private weak var pool: Pool?
    private let condition = NSCondition()
    private var stopping = false
    private var woken = false
    private var running = false
    /// Rest after each step, as a multiple of the time the step took (1: half the time copying).
    let restFactor: Double
    /// Blocks per step (64 KiB each: 4 MiB, one sync of the file and one of the map).
    let blocksPerStep: Int

    init(pool: Pool, restFactor: Double = 1, blocksPerStep: Int = 64) {
        self.pool = pool
        self.restFactor = restFactor
        self.blocksPerStep = blocksPerStep
    }

    func start() {
        condition.withLock { running = true }
        let t = Thread { [self] in run() }
        t.name = "lunfs-vsscopy"
        t.start()
    }

    func wake() {
        condition.withLock { woken = true; condition.broadcast() }
    }

    /// Returns once the thread has finished its step and stopped.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running { condition.wait() }
        condition.unlock()
    }

    private func rest(_ seconds: Double) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        let until = Date(timeIntervalSinceNow: seconds)
        while !stopping && !woken && condition.wait(until: until) {}
        woken = false
        return !stopping
    }

    private func run() {
        defer { condition.withLock { running = false; condition.broadcast() } }
        var failing: Set<DiskID> = []
        while let pool, !condition.withLock({ stopping }) {
            let snapshots = pool.copyingExternalSnapshots()
            if snapshots.isEmpty {
                if !rest(2) { return }
                continue
            }
            for id in snapshots {
                let start = Date()
                do {
                    try pool.copyExternalSnapshot(id, blocks: blocksPerStep)
                    failing.remove(id)
                } catch {
                    // One line per snapshot until it copies again, not one every 5 s.
                    if failing.insert(id).inserted { pool.log("background copy of snapshot \(id) on separate storage: \(error); trying again every 5 s") }
                    if !rest(5) { return }
                    continue
                }
                if !rest(Date().timeIntervalSince(start) * restFactor) { return }
            }
        }
    }
}
