// Long-running pool jobs (rebuilding members into free space, emptying a drive) as plain
// values that `lunfs status` can show while they run: what the job is, bytes done and in
// total, when it started. The jobs themselves live elsewhere (Pool/Rebuild*.swift); this file
// is only their shared register, plus the lock that lets one PSEG move run at a time.
import Foundation
import Synchronization

/// One running job, as status shows it.
public struct PoolJob: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// Members on drives out of service rebuilt from redundancy onto free PSEGs.
        case rebuild
        /// Every member on a drive copied (or rebuilt) to other drives (`drive remove/replace`).
        case evacuate
        /// PSEGs moved until each drive holds a share of the used ones proportional to its size
        /// (Leveling.swift), and drives being removed hold none.
        case leveling
    }

    public var kind: Kind
    /// The drive the job is about (the one lost or emptied); nil for a rebuild of several.
    public var drive: Int?
    public var bytesDone: UInt64
    public var bytesTotal: UInt64
    public var startedAt: Date

    public var bytesLeft: UInt64 { bytesTotal > bytesDone ? bytesTotal - bytesDone : 0 }

    /// Bytes per second since the start.
    public func rate(now: Date = Date()) -> Double {
        let seconds = now.timeIntervalSince(startedAt)
        return seconds > 0 ? Double(bytesDone) / seconds : 0
    }
}

final class PoolJobs: Sendable {
    /// One PSEG move at a time: a move holds a whole store's stripe locks and commits, and two
    /// moves of the same store must not race for its member.
    let moveLock = Lock()
    private let running = Mutex<[Int: PoolJob]>([:])
    private let nextID = Atomic<Int>(1)

    func start(_ job: PoolJob) -> Int {
        let id = nextID.add(1, ordering: .relaxed).oldValue
        running.withLock { $0[id] = job }
        return id
    }

    func progress(_ id: Int, bytesDone: UInt64) {
        running.withLock { $0[id]?.bytesDone = bytesDone }
    }

    func setTotal(_ id: Int, bytesTotal: UInt64) {
        running.withLock { $0[id]?.bytesTotal = bytesTotal }
    }

    func finish(_ id: Int) { running.withLock { $0[id] = nil } }

    /// The background rebuild of a mounted pool, once started (`Pool.startBackgroundCopies`).
    let rebuilder = Mutex<MemberRebuilder?>(nil)

    var all: [PoolJob] { running.withLock { $0.sorted { $0.key < $1.key }.map(\.value) } }
}

extension Pool {
    /// The jobs running now, oldest first.
    public func runningJobs() -> [PoolJob] { jobs.all }
}
