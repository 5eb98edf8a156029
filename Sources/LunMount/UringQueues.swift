// The ring side of the request loop: one FUSE queue per possible CPU (the kernel hands a
// request to the queue of the CPU its caller runs on), each with several entries, and one
// thread per entry with its own io_uring. A thread commits its reply and fetches the next
// request in one io_uring_enter, where /dev/fuse needs a writev and a read. Handlers are
// synchronous and may block (fsync, a snapshot's flush waits for WRITEs the kernel sends
// meanwhile), so a queue needs several entries, as /dev/fuse needs several threads.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import CFuse3
import CUring

final class UringQueues: @unchecked Sendable {
    /// Strong on purpose: entry threads may wake (at unmount) after the loop's run() returned.
    private let loop: RequestLoop
    private let session: OpaquePointer
    private let transport: UringTransport
    private let log: (String) -> Void
    /// Guards the start-up reports below.
    private let started = NSCondition()
    private var reports = 0
    private var refusals: [String] = []

    init(loop: RequestLoop, session: OpaquePointer, transport: UringTransport, log: @escaping (String) -> Void) {
        self.loop = loop
        self.session = session
        self.transport = transport
        self.log = log
    }

    /// Starts every entry's thread (its worker was made while INIT was answered) and waits
    /// until each has registered its entry or been refused. Returns nil when all are
    /// registered, else why not. The kernel holds requests until every queue has an entry,
    /// then sends them all to the ring; a refusal makes it fall back to /dev/fuse.
    func start() -> String? {
        let entries = transport.entriesPerQueue
        let total = transport.queueCount * entries
        for index in 0..<total {
            let queue = index / entries
            guard let worker = lunfs_uring_transport_take_worker(transport.pointer, UInt32(index)) else {
                report("entry \(index): no worker")
                continue
            }
            let workerAddress = UInt(bitPattern: worker)
            let t = Thread { [self] in serve(OpaquePointer(bitPattern: workerAddress)!, queue: queue) }
            t.name = "lunfs-ring-\(queue)-\(index % entries)"
            t.stackSize = 8 << 20
            t.start()
        }
        started.lock()
        defer { started.unlock() }
        while reports < total { started.wait() }
        return refusals.isEmpty ? nil : refusals.joined(separator: "; ")
    }

    private func report(_ refusal: String?) {
        started.lock()
        reports += 1
        if let refusal { refusals.append(refusal) }
        started.broadcast()
        started.unlock()
    }

    private func serve(_ worker: OpaquePointer, queue: Int) {
        let registered = lunfs_uring_worker_register(worker)
        guard registered == 0 else {
            report("queue \(queue): the kernel refused REGISTER (\(errnoName(-registered)))")
            lunfs_uring_worker_free(worker)
            return
        }
        report(nil)
        var request: UnsafeMutableRawPointer?
        var requestBytes = 0
        while true {
            let status = lunfs_uring_worker_next(worker, &request, &requestBytes)
            if status < 0 {
                // ENOTCONN: unmounted (the kernel ends every entry). Anything else stops this
                // entry only; its queue's other entries go on.
                if status != -ENOTCONN && !loop.isClosing {
                    log("io_uring queue \(queue): \(errnoName(-status)); this entry stops serving")
                }
                if status == -ENOTCONN { lunfs_uring_worker_free(worker) }
                return
            }
            guard loop.beginRequest(overRing: true) else {
                // Closing (the session may be gone): answer without libfuse and keep going. An
                // unanswered entry would hold its caller forever, and with it the exit of this
                // process (the daemon stats its own mount): the rings keep /dev/fuse open, so
                // closing the session's descriptor no longer aborts the connection.
                lunfs_uring_worker_reply_error(worker, ENOTCONN)
                continue
            }
            var buffer = fuse_buf()
            buffer.mem = request
            buffer.size = requestBytes
            fuse_session_process_buf(session, &buffer)
            if lunfs_uring_worker_has_reply(worker) == 0 {
                // libfuse answers every request it parses; an entry left unanswered would be
                // lost to its queue for good, so answer it.
                log("io_uring queue \(queue): a request went unanswered; answered EIO")
                lunfs_uring_worker_reply_error(worker, EIO)
            }
            loop.endRequest()
        }
    }
}
