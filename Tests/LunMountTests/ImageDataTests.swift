// Bytes in and out of disk.img: random data at many block sizes and offsets, truncate in both
// directions, O_DIRECT and mmap, hole punching and SEEK_DATA/SEEK_HOLE, and persistence across
// a remount.
import Foundation
import XCTest

final class ImageDataTests: MountTestCase {
    /// Writes random blocks of several sizes at unaligned and aligned offsets, keeping a model
    /// of the image in memory, then compares the whole image with the model.
    func testRandomWritesReadBackByteForByte() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let imageSize = 24 << 20
        var model = [UInt8](repeating: 0, count: imageSize)
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        let blockSizes = [1, 511, 4096, 65536 + 7, 1 << 20, (3 << 20) + 1234]
        for round in 0..<36 {
            let size = blockSizes[round % blockSizes.count]
            let offset = round % 3 == 0
                ? Int.random(in: 0...(imageSize - size) / 4096, using: &random) * 4096
                : Int.random(in: 0...(imageSize - size), using: &random)
            let bytes = random.bytes(size)
            try writeAll(fd, bytes, at: offset)
            model.replaceSubrange(offset..<offset + size, with: bytes)
            // Read back the block at once, through the same descriptor.
            XCTAssertEqual(try readBytes(fd, count: size, at: offset), bytes, "round \(round): \(size) bytes at \(offset)")
        }
        let written = try fileSize(image)
        XCTAssertLessThanOrEqual(written, imageSize)
        // Read through a new descriptor, in odd-sized pieces.
        let reader = try openFile(image, O_RDONLY)
        defer { close(reader) }
        var offset = 0
        while offset < written {
            let piece = try readBytes(reader, count: 777_777, at: offset)
            XCTAssertEqual(piece[...], model[offset..<offset + piece.count], "mismatch in the piece at \(offset)")
            offset += piece.count
        }
        XCTAssertEqual(try readBytes(reader, count: 10, at: written), [], "reads past the end return nothing")
    }

    func testTruncateGrowsWithZerosAndShrinks() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        var fd = try openFile(image, O_RDWR)
        defer { if fd >= 0 { close(fd) } }
        let head = random.bytes(3 << 20)
        try writeAll(fd, head, at: 0)
        XCTAssertEqual(try fileSize(image), 3 << 20)

        try check(ftruncate(fd, 64 << 20))
        XCTAssertEqual(try fileSize(image), 64 << 20)
        XCTAssertEqual(try readBytes(fd, count: 4096, at: 40 << 20), [UInt8](repeating: 0, count: 4096))
        XCTAssertEqual(try readBytes(fd, count: head.count, at: 0), head)

        // Shrink to the middle of a segment, grow again: the cut-off tail must read zeros.
        try check(ftruncate(fd, 1_500_000))
        XCTAssertEqual(try fileSize(image), 1_500_000)
        try check(truncate(image, 3 << 20))
        let again = try readBytes(fd, count: 3 << 20, at: 0)
        XCTAssertEqual(again[..<1_500_000], head[..<1_500_000])
        XCTAssertTrue(again[1_500_000...].allSatisfy { $0 == 0 }, "bytes past a shrink came back")

        // The truncate(1) tool, and O_TRUNC on open (": > disk.img"). Growing goes ahead
        // while the image is open elsewhere; shrinking waits until nothing else holds it.
        XCTAssertEqual(try runProgram("truncate", ["-s", "10M", image]).status, 0)
        XCTAssertEqual(try fileSize(image), 10 << 20)
        XCTAssertEqual(errnoOf { _ = try openFile(image, O_WRONLY | O_TRUNC) }, EBUSY)
        XCTAssertNotEqual(try runProgram("truncate", ["-s", "1M", image]).status, 0)
        XCTAssertEqual(try fileSize(image), 10 << 20)
        close(fd)
        fd = -1
        let truncating = try openFile(image, O_WRONLY | O_TRUNC)
        close(truncating)
        XCTAssertEqual(try fileSize(image), 0)
    }

    func testDirectIOWithAlignedBuffers() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        try check(truncate(image, 16 << 20))
        let fd = try openFile(image, O_RDWR | O_DIRECT_FLAG)
        defer { close(fd) }
        for (offset, size) in [(0, 4096), (4096 * 7, 65536), (1 << 20, 1 << 20), ((5 << 20) - 4096, 3 * 4096), (15 << 20, 1 << 20)] {
            let buffer = AlignedBuffer(count: size)
            let bytes = random.bytes(size)
            bytes.withUnsafeBytes { buffer.bytes.copyMemory(from: $0) }
            try writeAll(fd, UnsafeRawBufferPointer(buffer.bytes), at: offset)
            let back = AlignedBuffer(count: size)
            let n = pread(fd, back.pointer, size, off_t(offset))
            XCTAssertEqual(n, size)
            XCTAssertEqual(Array(back.bytes), bytes, "O_DIRECT \(size) bytes at \(offset)")
        }
        // A buffered reader sees what O_DIRECT wrote.
        let buffered = try openFile(image, O_RDONLY)
        defer { close(buffered) }
        let direct = AlignedBuffer(count: 1 << 20)
        XCTAssertEqual(pread(fd, direct.pointer, 1 << 20, off_t(1 << 20)), 1 << 20)
        XCTAssertEqual(try readBytes(buffered, count: 1 << 20, at: 1 << 20), Array(direct.bytes))
    }

    func testMmapWritesAndReads() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let size = 8 << 20
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        try check(ftruncate(fd, off_t(size)))
        let fromWrite = random.bytes(1 << 20)
        try writeAll(fd, fromWrite, at: 2 << 20)

        guard let mapping = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapping != MAP_FAILED else {
            throw SystemError(code: errno)
        }
        let mapped = UnsafeMutableRawBufferPointer(start: mapping, count: size)
        XCTAssertEqual(Array(mapped[(2 << 20)..<(3 << 20)]), fromWrite, "mmap sees bytes written with pwrite")
        let fromMap = random.bytes(3 << 20 + 100)
        fromMap.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: mapped[(4 << 20) + 100..<(4 << 20) + 100 + fromMap.count]).copyMemory(from: $0) }
        try check(msync(mapping, size, MS_SYNC))
        try check(munmap(mapping, size))

        let reader = try openFile(image, O_RDONLY | O_DIRECT_FLAG)
        defer { close(reader) }
        let back = AlignedBuffer(count: 4 << 20)
        XCTAssertEqual(pread(reader, back.pointer, 4 << 20, off_t(4 << 20)), 4 << 20)
        XCTAssertEqual(Array(back.bytes[100..<100 + fromMap.count]), fromMap, "pread (O_DIRECT) sees bytes written through mmap")
    }

    /// Zeros written into a thin image stay holes (`dd if=/dev/zero`, `rsync --inplace` of a
    /// mostly empty image): st_blocks counts only the segments that got data.
    func testWrittenZerosStayHoles() throws {
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let segment = 1 << 20
        let dd = try runProgram("dd", ["if=/dev/zero", "of=\(image)", "bs=1M", "count=64", "conv=fsync", "status=none"])
        XCTAssertEqual(dd.status, 0, dd.errorOutput)
        var st = stat()
        try check(stat(image, &st))
        XCTAssertEqual(Int(st.st_size), 64 * segment)
        XCTAssertEqual(st.st_blocks, 0, "64 MiB of zeros allocated nothing")
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        var piece = [UInt8](repeating: 0, count: 4 * segment)
        piece[2 * segment + 9] = 1
        try writeAll(fd, piece, at: 8 * segment)
        // st_blocks counts what the pool holds: with the writeback cache, after an fsync.
        try check(fsync(fd))
        try check(fstat(fd, &st))
        XCTAssertEqual(Int(st.st_blocks) * 512, segment, "only the segment with a byte of data")
        XCTAssertEqual(try readBytes(fd, count: 4 * segment, at: 8 * segment), piece)
        XCTAssertEqual(lseek(fd, 0, SEEK_DATA_WHENCE), off_t(10 * segment))
    }

    func testPunchHoleAndSeekData() throws {
        try makeDirectory(pool.path("vm"))
        let image = pool.path("vm/disk.img")
        let fd = try openFile(image, O_RDWR)
        defer { close(fd) }
        let segment = 1 << 20
        try check(ftruncate(fd, off_t(16 * segment)))
        try writeAll(fd, [UInt8](repeating: 0xAB, count: 2 * segment), at: 4 * segment)
        XCTAssertEqual(lseek(fd, 0, SEEK_DATA_WHENCE), off_t(4 * segment))
        XCTAssertEqual(lseek(fd, off_t(4 * segment), SEEK_HOLE_WHENCE), off_t(6 * segment))
        XCTAssertEqual(lseek(fd, off_t(7 * segment), SEEK_DATA_WHENCE), -1)
        XCTAssertEqual(errno, ENXIO)

        try allocate(fd, mode: FALLOC_FL_PUNCH_HOLE_FLAG | FALLOC_FL_KEEP_SIZE_FLAG, offset: 4 * segment, length: segment + 4096)
        XCTAssertEqual(try fileSize(image), 16 * segment, "a punched hole keeps the size")
        let back = try readBytes(fd, count: 2 * segment, at: 4 * segment)
        XCTAssertTrue(back[..<(segment + 4096)].allSatisfy { $0 == 0 }, "the hole reads zeros")
        XCTAssertTrue(back[(segment + 4096)...].allSatisfy { $0 == 0xAB }, "bytes after the hole survive")

        // Mode 0 grows the file; unsupported modes say EOPNOTSUPP.
        try allocate(fd, mode: 0, offset: 0, length: 20 * segment)
        XCTAssertEqual(try fileSize(image), 20 * segment)
        XCTAssertEqual(errnoOf { try allocate(fd, mode: 0x08 /* COLLAPSE_RANGE */, offset: 0, length: segment) }, EOPNOTSUPP)
    }

    func testRemountKeepsTreeAndBytes() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("alpha"))
        try makeDirectory(pool.path("beta"))
        let alpha = random.bytes(5 << 20 + 3)
        let fd = try openFile(pool.path("alpha/disk.img"), O_WRONLY)
        try writeAll(fd, alpha, at: 0)
        close(fd)
        try makeDirectory(pool.path("alpha/monday"))
        try check(truncate(pool.path("beta/disk.img"), 1 << 30))

        try pool.remount()

        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.mountpoint).sorted(), ["alpha", "beta"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pool.path("alpha")).sorted(), ["changes.img", "disk.img", "monday"])
        XCTAssertEqual(try readWholeFile(pool.path("alpha/disk.img")), alpha)
        XCTAssertEqual(try readWholeFile(pool.path("alpha/monday/disk.img")), alpha)
        XCTAssertEqual(try fileSize(pool.path("beta/disk.img")), 1 << 30)
    }

    func testQemuImgConvertIntoImage() throws {
        // The test machine has qemu-utils; a missing tool is a failure, not a skip.
        XCTAssertEqual(try runProgram("qemu-img", ["--version"]).status, 0, "qemu-img (qemu-utils) is needed")
        var random = SeededGenerator(seed: newSeed(#function))
        let source = pool.root.appendingPathComponent("source.raw").path
        var bytes = [UInt8](repeating: 0, count: 12 << 20)
        bytes.replaceSubrange(0..<(1 << 20), with: random.bytes(1 << 20))
        bytes.replaceSubrange((8 << 20)..<(9 << 20) + 5, with: random.bytes((1 << 20) + 5))
        XCTAssertTrue(FileManager.default.createFile(atPath: source, contents: Data(bytes)))
        try makeDirectory(pool.path("vm"))
        // Stale bytes where the source has holes must not survive the convert.
        let fd = try openFile(pool.path("vm/disk.img"), O_WRONLY)
        try writeAll(fd, [UInt8](repeating: 0xEE, count: 12 << 20), at: 0)
        close(fd)
        let result = try runProgram("qemu-img", ["convert", "-f", "raw", "-O", "raw", source, pool.path("vm/disk.img")])
        XCTAssertEqual(result.status, 0, result.errorOutput + pool.logTail())
        XCTAssertEqual(try readWholeFile(pool.path("vm/disk.img")), bytes)
    }

    /// Four threads write interleaved stripes of two disks at once; every byte must land.
    func testConcurrentWritersOnTwoDisks() throws {
        let seed = newSeed(#function)
        try makeDirectory(pool.path("a"))
        try makeDirectory(pool.path("b"))
        let stripe = 256 << 10, stripesPerWriter = 12, writers = 4
        let paths = [pool.path("a/disk.img"), pool.path("b/disk.img")]
        let errors = LockedList()
        DispatchQueue.concurrentPerform(iterations: writers) { writer in
            do {
                var random = SeededGenerator(seed: seed &+ UInt64(writer))
                let fd = try openFile(paths[writer % 2], O_WRONLY)
                defer { close(fd) }
                for index in 0..<stripesPerWriter {
                    let slot = index * (writers / 2) + writer / 2
                    try writeAll(fd, random.bytes(stripe), at: slot * stripe)
                }
            } catch {
                errors.append("writer \(writer): \(error)")
            }
        }
        XCTAssertEqual(errors.items, [])
        for (diskIndex, path) in paths.enumerated() {
            let content = try readWholeFile(path)
            XCTAssertEqual(content.count, stripe * stripesPerWriter * writers / 2)
            for writer in stride(from: diskIndex, to: writers, by: 2) {
                var random = SeededGenerator(seed: seed &+ UInt64(writer))
                for index in 0..<stripesPerWriter {
                    let slot = index * (writers / 2) + writer / 2
                    XCTAssertEqual(content[slot * stripe..<(slot + 1) * stripe].elementsEqual(random.bytes(stripe)), true,
                                   "disk \(diskIndex) writer \(writer) stripe \(index)")
                }
            }
        }
    }

    /// cp between two images of the same mount (copy_file_range reaches the daemon), and
    /// cp --sparse from outside (the kernel refuses copy_file_range across file systems).
    func testCopyBetweenImagesWithCp() throws {
        var random = SeededGenerator(seed: newSeed(#function))
        try makeDirectory(pool.path("src"))
        try makeDirectory(pool.path("dst"))
        var bytes = [UInt8](repeating: 0, count: 6 << 20)
        bytes.replaceSubrange((3 << 20)..<(4 << 20) + 99, with: random.bytes((1 << 20) + 99))
        let outside = pool.root.appendingPathComponent("sparse.raw").path
        XCTAssertTrue(FileManager.default.createFile(atPath: outside, contents: Data(bytes)))
        let intoMount = try runProgram("cp", ["--sparse=always", outside, pool.path("src/disk.img")])
        XCTAssertEqual(intoMount.status, 0, intoMount.errorOutput + pool.logTail())
        XCTAssertEqual(try readWholeFile(pool.path("src/disk.img")), bytes)
        let withinMount = try runProgram("cp", [pool.path("src/disk.img"), pool.path("dst/disk.img")])
        XCTAssertEqual(withinMount.status, 0, withinMount.errorOutput + pool.logTail())
        XCTAssertEqual(try readWholeFile(pool.path("dst/disk.img")), bytes)

        // An unaligned range between explicit offsets, growing the target.
        let source = try openFile(pool.path("src/disk.img"), O_RDONLY)
        defer { close(source) }
        let target = try openFile(pool.path("dst/disk.img"), O_RDWR)
        defer { close(target) }
        let copied = try copyRange(from: source, at: (3 << 20) + 5, to: target, at: (6 << 20) - 100, length: 300_000)
        XCTAssertEqual(copied, 300_000)
        XCTAssertEqual(try fileSize(pool.path("dst/disk.img")), (6 << 20) - 100 + 300_000)
        XCTAssertEqual(try readBytes(target, count: 300_000, at: (6 << 20) - 100), Array(bytes[((3 << 20) + 5)..<((3 << 20) + 5 + 300_000)]))
    }
}

/// Strings collected from several threads.
final class LockedList: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func append(_ item: String) { lock.withLock { storage.append(item) } }
    var items: [String] { lock.withLock { storage } }
}
