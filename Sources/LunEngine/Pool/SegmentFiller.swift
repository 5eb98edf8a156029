// The background fill of a mounted pool's partial segments (docs/DESIGN.md section 8,
// "Partial segments"): one partial segment per step on a ThrottledCopyThread, so the fill
// takes at most half of the time and user I/O keeps the rest. It takes segments that have
// been partial for `Pool.partialFillDelaySeconds`; with none, it looks again every 2 s.

final class SegmentFiller: @unchecked Sendable {
    private var thread: ThrottledCopyThread<Int>!

    init(pool: Pool, restFactor: Double = 1) {
        thread = ThrottledCopyThread(
            name: "lunfs-fill", restFactor: restFactor,
            // The fill has one queue for the whole pool: its one item is 0.
            work: { [weak pool] in
                pool.map { $0.partialSegments(minimumAgeSeconds: Pool.partialFillDelaySeconds).isEmpty ? [] : [0] }
            },
            step: { [weak pool] (_) throws(LunError) in
                _ = try pool?.fillPartialSegments(limit: 1, minimumAgeSeconds: Pool.partialFillDelaySeconds)
            },
            failed: { [weak pool] _, error in pool?.log("filling partial segments: \(error); trying again in 5 s") })
    }

    func start() { thread.start() }
    /// Returns once the thread has finished its step and stopped.
    func stop() { thread.stop() }
}
