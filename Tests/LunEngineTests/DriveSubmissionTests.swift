// The large writes of one request made together through io_uring (DriveSubmission) put the same
// bytes and checksums on file drives as the pwrite path: a batch of direct pieces, small pieces,
// a piece from unaligned memory and one to a drive out of service, written both ways to two
// sets of drive files, leaves the two sets byte for byte equal, and every piece reads back and
// passes its checksums. The ring's set takes its checksums computed while its writes are in flight.
import XCTest
import Foundation
@testable import LunEngine
import LunEngineTesting

final class DriveSubmissionTests: XCTestCase {
    private static let driveBytes: UInt64 = 24 << 20
    private static let psegBytes: UInt64 = 2 << 20

    private func driveSet(_ dir: String, _ count: Int, ring: Bool) throws -> (DriveSet, BlockChecksums, [String]) {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let paths = (0..<count).map { "\(dir)/d\($0)" }
        let devices = try paths.map { try FileDevice.createFile(path: $0, sizeBytes: Self.driveBytes, directMinimumBytes: 64 << 10) }
        let drives = DriveSet(devices: devices, log: { _ in })
        drives.usesRing = ring
        let sums = BlockChecksums(drives: drives, driveSizes: Array(repeating: Self.driveBytes, count: count),
                                  psegSizeBytes: Self.psegBytes)
        return (drives, sums, paths)
    }

    func testRingAndPwritesPutTheSameBytesAndChecksumsOnTheDrives() throws {
        let root = NSTemporaryDirectory() + "lunfs-uwrite-submission-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (ringDrives, ringSums, ringPaths) = try driveSet(root + "/ring", 6, ring: true)
        let (plainDrives, plainSums, plainPaths) = try driveSet(root + "/plain", 6, ring: false)
        var rng = TestRandom(seed: 5150)
        // One aligned buffer holds every piece's bytes; piece 5 starts 16 bytes in (unaligned).
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { memory.deallocate() }
        for i in 0..<memory.count { memory[i] = UInt8(truncatingIfNeeded: rng.next()) }
        let bb = ChecksumArea.blockBytes
        // (drive, offset on the drive, first byte in memory, length)
        let pieces: [(Int, UInt64, Int, Int)] = [
            (0, 0, 0, 256 << 10), (1, 4 << 20, 256 << 10, 256 << 10), (2, 2 << 20, 512 << 10, 256 << 10),
            (3, 6 << 20, 768 << 10, 256 << 10),                       // four direct pieces
            (4, 8192, 1 << 20, bb),                                   // small: the page cache
            (5, 10 << 20, (2 << 20) + 16, 128 << 10),                 // unaligned memory: bounce buffer
            (0, 8 << 20, 3 << 20, 64 << 10), (4, 12 << 20, (3 << 20) + (64 << 10), 256 << 10),
        ]
        for (drives, sums) in [(ringDrives, ringSums), (plainDrives, plainSums)] {
            let runs = pieces.map { p -> (data: UnsafeRawBufferPointer, sums: BlockSums) in
                let data = UnsafeRawBufferPointer(rebasing: memory[p.2..<p.2 + p.3])
                return (data, BlockSums(of: data, drive: p.0, at: p.1))
            }
            let errors: [LunError?]
            if drives === ringDrives {
                // The checksums computed while the data is in flight: once, before the ring has
                // waited for any of the writes (DriveSubmission looks at their results).
                var calls = 0
                errors = sums.writeAll(runs.map { DriveWrite(drive: $0.sums.drive, data: $0.data, offset: $0.sums.first * UInt64(bb)) },
                                       sideBySide: true) {
                    calls += 1
                    return pieces.map { p in BlockSums(of: UnsafeRawBufferPointer(rebasing: memory[p.2..<p.2 + p.3]), drive: p.0, at: p.1) }
                }
                XCTAssertEqual(calls, 1)
                XCTAssertEqual(drives.workWhileInFlight.load(ordering: .relaxed), 1, "the checksums were not computed while the writes were in flight")
            } else {
                errors = sums.writeAll(runs, sideBySide: true)
            }
            XCTAssertTrue(errors.allSatisfy { $0 == nil }, "\(errors)")
            // A drive out of service: its piece fails, the others are not held back.
            drives.setInService(5, false)
            let data = UnsafeRawBufferPointer(rebasing: memory[0..<(256 << 10)])
            let late = sums.writeAll([(data, BlockSums(of: data, drive: 5, at: 0)),
                                      (data, BlockSums(of: data, drive: 1, at: 16 << 20))], sideBySide: true)
            XCTAssertNotNil(late[0], "a write to a drive out of service")
            XCTAssertNil(late[1])
            drives.setInService(5, true)
        }
        XCTAssertEqual(ringDrives.ringWrites.load(ordering: .relaxed), 6, "the six direct pieces of the first batch went through the ring (the second has one direct piece: pwrite)")
        XCTAssertEqual(plainDrives.ringWrites.load(ordering: .relaxed), 0)
        XCTAssertEqual(plainDrives.workWhileInFlight.load(ordering: .relaxed), 0)
        for (a, b) in zip(ringPaths, plainPaths) {
            let x = try Data(contentsOf: URL(fileURLWithPath: a)), y = try Data(contentsOf: URL(fileURLWithPath: b))
            XCTAssertTrue(x == y, "\(a) and \(b) differ")
        }
        for (drives, sums) in [(ringDrives, ringSums), (plainDrives, plainSums)] {
            _ = drives
            for p in pieces {
                let back = UnsafeMutableRawBufferPointer.allocate(byteCount: p.3, alignment: 4096)
                defer { back.deallocate() }
                XCTAssertEqual(try sums.read(p.0, into: back, at: p.1), [], "blocks failing their checksums")
                XCTAssertTrue(back.elementsEqual(memory[p.2..<p.2 + p.3]), "piece at drive \(p.0) offset \(p.1)")
            }
        }
    }
}
