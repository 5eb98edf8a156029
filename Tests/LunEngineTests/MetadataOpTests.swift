// The journal op as one type: every op decodes to what was encoded, replay of a pool's
// records rebuilds exactly the state that was running, and an op the state cannot take is
// refused as damage (with nothing changed) instead of being applied half-way.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class MetadataOpTests: XCTestCase {
    private static let record = DiskRecord(id: 7, name: "vm\u{e9}", parent: 3, predecessor: 5, successor: nil,
                                           sizeBytes: 5 << 30, raid: .raid5, hasImage: true, hasWritten: false,
                                           reserveSnapshots: true, reserved: false, createdAt: 1_790_000_000,
                                           reservedSegments: 12)

    /// One op of every code, with values that use more than one varint byte.
    private static let samples: [MetadataOp] = [
        .setEntry(disk: 300, segment: 70_000, entry: .held(store: 4097, rseg: 3, sp: true)),
        .defineStore(store: 1025, level: .raid5, members: (0..<5).map { StoreMember(drive: $0, pseg: 1000 + $0) }),
        .freeStore(store: 9),
        .putDisk(record),
        .dropDisk(12),
        .split(successor: 1, predecessor: 200),
        .unlink(44),
        .intentAdd(store: 65_000),
        .intentClear(store: 0),
        .putExternal(ExternalSnapshotRecord(id: 301, source: 7, filePath: "/backup/vm-\u{e9}.img", mapPath: "/backup/vm-\u{e9}.img.lunfs-valid",
                                            blockBytes: 65536, sizeBytes: 5 << 30, independent: true, token: 0x0123_4567_89AB_CDEF, lost: true)),
        .dropExternal(301),
        .moveMember(store: 70_000, member: 4, from: StoreMember(drive: 2, pseg: 300), to: StoreMember(drive: 9, pseg: 70_000)),
        .rollback(disk: 300, target: 70_000, keeping: 1_000_000),
        .putPartial(location: 4097 << 3 | 5, source: 70_000 << 3 | 1, valid: BlockBits(words: SIMD4(1, 0, 1 << 63, 0x0F0F))),
        .dropPartial(location: 4097 << 3 | 5),
    ]

    func testEveryOpDecodesToWhatWasEncoded() throws {
        XCTAssertEqual(Set(Self.samples.map(\.code)), Set(MetadataOp.Code.allCases), "a sample of every op")
        var w = ByteWriter()
        for op in Self.samples { op.encode(into: &w) }
        var r = ByteReader(w.bytes)
        for op in Self.samples { XCTAssertEqual(try MetadataOp.decode(from: &r), op) }
        XCTAssertEqual(r.remaining, 0)
        // Every cut of the stream short of an op's end is an error, never a different op.
        for op in Self.samples {
            var one = ByteWriter()
            op.encode(into: &one)
            for cut in 0..<one.bytes.count {
                var short = ByteReader(Array(one.bytes[0..<cut]))
                XCTAssertThrowsError(try MetadataOp.decode(from: &short), "\(op) cut at \(cut)")
            }
        }
        var unknown = ByteReader([0xEE, 1, 2])
        XCTAssertThrowsError(try MetadataOp.decode(from: &unknown))
    }

    /// A seeded mix of every change (namespace, writes of data and of zeros, snapshots,
    /// snapclones made, copied, turned back and leaving their chains), committed as it goes and
    /// never checkpointed: a second open replays the journal and must arrive at the same state,
    /// field by field and entry by entry, shadows included (the checkpoint encoding compares
    /// all of it), and read the same bytes.
    func testReplayRebuildsTheRunningState() throws {
        for (level, seed) in [(RAIDLevel.raid1, UInt64(3)), (.raid5, 17), (.raid5, 29)] {
            var rng = TestRandom(seed: seed)
            let drives = MemoryDrives(count: 6, sizeBytes: 256 << 20)
            try drives.format(raid: level)
            let pool = try drives.open()
            let segment = Int(pool.geometry.rsegSizeBytes)
            var names = 0, copies = 0, independents = 0, moves = 0, rollbacks = 0, fills = 0, partialSteps = 0
            for step in 0..<400 {
                let disks = pool.disks()
                let images = disks.filter(\.hasImage)
                func pick(_ from: [DiskInfo]) -> DiskInfo? { from.isEmpty ? nil : from[Int(rng.below(UInt64(from.count)))] }
                names += 1
                do {
                    switch rng.below(22) {
                    case 0:
                        _ = try pool.createDisk(named: "d\(names)")
                    case 1, 2, 3, 4:
                        guard let d = pick(images) else { continue }
                        let at = Int(rng.below(8)) * segment + Int(rng.below(UInt64(segment)))
                        let len = Int(rng.below(2 * UInt64(segment))) + 1
                        try pool.write(d.id, at: UInt64(at), rng.chance(0.25) ? [UInt8](repeating: 0, count: len) : rng.bytes(len))
                    case 5, 6:
                        guard let d = pick(images) else { continue }
                        _ = try pool.createSnapshot(of: d.id, named: "s\(names)", reserved: rng.chance(0.2))
                    case 7:
                        guard let d = pick(images) else { continue }
                        try pool.resize(d.id, to: rng.below(UInt64(9 * segment)))
                    case 8:
                        guard let d = pick(images) else { continue }
                        try pool.deleteImage(d.id)
                    case 9:
                        guard let d = pick(disks.filter { x in !disks.contains { $0.parent == x.id } }) else { continue }
                        try pool.removeNode(d.id)
                    case 10:
                        guard let d = pick(disks) else { continue }
                        if rng.chance(0.5) { try pool.rename(d.id, to: "r\(names)") } else { try pool.setReserved(d.id, rng.chance(0.5)) }
                    case 11, 12:
                        // (A rollback can put an independent disk below its own snapshot.)
                        guard let d = pick(images.filter { $0.successor != nil && $0.kind != .independent }) else { continue }
                        try pool.makeSnapclone(d.id)
                    case 13, 14, 15, 16, 17, 18:
                        guard let c = pool.copyingSnapclones().first else { continue }
                        pool.quiescedCopySegments = Int(rng.below(3))
                        copies += 1
                        if try pool.copySnapclone(c, segments: Int(rng.below(3)) + 1).independent { independents += 1 }
                    case 19:
                        guard let c = pool.copyingSnapclones().first else { continue }
                        try pool.revertSnapclone(c)
                    case 20:
                        // Rollback to a disk of the same chain (the rest is refused: EINVAL, EPERM).
                        guard let d = pick(images), let t = pick(images.filter { $0.id != d.id }) else { continue }
                        do { _ = try pool.rollback(d.id, to: t.id) } catch { if error.errno != EINVAL && error.errno != EPERM { throw error } }
                        rollbacks += 1
                    default:
                        guard let d = pick(images), let e = pick(images) else { continue }
                        let group = d.id == e.id ? [d.id] : [d.id, e.id]
                        _ = try pool.createGroupSnapshot(of: group, named: "g\(names)")
                    }
                } catch LunError.noSpace, LunError.exists, LunError.busy, LunError.notFound, LunError.stale {
                    continue
                }
                if step % 9 == 0 { try pool.commit() }
                // Now and then a PSEG move (its own commit), without a draw: the seeds' workloads stay.
                if step % 23 == 11, let store = (0..<pool.state.rsds.highWater).last(where: { pool.state.rsds.isLive($0) }) {
                    let slot = StoreMemberSlot(store: store, member: step % level.memberCount)
                    if let target = pool.moveTargets(for: slot).first { try pool.movePSEG(slot, toDrive: target); moves += 1 }
                }
                // The fill of partial segments (made by small writes after snapshots).
                if step % 7 == 3 { fills += try pool.fillPartialSegments(limit: 1) }
                if pool.partialSegmentProgress.segments > 0 { partialSteps += 1 }
            }
            try pool.commit()
            let context = "\(level), seed \(seed)"
            XCTAssertGreaterThan(copies, 5, "\(context): copy steps ran")
            XCTAssertGreaterThan(moves, 5, "\(context): PSEG moves ran")
            XCTAssertGreaterThan(pool.metadata.journalBytesSinceCheckpoint, 0, "\(context): the records to replay exist")
            print("replay, \(context): \(copies) snapclone copy steps, \(independents) clones left their chain, \(rollbacks) rollbacks tried")
            print("replay, \(context): \(copies) snapclone copy steps, \(independents) clones left their chain, "
                  + "\(fills) partial segments filled, partial segments present after \(partialSteps) steps")
            XCTAssertGreaterThan(partialSteps, 0, "\(context): partial segments made")
            let running = pool.stateLock.withLock { pool.state.encodeCheckpoint() }
            let images = try pool.disks().filter(\.hasImage).map { ($0.id, try pool.image($0.id)) }
            XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [], "\(context): running")
            // No close: the next open finds the journal records and replays them.
            let replayed = try drives.open(readOnly: true)
            assertSameBytes(replayed.state.encodeCheckpoint(), running, "state after replay, \(context)")
            for (id, bytes) in images { assertSameBytes(try replayed.image(id), bytes, "\(context): disk \(id)") }
            XCTAssertEqual(try PoolChecker(pool: replayed).run().problems, [], context)
        }
    }

    /// Ops that the state cannot take are damage: replay stops with `.corrupt` and the state
    /// is left as it was. (Replay used to drop a disk still in a chain without a question.)
    func testReplayRefusesOpsTheStateCannotTake() throws {
        let drives = MemoryDrives(count: 5, sizeBytes: 128 << 20)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        let x = try pool.createDisk(named: "x")
        try pool.write(x, at: 0, [UInt8](repeating: 7, count: 4096))
        let p = try pool.createSnapshot(of: x, named: "p")
        let y = try pool.createDisk(named: "y")
        try pool.write(y, at: 0, [UInt8](repeating: 9, count: 4096))
        try pool.commit()
        let liveStore = (0..<pool.state.rsds.highWater).first { pool.state.rsds.isLive($0) }!
        var refused: [MetadataOp] = [
            .dropDisk(x),                                            // still in a chain
            .dropDisk(999),                                          // no such disk
            .split(successor: x, predecessor: y),                    // y maps data
            .split(successor: y, predecessor: p),                    // p is in a chain
            .freeStore(store: pool.state.rsds.highWater + 3),        // not defined
            .defineStore(store: liveStore, level: .raid5, members: pool.state.rsds.memberList(liveStore)),
            .setEntry(disk: 999, segment: 0, entry: .unmapped),
            .setEntry(disk: x, segment: Int(PoolGeometry.maxDiskSizeBytes / pool.geometry.rsegSizeBytes), entry: .unmapped),
            .unlink(999),
            .moveMember(store: liveStore, member: 0, from: StoreMember(drive: 9, pseg: 9), to: StoreMember(drive: 1, pseg: 100)),
            .moveMember(store: liveStore, member: 7, from: pool.state.rsds.member(liveStore, 0), to: StoreMember(drive: 1, pseg: 100)),
            .rollback(disk: x, target: y, keeping: 999),             // no such kept disk
            .rollback(disk: x, target: y, keeping: p),               // y is in another chain, p in one
            .rollback(disk: x, target: x, keeping: y),               // to itself
            .putPartial(location: UInt32(pool.state.rsds.highWater + 3) << 3, source: UInt32(liveStore) << 3, valid: .none),  // undefined store
            .dropPartial(location: UInt32(liveStore) << 3),          // no record
        ]
        var linked = pool.info(y).map { _ in pool.state.disks[y]!.record }!
        linked.predecessor = 999
        refused.append(.putDisk(linked))
        let before = pool.state.encodeCheckpoint()
        for op in refused {
            var w = ByteWriter()
            op.encode(into: &w)
            XCTAssertThrowsError(try pool.state.replay(w.bytes), "\(op)") { error in
                guard case LunError.corrupt = error else { return XCTFail("\(op): \(error)") }
            }
            assertSameBytes(pool.state.encodeCheckpoint(), before, "\(op) changed the state")
        }
    }
}
