// The daemon's log: one timestamped line per event, appended to POOL/lunfs.log (and copied to
// stderr in the foreground). Lines go out whole, one write(2) each under a lock, so worker
// threads never interleave. Any local user who can reach the mount can make requests fail, so
// failure lines are rate-limited per cause (operation and errno) and the file is rotated by
// size (lunfs.log -> lunfs.log.1): the log cannot fill the disk it lives on. The file is
// attached only once the pool exists, because creating a pool wants an empty directory; lines
// from before are held until then.
#if canImport(Glibc)
import Glibc
#endif
import CLunSys
import Synchronization

/// How much of the log is kept and how fast failures may fill it.
struct DaemonLogLimits: Sendable {
    /// The file is rotated once it would pass this size; one older file is kept.
    var maximumFileBytes: Int = 16 << 20
    /// Failure lines written per cause (operation and errno) per second; the rest are
    /// counted and summed up in one line when that cause is next logged.
    var failureLinesPerCausePerSecond: Int = 20

    /// The defaults, or LUNFS_LOG_MAX_BYTES and LUNFS_LOG_FAILURES_PER_SECOND from the
    /// daemon's environment (for tests and for admins who want more or less).
    static func fromEnvironment() -> DaemonLogLimits {
        var limits = DaemonLogLimits()
        if let text = getenv("LUNFS_LOG_MAX_BYTES").map({ String(cString: $0) }), let bytes = Int(text), bytes >= 4096 {
            limits.maximumFileBytes = bytes
        }
        if let text = getenv("LUNFS_LOG_FAILURES_PER_SECOND").map({ String(cString: $0) }), let count = Int(text), count >= 1 {
            limits.failureLinesPerCausePerSecond = count
        }
        return limits
    }
}

final class DaemonLog: Sendable {
    /// The failures of one cause in the current one-second window.
    private struct CauseWindow {
        var second: Int
        var written: Int
        /// Lines dropped since the last one written for this cause, and since when.
        var suppressed: Int
        var suppressedSince: Int
    }

    private struct State {
        var fileDescriptor: Int32 = -1
        var path: String?
        var fileBytes = 0
        /// Lines written before `attach` (while the pool is being opened or created).
        var linesBeforeAttach: [String] = []
        var causes: [String: CauseWindow] = [:]
        /// The daemon's stdout and stderr point at the file (crash reports land there) and
        /// are moved to the new file at each rotation.
        var redirectsStandardStreams = false
    }

    private let state = Mutex(State())
    private let copyToStandardError: Bool
    private let limits: DaemonLogLimits

    init(copyToStandardError: Bool, limits: DaemonLogLimits = .fromEnvironment()) {
        self.copyToStandardError = copyToStandardError
        self.limits = limits
    }

    deinit {
        let fd = state.withLock { $0.fileDescriptor }
        if fd >= 0 { close(fd) }
    }

    /// Starts appending to `path` (creating it); returns the descriptor, or -1 if it cannot.
    /// With `redirectStandardStreams`, stdout and stderr go to the file too.
    @discardableResult
    func attach(path: String, redirectStandardStreams: Bool = false) -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return -1 }
        var info = stat()
        fstat(fd, &info)
        state.withLock { state in
            assert(state.fileDescriptor < 0, "the log was attached twice")
            state.fileDescriptor = fd
            state.path = path
            state.fileBytes = Int(info.st_size)
            state.redirectsStandardStreams = redirectStandardStreams
            if redirectStandardStreams {
                dup2(fd, STDOUT_FILENO)
                dup2(fd, STDERR_FILENO)
            }
            let held = state.linesBeforeAttach
            state.linesBeforeAttach.removeAll()
            for line in held { append(line, to: &state) }
        }
        return fd
    }

    func write(_ message: String) {
        let line = Self.line(message)
        state.withLock { append(line, to: &$0) }
        if copyToStandardError { writeAll(STDERR_FILENO, line) }
    }

    /// One line for a failed request: the operation, what it was about, the errno and why;
    /// at most `failureLinesPerCausePerSecond` a second for each operation and errno.
    func failure(op: String, subject: String, _ failure: FuseFailure) {
        let cause = "\(op) \(errnoName(failure.errno))"
        let line = Self.line("\(op) \(subject): \(errnoName(failure.errno)) \(failure.message)")
        let second = Int(time(nil))
        let written: Bool = state.withLock { state in
            var window = state.causes[cause] ?? CauseWindow(second: second, written: 0, suppressed: 0, suppressedSince: second)
            if window.second != second {
                window.second = second
                window.written = 0
            }
            guard window.written < limits.failureLinesPerCausePerSecond else {
                if window.suppressed == 0 { window.suppressedSince = second }
                window.suppressed += 1
                state.causes[cause] = window
                return false
            }
            if window.suppressed > 0 {
                append(Self.line("\(cause): \(window.suppressed) more failures not logged in the last \(max(1, second - window.suppressedSince)) s (over \(limits.failureLinesPerCausePerSecond) a second)"), to: &state)
                window.suppressed = 0
            }
            window.written += 1
            state.causes[cause] = window
            append(line, to: &state)
            return true
        }
        if written && copyToStandardError { writeAll(STDERR_FILENO, line) }
    }

    /// Writes one line to the file (or holds it until `attach`), rotating first if the line
    /// would take the file past its limit.
    private func append(_ line: String, to state: inout State) {
        guard state.fileDescriptor >= 0 else {
            state.linesBeforeAttach.append(line)
            return
        }
        let byteCount = line.utf8.count
        if state.fileBytes > 0 && state.fileBytes + byteCount > limits.maximumFileBytes, let path = state.path {
            rotate(path: path, state: &state)
        }
        writeAll(state.fileDescriptor, line)
        state.fileBytes += byteCount
    }

    /// lunfs.log becomes lunfs.log.1 (replacing the one before) and a new lunfs.log starts.
    /// If the new file cannot be made, the old one goes on growing rather than losing lines.
    private func rotate(path: String, state: inout State) {
        guard rename(path, path + ".1") == 0 else { return }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        close(state.fileDescriptor)
        state.fileDescriptor = fd
        if state.redirectsStandardStreams {
            dup2(fd, STDOUT_FILENO)
            dup2(fd, STDERR_FILENO)
        }
        state.fileBytes = 0
        let note = Self.line("log: rotated at \(limits.maximumFileBytes) bytes; the lines before are in \(path).1")
        writeAll(fd, note)
        state.fileBytes += note.utf8.count
    }

    private static func line(_ message: String) -> String {
        "\(timestamp()) [\(getpid())/\(lunsys_gettid())] \(message)\n"
    }

    /// UTC time as 2026-01-31T12:34:56.789Z, built without Foundation.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func padded(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(padded(parts.tm_year + 1900, 4))-\(padded(parts.tm_mon + 1, 2))-\(padded(parts.tm_mday, 2))"
            + "T\(padded(parts.tm_hour, 2)):\(padded(parts.tm_min, 2)):\(padded(parts.tm_sec, 2))"
            + ".\(padded(Int32(now.tv_nsec / 1_000_000), 3))Z"
    }
}
