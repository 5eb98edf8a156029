// The daemon's control socket: POOL/lunfs.sock, mode 0600, answered by one thread. Each
// connection carries one request line and gets one answer line (ControlProtocol.swift); the
// verbs are a table (ControlVerbs.swift), so adding one is adding a function. Only root and
// the daemon's own user are answered, whatever the socket's mode: the peer's credentials are
// checked on every connection.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

final class ControlServer: @unchecked Sendable {
    let path: String
    private let verbs: ControlVerbs
    private let log: DaemonLog
    private var listener: Int32 = -1
    private let stopping = Atomic<Bool>(false)
    private var thread: Thread?
    private let finished = NSCondition()
    private var running = false

    /// Binds POOL/lunfs.sock (a socket left by a daemon that died goes first: the caller holds
    /// the pool lock, so no live daemon owns it). Nil, with a log line, when it cannot.
    init?(poolDirectory: String, verbs: ControlVerbs, log: DaemonLog) {
        path = poolDirectory + "/" + daemonControlName
        self.verbs = verbs
        self.log = log
        guard var address = controlSocketAddress(path) else {
            log.write("control: \(path) is too long for a Unix socket; no control socket (status shows the last commit)")
            return nil
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { log.write("control: socket: \(errorText(errno))"); return nil }
        unlink(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(path, 0o600) == 0, listen(fd, 16) == 0 else {
            log.write("control: cannot listen on \(path): \(errorText(errno))")
            close(fd)
            unlink(path)
            return nil
        }
        listener = fd
    }

    func start() {
        running = true
        let t = Thread { [self] in
            serveUntilStopped()
            finished.lock(); running = false; finished.broadcast(); finished.unlock()
        }
        t.name = "lunfs-control"
        thread = t
        t.start()
    }

    /// Stops answering, waits for the answer in progress, and removes the socket.
    func stop() {
        stopping.store(true, ordering: .releasing)
        finished.lock()
        while running { finished.wait() }
        finished.unlock()
        if listener >= 0 { close(listener); listener = -1 }
        unlink(path)
    }

    private func serveUntilStopped() {
        while !stopping.load(ordering: .acquiring) {
            var waiting = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&waiting, 1, 200) > 0 else { continue }
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { continue }
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            answer(connection)
            close(connection)
        }
    }

    private func answer(_ connection: Int32) {
        setControlTimeouts(connection)
        var reply: [UInt8]
        if let refusal = checkPeer(connection) {
            reply = ControlAnswer.failure(refusal)
        } else if let line = readControlLine(connection, limit: ControlProtocol.maximumRequestBytes) {
            do {
                let request = try ControlRequest.parse(line)
                reply = ControlAnswer.success(try verbs.perform(request))
            } catch {
                log.write("control: request refused (\(errorText(error.errno))): \(error.message)")
                reply = ControlAnswer.failure(error)
            }
        } else {
            reply = ControlAnswer.failure(ControlFailure(EINVAL, "no request line (at most \(ControlProtocol.maximumRequestBytes) bytes, ended by a newline)"))
        }
        reply.append(UInt8(ascii: "\n"))
        var rest = reply[...]
        while !rest.isEmpty {
            let sent = rest.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0 && errno == EINTR { continue }
            guard sent > 0 else { return }
            rest = rest.dropFirst(sent)
        }
    }

    /// Nil when the peer is root or the daemon's own user; otherwise why it is refused.
    private func checkPeer(_ connection: Int32) -> ControlFailure? {
        // struct ucred: pid, uid, gid.
        var credentials: [UInt32] = [0, 0, 0]
        var length = socklen_t(MemoryLayout<UInt32>.size * 3)
        guard getsockopt(connection, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 else {
            return ControlFailure(EACCES, "cannot tell who is asking")
        }
        let uid = credentials[1]
        guard uid == 0 || uid == geteuid() else {
            log.write("control: refused a request from uid \(uid) (pid \(credentials[0]))")
            return ControlFailure(EACCES, "only root may use the control socket")
        }
        return nil
    }
}
