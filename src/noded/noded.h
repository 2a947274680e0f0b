/*
 * heteropod-noded: the node daemon in C. One resident process per node serving
 * the DPU side of every offloading pod, as src/shim/node-daemon.ts does, at the
 * same socket (node.sock in the shim config's state_dir) with the same contract
 * towards each pod's C proxy (src/shim/proxy.h): a connection begins with
 * heteropod.node.v1.Node/Attach (who the pod is), then carries the pod's task
 * Creates, answered with Response field 15 `placed`, and the calls of the
 * tasks the daemon holds.
 *
 * The parts: daemon.c (the socket, the pods, their connections and lives, the
 * records of pods an earlier daemon served), pod.c (one pod: where each task
 * goes, its task table, its record), log.c.
 */
#ifndef HETEROPOD_NODED_H
#define HETEROPOD_NODED_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "../common/loop.h"
#include "../placement/placement.h"
#include "../shim/shim-config.h"
#include "../ttrpc/client.h"
#include "../ttrpc/server.h"
#include "events.h"
#include "log.h"
#include "relay.h"

#define ND_NODE_SERVICE "heteropod.node.v1.Node"
#define ND_TASK_SERVICE "containerd.task.v2.Task"
/* Response field 15 of the daemon's answer to Create (src/shim/proxy.h). */
#define ND_PLACED_FIELD 15u
#define ND_PLACED_DAEMON 1
#define ND_PLACED_PROXY 2
#define ND_PLACED_SANDBOX 3

/* How long after a pod's last connection closed its proxy may take to exit. */
#define ND_PROXY_EXIT_MS 5000
#define ND_SWEEP_MS 10000

/* heteropod.node.v1.AttachRequest: who the proxy on a connection serves. */
struct nd_attach {
	char *namespace;	  /* 1 */
	char *group;		  /* 2: the pod, its sandbox id */
	char *containerd_address; /* 3 */
	char *ttrpc_address;	  /* 4: containerd's ttrpc socket, for events */
	char *runc_address;	  /* 5: runc's shim for the pod */
	char *publish_binary;	  /* 6 */
	char *bundle;		  /* 7: the sandbox's bundle (its `log` fifo is the pod's shim log) */
	char *config_path;	  /* 8 */
	pid_t proxy_pid;	  /* 9 */
	int debug;		  /* 10 */
};

enum nd_status { ND_CREATING, ND_CREATED, ND_RUNNING, ND_STOPPED, ND_DELETED };
enum nd_runtime { ND_RT_SANDBOX, ND_RT_DPU };

struct nd_task {
	char *id, *bundle;
	enum nd_status status;
	enum nd_runtime runtime;
	uint32_t init_pid;	/* a DPU container's, from its Create: Connect needs no round trip */
	char *termination_log; /* the host file its termination message goes to, or NULL */
	struct nd_watch *watch; /* its mounts, kept up to date (watch.c) */
	struct nd_task *next;
};

/* A process whose stdio the daemon relays (kept in the record for a takeover). */
struct nd_proc {
	char *id, *exec_id, *stdin_path, *stdout_path, *stderr_path;
	struct nd_relay *relay;
	struct nd_proc *next;
};

/* An answer of the agent kept a while (Health, Capacity), and who waits for it. */
struct nd_kept_waiter {
	void (*fn)(struct nd_kept_waiter *w, const struct hp_tstatus *st);
	struct nd_kept_waiter *next;
};

struct nd_kept {
	const char *method;
	long long fresh_ms;
	int (*keep)(const unsigned char *answer, size_t len); /* NULL: any answer */
	long long at;
	unsigned char *answer;
	size_t len;
	int have;
	struct hp_tcall *inflight;
	struct nd_kept_waiter *waiters;
};

struct nd_dpu;
struct nd_sandbox_op;
struct nd_sandbox_delete;
struct nd_pod;

/* A task's Create while it is placed and made (pod.c, dpu.c). */
struct nd_create {
	struct nd_pod *p;
	struct hp_treq *r;
	char *id, *bundle, *name;
	json_t *spec;
	unsigned char *spec_raw; /* config.json's bytes, sent to the agent as they are */
	size_t spec_len;
	struct nd_kept_waiter capacity;
	struct nd_create *next; /* waiting for the join */
	/* on the DPU (dpu.c) */
	char **layers; /* digests, top first */
	size_t n_layers;
	char **dirs; /* the layer directories */
	size_t n_dirs;
	unsigned char *files; /* CreateRequest.files, encoded */
	size_t files_len;
	struct nd_mount_watch *watch; /* made before the files were read */
	uint64_t sent[2];		 /* layers and bytes `heteropod layers ship` sent */
	int shipped;
};
void nd_create_free(struct nd_create *c);

/* A container as the pod's record has it (placement). */
struct nd_placed {
	char *id, *name, *reason;
	int dpu;
	struct nd_placed *next;
};

struct nd_daemon;

struct nd_pod {
	struct nd_daemon *d;
	struct nd_pod *next;
	struct nd_attach a;
	char *key; /* containerd address, namespace, group */
	int connections;
	int disposed;
	struct nd_fifo fifo;
	const char *log_ctx[7]; /* runtime, namespace, pod */
	struct nd_task *tasks;
	/* the record */
	char *name, *pod_namespace;
	char *netns;	  /* the sandbox's network namespace (its spec's) */
	char *netns_path; /* the record's: the host half's namespace, once the split network is open */
	struct hp_offload offload;
	char *dpu_problem;
	struct nd_placed *placed; /* in the order first placed */
	uint16_t *declared_ports;
	size_t n_declared;
	char *file;
	char *written; /* the record's text as last written */
	struct hp_timer save_timer;
	/* the wait for its proxy to exit once no connection is left */
	struct hp_timer idle_timer;
	long long idle_deadline;
	/* its DPU half (dpu.c), while it has one; the connection to runc's shim */
	struct nd_dpu *dpu;
	struct hp_tclient *runc;
	int connecting, joining;   /* the DPU half being asked for; the split network being joined */
	struct nd_create *waiting; /* container Creates waiting for the join */
	struct nd_sandbox_op *sandbox_op; /* the sandbox's Create, while runc and the agent are asked */
	struct nd_sandbox_delete *pending_delete; /* its Delete, while the halves are separated */
	struct nd_forwarder *events;
	int refs; /* async work that will come back to the pod: it is freed once disposed and none is left */
};

void nd_pod_ref(struct nd_pod *p);
/* Returns 1 when the pod was freed (disposed, and this was the last). */
int nd_pod_unref(struct nd_pod *p);

struct nd_daemon {
	struct hp_loop *loop;
	struct shim_config cfg;
	struct hp_agent *agent; /* the node's one connection to the DPU agent, made on first use */
	char agent_problem[512];
	struct nd_kept health, capacity;
	struct nd_forwarder **forwarders;
	size_t n_forwarders;
	char *config_path;
	/* this checkout's programs, found once at start: bin/heteropod (the rare work
	 * left to TypeScript) and the sandbox's clean-up hook with its PATH (node first) */
	char cli[4096 + 32], hook_path[4096 + 64], hook_env[4096 + 128];
	unsigned char runc_options[1024]; /* containerd.runc.v1.Options for the sandbox's Create, as an Any */
	size_t runc_options_len;
	char socket[4096];
	struct hp_tserver *server;
	struct nd_pod *pods;
	struct hp_timer sweep;
	struct hp_watch signals;
	int stopping;
	int guarded, guarding, unguarded_said; /* the management link's guard (mgmt.c) */
};

/* mgmt.c: the chain that drops what the host forwards onto the DPU's management link. */
void nd_guard_management(struct nd_daemon *d);

/* daemon.c */
int nd_daemon_start(struct nd_daemon *d, const char *config_path, const char *socket, char *err, size_t err_len);
void nd_daemon_stop(struct nd_daemon *d);
/* The pod's proxy closed its last connection, or the sweep found it gone: it goes once its proxy has exited. */
void nd_pod_idle(struct nd_pod *p);

/* The node's agent, or NULL with why there is none (no address, unreadable TLS files). */
struct hp_agent *nd_agent(struct nd_daemon *d, const char **problem);
/* The kept answer of k (at once when fresh), or the one asked now; w->fn gets it. */
void nd_kept_get(struct nd_daemon *d, struct nd_kept *k, struct nd_kept_waiter *w);
/* The forwarder of containerd's ttrpc address (one per address). */
struct nd_forwarder *nd_forwarder_for(struct nd_daemon *d, const char *address);

/* A blocking call on a worker thread, then `done` on the loop; the job is freed after `done`. */
struct nd_work {
	struct hp_job job;
	void (*run)(struct nd_work *w);
	void (*done)(struct nd_work *w);
	void *ctx;
	int rc;
	char err[1024];
};
void nd_work(struct nd_daemon *d, struct nd_work *w);

/* dpu.c: a pod's DPU half, its split network, its sandbox's Create and Delete */
/* The sandbox of a pod asking for a DPU half: runc's Create, the agent asked meanwhile. */
void nd_sandbox_create(struct nd_pod *p, struct hp_treq *r, const char *id, const char *bundle, json_t *spec);
/* A string field of a protobuf message (malloc'd; "" when absent), NULL without memory. */
char *nd_field_str(const unsigned char *m, size_t n, uint32_t num);
/* A container's Create once its placement says the DPU (the split network joined). */
void nd_dpu_create(struct nd_pod *p, struct nd_create *c);
/* A call for a task the daemon holds. */
void nd_task_call(struct nd_pod *p, struct nd_task *t, struct hp_treq *r);
/* The pod is gone: its DPU half, relays and split network (in the background). */
void nd_dpu_shutdown(struct nd_pod *p);
/* Takes the DPU half of a pod over from its record; its tasks' mounts once they are back. */
void nd_dpu_resume(struct nd_pod *p, json_t *record);
void nd_dpu_resume_tasks(struct nd_pod *p);
/* A process's stdio relayed (its Create's or Exec's paths). */
void nd_dpu_attach(struct nd_pod *p, const char *id, const char *exec_id, const char *in, const char *out, const char *err);
/* mounts (mounts.c): the copies of a container's bind mounts, kept up to date; its termination message. */
int nd_mounted_files(json_t *spec, uint32_t field, unsigned char **out, size_t *len, char *err, size_t err_len);
char *nd_termination_log_source(json_t *spec);
void nd_dpu_termination_message(struct nd_task *t, const unsigned char *msg, size_t len, struct nd_pod *p);
void nd_dpu_watch_mounts(struct nd_pod *p, struct nd_task *t, json_t *spec, int resend);
void nd_dpu_unwatch_mounts(struct nd_pod *p, struct nd_task *t);
void nd_dpu_start_watch(struct nd_pod *p, struct nd_task *t, struct nd_mount_watch *w, int resend);
/* What the record keeps of the DPU half. */
void nd_dpu_record(struct nd_pod *p, json_t *node);

/* pod.c */
void nd_pod_save(struct nd_pod *p);
struct nd_task *nd_task_find(struct nd_pod *p, const char *id);
struct nd_task *nd_task_add(struct nd_pod *p, const char *id, const char *bundle, enum nd_runtime rt, enum nd_status st);
void nd_task_remove(struct nd_pod *p, const char *id);
/* A lifecycle event observed (an exit, a Start): ignored when the lifecycle does not allow it. */
void nd_task_observe(struct nd_task *t, enum nd_status to);
/* What was decided for a container, and why. */
void nd_pod_note(struct nd_pod *p, const char *id, const char *name, int dpu, const char *reason);
/* Answers a Create with Response field 15 after the record is on disk. */
void nd_reply_placed(struct nd_pod *p, struct hp_treq *r, int placed, const void *payload, size_t len);
/* A container's Create resumed once the split network is joined (or not). */
void nd_create_resume(struct nd_create *c);
struct nd_pod *nd_pod_new(struct nd_daemon *d, const struct nd_attach *a);
/* Takes the pod over from its record (an earlier daemon's); 0 or -errno. */
int nd_pod_restore(struct nd_pod *p, json_t *record);
void nd_pod_create(struct nd_pod *p, struct hp_treq *r);
void nd_pod_call(struct nd_pod *p, struct hp_treq *r);
/* The record on disk now, if a write is pending (the daemon stops). */
void nd_pod_flush(struct nd_pod *p);
/* The pod is gone: its record, then itself. */
void nd_pod_dispose(struct nd_pod *p);
/* Frees the pod, its record left for the next daemon. */
void nd_pod_free(struct nd_pod *p);
int nd_proxy_alive(const struct nd_pod *p);

void nd_attach_free(struct nd_attach *a);
/* Decodes AttachRequest; -EINVAL with `err` when it lacks what a pod needs. */
int nd_attach_decode(const unsigned char *p, size_t n, struct nd_attach *a, char *err, size_t err_len);
char *nd_pod_key(const struct nd_attach *a);
/* placement/<pod>.json under the state dir. */
char *nd_record_path(const char *state_dir, const char *pod_id);

/* Replies with an error whose message is printf'd. */
void nd_fail(struct hp_treq *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
