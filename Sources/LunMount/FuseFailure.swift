// The one error type of the FUSE layer: the errno the kernel gets back and a sentence for the
// daemon log. Engine errors convert with their own errno; the layer's own refusals name theirs.
#if canImport(Glibc)
import Glibc
#endif
import LunEngine

struct FuseFailure: Error, CustomStringConvertible {
    var errno: Int32
    var message: String
    /// True for the expected "no" to a probe (see `absentAttribute`); such failures are not logged.
    var isRoutineProbe = false

    init(_ errno: Int32, _ message: String) {
        assert(errno > 0, "a failure must carry a positive errno")
        self.errno = errno
        self.message = message
    }

    init(_ error: LunError) {
        self.init(error.errno, error.description)
    }

    var description: String { "\(errnoName(errno)) \(message)" }
}

/// Runs an engine call and turns its typed error into a `FuseFailure`.
@inline(__always)
func engine<T>(_ body: () throws(LunError) -> T) throws(FuseFailure) -> T {
    do {
        return try body()
    } catch {
        throw FuseFailure(error)
    }
}

/// The symbolic name of an errno for log lines ("ENOENT(2)"); numbers outside the table print bare.
func errnoName(_ code: Int32) -> String {
    "\(errnoNames[code] ?? "errno")(\(code))"
}

private let errnoNames: [Int32: String] = [
    EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", ENXIO: "ENXIO", EBADF: "EBADF",
    EEXIST: "EEXIST", EXDEV: "EXDEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL",
    EFBIG: "EFBIG", ENOSPC: "ENOSPC", EROFS: "EROFS", ERANGE: "ERANGE", ENAMETOOLONG: "ENAMETOOLONG",
    ENOSYS: "ENOSYS", ENOTEMPTY: "ENOTEMPTY", ENODATA: "ENODATA", EOPNOTSUPP: "EOPNOTSUPP",
    ESTALE: "ESTALE", EBUSY: "EBUSY", EACCES: "EACCES", ENOMEM: "ENOMEM", EAGAIN: "EAGAIN",
    ENOTCONN: "ENOTCONN",
]
