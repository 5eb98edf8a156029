// The libfuse 3 low-level API as Swift sees it: the version is fixed before the include, and
// macros Swift cannot import get small prefixed inline wrappers below.
#ifndef LUNFS_CFUSE3_SHIM_H
#define LUNFS_CFUSE3_SHIM_H
#define FUSE_USE_VERSION 312
#include <fuse3/fuse_lowlevel.h>
#endif
