// Unit tests of the logical layer's pieces: LMAP entry packing, the two-level disk map, the
// PSEG allocator, the RSD table and parity XOR.
import XCTest
@testable import LunEngine

final class MapTests: XCTestCase {
    func testEntryPacking() {
        let e = LMapEntry.held(store: LMapEntry.maxStoreID, rseg: 7, sp: true)
        XCTAssertTrue(e.isMapped && e.sp && !e.ss && e.holdsData && !e.isExclusive && e.isWellFormed)
        XCTAssertEqual(e.store, LMapEntry.maxStoreID)
        XCTAssertEqual(e.rseg, 7)
        XCTAssertTrue(e.with(sp: false).isExclusive)
        let s = LMapEntry.sharedWithSuccessor(sp: false)
        XCTAssertTrue(s.isMapped && s.ss && !s.holdsData && s.isWellFormed)
        XCTAssertFalse(LMapEntry(raw: 0b100).isWellFormed, "bits without mapped")
        XCTAssertFalse(LMapEntry(raw: 0b101 | 1 << 6).isWellFormed, "Ss with a location")
    }

    func testDiskMapIsSparseAndCounts() {
        var map = DiskMap(entriesPerLMap: 2048)
        XCTAssertEqual(map.entry(1 << 30), .unmapped)
        map.set(5, .held(store: 1, rseg: 2, sp: false))
        map.set(3 * 2048 + 1, .sharedWithSuccessor(sp: true))
        XCTAssertEqual(map.mappedCount, 2)
        XCTAssertEqual(map.sharedCount, 1)
        XCTAssertEqual(map.l2.compactMap { $0 }.count, 2, "only touched 2 GiB ranges get an LMAP")
        XCTAssertEqual(map.firstSegment(from: 0, limit: 10_000, mapped: true), 5)
        XCTAssertEqual(map.firstSegment(from: 6, limit: 10_000, mapped: true), 3 * 2048 + 1)
        XCTAssertEqual(map.firstSegment(from: 5, limit: 10_000, mapped: false), 6)
        map.set(5, .unmapped)
        XCTAssertNil(map.l2[0], "an emptied LMAP is dropped")
        XCTAssertEqual(map.mappedSegments(from: 0), [3 * 2048 + 1])
    }

    func testSplitSharesEverything() {
        var x = DiskMap(entriesPerLMap: 2048)
        x.set(0, .held(store: 3, rseg: 1, sp: false))
        x.set(9, .sharedWithSuccessor(sp: true))
        var p = DiskMap(entriesPerLMap: 2048)
        x.split(into: &p)
        XCTAssertEqual(x.entry(0), .held(store: 3, rseg: 1, sp: true))
        XCTAssertEqual(x.entry(9), .sharedWithSuccessor(sp: true))
        XCTAssertEqual(p.entry(0), .sharedWithSuccessor(sp: false))
        XCTAssertEqual(p.entry(9), .sharedWithSuccessor(sp: true))
        XCTAssertEqual(p.entry(1), .unmapped)
        XCTAssertEqual(p.mappedCount, 2)
        XCTAssertEqual(p.sharedCount, 2)
        XCTAssertEqual(x.sharedCount, 2)
    }

    func testPSEGAllocatorSkipsQuorumAndReuses() {
        var a = PSEGAllocator(psegCount: [10, 10], quorumPSEGs: 3)
        XCTAssertEqual(a.totalFree, 14)
        XCTAssertEqual(a.take(drive: 0), 3)
        XCTAssertEqual(a.take(drive: 0), 4)
        a.release(drive: 0, pseg: 3)
        XCTAssertEqual(a.take(drive: 0), 3)
        for _ in 0..<5 { _ = a.take(drive: 1) }
        XCTAssertEqual(a.freeCount[1], 2)
        _ = a.take(drive: 1); _ = a.take(drive: 1)
        XCTAssertNil(a.take(drive: 1))
    }

    func testRSDTableMembersAndParityRotation() {
        let t = RSDTable(capacity: 16)
        let members = (0..<5).map { StoreMember(drive: $0, pseg: 100 + $0) }
        t.define(6, level: .raid5, members: members)
        XCTAssertEqual(t.memberList(6), members)
        XCTAssertEqual(t.firstFreeID(), 0)
        t.markUsed(6, rseg: 3)
        XCTAssertTrue(t.isUsed(6, rseg: 3))
        t.release(6, rseg: 3)
        t.undefine(6)
        XCTAssertFalse(t.isLive(6))
        // Parity sits on a different member from store to store, data columns never on it.
        let geometry = PoolGeometry(quorumPSEGs: 4)
        XCTAssertEqual(Set((0..<5).map { StoreLayout(store: $0, level: .raid5, geometry: geometry).parityMember! }).count, 5)
        for store in 0..<5 {
            let layout = StoreLayout(store: store, level: .raid5, geometry: geometry)
            let data = (0..<4).map { layout.dataMember(column: $0) }
            XCTAssertFalse(data.contains(layout.parityMember!))
            XCTAssertEqual(Set(data).count, 4)
            XCTAssertEqual((0..<4).map { layout.column(ofMember: layout.dataMember(column: $0)) }, [0, 1, 2, 3])
            XCTAssertNil(layout.column(ofMember: layout.parityMember!))
        }
        let mirror = StoreLayout(store: 9, level: .raid1, geometry: geometry)
        XCTAssertEqual((0..<8).map { mirror.partner(ofMember: $0)! }, [4, 5, 6, 7, 0, 1, 2, 3])
        XCTAssertEqual(mirror.membersTouched(offset: 250 << 10, count: 8 << 10), [0, 1, 4, 5])
        XCTAssertEqual(StoreLayout(store: 7, level: .raid5, geometry: geometry).membersTouched(offset: 0, count: 4096), [2, 3])
        XCTAssertEqual(mirror.extent(StoreMember(drive: 3, pseg: 10), rseg: 2),
                       DriveExtent(drive: 3, offset: 10 * (2 << 20) + 2 * (256 << 10), length: 256 << 10))
    }

    func testXorIsItsOwnInverse() {
        var a = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let b = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 13 + 1) }
        let original = a
        a.withUnsafeMutableBytes { x in b.withUnsafeBytes { y in xorBytes(into: x.baseAddress!, from: y.baseAddress!, count: 1000) } }
        XCTAssertNotEqual(a, original)
        a.withUnsafeMutableBytes { x in b.withUnsafeBytes { y in xorBytes(into: x.baseAddress!, from: y.baseAddress!, count: 1000) } }
        XCTAssertEqual(a, original)
    }
}
