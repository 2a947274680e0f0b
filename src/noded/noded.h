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
#include "log.h"

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
	struct nd_task *next;
};

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
	char *name, *pod_namespace, *netns_path;
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
};

struct nd_daemon {
	struct hp_loop *loop;
	struct shim_config cfg;
	char socket[4096];
	struct hp_tserver *server;
	struct nd_pod *pods;
	struct hp_timer sweep;
	struct hp_watch signals;
	int stopping;
};

/* daemon.c */
int nd_daemon_start(struct nd_daemon *d, const char *config_path, const char *socket, char *err, size_t err_len);
void nd_daemon_stop(struct nd_daemon *d);
/* The pod's proxy closed its last connection, or the sweep found it gone: it goes once its proxy has exited. */
void nd_pod_idle(struct nd_pod *p);

/* pod.c */
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
