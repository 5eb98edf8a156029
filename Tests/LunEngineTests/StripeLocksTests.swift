// In-place writes to one RSEG wait for each other only where their rows meet (StripeLocks):
// a write held in flight on its drive must not stop a write to another row of the same RSEG,
// and must stop a write to its own row until it has landed with its checksum. Both on RAID 0,
// 1 and 5 (where a row shares its parity), with the bytes and a scrub checked after.
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

final class StripeLocksTests: XCTestCase {
    func testRAID0WritesToOtherRowsOfTheRSEGPassAHeldWrite() throws { try check(.raid0) }
    func testRAID1WritesToOtherRowsOfTheRSEGPassAHeldWrite() throws { try check(.raid1) }
    func testRAID5WritesToOtherRowsOfTheRSEGPassAHeldWrite() throws { try check(.raid5) }

    private func check(_ raid: RAIDLevel) throws {
        let set = SimulatedDriveSet(count: 6, sizeBytes: 64 << 20, seed: 3301)
        try Pool.format(devices: set.devices, raid: raid)
        let pool = try Pool.open(devices: set.devices)
        let id = try pool.createDisk(named: "vm")
        var rng = SeededRandom(seed: 3302)
        var expected = rng.bytes(1 << 20)
        try pool.write(id, at: 0, expected)
        // The first in-place write joins the write-intent set (a commit); the ones below need none.
        try pool.write(id, at: 0, Array(expected[0..<4096]))
        try pool.commit()

        // Column 0 lies on the store's first data member: hold the next write that drive gets.
        let e = try XCTUnwrap(pool.state.disk(id)?.map.entry(0))
        let layout = pool.storeIO.layout(Int(e.store), raid)
        let drive = pool.state.rsds.member(Int(e.store), layout.dataMember(column: 0)).drive
        let gate = set[drive].holdNextWrite()
        defer { gate.open() }

        let held = rng.bytes(4096), sameRow = rng.bytes(4096), otherRow = rng.bytes(4096)
        let heldDone = DispatchSemaphore(value: 0), sameRowDone = DispatchSemaphore(value: 0)
        let failures = Mutex<[String]>([])
        @Sendable func writer(_ at: Int, _ bytes: [UInt8], _ done: DispatchSemaphore?) {
            do { try pool.write(id, at: UInt64(at), bytes) } catch { failures.withLock { $0.append("write at \(at): \(error)") } }
            done?.signal()
        }
        Thread { writer(0, held, heldDone) }.start()
        XCTAssertTrue(gate.waitUntilReached(), "the write of row 0 never reached drive \(drive)")

        // Row 2 of the same column and RSEG: with one lock per RSEG it waited for the gate.
        let otherDone = DispatchSemaphore(value: 0)
        Thread { writer(8192, otherRow, otherDone) }.start()
        XCTAssertEqual(otherDone.wait(timeout: .now() + 20), .success, "a write to another row waited for the held one")

        // Row 0 again: it must wait until the held write has landed with its checksum.
        Thread { writer(0, sameRow, sameRowDone) }.start()
        XCTAssertEqual(sameRowDone.wait(timeout: .now() + 0.5), .timedOut, "a write to the held row did not wait for it")
        gate.open()
        XCTAssertEqual(heldDone.wait(timeout: .now() + 20), .success)
        XCTAssertEqual(sameRowDone.wait(timeout: .now() + 20), .success)
        XCTAssertEqual(failures.withLock { $0 }, [])

        expected.replaceSubrange(0..<4096, with: sameRow)
        expected.replaceSubrange(8192..<12288, with: otherRow)
        assertSameBytes(try pool.readBytes(id, at: 0, count: expected.count), expected, "after the three writes")
        try pool.close()
        let reopened = try Pool.open(devices: set.devices)
        assertSameBytes(try reopened.readBytes(id, at: 0, count: expected.count), expected, "after a reopen")
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        try reopened.close()
    }

    /// Many threads writing 4 KiB blocks of a few RSEGs, some to the same blocks, with a
    /// committer and reads beside them: every block ends as the last write to it left it and
    /// passes its checksum.
    func testThreadsWritingNeighbouringBlocksWithACommitter() throws {
        for raid in [RAIDLevel.raid0, .raid1, .raid5] {
            let set = SimulatedDriveSet(count: 6, sizeBytes: 64 << 20, seed: 3310)
            try Pool.format(devices: set.devices, raid: raid)
            let pool = try Pool.open(devices: set.devices)
            let id = try pool.createDisk(named: "vm")
            let size = 2 << 20
            try pool.write(id, at: 0, [UInt8](repeating: 1, count: size))
            try pool.commit()
            // Each block is owned by one thread (block % threads), so its last value is known;
            // threads still meet in every row lock's RSEG and, on RAID 5, in every parity row.
            let threads = 6, rounds = 300
            let lastValue = Mutex<[UInt8]>([UInt8](repeating: 1, count: size / 4096))
            let failures = Mutex<[String]>([])
            let stop = Atomic<Bool>(false)
            let group = DispatchGroup()
            for t in 0..<threads {
                group.enter()
                Thread {
                    var rng = SeededRandom(seed: UInt64(3320 + t))
                    for i in 0..<rounds {
                        let block = Int(rng.next() % UInt64(size / 4096 / threads)) * threads + t
                        let value = UInt8(truncatingIfNeeded: 2 + i % 250)
                        do {
                            try pool.write(id, at: UInt64(block * 4096), [UInt8](repeating: value, count: 4096))
                            lastValue.withLock { $0[block] = value }
                            let back = try pool.readBytes(id, at: UInt64(block * 4096), count: 4096)
                            if back != [UInt8](repeating: value, count: 4096) { failures.withLock { $0.append("\(raid) block \(block) read back wrong") } }
                        } catch { failures.withLock { $0.append("\(raid) block \(block): \(error)") } }
                    }
                    group.leave()
                }.start()
            }
            let committer = Thread {
                while !stop.load(ordering: .acquiring) {
                    do { try pool.commit() } catch { failures.withLock { $0.append("commit: \(error)") } }
                    usleep(2000)
                }
            }
            committer.start()
            XCTAssertEqual(group.wait(timeout: .now() + 120), .success)
            stop.store(true, ordering: .releasing)
            XCTAssertEqual(failures.withLock { $0 }, [])
            try pool.commit()
            let values = lastValue.withLock { $0 }
            let image = try pool.readBytes(id, at: 0, count: size)
            for (b, v) in values.enumerated() where image[b * 4096..<(b + 1) * 4096].contains(where: { $0 != v }) {
                XCTFail("\(raid): block \(b) should hold \(v)")
                break
            }
            XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [], "\(raid)")
            try pool.close()
        }
    }
}
