// Opening the pool a daemon serves, shared by `lunfs mount` and `lunfs serve`: with --create a
// missing or empty directory gets a new pool, a directory with a pool is opened (its recovery steps
// reported to the user), anything else is refused with the exit status of a usage error.
#if canImport(Glibc)
import Glibc
#endif
import LunEngine

struct PoolOpener {
    /// Whether the pool has to be made first.
    enum Plan { case open, create }

    var poolDirectory: String
    var readOnly: Bool
    /// --create: a missing (parent present) or empty directory gets a new pool.
    var createPool: Bool
    /// Used when the pool has to be created; the snapclone variant at every open.
    var poolOptions: PoolOptions

    /// Whether there is a pool to open or one to create (only with --create); refuses anything else.
    func plan() throws(MountFailure) -> Plan {
        let howToCreate = "give --create to make a new pool there, or run 'lunfs init \(poolDirectory)'"
        switch pathKind(poolDirectory) {
        case .missing:
            guard createPool else {
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
            let leftovers = names.filter { $0 != daemonLogName && $0 != daemonPIDName && $0 != daemonControlName }
            guard leftovers.isEmpty else {
                throw MountFailure(2, "\(poolDirectory) holds no pool and is not empty; give an empty or missing directory to create one")
            }
            guard createPool else {
                throw MountFailure(2, "no pool in \(poolDirectory): the directory is empty; \(howToCreate)")
            }
            return .create
        }
    }

    /// Opens (or creates) the pool; progress of long steps goes to the user too.
    func open(_ plan: Plan, log: DaemonLog, channel: StartupChannel) throws(MountFailure) -> Pool {
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
                let pool = try Pool.open(directory: poolDirectory, readOnly: readOnly, log: engineLog)
                pool.snapcloneVariant = poolOptions.snapcloneVariant
                pool.blockCopyOnWrite = poolOptions.blockCopyOnWrite
                for note in pool.openNotes { channel.say("lunfs: note: \(note)") }
                return pool
            case .create:
                let options = poolOptions
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
}

/// Lets the engine's log closure, which must be Sendable, reach the startup channel. It is
/// only used while the pool opens, on the thread that owns the channel.
private final class TerminalBox: @unchecked Sendable {
    let channel: StartupChannel
    init(_ channel: StartupChannel) { self.channel = channel }
}
