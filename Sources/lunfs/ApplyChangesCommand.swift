// `lunfs apply-changes DELTA IMAGE`: applies a change file (a disk's changes.img, or a copy of
// it kept as an incremental backup) to an image of the disk's predecessor. Only DELTA's data
// extents are copied, found with SEEK_DATA/SEEK_HOLE, because its holes stand for "the same as
// the predecessor" and must leave IMAGE's bytes alone; then IMAGE takes DELTA's size.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine

/// lseek(2) whence values for sparse files (Linux): the next data, the next hole.
private let seekData: Int32 = 3
private let seekHole: Int32 = 4
/// Bytes copied per read and write.
private let copyPieceBytes = 1 << 20

func runApplyChanges(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: [])
        guard parsed.positionals.count == 2, parsed.flags.isEmpty else {
            printError("usage: lunfs apply-changes DELTA IMAGE   (DELTA: a changes.img or a copy of one; IMAGE: the predecessor's image, changed in place)")
            return ExitCode.failure
        }
        let deltaPath = parsed.positionals[0], imagePath = parsed.positionals[1]
        let delta = open(deltaPath, O_RDONLY | O_CLOEXEC)
        guard delta >= 0 else {
            printError("lunfs apply-changes: cannot open \(deltaPath): \(String(cString: strerror(errno)))")
            return ExitCode.failure
        }
        defer { close(delta) }
        let image = open(imagePath, O_RDWR | O_CLOEXEC)
        guard image >= 0 else {
            printError("lunfs apply-changes: cannot open \(imagePath) for writing: \(String(cString: strerror(errno))) (it must exist: the predecessor's image)")
            return ExitCode.failure
        }
        defer { close(image) }
        var deltaStat = stat(), imageStat = stat()
        guard fstat(delta, &deltaStat) == 0, fstat(image, &imageStat) == 0 else {
            printError("lunfs apply-changes: stat: \(String(cString: strerror(errno)))")
            return ExitCode.failure
        }
        guard deltaStat.st_dev != imageStat.st_dev || deltaStat.st_ino != imageStat.st_ino else {
            printError("lunfs apply-changes: \(deltaPath) and \(imagePath) are the same file")
            return ExitCode.failure
        }
        let deltaSize = deltaStat.st_size
        let imageIsFile = imageStat.st_mode & S_IFMT == S_IFREG
        if !imageIsFile {
            // A block device: its size is fixed, and it must hold the whole disk.
            let deviceSize = lseek(image, 0, SEEK_END)
            guard deviceSize >= deltaSize else {
                printError("lunfs apply-changes: \(imagePath) holds \(max(0, deviceSize)) bytes; the disk is \(deltaSize)")
                return ExitCode.failure
            }
        }
        let applied: (bytes: Int64, extents: Int)
        do {
            applied = try copyDataExtents(from: delta, size: deltaSize, to: image, deltaPath: deltaPath, imagePath: imagePath)
        } catch {
            // Applying is idempotent: the same DELTA applied again completes the image.
            printError("lunfs apply-changes: \(error); \(imagePath) is partly changed: apply \(deltaPath) again once the cause is fixed")
            return ExitCode.failure
        }
        if imageIsFile && imageStat.st_size != deltaSize {
            guard ftruncate(image, deltaSize) == 0 else {
                printError("lunfs apply-changes: cannot resize \(imagePath) to \(deltaSize) bytes: \(String(cString: strerror(errno)))")
                return ExitCode.failure
            }
        }
        guard fsync(image) == 0 else {
            printError("lunfs apply-changes: fsync \(imagePath): \(String(cString: strerror(errno)))")
            return ExitCode.failure
        }
        print("\(imagePath): \(applied.bytes) bytes applied in \(applied.extents) extents; size \(deltaSize) bytes")
        return ExitCode.ok
    }
}

/// Copies every data extent of `delta` (below `size`) to the same offset of `image`. A file
/// system without SEEK_DATA shows the whole file as one extent, which is still correct.
private func copyDataExtents(from delta: Int32, size: off_t, to image: Int32, deltaPath: String, imagePath: String) throws -> (bytes: Int64, extents: Int) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: copyPieceBytes, alignment: 4096)
    defer { buffer.deallocate() }
    var position: off_t = 0, bytes: Int64 = 0, extents = 0
    while position < size {
        let start = lseek(delta, position, seekData)
        if start < 0 {
            if errno == ENXIO { break }  // no data after position
            throw LunError.io("lseek SEEK_DATA in \(deltaPath) at \(position): \(String(cString: strerror(errno)))")
        }
        var end = lseek(delta, start, seekHole)
        if end < 0 { throw LunError.io("lseek SEEK_HOLE in \(deltaPath) at \(start): \(String(cString: strerror(errno)))") }
        end = min(end, size)
        extents += 1
        var at = start
        while at < end {
            let want = Int(min(off_t(copyPieceBytes), end - at))
            let got = pread(delta, buffer.baseAddress, want, at)
            if got < 0 {
                if errno == EINTR { continue }
                throw LunError.io("read \(deltaPath) at \(at): \(String(cString: strerror(errno)))")
            }
            if got == 0 { throw LunError.io("\(deltaPath) ended at \(at), before its size \(size)") }
            var written = 0
            while written < got {
                let n = pwrite(image, buffer.baseAddress! + written, got - written, at + off_t(written))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw LunError.io("write \(imagePath) at \(at + off_t(written)): \(String(cString: strerror(errno)))")
                }
                written += n
            }
            at += off_t(got)
            bytes += Int64(got)
        }
        position = end
    }
    return (bytes, extents)
}
