// Where the server listens, as the user writes it: a Unix socket path (anything with a "/"),
// or HOST:PORT for TCP ([::1]:10809 for IPv6). Parsing is separate from binding so that a bad
// address is a usage error before the pool is opened.

public enum NBDAddress: Equatable, Sendable, CustomStringConvertible {
    case unixSocket(path: String)
    case tcp(host: String, port: UInt16)

    /// nil when the text is neither a path nor HOST:PORT with a port from 1 to 65535.
    public init?(_ text: String) {
        if text.contains("/") {
            // sun_path holds 107 bytes and a terminating NUL.
            guard text.utf8.count < 108 else { return nil }
            self = .unixSocket(path: text)
            return
        }
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        guard let port = UInt16(text[text.index(after: colon)...]), port > 0 else { return nil }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self = .tcp(host: host, port: port)
    }

    public var description: String {
        switch self {
        case .unixSocket(let path): return path
        case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }

    /// The URI qemu and libnbd take for an export on this address.
    public func uri(export: String) -> String {
        switch self {
        case .unixSocket(let path): return "nbd+unix:///\(export)?socket=\(path)"
        case .tcp: return "nbd://\(description)/\(export)"
        }
    }
}
