// One ring entry and the thread that serves it: its own io_uring with 128-byte SQEs, the
// header and payload buffers the kernel fills (REGISTER), and the commit of each reply
// together with the fetch of the next request (COMMIT_AND_FETCH).
#include "lunfs_uring_private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

__thread lunfs_uring_worker *lunfs_uring_thread_worker;

int lunfs_uring_worker_awaits_reply(const lunfs_uring_worker *worker, uint64_t unique) {
    return worker->in_hand && !worker->replied && unique == worker->unique;
}

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
    if (lunfs_uring_thread_worker == worker) lunfs_uring_thread_worker = NULL;
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
    lunfs_uring_thread_worker = worker;
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

// The out header goes over the in header, the arguments into the payload buffer.
ssize_t lunfs_uring_worker_capture_reply(lunfs_uring_worker *worker, const struct iovec *iov, int count) {
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
