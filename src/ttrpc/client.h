/*
 * A ttrpc client connection in C, on the event loop (src/common/loop.h): unary
 * calls and ttrpc 1.2 streams, any number at once on one connection, over a
 * unix socket or TCP with TLS (OpenSSL). The C counterpart of client.ts.
 *
 * A call's request goes out as a Request { service = 1, method = 2,
 * payload = 3, timeout_nano = 4, metadata = 5 } on a new odd stream id; the
 * Response { status = 1 { code = 1, message = 2 }, payload = 2 } ends it. A
 * stream opens REMOTE_OPEN: a server stream's messages arrive as data frames
 * before its Response, a client stream's go out as data frames until
 * hp_tcall_close_send (REMOTE_CLOSED, no data). Cancelling a stream closes our
 * side the same way, which the peer takes as a cancel.
 *
 * Every outcome reaches the call's `done` once, with an hp_tstatus: the peer's
 * answer, or a local failure (the connection could not be made, broke, or the
 * call's deadline passed) as UNAVAILABLE or DEADLINE_EXCEEDED with `local` set
 * to the errno and a message naming the peer, the method and what failed. A
 * connection that broke fails every call on it and takes no more: its owner
 * makes a new one. Callbacks may start calls, cancel calls and destroy the
 * client.
 */
#ifndef HETEROPOD_TTRPC_CLIENT_H
#define HETEROPOD_TTRPC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

struct hp_loop;
struct ssl_ctx_st;

/* google.rpc.Code values the client reports local failures with. */
#define HP_CODE_OK 0
#define HP_CODE_CANCELLED 1
#define HP_CODE_INVALID_ARGUMENT 3
#define HP_CODE_DEADLINE_EXCEEDED 4
#define HP_CODE_NOT_FOUND 5
#define HP_CODE_FAILED_PRECONDITION 9
#define HP_CODE_UNIMPLEMENTED 12
#define HP_CODE_INTERNAL 13
#define HP_CODE_UNAVAILABLE 14

struct hp_tstatus {
	int code;	     /* google.rpc.Code */
	int local;	     /* 0: the peer answered; else the local failure's negative errno */
	int tls_refused;     /* local: a TLS peer closed the connection before answering anything */
	const char *message; /* the peer's message or the failure's, NUL-terminated */
	const unsigned char *payload; /* code 0: the response */
	size_t len;
};

struct hp_tclient;
struct hp_tcall;

struct hp_tcall_fns {
	/* A server stream's message. */
	void (*data)(void *ctx, const unsigned char *m, size_t len);
	/* The call's end, once; the call is gone after it. */
	void (*done)(void *ctx, const struct hp_tstatus *st);
};

enum hp_tcall_kind { HP_TCALL_UNARY, HP_TCALL_SERVER_STREAM, HP_TCALL_CLIENT_STREAM };

struct hp_tmeta {
	const char *key, *value;
};

struct hp_tcall_opts {
	enum hp_tcall_kind kind;
	long long timeout_ms;		/* 0: none (the default of streams) */
	const struct hp_tmeta *metadata; /* n_metadata KeyValues */
	size_t n_metadata;
};

/*
 * A connection, made in the background: to a unix socket (`path`), or to
 * host:port ([v6]:port) with TLS (`tls`: the context, whose verification the
 * caller set; `server_name`, which the peer's certificate must name). `name`
 * names the peer in messages ("DPU agent at 10.0.0.2:7443"). Calls made while it
 * connects wait for it; `connect_ms` bounds the connection and its handshake.
 * NULL only when out of memory or the address does not parse (`err` says).
 */
struct hp_tclient *hp_tclient_unix(struct hp_loop *l, const char *path, const char *name, long long connect_ms, char *err,
				   size_t err_len);
struct hp_tclient *hp_tclient_tls(struct hp_loop *l, const char *address, struct ssl_ctx_st *tls, const char *server_name,
				  const char *name, long long connect_ms, char *err, size_t err_len);

/* host:port or [v6]:port into host (NUL-ended) and port (in address); -EINVAL when it is neither. */
int hp_split_address(const char *address, char *host, size_t host_len, const char **port);

/* Fails every call still open (CANCELLED, their `done` called) and frees the client. */
void hp_tclient_destroy(struct hp_tclient *c);

/* Whether the connection has failed: it takes no more calls. */
int hp_tclient_failed(const struct hp_tclient *c);
/* Whether a response has come on it (the peer has accepted us). */
int hp_tclient_answered(const struct hp_tclient *c);

/*
 * Starts a call. On a failed connection `done` is called before this returns,
 * and NULL is returned; so too for a request over ttrpc's frame limit
 * (INVALID_ARGUMENT). Otherwise the call, valid until its `done`.
 */
struct hp_tcall *hp_tcall_start(struct hp_tclient *c, const char *service, const char *method, const void *req, size_t req_len,
				const struct hp_tcall_opts *o, const struct hp_tcall_fns *fns, void *ctx);

/* A client stream's message (0), or -EMSGSIZE / -EPIPE after close_send. */
int hp_tcall_send(struct hp_tcall *call, const void *m, size_t len);
/* Bytes queued on the connection, not yet written: a sender's flow control. */
size_t hp_tclient_queued(const struct hp_tclient *c);
/* Ends our side of a client stream: the peer answers. */
void hp_tcall_close_send(struct hp_tcall *call);
/* No further callback for the call; a stream's side is closed (the peer's cancel). */
void hp_tcall_cancel(struct hp_tcall *call);

#endif
