// The threads that read requests from /dev/fuse and hand them to libfuse. libfuse's own
// multithreaded loop reads each request into a malloc'd buffer, which leaves a WRITE's
// payload 80 bytes past a page boundary; the engine then has to copy every large write into
// aligned memory before it can go to the drives with O_DIRECT (12% of all CPU samples on
// 1 MiB writes). Here each worker reads into its own buffer placed so that the payload of a
// WRITE starts on a page, and libfuse parses and dispatches it as usual.
// When the kernel accepts FUSE over io_uring at INIT, the loop also starts UringQueues, whose
// threads take requests from ring entries and hand them to libfuse the same way; /dev/fuse
// then carries only FORGET, INTERRUPT and notifications. The handlers cannot tell the two
// apart: the loop only moves requests and replies.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CFuse3
import CUring

final class RequestLoop: @unchecked Sendable {
    private let session: OpaquePointer
    private let workerCount: Int
    /// Guards the counters below; the main thread waits on it.
    private let state = NSCondition()
    private var running = 0
    private var busy = 0
    private var closing = false
    private var failure: Int32 = 0
    private var requestsOverRing = 0
    private var requestsOverDevice = 0
    /// The custom io that lets requests move to io_uring; nil under -o uring=off.
    private let transport: UringTransport?
    private var ring: UringQueues?
    private let log: (String) -> Void

    /// Bytes libfuse 3.14 reads per request at most (FUSE_MAX_MAX_PAGES pages plus a header
    /// page), doubled in case a later libfuse reads more.
    private static let readBytes = 2 * (256 * 4096 + 4096)
    /// fuse_in_header (40 bytes) and fuse_write_in (40 bytes) come before a WRITE's data.
    private static let writeHeaderBytes = 80

    init(session: OpaquePointer, workers: Int, transport: UringTransport?, log: @escaping (String) -> Void) {
        self.session = session
        self.workerCount = workers
        self.transport = transport
        self.log = log
    }

    func run() -> Int32 {
        state.lock()
        running = workerCount
        state.unlock()
        for n in 0..<workerCount {
            let t = Thread { [self] in work() }
            t.name = "lunfs-fuse-\(n)"
            t.stackSize = 8 << 20
            t.start()
        }
        // Workers stop on unmount (the device answers ENODEV); a signal only sets the
        // session's exit flag, so look at it now and then.
        state.lock()
        while running > 0 && fuse_session_exited(session) == 0 {
            _ = state.wait(until: Date(timeIntervalSinceNow: 0.1))
        }
        // From here no new request starts; wait for those in progress. Workers still blocked
        // reading the device stay blocked until the process exits.
        closing = true
        while busy > 0 { state.wait() }
        let status = failure
        let (overRing, overDevice) = (requestsOverRing, requestsOverDevice)
        state.unlock()
        log("session: served \(overRing) requests over io_uring and \(overDevice) over /dev/fuse")
        return status
    }

    var isClosing: Bool {
        state.lock()
        defer { state.unlock() }
        return closing
    }

    /// A worker (of either kind) took a request: false once the loop is closing, when the
    /// request must not start.
    func beginRequest(overRing: Bool) -> Bool {
        state.lock()
        defer { state.unlock() }
        if closing { return false }
        busy += 1
        if overRing { requestsOverRing += 1 } else { requestsOverDevice += 1 }
        return true
    }

    func endRequest() {
        state.lock()
        busy -= 1
        if busy == 0 { state.broadcast() }
        state.unlock()
    }

    /// After a request on /dev/fuse: if it was INIT, either start the ring queues (the kernel
    /// accepted FUSE_OVER_IO_URING) or say why requests stay on /dev/fuse.
    private func afterDeviceRequest() {
        guard let transport, let outcome = transport.takeInitOutcome() else { return }
        log(transport.handlesKillPrivileges
            ? "session: FUSE_HANDLE_KILLPRIV_V2: the kernel asks for no security.capability before writes"
            : "session: the kernel did not offer FUSE_HANDLE_KILLPRIV_V2; each buffered write costs a security.capability lookup")
        switch outcome {
        case LUNFS_URING_INIT_RING:
            let queues = UringQueues(loop: self, session: session, transport: transport, log: log)
            state.lock()
            ring = queues
            state.unlock()
            if let refusal = queues.start() {
                log("session: requests over /dev/fuse: io_uring registration failed (\(refusal)); \(transport.kernelDescription)")
            } else {
                log("session: requests over io_uring: \(transport.queueCount) queues of \(transport.entriesPerQueue) entries; \(transport.kernelDescription)")
            }
        case LUNFS_URING_INIT_SETUP_FAILED:
            log("session: requests over /dev/fuse: cannot set up io_uring (\(errnoName(transport.setupError))); \(transport.kernelDescription)")
        case LUNFS_URING_INIT_NOT_WANTED:
            break
        case LUNFS_URING_INIT_NOT_OFFERED:
            log("session: requests over /dev/fuse: the kernel does not offer FUSE over io_uring (\(transport.kernelDescription); is /sys/module/fuse/parameters/enable_uring Y?)")
        default:
            log("session: requests over /dev/fuse: INIT failed; \(transport.kernelDescription)")
        }
    }

    private func work() {
        let page = 4096
        let memory = UnsafeMutableRawPointer.allocate(byteCount: page + Self.readBytes, alignment: page)
        defer { memory.deallocate() }
        // Fault in the page that every request's header lands in now, not while copying the
        // first request (a fault then, in a dying process, fails that request with EIO).
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: 2 * page)
        var buffer = fuse_buf()
        buffer.mem = memory + (page - Self.writeHeaderBytes)
        var status: Int32 = 0
        transport?.attachThread()
        while fuse_session_exited(session) == 0 {
            let received = fuse_session_receive_buf(session, &buffer)
            if received == -EINTR || received == -EAGAIN { continue }
            if received <= 0 {
                // 0: unmounted or told to exit. Below 0: the device failed; stop serving, as
                // libfuse's loop does.
                status = received
                if received < 0 { fuse_session_exit(session) }
                break
            }
            guard beginRequest(overRing: false) else { break }
            fuse_session_process_buf(session, &buffer)
            endRequest()
            afterDeviceRequest()
        }
        state.lock()
        running -= 1
        if status < 0 && failure == 0 { failure = -status }
        state.broadcast()
        state.unlock()
    }
}
