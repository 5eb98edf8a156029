// `lunfs serve POOL --nbd ADDRESS`: the daemon without a FUSE mount, serving every disk and
// snapshot over NBD. It opens (or, with --create, creates) the pool like `mount`, forks into the background
// unless --foreground, and runs until SIGTERM, SIGINT or SIGHUP; then it ends every
// connection (answering requests in flight), closes the pool (which commits) and exits 0.
#if canImport(Glibc)
import Glibc
#endif
import LunEngine
import LunNBD

let serveUsage = """
    usage: lunfs serve POOL --nbd ADDRESS [--nbd-writable] [--foreground] [-o ro]
                       [--create [--drives N] [--drive-size SIZE] [--raid 0|1|5]]

    serve exports every disk and snapshot of the pool in directory POOL over NBD, without a
    FUSE mount. ADDRESS is a Unix socket path (anything with a "/") or HOST:PORT. Exports are
    named by tree path (vm, vm/monday); snapshots are read-only unless --nbd-writable, and
    everything is with -o ro (the pool is opened read-only). With --create a missing or empty
    POOL gets a new pool first (--drives, --drive-size, --raid as for mount). Without --foreground the
    server runs as a daemon logging to POOL/lunfs.log and writing its pid to POOL/lunfs.pid;
    SIGTERM stops it.
    """

/// Runs `lunfs serve`; `arguments` are the words after "serve". Returns the exit status.
public func runServeCommand(_ arguments: [String]) -> Int32 {
    runDaemonVerb("serve", usage: serveUsage, arguments) { () throws(MountFailure) in
        try ServeCommand(ServeArguments.parse(arguments)).run()
    }
}

struct ServeArguments {
    var poolPath: String
    var nbd: NBDArguments
    var foreground = false
    var readOnly = false
    var createPool = false
    var poolOptions = PoolOptions()

    static func parse(_ words: [String]) throws(MountFailure) -> ServeArguments {
        // The shared flags are parsed by mount's parser, with a stand-in mount point.
        var rest: [String] = []
        var readOnly = false
        var index = 0
        while index < words.count {
            if words[index] == "-o", index + 1 < words.count {
                for option in words[index + 1].split(separator: ",") {
                    guard option == "ro" else { throw .usage("serve takes only -o ro, not -o \(option)") }
                    readOnly = true
                }
                index += 2
                continue
            }
            rest.append(words[index])
            index += 1
        }
        let mountLike: MountArguments
        do {
            mountLike = try MountArguments.parse(rest + ["/"])
        } catch where error.message == MountArguments.positionalMistake {
            throw .usage("serve takes one POOL")
        }
        guard let nbd = mountLike.nbd else { throw .usage("serve needs --nbd ADDRESS") }
        return ServeArguments(poolPath: mountLike.poolPath, nbd: nbd, foreground: mountLike.foreground,
                              readOnly: readOnly, createPool: mountLike.createPool, poolOptions: mountLike.poolOptions)
    }
}

struct ServeCommand {
    var arguments: ServeArguments
    var poolDirectory: String

    init(_ arguments: ServeArguments) {
        self.arguments = arguments
        self.poolDirectory = absolutePath(arguments.poolPath)
        // The daemon runs in /; a relative socket path must not move with it.
        if case .unixSocket(let path) = arguments.nbd.address {
            self.arguments.nbd.address = .unixSocket(path: absolutePath(path))
        }
    }

    func run() throws(MountFailure) -> Int32 {
        let opener = PoolOpener(poolDirectory: poolDirectory, readOnly: arguments.readOnly, createPool: arguments.createPool,
                                poolOptions: arguments.poolOptions)
        let plan = try opener.plan()
        if arguments.foreground {
            return serve(opener, plan, channel: StartupChannel(foreground: true, verb: "serve"))
        }
        switch try forkDaemon() {
        case .parent(let child, let pipeFromChild):
            // The daemon says "ready" only once it listens, so there is nothing more to check.
            return awaitDaemon(child: child, pipeFromChild: pipeFromChild, verb: "serve", poolDirectory: poolDirectory) { nil }
        case .child(let pipeToParent):
            return serve(opener, plan, channel: StartupChannel(foreground: false, pipeToParent: pipeToParent, verb: "serve"))
        }
    }

    private func serve(_ opener: PoolOpener, _ plan: PoolOpener.Plan, channel: StartupChannel) -> Int32 {
        // Blocked before any thread exists, so every thread inherits the mask and the signals
        // wait for sigwait below.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        for signal in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&stopSignals, signal) }
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

        let log = DaemonLog(copyToStandardError: !channel.isDaemon)
        let pool: Pool
        do {
            pool = try opener.open(plan, log: log, channel: channel)
        } catch {
            channel.fail(error)
            return error.exitStatus
        }
        let logDescriptor = log.attach(path: poolDirectory + "/" + daemonLogName)
        if channel.isDaemon && logDescriptor >= 0 {
            dup2(logDescriptor, STDOUT_FILENO)
            dup2(logDescriptor, STDERR_FILENO)
        }
        defer { unlink(poolDirectory + "/" + daemonPIDName) }
        let server: NBDServer
        do throws(NBDServerError) {
            server = try NBDServer(address: arguments.nbd.address, pool: pool, options: arguments.nbd.serverOptions,
                                   log: { log.write($0) })
        } catch {
            let failure = MountFailure(1, "cannot serve NBD: \(error.message)")
            log.write("serve: \(failure.message)")
            channel.fail(failure)
            try? pool.close()
            return failure.exitStatus
        }
        writePIDFile(poolDirectory + "/" + daemonPIDName)
        if !arguments.readOnly {
            pool.startBackgroundCommits()
            pool.startBackgroundCopies()
        }
        server.start()
        let control = ControlServer(poolDirectory: poolDirectory, verbs: .standard(pool: pool), log: log)
        control?.start()
        log.write("serve: serving \(poolDirectory) over NBD on \(server.address) (pid \(getpid()))")
        channel.ready("lunfs: serving \(poolDirectory) over NBD on \(server.address)")

        var received: Int32 = 0
        while sigwait(&stopSignals, &received) != 0 {}
        log.write("serve: signal \(received); stopping")
        control?.stop()
        server.stop()
        do {
            try pool.close()
            log.write("serve: pool closed")
        } catch {
            log.write("serve: closing the pool failed: \(error)")
            return 1
        }
        return 0
    }
}
