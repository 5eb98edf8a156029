// Threads that carry the pieces of one large transfer to different drives side by side. A
// 1 MiB write to RAID 0 is four 256 KiB writes to four drives; made one after another, a
// single stream of requests (dd) waits for four disk round trips per request. With the
// pieces in flight together it waits for about one. Only file drives use it: the simulated
// drives of the tests count their operations in order, and crash points must replay. Writes
// that go O_DIRECT are submitted together through io_uring instead (DriveSubmission), at less
// CPU; the pool carries large reads and the large writes the ring does not take.
#if canImport(Glibc)
import Glibc
#endif

final class TransferPool: @unchecked Sendable {
    /// One pool for the process: its threads only ever wait for drive I/O, never for a lock
    /// of the engine, so every pool of every mount can share them without deadlock.
    static let shared = TransferPool(threads: 16)

    private final class Batch {
        let body: (Int) -> Void
        var left: Int
        init(body: @escaping (Int) -> Void, count: Int) { self.body = body; self.left = count }
    }

    private let mutex: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
    /// Workers wait here for pieces.
    private let work: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
    /// Callers wait here for the rest of their batch.
    private let finished: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
    private var queue: [(batch: Batch, index: Int)] = []

    private init(threads: Int) {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(work, nil)
        pthread_cond_init(finished, nil)
        for _ in 0..<threads {
            var thread = pthread_t()
            let box = Unmanaged.passRetained(self).toOpaque()
            pthread_create(&thread, nil, { raw in
                let pool = Unmanaged<TransferPool>.fromOpaque(raw!).takeRetainedValue()
                pool.serve()
                return nil
            }, box)
            pthread_detach(thread)
        }
    }

    /// Runs `body(0)` ... `body(count - 1)` side by side (body(0) on the caller's thread) and
    /// returns when all have returned.
    func run(_ count: Int, _ body: (Int) -> Void) {
        if count <= 1 {
            if count == 1 { body(0) }
            return
        }
        withoutActuallyEscaping(body) { body in
            let batch = Batch(body: body, count: count)
            pthread_mutex_lock(mutex)
            for i in 1..<count { queue.append((batch, i)) }
            pthread_cond_broadcast(work)
            pthread_mutex_unlock(mutex)
            body(0)
            pthread_mutex_lock(mutex)
            batch.left -= 1
            while batch.left > 0 { pthread_cond_wait(finished, mutex) }
            pthread_mutex_unlock(mutex)
        }
    }

    private func serve() {
        pthread_mutex_lock(mutex)
        while true {
            while queue.isEmpty { pthread_cond_wait(work, mutex) }
            let (batch, index) = queue.removeFirst()
            pthread_mutex_unlock(mutex)
            batch.body(index)
            pthread_mutex_lock(mutex)
            batch.left -= 1
            if batch.left == 0 { pthread_cond_broadcast(finished) }
        }
    }
}
