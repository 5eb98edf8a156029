// Model-based randomized test of snapshots: random writes, snapshots, snapshots of snapshots,
// rollbacks, group snapshots, deletes, resizes, discards and reopens on a pool of in-memory
// drives, with every disk's whole image compared against a plain byte-array model after every
// step, and every change file applied to its predecessor's model image every fifth step.
// Seeded; the seed is printed so a failure can be replayed with LUNFS_SEED.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class SnapshotModelTests: XCTestCase {
    struct ModelDisk { var image: [UInt8]; var parent: DiskID?; var hasImage: Bool }

    func seed(_ fallback: UInt64) -> UInt64 {
        if let s = ProcessInfo.processInfo.environment["LUNFS_SEED"], let v = UInt64(s) { return v }
        return fallback
    }

    func testRandomWorkloadMatchesModel() throws {
        for level in [RAIDLevel.raid0, .raid5, .raid1] {
            let seed = self.seed(UInt64(Date().timeIntervalSince1970) ^ UInt64(level.rawValue))
            print("SnapshotModelTests seed \(seed) level \(level)")
            try runWorkload(seed: seed, level: level, steps: 250)
        }
    }

    func runWorkload(seed: UInt64, level: RAIDLevel, steps: Int) throws {
        var rng = TestRandom(seed: seed)
        let drives = MemoryDrives(count: 8, sizeBytes: 192 << 20)
        try drives.format(raid: level)
        var pool = try drives.open()
        var model: [DiskID: ModelDisk] = [:]
        let maxSize = 4 << 20
        var counter = 0
        var snapcloneSteps = 0, independents = 0, rollbacks = 0, groupSnapshots = 0, partialsSeen = 0, fills = 0
        defer { print("SnapshotModelTests seed \(seed) level \(level): \(steps) steps, \(snapcloneSteps) snapclone copy steps, \(independents) snapclones made independent, \(rollbacks) rollbacks, \(groupSnapshots) group snapshots, \(partialsSeen) steps with partial segments, \(fills) filled") }
        func liveImages() -> [DiskID] { model.filter { $0.value.hasImage }.keys.sorted() }
        for step in 0..<steps {
            let roll = Int.random(in: 0..<100, using: &rng)
            let live = liveImages()
            let context = "seed \(seed) step \(step) level \(level)"
            // Partial segments (copy on first write in blocks) are filled now and then, between
            // any two steps, as the background fill would.
            if pool.partialSegmentProgress.segments > 0 {
                partialsSeen += 1
                if rng.chance(0.15) { fills += try pool.fillPartialSegments(limit: Int(rng.below(3)) + 1) }
            }
            if !live.isEmpty && rng.chance(0.1) {
                // Rollbacks and group snapshots (issue 15).
                counter += 1
                if rng.chance(0.5) {
                    if try modelRollback(pool, &model, &rng, live: live, context: context) { rollbacks += 1 }
                } else if try modelGroupSnapshot(pool, &model, &rng, live: live, name: "g\(counter)", context: context) {
                    groupSnapshots += 1
                }
            } else if !live.isEmpty && rng.chance(0.15) {
                // Snapclones: none of these changes a byte any disk reads.
                pool.quiescedCopySegments = Int(rng.below(4))
                let clones = pool.copyingSnapclones()
                if let c = clones.randomElement(using: &rng), rng.chance(0.8) {
                    if rng.chance(0.85) {
                        let progress = try pool.copySnapclone(c, segments: Int(rng.below(6)) + 1)
                        snapcloneSteps += 1
                        if progress.independent {
                            independents += 1
                            XCTAssertEqual(pool.kind(c), .independent, context)
                            XCTAssertNil(pool.info(c)!.predecessor, context)
                            XCTAssertNil(pool.info(c)!.successor, context)
                        }
                    } else {
                        try pool.revertSnapclone(c)
                        XCTAssertNotEqual(pool.kind(c), .snapclone, context)
                    }
                } else if let x = live.filter({ pool.info($0)!.successor != nil && pool.kind($0) != .independent }).randomElement(using: &rng) {
                    // (A rollback can put an independent disk below its own snapshot.)
                    do { try pool.makeSnapclone(x) } catch { if error.errno != EBUSY { throw error } }
                }
            } else if live.isEmpty || roll < 5 {
                counter += 1
                let id = try pool.createDisk(named: "d\(counter)")
                model[id] = ModelDisk(image: [], parent: nil, hasImage: true)
            } else if roll < 55 {
                let id = live.randomElement(using: &rng)!
                let len = [1, 4096, 65536, 1 << 20, (1 << 20) + 4097, 4096, 8192][Int.random(in: 0..<7, using: &rng)]
                var off = Int.random(in: 0..<(maxSize - len), using: &rng)
                if rng.chance(0.5) { off &= ~4095 }
                // Some writes are zeros: over a whole segment held alone they unmap it, which a
                // change file must still show as data (zeros) against the predecessor.
                let bytes = rng.chance(0.1) ? [UInt8](repeating: 0, count: len) : rng.bytes(len)
                do {
                    try pool.write(id, at: UInt64(off), bytes)
                    var img = model[id]!.image
                    if img.count < off + len { img += [UInt8](repeating: 0, count: off + len - img.count) }
                    img.replaceSubrange(off..<off + len, with: bytes)
                    model[id]!.image = img
                } catch let e as LunError where e.errno == ENOSPC {
                    // The pool is full: nothing may have changed; the comparison below checks it.
                }
            } else if roll < 72 {
                let id = live.randomElement(using: &rng)!
                counter += 1
                guard pool.kind(id) != .snapclone else {
                    XCTAssertThrowsError(try pool.createSnapshot(of: id, named: "s\(counter)"), context)
                    continue
                }
                let snap = try pool.createSnapshot(of: id, named: "s\(counter)")
                model[snap] = ModelDisk(image: model[id]!.image, parent: id, hasImage: true)
            } else if roll < 78 {
                let id = live.randomElement(using: &rng)!
                let size = Int.random(in: 0..<maxSize, using: &rng)
                try pool.resize(id, to: UInt64(size))
                var img = model[id]!.image
                if size < img.count { img.removeSubrange(size...) } else { img += [UInt8](repeating: 0, count: size - img.count) }
                model[id]!.image = img
            } else if roll < 82 {
                let id = live.randomElement(using: &rng)!
                let size = model[id]!.image.count
                guard size > 0 else { continue }
                let off = Int.random(in: 0..<size, using: &rng)
                let len = Int.random(in: 1...(3 << 20), using: &rng)
                try pool.discard(id, at: UInt64(off), length: UInt64(len))
                let end = min(size, off + len)
                model[id]!.image.replaceSubrange(off..<end, with: [UInt8](repeating: 0, count: end - off))
            } else if roll < 88 {
                let id = live.randomElement(using: &rng)!
                try pool.deleteImage(id)
                model[id]!.hasImage = false
                model[id]!.image = []
            } else if roll < 93 {
                // rmdir of a leaf node
                let leaves = model.keys.filter { id in !model.values.contains { $0.parent == id } }.sorted()
                if let id = leaves.randomElement(using: &rng) {
                    try pool.removeNode(id)
                    model[id] = nil
                }
            } else if roll < 97 {
                try pool.close()
                pool = try drives.open()
            } else {
                try pool.commit()
            }
            for id in model.keys.sorted() {
                guard let info = pool.info(id) else { XCTFail("\(context): disk \(id) vanished"); return }
                XCTAssertEqual(info.hasImage, model[id]!.hasImage, context)
                guard info.hasImage else { continue }
                let image = try pool.image(id)
                if !sameBytes(image, model[id]!.image) {
                    assertSameBytes(image, model[id]!.image, "\(context): disk \(id)")
                    return
                }
            }
            // Change files: each disk's, applied to its predecessor's image, gives its own.
            if step % 5 == 0 {
                try checkChangeFiles(pool, images: model.filter(\.value.hasImage).mapValues(\.image), context)
            }
            if step % 25 == 0 {
                let report = try PoolChecker(pool: pool, scrub: true).run()
                XCTAssertEqual(report.problems, [], context)
                if !report.problems.isEmpty { return }
            }
        }
        XCTAssertGreaterThan(partialsSeen, 0, "seed \(seed): no write made a partial segment")
        try pool.close()
        pool = try drives.open()
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        for id in liveImages() { assertSameBytes(try pool.image(id), model[id]!.image) }
        // Every partial segment filled: the images stay, and no orphan source is left.
        try pool.fillPartialSegments()
        XCTAssertEqual(pool.partialSegmentProgress.segments, 0)
        try pool.commit()
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        XCTAssertTrue(pool.state.partials.orphans.isEmpty)
        for id in liveImages() { assertSameBytes(try pool.image(id), model[id]!.image) }
        try pool.close()
    }

    /// Rolls a random disk back to a random disk (of its chain or not): the model changes as
    /// the rollback says, or the refusal names why.
    func modelRollback(_ pool: Pool, _ model: inout [DiskID: ModelDisk], _ rng: inout TestRandom,
                       live: [DiskID], context: String) throws -> Bool {
        let x = live.randomElement(using: &rng)!
        // Mostly a disk of its own chain: its snapshots and their neighbours.
        var chain: [DiskID] = []
        var head = x
        while let p = pool.info(head)!.predecessor { head = p }
        var next: DiskID? = head
        while let d = next { chain.append(d); next = pool.info(d)!.successor }
        let candidates = rng.chance(0.85) ? chain.filter { $0 != x } : live.filter { $0 != x }
        guard let t = candidates.randomElement(using: &rng) else { return false }
        let copying = chain.contains { pool.kind($0) == .snapclone }
        do {
            let outcome = try pool.rollback(x, to: t)
            XCTAssertTrue(chain.contains(t) && !copying, "\(context): rollback of \(x) to \(t) outside its chain or beside a copying snapclone")
            XCTAssertEqual(pool.info(outcome.before)!.parent, x, context)
            XCTAssertEqual(pool.info(outcome.before)!.name, outcome.beforeName, context)
            XCTAssertTrue(outcome.beforeName.hasPrefix("before-rollback-"), context)
            model[outcome.before] = ModelDisk(image: model[x]!.image, parent: x, hasImage: true)
            model[x]!.image = model[t]!.image
            return true
        } catch {
            switch error.errno {
            case EINVAL: XCTAssertFalse(chain.contains(t), "\(context): \(error)")
            case EBUSY: XCTAssertTrue(copying, "\(context): \(error)")
            default: throw error
            }
            return false
        }
    }

    /// A group snapshot of one to three disks: each gets a child `name` with its bytes, or
    /// (a copying snapclone among them) none does.
    func modelGroupSnapshot(_ pool: Pool, _ model: inout [DiskID: ModelDisk], _ rng: inout TestRandom,
                            live: [DiskID], name: String, context: String) throws -> Bool {
        let group = Array(live.shuffled(using: &rng).prefix(Int(rng.below(3)) + 1))
        let copying = group.contains { pool.kind($0) == .snapclone }
        do {
            let snaps = try pool.createGroupSnapshot(of: group, named: name)
            XCTAssertFalse(copying, context)
            XCTAssertEqual(Set(snaps.keys), Set(group), context)
            for (x, snap) in snaps { model[snap] = ModelDisk(image: model[x]!.image, parent: x, hasImage: true) }
            return true
        } catch {
            guard error.errno == EBUSY else { throw error }
            XCTAssertTrue(copying, "\(context): \(error)")
            for x in group { XCTAssertNil(pool.child(named: name, of: x), "\(context): a refused group snapshot left \(x)/\(name)") }
            return false
        }
    }

    /// 120 snapshots of one disk with writes in between, then writes to old snapshots in the
    /// middle of the chain; every image checked at the end and after a reopen.
    func testLongChain() throws {
        var rng = TestRandom(seed: seed(42))
        let drives = MemoryDrives(count: 5, sizeBytes: 256 << 20)
        try drives.format(raid: .raid5)
        var pool = try drives.open()
        let live = try pool.createDisk(named: "vm")
        var images: [DiskID: [UInt8]] = [:]
        var current = rng.bytes(8 << 20)
        try pool.write(live, at: 0, current)
        for i in 0..<120 {
            let snap = try pool.createSnapshot(of: live, named: "s\(i)")
            images[snap] = current
            let off = Int.random(in: 0..<(8 << 20) - 5000, using: &rng)
            let bytes = rng.bytes(5000)
            try pool.write(live, at: UInt64(off), bytes)
            current.replaceSubrange(off..<off + 5000, with: bytes)
        }
        images[live] = current
        XCTAssertEqual(pool.info(live)!.predecessor, images.keys.filter { $0 != live }.max())
        // Writes into the middle of the chain copy in and out.
        for snap in images.keys.filter({ $0 != live }).sorted().shuffled(using: &rng).prefix(20) {
            let off = Int.random(in: 0..<(8 << 20) - 3000, using: &rng)
            let bytes = rng.bytes(3000)
            try pool.write(snap, at: UInt64(off), bytes)
            images[snap]!.replaceSubrange(off..<off + 3000, with: bytes)
        }
        for (id, img) in images { assertSameBytes(try pool.image(id), img, "disk \(id)") }
        try pool.close()
        pool = try drives.open()
        for (id, img) in images { assertSameBytes(try pool.image(id), img, "disk \(id) after reopen") }
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        // Delete every other snapshot; the rest keep their bytes.
        for id in images.keys.filter({ $0 != live }).sorted() where id % 2 == 0 {
            try pool.removeNode(id)
            images[id] = nil
        }
        for (id, img) in images { assertSameBytes(try pool.image(id), img, "disk \(id) after deletes") }
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        try pool.close()
    }

    /// Ten levels of snapshot of a snapshot, each written after it was taken.
    func testNestedSnapshots() throws {
        var rng = TestRandom(seed: seed(9))
        let drives = MemoryDrives(count: 8, sizeBytes: 128 << 20)
        try drives.format(raid: .raid1)
        let pool = try drives.open()
        var id = try pool.createDisk(named: "base")
        var img = rng.bytes(4 << 20)
        try pool.write(id, at: 0, img)
        var images: [DiskID: [UInt8]] = [id: img]
        for level in 0..<10 {
            let snap = try pool.createSnapshot(of: id, named: "l\(level)")
            XCTAssertEqual(pool.info(snap)!.parent, id)
            images[snap] = img
            // Write to the parent after the snapshot; the snapshot must not see it.
            let off = Int.random(in: 0..<(4 << 20) - 100_000, using: &rng)
            let bytes = rng.bytes(100_000)
            try pool.write(id, at: UInt64(off), bytes)
            images[id]!.replaceSubrange(off..<off + 100_000, with: bytes)
            id = snap
            img = images[snap]!
        }
        for (d, expected) in images { assertSameBytes(try pool.image(d), expected, "disk \(d)") }
        XCTAssertEqual(try PoolChecker(pool: pool, scrub: true).run().problems, [])
        try pool.close()
    }
}
