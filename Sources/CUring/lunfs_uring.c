// FUSE over io_uring, the C half (see include/lunfs_uring.h for the interface and
// docs/MOUNT.md, "The request loop", for the design). The ring protocol's structures are
// defined here from the kernel's uapi (protocol 7.42 and later): Debian 12's <linux/fuse.h>
// stops at 7.38, before the ring existed.
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include "lunfs_uring.h"

#include <errno.h>
#include <fuse3/fuse_lowlevel.h>
#include <liburing.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

// ---- The kernel's ring protocol (include/uapi/linux/fuse.h, 7.42) ----

/// Bit 9 of INIT's flags2, i.e. bit 41 of the 64-bit flags: FUSE_OVER_IO_URING.
#define RING_INIT_FLAGS2_OVER_IO_URING (1u << 9)

/// sqe->cmd_op values.
enum { RING_COMMAND_REGISTER = 1, RING_COMMAND_COMMIT_AND_FETCH = 2 };

/// The entry's own part of the header area: which request it holds and how much payload.
struct ring_entry_in_out {
    uint64_t flags;
    /// The request's unique; a COMMIT_AND_FETCH names it.
    uint64_t commit_id;
    /// Bytes of payload in the payload buffer (request arguments after the first, or reply).
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};

/// The header buffer (first iovec of REGISTER): fuse_in_header on the way in and
/// fuse_out_header on the way out share in_out; op_in holds the operation's first argument
/// (fuse_write_in for WRITE, nothing for LOOKUP, whose name goes to the payload).
struct ring_request_header {
    char in_out[128];
    char op_in[128];
    struct ring_entry_in_out ent_in_out;
};

/// The command area of a 128-byte SQE (sqe->cmd).
struct ring_command {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

_Static_assert(sizeof(struct ring_entry_in_out) == 32, "fuse_uring_ent_in_out is 32 bytes");
_Static_assert(sizeof(struct ring_request_header) == 288, "fuse_uring_req_header is 288 bytes");
_Static_assert(sizeof(struct ring_command) == 24, "fuse_uring_cmd_req is 24 bytes");
_Static_assert(sizeof(struct ring_command) <= 80, "the command fits the SQE128 command area");
_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header");
_Static_assert(offsetof(struct fuse_init_out, flags2) == 32, "flags2 of fuse_init_out");
_Static_assert(offsetof(struct fuse_init_in, flags2) == 16, "flags2 of fuse_init_in");

// ---- The transport: libfuse's custom io ----

struct lunfs_uring_transport {
    /// The INIT request being answered by the thread that read it (0: none).
    _Atomic uint64_t init_unique;
    _Atomic int outcome;
    _Atomic uint32_t kernel_minor;
    _Atomic uint32_t kernel_flags2;
    _Atomic int setup_error;
    int fuse_fd;
    unsigned queue_count;
    unsigned entries_per_queue;
    size_t payload_bytes;
    /// queue_count * entries_per_queue workers, made while answering INIT.
    lunfs_uring_worker **workers;
};

struct lunfs_uring_worker {
    struct io_uring ring;
    int fuse_fd;
    /// 1 when /dev/fuse is the ring's registered file 0 (saves a file lookup per command).
    int fixed_file;
    unsigned qid;
    /// One mapping: header page, a page for the rebuilt request prefix, then the payload.
    uint8_t *area;
    size_t area_bytes;
    struct ring_request_header *header;
    uint8_t *payload;
    size_t payload_bytes;
    struct iovec buffers[2];
    int last_command;
    /// A request is in hand (taken from the ring, not yet committed).
    int in_hand;
    /// libfuse's reply to it is in the entry.
    int replied;
    uint64_t unique;
    uint64_t commit_id;
};

/// The transport of a /dev/fuse worker thread and the entry of a ring worker thread. A reply
/// is written by the thread that processes the request (the handlers answer before they
/// return), so these steer every reply; other threads (notifications) write to /dev/fuse.
static __thread lunfs_uring_transport *thread_transport;
static __thread lunfs_uring_worker *thread_worker;

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
    atomic_store(&transport->kernel_flags2, flags2);
    atomic_store(&transport->init_unique, in.unique);
    return count;
}

/// Sends libfuse's INIT reply, adding FUSE_OVER_IO_URING when the kernel offered it (libfuse
/// 3.14 does not know the flag), and records the outcome for the request loop.
static ssize_t transport_send_init_reply(lunfs_uring_transport *transport, int fd, struct iovec *iov, int count) {
    struct fuse_out_header out;
    memcpy(&out, iov[0].iov_base, sizeof out);
    int offered = (atomic_load(&transport->kernel_flags2) & RING_INIT_FLAGS2_OVER_IO_URING) != 0;
    struct fuse_init_out reply;
    if (out.error != 0 || count != 2 || !offered || iov[1].iov_len > sizeof reply ||
        iov[1].iov_len < offsetof(struct fuse_init_out, flags2) + sizeof reply.flags2) {
        ssize_t written = writev(fd, iov, count);
        int outcome = written < 0 || out.error != 0 ? LUNFS_URING_INIT_FAILED : LUNFS_URING_INIT_NOT_OFFERED;
        atomic_store(&transport->outcome, outcome);
        return written;
    }
    memset(&reply, 0, sizeof reply);
    memcpy(&reply, iov[1].iov_base, iov[1].iov_len);
    if (!(reply.flags & FUSE_INIT_EXT)) {
        ssize_t written = writev(fd, iov, count);
        atomic_store(&transport->outcome, written < 0 ? LUNFS_URING_INIT_FAILED : LUNFS_URING_INIT_NOT_OFFERED);
        return written;
    }
    int setup_error = transport_prepare_workers(transport);
    if (setup_error != 0) {
        atomic_store(&transport->setup_error, setup_error);
        ssize_t written = writev(fd, iov, count);
        atomic_store(&transport->outcome, written < 0 ? LUNFS_URING_INIT_FAILED : LUNFS_URING_INIT_SETUP_FAILED);
        return written;
    }
    reply.flags2 |= RING_INIT_FLAGS2_OVER_IO_URING;
    struct iovec patched[2] = { iov[0], { .iov_base = &reply, .iov_len = iov[1].iov_len } };
    ssize_t written = writev(fd, patched, 2);
    atomic_store(&transport->outcome, written < 0 ? LUNFS_URING_INIT_FAILED : LUNFS_URING_INIT_RING);
    return written;
}

static ssize_t worker_capture_reply(lunfs_uring_worker *worker, const struct iovec *iov, int count);

/// Every reply and notification libfuse sends passes here.
static ssize_t transport_writev(int fd, struct iovec *iov, int count, void *userdata) {
    (void)userdata;
    if (count >= 1 && iov[0].iov_len >= sizeof(struct fuse_out_header)) {
        uint64_t unique;
        memcpy(&unique, (const uint8_t *)iov[0].iov_base + offsetof(struct fuse_out_header, unique), sizeof unique);
        lunfs_uring_worker *worker = thread_worker;
        if (worker != NULL && worker->in_hand && !worker->replied && unique == worker->unique) {
            return worker_capture_reply(worker, iov, count);
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
                                  unsigned entries_per_queue, size_t payload_bytes) {
    struct fuse_session *se = session;
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

// ---- Ring workers ----

lunfs_uring_worker *lunfs_uring_worker_new(int fuse_fd, unsigned qid, size_t payload_bytes, int *error) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    lunfs_uring_worker *worker = calloc(1, sizeof *worker);
    if (worker == NULL) { *error = ENOMEM; return NULL; }
    worker->fuse_fd = fuse_fd;
    worker->qid = qid;
    worker->payload_bytes = (payload_bytes + page - 1) / page * page;
    worker->area_bytes = 2 * page + worker->payload_bytes;
    void *area = mmap(NULL, worker->area_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) { *error = errno; free(worker); return NULL; }
    worker->area = area;
    worker->header = area;
    worker->payload = worker->area + 2 * page;
    // The kernel copies requests into these pages from the serving thread; fault them all in
    // now rather than on the first large WRITE of each entry.
    memset(worker->area, 0, worker->area_bytes);
    worker->buffers[0] = (struct iovec){ .iov_base = worker->header, .iov_len = sizeof(struct ring_request_header) };
    worker->buffers[1] = (struct iovec){ .iov_base = worker->payload, .iov_len = worker->payload_bytes };
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_SQE128;
    int status = io_uring_queue_init_params(4, &worker->ring, &params);
    if (status < 0) {
        *error = -status;
        munmap(worker->area, worker->area_bytes);
        free(worker);
        return NULL;
    }
    worker->fixed_file = io_uring_register_files(&worker->ring, &fuse_fd, 1) == 0;
    return worker;
}

void lunfs_uring_worker_free(lunfs_uring_worker *worker) {
    if (worker == NULL) return;
    if (thread_worker == worker) thread_worker = NULL;
    io_uring_queue_exit(&worker->ring);
    munmap(worker->area, worker->area_bytes);
    free(worker);
}

/// Queues `command` for the worker's entry (not yet submitted).
static int worker_prepare(lunfs_uring_worker *worker, int command) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&worker->ring);
    if (sqe == NULL) return -EBUSY;
    memset(sqe, 0, 128);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = worker->fixed_file ? 0 : worker->fuse_fd;
    sqe->flags = worker->fixed_file ? IOSQE_FIXED_FILE : 0;
    sqe->cmd_op = (uint32_t)command;
    struct ring_command *request = (struct ring_command *)sqe->cmd;
    request->qid = (uint16_t)worker->qid;
    if (command == RING_COMMAND_REGISTER) {
        sqe->addr = (uint64_t)(uintptr_t)worker->buffers;
        sqe->len = 2;
    } else {
        request->commit_id = worker->commit_id;
    }
    worker->last_command = command;
    return 0;
}

int lunfs_uring_worker_register(lunfs_uring_worker *worker) {
    thread_worker = worker;
    // EAGAIN: the kernel has not finished processing INIT yet; it will in a moment.
    for (int attempt = 0;; attempt++) {
        int status = worker_prepare(worker, RING_COMMAND_REGISTER);
        if (status < 0) return status;
        status = io_uring_submit(&worker->ring);
        if (status < 0) return status;
        // A refusal completes at once; an accepted entry completes only with a request.
        struct io_uring_cqe *cqe;
        if (io_uring_peek_cqe(&worker->ring, &cqe) != 0 || cqe->res >= 0) return 0;
        int result = cqe->res;
        io_uring_cqe_seen(&worker->ring, cqe);
        if (result == -EAGAIN && attempt < 1000) {
            usleep(1000);
            continue;
        }
        return result;
    }
}

/// Writes libfuse's reply into the entry: the out header over the in header, the arguments
/// into the payload buffer.
static ssize_t worker_capture_reply(lunfs_uring_worker *worker, const struct iovec *iov, int count) {
    struct fuse_out_header out;
    memcpy(&out, iov[0].iov_base, sizeof out);
    size_t total = 0;
    for (int index = 1; index < count; index++) total += iov[index].iov_len;
    size_t reported = sizeof out + total;
    if (total > worker->payload_bytes) {
        out.error = -EIO;
        total = 0;
    } else {
        size_t offset = 0;
        for (int index = 1; index < count; index++) {
            memmove(worker->payload + offset, iov[index].iov_base, iov[index].iov_len);
            offset += iov[index].iov_len;
        }
    }
    out.len = (uint32_t)(sizeof out + total);
    memcpy(worker->header->in_out, &out, sizeof out);
    worker->header->ent_in_out.payload_sz = (uint32_t)total;
    worker->replied = 1;
    return (ssize_t)reported;
}

void lunfs_uring_worker_reply_error(lunfs_uring_worker *worker, int error_number) {
    struct fuse_out_header out = { .len = sizeof out, .error = -error_number, .unique = worker->unique };
    memcpy(worker->header->in_out, &out, sizeof out);
    worker->header->ent_in_out.payload_sz = 0;
    worker->replied = 1;
}

int lunfs_uring_worker_has_reply(const lunfs_uring_worker *worker) {
    return worker->in_hand && worker->replied;
}

/// Lays the request in the entry out as /dev/fuse would deliver it: fuse_in_header and the
/// operation's header copied to just before the payload, which stays where the kernel put it
/// (page-aligned, so a WRITE's data can go to O_DIRECT drives without a copy). Returns 0, or
/// -EPROTO for a request whose sizes do not add up.
static int worker_take_request(lunfs_uring_worker *worker, void **request, size_t *request_bytes) {
    struct fuse_in_header in;
    memcpy(&in, worker->header->in_out, sizeof in);
    const struct ring_entry_in_out *entry = &worker->header->ent_in_out;
    worker->in_hand = 1;
    worker->replied = 0;
    worker->unique = in.unique;
    worker->commit_id = entry->commit_id;
    size_t payload = entry->payload_sz;
    if (payload > worker->payload_bytes || in.len < sizeof in + payload ||
        in.len - sizeof in - payload > sizeof worker->header->op_in) {
        return -EPROTO;
    }
    size_t operation_header = in.len - sizeof in - payload;
    uint8_t *start = worker->payload - operation_header - sizeof in;
    memcpy(start, &in, sizeof in);
    memcpy(start + sizeof in, worker->header->op_in, operation_header);
    *request = start;
    *request_bytes = in.len;
    return 0;
}

int lunfs_uring_worker_next(lunfs_uring_worker *worker, void **request, size_t *request_bytes) {
    if (worker->in_hand) {
        if (!worker->replied) lunfs_uring_worker_reply_error(worker, EIO);
        int status = worker_prepare(worker, RING_COMMAND_COMMIT_AND_FETCH);
        if (status < 0) return status;
        worker->in_hand = 0;
    }
    for (;;) {
        struct io_uring_cqe *cqe = NULL;
        int status = io_uring_sq_ready(&worker->ring) > 0
            ? io_uring_submit_and_wait(&worker->ring, 1)
            : io_uring_wait_cqe(&worker->ring, &cqe);
        if (status < 0 && status != -EINTR && status != -EAGAIN) return status;
        if (io_uring_peek_cqe(&worker->ring, &cqe) != 0) continue;
        int result = cqe->res;
        io_uring_cqe_seen(&worker->ring, cqe);
        if (result == -EINTR || result == -EAGAIN) {
            status = worker_prepare(worker, worker->last_command);
            if (status < 0) return status;
            continue;
        }
        if (result < 0) return result;
        status = worker_take_request(worker, request, request_bytes);
        if (status == 0) return 0;
        // Unreadable request: answer it with EIO so the entry comes back, and wait again.
        lunfs_uring_worker_reply_error(worker, EIO);
        status = worker_prepare(worker, RING_COMMAND_COMMIT_AND_FETCH);
        if (status < 0) return status;
        worker->in_hand = 0;
    }
}
