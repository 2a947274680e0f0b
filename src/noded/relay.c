/* An offloaded process's stdio on the host (relay.h). */
#include "relay.h"

#include "../agentapi/agent-conn.h"
#include "../common/loop.h"
#include "../proto/pbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#define RETRY_MS 500

struct writer {
	struct nd_relay *r;
	struct hp_watch w; /* the write end, watched while it is full */
	int fd, keep;	   /* write end; our read end, held so a write never fails */
	struct pbuf pending;
	uint64_t pending_seq; /* the last chunk in `pending` */
	int ended;	      /* the DPU side ended: closed once pending is written */
	int flushed;	      /* closed, everything written */
};

struct nd_relay {
	struct hp_loop *loop;
	struct hp_agent *agent;
	char *pod_id, *container_id, *exec_id;
	struct nd_fifo *fifo;
	const char *const *log_ctx;
	struct writer out[2]; /* OutputChunk.Stream: STDOUT 0, STDERR 1 */
	int nwriters;
	struct hp_tcall *output;
	int output_ok;
	struct hp_timer reopen;
	/* acknowledgements */
	uint64_t generation, received, acked, to_ack;
	struct hp_tcall *acking;
	uint64_t acking_seq, acking_gen;
	struct hp_timer ack_retry;
	/* input */
	struct hp_watch in;
	struct hp_tcall *input;
	void (*stdin_closed)(void *ctx);
	void *stdin_ctx;
	/* done: told on the loop's next turn, never from inside the relay's own work */
	void (*on_done)(void *ctx);
	void *done_ctx;
	struct hp_timer done_timer;
	int closed;
};

static void follow(struct nd_relay *r);
static void written(struct nd_relay *r, uint64_t seq);

/* OutputRequest / AckOutputRequest { pod_id = 1, container_id = 2, exec_id = 3 } */
static void put_ref(struct pbuf *b, const struct nd_relay *r)
{
	pbuf_string(b, 1, r->pod_id);
	pbuf_string(b, 2, r->container_id);
	pbuf_string(b, 3, r->exec_id);
}

int nd_relay_done(const struct nd_relay *r)
{
	for (int i = 0; i < 2; i++)
		if (r->out[i].fd >= 0 && !r->out[i].flushed)
			return 0;
	return 1;
}

static void tell_done(struct hp_timer *t)
{
	struct nd_relay *r = container_of(t, struct nd_relay, done_timer);
	void (*fn)(void *) = r->on_done;

	r->on_done = NULL;
	if (fn)
		fn(r->done_ctx);
}

static void check_done(struct nd_relay *r)
{
	if (r->on_done && nd_relay_done(r) && !r->done_timer.armed)
		hp_timer_start(r->loop, &r->done_timer, 0, tell_done);
}

void nd_relay_when_done(struct nd_relay *r, void (*fn)(void *ctx), void *ctx)
{
	r->on_done = fn;
	r->done_ctx = ctx;
	if (fn)
		check_done(r);
	else
		hp_timer_stop(r->loop, &r->done_timer);
}

/* ---- output ---- */

static void close_writer(struct writer *w)
{
	if (w->w.events)
		hp_watch_stop(w->r->loop, &w->w);
	if (w->fd >= 0)
		close(w->fd);
	if (w->keep >= 0)
		close(w->keep);
	w->fd = w->keep = -1;
	pbuf_free(&w->pending);
}

/* Writes what is pending; at its end, the chunk is acknowledged and an ended writer closed. */
static void drain(struct writer *w)
{
	struct nd_relay *r = w->r;
	size_t done = 0;

	while (done < w->pending.n) {
		ssize_t n = write(w->fd, w->pending.p + done, w->pending.n - done);

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			/* containerd's reader is gone for good: nothing more can be written */
			nd_log(r->fifo, r->log_ctx, ND_WARN, "write to containerd stdio", "error", strerror(errno), NULL);
			done = w->pending.n;
			break;
		}
		done += (size_t)n;
	}
	if (done)
		memmove(w->pending.p, w->pending.p + done, w->pending.n - done);
	w->pending.n -= done;
	if (w->pending.n > 0) {
		if (!w->w.events)
			hp_watch_start(r->loop, &w->w, w->fd, EPOLLOUT, w->w.fn);
		return;
	}
	if (w->w.events)
		hp_watch_stop(r->loop, &w->w);
	if (w->pending_seq)
		written(r, w->pending_seq);
	w->pending_seq = 0;
	if (w->ended && !w->flushed) {
		close_writer(w);
		w->flushed = 1;
		check_done(r);
	}
}

static void writable(struct hp_watch *hw, uint32_t events)
{
	(void)events;
	drain(container_of(hw, struct writer, w));
}

static void end_all(struct nd_relay *r)
{
	for (int i = 0; i < 2; i++) {
		if (r->out[i].fd >= 0 && !r->out[i].ended) {
			r->out[i].ended = 1;
			drain(&r->out[i]);
		}
	}
}

static void ack_done(void *ctx, const struct hp_tstatus *st);

/*
 * Chunk `seq` is in containerd's fifo: the agent may let go of it and those
 * before (one AckOutput at a time, the latest seq each time). Until then it
 * keeps them, for a node daemon that restarts.
 */
static void written(struct nd_relay *r, uint64_t seq)
{
	static const struct hp_tcall_fns fns = { NULL, ack_done };
	struct pbuf b = { 0 };

	if (seq <= r->acked)
		return;
	if (seq > r->to_ack)
		r->to_ack = seq;
	if (r->acking || r->closed || r->ack_retry.armed)
		return;
	put_ref(&b, r);
	pbuf_uint(&b, 4, r->to_ack);
	pbuf_uint(&b, 5, r->generation);
	if (b.oom)
		return;
	r->acking_seq = r->to_ack;
	r->acking_gen = r->generation;
	r->acking = (struct hp_tcall *)1; /* a call that fails at once ends before this returns */
	{
		struct hp_tcall *k = hp_agent_call(r->agent, "AckOutput", b.p, b.n, -1, &fns, r);

		if (r->acking == (struct hp_tcall *)1)
			r->acking = k;
	}
	pbuf_free(&b);
}

static void ack_again(struct hp_timer *t)
{
	struct nd_relay *r = container_of(t, struct nd_relay, ack_retry);

	written(r, r->to_ack);
}

static void ack_done(void *ctx, const struct hp_tstatus *st)
{
	struct nd_relay *r = ctx;

	r->acking = NULL;
	if (st->code == 0 && r->acking_gen == r->generation && r->acking_seq > r->acked)
		r->acked = r->acking_seq;
	else if (st->code != 0)
		nd_log(r->fifo, r->log_ctx, ND_DEBUG, "acknowledge output", "container", r->container_id, "exec", r->exec_id, "error",
		       st->message, NULL);
	if (r->to_ack > r->acked && !r->closed)
		hp_timer_start(r->loop, &r->ack_retry, r->to_ack > r->acking_seq ? 0 : RETRY_MS, ack_again);
}

/* OutputChunk { stream = 1, data = 2, eof = 3, seq = 4, generation = 5 } */
static void on_chunk(void *ctx, const unsigned char *m, size_t len)
{
	struct nd_relay *r = ctx;
	const unsigned char *data = NULL;
	size_t data_len = 0, i = 0;
	uint64_t stream = 0, seq = 0, generation = 0, eof = 0;
	struct pb_field f;
	struct writer *w;

	while (pb_next(m, len, &i, &f) > 0) {
		if (f.num == 1 && f.wire == 0)
			stream = f.u;
		else if (f.num == 2 && f.wire == 2) {
			data = f.val;
			data_len = f.vlen;
		} else if (f.num == 3 && f.wire == 0)
			eof = f.u;
		else if (f.num == 4 && f.wire == 0)
			seq = f.u;
		else if (f.num == 5 && f.wire == 0)
			generation = f.u;
	}
	/* A restarted agent numbers its chunks anew. */
	if (generation != r->generation) {
		r->generation = generation;
		r->received = r->acked = r->to_ack = 0;
	}
	/* Sent again after a stream broke (AckOutput had not reached the agent): written already. */
	if (seq <= r->received)
		return;
	r->received = seq;
	w = stream < 2 && r->out[stream].fd >= 0 ? &r->out[stream] : NULL;
	if (!w || w->ended) {
		written(r, seq);
		return;
	}
	pbuf_raw(&w->pending, data, data_len);
	w->pending_seq = seq;
	if (eof)
		w->ended = 1;
	drain(w);
}

static void reopen(struct hp_timer *t)
{
	follow(container_of(t, struct nd_relay, reopen));
}

static void output_done(void *ctx, const struct hp_tstatus *st)
{
	struct nd_relay *r = ctx;

	r->output = NULL;
	if (r->closed)
		return;
	/* The stream ended well, or the agent has no such process (any more): nothing more will come. */
	if (st->code == 0 || st->code == HP_CODE_NOT_FOUND) {
		end_all(r);
		return;
	}
	nd_log(r->fifo, r->log_ctx, ND_DEBUG, "output stream broken; reopening", "container", r->container_id, "exec", r->exec_id, "error",
	       st->message, NULL);
	hp_timer_start(r->loop, &r->reopen, RETRY_MS, reopen);
}

static void follow(struct nd_relay *r)
{
	static const struct hp_tcall_fns fns = { on_chunk, output_done };
	struct pbuf b = { 0 };
	struct hp_tcall *k;

	if (r->closed)
		return;
	put_ref(&b, r);
	if (b.oom) {
		hp_timer_start(r->loop, &r->reopen, RETRY_MS, reopen);
		return;
	}
	r->output = (struct hp_tcall *)1;
	k = hp_agent_stream(r->agent, "Output", HP_TCALL_SERVER_STREAM, b.p, b.n, &fns, r);
	if (r->output == (struct hp_tcall *)1)
		r->output = k;
	pbuf_free(&b);
}

/* ---- input ---- */

static void input_done(void *ctx, const struct hp_tstatus *st)
{
	struct nd_relay *r = ctx;

	r->input = NULL;
	if (st->code != 0)
		nd_log(r->fifo, r->log_ctx, ND_WARN, "stdin to the DPU", "container", r->container_id, "error", st->message, NULL);
	if (r->stdin_closed) {
		void (*fn)(void *) = r->stdin_closed;

		r->stdin_closed = NULL;
		fn(r->stdin_ctx);
	}
}

/* InputChunk { pod_id = 1, container_id = 2, exec_id = 3, data = 4 }: the ids in the first only. */
static void send_input(struct nd_relay *r, const unsigned char *data, size_t len)
{
	static const struct hp_tcall_fns fns = { NULL, input_done };
	struct pbuf b = { 0 };

	if (!r->input) {
		put_ref(&b, r);
		if (b.oom)
			return;
		r->input = (struct hp_tcall *)1;
		{
			struct hp_tcall *k = hp_agent_stream(r->agent, "Input", HP_TCALL_CLIENT_STREAM, NULL, 0, &fns, r);

			if (r->input == (struct hp_tcall *)1)
				r->input = k;
		}
		if (!r->input) {
			pbuf_free(&b);
			return;
		}
		hp_tcall_send(r->input, b.p, b.n);
		b.n = 0;
	}
	pbuf_bytes(&b, 4, data, len);
	/* a send that failed the connection ended the stream (input_done) */
	if (!b.oom && r->input)
		hp_tcall_send(r->input, b.p, b.n);
	pbuf_free(&b);
}

/* Reads what stdin holds now; 0 at once when it is empty. */
static void read_stdin(struct nd_relay *r)
{
	unsigned char buf[65536];
	ssize_t n;

	while ((n = read(r->in.fd, buf, sizeof(buf))) > 0)
		send_input(r, buf, (size_t)n);
}

static void readable(struct hp_watch *w, uint32_t events)
{
	(void)events;
	read_stdin(container_of(w, struct nd_relay, in));
}

void nd_relay_close_stdin(struct nd_relay *r, void (*then)(void *ctx), void *ctx)
{
	if (r->in.events) {
		/* Data already in the fifo goes first. */
		read_stdin(r);
		hp_watch_stop(r->loop, &r->in);
		close(r->in.fd);
	}
	if (!r->input || r->stdin_closed) {
		/* nothing sent, or input already being closed: nothing to wait for */
		then(ctx);
		return;
	}
	r->stdin_closed = then;
	r->stdin_ctx = ctx;
	hp_tcall_close_send(r->input);
}

/* ---- the relay ---- */

static int open_writer(struct writer *w, const char *path)
{
	w->keep = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (w->keep < 0)
		return -errno;
	w->fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (w->fd < 0) {
		int r = -errno;

		close(w->keep);
		w->keep = -1;
		return r;
	}
	w->w.fn = writable;
	return 0;
}

struct nd_relay *nd_relay_start(const struct nd_relay_opts *o, char *err, size_t err_len)
{
	struct nd_relay *r = calloc(1, sizeof(*r));
	const char *paths[2] = { o->stdout_path, o->stderr_path };
	int rc = 0;

	if (!r) {
		snprintf(err, err_len, "open containerd's stdio fifos: out of memory");
		return NULL;
	}
	r->loop = o->loop;
	r->agent = o->agent;
	r->pod_id = strdup(o->pod_id);
	r->container_id = strdup(o->container_id);
	r->exec_id = strdup(o->exec_id ? o->exec_id : "");
	r->fifo = o->fifo;
	r->log_ctx = o->log_ctx;
	r->in.fd = -1;
	for (int i = 0; i < 2; i++) {
		r->out[i].r = r;
		r->out[i].fd = r->out[i].keep = -1;
	}
	if (!r->pod_id || !r->container_id || !r->exec_id)
		rc = -ENOMEM;
	for (int i = 0; i < 2 && rc == 0; i++) {
		if (paths[i] && paths[i][0] && (rc = open_writer(&r->out[i], paths[i])) == 0)
			r->nwriters++;
	}
	if (rc == 0 && o->stdin_path && o->stdin_path[0]) {
		int fd = open(o->stdin_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);

		if (fd < 0 || hp_watch_start(r->loop, &r->in, fd, EPOLLIN, readable) < 0) {
			rc = -errno;
			if (fd >= 0)
				close(fd);
		}
	}
	if (rc < 0) {
		snprintf(err, err_len, "open containerd's stdio fifos: %s", strerror(-rc));
		nd_relay_close(r);
		return NULL;
	}
	if (r->nwriters)
		follow(r);
	return r;
}

void nd_relay_close(struct nd_relay *r)
{
	void (*done)(void *), (*stdin_closed)(void *);
	void *done_ctx, *stdin_ctx;

	if (!r)
		return;
	/* Whoever waits for it is told, once it is gone. */
	done = r->on_done;
	done_ctx = r->done_ctx;
	stdin_closed = r->stdin_closed;
	stdin_ctx = r->stdin_ctx;
	hp_timer_stop(r->loop, &r->done_timer);
	r->closed = 1;
	hp_timer_stop(r->loop, &r->reopen);
	hp_timer_stop(r->loop, &r->ack_retry);
	if (r->output && r->output != (struct hp_tcall *)1)
		hp_tcall_cancel(r->output);
	if (r->acking && r->acking != (struct hp_tcall *)1)
		hp_tcall_cancel(r->acking);
	if (r->input && r->input != (struct hp_tcall *)1)
		hp_tcall_cancel(r->input);
	if (r->in.events) {
		hp_watch_stop(r->loop, &r->in);
		close(r->in.fd);
	}
	for (int i = 0; i < 2; i++)
		close_writer(&r->out[i]);
	free(r->pod_id);
	free(r->container_id);
	free(r->exec_id);
	free(r);
	if (done)
		done(done_ctx);
	if (stdin_closed)
		stdin_closed(stdin_ctx);
}
