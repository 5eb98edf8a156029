// What `lunfs status` shows, as one Codable value: built from the pool by the daemon (the
// control socket's `status` verb, live figures) or by the CLI from a read-only open (the
// last commit). Each part comes from a small function, so that new fields (drive verbs,
// snapclone figures) go in without touching the others.
import Foundation
import LunEngine

public struct StatusReport: Codable {
    public struct Drive: Codable {
        public var index: Int; public var name: String; public var available: Bool
        /// Present but stale (it missed writes): not read until a read-write open rebuilds it.
        public var stale: Bool
        /// online, missing, stale or failed (DriveState).
        public var state: String?
        /// Data area (outside quorum space) and what stores use of it, with mirror copies and parity.
        public var sizeBytes: UInt64?, usedBytes: UInt64?
        /// Since the pool was opened (live figures only; a read-only open has seen none).
        public var readErrors: Int?, writeErrors: Int?, checksumErrors: Int?, repairs: Int?
        /// Holds a copy of the metadata; being emptied to be removed (`lunfs drive remove`).
        public var mirror: Bool?, draining: Bool?
        /// Its disk group (`drive add --group`).
        public var group: String? = nil
    }
    public struct Disk: Codable {
        public var id: UInt32, path: String, sizeBytes: UInt64, allocatedBytes: UInt64, uniqueBytes: UInt64
        public var sharedBytes: UInt64, reservedBytes: UInt64, raid: Int, createdAt: UInt64, hasImage: Bool
        public var predecessor: String?, successor: String?
        /// disk, snapshot, snapclone or independent (see `user.lunfs.kind`).
        public var kind: String
        /// The directory it lives in (nil: the pool's root).
        public var parent: String?
        /// A snapclone's background copy, in segments.
        public var copiedSegments: Int?, copyTotalSegments: Int?
        /// Its copy in bytes with rate and time left; its chain's frozen segments and blocking flag.
        public var copy: CopyEstimate?, frozen: FrozenState?
        /// A snapshot on separate storage: its file, and its copy in blocks (live, from its map).
        public var externalFile: String?, copiedBlocks: Int?, copyTotalBlocks: Int?
        /// Depth in the file tree (0 at the root); entries come in tree order.
        public var depth: Int?
        /// Which sharing chain (index into `chains`) and where in it (0 = oldest).
        public var chain: Int?, chainPosition: Int?
        /// The space policy: `drop-snapshots` (nil for the default, fail), and expendable (nil: no).
        public var onFull: String? = nil, expendable: Bool? = nil
        /// Its disk group (`user.lunfs.group`).
        public var group: String? = nil
    }
    /// A snapshot the space policy deleted (live figures, since the pool was opened).
    public struct DroppedSnapshot: Codable {
        public var path: String, forDisk: String, at: UInt64, freedBytes: UInt64
    }
    /// What drives out of service put at risk (Pool.redundancyRisk).
    public struct Health: Codable {
        public var degraded: Bool
        public var degradedStores: Int, unreadableStores: Int
        /// Disks (tree paths) whose data lost its redundancy, and with data no longer readable.
        public var disksWithoutRedundancy: [String], disksWithUnreadableData: [String]
    }
    /// A long job of the pool (leveling, emptying a drive, rebuild), as it runs now.
    public struct Job: Codable {
        /// leveling, evacuate (a drive being emptied) or rebuild.
        public var kind: String
        /// The drive it is about, if one.
        public var drive: Int?
        public var bytesDone: UInt64, bytesTotal: UInt64, bytesLeft: UInt64
        /// Since the job started; nil until measured.
        public var bytesPerSecond: Double?, secondsLeft: Double?
    }
    public var pool: String
    public var mounted: Bool
    /// True when the daemon answered (figures as they are now), false for the last commit.
    public var live: Bool?
    public var drives: [Drive]
    public var health: Health?
    public var capacityBytes: UInt64, usedBytes: UInt64, freeBytes: UInt64, reservedBytes: UInt64, rawUsedBytes: UInt64
    /// used + reserved + free: the size df shows for the mount.
    public var usableBytes: UInt64
    public var defaultRAID: Int
    public var segmentSizeBytes: UInt64
    public var mapMemoryBytes: Int
    public var mapBytesPerAllocatedMiB: Double?
    public var disks: [Disk]
    /// Each chain as paths, oldest snapshot first, the live disk last.
    public var chains: [[String]]
    public var notes: [String]
    /// Snapshots the space policy dropped since the pool was opened, and the last few (live only).
    public var snapshotsDroppedForSpace: Int? = nil
    public var droppedSnapshots: [DroppedSnapshot]? = nil
    /// Jobs running in the daemon (live reports only).
    public var jobs: [Job]?
    /// What leveling has left; nil when the pool is level.
    public var leveling: Leveling?
    public struct Leveling: Codable {
        /// Bytes of PSEGs still to move, and drives being emptied that still hold some.
        public var backlogBytes: UInt64, draining: [Int]
        /// No move helps under the RAID rules until drives change: leveling rests.
        public var waiting: Bool
    }
    /// Partial segments (copy on first write in blocks) and the bytes their fill has left.
    public var partialSegments: Int? = nil
    public var partialBytesToFill: UInt64? = nil
}

/// The whole report; `live` says whether the pool is the daemon's own (live figures).
public func buildStatus(_ pool: Pool, mounted: Bool, live: Bool = false) -> StatusReport {
    let usage = pool.usage()
    let memory = pool.mapMemory()
    let infos = pool.disks()
    let chains = statusChains(pool, infos)
    var report = StatusReport(
        pool: pool.directory, mounted: mounted, live: live,
        drives: statusDrives(pool, live: live), health: statusHealth(pool),
        capacityBytes: usage.capacityBytes, usedBytes: usage.usedBytes, freeBytes: usage.freeBytes,
        reservedBytes: usage.reservedBytes, rawUsedBytes: usage.rawUsedBytes, usableBytes: usage.usableBytes, defaultRAID: Int(usage.defaultRAID.rawValue),
        segmentSizeBytes: usage.segmentSizeBytes, mapMemoryBytes: memory.bytes,
        mapBytesPerAllocatedMiB: memory.allocatedMiB > 0 ? Double(memory.bytes) / Double(memory.allocatedMiB) : nil,
        disks: statusDisks(pool, infos, chains: chains), chains: chains.map { $0.map { pool.treePath(of: $0) ?? "?" } },
        notes: pool.openNotes, jobs: statusJobs(pool), leveling: statusLeveling(pool))
    if live {
        let dropped = pool.droppedSnapshots()
        report.snapshotsDroppedForSpace = dropped.count
        report.droppedSnapshots = dropped.recent.map { .init(path: $0.path, forDisk: $0.forDisk, at: $0.at, freedBytes: $0.freedBytes) }
    }
    let partial = pool.partialSegmentProgress
    report.partialSegments = partial.segments
    report.partialBytesToFill = partial.bytesLeft
    return report
}

/// Leveling's backlog, when the pool is not level.
func statusLeveling(_ pool: Pool) -> StatusReport.Leveling? {
    let backlog = pool.levelingBacklog()
    guard !backlog.isLevel else { return nil }
    return StatusReport.Leveling(backlogBytes: UInt64(backlog.psegs) * pool.poolGeometry.psegSizeBytes, draining: backlog.draining,
                                 waiting: pool.levelingBlocked())
}

/// Drives with state, size, use and (live) error counts.
func statusDrives(_ pool: Pool, live: Bool) -> [StatusReport.Drive] {
    let listing = Dictionary(uniqueKeysWithValues: pool.driveListing().map { ($0.index, $0) })
    return pool.driveStatuses().map { d in
        StatusReport.Drive(index: d.index, name: d.name, available: d.state == .online, stale: d.state == .stale,
                           state: d.state.rawValue, sizeBytes: d.sizeBytes, usedBytes: d.usedBytes,
                           readErrors: live ? d.errors.readErrors : nil, writeErrors: live ? d.errors.writeErrors : nil,
                           checksumErrors: live ? d.errors.checksumErrors : nil, repairs: live ? d.errors.repairs : nil,
                           mirror: listing[d.index]?.isMirror, draining: listing[d.index]?.isDraining,
                           group: listing[d.index]?.group)
    }
}

/// Degraded or not, and which disks that touches.
func statusHealth(_ pool: Pool) -> StatusReport.Health {
    let risk = pool.redundancyRisk()
    func paths(_ ids: [DiskID]) -> [String] { ids.map { pool.treePath(of: $0) ?? "?" }.sorted() }
    return StatusReport.Health(degraded: risk.isDegraded || pool.driveStatuses().contains { $0.state != .online },
                               degradedStores: risk.degradedStores, unreadableStores: risk.unreadableStores,
                               disksWithoutRedundancy: paths(risk.disksWithoutRedundancy),
                               disksWithUnreadableData: paths(risk.disksWithUnreadableData))
}

/// Each sharing chain as disk ids, oldest first.
func statusChains(_ pool: Pool, _ infos: [DiskInfo]) -> [[DiskID]] {
    let byID = Dictionary(uniqueKeysWithValues: infos.map { ($0.id, $0) })
    var chains: [[DiskID]] = []
    for start in infos where start.hasImage && start.predecessor == nil && start.successor != nil {
        var chain: [DiskID] = []
        var cur: DiskID? = start.id
        while let c = cur, let i = byID[c], chain.count <= infos.count { chain.append(c); cur = i.successor }
        chains.append(chain)
    }
    return chains
}

/// Every disk in file-tree order (parents before their snapshots, names sorted), with its
/// depth and place in its sharing chain.
func statusDisks(_ pool: Pool, _ infos: [DiskInfo], chains: [[DiskID]]) -> [StatusReport.Disk] {
    func path(_ id: DiskID) -> String { pool.treePath(of: id) ?? "?" }
    var place: [DiskID: (chain: Int, position: Int)] = [:]
    for (c, chain) in chains.enumerated() { for (p, id) in chain.enumerated() { place[id] = (c, p) } }
    let children = Dictionary(grouping: infos, by: \.parent)
    var out: [StatusReport.Disk] = []
    func visit(_ parent: DiskID?, depth: Int) {
        for i in (children[parent] ?? []).sorted(by: { $0.name < $1.name }) {
            let copy = i.kind == .snapclone ? pool.copyProgress(i.id) : nil
            let snapclone = snapcloneStatus(pool, i)
            let external = pool.externalCopyProgress(i.id)
            out.append(.init(id: i.id, path: path(i.id), sizeBytes: i.sizeBytes, allocatedBytes: i.allocatedBytes,
                             uniqueBytes: i.uniqueBytes, sharedBytes: i.sharedBytes, reservedBytes: i.reservedBytes,
                             raid: Int(i.raid.rawValue), createdAt: i.createdAt, hasImage: i.hasImage,
                             predecessor: i.predecessor.map(path), successor: i.successor.map(path),
                             kind: i.kind.rawValue, parent: i.parent.map(path),
                             copiedSegments: copy?.copied, copyTotalSegments: copy?.total,
                             copy: snapclone.copy, frozen: snapclone.frozen,
                             externalFile: pool.externalFile(of: i.id), copiedBlocks: external?.copied,
                             copyTotalBlocks: external?.total,
                             depth: depth, chain: place[i.id]?.chain, chainPosition: place[i.id]?.position,
                             onFull: i.onFull == .fail ? nil : i.onFull.rawValue, expendable: i.expendable ? true : nil,
                             group: i.group))
            if depth < 256 { visit(i.id, depth: depth + 1) }
        }
    }
    visit(nil, depth: 0)
    return out
}

/// The pool's running jobs with their rate since they started and the time left at it.
func statusJobs(_ pool: Pool) -> [StatusReport.Job]? {
    let jobs = pool.runningJobs()
    guard !jobs.isEmpty else { return nil }
    let now = Date()
    return jobs.map { j in
        let rate = now.timeIntervalSince(j.startedAt) >= 1 && j.bytesDone > 0 ? j.rate(now: now) : nil
        return StatusReport.Job(kind: j.kind.rawValue, drive: j.drive, bytesDone: j.bytesDone, bytesTotal: j.bytesTotal,
                                bytesLeft: j.bytesLeft, bytesPerSecond: rate, secondsLeft: rate.map { Double(j.bytesLeft) / $0 })
    }
}
