// `lunfs mount POOL MOUNTPOINT`: checks the paths, creates a pool if asked to (--create), forks into
// the background (unless --foreground), opens the pool, mounts it and serves requests until
// unmounted or signalled, then closes the pool (which commits) and exits 0.
#if canImport(Glibc)
import Glibc
#endif
import LunEngine

/// Runs `lunfs mount`; `arguments` are the words after "mount". Returns the exit status.
public func runMountCommand(_ arguments: [String]) -> Int32 {
    if arguments.contains("-h") || arguments.contains("--help") {
        printLine(mountUsage, to: STDOUT_FILENO)
        return 0
    }
    do {
        return try MountCommand(MountArguments.parse(arguments)).run()
    } catch {
        printLine("lunfs mount: \(error.message)", to: STDERR_FILENO)
        if error.exitStatus == 2 && !error.message.contains("/") {
            printLine("run 'lunfs mount --help' for usage", to: STDERR_FILENO)
        }
        return error.exitStatus
    }
}

/// The name of the daemon's log and pid files inside the pool directory.
let daemonLogName = "lunfs.log"
let daemonPIDName = "lunfs.pid"

struct MountCommand {
    var arguments: MountArguments
    var poolDirectory: String
    var mountpoint: String

    init(_ arguments: MountArguments) {
        self.arguments = arguments
        self.poolDirectory = absolutePath(arguments.poolPath)
        self.mountpoint = absolutePath(arguments.mountpoint)
    }

    var sessionOptions: SessionOptions {
        SessionOptions(fuseOptions: arguments.fuseOptions, maximumThreads: arguments.maximumThreads)
    }

    /// Whether the pool has to be made first.
    enum PoolPlan { case open, create }

    func run() throws(MountFailure) -> Int32 {
        let plan = try checkPool()
        let deviceBefore = try checkMountpoint()
        try FuseSession.validate(poolDirectory: poolDirectory, options: sessionOptions)
        if arguments.foreground {
            return serve(plan, channel: StartupChannel(foreground: true))
        }
        switch try forkDaemon() {
        case .parent(let child, let pipeFromChild):
            return awaitDaemon(child: child, pipeFromChild: pipeFromChild, mountpoint: mountpoint,
                               deviceBefore: deviceBefore, poolDirectory: poolDirectory)
        case .child(let pipeToParent):
            return serve(plan, channel: StartupChannel(foreground: false, pipeToParent: pipeToParent))
        }
    }

    private func checkPool() throws(MountFailure) -> PoolPlan {
        let howToCreate = "give --create to make a new pool there, or run 'lunfs init \(poolDirectory)'"
        switch pathKind(poolDirectory) {
        case .missing:
            guard arguments.createPool else {
                throw MountFailure(2, "no pool at \(poolDirectory): the directory does not exist; \(howToCreate)")
            }
            // poolDirectory is absolute with its existing part resolved (absolutePath).
            let slash = poolDirectory.lastIndex(of: "/") ?? poolDirectory.startIndex
            let parent = slash == poolDirectory.startIndex ? "/" : String(poolDirectory[..<slash])
            guard case .directory = pathKind(parent) else {
                throw MountFailure(2, "cannot create a pool in \(poolDirectory): its parent \(parent) does not exist (mount never creates parent directories)")
            }
            return .create
        case .other:
            throw MountFailure(2, "\(poolDirectory) is a file, not a pool directory")
        case .unreadable(let code):
            throw MountFailure(2, "cannot examine \(poolDirectory): \(errorText(code))")
        case .directory:
            if Pool.exists(directory: poolDirectory) { return .open }
            guard let names = directoryNames(poolDirectory) else {
                throw MountFailure(2, "cannot read \(poolDirectory)")
            }
            let leftovers = names.filter { $0 != daemonLogName && $0 != daemonPIDName }
            guard leftovers.isEmpty else {
                throw MountFailure(2, "\(poolDirectory) holds no pool and is not empty; give an empty or missing directory to create one")
            }
            guard arguments.createPool else {
                throw MountFailure(2, "no pool in \(poolDirectory): the directory is empty; \(howToCreate)")
            }
            return .create
        }
    }

    /// The mount point must be a directory that is not a mount already; returns its device.
    private func checkMountpoint() throws(MountFailure) -> dev_t {
        switch pathKind(mountpoint) {
        case .missing:
            throw MountFailure(2, "mount point \(mountpoint) does not exist")
        case .other:
            throw MountFailure(2, "mount point \(mountpoint) is not a directory")
        case .unreadable(ENOTCONN), .unreadable(ECONNABORTED):
            throw MountFailure(2, "\(mountpoint) is a dead FUSE mount (its daemon is gone); run 'lunfs unmount \(mountpoint)' first")
        case .unreadable(let code):
            throw MountFailure(2, "cannot examine mount point \(mountpoint): \(errorText(code))")
        case .directory:
            break
        }
        if let existing = MountTable.entry(at: mountpoint) {
            throw MountFailure(2, "\(mountpoint) is already a mount point (\(existing.fileSystemType) from \(existing.source))")
        }
        if poolDirectory == mountpoint || poolDirectory.hasPrefix(mountpoint + "/") {
            throw MountFailure(2, "the pool \(poolDirectory) cannot live inside its own mount point")
        }
        var info = stat()
        stat(mountpoint, &info)
        return info.st_dev
    }

    /// Everything that happens in the process that will serve the mount. Failures before the
    /// mount is ready go to the user through `channel`; later ones only to the log.
    private func serve(_ plan: PoolPlan, channel: StartupChannel) -> Int32 {
        let log = DaemonLog(copyToStandardError: !channel.isDaemon)
        let pool: Pool
        do {
            pool = try openPool(plan, log: log, channel: channel)
        } catch {
            channel.fail(error)
            return error.exitStatus
        }
        // In the daemon, whatever still writes to stdout or stderr (a crash report) lands in the log.
        log.attach(path: poolDirectory + "/" + daemonLogName, redirectStandardStreams: channel.isDaemon)
        log.write("mount: serving \(poolDirectory) on \(mountpoint) (pid \(getpid()), \(channel.isDaemon ? "daemon" : "foreground"))")

        let status = mountAndServe(pool, log: log, channel: channel)
        // `lunfs unmount` waits for this process to exit, so the pool is closed by then.
        defer { unlink(poolDirectory + "/" + daemonPIDName) }
        do {
            try pool.close()
            log.write("mount: pool closed")
        } catch {
            log.write("mount: closing the pool failed: \(error)")
            return 1
        }
        return status
    }

    private func openPool(_ plan: PoolPlan, log: DaemonLog, channel: StartupChannel) throws(MountFailure) -> Pool {
        // Open runs on this thread; progress of the long steps it may take (resync after a
        // crash, rebuilding a drive that came back) goes to the user's terminal as well.
        let terminal = TerminalBox(channel)
        let engineLog: @Sendable (String) -> Void = { line in
            log.write("engine: \(line)")
            if line.hasPrefix("resync") || line.hasPrefix("rebuil") { terminal.channel.say("lunfs: \(line)") }
        }
        do {
            switch plan {
            case .open:
                let pool = try Pool.open(directory: poolDirectory, readOnly: arguments.isReadOnly, log: engineLog)
                for note in pool.openNotes { channel.say("lunfs: note: \(note)") }
                return pool
            case .create:
                let options = arguments.poolOptions
                let pool = try Pool.create(directory: poolDirectory, options: options, log: engineLog)
                let raid = options.raid ?? PoolOptions.defaultRAID(drives: options.driveCount)
                channel.say("lunfs: created a new pool in \(poolDirectory): \(options.driveCount) drive\(options.driveCount == 1 ? "" : "s") of \(byteSizeText(options.driveSizeBytes)), \(raid)")
                return pool
            }
        } catch {
            switch error {
            case .busy(let reason):
                // The engine's reason names the pool and the process holding it; once is enough.
                throw MountFailure(1, reason)
            case _ where plan == .open:
                // The pool is there but cannot be served as it is (damaged, drives missing
                // beyond what redundancy covers): the input is the problem, as README says.
                throw MountFailure(2, "cannot open the pool \(poolDirectory): \(error)")
            case .invalid, .exists:
                throw MountFailure(2, "cannot create the pool \(poolDirectory): \(error)")
            default:
                throw MountFailure(1, "cannot \(plan == .open ? "open" : "create") the pool \(poolDirectory): \(error)")
            }
        }
    }

    private func mountAndServe(_ pool: Pool, log: DaemonLog, channel: StartupChannel) -> Int32 {
        let options = FileSystemOptions(directIO: arguments.directIO)
        let fileSystem = FileSystem(pool: pool, log: log, options: options)
        let session: FuseSession
        do {
            session = try FuseSession(fileSystem: fileSystem, poolDirectory: poolDirectory, options: sessionOptions)
            try session.mount(at: mountpoint)
        } catch {
            log.write("mount: \(error.message)")
            channel.fail(error)
            return error.exitStatus
        }
        writePIDFile(poolDirectory + "/" + daemonPIDName)
        if !arguments.isReadOnly {
            pool.startBackgroundCommits()
            pool.startBackgroundCopies()
        }
        channel.ready("lunfs: mounted \(poolDirectory) on \(mountpoint)")
        raiseReadahead(of: mountpoint, log: log)
        let status = session.run()
        // libfuse returns 0, -errno, or the number of the signal that ended the loop.
        log.write("mount: session ended (\(status > 0 ? "signal \(status)" : "status \(status)"))")
        return status >= 0 ? 0 : 1
    }

    private func writePIDFile(_ path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        writeAll(fd, "\(getpid())\n")
        close(fd)
    }
}

/// 268435456 -> "256 MiB".
func byteSizeText(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    var value = bytes
    var unit = 0
    while value >= 1024 && value % 1024 == 0 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return "\(value) \(units[unit])"
}

/// Lets the engine's log closure, which must be Sendable, reach the startup channel. It is
/// only used while the pool opens, on the thread that owns the channel.
private final class TerminalBox: @unchecked Sendable {
    let channel: StartupChannel
    init(_ channel: StartupChannel) { self.channel = channel }
}
