// Change files (Pool+Changes.swift): a disk's changes against its predecessor read as the disk
// in differing segments and as holes elsewhere, SEEK_DATA/SEEK_HOLE and the allocation agree,
// and applying a change file's data extents to the predecessor's image gives the disk's image:
// for writes, rewrites with the same bytes, zeros, discards, resizes, snapshot removal in the
// middle of a chain, and with writers and a committer running beside the readers.
import XCTest
import Foundation
import Synchronization
@testable import LunEngine
import LunEngineTesting

extension Pool {
    /// Disk `id`'s whole change file.
    func changeFile(_ id: DiskID) throws -> [UInt8] {
        let size = Int(info(id)!.sizeBytes)
        var out = [UInt8](repeating: 0xEE, count: size)
        let opened = try openDisk(id)
        let n = try out.withUnsafeMutableBytes { try readChanges(opened, at: 0, into: $0) }
        return Array(out[0..<n])
    }

    /// The data extents of disk `id`'s change file, by SEEK_DATA/SEEK_HOLE from 0 to the end.
    func changeExtents(_ id: DiskID) throws -> [Range<Int>] {
        var extents: [Range<Int>] = []
        var position: UInt64 = 0
        while let start = try seekChanges(id, from: position, data: true) {
            guard let end = try seekChanges(id, from: start, data: false), end > start else {
                XCTFail("disk \(id): SEEK_HOLE from data at \(start) found no hole after it")
                break
            }
            extents.append(Int(start)..<Int(end))
            position = end
        }
        return extents
    }
}

/// Applies disk `id`'s change file to `older` (its predecessor's bytes), as `lunfs
/// apply-changes` does: only the data extents are copied, then the size is set. Also checks
/// that the change file reads zeros outside its extents and that its allocation covers
/// exactly the segments of its extents. Returns the result, to compare with the disk's image.
func applyChangeFile(of id: DiskID, to older: [UInt8], in pool: Pool, _ context: String) throws -> [UInt8] {
    let change = try pool.changeFile(id)
    let extents = try pool.changeExtents(id)
    let summary = try XCTUnwrap(try pool.changeSummary(id), context)
    var result = older
    if result.count < change.count { result += [UInt8](repeating: 0, count: change.count - result.count) }
    result.removeSubrange(change.count...)
    let seg = Int(pool.geometry.rsegSizeBytes)
    var segments = Set<Int>()
    var holeStart = 0
    for extent in extents {
        result.replaceSubrange(extent, with: change[extent])
        for k in extent.lowerBound / seg...(extent.upperBound - 1) / seg { segments.insert(k) }
        checkZeros(change, holeStart..<extent.lowerBound, "\(context): disk \(id)'s change file in a hole")
        holeStart = extent.upperBound
    }
    checkZeros(change, holeStart..<change.count, "\(context): disk \(id)'s change file in its last hole")
    XCTAssertEqual(summary.changedSegments, segments.count, "\(context): disk \(id): allocation against extents")
    return result
}

/// Fails unless bytes[range] are all zeros (compared as whole arrays: fast in debug builds).
func checkZeros(_ bytes: [UInt8], _ range: Range<Int>, _ message: String) {
    guard !range.isEmpty, !sameBytes(Array(bytes[range]), [UInt8](repeating: 0, count: range.count)) else { return }
    XCTFail("\(message): not zeros in \(range)")
}

/// Every disk with a predecessor, both with images: its change file applied to the
/// predecessor's image gives its own. Pairwise along the chain, so applying the change files
/// in order to the oldest image gives each newer one.
func checkChangeFiles(_ pool: Pool, images: [DiskID: [UInt8]], _ context: String) throws {
    for id in images.keys.sorted() {
        guard let info = pool.info(id), info.hasImage, let p = info.predecessor, let older = images[p] else { continue }
        let applied = try applyChangeFile(of: id, to: older, in: pool, context)
        assertSameBytes(applied, images[id]!, "\(context): disk \(id) from predecessor \(p) and its change file")
    }
}

final class ChangeFileTests: XCTestCase {
    let seg = 1 << 20

    func testChangesBetweenSnapshots() throws {
        var rng = TestRandom(seed: 15)
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        XCTAssertNil(try pool.changeSummary(vm), "a disk never snapshotted has no change file")
        var image = rng.bytes(8 * seg)
        try pool.write(vm, at: 0, image)
        let monday = try pool.createSnapshot(of: vm, named: "monday")
        XCTAssertNil(try pool.changeSummary(monday), "the oldest of a chain has no change file")
        XCTAssertEqual(try pool.changeSummary(vm)?.changedSegments, 0, "nothing changed since the snapshot")
        XCTAssertEqual(try pool.changeExtents(vm), [])
        XCTAssertEqual(try pool.changeFile(vm), [UInt8](repeating: 0, count: 8 * seg))

        // Segment 1: a small write. Segment 3: rewritten with the bytes it had. Segment 5:
        // zeros over the whole segment (it is unmapped: Pool+ZeroSegments). Segment 6: a
        // discard. Segment 9: the disk grows into it with data; 10 is grown into as zeros.
        let small = rng.bytes(100)
        try pool.write(vm, at: UInt64(seg + 5000), small)
        image.replaceSubrange(seg + 5000..<seg + 5100, with: small)
        try pool.write(vm, at: UInt64(3 * seg), Array(image[3 * seg..<4 * seg]))
        try pool.write(vm, at: UInt64(5 * seg), [UInt8](repeating: 0, count: seg))
        image.replaceSubrange(5 * seg..<6 * seg, with: [UInt8](repeating: 0, count: seg))
        XCTAssertFalse(pool.stateLock.withLock { pool.state.disk(vm)!.map.entry(5).isMapped }, "the zeroed segment is unmapped")
        try pool.discard(vm, at: UInt64(6 * seg), length: UInt64(seg))
        image.replaceSubrange(6 * seg..<7 * seg, with: [UInt8](repeating: 0, count: seg))
        let tail = rng.bytes(seg / 2)
        try pool.write(vm, at: UInt64(9 * seg), tail)
        try pool.resize(vm, to: UInt64(11 * seg))
        image += [UInt8](repeating: 0, count: seg) + tail + [UInt8](repeating: 0, count: seg + seg / 2)
        assertSameBytes(try pool.image(vm), image, "vm")

        let monImage = try pool.image(monday)
        XCTAssertEqual(try pool.changeExtents(vm), [seg..<2 * seg, 3 * seg..<4 * seg, 5 * seg..<7 * seg, 9 * seg..<10 * seg])
        XCTAssertEqual(try pool.changeSummary(vm)?.changedBytes, UInt64(5 * seg))
        let change = try pool.changeFile(vm)
        XCTAssertEqual(change.count, 11 * seg)
        assertSameBytes(Array(change[5 * seg..<7 * seg]), [UInt8](repeating: 0, count: 2 * seg), "zeroed and discarded segments read zeros as data")
        assertSameBytes(try applyChangeFile(of: vm, to: monImage, in: pool, "vm"), image, "monday + vm's changes")
        // SEEK_HOLE inside data, SEEK_DATA inside a hole, and past the end.
        XCTAssertEqual(try pool.seekChanges(vm, from: UInt64(seg + 7), data: true), UInt64(seg + 7))
        XCTAssertEqual(try pool.seekChanges(vm, from: UInt64(seg + 7), data: false), UInt64(2 * seg))
        XCTAssertEqual(try pool.seekChanges(vm, from: UInt64(2 * seg), data: true), UInt64(3 * seg))
        XCTAssertEqual(try pool.seekChanges(vm, from: UInt64(10 * seg), data: false), UInt64(10 * seg))
        XCTAssertNil(try pool.seekChanges(vm, from: UInt64(10 * seg), data: true))
        XCTAssertNil(try pool.seekChanges(vm, from: UInt64(11 * seg), data: false))

        // A second snapshot: its changes are what the first change file showed, and they stay
        // put while the live disk moves on; the live disk's change file starts empty again.
        let tuesday = try pool.createSnapshot(of: vm, named: "tuesday")
        let tuesdayChanges = try pool.changeFile(tuesday)
        assertSameBytes(tuesdayChanges, change, "tuesday's changes are what vm's were")
        XCTAssertEqual(try pool.changeSummary(vm)?.changedSegments, 0)
        // Shrinking the live disk and growing it again: the dropped segments differ (zeros).
        try pool.resize(vm, to: UInt64(2 * seg))
        try pool.resize(vm, to: UInt64(4 * seg))
        image.removeSubrange((2 * seg)...)
        image += [UInt8](repeating: 0, count: 2 * seg)
        let more = rng.bytes(3000)
        try pool.write(vm, at: 10, more)
        image.replaceSubrange(10..<3010, with: more)
        assertSameBytes(try pool.changeFile(tuesday), tuesdayChanges, "tuesday's changes after writes to vm")
        XCTAssertEqual(try pool.changeExtents(vm), [0..<seg, 2 * seg..<4 * seg], "the written segment and the two dropped by the shrink")
        let tueImage = try pool.image(tuesday)
        var images: [DiskID: [UInt8]] = [monday: monImage, tuesday: tueImage, vm: image]
        try checkChangeFiles(pool, images: images, "three in a chain")

        // Removing tuesday from the middle: vm's changes are now against monday.
        try pool.removeNode(tuesday)
        images[tuesday] = nil
        XCTAssertEqual(pool.info(vm)!.predecessor, monday)
        try checkChangeFiles(pool, images: images, "after removing the middle snapshot")
        // A snapshot of monday goes below it: monday's change file against it is empty.
        let sunday = try pool.createSnapshot(of: monday, named: "sunday")
        images[sunday] = monImage
        XCTAssertEqual(try pool.changeSummary(monday)?.changedSegments, 0)
        try checkChangeFiles(pool, images: images, "after a snapshot of the oldest")
        // Reopened: the change files come from the maps alone, so they survive as they are.
        try pool.close()
        let reopened = try drives.open()
        try checkChangeFiles(reopened, images: images, "after a reopen")
        try reopened.close()
    }

    /// Writers on the live disk and a committer while readers take a snapshot's change file
    /// and the live disk's: the snapshot's never moves, and the live disk's always applies to
    /// the snapshot to give bytes some prefix of the writes could have made (each writer keeps
    /// to its own segments, so its own segments must show one of its versions).
    func testChangeFilesWithWritersAndCommitter() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 64 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let vm = try pool.createDisk(named: "vm")
        var rng = TestRandom(seed: 1515)
        let base = rng.bytes(8 * seg)
        try pool.write(vm, at: 0, base)
        let monday = try pool.createSnapshot(of: vm, named: "monday")
        try pool.write(vm, at: UInt64(2 * seg), rng.bytes(seg))
        let tuesday = try pool.createSnapshot(of: vm, named: "tuesday")
        let tuesdayChanges = try pool.changeFile(tuesday)
        let tueImage = try pool.image(tuesday)
        let failures = ThreadFailures()
        let segmentBytes = seg
        let writers = 3, rounds = 24
        // Writer w owns segments w and w + 4 and writes whole segments of one byte value per round.
        let group = DispatchGroup(), committer = DispatchGroup()
        let stop = Atomic(false)
        for w in 0..<writers {
            DispatchQueue.global().async(group: group) {
                for round in 1...rounds {
                    let k = round % 2 == 0 ? w : w + 4
                    let value = UInt8(truncatingIfNeeded: w * 64 + round)
                    do { try pool.write(vm, at: UInt64(k * segmentBytes), [UInt8](repeating: value, count: segmentBytes)) } catch { failures.add("writer \(w): \(error)") }
                }
            }
        }
        DispatchQueue.global().async(group: committer) {
            while !stop.load(ordering: .relaxed) {
                do { try pool.commit() } catch { failures.add("commit: \(error)") }
                usleep(2000)
            }
        }
        let readers = DispatchGroup()
        for r in 0..<2 {
            DispatchQueue.global().async(group: readers) {
                for _ in 0..<8 {
                    do {
                        let t = try pool.changeFile(tuesday)
                        if !sameBytes(t, tuesdayChanges) { failures.add("reader \(r): tuesday's change file moved") }
                        let live = try pool.changeFile(vm)
                        for w in 0..<writers {
                            for k in [w, w + 4] {
                                let piece = live[k * segmentBytes..<(k + 1) * segmentBytes]
                                // Untouched yet: a hole of zeros (tuesday's bytes apply); written: one value throughout.
                                if !sameBytes(Array(piece), [UInt8](repeating: piece.first!, count: segmentBytes)) { failures.add("reader \(r): segment \(k) of vm's changes is torn") }
                            }
                        }
                    } catch { failures.add("reader \(r): \(error)") }
                }
            }
        }
        readers.wait()
        group.wait()
        stop.store(true, ordering: .relaxed)
        committer.wait()
        XCTAssertEqual(failures.messages, [])
        var expected = tueImage
        for w in 0..<writers {
            for k in [w, w + 4] {
                let lastRound = (1...rounds).last { ($0 % 2 == 0 ? w : w + 4) == k }!
                expected.replaceSubrange(k * seg..<(k + 1) * seg, with: [UInt8](repeating: UInt8(truncatingIfNeeded: w * 64 + lastRound), count: seg))
            }
        }
        assertSameBytes(try pool.image(vm), expected, "vm after the writers")
        try checkChangeFiles(pool, images: [monday: try pool.image(monday), tuesday: tueImage, vm: expected], "after the writers")
        try pool.close()
    }
}
