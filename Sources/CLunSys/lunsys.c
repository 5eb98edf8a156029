// Thin wrappers so Swift can reach GNU-only system calls; see include/lunsys.h.
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <sys/syscall.h>
#include "lunsys.h"

int lunsys_fallocate(int fd, int mode, int64_t offset, int64_t length) {
    return fallocate(fd, mode, (off_t)offset, (off_t)length);
}

int lunsys_gettid(void) { return (int)syscall(SYS_gettid); }
