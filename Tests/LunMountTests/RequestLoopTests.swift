// Which loop carries the requests: FUSE over io_uring when the kernel offers it (and the
// daemon must then really use it), /dev/fuse under -o uring=off or when the kernel does not
// offer it. Every test checks the bytes read back through the mount and then the daemon's
// own count of requests per loop, which it logs when the session ends.
import Foundation
import XCTest

final class RequestLoopTests: XCTestCase {
    private var pool: MountedPool?

    override func tearDown() {
        pool?.tearDown()
        pool = nil
        super.tearDown()
    }

    /// Whether this kernel offers FUSE over io_uring to new mounts (the module parameter).
    private var kernelOffersRing: Bool {
        let text = (try? String(contentsOfFile: "/sys/module/fuse/parameters/enable_uring", encoding: .utf8)) ?? "N"
        return text.trimmingCharacters(in: .whitespacesAndNewlines) == "Y"
    }

    func testRequestsGoOverIoUringWhenTheKernelOffersIt() throws {
        let offered = kernelOffersRing
        let pool = try mountPool(["-o", "uring=auto"])
        let served = try exerciseAndUnmount(pool)
        let log = try logText(pool)
        if offered {
            XCTAssertTrue(log.contains("session: requests over io_uring: "),
                          "the kernel offers FUSE over io_uring but the daemon fell back:\n\(pool.logTail())")
            XCTAssertGreaterThan(served.overRing, 100, "the reads and writes went over the ring\n\(pool.logTail())")
            // INIT itself, and what came before every queue had an entry, used /dev/fuse.
            XCTAssertLessThan(served.overDevice, 20, pool.logTail())
        } else {
            XCTAssertTrue(log.contains("session: requests over /dev/fuse: the kernel does not offer FUSE over io_uring"), pool.logTail())
            XCTAssertEqual(served.overRing, 0)
        }
    }

    func testUringOffServesEverythingThroughDevFuse() throws {
        let pool = try mountPool(["-o", "uring=off"])
        let served = try exerciseAndUnmount(pool)
        XCTAssertTrue(try logText(pool).contains("session: requests over /dev/fuse (-o uring=off)"), pool.logTail())
        XCTAssertEqual(served.overRing, 0)
        XCTAssertGreaterThan(served.overDevice, 100)
    }

    /// The kernel queues a request on the ring of the CPU its sender runs on, and the WRITEs
    /// that a snapshot's flush of dirty pages makes the kernel send come from the flushing
    /// thread itself. With the daemon and mkdir on one CPU and two request threads, the
    /// flushing thread held that queue's only entry and mkdir hung for good; now every queue
    /// keeps an entry that is not flushing.
    func testSnapshotFlushOnAPinnedSmallRingDoesNotHang() throws {
        // This thread, and so the daemon it starts and every thread of it, on CPU 0.
        let me = String(getpid())
        XCTAssertEqual(try runProgram("taskset", ["-p", "-c", "0", me]).status, 0)
        defer { _ = try? runProgram("taskset", ["-p", "-c", "0-\(ProcessInfo.processInfo.processorCount - 1)", me]) }
        let pool = try mountPool(["-o", "max_threads=2"])
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        let bytes = (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        try writeAll(fd, bytes, at: 0)
        let mkdir = try runProgram("timeout", ["30", "taskset", "-c", "0", "mkdir", pool.path("vm/s")])
        XCTAssertEqual(mkdir.status, 0, "mkdir of a snapshot while dirty pages wait, daemon pinned: \(mkdir.errorOutput)\n\(pool.logTail())")
        guard mkdir.status == 0 else { return }
        let snapshotFD = try openFile(pool.path("vm/s/disk.img"), O_RDONLY)
        defer { close(snapshotFD) }
        XCTAssertEqual(try readBytes(snapshotFD, count: bytes.count, at: 0), bytes, "the snapshot holds the write that returned before mkdir")
    }

    /// Eight threads at once, buffered and O_DIRECT, reads and writes, with a snapshot taken in
    /// the middle: several entries of each queue busy together, and mkdir's flush among them.
    func testConcurrentRequestsAndASnapshotOnTheRing() throws {
        let seed = newSeed(#function)
        let pool = try mountPool([])
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let region = 2 << 20, threads = 8
        let setup = try openFile(image, O_RDWR)
        XCTAssertEqual(ftruncate(setup, off_t(region * threads)), 0)
        close(setup)
        let errors = LockedList()
        let snapshot = pool.path("vm/mid")
        DispatchQueue.concurrentPerform(iterations: threads + 1) { index in
            if index == threads {
                usleep(50_000)
                do { try makeDirectory(snapshot) } catch { errors.append("snapshot: \(error)") }
                return
            }
            do {
                var random = SeededGenerator(seed: seed &+ UInt64(index))
                let direct = index % 2 == 0
                let fd = try openFile(image, O_RDWR | (direct ? O_DIRECT_FLAG : 0))
                defer { close(fd) }
                let buffer = AlignedBuffer(count: 64 << 10)
                var model = [UInt8](repeating: 0, count: region)
                for round in 0..<60 {
                    let size = [4096, 16384, 65536][round % 3]
                    let offset = Int.random(in: 0..<(region - size) / 4096, using: &random) * 4096
                    let bytes = random.bytes(size)
                    bytes.withUnsafeBytes { buffer.bytes.copyMemory(from: $0) }
                    try writeAll(fd, UnsafeRawBufferPointer(start: buffer.pointer, count: size), at: index * region + offset)
                    model.replaceSubrange(offset..<offset + size, with: bytes)
                    let readCount = pread(fd, buffer.pointer, size, off_t(index * region + offset))
                    if readCount != size || !buffer.bytes.prefix(size).elementsEqual(bytes) {
                        errors.append("thread \(index) round \(round): read back differs (\(readCount) bytes)")
                    }
                }
                let content = try readBytes(fd, count: region, at: index * region)
                if content != model { errors.append("thread \(index): its region differs at the end") }
            } catch {
                errors.append("thread \(index): \(error)")
            }
        }
        XCTAssertEqual(errors.items, [], pool.logTail())
        XCTAssertEqual(try fileSize(pool.path("vm/mid/disk.img")), region * threads)
        if let problem = pool.unmountAndCheck() { XCTFail(problem) }
    }

    /// The INIT reply tells the kernel that lunfs removes set-user-ID, set-group-ID and
    /// capabilities itself (FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 cannot ask for), on
    /// either loop. Without it the kernel asks for `security.capability` before every buffered
    /// write, a round trip each. lunfs keeps its side: images never carry the two bits.
    func testBufferedWritesCostNoCapabilityLookupAndImagesDropSetID() throws {
        let pool = try mountPool([])
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let size = 4 << 20
        var model = [UInt8](repeating: 0, count: size)
        let fd = try openFile(image, O_RDWR)
        XCTAssertEqual(ftruncate(fd, off_t(size)), 0)
        let writes = 2000
        for _ in 0..<writes {
            let offset = Int.random(in: 0..<size / 4096, using: &random) * 4096
            let piece = random.bytes(4096)
            try writeAll(fd, piece, at: offset)
            model.replaceSubrange(offset..<offset + 4096, with: piece)
        }
        XCTAssertEqual(fsync(fd), 0)
        close(fd)
        XCTAssertTrue(sameBytes(try readWholeFile(image)[...], model[...]), "buffered writes read back")

        XCTAssertEqual(chmod(image, 0o6755), 0)
        var info = stat()
        XCTAssertEqual(stat(image, &info), 0)
        XCTAssertEqual(info.st_mode & 0o7777, 0o755, "an image drops set-user-ID and set-group-ID")
        XCTAssertEqual(chmod(pool.path("vm"), 0o2755), 0)
        XCTAssertEqual(stat(pool.path("vm"), &info), 0)
        XCTAssertEqual(info.st_mode & 0o7777, 0o2755, "a directory keeps set-group-ID")

        if let problem = pool.unmountAndCheck() { XCTFail(problem) }
        let log = try logText(pool)
        XCTAssertTrue(log.contains("session: FUSE_HANDLE_KILLPRIV_V2"), pool.logTail())
        let line = log.split(separator: "\n").last(where: { $0.contains("times for security.capability") })
        let asked = line.flatMap { $0.split(separator: " ").compactMap { Int($0) }.last }
        guard let asked else { return XCTFail("no count of capability lookups in the log\n\(pool.logTail())") }
        XCTAssertLessThan(asked, writes / 20, "the kernel still checks capabilities before writes")
    }

    func testUnknownUringValueIsRefused() throws {
        try requireFUSE()
        let binary = try lunfsBinaryPath()
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("lunfs-uring-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: root.path + "/mnt", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: root) }
        let result = try runProgram(binary, ["mount", root.path + "/pool", root.path + "/mnt", "--create", "-o", "uring=maybe"])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.errorOutput.contains("uring takes off or auto, not maybe"), result.errorOutput)
        XCTAssertFalse(isMountPoint(root.path + "/mnt"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: root.path + "/pool"), "a refused mount creates nothing")
    }

    // MARK: - Helpers

    private func mountPool(_ arguments: [String]) throws -> MountedPool {
        let mounted = try MountedPool(drives: 3, driveSize: "256M", mountArguments: arguments)
        pool = mounted
        return mounted
    }

    private func logText(_ pool: MountedPool) throws -> String {
        try String(contentsOfFile: pool.poolPath + "/lunfs.log", encoding: .utf8)
    }

    /// Writes and reads 16 MiB (1 MiB buffered pieces, then 4 KiB O_DIRECT blocks), checks the
    /// bytes, unmounts, and returns the daemon's count of requests per loop.
    private func exerciseAndUnmount(_ pool: MountedPool) throws -> (overRing: Int, overDevice: Int) {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let size = 16 << 20
        let bytes = random.bytes(size)
        let fd = try openFile(image, O_RDWR)
        for offset in stride(from: 0, to: size, by: 1 << 20) {
            try writeAll(fd, Array(bytes[offset..<offset + (1 << 20)]), at: offset)
        }
        XCTAssertEqual(fsync(fd), 0)
        close(fd)
        XCTAssertTrue(sameBytes(try readWholeFile(image)[...], bytes[...]), "buffered read back")
        let direct = try openFile(image, O_RDWR | O_DIRECT_FLAG)
        let block = AlignedBuffer(count: 4096)
        var model = bytes
        for round in 0..<200 {
            let offset = Int.random(in: 0..<size / 4096, using: &random) * 4096
            let piece = random.bytes(4096)
            piece.withUnsafeBytes { block.bytes.copyMemory(from: $0) }
            XCTAssertEqual(pwrite(direct, block.pointer, 4096, off_t(offset)), 4096, "round \(round)")
            model.replaceSubrange(offset..<offset + 4096, with: piece)
            memset(block.pointer, 0, 4096)
            XCTAssertEqual(pread(direct, block.pointer, 4096, off_t(offset)), 4096)
            XCTAssertTrue(block.bytes.elementsEqual(piece), "round \(round): O_DIRECT read back at \(offset)")
        }
        close(direct)
        XCTAssertTrue(sameBytes(try readWholeFile(image)[...], model[...]), "whole image after O_DIRECT writes")
        if let problem = pool.unmountAndCheck() { XCTFail(problem) }
        let lines = try logText(pool).split(separator: "\n")
        guard let counts = lines.last(where: { $0.contains("session: served ") }) else {
            XCTFail("no count of served requests in the log\n\(pool.logTail())")
            return (0, 0)
        }
        let numbers = counts.split(separator: " ").compactMap { Int($0) }
        XCTAssertEqual(numbers.count, 2, String(counts))
        return (numbers.first ?? 0, numbers.last ?? 0)
    }
}
