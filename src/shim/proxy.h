/*
 * The ttrpc proxy that serves a pod which offloads nothing (no
 * `heteropod.io/offload` annotation): containerd talks to our socket, and every
 * connection is paired with a connection of its own to the pod's
 * containerd-shim-runc-v2. Frames pass unchanged in both directions (a pair has
 * its own stream-id space, so nothing is remapped), except
 * containerd.task.v2.Task/Create requests, whose runtime options (ours, which
 * runc's shim refuses) are replaced by containerd.runc.v1.Options or removed.
 *
 * One thread, epoll, buffers allocated per connection when it is accepted. The
 * proxy runs until runc's shim exits, then closes every connection, so containerd
 * sees the shim gone exactly when it would under runc. It learns of the exit from
 * an idle connection of its own to runc's shim, which ends only with that process
 * (containerd-shim-runc-v2 1.6 leaves no shim.pid to watch, and its ttrpc server
 * never closes a connection by itself).
 *
 * Functions return a negative errno on failure.
 */
#ifndef HETEROPOD_SHIM_PROXY_H
#define HETEROPOD_SHIM_PROXY_H

#include <stddef.h>
#include <stdint.h>

/* ttrpc framing (ttrpc 1.1, which containerd 1.6 uses). */
#define HP_TTRPC_HEADER 10u
#define HP_TTRPC_MAX_DATA (4u << 20)
#define HP_TTRPC_REQUEST 1u

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

struct hp_proxy {
	int listener;		/* our listening socket; the proxy closes it */
	const char *socket_path; /* its path: unlinked when runc's shim is gone, if still ours */
	const char *upstream;	/* runc's shim socket path */
	const unsigned char *create_options; /* Any for Create's field 10, or NULL: none */
	size_t create_options_len;
	/* Optional: told about what containerd cannot see (a bad frame, runc's shim gone). */
	void (*log)(const char *level, const char *msg, const char *detail);
};

/*
 * Serves until runc's shim exits and the last connection has drained (at most
 * 2 s after). Returns 0 then, or a negative errno if the event loop itself fails.
 */
int hp_proxy_run(const struct hp_proxy *p);

#endif
