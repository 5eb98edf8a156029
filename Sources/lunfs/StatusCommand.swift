// `lunfs status POOL [--json]`: the pool's health (degraded or not, and what is at risk),
// drives with size, use, errors and state, capacity, used and free space, every disk in
// file-tree order with its size, allocation, RAID level and place in its sharing chain. On a
// mounted pool it asks the daemon through the control socket (live figures); otherwise, or
// when the daemon cannot be asked, it opens the pool read-only (the last committed state).
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import LunMount

func runStatus(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: [])
        guard parsed.positionals.count == 1 else {
            printError("usage: lunfs status POOL [--json]")
            return ExitCode.failure
        }
        let directory = parsed.positionals[0]
        let report = try statusReport(directory)
        if parsed.flags.contains("json") {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            printStatus(report)
        }
        return ExitCode.ok
    }
}

/// From the daemon when the pool is mounted and it answers; else from a read-only open.
func statusReport(_ directory: String) throws -> StatusReport {
    let mounted = isLocked(directory)
    var why: String?
    if mounted {
        do {
            let absolute = directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
            return try JSONDecoder().decode(StatusReport.self, from: askDaemon(poolDirectory: absolute, verb: "status"))
        } catch let failure as ControlFailure {
            why = failure.message
        } catch {
            why = "the daemon's answer does not decode: \(error)"
        }
    }
    let pool: Pool
    do { pool = try Pool.open(directory: directory, readOnly: true) } catch {
        guard let why else { throw error }
        throw LunError.notPermitted("the pool is mounted and its daemon was not asked (\(why)); opening it read-only failed too: \(error)")
    }
    var report = buildStatus(pool, mounted: mounted)
    if let why { report.notes.insert("the daemon was not asked (\(why)); figures are from the last commit", at: 0) }
    return report
}

/// Whether a daemon holds the pool's lock (the pool is mounted).
func isLocked(_ directory: String) -> Bool {
    // Read-only is enough for flock, and lets a user who cannot write the pool ask too.
    let fd = open(directory + "/lock", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    if flock(fd, LOCK_EX | LOCK_NB) == 0 { flock(fd, LOCK_UN); return false }
    return true
}

private func printStatus(_ r: StatusReport) {
    let source = r.live == true ? " (mounted; live figures from the daemon)" : r.mounted ? " (mounted; showing the last committed state)" : ""
    print("pool \(r.pool)\(source)")
    printHealth(r)
    printDrives(r)
    printJobs(r)
    print("usable \(formatSize(r.usableBytes)) at raid\(r.defaultRAID) (df's size): used \(formatSize(r.usedBytes)), reserved \(formatSize(r.reservedBytes)), free \(formatSize(r.freeBytes))")
    print("capacity \(formatSize(r.capacityBytes)) of segments; used \(formatSize(r.usedBytes)) by disks (\(formatSize(r.rawUsedBytes)) raw with redundancy); free \(formatSize(r.freeBytes)) at raid\(r.defaultRAID)\(r.reservedBytes > 0 ? "; reserved \(formatSize(r.reservedBytes))" : "")")
    let perMiB = r.mapBytesPerAllocatedMiB.map { String(format: "%.1f B per allocated MiB", $0) } ?? "nothing allocated"
    print("map memory \(formatSize(UInt64(r.mapMemoryBytes))) (\(perMiB))")
    if let n = r.partialSegments, n > 0 {
        print("partial segments: \(n), \(formatSize(r.partialBytesToFill ?? 0)) left to fill in the background (copy on first write in blocks)")
    }
    for n in r.notes { print("note: \(n)") }
    printDisks(r)
    printCopies(r)
    printFrozen(r)
    printExternals(r)
    printChains(r)
    printDroppedSnapshots(r)
}

/// The first thing a degraded pool says: which drives are out and what is at risk.
private func printHealth(_ r: StatusReport) {
    guard let h = r.health, h.degraded else { print("health: ok (every drive in service, every store redundant)"); return }
    let out = r.drives.filter { !$0.available }.map { "\($0.index) \($0.state ?? ($0.stale ? "stale" : "missing"))" }
    print("health: DEGRADED: drives out of service: \(out.isEmpty ? "none" : out.joined(separator: ", "))")
    if h.degradedStores > 0 {
        print("  \(h.degradedStores) stores lost their redundancy (one more lost drive loses data); disks at risk: \(h.disksWithoutRedundancy.isEmpty ? "none" : h.disksWithoutRedundancy.joined(separator: ", "))")
    }
    if h.unreadableStores > 0 {
        print("  \(h.unreadableStores) stores cannot be read whole; disks with unreadable data: \(h.disksWithUnreadableData.isEmpty ? "none" : h.disksWithUnreadableData.joined(separator: ", "))")
    }
}

private func printDrives(_ r: StatusReport) {
    let missing = r.drives.filter { !$0.available }.count
    let stale = r.drives.filter(\.stale).count
    print("drives: \(r.drives.count)\(missing == 0 ? ", all present" : (missing > stale ? ", \(missing - stale) MISSING" : "") + (stale > 0 ? ", \(stale) STALE" : ""))")
    for d in r.drives {
        let state: String
        switch d.state ?? (d.available ? "online" : d.stale ? "stale" : "missing") {
        case "online": state = "online"
        case "stale": state = "STALE (missed writes or replaces a drive; not read until rebuilt)"
        case "failed": state = "FAILED (out of service after an I/O error)"
        default: state = "MISSING"
        }
        var line = "  \(d.index)  \(d.name)  \(state)" + (d.draining == true ? " (being removed)" : "")
        if let size = d.sizeBytes, let used = d.usedBytes { line += "  size \(formatSize(size)), used \(formatSize(used))" }
        if let read = d.readErrors, let write = d.writeErrors, let sums = d.checksumErrors, let repairs = d.repairs {
            line += "  errors: read \(read), write \(write), checksum \(sums); repaired \(repairs)"
        }
        if let group = d.group { line += "  group \(group)" }
        print(line)
    }
}

/// Each running job with a bar, bytes done and left, rate and time left.
private func printJobs(_ r: StatusReport) {
    if let l = r.leveling {
        var text = "leveling: \(formatSize(l.backlogBytes)) of segments to move"
        if !l.draining.isEmpty { text += "; drives being removed: \(l.draining.map(String.init).joined(separator: ", "))" }
        if l.waiting { text += "; waiting (no move helps under the RAID rules until drives change)" }
        else if r.live != true { text += " (the daemon levels it once the pool is mounted)" }
        print(text)
    }
    guard let jobs = r.jobs, !jobs.isEmpty else { return }
    print("jobs:")
    for j in jobs {
        let name = j.kind == "evacuate" ? "emptying drive \(j.drive.map(String.init) ?? "?")" : j.kind + (j.drive.map { " (drive \($0))" } ?? "")
        let permille = j.bytesTotal > 0 ? Int(j.bytesDone * 1000 / j.bytesTotal) : 1000
        print("  " + pad(name, 18) + "  " + progressBar(done: permille, total: 1000)
              + estimateText(done: j.bytesDone, left: j.bytesLeft, bytesPerSecond: j.bytesPerSecond, secondsLeft: j.secondsLeft))
    }
}

private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

/// The disks as a tree: snapshots indented under the disk they belong to.
private func printDisks(_ r: StatusReport) {
    guard !r.disks.isEmpty else { print("no disks"); return }
    func label(_ d: StatusReport.Disk) -> String {
        String(repeating: "  ", count: d.depth ?? 0) + (d.path.split(separator: "/").last.map(String.init) ?? d.path)
    }
    let width = max(8, r.disks.map { label($0).count }.max()!)
    print(pad("DISK", width) + "  " + pad("KIND", 11) + "  " + pad("SIZE", 10) + "  " + pad("ALLOCATED", 10) + "  " + pad("UNIQUE", 10) + "  " + pad("SHARED", 10) + "  RAID   CHAIN  CREATED")
    let dateFormat = DateFormatter()
    dateFormat.dateFormat = "yyyy-MM-dd HH:mm:ss"
    for d in r.disks {
        let created = dateFormat.string(from: Date(timeIntervalSince1970: Double(d.createdAt)))
        let size = d.hasImage ? formatSize(d.sizeBytes) : "(no image)"
        let chain = d.chain.map { "\($0 + 1).\((d.chainPosition ?? 0) + 1)" } ?? "-"
        print(pad(label(d), width) + "  " + pad(d.kind, 11) + "  " + pad(size, 10) + "  " + pad(formatSize(d.allocatedBytes), 10) + "  "
              + pad(formatSize(d.uniqueBytes), 10) + "  " + pad(formatSize(d.sharedBytes), 10) + "  raid\(d.raid)  " + pad(chain, 5) + "  \(created)"
              + (d.reservedBytes > 0 ? "  reserved \(formatSize(d.reservedBytes))" : "")
              + (d.onFull.map { "  on_full \($0)" } ?? "") + (d.expendable == true ? "  expendable" : "")
              + (d.group.map { $0 == DiskGroups.defaultGroup ? "" : "  group \($0)" } ?? ""))
    }
}

private func printCopies(_ r: StatusReport) {
    let copies = r.disks.filter { $0.copiedSegments != nil }
    guard !copies.isEmpty else { return }
    let width = max(8, r.disks.map(\.path.count).max()!)
    print("snapclone copies\(r.live == true ? "" : " (as of the last commit)"):")
    for d in copies {
        let done = d.copiedSegments!, total = max(d.copyTotalSegments!, 1)
        print("  " + pad(d.path, width) + "  " + progressBar(done: done, total: total) + "  \(done)/\(total) segments"
              + (d.copy.map(copyEstimateText) ?? ""))
    }
}

/// Chains with segments frozen (Nw, invalid) or I/O held by the blocking flag.
private func printFrozen(_ r: StatusReport) {
    for d in r.disks { if let f = d.frozen, !f.isQuiet { print("frozen: \(d.path): " + frozenText(f)) } }
}

/// Snapshots on separate storage and their background copy.
private func printExternals(_ r: StatusReport) {
    let externals = r.disks.filter { $0.externalFile != nil }
    guard !externals.isEmpty else { return }
    let width = max(8, r.disks.map(\.path.count).max()!)
    print("snapshots on separate storage (copy as of now):")
    for d in externals {
        let done = d.copiedBlocks ?? 0, total = max(d.copyTotalBlocks ?? 0, 1)
        let bar = d.copiedBlocks == nil ? "(file or map unreadable)" : progressBar(done: done, total: total) + "  \(done)/\(total) blocks"
        print("  " + pad(d.path, width) + "  " + bar + (d.kind == "independent" ? "  independent" : "") + "  " + d.externalFile!)
    }
}

/// CHAIN n.m in the disk table is chain n, position m (1 = oldest).
/// What the space policy dropped since the pool was opened (user.lunfs.on_full).
private func printDroppedSnapshots(_ r: StatusReport) {
    guard let count = r.snapshotsDroppedForSpace, count > 0 else { return }
    print("snapshots dropped for space since the pool was opened: \(count)\(count > (r.droppedSnapshots?.count ?? 0) ? " (the last \(r.droppedSnapshots?.count ?? 0) below)" : "")")
    let dateFormat = DateFormatter()
    dateFormat.dateFormat = "yyyy-MM-dd HH:mm:ss"
    for d in r.droppedSnapshots ?? [] {
        print("  \(dateFormat.string(from: Date(timeIntervalSince1970: Double(d.at))))  \(d.path) for a write to \(d.forDisk), \(formatSize(d.freedBytes)) freed")
    }
}

private func printChains(_ r: StatusReport) {
    guard !r.chains.isEmpty else { return }
    print("sharing chains (CHAIN n.m above: chain n, m-th oldest; reads of a shared segment follow the arrows):")
    for (n, chain) in r.chains.enumerated() { print("  \(n + 1): " + chain.joined(separator: " -> ")) }
}

/// "  1.2 GiB done, 3.0 GiB left, 140 MB/s, 22 s left" (rate and time only when measured).
func copyEstimateText(_ e: CopyEstimate) -> String {
    estimateText(done: e.bytesDone, left: e.bytesLeft, bytesPerSecond: e.bytesPerSecond, secondsLeft: e.secondsLeft)
}

/// The figures of a copy or job: bytes done and left, and the rate and time left when measured.
func estimateText(done: UInt64, left: UInt64, bytesPerSecond: Double?, secondsLeft: Double?) -> String {
    var text = "  \(formatSize(done)) done, \(formatSize(left)) left"
    if let rate = bytesPerSecond {
        text += String(format: ", %.0f MB/s", rate / 1e6)
        text += secondsLeft.map { String(format: ", %.0f s left", $0) } ?? ", time left unknown"
    } else {
        text += ", rate unknown (measured by the daemon)"
    }
    return text
}

/// "2 segments in Nw (writes wait), 1 invalid (map switch), I/O blocked for a snapshot of vm".
func frozenText(_ f: FrozenState) -> String {
    var parts: [String] = []
    if !f.noWriteSegments.isEmpty { parts.append("\(f.noWriteSegments.count) segments in Nw (writes wait, reads go on)") }
    if !f.invalidSegments.isEmpty { parts.append("\(f.invalidSegments.count) invalid (map switch)") }
    if let reason = f.blockedFor { parts.append("I/O blocked for \(reason)") }
    return parts.joined(separator: ", ")
}
