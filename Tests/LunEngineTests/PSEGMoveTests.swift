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
            try runMovesWithWriters(level, seed: UInt64(level.rawValue) &+ 101)
        }
    }

    private func runMovesWithWriters(_ level: RAIDLevel, seed: UInt64) throws {
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
        let moves = Atomic<Int>(0)
        Thread {
            defer { group.leave() }
            var rng = SeededRandom(seed: seed ^ 0x5EED)
            for _ in 0..<40 {
                let stores = pool.stateLock.withLock { (0..<pool.state.rsds.highWater).filter { pool.state.rsds.isLive($0) } }
                guard !stores.isEmpty else { continue }
                let store = stores[Int(rng.below(UInt64(stores.count)))]
                let slot = StoreMemberSlot(store: store, member: Int(rng.below(UInt64(level.memberCount))))
                let targets = pool.moveTargets(for: slot)
                guard !targets.isEmpty else { continue }
                do {
                    try pool.movePSEG(slot, toDrive: targets[Int(rng.below(UInt64(targets.count)))])
                    moves.add(1, ordering: .relaxed)
                } catch {
                    // A store freed meanwhile is fine; anything else is not.
                    if pool.stateLock.withLock({ pool.state.rsds.isLive(store) }) { failures.add("\(level) move of \(slot): \(error)") }
                }
            }
        }.start()
        group.wait()
        stop.value.store(true, ordering: .releasing)
        while !committer.isFinished { usleep(1000) }
        XCTAssertEqual(failures.messages, [], "\(level)")
        XCTAssertGreaterThan(moves.load(ordering: .relaxed), 10, "\(level): moves made")
        let free = pool.stateLock.withLock { pool.state.psegs.freeCount }
        try pool.close()
        let again = try drives.open()
        XCTAssertEqual(try PoolChecker(pool: again, scrub: true).run().problems, [], "\(level)")
        XCTAssertEqual(again.state.psegs.freeCount, free, "\(level): free PSEGs per drive after reopening")
        for id in ids { assertSameBytes(try again.image(id), models.images[id]!, "\(level) disk \(id) after reopening") }
        try again.close()
    }
}
