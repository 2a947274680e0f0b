/*
 * The internal header of one binary, build/containerd-shim-heteropod-v2: what
 * launcher.c (flags, `start`, the Node hand-off), launcher-bundle.c (runtime
 * options and bundle annotations), launcher-util.c (hashing, files, sockets) and
 * proxy-start.c (runc's shim and the C proxy, which serve every pod) share. Not
 * an API.
 *
 * Errors: no function here prints or exits; only main does, once. A function
 * returns a negative errno (or NULL with errno set, where it says so) and, where
 * the errno alone would not say what failed, fills a `why` buffer with what it
 * was doing; main prints "<why>: <strerror>".
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

/* What the task's bundle says about its pod (launcher-bundle.c). */
struct task_group {
	char *group;	      /* the pod: sandbox-id annotation, else the task id */
	char *offload_policy; /* heteropod.io/offload-policy, "prefer" when absent;
			       * NULL when the pod does not offload */
};

/* runtimeoptions.v1.Options.config_path out of the protobuf Any containerd
 * writes on stdin, as a new string; "" when there is none. NULL with errno
 * ENOMEM. */
char *config_path_from_options(const unsigned char *any, size_t len);
/* Reads ./config.json (start runs in the bundle) into `out`, whose strings the
 * caller frees with task_group_free. 0, or a negative errno with `why` filled;
 * nothing is left allocated on failure. -EINVAL: the offload policy annotation
 * is neither "prefer" nor "require" (`why` is the whole message). */
int group_of(const char *id, struct task_group *out, char *why, size_t why_len);
void task_group_free(struct task_group *g);

/* Utilities (launcher-util.c). */

/* Lower-case hex SHA-256 of data, NUL-terminated. */
void sha256_hex(const unsigned char *data, size_t len, char out[65]);
/* All of fd (or the file) up to EOF in a new NUL-terminated buffer, its length in
 * *len_out when not NULL; NULL with errno set. */
char *read_fd(int fd, size_t *len_out);
char *read_file(const char *path);
/* Creates or truncates path (0644) and writes text: 0, or a negative errno. */
int write_file(const char *path, const char *text);
/* mkdir -p: 0 when dir exists afterwards, or a negative errno. */
int mkdir_p(const char *dir, mode_t mode);
/* in as the body of a JSON string, cut to fit cap (the start record's fields). */
void json_escape(char *out, size_t cap, const char *in);
/* Whether something accepts connections on the unix socket at path. */
int socket_answers(const char *path);
/* Returns a listening socket at path (not close-on-exec), or a negative errno. */
int listen_at(const char *path);
/* The path of this executable: 0, or a negative errno. */
int self_exe(char *out, size_t cap);
/* Whether the HETEROPOD_DEBUG environment variable asks for debug tracing. */
int debug_from_env(void);

#endif
