// A one-shot gate that holds one write of a simulated drive in flight (called, not yet landed)
// until the test opens it, so that a test can run something else, such as a commit, exactly
// while that write is on its way to the drive.
import Foundation

public final class WriteGate: @unchecked Sendable {
    private let condition = NSCondition()
    /// Set once a write has arrived at the gate; never cleared.
    private var reached = false
    /// Set by `open`; never cleared. A write arriving after it passes at once.
    private var opened = false

    init() {}

    /// Called by the drive's write before it lands anything: reports the arrival and blocks
    /// until the gate is opened.
    func pass() {
        condition.lock()
        reached = true
        condition.broadcast()
        while !opened { condition.wait() }
        condition.unlock()
    }

    /// Waits until a write is held at the gate; false if none arrived within the timeout.
    public func waitUntilReached(timeoutSeconds: Double = 30) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeoutSeconds)
        condition.lock()
        defer { condition.unlock() }
        while !reached {
            if !condition.wait(until: deadline) { return reached }
        }
        return true
    }

    /// True once a write has arrived (it may have passed since, if the gate is open).
    public var isReached: Bool { condition.withLock { reached } }

    /// Lets the held write (and any later one at this gate) go on. Safe to call more than once.
    public func open() {
        condition.lock()
        opened = true
        condition.broadcast()
        condition.unlock()
    }
}
