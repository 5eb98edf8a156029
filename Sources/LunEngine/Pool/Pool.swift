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
    /// Where each snapclone's background copy goes on (segment number); memory only.
    let copyCursors = Mutex<[DiskID: Int]>([:])
    /// A snapclone's copy holds the chain's I/O for its last pass once at most this many
    /// segments are left (the M of 003 Fig. 15d).
    public var quiescedCopySegments = 16
    /// How long a snapclone's last pass waits for the chain's I/O to drain (the blocking flag).
    public var lastPassQuiesceSeconds = 5.0
    /// Where a snapclone's predecessor gets its copies: on the write path or in a second pass.
    public var snapcloneVariant = SnapcloneVariant.secondPass
    /// Snapshots dropped for space, and who is told (SpacePolicy.swift); memory only.
    let spacePolicy = SpacePolicyState()
    /// The background copier of the mounted pool, if started.
    var snapcloneCopier: SnapcloneCopier?
    /// Copy on first write in blocks (partial segments, docs/DESIGN.md section 8); off, a
    /// first write copies the whole segment. Partial segments already made stay readable.
    public var blockCopyOnWrite = PoolOptions().blockCopyOnWrite
    /// The background fill of partial segments of the mounted pool, if started.
    var segmentFiller: SegmentFiller?
    /// Snapshots on separate storage: their open files and their background copy (External/).
    let externals = ExternalSnapshotRegistry()
    /// Rebuilds and drive evacuations, and the lock of PSEG moves (Pool/PoolJobs.swift).
    let jobs = PoolJobs()
    /// Added to the write-intent set's clock, so that a test can age the set without waiting.
    let intentClockOffset = Mutex<Double>(0)
    /// What recovery noticed when the pool was opened (damaged copies it worked around).
    public private(set) var openNotes: [String] = []
    /// What a read-write open changed to bring the pool back in step (rebuilt drives, resync,
    /// drive list put in order, rewritten metadata), for `lunfs check --repair`.
    public private(set) var repairs: [String] = []
    /// For each slot, the position in the list of drives given to `open` that fills it (the
    /// drive list may name the drives out of order).
    private(set) var slotOrigins: [Int] = []
    /// Drives present but stale (they missed writes) and out of service until rebuilt.
    public private(set) var staleDriveIndexes: Set<Int> = []
    /// Drives this open found stale and rebuilt completely, so back in service.
    public private(set) var rebuiltStaleDriveIndexes: Set<Int> = []
    /// Drive files flock()ed while the pool is open read-write.
    var lockedDrives: [FileDevice] = []
    /// drives.list, one line per slot (nil for a pool on devices given by a test).
    var driveListLines: [String]?
    /// Serialises changes of the drive set (Pool+Drives.swift); taken before `commitLock`.
    let membershipLock = Lock()
    /// The background leveling of a mounted pool (LevelingJob.swift).
    let levelingState = Mutex(LevelingState())

    /// Seconds between background commits of a mounted pool, like ext4's commit interval.
    public static let backgroundCommitSeconds = 5.0
    static let driveListName = "drives.list"
    static let lockName = "lock"

    init(directory: String, readOnly: Bool, drives: DriveSet, driveSizes: [UInt64], state: PoolState, metadata: MetadataStore,
         log: @escaping @Sendable (String) -> Void) {
        self.directory = directory
        self.readOnly = readOnly
        self.drives = drives
        self.state = state
        self.metadata = metadata
        self.log = log
        let checksums = BlockChecksums(drives: drives, driveSizes: driveSizes, psegSizeBytes: state.geometry.psegSizeBytes)
        self.storeIO = StoreIO(table: state.rsds, checksums: checksums, geometry: state.geometry, repairs: !readOnly)
    }

    var geometry: PoolGeometry { state.geometry }
    var defaultRAID: RAIDLevel { metadata.superblock.defaultRAID }

    // MARK: Create and open

    /// True when `directory` holds a pool (its drive list exists).
    public static func exists(directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/" + driveListName)
    }

    /// Creates the pool directory's drives, formats them and opens the pool.
    /// The directory may be missing (its parent must exist) or empty; anything else is `.exists`. A drive named by
    /// `options.drivePaths` that holds a lunfs superblock is refused (`.exists`) unless
    /// `options.force`; one opened by another process (its pool is open) always (`.busy`).
    /// A create that fails removes the files and directory it made.
    public static func create(directory: String, options: PoolOptions,
                              log: @escaping @Sendable (String) -> Void = { _ in }) throws(LunError) -> Pool {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        var made: [String] = []
        var madeDirectory = false
        if fm.fileExists(atPath: directory, isDirectory: &isDir) {
            guard isDir.boolValue else { throw .invalid("\(directory) is a file, not a pool directory") }
            let entries = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
            guard entries.filter({ $0 != "lunfs.log" }).isEmpty else { throw .exists("\(directory) is not empty") }
        } else {
            // Never its parents: a mistyped path, or a drive directory whose file system is
            // not mounted yet, must not turn into a new pool somewhere unexpected.
            do { try fm.createDirectory(atPath: directory, withIntermediateDirectories: false) } catch {
                throw .invalid("cannot create \(directory): \(error.localizedDescription)")
            }
            madeDirectory = true
        }
        do {
            var paths = options.drivePaths
            var devices: [BlockDevice] = []
            if paths.isEmpty {
                guard (1...64).contains(options.driveCount) else { throw LunError.invalid("drive count must be 1 to 64") }
                for i in 0..<options.driveCount {
                    let name = String(format: "drive-%02d.img", i)
                    made.append(directory + "/" + name)
                    devices.append(try FileDevice.createFile(path: directory + "/" + name, sizeBytes: options.driveSizeBytes))
                    paths.append(name)
                }
            } else {
                var checked: [FileDevice] = []
                defer { for device in checked { device.unlock() } }
                for p in paths {
                    let device = try FileDevice(path: p)
                    guard device.lockExclusive() else {
                        throw LunError.busy("drive \(p) is in use by another process (a lunfs pool on it is open); not formatting it")
                    }
                    checked.append(device)
                    if let sb = DriveIdentity.read(device), !options.force {
                        let uuid = sb.poolUUID.map { String(format: "%02x", $0) }.joined()
                        throw LunError.exists("drive \(p) holds lunfs pool \(uuid) (drive \(sb.driveIndex) of \(sb.driveCount)); use --force to format it anyway")
                    }
                    devices.append(device)
                }
            }
            let level = options.raid ?? PoolOptions.defaultRAID(drives: devices.count)
            try format(devices: devices, raid: level, psegSizeBytes: options.psegSizeBytes)
            let list = zip(paths, devices).map { "\($0) \($1.sizeBytes)" }.joined(separator: "\n") + "\n"
            made.append(directory + "/" + driveListName)
            guard fm.createFile(atPath: directory + "/" + driveListName, contents: Data(list.utf8)) else {
                throw LunError.io("cannot write \(directory)/\(driveListName)")
            }
            for case let device as FileDevice in devices { device.unlock() }
            devices.removeAll()
            made.append(directory + "/" + lockName)
            let pool = try open(directory: directory, log: log)
            pool.snapcloneVariant = options.snapcloneVariant
            pool.blockCopyOnWrite = options.blockCopyOnWrite
            return pool
        } catch {
            for path in made { unlink(path) }
            if madeDirectory { rmdir(directory) }
            log("creating pool \(directory) failed; removed the files it made: \(error)")
            throw error as! LunError
        }
    }

    /// Writes a new, empty pool onto `devices` (files, block devices or simulated drives).
    public static func format(devices: [BlockDevice], raid: RAIDLevel, psegSizeBytes: UInt64 = PoolGeometry.defaultPSEGSizeBytes) throws(LunError) {
        guard !devices.isEmpty, devices.count <= DriveSet.maxDrives else { throw .invalid("a pool needs 1 to \(DriveSet.maxDrives) drives") }
        let needed: Int = raid == .raid5 ? 5 : raid == .raid1 ? 2 : 1
        guard devices.count >= needed else { throw .invalid("\(raid) needs at least \(needed) drives, the pool has \(devices.count)") }
        let smallest = devices.map(\.sizeBytes).min()!
        let geometry = PoolGeometry(psegSizeBytes: psegSizeBytes,
                                    quorumPSEGs: PoolGeometry.defaultQuorumPSEGs(driveSizeBytes: smallest, psegSizeBytes: psegSizeBytes))
        guard geometry.isValid,
              ChecksumArea.usablePSEGs(driveSizeBytes: smallest, psegSizeBytes: psegSizeBytes) > geometry.quorumPSEGs else {
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
        let empty = PoolState(geometry: geometry, psegCount: devices.map {
            ChecksumArea.usablePSEGs(driveSizeBytes: $0.sizeBytes, psegSizeBytes: psegSizeBytes)
        })
        _ = try MetadataStore.format(drives: drives, template: template, sizes: devices.map(\.sizeBytes),
                                     checkpoint: empty.encodeCheckpoint())
    }

    /// Opens an existing pool directory: picks the newest good metadata copy, replays the
    /// journal and takes the pool lock (`.busy` if another process holds it). A read-only open
    /// takes no lock and writes nothing: it shows the last committed state of a mounted pool.
    /// `repair` (check --repair, read-write) may also rebuild superblocks damaged on every copy.
    public static func open(directory: String, readOnly: Bool = false, repair: Bool = false,
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
        var lines: [String] = []
        var notes: [String] = []
        var locked: [FileDevice] = []
        func unlockAll() { for device in locked { device.unlock() } }
        for line in list.split(separator: "\n") where !line.isEmpty {
            let parts = line.split(separator: " ")
            let path = String(parts[0])
            let full = path.hasPrefix("/") ? path : directory + "/" + path
            lines.append(String(line))
            sizes.append(parts.count > 1 ? UInt64(parts[1]) ?? 0 : 0)
            // A removed drive's slot (Pool+Drives.swift).
            if path == "-" { devices.append(nil); continue }
            do {
                let device = try FileDevice(path: full)
                // A drive opened read-write by another process (another pool's daemon) is busy.
                if !readOnly {
                    guard device.lockExclusive() else {
                        unlockAll()
                        if lockFD >= 0 { Glibc.close(lockFD) }
                        throw LunError.busy("drive \(devices.count) (\(full)) is in use by another process")
                    }
                    locked.append(device)
                }
                devices.append(device)
            } catch let error as LunError {
                if case .busy = error { throw error }
                notes.append("drive \(devices.count) (\(full)) is missing: \(error)")
                devices.append(nil)
            } catch { preconditionFailure("\(error)") }
        }
        do {
            let pool = try open(devices: devices, sizes: sizes, directory: directory, readOnly: readOnly, repair: repair, log: log)
            pool.lockFD = lockFD
            // Drives the pool does not count (an addition that never committed, a removed
            // drive's leftover line) are let go.
            let held = Set((0..<pool.drives.count).compactMap { pool.drives.devices($0).map(ObjectIdentifier.init) })
            for device in locked where !held.contains(ObjectIdentifier(device)) { device.unlock() }
            pool.lockedDrives = locked.filter { held.contains(ObjectIdentifier($0)) }
            pool.openNotes = notes + pool.openNotes
            for n in notes { log(n) }
            // The list as the superblock says it: slots in identity order, lines of drives whose
            // addition never committed dropped, removed drives' slots `-`.
            let retired = Set(retiredSlots(pool.metadata.superblock))
            let wanted = pool.slotOrigins.enumerated().map { slot, origin in retired.contains(slot) ? retiredListLine : lines[origin] }
            pool.driveListLines = wanted
            if wanted != lines {
                if readOnly {
                    pool.openNotes.append("\(driveListName) does not name the drives as their superblocks do; a read-write open rewrites it")
                } else {
                    do {
                        try pool.writeDriveList(wanted)
                        let message = "rewrote \(driveListName) with the drives in the order their superblocks name"
                        log(message)
                        pool.openNotes.append(message)
                        pool.repairs.append(message)
                    } catch {
                        log("cannot rewrite \(directory)/\(driveListName) in drive order; the drives are still matched by identity")
                    }
                }
            }
            return pool
        } catch {
            unlockAll()
            if lockFD >= 0 { Glibc.close(lockFD) }
            throw error
        }
    }

    /// Opens a pool on devices (nil for a missing drive); `sizes` gives every drive's size as
    /// recorded (needed for the missing ones; a present drive of another size is truncated or
    /// grown). Each drive's identity is checked first (`DriveIdentity`): drives are put in the
    /// slots their superblocks name, and blank, foreign or truncated drives count as missing.
    /// Used directly by tests on simulated drives.
    public static func open(devices given: [BlockDevice?], sizes: [UInt64]? = nil, directory: String = "(memory)", readOnly: Bool = false,
                            repair: Bool = false, log: @escaping @Sendable (String) -> Void = { _ in }) throws(LunError) -> Pool {
        guard given.count <= DriveSet.maxDrives else { throw .invalid("\(given.count) drives are listed; a pool has at most \(DriveSet.maxDrives)") }
        var resolution = DriveIdentity.resolve(devices: given, recorded: sizes)
        var drives = DriveSet(devices: resolution.devices, log: log)
        // Nothing on a foreign drive is the pool's: recovery must not read it. A blank one
        // may be a mirror whose superblocks alone are damaged; its checksummed metadata may serve.
        for d in resolution.replacements where resolution.foreign.contains(d) {
            drives.setInService(d, false)
        }
        let recovered = try MetadataStore.recover(drives: drives, sizes: resolution.sizes, reconstruct: repair && !readOnly)
        let sb = recovered.superblock
        let driveSetNotes = applyDriveSetRecord(&resolution, superblock: sb)
        if !driveSetNotes.isEmpty || resolution.devices.count < drives.count { drives = DriveSet(devices: resolution.devices, log: log) }
        for d in retiredSlots(sb) where d < drives.count { drives.retire(d) }
        let devices = resolution.devices
        // (Blank drives were named already.)
        var recoveredNotes = recovered.notes.filter { n in
            !resolution.replacements.contains { n.hasPrefix("drive \($0) (") && n.hasSuffix("no valid superblock") }
        }
        for d in resolution.replacements.sorted() where !resolution.foreign.contains(d) && sb.mirrors.contains(UInt32(d))
            && MetadataStore.holdsCheckpoint(drives: drives, mirror: d, of: sb) {
            // Its superblocks are damaged but it holds the current checkpoint: a member, current.
            resolution.replacements.remove(d)
            recoveredNotes.append("drive \(d): both superblock slots are damaged but its metadata is current; its superblock is rewritten")
        }
        for d in resolution.replacements { drives.setInService(d, false) }
        guard Int(sb.driveCount) == devices.count else {
            throw .corrupt("the pool has \(sb.driveCount) drives, \(devices.count) were given")
        }
        let geometry = sb.geometry
        let state = PoolState(geometry: geometry, psegCount: resolution.sizes.map {
            ChecksumArea.usablePSEGs(driveSizeBytes: $0, psegSizeBytes: geometry.psegSizeBytes)
        })
        try state.loadCheckpoint(recovered.checkpoint)
        for record in recovered.records { try state.replay(record) }
        try state.rebuildDerivedState()
        for d in 0..<min(64, devices.count) where sb.drainingDrives & (1 << UInt64(d)) != 0 { state.psegs.setClosed(d, true) }
        state.journal = ByteWriter()
        let metadata = MetadataStore(drives: drives, superblock: sb, nextSeq: recovered.lastSeq + 1,
                                     writePosition: recovered.journalEnd)
        metadata.driveSizes = resolution.sizes
        let pool = Pool(directory: directory, readOnly: readOnly, drives: drives, driveSizes: resolution.sizes, state: state,
                        metadata: metadata, log: log)
        pool.slotOrigins = resolution.origins
        pool.openNotes = resolution.notes + driveSetNotes + recoveredNotes
        for n in pool.openNotes { log(n) }
        // A stale drive is never read as current: out of service until it is rebuilt.
        let (stale, staleNotes) = staleDrives(resolution: resolution, superblock: sb)
        let replacements = replacementDrives(resolution: resolution)
        for n in staleNotes { log(n) }
        pool.openNotes += staleNotes
        for d in stale { drives.setInService(d, false) }
        pool.staleDriveIndexes = Set(stale)
        if readOnly {
            if !stale.isEmpty {
                pool.openNotes.append("drives \(stale) are stale (they missed writes, or replace a drive) and are not read; a read-write open rebuilds them")
            }
            return pool
        }
        for d in resolution.replacements {
            guard let device = drives.devices(d) else { continue }
            do {
                try DriveIdentity.write(DriveIdentity.freshIdentity(from: sb, slot: d), to: device)
                pool.repairs.append("drive \(d) (\(device.name)) was given a fresh identity as drive \(d) of the pool")
            } catch {
                log("cannot write an identity to drive \(d) (\(device.name)): \(error)")
            }
        }
        // Writes a crash cut are settled first (stale drives are out of service already), so
        // that the rebuild of a stale drive copies settled blocks, not cut ones.
        if !sb.isClean {
            let report = pool.recoverInFlightWrites()
            if report.acceptedBlocks + report.repairedBlocks + report.inconsistentBlocks > 0 {
                let note = "after an unclean shutdown: \(report.rsegsChecked) segments of the write-intent set checked; "
                    + "\(report.repairedBlocks) blocks repaired from a good copy, \(report.acceptedBlocks) cut in flight taken as they are, "
                    + "\(report.inconsistentBlocks) mirror or parity blocks brought back in step"
                pool.openNotes.append(note)
                pool.repairs.append(note)
            }
        }
        if !stale.isEmpty {
            let result = pool.rebuildStaleDrives(stale, replacements: replacements)
            var note = "drives \(stale) were stale (missing or out of service when the pool was last written, or replacements); rebuilt \(result.rebuilt) chunks on them from redundancy"
            if !result.failed.isEmpty {
                note += "; drives \(result.failed.keys.sorted()) stay out of service: " + result.failed.sorted { $0.key < $1.key }.map { "\($0.value) chunks on drive \($0.key) could not be rebuilt" }.joined(separator: ", ")
            }
            pool.openNotes.append(note)
            pool.repairs.append(note)
            pool.staleDriveIndexes = Set(result.failed.keys)
            pool.rebuiltStaleDriveIndexes = Set(stale).subtracting(result.failed.keys)
            try pool.refuseDataOnlyOnStaleDrives(Set(stale).subtracting(replacements))
        }
        // Everything written before this open is settled: the write-intent set starts empty.
        for s in state.intent { state.forgetIntent(s) }
        if !recoveredNotes.isEmpty { pool.repairs.append("rewrote the superblock and metadata on every mirror: " + recoveredNotes.joined(separator: "; ")) }
        // A fresh checkpoint puts every mirror back in step and empties the journal.
        try pool.commitLock.withLock { () throws(LunError) in try pool.checkpointLocked() }
        log("opened pool \(directory): \(state.disks.count) nodes, \(recovered.records.count) journal records replayed")
        return pool
    }

    // MARK: Commit

    /// Makes every completed write and every metadata change durable (fsync of any image).
    public func commit() throws(LunError) {
        guard !readOnly else { return }
        try commitLock.withLock { () throws(LunError) in try commitLocked() }
        try syncExternalSnapshots()
    }

    func commitLocked() throws(LunError) {
        stateLock.lock()
        state.clearIdleIntents(now: intentSeconds())
        let payload = state.journal.bytes
        let freed = state.pendingFree
        let tooBig = !metadata.fits(recordBytes: metadata.recordSize(payloadBytes: payload.count))
        if tooBig {
            stateLock.unlock()
            try checkpointLocked()
            return
        }
        state.journal = ByteWriter(capacity: 4096)
        state.pendingFree = []
        // Until the record is durable, a write to a segment it unshares must still wait.
        state.unsharedInFlight = state.pendingUnshared
        state.pendingUnshared = []
        state.intentJoinsInFlight = state.intentJoinsPending
        state.intentJoinsPending = []
        stateLock.unlock()
        var checkpointInstead = false
        do {
            // Data first: every op in the record was logged after its data writes completed.
            try drives.syncDirty()
            stateLock.withLock { state.intentClock += 1 }
            // A drive that left service may lack writes this record's ops point at (a write
            // that failed on it returned degraded), and the pool does not yet say it is stale.
            // Made durable first, the record would let a crash bring that drive back as current
            // with segments it never got; a checkpoint maps them and names it stale at once.
            checkpointInstead = drives.serviceChanged.value.exchange(false, ordering: .acquiringAndReleasing)
            if checkpointInstead {
                try checkpointLocked()
            } else if !payload.isEmpty {
                try metadata.append(payload)
            }
        } catch {
            if checkpointInstead { drives.serviceChanged.value.store(true, ordering: .releasing) }
            stateLock.withLock {
                var w = ByteWriter(capacity: payload.count + state.journal.bytes.count)
                w.raw(payload); w.raw(state.journal.bytes)
                state.journal = w
                state.pendingFree = freed + state.pendingFree
                state.pendingUnshared.formUnion(state.unsharedInFlight)
                state.unsharedInFlight = []
                state.intentJoinsPending.formUnion(state.intentJoinsInFlight.intersection(state.intent))
                state.intentJoinsInFlight = []
            }
            log("commit failed: \(error)")
            throw error
        }
        commits.add(1, ordering: .relaxed)
        stateLock.withLock {
            state.unsharedInFlight = []
            state.intentDurable.formUnion(state.intentJoinsInFlight.intersection(state.intent))
            state.intentJoinsInFlight = []
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

    /// Writes the whole state as a checkpoint. Caller holds `commitLock`. The state is encoded
    /// under `stateLock`, and the drive syncs and the checkpoint's writes run after releasing
    /// it, so that I/O of every disk goes on meanwhile (reads and writes need `stateLock` for
    /// moments). Ops applied after the encoding stay in the journal: the next record, after
    /// this checkpoint, carries them. Their data writes may land before the sync below or
    /// after it; either way the checkpoint does not point at them.
    func checkpointLocked(clean: Bool = false) throws(LunError) {
        stateLock.lock()
        let payload = state.encodeCheckpoint()
        let journal = state.journal.bytes
        let freed = state.pendingFree
        let durableIntent = state.intent
        state.journal = ByteWriter(capacity: 4096)
        state.pendingFree = []
        // Until the checkpoint is durable, a write to a segment it unshares must still wait.
        state.unsharedInFlight.formUnion(state.pendingUnshared)
        let unshared = state.pendingUnshared
        state.pendingUnshared = []
        let joins = state.intentJoinsPending
        state.intentJoinsPending = []
        stateLock.unlock()
        do {
            // Data first: every op encoded was logged after its data writes completed.
            try drives.syncDirty()
            try metadata.writeCheckpoint(payload, clean: clean)
        } catch {
            stateLock.withLock {
                var w = ByteWriter(capacity: journal.count + state.journal.bytes.count)
                w.raw(journal); w.raw(state.journal.bytes)
                state.journal = w
                state.pendingFree = freed + state.pendingFree
                state.pendingUnshared.formUnion(unshared)
                state.unsharedInFlight.subtract(unshared)
                state.intentJoinsPending.formUnion(joins.intersection(state.intent))
            }
            throw error
        }
        commits.add(1, ordering: .relaxed)
        stateLock.withLock {
            state.unsharedInFlight.subtract(unshared)
            // Stores in the set when it was encoded are in the checkpoint; a store cleared
            // since (`intentClear` in the journal) is no longer in `intent`.
            state.intentDurable.formUnion(durableIntent.intersection(state.intent))
            // Releasing may empty stores; their freeStore ops go into the next record.
            for f in freed { state.releaseRSEG(store: f.store, rseg: f.rseg) }
        }
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

    /// Starts the background copy of snapclones (the mounted daemon does this); copying
    /// snapclones found at open resume where their last commit left them.
    public func startBackgroundCopies() {
        guard !readOnly, snapcloneCopier == nil else { return }
        let copier = SnapcloneCopier(pool: self)
        snapcloneCopier = copier
        copier.start()
        let filler = SegmentFiller(pool: self)
        segmentFiller = filler
        filler.start()
        startExternalCopies()
        startLeveling()
        startRebuilds()
    }

    /// Commits everything and releases the drives and the lock. The pool is unusable after.
    public func close() throws(LunError) {
        if closed { return }
        snapcloneCopier?.stop()
        segmentFiller?.stop()
        externals.copier?.stop()
        stopLeveling()
        jobs.rebuilder.withLock { $0 }?.stop()
        committerStop.lock()
        committerStopping = true
        committerStop.broadcast()
        committerStop.unlock()
        if !readOnly {
            try syncExternalSnapshots()
            // The last checkpoint says "clean": the next open can skip the resync.
            try commitLock.withLock { () throws(LunError) in
                try commitLocked()
                try checkpointLocked(clean: true)
            }
        }
        closed = true
        for device in lockedDrives { device.unlock() }
        lockedDrives = []
        if lockFD >= 0 { Glibc.close(lockFD); lockFD = -1 }
    }

    deinit {
        for device in lockedDrives { device.unlock() }
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

    /// Before an in-place write to `store`: its place in the write-intent set must be durable,
    /// so that a crash in the middle of the write is found and settled by recovery.
    func beginInPlaceWrite(_ store: Int) throws(LunError) {
        var attempts = 0
        while true {
            let ready = stateLock.withLock { () -> Bool in
                if state.intentDurable.contains(store) {
                    state.intentWriters[store, default: 0] += 1
                    return true
                }
                if !state.intent.contains(store) {
                    state.apply(.intentAdd(store: store))
                    state.intentLastWrite[store] = (state.intentClock, intentSeconds())
                }
                return false
            }
            if ready { return }
            // A drive that fails its sync leaves service and fails this commit; the next one
            // goes without it.
            attempts += 1
            do { try commit() } catch { if attempts >= 3 { throw error } }
        }
    }

    func endInPlaceWrite(_ store: Int) {
        stateLock.withLock {
            let running = state.intentWriters[store]! - 1
            state.intentWriters[store] = running == 0 ? nil : running
            state.intentLastWrite[store] = (state.intentClock, intentSeconds())
        }
    }

    /// The clock the write-intent set ages by (seconds since boot); tests may move it on.
    func intentSeconds() -> Double { Pool.uptimeSeconds() + intentClockOffset.withLock { $0 } }

    func checkWritable() throws(LunError) {
        if readOnly { throw .notPermitted("the pool is open read-only") }
    }
}
