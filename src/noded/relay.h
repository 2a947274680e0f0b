/*
 * The host end of an offloaded process's stdio, as src/shim/stdio-relay.ts:
 * containerd's fifos on the host joined to the agent's Output and Input streams.
 *
 * Output: the relay writes containerd's stdout/stderr fifos, holding a read end
 * of each as runc's shim does, so a write never fails while containerd is away:
 * the pipe fills, the relay holds what it got, acknowledges nothing more, and
 * the agent (which keeps what is not acknowledged, 1 MiB a process) stops
 * reading the process's output on the DPU. A chunk is acknowledged (AckOutput,
 * one call at a time, the latest sequence) once it is in the fifo. A stream that
 * breaks is opened again; a chunk sent twice is written once. Each stream's end
 * on the DPU closes the host fifo, which is containerd's end-of-file.
 *
 * Input: containerd's stdin fifo is opened read-write, so it never reads as
 * ended; what it holds goes on a client stream (Input). CloseIO ends input:
 * what was read goes first.
 */
#ifndef HETEROPOD_NODED_RELAY_H
#define HETEROPOD_NODED_RELAY_H

#include <stddef.h>

#include "log.h"

struct hp_loop;
struct hp_agent;
struct nd_relay;

struct nd_relay_opts {
	struct hp_loop *loop;
	struct hp_agent *agent;
	const char *pod_id, *container_id, *exec_id;
	const char *stdin_path, *stdout_path, *stderr_path; /* "" or NULL: none */
	/* the pod's log */
	struct nd_fifo *fifo;
	const char *const *log_ctx;
};

/* Opens the fifos and starts the streams; NULL with `err` when a fifo cannot be opened. */
struct nd_relay *nd_relay_start(const struct nd_relay_opts *o, char *err, size_t err_len);

/* Whether every output stream has ended and all of it is in containerd's fifos. */
int nd_relay_done(const struct nd_relay *r);
/* `fn` once the relay is done (at once if it is); one at a time, NULL to forget it. */
void nd_relay_when_done(struct nd_relay *r, void (*fn)(void *ctx), void *ctx);
/* Ends input (CloseIO with stdin): what was read reaches the DPU, then `then`. */
void nd_relay_close_stdin(struct nd_relay *r, void (*then)(void *ctx), void *ctx);
/* Stops everything and frees the relay. */
void nd_relay_close(struct nd_relay *r);

#endif
