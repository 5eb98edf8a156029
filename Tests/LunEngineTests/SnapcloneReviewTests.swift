// Review tests for snapclones: cases of the shadow rules and of crash safety that the rule
// tests do not cover. Each names the finding it shows.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class SnapcloneReviewTests: XCTestCase {
    /// A successor's write that ends a shadow leaves the clone's copy held alone, so the clone
    /// writes it in place at once; but the committed maps still show the shadow (the copy
    /// "equal to the successor's bytes"). A crash before the commit keeps the clone's in-place
    /// bytes under a committed shadow, and turning the clone back then frees them: the clone
    /// reads the successor's bytes instead of what it read before the revert.
    func testShadowEndedBySuccessorMakesClonesInPlaceWriteCommitFirst() throws {
        var set = SimulatedDriveSet(count: 5, sizeBytes: 256 << 20, seed: 11)
        try Pool.format(devices: set.devices, raid: .raid5)
        let pool = try Pool.open(devices: set.devices)
        let seg = Int(pool.geometry.rsegSizeBytes)
        var rng = TestRandom(seed: 5)
        let vm = try pool.createDisk(named: "vm")
        let original = rng.bytes(4 * seg)
        try pool.write(vm, at: 0, original)
        let c = try pool.createSnapshot(of: vm, named: "c")     // no predecessor: c's Sp never set
        try pool.makeSnapclone(c)
        pool.quiescedCopySegments = -1                           // never leave the chain here
        try pool.copySnapclone(c, segments: 2)                   // segments 0 and 1 copied, shadowed
        let cd = pool.state.disks[c]!, vd = pool.state.disks[vm]!
        XCTAssertTrue(SharingChain.isShadowed(cd, 0) && SharingChain.isShadowed(cd, 1))
        XCTAssertEqual(cd.map.entry(0).store, cd.map.entry(1).store, "both copies in one store (test setup)")
        // Put the copies' store in the write-intent set, durably, so that an in-place write
        // to it needs no commit of its own.
        try pool.write(vm, at: UInt64(seg), [UInt8](repeating: 1, count: 16))
        try pool.write(c, at: UInt64(seg), [UInt8](repeating: 2, count: 16))
        try pool.commit()
        XCTAssertTrue(pool.state.intentDurable.contains(Int(cd.map.entry(0).store)))
        // The successor ends the shadow on segment 0 (it redirects), then the clone writes its
        // copy in place. Before the fix nothing committed in between.
        try pool.write(vm, at: 0, [UInt8](repeating: 0x33, count: 16))
        XCTAssertFalse(vd.map.entry(0).sp)
        let mine = [UInt8](repeating: 0x77, count: 16)
        try pool.write(c, at: 100, mine)
        var expected = original
        expected.replaceSubrange(seg..<seg + 16, with: [UInt8](repeating: 2, count: 16))
        expected.replaceSubrange(100..<116, with: mine)

        set.crash(seed: 3, tearing: .keepUnsynced)
        let reopened = try Pool.open(devices: set.devices)
        // Whether or not the clone's unsynced write survived, the clone must read one
        // consistent version, and turning it back must not change what it reads.
        let before = try reopened.image(c)
        try reopened.revertSnapclone(c)
        let after = try reopened.image(c)
        XCTAssertTrue(sameBytes(before, expected), "the clone's in-place write survived the crash (keepUnsynced)")
        assertSameBytes(after, before, "turning the clone back changed the bytes it reads")
        try reopened.close()
    }

    /// The copy runs from two threads at once (the background copier and direct calls) while
    /// one thread writes each disk of p <- c <- vm, another takes and deletes snapshots of vm
    /// (the clone's successor changes under the copy) and turns the clone back and makes it a
    /// snapclone again, and a committer commits every 20 ms. Every disk ends as its writer left
    /// it, nothing leaks, and so after a reopen.
    func testCopyRacesChainChangesAndWriters() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let seg = Int(pool.geometry.rsegSizeBytes)
        let segments = 8
        var rng0 = TestRandom(seed: 91)
        let vm = try pool.createDisk(named: "vm")
        let original = rng0.bytes(segments * seg)
        try pool.write(vm, at: 0, original)
        let p = try pool.createSnapshot(of: vm, named: "p")
        let c = try pool.createSnapshot(of: vm, named: "c")
        try pool.makeSnapclone(c)
        pool.quiescedCopySegments = 2
        pool.startBackgroundCommits(intervalSeconds: 0.02)
        pool.startBackgroundCopies()
        final class Box: @unchecked Sendable { var image: [UInt8] = []; var error: (any Error)?; var note = "" }
        let ids = [p, c, vm]
        let boxes = (0..<5).map { _ in Box() }
        let deadline = Date(timeIntervalSinceNow: 8)
        DispatchQueue.concurrentPerform(iterations: 5) { i in
            var rng = TestRandom(seed: 2000 + UInt64(i))
            do {
                switch i {
                case 0, 1, 2:
                    boxes[i].image = original
                    while Date() < deadline {
                        let len = [4096, seg / 3, seg][Int(rng.below(3))]
                        let off = Int(rng.below(UInt64(segments * seg - len)))
                        let bytes = rng.bytes(len)
                        try pool.write(ids[i], at: UInt64(off), bytes)
                        boxes[i].image.replaceSubrange(off..<off + len, with: bytes)
                    }
                case 3:
                    var n = 0
                    while Date() < deadline {
                        n += 1
                        do {
                            let r = try pool.createSnapshot(of: vm, named: "r\(n)", quiesceTimeoutSeconds: 1)
                            usleep(UInt32(rng.below(20_000)))
                            try pool.removeNode(r)
                        } catch let e as LunError where e.errno == EBUSY {}
                        if pool.kind(c) == .snapclone && rng.chance(0.3) {
                            try pool.revertSnapclone(c)
                            usleep(UInt32(rng.below(10_000)))
                            try pool.makeSnapclone(c)
                        }
                    }
                default:
                    while Date() < deadline && pool.kind(c) == .snapclone {
                        do { try pool.copySnapclone(c, segments: 1) } catch let e as LunError where e.errno == EBUSY {}
                    }
                }
            } catch { boxes[i].error = error }
        }
        for (i, b) in boxes.enumerated() { XCTAssertNil(b.error, "thread \(i)") }
        if pool.kind(c) == .snapclone {
            pool.quiescedCopySegments = segments
            while try !pool.copySnapclone(c, segments: segments).independent {}
        }
        XCTAssertEqual(pool.kind(c), .independent)
        for (i, id) in ids.enumerated() { assertSameBytes(try pool.image(id), boxes[i].image, "disk \(id)") }
        try pool.commit()
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
        let reopened = try drives.open()
        for (i, id) in ids.enumerated() { assertSameBytes(try reopened.image(id), boxes[i].image, "disk \(id) after reopen") }
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        try reopened.close()
    }

    /// p <- c <- vm with c copying.
    private func copyingChain(segments: Int = 4) throws -> (MemoryDrives, Pool, p: DiskID, c: DiskID, vm: DiskID, [UInt8]) {
        let drives = MemoryDrives(count: 5, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        var rng = TestRandom(seed: 8)
        let vm = try pool.createDisk(named: "vm")
        let original = rng.bytes(segments * Int(pool.geometry.rsegSizeBytes))
        try pool.write(vm, at: 0, original)
        let p = try pool.createSnapshot(of: vm, named: "p")
        let c = try pool.createSnapshot(of: vm, named: "c")
        try pool.makeSnapclone(c)
        pool.quiescedCopySegments = -1
        return (drives, pool, p, c, vm, original)
    }

    /// The clone's successor leaves the chain (its image deleted, its directory stays for the
    /// snapshots below it): the clone is the newest disk of its chain and finishes its copy
    /// with every byte.
    func testCloneWhoseSuccessorImageIsDeletedFinishes() throws {
        let (_, pool, p, c, vm, original) = try copyingChain()
        try pool.copySnapclone(c, segments: 1)
        try pool.write(vm, at: 10, [1, 2, 3])
        try pool.deleteImage(vm)
        XCTAssertNil(pool.info(c)!.successor)
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        pool.quiescedCopySegments = 0
        while try !pool.copySnapclone(c, segments: 1).independent {}
        for id in [p, c] { assertSameBytes(try pool.image(id), original, "disk \(id)") }
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
    }

    /// A copying snapclone whose image is deleted (unlink of c/disk.img) leaves its chain; its
    /// hollow directory must not go on as a snapclone (listed as copying, kind "snapclone",
    /// and later "independent", so that it could move to the root without an image).
    func testDeletedCloneImageIsNoLongerASnapclone() throws {
        let (_, pool, p, c, vm, original) = try copyingChain()
        try pool.copySnapclone(c, segments: 2)
        try pool.deleteImage(c)
        for id in [p, vm] { assertSameBytes(try pool.image(id), original, "disk \(id)") }
        XCTAssertEqual(pool.copyingSnapclones(), [], "a hollow node is no snapclone")
        XCTAssertNotEqual(pool.kind(c), .snapclone)
        _ = try? pool.copySnapclone(c, segments: 1)
        XCTAssertNotEqual(pool.kind(c), .independent, "a hollow node did not copy anything")
        XCTAssertThrowsError(try pool.moveToRoot(c, as: "hollow"), "a node without an image moved to the root")
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
    }

    /// Reserved snapshots (section 11: one segment set aside per shared segment, for copies
    /// that writes in the sharing run need). The clone's copies are charged to a reservation
    /// like a write's copy: here to p's, the first sharer. Once c is independent, p still
    /// shares all four segments with vm and has nothing left to cover them, while c keeps a
    /// reservation for segments it no longer shares with anyone.
    func testSnapcloneCopiesDoNotEatThePredecessorsReservation() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let seg = UInt64(pool.geometry.rsegSizeBytes)
        var rng = TestRandom(seed: 4)
        let vm = try pool.createDisk(named: "vm")
        try pool.write(vm, at: 0, rng.bytes(4 * Int(seg)))
        let p = try pool.createSnapshot(of: vm, named: "p", reserved: true)
        let c = try pool.createSnapshot(of: vm, named: "c", reserved: true)
        XCTAssertEqual(pool.info(p)!.reservedBytes, 4 * seg)
        XCTAssertEqual(pool.info(c)!.reservedBytes, 4 * seg)
        try pool.makeSnapclone(c)
        pool.quiescedCopySegments = 0
        while try !pool.copySnapclone(c, segments: 1).independent {}
        XCTAssertEqual(pool.info(p)!.sharedBytes, 4 * seg, "p reads vm's four segments")
        XCTAssertEqual(pool.info(p)!.reservedBytes, 4 * seg, "p's reservation still covers what it shares")
        XCTAssertEqual(pool.info(c)!.reservedBytes, 0, "independent c shares nothing: no reservation to keep")
    }
}
