/*
 * The ttrpc proxy in front of containerd-shim-runc-v2, and, for offload pods, of
 * the node daemon (see proxy.h).
 *
 * Each connection containerd opens is paired with one connection to runc's shim.
 * Requests (containerd → runc) are framed, checked and, for Task/Create, rewritten;
 * responses (runc → containerd) are copied as they come, never parsed. A pair
 * never mixes streams of other pairs, so stream ids pass unchanged.
 *
 * Offload pods: each pair may also own a connection to the node daemon (`node`),
 * opened on the first request that needs it. Requests for the daemon are taken
 * out of the runc stream whole and queued behind Attach, released once Attach
 * has been answered; the daemon's answers are read as whole frames. What
 * containerd gets besides runc's byte stream (the daemon's answers, our own error
 * answers) waits as whole frames in `side`, and the two streams alternate on
 * containerd's connection only at frame boundaries: the proxy then follows
 * runc's frame headers as it copies. The route table (which task ids the daemon
 * holds) is the process's, shared by every connection.
 *
 * Memory: two buffers of BUF_BASE per pair, allocated at accept, two more when a
 * daemon connection opens, freed when it closes. A frame larger than that grows
 * its buffer to the frame's size (ttrpc allows 4 MiB), which shrinks back once
 * the frame is sent; one scratch buffer serves every rewrite. A request the
 * daemon may have to see again (Create, which may go to runc after all; Wait,
 * sent again after a daemon restart) is copied until it is answered.
 *
 * This file is the relay and its event loop; proxy-codec.c decodes and encodes
 * frames, proxy-node.c is the node daemon's side (routing, Attach, held Waits,
 * reconnecting).
 */
#include "proxy-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF_BASE 16384u
#define DRAIN_MS 2000
#define MAX_EVENTS 32

/* ---- the relay ------------------------------------------------------------- */

/* epoll tags of the descriptors that are not a pair's */
static char listener_tag, runc_tag, timer_tag;

int buf_init(struct buf *b)
{
	b->p = malloc(BUF_BASE);
	if (!b->p)
		return -ENOMEM;
	b->cap = BUF_BASE;
	b->off = b->len = 0;
	return 0;
}

void buf_free(struct buf *b)
{
	free(b->p);
	*b = (struct buf){ 0 };
}

/* Moves the unsent bytes to the front; `ready` (an index into b) moves with them. */
void buf_compact(struct buf *b, size_t *ready)
{
	if (b->off == 0)
		return;
	memmove(b->p, b->p + b->off, b->len - b->off);
	b->len -= b->off;
	if (ready)
		*ready -= b->off;
	b->off = 0;
}

int buf_reserve(struct buf *b, size_t cap)
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

/* Appends len bytes, growing the buffer (at least doubling) if they do not fit. */
int buf_append(struct buf *b, const unsigned char *p, size_t len)
{
	if (b->len + len > b->cap && b->off > 0)
		buf_compact(b, NULL);
	if (b->len + len > b->cap) {
		size_t cap = b->cap * 2 > b->len + len ? b->cap * 2 : b->len + len;
		int err = buf_reserve(b, cap < 1024 ? 1024 : cap);

		if (err < 0)
			return err;
	}
	memcpy(b->p + b->len, p, len);
	b->len += len;
	return 0;
}

/* A large frame has gone and nothing waits: give the memory back. */
void buf_shrink(struct buf *b)
{
	unsigned char *smaller;

	if (b->cap <= BUF_BASE || b->len != b->off)
		return;
	smaller = realloc(b->p, BUF_BASE);
	if (smaller) {
		b->p = smaller;
		b->cap = BUF_BASE;
		b->off = b->len = 0;
	}
}

void conn_close(struct loop *l, struct conn *c)
{
	struct conn **pp;

	if (c->closed)
		return;
	c->closed = 1;
	close(c->down);
	if (c->up >= 0)
		close(c->up);
	/* Held Waits go with containerd's connection: nobody is left to answer. */
	node_close(c);
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
		free(c->side.p);
		pending_free(c->pending);
		pending_free(c->held);
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

/* Whether containerd's connection has bytes it may be sent now. */
static int down_has_output(const struct conn *c)
{
	if (!c->framed)
		return c->resp.off < c->resp.len; /* only runc's stream: copied as it comes */
	if (c->frame_left)
		return c->from_side ? c->side.off < c->side.len : c->resp.off < c->resp.len;
	return c->side.off < c->side.len || c->resp.len - c->resp.off >= HP_TTRPC_HEADER;
}

/* What each side waits for: input while there is room for it, output while bytes wait. */
int conn_watch(struct loop *l, struct conn *c)
{
	uint32_t down = 0, up = 0;
	int err;

	if (c->req.len < c->req.cap || c->req.off > 0)
		down |= EPOLLIN;
	if (down_has_output(c))
		down |= EPOLLOUT;
	if (c->resp.len < c->resp.cap || c->resp.off > 0)
		up |= EPOLLIN;
	if (c->req.off < c->ready)
		up |= EPOLLOUT;
	err = watch(l, c->down, &c->ends[0], &c->watching[0], down);
	if (!err && c->up >= 0)
		err = watch(l, c->up, &c->ends[1], &c->watching[1], up);
	/* The daemon's answers are read whole: its buffer grows to the frame. */
	if (!err && c->node >= 0)
		err = watch(l, c->node, &c->ends[2], &c->watching[2], EPOLLIN | (c->nreq.off < c->nready ? EPOLLOUT : 0));
	return err;
}

/* 0 when sent or when the socket is full; a negative errno when it failed. */
int send_some(int fd, struct buf *b, size_t until)
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

/*
 * Offload pods: runc's byte stream and the whole frames in `side` share
 * containerd's connection, and only a frame boundary lets the other one in. At a
 * boundary `side` goes first (its frames are complete); runc's next frame starts
 * once its header is here, and then is copied as it comes, as in proxy mode.
 */
static int flush_down_framed(struct conn *c)
{
	for (;;) {
		struct buf *b;
		size_t until;
		int err;

		if (c->frame_left == 0) {
			if (c->side.off < c->side.len) {
				c->from_side = 1;
				c->frame_left = HP_TTRPC_HEADER + be32(c->side.p + c->side.off);
			} else if (c->resp.len - c->resp.off >= HP_TTRPC_HEADER) {
				c->from_side = 0;
				c->frame_left = HP_TTRPC_HEADER + be32(c->resp.p + c->resp.off);
			} else {
				break;
			}
		}
		b = c->from_side ? &c->side : &c->resp;
		until = b->len - b->off < c->frame_left ? b->len : b->off + c->frame_left;
		if (until == b->off)
			break; /* runc's frame goes on in bytes not yet read */
		{
			size_t before = b->off;

			err = send_some(c->down, b, until);
			c->frame_left -= b->off - before;
		}
		if (err < 0)
			return err;
		if (b->off < until)
			break; /* the socket is full */
	}
	if (c->resp.off == c->resp.len)
		c->resp.off = c->resp.len = 0;
	if (c->side.off == c->side.len) {
		c->side.off = c->side.len = 0;
		buf_shrink(&c->side);
	}
	return 0;
}

static int flush_down(struct conn *c)
{
	int err;

	if (c->framed)
		return flush_down_framed(c);
	err = send_some(c->down, &c->resp, c->resp.len);
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
	if (c->req.len == 0)
		buf_shrink(&c->req);
	return 0;
}

static int ensure_scratch(struct loop *l, size_t bound)
{
	unsigned char *bigger;

	if (l->scratch_cap >= bound)
		return 0;
	bigger = realloc(l->scratch, bound);
	if (!bigger)
		return -ENOMEM;
	l->scratch = bigger;
	l->scratch_cap = bound;
	return 0;
}

/* Replaces the complete frame of `len` bytes at req[ready] if it must change;
 * returns the length of what is there now. */
static ssize_t rewrite_at_ready(struct loop *l, struct conn *c, size_t len)
{
	size_t out_len = 0, tail;
	unsigned char *frame;
	int r;

	if ((r = ensure_scratch(l, hp_rewrite_bound(len, l->p->create_options_len))) < 0)
		return r;
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

/* Puts a Create the daemon did not take into runc's stream after the checked
 * frames (before a partial one), rewritten as any Create for runc. */
int runc_inject(struct loop *l, struct conn *c, const unsigned char *frame, size_t len)
{
	size_t out_len = 0;
	int r;

	if ((r = ensure_scratch(l, hp_rewrite_bound(len, l->p->create_options_len))) < 0)
		return r;
	r = hp_rewrite_create(frame, len, l->p->create_options, l->p->create_options_len, l->scratch, l->scratch_cap, &out_len);
	if (r == 1) {
		frame = l->scratch;
		len = out_len;
	}
	buf_compact(&c->req, &c->ready);
	if ((r = buf_reserve(&c->req, c->req.len + len)) < 0)
		return r;
	memmove(c->req.p + c->ready + len, c->req.p + c->ready, c->req.len - c->ready);
	memcpy(c->req.p + c->ready, frame, len);
	c->ready += len;
	c->req.len += len;
	return 0;
}

/* Checks (and rewrites or routes) every complete frame after req[ready]. A header
 * that is not a ttrpc 1.1 request of at most 4 MiB fails the connection. */
static int scan_requests(struct loop *l, struct conn *c)
{
	while (c->req.len - c->ready >= HP_TTRPC_HEADER) {
		const unsigned char *h = c->req.p + c->ready;
		size_t need = HP_TTRPC_HEADER + be32(h);
		ssize_t now;
		int r;

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
		if (l->offload && (r = route_request(l, c, need)) != 0) {
			if (r < 0)
				return r;
			continue;
		}
		now = rewrite_at_ready(l, c, need);
		if (now < 0)
			return (int)now;
		c->ready += (size_t)now;
	}
	return 0;
}

/* ---- events ---------------------------------------------------------------- */

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
		if ((err = flush_node(c)) < 0 && node_down(l, c, strerror(-err)) < 0)
			goto close;
	}
	if ((events & EPOLLOUT) && (err = flush_down(c)) < 0)
		goto close;
	if (c->up < 0 && !down_has_output(c))
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
	if (flush_down(c) < 0 || (c->up < 0 && !down_has_output(c)))
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
	c->node = -1;
	c->framed = l->offload;
	c->up = connect_upstream(l->p->upstream);
	if (c->up < 0) {
		err = c->up;
		free(c);
		return err;
	}
	if ((err = buf_init(&c->req)) < 0 || (err = buf_init(&c->resp)) < 0)
		goto fail;
	c->ends[0] = (struct end){ c, DOWN };
	c->ends[1] = (struct end){ c, UP };
	c->ends[2] = (struct end){ c, NODE };
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
	struct loop l = { .p = p, .listener = p->listener, .ep = -1, .watch = -1, .timer = -1 };
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
	if (p->node_socket && (err = offload_init(&l, &timer_tag)) < 0)
		goto out;
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
			if (tag == &timer_tag) {
				if (!l.runc_gone)
					reconnect_tick(&l);
				continue;
			}
			/* An event of a descriptor closed earlier in the batch is stale. */
			if (e->c->closed || (e->side == UP && e->c->up < 0) || (e->side == NODE && e->c->node < 0))
				continue;
			if (e->side == UP)
				up_event(&l, e->c, evs[i].events);
			else if (e->side == NODE)
				node_event(&l, e->c, evs[i].events);
			else
				down_event(&l, e->c, evs[i].events);
			if (!e->c->closed && conn_watch(&l, e->c) < 0)
				conn_close(&l, e->c);
		}
		free_dead(&l);
		if (l.offload)
			timer_update(&l);
	}
out:
	while (l.conns)
		conn_close(&l, l.conns);
	free_dead(&l);
	if (!l.runc_gone)
		runc_exited(&l); /* the loop failed: stop serving all the same */
	if (l.timer >= 0)
		close(l.timer);
	if (l.ep >= 0)
		close(l.ep);
	offload_free(&l);
	free(l.scratch);
	return err;
}

