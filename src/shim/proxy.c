/*
 * The ttrpc proxy in front of containerd-shim-runc-v2 (see proxy.h).
 *
 * Each connection containerd opens is paired with one connection to runc's shim.
 * Requests (containerd → runc) are framed, checked and, for Task/Create, rewritten;
 * responses (runc → containerd) are copied as they come, never parsed. A pair
 * never mixes streams of other pairs, so stream ids pass unchanged.
 *
 * Memory: two buffers of BUF_BASE per pair, allocated at accept. A request frame
 * larger than that grows its buffer to the frame's size (ttrpc allows 4 MiB), which
 * shrinks back once the frame is sent; one scratch buffer serves every rewrite.
 */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF_BASE 16384u
#define DRAIN_MS 2000
#define MAX_EVENTS 32
#define TASK_SERVICE "containerd.task.v2.Task"
#define RUNC_OPTIONS_TYPE "containerd.runc.v1.Options"

/* ---- protobuf, as far as the rewrite needs it ------------------------------ */

struct pb_field {
	uint32_t num;
	unsigned wire;
	const unsigned char *start; /* the tag */
	size_t total;		    /* tag to end of value */
	const unsigned char *val;   /* length-delimited value (wire type 2) */
	size_t vlen;
};

static int pb_varint(const unsigned char *p, size_t len, size_t *i, uint64_t *v)
{
	uint64_t out = 0;
	unsigned shift = 0;

	for (;;) {
		unsigned char b;

		if (*i >= len || shift > 63)
			return -EBADMSG;
		b = p[(*i)++];
		out |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			break;
		shift += 7;
	}
	*v = out;
	return 0;
}

/* The field of message p[0, len) at *i: 1 and `f`, 0 at the end, or -EBADMSG. */
static int pb_next(const unsigned char *p, size_t len, size_t *i, struct pb_field *f)
{
	size_t start = *i;
	uint64_t tag, n;

	if (*i >= len)
		return 0;
	if (pb_varint(p, len, i, &tag) < 0 || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
		return -EBADMSG;
	f->num = (uint32_t)(tag >> 3);
	f->wire = (unsigned)(tag & 7);
	f->val = NULL;
	f->vlen = 0;
	switch (f->wire) {
	case 0:
		if (pb_varint(p, len, i, &n) < 0)
			return -EBADMSG;
		break;
	case 1:
		if (len - *i < 8)
			return -EBADMSG;
		*i += 8;
		break;
	case 5:
		if (len - *i < 4)
			return -EBADMSG;
		*i += 4;
		break;
	case 2:
		if (pb_varint(p, len, i, &n) < 0 || n > len - *i)
			return -EBADMSG;
		f->val = p + *i;
		f->vlen = (size_t)n;
		*i += (size_t)n;
		break;
	default: /* groups (3, 4) are not proto3; 6 and 7 do not exist */
		return -EBADMSG;
	}
	f->start = p + start;
	f->total = *i - start;
	return 1;
}

static size_t varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static size_t put_varint(unsigned char *out, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		out[n++] = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (unsigned char)v;
	return n;
}

static int is(const unsigned char *p, size_t n, const char *s)
{
	return p && n == strlen(s) && memcmp(p, s, n) == 0;
}

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- the Create rewrite ---------------------------------------------------- */

size_t hp_rewrite_bound(size_t len, size_t options_len)
{
	/* The payload's length varint grows by at most 9 bytes; the options field
	 * adds its tag, a length varint (at most 10) and its bytes. */
	return len + 9 + 1 + 10 + options_len;
}

int hp_rewrite_create(const unsigned char *frame, size_t len, const unsigned char *options, size_t options_len,
		      unsigned char *out, size_t cap, size_t *out_len)
{
	const unsigned char *data = frame + HP_TTRPC_HEADER;
	const unsigned char *service = NULL, *method = NULL, *payload_tag = NULL, *payload = NULL;
	size_t dlen, i = 0, slen = 0, mlen = 0, plen = 0, payloads_total = 0, kept = 0;
	size_t new_payload, new_dlen, o;
	struct pb_field f;
	int r, had_options = 0;

	if (len < HP_TTRPC_HEADER || be32(frame) != len - HP_TTRPC_HEADER)
		return -EINVAL;
	dlen = len - HP_TTRPC_HEADER;
	if (frame[8] != HP_TTRPC_REQUEST)
		return 0;
	/* Request { service = 1; method = 2; payload = 3; timeout_nano = 4; metadata = 5; }:
	 * as in Go, the last occurrence of a field wins. */
	while ((r = pb_next(data, dlen, &i, &f)) > 0) {
		if (f.wire != 2)
			continue;
		if (f.num == 1) {
			service = f.val;
			slen = f.vlen;
		} else if (f.num == 2) {
			method = f.val;
			mlen = f.vlen;
		} else if (f.num == 3) {
			payload_tag = f.start;
			payload = f.val;
			plen = f.vlen;
			payloads_total += f.total;
		}
	}
	if (r < 0 || !is(service, slen, TASK_SERVICE) || !is(method, mlen, "Create") || !payload_tag)
		return 0;
	/* CreateTaskRequest: everything but options = 10 is kept. */
	i = 0;
	while ((r = pb_next(payload, plen, &i, &f)) > 0) {
		if (f.num == 10)
			had_options = 1;
		else
			kept += f.total;
	}
	if (r < 0 || (!had_options && !options))
		return 0;
	new_payload = kept + (options ? 1 + varint_len(options_len) + options_len : 0);
	new_dlen = dlen - payloads_total + 1 + varint_len(new_payload) + new_payload;
	if (new_dlen > HP_TTRPC_MAX_DATA)
		return -EMSGSIZE;
	*out_len = HP_TTRPC_HEADER + new_dlen;
	if (cap < *out_len)
		return -ENOSPC;

	out[0] = (unsigned char)(new_dlen >> 24);
	out[1] = (unsigned char)(new_dlen >> 16);
	out[2] = (unsigned char)(new_dlen >> 8);
	out[3] = (unsigned char)new_dlen;
	memcpy(out + 4, frame + 4, HP_TTRPC_HEADER - 4); /* stream id, type, flags */
	o = HP_TTRPC_HEADER;
	i = 0;
	while (pb_next(data, dlen, &i, &f) > 0) {
		size_t j = 0;
		struct pb_field g;

		if (f.num != 3 || f.wire != 2) {
			memcpy(out + o, f.start, f.total);
			o += f.total;
			continue;
		}
		if (f.start != payload_tag)
			continue; /* an earlier payload, overridden by the last */
		out[o++] = (3 << 3) | 2;
		o += put_varint(out + o, new_payload);
		while (pb_next(payload, plen, &j, &g) > 0) {
			if (g.num == 10)
				continue;
			memcpy(out + o, g.start, g.total);
			o += g.total;
		}
		if (options) {
			out[o++] = (10 << 3) | 2;
			o += put_varint(out + o, options_len);
			memcpy(out + o, options, options_len);
			o += options_len;
		}
	}
	return 1;
}

int hp_runc_options(const char *binary_name, const char *root, int systemd_cgroup, unsigned char *out, size_t cap)
{
	size_t blen = strlen(binary_name), rlen = strlen(root), tlen = strlen(RUNC_OPTIONS_TYPE);
	size_t value = (blen ? 1 + varint_len(blen) + blen : 0) + (rlen ? 1 + varint_len(rlen) + rlen : 0) + (systemd_cgroup ? 2 : 0);
	size_t o = 0;

	if (value == 0)
		return 0;
	if (1 + varint_len(tlen) + tlen + 1 + varint_len(value) + value > cap || cap > INT32_MAX)
		return -ENOSPC;
	out[o++] = (1 << 3) | 2; /* Any.type_url */
	o += put_varint(out + o, tlen);
	memcpy(out + o, RUNC_OPTIONS_TYPE, tlen);
	o += tlen;
	out[o++] = (2 << 3) | 2; /* Any.value */
	o += put_varint(out + o, value);
	if (blen) {
		out[o++] = (6 << 3) | 2;
		o += put_varint(out + o, blen);
		memcpy(out + o, binary_name, blen);
		o += blen;
	}
	if (rlen) {
		out[o++] = (7 << 3) | 2;
		o += put_varint(out + o, rlen);
		memcpy(out + o, root, rlen);
		o += rlen;
	}
	if (systemd_cgroup) {
		out[o++] = 9 << 3;
		out[o++] = 1;
	}
	return (int)o;
}

/* ---- the relay ------------------------------------------------------------- */

struct buf {
	unsigned char *p;
	size_t cap, off, len; /* [off, len) holds bytes not yet sent */
};

struct conn;

/* What an epoll event names: one side of a pair. */
struct end {
	struct conn *c;
	int upstream;
};

struct conn {
	int down, up; /* containerd's connection; ours to runc's shim (-1 once it closed) */
	struct end ends[2];
	struct buf req;	 /* containerd → runc */
	size_t ready;	 /* req[off, ready) are checked frames; [ready, len) a partial one */
	struct buf resp; /* runc → containerd */
	uint32_t watching[2];
	int closed;
	struct conn *next;
};

struct loop {
	const struct hp_proxy *p;
	int ep, listener, watch; /* watch: the idle connection that ends with runc's shim */
	ino_t socket_ino;
	struct conn *conns, *dead;
	unsigned char *scratch;
	size_t scratch_cap;
	int runc_gone;
	struct timespec deadline;
};

/* epoll tags of the two descriptors that are not containerd's connections */
static char listener_tag, runc_tag;

static void say(struct loop *l, const char *level, const char *msg, const char *detail)
{
	if (l->p->log)
		l->p->log(level, msg, detail);
}

static int buf_init(struct buf *b)
{
	b->p = malloc(BUF_BASE);
	if (!b->p)
		return -ENOMEM;
	b->cap = BUF_BASE;
	b->off = b->len = 0;
	return 0;
}

/* Moves the unsent bytes to the front; `ready` (an index into b) moves with them. */
static void buf_compact(struct buf *b, size_t *ready)
{
	if (b->off == 0)
		return;
	memmove(b->p, b->p + b->off, b->len - b->off);
	b->len -= b->off;
	if (ready)
		*ready -= b->off;
	b->off = 0;
}

static int buf_reserve(struct buf *b, size_t cap)
{
	unsigned char *bigger;

	if (b->cap >= cap)
		return 0;
	bigger = realloc(b->p, cap);
	if (!bigger)
		return -ENOMEM;
	b->p = bigger;
	b->cap = cap;
	return 0;
}

static void conn_close(struct loop *l, struct conn *c)
{
	struct conn **pp;

	if (c->closed)
		return;
	c->closed = 1;
	close(c->down); /* closing removes a descriptor from epoll */
	if (c->up >= 0)
		close(c->up);
	for (pp = &l->conns; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->next = l->dead;
	l->dead = c;
}

/* Freed after each batch of events: a later event of the batch may name them. */
static void free_dead(struct loop *l)
{
	while (l->dead) {
		struct conn *c = l->dead;

		l->dead = c->next;
		free(c->req.p);
		free(c->resp.p);
		free(c);
	}
}

static int watch(struct loop *l, int fd, struct end *e, uint32_t *watching, uint32_t want)
{
	struct epoll_event ev = { .events = want, .data.ptr = e };

	if (*watching == want)
		return 0;
	if (epoll_ctl(l->ep, EPOLL_CTL_MOD, fd, &ev) < 0)
		return -errno;
	*watching = want;
	return 0;
}

/* What each side waits for: input while there is room for it, output while bytes wait. */
static int conn_watch(struct loop *l, struct conn *c)
{
	uint32_t down = 0, up = 0;
	int err;

	if (c->req.len < c->req.cap || c->req.off > 0)
		down |= EPOLLIN;
	if (c->resp.off < c->resp.len)
		down |= EPOLLOUT;
	if (c->resp.len < c->resp.cap || c->resp.off > 0)
		up |= EPOLLIN;
	if (c->req.off < c->ready)
		up |= EPOLLOUT;
	err = watch(l, c->down, &c->ends[0], &c->watching[0], down);
	if (!err && c->up >= 0)
		err = watch(l, c->up, &c->ends[1], &c->watching[1], up);
	return err;
}

static int send_some(int fd, struct buf *b, size_t until)
{
	while (b->off < until) {
		ssize_t n = send(fd, b->p + b->off, until - b->off, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n < 0)
			return -errno;
		b->off += (size_t)n;
	}
	return 0;
}

static int flush_down(struct conn *c)
{
	int err = send_some(c->down, &c->resp, c->resp.len);

	if (!err && c->resp.off == c->resp.len)
		c->resp.off = c->resp.len = 0;
	return err;
}

static int flush_up(struct conn *c)
{
	int err;

	if (c->up < 0)
		return 0;
	err = send_some(c->up, &c->req, c->ready);
	if (err || c->req.off < c->ready)
		return err;
	buf_compact(&c->req, &c->ready);
	/* A large frame has gone and no part of another waits: give its memory back. */
	if (c->req.cap > BUF_BASE && c->req.len == 0) {
		unsigned char *smaller = realloc(c->req.p, BUF_BASE);

		if (smaller) {
			c->req.p = smaller;
			c->req.cap = BUF_BASE;
		}
	}
	return 0;
}

/* Replaces the complete frame of `len` bytes at req[ready] if it must change;
 * returns the length of what is there now. */
static ssize_t rewrite_at_ready(struct loop *l, struct conn *c, size_t len)
{
	size_t bound = hp_rewrite_bound(len, l->p->create_options_len), out_len = 0, tail;
	unsigned char *frame;
	int r;

	if (l->scratch_cap < bound) {
		unsigned char *bigger = realloc(l->scratch, bound);

		if (!bigger)
			return -ENOMEM;
		l->scratch = bigger;
		l->scratch_cap = bound;
	}
	r = hp_rewrite_create(c->req.p + c->ready, len, l->p->create_options, l->p->create_options_len, l->scratch,
			      l->scratch_cap, &out_len);
	if (r <= 0)
		return r == 0 ? (ssize_t)len : r;
	if (out_len > len) {
		buf_compact(&c->req, &c->ready);
		if ((r = buf_reserve(&c->req, c->req.len + (out_len - len))) < 0)
			return r;
	}
	frame = c->req.p + c->ready;
	tail = c->req.len - c->ready - len;
	memmove(frame + out_len, frame + len, tail);
	memcpy(frame, l->scratch, out_len);
	c->req.len = c->ready + out_len + tail;
	return (ssize_t)out_len;
}

/* Checks (and rewrites) every complete frame after req[ready]. A header that is
 * not a ttrpc 1.1 request of at most 4 MiB fails the connection. */
static int scan_requests(struct loop *l, struct conn *c)
{
	while (c->req.len - c->ready >= HP_TTRPC_HEADER) {
		const unsigned char *h = c->req.p + c->ready;
		size_t need = HP_TTRPC_HEADER + be32(h);
		ssize_t now;

		if (be32(h) > HP_TTRPC_MAX_DATA)
			return -EMSGSIZE;
		if (h[8] != HP_TTRPC_REQUEST)
			return -EPROTO;
		if (c->req.len - c->ready < need) {
			if (c->ready + need > c->req.cap) {
				buf_compact(&c->req, &c->ready);
				if (c->ready + need > c->req.cap)
					return buf_reserve(&c->req, c->ready + need);
			}
			return 0;
		}
		now = rewrite_at_ready(l, c, need);
		if (now < 0)
			return (int)now;
		c->ready += (size_t)now;
	}
	return 0;
}

static void down_event(struct loop *l, struct conn *c, uint32_t events)
{
	int err = 0;

	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		ssize_t n;

		if (c->req.len == c->req.cap)
			buf_compact(&c->req, &c->ready);
		if (c->req.len == c->req.cap) {
			if (events & (EPOLLHUP | EPOLLERR))
				goto close; /* containerd left; its pending requests need no answer */
		} else {
			n = recv(c->down, c->req.p + c->req.len, c->req.cap - c->req.len, MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
				goto close;
			if (n > 0) {
				c->req.len += (size_t)n;
				err = scan_requests(l, c);
				if (err < 0) {
					say(l, "warning", "closing a containerd connection after a bad ttrpc frame",
					    err == -EMSGSIZE ? "frame longer than 4 MiB" : err == -EPROTO ? "not a request frame" : strerror(-err));
					goto close;
				}
			}
		}
		if ((err = flush_up(c)) < 0)
			goto close;
	}
	if ((events & EPOLLOUT) && (err = flush_down(c)) < 0)
		goto close;
	if (c->up < 0 && c->resp.off == c->resp.len)
		goto close; /* runc's side is gone and all it said has been passed on */
	return;
close:
	conn_close(l, c);
}

/* runc's side ended: what it sent last still goes to containerd, then the pair closes. */
static void up_closed(struct conn *c)
{
	for (;;) {
		ssize_t n;

		buf_compact(&c->resp, NULL);
		if (c->resp.len == c->resp.cap && buf_reserve(&c->resp, c->resp.cap * 2) < 0)
			break;
		n = recv(c->up, c->resp.p + c->resp.len, c->resp.cap - c->resp.len, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		c->resp.len += (size_t)n;
	}
	close(c->up);
	c->up = -1;
}

static void up_event(struct loop *l, struct conn *c, uint32_t events)
{
	if (events & (EPOLLHUP | EPOLLERR)) {
		up_closed(c);
	} else if (events & EPOLLIN) {
		ssize_t n;

		if (c->resp.len == c->resp.cap)
			buf_compact(&c->resp, NULL);
		if (c->resp.len < c->resp.cap) {
			n = recv(c->up, c->resp.p + c->resp.len, c->resp.cap - c->resp.len, MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
				up_closed(c);
			else if (n > 0)
				c->resp.len += (size_t)n;
		}
	}
	if ((events & EPOLLOUT) && flush_up(c) < 0)
		up_closed(c);
	if (flush_down(c) < 0 || (c->up < 0 && c->resp.off == c->resp.len))
		conn_close(l, c);
}

static int connect_upstream(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, err;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
		err = -errno;
		close(fd);
		return err;
	}
	return fd;
}

static int conn_open(struct loop *l, int down)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct conn *c = calloc(1, sizeof(*c));
	int err;

	if (!c)
		return -ENOMEM;
	c->down = down;
	c->up = connect_upstream(l->p->upstream);
	if (c->up < 0) {
		err = c->up;
		free(c);
		return err;
	}
	if ((err = buf_init(&c->req)) < 0 || (err = buf_init(&c->resp)) < 0)
		goto fail;
	c->ends[0] = (struct end){ c, 0 };
	c->ends[1] = (struct end){ c, 1 };
	c->watching[0] = c->watching[1] = EPOLLIN;
	ev.data.ptr = &c->ends[0];
	if (epoll_ctl(l->ep, EPOLL_CTL_ADD, c->down, &ev) < 0) {
		err = -errno;
		goto fail;
	}
	ev.data.ptr = &c->ends[1];
	if (epoll_ctl(l->ep, EPOLL_CTL_ADD, c->up, &ev) < 0) {
		err = -errno;
		epoll_ctl(l->ep, EPOLL_CTL_DEL, c->down, NULL);
		goto fail;
	}
	c->next = l->conns;
	l->conns = c;
	return 0;
fail:
	close(c->up);
	free(c->req.p);
	free(c->resp.p);
	free(c);
	return err;
}

static void accept_all(struct loop *l)
{
	for (;;) {
		int fd = accept4(l->listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), err;

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				say(l, "warning", "accept a containerd connection", strerror(errno));
			return;
		}
		err = conn_open(l, fd);
		if (err < 0) {
			/* A connection closed at once is what containerd sees of a dead shim. */
			say(l, "warning", "connect to runc shim for a containerd connection", strerror(-err));
			close(fd);
		}
	}
}

/* runc's shim has exited: no new connections; the open ones drain and close. */
static void runc_exited(struct loop *l)
{
	struct stat st;

	l->runc_gone = 1;
	if (l->watch >= 0) {
		close(l->watch);
		l->watch = -1;
	}
	if (l->listener >= 0) {
		close(l->listener);
		l->listener = -1;
	}
	if (l->p->socket_path && stat(l->p->socket_path, &st) == 0 && st.st_ino == l->socket_ino)
		unlink(l->p->socket_path);
	clock_gettime(CLOCK_MONOTONIC, &l->deadline);
	l->deadline.tv_sec += DRAIN_MS / 1000;
}

static int ms_left(const struct timespec *deadline)
{
	struct timespec now;
	long ms;

	clock_gettime(CLOCK_MONOTONIC, &now);
	ms = (deadline->tv_sec - now.tv_sec) * 1000 + (deadline->tv_nsec - now.tv_nsec) / 1000000;
	return ms < 0 ? 0 : (int)ms;
}

int hp_proxy_run(const struct hp_proxy *p)
{
	struct loop l = { .p = p, .listener = p->listener, .ep = -1, .watch = -1 };
	struct epoll_event evs[MAX_EVENTS], ev = { .events = EPOLLIN };
	struct stat st;
	int err = 0;

	if (p->socket_path && stat(p->socket_path, &st) == 0)
		l.socket_ino = st.st_ino;
	l.ep = epoll_create1(EPOLL_CLOEXEC);
	if (l.ep < 0) {
		err = -errno;
		goto out;
	}
	ev.data.ptr = &listener_tag;
	if (fcntl(l.listener, F_SETFL, O_NONBLOCK) < 0 || epoll_ctl(l.ep, EPOLL_CTL_ADD, l.listener, &ev) < 0) {
		err = -errno;
		goto out;
	}
	l.watch = connect_upstream(p->upstream);
	if (l.watch < 0) {
		say(&l, "warning", "runc shim does not answer", strerror(-l.watch));
		runc_exited(&l);
	} else {
		ev.data.ptr = &runc_tag;
		if (epoll_ctl(l.ep, EPOLL_CTL_ADD, l.watch, &ev) < 0) {
			err = -errno;
			goto out;
		}
	}
	for (;;) {
		int timeout = -1, n, i;

		if (l.runc_gone) {
			if (!l.conns)
				break;
			timeout = ms_left(&l.deadline);
			if (timeout == 0)
				break;
		}
		n = epoll_wait(l.ep, evs, MAX_EVENTS, timeout);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = -errno;
			break;
		}
		for (i = 0; i < n; i++) {
			void *tag = evs[i].data.ptr;
			struct end *e = tag;

			if (tag == &listener_tag) {
				if (!l.runc_gone)
					accept_all(&l);
				continue;
			}
			if (tag == &runc_tag) {
				char byte;
				ssize_t got = recv(l.watch, &byte, 1, MSG_DONTWAIT);

				/* runc's shim never writes here: anything but EOF is ignored */
				if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
					runc_exited(&l);
				continue;
			}
			if (e->c->closed || (e->upstream && e->c->up < 0))
				continue;
			if (e->upstream)
				up_event(&l, e->c, evs[i].events);
			else
				down_event(&l, e->c, evs[i].events);
			if (!e->c->closed && conn_watch(&l, e->c) < 0)
				conn_close(&l, e->c);
		}
		free_dead(&l);
	}
out:
	while (l.conns)
		conn_close(&l, l.conns);
	free_dead(&l);
	if (!l.runc_gone)
		runc_exited(&l); /* the loop failed: stop serving all the same */
	if (l.ep >= 0)
		close(l.ep);
	free(l.scratch);
	return err;
}
