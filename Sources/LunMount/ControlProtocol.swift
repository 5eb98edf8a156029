// The control socket's wire format (docs/CONTROL.md): one JSON object on one line each way
// per connection. A request names a verb and its arguments; the answer is either
// {"ok":true,"result":...} or {"ok":false,"errno":N,"message":"..."}. Kept apart from the
// server and the client so both follow the same rules.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// POOL/lunfs.sock, while a daemon serves the pool.
let daemonControlName = "lunfs.sock"

enum ControlProtocol {
    /// A request line longer than this is refused (nothing a verb takes comes near it).
    static let maximumRequestBytes = 64 << 10
    /// An answer longer than this is cut off by the client (status of a very large pool stays far below).
    static let maximumAnswerBytes = 64 << 20
    /// How long either side waits for the other's line.
    static let timeoutSeconds = 10
}

/// One decoded request: its verb and the rest of the object as arguments.
public struct ControlRequest {
    public var verb: String
    public var arguments: [String: Any]

    /// Parses one request line; a bad line is EINVAL with what is wrong.
    static func parse(_ line: [UInt8]) throws(ControlFailure) -> ControlRequest {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)), let fields = object as? [String: Any] else {
            throw ControlFailure(EINVAL, "the request is not one JSON object on one line")
        }
        guard let verb = fields["verb"] as? String else { throw ControlFailure(EINVAL, "the request has no \"verb\" string") }
        var arguments = fields
        arguments["verb"] = nil
        return ControlRequest(verb: verb, arguments: arguments)
    }

    /// The request as it goes on the wire (without the newline).
    static func encode(verb: String, arguments: [String: Any] = [:]) -> [UInt8] {
        var fields = arguments
        fields["verb"] = verb
        let data = (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data()
        return Array(data)
    }
}

/// A verb's refusal: an errno and a sentence, as the answer carries them.
public struct ControlFailure: Error {
    public var errno: Int32
    public var message: String
    public init(_ errno: Int32, _ message: String) { self.errno = errno; self.message = message }
}

/// Building and reading answers.
enum ControlAnswer {
    /// {"ok":true,"result":RESULT} where `result` is already JSON.
    static func success(_ result: Data) -> [UInt8] {
        Array("{\"ok\":true,\"result\":".utf8) + Array(result) + Array("}".utf8)
    }

    static func failure(_ failure: ControlFailure) -> [UInt8] {
        let fields: [String: Any] = ["ok": false, "errno": Int(failure.errno), "message": failure.message]
        return Array((try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])) ?? Data())
    }

    /// The result's JSON of a successful answer, or the failure it carries.
    static func result(of line: [UInt8]) throws(ControlFailure) -> Data {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let ok = object["ok"] as? Bool else {
            throw ControlFailure(EPROTO, "the daemon's answer is not a control answer")
        }
        guard ok else {
            throw ControlFailure(Int32(object["errno"] as? Int ?? Int(EIO)), object["message"] as? String ?? "refused")
        }
        guard let result = object["result"],
              let data = try? JSONSerialization.data(withJSONObject: result, options: [.fragmentsAllowed]) else {
            throw ControlFailure(EPROTO, "the daemon's answer has no result")
        }
        return data
    }
}

/// Reads up to the first newline (or end of file) from `fd`, at most `limit` bytes; nil when
/// the line is longer, the peer is silent past the timeout, or the read fails.
func readControlLine(_ fd: Int32, limit: Int) -> [UInt8]? {
    var line: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count < 0 { return nil }
        if count == 0 { return line }
        if let newline = chunk[..<count].firstIndex(of: UInt8(ascii: "\n")) {
            line += chunk[..<newline]
            return line.count <= limit ? line : nil
        }
        line += chunk[..<count]
        if line.count > limit { return nil }
    }
}

/// Sets both timeouts of a connected socket.
func setControlTimeouts(_ fd: Int32) {
    var limit = timeval(tv_sec: ControlProtocol.timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
}

/// A sockaddr_un for `path`, or nil when the path does not fit (108 bytes with its NUL).
func controlSocketAddress(_ path: String) -> sockaddr_un? {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return address
}
