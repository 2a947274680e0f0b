/*
 * containerd-shim-heteropod-v2 launcher: the `start` action in C.
 *
 * containerd runs `<shim> ... start` cold for every task and waits for it; a
 * Node.js start-up for each would dominate pod start time. This does `start`
 * without Node: find the pod's shim socket, and if nothing answers there, start
 * containerd-shim-runc-v2 for the pod and the C proxy of proxy.c in front of it
 * (proxy-start.c; the `proxy` action is that process), listening on the pod's
 * socket; then write `address` and the start record into the bundle and print
 * the address. `config` prints the shim config as read (shim-config.c); every
 * other action (delete, -v) is handed to the Node implementation with execv.
 *
 * Offload: a pod whose sandbox spec has the `heteropod.io/offload` annotation
 * (any value, even empty) is served the same way, and its proxy is also told the
 * node daemon's socket, <state_dir>/node.sock (one Node.js daemon per node,
 * started by no `start`), and the pod's `heteropod.io/offload-policy` annotation
 * (absent: "prefer"; any other value is passed as it is). The proxy routes the
 * pod's tasks between runc's shim and the daemon (proxy.h). A pod without the
 * annotation gets a proxy that never looks at the daemon. Container tasks of a
 * pod find the pod's socket answering and join it.
 *
 * Here: the flags, `start` itself (main) and the Node hand-off. The runtime
 * options and the bundle's annotations are read in launcher-bundle.c, hashing,
 * files and sockets are launcher-util.c's. Those return their errors; main alone
 * prints one line, "containerd-shim-heteropod-v2: start: <what>: <reason>", and
 * exits 1.
 *
 * Contract shared with src/shim (paths.ts, options.ts, record.ts; shim-config.c
 * reads the config for both):
 *   socket = <state_dir>/s/hex(sha256("heteropod\0" address "\0" namespace "\0" group))
 *   group  = annotation io.kubernetes.cri.sandbox-id of ./config.json, else the id
 *   state_dir from the top-level `state_dir = "..."` of the config file named by
 *   the runtime options on stdin (runtimeoptions.v1.Options.config_path), else
 *   /etc/heteropod/shim.toml; default /run/heteropod-shim.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "launcher.h"

#define MAX_SOCKET_PATH 106

/* ---- flags ------------------------------------------------------------------ */

static const char *flag_value(int argc, char **argv, int *i, const char *name)
{
	const char *arg = argv[*i] + (argv[*i][1] == '-' ? 2 : 1);
	size_t n = strlen(name);

	if (strncmp(arg, name, n) != 0)
		return NULL;
	if (arg[n] == '=')
		return arg + n + 1;
	if (arg[n] != '\0' || *i + 1 >= argc)
		return NULL;
	return argv[++*i];
}

static int parse_flags(int argc, char **argv, struct flags *f)
{
	int i;

	memset(f, 0, sizeof(*f));
	for (i = 1; i < argc; i++) {
		const char *v;

		if (argv[i][0] != '-') {
			if (f->action)
				return -1;
			f->action = argv[i];
		} else if (!strcmp(argv[i], "-debug") || !strcmp(argv[i], "--debug")) {
			f->debug = 1;
		} else if ((v = flag_value(argc, argv, &i, "namespace"))) {
			f->namespace = v;
		} else if ((v = flag_value(argc, argv, &i, "address"))) {
			f->address = v;
		} else if ((v = flag_value(argc, argv, &i, "publish-binary"))) {
			f->publish_binary = v;
		} else if ((v = flag_value(argc, argv, &i, "id"))) {
			f->id = v;
		} else if ((v = flag_value(argc, argv, &i, "socket"))) {
			f->socket = v;
		} else if ((v = flag_value(argc, argv, &i, "runc-address"))) {
			f->runc_address = v;
		} else if ((v = flag_value(argc, argv, &i, "work-dir"))) {
			f->work_dir = v;
		} else if ((v = flag_value(argc, argv, &i, "config"))) {
			f->config = v;
		} else if ((v = flag_value(argc, argv, &i, "node-socket"))) {
			f->node_socket = v;
		} else if ((v = flag_value(argc, argv, &i, "offload-policy"))) {
			f->offload_policy = v;
		} else if ((v = flag_value(argc, argv, &i, "ttrpc-address"))) {
			f->ttrpc_address = v;
		} else if ((v = flag_value(argc, argv, &i, "bundle"))) {
			f->bundle = v;
		} else {
			return -1; /* anything else: the Node implementation decides */
		}
	}
	return 0;
}

/* ---- the Node hand-off ------------------------------------------------------ */

/* dist/src/shim/main.js of the checkout this launcher was built in (build/):
 * 0, or a negative errno with `why` filled. */
static int main_js(char *out, size_t cap, char *why, size_t why_len)
{
	char exe[PATH_MAX];
	char *slash;
	int err;

	if ((err = self_exe(exe, sizeof(exe))) < 0) {
		snprintf(why, why_len, "find own path");
		return err;
	}
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	if (snprintf(out, cap, "%s/dist/src/shim/main.js", exe) >= (int)cap) {
		snprintf(why, why_len, "main.js path");
		return -ENAMETOOLONG;
	}
	return 0;
}

/* Replaces this process with `node main.js <our arguments>`. Returns only when
 * it cannot: a negative errno with `why` filled. */
static int exec_node(char *mainjs, int argc, char **argv, char *why, size_t why_len)
{
	char **args = calloc((size_t)argc + 3, sizeof(char *));
	int err, i;

	if (!args) {
		snprintf(why, why_len, "exec node");
		return -ENOMEM;
	}
	args[0] = "node";
	args[1] = mainjs;
	for (i = 1; i < argc; i++)
		args[i + 1] = argv[i];
	execvp("node", args);
	err = -errno;
	free(args);
	snprintf(why, why_len, "exec node");
	return err;
}

/* ---- start ------------------------------------------------------------------ */

/* The one line start prints when it fails (detail may be NULL); main's exit code. */
static int failed(const char *what, const char *detail)
{
	fprintf(stderr, "containerd-shim-heteropod-v2: start: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	return 1;
}

int main(int argc, char **argv)
{
	char mainjs[PATH_MAX], hex[65], record[3 * PATH_MAX], esc_cfg[PATH_MAX], esc_group[PATH_MAX];
	char config_error[SHIM_CONFIG_ERROR_MAX], why[PATH_MAX + 256];
	char *stdin_bytes, *config_path, *state_dir, *key;
	struct task_group task;
	struct sockaddr_un addr;
	struct shim_config config;
	struct flags f;
	size_t in_len = 0, key_len;
	int err;

	if (parse_flags(argc, argv, &f) == 0 && f.action && !strcmp(f.action, "config"))
		return shim_config_main(f.config);
	if (parse_flags(argc, argv, &f) == 0 && f.action && !strcmp(f.action, "proxy"))
		return proxy_main(&f);
	if ((err = main_js(mainjs, sizeof(mainjs), why, sizeof(why))) < 0)
		return failed(why, strerror(-err));
	if (parse_flags(argc, argv, &f) < 0 || !f.action || strcmp(f.action, "start") != 0 || !f.namespace || !f.address || !f.id) {
		err = exec_node(mainjs, argc, argv, why, sizeof(why));
		return failed(why, strerror(-err));
	}

	stdin_bytes = isatty(0) ? strdup("") : read_fd(0, &in_len);
	if (!stdin_bytes)
		stdin_bytes = strdup("");
	if (!stdin_bytes)
		return failed("out of memory", NULL);
	config_path = config_path_from_options((const unsigned char *)stdin_bytes, in_len);
	free(stdin_bytes);
	if (!config_path)
		return failed("out of memory", NULL);
	/* Every pod, offloading or not, fails here on a bad config, with the one line
	 * that names file, line and key (containerd puts it in RunPodSandbox's error). */
	if (shim_config_load(config_path, &config, config_error, sizeof(config_error)) < 0) {
		fprintf(stderr, "%s\n", config_error);
		return 1;
	}
	state_dir = config.state_dir;
	if ((err = group_of(f.id, &task, why, sizeof(why))) < 0)
		return failed(why, err == -EINVAL ? NULL : strerror(-err));

	key_len = strlen("heteropod") + 1 + strlen(f.address) + 1 + strlen(f.namespace) + 1 + strlen(task.group);
	key = malloc(key_len + 1);
	if (!key)
		return failed("out of memory", NULL);
	snprintf(key, key_len + 1, "heteropod%c%s%c%s%c%s", 0, f.address, 0, f.namespace, 0, task.group);
	sha256_hex((const unsigned char *)key, key_len, hex);
	free(key);

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	if (snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/s/%s", state_dir, hex) > MAX_SOCKET_PATH)
		return failed("socket path longer than 106 bytes; choose a shorter state_dir", state_dir);

	if (!socket_answers(addr.sun_path)) {
		char sdir[PATH_MAX], cwd[PATH_MAX], node_socket[PATH_MAX];
		struct start_request req = { &f, &config, config_path, task.group, addr.sun_path, cwd, NULL, NULL };

		snprintf(sdir, sizeof(sdir), "%s/s", state_dir);
		if ((err = mkdir_p(sdir, 0711)) < 0)
			return failed(sdir, strerror(-err));
		if (!getcwd(cwd, sizeof(cwd)))
			return failed("getcwd", strerror(errno));
		if (task.offload_policy) {
			if (snprintf(node_socket, sizeof(node_socket), "%s/%s", state_dir, NODE_SOCKET) > MAX_SOCKET_PATH)
				return failed("node daemon socket path longer than 106 bytes; choose a shorter state_dir", state_dir);
			req.offload_policy = task.offload_policy;
			req.node_socket = node_socket;
		}
		if ((err = proxy_start(&req, why, sizeof(why))) < 0)
			return failed(why, strerror(-err));
	}

	json_escape(esc_cfg, sizeof(esc_cfg), config_path);
	json_escape(esc_group, sizeof(esc_group), task.group);
	snprintf(record, sizeof(record), "{\"configPath\":\"%s\",\"group\":\"%s\"}", esc_cfg, esc_group);
	if ((err = write_file("heteropod-shim.json", record)) < 0)
		return failed("write heteropod-shim.json", strerror(-err));
	{
		char address[sizeof(addr.sun_path) + 8];

		snprintf(address, sizeof(address), "unix://%s", addr.sun_path);
		if ((err = write_file("address", address)) < 0)
			return failed("write address", strerror(-err));
		if (write(1, address, strlen(address)) != (ssize_t)strlen(address))
			return 1;
	}
	task_group_free(&task);
	free(config_path);
	return 0;
}
