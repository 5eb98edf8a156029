// Running a helper program (fusermount3, umount) and waiting for it, without Foundation.
#if canImport(Glibc)
import Glibc
#endif

/// Runs `program` (looked up in PATH) with `arguments`; returns its exit status, or nil if it
/// could not be started or was killed. Its output goes where ours goes.
func runProgram(_ program: String, _ arguments: [String]) -> Int32? {
    let words = [program] + arguments
    var argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var child: pid_t = 0
    let started = posix_spawnp(&child, program, nil, nil, &argv, environ)
    guard started == 0 else { return nil }
    var status: Int32 = 0
    while waitpid(child, &status, 0) < 0 {
        guard errno == EINTR else { return nil }
    }
    // WIFEXITED / WEXITSTATUS by hand: Swift does not import the macros.
    guard status & 0x7f == 0 else { return nil }
    return (status >> 8) & 0xff
}

/// True while process `pid` exists and is not a zombie.
func processIsAlive(_ pid: pid_t) -> Bool {
    guard let stat = readWholeFile("/proc/\(pid)/stat") else { return false }
    // "pid (comm) S ...": the state follows the last ')'.
    guard let close = stat.lastIndex(of: UInt8(ascii: ")")), close + 2 < stat.count else { return false }
    let state = stat[close + 2]
    return state != UInt8(ascii: "Z") && state != UInt8(ascii: "X")
}
