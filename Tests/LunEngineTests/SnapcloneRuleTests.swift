// One test per snapclone rule (003 [0103]-[0105], Figs. 13-15), on the chain p <- c <- vm with c
// the snapclone, each checked on the maps and on the bytes every disk reads; and the copy
// running in the background while threads write every disk of the chain and a committer runs.
// Every test runs under both variants (`SnapcloneVariant`): the predecessor's copies made by
// a second pass, or on the write path.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class SnapcloneRuleTests: XCTestCase {
    private struct Chain: @unchecked Sendable {
        let drives: MemoryDrives
        let pool: Pool
        let p: DiskID, c: DiskID, vm: DiskID
        let original: [UInt8]
        var seg: Int { Int(pool.geometry.rsegSizeBytes) }
        func disk(_ id: DiskID) -> Disk { pool.state.disks[id]! }
    }

    /// vm with four segments written, snapshot p, then snapshot c (between p and vm).
    private func makeChain(predecessor: Bool = true, variant: SnapcloneVariant) throws -> Chain {
        let drives = MemoryDrives(count: 5, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        pool.snapcloneVariant = variant
        let seg = Int(pool.geometry.rsegSizeBytes)
        var rng = TestRandom(seed: 77)
        let vm = try pool.createDisk(named: "vm")
        let original = rng.bytes(4 * seg)
        try pool.write(vm, at: 0, original)
        let p = predecessor ? try pool.createSnapshot(of: vm, named: "p") : 0
        let c = try pool.createSnapshot(of: vm, named: "c")
        try pool.makeSnapclone(c)
        pool.quiescedCopySegments = 0
        return Chain(drives: drives, pool: pool, p: p, c: c, vm: vm, original: original)
    }

    /// 003 [0103]: after a copy the clone holds its own segment and the successor keeps Sp
    /// (a shadow); turning the clone back into a snapshot shares it again and frees the copy.
    func testCopyKeepsTheSuccessorsSpAndRevertSharesAgain() throws {
        for variant in SnapcloneVariant.allCases { try checkCopyKeepsTheSuccessorsSpAndRevertSharesAgain(variant) }
    }

    private func checkCopyKeepsTheSuccessorsSpAndRevertSharesAgain(_ variant: SnapcloneVariant) throws {
        let ch = try makeChain(variant: variant)
        let used = ch.pool.usage().usedBytes
        try ch.pool.copySnapclone(ch.c, segments: 1)
        XCTAssertTrue(ch.disk(ch.c).map.entry(0).holdsData)
        XCTAssertTrue(ch.disk(ch.vm).map.entry(0).sp, "the successor keeps Sp")
        XCTAssertTrue(SharingChain.isShadow(ch.disk(ch.vm), 0))
        XCTAssertEqual(ch.pool.copyProgress(ch.c), CopyProgress(copied: 1, total: 4, independent: false))
        XCTAssertEqual(ch.pool.copyEstimate(ch.c), CopyEstimate(bytesDone: UInt64(ch.seg), bytesLeft: 3 * UInt64(ch.seg),
                                                               bytesPerSecond: nil, secondsLeft: nil),
                       "no background copy here: no rate")
        XCTAssertEqual(ch.pool.usage().usedBytes, used + UInt64(ch.seg))
        try ch.pool.revertSnapclone(ch.c)
        try ch.pool.commit()
        XCTAssertTrue(ch.disk(ch.c).map.entry(0).ss, "shared again")
        XCTAssertEqual(ch.pool.usage().usedBytes, used, "the copy's space is back")
        for id in [ch.p, ch.c, ch.vm] { assertSameBytes(try ch.pool.image(id), ch.original, "disk \(id)") }
        XCTAssertEqual(try PoolChecker(pool: ch.pool).run().problems, [])
    }

    /// Fig. 13d: a segment the successor changes after the clone copied it is, for the
    /// predecessor, kept only in the clone. Unless the predecessor gets its own copy before
    /// the clone leaves, it would then read the successor's new bytes.
    func testPredecessorKeepsOldBytesChangedAfterTheCopy() throws {
        for variant in SnapcloneVariant.allCases { try checkPredecessorKeepsOldBytesChangedAfterTheCopy(variant) }
    }

    private func checkPredecessorKeepsOldBytesChangedAfterTheCopy(_ variant: SnapcloneVariant) throws {
        let ch = try makeChain(variant: variant)
        try ch.pool.copySnapclone(ch.c, segments: 1)             // segment 0 copied, shadowed
        let fresh = [UInt8](repeating: 0x5A, count: ch.seg)
        try ch.pool.write(ch.vm, at: 0, fresh)                   // the shadow ends
        XCTAssertFalse(ch.disk(ch.vm).map.entry(0).sp)
        switch variant {
        case .secondPass:
            XCTAssertTrue(SharingChain.predecessorNeedsCopy(ch.disk(ch.c), 0), "left to the second pass")
        case .thirdCopy:
            XCTAssertTrue(ch.disk(ch.p).map.entry(0).holdsData, "the write gave p its copy")
            XCTAssertFalse(SharingChain.predecessorNeedsCopy(ch.disk(ch.c), 0))
        }
        while try !ch.pool.copySnapclone(ch.c, segments: 1).independent {}
        XCTAssertTrue(ch.disk(ch.p).map.entry(0).holdsData, "p has its own copy of segment 0")
        assertSameBytes(try ch.pool.image(ch.p), ch.original, "p")
        assertSameBytes(try ch.pool.image(ch.c), ch.original, "c")
        assertSameBytes(try ch.pool.image(ch.vm), fresh + Array(ch.original[ch.seg...]), "vm")
        XCTAssertEqual(try PoolChecker(pool: ch.pool, scrub: true).run().problems, [])
    }

    /// 003 [0104] against Fig. 15: the four writes whose old bytes the clone keeps for its
    /// predecessor p (a hand-off to the clone, a copy out to it, and the two that end a
    /// shadow). Under the first variant each gives p its copy on the write path, so nothing
    /// is left for a second pass; under the scaling variant all four are left to it. Partial
    /// writes, so the old bytes around them must come along.
    func testWritesTheCloneKeepsForItsPredecessor() throws {
        for variant in SnapcloneVariant.allCases { try checkWritesTheCloneKeepsForItsPredecessor(variant) }
    }

    private func checkWritesTheCloneKeepsForItsPredecessor(_ variant: SnapcloneVariant) throws {
        let ch = try makeChain(variant: variant)
        let seg = ch.seg
        try ch.pool.copySnapclone(ch.c, segments: 2)              // segments 0 and 1 copied, shadowed
        var vmImage = ch.original
        func write(_ id: DiskID, _ k: Int, _ image: inout [UInt8]) throws {
            let bytes = [UInt8](repeating: UInt8(0x40 + k), count: 100), at = k * seg + 1000
            try ch.pool.write(id, at: UInt64(at), bytes)
            image.replaceSubrange(at..<at + 100, with: bytes)
        }
        try write(ch.vm, 0, &vmImage)                             // vm holds 0 under a shadow: replaced
        try write(ch.vm, 2, &vmImage)                             // c reads vm's 2: hand-off to c
        let s = try ch.pool.createSnapshot(of: ch.vm, named: "s") // p <- c <- s <- vm; s inherits the shadow on 1
        var sImage = vmImage
        XCTAssertTrue(SharingChain.isShadow(ch.disk(s), 1))
        try write(s, 1, &sImage)                                  // s reads vm's 1 under a shadow: copy in
        try write(s, 3, &sImage)                                  // c reads 3 through s: copy in and out
        let clone = ch.disk(ch.c)
        for k in 0..<4 {
            switch variant {
            case .secondPass:
                XCTAssertTrue(SharingChain.predecessorNeedsCopy(clone, k), "segment \(k) left to the second pass")
            case .thirdCopy:
                XCTAssertTrue(ch.disk(ch.p).map.entry(k).holdsData, "segment \(k): p got its copy on the write path")
                XCTAssertTrue(clone.map.entry(k).isExclusive, "segment \(k): the clone's alone")
            }
        }
        XCTAssertEqual(SharingChain.segmentsToCopy(clone), variant == .thirdCopy ? 0 : 4)
        for (id, image) in [(ch.p, ch.original), (ch.c, ch.original), (s, sImage), (ch.vm, vmImage)] {
            assertSameBytes(try ch.pool.image(id), image, "\(variant) disk \(id) before the copy ends")
        }
        XCTAssertEqual(try PoolChecker(pool: ch.pool).run().problems, [], "\(variant)")
        while try !ch.pool.copySnapclone(ch.c, segments: 1).independent {}
        try ch.pool.close()
        let reopened = try ch.drives.open()
        for (id, image) in [(ch.p, ch.original), (ch.c, ch.original), (s, sImage), (ch.vm, vmImage)] {
            assertSameBytes(try reopened.image(id), image, "\(variant) disk \(id) after the copy and a reopen")
        }
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [], "\(variant)")
        try reopened.close()
    }

    /// Fig. 14: where nothing changed, the predecessor reads the successor directly once the
    /// clone leaves (no copy for it), and the clone keeps its copies alone.
    func testDetachLetsThePredecessorReadTheSuccessor() throws {
        for variant in SnapcloneVariant.allCases { try checkDetachLetsThePredecessorReadTheSuccessor(variant) }
    }

    private func checkDetachLetsThePredecessorReadTheSuccessor(_ variant: SnapcloneVariant) throws {
        let ch = try makeChain(variant: variant)
        let used = ch.pool.usage().usedBytes
        while try !ch.pool.copySnapclone(ch.c, segments: 1).independent {}
        try ch.pool.commit()
        XCTAssertEqual(ch.pool.usage().usedBytes, used + 4 * UInt64(ch.seg), "four copies, all the clone's")
        XCTAssertEqual(ch.pool.info(ch.p)!.successor, ch.vm)
        XCTAssertEqual(ch.pool.info(ch.vm)!.predecessor, ch.p)
        XCTAssertNil(ch.pool.info(ch.c)!.predecessor)
        XCTAssertNil(ch.pool.info(ch.c)!.successor)
        XCTAssertEqual(ch.pool.kind(ch.c), .independent)
        for k in 0..<4 {
            XCTAssertTrue(ch.disk(ch.p).map.entry(k).ss && ch.disk(ch.vm).map.entry(k).sp, "segment \(k)")
            XCTAssertTrue(ch.disk(ch.c).map.entry(k).isExclusive, "segment \(k)")
        }
        // The clone's bytes are its own now: writing it changes nobody else.
        try ch.pool.write(ch.c, at: 100, [9, 9, 9])
        var expected = ch.original
        expected.replaceSubrange(100..<103, with: [9, 9, 9])
        assertSameBytes(try ch.pool.image(ch.c), expected, "c")
        for id in [ch.p, ch.vm] { assertSameBytes(try ch.pool.image(id), ch.original, "disk \(id)") }
        let reopened = try ch.drives.open(readOnly: true)
        assertSameBytes(try reopened.image(ch.c), expected, "c after reopen")
        XCTAssertEqual(try PoolChecker(pool: reopened).run().problems, [])
    }

    /// Fig. 14, no predecessor: the successor's Sp goes with the clone, so the successor
    /// writes in place again.
    func testDetachWithoutPredecessorClearsTheSuccessorsSp() throws {
        for variant in SnapcloneVariant.allCases { try checkDetachWithoutPredecessorClearsTheSuccessorsSp(variant) }
    }

    private func checkDetachWithoutPredecessorClearsTheSuccessorsSp(_ variant: SnapcloneVariant) throws {
        let ch = try makeChain(predecessor: false, variant: variant)
        while try !ch.pool.copySnapclone(ch.c, segments: 1).independent {}
        for k in 0..<4 { XCTAssertTrue(ch.disk(ch.vm).map.entry(k).isExclusive, "segment \(k)") }
        XCTAssertEqual(try PoolChecker(pool: ch.pool).run().problems, [])
    }

    /// Fig. 15d: once at most M segments are left, one call copies them with the chain held
    /// and the clone leaves.
    func testLastSegmentsAreCopiedQuiesced() throws {
        for variant in SnapcloneVariant.allCases { try checkLastSegmentsAreCopiedQuiesced(variant) }
    }

    private func checkLastSegmentsAreCopiedQuiesced(_ variant: SnapcloneVariant) throws {
        let ch = try makeChain(variant: variant)
        ch.pool.quiescedCopySegments = 2
        XCTAssertFalse(try ch.pool.copySnapclone(ch.c, segments: 1).independent, "4 left, then 3: not yet")
        XCTAssertTrue(try ch.pool.copySnapclone(ch.c, segments: 1).independent, "2 left: the last pass takes them")
        XCTAssertThrowsError(try ch.pool.makeSnapclone(ch.c))
        XCTAssertThrowsError(try ch.pool.makeSnapclone(ch.vm), "vm reads no other disk")
    }

    /// The background copier runs while one thread writes each disk of the chain and a
    /// committer commits every 20 ms; every disk ends as its writer left it, and so after a
    /// reopen.
    func testBackgroundCopyUnderConcurrentWriters() throws {
        for variant in SnapcloneVariant.allCases { try checkBackgroundCopyUnderConcurrentWriters(variant) }
    }

    private func checkBackgroundCopyUnderConcurrentWriters(_ variant: SnapcloneVariant) throws {
        let ch = try makeChain(variant: variant)
        let seg = ch.seg
        ch.pool.quiescedCopySegments = 2
        ch.pool.startBackgroundCommits(intervalSeconds: 0.02)
        ch.pool.startBackgroundCopies()
        final class Writer: @unchecked Sendable { var image: [UInt8] = []; var error: (any Error)? }
        let writers = [ch.p, ch.c, ch.vm].map { _ in Writer() }
        let ids = [ch.p, ch.c, ch.vm]
        let deadline = Date(timeIntervalSinceNow: 20)
        DispatchQueue.concurrentPerform(iterations: 3) { i in
            var rng = TestRandom(seed: 1000 + UInt64(i))
            writers[i].image = ch.original
            do {
                var n = 0
                while Date() < deadline && (n < 40 || ch.pool.kind(ch.c) == .snapclone) {
                    let len = [4096, seg / 3, seg][Int(rng.below(3))]
                    let off = Int(rng.below(UInt64(4 * seg - len)))
                    let bytes = rng.bytes(len)
                    try ch.pool.write(ids[i], at: UInt64(off), bytes)
                    writers[i].image.replaceSubrange(off..<off + len, with: bytes)
                    n += 1
                }
            } catch { writers[i].error = error }
        }
        for w in writers { XCTAssertNil(w.error) }
        XCTAssertEqual(ch.pool.kind(ch.c), .independent, "the copy finished within 20 s")
        for (i, id) in ids.enumerated() { assertSameBytes(try ch.pool.image(id), writers[i].image, "disk \(id)") }
        XCTAssertEqual(try PoolChecker(pool: ch.pool, scrub: true).run().problems, [])
        try ch.pool.close()
        let reopened = try ch.drives.open()
        for (i, id) in ids.enumerated() { assertSameBytes(try reopened.image(id), writers[i].image, "disk \(id) after reopen") }
        try reopened.close()
    }
}
