// A snapshot on separate storage as a second host sees it (`lunfs attach`): one export whose
// bytes come from the snapshot's file where the coordinator's validity map says the file
// holds them, and from the coordinator (which reads V) elsewhere. Writes claim their blocks
// first (the coordinator copies V's block in if needed and sets the bit), then go to the file
// directly, and the coordinator hears of each (its mounted tree drops cached pages). Bits
// never clear, so a block once seen valid is read here without asking again; only blocks not
// yet known valid cost a question before a read or a write. It is an `ExportablePool`,
// so the ordinary NBD server serves it to this host's clients.
import Synchronization
import LunEngine

public final class AttachedSnapshot: ExportablePool, @unchecked Sendable {
    public let exportName: String
    public let layout: ExternalLayout
    public let readOnly: Bool
    private let coordinator: CoordinatorClient
    private let file: FileDevice
    /// Blocks known to be valid (one bit each); only ever gains bits.
    private let known: Mutex<[UInt64]>
    /// Questions asked, for the log and the tests.
    public let questions = Atomic<Int>(0)
    static let id: DiskID = 1

    /// Connects to the coordinator at `address` for `export` and opens the snapshot's file.
    public init(coordinator address: NBDAddress, export: String) throws(NBDError) {
        coordinator = try CoordinatorClient(address: address, export: export)
        exportName = export
        layout = coordinator.layout
        readOnly = coordinator.readOnly
        do { file = try FileDevice(path: layout.filePath) } catch {
            throw NBDError(NBDError.ioCode, "cannot open the snapshot's file \(layout.filePath) here: \(error)")
        }
        let blocks = Int((layout.sizeBytes + UInt64(layout.blockBytes) - 1) / UInt64(layout.blockBytes))
        known = Mutex([UInt64](repeating: 0, count: (blocks + 63) / 64))
    }

    private var blockBytes: UInt64 { UInt64(layout.blockBytes) }

    private func isKnown(_ b: Int) -> Bool { known.withLock { $0[b >> 6] & (1 << UInt64(b & 63)) != 0 } }

    private func learn(_ blocks: some Sequence<Int>) {
        known.withLock { words in for b in blocks { words[b >> 6] |= 1 << UInt64(b & 63) } }
    }

    private func blocks(_ offset: UInt64, _ count: Int) -> Range<Int> {
        guard count > 0 else { return 0..<0 }
        return Int(offset / blockBytes)..<Int((offset + UInt64(count) + blockBytes - 1) / blockBytes)
    }

    // MARK: ExportablePool

    public func disks() -> [DiskInfo] { [DiskInfo(id: Self.id, name: exportName, sizeBytes: layout.sizeBytes, kind: .snapshot)] }
    public func info(_ id: DiskID) -> DiskInfo? { id == Self.id ? disks()[0] : nil }
    public func treePath(of id: DiskID) -> String? { id == Self.id ? exportName : nil }
    public func disk(atTreePath path: String) -> DiskID? { path == exportName ? Self.id : nil }

    public func read(_ id: DiskID, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(LunError) -> Int {
        guard offset < layout.sizeBytes, buffer.count > 0 else { return 0 }
        let n = Int(min(UInt64(buffer.count), layout.sizeBytes - offset))
        let range = blocks(offset, n)
        let unknown = range.filter { !isKnown($0) }
        if let first = unknown.first, let last = unknown.last {
            questions.add(1, ordering: .relaxed)
            let bits = try lun { () throws(NBDError) -> [Bool] in try coordinator.validity(first: first, count: last - first + 1) }
            learn((first...last).filter { bits[$0 - first] })
        }
        var done = 0
        while done < n {
            let pos = offset + UInt64(done)
            let b = Int(pos / blockBytes)
            let valid = isKnown(b)
            var end = min((UInt64(b) + 1) * blockBytes, offset + UInt64(n))
            while end < offset + UInt64(n), isKnown(Int(end / blockBytes)) == valid {
                end = min(end + blockBytes, offset + UInt64(n))
            }
            let len = Int(end - pos)
            let piece = UnsafeMutableRawBufferPointer(rebasing: buffer[done..<done + len])
            if valid {
                try file.read(into: piece, at: pos)
            } else {
                // Not valid when asked: the coordinator answers with the snapshot's bytes,
                // whether the block is still V's or was copied since.
                questions.add(1, ordering: .relaxed)
                let bytes = try lun { () throws(NBDError) -> [UInt8] in try coordinator.read(at: pos, count: len) }
                guard bytes.count == len else { throw .io("the coordinator answered \(bytes.count) of \(len) bytes") }
                piece.copyBytes(from: bytes)
            }
            done += len
        }
        return n
    }

    public func write(_ id: DiskID, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(LunError) {
        guard !readOnly else { throw .notPermitted("\(exportName) is read-only at its coordinator") }
        guard offset.addingReportingOverflow(UInt64(buffer.count)).partialValue <= layout.sizeBytes else {
            throw .noSpace("a snapshot on separate storage keeps its size (\(layout.sizeBytes) bytes)")
        }
        let unknown = blocks(offset, buffer.count).filter { !isKnown($0) }
        if let first = unknown.first, let last = unknown.last {
            questions.add(1, ordering: .relaxed)
            try lun { () throws(NBDError) in try coordinator.claim(first: first, count: last - first + 1) }
            learn(first...last)
        }
        try file.write(buffer, at: offset)
        // The coordinator's tree may hold pages of this range in its kernel's cache.
        try lun { () throws(NBDError) in try coordinator.wrote(at: offset, count: buffer.count) }
    }

    public func discard(_ id: DiskID, at offset: UInt64, length: UInt64) throws(LunError) {
        let end = min(offset.addingReportingOverflow(length).overflow ? UInt64.max : offset + length, layout.sizeBytes)
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var at = offset
        while at < end {
            let n = Int(min(UInt64(zeros.count), end - at))
            try write(id, at: at, from: UnsafeRawBufferPointer(rebasing: zeros[0..<n]))
            at += UInt64(n)
        }
    }

    public func seek(_ id: DiskID, from offset: UInt64, data: Bool) throws(LunError) -> UInt64? {
        guard offset < layout.sizeBytes else { return nil }
        return data ? offset : layout.sizeBytes
    }

    /// FLUSH: this host's writes are in the file; the bits they needed were made durable by
    /// the coordinator when it answered the claim.
    public func commit() throws(LunError) { try file.sync() }

    private func lun<T>(_ body: () throws(NBDError) -> T) throws(LunError) -> T {
        do { return try body() } catch {
            throw error.code == NBDError.notPermittedCode ? .notPermitted(error.message)
                : error.code == NBDError.invalidCode ? .invalid(error.message) : .io(error.message)
        }
    }
}
