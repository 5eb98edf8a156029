// The user.lunfs.* attributes of a disk's directory: the RAID level can change until the first
// write, read-only facts refuse changes, unknown names are absent.
import Foundation
import XCTest

final class ExtendedAttributeTests: MountTestCase {
    func testRAIDLevelIsSettableOnlyBeforeTheFirstWrite() throws {
        let vm = pool.path("vm")
        try makeDirectory(vm)
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.raid"), "5", "five drives default to RAID 5")
        try setAttribute(vm, "user.lunfs.raid", "1")
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.raid"), "1")
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.lunfs.raid", "7") }, EINVAL)
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.lunfs.raid", "fast") }, EINVAL)

        let fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, [UInt8](repeating: 1, count: 4096), at: 0)
        close(fd)
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.lunfs.raid", "0") }, EPERM)
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.raid"), "1")
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.size"), "4096")
        XCTAssertNotEqual(try getAttribute(vm, "user.lunfs.allocated"), "0")
    }

    func testReadOnlyUnknownAndListedNames() throws {
        let vm = pool.path("vm")
        try makeDirectory(vm)
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.lunfs.size", "1") }, EPERM)
        XCTAssertEqual(errnoOf { _ = try getAttribute(vm, "user.lunfs.nonsense") }, ENODATA)
        XCTAssertEqual(errnoOf { _ = try getAttribute(vm, "user.other") }, ENODATA)
        XCTAssertEqual(errnoOf { _ = try getAttribute(vm, "user.lunfs.predecessor") }, ENODATA, "no snapshot, no predecessor")
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.other", "x") }, EOPNOTSUPP)
        let names = try listAttributes(vm)
        for name in ["raid", "reserved", "reserve_snapshots", "size", "allocated", "unique", "shared", "created"] {
            XCTAssertTrue(names.contains("user.lunfs.\(name)"), "listxattr lacks \(name): \(names)")
        }
        XCTAssertEqual(try listAttributes(pool.mountpoint), ["user.lunfs.scrub"], "the root has only the scrub request")
        let created = try XCTUnwrap(UInt64(getAttribute(vm, "user.lunfs.created")))
        XCTAssertLessThanOrEqual(abs(Int64(created) - Int64(time(nil))), 60)
        // getfattr, the tool users have, sees them too.
        let dump = try runProgram("getfattr", ["-d", "-m", "user.lunfs", vm])
        XCTAssertTrue(dump.output.contains("user.lunfs.raid=\"5\""), dump.output + dump.errorOutput)
    }

    func testReservationFlags() throws {
        let vm = pool.path("vm")
        try makeDirectory(vm)
        try setAttribute(vm, "user.lunfs.reserve_snapshots", "1")
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.reserve_snapshots"), "1")
        XCTAssertEqual(errnoOf { try setAttribute(vm, "user.lunfs.reserved", "maybe") }, EINVAL)
        try check(truncate(pool.path("vm/disk.img"), 8 << 20))
        try setAttribute(vm, "user.lunfs.reserved", "1")
        XCTAssertEqual(try getAttribute(vm, "user.lunfs.reserved"), "1")
    }
}
