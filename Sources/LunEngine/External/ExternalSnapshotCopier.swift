// The background copy of snapshots on separate storage (seed 004 [0027]-[0029]): a run of
// blocks of each copying snapshot in turn, on a ThrottledCopyThread (at most half of the
// time). A snapshot found copying at open resumes: its validity map says what is left.
import Synchronization

final class ExternalSnapshotCopier: @unchecked Sendable {
    private var thread: ThrottledCopyThread<DiskID>!
    /// Blocks per step (64 KiB each: 4 MiB, one sync of the file and one of the map).
    let blocksPerStep: Int
    /// Snapshots whose last step failed: one log line each until they copy again.
    private let failing = Mutex<Set<DiskID>>([])

    init(pool: Pool, restFactor: Double = 1, blocksPerStep: Int = 64) {
        self.blocksPerStep = blocksPerStep
        thread = ThrottledCopyThread(
            name: "lunfs-vsscopy", restFactor: restFactor,
            work: { [weak pool] in pool?.copyingExternalSnapshots() },
            step: { [weak pool, unowned self] (id) throws(LunError) in
                guard let pool else { return }
                try pool.copyExternalSnapshot(id, blocks: blocksPerStep)
                _ = failing.withLock { $0.remove(id) }
            },
            failed: { [weak pool, unowned self] id, error in
                if failing.withLock({ $0.insert(id).inserted }) {
                    pool?.log("background copy of snapshot \(id) on separate storage: \(error); trying again every 5 s")
                }
            })
    }

    func start() { thread.start() }
    func wake() { thread.wake() }
    /// Returns once the thread has finished its step and stopped.
    func stop() { thread.stop() }
}
