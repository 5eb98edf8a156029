// FileDevice's mapped tail (the checksum area, written by copying into a shared mapping
// instead of with pwrite), on real files: tiny writes from several threads read back right
// through pread, after fdatasync and in a new open of the file; a write the kernel cannot back
// (the file cut short under the mapping) is an I/O error, not a crash, and leaves the rest of
// the drive working, while such a store outside the guarded copy still ends the process; an engine pool of file drives keeps its checksums through the mapping.
import XCTest
import Foundation
import Dispatch
import CLunSys
@testable import LunEngine

final class FileDeviceMappedTailTests: XCTestCase {
    private static let fileBytes: UInt64 = 8 << 20
    private static let tailStart: UInt64 = 6 << 20
    private var root = ""

    override func setUpWithError() throws {
        root = "/var/tmp/lunfs-mapped-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    private func fileSize(_ path: String) throws -> UInt64 {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as! NSNumber).uint64Value
    }

    func testTinyWritesFromSeveralThreadsReadBackRightAndSurviveAReopen() throws {
        let path = root + "/d"
        var device: FileDevice? = try FileDevice.createFile(path: path, sizeBytes: Self.fileBytes)
        device!.mapForTinyWrites(from: Self.tailStart)
        XCTAssertTrue(device!.mapsTinyWrites)
        let threads = 4, writesPerThread = 5_000
        let slots = Int(Self.fileBytes - Self.tailStart) / 4
        // Thread t owns the 4-byte slots congruent to t; each write puts (t, i) in a random one
        // of them, and the last value per slot is what must read back.
        let expected = Array(repeating: [UInt32](repeating: 0, count: slots / threads), count: threads)
        nonisolated(unsafe) let results = UnsafeMutablePointer<[UInt32]>.allocate(capacity: threads)
        results.initialize(from: expected, count: threads)
        defer { results.deinitialize(count: threads); results.deallocate() }
        let shared = device!
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            var rng = TestRandom(seed: UInt64(t) + 7)
            for i in 1...writesPerThread {
                let k = Int(rng.next() % UInt64(slots / threads))
                var value = UInt32(t << 24 | i)
                withUnsafeBytes(of: &value) { bytes in
                    try! shared.write(bytes, at: Self.tailStart + UInt64(4 * (k * threads + t)))
                }
                results[t][k] = value
                if i % 1_000 == 0 { try! shared.sync() }  // write-back runs beside the stores
            }
        }
        func check(_ d: FileDevice, _ when: String) throws {
            let back = UnsafeMutableRawBufferPointer.allocate(byteCount: slots * 4, alignment: 4096)
            defer { back.deallocate() }
            try d.read(into: back, at: Self.tailStart)
            var wrong = 0
            for t in 0..<threads {
                for k in 0..<slots / threads where back.load(fromByteOffset: 4 * (k * threads + t), as: UInt32.self) != results[t][k] {
                    wrong += 1
                }
            }
            XCTAssertEqual(wrong, 0, "slots that read back wrong \(when)")
        }
        try check(device!, "through pread while mapped")
        try device!.sync()
        device = nil  // unmapped and closed
        XCTAssertEqual(try fileSize(path), Self.fileBytes, "the mapping does not change the file's size")
        try check(try FileDevice(path: path), "in a new open of the file")
    }

    func testAWriteTheKernelCannotBackIsAnIOErrorAndTheDriveStillWorks() throws {
        let path = root + "/d"
        let device = try FileDevice.createFile(path: path, sizeBytes: Self.fileBytes)
        device.mapForTinyWrites(from: Self.tailStart)
        var value: UInt32 = 0xA5A5_5A5A
        try withUnsafeBytes(of: &value) { try device.write($0, at: Self.tailStart + 4096) }
        // Cut the file short under the mapping: touching a page past the end raises SIGBUS.
        XCTAssertEqual(truncate(path, off_t(Self.tailStart)), 0)
        XCTAssertThrowsError(try withUnsafeBytes(of: &value) { try device.write($0, at: Self.tailStart + 8192) },
                             "a store into a page past the end of the file") { error in
            XCTAssertTrue("\(error)".contains("SIGBUS"), "the error says what happened: \(error)")
        }
        XCTAssertEqual(try fileSize(path), Self.tailStart, "a pwrite would have grown the file; the mapping must not")
        // The thread and the drive carry on: a data write before the tail, and the same store
        // once the file has its size again.
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        block.initializeMemory(as: UInt8.self, repeating: 0x3C)
        try device.write(UnsafeRawBufferPointer(block), at: 4096)
        XCTAssertEqual(ftruncate(device.fileDescriptor, off_t(Self.fileBytes)), 0)
        try withUnsafeBytes(of: &value) { try device.write($0, at: Self.tailStart + 8192) }
        let back = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192 + 4, alignment: 4096)
        defer { back.deallocate() }
        try device.read(into: back, at: Self.tailStart)
        XCTAssertEqual(back.load(fromByteOffset: 8192, as: UInt32.self), value)
        XCTAssertEqual(back.load(fromByteOffset: 4096, as: UInt32.self), 0, "the cut dropped the earlier store")
        let data = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { data.deallocate() }
        try device.read(into: data, at: 4096)
        XCTAssertTrue(data.allSatisfy { $0 == 0x3C })
    }

    /// The handler catches only SIGBUS inside a guarded copy: a store into a mapping that
    /// the kernel cannot back anywhere else must still end the process (not loop, not pass
    /// silently). Run in a child: this test binary again, with only this test and a variable
    /// that makes it do the unguarded store.
    func testASIGBUSOutsideAGuardedCopyStillEndsTheProcess() throws {
        let path = root + "/d"
        let device = try FileDevice.createFile(path: path, sizeBytes: Self.fileBytes)
        device.mapForTinyWrites(from: Self.tailStart)  // installs the handler
        XCTAssertEqual(truncate(path, off_t(Self.tailStart)), 0)
        var value: UInt32 = 1
        XCTAssertThrowsError(try withUnsafeBytes(of: &value) { try device.write($0, at: Self.tailStart + 8192) })
        if getenv("LUNFS_TEST_UNGUARDED_SIGBUS") != nil {
            let other = try XCTUnwrap(lunsys_map_shared(device.fileDescriptor, Int64(Self.tailStart), 1 << 20))
            // The child dies before tearDown: its files go now (the descriptor and the mapping
            // outlive the unlink, and the page past the end still cannot be backed).
            try FileManager.default.removeItem(atPath: root)
            other.storeBytes(of: 1, toByteOffset: 8192, as: UInt8.self)  // SIGBUS, not caught
            print("UNGUARDED STORE RETURNED")
            return
        }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["LunEngineTests.FileDeviceMappedTailTests/testASIGBUSOutsideAGuardedCopyStillEndsTheProcess"]
        var environment = ProcessInfo.processInfo.environment
        environment["LUNFS_TEST_UNGUARDED_SIGBUS"] = "1"
        environment["SWIFT_BACKTRACE"] = "enable=no"
        child.environment = environment
        let output = Pipe()
        child.standardOutput = output
        child.standardError = output
        try child.run()
        // A handler that swallowed the fault would loop on it for ever.
        DispatchQueue.global().asyncAfter(deadline: .now() + 60) { if child.isRunning { child.terminate() } }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        XCTAssertTrue(text.contains("testASIGBUSOutsideAGuardedCopyStillEndsTheProcess"), "the child ran this test: \(text.suffix(2000))")
        XCTAssertFalse(text.contains("UNGUARDED STORE RETURNED"), text)
        XCTAssertEqual(child.terminationReason, .uncaughtSignal, "the child died of a signal: \(text.suffix(2000))")
        XCTAssertEqual(child.terminationStatus, SIGBUS)
    }

    func testAPoolOfFileDrivesKeepsItsChecksumsInTheMappedArea() throws {
        // A RAID 1 disk on file drives takes 4 KiB writes, is closed and reopened: every block
        // reads back right (a checksum the mapping lost would fail both copies: EIO), and each
        // drive's checksum area, read from the file, holds the checksum of every block.
        let size: UInt64 = 64 << 20
        let files = FileDrivePool(prefix: "\(root)/p", count: 3)
        var (pool, devices) = try files.create(size: size, raid: .raid1)
        XCTAssertTrue(devices.allSatisfy(\.mapsTinyWrites), "the pool mapped every drive's checksum area")
        let disk = try pool.createDisk(named: "m", raid: .raid1)
        try pool.resize(disk, to: 16 << 20)
        var written: [UInt64: UInt8] = [:]
        var rng = TestRandom(seed: 11)
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        for i in 0..<300 {
            let at = (rng.next() % 4096) * 4096
            let byte = UInt8(truncatingIfNeeded: rng.next() | 1)
            block.initializeMemory(as: UInt8.self, repeating: byte)
            try pool.write(disk, at: at, from: UnsafeRawBufferPointer(block))
            written[at] = byte
            if i % 100 == 99 { try pool.commit() }
        }
        try pool.close()
        (pool, devices) = try files.reopen()
        for (at, byte) in written {
            XCTAssertEqual(try pool.read(disk, at: at, into: block), 4096)
            XCTAssertTrue(block.allSatisfy { $0 == byte }, "block at \(at)")
        }
        try pool.close()
        // The checksum areas themselves, through new descriptors (no mapping).
        let areaStart = ChecksumArea.start(driveSizeBytes: size, psegSizeBytes: PoolGeometry.defaultPSEGSizeBytes)
        var checked = 0
        for (i, path) in (0..<3).map({ "\(root)/p\($0)" }).enumerated() {
            let drive = try FileDevice(path: path)
            let sums = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(size - areaStart), alignment: 4096)
            defer { sums.deallocate() }
            try drive.read(into: sums, at: areaStart)
            for b in 0..<Int(areaStart) / 4096 where sums.load(fromByteOffset: 4 * b, as: UInt32.self) != 0 {
                try drive.read(into: block, at: UInt64(b) * 4096)
                let want = ChecksumArea.checksum(UnsafeRawBufferPointer(block), drive: i, blockNumber: UInt64(b))
                XCTAssertEqual(UInt32(littleEndian: sums.load(fromByteOffset: 4 * b, as: UInt32.self)), want, "drive \(i) block \(b)")
                checked += 1
            }
        }
        XCTAssertGreaterThanOrEqual(checked, 2 * written.count, "both copies of every block written have their checksum on the drive")
    }
}
