// Where features merged on one day meet (review of the merges of change files, space policy,
// store layout and PSEG moves, drive membership, batched writes and rollback): each test here
// failed before the fix named in its commit.
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class SeamReviewTests: XCTestCase {
    /// A committer on its own thread until `stopped()` (its failures go to `failures`).
    private func commitUntilStopped(_ pool: Pool, _ stopped: @escaping @Sendable () -> Bool, _ failures: ThreadFailures,
                                    group: DispatchGroup, pauseMicroseconds: UInt32) {
        DispatchQueue.global().async(group: group) {
            while !stopped() {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(pauseMicroseconds)
            }
        }
    }

    /// Change files along a chain stay true after a rollback and after a rollback undone: each
    /// disk's change file applied to its predecessor's image gives its own image.
    func testChangeFilesAfterRollback() throws {
        var rng = TestRandom(seed: 77)
        let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
        try drives.format(raid: .raid1)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        try pool.write(vm, at: 0, rng.bytes(4 << 20))
        let monday = try pool.createSnapshot(of: vm, named: "monday")
        try pool.write(vm, at: 1 << 20, rng.bytes(1 << 20))
        try pool.write(vm, at: 5 << 20, rng.bytes(1 << 20))
        let tuesday = try pool.createSnapshot(of: vm, named: "tuesday")
        try pool.write(vm, at: 2 << 20, rng.bytes(4096))
        func images() throws -> [DiskID: [UInt8]] {
            var out: [DiskID: [UInt8]] = [:]
            for d in pool.disks() where d.hasImage { out[d.id] = try pool.image(d.id) }
            return out
        }
        try checkChangeFiles(pool, images: try images(), "before")
        let first = try pool.rollback(vm, to: monday)
        try checkChangeFiles(pool, images: try images(), "after the rollback to monday")
        try pool.write(vm, at: 3 << 20, rng.bytes(8192))
        try checkChangeFiles(pool, images: try images(), "after a write to the rolled-back disk")
        _ = try pool.rollback(vm, to: first.before)
        try checkChangeFiles(pool, images: try images(), "after the rollback undone")
        _ = try pool.rollback(vm, to: tuesday)
        try pool.write(vm, at: 0, rng.bytes(4096))
        try checkChangeFiles(pool, images: try images(), "after the rollback to tuesday")
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
    }

    /// A full pool whose writer drops expendable snapshots, while other threads roll the disk
    /// back, take group snapshots, move PSEGs between drives and commit: every image reads
    /// whole writes only, the checker finds nothing, and a reopen (journal replay) agrees.
    func testSpacePolicyBesideRollbacksGroupSnapshotsAndMoves() throws {
        let seg = 1 << 20
        let drives = MemoryDrives(count: 6, sizeBytes: 24 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        let other = try pool.createDisk(named: "other")
        try pool.write(other, at: 0, [UInt8](repeating: 200, count: seg))
        try pool.setOnFull(vm, .dropSnapshots)
        let segments = 8, rounds = 40
        for k in 0..<segments { try pool.write(vm, at: UInt64(k * seg), [UInt8](repeating: 1, count: seg)) }
        let failures = ThreadFailures()
        let stop = Atomic(false)
        let snapshotsTaken = Atomic(0)
        let background = DispatchGroup(), writing = DispatchGroup()
        DispatchQueue.global().async(group: writing) {
            for round in 2...rounds {
                // A snapshot between rounds (at most 1 s of waiting), so that the pool fills.
                let deadline = Date().addingTimeInterval(1)
                while snapshotsTaken.load(ordering: .relaxed) < round - 1 && Date() < deadline { usleep(500) }
                for k in 0..<segments {
                    do { try pool.write(vm, at: UInt64(k * seg), [UInt8](repeating: UInt8(round), count: seg)) } catch {
                        failures.add("write round \(round) segment \(k): \(error)")
                    }
                    usleep(500)
                }
            }
        }
        commitUntilStopped(pool, { stop.load(ordering: .relaxed) }, failures, group: background, pauseMicroseconds: 3000)
        DispatchQueue.global().async(group: background) {
            var n = 0
            while !stop.load(ordering: .relaxed) {
                n += 1
                do {
                    if n % 3 == 0 {
                        let taken = try pool.createGroupSnapshot(of: [vm, other], named: "g\(n)")
                        try pool.setExpendable(taken[vm]!, true)
                    } else {
                        let id = try pool.createSnapshot(of: vm, named: "s\(n)")
                        try pool.setExpendable(id, true)
                        snapshotsTaken.add(1, ordering: .relaxed)
                        if n % 4 == 1 {
                            let kept = try pool.rollback(vm, to: id)
                            try pool.setExpendable(kept.before, true)
                        }
                    }
                } catch {
                    let code = (error as? LunError)?.errno ?? -1
                    if code != ENOSPC && code != ENOENT && code != ESTALE { failures.add("snapshot \(n): \(error)") }
                }
                usleep(10_000)
            }
        }
        DispatchQueue.global().async(group: background) {
            var rng = TestRandom(seed: 5)
            while !stop.load(ordering: .relaxed) {
                let drive = Int(rng.next() % 6)
                let slots = pool.members(onDrive: drive)
                if let slot = slots.isEmpty ? nil : slots[Int(rng.next() % UInt64(slots.count))],
                   let target = pool.moveTargets(for: slot).first {
                    do { try pool.movePSEG(slot, toDrive: target) } catch {
                        let code = (error as? LunError)?.errno ?? -1
                        if code != EBUSY && code != EINVAL && code != ENOSPC {
                            failures.add("move of \(slot) to drive \(target): \(error)")
                        }
                    }
                }
                usleep(2000)
            }
        }
        writing.wait()
        stop.store(true, ordering: .relaxed)
        background.wait()
        XCTAssertEqual(failures.messages, [])
        func checkWholeWrites(_ pool: Pool, _ context: String) throws {
            for info in pool.disks() where info.hasImage {
                let bytes = try pool.image(info.id)
                for k in 0..<bytes.count / seg {
                    let piece = Array(bytes[k * seg..<(k + 1) * seg])
                    XCTAssertTrue(sameBytes(piece, [UInt8](repeating: piece[0], count: seg)),
                                  "\(context): \(info.name) segment \(k) is not one whole write")
                }
            }
            XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [], context)
        }
        print("SeamReviewTests: \(pool.droppedSnapshots().count) snapshots dropped for space")
        XCTAssertGreaterThan(pool.droppedSnapshots().count, 0, "space ran out at least once")
        try checkWholeWrites(pool, "live")
        try pool.commit()
        let images = Dictionary(uniqueKeysWithValues: try pool.disks().filter(\.hasImage).map { ($0.id, try pool.image($0.id)) })
        let reopened = try drives.open()
        try checkWholeWrites(reopened, "reopened")
        for (id, bytes) in images { assertSameBytes(try reopened.image(id), bytes, "disk \(id) after the reopen") }
    }

    /// File drives, 1 MiB writes from aligned memory (the io_uring batch) while drives are
    /// added, the pool is levelled onto them and a drive is removed: every byte reads back,
    /// after a reopen too, and the checker's scrub finds nothing.
    func testBatchedWritesWhileDrivesJoinLeaveAndLevel() throws {
        let root = NSTemporaryDirectory() + "lunfs-review2-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let size: UInt64 = 48 << 20
        var devices: [FileDevice] = try (0..<4).map { try FileDevice.createFile(path: "\(root)/d\($0)", sizeBytes: size, directMinimumBytes: 64 << 10) }
        try Pool.format(devices: devices, raid: .raid1)
        let pool = try Pool.open(devices: devices, sizes: devices.map(\.sizeBytes))
        let vm = try pool.createDisk(named: "vm", raid: .raid1)
        let segments = 12
        final class Writer: @unchecked Sendable {
            let pool: Pool, vm: DiskID, mib: Int
            let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            var expected: [UInt8]
            init(_ pool: Pool, _ vm: DiskID, segments: Int) {
                self.pool = pool; self.vm = vm; mib = 1 << 20
                expected = [UInt8](repeating: 0, count: segments << 20)
            }
            deinit { memory.deallocate() }
            func put(_ k: Int, _ value: UInt8) throws {
                memory.initializeMemory(as: UInt8.self, repeating: value)
                memory[0] = UInt8(k)
                try pool.write(vm, at: UInt64(k * mib), from: UnsafeRawBufferPointer(memory))
                expected.replaceSubrange(k * mib..<(k + 1) * mib, with: memory)
            }
        }
        let writer = Writer(pool, vm, segments: segments)
        for k in 0..<segments { try writer.put(k, 1) }
        let failures = ThreadFailures()
        let stop = Atomic(false)
        let done = DispatchGroup()
        DispatchQueue.global().async(group: done) {
            var round: UInt8 = 2
            while !stop.load(ordering: .relaxed) {
                for k in 0..<segments {
                    do { try writer.put(k, round) } catch { failures.add("write \(k): \(error)") }
                }
                round &+= 1
            }
        }
        commitUntilStopped(pool, { stop.load(ordering: .relaxed) }, failures, group: done, pauseMicroseconds: 5000)
        for n in 0..<2 {
            let d = try FileDevice.createFile(path: "\(root)/n\(n)", sizeBytes: size + UInt64(n) * (16 << 20), directMinimumBytes: 64 << 10)
            devices.append(d)
            _ = try pool.addDrive(device: d)
        }
        try pool.levelCompletely()
        try pool.removeDrive(0)
        try pool.levelCompletely()
        stop.store(true, ordering: .relaxed)
        done.wait()
        XCTAssertEqual(failures.messages, [])
        XCTAssertEqual(pool.usedSegments(onDrive: 0), 0)
        XCTAssertGreaterThan(pool.drives.ringWrites.load(ordering: .relaxed), 0, "the writes went through the ring")
        let expected = writer.expected
        assertSameBytes(try pool.image(vm), expected, "vm")
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
        let present: [BlockDevice?] = devices.enumerated().map { $0.offset == 0 ? nil : $0.element }
        let reopened = try Pool.open(devices: present, sizes: devices.map(\.sizeBytes))
        assertSameBytes(try reopened.image(vm), expected, "vm after a reopen")
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        try reopened.close()
    }

    /// After a rollback the kept snapshot is the newest of the chain: removing it (rmdir, or
    /// the space policy) and removing the other snapshots leaves every remaining image as it was.
    func testRemovingSnapshotsAroundARollback() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            for order in 0..<3 {
                var rng = TestRandom(seed: UInt64(90 + order))
                let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
                try drives.format(raid: level)
                let pool = try drives.open()
                let vm = try pool.createDisk(named: "vm", raid: level)
                try pool.write(vm, at: 0, rng.bytes(4 << 20))
                let s1 = try pool.createSnapshot(of: vm, named: "s1")
                try pool.write(vm, at: 1 << 20, rng.bytes(2 << 20))
                let s2 = try pool.createSnapshot(of: vm, named: "s2")
                try pool.write(vm, at: 3 << 20, rng.bytes(2 << 20))
                let kept = try pool.rollback(vm, to: s1).before
                try pool.write(vm, at: 0, rng.bytes(1 << 20))
                var images: [DiskID: [UInt8]] = [:]
                for d in pool.disks() where d.hasImage { images[d.id] = try pool.image(d.id) }
                let removals = [[kept, s2, s1], [s1, kept, s2], [s2, s1, kept]][order]
                for victim in removals {
                    try pool.removeNode(victim)
                    images[victim] = nil
                    for (id, bytes) in images {
                        assertSameBytes(try pool.image(id), bytes, "\(level) order \(order): disk \(id) after removing \(victim)")
                    }
                    try checkChangeFiles(pool, images: images, "\(level) order \(order) after removing \(victim)")
                    XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [], "\(level) order \(order) after removing \(victim)")
                }
                try pool.commit()
                let reopened = try drives.open()
                for (id, bytes) in images { assertSameBytes(try reopened.image(id), bytes, "\(level) order \(order): disk \(id) reopened") }
            }
        }
    }

    /// A pool directory whose drives change: one of another size added by path, one removed
    /// (its slot retired), another added after that; reopened from its drives.list each time,
    /// every byte reads back and passes its checksum (each drive's checksum area starts where
    /// its own size puts it).
    func testDirectoryPoolWithDrivesAddedAndRemovedReopens() throws {
        let root = NSTemporaryDirectory() + "lunfs-review2-dir-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        var options = PoolOptions()
        options.driveCount = 4
        options.driveSizeBytes = 48 << 20
        options.raid = .raid1
        var pool = try Pool.create(directory: root, options: options)
        let vm = try pool.createDisk(named: "vm", raid: .raid1)
        var rng = TestRandom(seed: 4242)
        var expected = rng.bytes(10 << 20)
        try pool.write(vm, at: 0, expected)
        _ = try FileDevice.createFile(path: root + "/big.img", sizeBytes: 80 << 20)
        XCTAssertEqual(try pool.addDrives(paths: ["big.img"]), [4])
        try pool.levelCompletely()
        let patch = rng.bytes(2 << 20)
        try pool.write(vm, at: 3 << 20, patch)
        expected.replaceSubrange(3 << 20 ..< 5 << 20, with: patch)
        try pool.close()
        pool = try Pool.open(directory: root)
        assertSameBytes(try pool.image(vm), expected, "after adding a drive")
        _ = try pool.removeDrive(1)
        try pool.levelCompletely()
        XCTAssertEqual(pool.driveListing().map(\.index), [0, 2, 3, 4])
        try pool.close()
        pool = try Pool.open(directory: root)
        assertSameBytes(try pool.image(vm), expected, "after removing drive 1")
        _ = try FileDevice.createFile(path: root + "/more.img", sizeBytes: 64 << 20)
        XCTAssertEqual(try pool.addDrives(paths: ["more.img"]), [5])
        try pool.levelCompletely()
        let tail = rng.bytes(3 << 20)
        try pool.write(vm, at: 8 << 20, tail)
        expected.replaceSubrange(8 << 20 ..< 10 << 20, with: tail[0..<(2 << 20)])
        expected += tail[(2 << 20)...]
        XCTAssertGreaterThan(pool.usedSegments(onDrive: 5), 0)
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
        pool = try Pool.open(directory: root)
        assertSameBytes(try pool.image(vm), expected, "after adding a drive into slot 5")
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
    }

    /// Readers of one disk never see another disk's bytes while PSEGs of its stores move and
    /// the old PSEGs go to stores of a disk that allocates and frees segments all the time,
    /// on file drives (1 MiB writes through the io_uring batch, reads side by side).
    func testReadsBesideMovesAndPSEGReuseOnFileDrives() throws {
        let root = NSTemporaryDirectory() + "lunfs-review2-gate-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let devices: [FileDevice] = try (0..<6).map { try FileDevice.createFile(path: "\(root)/d\($0)", sizeBytes: 64 << 20) }
        try Pool.format(devices: devices, raid: .raid1)
        let pool = try Pool.open(devices: devices, sizes: devices.map(\.sizeBytes))
        let a = try pool.createDisk(named: "a", raid: .raid1), b = try pool.createDisk(named: "b", raid: .raid1)
        let mib = 1 << 20, segments = 6
        final class Aligned: @unchecked Sendable {
            let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
            deinit { memory.deallocate() }
            func fill(_ v: UInt8) -> UnsafeRawBufferPointer { memory.initializeMemory(as: UInt8.self, repeating: v); return UnsafeRawBufferPointer(memory) }
        }
        let setup = Aligned()
        for k in 0..<segments { try pool.write(a, at: UInt64(k * mib), from: setup.fill(1)) }
        let failures = ThreadFailures()
        let stop = Atomic(false)
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) {
            let buf = Aligned()
            var v: UInt8 = 2
            while !stop.load(ordering: .relaxed) {
                for k in 0..<segments {
                    do { try pool.write(a, at: UInt64(k * mib), from: buf.fill(v)) } catch { failures.add("a: \(error)") }
                }
                v = v == 100 ? 2 : v + 1
            }
        }
        DispatchQueue.global().async(group: group) {
            let buf = Aligned()
            var k = 0
            while !stop.load(ordering: .relaxed) {
                do {
                    try pool.write(b, at: UInt64(k * mib), from: buf.fill(UInt8(200 + k % 50)))
                    if k % 2 == 1 { try pool.write(b, at: UInt64((k - 1) * mib), from: buf.fill(0)) }
                } catch { failures.add("b: \(error)") }
                k = (k + 1) % 16
            }
        }
        commitUntilStopped(pool, { stop.load(ordering: .relaxed) }, failures, group: group, pauseMicroseconds: 2000)
        for r in 0..<2 {
            DispatchQueue.global().async(group: group) {
                let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: mib, alignment: 4096)
                defer { buf.deallocate() }
                var k = r
                while !stop.load(ordering: .relaxed) {
                    do {
                        let n = try pool.read(try pool.openDisk(a), at: UInt64(k * mib), into: buf)
                        if n != mib { failures.add("reader \(r): a short read of \(n) bytes") }
                        for blk in stride(from: 0, to: mib, by: 4096) {
                            let v = buf[blk]
                            if v < 1 || v > 100 || buf[blk + 4095] != v || buf[blk + 2048] != v {
                                failures.add("reader \(r): a segment \(k) block \(blk / 4096) reads \(v), \(buf[blk + 2048]), \(buf[blk + 4095])")
                                break
                            }
                        }
                    } catch { failures.add("reader \(r): \(error)") }
                    k = (k + 1) % segments
                }
            }
        }
        var rng = TestRandom(seed: 8)
        var moves = 0
        let deadline = Date().addingTimeInterval(4)
        while Date() < deadline && failures.messages.isEmpty {
            let slots = pool.stateLock.withLock { () -> [StoreMemberSlot] in
                var out: [StoreMemberSlot] = []
                pool.state.disks[a]?.map.forEachMapped { _, e in
                    if e.holdsData { for m in 0..<8 { out.append(StoreMemberSlot(store: Int(e.store), member: m)) } }
                }
                return out
            }
            guard !slots.isEmpty else { break }
            let slot = slots[Int(rng.next() % UInt64(slots.count))]
            if let target = pool.moveTargets(for: slot).first {
                do { try pool.movePSEG(slot, toDrive: target); moves += 1 } catch {
                    let code = error.errno
                    if code != EBUSY && code != EINVAL && code != ENOSPC { failures.add("move: \(error)") }
                }
            }
        }
        stop.store(true, ordering: .relaxed)
        group.wait()
        print("SeamReviewTests: \(moves) moves, \(pool.drives.ringWrites.load(ordering: .relaxed)) ring writes")
        XCTAssertEqual(Array(failures.messages.prefix(5)), [])
        XCTAssertGreaterThan(moves, 10)
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
    }

    /// A missing drive being removed that holds a RAID 0 member (nothing to rebuild it from):
    /// leveling moves what it can and then rests (no move helps), instead of failing each step.
    func testLevelingRestsWhenADrainingMissingDriveHoldsRAID0Members() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid1)
        var pool = try drives.open()
        let mirrored = try pool.createDisk(named: "m", raid: .raid1)
        let striped = try pool.createDisk(named: "s", raid: .raid0)
        var rng = TestRandom(seed: 3)
        let bytes = rng.bytes(6 << 20)
        try pool.write(mirrored, at: 0, bytes)
        try pool.write(striped, at: 0, rng.bytes(6 << 20))
        try pool.close()
        let mirrors = Set(pool.metadata.mirrors.map { Int($0) })
        let gone = (0..<5).first { !mirrors.contains($0) }!
        pool = try drives.open(missing: [gone])
        XCTAssertFalse(try pool.removeDrive(gone))
        var steps = 0
        while let moved = try pool.levelingStep() {
            steps += 1
            XCTAssertLessThan(steps, 200)
            if steps >= 200 { break }
            _ = moved
        }
        XCTAssertGreaterThan(pool.usedSegments(onDrive: gone), 0, "the RAID 0 members stay")
        XCTAssertEqual(pool.members(onDrive: gone).filter { pool.state.rsds.level($0.store) != .raid0 }, [])
        assertSameBytes(try pool.image(mirrored), bytes, "the mirrored disk")
    }

    /// A group snapshot of two disks of one chain (a disk and its snapshot), then a rollback
    /// to one of the group's snapshots: every image as expected, change files true.
    func testGroupSnapshotWithinOneChainThenRollback() throws {
        var rng = TestRandom(seed: 12)
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        let v1 = rng.bytes(3 << 20)
        try pool.write(vm, at: 0, v1)
        let s1 = try pool.createSnapshot(of: vm, named: "s1")
        let v2 = rng.bytes(1 << 20)
        try pool.write(vm, at: 1 << 20, v2)
        var vmBytes = v1
        vmBytes.replaceSubrange(1 << 20 ..< 2 << 20, with: v2)
        let taken = try pool.createGroupSnapshot(of: [s1, vm], named: "g")
        assertSameBytes(try pool.image(taken[vm]!), vmBytes, "g of vm")
        assertSameBytes(try pool.image(taken[s1]!), v1, "g of s1")
        try pool.write(vm, at: 0, rng.bytes(1 << 20))
        try pool.write(s1, at: 2 << 20, rng.bytes(1 << 20))
        var images: [DiskID: [UInt8]] = [:]
        for d in pool.disks() where d.hasImage { images[d.id] = try pool.image(d.id) }
        try checkChangeFiles(pool, images: images, "after the group snapshot")
        let kept = try pool.rollback(vm, to: taken[vm]!)
        assertSameBytes(try pool.image(vm), vmBytes, "vm rolled back to g")
        assertSameBytes(try pool.image(kept.before), images[vm]!, "the state before")
        images[vm] = vmBytes
        images[kept.before] = try pool.image(kept.before)
        for (id, bytes) in images { assertSameBytes(try pool.image(id), bytes, "disk \(id) after the rollback") }
        try checkChangeFiles(pool, images: images, "after the rollback")
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.commit()
        let reopened = try drives.open()
        for (id, bytes) in images { assertSameBytes(try reopened.image(id), bytes, "disk \(id) reopened") }
    }
}
