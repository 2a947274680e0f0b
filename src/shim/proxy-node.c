/*
 * An offload pod's node daemon, as the proxy sees it (proxy.h): the route table
 * of the tasks it holds, each pair's daemon connection (Attach first, requests
 * queued behind it), what the daemon's answers change, the pair's held Waits
 * and the reconnect timer that sends them again, and the proxy's own answers
 * when the daemon is down.
 */
#include "proxy-internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#define RECONNECT_MS 250

void pending_free(struct pending *list)
{
	while (list) {
		struct pending *next = list->next;

		free(list);
		list = next;
	}
}

/* The daemon connection's end; the pair's pending requests are left to the caller. */
void node_close(struct conn *c)
{
	if (c->node >= 0)
		close(c->node); /* closing removes a descriptor from epoll */
	c->node = -1;
	c->attached = 0;
	c->watching[2] = 0;
	buf_free(&c->nreq);
	buf_free(&c->nresp);
	c->nready = 0;
}

int flush_node(struct conn *c)
{
	int err;

	if (c->node < 0)
		return 0;
	err = send_some(c->node, &c->nreq, c->nready);
	if (err || c->nreq.off < c->nready)
		return err;
	buf_compact(&c->nreq, &c->nready);
	if (c->nreq.len == 0)
		buf_shrink(&c->nreq);
	return 0;
}

/* ---- routing for offload pods ------------------------------------------------ */

static struct route *route_find(struct loop *l, const unsigned char *id, size_t len)
{
	struct route *r;

	for (r = l->routes; r; r = r->next)
		if (r->len == len && memcmp(r->id, id, len) == 0)
			return r;
	return NULL;
}

static int route_to_daemon(struct loop *l, const unsigned char *id, size_t len, int delete_only)
{
	struct route *r;

	if ((r = route_find(l, id, len))) {
		r->delete_only = delete_only;
		return 0;
	}
	r = malloc(sizeof(*r) + len);
	if (!r)
		return -ENOMEM;
	r->delete_only = delete_only;
	r->len = len;
	memcpy(r->id, id, len);
	r->next = l->routes;
	l->routes = r;
	return 0;
}

/* runc is where every id not in the table goes. */
static void route_to_runc(struct loop *l, const unsigned char *id, size_t len)
{
	struct route **pp, *r;

	for (pp = &l->routes; (r = *pp); pp = &r->next) {
		if (r->len == len && memcmp(r->id, id, len) == 0) {
			*pp = r->next;
			free(r);
			return;
		}
	}
}

/* Field 1 (the task id) of a Task request's payload; 0 when there is none. */
static int task_id(const struct envelope *e, const unsigned char **id, size_t *len)
{
	struct pb_field f;
	size_t i = 0;
	int found = 0;

	while (pb_next(e->payload, e->plen, &i, &f) > 0) {
		if (f.num == 1 && f.wire == 2) {
			*id = f.val;
			*len = f.vlen;
			found = 1;
		}
	}
	return found;
}

/* The task id of a complete request frame; 0 when it has none. */
static int frame_task_id(const unsigned char *frame, size_t len, const unsigned char **id, size_t *idlen)
{
	struct envelope e;

	return envelope_read(frame + HP_TTRPC_HEADER, len - HP_TTRPC_HEADER, &e) == 0 && e.payload && task_id(&e, id, idlen);
}

/* Our own answer to containerd: Response { status = google.rpc.Status { code, message } }. */
static int answer_error(struct conn *c, uint32_t stream, int code, const char *message)
{
	struct pb_writer size = { NULL, 0 }, w;
	unsigned char frame[HP_TTRPC_HEADER + 512];
	size_t mlen = strlen(message), status;

	if (mlen > 400)
		mlen = 400;
	pbw_uint(&size, 1, (uint64_t)code);
	pbw_bytes(&size, 2, message, mlen);
	status = size.n;
	w = (struct pb_writer){ frame + HP_TTRPC_HEADER, 0 };
	pbw_varint(&w, 1 << 3 | 2);
	pbw_varint(&w, status);
	pbw_uint(&w, 1, (uint64_t)code);
	pbw_bytes(&w, 2, message, mlen);
	put_header(frame, w.n, stream, HP_TTRPC_RESPONSE);
	return buf_append(&c->side, frame, HP_TTRPC_HEADER + w.n);
}

static int answer_unavailable(struct loop *l, struct conn *c, uint32_t stream)
{
	char message[sizeof(c->node_why) + 4096];

	snprintf(message, sizeof(message), "the HeteroPod node daemon is not running (%s): retry", l->p->node_socket);
	return answer_error(c, stream, HP_CODE_UNAVAILABLE, message);
}

static int prefer_runc(const struct loop *l)
{
	return !l->p->offload_policy || strcmp(l->p->offload_policy, "prefer") == 0;
}

/* A Create the daemon never saw, with the daemon down: runc's under "prefer",
 * failed under any other policy (an unknown one is refused as "require" is). */
static int create_without_daemon(struct loop *l, struct conn *c, const unsigned char *frame, size_t len)
{
	char message[sizeof(c->node_why) + 4096];
	const unsigned char *id;
	size_t idlen;

	if (prefer_runc(l)) {
		if (frame_task_id(frame, len, &id, &idlen))
			route_to_runc(l, id, idlen);
		return runc_inject(l, c, frame, len);
	}
	snprintf(message, sizeof(message), "heteropod.io/offload-policy=%s: the HeteroPod node daemon is not running (%s: %s)",
		 l->p->offload_policy, l->p->node_socket, c->node_why);
	return answer_error(c, be32(frame + 4), HP_CODE_FAILED_PRECONDITION, message);
}

/* Queues a request for the daemon; released at once when the connection is attached. */
static int node_queue(struct conn *c, const unsigned char *frame, size_t len, enum kind kind)
{
	int keep = kind != ATTACH && kind != OTHER;
	struct pending *p = malloc(sizeof(*p) + (keep ? len : 0)), **tail;
	int err;

	if (!p)
		return -ENOMEM;
	if ((err = buf_append(&c->nreq, frame, len)) < 0) {
		free(p);
		return err;
	}
	p->next = NULL;
	p->stream = be32(frame + 4);
	p->kind = kind;
	p->sent = c->attached;
	p->len = keep ? len : 0;
	if (keep)
		memcpy(p->frame, frame, len);
	if (c->attached)
		c->nready = c->nreq.len;
	for (tail = &c->pending; *tail; tail = &(*tail)->next)
		;
	*tail = p;
	return 0;
}

/*
 * Opens the pair's daemon connection: Attach first, then the held Waits, queued
 * until the daemon has answered Attach. A failed connect leaves the pair without
 * one (c->node_why says why); the held Waits stay held.
 */
static int node_open(struct loop *l, struct conn *c)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &c->ends[2] };
	struct pending *held;
	int fd, err;

	if (strlen(l->p->node_socket) >= sizeof(addr.sun_path)) {
		snprintf(c->node_why, sizeof(c->node_why), "%s", strerror(ENAMETOOLONG));
		return -ENAMETOOLONG;
	}
	strcpy(addr.sun_path, l->p->node_socket);
	/* Non-blocking: a daemon whose backlog is full (EAGAIN) counts as down
	 * rather than stopping every other pair. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		err = -errno;
		if (fd >= 0)
			close(fd);
		snprintf(c->node_why, sizeof(c->node_why), "%s", strerror(-err));
		return err;
	}
	if ((err = buf_init(&c->nreq)) < 0 || (err = buf_init(&c->nresp)) < 0 ||
	    (epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &ev) < 0 && (err = -errno))) {
		close(fd);
		buf_free(&c->nreq);
		buf_free(&c->nresp);
		snprintf(c->node_why, sizeof(c->node_why), "%s", strerror(-err));
		return err;
	}
	c->node = fd;
	c->watching[2] = EPOLLIN;
	c->attached = 0;
	if ((err = node_queue(c, l->attach, l->attach_len, ATTACH)) < 0)
		goto fail;
	c->nready = c->nreq.len; /* only Attach goes before its answer */
	c->pending->sent = 1;
	while ((held = c->held)) {
		if ((err = node_queue(c, held->frame, held->len, WAIT)) < 0)
			goto fail;
		c->held = held->next;
		free(held);
	}
	say(l, "debug", "node daemon connected", l->p->node_socket);
	return 0;
fail:
	/* Only memory fails here: what was moved out of `held` goes back to it. */
	for (held = c->pending; held;) {
		struct pending *next = held->next;

		if (held->kind == WAIT) {
			held->next = c->held;
			c->held = held;
		} else {
			free(held);
		}
		held = next;
	}
	c->pending = NULL;
	node_close(c);
	snprintf(c->node_why, sizeof(c->node_why), "%s", strerror(-err));
	return err;
}

/*
 * The daemon is gone for this pair (connection broke, Attach refused, a bad
 * frame): what it was asked is answered here, as proxy.h says.
 */
int node_down(struct loop *l, struct conn *c, const char *why)
{
	struct pending *p = c->pending, *next;
	int err = 0, e;

	if (why)
		snprintf(c->node_why, sizeof(c->node_why), "%s", why);
	say(l, "warning", "node daemon connection lost", c->node_why);
	c->pending = NULL;
	node_close(c);
	for (; p; p = next) {
		next = p->next;
		e = 0;
		switch (p->kind) {
		case ATTACH:
			break;
		case CREATE:
			/* Sent, the daemon may have created it: containerd deletes or retries. */
			e = p->sent ? answer_unavailable(l, c, p->stream) : create_without_daemon(l, c, p->frame, p->len);
			break;
		case WAIT:
			p->sent = 0;
			p->next = c->held;
			c->held = p;
			continue;
		case EXEC:
		case DELETE:
		case OTHER:
			e = answer_unavailable(l, c, p->stream);
			break;
		}
		if (e < 0 && !err)
			err = e;
		free(p);
	}
	return err;
}

/* The code of Response.status; 0 (OK) when absent, -EBADMSG when it does not decode.
 * The status message, if any, goes to `message`. */
static int response_code(const unsigned char *frame, size_t len, char *message, size_t cap)
{
	const unsigned char *data = frame + HP_TTRPC_HEADER;
	size_t i = 0, j;
	struct pb_field f, g;
	int code = 0, r;

	message[0] = '\0';
	while ((r = pb_next(data, len - HP_TTRPC_HEADER, &i, &f)) > 0) {
		if (f.num != 1 || f.wire != 2)
			continue;
		code = 0;
		for (j = 0; (r = pb_next(f.val, f.vlen, &j, &g)) > 0;) {
			if (g.num == 1 && g.wire == 0)
				code = (int)(int32_t)g.u;
			else if (g.num == 2 && g.wire == 2)
				snprintf(message, cap, "%.*s", (int)(g.vlen < 200 ? g.vlen : 200), (const char *)g.val);
		}
		if (r < 0)
			return -EBADMSG;
	}
	return r < 0 ? -EBADMSG : code;
}

/*
 * One whole frame from the daemon (it may be changed in place). Returns 0, or
 * a negative errno that ends the daemon connection (`why` then says why).
 */
static int node_frame(struct loop *l, struct conn *c, unsigned char *frame, size_t len, char *why, size_t why_len)
{
	uint32_t stream = be32(frame + 4);
	struct pending **pp, *p;
	const unsigned char *id;
	size_t idlen;
	int placed, ok = 0, err = 0;

	if (frame[8] != HP_TTRPC_RESPONSE) {
		snprintf(why, why_len, "not a response frame from the daemon");
		return -EPROTO;
	}
	for (pp = &c->pending; (p = *pp) && p->stream != stream; pp = &p->next)
		;
	if (!p) {
		say(l, "warning", "node daemon answered a request it was not sent; dropped", NULL);
		return 0;
	}
	*pp = p->next;
	if (p->kind != ATTACH) {
		char message[8];

		ok = response_code(frame, len, message, sizeof(message)) == 0;
	}
	switch (p->kind) {
	case ATTACH: {
		char message[256];
		int code = response_code(frame, len, message, sizeof(message));

		free(p);
		if (code != 0) {
			snprintf(why, why_len, "Attach: %.120s", code < 0 ? "undecodable answer" : message[0] ? message : "refused");
			return -ECONNREFUSED;
		}
		c->attached = 1;
		c->nready = c->nreq.len;
		for (p = c->pending; p; p = p->next)
			p->sent = 1;
		say(l, "debug", "node daemon attached", NULL);
		return 0;
	}
	case CREATE:
		placed = hp_take_placed(frame, &len);
		if (frame_task_id(p->frame, p->len, &id, &idlen)) {
			if (placed == HP_PLACED_DAEMON || placed == HP_PLACED_SANDBOX)
				err = route_to_daemon(l, id, idlen, placed == HP_PLACED_SANDBOX);
			else if (placed == HP_PLACED_RUNC)
				route_to_runc(l, id, idlen);
		}
		/* Left to the host: runc's answer is containerd's, the daemon's is dropped. */
		if (!err)
			err = placed == HP_PLACED_RUNC ? runc_inject(l, c, p->frame, p->len) : buf_append(&c->side, frame, len);
		/* containerd opened the fifos before it sent Create: they have a reader. */
		if (!err && placed == HP_PLACED_DAEMON && ok)
			stdio_hold_create(l, p->frame, p->len);
		break;
	case WAIT:
	case EXEC:
	case DELETE:
	case OTHER:
		err = buf_append(&c->side, frame, len);
		/* Let go once the answer is queued: CRI's ExecSync reads an exec's fifos to EOF
		 * before it sends Delete, so a Wait answered OK must be enough. */
		if (!err && ok && p->kind == EXEC)
			stdio_hold_exec(l, p->frame, p->len);
		else if (!err && ok && (p->kind == WAIT || p->kind == DELETE))
			stdio_release(l, p->frame, p->len, p->kind == DELETE);
		break;
	}
	free(p);
	if (err < 0)
		snprintf(why, why_len, "%s", strerror(-err));
	return err;
}

/* The daemon's connection is readable (or broke): whole frames are handled. */
void node_event(struct loop *l, struct conn *c, uint32_t events)
{
	char why[sizeof(c->node_why)] = "connection closed";
	int err = 0;

	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		for (;;) {
			ssize_t n;

			if (c->nresp.len == c->nresp.cap)
				buf_compact(&c->nresp, NULL);
			/* A header says how much room the frame needs. */
			if (c->nresp.len - c->nresp.off >= HP_TTRPC_HEADER) {
				size_t need = HP_TTRPC_HEADER + be32(c->nresp.p + c->nresp.off);

				if (need - HP_TTRPC_HEADER > HP_TTRPC_MAX_DATA) {
					snprintf(why, sizeof(why), "frame longer than 4 MiB from the daemon");
					err = -EMSGSIZE;
					break;
				}
				if (c->nresp.off + need > c->nresp.cap) {
					buf_compact(&c->nresp, NULL);
					if ((err = buf_reserve(&c->nresp, need)) < 0)
						break;
				}
			}
			n = recv(c->node, c->nresp.p + c->nresp.len, c->nresp.cap - c->nresp.len, MSG_DONTWAIT);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
				break;
			if (n <= 0) {
				if (n < 0)
					snprintf(why, sizeof(why), "%s", strerror(errno));
				err = n < 0 ? -errno : -ECONNRESET;
				break;
			}
			c->nresp.len += (size_t)n;
			while (!err && c->nresp.len - c->nresp.off >= HP_TTRPC_HEADER) {
				unsigned char *f = c->nresp.p + c->nresp.off;
				size_t need = HP_TTRPC_HEADER + be32(f);

				if (c->nresp.len - c->nresp.off < need)
					break;
				err = node_frame(l, c, f, need, why, sizeof(why));
				c->nresp.off += need;
			}
			if (err)
				break;
			if (c->nresp.off == c->nresp.len) {
				c->nresp.off = c->nresp.len = 0;
				buf_shrink(&c->nresp);
			}
		}
	}
	if (!err && (err = flush_node(c)) < 0)
		snprintf(why, sizeof(why), "%s", strerror(-err));
	if (err < 0 && node_down(l, c, why) < 0)
		conn_close(l, c);
}

/*
 * Offload pods: where the complete request frame at req[ready] goes. Returns 0
 * when it stays in runc's stream, 1 when it was taken out of it (queued for the
 * daemon, held, or answered here), or a negative errno.
 */
int route_request(struct loop *l, struct conn *c, size_t len)
{
	const unsigned char *frame = c->req.p + c->ready, *id = NULL;
	struct envelope e;
	size_t idlen = 0;
	enum kind kind;
	int err;

	if (envelope_read(frame + HP_TTRPC_HEADER, len - HP_TTRPC_HEADER, &e) < 0 || !is(e.service, e.slen, TASK_SERVICE))
		return 0;
	if (is(e.method, e.mlen, "Create")) {
		kind = CREATE;
	} else {
		/* Shutdown is runc's: its shim exits once it holds no task, and we with it. */
		struct route *r;

		if (is(e.method, e.mlen, "Shutdown") || !e.payload || !task_id(&e, &id, &idlen) || !(r = route_find(l, id, idlen)))
			return 0;
		if (r->delete_only && !is(e.method, e.mlen, "Delete"))
			return 0;
		kind = is(e.method, e.mlen, "Wait")	? WAIT
		       : is(e.method, e.mlen, "Exec")	? EXEC
		       : is(e.method, e.mlen, "Delete") ? DELETE
							: OTHER;
	}
	if (c->node < 0 && node_open(l, c) < 0) {
		/* The daemon is down. */
		if (kind == CREATE && prefer_runc(l)) {
			if (task_id(&e, &id, &idlen))
				route_to_runc(l, id, idlen);
			return 0;
		}
		if (kind == CREATE)
			err = create_without_daemon(l, c, frame, len);
		else if (kind != WAIT)
			err = answer_unavailable(l, c, be32(frame + 4));
		else {
			struct pending *p = malloc(sizeof(*p) + len);

			if (!p)
				return -ENOMEM;
			*p = (struct pending){ .next = c->held, .stream = be32(frame + 4), .kind = WAIT, .len = len };
			memcpy(p->frame, frame, len);
			c->held = p;
			err = 0;
		}
	} else {
		err = node_queue(c, frame, len, kind);
	}
	if (err < 0)
		return err;
	memmove(c->req.p + c->ready, c->req.p + c->ready + len, c->req.len - c->ready - len);
	c->req.len -= len;
	return 1;
}

/* Offload pods: tries the daemon again for every pair holding a Wait. */
void reconnect_tick(struct loop *l)
{
	uint64_t ticks;
	struct conn *c;

	if (read(l->timer, &ticks, sizeof(ticks)) < 0) {
		/* EAGAIN: nothing expired yet */
	}
	for (c = l->conns; c; c = c->next) {
		if (!c->held || c->node >= 0 || node_open(l, c) < 0)
			continue;
		if (flush_node(c) < 0 && node_down(l, c, "send Attach") < 0)
			conn_close(l, c);
		else if (conn_watch(l, c) < 0)
			conn_close(l, c);
	}
}

/* The timer runs while some pair holds a Wait and has no daemon connection. */
void timer_update(struct loop *l)
{
	struct itimerspec on = { { 0, RECONNECT_MS * 1000000L }, { 0, RECONNECT_MS * 1000000L } }, off = { 0 };
	struct conn *c;
	int want = 0;

	for (c = l->conns; c && !want; c = c->next)
		want = c->held && c->node < 0;
	if (want != l->timer_armed && timerfd_settime(l->timer, 0, want ? &on : &off, NULL) == 0)
		l->timer_armed = want;
}

int offload_init(struct loop *l, void *timer_tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = timer_tag };
	size_t cap = 4096;
	int n;

	if (!l->p->attach)
		return -EINVAL;
	for (;;) {
		unsigned char *bigger = realloc(l->attach, cap);

		if (!bigger)
			return -ENOMEM;
		l->attach = bigger;
		n = hp_attach_frame(l->p->attach, l->attach, cap);
		if (n != -ENOSPC)
			break;
		cap *= 4;
	}
	if (n < 0)
		return n;
	l->attach_len = (size_t)n;
	l->timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (l->timer < 0 || epoll_ctl(l->ep, EPOLL_CTL_ADD, l->timer, &ev) < 0)
		return -errno;
	l->offload = 1;
	return 0;
}


void offload_free(struct loop *l)
{
	while (l->routes) {
		struct route *r = l->routes;

		l->routes = r->next;
		free(r);
	}
	free(l->attach);
	l->attach = NULL;
	stdio_free(l);
}
