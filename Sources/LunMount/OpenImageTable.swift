// Which images are open, counted per disk from open to release, so that deleting or shrinking
// an image that something still uses (a loop device, a running VM, a process) is refused with
// EBUSY instead of pulling the data from under it.
#if canImport(Glibc)
import Glibc
#endif
import LunEngine
import Synchronization

/// The open handles of one disk's image, all from the generation in which they were opened.
struct ImageHolders: Sendable {
    var generation: UInt64
    var handleCount: Int
    /// Processes that opened a handle since the count was last zero (the kernel's pid of the
    /// request: for a loop device, the process that attached it). At most a few are kept.
    var openerPIDs: [pid_t]

    /// "2 open handles (opened by pid 412, 977)", for refusals and the log.
    var description: String {
        let handles = handleCount == 1 ? "1 open handle" : "\(handleCount) open handles"
        let openers = openerPIDs.filter { $0 > 0 }
        guard !openers.isEmpty else { return handles }
        return handles + " (opened by pid " + openers.map(String.init).joined(separator: ", ") + ")"
    }
}

final class OpenImageTable: Sendable {
    private static let keptOpenerPIDs = 8
    private let holders = Mutex<[DiskID: ImageHolders]>([:])

    /// Counts a handle just opened on `id`'s image in `generation`.
    func opened(_ id: DiskID, generation: UInt64, by pid: pid_t) {
        holders.withLock { table in
            var entry = table[id] ?? ImageHolders(generation: generation, handleCount: 0, openerPIDs: [])
            if entry.generation != generation {
                entry = ImageHolders(generation: generation, handleCount: 0, openerPIDs: [])
            }
            entry.handleCount += 1
            if !entry.openerPIDs.contains(pid) && entry.openerPIDs.count < Self.keptOpenerPIDs {
                entry.openerPIDs.append(pid)
            }
            table[id] = entry
        }
    }

    /// Counts a release. Handles from a generation that is gone (the image was deleted with
    /// force) were dropped from the table already and are ignored.
    func released(_ id: DiskID, generation: UInt64) {
        holders.withLock { table in
            guard var entry = table[id], entry.generation == generation else { return }
            assert(entry.handleCount > 0, "a release without an open")
            entry.handleCount -= 1
            table[id] = entry.handleCount > 0 ? entry : nil
        }
    }

    /// The handles open on `id`'s image in `generation`, leaving out one (`except`, the
    /// handle an ftruncate comes through); nil if there are none.
    func holders(of id: DiskID, generation: UInt64, except: Int = 0) -> ImageHolders? {
        holders.withLock { table in
            guard var entry = table[id], entry.generation == generation else { return nil }
            entry.handleCount -= except
            return entry.handleCount > 0 ? entry : nil
        }
    }

    /// Like `holders`, but gives handles that are being closed a moment to go: the kernel
    /// sends RELEASE after close(2) returns (and after `losetup -d`, from a work queue), and
    /// another worker thread may serve it after a request that follows the close.
    func holdersAfterGrace(of id: DiskID, generation: UInt64, except: Int = 0, graceSeconds: Double = 1) -> ImageHolders? {
        let rounds = Int(graceSeconds * 100)
        for _ in 0..<rounds {
            guard holders(of: id, generation: generation, except: except) != nil else { return nil }
            usleep(10_000)
        }
        return holders(of: id, generation: generation, except: except)
    }

    /// Forgets every handle of `id` (its image is gone; the handles are stale now).
    func forget(_ id: DiskID) {
        holders.withLock { _ = $0.removeValue(forKey: id) }
    }
}
