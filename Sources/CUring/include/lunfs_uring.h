// FUSE over io_uring for lunfs: the kernel side of the protocol (ring entries, REGISTER and
// COMMIT_AND_FETCH commands) and libfuse's custom-io seam, behind a small C interface that
// Swift's request loop drives. Nothing here knows about lunfs's operations: a request taken
// from the ring is laid out exactly as /dev/fuse would deliver it and handed to libfuse's
// fuse_session_process_buf, and the reply libfuse writes is steered back into the same ring
// entry. The header exposes no libfuse types, so that Swift sees them only through CFuse3.
#ifndef LUNFS_URING_H
#define LUNFS_URING_H
#include <stddef.h>
#include <stdint.h>

/// Per-session state of the custom io: the INIT negotiation and which loop serves requests.
typedef struct lunfs_uring_transport lunfs_uring_transport;

/// One ring entry and the io_uring instance of the one thread that serves it.
typedef struct lunfs_uring_worker lunfs_uring_worker;

/// What INIT decided, as reported once by lunfs_uring_transport_take_init_outcome.
enum lunfs_uring_init_outcome {
    /// INIT has not been answered yet (or its outcome was already taken).
    LUNFS_URING_INIT_PENDING = 0,
    /// The reply asked for FUSE_OVER_IO_URING and the kernel accepted it: register the queues.
    LUNFS_URING_INIT_RING = 1,
    /// The kernel did not offer FUSE_OVER_IO_URING (module parameter off, or too old).
    LUNFS_URING_INIT_NOT_OFFERED = 2,
    /// The INIT reply failed or carried an error; requests stay on /dev/fuse.
    LUNFS_URING_INIT_FAILED = 3,
    /// The kernel offered the ring but this process could not set up its io_urings (see
    /// lunfs_uring_transport_setup_error); INIT did not ask for it.
    LUNFS_URING_INIT_SETUP_FAILED = 4,
    /// The session was told not to use the ring (-o uring=off); INIT did not ask for it.
    LUNFS_URING_INIT_NOT_WANTED = 5,
};

lunfs_uring_transport *lunfs_uring_transport_new(void);
void lunfs_uring_transport_free(lunfs_uring_transport *transport);

/// Installs the custom io on a mounted libfuse session (`session` is a struct fuse_session *),
/// planning one queue per possible CPU with `entries_per_queue` entries whose payload buffers
/// hold `payload_bytes` (at least the kernel's max_write). Returns 0 or -errno. The transport
/// must outlive the session. With `want_ring` 0 the transport only amends the INIT reply
/// (FUSE_HANDLE_KILLPRIV_V2) and never asks for the ring.
int lunfs_uring_transport_install(lunfs_uring_transport *transport, void *session,
                                  unsigned entries_per_queue, size_t payload_bytes, int want_ring);

/// 1 once the INIT reply told the kernel that the file system removes set-user-ID, set-group-ID
/// and capabilities itself (FUSE_HANDLE_KILLPRIV_V2), so the kernel stops asking for
/// security.capability before each write; 0 before INIT or when the kernel did not offer it.
int lunfs_uring_transport_killpriv_v2(const lunfs_uring_transport *transport);

/// The plan: queues (one per possible CPU) and entries in each.
unsigned lunfs_uring_transport_queue_count(const lunfs_uring_transport *transport);
unsigned lunfs_uring_transport_entries_per_queue(const lunfs_uring_transport *transport);

/// After LUNFS_URING_INIT_RING: the worker for entry `index` (queue index / entries_per_queue),
/// created before INIT asked for the ring, so that a ring the kernel waits for always exists.
/// Ownership passes to the caller; NULL if already taken.
lunfs_uring_worker *lunfs_uring_transport_take_worker(lunfs_uring_transport *transport, unsigned index);

/// The errno that made LUNFS_URING_INIT_SETUP_FAILED.
int lunfs_uring_transport_setup_error(const lunfs_uring_transport *transport);

/// Makes `transport` the calling thread's: the /dev/fuse workers call this once, so that the
/// INIT request they read and its reply are recognised.
void lunfs_uring_transport_attach_thread(lunfs_uring_transport *transport);

/// The INIT outcome, returned once (LUNFS_URING_INIT_PENDING before and after).
int lunfs_uring_transport_take_init_outcome(lunfs_uring_transport *transport);

/// The kernel's protocol minor version and INIT flags2 as read from the INIT request.
uint32_t lunfs_uring_transport_kernel_minor(const lunfs_uring_transport *transport);
uint32_t lunfs_uring_transport_kernel_flags2(const lunfs_uring_transport *transport);

/// The number of ring queues the kernel expects: one per possible CPU (highest index + 1 in
/// /sys/devices/system/cpu/possible). Returns at least 1.
int lunfs_uring_possible_cpus(void);

/// Creates a worker: an io_uring with 128-byte SQEs, a page-aligned header area and a payload
/// buffer of `payload_bytes` (at least the kernel's max_write), for queue `qid` of the
/// connection on `fuse_fd`. NULL with *error = errno on failure.
lunfs_uring_worker *lunfs_uring_worker_new(int fuse_fd, unsigned qid, size_t payload_bytes, int *error);

/// Submits REGISTER for the worker's entry; returns 0 when the kernel took it (no request yet),
/// or -errno when it refused. Call from the thread that will call lunfs_uring_worker_next:
/// the kernel fills ring entries in the task that submitted them.
int lunfs_uring_worker_register(lunfs_uring_worker *worker);

/// Commits the reply to the request in hand (if any) and waits for the next request. On 0,
/// `*request` and `*request_bytes` describe it in /dev/fuse layout (fuse_in_header, the
/// operation's header, the payload), valid until the next call; the payload of a WRITE starts
/// on a page boundary. -ENOTCONN when the connection ends; other -errno on failure.
int lunfs_uring_worker_next(lunfs_uring_worker *worker, void **request, size_t *request_bytes);

/// Whether libfuse replied to the request in hand (the reply sits in the entry).
int lunfs_uring_worker_has_reply(const lunfs_uring_worker *worker);

/// Answers the request in hand with -`error_number` (for a request libfuse left unanswered).
void lunfs_uring_worker_reply_error(lunfs_uring_worker *worker, int error_number);

/// Releases the ring and buffers (the kernel must be done with the entry: after -ENOTCONN, or
/// when the process is about to exit).
void lunfs_uring_worker_free(lunfs_uring_worker *worker);
#endif
