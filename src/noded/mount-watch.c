/*
 * The watch of one offloaded container's mounts (mounts.h), as MountWatch
 * (src/shim/mount-watch.ts) keeps it, driven by the daemon's loop instead of
 * timers and promises of its own: begin/check/sent are one `checkOnce`, the
 * daemon's timers its setInterval and `soon`.
 *
 * Threads: check runs on a worker while the loop thread may drain the inotify
 * fd, begin a look (which only notes that another is asked) or close the
 * watch. `lock` orders what both touch: each source's inotify watch (wd, ino),
 * `started`, `closed` and the lines waiting to be logged. The fingerprints
 * (sent, refused, the look's own) are the look's: check writes them and sent
 * reads them, one after the other (the daemon's job queue orders the two).
 */
#include "mounts.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

/* google.rpc.Code values the agent's answer is judged by. */
enum {
	CODE_OK = 0,
	CODE_INVALID_ARGUMENT = 3,
	CODE_DEADLINE_EXCEEDED = 4,
	CODE_NOT_FOUND = 5,
	CODE_RESOURCE_EXHAUSTED = 8,
	CODE_FAILED_PRECONDITION = 9,
	CODE_UNAVAILABLE = 14,
};

/* What fs.watch (libuv) asks inotify for. */
#define WATCH_MASK (IN_ATTRIB | IN_CREATE | IN_MODIFY | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_MOVED_FROM | IN_MOVED_TO)

struct watched {
	char *source, *destination;
	/* the fingerprint of what the DPU's copy holds; "": unknown, send it */
	char sent[ND_FINGERPRINT_SIZE];
	/* a fingerprint whose content could not be read or sent for good: not tried again */
	char refused[ND_FINGERPRINT_SIZE];
	/* the look's: what is being sent */
	char fingerprint[ND_FINGERPRINT_SIZE];
	int sending;
	/* under lock: the inotify watch on the source as it was (-1: none) */
	int wd;
	ino_t watched_ino;
};

/* A line check (or new) has to log, logged on the loop thread. */
struct line {
	struct line *next;
	enum nd_level level;
	const char *msg;
	const char *key[2];
	char *value[2];
};

struct nd_mount_watch {
	char *id;
	struct nd_fifo *fifo;
	const char *const *log_ctx;
	struct watched *w;
	size_t n;
	int fd; /* inotify; -1: none */
	pthread_mutex_t lock;
	int started, closed;		      /* under lock */
	struct line *lines, **lines_tail;     /* under lock */
	int busy, again, failing;	      /* the loop thread's */
	char *mounts;			      /* the look's: the destinations sent, joined by ',' */
};

/* ---- the log ------------------------------------------------------------------------ */

/* Queues a line: `id` first, then up to two more fields. Dropped when out of memory. */
static void say(struct nd_mount_watch *w, enum nd_level level, const char *msg, const char *k0, const char *v0, const char *k1,
		const char *v1)
{
	struct line *l = calloc(1, sizeof(*l));

	if (!l)
		return;
	l->level = level;
	l->msg = msg;
	l->key[0] = k0;
	l->key[1] = k1;
	if ((k0 && !(l->value[0] = strdup(v0 ? v0 : ""))) || (k1 && !(l->value[1] = strdup(v1 ? v1 : "")))) {
		free(l->value[0]);
		free(l);
		return;
	}
	pthread_mutex_lock(&w->lock);
	*w->lines_tail = l;
	w->lines_tail = &l->next;
	pthread_mutex_unlock(&w->lock);
}

/* Logs the lines queued, in order (the loop thread: nd_log writes the pod's fifo). */
static void flush(struct nd_mount_watch *w)
{
	struct line *l;

	pthread_mutex_lock(&w->lock);
	l = w->lines;
	w->lines = NULL;
	w->lines_tail = &w->lines;
	pthread_mutex_unlock(&w->lock);
	while (l) {
		struct line *next = l->next;

		nd_log(w->fifo, w->log_ctx, l->level, l->msg, "id", w->id, l->key[0], l->value[0], l->key[1], l->value[1], NULL);
		free(l->value[0]);
		free(l->value[1]);
		free(l);
		l = next;
	}
}

/* ---- the sources ---------------------------------------------------------------------- */

/* The source's fingerprint into out, or "" when it is gone or cannot be looked at (said). */
static void fingerprint(struct nd_mount_watch *w, const char *source, char out[ND_FINGERPRINT_SIZE])
{
	char err[ND_MOUNTS_ERR_MAX];
	int rc = nd_source_fingerprint(source, out, err, sizeof(err));

	if (rc == -ENOENT)
		out[0] = '\0';
	else if (rc < 0) {
		out[0] = '\0';
		say(w, ND_WARN, "look at a mounted volume of a DPU container", "source", source, "error", err);
	}
}

/* Drops source i's inotify watch. Under lock. Two sources of one inode share a
 * wd (inotify gives the same one): it stays while the other holds it. */
static void disarm(struct nd_mount_watch *w, size_t i)
{
	int wd = w->w[i].wd, shared = 0;

	if (wd < 0)
		return;
	w->w[i].wd = -1;
	w->w[i].watched_ino = 0;
	for (size_t k = 0; k < w->n; k++)
		shared |= w->w[k].wd == wd;
	if (!shared)
		inotify_rm_watch(w->fd, wd);
}

/*
 * An inotify watch on source i as it is now: made when there is none (one
 * inotify dropped is none), and made again when the source is another inode (a
 * file or directory replaced: the old watch follows the old inode). Under lock.
 */
static void arm(struct nd_mount_watch *w, size_t i)
{
	struct watched *s = &w->w[i];
	struct stat st;
	int wd;

	if (!w->started || w->closed || w->fd < 0)
		return;
	if (stat(s->source, &st) < 0) {
		disarm(w, i);
		return;
	}
	if (s->wd >= 0 && s->watched_ino == st.st_ino)
		return;
	disarm(w, i);
	if ((wd = inotify_add_watch(w->fd, s->source, WATCH_MASK)) >= 0) {
		s->wd = wd;
		s->watched_ino = st.st_ino;
	}
	/* else not watchable now: the re-check looks at it, and tries again */
}

/* ---- the watch ------------------------------------------------------------------------ */

void nd_mount_watch_free(struct nd_mount_watch *w)
{
	if (!w)
		return;
	if (w->lines_tail)
		flush(w);
	for (size_t i = 0; i < w->n; i++) {
		free(w->w[i].source);
		free(w->w[i].destination);
	}
	free(w->w);
	if (w->fd >= 0)
		close(w->fd);
	pthread_mutex_destroy(&w->lock);
	free(w->mounts);
	free(w->id);
	free(w);
}

int nd_mount_watch_new(const char *container_id, json_t *spec, struct nd_fifo *fifo, const char *const *log_ctx,
		       struct nd_mount_watch **out, char *err, size_t err_len)
{
	struct nd_shipped_mount *m;
	struct nd_mount_watch *w;
	size_t n;
	int rc;

	*out = NULL;
	if ((rc = nd_shipped_mounts(spec, &m, &n, err, err_len)) < 0)
		return rc;
	if (!(w = calloc(1, sizeof(*w)))) {
		free(m);
		goto oom;
	}
	pthread_mutex_init(&w->lock, NULL);
	w->lines_tail = &w->lines;
	w->fifo = fifo;
	w->log_ctx = log_ctx;
	w->fd = -1;
	if (!(w->id = strdup(container_id)) || (n && !(w->w = calloc(n, sizeof(*w->w))))) {
		free(m);
		nd_mount_watch_free(w);
		goto oom;
	}
	for (size_t i = 0; i < n; i++) {
		struct watched *s = &w->w[w->n];

		if (m[i].termination_log) /* it goes the other way, at the exit */
			continue;
		s->wd = -1;
		if (!(s->source = strdup(m[i].source)) || !(s->destination = strdup(m[i].destination))) {
			free(s->source);
			free(m);
			nd_mount_watch_free(w);
			goto oom;
		}
		w->n++;
	}
	free(m);
	if (w->n && (w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0)
		say(w, ND_WARN, "watch the mounted volumes of a DPU container; the re-check looks at them", "error", strerror(errno),
		    NULL, NULL);
	/* Now, before the content the DPU's copies are made of is read. */
	for (size_t i = 0; i < w->n; i++)
		fingerprint(w, w->w[i].source, w->w[i].sent);
	*out = w;
	return 0;
oom:
	if (err && err_len)
		snprintf(err, err_len, "out of memory watching the mounts of %s", container_id);
	return -ENOMEM;
}

size_t nd_mount_watch_count(const struct nd_mount_watch *w)
{
	return w->n;
}

const char *nd_mount_watch_destination(const struct nd_mount_watch *w, size_t i)
{
	return i < w->n ? w->w[i].destination : NULL;
}

int nd_mount_watch_fd(const struct nd_mount_watch *w)
{
	return w->fd;
}

enum nd_mount_next nd_mount_watch_start(struct nd_mount_watch *w, int resend)
{
	flush(w);
	pthread_mutex_lock(&w->lock);
	if (w->started || w->closed || w->n == 0) {
		pthread_mutex_unlock(&w->lock);
		return ND_MOUNT_IDLE;
	}
	w->started = 1;
	for (size_t i = 0; i < w->n; i++) {
		if (resend)
			w->w[i].sent[0] = '\0';
		arm(w, i);
	}
	pthread_mutex_unlock(&w->lock);
	return resend ? ND_MOUNT_NOW : ND_MOUNT_IDLE;
}

enum nd_mount_next nd_mount_watch_drain(struct nd_mount_watch *w)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int changed = 0, live;

	flush(w);
	for (;;) {
		ssize_t r = w->fd >= 0 ? read(w->fd, buf, sizeof(buf)) : -1;

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break; /* EAGAIN: all read */
		for (char *p = buf; p < buf + r;) {
			const struct inotify_event *e = (const struct inotify_event *)p;

			changed = 1; /* any event, as fs.watch's listener takes any */
			if (e->mask & IN_IGNORED) {
				/* the watch is gone with its inode: the next look makes one again */
				pthread_mutex_lock(&w->lock);
				for (size_t i = 0; i < w->n; i++)
					if (w->w[i].wd == e->wd) {
						w->w[i].wd = -1;
						w->w[i].watched_ino = 0;
					}
				pthread_mutex_unlock(&w->lock);
			}
			p += sizeof(*e) + e->len;
		}
	}
	pthread_mutex_lock(&w->lock);
	live = w->started && !w->closed;
	pthread_mutex_unlock(&w->lock);
	return changed && live ? ND_MOUNT_SETTLE : ND_MOUNT_IDLE;
}

int nd_mount_watch_begin(struct nd_mount_watch *w)
{
	flush(w);
	if (nd_mount_watch_closed(w))
		return 0;
	if (w->busy) {
		w->again = 1;
		return 0;
	}
	w->busy = 1;
	w->again = 0;
	return 1;
}

size_t nd_mount_watch_check(struct nd_mount_watch *w, struct nd_mounted_file **files)
{
	struct nd_mounted_file *out;
	size_t changed = 0, k = 0, len = 0;
	int closed;

	*files = NULL;
	for (size_t i = 0; i < w->n; i++) {
		struct watched *s = &w->w[i];

		s->sending = 0;
		fingerprint(w, s->source, s->fingerprint);
		pthread_mutex_lock(&w->lock);
		arm(w, i);
		pthread_mutex_unlock(&w->lock);
		if (!s->fingerprint[0] || strcmp(s->fingerprint, s->sent) == 0 || strcmp(s->fingerprint, s->refused) == 0)
			continue;
		s->sending = 1; /* changed: read below */
		changed++;
	}
	closed = nd_mount_watch_closed(w);
	if (changed == 0 || closed || !(out = calloc(changed, sizeof(*out)))) {
		for (size_t i = 0; i < w->n; i++)
			w->w[i].sending = 0;
		return 0;
	}
	for (size_t i = 0; i < w->n; i++) {
		struct watched *s = &w->w[i];
		struct nd_shipped_mount m = { s->source, s->destination, 0 };
		char err[ND_MOUNTS_ERR_MAX];

		if (!s->sending)
			continue;
		if (nd_read_mounted_file(&m, &out[k], err, sizeof(err)) < 0) {
			/* Gone since (a pod being removed), or too large to ship: not tried again until it changes. */
			s->sending = 0;
			memcpy(s->refused, s->fingerprint, sizeof(s->refused));
			say(w, ND_WARN, "read a mounted volume of a DPU container; the DPU keeps its copy", "mount", s->destination, "error",
			    err);
			continue;
		}
		len += strlen(s->destination) + 1;
		k++;
	}
	free(w->mounts);
	w->mounts = NULL;
	if (k == 0 || !(w->mounts = malloc(len))) {
		/* nothing to send; or no memory for the log's list, so nothing sent now: the next look reads them again */
		nd_mounted_files_free(out, k);
		for (size_t i = 0; i < w->n; i++)
			w->w[i].sending = 0;
		return 0;
	}
	w->mounts[0] = '\0';
	for (size_t i = 0; i < w->n; i++)
		if (w->w[i].sending) {
			if (w->mounts[0])
				strcat(w->mounts, ",");
			strcat(w->mounts, w->w[i].destination);
		}
	*files = out;
	return k;
}

enum nd_mount_next nd_mount_watch_sent(struct nd_mount_watch *w, int code, const char *message)
{
	enum nd_mount_next next = ND_MOUNT_IDLE;
	int sending = 0, closed = nd_mount_watch_closed(w);
	const char *error = message ? message : "";

	flush(w);
	w->busy = 0;
	for (size_t i = 0; i < w->n; i++)
		sending |= w->w[i].sending;
	if (!sending) {
		/* nothing was sent */
	} else if (code == CODE_OK) {
		for (size_t i = 0; i < w->n; i++)
			if (w->w[i].sending) {
				memcpy(w->w[i].sent, w->w[i].fingerprint, sizeof(w->w[i].sent));
				w->w[i].refused[0] = '\0';
			}
		w->failing = 0;
		nd_log(w->fifo, w->log_ctx, ND_INFO, "mounted volumes updated on the DPU", "id", w->id, "mounts", w->mounts, NULL);
	} else if (closed) {
		/* closed meanwhile: nothing follows */
	} else if (code == CODE_NOT_FOUND) {
		nd_log(w->fifo, w->log_ctx, ND_INFO, "the DPU no longer has the container: its mounts are not watched any more", "id", w->id,
		       "error", error, NULL);
		nd_mount_watch_close(w);
		closed = 1;
	} else if (code == CODE_INVALID_ARGUMENT || code == CODE_FAILED_PRECONDITION || code == CODE_RESOURCE_EXHAUSTED) {
		/* Refused (not the kind of mount it was, or larger than a message may be): until it changes. */
		for (size_t i = 0; i < w->n; i++)
			if (w->w[i].sending)
				memcpy(w->w[i].refused, w->w[i].fingerprint, sizeof(w->w[i].refused));
		nd_log(w->fifo, w->log_ctx, ND_WARN, "the DPU refused new content of a container's mounts; it keeps its copy", "id", w->id,
		       "mounts", w->mounts, "error", error, NULL);
	} else {
		/* Said once per outage. An agent that is away is asked again soon; any
		 * other failure at the next re-check. */
		if (!w->failing)
			nd_log(w->fifo, w->log_ctx, ND_WARN, "send new content of a container's mounts to the DPU; trying again", "id", w->id,
			       "mounts", w->mounts, "error", error, NULL);
		w->failing = 1;
		if (code == CODE_UNAVAILABLE || code == CODE_DEADLINE_EXCEEDED)
			next = ND_MOUNT_RETRY;
	}
	for (size_t i = 0; i < w->n; i++)
		w->w[i].sending = 0;
	free(w->mounts);
	w->mounts = NULL;
	if (closed)
		return ND_MOUNT_ENDED;
	if (w->again) {
		w->again = 0;
		return ND_MOUNT_NOW;
	}
	return next;
}

int nd_mount_watch_close(struct nd_mount_watch *w)
{
	pthread_mutex_lock(&w->lock);
	w->closed = 1;
	for (size_t i = 0; i < w->n; i++)
		disarm(w, i);
	pthread_mutex_unlock(&w->lock);
	return !w->busy;
}

int nd_mount_watch_closed(const struct nd_mount_watch *w)
{
	int closed;

	pthread_mutex_lock((pthread_mutex_t *)&w->lock);
	closed = w->closed;
	pthread_mutex_unlock((pthread_mutex_t *)&w->lock);
	return closed;
}
