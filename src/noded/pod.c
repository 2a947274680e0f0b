/*
 * One pod as the C node daemon serves it (noded.h), as node-pod.ts and
 * pod-router.ts do: who the pod is (Attach), where each new task goes, the
 * tasks the daemon holds, and the pod's record (placement/<pod>.json under the
 * state dir: read by `heteropod pods`, by `delete` after a pod's proxy died,
 * and by the next daemon).
 *
 * The sandbox (the pause container) always stays on the host. Its annotations
 * say which containers to offload and how strictly; a pod whose DPU half
 * cannot be had runs on the host (prefer) or is refused (require), and each
 * container is then placed by src/placement.
 */
#include "noded.h"

#include "../proto/pb.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const STATUS[] = { "creating", "created", "running", "stopped", "deleted" };

void nd_fail(struct hp_treq *r, int code, const char *fmt, ...)
{
	char msg[HP_ERR_MAX + 512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	hp_treq_reply(r, code, msg, NULL, 0, NULL, 0);
}

static char *dup_n(const unsigned char *p, size_t n)
{
	char *s = malloc(n + 1);

	if (s) {
		memcpy(s, p, n);
		s[n] = '\0';
	}
	return s;
}

/* ---- Attach ---- */

void nd_attach_free(struct nd_attach *a)
{
	char **strings[] = { &a->namespace, &a->group, &a->containerd_address, &a->ttrpc_address, &a->runc_address,
			     &a->publish_binary, &a->bundle, &a->config_path };

	for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
		free(*strings[i]);
		*strings[i] = NULL;
	}
}

int nd_attach_decode(const unsigned char *p, size_t n, struct nd_attach *a, char *err, size_t err_len)
{
	char **strings[] = { &a->namespace, &a->group, &a->containerd_address, &a->ttrpc_address, &a->runc_address,
			     &a->publish_binary, &a->bundle, &a->config_path };
	struct pb_field f;
	size_t i = 0;
	int r;

	memset(a, 0, sizeof(*a));
	while ((r = pb_next(p, n, &i, &f)) > 0) {
		if (f.num >= 1 && f.num <= 8 && f.wire == 2) {
			free(*strings[f.num - 1]);
			if (!(*strings[f.num - 1] = dup_n(f.val, f.vlen)))
				r = -ENOMEM;
		} else if (f.num == 9 && f.wire == 0) {
			a->proxy_pid = (pid_t)f.u;
		} else if (f.num == 10 && f.wire == 0) {
			a->debug = f.u != 0;
		}
		if (r < 0)
			break;
	}
	for (size_t k = 0; r == 0 && k < sizeof(strings) / sizeof(strings[0]); k++)
		if (!*strings[k] && !(*strings[k] = strdup("")))
			r = -ENOMEM;
	if (r < 0) {
		snprintf(err, err_len, "malformed Attach: %s", r == -ENOMEM ? "out of memory" : "it does not decode");
	} else if (!a->namespace[0] || !a->group[0] || !a->runc_address[0]) {
		snprintf(err, err_len, "malformed Attach: Attach needs namespace, group and runc_address");
		r = -EINVAL;
	}
	if (r < 0)
		nd_attach_free(a);
	return r;
}

char *nd_pod_key(const struct nd_attach *a)
{
	size_t n = strlen(a->containerd_address) + strlen(a->namespace) + strlen(a->group) + 3;
	char *k = malloc(n);

	if (k)
		snprintf(k, n, "%s\n%s\n%s", a->containerd_address, a->namespace, a->group);
	return k;
}

char *nd_record_path(const char *state_dir, const char *pod_id)
{
	char *p;

	return asprintf(&p, "%s/placement/%s.json", state_dir, pod_id) < 0 ? NULL : p;
}

int nd_proxy_alive(const struct nd_pod *p)
{
	return p->a.proxy_pid > 0 && (kill(p->a.proxy_pid, 0) == 0 || errno == EPERM);
}

/* ---- the record ---- */

static json_t *attach_json(const struct nd_attach *a)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:b}", "namespace", a->namespace, "group", a->group,
			 "containerdAddress", a->containerd_address, "ttrpcAddress", a->ttrpc_address, "runcAddress", a->runc_address,
			 "publishBinary", a->publish_binary, "bundle", a->bundle, "configPath", a->config_path, "proxyPid",
			 (json_int_t)a->proxy_pid, "debug", a->debug);
}

static json_t *record_json(struct nd_pod *p)
{
	json_t *offload = json_array(), *containers = json_array(), *tasks = json_array(), *ports = json_array();
	json_t *rec, *node;

	for (size_t i = 0; i < p->offload.n; i++)
		json_array_append_new(offload, json_string(p->offload.containers[i]));
	for (struct nd_placed *c = p->placed; c; c = c->next)
		json_array_append_new(containers, json_pack("{s:s, s:s, s:s, s:s}", "id", c->id, "name", c->name, "where",
							    c->dpu ? "dpu" : "host", "reason", c->reason ? c->reason : ""));
	for (struct nd_task *t = p->tasks; t; t = t->next)
		json_array_append_new(tasks, json_pack("{s:s, s:s, s:s, s:s}", "id", t->id, "bundle", t->bundle, "status", STATUS[t->status],
						       "runtime", t->runtime == ND_RT_DPU ? "dpu" : "sandbox"));
	for (size_t i = 0; i < p->n_declared; i++)
		json_array_append_new(ports, json_integer(p->declared_ports[i]));
	node = json_pack("{s:o, s:o, s:o, s:i}", "attach", attach_json(&p->a), "tasks", tasks, "declared_dpu_ports", ports, "last_event",
			 (json_int_t)0);
	if (node)
		nd_dpu_record(p, node);
	rec = json_pack("{s:s, s:s, s:s, s:o, s:s, s:s}", "pod_id", p->a.group, "name", p->name ? p->name : "", "namespace",
			p->pod_namespace ? p->pod_namespace : "", "offload", offload, "policy", p->offload.require ? "require" : "prefer",
			"dpu_problem", p->dpu_problem ? p->dpu_problem : "");
	if (rec && p->netns_path)
		json_object_set_new(rec, "netns_path", json_string(p->netns_path));
	if (rec) {
		json_object_set_new(rec, "containers", containers);
		json_object_set_new(rec, "node", node);
	}
	return rec;
}

static void write_record(struct nd_pod *p)
{
	json_t *rec = record_json(p);
	char *text = rec ? json_dumps(rec, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
	char tmp[PATH_MAX + 8], *slash;
	int fd = -1;
	size_t len;

	json_decref(rec);
	if (!text) {
		nd_log(&p->fifo, p->log_ctx, ND_WARN, "write pod state", "file", p->file, "error", "out of memory", NULL);
		return;
	}
	/* Many changes leave what is kept as it was. */
	if (p->written && strcmp(text, p->written) == 0) {
		free(text);
		return;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp", p->file);
	/* The directory and its parents (mkdir -p). */
	for (slash = strchr(tmp + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
		*slash = '\0';
		mkdir(tmp, 0711);
		*slash = '/';
	}
	len = strlen(text);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0 || write(fd, text, len) != (ssize_t)len ||
	    close(fd) < 0 || (fd = -1, rename(tmp, p->file) < 0)) {
		nd_log(&p->fifo, p->log_ctx, ND_WARN, "write pod state", "file", p->file, "error", strerror(errno), NULL);
		if (fd >= 0)
			close(fd);
		unlink(tmp);
		free(text);
		return;
	}
	free(p->written);
	p->written = text;
}

static void save_now(struct hp_timer *t)
{
	write_record(container_of(t, struct nd_pod, save_timer));
}

/* Writes the record once this turn of the loop is done: a pod's start changes it many times. */
static void save(struct nd_pod *p)
{
	if (!p->save_timer.armed && !p->disposed)
		hp_timer_start(p->d->loop, &p->save_timer, 0, save_now);
}

void nd_pod_save(struct nd_pod *p)
{
	save(p);
}

void nd_pod_flush(struct nd_pod *p)
{
	if (!p->save_timer.armed)
		return;
	hp_timer_stop(p->d->loop, &p->save_timer);
	write_record(p);
}

static void set_str(char **field, const char *v)
{
	char *s = strdup(v ? v : "");

	if (s) {
		free(*field);
		*field = s;
	}
}

/* What was decided for a container, and why (the record keeps it for the life of the pod). */
void nd_pod_note(struct nd_pod *p, const char *id, const char *name, int dpu, const char *reason)
{
	struct nd_placed **at, *c;

	for (at = &p->placed; *at && strcmp((*at)->id, id) != 0; at = &(*at)->next)
		;
	if (*at) {
		/* a container created again: it moves to the end, as the TS record has it */
		c = *at;
		*at = c->next;
		free(c->id);
		free(c->name);
		free(c->reason);
		free(c);
	}
	if (!(c = calloc(1, sizeof(*c))))
		return;
	c->id = strdup(id);
	c->name = strdup(name);
	c->reason = reason && reason[0] ? strdup(reason) : NULL;
	c->dpu = dpu;
	for (at = &p->placed; *at; at = &(*at)->next)
		;
	*at = c;
	save(p);
}

/* ---- the pod ---- */

struct nd_pod *nd_pod_new(struct nd_daemon *d, const struct nd_attach *a)
{
	struct nd_pod *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->d = d;
	p->a = *a;
	p->key = nd_pod_key(a);
	p->file = nd_record_path(d->cfg.state_dir, a->group);
	p->fifo.fd = -1;
	snprintf(p->fifo.path, sizeof(p->fifo.path), "%s/log", a->bundle);
	p->log_ctx[0] = "runtime";
	p->log_ctx[1] = "io.containerd.heteropod.v2";
	p->log_ctx[2] = "namespace";
	p->log_ctx[3] = p->a.namespace;
	p->log_ctx[4] = "pod";
	p->log_ctx[5] = p->a.group;
	p->log_ctx[6] = NULL;
	if (!p->key || !p->file) {
		free(p->key);
		free(p->file);
		free(p);
		return NULL;
	}
	return p;
}

static void free_placed(struct nd_placed *c)
{
	for (struct nd_placed *next; c; c = next) {
		next = c->next;
		free(c->id);
		free(c->name);
		free(c->reason);
		free(c);
	}
}

static void free_tasks(struct nd_task *t)
{
	for (struct nd_task *next; t; t = next) {
		next = t->next;
		free(t->id);
		free(t->bundle);
		free(t->termination_log);
		free(t);
	}
}

void nd_pod_free(struct nd_pod *p)
{
	hp_timer_stop(p->d->loop, &p->save_timer);
	hp_timer_stop(p->d->loop, &p->idle_timer);
	hp_tclient_destroy(p->runc);
	nd_fifo_close(&p->fifo);
	nd_attach_free(&p->a);
	hp_offload_free(&p->offload);
	free_placed(p->placed);
	free_tasks(p->tasks);
	free(p->declared_ports);
	free(p->name);
	free(p->pod_namespace);
	free(p->netns_path);
	free(p->netns);
	free(p->dpu_problem);
	free(p->written);
	free(p->key);
	free(p->file);
	free(p);
}

void nd_pod_ref(struct nd_pod *p)
{
	p->refs++;
}

int nd_pod_unref(struct nd_pod *p)
{
	if (--p->refs > 0 || !p->disposed)
		return 0;
	nd_pod_free(p);
	return 1;
}

void nd_pod_dispose(struct nd_pod *p)
{
	char *slash;
	struct nd_create *c;

	/* Held until the end: what is stopped here may drop the last other reference. */
	p->refs++;
	p->disposed = 1;
	hp_timer_stop(p->d->loop, &p->save_timer);
	while ((c = p->waiting)) {
		p->waiting = c->next;
		nd_fail(c->r, HP_CODE_UNAVAILABLE, "create task %s: the pod is gone", c->id);
		nd_create_free(c);
	}
	nd_dpu_shutdown(p);
	unlink(p->file);
	if ((slash = strrchr(p->file, '/'))) {
		*slash = '\0';
		rmdir(p->file); /* other pods' files may be there */
		*slash = '/';
	}
	nd_log(&p->fifo, p->log_ctx, ND_INFO, "pod gone", NULL);
	/* Freed now, or when the last work that comes back to it has (nd_pod_unref). */
	nd_pod_unref(p);
}

/* A string member of a JSON object, or `fallback`. */
static const char *jstr(json_t *o, const char *key, const char *fallback)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : fallback;
}

int nd_pod_restore(struct nd_pod *p, json_t *rec)
{
	json_t *node = json_object_get(rec, "node"), *v, *e;
	size_t i;

	set_str(&p->name, jstr(rec, "name", ""));
	set_str(&p->pod_namespace, jstr(rec, "namespace", ""));
	set_str(&p->dpu_problem, jstr(rec, "dpu_problem", ""));
	if ((v = json_object_get(rec, "netns_path")) && json_is_string(v)) {
		set_str(&p->netns_path, json_string_value(v));
		set_str(&p->netns, json_string_value(v));
	}
	p->offload.require = strcmp(jstr(rec, "policy", "prefer"), "require") == 0;
	v = json_object_get(rec, "offload");
	p->offload.containers = calloc(json_array_size(v) + 1, sizeof(char *));
	json_array_foreach (v, i, e) {
		if (json_is_string(e) && p->offload.containers)
			p->offload.containers[p->offload.n++] = strdup(json_string_value(e));
	}
	json_array_foreach (json_object_get(rec, "containers"), i, e) {
		const char *id = jstr(e, "id", NULL);

		if (id)
			nd_pod_note(p, id, jstr(e, "name", id), strcmp(jstr(e, "where", "host"), "dpu") == 0, jstr(e, "reason", ""));
	}
	v = json_object_get(node, "declared_dpu_ports");
	if (json_array_size(v) && (p->declared_ports = calloc(json_array_size(v), sizeof(uint16_t)))) {
		json_array_foreach (v, i, e)
			p->declared_ports[p->n_declared++] = (uint16_t)json_integer_value(e);
	}
	/* the tasks it held: a sandbox's only with a DPU half, which the agent is asked for again */
	nd_dpu_resume(p, rec);
	json_array_foreach (json_object_get(node, "tasks"), i, e) {
		const char *status = jstr(e, "status", "created"), *id = jstr(e, "id", NULL);
		enum nd_status st = ND_CREATED;
		int dpu = strcmp(jstr(e, "runtime", ""), "dpu") == 0;

		if (!id)
			continue;
		if (!p->dpu) {
			nd_log(&p->fifo, p->log_ctx, ND_WARN, "a task of the pod cannot be taken over: the pod has no DPU half", "id", id, NULL);
			continue;
		}
		for (int k = 0; k < 5; k++)
			if (strcmp(status, STATUS[k]) == 0)
				st = (enum nd_status)k;
		nd_task_add(p, id, jstr(e, "bundle", ""), dpu ? ND_RT_DPU : ND_RT_SANDBOX, st);
	}
	nd_dpu_resume_tasks(p);
	save(p);
	return 0;
}

/* ---- the task table ---- */

struct nd_task *nd_task_find(struct nd_pod *p, const char *id)
{
	struct nd_task *t;

	for (t = p->tasks; t && strcmp(t->id, id) != 0; t = t->next)
		;
	return t;
}

struct nd_task *nd_task_add(struct nd_pod *p, const char *id, const char *bundle, enum nd_runtime rt, enum nd_status st)
{
	struct nd_task *t = calloc(1, sizeof(*t)), **at;

	if (!t || !(t->id = strdup(id)) || !(t->bundle = strdup(bundle))) {
		if (t)
			free(t->id);
		free(t);
		return NULL;
	}
	t->runtime = rt;
	t->status = st;
	for (at = &p->tasks; *at; at = &(*at)->next)
		;
	*at = t;
	save(p);
	return t;
}

void nd_task_remove(struct nd_pod *p, const char *id)
{
	for (struct nd_task **at = &p->tasks; *at; at = &(*at)->next) {
		struct nd_task *t = *at;

		if (strcmp(t->id, id) == 0) {
			*at = t->next;
			free(t->id);
			free(t->bundle);
			free(t->termination_log);
			free(t);
			save(p);
			return;
		}
	}
}

/* The lifecycle (tasks.ts): creating → created → running → stopped → deleted; late events are ignored. */
void nd_task_observe(struct nd_task *t, enum nd_status to)
{
	static const unsigned char next[5] = {
		[ND_CREATING] = 1u << ND_CREATED | 1u << ND_DELETED,
		[ND_CREATED] = 1u << ND_RUNNING | 1u << ND_STOPPED | 1u << ND_DELETED,
		[ND_RUNNING] = 1u << ND_STOPPED | 1u << ND_DELETED,
		[ND_STOPPED] = 1u << ND_DELETED,
		[ND_DELETED] = 0,
	};

	if (next[t->status] & (1u << to))
		t->status = to;
}



/* ---- Create ---- */

/* CreateTaskRequest { id = 1, bundle = 2 } */
static int create_ids(const unsigned char *d, size_t n, char **id, char **bundle)
{
	struct pb_field f;
	size_t i = 0;
	int r;

	*id = *bundle = NULL;
	while ((r = pb_next(d, n, &i, &f)) > 0) {
		if (f.wire != 2 || (f.num != 1 && f.num != 2))
			continue;
		free(f.num == 1 ? *id : *bundle);
		*(f.num == 1 ? id : bundle) = dup_n(f.val, f.vlen);
	}
	if (r == 0) {
		if (!*id)
			*id = strdup("");
		if (!*bundle)
			*bundle = strdup("");
	}
	return r < 0 ? r : (*id && *bundle ? 0 : -ENOMEM);
}

/* The record reaches the disk before the answer leaves: what containerd is told, a new daemon finds. */
void nd_reply_placed(struct nd_pod *p, struct hp_treq *r, int placed, const void *payload, size_t len)
{
	unsigned char trailer[8];
	struct pb_writer w = { trailer, 0 };

	nd_pod_flush(p);
	pbw_uint(&w, ND_PLACED_FIELD, (uint64_t)placed);
	hp_treq_reply(r, 0, NULL, payload, len, trailer, w.n);
}

/* The bundle's config.json: its bytes (sent to the agent as they are) and what they parse to. */
static json_t *read_spec(const char *bundle, unsigned char **raw, size_t *raw_len, char *err, size_t err_len)
{
	char file[PATH_MAX + 16];
	json_error_t je;
	json_t *spec = NULL;
	FILE *f;
	long n;

	*raw = NULL;
	*raw_len = 0;
	snprintf(file, sizeof(file), "%s/config.json", bundle);
	if (!(f = fopen(file, "rb"))) {
		snprintf(err, err_len, "read bundle spec %.2048s: %s", file, strerror(errno));
		return NULL;
	}
	if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 && (*raw = malloc((size_t)n + 1)) &&
	    fread(*raw, 1, (size_t)n, f) == (size_t)n) {
		*raw_len = (size_t)n;
		if (!(spec = json_loadb((const char *)*raw, *raw_len, 0, &je)))
			snprintf(err, err_len, "read bundle spec %.2048s: %s", file, je.text);
	} else {
		snprintf(err, err_len, "read bundle spec %.2048s: %s", file, strerror(errno ? errno : EIO));
	}
	fclose(f);
	if (!spec) {
		free(*raw);
		*raw = NULL;
	}
	return spec;
}

/* The sandbox's network namespace (linux.namespaces[type=network].path), or NULL. */
static const char *netns_of(json_t *spec)
{
	json_t *ns = json_object_get(json_object_get(spec, "linux"), "namespaces"), *n;
	size_t i;

	json_array_foreach (ns, i, n) {
		const char *type = json_string_value(json_object_get(n, "type"));
		const char *path = json_string_value(json_object_get(n, "path"));

		if (type && strcmp(type, "network") == 0)
			return path && path[0] ? path : NULL;
	}
	return NULL;
}

/*
 * The pod's offload, from the sandbox's spec. Returns 1 when the pod is to have
 * a DPU half (the agent is then asked, while runc creates the sandbox), 0 when
 * the sandbox goes to runc's shim as it is (no offload, or no DPU half to be
 * had under prefer), or a negative errno with the reply made.
 */
static int sandbox(struct nd_pod *p, struct hp_treq *r, const char *id, json_t *spec, json_t *annotations)
{
	char err[HP_ERR_MAX];
	const char *ports = NULL, *problem = NULL, *netns = netns_of(spec), *why;

	hp_offload_free(&p->offload);
	free(p->declared_ports);
	p->declared_ports = NULL;
	p->n_declared = 0;
	if (hp_parse_offload(annotations, &p->offload, err, sizeof(err)) < 0 ||
	    (p->offload.n > 0 && (hp_annotation(annotations, HP_ANNOTATION_PORTS, &ports, err, sizeof(err)) < 0 ||
				  hp_parse_ports(ports, &p->offload, &p->declared_ports, &p->n_declared, err, sizeof(err)) < 0))) {
		nd_fail(r, HP_CODE_INVALID_ARGUMENT, "create task %s: %s", id, err);
		return -EINVAL;
	}
	set_str(&p->name, jstr(annotations, "io.kubernetes.cri.sandbox-name", ""));
	set_str(&p->pod_namespace, jstr(annotations, "io.kubernetes.cri.sandbox-namespace", ""));
	free(p->netns);
	p->netns = netns ? strdup(netns) : NULL;
	set_str(&p->dpu_problem, "");
	if (p->offload.n == 0)
		return 0;
	/* hostNetwork: there is no pod namespace to split, and the DPU has no way to the node's. */
	if (!netns)
		problem = "the pod uses the node's network namespace (hostNetwork), which cannot be split with the DPU";
	else if (!nd_agent(p->d, &why))
		problem = why;
	if (!problem)
		return 1;
	set_str(&p->dpu_problem, problem);
	/* A refused sandbox leaves no record: the pod never ran. */
	if (p->offload.require) {
		nd_fail(r, HP_CODE_FAILED_PRECONDITION, "create task %s: heteropod.io/offload-policy=require: %s", id, problem);
		return -EPERM;
	}
	save(p);
	nd_log(&p->fifo, p->log_ctx, ND_WARN, "offload fallback: the pod runs on the host", "reason", problem, NULL);
	return 0;
}

struct capacity_wait {
	struct nd_kept_waiter w;
	struct nd_create *c;
};

static void place(struct nd_create *c, const char *unavailable, uint64_t memory_free)
{
	struct nd_pod *p = c->p;
	struct hp_dpu_state dpu = { unavailable, memory_free };
	struct hp_placement placement = { 0 };
	char err[HP_ERR_MAX];
	int rc;

	if ((rc = hp_place_container(&p->offload, c->name, c->spec, &dpu, NULL, &placement, err, sizeof(err))) < 0) {
		nd_fail(c->r, rc == -EPERM ? HP_CODE_FAILED_PRECONDITION : rc == -EINVAL ? HP_CODE_INVALID_ARGUMENT : HP_CODE_INTERNAL,
			"create task %s: %s", c->id, err);
		nd_create_free(c);
		return;
	}
	if (placement.reason)
		nd_log(&p->fifo, p->log_ctx, ND_WARN, "offload fallback: container runs on the host", "container", c->name, "id", c->id, "reason",
		       placement.reason, NULL);
	nd_pod_note(p, c->id, c->name, placement.dpu && p->dpu, placement.reason);
	if (placement.dpu && p->dpu) {
		hp_placement_free(&placement);
		nd_dpu_create(p, c);
		return;
	}
	hp_placement_free(&placement);
	nd_reply_placed(p, c->r, ND_PLACED_PROXY, NULL, 0);
	nd_create_free(c);
}

/* CapacityResponse { memory_free_bytes = 4 } */
static void capacity_answered(struct nd_kept_waiter *w, const struct hp_tstatus *st)
{
	struct capacity_wait *cw = container_of(w, struct capacity_wait, w);
	struct nd_create *c = cw->c;
	struct nd_pod *p = c->p;
	struct pb_field f;
	size_t i = 0;
	uint64_t free_bytes = 0;

	free(cw);
	if (p->disposed) {
		nd_fail(c->r, HP_CODE_UNAVAILABLE, "create task %s: the pod is gone", c->id);
		nd_create_free(c);
		nd_pod_unref(p);
		return;
	}
	nd_pod_unref(p);
	if (st->code != 0) {
		place(c, st->message, 0);
		return;
	}
	while (pb_next(st->payload, st->len, &i, &f) > 0)
		if (f.num == 4 && f.wire == 0)
			free_bytes = f.u;
	place(c, NULL, free_bytes);
}

/*
 * A container's Create once the split network is joined: where it may go
 * depends on the DPU's free memory (under require, a network that could not be
 * joined fails it; under prefer it took the DPU half away).
 */
void nd_create_resume(struct nd_create *c)
{
	struct nd_pod *p = c->p;
	struct capacity_wait *cw;

	if (!hp_offload_names(&p->offload, c->name)) {
		place(c, NULL, 0);
		return;
	}
	if (!p->dpu) {
		place(c, p->dpu_problem && p->dpu_problem[0] ? p->dpu_problem : "the pod has no DPU half", 0);
		return;
	}
	if (!(cw = calloc(1, sizeof(*cw)))) {
		place(c, "out of memory", 0);
		return;
	}
	cw->c = c;
	cw->w.fn = capacity_answered;
	nd_pod_ref(p);
	nd_kept_get(p->d, &p->d->capacity, &cw->w);
}

void nd_pod_create(struct nd_pod *p, struct hp_treq *r)
{
	char err[HP_ERR_MAX], *id = NULL, *bundle = NULL;
	unsigned char *raw = NULL;
	size_t raw_len = 0;
	json_t *spec = NULL, *annotations;
	const char *type;
	struct nd_create *c;
	int rc;

	if (create_ids(r->payload, r->len, &id, &bundle) < 0) {
		nd_fail(r, HP_CODE_INVALID_ARGUMENT, "malformed Create request: it does not decode");
		goto out;
	}
	if (!id[0]) {
		nd_fail(r, HP_CODE_INVALID_ARGUMENT, "create task: id is required");
		goto out;
	}
	if (nd_task_find(p, id)) {
		nd_fail(r, 6 /* ALREADY_EXISTS */, "create task %s: task %s", id, id);
		goto out;
	}
	if (!(spec = read_spec(bundle, &raw, &raw_len, err, sizeof(err)))) {
		nd_fail(r, HP_CODE_INVALID_ARGUMENT, "create task %s: %s", id, err);
		goto out;
	}
	annotations = json_object_get(spec, "annotations");
	type = jstr(annotations, "io.kubernetes.cri.container-type", "");
	if (strcmp(type, "container") != 0) {
		rc = strcmp(type, "sandbox") == 0 ? sandbox(p, r, id, spec, annotations) : 0;
		if (rc < 0)
			goto out;
		nd_pod_note(p, id, json_object_get(annotations, "io.kubernetes.cri.sandbox-name") ? "(sandbox)" : id, 0, NULL);
		if (rc == 1)
			nd_sandbox_create(p, r, id, bundle, spec);
		else
			nd_reply_placed(p, r, ND_PLACED_PROXY, NULL, 0);
		goto out;
	}
	if (!(c = calloc(1, sizeof(*c))) || !(c->name = strdup(jstr(annotations, "io.kubernetes.cri.container-name", id)))) {
		free(c);
		nd_fail(r, HP_CODE_INTERNAL, "create task %s: out of memory", id);
		goto out;
	}
	c->p = p;
	c->r = r;
	c->id = id;
	c->bundle = bundle;
	c->spec = spec;
	c->spec_raw = raw;
	c->spec_len = raw_len;
	id = bundle = NULL;
	spec = NULL;
	raw = NULL;
	/* The container waits for the split network being joined. */
	if (p->joining || p->connecting) {
		struct nd_create **at;

		for (at = &p->waiting; *at; at = &(*at)->next)
			;
		*at = c;
	} else {
		nd_create_resume(c);
	}
out:
	json_decref(spec);
	free(raw);
	free(id);
	free(bundle);
}

/* ---- the tasks the daemon holds ---- */

void nd_pod_call(struct nd_pod *p, struct hp_treq *r)
{
	char *id = nd_field_str(r->payload, r->len, 1); /* every task request's id */
	struct nd_task *t = id ? nd_task_find(p, id) : NULL;

	if (!t)
		nd_fail(r, HP_CODE_NOT_FOUND, "task %s", id ? id : "");
	else
		nd_task_call(p, t, r);
	free(id);
}
