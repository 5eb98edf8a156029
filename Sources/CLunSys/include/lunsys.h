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


#include <pthread.h>
/// Initialises a read-write lock that makes new readers wait while a writer waits, so a
/// snapshot's quiesce is not starved by a stream of I/O.
int lunsys_rwlock_init_writer_preferring(pthread_rwlock_t *lock);
#endif
