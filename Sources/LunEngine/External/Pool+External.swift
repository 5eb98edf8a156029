// The pool's side of snapshots on separate storage (VSS, seed 004; docs/DESIGN.md section 13):
// creating one, the one question V's write path asks before it changes bytes ("does a VSS
// still need these blocks?", `copyBeforeChange`), reads and writes of the VSS's own image,
// the background copy step, progress, and removal. The VSS is a node of the tree (a disk
// record with no map, below V) whose bytes come from its `ExternalSnapshot`.
#if canImport(Glibc)
import Glibc
#endif

extension Pool {
    /// Block size of new snapshots on separate storage: the unit of the validity map, of the
    /// copy before a write to V, and of the copy-in before a partial write to the snapshot.
    public static let externalBlockBytes: UInt32 = 64 << 10
    /// The validity map's file is the external file's path with this suffix.
    public static let externalMapSuffix = ".lunfs-valid"

    /// How external files are opened and created; tests hand in simulated devices. Set it
    /// before the first I/O (snapshots found at open are opened on first use).
    public func setExternalDeviceOpener(_ opener: @escaping ExternalDeviceOpener) {
        externals.opener = opener
        externals.removesFiles = false
    }

    /// Whether `id` is a snapshot on separate storage.
    public func isExternalSnapshot(_ id: DiskID) -> Bool {
        state.externalCount.load(ordering: .acquiring) > 0 && stateLock.withLock { state.externals[id] != nil }
    }

    /// The external file of snapshot `id`, nil for other disks.
    public func externalFile(of id: DiskID) -> String? {
        stateLock.withLock { state.externals[id]?.filePath }
    }

    /// Snapshots on separate storage whose copy has not finished (the background copy's list).
    public func copyingExternalSnapshots() -> [DiskID] {
        stateLock.withLock { state.externals.values.filter { !$0.independent && !$0.lost }.map(\.id).sorted() }
    }

    /// Blocks copied (bits set) out of all, nil for a disk that is no such snapshot.
    public func externalCopyProgress(_ id: DiskID) -> CopyProgress? {
        guard let record = stateLock.withLock({ state.externals[id] }) else { return nil }
        if record.independent { return CopyProgress(copied: record.blockCount, total: record.blockCount, independent: true) }
        guard let x = try? externalObject(id) else { return nil }
        return CopyProgress(copied: x.validity.validCount.load(ordering: .acquiring), total: x.blockCount, independent: false)
    }

    /// `lunfs snapshot --to FILE`: snapshot `name` of disk `id` whose blocks live in `file`
    /// (created, or an empty file), with its validity map at `file` + `externalMapSuffix`.
    /// V's writes drain first (the family lock exclusive, `.busy` after the timeout); the
    /// snapshot is V's bytes at the commit this makes, readable at once.
    public func createExternalSnapshot(of id: DiskID, named name: String, file: String,
                                       blockBytes: UInt32 = Pool.externalBlockBytes,
                                       quiesceTimeoutSeconds: Double = 5) throws(LunError) -> DiskID {
        try checkWritable()
        try Self.validate(name: name)
        guard blockBytes >= 4096, blockBytes.nonzeroBitCount == 1 else { throw .invalid("block size \(blockBytes) is not a power of two of at least 4096") }
        guard !file.isEmpty, !file.hasSuffix("/") else { throw .invalid("no file named for the snapshot") }
        guard !isExternalSnapshot(id) else { throw .notPermitted("disk \(id) is itself a snapshot on separate storage") }
        let v = try liveDisk(id)
        guard v.family.lockForChange(timeoutSeconds: quiesceTimeoutSeconds) else {
            throw .busy("writes to \(v.name) did not drain within \(quiesceTimeoutSeconds) s")
        }
        defer { v.family.lock.unlock() }
        guard !v.removed, v.hasImage else { throw .notPermitted("\(v.name) has no image to snapshot") }
        try stateLock.withLock { () throws(LunError) in
            guard !state.disks.values.contains(where: { $0.parent == id && $0.name == name }) else { throw .exists(name) }
            guard !state.externals.values.contains(where: { $0.filePath == file }) else { throw .exists("\(file) already holds a snapshot of this pool") }
        }
        guard externals.claimPath(file) else { throw .exists("\(file) is being made into a snapshot right now") }
        defer { externals.releasePath(file) }
        var record = ExternalSnapshotRecord(id: 0, source: id, filePath: file, mapPath: file + Self.externalMapSuffix,
                                            blockBytes: blockBytes, sizeBytes: v.sizeBytes, independent: false,
                                            token: UInt64.random(in: 1...UInt64.max))
        let data = try externals.opener(file, v.sizeBytes)
        let mapDevice: BlockDevice
        do { mapDevice = try externals.opener(record.mapPath, ValidityMap.fileBytes(blockCount: record.blockCount)) } catch {
            if externals.removesFiles { unlink(file) }
            throw error
        }
        let validity: ValidityMap
        do { validity = try ValidityMap.create(on: mapDevice, for: record) } catch {
            if externals.removesFiles { unlink(file); unlink(record.mapPath) }
            throw error
        }
        let node = stateLock.withLock { () -> Disk in
            let node = state.newDisk(name: name, parent: id, family: SharingFamily(), size: v.sizeBytes, raid: v.raid, now: now()) {
                $0.hasWritten = true
            }
            record.id = node.id
            state.apply(.putExternal(record))
            return node
        }
        externals.remember(node.id, .success(ExternalSnapshot(record: record, data: data, validity: validity)))
        // V's bytes at this commit are the snapshot: every write that returned before it is
        // durable, and every later one asks `copyBeforeChange` first.
        try commit()
        log("snapshot \(name) of \(v.name) (id \(node.id)) taken on separate storage \(file): \(record.blockCount) blocks of \(blockBytes) bytes to copy")
        externals.copier?.wake()
        return node.id
    }

    /// The running object of snapshot `id`, opened on first use; `.io` for a broken one.
    func externalObject(_ id: DiskID) throws(LunError) -> ExternalSnapshot {
        if let known = externals.cached(id) { return try known.get() }
        guard let record = stateLock.withLock({ state.externals[id] }) else { throw .stale("disk \(id) is no snapshot on separate storage") }
        guard !record.lost else {
            throw .io("snapshot on separate storage \(record.filePath) (disk \(id)) is lost: its file could not be opened when its disk was written")
        }
        let result: Result<ExternalSnapshot, LunError>
        do throws(LunError) {
            let data = try externals.opener(record.filePath, nil)
            guard data.sizeBytes >= record.sizeBytes else { throw LunError.io("\(record.filePath) is \(data.sizeBytes) bytes, the snapshot has \(record.sizeBytes)") }
            let validity: ValidityMap
            if record.independent {
                validity = ValidityMap.complete(blockCount: record.blockCount, device: data)
            } else {
                validity = try ValidityMap.open(on: try externals.opener(record.mapPath, nil), for: record)
            }
            result = .success(ExternalSnapshot(record: record, data: data, validity: validity))
        } catch {
            let message = "snapshot on separate storage \(record.filePath) (disk \(id)) cannot be used: \(error)"
            log(message)
            result = .failure(.io(message))
        }
        externals.remember(id, result)
        return try result.get()
    }

    /// Before bytes [start, end) of disk `d` change (a write, a discard, a shrink): every
    /// snapshot on separate storage of `d` that still reads those blocks from it gets them
    /// copied first (seed 004 [0031]). Caller holds `d`'s family lock, shared or exclusive.
    func copyBeforeChange(of d: Disk, from start: UInt64, to end: UInt64) throws(LunError) {
        guard state.activeExternalCount.load(ordering: .acquiring) > 0 else { return }
        let ids = stateLock.withLock { state.externals.values.filter { $0.source == d.id && !$0.independent && !$0.lost }.map(\.id) }
        for id in ids {
            let x: ExternalSnapshot
            do { x = try externalObject(id) } catch {
                // V must not wait for storage that is gone, and the snapshot must never show
                // V's new bytes as its own: it is recorded lost (committed) before V goes on.
                try markLost(id, because: error)
                continue
            }
            if x.isComplete { continue }
            let blocks = x.blocks(from: start, to: end)
            if blocks.isEmpty { continue }
            x.copyLock.lockShared()
            let needed = blocks.contains { !x.validity.isValid($0) }
            x.copyLock.unlock()
            if !needed { continue }
            x.copyLock.lockExclusive()
            defer { x.copyLock.unlock() }
            try x.copyIn(Array(blocks)) { (offset, buffer) throws(LunError) -> Int in try readLocked(d, at: offset, into: buffer) }
        }
    }

    /// Records snapshot `id` lost and commits, before its source changes blocks it needed.
    private func markLost(_ id: DiskID, because error: LunError) throws(LunError) {
        let marked = stateLock.withLock { () -> Bool in
            guard var r = state.externals[id], !r.lost, !r.independent else { return false }
            r.lost = true
            state.apply(.putExternal(r))
            return true
        }
        if !marked { return }
        externals.remember(id, .failure(.io("snapshot on separate storage (disk \(id)) is lost")))
        try commit()
        log("snapshot on separate storage (disk \(id)) is lost: \(error); its disk was written without copying to it")
    }

    /// Reads of a snapshot on separate storage (`read` sends them here).
    func readExternal(_ node: Disk, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int {
        node.family.lock.lockShared()
        defer { node.family.lock.unlock() }
        guard !node.removed, node.hasImage else { throw .stale("disk \(node.id) was deleted") }
        guard offset < node.sizeBytes, buffer.count > 0 else { return 0 }
        let n = Int(min(UInt64(buffer.count), node.sizeBytes - offset))
        let target = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
        let x = try externalObject(node.id)
        if x.isComplete {
            try x.data.read(into: target, at: offset)
            return n
        }
        try withSource(of: x) { (v) throws(LunError) in
            x.copyLock.lockShared()
            defer { x.copyLock.unlock() }
            try x.read(at: offset, into: target) { (o, b) throws(LunError) -> Int in try readLocked(v, at: o, into: b) }
        }
        return n
    }

    /// Writes to a snapshot on separate storage (`write` sends them here). It keeps its size:
    /// a write past the end is `.noSpace`, as on a block device.
    func writeExternal(_ node: Disk, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        node.family.lock.lockShared()
        defer { node.family.lock.unlock() }
        guard !node.removed, node.hasImage else { throw .stale("disk \(node.id) was deleted") }
        guard offset + UInt64(buffer.count) <= node.sizeBytes else {
            throw .noSpace("a snapshot on separate storage keeps its size (\(node.sizeBytes) bytes)")
        }
        if buffer.isEmpty { return }
        let x = try externalObject(node.id)
        if x.isComplete {
            try x.data.write(buffer, at: offset)
            x.writesReturned.add(1, ordering: .releasing)
            return
        }
        try withSource(of: x) { (v) throws(LunError) in
            x.copyLock.lockExclusive()
            defer { x.copyLock.unlock() }
            try x.write(at: offset, from: buffer) { (o, b) throws(LunError) -> Int in try readLocked(v, at: o, into: b) }
        }
    }

    /// Discard or zeroing of a range of the snapshot: zeros written (it has no holes to punch).
    func discardExternal(_ node: Disk, at offset: UInt64, length: UInt64) throws(LunError) {
        let end = min(offset.addingReportingOverflow(length).overflow ? UInt64.max : offset + length, node.sizeBytes)
        guard offset < end else { return }
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var at = offset
        while at < end {
            let n = Int(min(UInt64(chunk), end - at))
            try writeExternal(node, at: at, from: UnsafeRawBufferPointer(rebasing: zeros[0..<n]))
            at += UInt64(n)
        }
    }

    /// Runs `body` with V's family lock shared (V exists while its snapshot is not complete:
    /// deleting V's image is refused until then).
    func withSource(of x: ExternalSnapshot, _ body: (Disk) throws(LunError) -> Void) throws(LunError) {
        let v = try liveDisk(x.source)
        v.family.lock.lockShared()
        defer { v.family.lock.unlock() }
        guard !v.removed, v.hasImage else { throw .io("disk \(x.source), the source of snapshot \(x.id), is gone before its copy finished") }
        try body(v)
    }

    /// One step of the background copy (seed 004 [0027]-[0029]): up to `budget` blocks whose
    /// bit is clear, copied from V and made valid. When none is left the snapshot is recorded
    /// independent (committed) and V is never read for it again.
    @discardableResult
    public func copyExternalSnapshot(_ id: DiskID, blocks budget: Int) throws(LunError) -> CopyProgress {
        try checkWritable()
        let node = try liveDisk(id)
        node.family.lock.lockShared()
        var locked = true
        defer { if locked { node.family.lock.unlock() } }
        guard !node.removed, node.hasImage else { throw .stale("disk \(id) was deleted") }
        guard let record = stateLock.withLock({ state.externals[id] }) else { throw .invalid("disk \(id) is no snapshot on separate storage") }
        if record.independent { return CopyProgress(copied: record.blockCount, total: record.blockCount, independent: true) }
        let x = try externalObject(id)
        if !x.isComplete {
            try withSource(of: x) { (v) throws(LunError) in
                x.copyLock.lockExclusive()
                defer { x.copyLock.unlock() }
                var blocks: [Int] = []
                var next = x.cursor
                while blocks.count < budget, let b = x.validity.firstInvalid(from: next), !blocks.contains(b) {
                    blocks.append(b)
                    next = b + 1
                }
                x.cursor = next
                try x.copyIn(blocks) { (o, b) throws(LunError) -> Int in try readLocked(v, at: o, into: b) }
            }
        }
        let copied = x.validity.validCount.load(ordering: .acquiring)
        guard x.isComplete else { return CopyProgress(copied: copied, total: x.blockCount, independent: false) }
        try x.syncIfWritten()
        stateLock.withLock {
            if var r = state.externals[id], !r.independent {
                r.independent = true
                state.apply(.putExternal(r))
            }
        }
        node.family.lock.unlock()
        locked = false
        try commit()
        log("snapshot on separate storage \(record.filePath) (disk \(id)) is complete: the file alone holds it")
        return CopyProgress(copied: copied, total: x.blockCount, independent: true)
    }

    /// `rm NAME/disk.img` or `rmdir NAME` of a snapshot on separate storage: the pool forgets
    /// it (committed). An incomplete file is removed with its map, since it is no image of
    /// anything; a complete one stays where it is, a standalone raw image, and its map goes.
    func dropExternalImage(_ id: DiskID) throws(LunError) {
        try checkWritable()
        let node = try liveDisk(id)
        node.family.lockForChange()
        defer { node.family.lock.unlock() }
        guard !node.removed, let record = stateLock.withLock({ state.externals[id] }) else { throw .stale("disk \(id) was removed") }
        let v = stateLock.withLock { state.disk(record.source) }
        v?.family.lockForChange()
        defer { v?.family.lock.unlock() }
        let complete = record.independent || ((try? externalObject(id))?.isComplete ?? false)
        stateLock.withLock {
            state.apply(.dropExternal(id))
            state.update(node) { $0.hasImage = false; $0.sizeBytes = 0 }
        }
        externals.forget(id)
        try commit()
        if externals.removesFiles {
            unlink(record.mapPath)
            if !complete { unlink(record.filePath) }
        }
        log("removed snapshot on separate storage \(record.filePath) (disk \(id)); the file \(complete ? "stays as a standalone image" : "was incomplete and is removed")")
    }

    /// `.busy` while disk `x` is the source of a snapshot on separate storage that still
    /// reads from it. Caller holds `stateLock`.
    func refuseWhileExternalCopying(_ x: Disk) throws(LunError) {
        if let r = state.externals.values.first(where: { $0.source == x.id && !$0.independent }) {
            throw .busy("\(x.name) is the source of snapshot \(r.filePath), still copying")
        }
    }

    /// Makes the snapshots' own writes durable (part of every commit).
    func syncExternalSnapshots() throws(LunError) {
        guard state.externalCount.load(ordering: .acquiring) > 0 else { return }
        for x in externals.all { try x.syncIfWritten() }
    }

    /// Starts the background copy of snapshots on separate storage (the daemon does this).
    public func startExternalCopies() {
        guard !readOnly, externals.copier == nil else { return }
        let copier = ExternalSnapshotCopier(pool: self)
        externals.copier = copier
        copier.start()
    }
}

extension DiskInfo {
    /// A snapshot on separate storage holds all of its bytes, in its file: it says so in its
    /// allocation (so st_blocks is not 0, which tar --sparse and the like take for "all hole").
    func withExternalBytes(_ external: Bool) -> DiskInfo {
        guard external else { return self }
        var info = self
        info.allocatedBytes = sizeBytes
        info.uniqueBytes = sizeBytes
        return info
    }
}

/// Where a snapshot on separate storage keeps its blocks, for a second host that reads and
/// writes the file directly (the coordinator answers the rest; docs/NBD.md, "A second host").
public struct ExternalLayout: Sendable, Equatable {
    public var filePath: String
    public var blockBytes: Int
    public var sizeBytes: UInt64

    public init(filePath: String, blockBytes: Int, sizeBytes: UInt64) {
        self.filePath = filePath
        self.blockBytes = blockBytes
        self.sizeBytes = sizeBytes
    }
}

extension Pool {
    /// The file, block size and size of snapshot `id`, nil for other disks.
    public func externalLayout(of id: DiskID) -> ExternalLayout? {
        stateLock.withLock {
            state.externals[id].map { ExternalLayout(filePath: $0.filePath, blockBytes: Int($0.blockBytes), sizeBytes: $0.sizeBytes) }
        }
    }

    /// Which of `blocks` hold the snapshot in its file (bit set): those a second host may read
    /// there directly from now on, since a bit never clears while the snapshot exists.
    public func externalValidity(_ id: DiskID, blocks: Range<Int>) throws(LunError) -> [Bool] {
        let x = try externalObject(id)
        guard blocks.lowerBound >= 0, blocks.upperBound <= x.blockCount else { throw .invalid("blocks \(blocks) outside 0..<\(x.blockCount)") }
        if x.isComplete { return [Bool](repeating: true, count: blocks.count) }
        x.copyLock.lockShared()
        defer { x.copyLock.unlock() }
        return blocks.map { x.validity.isValid($0) }
    }

    /// A second host is about to write `blocks` of the file itself: each whose bit is clear gets
    /// V's bytes copied in first and its bit set durably (as a partial write would), so that
    /// neither the background copy nor a write to V touches those blocks of the file again.
    public func claimExternalBlocks(_ id: DiskID, blocks: Range<Int>) throws(LunError) {
        try checkWritable()
        let node = try liveDisk(id)
        node.family.lock.lockShared()
        defer { node.family.lock.unlock() }
        guard !node.removed, node.hasImage else { throw .stale("disk \(id) was deleted") }
        let x = try externalObject(id)
        guard blocks.lowerBound >= 0, blocks.upperBound <= x.blockCount else { throw .invalid("blocks \(blocks) outside 0..<\(x.blockCount)") }
        if x.isComplete { return }
        try withSource(of: x) { (v) throws(LunError) in
            x.copyLock.lockExclusive()
            defer { x.copyLock.unlock() }
            try x.copyIn(Array(blocks)) { (o, b) throws(LunError) -> Int in try readLocked(v, at: o, into: b) }
        }
    }
}
