// In-place writes to one RSEG wait for each other only where their rows meet (StripeLocks):
// a write held in flight on its drive must not stop a write to another row of the same RSEG,
// and must stop a write to its own row (on RAID 5 also in another column: the row's parity)
// until it has landed with its checksum. On RAID 0, 1 and 5, with the bytes and a scrub
// checked after; and threads writing the same blocks of a few RSEGs, with a committer.
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

        let held = rng.bytes(4096), sameRow = rng.bytes(4096), otherRow = rng.bytes(4096), sameParity = rng.bytes(4096)
        let heldDone = DispatchSemaphore(value: 0), sameRowDone = DispatchSemaphore(value: 0)
        let sameParityDone = DispatchSemaphore(value: 0)
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

        // Row 0 again: it must wait until the held write has landed with its checksum. Row 0 of
        // column 1 (256 KiB on) shares the held write's parity block on RAID 5, so it waits too.
        let column = Int(pool.state.geometry.stripeUnitBytes)
        Thread { writer(0, sameRow, sameRowDone) }.start()
        Thread { writer(column, sameParity, sameParityDone) }.start()
        XCTAssertEqual(sameRowDone.wait(timeout: .now() + 0.5), .timedOut, "a write to the held row did not wait for it")
        if raid == .raid5 {
            XCTAssertEqual(sameParityDone.wait(timeout: .now() + 0.1), .timedOut, "a write to the held row's parity did not wait")
        }
        gate.open()
        XCTAssertEqual(heldDone.wait(timeout: .now() + 20), .success)
        XCTAssertEqual(sameRowDone.wait(timeout: .now() + 20), .success)
        XCTAssertEqual(sameParityDone.wait(timeout: .now() + 20), .success)
        XCTAssertEqual(failures.withLock { $0 }, [])

        expected.replaceSubrange(0..<4096, with: sameRow)
        expected.replaceSubrange(8192..<12288, with: otherRow)
        expected.replaceSubrange(column..<column + 4096, with: sameParity)
        assertSameBytes(try pool.readBytes(id, at: 0, count: expected.count), expected, "after the three writes")
        try pool.close()
        let reopened = try Pool.open(devices: set.devices)
        assertSameBytes(try reopened.readBytes(id, at: 0, count: expected.count), expected, "after a reopen")
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        try reopened.close()
    }

    /// Threads writing whole 4 KiB blocks of two RSEGs, often the same block at once, with a
    /// committer beside them: every block read back is one write's bytes, never a mix, and
    /// ends as one of the writes to it; the scrub finds every checksum and parity right
    /// (without the row locks, data and checksums of two writes of a block interleave).
    func testThreadsWritingTheSameBlocksWithACommitter() throws {
        for raid in [RAIDLevel.raid0, .raid1, .raid5] {
            let set = SimulatedDriveSet(count: 6, sizeBytes: 64 << 20, seed: 3310)
            try Pool.format(devices: set.devices, raid: raid)
            let pool = try Pool.open(devices: set.devices)
            let id = try pool.createDisk(named: "vm")
            let blocks = 2 * Int(pool.state.geometry.rsegSizeBytes) / 4096
            try pool.write(id, at: 0, [UInt8](repeating: 1, count: blocks * 4096))
            try pool.commit()
            let threads = 6, rounds = 300
            // Values written to each block; a block holds one of them, all its bytes alike.
            let written = Mutex<[Set<UInt8>]>(Array(repeating: [1], count: blocks))
            let failures = Mutex<[String]>([])
            let stop = Atomic<Bool>(false)
            let group = DispatchGroup()
            for t in 0..<threads {
                group.enter()
                Thread {
                    var rng = SeededRandom(seed: UInt64(3320 + t))
                    for i in 0..<rounds {
                        // A few hot blocks, so that writes of one block meet.
                        let block = rng.chance(0.5) ? Int(rng.below(8)) * 37 % blocks : Int(rng.below(UInt64(blocks)))
                        let value = UInt8(2 + (t * rounds + i) % 250)
                        written.withLock { _ = $0[block].insert(value) }
                        do {
                            try pool.write(id, at: UInt64(block * 4096), [UInt8](repeating: value, count: 4096))
                            let back = try pool.readBytes(id, at: UInt64(block * 4096), count: 4096)
                            if back.contains(where: { $0 != back[0] }) { failures.withLock { $0.append("\(raid) block \(block) read back mixed") } }
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
            let values = written.withLock { $0 }
            let image = try pool.readBytes(id, at: 0, count: blocks * 4096)
            for b in 0..<blocks {
                let block = image[b * 4096..<(b + 1) * 4096]
                guard let first = block.first, block.allSatisfy({ $0 == first }), values[b].contains(first) else {
                    XCTFail("\(raid): block \(b) holds bytes no single write gave it")
                    break
                }
            }
            XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [], "\(raid)")
            try pool.close()
        }
    }
}
