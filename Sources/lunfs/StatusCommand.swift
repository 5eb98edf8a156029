// `lunfs status POOL [--json]`: drives, capacity, used and free space, every disk with its
// size, allocation and RAID level, and each sharing chain drawn oldest to newest. It reads
// the last committed state, so it works on a mounted pool too.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import LunMount

struct StatusReport: Codable {
    struct Drive: Codable {
        var index: Int; var name: String; var available: Bool
        /// Present but stale (it missed writes): not read until a read-write open rebuilds it.
        var stale: Bool
    }
    struct Disk: Codable {
        var id: UInt32, path: String, sizeBytes: UInt64, allocatedBytes: UInt64, uniqueBytes: UInt64
        var sharedBytes: UInt64, reservedBytes: UInt64, raid: Int, createdAt: UInt64, hasImage: Bool
        var predecessor: String?, successor: String?
        /// disk, snapshot, snapclone or independent (see `user.lunfs.kind`).
        var kind: String
        /// The directory it lives in (nil: the pool's root).
        var parent: String?
        /// A snapclone's background copy, in segments.
        var copiedSegments: Int?, copyTotalSegments: Int?
        /// Its copy in bytes with rate and time left; its chain's frozen segments and blocking flag.
        var copy: CopyEstimate?, frozen: FrozenState?
        /// A snapshot on separate storage: its file, and its copy in blocks (live, from its map).
        var externalFile: String?, copiedBlocks: Int?, copyTotalBlocks: Int?
    }
    var pool: String
    var mounted: Bool
    var drives: [Drive]
    var capacityBytes: UInt64, usedBytes: UInt64, freeBytes: UInt64, reservedBytes: UInt64, rawUsedBytes: UInt64
    /// used + reserved + free: the size df shows for the mount.
    var usableBytes: UInt64
    var defaultRAID: Int
    var segmentSizeBytes: UInt64
    var mapMemoryBytes: Int
    var mapBytesPerAllocatedMiB: Double?
    var disks: [Disk]
    /// Each chain as paths, oldest snapshot first, the live disk last.
    var chains: [[String]]
    var notes: [String]
}

func buildStatus(_ pool: Pool, mounted: Bool) -> StatusReport {
    let infos = pool.disks()
    let byID = Dictionary(uniqueKeysWithValues: infos.map { ($0.id, $0) })
    func path(_ id: DiskID) -> String { pool.treePath(of: id) ?? "?" }
    let usage = pool.usage()
    let memory = pool.mapMemory()
    var chains: [[String]] = []
    for start in infos where start.hasImage && start.predecessor == nil && start.successor != nil {
        var chain: [String] = []
        var cur: DiskID? = start.id
        while let c = cur, let i = byID[c] { chain.append(path(c)); cur = i.successor }
        chains.append(chain)
    }
    return StatusReport(
        pool: pool.directory, mounted: mounted,
        drives: pool.driveStates().enumerated().map {
            .init(index: $0.offset, name: $0.element.name, available: $0.element.available,
                  stale: !$0.element.available && pool.staleDriveIndexes.contains($0.offset))
        },
        capacityBytes: usage.capacityBytes, usedBytes: usage.usedBytes, freeBytes: usage.freeBytes,
        reservedBytes: usage.reservedBytes, rawUsedBytes: usage.rawUsedBytes, usableBytes: usage.usableBytes, defaultRAID: Int(usage.defaultRAID.rawValue),
        segmentSizeBytes: usage.segmentSizeBytes, mapMemoryBytes: memory.bytes,
        mapBytesPerAllocatedMiB: memory.allocatedMiB > 0 ? Double(memory.bytes) / Double(memory.allocatedMiB) : nil,
        disks: infos.map { i in
            .init(id: i.id, path: path(i.id), sizeBytes: i.sizeBytes, allocatedBytes: i.allocatedBytes,
                  uniqueBytes: i.uniqueBytes, sharedBytes: i.sharedBytes, reservedBytes: i.reservedBytes,
                  raid: Int(i.raid.rawValue), createdAt: i.createdAt, hasImage: i.hasImage,
                  predecessor: i.predecessor.map(path), successor: i.successor.map(path),
                  kind: i.kind.rawValue, parent: i.parent.map(path),
                  copiedSegments: i.kind == .snapclone ? pool.copyProgress(i.id)?.copied : nil,
                  copyTotalSegments: i.kind == .snapclone ? pool.copyProgress(i.id)?.total : nil,
                  copy: snapcloneStatus(pool, i).copy, frozen: snapcloneStatus(pool, i).frozen,
                  externalFile: pool.externalFile(of: i.id), copiedBlocks: pool.externalCopyProgress(i.id)?.copied,
                  copyTotalBlocks: pool.externalCopyProgress(i.id)?.total)
        },
        chains: chains, notes: pool.openNotes)
}

func runStatus(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: [])
        guard parsed.positionals.count == 1 else {
            printError("usage: lunfs status POOL [--json]")
            return ExitCode.failure
        }
        let directory = parsed.positionals[0]
        let pool = try Pool.open(directory: directory, readOnly: true)
        let mounted = isLocked(directory)
        let report = buildStatus(pool, mounted: mounted)
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

/// Whether a daemon holds the pool's lock (the pool is mounted).
func isLocked(_ directory: String) -> Bool {
    let fd = open(directory + "/lock", O_RDWR | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    if flock(fd, LOCK_EX | LOCK_NB) == 0 { flock(fd, LOCK_UN); return false }
    return true
}

private func printStatus(_ r: StatusReport) {
    let missing = r.drives.filter { !$0.available }.count
    print("pool \(r.pool)\(r.mounted ? " (mounted; showing the last committed state)" : "")")
    let stale = r.drives.filter(\.stale).count
    print("drives: \(r.drives.count)\(missing == 0 ? ", all present" : (missing > stale ? ", \(missing - stale) MISSING" : "") + (stale > 0 ? ", \(stale) STALE" : ""))")
    for d in r.drives { print("  \(d.index)  \(d.name)\(d.available ? "" : d.stale ? "  STALE (missed writes or replaces a drive; not read until rebuilt)" : "  MISSING")") }
    print("usable \(formatSize(r.usableBytes)) at raid\(r.defaultRAID) (df's size): used \(formatSize(r.usedBytes)), reserved \(formatSize(r.reservedBytes)), free \(formatSize(r.freeBytes))")
    print("capacity \(formatSize(r.capacityBytes)) of segments; used \(formatSize(r.usedBytes)) by disks (\(formatSize(r.rawUsedBytes)) raw with redundancy); free \(formatSize(r.freeBytes)) at raid\(r.defaultRAID)\(r.reservedBytes > 0 ? "; reserved \(formatSize(r.reservedBytes))" : "")")
    let perMiB = r.mapBytesPerAllocatedMiB.map { String(format: "%.1f B per allocated MiB", $0) } ?? "nothing allocated"
    print("map memory \(formatSize(UInt64(r.mapMemoryBytes))) (\(perMiB))")
    for n in r.notes { print("note: \(n)") }
    guard !r.disks.isEmpty else { print("no disks"); return }
    let width = max(8, r.disks.map(\.path.count).max()!)
    func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
    print(pad("DISK", width) + "  " + pad("SIZE", 10) + "  " + pad("ALLOCATED", 10) + "  " + pad("UNIQUE", 10) + "  " + pad("SHARED", 10) + "  RAID   CREATED")
    let dateFormat = DateFormatter()
    dateFormat.dateFormat = "yyyy-MM-dd HH:mm:ss"
    for d in r.disks {
        let created = dateFormat.string(from: Date(timeIntervalSince1970: Double(d.createdAt)))
        let size = d.hasImage ? formatSize(d.sizeBytes) : "(no image)"
        print(pad(d.path, width) + "  " + pad(size, 10) + "  " + pad(formatSize(d.allocatedBytes), 10) + "  "
              + pad(formatSize(d.uniqueBytes), 10) + "  " + pad(formatSize(d.sharedBytes), 10) + "  raid\(d.raid)  \(created)"
              + (d.reservedBytes > 0 ? "  reserved \(formatSize(d.reservedBytes))" : ""))
    }
    let copies = r.disks.filter { $0.copiedSegments != nil }
    if !copies.isEmpty {
        print("snapclone copies (as of the last commit):")
        for d in copies {
            let done = d.copiedSegments!, total = max(d.copyTotalSegments!, 1)
            print("  " + pad(d.path, width) + "  " + progressBar(done: done, total: total) + "  \(done)/\(total) segments"
                  + (d.copy.map(copyEstimateText) ?? ""))
        }
    }
    for d in r.disks { if let f = d.frozen, !f.isQuiet { print("frozen: \(d.path): " + frozenText(f)) } }
    let externals = r.disks.filter { $0.externalFile != nil }
    if !externals.isEmpty {
        print("snapshots on separate storage (copy as of now):")
        for d in externals {
            let done = d.copiedBlocks ?? 0, total = max(d.copyTotalBlocks ?? 0, 1)
            let bar = d.copiedBlocks == nil ? "(file or map unreadable)" : progressBar(done: done, total: total) + "  \(done)/\(total) blocks"
            print("  " + pad(d.path, width) + "  " + bar + (d.kind == "independent" ? "  independent" : "") + "  " + d.externalFile!)
        }
    }
    if !r.chains.isEmpty {
        print("sharing chains (oldest first; reads of a shared segment follow the arrows):")
        for chain in r.chains { print("  " + chain.joined(separator: " -> ")) }
    }
}

/// "  1.2 GiB done, 3.0 GiB left, 140 MB/s, 22 s left" (rate and time only when measured).
func copyEstimateText(_ e: CopyEstimate) -> String {
    var text = "  \(formatSize(e.bytesDone)) done, \(formatSize(e.bytesLeft)) left"
    if let rate = e.bytesPerSecond {
        text += String(format: ", %.0f MB/s", rate / 1e6)
        text += e.secondsLeft.map { String(format: ", %.0f s left", $0) } ?? ", time left unknown"
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
