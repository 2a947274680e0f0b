/*
 * What mounts.c, fingerprint.c and mount-watch.c share, hidden from whatever
 * links them.
 */
#ifndef HETEROPOD_NODED_MOUNTS_INTERNAL_H
#define HETEROPOD_NODED_MOUNTS_INTERNAL_H

#include <stddef.h>

#ifndef ND_HIDDEN
#define ND_HIDDEN __attribute__((visibility("hidden")))
#endif

/* A growing byte buffer; after a failed allocation it stays as it was, with oom set. */
struct nd_mounts_bytes {
	unsigned char *p;
	size_t len, cap;
	int oom;
};

ND_HIDDEN void nd_mounts_bytes_add(struct nd_mounts_bytes *b, const void *p, size_t n);

/* The message into err (when err_len > 0), cut on a UTF-8 character boundary
 * when it does not fit; returns `code`. */
ND_HIDDEN int nd_mounts_errf(char *err, size_t err_len, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* A failed file system call as Node's UVException words it: `ENOENT: no such
 * file or directory, stat '/x'` (path NULL: `EIO: i/o error, read`); libuv's
 * name and text of the errno, `UNKNOWN: unknown error` for one libuv does not
 * map. Returns -e. */
ND_HIDDEN int nd_fs_error(char *err, size_t err_len, int e, const char *syscall, const char *path);

#endif
