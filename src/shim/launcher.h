/*
 * What launcher.c (start, the Node hand-off) and proxy-start.c (runc's shim and
 * the C proxy, which serve every pod) share. Not an API: one binary, build/containerd-shim-heteropod-v2.
 */
#ifndef HETEROPOD_SHIM_LAUNCHER_H
#define HETEROPOD_SHIM_LAUNCHER_H

#include <sys/types.h>

#include "shim-config.h"
#define NODE_SOCKET "node.sock" /* the node daemon\'s, in state_dir */

/* Go-style flags, as containerd passes them, plus the proxy's own. */
struct flags {
	const char *namespace, *address, *publish_binary, *id, *action;
	/* proxy: our socket, runc's shim address, its working directory, the config */
	const char *socket, *runc_address, *work_dir, *config;
	/* proxy of an offload pod: the node daemon's socket, the pod's
	 * heteropod.io/offload-policy, and what Attach tells the daemon besides */
	const char *node_socket, *offload_policy, *ttrpc_address, *bundle;
	int debug;
};

/* What `start` knows once it has found the pod and decided it needs a shim. */
struct start_request {
	const struct flags *flags;
	const struct shim_config *config;
	const char *config_path; /* "" when containerd sent no options */
	const char *group;	 /* the pod: sandbox id */
	const char *socket;	 /* our socket for the pod (nothing answers there yet) */
	const char *bundle;	 /* absolute: the task's bundle, start's cwd */
	/* Offload pods: the pod's heteropod.io/offload-policy ("prefer" when the
	 * annotation is absent) and the node daemon's socket; both NULL otherwise. */
	const char *offload_policy, *node_socket;
};

/* Starts runc's shim for the pod and the proxy in front of it (told about the
 * node daemon for an offload pod), listening on req->socket before it returns. 0, or a negative errno with `why` filled. */
int proxy_start(const struct start_request *req, char *why, size_t why_len);

/* The `proxy` action: the long-lived process proxy_start spawns. */
int proxy_main(const struct flags *f);

int mkdir_p(const char *dir, mode_t mode);
char *read_file(const char *path);
/* Whether something accepts connections on the unix socket at path. */
int socket_answers(const char *path);
/* Returns a listening socket at path (not close-on-exec), or a negative errno. */
int listen_at(const char *path);
/* The path of this executable. */
int self_exe(char *out, size_t cap);
/* Whether the HETEROPOD_DEBUG environment variable asks for debug tracing. */
int debug_from_env(void);

#endif
