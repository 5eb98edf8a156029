// The control socket's verbs: a name and a function from request to result. Adding a verb is
// adding one function and one line in `standard` (and a paragraph in docs/CONTROL.md).
import Foundation
import LunEngine

struct ControlVerbs {
    /// A verb's work: its result as JSON, or a refusal.
    typealias Handler = (ControlRequest) throws(ControlFailure) -> Data
    private(set) var handlers: [String: Handler] = [:]

    mutating func add(_ verb: String, _ handler: @escaping Handler) { handlers[verb] = handler }

    func perform(_ request: ControlRequest) throws(ControlFailure) -> Data {
        guard let handler = handlers[request.verb] else {
            throw ControlFailure(EOPNOTSUPP, "unknown verb \(request.verb.debugDescription); known: \(handlers.keys.sorted().joined(separator: ", "))")
        }
        return try handler(request)
    }

    /// The verbs every daemon answers for `pool`, and those a mount's file system adds.
    static func standard(pool: Pool, fileSystem: FileSystem? = nil) -> ControlVerbs {
        var verbs = ControlVerbs()
        verbs.add("status") { request throws(ControlFailure) in try statusVerb(pool, request) }
        verbs.addDriveVerbs(pool: pool)
        var names = ["status", "verbs"] + driveVerbNames
        if let fileSystem {
            verbs.add("rollback") { request throws(ControlFailure) in try rollbackVerb(fileSystem, request) }
            names.append("rollback")
        }
        names.sort()
        verbs.add("verbs") { _ throws(ControlFailure) in try encodeResult(names) }
        return verbs
    }

    /// `status`: the live StatusReport (ControlStatusReport.swift).
    static func statusVerb(_ pool: Pool, _ request: ControlRequest) throws(ControlFailure) -> Data {
        guard request.arguments.isEmpty else { throw ControlFailure(EINVAL, "status takes no arguments") }
        return try encodeResult(buildStatus(pool, mounted: true, live: true))
    }

    static func encodeResult<T: Encodable>(_ value: T) throws(ControlFailure) -> Data {
        do { return try JSONEncoder().encode(value) } catch { throw ControlFailure(EIO, "cannot encode the result: \(error)") }
    }
}
