// What "a refused request changes nothing" means, as a value a test can capture before and
// after and compare: every node of the tree as listed and stat'ed, every image's bytes read
// with O_DIRECT (so they come from the daemon, not from the kernel's page cache), every
// directory's user.lunfs.* values, and the pool's statfs figures.
import Foundation
import XCTest

struct MountedState {
    /// Path from the mount's root -> "directory" or "image size S blocks B mtime T".
    var nodes: [String: String] = [:]
    /// Path of each image -> its bytes.
    var images: [String: [UInt8]] = [:]
    /// Path of each disk directory -> attribute name -> value.
    var attributes: [String: [String: String]] = [:]
    /// statfs: total, free and available blocks.
    var space = ""

    /// Images are compared byte for byte up to this size: tests keep theirs small.
    static let largestImageReadBytes = 64 << 20

    static func capture(_ mountpoint: String) throws -> MountedState {
        var state = MountedState()
        try state.visit(mountpoint: mountpoint, relative: "")
        let figures = try statistics(mountpoint)
        state.space = "blocks \(figures.f_blocks) free \(figures.f_bfree) available \(figures.f_bavail)"
        return state
    }

    private mutating func visit(mountpoint: String, relative: String) throws {
        let directory = relative.isEmpty ? mountpoint : mountpoint + "/" + relative
        for name in try FileManager.default.contentsOfDirectory(atPath: directory).sorted() {
            let path = relative.isEmpty ? name : relative + "/" + name
            var info = stat()
            try check(lstat(mountpoint + "/" + path, &info))
            if info.st_mode & S_IFMT == S_IFDIR {
                nodes[path] = "directory"
                var values: [String: String] = [:]
                for attribute in try listAttributes(mountpoint + "/" + path) {
                    values[attribute] = try getAttribute(mountpoint + "/" + path, attribute)
                }
                attributes[path] = values
                try visit(mountpoint: mountpoint, relative: path)
            } else {
                nodes[path] = "image size \(info.st_size) blocks \(info.st_blocks) mtime \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
                // An image grown by mistake to terabytes must show as a difference, not be read.
                images[path] = info.st_size <= Self.largestImageReadBytes
                    ? try Self.readDirect(mountpoint + "/" + path) : []
            }
        }
    }

    /// The whole image through an O_DIRECT descriptor, in page-aligned pieces.
    static func readDirect(_ path: String) throws -> [UInt8] {
        let fd = try openFile(path, O_RDONLY | O_DIRECT_FLAG)
        defer { close(fd) }
        let piece = AlignedBuffer(count: 1 << 20)
        var bytes: [UInt8] = []
        while bytes.count <= Self.largestImageReadBytes {
            let n = pread(fd, piece.pointer, piece.count, off_t(bytes.count))
            if n < 0 { throw SystemError(code: errno) }
            if n == 0 { break }
            bytes += UnsafeRawBufferPointer(start: piece.pointer, count: n)
        }
        return bytes
    }

    /// What differs from `other`, one line each; empty when nothing does.
    func differences(from other: MountedState) -> [String] {
        var lines: [String] = []
        for path in Set(nodes.keys).union(other.nodes.keys).sorted() where nodes[path] != other.nodes[path] {
            lines.append("\(path): \(other.nodes[path] ?? "absent") -> \(nodes[path] ?? "absent")")
        }
        for path in Set(images.keys).intersection(other.images.keys).sorted() {
            let now = images[path]!, then = other.images[path]!
            if !sameBytes(now[...], then[...]) {
                let first = zip(now, then).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(now.count, then.count)
                lines.append("\(path): bytes differ from offset \(first) (\(then.count) -> \(now.count) bytes)")
            }
        }
        for path in Set(attributes.keys).union(other.attributes.keys).sorted() where attributes[path] != other.attributes[path] {
            lines.append("\(path): attributes \(other.attributes[path] ?? [:]) -> \(attributes[path] ?? [:])")
        }
        if space != other.space { lines.append("statfs: \(other.space) -> \(space)") }
        return lines
    }
}
