// Drive writes submitted together through an io_uring of the calling thread
// (LunEngine/Physical/DriveSubmission.swift). The large O_DIRECT pieces of one request go to
// their drives in one system call and are waited for in another, instead of one blocking
// pwrite each on as many threads; for eight 256 KiB pieces that is half the CPU time
// (docs/PERFORMANCE.md section 7). Each thread that asks gets its own ring, made on first use
// and closed when the thread ends; a thread whose ring cannot be made gets -1 and the caller
// writes another way.
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <liburing.h>
#include "lunsys.h"

enum { ring_entries = 32 };

static pthread_key_t ring_key;
static pthread_once_t ring_key_once = PTHREAD_ONCE_INIT;
static __thread struct io_uring *thread_ring;
static __thread int thread_ring_unavailable;

static void ring_close(void *ring) {
    io_uring_queue_exit(ring);
    free(ring);
}

static void ring_key_make(void) { pthread_key_create(&ring_key, ring_close); }

static struct io_uring *ring_of_thread(void) {
    if (thread_ring || thread_ring_unavailable) return thread_ring;
    pthread_once(&ring_key_once, ring_key_make);
    struct io_uring *ring = malloc(sizeof *ring);
    if (!ring || io_uring_queue_init(ring_entries, ring, 0) != 0) {
        free(ring);
        thread_ring_unavailable = 1;
        return NULL;
    }
    pthread_setspecific(ring_key, ring);
    thread_ring = ring;
    return ring;
}

/* Waits for `n` completions, filling in results. Writes in flight reference the caller's
   memory, so this does not return before every one of them has completed. */
static void reap(struct io_uring *ring, struct lunsys_ring_write *writes, int n) {
    while (n > 0) {
        struct io_uring_cqe *cqe;
        int e = io_uring_wait_cqe(ring, &cqe);
        if (e == -EINTR || e == -EAGAIN) continue;
        if (e < 0) abort();   /* cannot leave writes of the caller's memory in flight */
        writes[cqe->user_data].result = cqe->res;
        io_uring_cqe_seen(ring, cqe);
        n--;
    }
}

int lunsys_ring_write_all(struct lunsys_ring_write *writes, int count,
                          void (*in_flight)(void *context), void *context) {
    struct io_uring *ring = ring_of_thread();
    if (!ring) return -1;
    for (int i = 0; i < count; i++) writes[i].result = -ECANCELED;
    for (int start = 0; start < count; start += ring_entries) {
        int n = count - start < ring_entries ? count - start : ring_entries;
        for (int i = start; i < start + n; i++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
            io_uring_prep_write(sqe, writes[i].fd, writes[i].data, writes[i].length, writes[i].offset);
            sqe->user_data = (uint64_t)i;
        }
        int submitted = 0, reaped = 0;
        while (submitted < n) {
            /* One system call when all goes well: submit, then wait for every write not yet
               reaped (a short submission returns without waiting). With work to do while
               the writes are in flight, two: submit, work, then wait. */
            int e = in_flight ? io_uring_submit(ring) : io_uring_submit_and_wait(ring, n - reaped);
            if (e > 0) { submitted += e; continue; }
            if (e == -EINTR) continue;
            if (submitted > reaped) {   /* short of room: let the writes in flight finish */
                reap(ring, writes, submitted - reaped);
                reaped = submitted;
                continue;
            }
            /* Refused with nothing in flight: close the ring (the entries the kernel never
               took go with it); the writes not made keep -ECANCELED. */
            io_uring_queue_exit(ring);
            pthread_setspecific(ring_key, NULL);
            free(ring);
            thread_ring = NULL;
            thread_ring_unavailable = 1;
            return 0;
        }
        if (in_flight) {
            in_flight(context);
            in_flight = NULL;
            /* One wait for them all, as io_uring_submit_and_wait above (reap alone may sleep
               once per write); an interrupted wait leaves the rest to reap. */
            io_uring_submit_and_wait(ring, submitted - reaped);
        }
        reap(ring, writes, submitted - reaped);
    }
    return 0;
}
