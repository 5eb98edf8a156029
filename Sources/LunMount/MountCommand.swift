// `lunfs mount POOL MOUNTPOINT`: checks the paths, creates a pool if asked to (--create), forks
// into the background (unless --foreground), opens the pool, mounts it (and with --nbd serves
// the same pool object over NBD) until unmounted or signalled, then closes the pool (which
// commits) and exits 0.
#if canImport(Glibc)
import Glibc
#endif
import LunEngine
import LunNBD

/// Runs `lunfs mount`; `arguments` are the words after "mount". Returns the exit status.
public func runMountCommand(_ arguments: [String]) -> Int32 {
    runDaemonVerb("mount", usage: mountUsage, arguments) { () throws(MountFailure) in
        try MountCommand(MountArguments.parse(arguments)).run()
    }
}

/// The frame `mount` and `serve` share: --help, and a failure printed with its exit status
/// (and a pointer to --help when it is a usage error).
func runDaemonVerb(_ verb: String, usage: String, _ arguments: [String], _ body: () throws(MountFailure) -> Int32) -> Int32 {
    if arguments.contains("-h") || arguments.contains("--help") {
        printLine(usage, to: STDOUT_FILENO)
        return 0
    }
    do {
        return try body()
    } catch {
        printLine("lunfs \(verb): \(error.message)", to: STDERR_FILENO)
        if error.exitStatus == 2 && !error.message.contains("/") {
            printLine("run 'lunfs \(verb) --help' for usage", to: STDERR_FILENO)
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
        // The daemon runs in /; a relative socket path must not move with it.
        if case .unixSocket(let path)? = arguments.nbd?.address {
            self.arguments.nbd?.address = .unixSocket(path: absolutePath(path))
        }
        self.mountpoint = absolutePath(arguments.mountpoint)
    }

    var opener: PoolOpener {
        PoolOpener(poolDirectory: poolDirectory, readOnly: arguments.isReadOnly, createPool: arguments.createPool,
                   poolOptions: arguments.poolOptions)
    }

    var sessionOptions: SessionOptions {
        SessionOptions(fuseOptions: arguments.fuseOptions, maximumThreads: arguments.maximumThreads, useRing: arguments.useRing)
    }

    func run() throws(MountFailure) -> Int32 {
        let plan = try opener.plan()
        let deviceBefore = try checkMountpoint()
        try FuseSession.validate(poolDirectory: poolDirectory, options: sessionOptions)
        if arguments.foreground {
            return serve(plan, channel: StartupChannel(foreground: true))
        }
        switch try forkDaemon() {
        case .parent(let child, let pipeFromChild):
            return awaitDaemon(child: child, pipeFromChild: pipeFromChild, verb: "mount", poolDirectory: poolDirectory) {
                mountReadyCheck(mountpoint: mountpoint, deviceBefore: deviceBefore)
            }
        case .child(let pipeToParent):
            return serve(plan, channel: StartupChannel(foreground: false, pipeToParent: pipeToParent))
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
    private func serve(_ plan: PoolOpener.Plan, channel: StartupChannel) -> Int32 {
        let log = DaemonLog(copyToStandardError: !channel.isDaemon)
        let pool: Pool
        do {
            pool = try opener.open(plan, log: log, channel: channel)
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

    private func mountAndServe(_ pool: Pool, log: DaemonLog, channel: StartupChannel) -> Int32 {
        var options = FileSystemOptions(directIO: arguments.directIO, writebackCache: arguments.writebackCache,
                                        ownerOnlyByDefault: arguments.fuseOptions.contains("allow_other"))
        if let resolved = realpath(mountpoint, nil) { options.mountpoint = String(cString: resolved); free(resolved) }
        let fileSystem = FileSystem(pool: pool, log: log, options: options)
        let session: FuseSession
        var nbdServer: NBDServer?
        do throws(MountFailure) {
            session = try FuseSession(fileSystem: fileSystem, poolDirectory: poolDirectory, options: sessionOptions)
            if let nbd = arguments.nbd {
                // Bound before the mount, so a taken address refuses the whole command.
                do throws(NBDServerError) {
                    nbdServer = try NBDServer(address: nbd.address, pool: pool, options: nbd.serverOptions,
                                              onChange: session.imageChangeObserver(), log: { log.write($0) })
                } catch {
                    throw MountFailure(1, "cannot serve NBD: \(error.message)")
                }
            }
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
        nbdServer?.start()
        let control = ControlServer(poolDirectory: poolDirectory, verbs: .standard(pool: pool, fileSystem: fileSystem), log: log)
        control?.start()
        defer { control?.stop() }
        channel.ready("lunfs: mounted \(poolDirectory) on \(mountpoint)" + (nbdServer.map { ", NBD on \($0.address)" } ?? ""))
        raiseReadahead(of: mountpoint, log: log)
        let status = session.run()
        // libfuse returns 0, -errno, or the number of the signal that ended the loop.
        log.write("mount: session ended (\(status > 0 ? "signal \(status)" : "status \(status)"))")
        // NBD clients go before the session does: the observer needs the session alive.
        nbdServer?.stop()
        return status >= 0 ? 0 : 1
    }

}

/// POOL/lunfs.pid while a daemon serves the pool.
func writePIDFile(_ path: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return }
    writeAll(fd, "\(getpid())\n")
    close(fd)
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
