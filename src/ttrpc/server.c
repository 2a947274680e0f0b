/*
 * The ttrpc server on the event loop (server.h). Each connection reads frames
 * into a buffer, hands every complete request to the handler and writes the
 * replies as they come; while it dispatches (`busy`) a close is only noted, and
 * done once it returns.
 */
#include "server.h"

#include "../common/grow.h"
#include "../common/loop.h"
#include "../proto/pb.h"
#include "frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define READ_CHUNK 65536

struct hp_tsconn {
	struct hp_tserver *server;
	struct hp_watch w;
	unsigned char *in, *out;
	size_t in_len, in_cap, out_len, out_cap;
	struct hp_treq *reqs; /* open */
	struct hp_tsconn_user user;
	struct hp_tsconn *prev, *next;
	int busy, closing;
};

struct hp_tserver {
	struct hp_loop *loop;
	struct hp_watch listener;
	struct hp_tserver_opts o;
	struct hp_tsconn *conns;
};

struct hp_tsconn_user *hp_tsconn_user(struct hp_tsconn *c)
{
	return &c->user;
}

static void unlink_req(struct hp_treq *r)
{
	struct hp_tsconn *c = r->conn;

	if (!c)
		return;
	if (r->prev)
		r->prev->next = r->next;
	else
		c->reqs = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->prev = r->next = NULL;
	r->conn = NULL;
}

static void free_conn(struct hp_tsconn *c)
{
	struct hp_tserver *s = c->server;

	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->in);
	free(c->out);
	free(c);
}

/* The connection ends: its requests are cancelled, its owner told, then it goes. */
static void close_conn(struct hp_tsconn *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	c->busy++;
	hp_watch_stop(c->server->loop, &c->w);
	close(c->w.fd);
	while (c->reqs) {
		struct hp_treq *r = c->reqs;

		unlink_req(r);
		if (r->on_cancel)
			r->on_cancel(r);
	}
	if (c->user.on_close)
		c->user.on_close(c, c->user.value);
	c->busy--;
	if (c->busy == 0)
		free_conn(c);
}

static int flush(struct hp_tsconn *c)
{
	size_t done = 0;

	while (done < c->out_len) {
		ssize_t n = send(c->w.fd, c->out + done, c->out_len - done, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			return -errno;
		}
		done += (size_t)n;
	}
	if (done)
		memmove(c->out, c->out + done, c->out_len - done);
	c->out_len -= done;
	hp_watch_set(c->server->loop, &c->w, EPOLLIN | (c->out_len ? EPOLLOUT : 0));
	return 0;
}

void hp_treq_reply(struct hp_treq *r, int code, const char *message, const void *payload, size_t len, const void *trailer,
		   size_t trailer_len)
{
	struct hp_tsconn *c = r->conn;
	struct pb_writer w = { NULL, 0 };
	size_t at, status_len;

	if (!c || c->closing)
		goto out;
	unlink_req(r);
again:
	/* Response { status = 1 { code = 1, message = 2 }, payload = 2 }, then the trailer */
	status_len = 0;
	if (code) {
		struct pb_writer sw = { NULL, 0 };

		pbw_uint(&sw, 1, (uint64_t)(uint32_t)code);
		pbw_string(&sw, 2, message);
		status_len = sw.n;
	}
	at = c->out_len;
	for (int pass = 0; pass < 2; pass++) {
		if (code) {
			pbw_varint(&w, 1u << 3 | 2);
			pbw_varint(&w, status_len);
			pbw_uint(&w, 1, (uint64_t)(uint32_t)code);
			pbw_string(&w, 2, message);
		} else if (len) {
			pbw_bytes(&w, 2, payload, len);
		}
		pbw_raw(&w, trailer, trailer_len);
		if (pass == 0) {
			if (w.n > HP_TTRPC_MAX_DATA) {
				code = 13; /* INTERNAL */
				message = "the reply is over ttrpc's limit";
				trailer_len = 0;
				w = (struct pb_writer){ NULL, 0 };
				goto again;
			}
			if (hp_grow(&c->out, &c->out_cap, at + HP_TTRPC_HEADER + w.n) < 0) {
				close_conn(c);
				goto out;
			}
			put_header(c->out + at, w.n, r->stream, HP_TTRPC_RESPONSE);
			w = (struct pb_writer){ c->out + at + HP_TTRPC_HEADER, 0 };
		}
	}
	c->out_len = at + HP_TTRPC_HEADER + w.n;
	if (flush(c) < 0)
		close_conn(c);
out:
	free(r->payload);
	free(r);
}

/* Request { service = 1, method = 2, payload = 3, timeout_nano = 4 } into r; -EBADMSG when it does not decode. */
static int decode_request(const unsigned char *d, size_t n, struct hp_treq *r)
{
	struct pb_field f;
	size_t i = 0;
	int rc;

	while ((rc = pb_next(d, n, &i, &f)) > 0) {
		if (f.num == 1 && f.wire == 2 && f.vlen < sizeof(r->service)) {
			memcpy(r->service, f.val, f.vlen);
			r->service[f.vlen] = '\0';
		} else if (f.num == 2 && f.wire == 2 && f.vlen < sizeof(r->method)) {
			memcpy(r->method, f.val, f.vlen);
			r->method[f.vlen] = '\0';
		} else if (f.num == 3 && f.wire == 2) {
			r->payload = malloc(f.vlen ? f.vlen : 1);
			if (!r->payload)
				return -ENOMEM;
			memcpy(r->payload, f.val, f.vlen);
			r->len = f.vlen;
		} else if (f.num == 4 && f.wire == 0) {
			r->timeout_ms = (long long)(f.u / 1000000);
		}
	}
	if (rc == 0 && !r->payload && !(r->payload = malloc(1)))
		return -ENOMEM;
	return rc;
}

static void on_request(struct hp_tsconn *c, uint32_t stream, const unsigned char *d, size_t n)
{
	struct hp_tserver *s = c->server;
	struct hp_treq *r = calloc(1, sizeof(*r));

	if (!r) {
		close_conn(c);
		return;
	}
	r->stream = stream;
	r->conn = c;
	r->next = c->reqs;
	if (c->reqs)
		c->reqs->prev = r;
	c->reqs = r;
	if (decode_request(d, n, r) < 0) {
		hp_treq_reply(r, 3 /* INVALID_ARGUMENT */, "the request does not decode", NULL, 0, NULL, 0);
		return;
	}
	s->o.handle(s->o.ctx, r);
}

static void conn_event(struct hp_watch *w, uint32_t events)
{
	struct hp_tsconn *c = container_of(w, struct hp_tsconn, w);
	struct hp_tserver *s = c->server;
	int eof = 0;

	c->busy++;
	if ((events & EPOLLOUT) && flush(c) < 0)
		eof = 1;
	while (!eof && !c->closing && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
		ssize_t n;
		size_t at = 0;

		if (hp_grow(&c->in, &c->in_cap, c->in_len + READ_CHUNK) < 0) {
			eof = 1;
			break;
		}
		n = recv(w->fd, c->in + c->in_len, READ_CHUNK, 0);
		if (n <= 0) {
			if (n < 0 && (errno == EAGAIN || errno == EINTR))
				break;
			eof = 1;
			break;
		}
		c->in_len += (size_t)n;
		while (!c->closing && c->in_len - at >= HP_TTRPC_HEADER) {
			const unsigned char *h = c->in + at;
			uint32_t len = be32(h);

			if (len > HP_TTRPC_MAX_DATA) {
				if (s->o.on_error)
					s->o.on_error(s->o.ctx, "a frame over ttrpc's limit");
				eof = 1;
				break;
			}
			if (c->in_len - at < HP_TTRPC_HEADER + (size_t)len)
				break;
			at += HP_TTRPC_HEADER + len;
			if (h[8] == HP_TTRPC_REQUEST)
				on_request(c, be32(h + 4), h + HP_TTRPC_HEADER, len);
			/* Data frames and others: unary calls only here. */
		}
		if (c->closing)
			break;
		if (at)
			memmove(c->in, c->in + at, c->in_len - at);
		c->in_len -= at;
		if ((size_t)n < READ_CHUNK)
			break;
	}
	if (eof)
		close_conn(c);
	c->busy--;
	if (c->closing && c->busy == 0)
		free_conn(c);
}

static void accept_event(struct hp_watch *w, uint32_t events)
{
	struct hp_tserver *s = container_of(w, struct hp_tserver, listener);

	(void)events;
	for (;;) {
		int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct hp_tsconn *c;

		if (fd < 0)
			return;
		if (!(c = calloc(1, sizeof(*c)))) {
			close(fd);
			continue;
		}
		c->server = s;
		if (hp_watch_start(s->loop, &c->w, fd, EPOLLIN, conn_event) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
	}
}

int hp_tserver_listen(struct hp_loop *l, const char *path, const struct hp_tserver_opts *o, struct hp_tserver **out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct hp_tserver *s;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	if (!(s = calloc(1, sizeof(*s))))
		return -ENOMEM;
	s->loop = l;
	s->o = *o;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		free(s);
		return r;
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || chmod(path, 0600) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		close(fd);
		free(s);
		return r;
	}
	if ((r = hp_watch_start(l, &s->listener, fd, EPOLLIN, accept_event)) < 0) {
		close(fd);
		unlink(path);
		free(s);
		return r;
	}
	*out = s;
	return 0;
}

void hp_tserver_close(struct hp_tserver *s)
{
	if (!s)
		return;
	struct hp_tsconn *c, *next;

	hp_watch_stop(s->loop, &s->listener);
	close(s->listener.fd);
	/* Not from a connection's own callback: each goes at once. */
	for (c = s->conns; c; c = next) {
		next = c->next;
		close_conn(c);
	}
	free(s);
}
