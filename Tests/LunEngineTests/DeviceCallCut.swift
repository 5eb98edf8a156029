// Cuts the power after a chosen number of device calls: a wrapper around each drive of a pool
// that counts the writes, zeros and syncs of all of them together and, past the chosen count,
// fails every call, as if the machine stopped there. The test then crashes the simulated
// drives underneath (deciding what the unsynced writes left) and reopens the pool.
import Foundation
import Synchronization
@testable import LunEngine

final class DeviceCallCut: BlockDevice, @unchecked Sendable {
    let drive: BlockDevice
    let plan: Plan

    /// Shared by the drives of one pool.
    final class Plan: Sendable {
        private struct Counts { var calls = 0; var limit: Int?; var dead = false }
        private let counts = Mutex(Counts())

        /// Counts from 0 again and lets `limit` more writes, zeros and syncs through
        /// (nil: no limit); the one after fails and so does every call from then on.
        func arm(limit: Int?) { counts.withLock { $0 = Counts(limit: limit) } }

        /// Writes, zeros and syncs let through since `arm`.
        var calls: Int { counts.withLock { $0.calls } }

        var isDead: Bool { counts.withLock { $0.dead } }

        /// Counts one changing call; false when the power is (now) off.
        func admit() -> Bool {
            counts.withLock { c in
                if !c.dead, let limit = c.limit, c.calls >= limit { c.dead = true }
                if c.dead { return false }
                c.calls += 1
                return true
            }
        }
    }

    init(_ drive: BlockDevice, _ plan: Plan) { self.drive = drive; self.plan = plan }

    var sizeBytes: UInt64 { drive.sizeBytes }
    var name: String { drive.name }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) {
        if plan.isDead { throw .io("power cut") }
        try drive.read(into: buffer, at: offset)
    }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) {
        guard plan.admit() else { throw .io("power cut") }
        try drive.write(buffer, at: offset)
    }
    func sync() throws(LunError) {
        guard plan.admit() else { throw .io("power cut") }
        try drive.sync()
    }
    func zero(at offset: UInt64, length: UInt64) throws(LunError) {
        guard plan.admit() else { throw .io("power cut") }
        try drive.zero(at: offset, length: length)
    }
}
