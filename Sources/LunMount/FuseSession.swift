// One libfuse session from creation to teardown: mount options, the request loop, and the
// reverse-order cleanup. The FileSystem rides along as the session's userdata and is
// retained here for exactly as long as the session exists.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import LunEngine
import LunNBD

struct SessionOptions {
    /// Options handed to libfuse's -o (ours first, then the user's).
    var fuseOptions: [String] = []
    /// Worker threads serving requests.
    var maximumThreads = 16
    /// Move requests to FUSE over io_uring when the kernel offers it (-o uring=off: never).
    var useRing = true
}

final class FuseSession {
    private let session: OpaquePointer
    private let fileSystem: FileSystem
    private let maximumThreads: Int
    private let useRing: Bool
    /// The custom io for io_uring; released after the session (stored properties outlive deinit's body).
    private var transport: UringTransport?
    private(set) var isMounted = false
    private var hasSignalHandlers = false

    /// Creates the session (this validates the options) but does not mount it yet.
    init(fileSystem: FileSystem, poolDirectory: String, options: SessionOptions) throws(MountFailure) {
        self.fileSystem = fileSystem
        self.maximumThreads = options.maximumThreads
        self.useRing = options.useRing
        // libfuse copies the table into the session.
        var operations = makeOperationsTable()
        let userdata = Unmanaged.passUnretained(fileSystem).toOpaque()
        self.session = try Self.newSession(poolDirectory: poolDirectory, options: options, operations: &operations, userdata: userdata)
        fileSystem.kernelCache.attach(session)
        fileSystem.kernelCache.serve(withThreads: max(1, options.maximumThreads))
    }

    /// Checks the -o options the way the real session will, before anything is created: a
    /// session is made with an empty table and dropped. libfuse explains a refusal on stderr.
    static func validate(poolDirectory: String, options: SessionOptions) throws(MountFailure) {
        var noOperations = fuse_lowlevel_ops()
        let probe = try newSession(poolDirectory: poolDirectory, options: options, operations: &noOperations, userdata: nil)
        fuse_session_destroy(probe)
    }

    private static func newSession(poolDirectory: String, options: SessionOptions,
                                   operations: inout fuse_lowlevel_ops, userdata: UnsafeMutableRawPointer?) throws(MountFailure) -> OpaquePointer {
        // A comma or backslash in the pool path would split the option list.
        let escapedPool = poolDirectory.replacing("\\", with: "\\\\").replacing(",", with: "\\,")
        let ownOptions = [
            "fsname=lunfs:\(escapedPool)",
            "subtype=lunfs",
            "default_permissions",
            "max_read=\(maximumRequestBytes)",
        ]
        let words = ["lunfs", "-o", (ownOptions + options.fuseOptions).joined(separator: ",")]
        var cStrings: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        let created: OpaquePointer? = cStrings.withUnsafeMutableBufferPointer { argv in
            var arguments = lunfs_fuse_args(Int32(words.count), argv.baseAddress)
            defer { fuse_opt_free_args(&arguments) }
            return fuse_session_new(&arguments, &operations, MemoryLayout<fuse_lowlevel_ops>.size, userdata)
        }
        guard let created else {
            throw MountFailure(2, "libfuse refused the mount options \(options.fuseOptions.joined(separator: ","))")
        }
        return created
    }

    func mount(at mountpoint: String) throws(MountFailure) {
        precondition(!isMounted)
        // Background jobs inherit SIGINT ignored, and libfuse only replaces SIG_DFL handlers.
        signal(SIGINT, SIG_DFL)
        guard fuse_set_signal_handlers(session) == 0 else {
            throw MountFailure(1, "cannot install signal handlers")
        }
        hasSignalHandlers = true
        guard fuse_session_mount(session, mountpoint) == 0 else {
            throw MountFailure(1, "cannot mount on \(mountpoint) (is /dev/fuse usable and fusermount3 installed?)")
        }
        isMounted = true
        // Which mount is ours, for opening its inodes by handle (KernelPageCache): from the
        // mount table, since a stat of the mount point would wait for INIT, not yet served.
        if let entry = MountTable.entry(at: mountpoint), entry.fileSystemType.hasPrefix("fuse") {
            fileSystem.kernelCache.mounted(at: mountpoint, device: entry.device)
        }
        do {
            let custom = try UringTransport(session: session, threads: max(1, maximumThreads), wantRing: useRing)
            transport = custom
            // The kernel queues a request on the ring of the CPU its sender runs on, and a
            // flush's WRITEs are sent by the flushing thread itself: a queue must keep an
            // entry that is not flushing, wherever that thread runs. Fewer flushes at once
            // than entries per queue (UringTransport gives each at least two) ensures it.
            if useRing { fileSystem.kernelCache.serve(withThreads: min(max(1, maximumThreads), custom.entriesPerQueue)) }
        } catch {
            fileSystem.log.write("session: plain libfuse io: \(error.message) (\(errnoName(error.errno)))")
        }
    }

    /// Serves requests until unmounted or signalled; returns 0, or the first error a worker
    /// met reading the device. See RequestLoop for why this is not fuse_session_loop_mt.
    func run() -> Int32 {
        precondition(isMounted)
        let log = fileSystem.log
        if !useRing { log.write("session: requests over /dev/fuse (-o uring=off)") }
        let status = RequestLoop(session: session, workers: max(1, maximumThreads), transport: transport,
                                 log: { log.write($0) }).run()
        log.write("session: the kernel asked \(fileSystem.capabilityLookups.load(ordering: .relaxed)) times for security.capability")
        return status

    }

    /// What the NBD server calls after a client changed a disk: the kernel drops its cached
    /// pages of that range of the image (keep_cache would otherwise serve old bytes) and the
    /// image's modification time moves. Valid while this session exists.
    func imageChangeObserver() -> ChangeObserver {
        let target = InvalidationTarget(session: session, fileSystem: fileSystem)
        return { disk, offset, length in target.imageChanged(disk, offset: offset, length: length) }
    }

    deinit {
        fileSystem.kernelCache.attach(nil)
        if isMounted { fuse_session_unmount(session) }
        if hasSignalHandlers { fuse_remove_signal_handlers(session) }
        fuse_session_destroy(session)
    }
}

/// The session pointer and the file system, carried to NBD threads. libfuse's notify calls
/// are safe from any thread while the session exists.
private final class InvalidationTarget: @unchecked Sendable {
    let session: OpaquePointer
    let fileSystem: FileSystem

    init(session: OpaquePointer, fileSystem: FileSystem) {
        self.session = session
        self.fileSystem = fileSystem
    }

    func imageChanged(_ disk: DiskID, offset: UInt64, length: UInt64) {
        fileSystem.touch(disk)
        // -ENOENT only says the kernel holds nothing of this image; nothing to drop then.
        _ = fuse_lowlevel_notify_inval_inode(session, MountedNode.image(disk).inodeNumber,
                                             off_t(offset), off_t(length))
    }
}
