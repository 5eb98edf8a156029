// The engine's front door: a pool of drives holding thin logical disks and their snapshots.
// Everything above the engine (FUSE, CLI, tests) goes through this class. It owns the locks:
// a family lock per sharing chain (I/O shared, map changes exclusive), `commitLock` to
// serialise commits, and `stateLock` around the metadata; always taken in that order.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

public final class Pool: @unchecked Sendable {
    public let directory: String
    public let readOnly: Bool
    let log: @Sendable (String) -> Void
    let drives: DriveSet
    let state: PoolState
    let storeIO: StoreIO
    let metadata: MetadataStore
    let stateLock = Lock()
    let commitLock = Lock()
    private var lockFD: Int32 = -1
    private var closed = false
    private var committer: Thread?
    private let committerStop = NSCondition()
    private var committerStopping = false
    /// Commits made since the pool was opened (journal records and checkpoints).
    public var commitCount: Int { commits.load(ordering: .relaxed) }
    private let commits = Atomic<Int>(0)
    /// What recovery noticed when the pool was opened (damaged copies it worked around).
    public private(set) var openNotes: [String] = []

    /// Seconds between background commits of a mounted pool, like ext4's commit interval.
    public static let backgroundCommitSeconds = 5.0
    static let driveListName = "drives.list"
    static let lockName = "lock"

    init(directory: String, readOnly: Bool, drives: DriveSet, state: PoolState, metadata: MetadataStore,
         log: @escaping @Sendable (String) -> Void) {
        self.directory = directory
        self.readOnly = readOnly
        self.drives = drives
        self.state = state
        self.metadata = metadata
        self.log = log
        self.storeIO = StoreIO(table: state.rsds, drives: drives, geometry: state.geometry)
    }

    var geometry: PoolGeometry { state.geometry }
    var defaultRAID: RAIDLevel { metadata.superblock.defaultRAID }

    // MARK: Create and open

    /// True when `directory` holds a pool (its drive list exists).
    public static func exists(directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/" + driveListName)
    }

    /// Creates the pool directory's drives, formats them and opens the pool.
    /// The directory may be missing or empty; anything else is `.exists`.
    public static func create(directory: String, options: PoolOptions,
                              log: @escaping @Sendable (String) -> Void = { _ in }) throws(LunError) -> Pool {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: directory, isDirectory: &isDir) {
            guard isDir.boolValue else { throw .invalid("\(directory) is a file, not a pool directory") }
            let entries = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
            guard entries.filter({ $0 != "lunfs.log" }).isEmpty else { throw .exists("\(directory) is not empty") }
        } else {
            do { try fm.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
                throw .invalid("cannot create \(directory): \(error.localizedDescription)")
            }
        }
        var paths = options.drivePaths
        var devices: [BlockDevice] = []
        if paths.isEmpty {
            guard (1...64).contains(options.driveCount) else { throw .invalid("drive count must be 1 to 64") }
            for i in 0..<options.driveCount {
                let name = String(format: "drive-%02d.img", i)
                devices.append(try FileDevice.createFile(path: directory + "/" + name, sizeBytes: options.driveSizeBytes))
                paths.append(name)
            }
        } else {
            for p in paths { devices.append(try FileDevice(path: p)) }
        }
        let level = options.raid ?? PoolOptions.defaultRAID(drives: devices.count)
        try format(devices: devices, raid: level, psegSizeBytes: options.psegSizeBytes)
        let list = zip(paths, devices).map { "\($0) \($1.sizeBytes)" }.joined(separator: "\n") + "\n"
        guard fm.createFile(atPath: directory + "/" + driveListName, contents: Data(list.utf8)) else {
            throw .io("cannot write \(directory)/\(driveListName)")
        }
        devices.removeAll()
        return try open(directory: directory, log: log)
    }

    /// Writes a new, empty pool onto `devices` (files, block devices or simulated drives).
    public static func format(devices: [BlockDevice], raid: RAIDLevel, psegSizeBytes: UInt64 = PoolGeometry.defaultPSEGSizeBytes) throws(LunError) {
        guard !devices.isEmpty, devices.count <= 255 else { throw .invalid("a pool needs 1 to 255 drives") }
        let needed: Int = raid == .raid5 ? 5 : raid == .raid1 ? 2 : 1
        guard devices.count >= needed else { throw .invalid("\(raid) needs at least \(needed) drives, the pool has \(devices.count)") }
        let smallest = devices.map(\.sizeBytes).min()!
        let geometry = PoolGeometry(psegSizeBytes: psegSizeBytes,
                                    quorumPSEGs: PoolGeometry.defaultQuorumPSEGs(driveSizeBytes: smallest, psegSizeBytes: psegSizeBytes))
        guard geometry.isValid, smallest / psegSizeBytes > UInt64(geometry.quorumPSEGs) else {
            throw .invalid("drives of \(smallest) bytes are too small: each needs more than \(geometry.quorumPSEGs) segments of \(psegSizeBytes) bytes")
        }
        var uuid = [UInt8](repeating: 0, count: 16)
        for i in 0..<16 { uuid[i] = UInt8.random(in: 0...255) }
        let mirrors = (0..<min(3, devices.count)).map(UInt32.init)
        let template = Superblock(poolUUID: uuid, generation: 0, driveIndex: 0, driveCount: UInt32(devices.count),
                                  geometry: geometry, defaultRAID: raid, mirrors: mirrors, checkpointSlot: 0,
                                  checkpointSeq: 0, checkpointLength: 0, checkpointCRC: 0, journalStart: 0,
                                  createdAt: UInt64(time(nil)), driveSizeBytes: 0)
        let drives = DriveSet(devices: devices, log: { _ in })
        let empty = PoolState(geometry: geometry, psegCount: devices.map { Int($0.sizeBytes / psegSizeBytes) })
        _ = try MetadataStore.format(drives: drives, template: template, sizes: devices.map(\.sizeBytes),
                                     checkpoint: empty.encodeCheckpoint())
    }

    /// Opens an existing pool directory: picks the newest good metadata copy, replays the
    /// journal and takes the pool lock (`.busy` if another process holds it). A read-only open
    /// takes no lock and writes nothing: it shows the last committed state of a mounted pool.
    public static func open(directory: String, readOnly: Bool = false,
                            log: @escaping @Sendable (String) -> Void = { _ in }) throws(LunError) -> Pool {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else { throw .notFound("no pool at \(directory)") }
        guard isDir.boolValue else { throw .invalid("\(directory) is a file, not a pool directory") }
        guard let list = try? String(contentsOfFile: directory + "/" + driveListName, encoding: .utf8) else {
            throw .notFound("\(directory) holds no pool (no \(driveListName))")
        }
        var lockFD: Int32 = -1
        if !readOnly {
            lockFD = Glibc.open(directory + "/" + lockName, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard lockFD >= 0 else { throw .io("cannot open \(directory)/\(lockName)") }
            if flock(lockFD, LOCK_EX | LOCK_NB) != 0 {
                let holder = (try? String(contentsOfFile: directory + "/" + lockName, encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
                Glibc.close(lockFD)
                throw .busy("pool \(directory) is in use by another lunfs process (pid \(holder))")
            }
            let pid = "\(getpid())\n"
            _ = ftruncate(lockFD, 0)
            _ = pid.withCString { pwrite(lockFD, $0, strlen($0), 0) }
        }
        var devices: [BlockDevice?] = []
        var sizes: [UInt64] = []
        var notes: [String] = []
        for line in list.split(separator: "\n") where !line.isEmpty {
            let parts = line.split(separator: " ")
            let path = String(parts[0])
            let full = path.hasPrefix("/") ? path : directory + "/" + path
            sizes.append(parts.count > 1 ? UInt64(parts[1]) ?? 0 : 0)
            do { devices.append(try FileDevice(path: full)) } catch {
                notes.append("drive \(devices.count) (\(full)) is missing: \(error)")
                devices.append(nil)
            }
        }
        do {
            let pool = try open(devices: devices, sizes: sizes, directory: directory, readOnly: readOnly, log: log)
            pool.lockFD = lockFD
            pool.openNotes = notes + pool.openNotes
            for n in notes { log(n) }
            return pool
        } catch {
            if lockFD >= 0 { Glibc.close(lockFD) }
            throw error
        }
    }

    /// Opens a pool on devices (nil for a missing drive); `sizes` gives every drive's size,
    /// needed for the missing ones. Used directly by tests on simulated drives.
    public static func open(devices: [BlockDevice?], sizes: [UInt64]? = nil, directory: String = "(memory)", readOnly: Bool = false,
                            log: @escaping @Sendable (String) -> Void = { _ in }) throws(LunError) -> Pool {
        let drives = DriveSet(devices: devices, log: log)
        let recovered = try MetadataStore.recover(drives: drives)
        let sb = recovered.superblock
        guard Int(sb.driveCount) == devices.count else {
            throw .corrupt("the pool has \(sb.driveCount) drives, \(devices.count) were given")
        }
        let geometry = sb.geometry
        let driveSizes = (0..<devices.count).map { i in devices[i]?.sizeBytes ?? sizes?[i] ?? 0 }
        let state = PoolState(geometry: geometry, psegCount: driveSizes.map { Int($0 / geometry.psegSizeBytes) })
        try state.loadCheckpoint(recovered.checkpoint)
        for record in recovered.records { try state.replay(record) }
        try state.rebuildDerivedState()
        state.journal = ByteWriter()
        state.journalOpCount = 0
        let metadata = MetadataStore(drives: drives, superblock: sb, nextSeq: recovered.lastSeq + 1,
                                     writePosition: recovered.journalEnd)
        let pool = Pool(directory: directory, readOnly: readOnly, drives: drives, state: state, metadata: metadata, log: log)
        pool.openNotes = recovered.notes
        for n in recovered.notes { log(n) }
        if !readOnly {
            let stale = (0..<min(64, devices.count)).filter { sb.staleDrives & (1 << UInt64($0)) != 0 && devices[$0] != nil }
            if !stale.isEmpty {
                let rebuilt = pool.rebuildStaleDrives(stale)
                pool.openNotes.append("drives \(stale) were out of service when the pool was last written; rebuilt \(rebuilt) chunks on them from redundancy")
            }
            if !sb.isClean {
                let fixed = pool.resynchronizeRedundancy()
                if fixed > 0 { pool.openNotes.append("after an unclean shutdown, \(fixed) mirror or parity chunks were brought back in step") }
            }
            // A fresh checkpoint puts every mirror back in step and empties the journal.
            try pool.commitLock.withLock { () throws(LunError) in try pool.checkpointLocked() }
            log("opened pool \(directory): \(state.disks.count) nodes, \(recovered.records.count) journal records replayed")
        }
        return pool
    }

    // MARK: Commit

    /// Makes every completed write and every metadata change durable (fsync of any image).
    public func commit() throws(LunError) {
        guard !readOnly else { return }
        try commitLock.withLock { () throws(LunError) in try commitLocked() }
    }

    func commitLocked() throws(LunError) {
        stateLock.lock()
        let payload = state.journal.bytes
        let freed = state.pendingFree
        let tooBig = !metadata.fits(recordBytes: metadata.recordSize(payloadBytes: payload.count))
        if tooBig {
            defer { stateLock.unlock() }
            try checkpointWithStateLocked()
            return
        }
        state.journal = ByteWriter(capacity: 4096)
        state.journalOpCount = 0
        state.pendingFree = []
        // Until the record is durable, a write to a segment it unshares must still wait.
        state.unsharedInFlight = state.pendingUnshared
        state.pendingUnshared = []
        stateLock.unlock()
        do {
            // Data first: every op in the record was logged after its data writes completed.
            try drives.syncDirty()
            if !payload.isEmpty { try metadata.append(payload) }
        } catch {
            stateLock.withLock {
                var w = ByteWriter(capacity: payload.count + state.journal.bytes.count)
                w.raw(payload); w.raw(state.journal.bytes)
                state.journal = w
                state.pendingFree = freed + state.pendingFree
                state.pendingUnshared.formUnion(state.unsharedInFlight)
                state.unsharedInFlight = []
            }
            log("commit failed: \(error)")
            throw error
        }
        commits.add(1, ordering: .relaxed)
        stateLock.withLock {
            state.unsharedInFlight = []
            for f in freed { state.releaseRSEG(store: f.store, rseg: f.rseg) }
        }
        // A drive that left service may hold the only copy of writes that returned but were
        // never synced (syncDirty skips it). Only a checkpoint recording it as stale makes that
        // safe, so until one succeeds the flag stays set and every commit tries again and
        // fails: an fsync must not return success for bytes that are durable nowhere.
        let serviceChanged = drives.serviceChanged.value.exchange(false, ordering: .acquiringAndReleasing)
        if serviceChanged || metadata.journalBytesSinceCheckpoint * 2 > metadata.layout.journalCapacity {
            do { try checkpointLocked() } catch {
                if serviceChanged { drives.serviceChanged.value.store(true, ordering: .releasing) }
                throw error
            }
        }
    }

    /// Writes the whole state as a checkpoint. Caller holds `commitLock`.
    func checkpointLocked(clean: Bool = false) throws(LunError) {
        stateLock.lock()
        defer { stateLock.unlock() }
        try checkpointWithStateLocked(clean: clean)
    }

    private func checkpointWithStateLocked(clean: Bool = false) throws(LunError) {
        try drives.syncDirty()
        let payload = state.encodeCheckpoint()
        try metadata.writeCheckpoint(payload, clean: clean)
        commits.add(1, ordering: .relaxed)
        let freed = state.pendingFree
        state.journal = ByteWriter(capacity: 4096)
        state.journalOpCount = 0
        state.pendingFree = []
        state.pendingUnshared = []
        // Releasing may empty stores; their freeStore ops go into the next record.
        for f in freed { state.releaseRSEG(store: f.store, rseg: f.rseg) }
    }

    /// Starts committing every few seconds in the background (the mounted daemon does this).
    public func startBackgroundCommits(intervalSeconds: Double = Pool.backgroundCommitSeconds) {
        guard !readOnly, committer == nil else { return }
        let t = Thread { [weak self] in
            while let self {
                self.committerStop.lock()
                if !self.committerStopping { _ = self.committerStop.wait(until: Date(timeIntervalSinceNow: intervalSeconds)) }
                let stop = self.committerStopping
                self.committerStop.unlock()
                if stop { return }
                do { try self.commit() } catch { self.log("background commit failed: \(error)") }
            }
        }
        t.name = "lunfs-commit"
        committer = t
        t.start()
    }

    /// Commits everything and releases the drives and the lock. The pool is unusable after.
    public func close() throws(LunError) {
        if closed { return }
        committerStop.lock()
        committerStopping = true
        committerStop.broadcast()
        committerStop.unlock()
        if !readOnly {
            // The last checkpoint says "clean": the next open can skip the resync.
            try commitLock.withLock { () throws(LunError) in
                try commitLocked()
                try checkpointLocked(clean: true)
            }
        }
        closed = true
        if lockFD >= 0 { Glibc.close(lockFD); lockFD = -1 }
    }

    deinit {
        if lockFD >= 0 { Glibc.close(lockFD) }
    }

    // MARK: Looking things up

    func now() -> UInt64 { UInt64(time(nil)) }

    /// The disk with `id`, or `.notFound`/`.stale`.
    func liveDisk(_ id: DiskID) throws(LunError) -> Disk {
        try stateLock.withLock { () throws(LunError) -> Disk in
            guard let d = state.disk(id) else { throw .stale("disk \(id) no longer exists") }
            return d
        }
    }

    func checkWritable() throws(LunError) {
        if readOnly { throw .notPermitted("the pool is open read-only") }
    }
}
