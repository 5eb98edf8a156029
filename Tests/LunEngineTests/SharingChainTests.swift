// The sharing chain's rules on a small chain built through the pool: where each disk reads a
// segment and whether it is shared, what a write must hand to whom, and what leaving the
// chain changes, checked both as map edits and as the bytes every disk reads afterwards.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class SharingChainTests: XCTestCase {
    func testRulesOnAThreeDiskChain() throws {
        let drives = MemoryDrives(count: 2, sizeBytes: 128 << 20)
        try drives.format(raid: .raid1)
        let pool = try drives.open()
        let seg = Int(pool.geometry.rsegSizeBytes)
        func disk(_ id: DiskID) -> Disk { pool.state.disks[id]! }
        let c = try pool.createDisk(named: "c")
        let v0 = [UInt8](repeating: 0xA0, count: 2 * seg), v1 = [UInt8](repeating: 0xB1, count: seg)
        try pool.write(c, at: 0, v0)                         // segments 0 and 1
        let p1 = try pool.createSnapshot(of: c, named: "p1")
        try pool.write(c, at: UInt64(seg), v1)               // segment 1: handed off to p1
        let p2 = try pool.createSnapshot(of: c, named: "p2") // chain p1 <- p2 <- c

        // Segment 0: c holds it; p2 and p1 read it from c.
        let held0 = disk(c).map.entry(0)
        XCTAssertTrue(held0.holdsData && held0.sp)
        for id in [p1, p2, c] {
            let found = SharingChain.lookup(disk(id), 0)
            XCTAssertEqual(found.holder, held0, "disk \(id) reads segment 0 from c")
            XCTAssertTrue(found.shared)
        }
        XCTAssertEqual(SharingChain.sharers(of: disk(c), 0).map(\.id), [p2, p1])
        XCTAssertEqual(SharingChain.sharers(of: disk(p1), 0).map(\.id), [p2, c])
        // Segment 1: p1 holds the old bytes alone; p2 reads c's new ones.
        XCTAssertFalse(SharingChain.lookup(disk(p1), 1).shared)
        XCTAssertEqual(SharingChain.sharers(of: disk(p2), 1).map(\.id), [c])

        // What writes need: p2 reads segment 0 through c for p1 as well, so both take copies;
        // c hands segment 1 to p2; p1 writes segment 1 in place.
        guard case .copyInAndOut = SharingChain.plan(disk(p2), 0) else { return XCTFail("p2 segment 0") }
        guard case .handOff = SharingChain.plan(disk(c), 1) else { return XCTFail("c segment 1") }
        guard case .inPlace = SharingChain.plan(disk(p1), 1) else { return XCTFail("p1 segment 1") }
        let change = SharingChain.afterWrite(disk(p2), 0, .copyInAndOut, mine: (90, 1), theirs: (91, 2))
        XCTAssertEqual(change.edits, [
            .setEntry(disk: c, segment: 0, entry: held0.with(sp: false)),          // c: nobody reads it through p2 now
            .setEntry(disk: p1, segment: 0, entry: .held(store: 91, rseg: 2, sp: false)),
            .setEntry(disk: p2, segment: 0, entry: .held(store: 90, rseg: 1, sp: false)),
        ])
        XCTAssertEqual(change.unshared, [SharingChain.location(held0)])
        XCTAssertTrue(change.freed.isEmpty)

        // Unmapping p2's segment 0 while p2 stays needs a copy for p1; leaving the chain does
        // not (p1 then reads c directly), but c's segment 1 is no longer read by anyone else.
        XCTAssertTrue(SharingChain.dropNeedsCopy(disk(p2), 0))
        let removal = SharingChain.afterRemoval(disk(p2))
        XCTAssertEqual(removal.edits, [.setEntry(disk: c, segment: 1, entry: disk(c).map.entry(1).with(sp: false))])
        try pool.removeNode(p2)
        XCTAssertEqual(SharingChain.lookup(disk(p1), 0).holder, held0)
        XCTAssertFalse(SharingChain.lookup(disk(c), 1).shared, "c's segment 1 is exclusive again")
        assertSameBytes(try pool.image(p1), v0, "p1 after p2 left")
        assertSameBytes(try pool.image(c), Array(v0[0..<seg]) + v1, "c after p2 left")

        // The bytes survive a reopen that replays all of this.
        let replayed = try drives.open(readOnly: true)
        assertSameBytes(try replayed.image(p1), v0, "p1 after replay")
        assertSameBytes(try replayed.image(c), Array(v0[0..<seg]) + v1, "c after replay")
        XCTAssertEqual(try PoolChecker(pool: replayed).run().problems, [])
    }
}
