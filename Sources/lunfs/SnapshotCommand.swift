// `lunfs snapshot --name NAME DIR...` takes snapshot NAME of every disk directory DIR of one
// mounted tree at one instant (GroupSnapshotCommand.swift).
// `lunfs snapshot --to FILE DIR NAME [--wait]`: takes snapshot NAME of the disk in directory DIR
// of a mounted tree whose blocks live in FILE, a raw image on any other file system (seed
// 004's virtual snapshot on separate storage). It sets `user.lunfs.snapshot_to` = NAME=FILE
// on DIR, so the daemon that owns the disk does the work; DIR/NAME is readable at once. With
// --wait it follows the background copy until FILE alone holds the snapshot.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import CLunSys

func runSnapshot(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: ["to", "name"])
        if parsed.options["name"] != nil { return try runGroupSnapshot(parsed) }
        guard parsed.positionals.count == 2, let file = parsed.options["to"]?.last, !file.isEmpty else {
            printError("usage: lunfs snapshot --to FILE DIR NAME [--wait]   (DIR: a disk directory in a mounted lunfs tree)")
            return ExitCode.failure
        }
        let dir = parsed.positionals[0], name = parsed.positionals[1]
        let absolute = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
        let value = Array("\(name)=\(absolute)".utf8)
        guard lunsys_setxattr(dir, "user.lunfs.snapshot_to", value, UInt(value.count), 0) == 0 else {
            let reason = String(cString: strerror(errno))
            printError("lunfs snapshot: \(dir): \(reason)" + (errno == EOPNOTSUPP || errno == ENOTSUP ? " (not a disk directory of a mounted lunfs tree)" : ""))
            return 1  // refused at run time; 2 is for bad usage
        }
        let path = dir.hasSuffix("/") ? dir + name : dir + "/" + name
        guard parsed.flags.contains("wait") else {
            print("\(path): snapshot in \(absolute); copying in the background (lunfs status, or getfattr -n user.lunfs.copy_progress)")
            return ExitCode.ok
        }
        return waitForCopy(path)
    }
}

/// Polls `user.lunfs.copy_progress` twice a second until the snapshot is independent.
private func waitForCopy(_ path: String) -> Int32 {
    var lastLine = 0.0
    while true {
        guard let kind = attribute(path, "user.lunfs.kind"),
              let progress = attribute(path, "user.lunfs.copy_progress")?.split(separator: "/").compactMap({ Int($0) }),
              progress.count == 2 else {
            printError("lunfs snapshot: \(path) is gone")
            return 1
        }
        if kind == DiskKind.independent.rawValue {
            print("\(path)  " + progressBar(done: 1, total: 1) + "  independent: its file alone holds it")
            return ExitCode.ok
        }
        let now = Date().timeIntervalSince1970
        if now - lastLine >= 2 {
            print("\(path)  " + progressBar(done: progress[0], total: max(progress[1], 1)) + "  \(progress[0])/\(progress[1]) blocks")
            lastLine = now
        }
        usleep(500_000)
    }
}

private func attribute(_ path: String, _ name: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 4096)
    let n = lunsys_getxattr(path, name, &buffer, UInt(buffer.count))
    guard n >= 0 else { return nil }
    return String(decoding: buffer[0..<Int(n)], as: UTF8.self)
}
