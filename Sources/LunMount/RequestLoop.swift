// The threads that read requests from /dev/fuse and hand them to libfuse. libfuse's own
// multithreaded loop reads each request into a malloc'd buffer, which leaves a WRITE's
// payload 80 bytes past a page boundary; the engine then has to copy every large write into
// aligned memory before it can go to the drives with O_DIRECT (12% of all CPU samples on
// 1 MiB writes). Here each worker reads into its own buffer placed so that the payload of a
// WRITE starts on a page, and libfuse parses and dispatches it as usual.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CFuse3

final class RequestLoop: @unchecked Sendable {
    private let session: OpaquePointer
    private let workerCount: Int
    /// Guards the counters below; the main thread waits on it.
    private let state = NSCondition()
    private var running = 0
    private var busy = 0
    private var closing = false
    private var failure: Int32 = 0

    /// Bytes libfuse 3.14 reads per request at most (FUSE_MAX_MAX_PAGES pages plus a header
    /// page), doubled in case a later libfuse reads more.
    private static let readBytes = 2 * (256 * 4096 + 4096)
    /// fuse_in_header (40 bytes) and fuse_write_in (40 bytes) come before a WRITE's data.
    private static let writeHeaderBytes = 80

    init(session: OpaquePointer, workers: Int) {
        self.session = session
        self.workerCount = workers
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
        state.unlock()
        return status
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
            state.lock()
            if closing {
                state.unlock()
                break
            }
            busy += 1
            state.unlock()
            fuse_session_process_buf(session, &buffer)
            state.lock()
            busy -= 1
            if busy == 0 { state.broadcast() }
            state.unlock()
        }
        state.lock()
        running -= 1
        if status < 0 && failure == 0 { failure = -status }
        state.broadcast()
        state.unlock()
    }
}
