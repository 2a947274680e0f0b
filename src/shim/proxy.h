/*
 * The ttrpc proxy that serves every pod: containerd talks to our socket, and each
 * of its connections is paired with a connection of its own to the pod's
 * containerd-shim-runc-v2. Frames pass unchanged in both directions (a pair has
 * its own stream-id space, so nothing is remapped), except
 * containerd.task.v2.Task/Create requests, whose runtime options (ours, which
 * runc's shim refuses) are replaced by containerd.runc.v1.Options or removed.
 *
 * A pod with the `heteropod.io/offload` annotation (hp_proxy.node_socket set)
 * also has the node daemon, one per node, on a unix socket speaking ttrpc. Each
 * containerd connection then opens, when a request first needs it, a connection
 * of its own to the daemon and sends Attach (hp_attach_frame) before anything
 * else. Every Task/Create goes to the daemon unchanged; its answer carries
 * Response field 15 `placed`: 1, the daemon holds the task, and every later Task
 * request for that id (except Shutdown, always runc's) goes to the daemon, on
 * whichever containerd connection it comes; 2, the daemon left it to the host,
 * and the original Create goes to runc's shim, whose answer containerd gets.
 * Field 15 never reaches containerd. Without the daemon: a Create goes to runc
 * (policy "prefer") or fails with FAILED_PRECONDITION (any other policy); a Wait
 * for a daemon task is held and sent again once a new daemon connection has been
 * attached (tried every 250 ms); any other request for a daemon task fails with
 * UNAVAILABLE. A pod without the annotation never looks at the daemon.
 *
 * The daemon's processes write into containerd's stdio fifos through the
 * daemon, and containerd stops reading a fifo for good at its first EOF. So,
 * as runc's shim does for its own, the proxy holds a write end of the stdout
 * and stderr fifos of each process the daemon runs (from the successful answer
 * to its Create or Exec) until containerd is sent a successful answer to that
 * process's Wait or Delete (a Delete without exec_id: the task's every
 * process). A daemon that dies therefore leaves containerd's readers open, and
 * its successor's relays write into the same fifos (proxy-stdio.c).
 *
 * One thread, epoll, buffers allocated per connection when it is accepted (the
 * daemon connection's when it is opened). The proxy runs until runc's shim exits,
 * then closes every connection, so containerd sees the shim gone exactly when it
 * would under runc. It learns of the exit from an idle connection of its own to
 * runc's shim, which ends only with that process (containerd-shim-runc-v2 1.6
 * leaves no shim.pid to watch, and its ttrpc server never closes a connection by
 * itself).
 *
 * Functions return a negative errno on failure.
 */
#ifndef HETEROPOD_SHIM_PROXY_H
#define HETEROPOD_SHIM_PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "../ttrpc/frame.h"


/* The node daemon's side of the contract. */
#define HP_NODE_SERVICE "heteropod.node.v1.Node"
#define HP_ATTACH_STREAM 0x7fffffffu /* containerd's stream ids are small odd numbers */
#define HP_PLACED_FIELD 15u	     /* of ttrpc.Response, in the daemon's answer to Create */
#define HP_PLACED_DAEMON 1u  /* the daemon holds the task: its calls go there */
#define HP_PLACED_RUNC 2u    /* the proxy sends the Create to runc's shim */
#define HP_PLACED_SANDBOX 3u /* the daemon made it through runc's shim: its Delete goes there, the rest to runc */
/* google.rpc.Code values the proxy answers with */
#define HP_CODE_FAILED_PRECONDITION 9
#define HP_CODE_UNAVAILABLE 14

/*
 * Rewrites one complete request frame (header included) if it is a
 * containerd.task.v2.Task/Create whose CreateTaskRequest.options (field 10) must
 * change: every field 10 is dropped and, when `options` is not NULL, one field 10
 * holding that encoded google.protobuf.Any is appended. Everything else (other
 * fields, their order, metadata, stream id, flags) is kept byte for byte.
 *
 * Returns 1 with the new frame in out[0, *out_len); 0 when the frame is to be
 * relayed as it is (another method, nothing to change, or an envelope or request
 * that does not decode: runc's shim then answers it as it would answer
 * containerd); -ENOSPC when `cap` is below hp_rewrite_bound(); -EMSGSIZE when
 * the new frame would exceed the ttrpc limit; -EINVAL for a header that
 * disagrees with `len`.
 */
int hp_rewrite_create(const unsigned char *frame, size_t len, const unsigned char *options, size_t options_len,
		      unsigned char *out, size_t cap, size_t *out_len);

/* Room hp_rewrite_create may need for a frame of `len` bytes. */
size_t hp_rewrite_bound(size_t len, size_t options_len);

/* Encodes containerd.runc.v1.Options { binary_name = 6; root = 7; systemd_cgroup = 9; }
 * as a google.protobuf.Any into out; returns its length, 0 when every field is
 * empty (then Create carries no options and runc's shim uses its defaults), or
 * -ENOSPC. */
int hp_runc_options(const char *binary_name, const char *root, int systemd_cgroup, unsigned char *out, size_t cap);

/*
 * heteropod.node.v1.AttachRequest: who is attaching. Strings may be NULL or empty
 * (then absent on the wire, as proto3 encodes them).
 */
struct hp_attach {
	const char *namespace;		/* 1 */
	const char *group;		/* 2: the pod, its sandbox id */
	const char *containerd_address; /* 3: containerd's -address */
	const char *ttrpc_address;	/* 4: containerd's TTRPC_ADDRESS, for events */
	const char *runc_address;	/* 5: runc's shim, unix:///… */
	const char *publish_binary;	/* 6 */
	const char *bundle;		/* 7: the sandbox's bundle directory */
	const char *config_path;	/* 8: the shim config */
	uint32_t proxy_pid;		/* 9 */
	int debug;			/* 10 */
};

/* Encodes the Attach request frame (stream HP_ATTACH_STREAM, no metadata) into
 * out; returns its length, -ENOSPC when `cap` is too small, -EMSGSIZE beyond the
 * ttrpc limit. */
int hp_attach_frame(const struct hp_attach *a, unsigned char *out, size_t cap);

/*
 * Takes Response field HP_PLACED_FIELD out of the response frame at
 * frame[0, *len), in place: the frame shrinks, its header length with it, every
 * other byte kept in order. Returns the field's value (the last one if repeated),
 * 0 when absent, -EINVAL for a header that disagrees with *len or a frame that is
 * not a response, -EBADMSG when the Response does not decode (frame unchanged).
 */
int hp_take_placed(unsigned char *frame, size_t *len);

struct hp_proxy {
	int listener;		/* our listening socket; the proxy closes it */
	const char *socket_path; /* its path: unlinked when runc's shim is gone, if still ours */
	const char *upstream;	/* runc's shim socket path */
	const unsigned char *create_options; /* Any for Create's field 10, or NULL: none */
	size_t create_options_len;
	/* Offload pods only; NULL for the others, which never reach the daemon. */
	const char *node_socket;     /* the node daemon's socket path */
	const char *offload_policy;  /* "prefer" (or NULL): Create falls back to runc
				      * without the daemon; anything else: it fails */
	const struct hp_attach *attach; /* what each daemon connection says first */
	/* Optional: told about what containerd cannot see (a bad frame, runc's shim gone). */
	void (*log)(const char *level, const char *msg, const char *detail);
};

/*
 * Serves until runc's shim exits and the last connection has drained (at most
 * 2 s after). Returns 0 then, or a negative errno if the event loop itself fails.
 */
int hp_proxy_run(const struct hp_proxy *p);

#endif
