/*
 * containerd's stdio fifos of the node daemon's processes, held open by the
 * proxy (proxy.h).
 *
 * containerd reads a process's stdout and stderr from fifos it made and opened
 * before Create or Exec; the daemon opens their write ends to relay the
 * process's output. A fifo's reader sees EOF once no writer is left, and
 * containerd then stops copying that process's output for good: a daemon
 * killed and restarted would end the log of every container it runs. runc's
 * shim keeps a write end of its own for this reason; the proxy, which outlives
 * the daemon, does the same for the daemon's processes. It never writes to them.
 *
 * Contract:
 * - held from a successful answer to Create (placed=1) or Exec on the daemon;
 * - let go when containerd is sent a successful answer to Wait for the process
 *   (CRI's ExecSync waits for EOF on an exec's fifos before it deletes the exec,
 *   so the Wait answer must be enough), or to Delete for it or, without an
 *   exec_id, for its task (the init process and every exec);
 * - kept across containerd's connections, which come and go independently of
 *   processes; all closed when the proxy exits;
 * - at most one descriptor per fifo, so two per process; one that cannot be
 *   opened (no reader, no such path, no descriptor left) is logged and skipped,
 *   and the request it came with is answered as it would have been.
 */
#include "proxy-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A process whose fifos the proxy holds: (task id, exec_id), exec_id empty for init. */
struct stdio_hold {
	struct stdio_hold *next;
	int fds[2]; /* stdout, stderr; -1 when not held */
	size_t id_len, exec_len;
	char key[]; /* id, then exec_id, neither NUL-terminated */
};

struct span {
	const unsigned char *p;
	size_t n;
};

/* Where a request names the process and its stdio: field numbers, 0 for none.
 * The task id is field 1 of every Task request. */
struct process_fields {
	uint32_t exec_id, terminal, out, err;
};

static const struct process_fields create_fields = { .terminal = 4, .out = 6, .err = 7 }; /* CreateTaskRequest */
static const struct process_fields exec_fields = { .exec_id = 2, .terminal = 3, .out = 5, .err = 6 }; /* ExecProcessRequest */
static const struct process_fields process_fields = { .exec_id = 2 }; /* WaitRequest, DeleteRequest */

struct process_request {
	struct span id, exec_id, out, err;
	int terminal;
};

/* Decodes the Task request frame's payload, the last occurrence of a field
 * winning as in Go. 0, or -EBADMSG when there is no task id to go by. */
static int process_read(const unsigned char *frame, size_t len, const struct process_fields *fields,
			struct process_request *r)
{
	struct envelope e;
	struct pb_field f;
	size_t i = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	if (envelope_read(frame + HP_TTRPC_HEADER, len - HP_TTRPC_HEADER, &e) < 0 || !e.payload)
		return -EBADMSG;
	while ((rc = pb_next(e.payload, e.plen, &i, &f)) > 0) {
		struct span *s = NULL;

		if (f.wire == 0 && fields->terminal && f.num == fields->terminal) {
			r->terminal = f.u != 0;
			continue;
		}
		if (f.wire != 2)
			continue;
		if (f.num == 1)
			s = &r->id;
		else if (fields->exec_id && f.num == fields->exec_id)
			s = &r->exec_id;
		else if (fields->out && f.num == fields->out)
			s = &r->out;
		else if (fields->err && f.num == fields->err)
			s = &r->err;
		if (s)
			*s = (struct span){ f.val, f.vlen };
	}
	return rc < 0 || !r->id.p ? -EBADMSG : 0;
}

/* "id" or "id/exec_id", for the log. */
static void process_name(char *out, size_t cap, struct span id, struct span exec_id)
{
	snprintf(out, cap, "%.*s%s%.*s", (int)(id.n < 128 ? id.n : 128), (const char *)id.p, exec_id.n ? "/" : "",
		 (int)(exec_id.n < 128 ? exec_id.n : 128), exec_id.n ? (const char *)exec_id.p : "");
}

/* A write end of the fifo at `path`, or -1 (said why at debug, or as a warning
 * when the proxy is out of descriptors). Only fifos: containerd's paths are
 * fifos it made, and opening anything else could have side effects. */
static int fifo_open(struct loop *l, struct span path, const char *who)
{
	char name[PATH_MAX], detail[PATH_MAX + 400];
	struct stat st;
	int fd, err;

	if (path.n == 0)
		return -1; /* not asked for */
	if (path.p[0] != '/' || path.n >= sizeof(name) || memchr(path.p, '\0', path.n)) {
		/* a URI (file://, binary://) is for runc's shim, not a fifo */
		snprintf(detail, sizeof(detail), "%s: %.*s: not a fifo path", who, (int)(path.n < 200 ? path.n : 200),
			 (const char *)path.p);
		say(l, "debug", "stdio not held", detail);
		return -1;
	}
	memcpy(name, path.p, path.n);
	name[path.n] = '\0';
	if (stat(name, &st) < 0) {
		err = errno;
		fd = -1;
	} else if (!S_ISFIFO(st.st_mode)) {
		err = ENOTSUP;
		fd = -1;
	} else {
		/* Never blocks: ENXIO when containerd has no reader on it. */
		fd = open(name, O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
		err = fd < 0 ? errno : 0;
		if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode))) {
			close(fd); /* replaced between stat and open */
			fd = -1;
			err = ENOTSUP;
		}
	}
	if (fd < 0) {
		snprintf(detail, sizeof(detail), "%s: %s: %s", who, name, err == ENOTSUP ? "not a fifo" : strerror(err));
		say(l, err == EMFILE || err == ENFILE ? "warning" : "debug",
		    err == EMFILE || err == ENFILE ? "stdio not held: out of descriptors; its output may stop at a node daemon restart"
						   : "stdio not held",
		    detail);
	}
	return fd;
}

static void hold_close(struct stdio_hold *h)
{
	int i;

	for (i = 0; i < 2; i++) {
		if (h->fds[i] >= 0)
			close(h->fds[i]);
		h->fds[i] = -1;
	}
}

static int hold_is(const struct stdio_hold *h, struct span id, struct span exec_id)
{
	return h->id_len == id.n && memcmp(h->key, id.p, id.n) == 0 && h->exec_len == exec_id.n &&
	       memcmp(h->key + id.n, exec_id.p, exec_id.n) == 0;
}

/* Holds the fifos a Create or an Exec named, in place of any held for the same process. */
static void hold(struct loop *l, const struct process_request *r)
{
	char who[300];
	struct stdio_hold *h, **pp;
	int fds[2];

	process_name(who, sizeof(who), r->id, r->exec_id);
	fds[0] = fifo_open(l, r->out, who);
	fds[1] = r->terminal ? -1 : fifo_open(l, r->err, who); /* a terminal has stdout only */
	for (pp = &l->stdio; (h = *pp) && !hold_is(h, r->id, r->exec_id); pp = &h->next)
		;
	if (h) {
		/* The same process created again: the new fifos are the ones containerd reads. */
		hold_close(h);
		*pp = h->next;
		free(h);
	}
	if (fds[0] < 0 && fds[1] < 0)
		return;
	h = malloc(sizeof(*h) + r->id.n + r->exec_id.n);
	if (!h) {
		say(l, "warning", "stdio not held: out of memory", who);
		if (fds[0] >= 0)
			close(fds[0]);
		if (fds[1] >= 0)
			close(fds[1]);
		return;
	}
	h->fds[0] = fds[0];
	h->fds[1] = fds[1];
	h->id_len = r->id.n;
	h->exec_len = r->exec_id.n;
	memcpy(h->key, r->id.p, r->id.n);
	if (r->exec_id.n)
		memcpy(h->key + r->id.n, r->exec_id.p, r->exec_id.n);
	h->next = l->stdio;
	l->stdio = h;
	say(l, "debug", "holding containerd's stdio fifos", who);
}

void stdio_hold_create(struct loop *l, const unsigned char *frame, size_t len)
{
	struct process_request r;

	if (process_read(frame, len, &create_fields, &r) == 0) {
		r.exec_id = (struct span){ NULL, 0 }; /* CreateTaskRequest has none: its process is init */
		hold(l, &r);
	}
}

void stdio_hold_exec(struct loop *l, const unsigned char *frame, size_t len)
{
	struct process_request r;

	if (process_read(frame, len, &exec_fields, &r) == 0 && r.exec_id.n)
		hold(l, &r);
}

void stdio_release(struct loop *l, const unsigned char *frame, size_t len, int whole_task)
{
	struct process_request r;
	struct stdio_hold *h, **pp;
	char who[300];

	if (process_read(frame, len, &process_fields, &r) < 0)
		return;
	whole_task = whole_task && r.exec_id.n == 0;
	for (pp = &l->stdio; (h = *pp);) {
		if (whole_task ? h->id_len == r.id.n && memcmp(h->key, r.id.p, r.id.n) == 0 : hold_is(h, r.id, r.exec_id)) {
			process_name(who, sizeof(who), (struct span){ (const unsigned char *)h->key, h->id_len },
				     (struct span){ (const unsigned char *)h->key + h->id_len, h->exec_len });
			say(l, "debug", "releasing containerd's stdio fifos", who);
			hold_close(h);
			*pp = h->next;
			free(h);
		} else {
			pp = &h->next;
		}
	}
}

void stdio_free(struct loop *l)
{
	while (l->stdio) {
		struct stdio_hold *h = l->stdio;

		l->stdio = h->next;
		hold_close(h);
		free(h);
	}
}
