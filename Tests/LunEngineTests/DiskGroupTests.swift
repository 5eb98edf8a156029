// Disk groups and RSSs (DiskGroups.swift): writer threads fill disks in two groups while a
// committer runs; every store must then lie in its disk's group and inside one RSS of it,
// also after drives join both groups (the default one re-forms from two RSSs into two others)
// and leveling has run, and after the pool reopens with the groups it recorded.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class DiskGroupTests: XCTestCase {
    func testRSSSplitRule() {
        XCTAssertEqual(DiskGroups.split([]), [])
        XCTAssertEqual(DiskGroups.split([3, 4, 9]), [[3, 4, 9]])
        XCTAssertEqual(DiskGroups.split(Array(0..<11)), [Array(0..<11)])
        XCTAssertEqual(DiskGroups.split(Array(0..<12)), [Array(0..<6), Array(6..<12)])
        XCTAssertEqual(DiskGroups.split(Array(0..<13)), [Array(0..<7), Array(7..<13)])
        XCTAssertEqual(DiskGroups.split(Array(0..<23)), [Array(0..<8), Array(8..<16), Array(16..<23)])
        for n in 12...64 {
            let sets = DiskGroups.split(Array(0..<n))
            XCTAssertEqual(sets.flatMap { $0 }, Array(0..<n))
            XCTAssertTrue(sets.allSatisfy { (6...11).contains($0.count) }, "\(n): \(sets.map(\.count))")
        }
        XCTAssertTrue(DiskGroups.isValidName("fast-1.a_b"))
        XCTAssertFalse(DiskGroups.isValidName(""))
        XCTAssertFalse(DiskGroups.isValidName("a b"))
        XCTAssertFalse(DiskGroups.isValidName(String(repeating: "x", count: 33)))
    }

    func testDiskRecordKeepsItsGroupBesideTheOtherFields() throws {
        var record = DiskRecord(id: 9, name: "db", parent: nil, predecessor: nil, successor: 4, sizeBytes: 1 << 30, raid: .raid1,
                                hasImage: true, hasWritten: true, reserveSnapshots: false, reserved: true, createdAt: 1_790_000_000,
                                reservedSegments: 300)
        record.onFull = .dropSnapshots
        for group in ["default", "fast", "g.2"] {
            record.group = group
            var w = ByteWriter(capacity: 64)
            record.encode(into: &w)
            var r = ByteReader(w.bytes)
            XCTAssertEqual(try DiskRecord.decode(from: &r), record)
            XCTAssertEqual(r.remaining, 0)
            for cut in 0..<w.bytes.count {
                var short = ByteReader(Array(w.bytes[0..<cut]))
                XCTAssertThrowsError(try DiskRecord.decode(from: &short), "\(group) cut at \(cut)")
            }
        }
    }

    /// Every store's members in one group and one RSS of it; every disk's segments in stores
    /// of its own group.
    private func assertStoresInGroupsAndRSSs(_ pool: Pool, _ context: String, file: StaticString = #filePath, line: UInt = #line) {
        let sets = pool.redundantStorageSets()
        let groupOf = Dictionary(uniqueKeysWithValues: pool.driveListing().map { ($0.index, $0.group) })
        var storeGroup: [Int: String] = [:]
        for id in pool.liveStores() {
            guard let (group, drives) = pool.storeDrives(id) else { continue }
            storeGroup[id] = group
            XCTAssertTrue(drives.allSatisfy { groupOf[$0] == group }, "\(context): store \(id) on \(drives) leaves group \(group)", file: file, line: line)
            XCTAssertTrue((sets[group] ?? []).contains { rss in drives.allSatisfy(rss.contains) },
                          "\(context): store \(id) on \(drives) spans RSSs \(sets[group] ?? [])", file: file, line: line)
        }
        pool.stateLock.withLock {
            for d in pool.state.disks.values {
                d.map.forEachMapped { k, e in
                    guard e.holdsData else { return }
                    XCTAssertEqual(storeGroup[Int(e.store)], d.group, "\(context): disk \(d.name) segment \(k)", file: file, line: line)
                }
            }
        }
    }

    func testStoresStayInTheirGroupAndRSSWithWritersCommitterAndLeveling() throws {
        let size: UInt64 = 32 << 20
        let drives = MemoryDrives(count: 12, sizeBytes: size)
        try drives.format(raid: .raid5)
        let pool = try drives.open()
        var added: [MemoryDevice] = []
        for n in 0..<6 {
            let device = MemoryDevice(name: "fast\(n)", sizeBytes: size)
            added.append(device)
            XCTAssertEqual(try pool.addDrive(device: device, group: "fast"), 12 + n)
        }
        XCTAssertEqual(pool.redundantStorageSets(), ["default": [Array(0..<6), Array(6..<12)], "fast": [Array(12..<18)]])
        XCTAssertThrowsError(try pool.addDrive(device: MemoryDevice(name: "bad", sizeBytes: size), group: "no good")) {
            XCTAssertEqual(($0 as? LunError)?.errno, EINVAL)
        }
        let probe = try pool.createDisk(named: "probe")
        XCTAssertThrowsError(try pool.setGroup(probe, "slow")) { XCTAssertEqual(($0 as? LunError)?.errno, ENOENT) }
        XCTAssertThrowsError(try pool.setGroup(probe, "a/b")) { XCTAssertEqual(($0 as? LunError)?.errno, EINVAL) }
        XCTAssertEqual(pool.info(probe)?.group, "default")

        let failures = ThreadFailures()
        let models = ThreadModels()
        let committer = BackgroundCommitter(pool, failures: failures, pauseMicroseconds: 3000)
        let threads = DispatchGroup()
        let diskBytes = 4 << 20
        for t in 0..<4 {
            threads.enter()
            Thread {
                defer { threads.leave() }
                var rng = SeededRandom(seed: UInt64(t) &* 7919 &+ 3)
                do {
                    let id = try pool.createDisk(named: "w\(t)", raid: t < 2 ? .raid5 : .raid1)
                    if t % 2 == 1 { try pool.setGroup(id, "fast") }
                    try pool.resize(id, to: UInt64(diskBytes))
                    let image = try writeRandomly(pool, id, diskBytes: diskBytes, steps: 60, writePercent: 85, rng: &rng,
                                                  failures: failures, label: "thread \(t)")
                    models.lock.withLock { models.images[id] = image }
                } catch {
                    failures.add("thread \(t): \(error)")
                }
            }.start()
        }
        threads.wait()
        XCTAssertEqual(failures.messages, [])
        assertStoresInGroupsAndRSSs(pool, "after the writers")
        for (id, _) in models.images {
            XCTAssertThrowsError(try pool.setGroup(id, pool.info(id)?.group == "fast" ? "default" : "fast")) {
                XCTAssertEqual(($0 as? LunError)?.errno, EBUSY)
            }
        }
        XCTAssertEqual(Set(models.images.keys.map { pool.info($0)!.group }), ["default", "fast"])

        // Drive 18 joins the default group (13 drives: RSSs 0-6 and 7-11 + 18), 19 and 20 the
        // fast one; leveling runs beside the committer and moves the members the new split
        // left outside their RSS first.
        let late = ["slow", "fastX0", "fastX1"].map { MemoryDevice(name: $0, sizeBytes: size) }
        XCTAssertEqual(try pool.addDrive(device: late[0]), 18)
        for n in 1..<3 { XCTAssertEqual(try pool.addDrive(device: late[n], group: "fast"), 18 + n) }
        XCTAssertEqual(pool.redundantStorageSets()["default"], [Array(0..<7), Array(7..<12) + [18]])
        let strays = pool.stateLock.withLock { pool.state.strayMembers() }
        XCTAssertFalse(strays.isEmpty, "the re-forming left no store across two RSSs")
        XCTAssertFalse(pool.levelingBacklog().isLevel)
        var moves = 0
        while moves < 200, let step = try pool.levelingStep() { moves += step }
        try pool.levelCompletely()
        committer.stop()
        XCTAssertEqual(failures.messages, [])
        XCTAssertGreaterThan(moves, 0)
        XCTAssertEqual(pool.stateLock.withLock { pool.state.strayMembers() }, [])
        XCTAssertGreaterThan(pool.usedSegments(onDrive: 19) + pool.usedSegments(onDrive: 20), 0, "the fast drives added took nothing")
        assertStoresInGroupsAndRSSs(pool, "after leveling")
        for (id, expected) in models.images { assertSameBytes(try pool.image(id), expected, "disk \(id) after leveling") }
        XCTAssertEqual(try PoolChecker(pool: pool).run().problems, [])
        let groups = Dictionary(uniqueKeysWithValues: models.images.keys.map { ($0, pool.info($0)!.group) })
        try pool.close()

        let all: [BlockDevice?] = drives.devices + added + late
        let reopened = try Pool.open(devices: all, sizes: [UInt64](repeating: size, count: 21))
        XCTAssertEqual(reopened.driveListing().map(\.group), [String](repeating: "default", count: 12) + [String](repeating: "fast", count: 6) + ["default", "fast", "fast"])
        for (id, expected) in models.images {
            assertSameBytes(try reopened.image(id), expected, "disk \(id) after reopen")
            XCTAssertEqual(reopened.info(id)?.group, groups[id])
        }
        assertStoresInGroupsAndRSSs(reopened, "after reopen")
        XCTAssertEqual(try PoolChecker(pool: reopened, scrub: true).run().problems, [])
        try reopened.close()
    }
}
