// The session's custom io: libfuse reads /dev/fuse and writes replies through CUring, which
// notes the INIT exchange, amends the INIT reply (FUSE_HANDLE_KILLPRIV_V2 always; the ring
// when the kernel offers it and the session wants it) and steers each reply to the ring entry
// its request came from. Installed on the mounted session and freed only after the session is
// destroyed.
#if canImport(Glibc)
import Glibc
#endif
import CFuse3
import CUring

final class UringTransport: @unchecked Sendable {
    let pointer: OpaquePointer

    /// Installs the custom io on a mounted session, planning queues with enough entries for
    /// `threads` serving threads in all (used only if `wantRing`); throws when libfuse refuses it.
    init(session: OpaquePointer, threads: Int, wantRing: Bool) throws(FuseFailure) {
        guard let created = lunfs_uring_transport_new() else { throw FuseFailure(ENOMEM, "no memory for the io_uring transport") }
        let queues = Int(lunfs_uring_possible_cpus())
        let status = lunfs_uring_transport_install(created, UnsafeMutableRawPointer(session), UInt32(max(2, threads / queues)),
                                                   Int(maximumRequestBytes), wantRing ? 1 : 0)
        guard status == 0 else {
            lunfs_uring_transport_free(created)
            throw FuseFailure(-status, "libfuse refused the custom io")
        }
        pointer = created
    }

    /// For the /dev/fuse worker threads: the INIT request arrives on one of them.
    func attachThread() { lunfs_uring_transport_attach_thread(pointer) }

    /// What INIT decided, once; nil before (and after it was taken).
    func takeInitOutcome() -> lunfs_uring_init_outcome? {
        let outcome = lunfs_uring_init_outcome(UInt32(lunfs_uring_transport_take_init_outcome(pointer)))
        return outcome == LUNFS_URING_INIT_PENDING ? nil : outcome
    }

    var queueCount: Int { Int(lunfs_uring_transport_queue_count(pointer)) }
    var entriesPerQueue: Int { Int(lunfs_uring_transport_entries_per_queue(pointer)) }
    var setupError: Int32 { lunfs_uring_transport_setup_error(pointer) }
    /// Whether INIT told the kernel that lunfs removes set-user-ID and capabilities itself.
    var handlesKillPrivileges: Bool { lunfs_uring_transport_killpriv_v2(pointer) != 0 }

    /// The INIT request's flags2 and protocol minor, for the log.
    var kernelDescription: String {
        "protocol 7.\(lunfs_uring_transport_kernel_minor(pointer)), INIT flags2 0x\(String(lunfs_uring_transport_kernel_flags2(pointer), radix: 16))"
    }

    deinit { lunfs_uring_transport_free(pointer) }
}
