// The rule that every request is answered exactly once, in one function: a handler either
// returns a value, which `reply` sends, or throws a `FuseFailure`, which becomes
// `fuse_reply_err` and a log line. Handlers never call fuse_reply_* themselves.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3

/// Serves `request`: runs `handler` on the request's file system and sends its result with
/// `reply` (which returns the fuse_reply_* status). `subject` names what the request is about
/// for the log ("ino 5", "ino 1 name vm").
@inline(__always)
func answer<Value>(
    _ request: fuse_req_t?,
    _ op: StaticString,
    _ subject: @autoclosure () -> String,
    _ handler: (FileSystem) throws(FuseFailure) -> Value,
    reply: (Value) -> Int32
) {
    let fs = FileSystem.of(request)
    let status: Int32
    do {
        let value = try handler(fs)
        status = reply(value)
    } catch {
        if !error.isRoutineProbe {
            fs.log.failure(op: "\(op)", subject: subject(), error)
        }
        status = fuse_reply_err(request, error.errno)
    }
    // A reply fails when the request was interrupted or the connection is gone; there is
    // nothing to retry, but the log should say so.
    if status != 0 {
        fs.log.write("\(op) \(subject()): reply failed with \(errnoName(-status))")
    }
}

/// `answer` for requests whose success carries nothing but errno 0.
@inline(__always)
func answerStatus(
    _ request: fuse_req_t?,
    _ op: StaticString,
    _ subject: @autoclosure () -> String,
    _ handler: (FileSystem) throws(FuseFailure) -> Void
) {
    answer(request, op, subject(), handler, reply: { fuse_reply_err(request, 0) })
}

extension FuseFailure {
    /// Failures that are the normal answer to a probe rather than something going wrong: the
    /// kernel asks for `security.capability` before every write, and ls asks for ACLs. These
    /// are not logged; everything else is.
    static func absentAttribute(_ name: String) -> FuseFailure {
        var failure = FuseFailure(ENODATA, "no attribute \(name)")
        failure.isRoutineProbe = !name.hasPrefix(ExtendedAttribute.namespacePrefix)
        return failure
    }
}

/// `answer` for request kinds the tree never carries out (mknod, symlink, link, readlink).
func refuse(_ request: fuse_req_t?, _ op: StaticString, _ subject: @autoclosure () -> String, _ failure: FuseFailure) {
    let alwaysFails: (FileSystem) throws(FuseFailure) -> Void = { _ throws(FuseFailure) in throw failure }
    answerStatus(request, op, subject(), alwaysFails)
}
