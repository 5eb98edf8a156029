// The frozen states of seed 002 made visible (FrozenStates.swift): a segment the snapclone
// copy holds in Nw takes no writes but serves reads, and the blocking flag holds a chain's I/O
// for a bounded time, then gives up with EBUSY. A gate holds the copy's (or a write's) drive
// write in flight, so each state is met every time, however busy the machine.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class SnapcloneFrozenStateTests: XCTestCase {
    private struct Setup {
        let set: SimulatedDriveSet
        let pool: Pool
        let vm: DiskID, c: DiskID
        let original: [UInt8]
        var seg: Int { Int(pool.geometry.rsegSizeBytes) }
    }

    /// RAID 1 on two drives (every data write reaches drive 1): vm with two segments written,
    /// snapshot c of it, made a snapclone, all committed.
    private func makeChain() throws -> Setup {
        let set = SimulatedDriveSet(count: 2, sizeBytes: 64 << 20, seed: 21)
        try Pool.format(devices: set.devices, raid: .raid1)
        let pool = try Pool.open(devices: set.devices)
        let seg = Int(pool.geometry.rsegSizeBytes)
        var rng = TestRandom(seed: 5)
        let vm = try pool.createDisk(named: "vm")
        let original = rng.bytes(2 * seg)
        try pool.write(vm, at: 0, original)
        let c = try pool.createSnapshot(of: vm, named: "c")
        try pool.makeSnapclone(c)
        pool.quiescedCopySegments = 0
        try pool.commit()
        return Setup(set: set, pool: pool, vm: vm, c: c, original: original)
    }

    /// The copy of segment 0 is held on its way to the drive: segment 0 is in Nw for the
    /// chain, a read of it (clone and source) goes on, a write to it waits until the copy
    /// is done, and an in-place write to segment 1 (which vm holds alone) does not wait.
    func testSegmentUnderCopyTakesReadsButNoWrites() throws {
        let s = try makeChain()
        var expected = s.original
        let own = [UInt8](repeating: 0x44, count: s.seg)
        try s.pool.write(s.vm, at: UInt64(s.seg), own)          // vm's segment 1 is its own now
        expected.replaceSubrange(s.seg..<2 * s.seg, with: own)
        let gate = s.set[1].holdNextWrite()
        defer { gate.open() }
        let copyDone = DispatchSemaphore(value: 0)
        Thread { _ = try? s.pool.copySnapclone(s.c, segments: 1); copyDone.signal() }.start()
        XCTAssertTrue(gate.waitUntilReached(), "the copy never reached drive 1")
        XCTAssertEqual(s.pool.frozenState(s.vm), FrozenState(noWriteSegments: [0], invalidSegments: [], blockedFor: nil))
        XCTAssertEqual(s.pool.frozenState(s.c)?.noWriteSegments, [0], "the whole chain sees it")
        let notes = try PoolChecker(pool: s.pool).run().notes
        XCTAssertTrue(notes.contains("chain of vm: 1 segments in Nw [0], 0 invalid []"), "check's view: \(notes)")

        // Reads of the frozen segment go on, from both disks.
        var head = [UInt8](repeating: 0, count: 4096)
        _ = try head.withUnsafeMutableBytes { try s.pool.read(s.c, at: 0, into: $0) }
        XCTAssertEqual(head, Array(s.original[0..<4096]))
        _ = try head.withUnsafeMutableBytes { try s.pool.read(s.vm, at: 0, into: $0) }
        XCTAssertEqual(head, Array(s.original[0..<4096]))

        // A write to segment 1 goes on; one to segment 0 waits for the copy.
        let other = [UInt8](repeating: 0x11, count: 4096), frozen = [UInt8](repeating: 0x22, count: 4096)
        try s.pool.write(s.vm, at: UInt64(s.seg), other)
        let writeDone = DispatchSemaphore(value: 0)
        Thread { try? s.pool.write(s.vm, at: 0, frozen); writeDone.signal() }.start()
        XCTAssertEqual(writeDone.wait(timeout: .now() + 0.5), .timedOut, "a write to a segment in Nw went ahead")
        XCTAssertEqual(s.pool.frozenState(s.vm)?.noWriteSegments, [0])

        gate.open()
        XCTAssertEqual(copyDone.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(writeDone.wait(timeout: .now() + 30), .success, "the write went on after the copy")
        XCTAssertEqual(s.pool.frozenState(s.vm)?.isQuiet, true)
        expected.replaceSubrange(0..<4096, with: frozen)
        expected.replaceSubrange(s.seg..<s.seg + 4096, with: other)
        assertSameBytes(try s.pool.image(s.vm), expected, "vm")
        assertSameBytes(try s.pool.image(s.c), s.original, "the clone")
        XCTAssertEqual(try PoolChecker(pool: s.pool).run().problems, [])
        try s.pool.close()
    }

    /// Nw, then invalid while the maps switch, then nothing: the claim's life in one family.
    func testClaimGoesFromNoWriteToInvalidToNothing() {
        let family = SharingFamily()
        XCTAssertTrue(family.claim([3, 5]))
        XCTAssertEqual(family.frozenState(), FrozenState(noWriteSegments: [3, 5], invalidSegments: [], blockedFor: nil))
        XCTAssertFalse(family.claim([5]), "a frozen segment takes no second claim")
        family.lock.lockExclusive()
        family.invalidate([3, 5])
        XCTAssertEqual(family.frozenState(), FrozenState(noWriteSegments: [], invalidSegments: [3, 5], blockedFor: nil))
        family.release([3, 5])
        family.lock.unlock()
        XCTAssertTrue(family.frozenState().isQuiet)
    }

    /// A write held in flight keeps the chain's I/O from draining: the snapshot split raises
    /// the blocking flag (visible, and a new read waits behind it), gives up after its bound
    /// with EBUSY, lowers it (the read goes on) and changes nothing; so does a snapclone's
    /// last copy pass.
    func testBlockingFlagHoldsIOThenGivesUpWithEBUSY() throws {
        let s = try makeChain()
        let gate = s.set[1].holdNextWrite()
        defer { gate.open() }
        let writerDone = DispatchSemaphore(value: 0)
        let bytes = [UInt8](repeating: 0x33, count: 4096)
        Thread { try? s.pool.write(s.vm, at: 0, bytes); writerDone.signal() }.start()
        XCTAssertTrue(gate.waitUntilReached(), "the write never reached drive 1")

        let splitDone = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var error: LunError?; var readAt: Date?; var flagSeen: String? }
        let box = Box()
        Thread {
            do { _ = try s.pool.createSnapshot(of: s.vm, named: "s", quiesceTimeoutSeconds: 1) } catch { box.error = error as? LunError }
            splitDone.signal()
        }.start()
        let deadline = Date(timeIntervalSinceNow: 10)
        while box.flagSeen == nil, Date() < deadline {
            box.flagSeen = s.pool.frozenState(s.vm)?.blockedFor
            usleep(1000)
        }
        XCTAssertEqual(box.flagSeen, "a snapshot of vm", "the flag is raised while the split waits")
        let raisedAt = Date()
        let readDone = DispatchSemaphore(value: 0)
        Thread {
            var b = [UInt8](repeating: 0, count: 512)
            _ = try? b.withUnsafeMutableBytes { try s.pool.read(s.c, at: 0, into: $0) }
            box.readAt = Date()
            readDone.signal()
        }.start()
        XCTAssertEqual(splitDone.wait(timeout: .now() + 30), .success)
        XCTAssertEqual(box.error?.errno, EBUSY)
        XCTAssertEqual(readDone.wait(timeout: .now() + 30), .success, "the read goes on once the flag is lowered")
        XCTAssertGreaterThan(box.readAt!.timeIntervalSince(raisedAt), 0.3, "the read waited behind the flag")
        XCTAssertNil(s.pool.frozenState(s.vm)?.blockedFor, "lowered")
        XCTAssertNil(s.pool.child(named: "s", of: s.vm), "a refused split leaves nothing behind")

        // The last copy pass of a snapclone (both segments left: at most 16), under the same flag.
        s.pool.quiescedCopySegments = 16
        s.pool.lastPassQuiesceSeconds = 0.2
        XCTAssertThrowsError(try s.pool.copySnapclone(s.c, segments: 0)) { error in
            XCTAssertEqual((error as? LunError)?.errno, EBUSY)
            XCTAssertTrue("\(error)".contains("last copy pass of snapclone c"), "\(error)")
        }
        XCTAssertEqual(s.pool.kind(s.c), .snapclone, "still copying")

        gate.open()
        XCTAssertEqual(writerDone.wait(timeout: .now() + 30), .success)
        XCTAssertTrue(try s.pool.copySnapclone(s.c, segments: 0).independent, "drained: the last pass goes ahead")
        var expected = s.original
        expected.replaceSubrange(0..<4096, with: bytes)
        assertSameBytes(try s.pool.image(s.vm), expected, "vm")
        assertSameBytes(try s.pool.image(s.c), s.original, "c")
        XCTAssertEqual(try PoolChecker(pool: s.pool).run().problems, [])
        try s.pool.close()
    }
}
