// The background copy (BGCOPY) of a mounted pool's snapclones: one thread that copies one
// segment of each copying snapclone in turn and then rests as long as the copy took, so the
// copy takes at most half of the time and user I/O to the same drives keeps at least half of
// its throughput. It sleeps while no snapclone is copying and wakes when one is made.
import Foundation
import Synchronization

final class SnapcloneCopier: @unchecked Sendable {
    private weak var pool: Pool?
    private let condition = NSCondition()
    private var stopping = false
    private var woken = false
    private var running = false
    /// Rest after each step, as a multiple of the time the step took (1: half the time copying).
    let restFactor: Double
    /// Per copying snapclone, (time, segments copied) after its steps of the last `rateWindow`
    /// seconds: the rate `lunfs status` turns into time left.
    private let samples = Mutex<[DiskID: [(time: Double, copied: Int)]]>([:])
    static let rateWindow = 10.0

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

    private func record(_ id: DiskID, _ progress: CopyProgress) {
        let now = Date().timeIntervalSince1970
        samples.withLock { all in
            if progress.independent { all[id] = nil; return }
            var list = all[id] ?? []
            list.append((now, progress.copied))
            list.removeAll { now - $0.time > Self.rateWindow }
            all[id] = list
        }
    }

    /// Segments per second the copy of `id` made over the last `rateWindow` seconds; nil until
    /// two steps a second or more apart were seen.
    func segmentsPerSecond(_ id: DiskID) -> Double? {
        samples.withLock { all in
            guard let list = all[id], let first = list.first, let last = list.last, last.time - first.time >= 1 else { return nil }
            return max(0, Double(last.copied - first.copied)) / (last.time - first.time)
        }
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
                    let progress = try pool.copySnapclone(id, segments: 1)
                    record(id, progress)
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
