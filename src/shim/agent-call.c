/*
 * heteropod-agent-call: the DPU agent asked from the node, in C, with the node's
 * own shim config ([dpu] address and TLS files, read as the shim reads them) or
 * with the address and files given.
 *
 *   heteropod-agent-call [--config FILE] [--address HOST:PORT --ca F --cert F --key F]
 *                        [--timeout-ms N] [--repeat N] Health|Capacity
 *   heteropod-agent-call [...] [--after SEQ] [--count N] Events POD_ID
 *
 * Prints the answer's fields, one `name value` a line. Events follows the pod's
 * task events on the DPU (after sequence SEQ, default 0: every one the agent
 * keeps), one line each as it comes, `sequence S topic T forward_bytes B`,
 * until the agent ends the stream or, with --count, N have come. With --repeat N it makes
 * N calls on one connection and prints only what they cost: `calls N wall_ms
 * W p50_ms M p90_ms P cpu_ms C` (per call: the mean, median and 90th
 * percentile of the wall time, and this process's CPU; the connection's set-up
 * not counted: one call more sets it up), for bench-agent. Exit status: 0 answered, 1 failed (the reason on
 * stderr), 2 a bad command line.
 */
#include "../agentapi/agent-conn.h"
#include "../common/loop.h"
#include "../proto/pb.h"
#include "shim-config.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Health { ok = 1, version = 2, uptime_seconds = 3 (double), problem = 4, listen_address = 5 } and
 * Capacity { cpus = 1, cpuset = 2, memory_total_bytes = 3, memory_free_bytes = 4, running_containers = 5 }:
 * every field printed, proto3 defaults included. */
static int print_answer(const char *method, const unsigned char *p, size_t n)
{
	static const char *const health[] = { "ok", "version", "uptime_seconds", "problem", "listen_address" };
	static const char *const capacity[] = { "cpus", "cpuset", "memory_total_bytes", "memory_free_bytes", "running_containers" };
	/* proto3's defaults, for fields the answer leaves out */
	static const char *const health_unset[] = { "false", "", "0", "", "" };
	static const char *const capacity_unset[] = { "0", "", "0", "0", "0" };
	int is_health = strcmp(method, "Health") == 0;
	const char *const *names = is_health ? health : capacity;
	char values[5][256];
	struct pb_field f;
	size_t i;
	int r;

	for (i = 0; i < 5; i++)
		snprintf(values[i], sizeof(values[i]), "%s", (is_health ? health_unset : capacity_unset)[i]);
	i = 0;
	while ((r = pb_next(p, n, &i, &f)) > 0) {
		char *v;

		if (f.num < 1 || f.num > 5)
			continue;
		v = values[f.num - 1];
		if (f.wire == 2)
			snprintf(v, 256, "%.*s", (int)(f.vlen > 255 ? 255 : f.vlen), (const char *)f.val);
		else if (f.wire == 0 && is_health && f.num == 1)
			snprintf(v, 256, "%s", f.u ? "true" : "false");
		else if (f.wire == 0)
			snprintf(v, 256, "%llu", (unsigned long long)f.u);
		else if (f.wire == 1) {
			double d;

			memcpy(&d, f.start + f.total - 8, 8); /* little-endian, as on every machine we build for */
			snprintf(v, 256, "%.3f", d);
		}
	}
	if (r < 0) {
		fprintf(stderr, "heteropod-agent-call: %s: the answer does not decode\n", method);
		return 1;
	}
	for (i = 0; i < 5; i++)
		printf("%s %s\n", names[i], values[i]);
	return 0;
}

/* EventsRequest { pod_id = 1, after = 2 }; sizes it when w->p is NULL. */
static void events_request(struct pb_writer *w, const char *pod, long after)
{
	pbw_string(w, 1, pod);
	pbw_uint(w, 2, (uint64_t)after);
}

/* What main waits for: the calls' outcome, on the loop. */
struct run {
	struct hp_loop *loop;
	struct hp_agent *agent;
	const char *method;
	int status;
	/* unary, with --repeat: the timed calls' times, and their totals */
	long calls, made;
	double *times, started, wall0, cpu0, total_ms, cpu_ms;
	/* Events */
	long count, left;
	struct hp_tcall *stream;
};

static void failed(struct run *r, const struct hp_tstatus *st)
{
	fprintf(stderr, "heteropod-agent-call: %s\n", st->message);
	r->status = 1;
	hp_loop_stop(r->loop);
}

/* TaskEvent { sequence = 1, topic = 2, forward = 3, termination_message = 4 }: one line. */
static void print_event(void *ctx, const unsigned char *m, size_t len)
{
	struct run *r = ctx;
	unsigned long long sequence = 0;
	const unsigned char *topic = NULL;
	size_t topic_len = 0, forward = 0, i = 0;
	struct pb_field f;

	if (!r->stream)
		return;
	while (pb_next(m, len, &i, &f) > 0) {
		if (f.num == 1 && f.wire == 0)
			sequence = f.u;
		else if (f.num == 2 && f.wire == 2) {
			topic = f.val;
			topic_len = f.vlen;
		} else if (f.num == 3 && f.wire == 2)
			forward = f.vlen;
	}
	printf("sequence %llu topic %.*s forward_bytes %zu\n", sequence, (int)topic_len, topic ? (const char *)topic : "", forward);
	fflush(stdout);
	if (r->count > 0 && --r->left == 0) {
		/* Our side closed, with no message: the agent ends its handler. */
		hp_tcall_cancel(r->stream);
		r->stream = NULL;
		hp_loop_stop(r->loop);
	}
}

static void events_done(void *ctx, const struct hp_tstatus *st)
{
	struct run *r = ctx;

	r->stream = NULL;
	if (st->code != 0)
		failed(r, st);
	hp_loop_stop(r->loop);
}

static void unary_done(void *ctx, const struct hp_tstatus *st);

static void next_call(struct run *r)
{
	static const struct hp_tcall_fns fns = { NULL, unary_done };

	r->started = seconds(CLOCK_MONOTONIC);
	hp_agent_call(r->agent, r->method, NULL, 0, -1, &fns, r);
}

/* A --repeat run makes one call more than it times: the first sets the connection up. */
static void unary_done(void *ctx, const struct hp_tstatus *st)
{
	struct run *r = ctx;
	double now = seconds(CLOCK_MONOTONIC);

	if (st->code != 0) {
		failed(r, st);
		return;
	}
	if (!r->times) {
		r->status = print_answer(r->method, st->payload, st->len);
		hp_loop_stop(r->loop);
		return;
	}
	if (r->made == 0) {
		r->wall0 = now;
		r->cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
	} else {
		r->times[r->made - 1] = (now - r->started) * 1000;
	}
	if (r->made == r->calls) {
		r->total_ms = (now - r->wall0) * 1000;
		r->cpu_ms = (seconds(CLOCK_PROCESS_CPUTIME_ID) - r->cpu0) * 1000;
		hp_loop_stop(r->loop);
		return;
	}
	r->made++;
	next_call(r);
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int usage(const char *why)
{
	fprintf(stderr, "heteropod-agent-call: %s\n"
			"usage: heteropod-agent-call [--config FILE] [--address HOST:PORT --ca F --cert F --key F] [--timeout-ms N] [--repeat N] Health|Capacity\n"
			"       heteropod-agent-call [...] [--after SEQ] [--count N] Events POD_ID\n",
		why);
	return 2;
}

int main(int argc, char **argv)
{
	const char *config = NULL, *address = NULL, *method = NULL, *pod = NULL;
	struct run run = { 0 };
	long after = 0;
	struct hp_agent_tls tls = { NULL, NULL, NULL };
	struct shim_config c;
	long timeout_ms = -1, repeat = 0;
	int have_config = 0, status = 0;
	char err[1024];

	signal(SIGPIPE, SIG_IGN); /* an agent that closes the connection is an error, not the end */
	for (int i = 1; i < argc; i++) {
		const char *o = argv[i];
		char *end;

		if (o[0] != '-') {
			if (method && (pod || strcmp(method, "Events") != 0))
				return usage("one method only (and a pod for Events)");
			*(method ? &pod : &method) = o;
			continue;
		}
		if (i + 1 >= argc)
			return usage("an option without its value");
		if (strcmp(o, "--config") == 0)
			config = argv[++i];
		else if (strcmp(o, "--address") == 0)
			address = argv[++i];
		else if (strcmp(o, "--ca") == 0)
			tls.ca_file = argv[++i];
		else if (strcmp(o, "--cert") == 0)
			tls.cert_file = argv[++i];
		else if (strcmp(o, "--key") == 0)
			tls.key_file = argv[++i];
		else if (strcmp(o, "--timeout-ms") == 0 || strcmp(o, "--repeat") == 0 || strcmp(o, "--count") == 0) {
			long v = strtol(argv[++i], &end, 10);

			if (*end || v < 1)
				return usage("--timeout-ms, --repeat and --count take a positive number");
			*(strcmp(o, "--repeat") == 0 ? &repeat : strcmp(o, "--count") == 0 ? &run.count : &timeout_ms) = v;
		} else if (strcmp(o, "--after") == 0) {
			after = strtol(argv[++i], &end, 10);
			if (*end || after < 0)
				return usage("--after takes a sequence number");
		} else {
			return usage("unknown option");
		}
	}
	if (!method || (strcmp(method, "Health") != 0 && strcmp(method, "Capacity") != 0 && strcmp(method, "Events") != 0))
		return usage("the method is Health, Capacity or Events");
	if (strcmp(method, "Events") == 0 && (!pod || repeat))
		return usage("Events takes a pod id, and no --repeat");
	if (!address || !tls.ca_file || !tls.cert_file || !tls.key_file) {
		if (shim_config_load(config ? config : DEFAULT_CONFIG, &c, err, sizeof(err)) != 0) {
			fprintf(stderr, "heteropod-agent-call: %s\n", err);
			return 1;
		}
		have_config = 1;
		address = address ? address : c.dpu_address;
		tls.ca_file = tls.ca_file ? tls.ca_file : c.dpu_ca;
		tls.cert_file = tls.cert_file ? tls.cert_file : c.dpu_cert;
		tls.key_file = tls.key_file ? tls.key_file : c.dpu_key;
		timeout_ms = timeout_ms > 0 ? timeout_ms : c.dpu_timeout_ms;
		if (!address[0]) {
			fprintf(stderr, "heteropod-agent-call: %s: no DPU agent is configured ([dpu] address)\n", config ? config : DEFAULT_CONFIG);
			shim_config_free(&c);
			return 1;
		}
	}
	if (hp_loop_new(&run.loop) < 0) {
		fprintf(stderr, "heteropod-agent-call: no event loop\n");
		status = 1;
	} else if (!(run.agent = hp_agent_new(run.loop, address, &tls, timeout_ms > 0 ? timeout_ms : DEFAULT_DPU_TIMEOUT_MS, err,
					      sizeof(err)))) {
		fprintf(stderr, "heteropod-agent-call: %s\n", err);
		status = 1;
	} else if (pod) {
		static const struct hp_tcall_fns fns = { print_event, events_done };
		unsigned char req[512];
		struct pb_writer w = { NULL, 0 };

		events_request(&w, pod, after);
		if (w.n > sizeof(req)) {
			fprintf(stderr, "heteropod-agent-call: the pod id is too long\n");
			status = 1;
		} else {
			w = (struct pb_writer){ req, 0 };
			events_request(&w, pod, after);
			run.left = run.count;
			run.stream = hp_agent_stream(run.agent, "Events", HP_TCALL_SERVER_STREAM, req, w.n, &fns, &run);
			if (run.stream)
				hp_loop_run(run.loop);
			/* A cancel still queued reaches the agent before we go. */
			for (long long until = hp_now_ms() + 2000; hp_agent_queued(run.agent) > 0 && hp_now_ms() < until;)
				hp_loop_run_once(run.loop, 50);
			status = run.status;
		}
	} else {
		run.method = method;
		run.calls = repeat;
		if (repeat && !(run.times = calloc((size_t)repeat, sizeof(double)))) {
			fprintf(stderr, "heteropod-agent-call: out of memory\n");
			status = 1;
		} else {
			next_call(&run);
			hp_loop_run(run.loop);
			status = run.status;
		}
		if (status == 0 && repeat) {
			long n = repeat;
			double w = run.total_ms / (double)n, c = run.cpu_ms / (double)n;

			qsort(run.times, (size_t)n, sizeof(double), by_value);
			printf("calls %ld wall_ms %.4f p50_ms %.4f p90_ms %.4f cpu_ms %.4f\n", n, w, run.times[(n - 1) / 2], run.times[(n * 9 + 9) / 10 - 1], c);
		}
		free(run.times);
	}
	hp_agent_free(run.agent);
	hp_loop_free(run.loop);
	if (have_config)
		shim_config_free(&c);
	return status;
}
