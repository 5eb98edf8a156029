// The large direct writes of one request, to several drives, made together: one io_uring
// submission from the calling thread (CLunSys/drive_ring.c) instead of a blocking pwrite per
// piece, each on a thread of the transfer pool. A 1 MiB write to RAID 1 is eight 256 KiB
// pieces; made this way they cost half the CPU time (docs/PERFORMANCE.md section 7). Only
// file drives' O_DIRECT writes from aligned memory go to the ring: small writes go through
// the page cache, which ext4 cannot do without blocking, so io_uring would hand each to a
// worker thread at three times the cost of a pwrite. Everything else, and a write the ring
// did not finish, is made by DriveSet.write as before; simulated drives never see the ring,
// so the crash simulation keeps its program order. Between submitting and waiting the caller
// can work on the buffers: a write's checksums are computed there, off its critical path.
import CLunSys
#if canImport(Glibc)
import Glibc
#endif

/// One piece of data for one place on one drive.
struct DriveWrite {
    let drive: Int
    let data: UnsafeRawBufferPointer
    let offset: UInt64
    /// The engine will read the range back soon (BlockDevice.write(_:at:keepInCache:)).
    var keepInCache = false
}

enum DriveSubmission {
    /// LUNFS_DRIVE_URING=0 turns the ring off (to measure; the fallback's test passes false).
    static let ringEnabled: Bool = {
        guard let text = getenv("LUNFS_DRIVE_URING") else { return true }
        return String(cString: text) != "0"
    }()

    /// Makes those of `writes` that go direct to file drives through this thread's ring, all
    /// submitted together. Returns, per write, the bytes the ring wrote (negative: -errno) or
    /// nil for a write it did not take; nil in place of the whole answer when it took none
    /// (fewer than two such writes, or no ring on this thread). `whileInFlight` is called once
    /// the writes are submitted and before they are waited for, or not at all when the ring
    /// refused them: `workDone` says which, and `workInFlight` whether none of the writes had
    /// been reaped when it ran (for tests). It must not use the ring itself.
    static func submit(_ writes: [DriveWrite], device: (Int) -> BlockDevice?,
                       whileInFlight: () -> Void) -> (made: [Int?], workDone: Bool, workInFlight: Bool)? {
        var ops: [lunsys_ring_write] = []
        var which: [Int] = []
        for (i, w) in writes.enumerated() {
            guard let file = device(w.drive) as? FileDevice,
                  let fd = file.directDescriptor(forWriteOf: w.data, at: w.offset, keepInCache: w.keepInCache) else { continue }
            ops.append(lunsys_ring_write(fd: fd, data: w.data.baseAddress, length: UInt32(w.data.count),
                                         offset: w.offset, result: 0))
            which.append(i)
        }
        guard ops.count >= 2 else { return nil }
        let (made, work) = withoutActuallyEscaping(whileInFlight) { body in
            ops.withUnsafeMutableBufferPointer { ops in
                var work = InFlightWork(body: body, ops: ops)
                let made = withUnsafeMutablePointer(to: &work) { context in
                    lunsys_ring_write_all(ops.baseAddress, Int32(ops.count), { context in
                        let work = context!.assumingMemoryBound(to: InFlightWork.self)
                        // Until the ring waits for a write, its result is the -ECANCELED it started with.
                        work.pointee.inFlight = work.pointee.ops.allSatisfy { $0.result == -ECANCELED }
                        work.pointee.body()
                        work.pointee.done = true
                    }, context)
                }
                return (made, (done: work.done, inFlight: work.inFlight))
            }
        }
        // The ring returns -1 only before it submits anything, so before it calls the work.
        guard made == 0 else { precondition(!work.done); return nil }
        var results = [Int?](repeating: nil, count: writes.count)
        for (k, i) in which.enumerated() { results[i] = Int(ops[k].result) }
        return (results, work.done, work.inFlight)
    }

    /// What the ring calls while the writes are in flight, and what it found when it did.
    private struct InFlightWork {
        let body: () -> Void
        let ops: UnsafeMutableBufferPointer<lunsys_ring_write>
        var done = false
        var inFlight = false
    }
}
