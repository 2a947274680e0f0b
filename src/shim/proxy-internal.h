/*
 * What the proxy's files share (proxy.h is the interface): the protobuf and
 * ttrpc codec (proxy-codec.c), the relay's connection pairs and event loop
 * (proxy.c), the node daemon's side of an offload pod (proxy-node.c) and the
 * stdio fifos it holds for the daemon's processes (proxy-stdio.c).
 *
 * Every function here runs on the proxy's one thread; none is for callers
 * outside these files.
 */
#ifndef HETEROPOD_SHIM_PROXY_INTERNAL_H
#define HETEROPOD_SHIM_PROXY_INTERNAL_H

#include "proxy.h"
#include "../proto/pb.h"

#include <string.h>
#include <sys/types.h>
#include <time.h>

#define TASK_SERVICE "containerd.task.v2.Task"

/* ---- the request envelope (proxy-codec.c) ----------------------------------- */

/* A request envelope: Request { service = 1; method = 2; payload = 3;
 * timeout_nano = 4; metadata = 5; }, as in Go the last occurrence of a field
 * winning. */
struct envelope {
	const unsigned char *service, *method, *payload, *payload_tag;
	size_t slen, mlen, plen, payloads_total; /* payloads_total: every field 3, tags included */
};

/* 0, or -EBADMSG when the envelope (data of a frame) does not decode. */
int envelope_read(const unsigned char *data, size_t dlen, struct envelope *e);

/* ---- the relay (proxy.c) ----------------------------------------------------- */

struct buf {
	unsigned char *p;
	size_t cap, off, len; /* [off, len) holds bytes not yet sent */
};

struct conn;
struct stdio_hold;

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
	EXEC,	/* UNAVAILABLE, as OTHER; kept: its answer may make the proxy hold stdio */
	DELETE, /* UNAVAILABLE, as OTHER; kept: its answer may release stdio */
	OTHER,	/* UNAVAILABLE */
};

/* A request the daemon has not answered yet, or a Wait held for it. */
struct pending {
	struct pending *next;
	uint32_t stream;
	enum kind kind;
	int sent;	      /* released after Attach: the daemon may have acted on it */
	size_t len;	      /* of frame: kept for every kind but ATTACH and OTHER */
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

/* A task the daemon holds (HP_PLACED_DAEMON), or only the Delete of (HP_PLACED_SANDBOX). */
struct route {
	struct route *next;
	int delete_only; /* HP_PLACED_SANDBOX */
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
	struct stdio_hold *stdio; /* the daemon's processes whose fifos we hold */
	int timer, timer_armed; /* ticks every RECONNECT_MS while a Wait is held */
};

static inline void say(struct loop *l, const char *level, const char *msg, const char *detail)
{
	if (l->p->log)
		l->p->log(level, msg, detail);
}

int buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_compact(struct buf *b, size_t *ready); /* `ready`, an index into b, moves with the bytes */
int buf_reserve(struct buf *b, size_t cap);
int buf_append(struct buf *b, const unsigned char *p, size_t len);
void buf_shrink(struct buf *b);

/* 0 when sent or when the socket is full; a negative errno when it failed. */
int send_some(int fd, struct buf *b, size_t until);
int conn_watch(struct loop *l, struct conn *c);
void conn_close(struct loop *l, struct conn *c);
/* Puts a Create the daemon did not take into runc's stream, rewritten as any Create for runc. */
int runc_inject(struct loop *l, struct conn *c, const unsigned char *frame, size_t len);

/* ---- the node daemon (proxy-node.c) ------------------------------------------ */

/* The Attach frame and the reconnect timer, whose epoll events carry `timer_tag`. */
int offload_init(struct loop *l, void *timer_tag);
/* What offload_init and the routing kept, at the proxy's exit. */
void offload_free(struct loop *l);
/* Where the complete request frame at c->req[c->ready] goes: 0, runc's stream;
 * 1, taken out of it; or a negative errno. */
int route_request(struct loop *l, struct conn *c, size_t len);
void node_event(struct loop *l, struct conn *c, uint32_t events);
int flush_node(struct conn *c);
/* The daemon is gone for this pair: what it was asked is answered (or held) here;
 * a negative errno when even that failed and the pair must close. */
int node_down(struct loop *l, struct conn *c, const char *why);
/* The daemon connection's end; the pair's pending requests are left to the caller. */
void node_close(struct conn *c);
void pending_free(struct pending *list);
void reconnect_tick(struct loop *l);
void timer_update(struct loop *l);

/* ---- the daemon's processes' stdio (proxy-stdio.c) --------------------------- */

/* From the request frames (kept whole until answered) whose successful answer
 * the daemon has just sent: Create (placed=1) and Exec hold the fifos they
 * name; Wait releases its process's, Delete its process's or, with
 * `whole_task` and no exec_id, those of the task's every process. Failures are
 * logged, never returned: the answer goes to containerd all the same. */
void stdio_hold_create(struct loop *l, const unsigned char *frame, size_t len);
void stdio_hold_exec(struct loop *l, const unsigned char *frame, size_t len);
void stdio_release(struct loop *l, const unsigned char *frame, size_t len, int whole_task);
/* At the proxy's exit. */
void stdio_free(struct loop *l);

#endif
