// What keeps a mount busy, named the way `fuser -m` would: processes with a file, working
// directory or memory map inside it (from /proc/PID/fd, cwd, root and maps) and loop devices
// backed by one of its images (/sys/block/loop*/loop/backing_file). `lunfs unmount` refuses
// and prints these instead of detaching the mount from under them.
#if canImport(Glibc)
import Glibc
#endif

/// One thing that holds a path inside the mount.
struct MountHolder: Equatable {
    enum Kind: Equatable {
        case process(pid: pid_t, command: String)
        case loopDevice(String)
    }
    var kind: Kind
    /// The path inside the mount it holds.
    var path: String

    var description: String {
        switch kind {
        case .process(let pid, let command): return "pid \(pid) (\(command)) holds \(path)"
        case .loopDevice(let device): return "loop device \(device) is backed by \(path)"
        }
    }
}

enum MountHolders {
    /// Everything that holds a path at or below `mountpoint` (absolute), other than this
    /// process. Processes whose /proc entries cannot be read are skipped.
    static func find(under mountpoint: String) -> [MountHolder] {
        func isInside(_ path: String) -> Bool { path == mountpoint || path.hasPrefix(mountpoint + "/") }
        var found: [MountHolder] = []
        for device in directoryNames("/sys/block") ?? [] where device.hasPrefix("loop") {
            guard let bytes = readWholeFile("/sys/block/\(device)/loop/backing_file") else { continue }
            let backing = String(decoding: bytes, as: UTF8.self).trimmingEdges(of: "\n")
            if isInside(backing) { found.append(MountHolder(kind: .loopDevice("/dev/\(device)"), path: backing)) }
        }
        let me = getpid()
        for entry in directoryNames("/proc") ?? [] {
            guard let pid = pid_t(entry), pid != me else { continue }
            var paths: [String] = []
            for link in ["cwd", "root"] {
                if let target = linkTarget("/proc/\(pid)/\(link)") { paths.append(target) }
            }
            for fd in directoryNames("/proc/\(pid)/fd") ?? [] {
                if let target = linkTarget("/proc/\(pid)/fd/\(fd)") { paths.append(target) }
            }
            if let maps = readWholeFile("/proc/\(pid)/maps") {
                for line in String(decoding: maps, as: UTF8.self).split(separator: "\n") {
                    if let slash = line.firstIndex(of: "/") { paths.append(String(line[slash...])) }
                }
            }
            let command = readWholeFile("/proc/\(pid)/comm").map { String(decoding: $0, as: UTF8.self).trimmingEdges(of: "\n") } ?? "?"
            var seen = Set<String>()
            for path in paths where isInside(path) && seen.insert(path).inserted {
                found.append(MountHolder(kind: .process(pid: pid, command: command), path: path))
            }
        }
        return found
    }

    private static func linkTarget(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { raw in
            readlink(path, raw.baseAddress!.assumingMemoryBound(to: CChar.self), raw.count)
        }
        guard count > 0 else { return nil }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }
}
