/*
 * heteropod-fifo-keeper: holds a read end of each output fifo of one DPU pod, so
 * that what a process wrote while no agent was reading outlives the process.
 *
 * A pipe's buffer lives as long as anyone has the fifo open. While a process
 * runs, runc's shim holds both ends of its output fifos; once the process has
 * exited, runc's shim copies what is left and closes them. If the agent is down
 * then (killed, restarting), nobody has the fifo open and the kernel frees what
 * the process wrote last, before a restarted agent can reopen the fifo. This
 * process, which the agent starts detached and which outlives it, keeps one read
 * end open per fifo and never reads: a reader never delays end-of-file for
 * another reader (that depends on writers only), so the agent's reader sees the
 * buffered bytes, then end-of-file, as it would have.
 *
 * Contract (the agent's side is src/agent/fifo-keeper.ts):
 * - run as `heteropod-fifo-keeper SOCKET POD`: it listens on SOCKET (made anew,
 *   mode 0600; an old file there is a dead keeper's), then goes on in a child of
 *   its own session, and the process started exits 0 once it has printed
 *   "ready PID" on stdout, PID the keeper's. The keeper lets go of its stdio. So
 *   the agent waits for a program's end, as for any tool, and the keeper is
 *   nobody's child (init reaps it). POD names the pod for ps and the leak checks;
 * - requests are lines on a connection, answered in order, one line each:
 *     hold PATH  "ok" once a read end of the fifo at PATH is open (O_NONBLOCK:
 *                the open never waits for a writer); a fifo held already is held
 *                once; a fifo made anew at a held path replaces the old one
 *     drop PATH  "ok"; the fifo at PATH is let go if it was held
 *   anything else, or a hold that fails: "error <what>";
 * - a held fifo whose path has gone or names another file since is let go at the
 *   next hold: no agent could reopen it (its process was deleted while no agent
 *   was there to say drop);
 * - connections come and go with agents; what is held outlives them;
 * - it never exits by itself: the agent kills it when the pod goes (or `dpu
 *   down`, with everything in the DPU's cgroup).
 *
 * Single-threaded, poll-driven; errors inside return a negative errno, and only
 * main prints (before "ready"; after it, answers say what failed).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_CONNECTIONS 4 /* an agent, and the next one while the old connection closes */
#define MAX_LINE (PATH_MAX + 16)

struct held {
	char *path;
	int fd;
	dev_t dev;
	ino_t ino;
};

struct connection {
	int fd; /* -1: the slot is free */
	size_t len;
	char buf[MAX_LINE];
};

struct keeper {
	struct held *held;
	size_t n, cap;
	int listener;
	struct connection conns[MAX_CONNECTIONS];
};

static void held_close(struct keeper *k, size_t i)
{
	close(k->held[i].fd);
	free(k->held[i].path);
	k->held[i] = k->held[--k->n];
}

/* Lets go of fifos no agent can reopen: their path is gone, or names another file. */
static void prune(struct keeper *k)
{
	struct stat st;
	size_t i = 0;

	while (i < k->n) {
		if (stat(k->held[i].path, &st) < 0 || st.st_dev != k->held[i].dev || st.st_ino != k->held[i].ino)
			held_close(k, i); /* the last entry moved to i: look at i again */
		else
			i++;
	}
}

static ssize_t held_find(const struct keeper *k, const char *path)
{
	for (size_t i = 0; i < k->n; i++)
		if (strcmp(k->held[i].path, path) == 0)
			return (ssize_t)i;
	return -1;
}

/* 0, or a negative errno (-ENOTSUP: not a fifo). */
static int hold(struct keeper *k, const char *path)
{
	struct stat st;
	char *copy;
	int fd;

	if (path[0] != '/')
		return -EINVAL;
	prune(k); /* a path held before names the same fifo from here on */
	if (held_find(k, path) >= 0)
		return 0;
	/* Only fifos: opening anything else could have side effects. */
	if (stat(path, &st) < 0)
		return -errno;
	if (!S_ISFIFO(st.st_mode))
		return -ENOTSUP;
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISFIFO(st.st_mode)) {
		close(fd); /* replaced between stat and open */
		return -ENOTSUP;
	}
	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 8;
		struct held *bigger = realloc(k->held, cap * sizeof(*bigger));

		if (!bigger) {
			close(fd);
			return -ENOMEM;
		}
		k->held = bigger;
		k->cap = cap;
	}
	copy = strdup(path);
	if (!copy) {
		close(fd);
		return -ENOMEM;
	}
	k->held[k->n++] = (struct held){ .path = copy, .fd = fd, .dev = st.st_dev, .ino = st.st_ino };
	return 0;
}

static void drop(struct keeper *k, const char *path)
{
	ssize_t i = held_find(k, path);

	if (i >= 0)
		held_close(k, (size_t)i);
}

static void connection_close(struct connection *c)
{
	close(c->fd);
	c->fd = -1;
	c->len = 0;
}

/* The answer to one request; a connection that cannot take it is closed. */
static void answer(struct connection *c, int rc)
{
	char line[128];
	int n;

	if (rc == 0)
		n = snprintf(line, sizeof(line), "ok\n");
	else
		n = snprintf(line, sizeof(line), "error %s\n", rc == -ENOTSUP ? "not a fifo" : strerror(-rc));
	/* A few bytes on a connection whose peer reads every answer: never short. */
	if (send(c->fd, line, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) != n)
		connection_close(c);
}

static void request(struct keeper *k, struct connection *c, char *line)
{
	if (strncmp(line, "hold ", 5) == 0) {
		answer(c, hold(k, line + 5));
	} else if (strncmp(line, "drop ", 5) == 0) {
		drop(k, line + 5);
		answer(c, 0);
	} else {
		answer(c, -EBADMSG);
	}
}

static void connection_read(struct keeper *k, struct connection *c)
{
	ssize_t got;
	char *start, *nl;

	got = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
	if (got < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (got <= 0) {
		connection_close(c); /* its agent has gone; what is held stays */
		return;
	}
	c->len += (size_t)got;
	start = c->buf;
	while (c->fd >= 0 && (nl = memchr(start, '\n', c->len - (size_t)(start - c->buf)))) {
		*nl = '\0';
		request(k, c, start);
		start = nl + 1;
	}
	if (c->fd < 0)
		return;
	c->len -= (size_t)(start - c->buf);
	memmove(c->buf, start, c->len);
	if (c->len == sizeof(c->buf)) {
		answer(c, -ENAMETOOLONG); /* a line longer than any request */
		if (c->fd >= 0)
			connection_close(c);
	}
}

static void accept_connection(struct keeper *k)
{
	int fd = accept4(k->listener, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		return;
	for (int i = 0; i < MAX_CONNECTIONS; i++) {
		if (k->conns[i].fd < 0) {
			k->conns[i].fd = fd;
			k->conns[i].len = 0;
			return;
		}
	}
	close(fd); /* more than any agent makes */
}

static int listen_on(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, err;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	memcpy(addr.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (unlink(path) < 0 && errno != ENOENT)
		goto fail;
	umask(077); /* the socket file: 0600, for the agent alone */
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, MAX_CONNECTIONS) < 0)
		goto fail;
	return fd;
fail:
	err = -errno;
	close(fd);
	return err;
}

/* Says "ready" to the agent, then lets go of stdio: nothing is printed after it. */
/* The keeper goes on in a child; the process started says "ready PID" and exits. */
static int ready(void)
{
	char line[32];
	int null = open("/dev/null", O_RDWR | O_CLOEXEC), len;
	pid_t pid;

	if (null < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(null);
		return -errno;
	}
	if (pid > 0) {
		len = snprintf(line, sizeof(line), "ready %d\n", (int)pid);
		_exit(write(STDOUT_FILENO, line, (size_t)len) == len ? 0 : 1);
	}
	/* Stdio let go first: whoever reads the started process's output sees its end. */
	if (dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0 || dup2(null, STDERR_FILENO) < 0 || setsid() < 0) {
		int err = -errno;

		close(null);
		return err ? err : -EIO;
	}
	close(null);
	return 0;
}

int main(int argc, char **argv)
{
	struct keeper k = { .listener = -1 };
	struct pollfd fds[1 + MAX_CONNECTIONS];
	int rc;

	if (argc != 3 || argv[1][0] != '/') {
		fprintf(stderr, "usage: heteropod-fifo-keeper SOCKET POD (SOCKET an absolute path)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	for (int i = 0; i < MAX_CONNECTIONS; i++)
		k.conns[i].fd = -1;
	k.listener = listen_on(argv[1]);
	if (k.listener < 0) {
		fprintf(stderr, "heteropod-fifo-keeper: listen on %s: %s\n", argv[1], strerror(-k.listener));
		return 1;
	}
	rc = ready();
	if (rc < 0) {
		fprintf(stderr, "heteropod-fifo-keeper: say ready: %s\n", strerror(-rc));
		return 1;
	}
	for (;;) {
		nfds_t n = 0;

		fds[n++] = (struct pollfd){ .fd = k.listener, .events = POLLIN };
		for (int i = 0; i < MAX_CONNECTIONS; i++)
			fds[n++] = (struct pollfd){ .fd = k.conns[i].fd, .events = POLLIN }; /* -1: ignored by poll */
		if (poll(fds, n, -1) < 0)
			continue; /* EINTR */
		for (int i = 0; i < MAX_CONNECTIONS; i++)
			if (fds[1 + i].revents && k.conns[i].fd >= 0)
				connection_read(&k, &k.conns[i]);
		if (fds[0].revents & POLLIN)
			accept_connection(&k);
	}
}
