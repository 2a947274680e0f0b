/*
 * The DPU agent's API from C (agent-conn.h): TCP, then TLS with OpenSSL on a
 * non-blocking socket whose waits poll(2) until the call's deadline, then ttrpc
 * frames: a Request { service = 1, method = 2, payload = 3, timeout_nano = 4 }
 * on an odd stream id, answered by a Response { status = 1, payload = 2 } whose
 * status is a google.rpc.Status { code = 1, message = 2 }.
 */
#include "agent-conn.h"

#include "../proto/pb.h"
#include "../ttrpc/frame.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct hp_agent {
	SSL_CTX *ctx;
	SSL *ssl;
	int fd;
	int timeout_ms;
	uint32_t next_stream;
	int answered; /* a response has come on this connection */
	char address[256];
};

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

/* OpenSSL's first queued reason (and the peer certificate's verdict), or `fallback`. */
static const char *tls_reason(const struct hp_agent *a, char *buf, size_t len, const char *fallback)
{
	unsigned long e = ERR_get_error();
	long verify = a->ssl ? SSL_get_verify_result(a->ssl) : X509_V_OK;

	if (verify != X509_V_OK)
		snprintf(buf, len, "the agent's certificate: %s", X509_verify_cert_error_string(verify));
	else if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "%s", fallback);
	ERR_clear_error();
	return buf;
}

/* Waits until fd is ready for `events` or the deadline passes (-ETIMEDOUT). */
static int wait_fd(int fd, short events, long long deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		long long left = deadline - now_ms();
		int r;

		if (left <= 0)
			return -ETIMEDOUT;
		r = poll(&p, 1, (int)(left > 60000 ? 60000 : left));
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

/* After an SSL call returned r <= 0: waits and returns 1 to try again, or a negative errno. */
static int ssl_again(struct hp_agent *a, int r, long long deadline)
{
	switch (SSL_get_error(a->ssl, r)) {
	case SSL_ERROR_WANT_READ:
		return wait_fd(a->fd, POLLIN, deadline) ?: 1;
	case SSL_ERROR_WANT_WRITE:
		return wait_fd(a->fd, POLLOUT, deadline) ?: 1;
	case SSL_ERROR_ZERO_RETURN:
		return -ECONNRESET;
	case SSL_ERROR_SYSCALL:
		return errno ? -errno : -ECONNRESET;
	default:
		return -EPROTO;
	}
}

static int split_address(const char *address, char *host, size_t host_len, const char **port)
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

/* A TCP connection to the first address that answers, non-blocking. */
static int dial(struct hp_agent *a, const char *address, long long deadline, char *err, size_t err_len)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res, *ai;
	char host[256];
	const char *port;
	int r, last = -EHOSTUNREACH;

	if (split_address(address, host, sizeof(host), &port) < 0) {
		say(err, err_len, "DPU agent address %s: not host:port", address);
		return -EINVAL;
	}
	if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
		say(err, err_len, "DPU agent at %s unreachable: %s", address, gai_strerror(r));
		return -EHOSTUNREACH;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
		int one = 1, soerr = 0;
		socklen_t len = sizeof(soerr);

		if (fd < 0) {
			last = -errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
		    (errno == EINPROGRESS && (last = wait_fd(fd, POLLOUT, deadline)) == 0 &&
		     getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr == 0)) {
			setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			a->fd = fd;
			freeaddrinfo(res);
			return 0;
		}
		if (soerr)
			last = -soerr;
		else if (last == 0)
			last = -errno;
		close(fd);
	}
	freeaddrinfo(res);
	say(err, err_len, "DPU agent at %s unreachable: %s", address, last == -ETIMEDOUT ? "no answer in time" : strerror(-last));
	return last;
}

static int tls_setup(struct hp_agent *a, const struct hp_agent_tls *tls, char *err, size_t err_len)
{
	char why[256];

	a->ctx = SSL_CTX_new(TLS_client_method());
	if (!a->ctx || SSL_CTX_set_min_proto_version(a->ctx, TLS1_2_VERSION) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: %s", a->address, tls_reason(a, why, sizeof(why), "no context"));
		return -ENOMEM;
	}
	if (SSL_CTX_load_verify_locations(a->ctx, tls->ca_file, NULL) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: CA %s: %s", a->address, tls->ca_file, tls_reason(a, why, sizeof(why), "unreadable"));
		return -EINVAL;
	}
	if (SSL_CTX_use_certificate_chain_file(a->ctx, tls->cert_file) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: certificate %s: %s", a->address, tls->cert_file,
		    tls_reason(a, why, sizeof(why), "unreadable"));
		return -EINVAL;
	}
	if (SSL_CTX_use_PrivateKey_file(a->ctx, tls->key_file, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(a->ctx) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: key %s: %s", a->address, tls->key_file, tls_reason(a, why, sizeof(why), "unreadable"));
		return -EINVAL;
	}
	SSL_CTX_set_verify(a->ctx, SSL_VERIFY_PEER, NULL);
	a->ssl = SSL_new(a->ctx);
	if (!a->ssl || SSL_set_fd(a->ssl, a->fd) != 1 || SSL_set_tlsext_host_name(a->ssl, HP_AGENT_SERVER_NAME) != 1 ||
	    SSL_set1_host(a->ssl, HP_AGENT_SERVER_NAME) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: %s", a->address, tls_reason(a, why, sizeof(why), "no session"));
		return -ENOMEM;
	}
	return 0;
}

struct hp_agent *hp_agent_connect(const char *address, const struct hp_agent_tls *tls, int timeout_ms, char *err, size_t err_len)
{
	long long deadline = now_ms() + timeout_ms;
	struct hp_agent *a = calloc(1, sizeof(*a));
	char why[256];
	int r;

	if (!a) {
		say(err, err_len, "DPU agent at %s: out of memory", address);
		return NULL;
	}
	a->fd = -1;
	a->timeout_ms = timeout_ms;
	a->next_stream = 1;
	snprintf(a->address, sizeof(a->address), "%s", address);
	if (dial(a, address, deadline, err, err_len) < 0 || tls_setup(a, tls, err, err_len) < 0)
		goto fail;
	while ((r = SSL_connect(a->ssl)) != 1) {
		if ((r = ssl_again(a, r, deadline)) < 0) {
			if (r == -ETIMEDOUT)
				say(err, err_len, "DPU agent at %s unreachable: no TLS handshake in time", address);
			else
				say(err, err_len, "TLS with the DPU agent at %s failed (certificate refused or not trusted): %s", address,
				    tls_reason(a, why, sizeof(why), r == -ECONNRESET ? "the agent closed the connection" : strerror(-r)));
			goto fail;
		}
	}
	return a;
fail:
	hp_agent_close(a);
	return NULL;
}

/* All n bytes written from p (write) or read into it, by the deadline. */
static int ssl_all(struct hp_agent *a, int write, unsigned char *p, size_t n, long long deadline)
{
	while (n > 0) {
		int r = write ? SSL_write(a->ssl, p, (int)n) : SSL_read(a->ssl, p, (int)n);

		if (r > 0) {
			p += r;
			n -= (size_t)r;
		} else if ((r = ssl_again(a, r, deadline)) < 0) {
			return r;
		}
	}
	return 0;
}

/* Response { status = 1 { code = 1, message = 2 }, payload = 2 } */
static int decode_response(const unsigned char *d, size_t n, int *code, const unsigned char **msg, size_t *msg_len,
			   const unsigned char **payload, size_t *payload_len)
{
	struct pb_field f, g;
	size_t i = 0, j;
	int r;

	*code = 0;
	*msg = *payload = NULL;
	*msg_len = *payload_len = 0;
	while ((r = pb_next(d, n, &i, &f)) > 0) {
		if (f.num == 2 && f.wire == 2) {
			*payload = f.val;
			*payload_len = f.vlen;
		} else if (f.num == 1 && f.wire == 2) {
			for (j = 0; (r = pb_next(f.val, f.vlen, &j, &g)) > 0;) {
				if (g.num == 1 && g.wire == 0)
					*code = (int)(int32_t)g.u;
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

/*
 * One call on a new stream: the request, then the stream's frames until its
 * Response. A server stream (`on_message` set) opens with REMOTE_OPEN and has
 * no deadline while messages come; each data frame goes to on_message, and a
 * nonzero return cancels the stream (the client's side closed, as the agent's
 * clients do), after which the agent's Response is waited for within the
 * timeout. Returns as hp_agent_call does.
 */
static int exchange(struct hp_agent *a, const char *method, const void *req, size_t req_len,
		    int (*on_message)(void *ctx, const unsigned char *m, size_t len), void *ctx, unsigned char **resp, size_t *resp_len,
		    char *err, size_t err_len)
{
	long long deadline = on_message ? LLONG_MAX : now_ms() + a->timeout_ms;
	uint32_t stream = a->next_stream;
	struct pb_writer w = { NULL, 0 };
	unsigned char head[HP_TTRPC_HEADER], *frame, *data = NULL;
	const unsigned char *msg, *payload;
	size_t msg_len, payload_len;
	char why[256] = "";
	int r, code, cancelled = 0;

	if (resp) {
		*resp = NULL;
		*resp_len = 0;
	}
	if (a->fd < 0) {
		say(err, err_len, "DPU agent at %s: %s: the connection has failed", a->address, method);
		return -ENOTCONN;
	}
	a->next_stream += 2;
	/* Request { service = 1, method = 2, payload = 3, timeout_nano = 4 }, sized, then written after its header */
	for (int pass = 0; pass < 2; pass++) {
		pbw_string(&w, 1, HP_AGENT_SERVICE);
		pbw_string(&w, 2, method);
		pbw_bytes(&w, 3, req, req_len);
		pbw_uint(&w, 4, on_message ? 0 : (uint64_t)a->timeout_ms * 1000000);
		if (pass == 0) {
			if (w.n > HP_TTRPC_MAX_DATA) {
				say(err, err_len, "DPU agent at %s: %s: a request of %zu bytes is over ttrpc's limit", a->address, method, w.n);
				return -EMSGSIZE;
			}
			if (!(frame = malloc(HP_TTRPC_HEADER + w.n)))
				return -ENOMEM;
			put_header_flags(frame, w.n, stream, HP_TTRPC_REQUEST, on_message ? HP_TTRPC_REMOTE_OPEN : 0);
			w = (struct pb_writer){ frame + HP_TTRPC_HEADER, 0 };
		}
	}
	r = ssl_all(a, 1, frame, HP_TTRPC_HEADER + w.n, deadline);
	free(frame);
	/* Frames of other streams (none: one call at a time) are read past. */
	for (; r == 0; free(data), data = NULL) {
		uint32_t len;

		if ((r = ssl_all(a, 0, head, sizeof(head), deadline)) < 0)
			break;
		len = be32(head);
		if (len > HP_TTRPC_MAX_DATA) {
			r = -EPROTO;
			snprintf(why, sizeof(why), "a frame of %u bytes", len);
			break;
		}
		if (!(data = malloc(len ? len : 1))) {
			r = -ENOMEM;
			break;
		}
		if ((r = ssl_all(a, 0, data, len, deadline)) < 0)
			break;
		if (be32(head + 4) != stream)
			continue;
		if (head[8] == HP_TTRPC_DATA && on_message) {
			a->answered = 1;
			if (!cancelled && !(head[9] & HP_TTRPC_NO_DATA) && on_message(ctx, data, len) != 0) {
				/* Our side closed, with no message: the agent ends the stream. */
				cancelled = 1;
				deadline = now_ms() + a->timeout_ms;
				put_header_flags(head, 0, stream, HP_TTRPC_DATA, HP_TTRPC_REMOTE_CLOSED | HP_TTRPC_NO_DATA);
				r = ssl_all(a, 1, head, sizeof(head), deadline);
			}
			continue;
		}
		if (head[8] != HP_TTRPC_RESPONSE)
			continue;
		if (decode_response(data, len, &code, &msg, &msg_len, &payload, &payload_len) < 0) {
			r = -EBADMSG;
			snprintf(why, sizeof(why), "an undecodable answer");
			break;
		}
		a->answered = 1;
		/* A stream we cancelled ends however the agent says; any other failure is reported. */
		if (code != 0 && !cancelled) {
			say(err, err_len, "DPU agent at %s: %s: %.*s", a->address, method, (int)msg_len, msg ? (const char *)msg : "");
			free(data);
			return code;
		}
		if (resp) {
			memmove(data, payload ? payload : data, payload_len);
			*resp = data;
			*resp_len = payload_len;
			return 0;
		}
		free(data);
		return 0; /* the stream's end (or our cancel answered, with whatever code) */
	}
	free(data);
	if (r == -EPROTO && !why[0])
		tls_reason(a, why, sizeof(why), "TLS failed");
	if ((r == -ECONNRESET || r == -EPROTO) && !a->answered)
		/* An agent that refuses our certificate (TLS 1.3) ends the connection once
		 * the handshake is done, before it answers anything. */
		say(err, err_len, "TLS with the DPU agent at %s failed (certificate refused or not trusted): %s: %s", a->address, method,
		    r == -ECONNRESET ? "the agent closed the connection before any answer" : why);
	else
		say(err, err_len, "DPU agent at %s: %s: %s", a->address, method,
		    r == -ETIMEDOUT	   ? "no answer in time"
		    : r == -ECONNRESET ? "the agent closed the connection"
		    : r == -EPROTO     ? why
		    : r == -EBADMSG    ? why
				       : strerror(-r));
	/* The connection is out of step: no further call on it. */
	close(a->fd);
	a->fd = -1;
	return r;
}

int hp_agent_call(struct hp_agent *a, const char *method, const void *req, size_t req_len, unsigned char **resp, size_t *resp_len,
		  char *err, size_t err_len)
{
	return exchange(a, method, req, req_len, NULL, NULL, resp, resp_len, err, err_len);
}

int hp_agent_stream(struct hp_agent *a, const char *method, const void *req, size_t req_len,
		    int (*on_message)(void *ctx, const unsigned char *m, size_t len), void *ctx, char *err, size_t err_len)
{
	return exchange(a, method, req, req_len, on_message, ctx, NULL, NULL, err, err_len);
}

void hp_agent_close(struct hp_agent *a)
{
	if (!a)
		return;
	if (a->ssl)
		SSL_free(a->ssl);
	if (a->ctx)
		SSL_CTX_free(a->ctx);
	if (a->fd >= 0)
		close(a->fd);
	free(a);
}
