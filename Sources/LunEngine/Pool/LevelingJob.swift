// The background leveling of a mounted pool: one PSEG move per step on a ThrottledCopyThread
// (at most half of the time, so user I/O keeps at least half of its throughput), woken when
// drives join or leave, registered as a PoolJob while there is work so that `lunfs status`
// shows its bar, bytes done and left, rate and time left. What each step moves is chosen by
// Leveling.swift from the state as it is, so the job needs no memory of its own across a crash.
import Foundation
import Synchronization

final class LevelingJob: @unchecked Sendable {
    private var thread: ThrottledCopyThread<Int>!
    /// The PoolJob shown while leveling has work, and the bytes it moved so far.
    private let shown = Mutex<(id: Int, done: UInt64)?>(nil)

    init(pool: Pool, restFactor: Double = 1) {
        thread = ThrottledCopyThread(
            name: "lunfs-leveling", restFactor: restFactor,
            work: { [weak pool, unowned self] in
                guard let pool else { return nil }
                let backlog = pool.levelingBacklog()
                if backlog.isLevel || pool.levelingBlocked() { finish(pool); return [] }
                return [0]
            },
            step: { [weak pool, unowned self] (_: Int) throws(LunError) in
                guard let pool else { return }
                let moved = try pool.levelingStep()
                record(pool, moved: moved ?? 0)
                if moved == nil { pool.noteLevelingBlocked() }
            },
            failed: { [weak pool] _, error in pool?.log("leveling: \(error); trying again in 5 s") })
    }

    func start() { thread.start() }
    func wake() { thread.wake() }
    func stop() { thread.stop() }

    /// Shows the job (started at the first step) with what is left now.
    private func record(_ pool: Pool, moved: Int) {
        let pseg = pool.poolGeometry.psegSizeBytes
        let backlog = pool.levelingBacklog()
        let left = UInt64(backlog.psegs) * pseg
        shown.withLock { s in
            if s == nil {
                let kind: PoolJob.Kind = backlog.draining.isEmpty ? .leveling : .evacuate
                let id = pool.jobs.start(PoolJob(kind: kind, drive: backlog.draining.first, bytesDone: 0, bytesTotal: left, startedAt: Date()))
                s = (id, 0)
            }
            s!.done += UInt64(moved) * pseg
            pool.jobs.progress(s!.id, bytesDone: s!.done)
            pool.jobs.setTotal(s!.id, bytesTotal: s!.done + left)
        }
    }

    private func finish(_ pool: Pool) {
        shown.withLock { s in
            if let id = s?.id { pool.jobs.finish(id) }
            s = nil
        }
    }
}

extension Pool {
    /// Starts the background leveling (the mounted daemon does, with the other copies).
    func startLeveling() {
        guard !readOnly else { return }
        levelingState.withLock { state in
            guard state.job == nil else { return }
            let job = LevelingJob(pool: self)
            state.job = job
            job.start()
        }
    }

    func stopLeveling() {
        let job = levelingState.withLock { s -> LevelingJob? in defer { s.job = nil }; return s.job }
        job?.stop()
    }

    /// Drives joined or left: leveling looks again now.
    func wakeLeveling() {
        let job = levelingState.withLock { s -> LevelingJob? in
            s.blockedAt = nil
            return s.job
        }
        job?.wake()
    }

    /// Leveling found no move that helps while work remains (a drive being emptied whose
    /// members have nowhere to go): it rests until drives change.
    func noteLevelingBlocked() {
        levelingState.withLock { $0.blockedAt = Date() }
    }

    /// Whether leveling rests because no move helps until drives change. It looks again after
    /// `LevelingState.recheckSeconds` anyway: a rebuild may have freed the way meanwhile.
    public func levelingBlocked() -> Bool {
        levelingState.withLock { s in s.blockedAt.map { Date().timeIntervalSince($0) < LevelingState.recheckSeconds } ?? false }
    }
}

/// The daemon's leveling job and whether it waits for drives to change.
struct LevelingState {
    var job: LevelingJob?
    /// When leveling last found no move that helps.
    var blockedAt: Date?
    static let recheckSeconds = 10.0
}
