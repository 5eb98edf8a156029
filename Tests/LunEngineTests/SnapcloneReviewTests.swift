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
}
