// Drives joining and leaving a pool while it serves I/O. Each change is one checkpoint whose
// superblock on the mirrors is its commit point: the new drive is formatted with an identity
// and named in drives.list first, so a crash before the commit leaves a line that open ignores
// (the superblock counts fewer drives); a removed drive's slot is retired in the superblock
// first and its line becomes `-` after, so a crash in between leaves a line open ignores too.
// docs/DESIGN.md section 2 ("Drives come and go") gives the rules.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A drive as `lunfs drive list` shows it.
public struct DriveListing: Sendable, Equatable {
    public var index: Int
    public var name: String
    public var state: DriveState
    public var sizeBytes: UInt64
    public var usedBytes: UInt64
    public var isMirror: Bool
    /// Being emptied to be removed: takes no new stores.
    public var isDraining: Bool
    /// Its disk group (DiskGroups.swift).
    public var group: String = "default"
}

extension Pool {
    // MARK: Open-time rules

    /// Applies the superblock's drive set to the drives found at open: slots past the count the
    /// superblock records are drives whose addition never committed (dropped, with a note);
    /// retired slots hold nothing and are not missing (their drive, if any, is let go).
    static func applyDriveSetRecord(_ resolution: inout DriveResolution, superblock sb: Superblock) -> [String] {
        var notes: [String] = []
        let count = Int(sb.driveCount)
        if resolution.devices.count > count {
            for slot in count..<resolution.devices.count {
                let name = resolution.devices[slot]?.name ?? "line \(resolution.origins[slot] + 1) of \(driveListName)"
                notes.append("drive \(name) was being added when the pool stopped and never became a member: ignored")
            }
            resolution.devices.removeLast(resolution.devices.count - count)
            resolution.sizes.removeLast(resolution.sizes.count - count)
            resolution.origins.removeLast(resolution.origins.count - count)
            resolution.identities.removeLast(resolution.identities.count - count)
            resolution.replacements = resolution.replacements.filter { $0 < count }
            resolution.foreign = resolution.foreign.filter { $0 < count }
        }
        for slot in retiredSlots(sb) where slot < resolution.devices.count {
            if let device = resolution.devices[slot] {
                notes.append("drive \(slot) (\(device.name)) was removed from the pool; its \(driveListName) line is left behind: ignored")
            }
            resolution.devices[slot] = nil
            resolution.sizes[slot] = 0
            resolution.identities[slot] = nil
            resolution.replacements.remove(slot)
            resolution.foreign.remove(slot)
        }
        return notes
    }

    static func retiredSlots(_ sb: Superblock) -> [Int] {
        (0..<min(64, Int(sb.driveCount))).filter { sb.retiredDrives & (1 << UInt64($0)) != 0 }
    }

    /// The drives.list line of a retired slot.
    static let retiredListLine = "- 0"

    // MARK: Listing

    /// Every drive of the pool (retired slots left out), for `lunfs drive list` and status.
    public func driveListing() -> [DriveListing] {
        let mirrors = Set(metadata.mirrors)
        let draining = metadata.superblock.drainingDrives
        let groups = stateLock.withLock { state.driveGroups }
        return driveStatuses().map { s in
            DriveListing(index: s.index, name: s.name, state: s.state, sizeBytes: s.sizeBytes, usedBytes: s.usedBytes,
                         isMirror: mirrors.contains(s.index), isDraining: s.index < 64 && draining & (1 << UInt64(s.index)) != 0,
                         group: groups[s.index] ?? DiskGroups.defaultGroup)
        }
    }

    // MARK: Adding

    /// Adds the drive file (or block device) at `path` to the pool and returns its index.
    /// `drives.list` names it by `path` as given. A drive that holds another pool's superblock
    /// is refused unless `force`; one of this pool that is a member is always refused.
    public func addDrive(path: String, force: Bool = false, group: String = DiskGroups.defaultGroup) throws(LunError) -> Int {
        try checkWritable()
        try Pool.checkGroupName(group)
        guard driveListLines != nil else { throw .invalid("this pool has no \(Pool.driveListName) to name a drive in") }
        let full = path.hasPrefix("/") ? path : directory + "/" + path
        guard FileManager.default.fileExists(atPath: full) else { throw .notFound("no drive file or device at \(full)") }
        let real = URL(fileURLWithPath: full).resolvingSymlinksInPath().path
        for d in drives.memberSlots {
            if let name = drives.devices(d)?.name, URL(fileURLWithPath: name).resolvingSymlinksInPath().path == real {
                throw .exists("\(path) is already drive \(d) of this pool")
            }
        }
        let device = try FileDevice(path: full)
        guard device.lockExclusive() else {
            throw .busy("drive \(path) is in use by another process (a lunfs pool on it is open)")
        }
        do {
            let slot = try addDrive(device: device, listLine: "\(path) \(device.sizeBytes)", force: force, group: group)
            // forgetDrive removes entries on the leveling thread, under the same lock.
            membershipLock.withLock { lockedDrives.append(device) }
            return slot
        } catch {
            device.unlock()
            throw error
        }
    }

    /// Adds `device` in the next slot: its identity first, then its drives.list line (when the
    /// pool has a list), then the checkpoint that counts it and records its `group`. Its PSEGs
    /// are free at once after.
    public func addDrive(device: BlockDevice, listLine: String? = nil, force: Bool = false,
                         group: String = DiskGroups.defaultGroup) throws(LunError) -> Int {
        try checkWritable()
        try Pool.checkGroupName(group)
        return try membershipLock.withLock { () throws(LunError) -> Int in
            let sb = metadata.superblock
            let slot = drives.count
            precondition(metadata.driveSizes.count == slot, "a size is recorded for every slot")
            guard slot < DriveSet.maxDrives else { throw .noSpace("a pool has at most \(DriveSet.maxDrives) drive slots, this one uses all") }
            let geometry = self.geometry
            let size = device.sizeBytes
            let usable = ChecksumArea.usablePSEGs(driveSizeBytes: size, psegSizeBytes: geometry.psegSizeBytes)
            guard usable > geometry.quorumPSEGs + 1 else {
                throw .invalid("drive \(device.name) of \(size) bytes is too small: it needs more than \(geometry.quorumPSEGs + 1) segments of \(geometry.psegSizeBytes) bytes")
            }
            if let found = DriveIdentity.read(device) {
                let index = Int(found.driveIndex)
                let ours = found.poolUUID == sb.poolUUID
                if ours && index < slot && !drives.isRetired(index) {
                    throw .exists("drive \(device.name) is already drive \(index) of this pool")
                }
                if !ours && !force {
                    let uuid = found.poolUUID.map { String(format: "%02x", $0) }.joined()
                    throw .exists("drive \(device.name) holds lunfs pool \(uuid) (drive \(index) of \(found.driveCount)); use --force to add it anyway")
                }
            }
            var identity = DriveIdentity.freshIdentity(from: sb, slot: slot)
            identity.driveCount = UInt32(slot + 1)
            identity.driveSizeBytes = size
            try DriveIdentity.write(identity, to: device)
            if let listLine, var lines = driveListLines {
                lines.append(listLine)
                try writeDriveList(lines)
                driveListLines = lines
            }
            try commitLock.withLock { () throws(LunError) in
                // The allocator knows the slot before anyone can see it (closed: nothing is
                // taken on it), so whoever walks the drives finds an entry for each.
                stateLock.withLock {
                    state.psegs.addDrive(slot, psegs: usable)
                    state.psegs.setClosed(slot, true)
                    if group != DiskGroups.defaultGroup { state.driveGroups[slot] = group }
                }
                let installed = drives.install(device, checksumAreaStart: ChecksumArea.start(driveSizeBytes: size, psegSizeBytes: geometry.psegSizeBytes))
                precondition(installed == slot)
                metadata.setDriveSet(count: slot + 1, retired: sb.retiredDrives, sizes: metadata.driveSizes + [size])
                // If this fails no superblock counts the drive yet; the next checkpoint that
                // succeeds does. Its PSEGs are taken only once one has.
                try checkpointLocked()
                stateLock.withLock { state.psegs.setClosed(slot, false) }
            }
            log("drive \(slot) (\(device.name)) added to the pool in group \(group): \(usable - geometry.quorumPSEGs) data segments")
            return slot
        }
    }

    // MARK: Removing

    /// Starts emptying drive `d` to remove it: new stores take nothing on it from now on, and
    /// the choice is recorded (a crash does not forget it). Leveling moves its PSEGs away;
    /// `forgetDrive` removes it once it holds nothing.
    public func beginRemoval(_ d: Int, preferring successor: Int? = nil) throws(LunError) {
        try checkWritable()
        try membershipLock.withLock { () throws(LunError) in
            try checkRemovable(d)
            // A metadata mirror on it moves first (one checkpoint), to the successor if it may.
            if metadata.mirrors.contains(d) { try moveMetadataMirrors(off: d, preferring: successor) }
            try commitLock.withLock { () throws(LunError) in
                stateLock.withLock { state.psegs.setClosed(d, true) }
                var sb = metadata.superblock
                sb.drainingDrives |= 1 << UInt64(d)
                metadata.setDraining(sb.drainingDrives)
                try checkpointLocked()
            }
            log("drive \(d) (\(drives.name(d))) is being emptied to be removed")
        }
    }

    /// Drives being emptied to be removed.
    public var drainingDriveIndexes: [Int] {
        let mask = metadata.superblock.drainingDrives
        return (0..<min(64, drives.count)).filter { mask & (1 << UInt64($0)) != 0 }
    }

    /// Why drive `d` cannot leave the pool, if it cannot.
    /// `joining`: drives about to be added first (`replace`).
    func checkRemovable(_ d: Int, joining: Int = 0) throws(LunError) {
        guard d >= 0, d < drives.count, !drives.isRetired(d) else { throw .notFound("the pool has no drive \(d)") }
        let remaining = drives.memberSlots.count + joining - 1 - drainingDriveIndexes.filter { $0 != d }.count
        let needed = defaultRAID.memberCount == 8 ? 2 : (defaultRAID == .raid5 ? 5 : 1)
        guard remaining >= needed else {
            throw .invalid("removing drive \(d) would leave \(remaining) drives; the pool's default \(defaultRAID) needs \(needed)")
        }
    }

    /// PSEGs of user data on drive `d`.
    public func usedSegments(onDrive d: Int) -> Int {
        stateLock.withLock { d < state.psegs.psegCount.count ? state.psegs.usedData(drive: d) : 0 }
    }

    /// Forgets drive `d`, which must hold nothing: its slot is retired by one checkpoint, then
    /// its drives.list line becomes `-` and its superblocks are wiped so it can be used again.
    public func forgetDrive(_ d: Int) throws(LunError) {
        try checkWritable()
        try membershipLock.withLock { () throws(LunError) in
            try checkRemovable(d)
            let device = drives.devices(d)
            try commitLock.withLock { () throws(LunError) in
                try stateLock.withLock { () throws(LunError) in
                    let used = state.psegs.usedData(drive: d)
                    guard !metadata.mirrors.contains(d) else {
                        throw LunError.busy("drive \(d) holds a copy of the pool's metadata; drive remove moves it first")
                    }
                    guard used == 0 else {
                        throw LunError.busy("drive \(d) still holds \(used) segments; they must be moved off first")
                    }
                    state.psegs.retire(drive: d)
                    state.driveGroups[d] = nil
                }
                drives.retire(d)
                var sb = metadata.superblock
                sb.retiredDrives |= 1 << UInt64(d)
                sb.drainingDrives &= ~(1 << UInt64(d))
                metadata.setDriveSet(count: drives.count, retired: sb.retiredDrives, sizes: metadata.driveSizes)
                metadata.setDraining(sb.drainingDrives)
                try checkpointLocked()
            }
            if var lines = driveListLines, d < lines.count {
                lines[d] = Pool.retiredListLine
                do { try writeDriveList(lines); driveListLines = lines } catch {
                    log("drive \(d) was removed but \(Pool.driveListName) still names it (\(error)); the next open ignores the line")
                }
            }
            if let device {
                // The drive is no longer the pool's: wipe its identity so it can join a pool again.
                let zeros = [UInt8](repeating: 0, count: Superblock.blockSize)
                for offset in Superblock.slotOffsets {
                    _ = try? typed { try zeros.withUnsafeBytes { try device.write($0, at: offset) } }
                }
                _ = try? device.sync()
                if let i = lockedDrives.firstIndex(where: { $0 === device }) {
                    lockedDrives[i].unlock()
                    lockedDrives.remove(at: i)
                }
            }
            log("drive \(d) (\(device?.name ?? "missing")) removed from the pool")
        }
    }

    // MARK: The verbs

    /// `drive add`: each path joins the pool in turn; returns their indexes. Leveling then
    /// spreads used PSEGs onto them in the background (or at once on an unmounted pool).
    public func addDrives(paths: [String], force: Bool = false, group: String = DiskGroups.defaultGroup) throws(LunError) -> [Int] {
        guard !paths.isEmpty else { throw .invalid("drive add needs at least one drive path") }
        try Pool.checkGroupName(group)
        var added: [Int] = []
        // Those added before a refused path stay added, and are levelled onto.
        defer { if !added.isEmpty { wakeLeveling() } }
        for path in paths { added.append(try addDrive(path: path, force: force, group: group)) }
        return added
    }

    /// `drive remove`: drive `d` takes no new stores; when it holds nothing it is forgotten at
    /// once, otherwise leveling empties it and then forgets it. Returns whether it is gone.
    @discardableResult
    public func removeDrive(_ d: Int, preferring successor: Int? = nil) throws(LunError) -> Bool {
        try beginRemoval(d, preferring: successor)
        if usedSegments(onDrive: d) == 0 {
            try forgetDrive(d)
            return true
        }
        wakeLeveling()
        return false
    }

    /// `drive replace`: `path` joins the pool and drive `d` is emptied onto the drives (the new
    /// one first, as it is the emptiest) and then forgotten. Returns the new drive's index.
    public func replaceDrive(_ d: Int, withPath path: String, force: Bool = false) throws(LunError) -> Int {
        try checkRemovable(d, joining: 1)
        let added = try addDrive(path: path, force: force)
        try removeDrive(d, preferring: added)
        return added
    }

    // MARK: drives.list

    /// Replaces drives.list with `lines` (one per slot): a new file, synced, renamed over the
    /// old one, and the directory synced, so a crash leaves the old list or the new one.
    func writeDriveList(_ lines: [String]) throws(LunError) {
        let path = directory + "/" + Pool.driveListName
        let temporary = path + ".new"
        let text = lines.joined(separator: "\n") + "\n"
        let fd = Glibc.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .io("cannot write \(temporary): \(String(cString: strerror(errno)))") }
        let written = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        let synced = fsync(fd) == 0
        Glibc.close(fd)
        guard written == text.utf8.count, synced, Glibc.rename(temporary, path) == 0 else {
            unlink(temporary)
            throw .io("cannot write \(path)")
        }
        let dir = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 { _ = fsync(dir); Glibc.close(dir) }
    }
}
