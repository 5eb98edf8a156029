// System calls that glibc hides behind _GNU_SOURCE, which Swift's Glibc module does not set.
#ifndef LUNFS_LUNSYS_H
#define LUNFS_LUNSYS_H
#include <stdint.h>

/// fallocate(2); returns 0 or -1 with errno set.
int lunsys_fallocate(int fd, int mode, int64_t offset, int64_t length);
/// The caller's thread id, for log lines.
int lunsys_gettid(void);
/// open(2) with O_DIRECT added to `flags`; returns the descriptor or -1 with errno set.
int lunsys_open_direct(const char *path, int flags);
/// Opens, read-only, the inode of the FUSE mount at `mountpoint` whose node id and generation
/// these are, by file handle (open_by_handle_at, FUSE's own handle format): no name is looked
/// up, so no directory lock is waited for. -1 with errno ESTALE when the kernel holds no such
/// inode (then it holds no pages of it either); EXDEV when the mount point is no longer the
/// file system of `device` (unmounted lazily, another mount on top); EPERM without
/// CAP_DAC_READ_SEARCH.
int lunsys_open_fuse_inode(const char *mountpoint, unsigned long long device, unsigned long long nodeid, unsigned int generation);
/// sync_file_range(fd, offset, to the end, WAIT_BEFORE|WRITE|WAIT_AFTER): writes back the pages
/// dirty at the call and waits for them; 0 or -1 with errno.
int lunsys_write_back_and_wait(int fd, long long offset);
/// sync_file_range(fd, offset, length, WRITE): starts writing back the dirty pages of the
/// range and returns without waiting for them; 0 or -1 with errno.
int lunsys_start_write_back(int fd, long long offset, long long length);
/// cachestat(2) (Linux 6.5): how many pages of the range the page cache holds, and how many of
/// those are dirty, found without reading anything; 0, or -1 with errno (ENOSYS before 6.5).
int lunsys_cachestat(int fd, long long offset, long long length,
                     unsigned long long *cached, unsigned long long *dirty);

/// mmap(2) of `length` bytes of `fd` from `offset` (a multiple of the page size), shared and
/// writable, a fault reading only its own page (MADV_RANDOM); NULL with errno set when the file
/// cannot be mapped.
void *lunsys_map_shared(int fd, long long offset, unsigned long long length);
/// munmap(2).
void lunsys_unmap(void *address, unsigned long long length);
/// Copies `length` bytes between a mapping of lunsys_map_shared and ordinary memory, and
/// returns 0; -1 when touching the mapping raised SIGBUS (the page could not be read from the
/// disk, or allocated on it, or the file was cut shorter than the mapping), with part of the
/// bytes perhaps copied. Only a SIGBUS raised inside this copy is caught: one anywhere else
/// goes to the handler there was before the first mapping (by default, it ends the process).
int lunsys_guarded_copy(void *destination, const void *source, unsigned long long length);

/// CRC-32C (Castagnoli) of `length` bytes continuing from `crc` (0 to start), with the
/// SSE 4.2 instruction where the processor has it and a table otherwise. The same value as
/// the byte-wise Swift implementation in Format/CRC32C.swift.
uint32_t lunsys_crc32c(uint32_t crc, const void *data, uint64_t length);
/// The part of a 4,096-byte block's CRC-32C (continuing from `seed`) that its bytes decide:
/// linear in the bytes, so the part of the XOR of blocks is the XOR of their parts.
uint32_t lunsys_crc32c_block_unseeded(uint32_t crc, uint32_t seed);
/// The CRC-32C continuing from `seed` of a 4,096-byte block whose bytes' part is `unseeded`.
uint32_t lunsys_crc32c_block_seeded(uint32_t unseeded, uint32_t seed);

/// The git commit lunfs was built from, as scripts/install passes it to the compiler
/// (-Xcc -DLUNFS_BUILD_COMMIT='"..."'); "unknown" for a build that was not given one.
const char *lunsys_build_commit(void);

/// getxattr(2) and setxattr(2) (sys/xattr.h is outside Swift's Glibc module): -1 and errno
/// on failure, as the calls themselves.
long lunsys_getxattr(const char *path, const char *name, void *value, unsigned long size);
int lunsys_setxattr(const char *path, const char *name, const void *value, unsigned long size, int flags);

/// One write of `length` bytes at `offset` of descriptor `fd`, for lunsys_ring_write_all;
/// `result` is what the write returned: the bytes written or -errno (-ECANCELED: not made).
struct lunsys_ring_write {
    int fd;
    const void *data;
    uint32_t length;
    uint64_t offset;
    int32_t result;
};
/// Makes all `count` writes through the calling thread's io_uring, submitted together, and
/// returns when every one has completed: 0. -1 when this thread has no ring (nothing written).
/// `in_flight` (may be NULL) is called with `context` once the first writes are submitted and
/// before they are waited for, so the caller can work while they are in flight; it is not
/// called when the ring refuses writes before the first batch of 32 is all submitted, which
/// the caller must notice.
int lunsys_ring_write_all(struct lunsys_ring_write *writes, int count,
                          void (*in_flight)(void *context), void *context);

#include <pthread.h>
/// Initialises a read-write lock that makes new readers wait while a writer waits, so a
/// snapshot's quiesce is not starved by a stream of I/O.
int lunsys_rwlock_init_writer_preferring(pthread_rwlock_t *lock);
#endif
