// The background copy (BGCOPY) of a mounted pool's snapclones: one segment of each copying
// snapclone in turn, on a ThrottledCopyThread (at most half of the time), and the rate of each
// copy over the last seconds, which `lunfs status` turns into time left.
import Foundation
import Synchronization

final class SnapcloneCopier: @unchecked Sendable {
    private var thread: ThrottledCopyThread<DiskID>!
    /// Per copying snapclone, (time, segments copied) after its steps of the last `rateWindow`
    /// seconds: the rate `lunfs status` turns into time left.
    private let samples = Mutex<[DiskID: [(time: Double, copied: Int)]]>([:])
    static let rateWindow = 10.0

    init(pool: Pool, restFactor: Double = 1) {
        thread = ThrottledCopyThread(
            name: "lunfs-bgcopy", restFactor: restFactor,
            work: { [weak pool] in pool?.copyingSnapclones() },
            step: { [weak pool, unowned self] (id) throws(LunError) in
                guard let pool else { return }
                record(id, try pool.copySnapclone(id, segments: 1))
            },
            failed: { [weak pool] id, error in pool?.log("background copy of disk \(id): \(error); trying again in 5 s") })
    }

    func start() { thread.start() }
    /// A snapclone was made: look again now.
    func wake() { thread.wake() }
    /// Returns once the thread has finished its step and stopped.
    func stop() { thread.stop() }

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
}
