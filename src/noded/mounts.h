/*
 * An offloaded container's bind mounts, for the node daemon in C: which are
 * copied to the DPU (files, and read-only directories: the kubelet's ConfigMap,
 * Secret, projected and downward-API volumes), read for Create and for each
 * update, a cheap fingerprint of each to see that it changed, the watch that
 * keeps the DPU's copies as live as the host's, and the termination message
 * written back into the host file the kubelet reads. The C port of
 * src/shim/mounted-files.ts (mounts.c) and src/shim/mount-watch.ts
 * (mount-watch.c): the same decisions, limits and texts.
 *
 * The spec is the container's config.json as jansson parsed it; its "mounts"
 * are read as src/oci/mounts.h says. A shipped mount (a bind mount with a
 * truthy source, not the sandbox's /dev/shm) whose source is not a string, or
 * whose destination is neither a string nor absent, fails with -EINVAL where
 * the TS would pass the value on (containerd never writes such specs; runc
 * would refuse them).
 *
 * Functions return 0 (or a count) or a negative errno, never set errno for the
 * caller, and fill `err` (err_len bytes, NUL-ended, cut on a UTF-8 character
 * boundary when too short) with the TS's message: a file system failure as
 * Node words it (`ENOENT: no such file or directory, stat '/x'`), a directory's
 * tar as execFileSync does (`Command failed: tar -c -C /x .` and tar's
 * stderr, `spawnSync tar ENOBUFS`). ND_MOUNTS_ERR_MAX holds every message but
 * one quoting long paths or much of tar's stderr.
 */
#ifndef HETEROPOD_NODED_MOUNTS_H
#define HETEROPOD_NODED_MOUNTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "../proto/pbuf.h"
#include "log.h"

#define ND_MOUNTS_ERR_MAX 4096

/* Directories sent inline with Create (and UpdateFiles): tar's output (its
 * stdout and stderr together, as execFileSync's maxBuffer counts) above this
 * is refused with -ENOBUFS. */
#define ND_MAX_DIRECTORY_BYTES (16u << 20)

/* The field numbers of the messages that carry MountedFile copies. */
#define ND_CREATE_FILES_FIELD 5u /* CreateRequest.files */
#define ND_UPDATE_FILES_FIELD 3u /* UpdateFilesRequest.files */

/* A SHA-256 as 64 lowercase hex digits, NUL-ended. */
#define ND_FINGERPRINT_SIZE 65

/* heteropod.agent.v1.MountedFile: one shipped mount as it is now. */
struct nd_mounted_file {
	char *destination;	/* the mount's destination in the container */
	unsigned char *content; /* a file's bytes, or a directory as a tar stream */
	size_t len;
	int directory;
	uint32_t mode;	     /* st_mode & 07777 of the source (symlinks followed) */
	int termination_log; /* the kubelet's termination-message file (a file, never a directory) */
};

/* One mount of the spec as shippedMounts keeps it; the strings are the spec's. */
struct nd_shipped_mount {
	const char *source, *destination;
	int termination_log; /* isTerminationLog */
};

/*
 * shippedMounts: the spec's bind mounts but the sandbox's /dev/shm, in order.
 * *mounts is a malloc'd array of *n (NULL when none) pointing into `spec`,
 * which must outlive it. -EINVAL for a malformed "mounts".
 */
int nd_shipped_mounts(json_t *spec, struct nd_shipped_mount **mounts, size_t *n, char *err, size_t err_len);

/*
 * readMountedFile: a shipped mount as it is now. stat(2) of the source (so a
 * symlink is followed) says file or directory; a file is read whole, a
 * directory is `tar -c -C <source> .` (tar found in PATH; symlinks stay
 * symlinks), run with posix_spawn, its stderr passed on to ours as well.
 * Blocking: the daemon calls it on a worker thread. On failure *out is empty.
 */
int nd_read_mounted_file(const struct nd_shipped_mount *m, struct nd_mounted_file *out, char *err, size_t err_len);

/* mountedFiles: every shipped mount of the spec read, in order (*files NULL when
 * none); the first failure fails the whole. Blocking. */
int nd_mounted_files_read(json_t *spec, struct nd_mounted_file **files, size_t *n, char *err, size_t err_len);
void nd_mounted_files_free(struct nd_mounted_file *files, size_t n);

/*
 * Appends the files to `b` as the repeated MountedFile field `field` of the
 * message being built there (ND_CREATE_FILES_FIELD, ND_UPDATE_FILES_FIELD):
 * destination = 1, content = 2, directory = 3, mode = 4, termination_log = 5,
 * proto3's defaults (empty, false, 0) left out. A failed allocation sets b->oom.
 */
void nd_mounted_files_encode(struct pbuf *b, uint32_t field, const struct nd_mounted_file *files, size_t n);

/* nd_mounted_files_read then nd_mounted_files_encode: the spec's copies as the
 * bytes of `field` (*out malloc'd, NULL when there are none). Blocking. */
int nd_mounted_files(json_t *spec, uint32_t field, unsigned char **out, size_t *len, char *err, size_t err_len);

/* terminationLogSource: the host file the kubelet reads the container's
 * termination message from, malloc'd; NULL when none is mounted (or the spec's
 * mounts are malformed, or out of memory). */
char *nd_termination_log_source(json_t *spec);

/*
 * writeTerminationMessage: the message's last HP_OCI_MAX_TERMINATION_MESSAGE_BYTES
 * written into `file` in place (opened O_WRONLY | O_NOFOLLOW: the kubelet made
 * it and set its mode), then cut to that length. 1 when written, 0 when the
 * file is gone (it is not made again), or -errno.
 */
int nd_write_termination_message(const char *file, const void *message, size_t len, char *err, size_t err_len);

/*
 * sourceFingerprint: what a source is now, cheaply, as SHA-256 hex of the text
 * the TS hashes: for the source its stat(2) (symlinks followed), for a
 * directory also every entry under it by lstat(2) (symlinks by their target,
 * never followed), names sorted as JavaScript sorts strings, each line
 * `<path>\0<ino>:<mode>:<size>:<mtime ns>:<ctime ns>:<link target>\n` as
 * Node's bigint stat prints it. Names and targets are read as Node reads them
 * (invalid UTF-8 replaced by U+FFFD). -ENOENT when the source, or anything
 * under it, is gone while it is looked at; another -errno with Node's message.
 */
int nd_source_fingerprint(const char *source, char out[ND_FINGERPRINT_SIZE], char *err, size_t err_len);

/* ---- the watch (mount-watch.c) ------------------------------------------------
 *
 * Keeps the DPU's copies of one offloaded container's mounts as live as the
 * host's, as MountWatch does: each shipped source but the termination-message
 * file is watched with inotify (one instance per watch, its fd in the daemon's
 * epoll), events let settle ND_MOUNT_SETTLE_MS before the sources are looked
 * at, and every ND_MOUNT_RECHECK_MS the sources are looked at anyway (a change
 * deeper in a plain directory, a file replaced by another, a watch that failed).
 * A source whose fingerprint differs from the one the DPU's copy was made from
 * is read and sent (one UpdateFiles for all changed mounts); the fingerprint
 * is taken before the content is read, so a change during the read is sent
 * again at the next look. A failed send is tried again (after ND_MOUNT_RETRY_MS
 * when the agent was away); content the agent refuses is not, until it
 * changes; a container the agent no longer knows ends the watch.
 *
 * The watch has no thread or timer of its own. The daemon drives one look at a
 * time: nd_mount_watch_begin (loop thread) says whether a look starts now;
 * nd_mount_watch_check (a worker thread: it blocks on stat, reads and tar)
 * makes it; nd_mount_watch_sent (loop thread) ends it, with the UpdateFiles'
 * status when it gave files, and says what comes next. Nothing else runs on a
 * worker; check may run while the loop thread calls drain, begin or close.
 * What check has to log is logged by the next call on the loop thread.
 */
#define ND_MOUNT_RECHECK_MS 10000
/* How long the kubelet's writer gets to finish before the sources are looked at. */
#define ND_MOUNT_SETTLE_MS 100
#define ND_MOUNT_RETRY_MS 1000

struct nd_mount_watch;

/* What the daemon does next for a watch. */
enum nd_mount_next {
	ND_MOUNT_IDLE,	 /* nothing now: the fd, the re-check or a timer already set will tell */
	ND_MOUNT_NOW,	 /* look now (begin, then check on a worker) */
	ND_MOUNT_SETTLE, /* look in ND_MOUNT_SETTLE_MS, unless a look is already set to come */
	ND_MOUNT_RETRY,	 /* look in ND_MOUNT_RETRY_MS, unless a look is already set to come */
	ND_MOUNT_ENDED,	 /* the watch is over: stop its timers, take its fd out of epoll, free it */
};

/*
 * A watch of the spec's shipped mounts but the termination log, each source's
 * fingerprint taken now: call it before the content the DPU's copies are made
 * of is read (Create), so that no change falls between. It copies what it
 * needs of the spec. Lines go to nd_log with `fifo` and `log_ctx` (the pod's,
 * which must outlive the watch) and the container's id. -EINVAL for malformed
 * mounts, -ENOMEM. May run on a worker thread.
 */
int nd_mount_watch_new(const char *container_id, json_t *spec, struct nd_fifo *fifo, const char *const *log_ctx,
		       struct nd_mount_watch **out, char *err, size_t err_len);

/* The destinations watched (diagnostics). None watched: the watch never does
 * anything, and needs no timer. */
size_t nd_mount_watch_count(const struct nd_mount_watch *w);
const char *nd_mount_watch_destination(const struct nd_mount_watch *w, size_t i);

/* The inotify fd to put in epoll (EPOLLIN), or -1 when there is none (no
 * source watched, or inotify refused one: the re-check is all there is). */
int nd_mount_watch_fd(const struct nd_mount_watch *w);

/*
 * Starts watching (once, before any look; a closed watch or one of no source
 * stays idle).
 * `resend`: what the DPU holds is not known (the daemon took the pod over and
 * may have missed changes): every source is sent once now, and ND_MOUNT_NOW
 * says so. The daemon then runs its re-check every ND_MOUNT_RECHECK_MS.
 */
enum nd_mount_next nd_mount_watch_start(struct nd_mount_watch *w, int resend);

/* Reads what inotify has to say; ND_MOUNT_SETTLE when something changed. */
enum nd_mount_next nd_mount_watch_drain(struct nd_mount_watch *w);

/* A look is due (the re-check, the settle or retry timer, ND_MOUNT_NOW): 1 when
 * it starts now (call check, then sent); 0 when the watch is closed or a look
 * is on (another follows it: its sent says ND_MOUNT_NOW). */
int nd_mount_watch_begin(struct nd_mount_watch *w);

/*
 * The look begun: every source's fingerprint now (and its inotify watch made
 * again when it is another inode); the changed ones read. Returns how many
 * files to send in one UpdateFiles (*files malloc'd, the caller's to free with
 * nd_mounted_files_free; NULL when 0). A source that cannot be read is not
 * tried again until it changes. Blocking.
 */
size_t nd_mount_watch_check(struct nd_mount_watch *w, struct nd_mounted_file **files);

/*
 * The look is over: `code` the UpdateFiles' status (google.rpc.Code, 0 when it
 * succeeded; anything when check gave no files), `message` its error. Commits
 * the fingerprints of what was sent (or refused: INVALID_ARGUMENT,
 * FAILED_PRECONDITION, RESOURCE_EXHAUSTED) and says what comes next: NOW when
 * a look was asked meanwhile, RETRY when the agent was away (UNAVAILABLE,
 * DEADLINE_EXCEEDED; another failure waits for the re-check), ENDED when the
 * agent no longer knows the container (NOT_FOUND) or the watch was closed.
 */
enum nd_mount_next nd_mount_watch_sent(struct nd_mount_watch *w, int code, const char *message);

/* Stops watching: no look starts after it, a look on ends with ND_MOUNT_ENDED.
 * 1 when the watch may be freed now, 0 when a look is on (free it at its end). */
int nd_mount_watch_close(struct nd_mount_watch *w);
int nd_mount_watch_closed(const struct nd_mount_watch *w);

/* Frees a watch no look is on; its fd is closed (out of epoll first). */
void nd_mount_watch_free(struct nd_mount_watch *w);

#endif
