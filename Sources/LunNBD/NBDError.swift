// The two kinds of failure the server meets, kept apart: an `NBDError` answers one request
// (the client gets it in the reply and carries on), a `ConnectionEnd` ends the connection (a
// broken stream, a protocol violation the server cannot answer in step). Engine errors turn
// into NBD error values here, and only here.
import LunEngine

/// The error values the protocol allows in a reply (they are the Linux errno numbers).
public struct NBDError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: UInt32
    public var message: String

    init(_ code: UInt32, _ message: String) {
        precondition(code != 0, "an error reply carries a non-zero value")
        self.code = code
        self.message = message
    }

    static let notPermittedCode: UInt32 = 1
    static let ioCode: UInt32 = 5
    static let invalidCode: UInt32 = 22
    static let noSpaceCode: UInt32 = 28

    static func notPermitted(_ message: String) -> NBDError { NBDError(notPermittedCode, message) }
    static func invalid(_ message: String) -> NBDError { NBDError(invalidCode, message) }
    static func noSpace(_ message: String) -> NBDError { NBDError(noSpaceCode, message) }

    /// The engine's closed set, mapped onto the protocol's: EFBIG becomes ENOSPC (as the
    /// protocol asks), a disk deleted under its export EIO, everything the engine refuses as
    /// a bad request EINVAL.
    init(_ error: LunError) {
        switch error {
        case .noSpace, .tooLarge: self.init(Self.noSpaceCode, error.description)
        case .notPermitted: self.init(Self.notPermittedCode, error.description)
        case .invalid, .exists, .notEmpty, .nameTooLong: self.init(Self.invalidCode, error.description)
        case .io, .corrupt, .stale, .notFound, .busy: self.init(Self.ioCode, error.description)
        }
    }

    public var description: String { "NBD error \(code): \(message)" }
}

/// Runs an engine call and turns its typed error into an `NBDError`.
@inline(__always)
func engine<T>(_ body: () throws(LunError) -> T) throws(NBDError) -> T {
    do {
        return try body()
    } catch {
        throw NBDError(error)
    }
}

/// Why a connection ended; logged once, never sent.
struct ConnectionEnd: Error, CustomStringConvertible {
    var reason: String
    init(_ reason: String) { self.reason = reason }
    var description: String { reason }
}
