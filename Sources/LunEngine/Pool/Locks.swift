// The lock kinds the engine uses: a plain mutex, a mutex with a condition to wait on, and the
// read-write lock that guards one sharing chain (I/O takes it shared; map changes and the
// snapshot split take it exclusive).
#if canImport(Glibc)
import Glibc
#endif
import CLunSys

final class Lock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
    init() { pthread_mutex_init(mutex, nil) }
    deinit { pthread_mutex_destroy(mutex); mutex.deallocate() }
    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    @inline(__always) func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        lock(); defer { unlock() }
        return try body()
    }
}

final class ReadWriteLock: @unchecked Sendable {
    private let rw: UnsafeMutablePointer<pthread_rwlock_t> = .allocate(capacity: 1)
    init() { lunsys_rwlock_init_writer_preferring(rw) }
    deinit { pthread_rwlock_destroy(rw); rw.deallocate() }
    func lockShared() { pthread_rwlock_rdlock(rw) }
    func lockExclusive() { pthread_rwlock_wrlock(rw) }
    func unlock() { pthread_rwlock_unlock(rw) }

    /// Waits at most `seconds` for exclusive access; false on timeout.
    func lockExclusive(timeoutSeconds seconds: Double) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let whole = Int(seconds)
        var nsec = now.tv_nsec + Int((seconds - Double(whole)) * 1e9)
        var sec = now.tv_sec + whole
        if nsec >= 1_000_000_000 { sec += 1; nsec -= 1_000_000_000 }
        var deadline = timespec(tv_sec: sec, tv_nsec: nsec)
        return pthread_rwlock_timedwrlock(rw, &deadline) == 0
    }
}

/// A mutex with a condition variable, for waiting until another thread changes something.
final class Condition: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
    private let cond: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
    init() { pthread_mutex_init(mutex, nil); pthread_cond_init(cond, nil) }
    deinit {
        pthread_cond_destroy(cond); pthread_mutex_destroy(mutex)
        cond.deallocate(); mutex.deallocate()
    }
    @inline(__always) func withLock<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex); defer { pthread_mutex_unlock(mutex) }
        return body()
    }
    /// Inside `withLock`: releases the mutex until `broadcast`, then takes it again.
    func wait() { pthread_cond_wait(cond, mutex) }
    /// Inside `withLock`: wakes every waiter.
    func broadcast() { pthread_cond_broadcast(cond) }
}
