// `lunfs unmount MOUNTPOINT`: asks the kernel to detach the mount (fusermount3 -u, or a lazy
// umount if that fails) and then waits for the daemon to close the pool, so that when this
// command returns the pool is committed and free to mount again.
#if canImport(Glibc)
import Glibc
#endif

/// How long unmount waits for the daemon to finish committing and exit.
let daemonExitTimeoutSeconds = 60

/// Runs `lunfs unmount`; `arguments` are the words after "unmount". Returns the exit status.
public func runUnmountCommand(_ arguments: [String]) -> Int32 {
    let paths = arguments.filter { !$0.hasPrefix("-") }
    guard paths.count == 1, paths.count == arguments.count else {
        printLine("usage: lunfs unmount MOUNTPOINT", to: STDERR_FILENO)
        return 2
    }
    // realpath fails on a dead mount (ENOTCONN); then take the path as given.
    let mountpoint = absolutePath(paths[0])
    guard let entry = MountTable.entry(at: mountpoint) else {
        printLine("lunfs unmount: \(mountpoint) is not a mount point", to: STDERR_FILENO)
        return 2
    }
    let daemon = entry.lunfsPoolDirectory.flatMap(daemonPID(poolDirectory:))

    if runProgram("fusermount3", ["-u", mountpoint]) != 0 {
        printLine("lunfs unmount: fusermount3 -u failed; detaching lazily with umount -l", to: STDERR_FILENO)
        guard runProgram("umount", ["-l", mountpoint]) == 0 else {
            printLine("lunfs unmount: could not unmount \(mountpoint)", to: STDERR_FILENO)
            return 1
        }
    }
    guard let daemon else { return 0 }
    // Poll every 20 ms: closing a pool is quick, and tests remount right after.
    for _ in 0..<(daemonExitTimeoutSeconds * 50) {
        if !processIsAlive(daemon) { return 0 }
        usleep(20_000)
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
