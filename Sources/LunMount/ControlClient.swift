// Asking a pool's daemon through its control socket (ControlServer.swift): connect, send one
// request line, read one answer line. Used by `lunfs status` and by tests.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Sends `verb` to the daemon serving `poolDirectory`; returns the result's JSON. ENOENT or
/// ECONNREFUSED when no daemon listens, EACCES for a user the daemon does not answer.
public func askDaemon(poolDirectory: String, verb: String, arguments: [String: Any] = [:]) throws(ControlFailure) -> Data {
    let path = poolDirectory + "/" + daemonControlName
    guard var address = controlSocketAddress(path) else { throw ControlFailure(ENAMETOOLONG, "\(path) is too long for a Unix socket") }
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw ControlFailure(errno, "socket: \(errorText(errno))") }
    defer { close(fd) }
    setControlTimeouts(fd)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard connected == 0 else { throw ControlFailure(errno, "cannot reach the daemon at \(path): \(errorText(errno))") }
    var request = ControlRequest.encode(verb: verb, arguments: arguments)
    request.append(UInt8(ascii: "\n"))
    var rest = request[...]
    while !rest.isEmpty {
        let sent = rest.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if sent < 0 && errno == EINTR { continue }
        guard sent > 0 else { throw ControlFailure(errno, "cannot send to the daemon: \(errorText(errno))") }
        rest = rest.dropFirst(sent)
    }
    guard let line = readControlLine(fd, limit: ControlProtocol.maximumAnswerBytes), !line.isEmpty else {
        throw ControlFailure(EPROTO, "the daemon at \(path) gave no answer")
    }
    return try ControlAnswer.result(of: line)
}
