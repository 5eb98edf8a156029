// I/O goes on while a commit is on its way to the drives: a checkpoint holds no lock that
// reads and writes need through its drive writes and syncs, and a snapshot's commit runs
// after the chain's lock is released. A gate holds the commit's first metadata write on the
// drive, so the I/O meets the commit in flight every time, however busy the machine; the
// I/O must then finish before the gate opens (it would wait forever if it needed a lock the
// commit holds: the test gives it 30 s and fails).
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class IOBesideCommitTests: XCTestCase {
    final class Outcome: @unchecked Sendable {
        let lock = NSLock()
        var failures: [String] = []
        func fail(_ m: String) { lock.withLock { failures.append(m) } }
        /// The image as the I/O thread wrote it; read once that thread is done.
        var expected: [UInt8] = []
    }

    private static func write(_ pool: Pool, _ opened: OpenDisk, at offset: Int, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try pool.write(opened, at: UInt64(offset), from: $0) }
    }

    private static func read(_ pool: Pool, _ opened: OpenDisk, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0xEE, count: count)
        let n = try out.withUnsafeMutableBytes { try pool.read(opened, at: 0, into: $0) }
        return Array(out[0..<n])
    }

    private static func checkpoint(_ pool: Pool) throws {
        pool.commitLock.lock()
        defer { pool.commitLock.unlock() }
        try pool.checkpointLocked()
    }

    private static func pattern(_ seed: UInt8, _ count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) ^ seed }
    }

    /// Reads and in-place writes of one chain, through handles opened once, while a
    /// checkpoint of the pool (another chain's changes in it) is held in its metadata write.
    func testChainIOGoesOnWhileACheckpointIsHeldOnItsDriveWrite() throws {
        let set = SimulatedDriveSet(count: 4, sizeBytes: 64 << 20, seed: 21)
        try Pool.format(devices: set.devices, raid: .raid0)
        let pool = try Pool.open(devices: set.devices)
        let a = try pool.createDisk(named: "a")
        let b = try pool.createDisk(named: "b")
        try pool.write(a, at: 0, Self.pattern(1, 2 << 20))
        try pool.write(b, at: 0, Self.pattern(2, 2 << 20))
        // An in-place write puts a's store in the write-intent set (that takes a commit);
        // later in-place writes to it need none.
        try pool.write(a, at: 0, Self.pattern(1, 4096))
        try pool.commit()
        // b changes shape (a snapshot), so the checkpoint carries a change of the other chain.
        _ = try pool.createSnapshot(of: b, named: "s")
        let opened = try pool.openDisk(a)
        // Drive 0 holds a metadata mirror: the checkpoint's first write to it is held.
        let gate = set[0].holdNextWrite()
        defer { gate.open() }
        let checkpointDone = DispatchSemaphore(value: 0)
        let outcome = Outcome()
        Thread {
            do { try Self.checkpoint(pool) } catch {
                outcome.fail("checkpoint: \(error)")
            }
            checkpointDone.signal()
        }.start()
        XCTAssertTrue(gate.waitUntilReached(), "the checkpoint never reached drive 0")
        let ioDone = DispatchSemaphore(value: 0)
        outcome.expected = Self.pattern(1, 2 << 20)
        Thread {
            var expected = outcome.expected
            do {
                for round in 0..<20 {
                    let offset = (round * 65_536) % (2 << 20)
                    let piece = Self.pattern(UInt8(round + 10), 4096)
                    try Self.write(pool, opened, at: offset, piece)
                    expected.replaceSubrange(offset..<offset + 4096, with: piece)
                    let back = try Self.read(pool, opened, count: 2 << 20)
                    if back != expected { outcome.fail("round \(round): a read returned other bytes") }
                }
                // The lookup by id takes the state lock for a moment only.
                if try pool.readBytes(a, at: 0, count: 4096) != Array(expected[0..<4096]) { outcome.fail("read by id") }
            } catch { outcome.fail("I/O: \(error)") }
            outcome.expected = expected
            ioDone.signal()
        }.start()
        XCTAssertEqual(ioDone.wait(timeout: .now() + 30), .success, "I/O of chain a waited for the checkpoint")
        XCTAssertFalse(checkpointDone.wait(timeout: .now()) == .success, "the checkpoint finished with its write held")
        gate.open()
        XCTAssertEqual(checkpointDone.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(outcome.failures, [])
        try pool.close()
        let reopened = try Pool.open(devices: set.devices)
        assertSameBytes(try reopened.image(a), outcome.expected, "a after reopen")
        try reopened.close()
    }

    /// mkdir of a snapshot commits with the chain's lock released: reads and writes of the
    /// very disk just snapshotted go on while the snapshot's commit is held. The snapshot
    /// keeps the bytes from before the split, the disk has the new ones, after a reopen too.
    func testSnapshotCommitsWithTheChainOpenForIO() throws {
        let set = SimulatedDriveSet(count: 4, sizeBytes: 64 << 20, seed: 22)
        try Pool.format(devices: set.devices, raid: .raid0)
        let pool = try Pool.open(devices: set.devices)
        let x = try pool.createDisk(named: "x")
        let before = Self.pattern(3, 2 << 20)
        try pool.write(x, at: 0, before)
        try pool.commit()
        let opened = try pool.openDisk(x)
        let gate = set[0].holdNextWrite()
        defer { gate.open() }
        let outcome = Outcome()
        let snapshotDone = DispatchSemaphore(value: 0)
        let snapshotID = Mutex<DiskID?>(nil)
        Thread {
            do { let s = try pool.createSnapshot(of: x, named: "s"); snapshotID.withLock { $0 = s } } catch {
                outcome.fail("mkdir: \(error)")
            }
            snapshotDone.signal()
        }.start()
        XCTAssertTrue(gate.waitUntilReached(), "the snapshot's commit never reached drive 0")
        let ioDone = DispatchSemaphore(value: 0)
        outcome.expected = before
        Thread {
            var after = outcome.expected
            do {
                let piece = Self.pattern(9, 8192)
                try Self.write(pool, opened, at: 1 << 20, piece)
                after.replaceSubrange((1 << 20)..<(1 << 20) + 8192, with: piece)
                let back = try Self.read(pool, opened, count: 2 << 20)
                if back != after { outcome.fail("the disk read other bytes beside the snapshot's commit") }
            } catch { outcome.fail("I/O: \(error)") }
            outcome.expected = after
            ioDone.signal()
        }.start()
        XCTAssertEqual(ioDone.wait(timeout: .now() + 30), .success, "I/O of the snapshotted disk waited for mkdir's commit")
        gate.open()
        XCTAssertEqual(snapshotDone.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(outcome.failures, [])
        let s = try XCTUnwrap(snapshotID.withLock { $0 })
        let after = outcome.expected
        assertSameBytes(try pool.image(s), before, "snapshot")
        assertSameBytes(try pool.image(x), after, "disk")
        try pool.close()
        let reopened = try Pool.open(devices: set.devices)
        assertSameBytes(try reopened.image(s), before, "snapshot after reopen")
        assertSameBytes(try reopened.image(x), after, "disk after reopen")
        try reopened.close()
    }
}
