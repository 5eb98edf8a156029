// The thread under every background copy of a mounted pool (a snapclone's BGCOPY, a snapshot
// on separate storage filling its file): it runs one step for each disk that has copying
// left, then rests as long as the step took times `restFactor`, so the copy takes at most
// half of the time and user I/O to the same drives keeps at least half of its throughput.
// With nothing to copy it looks again every 2 s, or at once when woken; a failing step is
// retried after 5 s. What a step copies is the owner's business (SnapcloneCopier,
// ExternalSnapshotCopier: a disk per step; MemberRebuilder: a store member per step).
import Foundation

final class ThrottledCopyThread<Item>: @unchecked Sendable {
    private let condition = NSCondition()
    private var stopping = false
    private var woken = false
    private var running = false
    /// Rest after each step, as a multiple of the time the step took (1: half the time copying).
    let restFactor: Double
    private let name: String
    /// The items (disks, members) with copying left; nil once the pool is gone.
    private let work: () -> [Item]?
    private let step: (Item) throws(LunError) -> Void
    private let failed: (Item, LunError) -> Void

    init(name: String, restFactor: Double, work: @escaping () -> [Item]?,
         step: @escaping (Item) throws(LunError) -> Void, failed: @escaping (Item, LunError) -> Void) {
        self.name = name
        self.restFactor = restFactor
        self.work = work
        self.step = step
        self.failed = failed
    }

    func start() {
        condition.withLock { running = true }
        let t = Thread { [self] in run() }
        t.name = name
        t.start()
    }

    /// Something new to copy: look again now.
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
        while !condition.withLock({ stopping }), let disks = work() {
            if disks.isEmpty {
                if !rest(2) { return }
                continue
            }
            for id in disks {
                let start = Date()
                do {
                    try step(id)
                } catch {
                    failed(id, error)
                    if !rest(5) { return }
                    continue
                }
                if !rest(Date().timeIntervalSince(start) * restFactor) { return }
            }
        }
    }
}
