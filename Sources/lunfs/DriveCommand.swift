// `lunfs drive add|remove|replace|list POOL ...`: drives join and leave a pool. On a mounted
// pool the daemon is asked over the control socket (ControlDriveVerbs.swift) and I/O goes on;
// leveling and emptying run in its background and `--wait` follows them with a live bar. On
// an unmounted pool the command opens the pool itself and levels it before it returns.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import LunMount

private let driveUsage = """
usage: lunfs drive add POOL PATH... [--force] [--wait]
       lunfs drive remove POOL N [--wait]
       lunfs drive replace POOL N PATH [--force] [--wait]
       lunfs drive list POOL [--json]
"""

func runDrive(_ args: [String]) -> Int32 {
    runVerb {
        guard let sub = args.first else { printError(driveUsage); return ExitCode.failure }
        let parsed = try ParsedArguments(Array(args.dropFirst()), valued: ["group"])
        let pos = parsed.positionals
        guard let directory = pos.first else { printError(driveUsage); return ExitCode.failure }
        if parsed.options["group"] != nil {
            printError("lunfs drive: --group: disk groups are not built yet; the drive was not added")
            return ExitCode.failure
        }
        let wait = parsed.flags.contains("wait"), force = parsed.flags.contains("force")
        switch (sub, pos.count) {
        case ("list", 1):
            return try listDrives(directory, json: parsed.flags.contains("json"))
        case ("add", 2...):
            let paths = pos.dropFirst().map { drivePath($0, pool: directory) }
            return try changeDrives(directory, wait: wait, verb: "drive-add", arguments: ["paths": paths, "force": force],
                                    removing: nil) { pool in
                let added = try pool.addDrives(paths: paths, force: force)
                return DriveChangeResult(added: added)
            }
        case ("remove", 2):
            guard let n = Int(pos[1]), n >= 0 else { printError("lunfs drive remove: \(pos[1]) is not a drive index"); return ExitCode.failure }
            return try changeDrives(directory, wait: wait, verb: "drive-remove", arguments: ["drive": n], removing: n) { pool in
                DriveChangeResult(added: [], removed: try pool.removeDrive(n))
            }
        case ("replace", 3):
            guard let n = Int(pos[1]), n >= 0 else { printError("lunfs drive replace: \(pos[1]) is not a drive index"); return ExitCode.failure }
            let path = drivePath(pos[2], pool: directory)
            return try changeDrives(directory, wait: wait, verb: "drive-replace", arguments: ["drive": n, "path": path, "force": force],
                                    removing: n) { pool in
                let added = try pool.replaceDrive(n, withPath: path, force: force)
                return DriveChangeResult(added: [added], removed: false)
            }
        default:
            printError(driveUsage)
            return ExitCode.failure
        }
    }
}

/// A drive's path as drives.list names it: relative when it lies in the pool directory.
private func drivePath(_ path: String, pool: String) -> String {
    let cwd = FileManager.default.currentDirectoryPath
    let absolute = path.hasPrefix("/") ? path : cwd + "/" + path
    let poolAbsolute = pool.hasPrefix("/") ? pool : cwd + "/" + pool
    let prefix = (poolAbsolute.hasSuffix("/") ? poolAbsolute : poolAbsolute + "/")
    return absolute.hasPrefix(prefix) ? String(absolute.dropFirst(prefix.count)) : absolute
}

private func absolutePool(_ directory: String) -> String {
    directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
}

/// Asks the daemon, or opens the pool when it is not mounted; then follows the work.
private func changeDrives(_ directory: String, wait: Bool, verb: String, arguments: [String: Any], removing: Int?,
                          local: (Pool) throws -> DriveChangeResult) throws -> Int32 {
    if isLocked(directory) {
        let answer = Result { () throws(ControlFailure) -> Data in
            try askDaemon(poolDirectory: absolutePool(directory), verb: verb, arguments: arguments)
        }
        guard case .success(let data) = answer else {
            if case .failure(let f) = answer { printError("lunfs drive: \(f.message)") }
            return ExitCode.failure
        }
        let result = try JSONDecoder().decode(DriveChangeResult.self, from: data)
        report(result, removing: removing, mounted: true)
        return wait ? followJobs(directory, removing: removing) : ExitCode.ok
    }
    let pool = try Pool.open(directory: directory)
    defer { try? pool.close() }
    let result = try local(pool)
    report(result, removing: removing, mounted: false)
    // Nobody else would level an unmounted pool: it is done now.
    let terminal = isatty(STDOUT_FILENO) == 1
    let start = Date()
    let total = max(1, pool.levelingBacklog().psegs)
    var last = 0.0
    try pool.levelCompletely { moved, left in
        let now = Date().timeIntervalSince(start)
        guard wait, terminal || now - last >= 10 else { return }
        last = now
        let done = UInt64(moved) * pool.poolGeometry.psegSizeBytes
        let line = "leveling  " + progressBar(done: moved, total: max(total, moved + left.psegs))
            + jobFigures(done: done, left: UInt64(left.psegs) * pool.poolGeometry.psegSizeBytes, seconds: now)
        if terminal { writeOut("\r" + line) } else { print(line) }
    }
    if wait && terminal { print("") }
    if let n = removing { print("drive \(n) removed from the pool") }
    print("pool level: " + pool.driveListing().map { "drive \($0.index) \(formatSize($0.usedBytes))" }.joined(separator: ", "))
    return ExitCode.ok
}

private func report(_ result: DriveChangeResult, removing: Int?, mounted: Bool) {
    for i in result.added { print("added drive \(i)") }
    if let n = removing {
        if result.removed == true { print("drive \(n) held nothing: removed from the pool") }
        else if mounted { print("drive \(n) takes no new data; the daemon moves its data away, then forgets it (lunfs status shows the job)") }
    }
}

/// "  1.2 GiB done, 3.0 GiB left, 140 MB/s, 22 s left"
private func jobFigures(done: UInt64, left: UInt64, seconds: Double) -> String {
    let rate = seconds > 0.5 ? Double(done) / seconds : nil
    return estimateText(done: done, left: left, bytesPerSecond: rate, secondsLeft: rate.flatMap { $0 > 0 ? Double(left) / $0 : nil })
}

private func writeOut(_ text: String) {
    // Straight to the descriptor: print's buffer would hold the line back.
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
}

/// Polls the daemon's status twice a second until no leveling or emptying job runs (and the
/// drive being removed is gone): a live bar on a terminal, a line every ten seconds otherwise.
private func followJobs(_ directory: String, removing: Int?) -> Int32 {
    let terminal = isatty(STDOUT_FILENO) == 1
    var lastLine = 0.0
    while true {
        let status: StatusReport
        do { status = try statusReport(directory) } catch {
            printError("lunfs drive: cannot follow the job: \(error)")
            return ExitCode.failure
        }
        let jobs = (status.jobs ?? []).filter { $0.kind == "leveling" || $0.kind == "evacuate" }
        let stillThere = removing.map { n in status.drives.contains { $0.index == n } } ?? false
        let settled = status.leveling.map { $0.waiting } ?? true
        if let job = jobs.first {
            let line = "\(job.kind)  " + progressBar(done: Int(job.bytesDone >> 20), total: Int(max(job.bytesTotal, 1) >> 20))
                + estimateText(done: job.bytesDone, left: job.bytesLeft, bytesPerSecond: job.bytesPerSecond, secondsLeft: job.secondsLeft)
            let now = Date().timeIntervalSince1970
            if terminal { writeOut("\r" + line + "   ") } else if now - lastLine >= 10 { print(line); lastLine = now }
        } else if settled && !stillThere {
            if terminal { print("") }
            print(removing.map { "drive \($0) removed from the pool" } ?? "leveling done")
            return ExitCode.ok
        } else if settled {
            if terminal { print("") }
            printError("lunfs drive: drive \(removing!) still holds data that no other drive can take under the RAID rules; it stays, taking no new data (lunfs status)")
            return ExitCode.failure
        }
        usleep(500_000)
    }
}

private func listDrives(_ directory: String, json: Bool) throws -> Int32 {
    let drives = try statusReport(directory).drives
    if json {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try encoder.encode(drives), as: UTF8.self))
        return ExitCode.ok
    }
    let width = max(4, drives.map(\.name.count).max() ?? 4)
    let pad = { (s: String, n: Int) in s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
    print(pad("N", 3) + "  " + pad("PATH", width) + "  " + pad("STATE", 8) + "  " + pad("SIZE", 10) + "  " + pad("USED", 10) + "  USE%  ROLE")
    for d in drives {
        let size = d.sizeBytes ?? 0, used = d.usedBytes ?? 0
        let percent = size > 0 ? Int((Double(used) * 100 / Double(size)).rounded()) : 0
        var role: [String] = []
        if d.mirror == true { role.append("metadata") }
        if d.draining == true { role.append("being removed") }
        let state: String = d.state ?? (d.available ? "online" : "missing")
        let columns: [String] = [pad("\(d.index)", 3), pad(d.name, width), pad(state, 8), pad(formatSize(size), 10),
                                 pad(formatSize(used), 10), pad("\(percent)%", 4), role.isEmpty ? "-" : role.joined(separator: ", ")]
        print(columns.joined(separator: "  "))
    }
    return ExitCode.ok
}
