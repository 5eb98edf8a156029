// `lunfs snapshot --name NAME DIR...`: one snapshot NAME of every disk directory DIR, all of
// one mounted lunfs tree, taken at the same instant (a group snapshot: docs/MOUNT.md). It
// finds the tree's root above the directories and sets `user.lunfs.snapshot` there to NAME
// followed by the directories' paths in the tree, so the daemon quiesces and splits them all
// at once; DIR/NAME exists for each when it returns.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import CLunSys

func runGroupSnapshot(_ parsed: ParsedArguments) throws -> Int32 {
    guard let name = parsed.options["name"]?.last, parsed.options["name"]!.count == 1, !name.isEmpty,
          !parsed.positionals.isEmpty, parsed.options["to"] == nil, parsed.flags.isEmpty else {
        printError("usage: lunfs snapshot --name NAME DIR...   (DIR: disk directories of one mounted lunfs tree)")
        return ExitCode.failure
    }
    var root: String?
    var paths: [String] = []
    for dir in parsed.positionals {
        guard let resolved = realpath(dir, nil) else {
            printError("lunfs snapshot: \(dir): \(String(cString: strerror(errno)))")
            return ExitCode.failure
        }
        let absolute = String(cString: resolved)
        free(resolved)
        guard let top = mountRoot(of: absolute) else {
            printError("lunfs snapshot: \(dir) is not in a mounted lunfs tree")
            return ExitCode.failure
        }
        guard root == nil || root == top else {
            printError("lunfs snapshot: \(dir) is in \(top), not in \(root!): a group snapshot is of one mounted tree")
            return ExitCode.failure
        }
        root = top
        paths.append(String(absolute.dropFirst(top.count)).split(separator: "/").joined(separator: "/"))
    }
    let value = Array(([name] + paths).joined(separator: "\n").utf8)
    guard lunsys_setxattr(root!, "user.lunfs.snapshot", value, UInt(value.count), 0) == 0 else {
        let reason = String(cString: strerror(errno))
        printError("lunfs snapshot: group snapshot \(name) of \(paths.joined(separator: ", ")): \(reason)")
        return 1  // refused at run time; 2 is for bad usage
    }
    for dir in parsed.positionals { print((dir.hasSuffix("/") ? dir : dir + "/") + name) }
    return ExitCode.ok
}

/// The top of the lunfs mount that holds `path` (the last directory upwards on the same
/// device that answers for `user.lunfs.scrub`, which only a lunfs root has), nil if none.
private func mountRoot(of path: String) -> String? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    var current = path
    while true {
        var buffer = [UInt8](repeating: 0, count: 1)
        if lunsys_getxattr(current, "user.lunfs.scrub", &buffer, 0) >= 0 { return current }
        guard current != "/", let slash = current.lastIndex(of: "/") else { return nil }
        let parent = slash == current.startIndex ? "/" : String(current[..<slash])
        var up = stat()
        guard stat(parent, &up) == 0, up.st_dev == st.st_dev else { return nil }
        current = parent
    }
}
