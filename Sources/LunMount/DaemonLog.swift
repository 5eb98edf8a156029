// The daemon's log: one timestamped line per event, appended to POOL/lunfs.log (and copied to
// stderr in the foreground). Each line goes out in a single write(2) on an O_APPEND descriptor,
// so worker threads never interleave within a line and need no lock. The file is attached only
// once the pool exists, because creating a pool wants an empty directory; lines from before
// are held until then.
#if canImport(Glibc)
import Glibc
#endif
import CLunSys
import Synchronization

final class DaemonLog: Sendable {
    private let fileDescriptor = Atomic<Int32>(-1)
    private let copyToStandardError: Bool
    /// Lines written before `attach` (while the pool is being opened or created), so that
    /// they still reach the file.
    private let linesBeforeAttach = Mutex<[String]>([])

    init(copyToStandardError: Bool) {
        self.copyToStandardError = copyToStandardError
    }

    deinit {
        let fd = fileDescriptor.load(ordering: .acquiring)
        if fd >= 0 { close(fd) }
    }

    /// Starts appending to `path` (creating it); returns the descriptor, or -1 if it cannot.
    @discardableResult
    func attach(path: String) -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return -1 }
        linesBeforeAttach.withLock { lines in
            for line in lines { writeAll(fd, line) }
            lines.removeAll()
            let previous = fileDescriptor.exchange(fd, ordering: .acquiringAndReleasing)
            assert(previous < 0, "the log was attached twice")
        }
        return fd
    }

    func write(_ message: String) {
        let line = "\(Self.timestamp()) [\(getpid())/\(lunsys_gettid())] \(message)\n"
        var fd = fileDescriptor.load(ordering: .acquiring)
        if fd < 0 {
            fd = linesBeforeAttach.withLock { lines in
                let attached = fileDescriptor.load(ordering: .acquiring)
                if attached < 0 { lines.append(line) }
                return attached
            }
        }
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { raw in
            if fd >= 0 { _ = Glibc.write(fd, raw.baseAddress, raw.count) }
            if copyToStandardError { _ = Glibc.write(STDERR_FILENO, raw.baseAddress, raw.count) }
        }
    }

    /// One line for a failed request: the operation, what it was about, the errno and why.
    func failure(op: String, subject: String, _ failure: FuseFailure) {
        write("\(op) \(subject): \(errnoName(failure.errno)) \(failure.message)")
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
