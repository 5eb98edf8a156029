// `lunfs rollback POOL DISK SNAPSHOT`: rolls disk DISK (its path in the tree, e.g. `vm`) back
// to its snapshot SNAPSHOT (a name in DISK's directory) and keeps the state before as a new
// snapshot `DISK/before-rollback-<UTC time>`, whose name it prints. On a mounted pool the
// daemon does it (control verb `rollback`), so the kernel's cached pages of the image are
// handled as for `setfattr -n user.lunfs.rollback`; otherwise the pool is opened here.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunEngine
import LunMount

func runRollback(_ args: [String]) -> Int32 {
    runVerb {
        guard let words = try exactPositionals(args, 3, usage: "lunfs rollback POOL DISK SNAPSHOT   (DISK: a path in the pool's tree, SNAPSHOT: a snapshot in its directory)") else {
            return ExitCode.failure
        }
        let directory = words[0], path = words[1], snapshot = words[2]
        let disk = path.split(separator: "/").joined(separator: "/")
        if isLocked(directory) {
            let absolute = directory.hasPrefix("/") ? directory : FileManager.default.currentDirectoryPath + "/" + directory
            let answer: Data
            do {
                answer = try askDaemon(poolDirectory: absolute, verb: "rollback", arguments: ["disk": disk, "snapshot": snapshot])
            } catch let failure as ControlFailure {
                printError("rollback of \(disk) to \(snapshot): \(failure.message) (errno \(failure.errno))")
                return 1  // refused at run time; 2 is for bad usage
            }
            let result = (try? JSONSerialization.jsonObject(with: answer)) as? [String: String]
            print("\(disk) rolled back to \(snapshot); the state before is \(result?["beforePath"] ?? "a new snapshot (see the daemon's log)")")
            return ExitCode.ok
        }
        let pool = try Pool.open(directory: directory)
        let outcome: RollbackOutcome
        do {
            guard let id = pool.disk(atTreePath: disk) else { throw LunError.notFound("no disk at \(path)") }
            guard let target = pool.child(named: snapshot, of: id) else { throw LunError.notFound("\(disk) has no snapshot named \(snapshot)") }
            outcome = try pool.rollback(id, to: target)
        } catch {
            try? pool.close()
            throw error
        }
        try pool.close()
        print("\(disk) rolled back to \(snapshot); the state before is \(disk)/\(outcome.beforeName)")
        return ExitCode.ok
    }
}
