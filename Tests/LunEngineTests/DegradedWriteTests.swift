// A pool with a drive gone keeps accepting writes (issue 11 item 4): new RAID 1 and RAID 5
// stores are built from the drives still in service, degraded from birth when a member has no
// drive of its own left, and filled in by the stale-drive rebuild when the drive comes back.
// Several writers (with snapshots, so copy on write) and a committer run while the drive is
// gone; then the drive returns and is rebuilt, another drive is lost, and every disk and
// snapshot must still read back as written.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class DegradedWriteTests: XCTestCase {
    typealias Failures = ThreadFailures
    typealias Models = ThreadModels

    func testRAID5WritesGoOnWithADriveGoneAndReadAfterItsRebuildAndAnotherLoss() throws {
        try exercise(.raid5, driveCount: 5, gone: 3, lostLater: 0, seed: 1101)
    }

    func testRAID1WritesGoOnWithADriveGoneAndReadAfterItsRebuildAndAnotherLoss() throws {
        try exercise(.raid1, driveCount: 2, gone: 1, lostLater: 0, seed: 1102)
    }

    /// Drive missing when the pool opens (not only lost while it runs): the first write
    /// already needs a new store, and gets one.
    func testRAID5PoolOpenedWithADriveMissingAllocatesDegradedStores() throws {
        let set = SimulatedDriveSet(count: 5, sizeBytes: 64 << 20, seed: 1103)
        try Pool.format(devices: set.devices, raid: .raid5)
        var devices: [BlockDevice?] = set.devices
        devices[2] = nil
        let pool = try Pool.open(devices: devices, sizes: set.devices.map(\.sizeBytes))
        let id = try pool.createDisk(named: "vm")
        var rng = SeededRandom(seed: 1104)
        let bytes = rng.bytes(24 << 20)
        try pool.write(id, at: 0, bytes)
        let risk = pool.redundancyRisk()
        XCTAssertGreaterThanOrEqual(risk.degradedStores, 3, "24 MiB needs three 8 MiB stores, all degraded")
        XCTAssertEqual(risk.disksWithoutRedundancy, [id])
        XCTAssertEqual(risk.unreadableStores, 0)
        XCTAssertEqual(pool.driveStatuses()[2].state, .missing)
        try pool.close()
        set.makeFullySynced()
        let healed = try Pool.open(devices: set.devices)
        XCTAssertEqual(healed.rebuiltStaleDriveIndexes, [2])
        XCTAssertFalse(healed.redundancyRisk().isDegraded)
        assertSameBytes(try healed.image(id), bytes, "after the rebuild")
        try healed.close()
        devices = set.devices
        devices[4] = nil
        let lostAnother = try Pool.open(devices: devices, sizes: set.devices.map(\.sizeBytes), readOnly: true)
        assertSameBytes(try lostAnother.image(id), bytes, "with drive 4 missing after drive 2 was rebuilt")
    }

    private func exercise(_ level: RAIDLevel, driveCount: Int, gone: Int, lostLater: Int, seed: UInt64) throws {
        let set = SimulatedDriveSet(count: driveCount, sizeBytes: 96 << 20, seed: seed)
        try Pool.format(devices: set.devices, raid: level)
        let pool = try Pool.open(devices: set.devices)
        let failures = Failures()
        let models = Models()
        // Some data on every drive before the loss.
        let first = try pool.createDisk(named: "before")
        var rng = SeededRandom(seed: seed &+ 1)
        let early = rng.bytes(3 << 20)
        try pool.write(first, at: 0, early)
        models.images[first] = early
        try pool.commit()
        set[gone].disappear()

        let stop = AtomicFlag(false)
        let committer = Thread {
            while !stop.value.load(ordering: .acquiring) {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(2000)
            }
        }
        committer.start()
        let group = DispatchGroup()
        for t in 0..<4 {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SeededRandom(seed: seed &* 31 &+ UInt64(t))
                do {
                    let live = try pool.createDisk(named: "t\(t)")
                    try pool.resize(live, to: 4 << 20)
                    var images: [DiskID: [UInt8]] = [live: [UInt8](repeating: 0, count: 4 << 20)]
                    for step in 0..<60 {
                        if step % 20 == 10 {
                            let snap = try pool.createSnapshot(of: live, named: "s\(step)")
                            images[snap] = images[live]
                            continue
                        }
                        let len = [4096, 65536, 1 << 20][Int(rng.below(3))]
                        let off = Int(rng.below(UInt64((4 << 20) - len)))
                        let bytes = rng.bytes(len)
                        try pool.write(live, at: UInt64(off), bytes)
                        images[live]!.replaceSubrange(off..<off + len, with: bytes)
                    }
                    for (id, expected) in images where !sameBytes(try pool.image(id), expected) {
                        failures.add("thread \(t): disk \(id) differs while the drive is gone")
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
        XCTAssertEqual(failures.messages, [], "\(level): every write and commit succeeds with drive \(gone) gone")
        XCTAssertEqual(pool.driveStatuses()[gone].state, .failed)
        XCTAssertGreaterThan(pool.redundancyRisk().degradedStores, 0)
        XCTAssertEqual(pool.redundancyRisk().unreadableStores, 0)
        try pool.close()

        // The drive comes back with what it held when it went: stale, rebuilt at open.
        var devices: [BlockDevice?] = set.devices
        devices[gone] = set[gone].durableCopy(seed: seed &+ 2)
        let healed = try Pool.open(devices: devices)
        XCTAssertEqual(healed.rebuiltStaleDriveIndexes, [gone], "\(level): drive \(gone) rebuilt")
        XCTAssertFalse(healed.redundancyRisk().isDegraded)
        XCTAssertEqual(try PoolChecker(pool: healed, scrub: true).run().problems, [], "\(level) after the rebuild")
        for (id, expected) in models.images { assertSameBytes(try healed.image(id), expected, "\(level): disk \(id) after the rebuild") }
        try healed.close()

        // Another drive goes: redundancy rebuilt above must carry every byte.
        devices[lostLater] = nil
        let degraded = try Pool.open(devices: devices, sizes: set.devices.map(\.sizeBytes), readOnly: true)
        for (id, expected) in models.images {
            assertSameBytes(try degraded.image(id), expected, "\(level): disk \(id) with drive \(lostLater) lost after the rebuild")
        }
    }
}
