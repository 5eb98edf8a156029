// The session's custom io (libfuse's fuse_session_custom_io): read(2) and writev(2) of
// /dev/fuse that note the INIT exchange, amend libfuse's INIT reply with the two flags
// libfuse 3.14 does not know (FUSE over io_uring when the kernel offers it and the session
// wants it, after creating every ring worker; FUSE_HANDLE_KILLPRIV_V2), and steer each reply
// to the ring entry its request came from. See docs/MOUNT.md, "The request loop".
#include "lunfs_uring_private.h"

#include <errno.h>
#include <fuse3/fuse_lowlevel.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct lunfs_uring_transport {
    /// The INIT request being answered by the thread that read it (0: none).
    _Atomic uint64_t init_unique;
    _Atomic int outcome;
    _Atomic uint32_t kernel_minor;
    _Atomic uint32_t kernel_flags;
    _Atomic uint32_t kernel_flags2;
    _Atomic int killpriv_v2;
    int want_ring;
    _Atomic int setup_error;
    int fuse_fd;
    unsigned queue_count;
    unsigned entries_per_queue;
    size_t payload_bytes;
    /// queue_count * entries_per_queue workers, made while answering INIT.
    lunfs_uring_worker **workers;
};

/// The transport of a /dev/fuse worker thread: the INIT request is read, and answered, by one.
static __thread lunfs_uring_transport *thread_transport;

lunfs_uring_transport *lunfs_uring_transport_new(void) {
    return calloc(1, sizeof(lunfs_uring_transport));
}

static void transport_free_workers(lunfs_uring_transport *transport) {
    if (transport->workers == NULL) return;
    for (unsigned index = 0; index < transport->queue_count * transport->entries_per_queue; index++) {
        lunfs_uring_worker_free(transport->workers[index]);
    }
    free(transport->workers);
    transport->workers = NULL;
}

void lunfs_uring_transport_free(lunfs_uring_transport *transport) {
    if (transport == NULL) return;
    transport_free_workers(transport);
    free(transport);
}

unsigned lunfs_uring_transport_queue_count(const lunfs_uring_transport *transport) {
    return transport->queue_count;
}

unsigned lunfs_uring_transport_entries_per_queue(const lunfs_uring_transport *transport) {
    return transport->entries_per_queue;
}

int lunfs_uring_transport_setup_error(const lunfs_uring_transport *transport) {
    return atomic_load(&transport->setup_error);
}

lunfs_uring_worker *lunfs_uring_transport_take_worker(lunfs_uring_transport *transport, unsigned index) {
    if (transport->workers == NULL || index >= transport->queue_count * transport->entries_per_queue) return NULL;
    lunfs_uring_worker *worker = transport->workers[index];
    transport->workers[index] = NULL;
    return worker;
}

/// Creates every worker of the plan; 0, or the errno of the first that could not be made (then
/// none is kept). Once the reply asks for the ring the kernel holds every request until each
/// queue has an entry, so the rings must exist before that.
static int transport_prepare_workers(lunfs_uring_transport *transport) {
    unsigned count = transport->queue_count * transport->entries_per_queue;
    transport->workers = calloc(count, sizeof *transport->workers);
    if (transport->workers == NULL) return ENOMEM;
    for (unsigned index = 0; index < count; index++) {
        int error = 0;
        transport->workers[index] = lunfs_uring_worker_new(transport->fuse_fd, index / transport->entries_per_queue,
                                                           transport->payload_bytes, &error);
        if (transport->workers[index] == NULL) {
            transport_free_workers(transport);
            return error != 0 ? error : ENOMEM;
        }
    }
    return 0;
}

void lunfs_uring_transport_attach_thread(lunfs_uring_transport *transport) {
    thread_transport = transport;
}

int lunfs_uring_transport_take_init_outcome(lunfs_uring_transport *transport) {
    if (atomic_load_explicit(&transport->outcome, memory_order_relaxed) == LUNFS_URING_INIT_PENDING) {
        return LUNFS_URING_INIT_PENDING;
    }
    return atomic_exchange(&transport->outcome, LUNFS_URING_INIT_PENDING);
}

uint32_t lunfs_uring_transport_kernel_minor(const lunfs_uring_transport *transport) {
    return atomic_load(&transport->kernel_minor);
}

uint32_t lunfs_uring_transport_kernel_flags2(const lunfs_uring_transport *transport) {
    return atomic_load(&transport->kernel_flags2);
}

/// read(2) of /dev/fuse, noting the INIT request (its unique and what the kernel offers).
static ssize_t transport_read(int fd, void *buffer, size_t length, void *userdata) {
    (void)userdata;
    ssize_t count = read(fd, buffer, length);
    lunfs_uring_transport *transport = thread_transport;
    if (transport == NULL || count < (ssize_t)(sizeof(struct fuse_in_header) + offsetof(struct fuse_init_in, flags2))) {
        return count;
    }
    struct fuse_in_header in;
    memcpy(&in, buffer, sizeof in);
    if (in.opcode != FUSE_INIT) return count;
    struct fuse_init_in init = {0};
    size_t argument_bytes = (size_t)count - sizeof in;
    memcpy(&init, (const uint8_t *)buffer + sizeof in, argument_bytes < sizeof init ? argument_bytes : sizeof init);
    uint32_t flags2 = 0;
    if ((init.flags & FUSE_INIT_EXT) && argument_bytes >= offsetof(struct fuse_init_in, flags2) + sizeof init.flags2) {
        flags2 = init.flags2;
    }
    atomic_store(&transport->kernel_minor, init.minor);
    atomic_store(&transport->kernel_flags, init.flags);
    atomic_store(&transport->kernel_flags2, flags2);
    atomic_store(&transport->init_unique, in.unique);
    return count;
}

/// Sends libfuse's INIT reply amended: FUSE_HANDLE_KILLPRIV_V2 when the kernel offered it (the
/// mounted tree keeps its side: images never carry set-user-ID or set-group-ID, and
/// security.* attributes are never stored), FUSE_OVER_IO_URING when the kernel offered it and
/// the session wants it; records the outcome for the request loop.
static ssize_t transport_send_init_reply(lunfs_uring_transport *transport, int fd, struct iovec *iov, int count) {
    struct fuse_out_header out;
    memcpy(&out, iov[0].iov_base, sizeof out);
    struct fuse_init_out reply;
    if (out.error != 0 || count != 2 || iov[1].iov_len > sizeof reply ||
        iov[1].iov_len < offsetof(struct fuse_init_out, flags2) + sizeof reply.flags2) {
        ssize_t written = writev(fd, iov, count);
        int outcome = written < 0 || out.error != 0 ? LUNFS_URING_INIT_FAILED : LUNFS_URING_INIT_NOT_OFFERED;
        atomic_store(&transport->outcome, outcome);
        return written;
    }
    memset(&reply, 0, sizeof reply);
    memcpy(&reply, iov[1].iov_base, iov[1].iov_len);
    int killpriv_v2 = (atomic_load(&transport->kernel_flags) & FUSE_HANDLE_KILLPRIV_V2) != 0;
    if (killpriv_v2) reply.flags |= FUSE_HANDLE_KILLPRIV_V2;
    int offered = (atomic_load(&transport->kernel_flags2) & RING_INIT_FLAGS2_OVER_IO_URING) != 0;
    int outcome = LUNFS_URING_INIT_NOT_OFFERED;
    if (!transport->want_ring) {
        outcome = LUNFS_URING_INIT_NOT_WANTED;
    } else if (offered && (reply.flags & FUSE_INIT_EXT)) {
        int setup_error = transport_prepare_workers(transport);
        if (setup_error != 0) {
            atomic_store(&transport->setup_error, setup_error);
            outcome = LUNFS_URING_INIT_SETUP_FAILED;
        } else {
            reply.flags2 |= RING_INIT_FLAGS2_OVER_IO_URING;
            outcome = LUNFS_URING_INIT_RING;
        }
    }
    struct iovec patched[2] = { iov[0], { .iov_base = &reply, .iov_len = iov[1].iov_len } };
    ssize_t written = writev(fd, patched, 2);
    if (written >= 0) atomic_store(&transport->killpriv_v2, killpriv_v2);
    atomic_store(&transport->outcome, written < 0 ? LUNFS_URING_INIT_FAILED : outcome);
    return written;
}

int lunfs_uring_transport_killpriv_v2(const lunfs_uring_transport *transport) {
    return atomic_load(&transport->killpriv_v2);
}

/// Every reply and notification libfuse sends passes here.
static ssize_t transport_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    if (count >= 1 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
        uint64_t unique;
        memcpy(&unique, (const uint8_t *)iov[0].iov_base + offsetof(struct fuse_out_header, unique), sizeof unique);
        lunfs_uring_worker *worker = lunfs_uring_thread_worker;
        if (worker != NULL && lunfs_uring_worker_awaits_reply(worker, unique)) {
            return lunfs_uring_worker_capture_reply(worker, iov, count);
        }
        lunfs_uring_transport *transport = thread_transport;
        if (transport != NULL && unique != 0 && unique == atomic_load(&transport->init_unique)) {
            atomic_store(&transport->init_unique, 0);
            return transport_send_init_reply(transport, fd, iov, count);
        }
    }
    return writev(fd, iov, count);
}

int lunfs_uring_transport_install(lunfs_uring_transport *transport, void *session,
                                  unsigned entries_per_queue, size_t payload_bytes, int want_ring) {
    struct fuse_session *se = session;
    transport->want_ring = want_ring;
    transport->fuse_fd = fuse_session_fd(se);
    transport->queue_count = (unsigned)lunfs_uring_possible_cpus();
    transport->entries_per_queue = entries_per_queue > 0 ? entries_per_queue : 1;
    transport->payload_bytes = payload_bytes;
    const struct fuse_custom_io io = { .writev = transport_writev, .read = transport_read };
    return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}

int lunfs_uring_possible_cpus(void) {
    FILE *file = fopen("/sys/devices/system/cpu/possible", "re");
    if (file == NULL) return 1;
    char text[256] = {0};
    size_t length = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[length] = 0;
    // "0-1", "0-3,6", "0": the highest number counts.
    long highest = 0, value = -1;
    for (const char *cursor = text;; cursor++) {
        if (*cursor >= '0' && *cursor <= '9') {
            value = (value < 0 ? 0 : value * 10) + (*cursor - '0');
            continue;
        }
        if (value > highest) highest = value;
        value = -1;
        if (*cursor == 0) break;
    }
    return (int)highest + 1;
}
