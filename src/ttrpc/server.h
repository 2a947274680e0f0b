/*
 * A ttrpc server in C on the event loop (src/common/loop.h): a unix socket
 * whose connections' requests go to one handler, each answered when its
 * handler is done with it, in any order. The C counterpart of server.ts for
 * unary calls (the node daemon's socket serves nothing else).
 *
 * A request is an hp_treq, the handler's until it calls hp_treq_reply (which
 * frees it). If the connection closes first, the request's on_cancel, when set,
 * is told, and its reply later goes nowhere.
 */
#ifndef HETEROPOD_TTRPC_SERVER_H
#define HETEROPOD_TTRPC_SERVER_H

#include <stddef.h>
#include <stdint.h>

struct hp_loop;
struct hp_tserver;
struct hp_tsconn;

struct hp_treq {
	struct hp_tsconn *conn; /* NULL once the connection has closed */
	uint32_t stream;
	char service[128];
	char method[64];
	unsigned char *payload; /* the request's, owned by the hp_treq */
	size_t len;
	long long timeout_ms; /* the caller's deadline, 0 for none */
	/* The handler's: told when the connection closed before the reply. */
	void (*on_cancel)(struct hp_treq *r);
	void *user;
	struct hp_treq *prev, *next; /* the connection's open requests */
};

/* A connection's value, for the handler to keep (who is on the other end), and
 * on_close, called once when it closes (its open requests cancelled first). */
struct hp_tsconn_user {
	void *value;
	void (*on_close)(struct hp_tsconn *c, void *value);
};

struct hp_tserver_opts {
	void (*handle)(void *ctx, struct hp_treq *r);
	void *ctx;
	/* Optional: a connection that sent what ttrpc is not (it is closed). */
	void (*on_error)(void *ctx, const char *what);
};

/* Listens on `path` (which must not exist), mode 0600. */
int hp_tserver_listen(struct hp_loop *l, const char *path, const struct hp_tserver_opts *o, struct hp_tserver **out);
/* Stops listening and closes every connection (their requests cancelled). */
void hp_tserver_close(struct hp_tserver *s);

struct hp_tsconn_user *hp_tsconn_user(struct hp_tsconn *c);

/*
 * Answers r and frees it: Response { status = 1 { code = 1, message = 2 },
 * payload = 2 } (payload only when code is 0), then `trailer` as it is (fields
 * the server adds, already encoded). Nothing is sent when the connection has gone.
 */
void hp_treq_reply(struct hp_treq *r, int code, const char *message, const void *payload, size_t len, const void *trailer,
		   size_t trailer_len);

#endif
