// `lunfs attach COORDINATOR EXPORT --nbd ADDRESS`: a second host's use of a snapshot on
// separate storage. COORDINATOR is the NBD address of the daemon that owns the snapshot
// (`lunfs mount ... --nbd` or `lunfs serve`), EXPORT its tree path (vm/monday). This host
// reads the snapshot's file directly where it holds the snapshot, asks the coordinator for
// the rest and before writing a block, and serves the result to its own clients over NBD at
// ADDRESS. It runs in the foreground until SIGTERM or SIGINT (docs/NBD.md, "A second host").
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import LunNBD

func runAttach(_ args: [String]) -> Int32 {
    runVerb {
        let parsed = try ParsedArguments(args, valued: ["nbd"])
        guard parsed.positionals.count == 2, let local = parsed.options["nbd"]?.last,
              let coordinator = NBDAddress(parsed.positionals[0]), let address = NBDAddress(local) else {
            printError("usage: lunfs attach COORDINATOR EXPORT --nbd ADDRESS   (COORDINATOR, ADDRESS: a Unix socket path or HOST:PORT)")
            return ExitCode.failure
        }
        let export = parsed.positionals[1]
        // Signals are taken by sigwait below, not by a handler.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        let snapshot: AttachedSnapshot
        let server: NBDServer
        do {
            snapshot = try AttachedSnapshot(coordinator: coordinator, export: export)
            server = try NBDServer(address: address, pool: snapshot, options: NBDServerOptions(writableSnapshots: true),
                                   log: { printError($0) })
        } catch {
            printError("lunfs attach: \(error)")
            return 1
        }
        server.start()
        print("lunfs attach: \(export) (\(snapshot.layout.sizeBytes) bytes, file \(snapshot.layout.filePath)\(snapshot.readOnly ? ", read-only" : "")) served on \(address)")
        fflush(nil)
        var caught: Int32 = 0
        sigwait(&signals, &caught)
        server.stop()
        do { try snapshot.commit() } catch { printError("lunfs attach: final sync failed: \(error)"); return 1 }
        printError("lunfs attach: detached after \(snapshot.questions.load(ordering: .relaxed)) questions to the coordinator")
        return ExitCode.ok
    }
}
