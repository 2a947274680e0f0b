/*
 * A pod's DPU half in the C node daemon (noded.h), as src/shim/pod-router.ts
 * (SandboxRuntime), src/shim/dpu-runtime.ts (DpuAgentRuntime, SplitLink) do:
 *
 *   - the sandbox's Create goes to runc's shim while the agent is asked for the
 *     pod's DPU half (Health, then CreatePod; Capacity asked meanwhile, for the
 *     first container's placement); the Create waits for the DPU half, not for
 *     the network: once there is a DPU half the split network is joined (the
 *     host half here, the DPU half by the agent's OpenLink) while the kubelet
 *     goes on, and the containers wait for it. The sandbox's Delete separates
 *     the halves first;
 *   - a container placed on the DPU is created there (its layers by digest,
 *     shipped by `heteropod layers ship` when the agent lacks them, its bind
 *     mounts copied), its stdio relayed (relay.c), its calls relayed to the
 *     agent as containerd encoded them;
 *   - the DPU's task events come back on one stream per pod and go to
 *     containerd in order with the node's (events.c).
 */
#include "noded.h"

#include "../agentapi/agent-conn.h"
#include "../proto/pbuf.h"
#include "../xpu/xpu.h"
#include "half.h"
#include "layers.h"
#include "mounts.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define RETRY_MS 500
#define CREATE_TIMEOUT_MS 60000
#define OPEN_LINK_TIMEOUT_MS 30000
#define CLOSE_LINK_TIMEOUT_MS 10000
#define REMOVE_POD_TIMEOUT_MS 30000
#define POLL_MS 200
#define POLL_IDLE_MS 800
#define POLL_SETTLE_MS 10000
#define DELETE_OUTPUT_WAIT_MS 5000
#define OUTPUT_GRACE_MS 60000

struct nd_dpu {
	struct nd_pod *p;
	int ready; /* CreatePod answered */
	int stopping;
	/* events */
	struct hp_tcall *events;
	struct hp_timer events_retry;
	uint64_t last_event;
	struct nd_proc *procs;
	/* the split network */
	struct nd_half *half;
	char pod_ip[64];
	int prefix;
	char *saved_sysctls;
	int dpu_open; /* the agent's half is open */
	uint16_t *dpu_ports; /* its listening ports, to apply to the host half */
	size_t n_dpu_ports;
	int apply_dpu_ports, poll_wanted, half_busy, closing;
	struct hp_timer poll_timer;
	long long changed_at;
	uint16_t *host_ports; /* the host half's, as last seen */
	size_t n_host_ports;
	char *sent_ports; /* as the DPU half last acknowledged them */
	int sending;
	struct hp_timer ports_retry;
	struct hp_tcall *watch;
	struct hp_timer reopen_timer;
	int outage;
	int link_closed; /* closed for good: never opened again */
	int close_pending; /* a close asked while the link was being joined */
	int resume_link;   /* a takeover's: the host half taken over once the agent answers */
	void (*close_then)(struct nd_pod *p); /* told once both halves are closed */
	struct hp_timer create_retry;
};

static const char *problem_of(struct nd_pod *p)
{
	return p->dpu_problem && p->dpu_problem[0] ? p->dpu_problem : NULL;
}

/* ---- work on the workers ---- */

static void work_run(struct hp_job *j)
{
	struct nd_work *w = container_of(j, struct nd_work, job);

	w->run(w);
}

static void work_done(struct hp_job *j)
{
	struct nd_work *w = container_of(j, struct nd_work, job);

	w->done(w);
	free(w);
}

void nd_work(struct nd_daemon *d, struct nd_work *w)
{
	w->job.run = work_run;
	w->job.done = work_done;
	if (hp_job_submit(d->loop, &w->job) < 0) {
		/* no worker could be started: run it here, late but right */
		w->run(w);
		w->done(w);
		free(w);
	}
}

static struct nd_work *new_work(void (*run)(struct nd_work *), void (*done)(struct nd_work *), void *ctx)
{
	struct nd_work *w = calloc(1, sizeof(*w));

	if (w) {
		w->run = run;
		w->done = done;
		w->ctx = ctx;
	}
	return w;
}

/* ---- messages ---- */

/* TaskCall { pod_id = 1, request = 2 } */
static int task_call(struct pbuf *b, const char *pod, const void *req, size_t len)
{
	pbuf_string(b, 1, pod);
	pbuf_bytes(b, 2, req, len);
	return b->oom ? -ENOMEM : 0;
}

/* A bytes field of a message, or NULL. */
static const unsigned char *field_bytes(const unsigned char *m, size_t n, uint32_t num, size_t *len)
{
	struct pb_field f;
	size_t i = 0;
	const unsigned char *v = NULL;

	*len = 0;
	while (pb_next(m, n, &i, &f) > 0) {
		if (f.num == num && f.wire == 2) {
			v = f.val;
			*len = f.vlen;
		}
	}
	return v;
}

static uint64_t field_uint(const unsigned char *m, size_t n, uint32_t num)
{
	struct pb_field f;
	size_t i = 0;
	uint64_t v = 0;

	while (pb_next(m, n, &i, &f) > 0)
		if (f.num == num && f.wire == 0)
			v = f.u;
	return v;
}

char *nd_field_str(const unsigned char *m, size_t n, uint32_t num)
{
	size_t len;
	const unsigned char *v = field_bytes(m, n, num, &len);
	char *s = malloc(len + 1);

	if (s) {
		if (len)
			memcpy(s, v, len);
		s[len] = '\0';
	}
	return s;
}

/* The request with every field `num` removed and, when `with` is not NULL, one holding it appended. */
static int replace_field(const unsigned char *m, size_t n, uint32_t num, const void *with, size_t with_len, struct pbuf *out)
{
	struct pb_field f;
	size_t i = 0;
	int r;

	while ((r = pb_next(m, n, &i, &f)) > 0)
		if (f.num != num)
			pbuf_raw(out, f.start, f.total);
	if (r < 0)
		return r;
	if (with)
		pbuf_bytes(out, num, with, with_len);
	return out->oom ? -ENOMEM : 0;
}

/* A call to the agent for the pod, or `done` at once with why it cannot be made; b is freed. */
static void agent_call(struct nd_pod *p, const char *method, struct pbuf *b, long long timeout_ms,
		       void (*done)(void *ctx, const struct hp_tstatus *st), void *ctx)
{
	const struct hp_tcall_fns fns = { NULL, done };
	const char *problem;
	struct hp_agent *agent = nd_agent(p->d, &problem);

	if (!agent || b->oom) {
		struct hp_tstatus st = { .code = HP_CODE_UNAVAILABLE, .local = -ENOTCONN, .message = agent ? "out of memory" : problem };

		done(ctx, &st);
	} else {
		hp_agent_call(agent, method, b->p, b->n, timeout_ms, &fns, ctx);
	}
	pbuf_free(b);
}

/* ---- the sandbox: runc's shim ---- */

struct nd_sandbox_op {
	struct nd_pod *p;
	struct hp_treq *r;
	char *id;
	int runc_done, connect_done;
	int runc_code;
	char *runc_message;
	unsigned char *response;
	size_t response_len;
};

static struct hp_tclient *runc_client(struct nd_pod *p)
{
	const char *addr = p->a.runc_address;
	char err[256];

	if (p->runc && !hp_tclient_failed(p->runc))
		return p->runc;
	hp_tclient_destroy(p->runc);
	if (strncmp(addr, "unix://", 7) == 0)
		addr += 7;
	p->runc = hp_tclient_unix(p->d->loop, addr, "runc's shim", 5000, err, sizeof(err));
	return p->runc;
}

typedef void (*runc_done_fn)(void *ctx, const struct hp_tstatus *st);

static void runc_call(struct nd_pod *p, const char *method, const void *req, size_t len, runc_done_fn done, void *ctx)
{
	struct hp_tcall_fns fns = { NULL, done };
	struct hp_tclient *c = runc_client(p);

	if (!c) {
		struct hp_tstatus st = { .code = HP_CODE_UNAVAILABLE, .message = "runc's shim: no connection" };

		done(ctx, &st);
		return;
	}
	hp_tcall_start(c, ND_TASK_SERVICE, method, req, len, NULL, &fns, ctx);
}

static void join(struct nd_pod *p);
static void close_link(struct nd_pod *p, void (*then)(struct nd_pod *p));
static void follow_events(struct nd_dpu *dpu);
static void dpu_free(struct nd_dpu *dpu);

static void sandbox_op_free(struct nd_sandbox_op *op)
{
	free(op->id);
	free(op->runc_message);
	free(op->response);
	free(op);
}

static void ignore_status(void *ctx, const struct hp_tstatus *st)
{
	(void)ctx;
	(void)st;
}

/* Both answers are in: the sandbox's Create is answered. */
static void sandbox_settled(struct nd_sandbox_op *op)
{
	struct nd_pod *p = op->p;

	if (!op->runc_done || !op->connect_done)
		return;
	p->sandbox_op = NULL;
	if (p->disposed) {
		hp_treq_reply(op->r, HP_CODE_UNAVAILABLE, "the pod is gone", NULL, 0, NULL, 0);
	} else if (op->runc_code != 0) {
		/* runc could not make it: whatever was joined goes */
		close_link(p, NULL);
		hp_treq_reply(op->r, op->runc_code, op->runc_message, NULL, 0, NULL, 0);
	} else if (problem_of(p) && p->offload.require) {
		struct pbuf b = { 0 };

		/* The DPU half could not be had: the sandbox runc made goes again. */
		pbuf_string(&b, 1, op->id);
		if (!b.oom)
			runc_call(p, "Delete", b.p, b.n, ignore_status, NULL);
		pbuf_free(&b);
		nd_fail(op->r, HP_CODE_FAILED_PRECONDITION, "create task %s: heteropod.io/offload-policy=require: %s", op->id, p->dpu_problem);
	} else {
		nd_task_add(p, op->id, p->a.bundle, ND_RT_SANDBOX, ND_CREATED);
		nd_log(&p->fifo, p->log_ctx, ND_INFO, "task created", "id", op->id, "runtime", "runc", NULL);
		nd_reply_placed(p, op->r, ND_PLACED_SANDBOX, op->response, op->response_len);
	}
	sandbox_op_free(op);
	nd_pod_unref(p);
}

static void sandbox_runc_done(void *ctx, const struct hp_tstatus *st)
{
	struct nd_sandbox_op *op = ctx;

	op->runc_done = 1;
	op->runc_code = st->code;
	if (st->code != 0) {
		char *m;

		op->runc_message = asprintf(&m, "create task %s: %s", op->id, st->message) < 0 ? NULL : m;
	} else if ((op->response = malloc(st->len ? st->len : 1))) {
		memcpy(op->response, st->payload, st->len);
		op->response_len = st->len;
	}
	sandbox_settled(op);
}

/* ---- the DPU half: asked for at the sandbox's Create ---- */

static void settle(struct nd_pod *p, const char *problem)
{
	struct nd_sandbox_op *op = p->sandbox_op;

	p->connecting = 0;
	free(p->dpu_problem);
	p->dpu_problem = strdup(problem ? problem : "");
	if (problem && problem[0]) {
		if (p->dpu) {
			dpu_free(p->dpu);
			p->dpu = NULL;
		}
		if (!p->offload.require)
			nd_log(&p->fifo, p->log_ctx, ND_WARN, "offload fallback: the pod runs on the host", "reason", problem, NULL);
	} else {
		nd_log(&p->fifo, p->log_ctx, ND_INFO, "pod has a DPU half", "agent", p->d->cfg.dpu_address, NULL);
		join(p);
	}
	nd_pod_save(p);
	if (op) {
		op->connect_done = 1;
		sandbox_settled(op);
	}
}

/* The pod went while the agent was asked: its sandbox's Create is answered all the same. */
static void connect_abandoned(struct nd_pod *p)
{
	struct nd_sandbox_op *op = p->sandbox_op;

	p->connecting = 0;
	if (op) {
		op->connect_done = 1;
		sandbox_settled(op);
	}
}

/* An answer of the agent while the DPU half is asked for: 1 when it is to be read on. */
static int connect_answered(struct nd_pod *p, const struct hp_tstatus *st)
{
	if (nd_pod_unref(p))
		return 0;
	if (p->disposed || !p->dpu) {
		connect_abandoned(p);
		return 0;
	}
	if (st->code != 0) {
		settle(p, st->message);
		return 0;
	}
	return 1;
}

static void create_pod_done(void *ctx, const struct hp_tstatus *st)
{
	struct nd_pod *p = ctx;

	if (!connect_answered(p, st))
		return;
	p->dpu->ready = 1;
	follow_events(p->dpu);
	settle(p, NULL);
}

/* CreatePodRequest { pod_id = 1, namespace = 2, pod_name = 3, pod_namespace = 4 } */
static void create_pod(struct nd_pod *p, void (*done)(void *ctx, const struct hp_tstatus *st))
{
	struct pbuf b = { 0 };

	pbuf_string(&b, 1, p->a.group);
	pbuf_string(&b, 2, p->a.namespace);
	pbuf_string(&b, 3, p->name);
	pbuf_string(&b, 4, p->pod_namespace);
	nd_pod_ref(p);
	agent_call(p, "CreatePod", &b, -1, done, p);
}

static void capacity_prefetched(struct nd_kept_waiter *w, const struct hp_tstatus *st)
{
	(void)st;
	free(w);
}

struct health_wait {
	struct nd_kept_waiter w;
	struct nd_pod *p;
};

/* HealthResponse { ok = 1, problem = 4 } */
static void health_answered(struct nd_kept_waiter *w, const struct hp_tstatus *st)
{
	struct health_wait *h = container_of(w, struct health_wait, w);
	struct nd_pod *p = h->p;
	char problem[1024];

	free(h);
	if (!connect_answered(p, st))
		return;
	if (!field_uint(st->payload, st->len, 1)) {
		char *why = nd_field_str(st->payload, st->len, 4);

		snprintf(problem, sizeof(problem), "DPU agent at %s is unhealthy: %s", p->d->cfg.dpu_address, why ? why : "");
		free(why);
		settle(p, problem);
		return;
	}
	/* Asked now, while runc creates the sandbox: the first container's placement finds the answer. */
	{
		struct nd_kept_waiter *cw = calloc(1, sizeof(*cw));

		if (cw) {
			cw->fn = capacity_prefetched;
			nd_kept_get(p->d, &p->d->capacity, cw);
		}
	}
	create_pod(p, create_pod_done);
}

static void connect_dpu(struct nd_pod *p)
{
	struct health_wait *h = calloc(1, sizeof(*h));

	if (!(p->dpu = calloc(1, sizeof(*p->dpu))) || !h) {
		free(h);
		settle(p, "out of memory");
		return;
	}
	p->dpu->p = p;
	p->connecting = 1;
	h->p = p;
	h->w.fn = health_answered;
	nd_pod_ref(p);
	nd_kept_get(p->d, &p->d->health, &h->w);
}

/* ---- the sandbox's spec: the clean-up hook ---- */

/*
 * The poststop hook the daemon puts in an offloading pod's sandbox spec
 * (hooks/heteropod-netns-cleanup, src/netns/hook.ts cleanupHook): runc runs it
 * with an environment of its own, whose PATH finds node and the node's tools.
 */
static int add_cleanup_hook(struct nd_daemon *d, const char *bundle, json_t *spec, char *err, size_t err_len)
{
	const char *hook = d->hook_path;
	char file[PATH_MAX + 16], tmp[PATH_MAX + 32];
	json_t *hooks, *poststop, *h, *copy;
	size_t i;
	int r;

	copy = json_deep_copy(spec);
	hooks = json_object_get(copy, "hooks");
	if (!json_is_object(hooks)) {
		hooks = json_object();
		json_object_set_new(copy, "hooks", hooks);
	}
	poststop = json_object_get(hooks, "poststop");
	if (!json_is_array(poststop)) {
		poststop = json_array();
		json_object_set_new(hooks, "poststop", poststop);
	}
	json_array_foreach (poststop, i, h) {
		const char *path = json_string_value(json_object_get(h, "path"));

		if (path && strcmp(path, hook) == 0) {
			json_decref(copy);
			return 0;
		}
	}
	json_array_append_new(poststop, json_pack("{s:s, s:[s], s:[s], s:i}", "path", hook, "args", "heteropod-netns-cleanup", "env",
						  d->hook_env, "timeout", 30));
	snprintf(file, sizeof(file), "%s/config.json", bundle);
	snprintf(tmp, sizeof(tmp), "%s.tmp", file);
	r = json_dump_file(copy, tmp, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(copy);
	if (r < 0 || rename(tmp, file) < 0) {
		snprintf(err, err_len, "add the network clean-up hook: write bundle spec %.2048s: %s", file, strerror(errno));
		unlink(tmp);
		return -EIO;
	}
	return 0;
}

void nd_sandbox_create(struct nd_pod *p, struct hp_treq *r, const char *id, const char *bundle, json_t *spec)
{
	struct nd_sandbox_op *op = calloc(1, sizeof(*op));
	struct pbuf b = { 0 };
	char err[HP_ERR_MAX + 64];

	if (!op || !(op->id = strdup(id))) {
		free(op);
		nd_fail(r, HP_CODE_INTERNAL, "create task %s: out of memory", id);
		return;
	}
	/* Only an offloading pod's spec is touched: the hook, for a daemon that dies. */
	if (add_cleanup_hook(p->d, bundle, spec, err, sizeof(err)) < 0) {
		sandbox_op_free(op);
		nd_fail(r, HP_CODE_INTERNAL, "create task %s: %s", id, err);
		return;
	}
	op->p = p;
	op->r = r;
	p->sandbox_op = op;
	nd_pod_ref(p);
	connect_dpu(p);
	/* runc's Create, with runc's options in place of ours */
	if (replace_field(r->payload, r->len, 10, p->d->runc_options_len ? p->d->runc_options : NULL, p->d->runc_options_len, &b) < 0) {
		struct hp_tstatus st = { .code = HP_CODE_INVALID_ARGUMENT, .message = "malformed Create request" };

		sandbox_runc_done(op, &st);
	} else {
		runc_call(p, "Create", b.p, b.n, sandbox_runc_done, op);
	}
	pbuf_free(&b);
}

/* ---- the split network ---- */

static void run_half_ops(struct nd_pod *p);
static void send_ports(struct nd_pod *p);
static void follow_ports(struct nd_pod *p);

static void half_log(void *ctx, const char *level, const char *msg)
{
	struct nd_pod *p = ctx;

	nd_log(&p->fifo, p->log_ctx, strcmp(level, "error") == 0 ? ND_ERROR : ND_WARN, msg, NULL);
}

static int host_mode(const char *mode)
{
	return strcmp(mode, "poll") == 0 ? XPU_MODE_POLL : strcmp(mode, "sleep") == 0 ? XPU_MODE_SLEEP
	       : strcmp(mode, "elastic") == 0				       ? XPU_MODE_ELASTIC
									       : XPU_MODE_SERVED;
}

struct open_link {
	struct nd_pod *p;
	struct nd_daemon *d;
	char *netns;
	int resume;
	struct nd_half_opts ho; /* what the worker opens, copied on the loop thread */
	char pod_id[256], pod_ip[64], *sysctls;
	uint16_t *declared;
	/* the host half: opened on a worker; the DPU half: OpenLink */
	int host_done, dpu_done;
	struct nd_half *half;
	char host_err[1024], dpu_err[1024];
	uint16_t *dpu_ports;
	size_t n_dpu_ports;
};

static void link_opened(struct open_link *o);

static void join_failed(struct nd_pod *p, const char *problem)
{
	struct nd_create *c;

	free(p->dpu_problem);
	p->dpu_problem = strdup(problem);
	if (p->dpu) {
		void (*then)(struct nd_pod *) = p->dpu->close_pending ? p->dpu->close_then : NULL;

		p->dpu->close_pending = 0;
		nd_dpu_shutdown(p);
		if (then)
			then(p);
	}
	nd_pod_save(p);
	if (!p->offload.require)
		nd_log(&p->fifo, p->log_ctx, ND_WARN, "offload fallback: the pod runs on the host", "sandbox", p->a.group, "reason", problem, NULL);
	p->joining = 0;
	while ((c = p->waiting)) {
		p->waiting = c->next;
		if (p->offload.require) {
			nd_fail(c->r, HP_CODE_FAILED_PRECONDITION, "create task %s: heteropod.io/offload-policy=require: %s", c->id, problem);
			nd_create_free(c);
		} else {
			nd_create_resume(c);
		}
	}
}

static void joined(struct nd_pod *p)
{
	struct nd_create *c;

	p->joining = 0;
	if (p->dpu && p->dpu->close_pending) {
		p->dpu->close_pending = 0;
		close_link(p, p->dpu->close_then);
	}
	nd_pod_save(p);
	while ((c = p->waiting)) {
		p->waiting = c->next;
		nd_create_resume(c);
	}
}

static void half_open_run(struct nd_work *w)
{
	struct open_link *o = w->ctx;

	w->rc = nd_half_open(&o->ho, &o->half, o->host_err, sizeof(o->host_err));
}

static void half_open_done(struct nd_work *w)
{
	struct open_link *o = w->ctx;

	o->host_done = 1;
	link_opened(o);
}

/* LinkInfo { listening_ports = 5 (repeated uint32, packed or not) } */
static void decode_ports(const unsigned char *m, size_t n, uint32_t num, uint16_t **ports, size_t *count)
{
	struct pb_field f;
	size_t i = 0, cap = 0;

	free(*ports);
	*ports = NULL;
	*count = 0;
	while (pb_next(m, n, &i, &f) > 0) {
		if (f.num != num)
			continue;
		if (f.wire == 0) {
			if (*count == cap && !(*ports = realloc(*ports, (cap = cap * 2 + 8) * sizeof(uint16_t))))
				return;
			(*ports)[(*count)++] = (uint16_t)f.u;
		} else if (f.wire == 2) {
			size_t j = 0;

			while (j < f.vlen) {
				uint64_t v = 0;
				int shift = 0;

				while (j < f.vlen) {
					unsigned char c = f.val[j++];

					v |= (uint64_t)(c & 0x7f) << shift;
					shift += 7;
					if (!(c & 0x80))
						break;
				}
				if (*count == cap && !(*ports = realloc(*ports, (cap = cap * 2 + 8) * sizeof(uint16_t))))
					return;
				(*ports)[(*count)++] = (uint16_t)v;
			}
		}
	}
}

static void open_link_answered(void *ctx, const struct hp_tstatus *st)
{
	struct open_link *o = ctx;

	o->dpu_done = 1;
	if (st->code != 0)
		snprintf(o->dpu_err, sizeof(o->dpu_err), "the DPU half: %s", st->message);
	else
		decode_ports(st->payload, st->len, 5, &o->dpu_ports, &o->n_dpu_ports);
	link_opened(o);
}

/* OpenLinkRequest { pod_id = 1, pod_ip = 2, declared_dpu_ports = 3, pod_prefix_length = 4 } */
static void open_dpu_half(struct nd_pod *p, void (*done)(void *, const struct hp_tstatus *), void *ctx)
{
	struct pbuf b = { 0 };

	pbuf_string(&b, 1, p->a.group);
	pbuf_string(&b, 2, p->dpu->pod_ip);
	pbuf_packed(&b, 3, p->declared_ports, p->n_declared);
	pbuf_uint(&b, 4, (uint64_t)p->dpu->prefix);
	agent_call(p, "OpenLink", &b, OPEN_LINK_TIMEOUT_MS, done, ctx);
}

static void open_link_free(struct open_link *o)
{
	free(o->netns);
	free(o->dpu_ports);
	free(o->sysctls);
	free(o->declared);
	free(o);
}

static void half_close_run(struct nd_work *w)
{
	w->rc = nd_half_close(w->ctx, w->err, sizeof(w->err));
}

static void half_close_done(struct nd_work *w)
{
	if (w->rc < 0)
		nd_log(NULL, NULL, ND_ERROR, "close the pod's split network", "error", w->err, NULL);
}

/* Closes a host half on a worker, in the background. */
static void close_half_later(struct nd_daemon *d, struct nd_half *h)
{
	struct nd_work *w = new_work(half_close_run, half_close_done, h);

	if (w)
		nd_work(d, w);
}

static void link_opened(struct open_link *o)
{
	struct nd_pod *p = o->p;
	struct nd_daemon *d = o->d;
	char problem[2200];
	int freed;

	if (!o->host_done || !o->dpu_done)
		return;
	freed = nd_pod_unref(p);
	if (freed || p->disposed || !p->dpu || p->dpu->stopping || p->dpu->link_closed) {
		if (o->half)
			close_half_later(d, o->half);
		open_link_free(o);
		if (!freed)
			joined(p);
		return;
	}
	if (!o->half || o->dpu_err[0]) {
		static const struct hp_tcall_fns ignore = { NULL, ignore_status };
		struct pbuf b = { 0 };
		const char *why;
		struct hp_agent *agent = nd_agent(p->d, &why);

		if (o->half)
			close_half_later(p->d, o->half);
		pbuf_string(&b, 1, p->a.group);
		if (agent && !b.oom && !o->dpu_err[0])
			hp_agent_call(agent, "CloseLink", b.p, b.n, CLOSE_LINK_TIMEOUT_MS, &ignore, NULL);
		pbuf_free(&b);
		snprintf(problem, sizeof(problem), "open the split network of pod %s: %s", p->a.group, o->half ? o->dpu_err : o->host_err);
		if (o->resume) {
			/* A takeover keeps the DPU half and its containers: only the link is missing. */
			open_link_free(o);
			nd_log(&p->fifo, p->log_ctx, ND_ERROR, "take the pod over from the earlier node daemon", "error", problem, NULL);
			joined(p);
			return;
		}
		open_link_free(o);
		join_failed(p, problem);
		return;
	}
	p->dpu->half = o->half;
	p->dpu->dpu_open = 1;
	free(p->dpu->dpu_ports);
	p->dpu->dpu_ports = o->dpu_ports;
	p->dpu->n_dpu_ports = o->n_dpu_ports;
	o->dpu_ports = NULL;
	p->dpu->apply_dpu_ports = 1;
	free(p->dpu->saved_sysctls);
	p->dpu->saved_sysctls = strdup(nd_half_saved_sysctls(o->half));
	nd_log(&p->fifo, p->log_ctx, ND_INFO, o->resume ? "split network open again" : "split network open", "netns", o->netns, "pod_ip",
	       p->dpu->pod_ip, "window", nd_half_window_path(o->half), NULL);
	open_link_free(o);
	free(p->netns_path);
	p->netns_path = strdup(p->netns ? p->netns : "");
	p->dpu->changed_at = hp_now_ms();
	run_half_ops(p);
	follow_ports(p);
	joined(p);
}

static void start_open(struct nd_pod *p, const char *netns, int resume)
{
	struct open_link *o = calloc(1, sizeof(*o));
	struct nd_work *w = new_work(half_open_run, half_open_done, o);

	if (!o || !w || !(o->netns = strdup(netns)) || (resume && p->dpu->saved_sysctls && !(o->sysctls = strdup(p->dpu->saved_sysctls))) ||
	    (p->n_declared && !(o->declared = malloc(p->n_declared * sizeof(uint16_t))))) {
		if (o)
			open_link_free(o);
		free(w);
		join_failed(p, "open the split network: out of memory");
		return;
	}
	o->p = p;
	o->d = p->d;
	o->resume = resume;
	snprintf(o->pod_id, sizeof(o->pod_id), "%s", p->a.group);
	snprintf(o->pod_ip, sizeof(o->pod_ip), "%s", p->dpu->pod_ip);
	if (p->n_declared)
		memcpy(o->declared, p->declared_ports, p->n_declared * sizeof(uint16_t));
	o->ho = (struct nd_half_opts){ .pod_id = o->pod_id,
				       .netns_path = o->netns,
				       .pod_ip = o->pod_ip,
				       .declared_dpu_ports = o->declared,
				       .n_declared = p->n_declared,
				       .mode = host_mode(p->d->cfg.xpu_host_mode),
				       .resume_sysctls = o->sysctls,
				       .log = half_log,
				       .log_ctx = p };
	nd_pod_ref(p);
	/* The host half makes (or takes over) the window; the agent's half attaches to it meanwhile. */
	nd_work(p->d, w);
	open_dpu_half(p, open_link_answered, o);
}

struct address_work {
	struct nd_pod *p;
	char *netns;
	char ip[64];
	int prefix;
};

static void address_run(struct nd_work *w)
{
	struct address_work *a = w->ctx;

	w->rc = nd_pod_address(a->netns, "eth0", a->ip, sizeof(a->ip), &a->prefix, w->err, sizeof(w->err));
}

static void address_done(struct nd_work *w)
{
	struct address_work *a = w->ctx;
	struct nd_pod *p = a->p;

	if (!nd_pod_unref(p) && !p->disposed && p->dpu) {
		if (w->rc < 0) {
			join_failed(p, w->err);
		} else {
			snprintf(p->dpu->pod_ip, sizeof(p->dpu->pod_ip), "%s", a->ip);
			p->dpu->prefix = a->prefix;
			start_open(p, a->netns, 0);
		}
	}
	free(a->netns);
	free(a);
}

/* After the DPU half is had: CNI has set the sandbox's namespace up; the containers wait for this. */
static void join(struct nd_pod *p)
{
	struct address_work *a = calloc(1, sizeof(*a));
	struct nd_work *w = new_work(address_run, address_done, a);

	p->joining = 1;
	if (!a || !w || !(a->netns = strdup(p->netns ? p->netns : ""))) {
		free(a);
		free(w);
		join_failed(p, "open the split network: out of memory");
		return;
	}
	a->p = p;
	nd_pod_ref(p);
	nd_work(p->d, w);
}

/* -- the halves' ports -- */

struct half_op {
	struct nd_pod *p;
	struct nd_half *half; /* the worker's to use: no other op runs on it meanwhile */
	int poll;
	uint16_t *ports;
	size_t n;
	int changed;
};

static void half_op_run(struct nd_work *w)
{
	struct half_op *op = w->ctx;
	struct nd_half *h = op->half;

	if (op->poll)
		w->rc = nd_half_poll(h, &op->changed, w->err, sizeof(w->err));
	else
		w->rc = nd_half_set_peer_ports(h, op->ports, op->n, w->err, sizeof(w->err));
}

static void half_op_done(struct nd_work *w)
{
	struct half_op *op = w->ctx;
	struct nd_pod *p = op->p;

	if (!nd_pod_unref(p) && p->dpu) {
		struct nd_dpu *dpu = p->dpu;

		dpu->half_busy = 0;
		if (w->rc < 0)
			nd_log(&p->fifo, p->log_ctx, ND_WARN,
			       op->poll ? "update the host half's rules for its listening ports" : "update the host half's rules for the DPU half's ports",
			       "error", w->err, NULL);
		if (op->poll && op->changed) {
			const uint16_t *ports;
			size_t n = nd_half_ports(dpu->half, &ports);

			dpu->changed_at = hp_now_ms();
			free(dpu->host_ports);
			dpu->host_ports = n ? malloc(n * sizeof(uint16_t)) : NULL;
			if (dpu->host_ports)
				memcpy(dpu->host_ports, ports, n * sizeof(uint16_t));
			dpu->n_host_ports = dpu->host_ports ? n : 0;
			send_ports(p);
		}
		run_half_ops(p);
	}
	free(op->ports);
	free(op);
}

static void shutdown_finish(struct nd_pod *p);
static void link_ended(struct nd_pod *p);

struct half_close {
	struct nd_pod *p;
	struct nd_half *half;
};

static void half_closed(struct nd_work *w)
{
	struct half_close *hc = w->ctx;
	struct nd_pod *p = hc->p;

	free(hc);
	if (w->rc < 0)
		nd_log(&p->fifo, p->log_ctx, ND_ERROR, "close the pod's split network", "error", w->err, NULL);
	else
		nd_log(&p->fifo, p->log_ctx, ND_INFO, "split network closed", NULL);
	if (p->dpu) {
		p->dpu->half_busy = 0;
		link_ended(p);
	}
	nd_pod_unref(p);
}

static void half_close_pod_run(struct nd_work *w)
{
	struct half_close *hc = w->ctx;

	w->rc = nd_half_close(hc->half, w->err, sizeof(w->err));
}

/* One operation on the host half at a time, on a worker: the DPU's ports, a look at the host's, the close. */
static void run_half_ops(struct nd_pod *p)
{
	struct nd_dpu *dpu = p->dpu;
	struct half_op *op;
	struct nd_work *w;

	if (!dpu || !dpu->half || dpu->half_busy)
		return;
	if (dpu->closing) {
		struct half_close *hc = calloc(1, sizeof(*hc));

		if (!hc || !(w = new_work(half_close_pod_run, half_closed, hc))) {
			free(hc);
			return;
		}
		hc->p = p;
		hc->half = dpu->half;
		dpu->half = NULL;
		dpu->half_busy = 1;
		nd_pod_ref(p);
		nd_work(p->d, w);
		return;
	}
	if (!dpu->apply_dpu_ports && !dpu->poll_wanted)
		return;
	if (!(op = calloc(1, sizeof(*op))) || !(w = new_work(half_op_run, half_op_done, op))) {
		free(op);
		return;
	}
	op->p = p;
	op->half = dpu->half;
	if (dpu->apply_dpu_ports) {
		dpu->apply_dpu_ports = 0;
		op->n = dpu->n_dpu_ports;
		if (op->n && (op->ports = malloc(op->n * sizeof(uint16_t))))
			memcpy(op->ports, dpu->dpu_ports, op->n * sizeof(uint16_t));
		else
			op->n = 0;
	} else {
		dpu->poll_wanted = 0;
		op->poll = 1;
	}
	dpu->half_busy = 1;
	nd_pod_ref(p);
	nd_work(p->d, w);
}

static void poll_tick(struct hp_timer *t);

static void schedule_poll(struct nd_pod *p)
{
	struct nd_dpu *dpu = p->dpu;
	long long quiet = hp_now_ms() - dpu->changed_at;

	/* Every POLL_MS while the ports change, POLL_IDLE_MS once they have not for POLL_SETTLE_MS. */
	hp_timer_start(p->d->loop, &dpu->poll_timer, quiet < POLL_SETTLE_MS ? POLL_MS : POLL_IDLE_MS, poll_tick);
}

static void poll_tick(struct hp_timer *t)
{
	struct nd_dpu *dpu = container_of(t, struct nd_dpu, poll_timer);
	struct nd_pod *p = dpu->p;

	if (dpu->stopping || dpu->closing || !dpu->half)
		return;
	dpu->poll_wanted = 1;
	run_half_ops(p);
	schedule_poll(p);
}

static char *ports_text(const uint16_t *ports, size_t n)
{
	size_t cap = n * 6 + 1, at = 0;
	char *s = malloc(cap);

	if (!s)
		return NULL;
	s[0] = '\0';
	for (size_t i = 0; i < n; i++)
		at += (size_t)snprintf(s + at, cap - at, i ? ",%u" : "%u", ports[i]);
	return s;
}

static void ports_sent(void *ctx, const struct hp_tstatus *st);

static void ports_again(struct hp_timer *t)
{
	send_ports(container_of(t, struct nd_dpu, ports_retry)->p);
}

struct ports_call {
	struct nd_pod *p;
	char *text;
};

/* The latest host ports to the DPU half, one call at a time (SetPeerPortsRequest { pod_id = 1, ports = 2 }). */
static void send_ports(struct nd_pod *p)
{
	static const struct hp_tcall_fns fns = { NULL, ports_sent };
	struct nd_dpu *dpu = p->dpu;
	struct ports_call *pc;
	struct pbuf b = { 0 };
	const char *problem;
	struct hp_agent *agent;
	char *text;

	if (!dpu || !dpu->dpu_open || dpu->sending || dpu->stopping || dpu->closing || dpu->ports_retry.armed)
		return;
	if (!(text = ports_text(dpu->host_ports, dpu->n_host_ports)))
		return;
	if (dpu->sent_ports && strcmp(text, dpu->sent_ports) == 0) {
		free(text);
		return;
	}
	if (!(agent = nd_agent(p->d, &problem)) || !(pc = calloc(1, sizeof(*pc)))) {
		free(text);
		return;
	}
	pc->p = p;
	pc->text = text;
	pbuf_string(&b, 1, p->a.group);
	pbuf_packed(&b, 2, dpu->host_ports, dpu->n_host_ports);
	dpu->sending = 1;
	nd_pod_ref(p);
	hp_agent_call(agent, "SetPeerPorts", b.p, b.n, -1, &fns, pc);
	pbuf_free(&b);
}

static void ports_sent(void *ctx, const struct hp_tstatus *st)
{
	struct ports_call *pc = ctx;
	struct nd_pod *p = pc->p;

	if (!nd_pod_unref(p) && p->dpu) {
		struct nd_dpu *dpu = p->dpu;

		dpu->sending = 0;
		if (st->code == 0) {
			free(dpu->sent_ports);
			dpu->sent_ports = pc->text;
			pc->text = NULL;
			send_ports(p); /* changed meanwhile */
		} else if (!dpu->stopping && !dpu->closing) {
			nd_log(&p->fifo, p->log_ctx, ND_WARN, "send the host half's listening ports to the DPU half; retrying", "ports", pc->text,
			       "error", st->message, NULL);
			hp_timer_start(p->d->loop, &dpu->ports_retry, RETRY_MS, ports_again);
		}
	}
	free(pc->text);
	free(pc);
}

static void reopen_dpu_half(struct hp_timer *t);

static void watch_data(void *ctx, const unsigned char *m, size_t len)
{
	struct nd_pod *p = ctx;
	struct nd_dpu *dpu = p->dpu;

	if (!dpu)
		return;
	decode_ports(m, len, 1, &dpu->dpu_ports, &dpu->n_dpu_ports);
	dpu->apply_dpu_ports = 1;
	run_half_ops(p);
}

/* The stream broke (the agent restarted: its end of the link died with it): the DPU half is asked for again. */
static void watch_done(void *ctx, const struct hp_tstatus *st)
{
	struct nd_pod *p = ctx;

	(void)st;
	if (nd_pod_unref(p) || !p->dpu)
		return;
	p->dpu->watch = NULL;
	if (p->dpu->stopping || p->dpu->closing || p->dpu->link_closed)
		return;
	p->dpu->dpu_open = 0;
	hp_timer_start(p->d->loop, &p->dpu->reopen_timer, RETRY_MS, reopen_dpu_half);
}

/* WatchPortsRequest { pod_id = 1 } */
static void follow_ports(struct nd_pod *p)
{
	static const struct hp_tcall_fns fns = { watch_data, watch_done };
	struct pbuf b = { 0 };
	const char *problem;
	struct hp_agent *agent = nd_agent(p->d, &problem);
	struct hp_tcall *k;

	if (!agent)
		return;
	pbuf_string(&b, 1, p->a.group);
	nd_pod_ref(p); /* the stream's */
	nd_pod_ref(p); /* while it starts: a stream that fails at once has ended (and unref'd) before it returns */
	k = hp_agent_stream(agent, "WatchPorts", HP_TCALL_SERVER_STREAM, b.p, b.n, &fns, p);
	pbuf_free(&b);
	if (k && p->dpu)
		p->dpu->watch = k;
	if (p->dpu && !p->dpu->poll_timer.armed && p->dpu->half && !p->dpu->closing)
		schedule_poll(p);
	send_ports(p);
	nd_pod_unref(p);
}

static void dpu_half_reopened(void *ctx, const struct hp_tstatus *st)
{
	struct nd_pod *p = ctx;
	struct nd_dpu *dpu;

	if (nd_pod_unref(p) || !(dpu = p->dpu) || dpu->stopping || dpu->closing || dpu->link_closed)
		return;
	if (st->code != 0) {
		if (!dpu->outage)
			nd_log(&p->fifo, p->log_ctx, ND_WARN, "split network: the DPU half is gone; asking the agent again until it answers", "error",
			       st->message, NULL);
		dpu->outage = 1;
		hp_timer_start(p->d->loop, &dpu->reopen_timer, RETRY_MS, reopen_dpu_half);
		return;
	}
	if (dpu->outage)
		nd_log(&p->fifo, p->log_ctx, ND_INFO, "split network: the DPU half is open again", NULL);
	dpu->outage = 0;
	dpu->dpu_open = 1;
	free(dpu->sent_ports); /* a new half knows nothing of the host's ports */
	dpu->sent_ports = NULL;
	decode_ports(st->payload, st->len, 5, &dpu->dpu_ports, &dpu->n_dpu_ports);
	dpu->apply_dpu_ports = 1;
	run_half_ops(p);
	follow_ports(p);
}

static void reopen_dpu_half(struct hp_timer *t)
{
	struct nd_dpu *dpu = container_of(t, struct nd_dpu, reopen_timer);

	if (dpu->stopping || dpu->closing || dpu->link_closed)
		return;
	nd_pod_ref(dpu->p);
	open_dpu_half(dpu->p, dpu_half_reopened, dpu->p);
}

/* Both halves are closed: whoever asked is told (the sandbox's Delete goes on to runc). */
static void link_ended(struct nd_pod *p)
{
	struct nd_dpu *dpu = p->dpu;
	void (*then)(struct nd_pod *) = dpu->close_then;

	dpu->closing = 0;
	dpu->close_then = NULL;
	if (then)
		then(p);
	if (p->dpu && p->dpu->stopping)
		shutdown_finish(p);
}

static void link_closed_by_agent(void *ctx, const struct hp_tstatus *st)
{
	struct nd_pod *p = ctx;

	if (st->code != 0)
		nd_log(&p->fifo, p->log_ctx, ND_ERROR, "close the pod's split network", "error", st->message, NULL);
	if (nd_pod_unref(p) || !p->dpu)
		return;
	/* then the host half (after the operation on it in flight, if any); its end tells */
	if (p->dpu->half || p->dpu->half_busy)
		run_half_ops(p);
	else
		link_ended(p);
}

/*
 * Both halves go, for good: the DPU half (asked of the agent), then the host
 * half and the window; `then` once both are closed. A join under way is
 * finished first (joined() comes back here).
 */
static void close_link(struct nd_pod *p, void (*then)(struct nd_pod *p))
{
	static const struct hp_tcall_fns fns = { NULL, link_closed_by_agent };
	struct nd_dpu *dpu = p->dpu;
	struct pbuf b = { 0 };
	const char *problem;
	struct hp_agent *agent;

	if (dpu && p->joining && !dpu->closing) {
		dpu->close_pending = 1;
		dpu->close_then = then;
		return;
	}
	if (!dpu || dpu->closing || (!dpu->half && !dpu->dpu_open && !dpu->half_busy)) {
		if (dpu)
			dpu->link_closed = 1;
		if (then)
			then(p);
		return;
	}
	dpu->link_closed = 1;
	dpu->closing = 1;
	dpu->close_then = then;
	hp_timer_stop(p->d->loop, &dpu->poll_timer);
	hp_timer_stop(p->d->loop, &dpu->reopen_timer);
	hp_timer_stop(p->d->loop, &dpu->ports_retry);
	if (dpu->watch) {
		hp_tcall_cancel(dpu->watch);
		dpu->watch = NULL;
		nd_pod_unref(p); /* the watch's reference (the caller holds one of its own) */
	}
	dpu->dpu_open = 0;
	if (!(agent = nd_agent(p->d, &problem))) {
		if (dpu->half || dpu->half_busy)
			run_half_ops(p);
		else
			link_ended(p);
		return;
	}
	pbuf_string(&b, 1, p->a.group);
	nd_pod_ref(p);
	hp_agent_call(agent, "CloseLink", b.p, b.n, CLOSE_LINK_TIMEOUT_MS, &fns, p);
	pbuf_free(&b);
}

/* ---- events ---- */

static void events_again(struct hp_timer *t)
{
	follow_events(container_of(t, struct nd_dpu, events_retry));
}

/* ForwardRequest { envelope = 1 { topic = 3, event = 4 (Any { value = 2 }) } }, TaskExit { container_id = 1, id = 2 } */
static int exit_of(const unsigned char *fwd, size_t n, char **container, char **exec)
{
	size_t elen, alen, vlen;
	const unsigned char *env = field_bytes(fwd, n, 1, &elen), *any, *value;

	*container = *exec = NULL;
	if (!env || !(any = field_bytes(env, elen, 4, &alen)) || !(value = field_bytes(any, alen, 2, &vlen)))
		return -EBADMSG;
	*container = nd_field_str(value, vlen, 1);
	*exec = nd_field_str(value, vlen, 2);
	return *container && *exec ? 0 : -ENOMEM;
}

/* TaskEvent { sequence = 1, topic = 2, forward = 3, termination_message = 4 } */
static void on_event(void *ctx, const unsigned char *m, size_t len)
{
	struct nd_dpu *dpu = ctx;
	struct nd_pod *p = dpu->p;
	uint64_t seq = field_uint(m, len, 1);
	char *topic = nd_field_str(m, len, 2);
	size_t flen, tlen;
	const unsigned char *fwd = field_bytes(m, len, 3, &flen), *tmsg = field_bytes(m, len, 4, &tlen);

	if (seq > dpu->last_event)
		dpu->last_event = seq;
	if (topic && strcmp(topic, "/tasks/exit") == 0) {
		char *container, *exec;

		if (exit_of(fwd, flen, &container, &exec) == 0 && (!exec[0] || strcmp(exec, container) == 0)) {
			struct nd_task *t = nd_task_find(p, container);

			if (t) {
				nd_dpu_termination_message(t, tmsg, tlen, p);
				nd_task_observe(t, ND_STOPPED);
			}
		}
		free(container);
		free(exec);
	}
	if (!p->events)
		p->events = nd_forwarder_for(p->d, p->a.ttrpc_address);
	if (p->events && fwd)
		nd_forwarder_enqueue(p->events, fwd, flen, p->a.namespace, topic ? topic : "");
	free(topic);
	nd_pod_save(p);
}

static void events_done(void *ctx, const struct hp_tstatus *st)
{
	struct nd_dpu *dpu = ctx;

	(void)st;
	dpu->events = NULL;
	if (dpu->stopping)
		return;
	hp_timer_start(dpu->p->d->loop, &dpu->events_retry, RETRY_MS, events_again);
}

/* EventsRequest { pod_id = 1, after = 2 } */
static void follow_events(struct nd_dpu *dpu)
{
	static const struct hp_tcall_fns fns = { on_event, events_done };
	struct pbuf b = { 0 };
	const char *problem;
	struct hp_agent *agent = nd_agent(dpu->p->d, &problem);
	struct hp_tcall *k;

	if (dpu->stopping || !agent)
		return;
	pbuf_string(&b, 1, dpu->p->a.group);
	pbuf_uint(&b, 2, dpu->last_event);
	dpu->events = (struct hp_tcall *)1;
	k = hp_agent_stream(agent, "Events", HP_TCALL_SERVER_STREAM, b.p, b.n, &fns, dpu);
	if (dpu->events == (struct hp_tcall *)1)
		dpu->events = k;
	pbuf_free(&b);
}

static void dpu_free(struct nd_dpu *dpu)
{
	dpu->stopping = 1;
	hp_timer_stop(dpu->p->d->loop, &dpu->events_retry);
	hp_timer_stop(dpu->p->d->loop, &dpu->poll_timer);
	hp_timer_stop(dpu->p->d->loop, &dpu->reopen_timer);
	hp_timer_stop(dpu->p->d->loop, &dpu->ports_retry);
	hp_timer_stop(dpu->p->d->loop, &dpu->create_retry);
	if (dpu->events && dpu->events != (struct hp_tcall *)1)
		hp_tcall_cancel(dpu->events);
	for (struct nd_proc *pr = dpu->procs, *next; pr; pr = next) {
		next = pr->next;
		nd_relay_close(pr->relay);
		free(pr->id);
		free(pr->exec_id);
		free(pr->stdin_path);
		free(pr->stdout_path);
		free(pr->stderr_path);
		free(pr);
	}
	free(dpu->saved_sysctls);
	free(dpu->dpu_ports);
	free(dpu->host_ports);
	free(dpu->sent_ports);
	free(dpu);
}

/* ---- containers on the DPU ---- */

/*
 * Runs `heteropod layers ACTION --config FILE --pod POD DIR...` and reads its
 * one JSON line: {"digests": [...], ...}. Blocking (a worker's).
 */
static int layers_cli(const char *cli, const char *action, const char *config, const char *pod, char *const *dirs, size_t n,
		      char ***digests, uint64_t sent[2], char *err, size_t err_len)
{
	char out[65536];
	const char **argv = calloc(n + 8, sizeof(char *));
	int pipefd[2], status, r = 0;
	posix_spawn_file_actions_t fa;
	size_t used = 0, k = 0;
	pid_t pid;
	json_t *j;

	*digests = NULL;
	if (!argv || pipe2(pipefd, O_CLOEXEC) < 0) {
		free(argv);
		snprintf(err, err_len, "heteropod layers %s: cannot run it", action);
		return -EIO;
	}
	argv[k++] = cli;
	argv[k++] = "layers";
	argv[k++] = action;
	argv[k++] = "--config";
	argv[k++] = config;
	if (strcmp(action, "ship") == 0) {
		argv[k++] = "--pod";
		argv[k++] = pod;
	}
	for (size_t i = 0; i < n; i++)
		argv[k++] = dirs[i];
	argv[k] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	r = posix_spawn(&pid, cli, &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	free(argv);
	if (r != 0) {
		close(pipefd[0]);
		snprintf(err, err_len, "heteropod layers %s: %s", action, strerror(r));
		return -r;
	}
	for (ssize_t got; used < sizeof(out) - 1 && (got = read(pipefd[0], out + used, sizeof(out) - 1 - used)) != 0;) {
		if (got < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		used += (size_t)got;
	}
	out[used] = '\0';
	close(pipefd[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		snprintf(err, err_len, "heteropod layers %s failed (its reason is in the node daemon's log)", action);
		return -EIO;
	}
	if (!(j = json_loads(out, JSON_DISABLE_EOF_CHECK, NULL)) || json_array_size(json_object_get(j, "digests")) != n) {
		json_decref(j);
		snprintf(err, err_len, "heteropod layers %s: an answer without the digests", action);
		return -EBADMSG;
	}
	/* ship's: {"layers_sent": N, "bytes_sent": N} */
	if (sent) {
		sent[0] = (uint64_t)json_integer_value(json_object_get(j, "layers_sent"));
		sent[1] = (uint64_t)json_integer_value(json_object_get(j, "bytes_sent"));
	}
	if (!(*digests = calloc(n + 1, sizeof(char *))))
		r = -ENOMEM;
	for (size_t i = 0; r == 0 && i < n; i++)
		if (!((*digests)[i] = strdup(json_string_value(json_array_get(json_object_get(j, "digests"), i)) ?: "")))
			r = -ENOMEM;
	json_decref(j);
	return r;
}

static void free_strings(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void nd_create_free(struct nd_create *c)
{
	free(c->id);
	free(c->bundle);
	free(c->name);
	json_decref(c->spec);
	free(c->spec_raw);
	free_strings(c->layers, c->n_layers);
	free_strings(c->dirs, c->n_dirs);
	free(c->files);
	if (c->watch)
		nd_mount_watch_free(c->watch);
	free(c);
}

static void mounts_free(struct nd_mount *m, size_t n)
{
	for (size_t i = 0; m && i < n; i++) {
		free((char *)m[i].type);
		free((char *)m[i].source);
		for (size_t k = 0; k < m[i].n_options; k++)
			free((char *)m[i].options[k]);
		free((void *)m[i].options);
	}
	free(m);
}

/* CreateTaskRequest { rootfs = 3 (Mount { type = 1, source = 2, options = 4 }) } */
static int rootfs_mounts(const unsigned char *req, size_t n, struct nd_mount **out, size_t *count)
{
	struct pb_field f, g;
	size_t i = 0, cap = 0;

	*out = NULL;
	*count = 0;
	while (pb_next(req, n, &i, &f) > 0) {
		struct nd_mount *m;
		size_t j = 0;

		if (f.num != 3 || f.wire != 2)
			continue;
		if (*count == cap) {
			struct nd_mount *grown = realloc(*out, (cap = cap * 2 + 4) * sizeof(*grown));

			if (!grown)
				return -ENOMEM;
			*out = grown;
		}
		m = &(*out)[(*count)++];
		memset(m, 0, sizeof(*m));
		while (pb_next(f.val, f.vlen, &j, &g) > 0) {
			char *v;

			if (g.wire != 2 || (g.num != 1 && g.num != 2 && g.num != 4))
				continue;
			if (!(v = malloc(g.vlen + 1)))
				return -ENOMEM;
			memcpy(v, g.val, g.vlen);
			v[g.vlen] = '\0';
			if (g.num == 1) {
				free((char *)m->type);
				m->type = v;
			} else if (g.num == 2) {
				free((char *)m->source);
				m->source = v;
			} else {
				const char **grown = realloc((void *)m->options, (m->n_options + 1) * sizeof(char *));

				if (!grown) {
					free(v);
					return -ENOMEM;
				}
				grown[m->n_options++] = v;
				m->options = grown;
			}
		}
	}
	return 0;
}

struct prepare {
	struct nd_create *c;
	char *config;
	char *pod;
};

/* The layers' digests (from the index; the cold ones by `heteropod layers digest`) and the mounts' copies. */
static void prepare_run(struct nd_work *w)
{
	struct prepare *pr = w->ctx;
	struct nd_create *c = pr->c;
	struct nd_mount *mounts = NULL;
	char index[PATH_MAX];
	size_t n_mounts = 0;
	int cold = 0;

	snprintf(index, sizeof(index), "%s/layers", c->p->d->cfg.state_dir);
	if ((w->rc = rootfs_mounts(c->r->payload, c->r->len, &mounts, &n_mounts)) < 0 ||
	    (w->rc = nd_overlay_lowerdirs(mounts, n_mounts, &c->dirs, &c->n_dirs, w->err, sizeof(w->err))) < 0)
		goto out;
	if (!(c->layers = calloc(c->n_dirs + 1, sizeof(char *)))) {
		w->rc = -ENOMEM;
		goto out;
	}
	c->n_layers = c->n_dirs;
	for (size_t i = 0; i < c->n_dirs; i++) {
		char digest[ND_LAYER_DIGEST_SIZE];
		uint64_t size;
		int r = nd_layer_digest_cached(c->dirs[i], index, digest, &size, w->err, sizeof(w->err));

		if (r == -ENOENT) {
			cold = 1;
			break;
		}
		if (r < 0) {
			w->rc = r;
			goto out;
		}
		c->layers[i] = strdup(digest);
	}
	if (cold) {
		free_strings(c->layers, c->n_layers);
		c->layers = NULL;
		w->rc = layers_cli(c->p->d->cli, "digest", pr->config, pr->pod, c->dirs, c->n_dirs, &c->layers, NULL, w->err, sizeof(w->err));
		if (w->rc < 0)
			goto out;
	}
	/* Its sources' fingerprints before their content is read: a change in between is sent after Create. */
	if ((w->rc = nd_mount_watch_new(c->id, c->spec, &c->p->fifo, c->p->log_ctx, &c->watch, w->err, sizeof(w->err))) < 0)
		goto out;
	w->rc = nd_mounted_files(c->spec, ND_CREATE_FILES_FIELD, &c->files, &c->files_len, w->err, sizeof(w->err));
out:
	mounts_free(mounts, n_mounts);
}

static void ship_run(struct nd_work *w)
{
	struct prepare *pr = w->ctx;
	struct nd_create *c = pr->c;

	free_strings(c->layers, c->n_layers);
	c->layers = NULL;
	w->rc = layers_cli(c->p->d->cli, "ship", pr->config, pr->pod, c->dirs, c->n_dirs, &c->layers, c->sent, w->err, sizeof(w->err));
	c->shipped = 1;
}

static void create_on_dpu(struct nd_create *c);
static void prepared(struct nd_work *w);

static void prepare_free(struct prepare *pr)
{
	free(pr->config);
	free(pr->pod);
	free(pr);
}

static void fail_create(struct nd_create *c, int code, const char *fmt, const char *detail)
{
	struct nd_pod *p = c->p;
	char what[HP_ERR_MAX + 256];

	/* as the task service wraps it: "create task ID: create ID on the DPU: why" */
	snprintf(what, sizeof(what), fmt, c->id, detail);
	nd_fail(c->r, code, "create task %s: %s", c->id, what);
	nd_create_free(c);
	nd_pod_unref(p);
}

static void prepared(struct nd_work *w)
{
	struct prepare *pr = w->ctx;
	struct nd_create *c = pr->c;

	prepare_free(pr);
	if (c->p->disposed) {
		fail_create(c, HP_CODE_UNAVAILABLE, "create %s on the DPU: %s", "the pod is gone");
		return;
	}
	if (w->rc < 0) {
		fail_create(c, w->rc == -EINVAL ? HP_CODE_INVALID_ARGUMENT : HP_CODE_INTERNAL, "create %s on the DPU: %s", w->err);
		return;
	}
	create_on_dpu(c);
}

static int start_work(struct nd_create *c, void (*run)(struct nd_work *))
{
	struct prepare *pr = calloc(1, sizeof(*pr));
	struct nd_work *w = new_work(run, prepared, pr);

	if (!pr || !w || !(pr->config = strdup(c->p->d->config_path)) || !(pr->pod = strdup(c->p->a.group))) {
		if (pr)
			prepare_free(pr);
		free(w);
		return -ENOMEM;
	}
	pr->c = c;
	nd_work(c->p->d, w);
	return 0;
}

/* CreateReply { response = 1, missing_layers = 2 } */
static void created(void *ctx, const struct hp_tstatus *st)
{
	struct nd_create *c = ctx;
	struct nd_pod *p = c->p;
	size_t rlen;
	const unsigned char *res;
	struct pb_field f;
	size_t i = 0, missing = 0;
	struct nd_task *t;
	char layers[24], layers_sent[24], bytes_sent[24];

	if (p->disposed) {
		fail_create(c, HP_CODE_UNAVAILABLE, "create %s on the DPU: %s", "the pod is gone");
		return;
	}
	if (st->code != 0) {
		fail_create(c, st->code, "create %s on the DPU: %s", st->message);
		return;
	}
	while (pb_next(st->payload, st->len, &i, &f) > 0)
		if (f.num == 2 && f.wire == 2)
			missing++;
	if (missing) {
		if (c->shipped) {
			fail_create(c, HP_CODE_UNAVAILABLE, "create %s on the DPU: %s", "its cache lost layers just sent");
			return;
		}
		/* Shipped (once, by digest) and asked again. */
		if (start_work(c, ship_run) < 0)
			fail_create(c, HP_CODE_INTERNAL, "create %s on the DPU: %s", "out of memory");
		return;
	}
	res = field_bytes(st->payload, st->len, 1, &rlen);
	if (!(t = nd_task_add(p, c->id, c->bundle, ND_RT_DPU, ND_CREATED))) {
		fail_create(c, HP_CODE_INTERNAL, "create %s on the DPU: %s", "out of memory");
		return;
	}
	t->init_pid = (uint32_t)field_uint(res, rlen, 1);
	t->termination_log = nd_termination_log_source(c->spec);
	{
		/* CreateTaskRequest { stdin = 5, stdout = 6, stderr = 7 } */
		char *in = nd_field_str(c->r->payload, c->r->len, 5), *out = nd_field_str(c->r->payload, c->r->len, 6),
		     *errp = nd_field_str(c->r->payload, c->r->len, 7);

		nd_dpu_attach(p, c->id, "", in, out, errp);
		free(in);
		free(out);
		free(errp);
	}
	nd_dpu_start_watch(p, t, c->watch, 0);
	c->watch = NULL;
	/* as the TS logs it (bench-offload reads these) */
	snprintf(layers, sizeof(layers), "%zu", c->n_layers);
	snprintf(layers_sent, sizeof(layers_sent), "%llu", (unsigned long long)c->sent[0]);
	snprintf(bytes_sent, sizeof(bytes_sent), "%llu", (unsigned long long)c->sent[1]);
	nd_log(&p->fifo, p->log_ctx, ND_INFO, "container created on the DPU", "id", c->id, "name", c->name, "layers", layers, "layers_sent",
	       layers_sent, "bytes_sent", bytes_sent, NULL);
	nd_reply_placed(p, c->r, ND_PLACED_DAEMON, res ? res : (const unsigned char *)"", rlen);
	nd_create_free(c);
	nd_pod_unref(p);
}

/* CreateRequest { pod_id = 1, request = 2, spec = 3, layers = 4, files = 5, container_name = 6 } */
static void create_on_dpu(struct nd_create *c)
{
	static const struct hp_tcall_fns fns = { NULL, created };
	struct nd_pod *p = c->p;
	struct pbuf b = { 0 }, req = { 0 };
	const char *problem;
	struct hp_agent *agent = nd_agent(p->d, &problem);

	if (!agent) {
		fail_create(c, HP_CODE_UNAVAILABLE, "create %s on the DPU: %s", problem);
		return;
	}
	/* our runtime options are not the DPU's */
	replace_field(c->r->payload, c->r->len, 10, NULL, 0, &req);
	pbuf_string(&b, 1, p->a.group);
	pbuf_bytes(&b, 2, req.p, req.n);
	pbuf_bytes(&b, 3, c->spec_raw, c->spec_len);
	for (size_t i = 0; i < c->n_layers; i++)
		pbuf_string(&b, 4, c->layers[i]);
	pbuf_raw(&b, c->files, c->files_len);
	pbuf_string(&b, 6, c->name);
	if (b.oom || req.oom)
		fail_create(c, HP_CODE_INTERNAL, "create %s on the DPU: %s", "out of memory");
	else
		hp_agent_call(agent, "Create", b.p, b.n, CREATE_TIMEOUT_MS, &fns, c);
	pbuf_free(&b);
	pbuf_free(&req);
}

void nd_dpu_create(struct nd_pod *p, struct nd_create *c)
{
	nd_pod_ref(p);
	if (start_work(c, prepare_run) < 0)
		fail_create(c, HP_CODE_INTERNAL, "create %s on the DPU: %s", "out of memory");
}

/* ---- stdio ---- */

void nd_dpu_attach(struct nd_pod *p, const char *id, const char *exec_id, const char *in, const char *out, const char *err_path)
{
	struct nd_dpu *dpu = p->dpu;
	struct nd_proc *pr;
	const char *problem;
	char err[512];
	struct nd_relay_opts o = { .loop = p->d->loop,
				   .agent = nd_agent(p->d, &problem),
				   .pod_id = p->a.group,
				   .container_id = id,
				   .exec_id = exec_id,
				   .stdin_path = in,
				   .stdout_path = out,
				   .stderr_path = err_path,
				   .fifo = &p->fifo,
				   .log_ctx = p->log_ctx };

	if (!dpu || !o.agent || !(pr = calloc(1, sizeof(*pr))))
		return;
	pr->id = strdup(id);
	pr->exec_id = strdup(exec_id);
	pr->stdin_path = strdup(in ? in : "");
	pr->stdout_path = strdup(out ? out : "");
	pr->stderr_path = strdup(err_path ? err_path : "");
	if (!(pr->relay = nd_relay_start(&o, err, sizeof(err))))
		nd_log(&p->fifo, p->log_ctx, ND_WARN, "relay stdio", "id", id, "exec", exec_id, "error", err, NULL);
	pr->next = dpu->procs;
	dpu->procs = pr;
	nd_pod_save(p);
}

static struct nd_proc *find_proc(struct nd_dpu *dpu, const char *id, const char *exec_id)
{
	struct nd_proc *pr;

	for (pr = dpu ? dpu->procs : NULL; pr && (strcmp(pr->id, id) != 0 || strcmp(pr->exec_id, exec_id) != 0); pr = pr->next)
		;
	return pr;
}

static void proc_free(struct nd_proc *pr)
{
	free(pr->id);
	free(pr->exec_id);
	free(pr->stdin_path);
	free(pr->stdout_path);
	free(pr->stderr_path);
	free(pr);
}

/* A relay still writing finishes in the background (up to OUTPUT_GRACE_MS): closing it now would cut output short. */
struct grace {
	struct nd_relay *relay;
	struct hp_timer t;
	struct hp_loop *loop;
};

static void grace_end(struct grace *g)
{
	hp_timer_stop(g->loop, &g->t);
	nd_relay_close(g->relay);
	free(g);
}

static void grace_done(void *ctx)
{
	grace_end(ctx);
}

static void grace_timeout(struct hp_timer *t)
{
	grace_end(container_of(t, struct grace, t));
}

static void let_finish(struct nd_daemon *d, struct nd_relay *relay)
{
	struct grace *g;

	if (!relay)
		return;
	if (nd_relay_done(relay) || !(g = calloc(1, sizeof(*g)))) {
		nd_relay_close(relay);
		return;
	}
	g->relay = relay;
	g->loop = d->loop;
	hp_timer_start(d->loop, &g->t, OUTPUT_GRACE_MS, grace_timeout);
	nd_relay_when_done(relay, grace_done, g);
}

/* ---- the calls of the tasks the daemon holds ---- */

/* A call in flight to the agent or runc's shim, for the request it answers. */
struct relay_call {
	struct nd_pod *p;
	struct hp_treq *r;
	struct hp_tcall *call;
	char *id, *exec_id;
	char method[64];
	struct hp_timer retry;
	int cancelled;
	int connect; /* a Connect asked as State */
	unsigned char *request; /* what goes to the agent when not the request's own bytes */
	size_t request_len;
};

static void relay_call_free(struct relay_call *rc)
{
	struct nd_pod *p = rc->p;

	hp_timer_stop(p->d->loop, &rc->retry);
	free(rc->id);
	free(rc->exec_id);
	free(rc->request);
	free(rc);
	nd_pod_unref(p);
}

/* Requests whose field 2 is exec_id (taskRef in src/taskapi/messages.ts). */
static int has_exec_id(const char *method)
{
	static const char *const with[] = { "State", "Start", "Delete", "Kill", "Exec", "ResizePty", "CloseIO", "Wait" };

	for (size_t i = 0; i < sizeof(with) / sizeof(with[0]); i++)
		if (strcmp(method, with[i]) == 0)
			return 1;
	return 0;
}

static struct relay_call *relay_call_new(struct nd_pod *p, struct hp_treq *r)
{
	struct relay_call *rc = calloc(1, sizeof(*rc));

	if (!rc)
		return NULL;
	rc->p = p;
	rc->r = r;
	snprintf(rc->method, sizeof(rc->method), "%s", r->method);
	rc->id = nd_field_str(r->payload, r->len, 1);
	rc->exec_id = has_exec_id(r->method) ? nd_field_str(r->payload, r->len, 2) : strdup("");
	if (!rc->id || !rc->exec_id) {
		free(rc->id);
		free(rc->exec_id);
		free(rc);
		return NULL;
	}
	nd_pod_ref(p);
	return rc;
}

/* ConnectResponse { shim_pid = 1, task_pid = 2 }: containerd knows the pod's proxy as the shim. */
static void reply_connect(struct nd_pod *p, struct hp_treq *r, uint64_t task_pid)
{
	struct pbuf b = { 0 };

	pbuf_uint(&b, 1, (uint64_t)p->a.proxy_pid);
	pbuf_uint(&b, 2, task_pid);
	hp_treq_reply(r, 0, NULL, b.p ? b.p : (unsigned char *)"", b.n, NULL, 0);
	pbuf_free(&b);
}

/* StateResponse { stdin = 5, stdout = 6, stderr = 7 }: containerd's fifos, not the agent's. */
static void state_answered(struct relay_call *rc, const unsigned char *res, size_t len)
{
	struct nd_proc *pr = find_proc(rc->p->dpu, rc->id, rc->exec_id);
	struct pbuf b = { 0 }, c = { 0 }, d = { 0 };

	if (!pr) {
		hp_treq_reply(rc->r, 0, NULL, res, len, NULL, 0);
		return;
	}
	replace_field(res, len, 5, pr->stdin_path[0] ? pr->stdin_path : NULL, strlen(pr->stdin_path), &b);
	replace_field(b.p, b.n, 6, pr->stdout_path[0] ? pr->stdout_path : NULL, strlen(pr->stdout_path), &c);
	replace_field(c.p, c.n, 7, pr->stderr_path[0] ? pr->stderr_path : NULL, strlen(pr->stderr_path), &d);
	if (d.oom || !d.p)
		hp_treq_reply(rc->r, 0, NULL, res, len, NULL, 0);
	else
		hp_treq_reply(rc->r, 0, NULL, d.p, d.n, NULL, 0);
	pbuf_free(&b);
	pbuf_free(&c);
	pbuf_free(&d);
}

static void after_delete(struct relay_call *rc);
static void send_to_agent(struct relay_call *rc);
static void send_to_agent_later(struct relay_call *rc);

/* TaskReply { response = 1, termination_message = 2 } */
static void agent_answered(void *ctx, const struct hp_tstatus *st)
{
	struct relay_call *rc = ctx;
	struct nd_pod *p = rc->p;
	const unsigned char *res;
	size_t len;
	struct nd_task *t;

	rc->call = NULL;
	if (rc->cancelled) {
		relay_call_free(rc);
		return;
	}
	if (st->code != 0) {
		/* Wait is held for the life of the process: an agent that restarts is asked again. */
		if (strcmp(rc->method, "Wait") == 0 && st->local && !p->disposed) {
			nd_log(&p->fifo, p->log_ctx, ND_WARN, "Wait on the DPU interrupted; asking again", "error", st->message, NULL);
			send_to_agent_later(rc);
			return;
		}
		nd_fail(rc->r, st->code, "%s on the DPU: %s", rc->method, st->message);
		if (strcmp(rc->method, "Delete") == 0 && !rc->exec_id[0] && st->code == HP_CODE_NOT_FOUND)
			nd_task_remove(p, rc->id); /* the agent no longer knows it: gone either way */
		relay_call_free(rc);
		return;
	}
	res = field_bytes(st->payload, st->len, 1, &len);
	if (!res)
		res = (const unsigned char *)"";
	t = nd_task_find(p, rc->id);
	if (strcmp(rc->method, "Wait") == 0) {
		if (!rc->exec_id[0] && t) {
			size_t tlen;
			const unsigned char *tmsg = field_bytes(st->payload, st->len, 2, &tlen);

			nd_dpu_termination_message(t, tmsg, tlen, p);
			nd_task_observe(t, ND_STOPPED);
		}
	} else if (strcmp(rc->method, "Start") == 0 && !rc->exec_id[0] && t) {
		nd_task_observe(t, ND_RUNNING);
		nd_pod_save(p);
	} else if (strcmp(rc->method, "Exec") == 0) {
		/* ExecProcessRequest { stdin = 4, stdout = 5, stderr = 6 } */
		char *in = nd_field_str(rc->r->payload, rc->r->len, 4), *out = nd_field_str(rc->r->payload, rc->r->len, 5),
		     *errp = nd_field_str(rc->r->payload, rc->r->len, 6);

		nd_dpu_attach(p, rc->id, rc->exec_id, in, out, errp);
		free(in);
		free(out);
		free(errp);
	} else if (strcmp(rc->method, "State") == 0 && rc->connect) {
		/* Connect, asked of the agent as State { pid = 3 } */
		reply_connect(p, rc->r, field_uint(res, len, 3));
		relay_call_free(rc);
		return;
	} else if (strcmp(rc->method, "State") == 0) {
		state_answered(rc, res, len);
		relay_call_free(rc);
		return;
	} else if (strcmp(rc->method, "Delete") == 0) {
		hp_treq_reply(rc->r, 0, NULL, res, len, NULL, 0);
		after_delete(rc);
		relay_call_free(rc);
		return;
	}
	hp_treq_reply(rc->r, 0, NULL, res, len, NULL, 0);
	relay_call_free(rc);
}

static void request_cancelled(struct hp_treq *r)
{
	struct relay_call *rc = r->user;

	/* containerd went away (a Wait it no longer waits for): the call goes too */
	if (rc->call) {
		hp_tcall_cancel(rc->call);
		rc->call = NULL;
	}
	hp_treq_reply(rc->r, HP_CODE_CANCELLED, "cancelled", NULL, 0, NULL, 0);
	rc->r = NULL;
	relay_call_free(rc);
}

static void send_to_agent(struct relay_call *rc)
{
	static const struct hp_tcall_fns fns = { NULL, agent_answered };
	struct nd_pod *p = rc->p;
	struct pbuf b = { 0 };
	const char *problem;
	struct hp_agent *agent = nd_agent(p->d, &problem);
	struct hp_tcall *k;
	int wait = strcmp(rc->method, "Wait") == 0;

	if (!agent || task_call(&b, p->a.group, rc->request ? rc->request : rc->r->payload, rc->request ? rc->request_len : rc->r->len) < 0) {
		struct hp_tstatus st = { .code = HP_CODE_UNAVAILABLE, .local = -ENOTCONN, .message = agent ? "out of memory" : problem };

		pbuf_free(&b);
		agent_answered(rc, &st);
		return;
	}
	/* A call that fails at once has ended (rc may be gone) before this returns NULL. */
	k = hp_agent_call(agent, rc->method, b.p, b.n, wait ? 0 : -1, &fns, rc);
	pbuf_free(&b);
	if (k) {
		rc->call = k;
		if (wait) {
			rc->r->user = rc;
			rc->r->on_cancel = request_cancelled;
		}
	}
}

static void retry_now(struct hp_timer *t)
{
	struct relay_call *rc = container_of(t, struct relay_call, retry);

	send_to_agent(rc);
}

static void send_to_agent_later(struct relay_call *rc)
{
	rc->r->user = rc;
	rc->r->on_cancel = request_cancelled;
	hp_timer_start(rc->p->d->loop, &rc->retry, RETRY_MS, retry_now);
}

/* Output still on its way is written before the process is gone for containerd (at most 5 s). */
struct delete_wait {
	struct relay_call *rc;
	struct hp_timer t;
	struct nd_relay *relay;
};

static void delete_go(struct delete_wait *dw)
{
	struct relay_call *rc = dw->rc;

	hp_timer_stop(rc->p->d->loop, &dw->t);
	if (dw->relay)
		nd_relay_when_done(dw->relay, NULL, NULL);
	free(dw);
	send_to_agent(rc);
}

static void delete_relay_done(void *ctx)
{
	struct delete_wait *dw = ctx;

	dw->relay = NULL; /* done, or closed: not to be told again */
	delete_go(dw);
}

static void delete_timeout(struct hp_timer *t)
{
	delete_go(container_of(t, struct delete_wait, t));
}

/* After the agent deleted the process: its relays finish in the background, the task goes. */
static void after_delete(struct relay_call *rc)
{
	struct nd_pod *p = rc->p;
	struct nd_dpu *dpu = p->dpu;

	if (dpu) {
		for (struct nd_proc **at = &dpu->procs; *at;) {
			struct nd_proc *pr = *at;

			if (strcmp(pr->id, rc->id) == 0 && (!rc->exec_id[0] || strcmp(pr->exec_id, rc->exec_id) == 0)) {
				*at = pr->next;
				let_finish(p->d, pr->relay);
				proc_free(pr);
			} else {
				at = &pr->next;
			}
		}
	}
	if (!rc->exec_id[0])
		nd_task_remove(p, rc->id);
	nd_pod_save(p);
}

static void stdin_closed(void *ctx)
{
	send_to_agent(ctx);
}

static void dpu_call(struct nd_pod *p, struct nd_task *t, struct hp_treq *r)
{
	struct relay_call *rc;

	if (strcmp(r->method, "Checkpoint") == 0) {
		nd_fail(r, HP_CODE_UNIMPLEMENTED, "Checkpoint of a container on the DPU");
		return;
	}
	if (strcmp(r->method, "Connect") == 0 && t->init_pid) {
		reply_connect(p, r, t->init_pid);
		return;
	}
	if (!(rc = relay_call_new(p, r))) {
		nd_fail(r, HP_CODE_INTERNAL, "%s on the DPU: out of memory", r->method);
		return;
	}
	if (strcmp(r->method, "Connect") == 0) {
		/* A task taken over, or deleted: its pid asked of the agent (StateRequest { id = 1 }) */
		struct pbuf b = { 0 };

		pbuf_string(&b, 1, rc->id);
		rc->connect = 1;
		snprintf(rc->method, sizeof(rc->method), "State");
		rc->request = b.p;
		rc->request_len = b.n;
		if (b.oom) {
			nd_fail(r, HP_CODE_INTERNAL, "Connect on the DPU: out of memory");
			rc->r = NULL;
			relay_call_free(rc);
			return;
		}
	}
	if (strcmp(r->method, "Delete") == 0) {
		struct nd_proc *pr = find_proc(p->dpu, rc->id, rc->exec_id);
		struct delete_wait *dw;

		if (!rc->exec_id[0]) {
			t->init_pid = 0;
			nd_dpu_unwatch_mounts(p, t);
		}
		if (pr && pr->relay && !nd_relay_done(pr->relay) && (dw = calloc(1, sizeof(*dw)))) {
			dw->rc = rc;
			dw->relay = pr->relay;
			hp_timer_start(p->d->loop, &dw->t, DELETE_OUTPUT_WAIT_MS, delete_timeout);
			nd_relay_when_done(pr->relay, delete_relay_done, dw);
			return;
		}
	} else if (strcmp(r->method, "CloseIO") == 0 && field_uint(r->payload, r->len, 3)) {
		/* CloseIORequest { stdin = 3 }: what was read reaches the DPU first */
		struct nd_proc *pr = find_proc(p->dpu, rc->id, rc->exec_id);

		if (pr && pr->relay) {
			nd_relay_close_stdin(pr->relay, stdin_closed, rc);
			return;
		}
	}
	send_to_agent(rc);
}

/* -- the sandbox's Delete: the halves separated first -- */

struct nd_sandbox_delete {
	struct nd_pod *p;
	struct hp_treq *r;
	char *id;
};

static void sandbox_deleted(void *ctx, const struct hp_tstatus *st)
{
	struct nd_sandbox_delete *sd = ctx;
	struct nd_pod *p = sd->p;

	if (st->code == 0) {
		hp_treq_reply(sd->r, 0, NULL, st->payload, st->len, NULL, 0);
		nd_task_remove(p, sd->id);
	} else {
		if (st->code == HP_CODE_NOT_FOUND)
			nd_task_remove(p, sd->id);
		hp_treq_reply(sd->r, st->code, st->message, NULL, 0, NULL, 0);
	}
	nd_pod_save(p);
	free(sd->id);
	free(sd);
	nd_pod_unref(p);
}

static void separated(struct nd_pod *p)
{
	struct nd_sandbox_delete *sd = p->pending_delete;

	p->pending_delete = NULL;
	if (sd)
		runc_call(p, "Delete", sd->r->payload, sd->r->len, sandbox_deleted, sd);
}

static void runc_answered(void *ctx, const struct hp_tstatus *st)
{
	struct hp_treq *r = ctx;

	hp_treq_reply(r, st->code, st->code ? st->message : NULL, st->payload, st->len, NULL, 0);
}

/* containerd knows the pod's proxy as the shim, whatever runs behind it (ConnectResponse { task_pid = 2 }). */
static void runc_connected(void *ctx, const struct hp_tstatus *st)
{
	struct hp_treq *r = ctx;
	struct pbuf b = { 0 };

	if (st->code != 0 || !r->conn) {
		runc_answered(ctx, st);
		return;
	}
	pbuf_uint(&b, 1, (uint64_t)((struct nd_pod *)hp_tsconn_user(r->conn)->value)->a.proxy_pid);
	pbuf_uint(&b, 2, field_uint(st->payload, st->len, 2));
	hp_treq_reply(r, 0, NULL, b.p ? b.p : (unsigned char *)"", b.n, NULL, 0);
	pbuf_free(&b);
}

void nd_task_call(struct nd_pod *p, struct nd_task *t, struct hp_treq *r)
{
	size_t exec_len;

	if (t->runtime == ND_RT_DPU) {
		dpu_call(p, t, r);
		return;
	}
	/* The sandbox: its Delete separates the halves first; a proxy of an earlier release sends the rest too. */
	if (strcmp(r->method, "Delete") == 0 && field_bytes(r->payload, r->len, 2, &exec_len) == NULL) {
		struct nd_sandbox_delete *sd = calloc(1, sizeof(*sd));

		if (!sd || !(sd->id = strdup(t->id))) {
			free(sd);
			nd_fail(r, HP_CODE_INTERNAL, "Delete: out of memory");
			return;
		}
		if (p->pending_delete) {
			free(sd->id);
			free(sd);
			nd_fail(r, HP_CODE_FAILED_PRECONDITION, "Delete of %s: a Delete of the sandbox is under way", t->id);
			return;
		}
		sd->p = p;
		sd->r = r;
		nd_pod_ref(p);
		p->pending_delete = sd;
		close_link(p, separated);
		return;
	}
	runc_call(p, r->method, r->payload, r->len, strcmp(r->method, "Connect") == 0 ? runc_connected : runc_answered, r);
}

/* ---- the DPU half's end, record and takeover ---- */

static void pod_removed(void *ctx, const struct hp_tstatus *st)
{
	char *pod = ctx;

	if (st->code != 0)
		nd_log(NULL, NULL, ND_ERROR, "remove the pod's DPU half", "pod", pod, "error", st->message, NULL);
	free(pod);
}

/* After the split network: the pod's DPU half (RemovePod would close its half anyway; ours is ours to close). */
static void shutdown_finish(struct nd_pod *p)
{
	static const struct hp_tcall_fns fns = { NULL, pod_removed };
	struct nd_dpu *dpu = p->dpu;
	const char *problem;
	struct hp_agent *agent = nd_agent(p->d, &problem);
	struct pbuf b = { 0 };
	char *pod;

	if (!dpu)
		return;
	p->dpu = NULL;
	if (dpu->ready && agent && (pod = strdup(p->a.group))) {
		pbuf_string(&b, 1, p->a.group);
		hp_agent_call(agent, "RemovePod", b.p, b.n, REMOVE_POD_TIMEOUT_MS, &fns, pod);
		pbuf_free(&b);
	}
	dpu_free(dpu);
}

void nd_dpu_shutdown(struct nd_pod *p)
{
	struct nd_dpu *dpu = p->dpu;

	if (!dpu || dpu->stopping)
		return;
	dpu->stopping = 1;
	hp_timer_stop(p->d->loop, &dpu->events_retry);
	if (dpu->events && dpu->events != (struct hp_tcall *)1)
		hp_tcall_cancel(dpu->events);
	dpu->events = NULL;
	for (struct nd_proc *pr = dpu->procs; pr; pr = pr->next) {
		nd_relay_close(pr->relay);
		pr->relay = NULL;
	}
	for (struct nd_task *t = p->tasks; t; t = t->next)
		nd_dpu_unwatch_mounts(p, t);
	if (dpu->half || dpu->dpu_open)
		close_link(p, NULL); /* its end finishes the shutdown */
	else
		shutdown_finish(p);
}

/* What a restarted daemon needs of the DPU half. */
void nd_dpu_record(struct nd_pod *p, json_t *node)
{
	struct nd_dpu *dpu = p->dpu;
	json_t *procs = json_array();

	if (!dpu) {
		json_object_set_new(node, "processes", procs);
		return;
	}
	for (struct nd_proc *pr = dpu->procs; pr; pr = pr->next)
		json_array_append_new(procs, json_pack("{s:s, s:s, s:{s:s, s:s, s:s}}", "id", pr->id, "execId", pr->exec_id, "paths", "stdin",
						       pr->stdin_path, "stdout", pr->stdout_path, "stderr", pr->stderr_path));
	json_object_set_new(node, "processes", procs);
	json_object_set_new(node, "last_event", json_integer((json_int_t)dpu->last_event));
	if (dpu->pod_ip[0] && p->netns_path) {
		json_object_set_new(node, "pod_ip", json_string(dpu->pod_ip));
		json_object_set_new(node, "pod_prefix_length", json_integer(dpu->prefix));
	}
	if (dpu->saved_sysctls) {
		json_t *o = json_object();
		char *copy = strdup(dpu->saved_sysctls), *line, *save = NULL;

		for (line = copy ? strtok_r(copy, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
			char *eq = strchr(line, '=');

			if (eq) {
				*eq = '\0';
				json_object_set_new(o, line, json_string(eq + 1));
			}
		}
		free(copy);
		json_object_set_new(node, "restore_sysctls", o);
	}
}

static void resumed_pod(void *ctx, const struct hp_tstatus *st);

static void resume_again(struct hp_timer *t)
{
	struct nd_dpu *dpu = container_of(t, struct nd_dpu, create_retry);

	if (!dpu->stopping)
		create_pod(dpu->p, resumed_pod);
}

/* The pod's DPU half asked for again (the agent keeps it): then its events and its split network. */
static void resumed_pod(void *ctx, const struct hp_tstatus *st)
{
	struct nd_pod *p = ctx;
	struct nd_dpu *dpu;

	if (nd_pod_unref(p) || p->disposed || !(dpu = p->dpu) || dpu->stopping)
		return;
	if (st->code != 0) {
		if (!dpu->outage)
			nd_log(&p->fifo, p->log_ctx, ND_ERROR, "take the pod over from the earlier node daemon; asking the agent again", "error",
			       st->message, NULL);
		dpu->outage = 1;
		hp_timer_start(p->d->loop, &dpu->create_retry, RETRY_MS, resume_again);
		return;
	}
	dpu->outage = 0;
	dpu->ready = 1;
	follow_events(dpu);
	if (dpu->resume_link)
		start_open(p, p->netns_path, 1);
}

void nd_dpu_resume(struct nd_pod *p, json_t *rec)
{
	json_t *node = json_object_get(rec, "node"), *e, *sysctls;
	const char *ip = json_string_value(json_object_get(node, "pod_ip")), *key;
	struct nd_dpu *dpu;
	size_t i;

	if (p->offload.n == 0 || problem_of(p) || !p->d->cfg.dpu_address[0] || !(dpu = calloc(1, sizeof(*dpu))))
		return;
	dpu->p = p;
	p->dpu = dpu;
	dpu->last_event = (uint64_t)json_integer_value(json_object_get(node, "last_event"));
	/* the stdio of every process the earlier daemon relayed (the agent held their output meanwhile) */
	json_array_foreach (json_object_get(node, "processes"), i, e) {
		json_t *paths = json_object_get(e, "paths");

		nd_dpu_attach(p, json_string_value(json_object_get(e, "id")) ?: "", json_string_value(json_object_get(e, "execId")) ?: "",
			      json_string_value(json_object_get(paths, "stdin")), json_string_value(json_object_get(paths, "stdout")),
			      json_string_value(json_object_get(paths, "stderr")));
	}
	/* the split network: the host half taken over (its window kept), the agent's asked for again */
	if (p->netns_path && ip) {
		struct pbuf lines = { 0 };

		snprintf(dpu->pod_ip, sizeof(dpu->pod_ip), "%s", ip);
		dpu->prefix = (int)json_integer_value(json_object_get(node, "pod_prefix_length"));
		sysctls = json_object_get(node, "restore_sysctls");
		json_object_foreach (sysctls, key, e) {
			pbuf_raw(&lines, key, strlen(key));
			pbuf_raw(&lines, "=", 1);
			pbuf_raw(&lines, json_string_value(e) ?: "", strlen(json_string_value(e) ?: ""));
			pbuf_raw(&lines, "\n", 1);
		}
		pbuf_raw(&lines, "", 1);
		dpu->saved_sysctls = lines.oom ? NULL : (char *)lines.p;
		if (!dpu->saved_sysctls)
			pbuf_free(&lines);
		/* once the agent answers for the pod (resumed_pod); its containers' Creates wait */
		p->joining = 1;
		dpu->resume_link = 1;
	}
	create_pod(p, resumed_pod);
}

/* After the tasks of a taken-over pod are back: their mounts, each live one's sent again at once. */
void nd_dpu_resume_tasks(struct nd_pod *p)
{
	if (!p->dpu)
		return;
	for (struct nd_task *t = p->tasks; t; t = t->next) {
		char file[PATH_MAX + 16];
		json_t *spec;

		if (t->runtime != ND_RT_DPU)
			continue;
		snprintf(file, sizeof(file), "%s/config.json", t->bundle);
		if (!(spec = json_load_file(file, 0, NULL))) {
			nd_log(&p->fifo, p->log_ctx, ND_WARN, "read the spec of a DPU container: its mounts are not kept up to date", "id", t->id, NULL);
			continue;
		}
		free(t->termination_log);
		t->termination_log = nd_termination_log_source(spec);
		if (t->status != ND_STOPPED && t->status != ND_DELETED)
			nd_dpu_watch_mounts(p, t, spec, 1);
		json_decref(spec);
	}
}
