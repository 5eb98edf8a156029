// The lunfs command line: dispatches each verb to the file that implements it.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LunMount

// ProcessInfo.processInfo is initialized once, lazily; two threads reaching it first at the
// same moment in a new daemon hung it for good (both waiting in swift_once). Initialized here,
// while the process has one thread and before the daemon forks, it never is again.
_ = ProcessInfo.processInfo

let usage = """
usage: lunfs init POOL [--drives N] [--drive-size SIZE] [--raid 0|1|5] [--drive PATH ...] [--force]
       lunfs mount POOL MOUNTPOINT [--foreground] [-o OPTIONS] [--create [--drives N] [--drive-size SIZE] [--raid 0|1|5]]
                   [--nbd ADDRESS [--nbd-writable]]
       lunfs serve POOL --nbd ADDRESS [--nbd-writable] [--foreground] [-o ro] [--create ...]
       lunfs unmount [--lazy] MOUNTPOINT
       lunfs status POOL [--json]
       lunfs check POOL [--scrub] [--repair]
       lunfs clone DIR [--wait]
       lunfs snapshot --to FILE DIR NAME [--wait]
       lunfs snapshot --name NAME DIR...
       lunfs rollback POOL DISK SNAPSHOT
       lunfs attach COORDINATOR EXPORT --nbd ADDRESS
       lunfs apply-changes DELTA IMAGE
       lunfs drive add POOL PATH... [--force] [--wait] | remove POOL N [--wait] | replace POOL N PATH [--wait] | list POOL [--json]
       lunfs --version
"""

let arguments = CommandLine.arguments
let rest = Array(arguments.dropFirst(2))
switch arguments.count > 1 ? arguments[1] : "" {
case "init": exit(runInit(rest))
case "mount": exit(runMountCommand(rest))
case "serve": exit(runServeCommand(rest))
case "unmount", "umount": exit(runUnmountCommand(rest))
case "status": exit(runStatus(rest))
case "check": exit(runCheck(rest))
case "clone": exit(runClone(rest))
case "snapshot": exit(runSnapshot(rest))
case "rollback": exit(runRollback(rest))
case "attach": exit(runAttach(rest))
case "apply-changes": exit(runApplyChanges(rest))
case "drive": exit(runDrive(rest))
case "help", "--help", "-h": print(usage); exit(0)
case "--version", "version": exit(runVersion())
default:
    printError(usage)
    exit(2)
}
