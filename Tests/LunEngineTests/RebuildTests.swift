// Rebuild into free space: a drive goes missing, its RAID 1 and RAID 5 members are rebuilt
// from redundancy onto free PSEGs of the other drives and its metadata mirror moves, so that
// a second drive lost afterwards still leaves every byte readable; a drive vanishing in the
// middle of a rebuild costs only the stores that lost two members (EIO, never wrong bytes);
// `evacuateDrive` empties a present drive with writers running.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

/// A drive that can vanish: from `gone` on, every call fails as an unplugged drive's would.
final class VanishingDevice: BlockDevice, @unchecked Sendable {
    let drive: BlockDevice
    let gone = AtomicFlag(false)
    init(_ drive: BlockDevice) { self.drive = drive }
    var sizeBytes: UInt64 { drive.sizeBytes }
    var name: String { drive.name }
    private func check() throws(LunError) { if gone.value.load(ordering: .acquiring) { throw .io("drive unplugged") } }
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(LunError) { try check(); try drive.read(into: buffer, at: offset) }
    func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(LunError) { try check(); try drive.write(buffer, at: offset) }
    func sync() throws(LunError) { try check(); try drive.sync() }
    func zero(at offset: UInt64, length: UInt64) throws(LunError) { try check(); try drive.zero(at: offset, length: length) }
}

final class RebuildTests: XCTestCase {
    private let size = 3 << 20

    /// Three disks of random bytes on a fresh pool; returns their ids and images.
    private func fill(_ drives: MemoryDrives, _ level: RAIDLevel, seed: UInt64, disks: Int = 3) throws -> [DiskID: [UInt8]] {
        try drives.format(raid: level)
        let pool = try drives.open()
        var rng = SeededRandom(seed: seed)
        var images: [DiskID: [UInt8]] = [:]
        for t in 0..<disks {
            let id = try pool.createDisk(named: "d\(t)")
            let bytes = rng.bytes(size)
            try pool.write(id, at: 0, bytes)
            images[id] = bytes
        }
        try pool.close()
        return images
    }

    private func assertImages(_ pool: Pool, _ images: [DiskID: [UInt8]], _ what: String) throws {
        for (id, bytes) in images.sorted(by: { $0.key < $1.key }) { assertSameBytes(try pool.image(id), bytes, "\(what): disk \(id)") }
    }

    func testRebuildThenASecondDriveLostStillReadsEverything() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let drives = MemoryDrives(count: 8, sizeBytes: 96 << 20)
            let images = try fill(drives, level, seed: UInt64(level.rawValue) &* 977)
            // Drive 1 is a metadata mirror: it moves too.
            let pool = try drives.open(missing: [1])
            XCTAssertFalse(pool.members(onDrive: 1).isEmpty, "\(level): drive 1 held members")
            XCTAssertTrue(pool.redundancyRisk().isDegraded, "\(level)")
            let result = try pool.rebuildLostMembers()
            XCTAssertEqual(result.failed, [], "\(level)")
            XCTAssertGreaterThan(result.rebuilt, 0, "\(level)")
            XCTAssertEqual(pool.members(onDrive: 1), [], "\(level): drive 1 holds nothing after the rebuild")
            XCTAssertFalse(pool.metadata.mirrors.contains(1), "\(level): the metadata mirror moved")
            XCTAssertFalse(pool.redundancyRisk().isDegraded, "\(level): redundancy is back without drive 1")
            XCTAssertEqual(pool.runningJobs(), [], "\(level): the job is over")
            try assertImages(pool, images, "\(level) after the rebuild")
            try pool.close()
            // A second drive lost: everything still reads.
            let twice = try drives.open(missing: [1, 5])
            XCTAssertEqual(twice.unreadableRanges(), [], "\(level)")
            try assertImages(twice, images, "\(level) with drives 1 and 5 gone")
            try twice.close()
            // Both come back: drive 1 is a member of nothing, drive 5 is rebuilt in place.
            let back = try drives.open()
            XCTAssertEqual(back.members(onDrive: 1), [], "\(level)")
            XCTAssertEqual(try PoolChecker(pool: back, scrub: true).run().problems, [], "\(level)")
            try assertImages(back, images, "\(level) with every drive back")
            try back.close()
        }
    }

    func testADriveVanishingInTheMiddleOfARebuild() throws {
        for level in [RAIDLevel.raid1, .raid5] {
            let drives = MemoryDrives(count: 8, sizeBytes: 96 << 20)
            let images = try fill(drives, level, seed: UInt64(level.rawValue) &+ 4242, disks: 8)
            let vanishing = drives.devices.map { VanishingDevice($0) }
            let pool = try Pool.open(devices: vanishing.enumerated().map { $0.offset == 2 ? nil : $0.element },
                                     sizes: drives.devices.map(\.sizeBytes))
            let slots = pool.rebuildableMembers()
            XCTAssertGreaterThanOrEqual(slots.count, 2, "\(level)")
            try pool.rebuildMembers(Array(slots.prefix(slots.count / 2)))
            // Drive 6 vanishes; a write notices (a read alone only falls back).
            vanishing[6].gone.value.store(true, ordering: .releasing)
            let first = images.keys.min()!
            try pool.write(first, at: 0, Array(images[first]![0..<(1 << 20)]))
            let rest = try pool.rebuildLostMembers()
            // What stays on drive 2 belongs to stores that lost a member on drive 6 too.
            let twiceHit = Set(pool.members(onDrive: 6).map(\.store))
            for slot in pool.members(onDrive: 2) {
                XCTAssertTrue(twiceHit.contains(slot.store) || level == .raid1, "\(level): \(slot) left on drive 2 (\(rest.failed))")
            }
            XCTAssertGreaterThan(try readEverythingReadable(pool, images, "\(level) after drive 6 vanished"), 0)
            try pool.close()
            // Drive 6 back, drive 2 still gone: drive 6 missed writes (stale) and stays out of a
            // read-only open; the stores rebuilt before it vanished still read whole.
            let readOnly = try drives.open(missing: [2], readOnly: true)
            XCTAssertGreaterThan(try readEverythingReadable(readOnly, images, "\(level) read-only, drive 6 back"), 0)
            try readOnly.close()
        }
    }

    /// The background job: with a writer running, a drive that leaves service is rebuilt
    /// into free space, the job shows in `runningJobs()` with its bytes, and goes away when done.
    func testBackgroundRebuildWhileWriting() throws {
        let drives = MemoryDrives(count: 8, sizeBytes: 96 << 20)
        var images = try fill(drives, .raid5, seed: 5150, disks: 6)
        let vanishing = drives.devices.map { VanishingDevice($0) }
        let pool = try Pool.open(devices: vanishing, sizes: drives.devices.map(\.sizeBytes))
        let rebuilder = MemberRebuilder(pool: pool, restFactor: 0.2, delaySeconds: 0)
        vanishing[4].gone.value.store(true, ordering: .releasing)
        let ids = images.keys.sorted()
        var rng = SeededRandom(seed: 77)
        // A write notices the drive is gone and takes it out of service.
        for id in ids {
            let bytes = rng.bytes(100_000)
            try pool.write(id, at: 500_000, bytes)
            images[id]!.replaceSubrange(500_000..<600_000, with: bytes)
        }
        XCTAssertFalse(pool.members(onDrive: 4).isEmpty)
        rebuilder.start()
        var sawJob = false
        let deadline = Date(timeIntervalSinceNow: 60)
        while !pool.members(onDrive: 4).isEmpty && Date() < deadline {
            if let job = pool.runningJobs().first {
                XCTAssertEqual(job.kind, .rebuild)
                XCTAssertGreaterThan(job.bytesTotal, 0)
                XCTAssertLessThanOrEqual(job.bytesDone, job.bytesTotal)
                sawJob = true
            }
            let id = ids[Int(rng.below(UInt64(ids.count)))]
            let off = Int(rng.below(UInt64(size - 70_000)))
            let bytes = rng.bytes(70_000)
            try pool.write(id, at: UInt64(off), bytes)
            images[id]!.replaceSubrange(off..<off + 70_000, with: bytes)
            try pool.commit()
        }
        rebuilder.stop()
        XCTAssertTrue(sawJob, "the rebuild showed as a job")
        XCTAssertEqual(pool.members(onDrive: 4), [], "everything rebuilt off drive 4")
        XCTAssertFalse(pool.redundancyRisk().isDegraded)
        try assertImages(pool, images, "after the background rebuild")
        try pool.close()
        let again = try drives.open(missing: [4, 6])
        try assertImages(again, images, "without drives 4 and 6")
        try again.close()
    }

    /// Reads every segment: each is right or fails with EIO inside a range `unreadableRanges`
    /// names. Returns the bytes read right.
    private func readEverythingReadable(_ pool: Pool, _ images: [DiskID: [UInt8]], _ what: String) throws -> Int {
        let gone = pool.unreadableRanges()
        var good = 0
        for (id, bytes) in images.sorted(by: { $0.key < $1.key }) {
            for offset in stride(from: 0, to: size, by: 1 << 20) {
                let inGone = gone.contains { $0.disk == id && UInt64(offset) >= $0.offset && UInt64(offset) < $0.offset + $0.length }
                do {
                    let read = try pool.readBytes(id, at: UInt64(offset), count: 1 << 20)
                    XCTAssertTrue(read == Array(bytes[offset..<offset + (1 << 20)]), "\(what): disk \(id) offset \(offset): wrong bytes")
                    good += read.count
                } catch {
                    XCTAssertTrue(inGone, "\(what): disk \(id) offset \(offset): \(error), not reported gone")
                }
            }
        }
        return good
    }
}
