// Thin wrappers so Swift can reach GNU-only system calls; see include/lunsys.h.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include "lunsys.h"

int lunsys_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length);
}

int lunsys_gettid(void) { return (int)syscall(SYS_gettid); }

int lunsys_open_direct(const char *path, int flags) { return open(path, flags | O_DIRECT); }

int lunsys_write_back_and_wait(int fd, long long offset) {
    return sync_file_range(fd, offset, 0, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
}

int lunsys_start_write_back(int fd, long long offset, long long length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}

int lunsys_cachestat(int fd, long long offset, long long length,
                     unsigned long long *cached, unsigned long long *dirty) {
    // Debian 12's headers predate cachestat: its number and structures from the kernel's uapi.
    struct { uint64_t off, len; } range = { (uint64_t)offset, (uint64_t)length };
    struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } stat;
    if (syscall(451, fd, &range, &stat, 0) != 0) return -1;
    *cached = stat.nr_cache;
    *dirty = stat.nr_dirty;
    return 0;
}

int lunsys_open_fuse_inode(const char *mountpoint, unsigned long long device, unsigned long long nodeid, unsigned int generation) {
    int mount_fd = open(mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mount_fd < 0) return -1;
    struct stat st;
    if (fstat(mount_fd, &st) != 0 || (unsigned long long)st.st_dev != device) {
        close(mount_fd);
        errno = EXDEV;
        return -1;
    }
    // fs/fuse/inode.c fuse_encode_fh: three 32-bit words, node id high and low, generation,
    // of type FILEID_INO64_GEN (0x81).
    unsigned int words[3] = { (unsigned int)(nodeid >> 32), (unsigned int)nodeid, generation };
    _Alignas(struct file_handle) char space[sizeof(struct file_handle) + sizeof words];
    struct file_handle *handle = (struct file_handle *)space;
    handle->handle_bytes = sizeof words;
    handle->handle_type = 0x81;
    memcpy(handle->f_handle, words, sizeof words);
    int fd = open_by_handle_at(mount_fd, handle, O_RDONLY | O_CLOEXEC | O_NOATIME);
    int saved = errno;
    close(mount_fd);
    errno = saved;
    return fd;
}

int lunsys_rwlock_init_writer_preferring(pthread_rwlock_t *lock) {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    return rc;
}

// CRC-32C: on x86-64 with SSE 4.2, eight bytes per instruction in three independent streams
// (the instruction's latency is three cycles and its throughput one per cycle, so one stream
// leaves two thirds of the unit idle); a byte-wise table elsewhere. Data checksums run over
// every byte a disk reads or writes, twice for a mirror, so their speed shows in every large
// transfer (docs/PERFORMANCE.md section 7).
//
// The streams: a run of 3L bytes is cut into three lanes of L bytes. Lane 1 continues the
// running register, lanes 2 and 3 start from zero, and the CRC register update is linear, so
//     crc(r, a b c) = shift_2L(crc(r, a)) ^ shift_L(crc(0, b)) ^ crc(0, c)
// where shift_n(x) is the register after n zero bytes from x (a fixed linear map, applied
// through four 256-entry tables built once).
static uint32_t crc32c_table[256];
static int crc32c_hardware = 0;
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;

enum { crc32c_lane = 1360 };    /* 3 lanes = 4080 bytes: one 4 KiB block is one run + 16 */
static uint32_t crc32c_shift_lane[4][256];
static uint32_t crc32c_shift_2lanes[4][256];
static uint32_t crc32c_shift_block[4][256];   /* 4096 zero bytes: a block's seed part */

/* The register after `n` zero bytes starting from `x`, bit by bit (only to build tables). */
static uint32_t crc32c_zeros_slow(uint32_t x, uint64_t n) {
    while (n--) {
        for (int k = 0; k < 8; k++) x = (x & 1) ? (x >> 1) ^ 0x82F63B78u : x >> 1;
    }
    return x;
}

static void crc32c_build_shift(uint32_t table[4][256], uint64_t n) {
    uint32_t bit[32];
    for (int i = 0; i < 32; i++) bit[i] = crc32c_zeros_slow(1u << i, n);
    for (int k = 0; k < 4; k++) {
        for (int b = 0; b < 256; b++) {
            uint32_t v = 0;
            for (int i = 0; i < 8; i++) if (b & (1 << i)) v ^= bit[8 * k + i];
            table[k][b] = v;
        }
    }
}

static inline uint32_t crc32c_shift(uint32_t table[4][256], uint32_t x) {
    return table[0][x & 0xFF] ^ table[1][(x >> 8) & 0xFF] ^ table[2][(x >> 16) & 0xFF] ^ table[3][x >> 24];
}

static void crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
    crc32c_build_shift(crc32c_shift_lane, crc32c_lane);
    crc32c_build_shift(crc32c_shift_2lanes, 2 * crc32c_lane);
    crc32c_build_shift(crc32c_shift_block, 4096);
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc32c_hardware = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#else
    crc32c_hardware = 0;
#endif
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const unsigned char *p, uint64_t n) {
    uint64_t c = crc;
    while (n >= 3 * crc32c_lane) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *p1 = p + crc32c_lane, *p2 = p + 2 * crc32c_lane;
        for (int i = 0; i < crc32c_lane; i += 8) {
            uint64_t v0, v1, v2;
            __builtin_memcpy(&v0, p + i, 8);
            __builtin_memcpy(&v1, p1 + i, 8);
            __builtin_memcpy(&v2, p2 + i, 8);
            c = __builtin_ia32_crc32di(c, v0);
            c1 = __builtin_ia32_crc32di(c1, v1);
            c2 = __builtin_ia32_crc32di(c2, v2);
        }
        c = crc32c_shift(crc32c_shift_2lanes, (uint32_t)c) ^ crc32c_shift(crc32c_shift_lane, (uint32_t)c1) ^ (uint32_t)c2;
        p += 3 * crc32c_lane; n -= 3 * crc32c_lane;
    }
    while (n >= 8) {
        uint64_t v;
        __builtin_memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8; n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
#endif

uint32_t lunsys_crc32c(uint32_t crc, const void *data, uint64_t length) {
    pthread_once(&crc32c_once, crc32c_init);
    const unsigned char *p = data;
    uint32_t c = ~crc;
#if defined(__x86_64__)
    if (crc32c_hardware) return ~crc32c_sse42(c, p, length);
#endif
    while (length--) c = crc32c_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

// A block's CRC-32C in two parts: what its bytes contribute and what its seed contributes.
// The register update is linear, so for a 4,096-byte block
//     crc(s, data) = ~(shift_4096(~s) ^ raw(data))
// where raw(data) is the register after the block from zero, itself linear in the bytes:
// raw(a ^ b) = raw(a) ^ raw(b). A mirror's copies of a block (same bytes, other seeds) and a
// RAID 5 parity block (the XOR of the data blocks) thus get their checksums from checksums
// already computed, with four table lookups instead of a pass over 4 KiB.
uint32_t lunsys_crc32c_block_unseeded(uint32_t crc, uint32_t seed) {
    pthread_once(&crc32c_once, crc32c_init);
    return ~crc ^ crc32c_shift(crc32c_shift_block, ~seed);
}

uint32_t lunsys_crc32c_block_seeded(uint32_t unseeded, uint32_t seed) {
    pthread_once(&crc32c_once, crc32c_init);
    return ~(crc32c_shift(crc32c_shift_block, ~seed) ^ unseeded);
}

#ifndef LUNFS_BUILD_COMMIT
#define LUNFS_BUILD_COMMIT "unknown"
#endif

const char *lunsys_build_commit(void) {
    return LUNFS_BUILD_COMMIT;
}

long lunsys_getxattr(const char *path, const char *name, void *value, unsigned long size) {
    return getxattr(path, name, value, size);
}

int lunsys_setxattr(const char *path, const char *name, const void *value, unsigned long size, int flags) {
    return setxattr(path, name, value, size, flags);
}

// The mapping and its guarded copy (lunsys.h). A store into a shared mapping that the kernel
// cannot back (a read error, no space for a hole, a file cut short) raises SIGBUS instead of
// returning an error; the handler jumps back into the copy that touched the mapping, which
// returns -1. The jump skips only C frames (memcpy's), never Swift ones. SA_NODEFER keeps
// SIGBUS unblocked in the handler, so leaving it by a jump needs no saved signal mask, and
// sigsetjmp(…, 0) costs no system call.
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>

static _Thread_local sigjmp_buf *guarded_copy_exit;
/// The handler before ours (the Swift runtime's backtracer, or the default action).
static struct sigaction previous_bus_action;

static void on_bus_error(int signal_number, siginfo_t *info, void *context) {
    (void)info; (void)context;
    sigjmp_buf *exit_to = guarded_copy_exit;
    if (exit_to) siglongjmp(*exit_to, 1);
    // Not inside a guarded copy: the handler before ours takes the fault when the
    // instruction runs again.
    sigaction(signal_number, &previous_bus_action, NULL);
}

static void install_bus_handler(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_bus_error;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &previous_bus_action);
}

static pthread_once_t bus_handler_once = PTHREAD_ONCE_INIT;

void *lunsys_map_shared(int fd, long long offset, unsigned long long length) {
    pthread_once(&bus_handler_once, install_bus_handler);
    void *address = mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
    if (address == MAP_FAILED) return NULL;
    // A fault reads only its own page, as a pwrite into an uncached page would: without this,
    // each fault reads ahead around it (the disk's read_ahead_kb, 4 MiB here) into the cache.
    madvise(address, (size_t)length, MADV_RANDOM);
    return address;
}

void lunsys_unmap(void *address, unsigned long long length) { munmap(address, (size_t)length); }

int lunsys_guarded_copy(void *destination, const void *source, unsigned long long length) {
    sigjmp_buf exit_to;
    if (sigsetjmp(exit_to, 0) != 0) {
        guarded_copy_exit = NULL;
        return -1;
    }
    guarded_copy_exit = &exit_to;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    memcpy(destination, source, (size_t)length);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    guarded_copy_exit = NULL;
    return 0;
}
