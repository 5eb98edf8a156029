// Modes and owners set by chmod/chown are kept in the disk record (flag 64 and the fields
// after it): they survive a journal replay after a crash and a checkpoint, a record without
// them (every record of a pool written before they existed) reads as "never set", and a
// record cut short or with a bad mode is refused as damage.
import XCTest
@testable import LunEngine
import LunEngineTesting

final class DiskAccessTests: XCTestCase {
    private static let plain = DiskRecord(id: 7, name: "vm", parent: nil, predecessor: nil, successor: nil,
                                          sizeBytes: 5 << 30, raid: .raid5, hasImage: true, hasWritten: true,
                                          reserveSnapshots: false, reserved: false, createdAt: 1_790_000_000,
                                          reservedSegments: 0)

    func testRecordsWithAndWithoutAccessDecodeToWhatWasEncoded() throws {
        // The layout of a record before the field existed, written out by hand.
        var old = ByteWriter()
        old.u32(7); old.string("vm"); old.u32(0xFFFF_FFFF); old.u32(0xFFFF_FFFF); old.u32(0xFFFF_FFFF)
        old.u64(5 << 30); old.u8(RAIDLevel.raid5.rawValue); old.u8(1 | 2); old.u64(1_790_000_000); old.varint(0)
        var encoded = ByteWriter()
        Self.plain.encode(into: &encoded)
        XCTAssertEqual(encoded.bytes, old.bytes, "a record without access is encoded as before")
        var reader = ByteReader(old.bytes)
        let decoded = try DiskRecord.decode(from: &reader)
        XCTAssertNil(decoded.directoryAccess)
        XCTAssertNil(decoded.imageAccess)

        for (directory, image) in [(NodeAccess(mode: 0o750, uid: 1000, gid: 100), nil),
                                   (nil, NodeAccess(mode: 0o4640, uid: 65534, gid: 70000)),
                                   (NodeAccess(mode: 0, uid: 0, gid: 0), NodeAccess(mode: 0o7777, uid: .max, gid: .max))] {
            var record = Self.plain
            record.directoryAccess = directory
            record.imageAccess = image
            var w = ByteWriter()
            record.encode(into: &w)
            var r = ByteReader(w.bytes)
            XCTAssertEqual(try DiskRecord.decode(from: &r), record)
            XCTAssertEqual(r.remaining, 0)
            for cut in old.bytes.count..<w.bytes.count {
                var short = ByteReader(Array(w.bytes[0..<cut]))
                XCTAssertThrowsError(try DiskRecord.decode(from: &short), "cut at \(cut)")
            }
        }
        // A mode beyond the permission bits, or an empty mask, is damage.
        var bad = ByteWriter()
        var withFlag = old.bytes
        withFlag[withFlag.count - 10] |= 64        // the flags byte: before createdAt (8) and the varint (1)
        bad.raw(withFlag); bad.u8(1); bad.varint(0o10000); bad.u32(0); bad.u32(0)
        var r = ByteReader(bad.bytes)
        XCTAssertThrowsError(try DiskRecord.decode(from: &r))
        var empty = ByteWriter()
        empty.raw(withFlag); empty.u8(0)
        r = ByteReader(empty.bytes)
        XCTAssertThrowsError(try DiskRecord.decode(from: &r))
    }

    func testAccessSurvivesReplayAfterACrashAndACheckpoint() throws {
        var set = SimulatedDriveSet(count: 5, sizeBytes: 64 << 20, seed: 1301)
        try Pool.format(devices: set.devices, raid: .raid5)
        let pool = try Pool.open(devices: set.devices)
        let vm = try pool.createDisk(named: "vm")
        try pool.write(vm, at: 0, [UInt8](repeating: 9, count: 8192))
        let snap = try pool.createSnapshot(of: vm, named: "monday")
        let shared = NodeAccess(mode: 0o640, uid: 1000, gid: 1000)
        try pool.setAccess(vm, of: .image, shared)
        try pool.setAccess(snap, of: .directory, NodeAccess(mode: 0o711, uid: 0, gid: 50))
        XCTAssertThrowsError(try pool.setAccess(999, of: .image, shared)) { XCTAssertEqual(($0 as? LunError)?.errno, ENOENT) }
        // setAccess commits: a crash right after keeps it (journal replay).
        set.crash(seed: 1302, tearing: .dropUnsynced)
        let replayed = try Pool.open(devices: set.devices)
        XCTAssertEqual(replayed.info(vm)?.imageAccess, shared)
        XCTAssertNil(replayed.info(vm)?.directoryAccess)
        XCTAssertEqual(replayed.info(snap)?.directoryAccess, NodeAccess(mode: 0o711, uid: 0, gid: 50))
        XCTAssertNil(replayed.info(snap)?.imageAccess, "a snapshot starts with the defaults")
        try replayed.close()                                    // a checkpoint
        let reopened = try Pool.open(devices: set.devices)
        XCTAssertEqual(reopened.info(vm)?.imageAccess, shared)
        XCTAssertEqual(reopened.info(snap)?.directoryAccess, NodeAccess(mode: 0o711, uid: 0, gid: 50))
        XCTAssertEqual(try PoolChecker(pool: reopened).run().problems, [])
        try reopened.close()
    }
}
