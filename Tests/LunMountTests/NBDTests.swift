// The NBD face through real clients (libnbd's nbdinfo and nbdcopy, qemu-io, qemu-img) against
// a daemon that mounts the pool and serves it over NBD at once: exports and their flags,
// bytes copied out equal to the images in the tree, writes meeting in both directions (also
// through pages the kernel cached), base:allocation against SEEK_DATA, a snapshot exported
// read-only and copied while its disk is written, `lunfs serve` without a mount, and a
// seeded fuzzer whose abuse must stop neither the daemon nor another client.
import Foundation
import XCTest

/// Skips (or, with LUNFS_REQUIRE_FUSE=1, fails) when the NBD clients are not installed.
func requireNBDClients() throws {
    for tool in ["nbdinfo", "nbdcopy", "qemu-io", "qemu-img"] {
        let found = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
            .contains { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }
        if found { continue }
        if ProcessInfo.processInfo.environment["LUNFS_REQUIRE_FUSE"] == "1" {
            XCTFail("\(tool) is missing (apt-get install libnbd-bin qemu-utils) and LUNFS_REQUIRE_FUSE=1")
            throw FixtureError("no \(tool)")
        }
        throw XCTSkip("\(tool) is missing (apt-get install libnbd-bin qemu-utils)")
    }
}

final class NBDTests: MountTestCase {
    var port: UInt16 = 0

    override func setUpWithError() throws {
        try requireFUSE()
        try requireNBDClients()
        port = try freeLocalPort()
        pool = try MountedPool(drives: driveCount, driveSize: driveSize, mountArguments: ["--nbd", "127.0.0.1:\(port)"])
    }

    func uri(_ export: String) -> String { "nbd://127.0.0.1:\(port)/\(export)" }

    /// Runs a client program; fails the test with its output unless it exits 0.
    @discardableResult
    func client(_ program: String, _ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let result = try runProgram(program, arguments)
        guard result.status == 0 else {
            throw FixtureError("\(program) \(arguments.joined(separator: " ")) exited \(result.status): \(result.errorOutput)\(result.output)\(pool.logTail())")
        }
        return result.output
    }

    /// A disk of `sizeBytes` in the tree with random bytes at each of `ranges`; returns its image.
    func makeDisk(_ name: String, sizeBytes: Int, ranges: [(offset: Int, count: Int)], random: inout SeededGenerator) throws -> [UInt8] {
        try makeDirectory(pool.path(name))
        let fd = try openFile(pool.path(name + "/disk.img"), O_RDWR)
        defer { close(fd) }
        try check(ftruncate(fd, off_t(sizeBytes)), "ftruncate")
        var image = [UInt8](repeating: 0, count: sizeBytes)
        for range in ranges {
            let bytes = random.bytes(range.count)
            try writeAll(fd, bytes, at: range.offset)
            image.replaceSubrange(range.offset..<range.offset + range.count, with: bytes)
        }
        return image
    }

    /// Copies an export out with nbdcopy and returns its bytes.
    func copyOut(_ export: String) throws -> [UInt8] {
        let target = pool.root.appendingPathComponent("copy-\(UUID().uuidString.prefix(8)).img").path
        defer { unlink(target) }
        try client("nbdcopy", [uri(export), target])
        return try readWholeFile(target)
    }

    func testExportsAreListedAndCopiesMatchTheTree() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        _ = try makeDisk("vm", sizeBytes: 40 << 20, ranges: [(0, 300 << 10), (5 << 20 + 123, 2 << 20), (30 << 20, 1 << 20)], random: &random)
        try makeDirectory(pool.path("vm/monday"))
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        try writeAll(fd, random.bytes(3 << 20), at: 10 << 20)
        close(fd)
        _ = try makeDisk("other", sizeBytes: 1 << 20, ranges: [(4096, 5000)], random: &random)

        let listing = try client("nbdinfo", ["--list", "nbd://127.0.0.1:\(port)"])
        var sections: [String: String] = [:]
        for section in listing.components(separatedBy: "export=\"").dropFirst() {
            guard let quote = section.firstIndex(of: "\"") else { continue }
            sections[String(section[..<quote])] = String(section[quote...])
        }
        XCTAssertEqual(Set(sections.keys), ["vm", "vm/monday", "other"], listing)
        XCTAssertTrue(sections["vm"]?.contains("is_read_only: false") ?? false, listing)
        XCTAssertTrue(sections["vm/monday"]?.contains("is_read_only: true") ?? false, listing)
        XCTAssertTrue(sections["vm"]?.contains("base:allocation") ?? false, listing)
        XCTAssertTrue(sections["vm"]?.contains("can_multi_conn: true") ?? false, listing)
        XCTAssertTrue(sections["vm"]?.contains("export-size: \(40 << 20)") ?? false, listing)

        for export in ["vm", "vm/monday", "other"] {
            let tree = try readWholeFile(pool.path(export + "/disk.img"))
            let copied = try copyOut(export)
            XCTAssertEqual(copied.count, tree.count, export)
            XCTAssertTrue(copied == tree, "nbdcopy of \(export) differs from its image in the tree")
        }
        XCTAssertFalse(try readWholeFile(pool.path("vm/disk.img")) == readWholeFile(pool.path("vm/monday/disk.img")),
                       "the live disk changed after the snapshot, so the two exports must differ")
    }

    func testWritesMeetThroughTheTreeAndNBDInBothDirections() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let size = 16 << 20
        var model = try makeDisk("vm", sizeBytes: size, ranges: [(0, size)], random: &random)
        // Read a range through the tree first so the kernel caches its pages.
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        defer { close(fd) }
        XCTAssertEqual(try readBytes(fd, count: 64 << 10, at: 1 << 20), Array(model[(1 << 20)..<(1 << 20 + 64 << 10)]))

        try client("qemu-io", ["-f", "raw",
                               "-c", "write -P 0x5a 1048576 65536",
                               "-c", "write -P 0x33 3000000 5000",
                               "-c", "write -f -P 0x77 0 4096",
                               "-c", "write -z 8388608 2097152",
                               "-c", "discard 12582912 1048576",
                               "-c", "flush",
                               uri("vm")])
        model.replaceSubrange(1048576..<1048576 + 65536, with: repeatElement(0x5a, count: 65536))
        model.replaceSubrange(3000000..<3000000 + 5000, with: repeatElement(0x33, count: 5000))
        model.replaceSubrange(0..<4096, with: repeatElement(0x77, count: 4096))
        model.replaceSubrange(8388608..<8388608 + 2097152, with: repeatElement(0, count: 2097152))
        model.replaceSubrange(12582912..<12582912 + 1048576, with: repeatElement(0, count: 1048576))
        // The same descriptor, whose pages were cached before the NBD writes.
        XCTAssertTrue(try readBytes(fd, count: size, at: 0) == model, "the tree does not show the NBD writes")

        let fromTree = random.bytes(200 << 10)
        try writeAll(fd, fromTree, at: 5 << 20 + 7)
        model.replaceSubrange((5 << 20 + 7)..<(5 << 20 + 7 + fromTree.count), with: fromTree)
        XCTAssertTrue(try copyOut("vm") == model, "NBD does not show the tree's writes")
    }

    /// A write through the tree covering part of a page, then an NBD write of the rest of that
    /// page, then nothing but an fsync through the tree: with the kernel's writeback cache the
    /// page, dirty with the old rest, would be written back over the NBD write. A mount with
    /// --nbd keeps the cache off, so both writes stay, seen alike through the tree and NBD;
    /// and a later write through the tree is seen by NBD at once, without an fsync.
    func testATreeWriteAndAnNBDWriteToOnePageBothStay() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let size = 1 << 20
        var model = try makeDisk("vm", sizeBytes: size, ranges: [(0, size)], random: &random)
        let fd = try openFile(pool.path("vm/disk.img"), O_RDWR)
        defer { close(fd) }
        let head = random.bytes(512)
        try writeAll(fd, head, at: 8192)
        model.replaceSubrange(8192..<8192 + 512, with: head)
        try client("qemu-io", ["-f", "raw", "-c", "write -P 0x6b 8704 3584", "-c", "flush", uri("vm")])
        model.replaceSubrange(8704..<8704 + 3584, with: repeatElement(0x6b, count: 3584))
        try check(fsync(fd), "fsync")
        XCTAssertTrue(try readBytes(fd, count: size, at: 0) == model, "the tree lost a write")
        XCTAssertTrue(try copyOut("vm") == model, "NBD lost a write")
        // And a write through the tree reaches NBD readers at once, without an fsync.
        let more = random.bytes(700)
        try writeAll(fd, more, at: 20000)
        model.replaceSubrange(20000..<20700, with: more)
        XCTAssertTrue(try copyOut("vm") == model, "NBD does not see a write that returned through the tree")
    }

    func testBlockStatusMatchesSeekDataOfTheTree() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        _ = try makeDisk("vm", sizeBytes: 64 << 20, ranges: [(3 << 20, 1), (10 << 20, 2 << 20 + 5), (63 << 20 + 100, 1000)], random: &random)
        try client("qemu-io", ["-f", "raw", "-c", "discard 10485760 1048576", uri("vm")])

        var mapped: [(offset: Int, length: Int, hole: Bool)] = []
        for line in try client("nbdinfo", ["--map", uri("vm")]).split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 3, let offset = Int(fields[0]), let length = Int(fields[1]), let type = Int(fields[2]) else {
                XCTFail("unexpected nbdinfo --map line: \(line)")
                continue
            }
            append(&mapped, (offset, length, type & 1 != 0))
        }

        var seeked: [(offset: Int, length: Int, hole: Bool)] = []
        let fd = try openFile(pool.path("vm/disk.img"), O_RDONLY)
        defer { close(fd) }
        var position = 0
        let end = 64 << 20
        while position < end {
            let data = lseek(fd, off_t(position), SEEK_DATA_WHENCE)
            let dataStart = data < 0 ? end : Int(data)
            if dataStart > position {
                append(&seeked, (position, dataStart - position, true))
                position = dataStart
                continue
            }
            let holeStart = Int(lseek(fd, off_t(position), SEEK_HOLE_WHENCE))
            guard holeStart > position else { throw FixtureError("SEEK_HOLE from \(position) gave \(holeStart)") }
            append(&seeked, (position, holeStart - position, false))
            position = holeStart
        }
        XCTAssertTrue(seeked.contains { $0.hole } && seeked.contains { !$0.hole }, "the disk must have both holes and data")
        XCTAssertEqual(mapped.map { "\($0.offset)+\($0.length) \($0.hole ? "hole" : "data")" },
                       seeked.map { "\($0.offset)+\($0.length) \($0.hole ? "hole" : "data")" })
    }

    /// Adds an extent, merging it with the last one when both are of one kind.
    private func append(_ extents: inout [(offset: Int, length: Int, hole: Bool)], _ extent: (offset: Int, length: Int, hole: Bool)) {
        if let last = extents.last, last.hole == extent.hole, last.offset + last.length == extent.offset {
            extents[extents.count - 1].length += extent.length
        } else {
            extents.append(extent)
        }
    }

    func testSnapshotExportIsReadOnlyAndCopiesWhileItsDiskIsWritten() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let size = 32 << 20
        let frozen = try makeDisk("vm", sizeBytes: size, ranges: [(0, size)], random: &random)
        try makeDirectory(pool.path("vm/monday"))

        // The server itself refuses: a raw client sends what qemu would not.
        let snapshot = try SimpleNBDClient(port: port, export: "vm/monday")
        XCTAssertNotEqual(snapshot.transmissionFlags & 2, 0, "a snapshot export must be flagged read-only")
        XCTAssertEqual(snapshot.sizeBytes, UInt64(size))
        XCTAssertEqual(try snapshot.perform(command: 1, offset: 0, length: 4096, payload: random.bytes(4096)).error, 1, "WRITE must be EPERM")
        XCTAssertEqual(try snapshot.perform(command: 4, offset: 0, length: 4096).error, 1, "TRIM must be EPERM")
        XCTAssertEqual(try snapshot.perform(command: 6, offset: 0, length: 4096).error, 1, "WRITE_ZEROES must be EPERM")
        XCTAssertEqual(try snapshot.read(offset: 0, length: 65536), Array(frozen[0..<65536]))
        try snapshot.disconnect()
        let qemuWrite = try runProgram("qemu-io", ["-f", "raw", "-c", "write -P 1 0 4096", uri("vm/monday")])
        XCTAssertNotEqual(qemuWrite.status, 0, "qemu-io must not write to a read-only export")

        // qemu-img convert of the snapshot while a thread rewrites its disk through the tree.
        let stop = ManagedAtomicFlag()
        let writes = ManagedCounter()
        let writerSeed = random.next()
        let livePath = pool.path("vm/disk.img")
        let writer = Thread {
            var random = SeededGenerator(seed: writerSeed)
            let fd = open(livePath, O_WRONLY)
            defer { close(fd) }
            while !stop.isSet {
                let bytes = random.bytes(1 << 20)
                let offset = Int.random(in: 0..<(size >> 20), using: &random) << 20
                if (try? writeAll(fd, bytes, at: offset)) != nil { writes.add() }
            }
        }
        writer.start()
        let target = pool.root.appendingPathComponent("monday.raw").path
        defer { unlink(target) }
        let converted = try runProgram("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri("vm/monday"), target])
        let writesDuringCopy = writes.value
        stop.set()
        while !writer.isFinished { usleep(10_000) }
        XCTAssertEqual(converted.status, 0, converted.errorOutput + pool.logTail())
        XCTAssertGreaterThan(writesDuringCopy, 0, "the disk must have been written during the copy")
        XCTAssertTrue(try readWholeFile(target) == frozen, "the converted snapshot differs from the snapshot's bytes")
        XCTAssertTrue(try readWholeFile(pool.path("vm/monday/disk.img")) == frozen)
    }

    func testServeWithoutMountExportsWritableSnapshotsOnAUnixSocket() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        let live = try makeDisk("vm", sizeBytes: 4 << 20, ranges: [(0, 4 << 20)], random: &random)
        try makeDirectory(pool.path("vm/monday"))
        try pool.unmount()

        XCTAssertEqual(try pool.lunfs(["serve", pool.poolPath]).status, 2, "serve without --nbd is a usage error")
        let socketPath = pool.root.appendingPathComponent("nbd.sock").path
        let started = try pool.lunfs(["serve", pool.poolPath, "--nbd", socketPath, "--nbd-writable"])
        XCTAssertEqual(started.status, 0, started.errorOutput + pool.logTail())
        let pidText = try String(contentsOfFile: pool.poolPath + "/lunfs.pid", encoding: .utf8)
        let pid = try XCTUnwrap(pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))

        let listing = try client("nbdinfo", ["--list", "nbd+unix:///?socket=\(socketPath)"])
        let mondaySection = listing.components(separatedBy: "export=\"vm/monday\"").last ?? ""
        XCTAssertTrue(mondaySection.contains("is_read_only: false"), "--nbd-writable must make snapshots writable:\n\(listing)")
        try client("qemu-io", ["-f", "raw", "-c", "write -P 0x42 0 65536", "nbd+unix:///vm/monday?socket=\(socketPath)"])

        XCTAssertEqual(kill(pid, SIGTERM), 0)
        let deadline = Date().addingTimeInterval(30)
        while kill(pid, 0) == 0 && Date() < deadline { usleep(20_000) }
        XCTAssertNotEqual(kill(pid, 0), 0, "lunfs serve must exit on SIGTERM")
        XCTAssertFalse(FileManager.default.fileExists(atPath: socketPath), "the socket file must be removed")

        try pool.mount()
        let snapshotBytes = try readWholeFile(pool.path("vm/monday/disk.img"))
        XCTAssertEqual(Array(snapshotBytes[0..<65536]), [UInt8](repeating: 0x42, count: 65536))
        XCTAssertTrue(Array(snapshotBytes[65536...]) == Array(live[65536...]))
        XCTAssertTrue(try readWholeFile(pool.path("vm/disk.img")) == live, "a write to the snapshot must not reach its disk")
    }

    func testFuzzedClientsStopNeitherTheDaemonNorAnotherConnection() throws {
        let seed = newSeed(#function)
        var random = SeededGenerator(seed: seed)
        let kept = try makeDisk("keep", sizeBytes: 1 << 20, ranges: [(0, 1 << 20)], random: &random)
        _ = try makeDisk("vm", sizeBytes: 8 << 20, ranges: [(0, 1 << 20)], random: &random)
        let pidText = try String(contentsOfFile: pool.poolPath + "/lunfs.pid", encoding: .utf8)
        let pid = try XCTUnwrap(pid_t(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))

        let bystander = try SimpleNBDClient(port: port, export: "keep")
        XCTAssertEqual(try bystander.read(offset: 0, length: 65536), Array(kept[0..<65536]))

        var lingering = 0
        for round in 0..<300 {
            let connection = try RawConnection(port: port, receiveTimeoutSeconds: 10)
            try? connection.send(fuzzedMessages(&random))
            if !connection.finishAndDrain() {
                lingering += 1
                print("seed \(seed) round \(round): the server kept the connection open")
            }
        }
        XCTAssertEqual(lingering, 0, "seed \(seed): every abused connection must be closed by the server once the client stops")
        XCTAssertEqual(kill(pid, 0), 0, "seed \(seed): the daemon must survive the fuzzer" + pool.logTail())
        XCTAssertEqual(try bystander.read(offset: 4096, length: 65536), Array(kept[4096..<(4096 + 65536)]),
                       "seed \(seed): the connection opened before the fuzzer must still be served")
        try bystander.disconnect()
        XCTAssertTrue(try copyOut("keep") == kept, "seed \(seed)")
        try client("qemu-io", ["-f", "raw", "-c", "write -P 0x11 0 4096", "-c", "read -P 0x11 0 4096", uri("vm")])
    }

    /// One connection's worth of abuse: random bytes, a truncated or lying handshake, random
    /// options, or a proper attach followed by random, malformed and truncated requests.
    private func fuzzedMessages(_ random: inout SeededGenerator) -> [UInt8] {
        var message = MessageBytes()
        func noise(_ limit: Int) -> [UInt8] { random.bytes(Int.random(in: 0...limit, using: &random)) }
        func option(_ code: UInt32, _ data: [UInt8], declared: UInt32? = nil) {
            message.u64(SimpleNBDClient.optionMagic)
            message.u32(code)
            message.u32(declared ?? UInt32(data.count))
            message.bytes += data
        }
        let kind = Int.random(in: 0..<6, using: &random)
        if kind == 0 { return noise(200) }
        message.u32(Bool.random(using: &random) ? 3 : UInt32.random(in: 0...UInt32.max, using: &random))
        switch kind {
        case 1:
            message.bytes += noise(200)
        case 2:
            for _ in 0..<Int.random(in: 1...5, using: &random) {
                let data = noise(64)
                let declared: UInt32? = Bool.random(using: &random) ? nil : UInt32.random(in: 0...UInt32.max, using: &random)
                option(UInt32.random(in: 0...12, using: &random), data, declared: declared)
            }
        case 3:
            // Meta contexts and INFO with lengths that lie inside the option data.
            var data = MessageBytes()
            data.u32(Bool.random(using: &random) ? 2 : UInt32.random(in: 0...UInt32.max, using: &random))
            data.text("vm")
            data.u32(UInt32.random(in: 0...3, using: &random))
            data.u32(UInt32.random(in: 0...40, using: &random))
            data.bytes += noise(40)
            option([6, 8, 9, 10][Int.random(in: 0..<4, using: &random)], data.bytes)
            option(10, data.bytes)
        default:
            if kind == 5 { option(8, []) } // structured replies first
            var go = MessageBytes()
            go.u32(2)
            go.text("vm")
            go.u16(0)
            option(7, go.bytes)
            for _ in 0..<Int.random(in: 1...20, using: &random) {
                let command = UInt16.random(in: 0...9, using: &random)
                let length = Bool.random(using: &random) ? UInt32.random(in: 0...(256 << 10), using: &random) : UInt32.random(in: 0...UInt32.max, using: &random)
                let offset = Bool.random(using: &random) ? UInt64.random(in: 0...(8 << 20), using: &random) : UInt64.random(in: 0...UInt64.max, using: &random)
                var request = SimpleNBDClient.request(command: command, flags: UInt16.random(in: 0...0x3f, using: &random),
                                                      cookie: random.next(), offset: offset, length: length)
                if Int.random(in: 0..<20, using: &random) == 0 { request[Int.random(in: 0..<4, using: &random)] ^= 0xff }
                if Int.random(in: 0..<10, using: &random) == 0 { request = Array(request.prefix(Int.random(in: 0..<28, using: &random))) }
                message.bytes += request
                if command == 1 && length <= 256 << 10 {
                    let payload = random.bytes(Int(length))
                    message.bytes += Bool.random(using: &random) ? payload : Array(payload.prefix(Int.random(in: 0...Int(length), using: &random)))
                }
            }
        }
        // Cut the whole message short now and then.
        if Int.random(in: 0..<4, using: &random) == 0 && !message.bytes.isEmpty {
            return Array(message.bytes.prefix(Int.random(in: 0..<message.bytes.count, using: &random)))
        }
        return message.bytes
    }
}

/// A flag one thread sets and another polls.
final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}

/// A counter one thread bumps and another reads.
final class ManagedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.withLock { count } }
    func add() { lock.withLock { count += 1 } }
}
