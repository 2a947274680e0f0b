/*
 * Every pod is served by containerd-shim-runc-v2 behind the C proxy of proxy.c:
 * `start` starts runc's shim for the pod, then the proxy on our socket, and
 * prints our address. For a pod with the `heteropod.io/offload` annotation the
 * proxy is also told the node daemon's socket (<state_dir>/node.sock), the pod's
 * offload policy, and what it tells the daemon in Attach (containerd's addresses,
 * TTRPC_ADDRESS, the publish binary, the sandbox bundle); it then routes the
 * pod's tasks between runc's shim and the daemon (proxy.h).
 *
 * runc's shim, and what is done about its pitfalls (as in runc-runtime.ts):
 * - its `start` writes `address` into its working directory, and
 *   its daemon removes the socket named there at exit: it runs in a private
 *   directory, <state_dir>/pods/<namespace>/<pod>/runc, holding links to the
 *   bundle's config.json (which it reads for the pod's grouping) and log fifo.
 *   `delete` (delete.ts) finds it there.
 * - its socket name hashes containerd's address, namespace and pod; ours hashes
 *   another input (launcher.c), so the two never collide.
 * - its events go straight to containerd: it inherits containerd's TTRPC_ADDRESS.
 * - it refuses our runtime options: the proxy replaces them in Create with
 *   containerd.runc.v1.Options from the config's [runc] table, or removes them.
 *
 * The proxy process (`containerd-shim-heteropod-v2 -namespace … -id <pod>
 * -address … proxy`, so ps and the test bed's clean-up recognise it) lives as long
 * as runc's shim: it exits when that shim exits, after a Shutdown or a crash,
 * removing a dead shim's socket, its own socket and the pod's state.
 */
#include "launcher.h"
#include "proxy.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LISTEN_FD 3
#define MAX_OUTPUT 4096

static void explain(char *why, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, len, fmt, ap);
	va_end(ap);
}

/* The pod's state directory goes with its last shim; the namespace's if empty. */
static void remove_pod_state(const char *work_dir)
{
	char dir[PATH_MAX], *slash;
	DIR *d = opendir(work_dir);
	struct dirent *e;

	if (d) {
		while ((e = readdir(d)))
			if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
				unlinkat(dirfd(d), e->d_name, 0);
		closedir(d);
	}
	rmdir(work_dir);
	snprintf(dir, sizeof(dir), "%s", work_dir);
	for (int up = 0; up < 2 && (slash = strrchr(dir, '/')) && slash != dir; up++) {
		*slash = '\0';
		if (rmdir(dir) < 0)
			break; /* not empty: another pod's, or the namespace still has pods */
	}
}

/*
 * Runs `<runc_shim> -namespace … -address … -publish-binary … -id … start` in the
 * working directory, as containerd would run it; its output is runc's address.
 * `listener` is ours: runc's shim must not inherit it.
 */
static int run_runc_start(const struct start_request *req, const char *work_dir, int listener, char *address, size_t cap,
			  char *why, size_t why_len)
{
	const struct flags *f = req->flags;
	char output[MAX_OUTPUT + 1];
	size_t got = 0;
	int pipefd[2], status, err;
	pid_t pid;

	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		err = -errno;
		explain(why, why_len, "start runc shim: pipe");
		return err;
	}
	pid = fork();
	if (pid < 0) {
		err = -errno;
		close(pipefd[0]);
		close(pipefd[1]);
		explain(why, why_len, "start runc shim: fork");
		return err;
	}
	if (pid == 0) {
		const char *args[16];
		int a = 0, null = open("/dev/null", O_RDONLY);

		close(listener);
		if (chdir(work_dir) < 0 || null < 0 || dup2(null, 0) < 0 || dup2(pipefd[1], 1) < 0 || dup2(pipefd[1], 2) < 0)
			_exit(127);
		args[a++] = req->config->runc_shim;
		args[a++] = "-namespace"; args[a++] = f->namespace;
		args[a++] = "-address"; args[a++] = f->address;
		if (f->publish_binary) {
			args[a++] = "-publish-binary"; args[a++] = f->publish_binary;
		}
		args[a++] = "-id"; args[a++] = f->id;
		if (f->debug || req->config->debug || debug_from_env())
			args[a++] = "-debug";
		args[a++] = "start";
		args[a] = NULL;
		execvp(args[0], (char **)args);
		dprintf(1, "exec %s: %s", args[0], strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	for (;;) {
		ssize_t n = read(pipefd[0], output + got, MAX_OUTPUT - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
		if (got == MAX_OUTPUT)
			break;
	}
	close(pipefd[0]);
	output[got] = '\0';
	while (got > 0 && (output[got - 1] == '\n' || output[got - 1] == '\r' || output[got - 1] == ' '))
		output[--got] = '\0';
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			err = -errno;
			explain(why, why_len, "start runc shim: wait");
			return err;
		}
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || strncmp(output, "unix://", 7) != 0 || got >= cap) {
		explain(why, why_len, "start runc shim %s: exit %d: %s", req->config->runc_shim,
			WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), got ? output : "no output");
		return -ECHILD;
	}
	memcpy(address, output, got + 1);
	return 0;
}

static size_t put_field(unsigned char *out, unsigned field, const void *p, size_t len)
{
	/* every length here is below 128: one-byte varints */
	out[0] = (unsigned char)(field << 3 | 2);
	out[1] = (unsigned char)len;
	memcpy(out + 2, p, len);
	return 2 + len;
}

/*
 * Asks runc's shim, which has no task yet, to exit: containerd.task.v2.Task/Shutdown
 * over ttrpc, and a wait (at most 2 s) for it to close the connection. Only for
 * rolling back a `start` that failed after runc's shim was up.
 */
static void runc_shutdown(const char *address, const char *namespace, const char *id)
{
	static const char service[] = "containerd.task.v2.Task", method[] = "Shutdown", ns_key[] = "containerd-namespace-ttrpc";
	unsigned char frame[512], payload[128], kv[160], *data = frame + HP_TTRPC_HEADER;
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	struct timeval timeout = { 2, 0 };
	size_t plen, kvlen, n = 0;
	int fd;

	if (strlen(id) > 100 || strlen(namespace) > 100 || strlen(address + 7) >= sizeof(addr.sun_path))
		return;
	strcpy(addr.sun_path, address + 7);
	plen = put_field(payload, 1, id, strlen(id));
	kvlen = put_field(kv, 1, ns_key, sizeof(ns_key) - 1);
	kvlen += put_field(kv + kvlen, 2, namespace, strlen(namespace));
	n += put_field(data + n, 1, service, sizeof(service) - 1);
	n += put_field(data + n, 2, method, sizeof(method) - 1);
	n += put_field(data + n, 3, payload, plen);
	n += put_field(data + n, 5, kv, kvlen);
	memcpy(frame, (unsigned char[]){ 0, 0, (unsigned char)(n >> 8), (unsigned char)n, 0, 0, 0, 1, HP_TTRPC_REQUEST, 0 }, HP_TTRPC_HEADER);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout)) == 0 &&
	    send(fd, frame, HP_TTRPC_HEADER + n, MSG_NOSIGNAL) == (ssize_t)(HP_TTRPC_HEADER + n)) {
		while (read(fd, frame, sizeof(frame)) > 0)
			; /* the reply, then EOF as it exits */
	}
	close(fd);
}

/* The proxy process: its own session, no stdio of containerd's (which waits for
 * EOF on start's output), our listening socket as fd 3. */
static int spawn_proxy(const struct start_request *req, const char *work_dir, const char *runc_address, int listener)
{
	const struct flags *f = req->flags;
	char exe[PATH_MAX];
	pid_t pid;

	if (self_exe(exe, sizeof(exe)) < 0)
		return -ENOENT;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		const char *args[40], *ttrpc_address = getenv("TTRPC_ADDRESS");
		int a = 0, null = open("/dev/null", O_RDWR);

		setsid();
		if (chdir("/") < 0 || null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0 ||
		    dup2(listener, LISTEN_FD) < 0)
			_exit(127);
		if (null > LISTEN_FD)
			close(null);
		if (listener != LISTEN_FD)
			close(listener);
		args[a++] = "containerd-shim-heteropod-v2";
		args[a++] = "-namespace"; args[a++] = f->namespace;
		args[a++] = "-id"; args[a++] = req->group;
		args[a++] = "-address"; args[a++] = f->address;
		args[a++] = "-socket"; args[a++] = req->socket;
		args[a++] = "-runc-address"; args[a++] = runc_address;
		args[a++] = "-work-dir"; args[a++] = work_dir;
		if (req->config_path[0]) {
			args[a++] = "-config"; args[a++] = req->config_path;
		}
		if (req->node_socket) {
			args[a++] = "-node-socket"; args[a++] = req->node_socket;
			args[a++] = "-offload-policy"; args[a++] = req->offload_policy;
			args[a++] = "-bundle"; args[a++] = req->bundle;
			if (f->publish_binary) {
				args[a++] = "-publish-binary"; args[a++] = f->publish_binary;
			}
			if (ttrpc_address) {
				args[a++] = "-ttrpc-address"; args[a++] = ttrpc_address;
			}
		}
		if (f->debug)
			args[a++] = "-debug";
		args[a++] = "proxy";
		args[a] = NULL;
		execv(exe, (char **)args);
		_exit(127);
	}
	return 0;
}

int proxy_start(const struct start_request *req, char *why, size_t why_len)
{
	char pod_dir[PATH_MAX - 64], work_dir[PATH_MAX - 32], link[PATH_MAX], target[PATH_MAX], runc_address[PATH_MAX];
	static const char *const linked[] = { "config.json", "log" };
	int listener, err, runc_started = 0;
	size_t i;

	if (snprintf(pod_dir, sizeof(pod_dir), "%s/pods/%s/%s", req->config->state_dir, req->flags->namespace, req->group) >=
	    (int)sizeof(pod_dir)) {
		explain(why, why_len, "pod state directory under %s", req->config->state_dir);
		return -ENAMETOOLONG;
	}
	snprintf(work_dir, sizeof(work_dir), "%s/runc", pod_dir);
	listener = listen_at(req->socket);
	if (listener < 0) {
		explain(why, why_len, "listen on %s", req->socket);
		return listener;
	}
	if ((err = mkdir_p(work_dir, 0711)) < 0) {
		explain(why, why_len, "create %s", work_dir);
		goto fail;
	}
	for (i = 0; i < sizeof(linked) / sizeof(linked[0]); i++) {
		snprintf(link, sizeof(link), "%s/%s", work_dir, linked[i]);
		snprintf(target, sizeof(target), "%s/%s", req->bundle, linked[i]);
		unlink(link);
		if (symlink(target, link) < 0) {
			err = -errno;
			explain(why, why_len, "link %s", link);
			goto fail;
		}
	}
	if ((err = run_runc_start(req, work_dir, listener, runc_address, sizeof(runc_address), why, why_len)) < 0)
		goto fail;
	runc_started = 1;
	if ((err = spawn_proxy(req, work_dir, runc_address, listener)) < 0) {
		explain(why, why_len, "start the proxy");
		goto fail;
	}
	close(listener); /* the proxy holds it now */
	return 0;
fail:
	/* runc's shim, if started, has no task yet: nothing of the pod is lost. */
	if (runc_started)
		runc_shutdown(runc_address, req->flags->namespace, req->flags->id);
	close(listener);
	unlink(req->socket);
	remove_pod_state(work_dir);
	return err;
}

/* ---- the proxy process ------------------------------------------------------ */

static struct {
	const char *fifo, *namespace, *pod;
	int fd, debug;
} proxy_log;

/* logrus-style lines into the bundle's log fifo, which containerd copies into its
 * log. Never blocks: with no reader (containerd restarting) a line is dropped. */
static void log_line(const char *level, const char *msg, const char *detail)
{
	char line[1024], when[32];
	struct timespec now;
	struct tm tm;
	int n;

	if (!strcmp(level, "debug") && !proxy_log.debug)
		return;
	if (proxy_log.fd < 0)
		proxy_log.fd = open(proxy_log.fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (proxy_log.fd < 0)
		return;
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
	n = snprintf(line, sizeof(line), "time=\"%s.%09ldZ\" level=%s msg=\"%s\"%s%s%s runtime=io.containerd.heteropod.v2 namespace=%s pod=%s\n",
		     when, now.tv_nsec, level, msg, detail ? " error=\"" : "", detail ? detail : "", detail ? "\"" : "",
		     proxy_log.namespace, proxy_log.pod);
	if (n > 0 && write(proxy_log.fd, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1) < 0 && errno != EAGAIN) {
		close(proxy_log.fd);
		proxy_log.fd = -1;
	}
}

int proxy_main(const struct flags *f)
{
	static char fifo[PATH_MAX];
	unsigned char options[4096];
	struct shim_config config;
	const char *upstream;
	int olen, err;

	if (!f->namespace || !f->id || !f->socket || !f->runc_address || !f->work_dir || strncmp(f->runc_address, "unix://", 7) != 0) {
		fprintf(stderr, "containerd-shim-heteropod-v2: proxy: -namespace, -id, -socket, -runc-address unix://… and -work-dir are required\n");
		return 2;
	}
	upstream = f->runc_address + 7;
	signal(SIGPIPE, SIG_IGN);
	snprintf(fifo, sizeof(fifo), "%s/log", f->work_dir);
	proxy_log.fifo = fifo;
	proxy_log.namespace = f->namespace;
	proxy_log.pod = f->id;
	proxy_log.fd = -1;
	err = shim_config_read(f->config ? f->config : "", &config);
	if (err < 0) {
		log_line("error", "read shim config", strerror(-err));
		config = (struct shim_config){ 0 };
	}
	proxy_log.debug = f->debug || config.debug || debug_from_env();
	olen = hp_runc_options(config.runc_binary_name ? config.runc_binary_name : "", config.runc_root ? config.runc_root : "",
			       config.runc_systemd_cgroup, options, sizeof(options));
	shim_config_free(&config);
	if (olen < 0) {
		log_line("error", "[runc] options too long", strerror(-olen));
		olen = 0; /* runc's shim then uses its defaults */
	}

	{
		struct hp_attach attach = {
			.namespace = f->namespace,
			.group = f->id,
			.containerd_address = f->address,
			.ttrpc_address = f->ttrpc_address ? f->ttrpc_address : getenv("TTRPC_ADDRESS"),
			.runc_address = f->runc_address,
			.publish_binary = f->publish_binary,
			.bundle = f->bundle,
			.config_path = f->config,
			.proxy_pid = (uint32_t)getpid(),
			.debug = proxy_log.debug,
		};
		struct hp_proxy p = {
			.listener = LISTEN_FD,
			.socket_path = f->socket,
			.upstream = upstream,
			.create_options = olen > 0 ? options : NULL,
			.create_options_len = olen > 0 ? (size_t)olen : 0,
			.node_socket = f->node_socket,
			.offload_policy = f->offload_policy ? f->offload_policy : "prefer",
			.attach = f->node_socket ? &attach : NULL,
			.log = log_line,
		};

		log_line("info", f->node_socket ? "proxy serving an offload pod" : "proxy serving", NULL);
		log_line("debug", f->node_socket ? "tasks go to runc's shim or, as the node daemon places them, to it" : "tasks go to runc's shim", NULL);
		err = hp_proxy_run(&p);
		if (err < 0)
			log_line("error", "proxy event loop failed", strerror(-err));
	}
	/* After a Shutdown runc's shim removes its socket; a shim that died cannot. */
	if (!socket_answers(upstream) && unlink(upstream) == 0)
		log_line("warning", "runc shim exited without a Shutdown; removed its socket", upstream);
	remove_pod_state(f->work_dir);
	log_line("info", "shim exited", NULL);
	return 0;
}
