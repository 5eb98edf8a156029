// The space policy (SpacePolicy.swift): a disk set to drop-snapshots keeps writing into a full
// pool by deleting its chain's expendable snapshots, oldest first, one at a time, and never a
// snapshot that is not expendable, reserved or a snapclone; ENOSPC when none is left, and with
// the default policy at once. The two settings survive a crash (journal replay) and a
// checkpoint; with writers, a committer and new snapshots at once no write fails and no byte
// is wrong.
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class SpacePolicyTests: XCTestCase {
    let seg = 1 << 20

    /// Log lines of a pool, for checking what the policy wrote.
    final class LogLines: @unchecked Sendable {
        let lock = NSLock()
        var lines: [String] = []
        func add(_ line: String) { lock.withLock { lines.append(line) } }
        var dropLines: [String] { lock.withLock { lines.filter { $0.hasPrefix("space policy:") } } }
    }

    /// Five 24 MiB drives at RAID 5: room for about 80 one-MiB segments.
    func smallPool(_ log: LogLines) throws -> (MemoryDrives, Pool) {
        let drives = MemoryDrives(count: 5, sizeBytes: 24 << 20)
        try drives.format(raid: .raid5)
        let pool = try Pool.open(devices: drives.devices, sizes: drives.devices.map(\.sizeBytes), log: { log.add($0) })
        return (drives, pool)
    }

    func freeSegments(_ pool: Pool) -> Int { Int(pool.usage().freeBytes) / seg }

    func testFullPoolDropsOldestExpendableSnapshotsFirst() throws {
        let log = LogLines()
        let (_, pool) = try smallPool(log)
        var rng = TestRandom(seed: 1504)
        let vm = try pool.createDisk(named: "vm")
        let diskSegments = freeSegments(pool) / 7
        var image = rng.bytes(diskSegments * seg)
        try pool.write(vm, at: 0, image)
        // Snapshots, oldest first: e1 expendable, keep (not expendable), e2 and e3 expendable.
        // Each is followed by a rewrite of the whole disk, so that each holds diskSegments alone.
        var snapshots: [String: (id: DiskID, image: [UInt8])] = [:]
        for (name, expendable) in [("e1", true), ("keep", false), ("e2", true), ("e3", true)] {
            let id = try pool.createSnapshot(of: vm, named: name)
            if expendable { try pool.setExpendable(id, true) }
            snapshots[name] = (id, image)
            image = rng.bytes(diskSegments * seg)
            try pool.write(vm, at: 0, image)
        }
        XCTAssertThrowsError(try pool.setExpendable(vm, true), "a disk at the root is not a snapshot") {
            XCTAssertEqual(($0 as? LunError)?.errno, EPERM)
        }
        XCTAssertEqual(pool.info(snapshots["e1"]!.id)?.expendable, true)

        // The default policy: a write that needs 2 segments more than are free fails and
        // changes nothing.
        var end = diskSegments * seg
        let first = rng.bytes((freeSegments(pool) + 2) * seg)
        XCTAssertThrowsError(try pool.write(vm, at: UInt64(end), first)) { XCTAssertEqual(($0 as? LunError)?.errno, ENOSPC) }
        assertSameBytes(try pool.image(vm), image, "a refused write changes nothing")
        XCTAssertEqual(pool.droppedSnapshots().count, 0, "the default policy drops nothing")

        // drop-snapshots: the same write fits once e1, the oldest, is gone.
        try pool.setOnFull(vm, .dropSnapshots)
        XCTAssertEqual(pool.info(vm)?.onFull, .dropSnapshots)
        try pool.write(vm, at: UInt64(end), first)
        image += first
        end += first.count
        XCTAssertEqual(pool.droppedSnapshots().recent.map(\.path), ["vm/e1"])
        XCTAssertNil(pool.info(snapshots["e1"]!.id))
        // A write that needs more than one snapshot's worth: e2 and e3 go, keep stays.
        let second = rng.bytes((freeSegments(pool) + diskSegments + 2) * seg)
        try pool.write(vm, at: UInt64(end), second)
        image += second
        end += second.count
        let dropped = pool.droppedSnapshots()
        XCTAssertEqual(dropped.count, 3)
        XCTAssertEqual(dropped.recent.map(\.path), ["vm/e1", "vm/e2", "vm/e3"], "oldest expendable first, never keep")
        XCTAssertTrue(dropped.recent.allSatisfy { $0.forDisk == "vm" && $0.freedBytes >= UInt64(diskSegments * seg) })
        XCTAssertEqual(log.dropLines.count, 3, "one log line per drop")
        XCTAssertTrue(log.dropLines[0].contains("vm/e1"), log.dropLines[0])

        // Only keep is left, and it is not expendable: ENOSPC, nothing changed.
        XCTAssertThrowsError(try pool.write(vm, at: UInt64(end), rng.bytes((freeSegments(pool) + 1) * seg))) {
            XCTAssertEqual(($0 as? LunError)?.errno, ENOSPC)
        }
        XCTAssertEqual(pool.droppedSnapshots().count, 3)
        assertSameBytes(try pool.image(vm), image, "vm")
        let keep = snapshots["keep"]!
        assertSameBytes(try pool.image(keep.id), keep.image, "keep's bytes")
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
    }

    /// Reserved snapshots and snapclones are never dropped, even when expendable.
    func testReservedAndSnapcloneSnapshotsStay() throws {
        let log = LogLines()
        let (_, pool) = try smallPool(log)
        var rng = TestRandom(seed: 1505)
        let vm = try pool.createDisk(named: "vm")
        try pool.setOnFull(vm, .dropSnapshots)
        let n = 10
        try pool.write(vm, at: 0, rng.bytes(n * seg))
        let reserved = try pool.createSnapshot(of: vm, named: "reserved", reserved: true)
        try pool.setExpendable(reserved, true)
        try pool.write(vm, at: 0, rng.bytes(n * seg))
        let clone = try pool.createSnapshot(of: vm, named: "clone")
        try pool.setExpendable(clone, true)
        pool.quiescedCopySegments = 0
        try pool.makeSnapclone(clone)
        XCTAssertEqual(pool.kind(clone), .snapclone)
        // Fill the rest of the pool with a second disk, then write vm: nothing may be dropped.
        let filler = try pool.createDisk(named: "filler")
        let room = freeSegments(pool)
        if room > 0 { try pool.write(filler, at: 0, rng.bytes(room * seg)) }
        XCTAssertThrowsError(try pool.write(vm, at: 0, rng.bytes(n * seg))) { XCTAssertEqual(($0 as? LunError)?.errno, ENOSPC) }
        XCTAssertNotNil(pool.info(reserved))
        XCTAssertNotNil(pool.info(clone))
        XCTAssertEqual(pool.droppedSnapshots().count, 0)
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        try pool.close()
    }

    func testSettingsSurviveReplayAfterACrashAndACheckpoint() throws {
        var set = SimulatedDriveSet(count: 5, sizeBytes: 64 << 20, seed: 1506)
        try Pool.format(devices: set.devices, raid: .raid5)
        let pool = try Pool.open(devices: set.devices)
        let vm = try pool.createDisk(named: "vm")
        try pool.write(vm, at: 0, [UInt8](repeating: 3, count: 8192))
        let monday = try pool.createSnapshot(of: vm, named: "monday")
        try pool.setOnFull(vm, .dropSnapshots)
        try pool.setExpendable(monday, true)
        XCTAssertThrowsError(try pool.setOnFull(999, .fail)) { XCTAssertEqual(($0 as? LunError)?.errno, ENOENT) }
        set.crash(seed: 1507, tearing: .dropUnsynced)
        let replayed = try Pool.open(devices: set.devices)
        XCTAssertEqual(replayed.info(vm)?.onFull, .dropSnapshots)
        XCTAssertEqual(replayed.info(vm)?.expendable, false)
        XCTAssertEqual(replayed.info(monday)?.expendable, true)
        XCTAssertEqual(replayed.info(monday)?.onFull, .fail)
        try replayed.setExpendable(monday, false)
        try replayed.close()                                    // a checkpoint
        let reopened = try Pool.open(devices: set.devices)
        XCTAssertEqual(reopened.info(vm)?.onFull, .dropSnapshots)
        XCTAssertEqual(reopened.info(monday)?.expendable, false)
        XCTAssertEqual(try PoolChecker(pool: reopened).run().problems, [])
        try reopened.close()
    }

    func testRecordCodingOfThePolicy() throws {
        let plain = DiskRecord(id: 7, name: "vm", parent: nil, predecessor: nil, successor: nil,
                               sizeBytes: 5 << 30, raid: .raid5, hasImage: true, hasWritten: true,
                               reserveSnapshots: false, reserved: false, createdAt: 1_790_000_000,
                               reservedSegments: 0)
        var old = ByteWriter()
        plain.encode(into: &old)
        for (onFull, expendable) in [(OnFullPolicy.dropSnapshots, false), (.fail, true), (.dropSnapshots, true)] {
            for access in [nil, NodeAccess(mode: 0o640, uid: 1, gid: 2)] {
                var record = plain
                record.onFull = onFull
                record.expendable = expendable
                record.imageAccess = access
                var w = ByteWriter()
                record.encode(into: &w)
                var r = ByteReader(w.bytes)
                XCTAssertEqual(try DiskRecord.decode(from: &r), record)
                XCTAssertEqual(r.remaining, 0)
                var short = ByteReader(Array(w.bytes.dropLast()))
                XCTAssertThrowsError(try DiskRecord.decode(from: &short), "cut short")
            }
        }
        // Flag 128 with an empty or unknown policy byte is damage.
        for bad: UInt8 in [0, 4, 0x80] {
            var bytes = old.bytes
            bytes[bytes.count - 10] |= 128     // the flags byte: before createdAt (8) and the varint (1)
            bytes.append(bad)
            var r = ByteReader(bytes)
            XCTAssertThrowsError(try DiskRecord.decode(from: &r), "policy byte \(bad)")
        }
    }

    /// The power goes out at every sync of a write that drops a snapshot (the drop's commit,
    /// then the write's own): after the crash the pool checks clean, the dropped snapshot is
    /// either gone or whole with its bytes, the snapshot that is not expendable and every byte
    /// committed before are intact, and the written range reads its new bytes or zeros.
    func testPowerCutAtEverySyncOfADrop() throws {
        var cut = 0, completed = false
        while !completed && cut < 60 {
            var set = SimulatedDriveSet(count: 5, sizeBytes: 24 << 20, seed: 1508 + UInt64(cut))
            let plan = PowerCut.Plan()
            func devices() -> [BlockDevice] { set.drives.map { PowerCut($0, plan) } }
            try Pool.format(devices: devices(), raid: .raid5)
            let pool = try Pool.open(devices: devices())
            var rng = TestRandom(seed: 1509)
            let vm = try pool.createDisk(named: "vm")
            let n = Int(pool.usage().freeBytes) / seg / 5
            var image = rng.bytes(n * seg)
            try pool.write(vm, at: 0, image)
            let old = try pool.createSnapshot(of: vm, named: "old")
            try pool.setExpendable(old, true)
            let oldImage = image
            image = rng.bytes(n * seg)
            try pool.write(vm, at: 0, image)
            let keep = try pool.createSnapshot(of: vm, named: "keep")
            let keepImage = image
            image = rng.bytes(n * seg)
            try pool.write(vm, at: 0, image)
            try pool.setOnFull(vm, .dropSnapshots)
            try pool.commit()
            let big = rng.bytes((Int(pool.usage().freeBytes) / seg + n / 2) * seg)
            plan.syncsLeft = cut
            do {
                try pool.write(vm, at: UInt64(n * seg), big)
                completed = !plan.dead
                if completed { XCTAssertEqual(pool.droppedSnapshots().recent.map(\.path), ["vm/old"], "the write needed the drop") }
            } catch {
                XCTAssertTrue(plan.dead, "cut \(cut): \(error) without a power cut")
            }
            set.crash(seed: 1510 + UInt64(cut))
            plan.syncsLeft = nil
            plan.dead = false
            let reopened = try Pool.open(devices: devices())
            XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [], "cut \(cut)")
            if reopened.info(old) != nil { assertSameBytes(try reopened.image(old), oldImage, "cut \(cut): old, not dropped") }
            assertSameBytes(try reopened.image(keep), keepImage, "cut \(cut): keep")
            let after = try reopened.image(vm)
            assertSameBytes(Array(after[0..<n * seg]), image, "cut \(cut): vm's committed bytes")
            if after.count > n * seg {
                let written = Array(after[(n * seg)...])
                for k in 0..<(written.count + seg - 1) / seg {
                    let piece = Array(written[(k * seg)..<min(written.count, (k + 1) * seg)])
                    let new = Array(big[(k * seg)..<min(big.count, (k + 1) * seg)])
                    XCTAssertTrue(sameBytes(piece, new) || sameBytes(piece, [UInt8](repeating: 0, count: piece.count)),
                                  "cut \(cut): vm segment \(n + k) is neither the write nor zeros")
                }
            }
            try reopened.close()
            cut += 1
        }
        XCTAssertTrue(completed, "the write finished without a power cut after \(cut) syncs")
        print("SpacePolicyTests: the power cut at each of \(cut - 1) syncs of a write that dropped a snapshot")
    }

    /// Writers rewriting their own segments of a drop-snapshots disk, a committer, and a
    /// thread taking expendable snapshots (and one that is not, at the start) on a pool too
    /// small for them all: every write succeeds, the kept snapshot keeps its bytes, every
    /// surviving snapshot reads whole segments some writer wrote, and the pool checks clean.
    func testWritersCommitterAndSnapshotsWhenSpaceRunsOut() throws {
        let log = LogLines()
        let (_, pool) = try smallPool(log)
        let vm = try pool.createDisk(named: "vm")
        try pool.setOnFull(vm, .dropSnapshots)
        let writers = 3, segmentsPerWriter = 4, rounds = 16
        let segmentBytes = seg
        // Writer w owns segments w*4 ..< w*4+4 and writes them whole with value w*64 + round.
        for k in 0..<writers * segmentsPerWriter {
            try pool.write(vm, at: UInt64(k * seg), [UInt8](repeating: UInt8(k / segmentsPerWriter * 64 + 1), count: seg))
        }
        let keep = try pool.createSnapshot(of: vm, named: "keep")
        let keepImage = try pool.image(keep)
        let failures = ThreadFailures()
        let writing = DispatchGroup(), background = DispatchGroup()
        let stop = Atomic(false)
        let snapshotsTaken = Atomic(0)
        for w in 0..<writers {
            DispatchQueue.global().async(group: writing) {
                for round in 2...rounds {
                    // Each round starts after a snapshot newer than the last round's (at most
                    // 2 s of waiting), so that the pool fills whatever the threads' timing.
                    let deadline = Date().addingTimeInterval(2)
                    while snapshotsTaken.load(ordering: .relaxed) < round - 1 && Date() < deadline { usleep(500) }
                    for i in 0..<segmentsPerWriter {
                        let k = w * segmentsPerWriter + i
                        let value = UInt8(w * 64 + round)
                        do { try pool.write(vm, at: UInt64(k * segmentBytes), [UInt8](repeating: value, count: segmentBytes)) } catch {
                            failures.add("writer \(w) round \(round): \(error)")
                        }
                        // A gap now and then, so that the snapshot thread's split gets the
                        // chain's lock between writes (readers would otherwise keep it).
                        usleep(800)
                    }
                }
            }
        }
        DispatchQueue.global().async(group: background) {
            while !stop.load(ordering: .relaxed) {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(3000)
            }
        }
        DispatchQueue.global().async(group: background) {
            var n = 0
            while !stop.load(ordering: .relaxed) {
                n += 1
                do {
                    let id = try pool.createSnapshot(of: vm, named: "s\(n)")
                    try pool.setExpendable(id, true)
                    snapshotsTaken.add(1, ordering: .relaxed)
                } catch {
                    // A snapshot may find the pool full (mkdir's own ENOSPC) or be dropped
                    // before it is marked: neither is a failure of the policy.
                    let code = (error as? LunError)?.errno ?? -1
                    if code != ENOSPC && code != ENOENT && code != ESTALE { failures.add("snapshot s\(n): \(error)") }
                }
                usleep(15_000)
            }
        }
        writing.wait()
        stop.store(true, ordering: .relaxed)
        background.wait()
        print("SpacePolicyTests: \(snapshotsTaken.load(ordering: .relaxed)) snapshots taken, \(pool.droppedSnapshots().count) dropped for space")
        XCTAssertEqual(failures.messages, [])
        XCTAssertGreaterThan(pool.droppedSnapshots().count, 0, "space ran out at least once")
        assertSameBytes(try pool.image(keep), keepImage, "the snapshot that is not expendable")
        var expected = [UInt8]()
        for k in 0..<writers * segmentsPerWriter {
            expected += [UInt8](repeating: UInt8(k / segmentsPerWriter * 64 + rounds), count: seg)
        }
        assertSameBytes(try pool.image(vm), expected, "vm after every write")
        for info in pool.disks() where info.parent == vm && info.id != keep {
            let bytes = try pool.image(info.id)
            for k in 0..<bytes.count / seg {
                let piece = Array(bytes[k * seg..<(k + 1) * seg])
                let w = k / segmentsPerWriter
                let value = Int(piece[0]) - w * 64
                XCTAssertTrue((1...rounds).contains(value) && sameBytes(piece, [UInt8](repeating: piece[0], count: seg)),
                              "snapshot \(info.name) segment \(k) is not a whole write of writer \(w)")
            }
        }
        XCTAssertEqual(log.dropLines.count, pool.droppedSnapshots().count)
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
    }
}
