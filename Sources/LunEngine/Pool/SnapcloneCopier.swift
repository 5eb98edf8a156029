// The background copy (BGCOPY) of a mounted pool's snapclones: one thread that copies one
// segment of each copying snapclone in turn and then rests as long as the copy took, so the
// copy takes at most half of the time and user I/O to the same drives keeps at least half of
// its throughput. It sleeps while no snapclone is copying and wakes when one is made.
import Foundation

final class SnapcloneCopier: @unchecked Sendable {
    private weak var pool: Pool?
    private let condition = NSCondition()
    private var stopping = false
    private var woken = false
    private var running = false
    /// Rest after each step, as a multiple of the time the step took (1: half the time copying).
    let restFactor: Double

    init(pool: Pool, restFactor: Double = 1) {
        self.pool = pool
        self.restFactor = restFactor
    }

    func start() {
        condition.withLock { running = true }
        let t = Thread { [self] in run() }
        t.name = "lunfs-bgcopy"
        t.start()
    }

    /// A snapclone was made: look again now.
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

    /// Waits up to `seconds`, or until woken or stopped; false once stopping.
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
        while let pool, !condition.withLock({ stopping }) {
            let clones = pool.copyingSnapclones()
            if clones.isEmpty {
                if !rest(2) { return }
                continue
            }
            for id in clones {
                let start = Date()
                do {
                    try pool.copySnapclone(id, segments: 1)
                } catch {
                    pool.log("background copy of disk \(id): \(error); trying again in 5 s")
                    if !rest(5) { return }
                    continue
                }
                if !rest(Date().timeIntervalSince(start) * restFactor) { return }
            }
        }
    }
}
