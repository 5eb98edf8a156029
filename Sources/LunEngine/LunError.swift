// The engine's closed set of expected failures; each maps to one errno that the FUSE layer
// and the CLI report. Broken invariants are not errors: they trap (precondition/assert).
#if canImport(Glibc)
import Glibc
#endif

public enum LunError: Error, Equatable, CustomStringConvertible, Sendable {
    /// No disk, snapshot or pool by that name or id.
    case notFound(String)
    /// A name is already taken among its siblings.
    case exists(String)
    /// A request the engine will not carry out: bad name, bad size, bad value.
    case invalid(String)
    /// The pool cannot supply the segments (or the reservation) a request needs.
    case noSpace(String)
    /// Something is in use: the quiesce timed out, the pool is locked by another daemon.
    case busy(String)
    /// A directory-like node still has snapshots below it.
    case notEmpty(String)
    /// The operation is not allowed on this object (e.g. changing the RAID level after the first write).
    case notPermitted(String)
    /// A name longer than 255 bytes.
    case nameTooLong(String)
    /// The disk was deleted while a handle to it stayed open.
    case stale(String)
    /// A drive failed (EIO) and redundancy could not hide it.
    case io(String)
    /// An offset or size past the largest disk the format maps.
    case tooLarge(String)
    /// Metadata failed its checksum on every copy, or the format is unknown.
    case corrupt(String)

    /// The errno the FUSE layer answers with; the table in README.md lists the same pairs.
    public var errno: Int32 {
        switch self {
        case .notFound: return ENOENT
        case .exists: return EEXIST
        case .invalid: return EINVAL
        case .noSpace: return ENOSPC
        case .busy: return EBUSY
        case .notEmpty: return ENOTEMPTY
        case .notPermitted: return EPERM
        case .nameTooLong: return ENAMETOOLONG
        case .stale: return ESTALE
        case .io: return EIO
        case .corrupt: return EIO
        case .tooLarge: return EFBIG
        }
    }

    public var description: String {
        switch self {
        case .notFound(let s): return "not found: \(s)"
        case .exists(let s): return "already exists: \(s)"
        case .invalid(let s): return "invalid: \(s)"
        case .noSpace(let s): return "no space: \(s)"
        case .busy(let s): return "busy: \(s)"
        case .notEmpty(let s): return "not empty: \(s)"
        case .notPermitted(let s): return "not permitted: \(s)"
        case .nameTooLong(let s): return "name too long: \(s)"
        case .stale(let s): return "stale: \(s)"
        case .io(let s): return "I/O error: \(s)"
        case .corrupt(let s): return "corrupt metadata: \(s)"
        case .tooLarge(let s): return "too large: \(s)"
        }
    }
}

/// Runs a closure that only throws LunError through an API that erases the error type
/// (the standard library's `withUnsafeBytes` and friends).
@inline(__always)
func typed<T>(_ body: () throws -> T) throws(LunError) -> T {
    do { return try body() } catch let e as LunError { throw e } catch { preconditionFailure("unexpected error \(error)") }
}
