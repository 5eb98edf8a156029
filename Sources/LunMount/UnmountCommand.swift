// `lunfs unmount [--lazy] MOUNTPOINT`: refuses while something holds a file in the mount (a
// loop device, a process: named in the message), otherwise asks the kernel to detach it
// (fusermount3 -u) and then waits for the daemon to close the pool, so that when this command
// returns the pool is committed and free to mount again. `--lazy` detaches a busy mount anyway
// (umount -l); the daemon then serves its holders until the last one lets go.
#if canImport(Glibc)
import Glibc
#endif

/// How long unmount waits for the daemon to finish committing and exit.
let daemonExitTimeoutSeconds = 60

let unmountUsage = "usage: lunfs unmount [--lazy] MOUNTPOINT"

/// Runs `lunfs unmount`; `arguments` are the words after "unmount". Returns the exit status.
public func runUnmountCommand(_ arguments: [String]) -> Int32 {
    let lazy = arguments.contains("--lazy") || arguments.contains("-l")
    let flags = arguments.filter { $0.hasPrefix("-") }
    let paths = arguments.filter { !$0.hasPrefix("-") }
    guard paths.count == 1, flags.allSatisfy({ $0 == "--lazy" || $0 == "-l" }) else {
        printLine(unmountUsage, to: STDERR_FILENO)
        return 2
    }
    // realpath fails on a dead mount (ENOTCONN); then take the path as given.
    let mountpoint = absolutePath(paths[0])
    guard let entry = MountTable.entry(at: mountpoint) else {
        printLine("lunfs unmount: \(mountpoint) is not a mount point", to: STDERR_FILENO)
        return 2
    }
    guard let poolDirectory = entry.lunfsPoolDirectory else {
        printLine("lunfs unmount: \(mountpoint) is a \(entry.fileSystemType) mount, not a lunfs pool; use umount", to: STDERR_FILENO)
        return 2
    }
    let daemon = daemonPID(poolDirectory: poolDirectory)

    if !lazy {
        let holders = MountHolders.find(under: mountpoint)
        guard holders.isEmpty else {
            printLine("lunfs unmount: \(mountpoint) is busy; nothing was unmounted:", to: STDERR_FILENO)
            for holder in holders { printLine("  \(holder.description)", to: STDERR_FILENO) }
            printLine("close these (umount and losetup -d, stop the processes) and try again, or detach anyway with 'lunfs unmount --lazy \(mountpoint)'", to: STDERR_FILENO)
            appendToPoolLog(poolDirectory, "unmount: refused, \(mountpoint) is busy: " + holders.map(\.description).joined(separator: "; "))
            return 1
        }
        // A dead mount (its daemon gone, the mount point answering ENOTCONN) holds nothing
        // worth keeping: detach it lazily.
        var isDead = false
        if case .unreadable(let code) = pathKind(mountpoint), code == ENOTCONN || code == ECONNABORTED { isDead = true }
        let detached = runProgram("fusermount3", ["-u", mountpoint]) == 0
            || isDead && runProgram("umount", ["-l", mountpoint]) == 0
        guard detached else {
            printLine("lunfs unmount: fusermount3 -u \(mountpoint) failed (busy?); nothing was unmounted; 'lunfs unmount --lazy \(mountpoint)' detaches it anyway", to: STDERR_FILENO)
            appendToPoolLog(poolDirectory, "unmount: refused, fusermount3 -u \(mountpoint) failed")
            return 1
        }
    } else if runProgram("fusermount3", ["-u", "-z", mountpoint]) != 0 {
        guard runProgram("umount", ["-l", mountpoint]) == 0 else {
            printLine("lunfs unmount: could not unmount \(mountpoint)", to: STDERR_FILENO)
            return 1
        }
    }
    guard let daemon else { return 0 }
    // Poll every 20 ms: closing a pool is quick, and tests remount right after. After a lazy
    // detach the daemon may keep serving holders, so that wait is short.
    for _ in 0..<((lazy ? 5 : daemonExitTimeoutSeconds) * 50) {
        if !processIsAlive(daemon) { return 0 }
        usleep(20_000)
    }
    if lazy {
        // The daemon serves the holders of the detached mount until they let go.
        appendToPoolLog(poolDirectory, "unmount --lazy: \(mountpoint) detached while daemon \(daemon) still serves its holders")
        printLine("lunfs unmount: detached lazily; daemon \(daemon) closes the pool once the last holder lets go", to: STDERR_FILENO)
        return 0
    }
    printLine("lunfs unmount: unmounted, but daemon \(daemon) is still closing the pool after \(daemonExitTimeoutSeconds)s", to: STDERR_FILENO)
    return 1
}

/// The pid the daemon of `poolDirectory` wrote, if that process still runs.
private func daemonPID(poolDirectory: String) -> pid_t? {
    guard let bytes = readWholeFile(poolDirectory + "/" + daemonPIDName),
          let pid = pid_t(String(decoding: bytes, as: UTF8.self).trimmingEdges(of: " \n")),
          pid > 0, processIsAlive(pid) else { return nil }
    return pid
}

/// One line in the pool's daemon log from this command (refusals are logged like the
/// daemon's own); nothing if the log cannot be opened.
private func appendToPoolLog(_ poolDirectory: String, _ message: String) {
    let fd = open(poolDirectory + "/" + daemonLogName, O_WRONLY | O_APPEND | O_CLOEXEC)
    guard fd >= 0 else { return }
    defer { close(fd) }
    writeAll(fd, "\(DaemonLog.timestamp()) [\(getpid())] \(message)\n")
}
