// `lunfs clone DIR [--wait]`: makes the snapshot in directory DIR of a mounted tree a snapclone
// (`user.lunfs.kind` = snapclone) and, with --wait, follows its background copy until it is
// independent: a live bar with the rate and the time left on a terminal, a line every ten
// seconds otherwise. Interrupting the wait leaves the copy running in the daemon.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import CLunSys

func runClone(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: [])
        guard parsed.positionals.count == 1 else {
            printError("usage: lunfs clone DIR [--wait]   (DIR: a snapshot's directory in a mounted lunfs tree)")
            return ExitCode.failure
        }
        let dir = parsed.positionals[0]
        guard let kind = readAttribute(dir, "user.lunfs.kind") else {
            printError("lunfs clone: \(dir) is not a disk directory of a mounted lunfs tree (\(String(cString: strerror(errno))))")
            return ExitCode.failure
        }
        if kind == DiskKind.snapshot.rawValue {
            let value = Array(DiskKind.snapclone.rawValue.utf8)
            guard lunsys_setxattr(dir, "user.lunfs.kind", value, UInt(value.count), 0) == 0 else {
                printError("lunfs clone: \(dir): \(String(cString: strerror(errno)))")
                return ExitCode.failure
            }
        } else if kind != DiskKind.snapclone.rawValue && kind != DiskKind.independent.rawValue {
            printError("lunfs clone: \(dir) is a \(kind), not a snapshot: it shares nothing it could copy")
            return ExitCode.failure
        }
        guard parsed.flags.contains("wait") else {
            print("\(dir): snapclone; copying in the background (lunfs status, or getfattr -n user.lunfs.copy_progress)")
            return ExitCode.ok
        }
        return followCopy(dir)
    }
}

private func readAttribute(_ path: String, _ name: String) -> String? {
    var buffer = [UInt8](repeating: 0, count: 256)
    let n = lunsys_getxattr(path, name, &buffer, UInt(buffer.count))
    guard n >= 0 else { return nil }
    return String(decoding: buffer[0..<Int(n)], as: UTF8.self)
}

/// Polls the copy twice a second until the disk is independent.
private func followCopy(_ dir: String) -> Int32 {
    let terminal = isatty(STDOUT_FILENO) == 1
    var samples: [(time: Double, copied: Int)] = []
    var lastLine = 0.0
    while true {
        let kind = readAttribute(dir, "user.lunfs.kind")
        let progress = readAttribute(dir, "user.lunfs.copy_progress")?.split(separator: "/").compactMap { Int($0) }
        guard let kind, let progress, progress.count == 2 else {
            if terminal { print("") }
            printError("lunfs clone: \(dir) is no longer a snapclone (deleted, or turned back into a snapshot)")
            return ExitCode.failure
        }
        let now = Date().timeIntervalSince1970
        samples.append((now, progress[0]))
        samples.removeAll { now - $0.time > 10 }
        let rate = samples.count > 1 ? Double(samples.last!.copied - samples.first!.copied) / (samples.last!.time - samples.first!.time) : 0
        let left = progress[1] - progress[0]
        let eta = rate > 0 ? String(format: "%.0f s left", Double(left) / rate) : "time left unknown"
        let line = "\(dir)  " + progressBar(done: progress[0], total: progress[1]) + "  \(progress[0])/\(progress[1]) segments"
            + String(format: "  %.1f segments/s  ", rate) + eta
        if kind == DiskKind.independent.rawValue {
            print((terminal ? "\r" : "") + "\(dir)  " + progressBar(done: 1, total: 1) + "  independent" + String(repeating: " ", count: 30))
            return ExitCode.ok
        }
        if terminal {
            // Straight to the descriptor: print's buffer would hold the line back.
            let bytes = Array(("\r" + line).utf8)
            _ = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
        } else if now - lastLine >= 10 {
            print(line)
            lastLine = now
        }
        usleep(500_000)
    }
}
