// Many threads on one pool at once: each owns a disk and takes, writes and deletes its own
// snapshots, while another thread commits in a loop. Each thread checks its disks against its
// own model as it goes; at the end the pool is reopened, checked and compared again. This
// exercises the family locks, the in-place fast path next to copy on write, and commits that
// run while other threads unshare segments.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class ConcurrencyTests: XCTestCase {
    typealias Failures = ThreadFailures
    typealias Models = ThreadModels

    func testThreadsWritingSnapshottingAndCommittingAtOnce() throws {
        let drives = MemoryDrives(count: 8, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let failures = Failures()
        let models = Models()
        let threads = 4
        let group = DispatchGroup()
        let stop = AtomicFlag(false)
        let committer = Thread {
            while !stop.value.load(ordering: .acquiring) {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(2000)
            }
        }
        committer.start()
        for t in 0..<threads {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SeededRandom(seed: UInt64(t) &* 7919 &+ 17)
                do {
                    let live = try pool.createDisk(named: "t\(t)")
                    var images: [DiskID: [UInt8]] = [live: [UInt8](repeating: 0, count: 4 << 20)]
                    try pool.resize(live, to: 4 << 20)
                    for step in 0..<150 {
                        let roll = rng.below(100)
                        let ids = images.keys.sorted()
                        if roll < 70 {
                            let id = ids[Int(rng.below(UInt64(ids.count)))]
                            let len = [512, 4096, 65536, 1 << 20][Int(rng.below(4))]
                            let off = Int(rng.below(UInt64((4 << 20) - len)))
                            // Some writes are zeros: on unmapped segments they allocate nothing.
                            let bytes = rng.chance(0.2) ? [UInt8](repeating: 0, count: len) : rng.bytes(len)
                            try pool.write(id, at: UInt64(off), bytes)
                            images[id]!.replaceSubrange(off..<off + len, with: bytes)
                        } else if roll < 85 {
                            let snap = try pool.createSnapshot(of: live, named: "s\(step)")
                            images[snap] = images[live]
                        } else if roll < 92, ids.count > 2 {
                            let victim = ids.filter { $0 != live && pool.children(of: $0).isEmpty }.first
                            if let victim { try pool.removeNode(victim); images[victim] = nil }
                        } else {
                            let id = ids[Int(rng.below(UInt64(ids.count)))]
                            let image = try pool.image(id)
                            if !sameBytes(image, images[id]!) { failures.add("thread \(t) step \(step): disk \(id) differs") }
                        }
                    }
                    for (id, expected) in images where !sameBytes(try pool.image(id), expected) {
                        failures.add("thread \(t): disk \(id) differs at the end")
                    }
                    models.lock.withLock { models.images.merge(images) { $1 } }
                } catch {
                    failures.add("thread \(t): \(error)")
                }
            }.start()
        }
        group.wait()
        stop.value.store(true, ordering: .releasing)
        while !committer.isFinished { usleep(1000) }
        XCTAssertEqual(failures.messages, [])
        try pool.close()
        let reopened = try drives.open()
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        for (id, expected) in models.images { assertSameBytes(try reopened.image(id), expected, "disk \(id) after reopen") }
        try reopened.close()
    }

    /// Writers that unshare the same segments of one chain at once: four threads write the
    /// live disk and one writes its snapshot, each in its own 4 KiB blocks but all in the same
    /// 1 MiB segments, so copies on first write run side by side and meet claims. A reader
    /// checks the blocks nobody writes while this goes on; another thread takes and deletes
    /// snapshots (plans made before one must be made again) and one commits in a loop.
    func testWritersUnsharingTheSameSegmentsOfOneChain() throws {
        let drives = MemoryDrives(count: 8, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let size = 8 << 20, block = 4096, owners = 5
        var rng = SeededRandom(seed: 4242)
        let initial = rng.bytes(size)
        let live = try pool.createDisk(named: "vm")
        try pool.write(live, at: 0, initial)
        let base = try pool.createSnapshot(of: live, named: "base")
        let failures = Failures()
        let models = Models()
        let stop = AtomicFlag(false)
        let group = DispatchGroup()
        // Owner t < 4 writes blocks b % 5 == t of the live disk; owner 4 those of the snapshot.
        for t in 0..<owners {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SeededRandom(seed: UInt64(t) &* 104_729 &+ 3)
                let target = t < owners - 1 ? live : base
                var image = initial
                do {
                    for _ in 0..<120 {
                        let b = Int(rng.below(UInt64(size / block / owners))) * owners + t
                        let len = Int(rng.below(UInt64(block))) + 1
                        let off = b * block + Int(rng.below(UInt64(block - len + 1)))
                        let bytes = rng.bytes(len)
                        try pool.write(target, at: UInt64(off), bytes)
                        image.replaceSubrange(off..<off + len, with: bytes)
                    }
                } catch {
                    failures.add("writer \(t): \(error)")
                }
                models.lock.withLock { models.images[DiskID(1000 + t)] = image }
            }.start()
        }
        let reader = Thread {
            var rng = SeededRandom(seed: 77)
            while !stop.value.load(ordering: .acquiring) {
                // Blocks of the snapshot that only the live writers touch, and the other way round.
                let onSnapshot = rng.below(2) == 0
                let b = Int(rng.below(UInt64(size / block)))
                if onSnapshot == (b % owners == owners - 1) { continue }
                do {
                    let got = try pool.readBytes(onSnapshot ? base : live, at: UInt64(b * block), count: block)
                    if !sameBytes(got, Array(initial[b * block..<(b + 1) * block])) {
                        failures.add("block \(b) of \(onSnapshot ? "the snapshot" : "the live disk") changed under another disk's write")
                    }
                } catch {
                    failures.add("reader: \(error)")
                }
            }
        }
        let snapshotter = Thread {
            var n = 0
            while !stop.value.load(ordering: .acquiring) {
                do {
                    let s = try pool.createSnapshot(of: live, named: "s\(n)")
                    n += 1
                    usleep(500)
                    try pool.removeNode(s)
                    try pool.commit()
                } catch {
                    failures.add("snapshotter: \(error)")
                }
            }
        }
        reader.start()
        snapshotter.start()
        group.wait()
        stop.value.store(true, ordering: .releasing)
        while !reader.isFinished || !snapshotter.isFinished { usleep(1000) }
        XCTAssertEqual(failures.messages, [])
        // Put the owners' blocks together into the expected images.
        var expectedLive = initial, expectedBase = initial
        for t in 0..<owners {
            let image = models.images[DiskID(1000 + t)]!
            for b in stride(from: t, to: size / block, by: owners) {
                let range = b * block..<(b + 1) * block
                if t < owners - 1 { expectedLive.replaceSubrange(range, with: image[range]) } else {
                    expectedBase.replaceSubrange(range, with: image[range])
                }
            }
        }
        assertSameBytes(try pool.image(live), expectedLive, "live disk")
        assertSameBytes(try pool.image(base), expectedBase, "snapshot")
        try pool.close()
        let reopened = try drives.open()
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        assertSameBytes(try reopened.image(live), expectedLive, "live disk after reopen")
        assertSameBytes(try reopened.image(base), expectedBase, "snapshot after reopen")
        try reopened.close()
    }

    /// A snapshot waits a bounded time for in-flight writes; past it mkdir fails with EBUSY and
    /// changes nothing, and once the writes drain it succeeds. The write is held on its way to
    /// a drive by a gate, so the snapshot meets it in flight every time, however busy the machine.
    func testSnapshotGivesUpWithEBUSYWhenWritesDoNotDrain() throws {
        let set = SimulatedDriveSet(count: 4, sizeBytes: 64 << 20, seed: 11)
        try Pool.format(devices: set.devices, raid: .raid0)
        let pool = try Pool.open(devices: set.devices)
        let id = try pool.createDisk(named: "vm")
        let bytes = [UInt8](repeating: 0x42, count: 1 << 20)
        // Drive 3 holds no metadata mirror, so the first write to reach it is the data's.
        let gate = set[3].holdNextWrite()
        defer { gate.open() }
        let writerDone = DispatchSemaphore(value: 0)
        Thread {
            try? pool.write(id, at: 0, bytes)
            writerDone.signal()
        }.start()
        XCTAssertTrue(gate.waitUntilReached(), "the write never reached drive 3")
        let result = Result { () throws(LunError) -> DiskID in
            try pool.createSnapshot(of: id, named: "s", quiesceTimeoutSeconds: 0.05)
        }
        guard case .failure(let error) = result else {
            XCTFail("the snapshot went ahead of a write in flight")
            return
        }
        XCTAssertEqual(error.errno, EBUSY)
        XCTAssertNil(pool.child(named: "s", of: id), "a refused mkdir leaves nothing behind")
        gate.open()
        XCTAssertEqual(writerDone.wait(timeout: .now() + 30), .success)
        let snap = try pool.createSnapshot(of: id, named: "s")
        XCTAssertEqual(pool.info(snap)!.sizeBytes, 1 << 20)
        XCTAssertEqual(try pool.image(snap), bytes)
        try pool.close()
    }
}
