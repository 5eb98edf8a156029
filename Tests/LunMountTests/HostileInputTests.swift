// Every operation of the mounted tree with arguments meant to break it: offsets and sizes at
// and past 64 TiB or negative, names too long or reserved or not UTF-8, renames that would move
// or replace things, xattr values the engine cannot take, I/O on images deleted while open,
// and requests that would create what only mkdir creates. Each must fail with the errno that
// README.md and docs/MOUNT.md give and change nothing (tree, bytes, attributes and statfs
// compared before and after). A refusal the daemon gives writes a line to POOL/lunfs.log
// naming the operation and errno; one the kernel gives before asking the daemon writes none.
// Where the kernel answers instead of lunfs, or the docs and the behaviour differ, the test
// says so next to the case.
import Foundation
import XCTest

final class HostileInputTests: MountTestCase {
    /// Who answers a request, which decides what the log must show.
    enum Answerer {
        /// The daemon, which logs the failure under the FUSE operation's name (and sometimes a
        /// lookup failure on the way there: `alsoLogged`).
        case daemon(String, alsoLogged: [String] = [])
        /// The daemon, with one of the two answers MOUNT.md says are not logged.
        case daemonWithoutLog
        /// The kernel, without asking the daemon: nothing is logged.
        case kernel
        /// The kernel or, depending on its version, the daemon (logging `op`).
        case kernelOrDaemon(String)
    }

    static let largestDiskBytes = 64 << 40

    private var baseline = MountedState()
    private var logOffset = 0
    private var generator = SeededGenerator(seed: 0)
    private var vmImage: String { pool.path("vm/disk.img") }

    override func setUpWithError() throws {
        try super.setUpWithError()
        // These tests hold write(2) itself to its answers at the limits (EFBIG, a write cut at
        // 64 TiB): without the writeback cache. With it, write(2) answers from the page cache
        // and the refusals come at fsync and close (WritebackCacheTests).
        try pool.unmount()
        try pool.mount(["-o", "no_writeback_cache"])
        try buildTree()
        try rebaseline()
    }

    /// vm (data, two snapshots, then changed), other (data), blank (never written) and hollow
    /// (image deleted, snapshot kept).
    private func buildTree() throws {
        generator = SeededGenerator(seed: newSeed(name))
        for disk in ["vm", "other", "blank", "hollow"] { try makeDirectory(pool.path(disk)) }
        let fd = try openFile(vmImage, O_RDWR)
        defer { close(fd) }
        try writeAll(fd, random(2 << 20), at: 0)
        try writeAll(fd, random(300_000), at: 3 << 20)
        try makeDirectory(pool.path("vm/snap"))
        try makeDirectory(pool.path("vm/later"))
        try writeAll(fd, random(65536), at: 4096)
        for disk in ["other", "hollow"] {
            let other = try openFile(pool.path(disk + "/disk.img"), O_WRONLY)
            try writeAll(other, random(1 << 20), at: 0)
            close(other)
        }
        try makeDirectory(pool.path("hollow/keep"))
        try check(unlink(pool.path("hollow/disk.img")))
    }

    private func random(_ count: Int) -> [UInt8] { generator.bytes(count) }

    /// Commits (so that no freed segment is still pending and statfs stays put), then takes
    /// the state every refusal is compared with and skips the log to its end.
    private func rebaseline() throws {
        let fd = try openFile(vmImage, O_RDONLY)
        try check(fsync(fd))
        close(fd)
        baseline = try MountedState.capture(pool.mountpoint)
        _ = newFailureLines()
    }

    /// Log lines written since the last call that record a failed request.
    private func newFailureLines() -> [String] {
        guard let handle = FileHandle(forReadingAtPath: pool.poolPath + "/lunfs.log") else { return [] }
        defer { try? handle.close() }
        try? handle.seek(toOffset: UInt64(logOffset))
        let data = handle.readDataToEndOfFile()
        logOffset += data.count
        return String(decoding: data, as: UTF8.self).split(separator: "\n").map(String.init)
            .filter { $0.contains(/: E[A-Z]+\([0-9]+\)\s/) }
    }

    /// The operation a log line is about: the word after the "[pid/tid] " prefix.
    private func operation(of line: String) -> String {
        guard let end = line.range(of: "] ") else { return "" }
        return String(line[end.upperBound...].prefix { $0 != " " })
    }

    /// Runs `body`, which must fail with `expected` (or `alternative`, which some kernel
    /// versions give instead); then the tree must be as before and the log must say what
    /// `answerer` implies.
    func expectRefusal(_ expected: Int32, or alternative: Int32? = nil, from answerer: Answerer, _ what: String,
                       file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
        let code = errnoOf(body)
        if code != alternative {
            XCTAssertEqual(errnoLabel(code), errnoLabel(expected), what, file: file, line: line)
        }
        expectUnchanged(what, answerer: answerer, errno: code, file: file, line: line)
    }

    /// For requests that succeed without changing anything (a read past the end).
    func expectHarmless(_ what: String, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> Void) {
        XCTAssertEqual(errnoLabel(errnoOf(body)), errnoLabel(0), what, file: file, line: line)
        expectUnchanged(what, answerer: .kernel, errno: 0, file: file, line: line)
    }

    private func expectUnchanged(_ what: String, answerer: Answerer, errno expected: Int32, file: StaticString = #filePath, line: UInt = #line) {
        do {
            let now = try MountedState.capture(pool.mountpoint)
            let changes = now.differences(from: baseline)
            if !changes.isEmpty {
                XCTFail("\(what) changed the tree:\n" + changes.joined(separator: "\n"), file: file, line: line)
                baseline = now  // report each change once
            }
        } catch {
            XCTFail("\(what): the tree cannot be read after it: \(error)", file: file, line: line)
        }
        let lines = newFailureLines()
        switch answerer {
        case .kernel, .daemonWithoutLog:
            XCTAssertEqual(lines, [], "\(what): nothing should be logged, yet the daemon logged a failure", file: file, line: line)
        case .kernelOrDaemon(let op):
            let unexpected = lines.filter { operation(of: $0) != op || !$0.contains(": \(errnoLabel(expected)) ") }
            XCTAssertEqual(unexpected, [], "\(what): failure lines other than \(op) \(errnoLabel(expected))", file: file, line: line)
        case .daemon(let op, let alsoLogged):
            let matching = lines.filter { operation(of: $0) == op && $0.contains(": \(errnoLabel(expected)) ") }
            // One line per request; the kernel may send more than one (a read and its readahead).
            XCTAssertFalse(matching.isEmpty, "\(what): want a log line for \(op) \(errnoLabel(expected)); new failure lines:\n\(lines.joined(separator: "\n"))", file: file, line: line)
            let others = lines.filter { !matching.contains($0) }.map(operation(of:))
            XCTAssertEqual(others, alsoLogged, "\(what): other failure lines:\n\(lines.joined(separator: "\n"))", file: file, line: line)
        }
    }

    // MARK: Offsets and sizes

    func testOffsetsAndSizesPastTheLargestDiskOrNegative() throws {
        let fd = try openFile(vmImage, O_RDWR)
        defer { close(fd) }
        var direct = try openFile(vmImage, O_RDWR | O_DIRECT_FLAG)
        defer { if direct >= 0 { close(direct) } }
        let page = AlignedBuffer(count: 4096)
        let bytes = [UInt8](repeating: 0xEE, count: 4096)
        let largest = Self.largestDiskBytes

        expectRefusal(EFBIG, from: .daemon("write"), "pwrite at 64 TiB") { try writeAll(fd, bytes, at: largest) }
        expectRefusal(EFBIG, from: .daemon("write"), "pwrite at 1 EiB") { try writeAll(fd, bytes, at: 1 << 60) }
        expectRefusal(EFBIG, from: .daemon("write"), "O_DIRECT pwrite at 64 TiB") {
            try writeAll(direct, UnsafeRawBufferPointer(page.bytes), at: largest)
        }
        expectRefusal(EFBIG, from: .daemon("write"), "pwrite ending at the largest off_t") { try writeAll(fd, [1, 2, 3], at: Int.max - 3) }
        expectRefusal(EINVAL, from: .kernel, "pwrite at -4096") { try writeAll(fd, bytes, at: -4096) }
        expectRefusal(EINVAL, from: .kernel, "pread at -1") { _ = try readBytes(fd, count: 10, at: -1) }
        expectRefusal(EINVAL, from: .kernel, "pread that would end past the largest off_t") { _ = try readBytes(fd, count: 4096, at: Int.max - 1) }

        // Reads past the end are not errors: they return nothing.
        for (label, offset) in [("64 TiB", largest), ("1 EiB", 1 << 60), ("8 EiB - 8 KiB", Int.max - 8191)] {
            expectHarmless("pread at \(label)") { XCTAssertEqual(try readBytes(fd, count: 4096, at: offset), [], label) }
            expectHarmless("O_DIRECT pread at \(label)") {
                XCTAssertEqual(pread(direct, page.pointer, 4096, off_t(offset)), 0, label)
            }
        }

        expectRefusal(EFBIG, from: .daemon("setattr"), "truncate to 64 TiB + 1") { try check(truncate(vmImage, off_t(largest + 1))) }
        expectRefusal(EFBIG, from: .daemon("setattr"), "ftruncate to the largest off_t") { try check(ftruncate(fd, off_t(Int.max))) }
        expectRefusal(EINVAL, from: .kernel, "truncate to -1") { try check(truncate(vmImage, -1)) }
        expectRefusal(EINVAL, from: .kernel, "ftruncate to -1") { try check(ftruncate(fd, -1)) }
        expectRefusal(EISDIR, from: .kernel, "truncate of a directory") { try check(truncate(pool.path("vm"), 0)) }

        expectRefusal(EFBIG, from: .daemon("fallocate"), "fallocate at 64 TiB") { try allocate(fd, mode: 0, offset: largest, length: 1) }
        expectRefusal(EFBIG, from: .daemon("fallocate"), "zero range across 64 TiB") {
            try allocate(fd, mode: 0x10 /* ZERO_RANGE */, offset: largest - 4096, length: 8192)
        }
        expectRefusal(EFBIG, from: .kernel, "fallocate past the largest off_t") { try allocate(fd, mode: 0, offset: Int.max - 10, length: 100) }
        expectRefusal(EINVAL, from: .kernel, "fallocate at -1") { try allocate(fd, mode: 0, offset: -1, length: 4096) }
        expectRefusal(EINVAL, from: .kernel, "fallocate of length 0") { try allocate(fd, mode: 0, offset: 0, length: 0) }

        let other = try openFile(pool.path("other/disk.img"), O_RDONLY)
        defer { close(other) }
        expectRefusal(EFBIG, from: .daemon("copy_file_range"), "copy_file_range to 64 TiB") {
            _ = try copyRange(from: other, at: 0, to: fd, at: largest, length: 4096)
        }
        expectRefusal(EOVERFLOW, or: EINVAL, from: .kernel, "copy_file_range from -1") { _ = try copyRange(from: other, at: -1, to: fd, at: 0, length: 4096) }

        // ENXIO is the normal answer at the end of the data: not logged as a failure.
        expectRefusal(ENXIO, from: .daemonWithoutLog, "SEEK_DATA at 64 TiB") { try check(Int32(clamping: lseek(fd, off_t(largest), SEEK_DATA_WHENCE))) }
        expectRefusal(ENXIO, from: .daemonWithoutLog, "SEEK_HOLE past the end") { try check(Int32(clamping: lseek(fd, off_t(1 << 40), SEEK_HOLE_WHENCE))) }
        expectRefusal(EINVAL, from: .kernel, "SEEK_SET to -1") { try check(Int32(clamping: lseek(fd, -1, SEEK_SET))) }
        expectRefusal(EINVAL, from: .daemon("lseek"), "SEEK_DATA from -1") { try check(Int32(clamping: lseek(fd, -1, SEEK_DATA_WHENCE))) }

        // A write across 64 TiB is cut short there, as a local file system does at its size
        // limit: the part below lands and pwrite returns that much; nothing lands past 64 TiB.
        // Whether the kernel sends it as one request (the daemon cuts it) or cut at a folio
        // boundary (the part past the limit is refused with EFBIG), the caller sees the same.
        let size = try fileSize(vmImage)
        let straddling = random(8192)
        let written = straddling.withUnsafeBytes { pwrite(fd, $0.baseAddress!, 8192, off_t(largest - 100)) }
        XCTAssertEqual(written, 100, "pwrite of 8 KiB across 64 TiB writes up to the limit (errno \(errnoLabel(errno)))")
        XCTAssertEqual(try fileSize(vmImage), largest)
        XCTAssertEqual(try getAttribute(pool.path("vm"), "user.lunfs.size"), String(largest))
        XCTAssertEqual(try readBytes(fd, count: 4096, at: largest - 100), Array(straddling[..<100]))
        XCTAssertEqual(Set(newFailureLines().map(operation(of:))).subtracting(["write"]), [], "only a refused part past 64 TiB may be logged")
        // With O_DIRECT the daemon cuts the write the same way, but the kernel's asynchronous
        // direct I/O takes a short answer as an error: EIO, with the page below the limit
        // written (MOUNT.md says so).
        let twoPages = AlignedBuffer(count: 8192)
        memset(twoPages.pointer, 0x5A, 8192)
        XCTAssertEqual(pwrite(direct, twoPages.pointer, 8192, off_t(largest - 4096)), -1)
        XCTAssertEqual(errnoLabel(errno), errnoLabel(EIO), "O_DIRECT pwrite across 64 TiB")
        XCTAssertEqual(try fileSize(vmImage), largest)
        XCTAssertEqual(try readBytes(fd, count: 4096, at: largest - 4096), [UInt8](repeating: 0x5A, count: 4096))
        _ = newFailureLines()
        // Shrinking back: through the only handle left open (another would make it EBUSY).
        close(direct)
        direct = -1
        try check(ftruncate(fd, off_t(size)))
        try rebaseline()
    }

    /// The other side of the EFBIG line: the last byte of a 64 TiB disk can be written and
    /// read, and a disk can be exactly 64 TiB.
    func testTheLastByteOfTheLargestDiskIsUsable() throws {
        let fd = try openFile(pool.path("blank/disk.img"), O_RDWR)
        defer { close(fd) }
        try writeAll(fd, [0xA5], at: Self.largestDiskBytes - 1)
        XCTAssertEqual(try fileSize(pool.path("blank/disk.img")), Self.largestDiskBytes)
        XCTAssertEqual(try readBytes(fd, count: 4096, at: Self.largestDiskBytes - 1), [0xA5])
        XCTAssertEqual(try readBytes(fd, count: 4096, at: Self.largestDiskBytes - 4096).dropLast(), [UInt8](repeating: 0, count: 4095)[...])
        XCTAssertEqual(try getAttribute(pool.path("blank"), "user.lunfs.size"), String(Self.largestDiskBytes))
        try check(ftruncate(fd, 0))
        try check(ftruncate(fd, off_t(Self.largestDiskBytes)))
        XCTAssertEqual(try readBytes(fd, count: 4096, at: Self.largestDiskBytes - 1), [0], "a shrink must drop the byte")
        try check(ftruncate(fd, 0))
    }

    // MARK: Names

    func testNamesTooLongReservedOrNotUTF8() throws {
        let long = String(repeating: "n", count: 256)
        expectRefusal(ENAMETOOLONG, from: .daemon("lookup"), "mkdir of a 256-byte disk name") { try makeDirectory(pool.path(long)) }
        expectRefusal(ENAMETOOLONG, from: .daemon("lookup"), "mkdir of a 256-byte snapshot name") { try makeDirectory(pool.path("vm/" + long)) }
        expectRefusal(ENAMETOOLONG, from: .daemon("lookup"), "open O_CREAT of a 256-byte name") { _ = try openFile(pool.path(long), O_CREAT | O_WRONLY) }
        expectRefusal(ENAMETOOLONG, from: .daemon("lookup"), "rename to a 256-byte name") { try check(rename(pool.path("vm"), pool.path(long))) }
        expectRefusal(ENAMETOOLONG, from: .daemon("lookup"), "setxattr through a 256-byte name") { try setAttribute(pool.path(long), "user.lunfs.raid", "1") }
        expectRefusal(ENAMETOOLONG, from: .kernelOrDaemon("lookup"), "mkdir of a 1025-byte name") { try makeDirectory(pool.path(String(repeating: "x", count: 1025))) }

        let notUTF8: [CChar] = Array((pool.mountpoint + "/").utf8CString.dropLast()) + [CChar(bitPattern: 0xFF), CChar(bitPattern: 0xFE), 0]
        expectRefusal(EINVAL, from: .daemon("lookup"), "mkdir of a name that is not UTF-8") { try check(mkdir(notUTF8, 0o755)) }

        // "." and ".." never reach the daemon: the kernel resolves them, so mkdir gives EEXIST,
        // not the EINVAL that README.md and MOUNT.md list for these names.
        expectRefusal(EEXIST, from: .kernel, "mkdir .") { try makeDirectory(pool.path(".")) }
        expectRefusal(EEXIST, from: .kernel, "mkdir vm/..") { try makeDirectory(pool.path("vm/..")) }
        expectRefusal(EINVAL, from: .kernel, "rmdir vm/.") { try check(rmdir(pool.path("vm/."))) }
        expectRefusal(ENOTEMPTY, from: .kernel, "rmdir vm/..") { try check(rmdir(pool.path("vm/.."))) }

        // disk.img as a disk or snapshot name.
        expectRefusal(EINVAL, from: .daemon("mkdir"), "mkdir disk.img at the root") { try makeDirectory(pool.path("disk.img")) }
        expectRefusal(EEXIST, from: .kernel, "mkdir vm/disk.img") { try makeDirectory(pool.path("vm/disk.img")) }
        // The kernel's lookup of a hollow directory's disk.img comes first, and lunfs logs its
        // ENOENT although MOUNT.md says a lookup of a name that does not exist is not logged.
        expectRefusal(EPERM, from: .daemon("mkdir", alsoLogged: ["lookup"]), "mkdir hollow/disk.img") { try makeDirectory(pool.path("hollow/disk.img")) }
        expectRefusal(ENOTDIR, from: .kernel, "mkdir below disk.img") { try makeDirectory(pool.path("vm/disk.img/x")) }

        // Existing names, hollow directories, and what rmdir and unlink refuse.
        expectRefusal(EEXIST, from: .kernel, "mkdir of an existing disk") { try makeDirectory(pool.path("vm")) }
        expectRefusal(EEXIST, from: .kernel, "mkdir of an existing snapshot") { try makeDirectory(pool.path("vm/snap")) }
        expectRefusal(EPERM, from: .daemon("mkdir"), "snapshot of a hollow directory") { try makeDirectory(pool.path("hollow/monday")) }
        expectRefusal(ENOTEMPTY, from: .daemon("rmdir"), "rmdir of a disk with its image") { try check(rmdir(pool.path("vm"))) }
        expectRefusal(ENOTEMPTY, from: .daemon("rmdir"), "rmdir of a hollow disk with a snapshot") { try check(rmdir(pool.path("hollow"))) }
        expectRefusal(ENOTDIR, from: .kernel, "rmdir of disk.img") { try check(rmdir(vmImage)) }
        expectRefusal(EISDIR, from: .kernel, "unlink of a disk directory") { try check(unlink(pool.path("vm"))) }
        expectRefusal(ENOENT, from: .daemon("lookup"), "unlink of a hollow directory's disk.img") { try check(unlink(pool.path("hollow/disk.img"))) }
        expectRefusal(ENOENT, from: .kernel, "unlink of an unknown name") { try check(unlink(pool.path("vm/nothing"))) }
    }

    // MARK: Creating what only mkdir creates

    func testOnlyMkdirCreatesNames() throws {
        expectRefusal(EPERM, from: .daemon("create"), "create at the root") { _ = try openFile(pool.path("file"), O_CREAT | O_WRONLY) }
        expectRefusal(EPERM, from: .daemon("create"), "create beside disk.img") { _ = try openFile(pool.path("vm/other.img"), O_CREAT | O_RDWR) }
        expectRefusal(EPERM, from: .daemon("create", alsoLogged: ["lookup"]), "create of a hollow directory's disk.img") {
            _ = try openFile(pool.path("hollow/disk.img"), O_CREAT | O_WRONLY)
        }
        expectRefusal(EEXIST, from: .kernel, "O_CREAT|O_EXCL of an existing disk.img") { _ = try openFile(vmImage, O_CREAT | O_EXCL | O_WRONLY) }
        expectRefusal(EPERM, from: .daemon("symlink"), "symlink") { try check(symlink("vm", pool.path("link"))) }
        expectRefusal(EPERM, from: .daemon("symlink"), "symlink in a disk directory") { try check(symlink("disk.img", pool.path("vm/link"))) }
        expectRefusal(EPERM, from: .daemon("link"), "hard link of disk.img") { try check(link(vmImage, pool.path("vm/hard"))) }
        expectRefusal(EPERM, from: .daemon("link"), "hard link of disk.img into another disk") { try check(link(vmImage, pool.path("blank/second"))) }
        expectRefusal(EPERM, from: .daemon("mknod"), "mknod of a FIFO") { try check(mknod(pool.path("fifo"), S_IFIFO | 0o644, 0)) }
        expectRefusal(EPERM, from: .daemon("mknod"), "mknod of a regular file") { try check(mknod(pool.path("vm/plain"), S_IFREG | 0o644, 0)) }
        expectRefusal(EPERM, from: .daemon("mknod"), "mknod of a block device") { try check(mknod(pool.path("vm/sda"), S_IFBLK | 0o600, dev_t(8 << 8))) }
        expectRefusal(EINVAL, from: .kernel, "readlink of disk.img") {
            var buffer = [CChar](repeating: 0, count: 256)
            try check(Int32(readlink(vmImage, &buffer, buffer.count)))
        }
        // Disk directories and images take chmod and chown (PermissionTests); the root does not.
        expectRefusal(EPERM, from: .daemon("setattr"), "chmod of the root") { try check(chmod(pool.mountpoint, 0o700)) }
        expectRefusal(EPERM, from: .daemon("setattr"), "chown of the root") { try check(chown(pool.mountpoint, 1234, 1234)) }
        expectRefusal(EISDIR, from: .kernel, "open of a directory for writing") { _ = try openFile(pool.path("vm"), O_WRONLY) }
    }

    // MARK: Renames

    func testRenamesThatWouldMoveOrReplace() throws {
        expectRefusal(EINVAL, from: .kernel, "rename of a disk into its own snapshot") { try check(rename(pool.path("vm"), pool.path("vm/snap/inside"))) }
        expectRefusal(EPERM, from: .daemon("rename"), "rename of a snapshot into another disk") { try check(rename(pool.path("vm/snap"), pool.path("other/snap"))) }
        expectRefusal(EPERM, from: .daemon("rename"), "rename of a snapshot to the root") { try check(rename(pool.path("vm/snap"), pool.path("snap"))) }
        expectRefusal(EPERM, from: .daemon("rename"), "rename of a disk below another") { try check(rename(pool.path("blank"), pool.path("vm/blank"))) }
        expectRefusal(EEXIST, from: .daemon("rename"), "rename of a disk onto another") { try check(rename(pool.path("vm"), pool.path("other"))) }
        expectRefusal(EEXIST, from: .daemon("rename"), "rename of a snapshot onto its sibling") { try check(rename(pool.path("vm/snap"), pool.path("vm/later"))) }
        expectRefusal(EEXIST, from: .daemon("rename"), "rename of a disk onto an empty one") { try check(rename(pool.path("other"), pool.path("blank"))) }
        expectRefusal(EPERM, from: .daemon("rename"), "rename of disk.img") { try check(rename(vmImage, pool.path("vm/renamed.img"))) }
        expectRefusal(EPERM, from: .daemon("rename"), "rename of disk.img onto another image") { try check(rename(vmImage, pool.path("other/disk.img"))) }
        expectRefusal(ENOTDIR, from: .kernel, "rename of a snapshot onto disk.img") { try check(rename(pool.path("vm/snap"), vmImage)) }
        expectRefusal(EISDIR, from: .kernel, "rename of disk.img onto a snapshot") { try check(rename(vmImage, pool.path("vm/snap"))) }
        expectRefusal(EPERM, from: .daemon("rename", alsoLogged: ["lookup"]), "rename of a snapshot to a hollow directory's disk.img") {
            try check(rename(pool.path("hollow/keep"), pool.path("hollow/disk.img")))
        }
        expectRefusal(EINVAL, from: .daemon("rename"), "rename of a disk to disk.img") { try check(rename(pool.path("vm"), pool.path("disk.img"))) }
        expectRefusal(EBUSY, from: .kernel, "rename of a disk to .") { try check(rename(pool.path("vm"), pool.path("."))) }
        expectRefusal(ENOENT, from: .kernel, "rename of an unknown name") { try check(rename(pool.path("nothing"), pool.path("something"))) }
        expectRefusal(EINVAL, from: .daemon("rename"), "RENAME_EXCHANGE of two disks") {
            try renameWithFlags(pool.path("vm"), pool.path("other"), flags: RENAME_EXCHANGE_FLAG)
        }
        expectRefusal(EEXIST, from: .kernel, "RENAME_NOREPLACE onto a disk") {
            try renameWithFlags(pool.path("vm"), pool.path("other"), flags: RENAME_NOREPLACE_FLAG)
        }
    }

    // MARK: Extended attributes

    func testExtendedAttributesWithBadValuesOrNames() throws {
        let blank = pool.path("blank"), vm = pool.path("vm")
        for value in ["7", "", "abc", "2", "-1", "1x", " 0x1", "raid6", String(repeating: "5", count: 65536)] {
            expectRefusal(EINVAL, from: .daemon("setxattr"), "user.lunfs.raid = \"\(value.prefix(10))\" (\(value.utf8.count) bytes)") {
                try setAttribute(blank, "user.lunfs.raid", value)
            }
        }
        expectRefusal(EINVAL, from: .daemon("setxattr"), "user.lunfs.raid = \"7\" after the first write") { try setAttribute(vm, "user.lunfs.raid", "7") }
        expectRefusal(EPERM, from: .daemon("setxattr"), "user.lunfs.raid = \"1\" after the first write") { try setAttribute(vm, "user.lunfs.raid", "1") }
        for value in ["maybe", "", "2", "yes", "true"] {
            expectRefusal(EINVAL, from: .daemon("setxattr"), "user.lunfs.reserved = \"\(value)\"") { try setAttribute(vm, "user.lunfs.reserved", value) }
        }
        expectRefusal(EINVAL, from: .daemon("setxattr"), "user.lunfs.reserve_snapshots = \"on\"") { try setAttribute(vm, "user.lunfs.reserve_snapshots", "on") }
        for name in ["size", "allocated", "unique", "shared", "created", "predecessor", "successor"] {
            expectRefusal(EPERM, from: .daemon("setxattr"), "setting read-only user.lunfs.\(name)") { try setAttribute(vm, "user.lunfs.\(name)", "1") }
        }
        expectRefusal(EEXIST, from: .daemon("setxattr"), "XATTR_CREATE of user.lunfs.raid") { try setAttribute(blank, "user.lunfs.raid", "1", flags: XATTR_CREATE_FLAG) }
        expectRefusal(EOPNOTSUPP, from: .daemon("setxattr"), "setting unknown user.lunfs.nonsense") { try setAttribute(vm, "user.lunfs.nonsense", "1") }
        expectRefusal(EOPNOTSUPP, from: .daemon("setxattr"), "setting user.other") { try setAttribute(vm, "user.other", "1") }
        expectRefusal(EOPNOTSUPP, from: .daemon("setxattr"), "user.lunfs.raid on the root") { try setAttribute(pool.mountpoint, "user.lunfs.raid", "1") }
        expectRefusal(EOPNOTSUPP, from: .daemon("setxattr"), "user.lunfs.raid on disk.img") { try setAttribute(vmImage, "user.lunfs.raid", "1") }
        expectRefusal(ERANGE, from: .kernel, "an attribute name of 256 bytes") { try setAttribute(vm, "user." + String(repeating: "a", count: 251), "1") }

        expectRefusal(EPERM, from: .daemon("removexattr"), "removing user.lunfs.raid") { try removeAttribute(vm, "user.lunfs.raid") }
        expectRefusal(EPERM, from: .daemon("removexattr"), "removing read-only user.lunfs.size") { try removeAttribute(vm, "user.lunfs.size") }
        expectRefusal(ENODATA, from: .daemon("removexattr"), "removing unknown user.lunfs.nonsense") { try removeAttribute(vm, "user.lunfs.nonsense") }
        expectRefusal(ENODATA, from: .daemonWithoutLog, "getting user.other") { _ = try getAttribute(vm, "user.other") }
        expectRefusal(ENODATA, from: .daemonWithoutLog, "removing user.other") { try removeAttribute(vm, "user.other") }
        expectRefusal(ENODATA, from: .daemon("getxattr"), "getting unknown user.lunfs.nonsense") { _ = try getAttribute(vm, "user.lunfs.nonsense") }
        expectRefusal(ENODATA, from: .daemon("getxattr"), "getting user.lunfs.predecessor of a disk without one") { _ = try getAttribute(blank, "user.lunfs.predecessor") }
        expectRefusal(ERANGE, from: .daemon("getxattr"), "getting user.lunfs.size into 1 byte") { _ = try getAttribute(vm, "user.lunfs.size", capacity: 1) }
    }

    // MARK: Images deleted while open

    func testIOOnImagesDeletedWhileOpen() throws {
        for disk in ["doomed", "gone"] {
            try makeDirectory(pool.path(disk))
            let fd = try openFile(pool.path(disk + "/disk.img"), O_WRONLY)
            try writeAll(fd, [UInt8](repeating: 0x77, count: 1 << 20), at: 0)
            close(fd)
        }
        let doomed = try openFile(pool.path("doomed/disk.img"), O_RDWR)
        defer { close(doomed) }
        let doomedDirect = try openFile(pool.path("doomed/disk.img"), O_RDWR | O_DIRECT_FLAG)
        defer { close(doomedDirect) }
        let gone = try openFile(pool.path("gone/disk.img"), O_RDWR | O_DIRECT_FLAG)
        defer { close(gone) }
        // Open images are deleted only with force (BusyImageTests has the refusals).
        XCTAssertEqual(errnoOf { try check(unlink(pool.path("doomed/disk.img"))) }, EBUSY)
        try setAttribute(pool.path("doomed"), "user.lunfs.force_delete", "1")
        try setAttribute(pool.path("gone"), "user.lunfs.force_delete", "1")
        XCTAssertEqual(try runProgram("rm", ["-r", pool.path("gone")]).status, 0)
        try rebaseline()

        let page = AlignedBuffer(count: 4096)
        let other = try openFile(pool.path("other/disk.img"), O_RDWR)
        defer { close(other) }
        expectRefusal(ESTALE, from: .daemon("write"), "pwrite to a deleted image") { try writeAll(doomed, [1, 2, 3], at: 0) }
        expectRefusal(ESTALE, from: .daemon("write"), "pwrite past the end of a deleted image") { try writeAll(doomed, [1, 2, 3], at: 5 << 20) }
        expectRefusal(ESTALE, from: .daemon("write"), "O_DIRECT pwrite to a deleted image") { try writeAll(doomedDirect, UnsafeRawBufferPointer(page.bytes), at: 0) }
        expectRefusal(ESTALE, from: .daemon("write"), "O_DIRECT pwrite to an image whose disk was removed") { try writeAll(gone, UnsafeRawBufferPointer(page.bytes), at: 4096) }
        expectRefusal(ESTALE, from: .daemon("read"), "O_DIRECT pread of a deleted image") { try check(Int32(pread(doomedDirect, page.pointer, 4096, 0))) }
        expectRefusal(ESTALE, from: .daemon("read"), "O_DIRECT pread of an image whose disk was removed") { try check(Int32(pread(gone, page.pointer, 4096, 0))) }
        expectRefusal(ESTALE, from: .daemon("fallocate"), "punching a hole in a deleted image") {
            try allocate(doomed, mode: FALLOC_FL_PUNCH_HOLE_FLAG | FALLOC_FL_KEEP_SIZE_FLAG, offset: 0, length: 4096)
        }
        expectRefusal(ESTALE, from: .daemon("fallocate"), "fallocate growing a deleted image") { try allocate(doomed, mode: 0, offset: 0, length: 8 << 20) }
        expectRefusal(ESTALE, from: .daemon("lseek"), "SEEK_DATA in a deleted image") { try check(Int32(clamping: lseek(doomed, 0, SEEK_DATA_WHENCE))) }
        expectRefusal(ESTALE, from: .daemon("copy_file_range"), "copy_file_range out of a deleted image") { _ = try copyRange(from: doomed, at: 0, to: other, at: 0, length: 4096) }
        expectRefusal(ESTALE, from: .daemon("copy_file_range"), "copy_file_range into a deleted image") { _ = try copyRange(from: other, at: 0, to: doomed, at: 0, length: 4096) }
        // README.md promises ESTALE for I/O on a deleted image; truncate and stat go by inode
        // number (which names nothing any more), not by the open handle, and answer ENOENT.
        expectRefusal(ENOENT, from: .daemon("setattr"), "ftruncate of a deleted image (ENOENT: setattr goes by inode, not handle)") { try check(ftruncate(doomed, 4096)) }
        expectRefusal(ENOENT, from: .daemon("getattr"), "fstat of a deleted image (ENOENT: getattr goes by inode)") {
            var info = stat()
            try check(fstat(doomed, &info))
        }
        expectHarmless("fsync of a deleted image (a commit)") { try check(fsync(doomed)) }

        // A buffered read is answered from the page cache where the kernel still holds the
        // image's pages (lunfs keeps the cache across opens and does not drop it on unlink),
        // and with ESTALE where it must ask the daemon. Either way: the image's own old bytes
        // or ESTALE, never anything else.
        for offset in [0, 512 << 10] {
            var bytes: [UInt8] = []
            let code = errnoOf { bytes = try readBytes(doomed, count: 4096, at: offset) }
            if code == 0 {
                XCTAssertEqual(bytes, [UInt8](repeating: 0x77, count: 4096), "buffered read at \(offset) of a deleted image")
            } else {
                XCTAssertEqual(errnoLabel(code), errnoLabel(ESTALE), "buffered read at \(offset) of a deleted image")
            }
            expectUnchanged("buffered read at \(offset) of a deleted image", answerer: code == 0 ? .kernel : .daemon("read"), errno: code)
        }
    }

    // MARK: fallocate modes

    func testFallocateModesOtherThanTheFourSupported() throws {
        let fd = try openFile(vmImage, O_RDWR)
        defer { close(fd) }
        // The kernel's FUSE client refuses every mode outside KEEP_SIZE, PUNCH_HOLE and
        // ZERO_RANGE before asking the daemon, so these never reach lunfs.
        for (label, mode) in [("COLLAPSE_RANGE", Int32(0x08)), ("INSERT_RANGE", 0x20), ("UNSHARE_RANGE", 0x40), ("WRITE_ZEROES", 0x80),
                              ("PUNCH_HOLE without KEEP_SIZE", FALLOC_FL_PUNCH_HOLE_FLAG), ("PUNCH_HOLE|ZERO_RANGE", 0x12),
                              ("NO_HIDE_STALE", 0x04 | FALLOC_FL_KEEP_SIZE_FLAG)] {
            expectRefusal(EOPNOTSUPP, from: .kernel, "fallocate \(label)") { try allocate(fd, mode: mode, offset: 0, length: 1 << 20) }
        }
    }
}

/// "EFBIG(27)", as the daemon's log writes an errno; "OK(0)" for success.
func errnoLabel(_ code: Int32) -> String {
    let names: [Int32: String] = [
        0: "OK", EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", ENXIO: "ENXIO", EBADF: "EBADF", EEXIST: "EEXIST",
        EXDEV: "EXDEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", EFBIG: "EFBIG", ENOSPC: "ENOSPC",
        EROFS: "EROFS", ERANGE: "ERANGE", ENAMETOOLONG: "ENAMETOOLONG", ENOSYS: "ENOSYS", ENOTEMPTY: "ENOTEMPTY",
        ENODATA: "ENODATA", EOPNOTSUPP: "EOPNOTSUPP", ESTALE: "ESTALE", EBUSY: "EBUSY", EACCES: "EACCES",
        EOVERFLOW: "EOVERFLOW", E2BIG: "E2BIG",
    ]
    return "\(names[code] ?? "errno")(\(code))"
}
