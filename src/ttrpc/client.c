/*
 * ttrpc client connections on the event loop (client.h).
 *
 * A connection goes DIALING (a non-blocking connect, each address of the name
 * in turn), HANDSHAKE (TLS only), READY, and ends FAILED, from which it never
 * comes back. Requests made before READY are encoded into the output buffer at
 * once and written when it is. Open calls are kept in a small hash by stream id.
 * While a callback runs (`busy`), a destroy is only noted and done when the
 * outermost dispatch returns.
 */
#include "client.h"

#include "../common/grow.h"
#include "../common/loop.h"
#include "../proto/pb.h"
#include "frame.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUCKETS 64
#define READ_CHUNK 65536

enum state { DIALING, HANDSHAKE, READY, FAILED };

struct hp_tcall {
	struct hp_tclient *c;
	struct hp_tcall *next; /* in its bucket */
	uint32_t stream;
	enum hp_tcall_kind kind;
	int send_closed;
	struct hp_timer deadline;
	struct hp_tcall_fns fns;
	void *ctx;
	char method[64];
};

struct hp_tclient {
	struct hp_loop *loop;
	struct hp_watch w;
	struct hp_timer connect_timer;
	int fd;
	SSL *ssl; /* NULL on a unix socket */
	enum state state;
	int answered;
	int busy, destroyed;
	uint32_t next_stream;
	struct addrinfo *addrs, *trying;
	unsigned char *out;
	size_t out_len, out_cap;
	unsigned char *in;
	size_t in_len, in_cap;
	struct hp_tcall *calls[BUCKETS];
	size_t ncalls;
	char name[200];
	char failure[400]; /* why it failed, once FAILED */
	int fail_errno;
	int fail_tls_refused;
	int was_ready; /* it had connected before it failed */
};

static void client_event(struct hp_watch *w, uint32_t events);
static void fail(struct hp_tclient *c, int err, int tls_refused, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void say(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (!err || !err_len)
		return;
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

/* ---- the open calls ---- */

static struct hp_tcall **bucket(struct hp_tclient *c, uint32_t stream)
{
	return &c->calls[(stream >> 1) % BUCKETS];
}

static struct hp_tcall *find_call(struct hp_tclient *c, uint32_t stream)
{
	struct hp_tcall *k;

	for (k = *bucket(c, stream); k && k->stream != stream; k = k->next)
		;
	return k;
}

/* Takes the call out of the table and stops its timer; the caller frees it. */
static void unlink_call(struct hp_tcall *k)
{
	struct hp_tclient *c = k->c;
	struct hp_tcall **at;

	for (at = bucket(c, k->stream); *at && *at != k; at = &(*at)->next)
		;
	if (*at) {
		*at = k->next;
		c->ncalls--;
	}
	hp_timer_stop(c->loop, &k->deadline);
}

/* Ends the call with st: out of the table, then its `done`, then freed. */
static void finish(struct hp_tcall *k, const struct hp_tstatus *st)
{
	unlink_call(k);
	if (k->fns.done)
		k->fns.done(k->ctx, st);
	free(k);
}

static void finish_local(struct hp_tcall *k, int code, int err, int tls_refused, const char *message)
{
	struct hp_tstatus st = { .code = code, .local = err, .tls_refused = tls_refused, .message = message };

	finish(k, &st);
}

/* ---- output ---- */

static void watch_for(struct hp_tclient *c)
{
	uint32_t want = EPOLLIN;

	if (c->state == DIALING || (c->state == READY && c->out_len > 0))
		want |= EPOLLOUT;
	if (c->state == HANDSHAKE && c->w.events & EPOLLOUT)
		want |= EPOLLOUT; /* the handshake asked for it */
	if (c->fd >= 0 && c->w.events)
		hp_watch_set(c->loop, &c->w, want);
}

/* Writes what is queued; -errno when the connection failed. */
static int flush(struct hp_tclient *c)
{
	size_t done = 0;
	int r = 0;

	if (c->state != READY)
		return 0;
	while (done < c->out_len) {
		if (c->ssl) {
			int n = SSL_write(c->ssl, c->out + done, (int)(c->out_len - done));

			if (n > 0) {
				done += (size_t)n;
				continue;
			}
			switch (SSL_get_error(c->ssl, n)) {
			case SSL_ERROR_WANT_READ:
			case SSL_ERROR_WANT_WRITE:
				goto out;
			case SSL_ERROR_SYSCALL:
				r = errno ? -errno : -ECONNRESET;
				goto out;
			default:
				r = -EPROTO;
				goto out;
			}
		} else {
			ssize_t n = send(c->fd, c->out + done, c->out_len - done, MSG_NOSIGNAL);

			if (n >= 0) {
				done += (size_t)n;
				continue;
			}
			if (errno == EAGAIN || errno == EINTR)
				goto out;
			r = -errno;
			goto out;
		}
	}
out:
	if (done)
		memmove(c->out, c->out + done, c->out_len - done);
	c->out_len -= done;
	return r;
}

/* A frame into the output buffer: header, then `body` sized by `size` and written by `write_body`. */
static int queue_frame(struct hp_tclient *c, uint32_t stream, unsigned type, unsigned flags, const void *data, size_t len)
{
	if (len > HP_TTRPC_MAX_DATA)
		return -EMSGSIZE;
	if (hp_grow(&c->out, &c->out_cap, c->out_len + HP_TTRPC_HEADER + len) < 0)
		return -ENOMEM;
	put_header_flags(c->out + c->out_len, len, stream, type, flags);
	if (len)
		memcpy(c->out + c->out_len + HP_TTRPC_HEADER, data, len);
	c->out_len += HP_TTRPC_HEADER + len;
	return 0;
}

/* Writes now if it can (the caller's request leaves at once), else when writable. */
static void kick(struct hp_tclient *c)
{
	int r = flush(c);

	if (r < 0)
		fail(c, r, 0, "%s", strerror(-r));
	else
		watch_for(c);
}

/* ---- failure and destruction ---- */

static void free_client(struct hp_tclient *c)
{
	if (c->w.events)
		hp_watch_stop(c->loop, &c->w);
	hp_timer_stop(c->loop, &c->connect_timer);
	if (c->ssl)
		SSL_free(c->ssl);
	if (c->fd >= 0)
		close(c->fd);
	if (c->addrs)
		freeaddrinfo(c->addrs);
	free(c->out);
	free(c->in);
	free(c);
}

/* Around anything that may call back: a destroy asked meanwhile is done once
 * the outermost returns. Returns 1 when the client is gone. */
static void enter(struct hp_tclient *c)
{
	c->busy++;
}

static int leave(struct hp_tclient *c)
{
	if (--c->busy > 0 || !c->destroyed)
		return 0;
	free_client(c);
	return 1;
}

/* Fails every open call with the connection's failure (`ready`: it had been made). */
static void fail_calls(struct hp_tclient *c, int code, int ready)
{
	char msg[1024];

	for (int b = 0; b < BUCKETS; b++) {
		while (c->calls[b]) {
			struct hp_tcall *k = c->calls[b];

			if (code == HP_CODE_CANCELLED)
				snprintf(msg, sizeof(msg), "%s: %s: cancelled: the connection was closed", c->name, k->method);
			else if (ready || c->answered)
				snprintf(msg, sizeof(msg), "%s: %s: %s", c->name, k->method, c->failure);
			else
				snprintf(msg, sizeof(msg), "%s", c->failure);
			finish_local(k, code, c->fail_errno, c->fail_tls_refused, msg);
		}
	}
}

static void fail(struct hp_tclient *c, int err, int tls_refused, const char *fmt, ...)
{
	va_list ap;
	int ready;

	if (c->state == FAILED)
		return;
	va_start(ap, fmt);
	vsnprintf(c->failure, sizeof(c->failure), fmt, ap);
	va_end(ap);
	c->fail_errno = err;
	c->fail_tls_refused = tls_refused;
	if (c->w.events)
		hp_watch_stop(c->loop, &c->w);
	hp_timer_stop(c->loop, &c->connect_timer);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	/* Failed before any call hears of it: a call made from a failure's callback fails at once. */
	ready = c->state == READY;
	c->was_ready = ready;
	c->state = FAILED;
	fail_calls(c, HP_CODE_UNAVAILABLE, ready);
}

void hp_tclient_destroy(struct hp_tclient *c)
{
	if (!c || c->destroyed)
		return;
	c->destroyed = 1;
	/* Our own end, not the peer's failure. */
	if (c->state != FAILED) {
		snprintf(c->failure, sizeof(c->failure), "the connection was closed");
		c->fail_errno = -ECANCELED;
	}
	enter(c);
	c->state = FAILED;
	fail_calls(c, HP_CODE_CANCELLED, 1);
	leave(c);
}

int hp_tclient_failed(const struct hp_tclient *c)
{
	return c->state == FAILED;
}

int hp_tclient_answered(const struct hp_tclient *c)
{
	return c->answered;
}

size_t hp_tclient_queued(const struct hp_tclient *c)
{
	return c->out_len;
}

/* ---- input ---- */

/* Response { status = 1 { code = 1, message = 2 }, payload = 2 } */
static int decode_response(const unsigned char *d, size_t n, struct hp_tstatus *st, const unsigned char **msg, size_t *msg_len)
{
	struct pb_field f, g;
	size_t i = 0, j;
	int r;

	*msg = NULL;
	*msg_len = 0;
	while ((r = pb_next(d, n, &i, &f)) > 0) {
		if (f.num == 2 && f.wire == 2) {
			st->payload = f.val;
			st->len = f.vlen;
		} else if (f.num == 1 && f.wire == 2) {
			for (j = 0; (r = pb_next(f.val, f.vlen, &j, &g)) > 0;) {
				if (g.num == 1 && g.wire == 0)
					st->code = (int)(int32_t)g.u;
				else if (g.num == 2 && g.wire == 2) {
					*msg = g.val;
					*msg_len = g.vlen;
				}
			}
			if (r < 0)
				return r;
		}
	}
	return r;
}

static void on_response(struct hp_tclient *c, struct hp_tcall *k, const unsigned char *d, size_t n)
{
	struct hp_tstatus st = { 0 };
	const unsigned char *msg;
	size_t msg_len;
	char text[1024];

	if (decode_response(d, n, &st, &msg, &msg_len) < 0) {
		fail(c, -EBADMSG, 0, "an undecodable answer");
		return;
	}
	if (st.code != 0) {
		snprintf(text, sizeof(text), "%s: %s: %.*s", c->name, k->method, (int)msg_len, msg ? (const char *)msg : "");
		st.message = text;
		st.payload = NULL;
		st.len = 0;
	} else if (!st.payload) {
		st.payload = d; /* an empty response: a valid pointer of length 0 */
	}
	finish(k, &st);
}

/* Dispatches every complete frame in the input buffer. */
static void on_frames(struct hp_tclient *c)
{
	size_t at = 0;

	while (c->state == READY && !c->destroyed && c->in_len - at >= HP_TTRPC_HEADER) {
		const unsigned char *h = c->in + at;
		uint32_t len = be32(h), stream = be32(h + 4);
		struct hp_tcall *k;

		if (len > HP_TTRPC_MAX_DATA) {
			fail(c, -EPROTO, 0, "a frame of %u bytes, over ttrpc's limit", len);
			return;
		}
		if (c->in_len - at < HP_TTRPC_HEADER + (size_t)len)
			break;
		at += HP_TTRPC_HEADER + len;
		k = find_call(c, stream);
		if (!k)
			continue; /* a call cancelled or timed out: its frames are read past */
		if (h[8] == HP_TTRPC_RESPONSE) {
			c->answered = 1;
			on_response(c, k, h + HP_TTRPC_HEADER, len);
		} else if (h[8] == HP_TTRPC_DATA) {
			c->answered = 1;
			if (!(h[9] & HP_TTRPC_NO_DATA) && k->fns.data)
				k->fns.data(k->ctx, h + HP_TTRPC_HEADER, len);
		}
	}
	if (c->destroyed || c->state == FAILED)
		return;
	if (at)
		memmove(c->in, c->in + at, c->in_len - at);
	c->in_len -= at;
}

/* Reads what has come; -errno (-ECONNRESET at EOF) when the connection ended. */
static int read_some(struct hp_tclient *c)
{
	for (int rounds = 0; rounds < 16; rounds++) {
		ssize_t n;

		if (hp_grow(&c->in, &c->in_cap, c->in_len + READ_CHUNK) < 0)
			return -ENOMEM;
		if (c->ssl) {
			int r = SSL_read(c->ssl, c->in + c->in_len, READ_CHUNK);

			if (r <= 0) {
				switch (SSL_get_error(c->ssl, r)) {
				case SSL_ERROR_WANT_READ:
				case SSL_ERROR_WANT_WRITE:
					return 0;
				case SSL_ERROR_ZERO_RETURN:
					return -ECONNRESET;
				case SSL_ERROR_SYSCALL:
					return errno ? -errno : -ECONNRESET;
				default:
					return -EPROTO;
				}
			}
			n = r;
		} else {
			n = recv(c->fd, c->in + c->in_len, READ_CHUNK, 0);
			if (n == 0)
				return -ECONNRESET;
			if (n < 0)
				return errno == EAGAIN || errno == EINTR ? 0 : -errno;
		}
		c->in_len += (size_t)n;
		on_frames(c);
		if (c->destroyed || c->state == FAILED)
			return 0;
	}
	return 0;
}

/* OpenSSL's first queued reason (and the peer certificate's verdict), or `fallback`. */
static const char *tls_reason(struct hp_tclient *c, char *buf, size_t len, const char *fallback)
{
	unsigned long e = ERR_get_error();
	long verify = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;

	if (verify != X509_V_OK)
		snprintf(buf, len, "the peer's certificate: %s", X509_verify_cert_error_string(verify));
	else if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "%s", fallback);
	ERR_clear_error();
	return buf;
}

static void connection_lost(struct hp_tclient *c, int r)
{
	char why[256];

	if (c->ssl && !c->answered && (r == -ECONNRESET || r == -EPROTO || r == -EPIPE))
		/* A TLS 1.3 peer that refuses our certificate ends the connection
		 * once the handshake is done, before it answers anything. */
		fail(c, r, 1, "TLS with the %s failed (certificate refused or not trusted): %s", c->name,
		     r == -EPROTO ? tls_reason(c, why, sizeof(why), "TLS failed") : "the connection was closed before any answer");
	else
		fail(c, r, 0, "%s",
		     r == -ECONNRESET ? "the connection was closed"
		     : r == -EPROTO   ? tls_reason(c, why, sizeof(why), "TLS failed")
				      : strerror(-r));
}

/* ---- connecting ---- */

static void handshake(struct hp_tclient *c)
{
	char why[256];
	int r = SSL_connect(c->ssl);

	if (r == 1) {
		c->state = READY;
		hp_timer_stop(c->loop, &c->connect_timer);
		kick(c);
		return;
	}
	switch (SSL_get_error(c->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		hp_watch_set(c->loop, &c->w, EPOLLIN);
		return;
	case SSL_ERROR_WANT_WRITE:
		hp_watch_set(c->loop, &c->w, EPOLLIN | EPOLLOUT);
		return;
	default:
		fail(c, -EPROTO, 1, "TLS with the %s failed (certificate refused or not trusted): %s", c->name,
		     tls_reason(c, why, sizeof(why), "the connection was closed"));
	}
}

static void connected(struct hp_tclient *c)
{
	int one = 1;

	if (c->addrs) {
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		freeaddrinfo(c->addrs);
		c->addrs = c->trying = NULL;
	}
	if (c->ssl) {
		if (SSL_set_fd(c->ssl, c->fd) != 1) {
			fail(c, -ENOMEM, 0, "TLS with the %s: no session", c->name);
			return;
		}
		c->state = HANDSHAKE;
		handshake(c);
		return;
	}
	c->state = READY;
	hp_timer_stop(c->loop, &c->connect_timer);
	kick(c);
}

/* Starts connecting to the next address; at the last one's failure, fails with `last`. */
static void dial_next(struct hp_tclient *c, int last)
{
	while (c->trying) {
		struct addrinfo *ai = c->trying;
		int fd;

		c->trying = ai->ai_next;
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			last = -errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
			last = -errno;
			close(fd);
			continue;
		}
		c->fd = fd;
		if ((last = hp_watch_start(c->loop, &c->w, fd, EPOLLIN | EPOLLOUT, client_event)) < 0) {
			close(fd);
			c->fd = -1;
			continue;
		}
		return;
	}
	fail(c, last, 0, "%s unreachable: %s", c->name, strerror(-last));
}

static void dialing_event(struct hp_tclient *c)
{
	int soerr = 0;
	socklen_t len = sizeof(soerr);

	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
		soerr = errno;
	if (soerr == 0) {
		connected(c);
		return;
	}
	hp_watch_stop(c->loop, &c->w);
	close(c->fd);
	c->fd = -1;
	if (c->addrs)
		dial_next(c, -soerr);
	else
		fail(c, -soerr, 0, "%s unreachable: %s", c->name, strerror(soerr));
}

static void connect_timeout(struct hp_timer *t)
{
	struct hp_tclient *c = container_of(t, struct hp_tclient, connect_timer);

	enter(c);
	fail(c, -ETIMEDOUT, 0, "%s unreachable: %s", c->name, c->state == HANDSHAKE ? "no TLS handshake in time" : "no answer in time");
	leave(c);
}

static void client_event(struct hp_watch *w, uint32_t events)
{
	struct hp_tclient *c = container_of(w, struct hp_tclient, w);
	int r;

	enter(c);
	if (c->state == DIALING) {
		dialing_event(c);
	} else if (c->state == HANDSHAKE) {
		handshake(c);
	} else if (c->state == READY) {
		if ((r = flush(c)) == 0 && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
			r = read_some(c);
		if (r < 0)
			connection_lost(c, r);
		else if (c->state == READY && !c->destroyed)
			kick(c);
	}
	leave(c);
}

static struct hp_tclient *new_client(struct hp_loop *l, const char *name, long long connect_ms)
{
	struct hp_tclient *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->loop = l;
	c->fd = -1;
	c->next_stream = 1;
	c->state = DIALING;
	snprintf(c->name, sizeof(c->name), "%s", name);
	if (connect_ms > 0)
		hp_timer_start(l, &c->connect_timer, connect_ms, connect_timeout);
	return c;
}

struct hp_tclient *hp_tclient_unix(struct hp_loop *l, const char *path, const char *name, long long connect_ms, char *err, size_t err_len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct hp_tclient *c;
	int fd, r;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		say(err, err_len, "%s: socket path too long", name);
		return NULL;
	}
	if (!(c = new_client(l, name, connect_ms))) {
		say(err, err_len, "%s: out of memory", name);
		return NULL;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fail(c, -errno, 0, "%s unreachable: %s", name, strerror(errno));
		return c;
	}
	c->fd = fd;
	/* A unix socket connects at once or not at all (EAGAIN: its backlog is full). */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS && errno != EAGAIN) {
		fail(c, -errno, 0, "%s unreachable: %s", name, strerror(errno));
		return c;
	}
	if ((r = hp_watch_start(l, &c->w, fd, EPOLLIN | EPOLLOUT, client_event)) < 0) {
		fail(c, r, 0, "%s unreachable: %s", name, strerror(-r));
		return c;
	}
	return c;
}

int hp_split_address(const char *address, char *host, size_t host_len, const char **port)
{
	const char *colon;
	size_t n;

	if (address[0] == '[') {
		const char *end = strchr(address, ']');

		if (!end || end[1] != ':')
			return -EINVAL;
		n = (size_t)(end - address - 1);
		colon = end + 1;
		address++;
	} else {
		colon = strrchr(address, ':');
		if (!colon)
			return -EINVAL;
		n = (size_t)(colon - address);
	}
	if (n == 0 || n >= host_len || colon[1] == '\0')
		return -EINVAL;
	memcpy(host, address, n);
	host[n] = '\0';
	*port = colon + 1;
	return 0;
}

struct hp_tclient *hp_tclient_tls(struct hp_loop *l, const char *address, struct ssl_ctx_st *tls, const char *server_name,
				  const char *name, long long connect_ms, char *err, size_t err_len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct hp_tclient *c;
	char host[256], why[256];
	const char *port;
	int r;

	if (hp_split_address(address, host, sizeof(host), &port) < 0) {
		say(err, err_len, "%s address %s: not host:port", name, address);
		return NULL;
	}
	if (!(c = new_client(l, name, connect_ms))) {
		say(err, err_len, "%s: out of memory", name);
		return NULL;
	}
	c->ssl = SSL_new(tls);
	if (!c->ssl || SSL_set_tlsext_host_name(c->ssl, server_name) != 1 || SSL_set1_host(c->ssl, server_name) != 1) {
		fail(c, -ENOMEM, 0, "TLS with the %s: %s", name, tls_reason(c, why, sizeof(why), "no session"));
		return c;
	}
	/* A numeric address (the agent's is one) is not looked up: this does not block then. */
	if ((r = getaddrinfo(host, port, &hints, &c->addrs)) != 0) {
		c->addrs = NULL;
		fail(c, -EHOSTUNREACH, 0, "%s unreachable: %s", name, gai_strerror(r));
		return c;
	}
	c->trying = c->addrs;
	dial_next(c, -EHOSTUNREACH);
	return c;
}

/* ---- calls ---- */

static void call_timeout(struct hp_timer *t)
{
	struct hp_tcall *k = container_of(t, struct hp_tcall, deadline);
	struct hp_tclient *c = k->c;
	char msg[400];

	snprintf(msg, sizeof(msg), "%s: %s: no answer in time", c->name, k->method);
	/* Its late answer is read past. A stream's side is closed: the peer stops it. */
	enter(c);
	if (k->kind != HP_TCALL_UNARY && !k->send_closed && c->state != FAILED) {
		queue_frame(c, k->stream, HP_TTRPC_DATA, HP_TTRPC_REMOTE_CLOSED | HP_TTRPC_NO_DATA, NULL, 0);
		kick(c);
	}
	/* kick may have failed the connection, and the call with it */
	if (c->state != FAILED)
		finish_local(k, HP_CODE_DEADLINE_EXCEEDED, -ETIMEDOUT, 0, msg);
	leave(c);
}

struct hp_tcall *hp_tcall_start(struct hp_tclient *c, const char *service, const char *method, const void *req, size_t req_len,
				const struct hp_tcall_opts *o, const struct hp_tcall_fns *fns, void *ctx)
{
	static const struct hp_tcall_opts unary = { HP_TCALL_UNARY, 0, NULL, 0 };
	struct pb_writer w = { NULL, 0 };
	struct hp_tcall *k;
	char msg[1024];
	size_t at;
	int failed;

	if (!o)
		o = &unary;
	if (c->state == FAILED || c->destroyed) {
		struct hp_tstatus st = { .code = c->destroyed ? HP_CODE_CANCELLED : HP_CODE_UNAVAILABLE, .local = c->fail_errno,
					 .tls_refused = c->fail_tls_refused, .message = msg };

		if (c->was_ready || c->answered)
			snprintf(msg, sizeof(msg), "%s: %s: %s", c->name, method, c->failure);
		else
			snprintf(msg, sizeof(msg), "%s", c->failure);
		if (fns->done)
			fns->done(ctx, &st);
		return NULL;
	}
	if (!(k = calloc(1, sizeof(*k))))
		goto nomem;
	k->c = c;
	k->kind = o->kind;
	k->fns = *fns;
	k->ctx = ctx;
	k->stream = c->next_stream;
	snprintf(k->method, sizeof(k->method), "%s", method);
	/* Request { service = 1, method = 2, payload = 3, timeout_nano = 4, metadata = 5 { key = 1, value = 2 } },
	 * sized, then written after its header in the output buffer. */
	at = c->out_len;
	for (int pass = 0; pass < 2; pass++) {
		pbw_string(&w, 1, service);
		pbw_string(&w, 2, method);
		pbw_bytes(&w, 3, req, req_len);
		pbw_uint(&w, 4, o->timeout_ms > 0 ? (uint64_t)o->timeout_ms * 1000000 : 0);
		for (size_t i = 0; i < o->n_metadata; i++) {
			size_t kl = strlen(o->metadata[i].key), vl = strlen(o->metadata[i].value);

			pbw_varint(&w, (5u << 3) | 2);
			pbw_varint(&w, 1 + varint_len(kl) + kl + 1 + varint_len(vl) + vl);
			pbw_bytes(&w, 1, o->metadata[i].key, kl);
			pbw_bytes(&w, 2, o->metadata[i].value, vl);
		}
		if (pass == 0) {
			if (w.n > HP_TTRPC_MAX_DATA) {
				struct hp_tstatus st = { .code = HP_CODE_INVALID_ARGUMENT, .message = msg };

				snprintf(msg, sizeof(msg), "%s: %s: a request of %zu bytes is over ttrpc's limit", c->name, method, w.n);
				free(k);
				if (fns->done)
					fns->done(ctx, &st);
				return NULL;
			}
			if (hp_grow(&c->out, &c->out_cap, at + HP_TTRPC_HEADER + w.n) < 0) {
				free(k);
				goto nomem;
			}
			put_header_flags(c->out + at, w.n, k->stream, HP_TTRPC_REQUEST,
					 o->kind == HP_TCALL_UNARY ? 0 : HP_TTRPC_REMOTE_OPEN);
			w = (struct pb_writer){ c->out + at + HP_TTRPC_HEADER, 0 };
		}
	}
	c->out_len = at + HP_TTRPC_HEADER + w.n;
	c->next_stream += 2;
	k->next = *bucket(c, k->stream);
	*bucket(c, k->stream) = k;
	c->ncalls++;
	if (o->timeout_ms > 0)
		hp_timer_start(c->loop, &k->deadline, o->timeout_ms, call_timeout);
	enter(c);
	kick(c);
	/* A write that failed at once failed the call too. */
	failed = c->state == FAILED;
	leave(c);
	return failed ? NULL : k;
nomem:;
	struct hp_tstatus st = { .code = HP_CODE_INTERNAL, .local = -ENOMEM, .message = msg };

	snprintf(msg, sizeof(msg), "%s: %s: out of memory", c->name, method);
	if (fns->done)
		fns->done(ctx, &st);
	return NULL;
}

int hp_tcall_send(struct hp_tcall *k, const void *m, size_t len)
{
	int r;

	if (k->send_closed || k->c->state == FAILED)
		return -EPIPE;
	if ((r = queue_frame(k->c, k->stream, HP_TTRPC_DATA, 0, m, len)) < 0)
		return r;
	enter(k->c);
	kick(k->c);
	leave(k->c);
	return 0;
}

void hp_tcall_close_send(struct hp_tcall *k)
{
	struct hp_tclient *c = k->c;

	if (k->send_closed || c->state == FAILED)
		return;
	k->send_closed = 1;
	queue_frame(c, k->stream, HP_TTRPC_DATA, HP_TTRPC_REMOTE_CLOSED | HP_TTRPC_NO_DATA, NULL, 0);
	enter(c);
	kick(c);
	leave(c);
}

void hp_tcall_cancel(struct hp_tcall *k)
{
	struct hp_tclient *c = k->c;

	if (k->kind != HP_TCALL_UNARY && !k->send_closed && c->state != FAILED)
		queue_frame(c, k->stream, HP_TTRPC_DATA, HP_TTRPC_REMOTE_CLOSED | HP_TTRPC_NO_DATA, NULL, 0);
	unlink_call(k);
	free(k);
	if (c->state == FAILED)
		return;
	enter(c);
	kick(c);
	leave(c);
}
