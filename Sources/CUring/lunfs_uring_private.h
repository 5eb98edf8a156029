// What the two halves of CUring share and Swift does not see: the kernel's ring protocol
// (structures and numbers from include/uapi/linux/fuse.h, protocol 7.42 and later; Debian 12's
// <linux/fuse.h> stops at 7.38, before the ring existed), a ring worker's layout, and the
// thread-local worker through which the transport steers replies.
#ifndef LUNFS_URING_PRIVATE_H
#define LUNFS_URING_PRIVATE_H
#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include "lunfs_uring.h"

#include <liburing.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

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

/// The entry of a ring worker thread (set when it registers). The handlers answer before they
/// return, so the thread that took a request is the thread that writes its reply: the
/// transport's writev hands a reply to this worker when its unique matches.
extern __thread lunfs_uring_worker *lunfs_uring_thread_worker;

/// Whether a reply with `unique` belongs to the request `worker` has in hand.
int lunfs_uring_worker_awaits_reply(const lunfs_uring_worker *worker, uint64_t unique);

/// Writes libfuse's reply (out header, then arguments) into the worker's entry; returns the
/// bytes taken, as writev would.
ssize_t lunfs_uring_worker_capture_reply(lunfs_uring_worker *worker, const struct iovec *iov, int count);
#endif
