// The kernel's list of mounts (/proc/self/mountinfo), read to tell whether a directory is
// already a mount point and, for unmount, which pool a lunfs mount serves.
#if canImport(Glibc)
import Glibc
#endif

struct MountTableEntry {
    var mountpoint: String
    var fileSystemType: String
    /// For lunfs mounts "lunfs:POOL" (the fsname option).
    var source: String
    /// The mounted file system's device number (st_dev of every file in it).
    var device: dev_t

    /// The pool directory of a lunfs mount, from its fsname.
    var lunfsPoolDirectory: String? {
        guard fileSystemType == "fuse.lunfs", source.hasPrefix("lunfs:") else { return nil }
        return String(source.dropFirst("lunfs:".count))
    }
}

enum MountTable {
    static func entries() -> [MountTableEntry] {
        guard let bytes = readWholeFile("/proc/self/mountinfo") else { return [] }
        return String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { line in
            // id parent major:minor root mountpoint options [optional...] - type source superoptions
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count >= 10, let separator = fields.firstIndex(of: "-"), separator + 2 < fields.count else { return nil }
            let numbers = fields[2].split(separator: ":").compactMap { UInt32($0) }
            return MountTableEntry(
                mountpoint: unescape(fields[4]),
                fileSystemType: String(fields[separator + 1]),
                source: unescape(fields[separator + 2]),
                device: numbers.count == 2 ? deviceNumber(major: numbers[0], minor: numbers[1]) : 0)
        }
    }

    /// The mount whose mount point is exactly `path` (absolute, no symlinks); the last one
    /// wins when mounts are stacked.
    static func entry(at path: String) -> MountTableEntry? {
        entries().last { $0.mountpoint == path }
    }

    /// glibc's makedev (a macro Swift cannot call): the st_dev of major:minor.
    private static func deviceNumber(major: UInt32, minor: UInt32) -> dev_t {
        let (major, minor) = (dev_t(major), dev_t(minor))
        return ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
    }

    /// mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    private static func unescape(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3,
               let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The whole content of a (small) file, or nil if it cannot be read.
func readWholeFile(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var content: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        guard count >= 0 else { return nil }
        if count == 0 { return content }
        content += chunk[..<count]
    }
}
