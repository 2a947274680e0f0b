/*
 * The C node daemon's socket and pods (noded.h), as node-daemon.ts: every
 * connection attaches a pod first; a pod lives while its proxy does, and goes
 * once its proxy has exited and its last connection closed (looked at again
 * every ND_SWEEP_MS). At start, the pods an earlier daemon served (their
 * records) are taken over when their proxies still run and forgotten when not.
 */
#include "noded.h"

#include "../agentapi/agent-conn.h"
#include "../proto/pb.h"
#include "../proto/pbuf.h"
#include "../shim/proxy.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static struct nd_pod *find_pod(struct nd_daemon *d, const char *key)
{
	struct nd_pod *p;

	for (p = d->pods; p && strcmp(p->key, key) != 0; p = p->next)
		;
	return p;
}

static void drop(struct nd_pod *p)
{
	struct nd_daemon *d = p->d;
	struct nd_pod **at;

	for (at = &d->pods; *at && *at != p; at = &(*at)->next)
		;
	if (*at)
		*at = p->next;
	nd_pod_dispose(p);
}

/* ---- the DPU agent ---- */

struct hp_agent *nd_agent(struct nd_daemon *d, const char **problem)
{
	struct hp_agent_tls tls = { d->cfg.dpu_ca, d->cfg.dpu_cert, d->cfg.dpu_key };

	*problem = NULL;
	if (!d->cfg.dpu_address[0]) {
		*problem = "no DPU agent is configured ([dpu] address in the shim config)";
		return NULL;
	}
	if (!d->agent && !(d->agent = hp_agent_new(d->loop, d->cfg.dpu_address, &tls, d->cfg.dpu_timeout_ms, d->agent_problem,
						   sizeof(d->agent_problem)))) {
		*problem = d->agent_problem;
		return NULL;
	}
	return d->agent;
}

static void kept_answered(void *ctx, const struct hp_tstatus *st)
{
	struct nd_kept *k = ctx;
	struct nd_kept_waiter *w;

	k->inflight = NULL;
	if (st->code == 0 && (!k->keep || k->keep(st->payload, st->len))) {
		unsigned char *copy = malloc(st->len ? st->len : 1);

		if (copy) {
			memcpy(copy, st->payload, st->len);
			free(k->answer);
			k->answer = copy;
			k->len = st->len;
			k->have = 1;
			k->at = hp_now_ms();
		}
	}
	/* Each waiter once; one may ask again (and wait anew). */
	while ((w = k->waiters)) {
		k->waiters = w->next;
		w->fn(w, st);
	}
}

void nd_kept_get(struct nd_daemon *d, struct nd_kept *k, struct nd_kept_waiter *w)
{
	static const struct hp_tcall_fns fns = { NULL, kept_answered };
	const char *problem;
	struct hp_agent *agent;

	if (k->have && hp_now_ms() - k->at < k->fresh_ms) {
		struct hp_tstatus st = { .payload = k->answer, .len = k->len };

		w->fn(w, &st);
		return;
	}
	w->next = k->waiters;
	k->waiters = w;
	if (k->inflight)
		return;
	if (!(agent = nd_agent(d, &problem))) {
		struct hp_tstatus st = { .code = HP_CODE_UNAVAILABLE, .message = problem };

		kept_answered(k, &st);
		return;
	}
	k->inflight = (struct hp_tcall *)1;
	{
		struct hp_tcall *c = hp_agent_call(agent, k->method, NULL, 0, -1, &fns, k);

		if (k->inflight == (struct hp_tcall *)1)
			k->inflight = c;
	}
}

/* HealthResponse { ok = 1 }: only a healthy answer is kept. */
static int healthy(const unsigned char *m, size_t n)
{
	struct pb_field f;
	size_t i = 0;
	int ok = 0;

	while (pb_next(m, n, &i, &f) > 0)
		if (f.num == 1 && f.wire == 0)
			ok = f.u != 0;
	return ok;
}

struct nd_forwarder *nd_forwarder_for(struct nd_daemon *d, const char *address)
{
	struct nd_forwarder *f, **grown;

	for (size_t i = 0; i < d->n_forwarders; i++)
		if (strcmp(nd_forwarder_address(d->forwarders[i]), address) == 0)
			return d->forwarders[i];
	if (!(f = nd_forwarder_new(d->loop, address)))
		return NULL;
	if (!(grown = realloc(d->forwarders, (d->n_forwarders + 1) * sizeof(*grown)))) {
		nd_forwarder_free(f);
		return NULL;
	}
	d->forwarders = grown;
	d->forwarders[d->n_forwarders++] = f;
	return f;
}

/* ---- connections ---- */

static void conn_closed(struct hp_tsconn *c, void *value)
{
	struct nd_pod *p = value;

	(void)c;
	if (--p->connections == 0)
		nd_pod_idle(p);
}

static void idle_check(struct hp_timer *t)
{
	struct nd_pod *p = container_of(t, struct nd_pod, idle_timer);

	if (p->connections > 0)
		return;
	if (!nd_proxy_alive(p)) {
		drop(p);
		return;
	}
	if (hp_now_ms() < p->idle_deadline)
		hp_timer_start(p->d->loop, &p->idle_timer, 100, idle_check);
}

void nd_pod_idle(struct nd_pod *p)
{
	p->idle_deadline = hp_now_ms() + ND_PROXY_EXIT_MS;
	hp_timer_start(p->d->loop, &p->idle_timer, 0, idle_check);
}

static void attach(struct nd_daemon *d, struct hp_treq *r)
{
	struct hp_tsconn_user *u = hp_tsconn_user(r->conn);
	struct nd_attach a;
	struct nd_pod *p;
	char err[512], *key;

	if (u->value) {
		nd_fail(r, HP_CODE_FAILED_PRECONDITION, "%s.Attach: the connection has attached a pod already", ND_NODE_SERVICE);
		return;
	}
	if (nd_attach_decode(r->payload, r->len, &a, err, sizeof(err)) < 0) {
		nd_fail(r, HP_CODE_INVALID_ARGUMENT, "%s", err);
		return;
	}
	if (!(key = nd_pod_key(&a)))
		goto nomem;
	p = find_pod(d, key);
	free(key);
	if (p) {
		nd_attach_free(&a);
	} else {
		char pid[16];

		if (!(p = nd_pod_new(d, &a))) {
			nd_attach_free(&a);
			goto nomem;
		}
		p->next = d->pods;
		d->pods = p;
		snprintf(pid, sizeof(pid), "%d", (int)p->a.proxy_pid);
		nd_log(&p->fifo, p->log_ctx, ND_INFO, "pod attached", "proxy_pid", pid, NULL);
	}
	p->connections++;
	hp_timer_stop(d->loop, &p->idle_timer);
	u->value = p;
	u->on_close = conn_closed;
	hp_treq_reply(r, 0, NULL, NULL, 0, NULL, 0);
	return;
nomem:
	nd_fail(r, HP_CODE_INTERNAL, "Attach: out of memory");
}

static void handle(void *ctx, struct hp_treq *r)
{
	struct nd_daemon *d = ctx;
	struct nd_pod *p = hp_tsconn_user(r->conn)->value;
	long long t0 = nd_debug_enabled ? hp_now_ms() : 0;

	if (strcmp(r->service, ND_NODE_SERVICE) == 0 && strcmp(r->method, "Attach") == 0)
		attach(d, r);
	else if (strcmp(r->service, ND_TASK_SERVICE) != 0)
		nd_fail(r, HP_CODE_UNIMPLEMENTED, "%s.%s: no such service here", r->service, r->method);
	else if (!p)
		nd_fail(r, HP_CODE_FAILED_PRECONDITION, "%s.%s: the connection has not attached a pod (%s.Attach first)", r->service,
			r->method, ND_NODE_SERVICE);
	else if (strcmp(r->method, "Create") == 0)
		nd_pod_create(p, r);
	else
		nd_pod_call(p, r);
	if (nd_debug_enabled) {
		char ms[24];

		snprintf(ms, sizeof(ms), "%lld", hp_now_ms() - t0);
		nd_log(NULL, NULL, ND_DEBUG, "ttrpc call handled", "ms", ms, NULL);
	}
}

static void on_error(void *ctx, const char *what)
{
	(void)ctx;
	nd_log(NULL, NULL, ND_WARN, "ttrpc connection error", "error", what, NULL);
}

/* ---- the daemon's life ---- */

static void sweep(struct hp_timer *t)
{
	struct nd_daemon *d = container_of(t, struct nd_daemon, sweep);
	struct nd_pod *p, *next;

	nd_guard_management(d);
	for (p = d->pods; p; p = next) {
		next = p->next;
		if (p->connections == 0 && !nd_proxy_alive(p))
			drop(p);
	}
	hp_timer_start(d->loop, &d->sweep, ND_SWEEP_MS, sweep);
}

static void on_signal(struct hp_watch *w, uint32_t events)
{
	struct nd_daemon *d = container_of(w, struct nd_daemon, signals);
	struct signalfd_siginfo si;

	(void)events;
	while (read(w->fd, &si, sizeof(si)) == sizeof(si))
		;
	d->stopping = 1;
	hp_loop_stop(d->loop);
}

/*
 * What a pod removed while no daemon ran left (dpu-cleanup.ts deleteOnDpu): the
 * host half of its split network (its rules and window, by the clean-up hook,
 * on a worker), then its DPU half (RemovePod), then its record. A record whose
 * DPU half could not be removed stays, for `heteropod delete` or the next daemon.
 */
struct cleanup {
	struct nd_daemon *d;
	char *pod, *netns, *file;
	int has_half;
};

static void cleanup_free(struct cleanup *c)
{
	free(c->pod);
	free(c->netns);
	free(c->file);
	free(c);
}

static void cleanup_removed(void *ctx, const struct hp_tstatus *st)
{
	struct cleanup *c = ctx;

	/* The agent goes on removing after our deadline; only a refusal is a failure. */
	if (st->code != 0 && st->code != HP_CODE_DEADLINE_EXCEEDED)
		nd_log(NULL, NULL, ND_WARN, "remove the pod's DPU half", "pod", c->pod, "error", st->message, NULL);
	else
		unlink(c->file);
	cleanup_free(c);
}

static void cleanup_hook_run(struct nd_work *w)
{
	struct cleanup *c = w->ctx;
	char *argv[] = { c->d->hook_path, "--pod", c->pod, "--netns", c->netns, NULL };
	pid_t pid;
	int status;

	if (!c->netns)
		return;
	if ((w->rc = posix_spawn(&pid, c->d->hook_path, NULL, NULL, argv, environ)) == 0)
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
}

static void cleanup_hook_done(struct nd_work *w)
{
	static const struct hp_tcall_fns fns = { NULL, cleanup_removed };
	struct cleanup *c = w->ctx;
	const char *problem;
	struct hp_agent *agent = c->has_half ? nd_agent(c->d, &problem) : NULL;
	struct pbuf b = { 0 };

	if (!agent) {
		if (!c->has_half)
			unlink(c->file);
		cleanup_free(c);
		return;
	}
	pbuf_string(&b, 1, c->pod);
	hp_agent_call(agent, "RemovePod", b.p, b.n, 3000, &fns, c);
	pbuf_free(&b);
}

static void clean_up_after(struct nd_daemon *d, json_t *rec, const char *file)
{
	struct cleanup *c = calloc(1, sizeof(*c));
	struct nd_work *w = calloc(1, sizeof(*w));
	const char *netns = json_string_value(json_object_get(rec, "netns_path"));
	const char *problem = json_string_value(json_object_get(rec, "dpu_problem"));

	if (!c || !w || !(c->pod = strdup(json_string_value(json_object_get(rec, "pod_id")) ?: "")) || !(c->file = strdup(file))) {
		free(w);
		if (c)
			cleanup_free(c);
		return;
	}
	c->d = d;
	c->netns = netns && netns[0] ? strdup(netns) : NULL;
	c->has_half = json_array_size(json_object_get(rec, "offload")) > 0 && !(problem && problem[0]) && d->cfg.dpu_address[0];
	w->run = cleanup_hook_run;
	w->done = cleanup_hook_done;
	w->ctx = c;
	nd_work(d, w);
}

/*
 * The pods an earlier node daemon served (their records): each whose proxy
 * still runs is taken over; each whose proxy is gone is cleaned up after.
 */
static void restore_all(struct nd_daemon *d)
{
	char dir[PATH_MAX];
	struct dirent *e;
	DIR *dp;

	snprintf(dir, sizeof(dir), "%s/placement", d->cfg.state_dir);
	if (!(dp = opendir(dir)))
		return;
	while ((e = readdir(dp))) {
		size_t n = strlen(e->d_name);
		char file[PATH_MAX + 512];
		json_t *rec, *attach;
		struct nd_attach a;
		struct nd_pod *p;
		int alive;

		if (n < 6 || strcmp(e->d_name + n - 5, ".json") != 0)
			continue;
		snprintf(file, sizeof(file), "%s/%s", dir, e->d_name);
		if (!(rec = json_load_file(file, 0, NULL)))
			continue;
		attach = json_object_get(json_object_get(rec, "node"), "attach");
		if (!json_is_object(attach)) {
			json_decref(rec);
			continue;
		}
		memset(&a, 0, sizeof(a));
		a.namespace = strdup(json_string_value(json_object_get(attach, "namespace")) ?: "");
		a.group = strdup(json_string_value(json_object_get(attach, "group")) ?: "");
		a.containerd_address = strdup(json_string_value(json_object_get(attach, "containerdAddress")) ?: "");
		a.ttrpc_address = strdup(json_string_value(json_object_get(attach, "ttrpcAddress")) ?: "");
		a.runc_address = strdup(json_string_value(json_object_get(attach, "runcAddress")) ?: "");
		a.publish_binary = strdup(json_string_value(json_object_get(attach, "publishBinary")) ?: "");
		a.bundle = strdup(json_string_value(json_object_get(attach, "bundle")) ?: "");
		a.config_path = strdup(json_string_value(json_object_get(attach, "configPath")) ?: "");
		a.proxy_pid = (pid_t)json_integer_value(json_object_get(attach, "proxyPid"));
		a.debug = json_is_true(json_object_get(attach, "debug"));
		alive = a.proxy_pid > 0 && (kill(a.proxy_pid, 0) == 0 || errno == EPERM);
		if (!a.group || !a.group[0] || !alive || !(p = nd_pod_new(d, &a))) {
			nd_log(NULL, NULL, ND_INFO, "a pod was removed while no node daemon ran: cleaning up after it", "pod",
			       json_string_value(json_object_get(rec, "pod_id")), NULL);
			clean_up_after(d, rec, file);
			nd_attach_free(&a);
			json_decref(rec);
			continue;
		}
		p->next = d->pods;
		d->pods = p;
		nd_pod_restore(p, rec);
		nd_log(&p->fifo, p->log_ctx, ND_INFO, "pod taken over from an earlier node daemon", NULL);
		json_decref(rec);
	}
	closedir(dp);
}

/*
 * This checkout's programs (the daemon is its build/heteropod-noded), and the
 * clean-up hook's PATH: node's directory first (the hook is a Node.js program,
 * src/netns/hook.ts cleanupHook), then the node's tools.
 */
static int find_programs(struct nd_daemon *d)
{
	static const char *const dirs[] = { "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin" };
	char dir[PATH_MAX], node[PATH_MAX] = "/usr/local/bin", probe[PATH_MAX + 8], *slash;
	ssize_t n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
	const char *path = getenv("PATH");

	if (n < 0)
		return -errno;
	dir[n] = '\0';
	for (int i = 0; i < 2; i++) {
		if (!(slash = strrchr(dir, '/')))
			return -ENOENT;
		*slash = '\0';
	}
	snprintf(d->cli, sizeof(d->cli), "%s/bin/heteropod", dir);
	snprintf(d->hook_path, sizeof(d->hook_path), "%s/hooks/heteropod-netns-cleanup", dir);
	for (const char *at = path ? path : ""; *at;) {
		size_t len = strcspn(at, ":");

		snprintf(probe, sizeof(probe), "%.*s/node", (int)len, at);
		if (len && access(probe, X_OK) == 0) {
			snprintf(node, sizeof(node), "%.*s", (int)len, at);
			break;
		}
		at += len + (at[len] == ':');
	}
	snprintf(d->hook_env, sizeof(d->hook_env), "PATH=%s", node);
	for (size_t k = 0; k < sizeof(dirs) / sizeof(dirs[0]); k++) {
		if (strcmp(node, dirs[k]) != 0) {
			strncat(d->hook_env, ":", sizeof(d->hook_env) - strlen(d->hook_env) - 1);
			strncat(d->hook_env, dirs[k], sizeof(d->hook_env) - strlen(d->hook_env) - 1);
		}
	}
	return 0;
}

int nd_daemon_start(struct nd_daemon *d, const char *config_path, const char *socket, char *err, size_t err_len)
{
	struct hp_tserver_opts o = { handle, d, on_error };
	char dir[PATH_MAX], *slash;
	sigset_t mask;
	int r, fd;

	memset(d, 0, sizeof(*d));
	if ((r = shim_config_load(config_path, &d->cfg, err, err_len)) < 0)
		return r;
	if ((r = find_programs(d)) < 0) {
		snprintf(err, err_len, "this program's checkout (/proc/self/exe): %s", strerror(-r));
		return r;
	}
	d->config_path = strdup(config_path && config_path[0] ? config_path : DEFAULT_CONFIG);
	d->health = (struct nd_kept){ .method = "Health", .fresh_ms = 5000, .keep = healthy };
	d->capacity = (struct nd_kept){ .method = "Capacity", .fresh_ms = 1000 };
	r = hp_runc_options(d->cfg.runc_binary_name, d->cfg.runc_root, d->cfg.runc_systemd_cgroup, d->runc_options, sizeof(d->runc_options));
	d->runc_options_len = r > 0 ? (size_t)r : 0;
	nd_debug_enabled = d->cfg.debug || getenv("HETEROPOD_DEBUG") != NULL;
	snprintf(d->socket, sizeof(d->socket), "%s", socket && socket[0] ? socket : "");
	if (!d->socket[0])
		snprintf(d->socket, sizeof(d->socket), "%s/node.sock", d->cfg.state_dir);
	if ((r = hp_loop_new(&d->loop)) < 0) {
		snprintf(err, err_len, "event loop: %s", strerror(-r));
		return r;
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	if ((fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0 || hp_watch_start(d->loop, &d->signals, fd, EPOLLIN, on_signal) < 0) {
		snprintf(err, err_len, "signals: %s", strerror(errno));
		return -errno;
	}
	restore_all(d);
	snprintf(dir, sizeof(dir), "%s", d->socket);
	if ((slash = strrchr(dir, '/')) && slash != dir) {
		*slash = '\0';
		mkdir(dir, 0711);
	}
	unlink(d->socket); /* the last daemon's, if it died */
	if ((r = hp_tserver_listen(d->loop, d->socket, &o, &d->server)) < 0) {
		snprintf(err, err_len, "listen on %s: %s", d->socket, strerror(-r));
		return r;
	}
	hp_timer_start(d->loop, &d->sweep, ND_SWEEP_MS, sweep);
	{
		char pid[16];

		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		nd_log(NULL, NULL, ND_INFO, "node daemon serving", "socket", d->socket, "pid", pid, NULL);
	}
	nd_guard_management(d);
	return 0;
}

void nd_daemon_stop(struct nd_daemon *d)
{
	/* Each pod's record as it is now, for the next daemon to take it over. */
	for (struct nd_pod *p = d->pods; p; p = p->next)
		nd_pod_flush(p);
	/* Events still queued reach containerd first (at most 2 s). */
	for (long long until = hp_now_ms() + 2000; hp_now_ms() < until;) {
		size_t pending = 0;

		for (size_t i = 0; i < d->n_forwarders; i++)
			pending += nd_forwarder_pending(d->forwarders[i]);
		if (!pending)
			break;
		hp_loop_run_once(d->loop, 50);
	}
	hp_tserver_close(d->server);
	d->server = NULL;
	unlink(d->socket);
	/*
	 * Nothing else is undone: the pods' DPU halves, split networks and
	 * relays are the next daemon's to take over, and what this process holds
	 * goes with it (the daemon is reachable from main's static, so a leak
	 * checker sees no leak).
	 */
	nd_log(NULL, NULL, ND_INFO, "node daemon stopped", NULL);
}
