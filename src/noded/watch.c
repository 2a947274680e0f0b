/*
 * A DPU container's mounts kept up to date, and its termination message
 * written back, in the C node daemon: the watch of mount-watch.c driven on the
 * loop (its inotify fd in epoll, its re-check and settle/retry timers, each look
 * on a worker, UpdateFiles to the agent), as dpu-runtime.ts drives MountWatch.
 */
#include "noded.h"

#include "../agentapi/agent-conn.h"
#include "../proto/pbuf.h"
#include "mounts.h"

#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define UPDATE_FILES_TIMEOUT_MS 30000

struct nd_watch {
	struct nd_pod *p;
	char *container_id;
	struct nd_mount_watch *w;
	struct hp_watch fd;
	struct hp_timer recheck, soon;
	int looking, closed;
};

static void look(struct nd_watch *wt);

static void watch_free(struct nd_watch *wt)
{
	struct hp_loop *l = wt->p->d->loop;

	hp_timer_stop(l, &wt->recheck);
	hp_timer_stop(l, &wt->soon);
	if (wt->fd.events)
		hp_watch_stop(l, &wt->fd);
	nd_mount_watch_free(wt->w);
	free(wt->container_id);
	nd_pod_unref(wt->p);
	free(wt);
}

static void soon_fired(struct hp_timer *t)
{
	look(container_of(t, struct nd_watch, soon));
}

static void recheck_fired(struct hp_timer *t)
{
	struct nd_watch *wt = container_of(t, struct nd_watch, recheck);

	hp_timer_start(wt->p->d->loop, &wt->recheck, ND_MOUNT_RECHECK_MS, recheck_fired);
	look(wt);
}

static void next(struct nd_watch *wt, enum nd_mount_next n)
{
	struct hp_loop *l = wt->p->d->loop;

	switch (n) {
	case ND_MOUNT_IDLE:
		break;
	case ND_MOUNT_NOW:
		look(wt);
		break;
	case ND_MOUNT_SETTLE:
	case ND_MOUNT_RETRY:
		if (!wt->soon.armed)
			hp_timer_start(l, &wt->soon, n == ND_MOUNT_SETTLE ? ND_MOUNT_SETTLE_MS : ND_MOUNT_RETRY_MS, soon_fired);
		break;
	case ND_MOUNT_ENDED:
		watch_free(wt);
		break;
	}
}

struct update {
	struct nd_watch *wt;
	struct nd_mounted_file *files;
	size_t n;
};

static void updated(void *ctx, const struct hp_tstatus *st)
{
	struct nd_watch *wt = ctx;

	wt->looking = 0;
	next(wt, nd_mount_watch_sent(wt->w, st->code, st->message));
}

static void check_run(struct nd_work *w)
{
	struct update *u = w->ctx;

	u->n = nd_mount_watch_check(u->wt->w, &u->files);
}

/* UpdateFilesRequest { pod_id = 1, container_id = 2, files = 3 } */
static void check_done(struct nd_work *w)
{
	static const struct hp_tcall_fns fns = { NULL, updated };
	struct update *u = w->ctx;
	struct nd_watch *wt = u->wt;
	struct pbuf b = { 0 };
	const char *problem;
	struct hp_agent *agent;

	if (!u->n || wt->closed || !(agent = nd_agent(wt->p->d, &problem))) {
		struct hp_tstatus st = { .code = u->n && !wt->closed ? HP_CODE_UNAVAILABLE : 0, .message = "" };

		nd_mounted_files_free(u->files, u->n);
		free(u);
		updated(wt, &st);
		return;
	}
	pbuf_string(&b, 1, wt->p->a.group);
	pbuf_string(&b, 2, wt->container_id);
	nd_mounted_files_encode(&b, ND_UPDATE_FILES_FIELD, u->files, u->n);
	nd_mounted_files_free(u->files, u->n);
	free(u);
	if (b.oom) {
		struct hp_tstatus st = { .code = HP_CODE_INTERNAL, .message = "out of memory" };

		updated(wt, &st);
	} else {
		hp_agent_call(agent, "UpdateFiles", b.p, b.n, UPDATE_FILES_TIMEOUT_MS, &fns, wt);
	}
	pbuf_free(&b);
}

static void look(struct nd_watch *wt)
{
	struct update *u;
	struct nd_work *w;

	/* During a look, begin notes the request and that look's end says NOW. */
	if (!nd_mount_watch_begin(wt->w))
		return;
	if (!(u = calloc(1, sizeof(*u))) || !(w = calloc(1, sizeof(*w)))) {
		struct hp_tstatus st = { .code = HP_CODE_INTERNAL, .message = "out of memory" };

		free(u);
		updated(wt, &st);
		return;
	}
	u->wt = wt;
	w->run = check_run;
	w->done = check_done;
	w->ctx = u;
	wt->looking = 1;
	nd_work(wt->p->d, w);
}

static void inotified(struct hp_watch *fd, uint32_t events)
{
	struct nd_watch *wt = container_of(fd, struct nd_watch, fd);

	(void)events;
	next(wt, nd_mount_watch_drain(wt->w));
}

/* Starts `w` (made before the content the DPU's copies hold was read) for task t. */
void nd_dpu_start_watch(struct nd_pod *p, struct nd_task *t, struct nd_mount_watch *w, int resend)
{
	struct nd_watch *wt;
	int fd;

	if (!w)
		return;
	if (p->disposed || nd_mount_watch_count(w) == 0) {
		nd_mount_watch_free(w);
		return;
	}
	if (!(wt = calloc(1, sizeof(*wt))) || !(wt->container_id = strdup(t->id))) {
		free(wt);
		nd_mount_watch_free(w);
		return;
	}
	nd_dpu_unwatch_mounts(p, t);
	wt->p = p;
	wt->w = w;
	t->watch = wt;
	nd_pod_ref(p);
	if ((fd = nd_mount_watch_fd(w)) >= 0)
		hp_watch_start(p->d->loop, &wt->fd, fd, EPOLLIN, inotified);
	hp_timer_start(p->d->loop, &wt->recheck, ND_MOUNT_RECHECK_MS, recheck_fired);
	next(wt, nd_mount_watch_start(w, resend));
}

void nd_dpu_watch_mounts(struct nd_pod *p, struct nd_task *t, json_t *spec, int resend)
{
	struct nd_mount_watch *w;
	char err[512];

	if (nd_mount_watch_new(t->id, spec, &p->fifo, p->log_ctx, &w, err, sizeof(err)) < 0) {
		nd_log(&p->fifo, p->log_ctx, ND_WARN, "watch the mounts of a DPU container", "id", t->id, "error", err, NULL);
		return;
	}
	nd_dpu_start_watch(p, t, w, resend);
}

void nd_dpu_unwatch_mounts(struct nd_pod *p, struct nd_task *t)
{
	struct nd_watch *wt = t->watch;

	(void)p;
	if (!wt)
		return;
	t->watch = NULL;
	wt->closed = 1;
	/* Freed now, or by the look on at its end (ND_MOUNT_ENDED). */
	if (nd_mount_watch_close(wt->w) && !wt->looking)
		watch_free(wt);
}

/*
 * Before an init's exit goes on to containerd (the kubelet reads the file then).
 * An empty message writes nothing: the kubelet's file starts empty, and an
 * answer without one (an earlier agent's) must not erase one written before.
 */
void nd_dpu_termination_message(struct nd_task *t, const unsigned char *msg, size_t len, struct nd_pod *p)
{
	char err[512];
	int r;

	if (!t->termination_log || !msg || !len)
		return;
	if ((r = nd_write_termination_message(t->termination_log, msg, len, err, sizeof(err))) < 0)
		nd_log(&p->fifo, p->log_ctx, ND_WARN, "write the termination message of a DPU container", "id", t->id, "file", t->termination_log,
		       "error", err, NULL);
	else if (r == 0)
		nd_log(&p->fifo, p->log_ctx, ND_DEBUG, "the termination-log file is gone; message not written", "id", t->id, "file",
		       t->termination_log, NULL);
}
