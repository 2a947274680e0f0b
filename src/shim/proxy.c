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
 */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF_BASE 16384u
#define DRAIN_MS 2000
#define MAX_EVENTS 32
#define RECONNECT_MS 250
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
	uint64_t u;		    /* varint value (wire type 0) */
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
	f->u = 0;
	switch (f->wire) {
	case 0:
		if (pb_varint(p, len, i, &f->u) < 0)
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

/* A request envelope: Request { service = 1; method = 2; payload = 3;
 * timeout_nano = 4; metadata = 5; }, as in Go the last occurrence of a field
 * winning. */
struct envelope {
	const unsigned char *service, *method, *payload, *payload_tag;
	size_t slen, mlen, plen, payloads_total; /* payloads_total: every field 3, tags included */
};

/* 0, or -EBADMSG when the envelope (data of a frame) does not decode. */
static int envelope_read(const unsigned char *data, size_t dlen, struct envelope *e)
{
	struct pb_field f;
	size_t i = 0;
	int r;

	memset(e, 0, sizeof(*e));
	while ((r = pb_next(data, dlen, &i, &f)) > 0) {
		if (f.wire != 2)
			continue;
		if (f.num == 1) {
			e->service = f.val;
			e->slen = f.vlen;
		} else if (f.num == 2) {
			e->method = f.val;
			e->mlen = f.vlen;
		} else if (f.num == 3) {
			e->payload_tag = f.start;
			e->payload = f.val;
			e->plen = f.vlen;
			e->payloads_total += f.total;
		}
	}
	return r < 0 ? -EBADMSG : 0;
}

int hp_rewrite_create(const unsigned char *frame, size_t len, const unsigned char *options, size_t options_len,
		      unsigned char *out, size_t cap, size_t *out_len)
{
	const unsigned char *data = frame + HP_TTRPC_HEADER, *payload;
	size_t dlen, i = 0, plen, kept = 0;
	size_t new_payload, new_dlen, o;
	struct envelope env;
	struct pb_field f;
	int r, had_options = 0;

	if (len < HP_TTRPC_HEADER || be32(frame) != len - HP_TTRPC_HEADER)
		return -EINVAL;
	dlen = len - HP_TTRPC_HEADER;
	if (frame[8] != HP_TTRPC_REQUEST)
		return 0;
	if (envelope_read(data, dlen, &env) < 0 || !is(env.service, env.slen, TASK_SERVICE) || !is(env.method, env.mlen, "Create") ||
	    !env.payload_tag)
		return 0;
	payload = env.payload;
	plen = env.plen;
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
	new_dlen = dlen - env.payloads_total + 1 + varint_len(new_payload) + new_payload;
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
		if (f.start != env.payload_tag)
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

/* ---- the node daemon's messages ---------------------------------------------- */

/* A protobuf writer that only counts while `p` is NULL: the same calls size a
 * message and then write it. */
struct pb_writer {
	unsigned char *p;
	size_t n;
};

static void pbw_raw(struct pb_writer *w, const void *v, size_t len)
{
	if (w->p)
		memcpy(w->p + w->n, v, len);
	w->n += len;
}

static void pbw_varint(struct pb_writer *w, uint64_t v)
{
	unsigned char b[10];

	pbw_raw(w, b, put_varint(b, v));
}

static void pbw_bytes(struct pb_writer *w, uint32_t field, const void *v, size_t len)
{
	pbw_varint(w, (uint64_t)field << 3 | 2);
	pbw_varint(w, len);
	pbw_raw(w, v, len);
}

/* proto3: an empty string is not written */
static void pbw_string(struct pb_writer *w, uint32_t field, const char *s)
{
	if (s && *s)
		pbw_bytes(w, field, s, strlen(s));
}

static void pbw_uint(struct pb_writer *w, uint32_t field, uint64_t v)
{
	if (v) {
		pbw_varint(w, (uint64_t)field << 3);
		pbw_varint(w, v);
	}
}

static void put_header(unsigned char *out, size_t dlen, uint32_t stream, unsigned type)
{
	out[0] = (unsigned char)(dlen >> 24);
	out[1] = (unsigned char)(dlen >> 16);
	out[2] = (unsigned char)(dlen >> 8);
	out[3] = (unsigned char)dlen;
	out[4] = (unsigned char)(stream >> 24);
	out[5] = (unsigned char)(stream >> 16);
	out[6] = (unsigned char)(stream >> 8);
	out[7] = (unsigned char)stream;
	out[8] = (unsigned char)type;
	out[9] = 0;
}

static void attach_request(struct pb_writer *w, const struct hp_attach *a)
{
	pbw_string(w, 1, a->namespace);
	pbw_string(w, 2, a->group);
	pbw_string(w, 3, a->containerd_address);
	pbw_string(w, 4, a->ttrpc_address);
	pbw_string(w, 5, a->runc_address);
	pbw_string(w, 6, a->publish_binary);
	pbw_string(w, 7, a->bundle);
	pbw_string(w, 8, a->config_path);
	pbw_uint(w, 9, a->proxy_pid);
	pbw_uint(w, 10, a->debug ? 1 : 0);
}

int hp_attach_frame(const struct hp_attach *a, unsigned char *out, size_t cap)
{
	struct pb_writer size = { NULL, 0 }, w;
	size_t payload, dlen;

	attach_request(&size, a);
	payload = size.n;
	size.n = 0;
	pbw_string(&size, 1, HP_NODE_SERVICE);
	pbw_string(&size, 2, "Attach");
	pbw_varint(&size, 3 << 3 | 2);
	pbw_varint(&size, payload);
	dlen = size.n + payload;
	if (dlen > HP_TTRPC_MAX_DATA)
		return -EMSGSIZE;
	if (cap < HP_TTRPC_HEADER + dlen || HP_TTRPC_HEADER + dlen > INT32_MAX)
		return -ENOSPC;
	put_header(out, dlen, HP_ATTACH_STREAM, HP_TTRPC_REQUEST);
	w = (struct pb_writer){ out + HP_TTRPC_HEADER, 0 };
	pbw_string(&w, 1, HP_NODE_SERVICE);
	pbw_string(&w, 2, "Attach");
	pbw_varint(&w, 3 << 3 | 2);
	pbw_varint(&w, payload);
	attach_request(&w, a);
	return (int)(HP_TTRPC_HEADER + w.n);
}

int hp_take_placed(unsigned char *frame, size_t *len)
{
	unsigned char *data = frame + HP_TTRPC_HEADER;
	size_t dlen, i = 0, o = 0;
	struct pb_field f;
	uint64_t placed = 0;
	int r;

	if (*len < HP_TTRPC_HEADER || be32(frame) != *len - HP_TTRPC_HEADER || frame[8] != HP_TTRPC_RESPONSE)
		return -EINVAL;
	dlen = *len - HP_TTRPC_HEADER;
	while ((r = pb_next(data, dlen, &i, &f)) > 0) {
		if (f.num == HP_PLACED_FIELD && f.wire == 0)
			placed = f.u;
	}
	if (r < 0)
		return -EBADMSG;
	if (placed > INT32_MAX)
		placed = INT32_MAX; /* neither 1 nor 2: no placement the proxy knows */
	/* Second pass: every field but 15 slides down over the removed ones. */
	i = 0;
	while (pb_next(data, dlen, &i, &f) > 0) {
		if (f.num == HP_PLACED_FIELD && f.wire == 0)
			continue;
		memmove(data + o, f.start, f.total);
		o += f.total;
	}
	put_header(frame, o, be32(frame + 4), HP_TTRPC_RESPONSE); /* flags: 0 for unary */
	*len = HP_TTRPC_HEADER + o;
	return (int)placed;
}

/* ---- the relay ------------------------------------------------------------- */

struct buf {
	unsigned char *p;
	size_t cap, off, len; /* [off, len) holds bytes not yet sent */
};

struct conn;

/* What an epoll event names: one of a pair's connections. */
enum side { DOWN, UP, NODE };

struct end {
	struct conn *c;
	enum side side;
};

/* What a request sent to the daemon becomes when the daemon is gone. */
enum kind {
	ATTACH, /* ours: nothing to answer */
	CREATE, /* to runc ("prefer") or failed, if the daemon never saw it; UNAVAILABLE if it may have */
	WAIT,	/* held for the next daemon connection */
	OTHER,	/* UNAVAILABLE */
};

/* A request the daemon has not answered yet, or a Wait held for it. */
struct pending {
	struct pending *next;
	uint32_t stream;
	enum kind kind;
	int sent;	      /* released after Attach: the daemon may have acted on it */
	size_t len;	      /* of frame: kept for CREATE and WAIT only */
	unsigned char frame[];
};

struct conn {
	int down, up; /* containerd's connection; ours to runc's shim (-1 once it closed) */
	int node;     /* ours to the node daemon: -1 until a request needs it, or after it broke */
	struct end ends[3];
	struct buf req;	 /* containerd → runc */
	size_t ready;	 /* req[off, ready) are checked frames; [ready, len) a partial one */
	struct buf resp; /* runc → containerd */
	uint32_t watching[3];
	int closed;
	int framed;		 /* offload pod: containerd's stream is followed frame by frame */
	/* Offload pods only. */
	struct buf side;	 /* whole frames for containerd: the daemon's answers, ours */
	size_t frame_left;	 /* of the frame being sent to containerd; 0 at a boundary */
	int from_side;		 /* which stream that frame comes from */
	struct buf nreq;	 /* → daemon: [off, nready) released, the rest waits for Attach */
	size_t nready;
	struct buf nresp;	 /* daemon → us */
	int attached;		 /* the daemon has answered Attach on `node` */
	struct pending *pending; /* sent or queued to the daemon, unanswered */
	struct pending *held;	 /* Waits for the next daemon connection */
	char node_why[160];	 /* why the daemon is down, for the errors containerd sees */
	struct conn *next;
};

/* A task the daemon holds (HP_PLACED_DAEMON). */
struct route {
	struct route *next;
	size_t len;
	char id[];
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
	/* Offload pods only. */
	int offload;
	unsigned char *attach; /* the Attach frame, the same for every daemon connection */
	size_t attach_len;
	struct route *routes;
	int timer, timer_armed; /* ticks every RECONNECT_MS while a Wait is held */
};

/* epoll tags of the descriptors that are not a pair's */
static char listener_tag, runc_tag, timer_tag;

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

static void buf_free(struct buf *b)
{
	free(b->p);
	*b = (struct buf){ 0 };
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

/* Appends len bytes, growing the buffer (at least doubling) if they do not fit. */
static int buf_append(struct buf *b, const unsigned char *p, size_t len)
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
static void buf_shrink(struct buf *b)
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

static void pending_free(struct pending *list)
{
	while (list) {
		struct pending *next = list->next;

		free(list);
		list = next;
	}
}

/* The daemon connection's end; the pair's pending requests are left to the caller. */
static void node_close(struct conn *c)
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

static void conn_close(struct loop *l, struct conn *c)
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
static int conn_watch(struct loop *l, struct conn *c)
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

static int flush_node(struct conn *c)
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
static int runc_inject(struct loop *l, struct conn *c, const unsigned char *frame, size_t len)
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

/* ---- routing for offload pods ------------------------------------------------ */

static struct route *route_find(struct loop *l, const unsigned char *id, size_t len)
{
	struct route *r;

	for (r = l->routes; r; r = r->next)
		if (r->len == len && memcmp(r->id, id, len) == 0)
			return r;
	return NULL;
}

static int route_to_daemon(struct loop *l, const unsigned char *id, size_t len)
{
	struct route *r;

	if (route_find(l, id, len))
		return 0;
	r = malloc(sizeof(*r) + len);
	if (!r)
		return -ENOMEM;
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
	int keep = kind == CREATE || kind == WAIT;
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
static int node_down(struct loop *l, struct conn *c, const char *why)
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
	int placed, err = 0;

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
			if (placed == HP_PLACED_DAEMON)
				err = route_to_daemon(l, id, idlen);
			else if (placed == HP_PLACED_RUNC)
				route_to_runc(l, id, idlen);
		}
		/* Left to the host: runc's answer is containerd's, the daemon's is dropped. */
		if (!err)
			err = placed == HP_PLACED_RUNC ? runc_inject(l, c, p->frame, p->len) : buf_append(&c->side, frame, len);
		break;
	case WAIT:
	case OTHER:
		err = buf_append(&c->side, frame, len);
		break;
	}
	free(p);
	if (err < 0)
		snprintf(why, why_len, "%s", strerror(-err));
	return err;
}

/* The daemon's connection is readable (or broke): whole frames are handled. */
static void node_event(struct loop *l, struct conn *c, uint32_t events)
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
static int route_request(struct loop *l, struct conn *c, size_t len)
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
		if (is(e.method, e.mlen, "Shutdown") || !e.payload || !task_id(&e, &id, &idlen) || !route_find(l, id, idlen))
			return 0;
		kind = is(e.method, e.mlen, "Wait") ? WAIT : OTHER;
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
		else if (kind == OTHER)
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

/* Offload pods: tries the daemon again for every pair holding a Wait. */
static void reconnect_tick(struct loop *l)
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
static void timer_update(struct loop *l)
{
	struct itimerspec on = { { 0, RECONNECT_MS * 1000000L }, { 0, RECONNECT_MS * 1000000L } }, off = { 0 };
	struct conn *c;
	int want = 0;

	for (c = l->conns; c && !want; c = c->next)
		want = c->held && c->node < 0;
	if (want != l->timer_armed && timerfd_settime(l->timer, 0, want ? &on : &off, NULL) == 0)
		l->timer_armed = want;
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

/* Offload pods: the Attach frame and the reconnect timer. */
static int offload_init(struct loop *l)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &timer_tag };
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
	if (p->node_socket && (err = offload_init(&l)) < 0)
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
	while (l.routes) {
		struct route *r = l.routes;

		l.routes = r->next;
		free(r);
	}
	free(l.attach);
	free(l.scratch);
	return err;
}
