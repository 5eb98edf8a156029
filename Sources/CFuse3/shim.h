// The libfuse 3 low-level API as Swift sees it: the version is fixed before the include, and
// macros Swift cannot import get small prefixed inline wrappers below.
#ifndef LUNFS_CFUSE3_SHIM_H
#define LUNFS_CFUSE3_SHIM_H
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/xattr.h>
#include <stdint.h>

/// FUSE_ARGS_INIT: an argument vector libfuse does not own (allocated == 0).
static inline struct fuse_args lunfs_fuse_args(int argc, char **argv) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    return args;
}

/// fuse_file_info keeps its open flags in bit fields; Swift reads and writes them through these.
static inline void lunfs_fi_set_direct_io(struct fuse_file_info *fi, int on) { fi->direct_io = on ? 1 : 0; }
static inline void lunfs_fi_set_keep_cache(struct fuse_file_info *fi, int on) { fi->keep_cache = on ? 1 : 0; }
/* Set on a WRITE the kernel sends from its writeback cache (no write(2) is waiting for it). */
static inline int lunfs_fi_writepage(const struct fuse_file_info *fi) { return fi->writepage; }

/// Constants glibc hides behind _GNU_SOURCE or that live in kernel headers Swift does not see.
static const int LUNFS_SEEK_DATA = 3;
static const int LUNFS_SEEK_HOLE = 4;
static const int LUNFS_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
static const int LUNFS_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
static const int LUNFS_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
static const unsigned int LUNFS_RENAME_EXCHANGE = RENAME_EXCHANGE;
static const int LUNFS_XATTR_CREATE = XATTR_CREATE;
#endif
