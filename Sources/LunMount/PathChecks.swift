// The questions the mount and unmount commands ask about paths before touching anything:
// what is there, whether a directory is empty, the absolute form of a path.
#if canImport(Glibc)
import Glibc
#endif

enum PathKind {
    case missing
    case directory
    case other
    /// stat failed with something other than ENOENT (ENOTCONN or ECONNABORTED: a dead FUSE mount).
    case unreadable(Int32)
}

func pathKind(_ path: String) -> PathKind {
    var info = stat()
    guard stat(path, &info) == 0 else {
        return errno == ENOENT ? .missing : .unreadable(errno)
    }
    return info.st_mode & S_IFMT == S_IFDIR ? .directory : .other
}

/// `path` made absolute, with symlinks and dot components resolved. When the path itself
/// cannot be resolved (it does not exist yet, or it is a dead FUSE mount answering ENOTCONN)
/// its parent is resolved instead and the last component appended.
func absolutePath(_ path: String) -> String {
    if let resolved = resolvedPath(path) { return resolved }
    var trimmed = Substring(path)
    while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
    let slash = trimmed.lastIndex(of: "/")
    let parent = slash.map { $0 == trimmed.startIndex ? "/" : String(trimmed[..<$0]) } ?? "."
    let last = slash.map { String(trimmed[trimmed.index(after: $0)...]) } ?? String(trimmed)
    guard let base = resolvedPath(parent) else { return path }
    return (base == "/" ? "" : base) + "/" + last
}

private func resolvedPath(_ path: String) -> String? {
    guard let resolved = realpath(path, nil) else { return nil }
    defer { free(resolved) }
    return String(cString: resolved)
}

/// The names in a directory other than "." and ".."; nil if it cannot be read.
func directoryNames(_ path: String) -> [String]? {
    guard let handle = opendir(path) else { return nil }
    defer { closedir(handle) }
    var names: [String] = []
    while let entry = readdir(handle) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }
