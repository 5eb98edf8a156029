// PSEG moves while the pool serves I/O: writer threads check their disks against models as
// they go, a committer commits in a loop, and a mover moves random members of random stores
// to other drives. Afterwards the pool is reopened: `check` finds nothing, every byte is the
// model's, and the free PSEGs are what the running pool counted (nothing leaked or doubly used).
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class PSEGMoveTests: XCTestCase {
    func testMovesWithWritersAndACommitter() throws {
        for level in [RAIDLevel.raid0, .raid1, .raid5] {
            try runWithWriters(level, seed: UInt64(level.rawValue) &+ 101) { pool, failures in
                var rng = SeededRandom(seed: UInt64(level.rawValue) ^ 0x5EED)
                var moves = 0
                for _ in 0..<40 {
                    let stores = pool.stateLock.withLock { (0..<pool.state.rsds.highWater).filter { pool.state.rsds.isLive($0) } }
                    guard !stores.isEmpty else { continue }
                    let store = stores[Int(rng.below(UInt64(stores.count)))]
                    let slot = StoreMemberSlot(store: store, member: Int(rng.below(UInt64(level.memberCount))))
                    let targets = pool.moveTargets(for: slot)
                    guard !targets.isEmpty else { continue }
                    do {
                        try pool.movePSEG(slot, toDrive: targets[Int(rng.below(UInt64(targets.count)))])
                        moves += 1
                    } catch {
                        // A store freed meanwhile is fine; anything else is not.
                        if pool.stateLock.withLock({ pool.state.rsds.isLive(store) }) { failures.add("\(level) move of \(slot): \(error)") }
                    }
                }
                if moves <= 10 { failures.add("\(level): only \(moves) moves made") }
            }
        }
    }

    /// `drive remove` and `drive replace` in the engine: every member of a drive (here drive
    /// 0, a metadata mirror) moves off it while writers run, onto drive 8 where the rules
    /// allow; afterwards the pool opens and reads everything without drive 0.
    func testEvacuatingADriveWithWritersRunning() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let run = try runWithWriters(level, seed: UInt64(level.rawValue) &+ 707) { pool, failures in
                do {
                    try pool.evacuateDrive(0, onto: 8)
                } catch { failures.add("\(level) evacuate: \(error)") }
                if !pool.members(onDrive: 0).isEmpty { failures.add("\(level): drive 0 still holds members") }
                if pool.metadata.mirrors.contains(0) { failures.add("\(level): drive 0 is still a metadata mirror") }
                if pool.members(onDrive: 8).isEmpty { failures.add("\(level): nothing went to drive 8") }
            }
            let without = try run.drives.open(missing: [0])
            XCTAssertFalse(without.redundancyRisk().isDegraded, "\(level): drive 0 held nothing")
            for (id, image) in run.images { assertSameBytes(try without.image(id), image, "\(level) disk \(id) without drive 0") }
            try without.close()
        }
    }

    /// The gate a move waits at before it gives the old PSEG back: it waits for a read that
    /// counted itself in before, in either half, and not for reads that come after.
    func testMemberSwitchGateWaitsForEarlierReadsOnly() {
        let gate = MemberSwitchGate()
        for _ in 0..<2 {
            let early = gate.enter()
            let passed = AtomicFlag(false)
            let done = DispatchSemaphore(value: 0)
            Thread {
                gate.waitForReadsBefore()
                passed.value.store(true, ordering: .releasing)
                done.signal()
            }.start()
            usleep(50_000)
            // Reads that start now use the other half and do not hold the mover up forever.
            let late = gate.enter()
            gate.leave(late)
            XCTAssertFalse(passed.value.load(ordering: .acquiring), "the mover waits for the read that was there before")
            gate.leave(early)
            XCTAssertEqual(done.wait(timeout: .now() + 5), .success, "the mover goes on once that read ended")
        }
    }

    /// Three writer threads check their disks against models while a committer commits and
    /// `mover` runs; then the pool is closed, reopened, checked, counted and compared.
    @discardableResult
    private func runWithWriters(_ level: RAIDLevel, seed: UInt64, mover: @escaping @Sendable (Pool, ThreadFailures) -> Void) throws
        -> (drives: MemoryDrives, images: [DiskID: [UInt8]]) {
        let drives = MemoryDrives(count: 9, sizeBytes: 96 << 20)
        try drives.format(raid: level)
        let pool = try drives.open()
        let failures = ThreadFailures()
        let models = ThreadModels()
        let stop = AtomicFlag(false)
        let group = DispatchGroup()
        let size = 3 << 20
        var ids: [DiskID] = []
        for t in 0..<3 {
            let id = try pool.createDisk(named: "w\(t)")
            try pool.resize(id, to: UInt64(size))
            var fill = SeededRandom(seed: seed &+ UInt64(t))
            try pool.write(id, at: 0, fill.bytes(size))
            ids.append(id)
        }
        for id in ids { models.images[id] = try pool.image(id) }
        let committer = Thread {
            while !stop.value.load(ordering: .acquiring) {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(3000)
            }
        }
        committer.start()
        for (t, id) in ids.enumerated() {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SeededRandom(seed: seed &* 31 &+ UInt64(t))
                var image = models.lock.withLock { models.images[id]! }
                do {
                    for step in 0..<120 {
                        let len = [700, 4096, 65536, 300_000][Int(rng.below(4))]
                        let off = Int(rng.below(UInt64(size - len)))
                        if rng.chance(0.6) {
                            let bytes = rng.bytes(len)
                            try pool.write(id, at: UInt64(off), bytes)
                            image.replaceSubrange(off..<off + len, with: bytes)
                        } else if try pool.readBytes(id, at: UInt64(off), count: len) != Array(image[off..<off + len]) {
                            failures.add("\(level) disk \(id) step \(step): read at \(off) len \(len) differs")
                        }
                    }
                } catch { failures.add("\(level) writer \(t): \(error)") }
                models.lock.withLock { models.images[id] = image }
            }.start()
        }
        group.enter()
        Thread {
            defer { group.leave() }
            mover(pool, failures)
        }.start()
        group.wait()
        stop.value.store(true, ordering: .releasing)
        while !committer.isFinished { usleep(1000) }
        XCTAssertEqual(failures.messages, [], "\(level)")
        let free = pool.stateLock.withLock { pool.state.psegs.freeCount }
        try pool.close()
        let again = try drives.open()
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [], "\(level)")
        XCTAssertEqual(again.state.psegs.freeCount, free, "\(level): free PSEGs per drive after reopening")
        for id in ids { assertSameBytes(try again.image(id), models.images[id]!, "\(level) disk \(id) after reopening") }
        try again.close()
        return (drives, models.images)
    }
}
