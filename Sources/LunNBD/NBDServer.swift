// The listener: binds the address, accepts connections on a thread of its own and gives each
// connection a thread that runs the handshake and then the transmission phase. A connection
// that fails ends alone; `stop` wakes every thread, waits for requests in flight to be
// answered, and leaves the pool to its owner to close.
#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import LunEngine
import Synchronization

public struct NBDServerOptions: Sendable {
    /// `--nbd-writable`: snapshots are writable exports too.
    public var writableSnapshots = false
    /// Requests of one connection between the socket and their reply at once.
    public var maximumInFlight = 16
    /// Connections served at once; more are closed at once.
    public var maximumConnections = 64
    /// How long a client may take over each read of the handshake.
    public var negotiationTimeoutSeconds = 30

    public init(writableSnapshots: Bool = false) {
        self.writableSnapshots = writableSnapshots
    }
}

/// Why the server could not start listening.
public struct NBDServerError: Error, CustomStringConvertible, Sendable {
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}

public final class NBDServer: Sendable {
    public let address: NBDAddress
    private let listener: Int32
    private let catalog: ExportCatalog
    private let options: NBDServerOptions
    private let onChange: ChangeObserver?
    private let log: @Sendable (String) -> Void

    private struct Connections {
        var open: [Int: SocketStream] = [:]
        var nextNumber = 1
        var stopping = false
        var started = false
    }
    private let connections = Mutex(Connections())
    /// Entered by the accept thread and by every connection thread; `stop` waits for it.
    private let threads = DispatchGroup()

    /// Binds and listens (so that a taken address fails here, before anything is served);
    /// `start` begins accepting.
    public init(address: NBDAddress, pool: any ExportablePool, options: NBDServerOptions = NBDServerOptions(),
                onChange: ChangeObserver? = nil, log: @escaping @Sendable (String) -> Void) throws(NBDServerError) {
        self.address = address
        self.catalog = ExportCatalog(pool: pool, writableSnapshots: options.writableSnapshots)
        self.options = options
        self.onChange = onChange
        self.log = log
        self.listener = try Self.listen(on: address)
    }

    deinit {
        if connections.withLock({ $0.started && !$0.stopping }) { stop() }
        close(listener)
    }

    public func start() {
        connections.withLock {
            precondition(!$0.started, "the server was started twice")
            $0.started = true
        }
        threads.enter()
        startThread { [self] in
            acceptConnections()
            threads.leave()
        }
        log("nbd: serving exports on \(address)")
    }

    /// Stops accepting, ends every connection (answering what is in flight first) and waits.
    public func stop() {
        let open = connections.withLock { state -> [SocketStream] in
            state.stopping = true
            return Array(state.open.values)
        }
        _ = shutdown(listener, Int32(SHUT_RDWR))
        for stream in open { stream.shutdown() }
        threads.wait()
        if case .unixSocket(let path) = address { unlink(path) }
        log("nbd: stopped")
    }

    private func acceptConnections() {
        while true {
            let descriptor = accept(listener, nil, nil)
            // Close-on-exec, so helpers the daemon starts (fusermount3) hold no client.
            if descriptor >= 0 { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
            if connections.withLock({ $0.stopping }) {
                if descriptor >= 0 { close(descriptor) }
                return
            }
            guard descriptor >= 0 else {
                switch errno {
                case EINTR, ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    log("nbd: accept: \(String(cString: strerror(errno))); retrying in 100 ms")
                    usleep(100_000)
                    continue
                default:
                    log("nbd: accept failed: \(String(cString: strerror(errno))); no more connections")
                    return
                }
            }
            if case .tcp = address {
                var on: Int32 = 1
                setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
            }
            let stream = SocketStream(descriptor: descriptor)
            let number: Int? = connections.withLock { state in
                // `stop` may have taken its list of connections since the check above.
                guard !state.stopping, state.open.count < options.maximumConnections else { return nil }
                let number = state.nextNumber
                state.nextNumber += 1
                state.open[number] = stream
                return number
            }
            guard let number else {
                if connections.withLock({ $0.stopping }) { stream.close(); return }
                log("nbd: more than \(options.maximumConnections) connections; refusing one")
                stream.close()
                continue
            }
            threads.enter()
            startThread { [self] in
                serve(stream, number: number)
                connections.withLock { _ = $0.open.removeValue(forKey: number) }
                stream.close()
                threads.leave()
            }
        }
    }

    private func serve(_ stream: SocketStream, number: Int) {
        stream.setReceiveTimeout(seconds: options.negotiationTimeoutSeconds)
        var negotiation = Negotiation(stream: stream, catalog: catalog)
        let session: NegotiatedSession
        do {
            guard let negotiated = try negotiation.run() else {
                log("nbd: connection \(number): client ended the handshake")
                return
            }
            session = negotiated
        } catch {
            log("nbd: connection \(number): handshake failed: \(error.reason)")
            return
        }
        stream.setReceiveTimeout(seconds: 0)
        let export = session.export
        if session.coordination, let pool = catalog.pool as? any CoordinatingPool {
            log("nbd: connection \(number): a second host attaches \(export.name) (coordinator)")
            let reason = CoordinatorSession(stream: stream, pool: pool, export: export, onChange: onChange, log: log).run()
            log("nbd: connection \(number): coordinator session ended: \(reason)")
            return
        }
        log("nbd: connection \(number): export \(export.name) (\(export.sizeBytes) bytes\(export.isReadOnly ? ", read-only" : ""))")
        let transmission = Transmission(stream: stream, session: session, pool: catalog.pool,
                                        maximumInFlight: options.maximumInFlight, onChange: onChange, log: log)
        let reason = transmission.run()
        log("nbd: connection \(number): ended: \(reason)")
    }

    // MARK: Listening sockets

    private static func listen(on address: NBDAddress) throws(NBDServerError) -> Int32 {
        switch address {
        case .unixSocket(let path): return try listenUnix(path)
        case .tcp(let host, let port): return try listenTCP(host: host, port: port)
        }
    }

    private static func listenUnix(_ path: String) throws(NBDServerError) -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw NBDServerError("socket path \(path) is too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        var existing = stat()
        if lstat(path, &existing) == 0 {
            guard existing.st_mode & S_IFMT == S_IFSOCK else { throw NBDServerError("\(path) exists and is not a socket") }
            // A socket file left by a server that is gone is replaced; a live one is not.
            let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            let live = withSocketAddress(&address) { connect(probe, $0, $1) } == 0
            close(probe)
            guard !live else { throw NBDServerError("another server listens on \(path)") }
            unlink(path)
        }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw NBDServerError("socket: \(String(cString: strerror(errno)))") }
        guard withSocketAddress(&address, { bind(descriptor, $0, $1) }) == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            throw NBDServerError("cannot listen on \(path): \(reason)")
        }
        guard Glibc.listen(descriptor, 64) == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            throw NBDServerError("listen on \(path): \(reason)")
        }
        return descriptor
    }

    private static func withSocketAddress(_ address: inout sockaddr_un, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    private static func listenTCP(host: String, port: UInt16) throws(NBDServerError) -> Int32 {
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &found)
        guard status == 0, let first = found else {
            throw NBDServerError("cannot resolve \(host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(found) }
        var reason = "no address"
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let entry = candidate {
            candidate = entry.pointee.ai_next
            let descriptor = socket(entry.pointee.ai_family, entry.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), entry.pointee.ai_protocol)
            guard descriptor >= 0 else { reason = String(cString: strerror(errno)); continue }
            var on: Int32 = 1
            setsockopt(descriptor, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
            if bind(descriptor, entry.pointee.ai_addr, entry.pointee.ai_addrlen) == 0 && Glibc.listen(descriptor, 64) == 0 {
                return descriptor
            }
            reason = String(cString: strerror(errno))
            close(descriptor)
        }
        throw NBDServerError("cannot listen on \(host):\(port): \(reason)")
    }
}

/// Runs `body` on a new detached thread (the listener and each connection get one: they
/// block in reads for as long as the client stays, which a shared pool must not suffer).
private func startThread(_ body: @escaping @Sendable () -> Void) {
    final class Box { let body: @Sendable () -> Void; init(_ body: @escaping @Sendable () -> Void) { self.body = body } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var thread = pthread_t()
    let status = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    precondition(status == 0, "pthread_create failed: \(status)")
    pthread_detach(thread)
}
