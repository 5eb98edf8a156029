// Going into the background without losing the user's view of what happened: the command
// forks before any thread exists, the child does the real work, and until the mount is ready
// it reports over a pipe ("say", "ready", "fail") to the parent, which prints the report and
// exits with the right status only once the mount point really serves the pool.
#if canImport(Glibc)
import Glibc
#endif

/// Where the mounting process sends what the user should see.
final class StartupChannel {
    /// -1 in the foreground: messages go straight to stdout/stderr.
    private var pipeToParent: Int32
    /// The verb messages in the foreground start with ("lunfs mount: ...").
    private let verb: String

    init(foreground: Bool, pipeToParent: Int32 = -1, verb: String = "mount") {
        assert(foreground == (pipeToParent < 0))
        self.pipeToParent = pipeToParent
        self.verb = verb
    }

    var isDaemon: Bool { pipeToParent >= 0 }

    func say(_ text: String) {
        if isDaemon { send("say \(text)") } else { printLine(text, to: STDOUT_FILENO) }
    }

    func ready(_ text: String) {
        if isDaemon {
            send("ready \(text)")
            close(pipeToParent)
            pipeToParent = -1
        } else {
            printLine(text, to: STDOUT_FILENO)
        }
    }

    func fail(_ failure: MountFailure) {
        if isDaemon { send("fail \(failure.exitStatus) \(failure.message)") } else { printLine("lunfs \(verb): \(failure.message)", to: STDERR_FILENO) }
    }

    private func send(_ line: String) {
        let flat = line.split(whereSeparator: { $0 == "\n" }).joined(separator: " ")
        writeAll(pipeToParent, flat + "\n")
    }
}

enum ForkOutcome {
    case parent(child: pid_t, pipeFromChild: Int32)
    case child(pipeToParent: Int32)
}

/// Forks the daemon. Must run while the process has a single thread.
func forkDaemon() throws(MountFailure) -> ForkOutcome {
    var ends: [Int32] = [-1, -1]
    guard pipe(&ends) == 0 else { throw MountFailure(1, "pipe: \(errorText(errno))") }
    // Close-on-exec, so that helpers the daemon starts do not hold the parent waiting.
    for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
    let child = fork()
    switch child {
    case -1:
        throw MountFailure(1, "fork: \(errorText(errno))")
    case 0:
        close(ends[0])
        setsid()
        // Every path is absolute by now; do not pin the caller's working directory.
        _ = chdir("/")
        let null = open("/dev/null", O_RDWR)
        if null >= 0 { dup2(null, STDIN_FILENO); close(null) }
        return .child(pipeToParent: ends[1])
    default:
        close(ends[1])
        return .parent(child: child, pipeFromChild: ends[0])
    }
}

/// The parent's side: relays the child's report and, at "ready", asks `readyCheck` whether
/// the service really answers (nil: it does; otherwise what is wrong).
func awaitDaemon(child: pid_t, pipeFromChild: Int32, verb: String, poolDirectory: String, readyCheck: () -> String?) -> Int32 {
    defer { close(pipeFromChild) }
    var pending: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(pipeFromChild, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        pending += chunk[..<count]
        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
            let line = String(decoding: pending[..<newline], as: UTF8.self)
            pending.removeSubrange(...newline)
            let (kind, rest) = splitWord(line)
            switch kind {
            case "say":
                printLine(rest, to: STDOUT_FILENO)
            case "ready":
                if let problem = readyCheck() {
                    printLine("lunfs \(verb): \(problem); see \(poolDirectory)/lunfs.log", to: STDERR_FILENO)
                    return 1
                }
                printLine(rest, to: STDOUT_FILENO)
                return 0
            case "fail":
                let (code, message) = splitWord(rest)
                printLine("lunfs \(verb): \(message)", to: STDERR_FILENO)
                var status: Int32 = 0
                waitpid(child, &status, 0)
                return Int32(code) ?? 1
            default:
                printLine(line, to: STDOUT_FILENO)
            }
        }
    }
    var status: Int32 = 0
    waitpid(child, &status, 0)
    printLine("lunfs \(verb): the daemon exited before it was ready; see \(poolDirectory)/lunfs.log", to: STDERR_FILENO)
    return 1
}

/// The mount's readiness: the mount point answers and is on another device than before.
func mountReadyCheck(mountpoint: String, deviceBefore: dev_t) -> String? {
    var after = stat()
    guard stat(mountpoint, &after) == 0 else {
        return "the mount at \(mountpoint) does not answer (\(String(cString: strerror(errno))))"
    }
    guard after.st_dev != deviceBefore else { return "\(mountpoint) did not change into a mount" }
    return nil
}

private func splitWord(_ line: String) -> (String, String) {
    guard let space = line.firstIndex(of: " ") else { return (line, "") }
    return (String(line[..<space]), String(line[line.index(after: space)...]))
}

func printLine(_ text: String, to fd: Int32) {
    writeAll(fd, text + "\n")
}

/// write(2) until everything is out (or the descriptor fails).
func writeAll(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}
