// The running pool's snapshots on separate storage: the objects that hold their files open,
// opened on first use from the records in the pool's metadata, and how files are opened and
// created (real files by default; a test hands in simulated devices). A snapshot whose file
// or map cannot be opened, or whose map does not match its record, is remembered as broken:
// its reads fail with EIO and it no longer asks V to copy anything.
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

public typealias ExternalDeviceOpener = @Sendable (_ path: String, _ createBytes: UInt64?) throws(LunError) -> BlockDevice

final class ExternalSnapshotRegistry: @unchecked Sendable {
    private let objects = Mutex<[DiskID: Result<ExternalSnapshot, LunError>]>([:])
    private let openerBox = Mutex<ExternalDeviceOpener>(ExternalSnapshotRegistry.openFile)
    var copier: ExternalSnapshotCopier?
    /// Removal of a snapshot deletes its map (and an incomplete file); off for simulated devices.
    var removesFiles = true

    var opener: ExternalDeviceOpener {
        get { openerBox.withLock { $0 } }
        set { openerBox.withLock { $0 = newValue } }
    }

    /// Files a creation is making right now: two creations never make the same file.
    private let creating = Mutex<Set<String>>([])

    func claimPath(_ path: String) -> Bool { creating.withLock { $0.insert(path).inserted } }

    func releasePath(_ path: String) { creating.withLock { _ = $0.remove(path) } }

    func cached(_ id: DiskID) -> Result<ExternalSnapshot, LunError>? { objects.withLock { $0[id] } }

    func remember(_ id: DiskID, _ result: Result<ExternalSnapshot, LunError>) { objects.withLock { $0[id] = result } }

    func forget(_ id: DiskID) { objects.withLock { $0[id] = nil } }

    var all: [ExternalSnapshot] {
        objects.withLock { $0.values.compactMap { try? $0.get() } }
    }

    /// Opens (`createBytes` nil) or creates a file of `createBytes` bytes. A created file must
    /// not exist yet, or be an empty regular file; its directory is synced so that the file
    /// outlives a crash.
    static let openFile: ExternalDeviceOpener = { (path: String, createBytes: UInt64?) throws(LunError) -> BlockDevice in
        guard let bytes = createBytes else { return try FileDevice(path: path) }
        var st = stat()
        if stat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size == 0 else {
                throw .exists("\(path) exists and is not an empty file")
            }
        }
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .invalid("cannot create \(path): \(String(cString: strerror(errno)))") }
        let sized = ftruncate(fd, off_t(bytes)) == 0 && fsync(fd) == 0
        close(fd)
        guard sized else { throw .noSpace("cannot size \(path) to \(bytes) bytes") }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let dfd = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
        return try FileDevice(path: path)
    }
}
