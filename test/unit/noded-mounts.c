/*
 * The node daemon's shipped mounts in C (src/noded/mounts.h) against the TS they
 * port: every case of test/unit/mount-watch.test.ts and the mounted-files cases
 * of dpu-runtime.test.ts, on kubelet-style volumes (test/lib/volumes.ts's
 * kubeletWrite: the data in `..<stamp>`, `..data` swapped by a rename), with a
 * stand-in daemon driving the watch as src/noded would (its inotify fd polled,
 * its timers, each look's check on a thread of its own while the loop goes on)
 * and a stand-in agent answering UpdateFiles; then what only C can get wrong
 * (the encoding, tar's limit and failures, signals in tar, malformed specs,
 * the error texts).
 *
 * Modes for test/unit/noded-mounts.test.ts, which compares them with the TS:
 *   noded-test-mounts fingerprint PATH   the fingerprint, "gone", or "error: ..."
 *   noded-test-mounts files SPEC FIELD   the spec's copies encoded, hex, or "error: ..."
 * Without arguments it runs the tests: a failure prints a line naming its case,
 * and the exit status is the count of failures.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../src/oci/mounts.h"
#include "../../src/proto/pb.h"
#include "mounts.h"
#include "check.h"

static char root[256];

static void die(const char *what)
{
	printf("FAIL %s: %s\n", what, strerror(errno));
	exit(100);
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* ---- files --------------------------------------------------------------------------- */

/* A new directory under the test's root: <root>/<name>-<serial>. */
static char *scratch(const char *name)
{
	static int serial;
	char *dir;

	if (asprintf(&dir, "%s/%s-%d", root, name, ++serial) < 0 || mkdir(dir, 0755) < 0)
		die("scratch");
	return dir;
}

static char *join(const char *a, const char *b)
{
	char *p;

	if (asprintf(&p, "%s/%s", a, b) < 0)
		die("join");
	return p;
}

/* A path `file` in a new scratch directory. */
static char *scratch_file(const char *name, const char *file)
{
	char *dir = scratch(name), *path = join(dir, file);

	free(dir);
	return path;
}

static void write_file(const char *path, const char *content, const char *mode_flags)
{
	FILE *f = fopen(path, mode_flags);

	if (!f || fputs(content, f) < 0 || fclose(f) != 0)
		die(path);
}

static char *read_text(const char *path)
{
	char *s = NULL;
	size_t cap = 0;
	FILE *f = fopen(path, "r");

	if (!f)
		return strdup("(missing)");
	if (getdelim(&s, &cap, '\0', f) < 0) {
		free(s);
		s = strdup("");
	}
	fclose(f);
	return s;
}

static void sh(const char *fmt, ...)
{
	char *cmd;
	va_list ap;
	int rc;

	va_start(ap, fmt);
	if (vasprintf(&cmd, fmt, ap) < 0)
		die("sh");
	va_end(ap);
	rc = system(cmd);
	if (rc != 0)
		printf("FAIL sh: %s: status %d\n", cmd, rc), failures++;
	free(cmd);
}

/* kubeletWrite: the data in `..<stamp>`, `..data` pointing at it (swapped by a
 * rename), each key a symlink through `..data`, the old data removed last.
 * keys[i] = values[i]; every call here keeps the same keys. */
static void kubelet_write(const char *dir, const char *stamp, const char *const *keys, const char *const *values, size_t n)
{
	char *data = join(dir, "..data"), *tmp = join(dir, "..data_tmp"), *stamped = join(dir, stamp), old[512] = "";
	ssize_t r;

	mkdir(dir, 0755);
	if ((r = readlink(data, old, sizeof(old) - 1)) > 0)
		old[r] = '\0';
	if (mkdir(stamped, 0755) < 0)
		die(stamped);
	for (size_t i = 0; i < n; i++) {
		char *f = join(stamped, keys[i]), *key = join(dir, keys[i]), *target = join("..data", keys[i]);
		struct stat st;

		write_file(f, values[i], "w");
		chmod(f, 0644);
		if (lstat(key, &st) < 0 && symlink(target, key) < 0)
			die(key);
		free(f);
		free(key);
		free(target);
	}
	if (symlink(stamp, tmp) < 0 || rename(tmp, data) < 0)
		die("..data swap");
	if (old[0])
		sh("rm -rf '%s/%s'", dir, old);
	free(data);
	free(tmp);
	free(stamped);
}

/* A file of a tar stream, unpacked into a scratch directory and read as a reader in the container would. */
static char *file_in_tar(const unsigned char *tar, size_t len, const char *name)
{
	char *dir = scratch("untar"), *file = join(dir, "..tar"), *path = join(dir, name), *s;
	FILE *f = fopen(file, "w");

	if (!f || fwrite(tar, 1, len, f) != len || fclose(f) != 0)
		die(file);
	sh("tar -x -C '%s' -f '%s'", dir, file);
	s = read_text(path);
	free(dir);
	free(file);
	free(path);
	return s;
}

static json_t *parse(const char *text)
{
	json_error_t e;
	json_t *v = json_loads(text, 0, &e);

	if (!v) {
		printf("FAIL the test's JSON does not parse: %s\n%s\n", e.text, text);
		exit(100);
	}
	return v;
}

/* A spec of mounts: each {destination, type, source, options} given as JSON text. */
__attribute__((format(printf, 1, 2))) static json_t *spec_of(const char *fmt, ...)
{
	char *mounts, *text;
	json_t *spec;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&mounts, fmt, ap) < 0)
		die("spec");
	va_end(ap);
	if (asprintf(&text, "{\"ociVersion\":\"1.0.2\",\"mounts\":[%s]}", mounts) < 0)
		die("spec");
	spec = parse(text);
	free(mounts);
	free(text);
	return spec;
}

/* ---- the log ------------------------------------------------------------------------- */

static struct nd_fifo log_fifo;
static int log_read_fd = -1;
static char log_lines[1 << 16];
static size_t log_len;
static const char *const LOG_CTX[] = { "test", "noded-mounts", NULL };

static void log_pump(void)
{
	ssize_t r;

	while (log_len < sizeof(log_lines) - 1 && (r = read(log_read_fd, log_lines + log_len, sizeof(log_lines) - 1 - log_len)) > 0)
		log_len += (size_t)r;
	log_lines[log_len] = '\0';
}

static void log_clear(void)
{
	log_pump();
	log_len = 0;
	log_lines[0] = '\0';
}

static int log_count(const char *needle)
{
	int n = 0;

	log_pump();
	for (const char *p = log_lines; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

/* ---- the daemon and the agent, stand-ins ------------------------------------------------- */

#define MAX_CALLS 32

struct agent {
	struct nd_mounted_file *sent[MAX_CALLS];
	size_t n_files[MAX_CALLS];
	int calls;
	int codes[MAX_CALLS]; /* the answer to each call (0 after those set) */
	const char *messages[MAX_CALLS];
	int code_from; /* codes[i] answers call code_from + i */
};

static int agent_update_files(struct agent *a, struct nd_mounted_file *files, size_t n, const char **message)
{
	int i = a->calls - a->code_from, code;

	if (a->calls >= MAX_CALLS) {
		printf("FAIL more than %d UpdateFiles\n", MAX_CALLS);
		exit(100);
	}
	a->sent[a->calls] = files;
	a->n_files[a->calls] = n;
	a->calls++;
	code = i >= 0 && i < MAX_CALLS ? a->codes[i] : 0;
	*message = i >= 0 && i < MAX_CALLS ? a->messages[i] : NULL;
	return code;
}

/* From now on the agent answers `code` `times` times, then OK. */
static void agent_answer(struct agent *a, int code, const char *message, int times)
{
	memset(a->codes, 0, sizeof(a->codes));
	a->code_from = a->calls;
	for (int i = 0; i < times && i < MAX_CALLS; i++) {
		a->codes[i] = code;
		a->messages[i] = message;
	}
}

static void agent_free(struct agent *a)
{
	for (int i = 0; i < a->calls; i++)
		nd_mounted_files_free(a->sent[i], a->n_files[i]);
	memset(a, 0, sizeof(*a));
}

/* The daemon: one watch, its re-check and soon timers, its looks' check on a thread. */
struct daemon {
	struct nd_mount_watch *w;
	struct agent *agent;
	long long recheck_ms, settle_ms, retry_ms;
	long long next_recheck, soon_at; /* -1: not armed */
	int ended;
	/* the look on a thread */
	pthread_t thread;
	int running;
	struct nd_mounted_file *files;
	size_t n;
};

static void *check_thread(void *arg)
{
	struct daemon *d = arg;

	d->n = nd_mount_watch_check(d->w, &d->files);
	return NULL;
}

static void next(struct daemon *d, enum nd_mount_next what);

static void begin(struct daemon *d)
{
	if (!d->w || d->running || !nd_mount_watch_begin(d->w))
		return;
	d->running = 1;
	if (pthread_create(&d->thread, NULL, check_thread, d) != 0)
		die("pthread_create");
}

/* The look's end, its thread joined: the agent asked (when there are files), then sent. */
static void look_finish(struct daemon *d)
{
	const char *message = NULL;
	int code = 0;

	d->running = 0;
	if (d->n)
		code = agent_update_files(d->agent, d->files, d->n, &message); /* the agent keeps them */
	d->files = NULL;
	next(d, nd_mount_watch_sent(d->w, code, message));
}

static void look_done(struct daemon *d)
{
	pthread_join(d->thread, NULL);
	look_finish(d);
}

static void next(struct daemon *d, enum nd_mount_next what)
{
	switch (what) {
	case ND_MOUNT_IDLE:
		break;
	case ND_MOUNT_NOW:
		begin(d);
		break;
	case ND_MOUNT_SETTLE:
		if (d->soon_at < 0)
			d->soon_at = now_ms() + d->settle_ms;
		break;
	case ND_MOUNT_RETRY:
		if (d->soon_at < 0)
			d->soon_at = now_ms() + d->retry_ms;
		break;
	case ND_MOUNT_ENDED:
		d->ended = 1;
		d->soon_at = -1;
		break;
	}
}

static void daemon_start(struct daemon *d, struct nd_mount_watch *w, struct agent *a, long long recheck_ms, long long retry_ms,
			 int resend)
{
	memset(d, 0, sizeof(*d));
	d->w = w;
	d->agent = a;
	d->recheck_ms = recheck_ms ? recheck_ms : ND_MOUNT_RECHECK_MS;
	d->settle_ms = ND_MOUNT_SETTLE_MS;
	d->retry_ms = retry_ms ? retry_ms : ND_MOUNT_RETRY_MS;
	d->soon_at = -1;
	d->next_recheck = now_ms() + d->recheck_ms;
	next(d, nd_mount_watch_start(w, resend));
}

/* One turn of the loop: the fd, the timers, a look that finished. */
static void turn(struct daemon *d, long long deadline)
{
	long long t = now_ms(), due = deadline;
	struct pollfd p = { nd_mount_watch_fd(d->w), POLLIN, 0 };

	if (!d->ended) {
		if (d->next_recheck < due)
			due = d->next_recheck;
		if (d->soon_at >= 0 && d->soon_at < due)
			due = d->soon_at;
	}
	if (d->running && due > t + 5)
		due = t + 5; /* a look's end is seen by polling for it */
	if (poll(&p, p.fd >= 0 && !d->ended ? 1 : 0, due > t ? (int)(due - t) : 0) > 0 && (p.revents & POLLIN))
		next(d, nd_mount_watch_drain(d->w));
	if (d->running && pthread_tryjoin_np(d->thread, NULL) == 0)
		look_finish(d);
	if (d->ended)
		return;
	t = now_ms();
	if (d->soon_at >= 0 && t >= d->soon_at) {
		d->soon_at = -1;
		begin(d);
	}
	if (t >= d->next_recheck) {
		d->next_recheck = t + d->recheck_ms;
		begin(d);
	}
}

static void run_for(struct daemon *d, long long ms)
{
	long long deadline = now_ms() + ms;

	while (now_ms() < deadline)
		turn(d, deadline);
}

/* Runs until cond; how long it took, or -1 after timeout_ms. */
static long long until(struct daemon *d, int (*cond)(struct daemon *d, long long arg), long long arg, long long timeout_ms)
{
	long long started = now_ms();

	while (!cond(d, arg)) {
		if (now_ms() - started > timeout_ms)
			return -1;
		turn(d, now_ms() + 10);
	}
	return now_ms() - started;
}

static int calls_are(struct daemon *d, long long n)
{
	return d->agent->calls == n;
}

static int has_ended(struct daemon *d, long long arg)
{
	(void)arg;
	return d->ended;
}

/* A look now, run to its end (as `await w.check()`). */
static void look_now(struct daemon *d)
{
	begin(d);
	if (d->running)
		look_done(d);
}

static void daemon_stop(struct daemon *d)
{
	if (d->running)
		look_done(d);
	if (d->w && nd_mount_watch_close(d->w))
		nd_mount_watch_free(d->w);
	d->w = NULL;
}

static struct nd_mount_watch *watch(json_t *spec)
{
	struct nd_mount_watch *w;
	char err[ND_MOUNTS_ERR_MAX];
	int rc = nd_mount_watch_new("c1", spec, &log_fifo, LOG_CTX, &w, err, sizeof(err));

	if (rc < 0) {
		printf("FAIL nd_mount_watch_new: %s\n", err);
		exit(100);
	}
	return w;
}

/* The files of call i, their destinations joined by ','. */
static const char *destinations(struct agent *a, int call)
{
	static char out[1024];

	out[0] = '\0';
	for (size_t i = 0; call < a->calls && i < a->n_files[call]; i++)
		snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s%s", i ? "," : "", a->sent[call][i].destination);
	return out;
}

static int content_is(const struct nd_mounted_file *f, const char *text)
{
	return f->len == strlen(text) && memcmp(f->content, text, f->len) == 0;
}

/* ---- mount-watch.test.ts ----------------------------------------------------------------- */

static void test_data_swap(void)
{
	static const char *const keys[] = { "app.conf" }, *const v1[] = { "v1" }, *const v2[] = { "v2" };
	char *volume = scratch_file("volume", "config");
	struct agent a = { 0 };
	struct daemon d;
	json_t *spec;
	long long took;
	struct stat st;

	kubelet_write(volume, "..2024_01_01_00_00_00.1", keys, v1, 1);
	spec = spec_of("{\"destination\":\"/etc/config\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"ro\"]}", volume);
	daemon_start(&d, watch(spec), &a, 0, 0, 0);
	run_for(&d, 200);
	check(a.calls == 0, "swap: nothing changed, nothing sent (%d calls)", a.calls);

	kubelet_write(volume, "..2024_01_01_00_01_00.2", keys, v2, 1);
	took = until(&d, calls_are, 1, 3000);
	check(took >= 0 && took < 1000, "swap: sent after %lld ms, want within 1000 (the watch, not the 10 s re-check)", took);
	if (a.calls >= 1) {
		struct nd_mounted_file *f = &a.sent[0][0];
		char *key = file_in_tar(f->content, f->len, "app.conf");

		stat(volume, &st);
		check(a.n_files[0] == 1 && strcmp(f->destination, "/etc/config") == 0 && f->directory && !f->termination_log &&
			      f->mode == (st.st_mode & 07777),
		      "swap: the file sent: %zu files, %s, directory %d, mode %o (want %o), termination_log %d", a.n_files[0],
		      f->destination, f->directory, f->mode, st.st_mode & 07777, f->termination_log);
		check(strcmp(key, "v2") == 0, "swap: the key through the new ..data reads %s, want v2", key);
		free(key);
	}
	run_for(&d, 300);
	check(a.calls == 1, "swap: the writer's several steps make one update (%d calls)", a.calls);
	look_now(&d);
	check(a.calls == 1, "swap: a look with nothing new sends nothing (%d calls)", a.calls);
	daemon_stop(&d);
	agent_free(&a);
	json_decref(spec);
	free(volume);
}

static void test_recheck_and_files(void)
{
	char *dir = scratch("plain"), *sub = join(dir, "sub"), *deep = join(sub, "deep"), *hosts = scratch_file("files", "hosts"),
	     *hosts_new;
	struct agent a = { 0 }, fa = { 0 };
	struct daemon d, fd;
	json_t *spec, *file_spec;
	long long took;

	mkdir(sub, 0755);
	write_file(deep, "one", "w");
	spec = spec_of("{\"destination\":\"/data\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"ro\"]}", dir);
	daemon_start(&d, watch(spec), &a, 400, 0, 0);
	sleep_ms(20); /* a clock tick: the rewrite's mtime is another than the fingerprint's */
	write_file(deep, "two", "w");
	took = until(&d, calls_are, 1, 5000);
	check(took >= 0, "re-check: the change deep in a plain directory is sent (%d calls)", a.calls);
	if (a.calls >= 1) {
		char *got = file_in_tar(a.sent[0][0].content, a.sent[0][0].len, "sub/deep");

		check(strcmp(destinations(&a, 0), "/data") == 0, "re-check: sent %s, want /data", destinations(&a, 0));
		check(strcmp(got, "two") == 0, "re-check: sub/deep reads %s, want two", got);
		free(got);
	}
	daemon_stop(&d);

	write_file(hosts, "127.0.0.1 localhost\n", "w");
	file_spec = spec_of("{\"destination\":\"/etc/hosts\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"rw\"]}", hosts);
	daemon_start(&fd, watch(file_spec), &fa, 3000, 0, 0);
	check(nd_mount_watch_count(fd.w) == 1 && strcmp(nd_mount_watch_destination(fd.w, 0), "/etc/hosts") == 0,
	      "file: the destinations watched");
	write_file(hosts, "10.0.0.5 peer\n", "a");
	took = until(&fd, calls_are, 1, 3000);
	check(took >= 0 && took < 2000, "file: a write is sent by the watch, after %lld ms", took);
	check(fa.calls >= 1 && content_is(&fa.sent[0][0], "127.0.0.1 localhost\n10.0.0.5 peer\n"), "file: the content sent");

	/* Replaced by another file: the old watch sees its file go (or the re-check
	 * sees the new one); the new one is watched from then on. */
	if (asprintf(&hosts_new, "%s.new", hosts) < 0)
		die("asprintf");
	write_file(hosts_new, "replaced\n", "w");
	rename(hosts_new, hosts);
	took = until(&fd, calls_are, 2, 8000);
	check(took >= 0 && fa.calls == 2 && content_is(&fa.sent[1][0], "replaced\n"), "file: the replaced file is sent");
	write_file(hosts, "more\n", "a");
	took = until(&fd, calls_are, 3, 3000);
	check(took >= 0 && took < 2000, "file: the new file is watched (%lld ms)", took);
	daemon_stop(&fd);
	agent_free(&a);
	agent_free(&fa);
	json_decref(spec);
	json_decref(file_spec);
	free(dir);
	free(sub);
	free(deep);
	free(hosts);
	free(hosts_new);
}

static void test_termination_log_and_shm(void)
{
	char *hosts = scratch_file("files", "hosts"), *kubelet = scratch("kubelet"), *termination, *custom, *dirs;
	struct nd_mounted_file *files;
	struct agent a = { 0 };
	struct daemon d;
	json_t *spec, *first3, *first2;
	char err[ND_MOUNTS_ERR_MAX], *source;
	size_t n;
	int rc;

	write_file(hosts, "h", "w");
	if (asprintf(&dirs, "%s/pods/uid-1/containers/proxy", kubelet) < 0 || asprintf(&termination, "%s/0badcafe", dirs) < 0 ||
	    asprintf(&custom, "%s/12345678", dirs) < 0)
		die("asprintf");
	sh("mkdir -p '%s'", dirs);
	write_file(termination, "", "w");
	write_file(custom, "", "w");
#define PROC "{\"destination\":\"/proc\",\"type\":\"proc\",\"source\":\"proc\"}"
#define HOSTS "{\"destination\":\"/etc/hosts\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"rw\"]}"
#define TERMINATION "{\"destination\":\"/dev/termination-log\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"rw\"]}"
#define CUSTOM "{\"destination\":\"/custom/message\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"rw\"]}"
#define SHM                                                                                                                           \
	"{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s1/shm\","  \
	"\"options\":[\"rbind\",\"rw\"]}"
	spec = spec_of(PROC "," HOSTS "," TERMINATION "," CUSTOM "," SHM, hosts, termination, custom);
	first3 = spec_of(PROC "," HOSTS "," TERMINATION, hosts, termination);
	first2 = spec_of(PROC "," HOSTS, hosts);
	daemon_start(&d, watch(spec), &a, 0, 0, 1);
	check(nd_mount_watch_count(d.w) == 1 && strcmp(nd_mount_watch_destination(d.w, 0), "/etc/hosts") == 0,
	      "termination: a kubelet termination-message file is known by its path too (%zu watched)", nd_mount_watch_count(d.w));
	check(until(&d, calls_are, 1, 3000) >= 0, "termination: start(resend) sends at once");
	check(strcmp(destinations(&a, 0), "/etc/hosts") == 0, "termination: resent %s, want /etc/hosts", destinations(&a, 0));
	write_file(termination, "written by someone", "w");
	run_for(&d, 300);
	check(a.calls == 1, "termination: the termination log is not watched (%d calls)", a.calls);
	daemon_stop(&d);

	/* What Create ships: every bind mount but /dev/shm, the termination log marked. */
	rc = nd_mounted_files_read(first3, &files, &n, err, sizeof(err));
	check(rc == 0 && n == 2 && strcmp(files[0].destination, "/etc/hosts") == 0 && !files[0].termination_log &&
		      strcmp(files[1].destination, "/dev/termination-log") == 0 && files[1].termination_log,
	      "termination: mountedFiles gives /etc/hosts and the termination log, marked (rc %d, %zu files)", rc, n);
	nd_mounted_files_free(files, n);
	source = nd_termination_log_source(spec);
	check(source && strcmp(source, termination) == 0, "termination: terminationLogSource is %s", source ? source : "(none)");
	free(source);
	source = nd_termination_log_source(first2);
	check(source == NULL, "termination: none without one");
	free(source);
	agent_free(&a);
	json_decref(spec);
	json_decref(first3);
	json_decref(first2);
	free(hosts);
	free(kubelet);
	free(termination);
	free(custom);
	free(dirs);
}

static void test_failures(void)
{
	char *hosts = scratch_file("files", "hosts");
	struct agent a = { 0 };
	struct daemon d;
	json_t *spec = spec_of("{\"destination\":\"/etc/hosts\",\"type\":\"bind\",\"source\":\"%s\"}", hosts);
	int all_v2 = 1;

	write_file(hosts, "v1", "w");
	agent_answer(&a, 14, "DPU agent unreachable: connect ECONNREFUSED", 2);
	daemon_start(&d, watch(spec), &a, 60000, 100, 0);
	log_clear();
	sleep_ms(20);
	write_file(hosts, "v2", "w");
	check(until(&d, calls_are, 3, 3000) >= 0, "away: sent after two failures (%d calls)", a.calls);
	for (int i = 0; i < a.calls; i++)
		all_v2 &= content_is(&a.sent[i][0], "v2");
	check(all_v2, "away: each time v2");
	check(log_count("trying again") == 1, "away: the outage said once (%d times)\n%s", log_count("trying again"), log_lines);

	agent_answer(&a, 3, "DPU agent: INVALID_ARGUMENT: a directory for a file", MAX_CALLS);
	write_file(hosts, "v3", "w");
	check(until(&d, calls_are, 4, 3000) >= 0, "refused: the send (%d calls)", a.calls);
	look_now(&d);
	check(a.calls == 4, "refused: the same content is not sent again (%d calls)", a.calls);
	check(log_count("the DPU refused new content of a container's mounts; it keeps its copy") == 1, "refused: said\n%s", log_lines);

	agent_answer(&a, 5, "DPU agent: NOT_FOUND: container c1: not found", MAX_CALLS);
	write_file(hosts, "v4 longer", "w");
	check(until(&d, calls_are, 5, 3000) >= 0, "gone: the send to a gone container (%d calls)", a.calls);
	check(until(&d, has_ended, 0, 3000) >= 0 && nd_mount_watch_closed(d.w), "gone: the watch closed");
	check(log_count("the DPU no longer has the container: its mounts are not watched any more") == 1, "gone: said\n%s", log_lines);
	write_file(hosts, "v5", "w");
	check(!nd_mount_watch_begin(d.w), "gone: no look begins");
	sleep_ms(300);
	check(a.calls == 5, "gone: nothing more (%d calls)", a.calls);
	nd_mount_watch_free(d.w);
	agent_free(&a);
	json_decref(spec);
	free(hosts);
}

static void test_change_before_read_and_close(void)
{
	char *hosts = scratch_file("files", "hosts");
	struct agent a = { 0 };
	struct daemon d;
	json_t *spec = spec_of("{\"destination\":\"/etc/hosts\",\"type\":\"bind\",\"source\":\"%s\"}", hosts);
	struct nd_mount_watch *w;

	write_file(hosts, "v1", "w");
	w = watch(spec); /* taken now, as before Create reads the content */
	sleep_ms(20);
	write_file(hosts, "v2 (written before the Create read it)", "w");
	daemon_start(&d, w, &a, 60000, 0, 0);
	look_now(&d);
	check(a.calls == 1 && content_is(&a.sent[0][0], "v2 (written before the Create read it)"),
	      "between: sent, harmless when the DPU already had it (%d calls)", a.calls);
	check(nd_mount_watch_close(w) == 1, "close: no look on, free it now");
	write_file(hosts, "v3", "w");
	run_for(&d, 300);
	look_now(&d);
	check(a.calls == 1, "close: nothing after (%d calls)", a.calls);
	nd_mount_watch_free(w);
	agent_free(&a);
	json_decref(spec);
	free(hosts);
}

static void test_fingerprint(void)
{
	char *dir = scratch("fp"), *fa = join(dir, "a"), *fb = join(dir, "b"), *link = join(dir, "link"), *gone = join(dir, "gone");
	char one[ND_FINGERPRINT_SIZE], again[ND_FINGERPRINT_SIZE], two[ND_FINGERPRINT_SIZE], three[ND_FINGERPRINT_SIZE];
	char before[ND_FINGERPRINT_SIZE], after[ND_FINGERPRINT_SIZE], err[ND_MOUNTS_ERR_MAX];
	int rc;

	write_file(fa, "same", "w");
	symlink("a", link);
	nd_source_fingerprint(dir, one, err, sizeof(err));
	nd_source_fingerprint(dir, again, err, sizeof(err));
	check(strlen(one) == 64 && strcmp(one, again) == 0, "fingerprint: stable");
	write_file(fb, "same", "w");
	nd_source_fingerprint(dir, two, err, sizeof(err));
	check(strcmp(two, one) != 0, "fingerprint: a new file");
	unlink(link);
	symlink("b", link);
	nd_source_fingerprint(dir, three, err, sizeof(err));
	check(strcmp(three, two) != 0, "fingerprint: a retargeted symlink");
	nd_source_fingerprint(fa, before, err, sizeof(err));
	sleep_ms(20); /* a clock tick: the TS's test has its own milliseconds between */
	write_file(fa, "SAME", "w");
	nd_source_fingerprint(fa, after, err, sizeof(err));
	check(strcmp(before, after) != 0, "fingerprint: same size, new content (mtime and ctime)");
	rc = nd_source_fingerprint(gone, after, err, sizeof(err));
	check(rc == -ENOENT && after[0] == '\0', "fingerprint: a gone source: rc %d", rc);
	free(dir);
	free(fa);
	free(fb);
	free(link);
	free(gone);
}

static void test_termination_message(void)
{
	char *dir = scratch("kubelet"), *file = join(dir, "abcdef01"), *gone, *text, *link = join(dir, "link"), err[ND_MOUNTS_ERR_MAX],
	     want[512];
	unsigned char long_message[5007];
	struct stat st, st2;
	int rc, fd;

	write_file(file, "an older, longer message", "w");
	chmod(file, 0666);
	stat(file, &st);
	rc = nd_write_termination_message(file, "crashed: config invalid", 23, err, sizeof(err));
	text = read_text(file);
	stat(file, &st2);
	check(rc == 1 && strcmp(text, "crashed: config invalid") == 0, "termination message: written in place (rc %d): %s", rc, text);
	check(st.st_ino == st2.st_ino && (st2.st_mode & 0777) == 0666, "termination message: the same file, the kubelet's mode kept");
	free(text);
	memset(long_message, 'x', 5000);
	memcpy(long_message + 5000, "the end", 7);
	nd_write_termination_message(file, long_message, sizeof(long_message), err, sizeof(err));
	{
		unsigned char got[8192];
		ssize_t n;

		fd = open(file, O_RDONLY);
		n = read(fd, got, sizeof(got));
		close(fd);
		check(n == HP_OCI_MAX_TERMINATION_MESSAGE_BYTES &&
			      memcmp(got, long_message + sizeof(long_message) - HP_OCI_MAX_TERMINATION_MESSAGE_BYTES, (size_t)n) == 0,
		      "termination message: its last 4096 bytes (%zd)", n);
	}
	gone = join(root, "gone/abcdef02");
	rc = nd_write_termination_message(gone, "x", 1, err, sizeof(err));
	check(rc == 0 && access(gone, F_OK) < 0, "termination message: a file gone is not made again (rc %d)", rc);
	/* O_NOFOLLOW: a symlink in its place is not written through */
	symlink(file, link);
	rc = nd_write_termination_message(link, "x", 1, err, sizeof(err));
	snprintf(want, sizeof(want), "ELOOP: too many symbolic links encountered, open '%s'", link);
	check(rc == -ELOOP && strcmp(err, want) == 0, "termination message: a symlink: rc %d, %s", rc, err);
	free(dir);
	free(file);
	free(gone);
	free(link);
}

/* ---- dpu-runtime.test.ts: a container as the kubelet makes one ----------------------------- */

static void test_kubelet_container(void)
{
	static const char *const keys[] = { "app.conf" }, *const v1[] = { "v1" };
	char *files_dir = scratch("kubelet-proxy"), *volume, *hosts = join(files_dir, "hosts"), *termination, *cdir;
	struct nd_mounted_file *files;
	struct agent a = { 0 };
	struct daemon d;
	char err[ND_MOUNTS_ERR_MAX];
	json_t *spec;
	size_t n;
	int rc;

	if (asprintf(&volume, "%s/pods/uid-1/volumes/kubernetes.io~configmap/config", files_dir) < 0 ||
	    asprintf(&cdir, "%s/pods/uid-1/containers/proxy", files_dir) < 0 || asprintf(&termination, "%s/8badf00d", cdir) < 0)
		die("asprintf");
	sh("mkdir -p '%s' '%s'", volume, cdir);
	kubelet_write(volume, "..2024_01_01_00_00_00.1", keys, v1, 1);
	write_file(hosts, "127.0.0.1 localhost\n", "w");
	chmod(hosts, 0640);
	write_file(termination, "", "w");
	spec = spec_of("{\"destination\":\"/proc\",\"type\":\"proc\",\"source\":\"proc\"},"
		       "{\"destination\":\"/etc/hosts\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"rprivate\",\"rw\"]},"
		       "{\"destination\":\"/etc/config\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"rprivate\",\"ro\"]},"
		       "{\"destination\":\"/dev/termination-log\",\"type\":\"bind\",\"source\":\"%s\",\"options\":[\"rbind\",\"rprivate\",\"rw\"]}",
		       hosts, volume, termination);
	rc = nd_mounted_files_read(spec, &files, &n, err, sizeof(err));
	check(rc == 0 && n == 3, "kubelet container: three copies (rc %d: %s)", rc, rc ? err : "");
	if (rc == 0 && n == 3) {
		check(strcmp(files[0].destination, "/etc/hosts") == 0 && !files[0].directory && !files[0].termination_log &&
			      files[0].mode == 0640 && content_is(&files[0], "127.0.0.1 localhost\n"),
		      "kubelet container: /etc/hosts, a file of mode 0640 (%o)", files[0].mode);
		check(strcmp(files[1].destination, "/etc/config") == 0 && files[1].directory && !files[1].termination_log,
		      "kubelet container: /etc/config, a directory");
		check(strcmp(files[2].destination, "/dev/termination-log") == 0 && !files[2].directory && files[2].termination_log,
		      "kubelet container: the termination log, marked");
	}
	nd_mounted_files_free(files, n);
	daemon_start(&d, watch(spec), &a, 0, 0, 1);
	check(nd_mount_watch_count(d.w) == 2 && strcmp(nd_mount_watch_destination(d.w, 0), "/etc/hosts") == 0 &&
		      strcmp(nd_mount_watch_destination(d.w, 1), "/etc/config") == 0,
	      "kubelet container: its mounts watched but the termination log");
	check(until(&d, calls_are, 1, 3000) >= 0 && strcmp(destinations(&a, 0), "/etc/hosts,/etc/config") == 0,
	      "kubelet container: resend: everything but the termination log (%s)", destinations(&a, 0));
	daemon_stop(&d);
	agent_free(&a);
	json_decref(spec);
	free(files_dir);
	free(volume);
	free(hosts);
	free(termination);
	free(cdir);
}

/* ---- what only C can get wrong ----------------------------------------------------------- */

/* MountedFile as the agent reads it, from one field's bytes. */
struct decoded {
	char destination[256];
	size_t content_len;
	int directory, termination_log, fields;
	uint32_t mode;
};

static int decode_files(const unsigned char *p, size_t len, uint32_t field, struct decoded *out, size_t max)
{
	struct pb_field f, g;
	size_t i = 0, n = 0;

	while (pb_next(p, len, &i, &f) > 0) {
		size_t j = 0;

		if (f.num != field || f.wire != 2 || n == max)
			return -1;
		memset(&out[n], 0, sizeof(out[n]));
		while (pb_next(f.val, f.vlen, &j, &g) > 0) {
			out[n].fields++;
			if (g.num == 1)
				snprintf(out[n].destination, sizeof(out[n].destination), "%.*s", (int)g.vlen, g.val);
			else if (g.num == 2)
				out[n].content_len = g.vlen;
			else if (g.num == 3)
				out[n].directory = (int)g.u;
			else if (g.num == 4)
				out[n].mode = (uint32_t)g.u;
			else if (g.num == 5)
				out[n].termination_log = (int)g.u;
		}
		n++;
	}
	return (int)n;
}

static void test_encoding(void)
{
	struct nd_mounted_file files[3] = {
		{ "/etc/hosts", (unsigned char *)"127.0.0.1 localhost\n", 20, 0, 0644, 0 },
		{ "/dev/termination-log", (unsigned char *)"", 0, 0, 0, 1 },
		{ "/etc/config", (unsigned char *)"tar", 3, 1, 0755, 0 },
	};
	struct decoded got[4];
	struct pbuf b = { 0 };
	int n;

	pbuf_string(&b, 1, "pod-1");
	nd_mounted_files_encode(&b, ND_UPDATE_FILES_FIELD, files, 3);
	/* the pod's field, then the files */
	n = decode_files(b.p + 7, b.n - 7, ND_UPDATE_FILES_FIELD, got, 4);
	check(!b.oom && n == 3, "encode: three MountedFile fields (%d)", n);
	if (n == 3) {
		check(strcmp(got[0].destination, "/etc/hosts") == 0 && got[0].content_len == 20 && got[0].mode == 0644 && got[0].fields == 3,
		      "encode: a file: destination, content, mode; no false or empty field (%d fields)", got[0].fields);
		check(got[1].termination_log && got[1].content_len == 0 && got[1].fields == 2,
		      "encode: an empty termination log: destination and termination_log only (%d fields)", got[1].fields);
		check(got[2].directory && got[2].mode == 0755 && got[2].fields == 4, "encode: a directory (%d fields)", got[2].fields);
	}
	pbuf_free(&b);
	nd_mounted_files_encode(&b, ND_CREATE_FILES_FIELD, files, 0);
	check(b.n == 0, "encode: none is nothing");
	pbuf_free(&b);
}

/* A fake tar first in PATH: `script` is its body (sh). */
static char *fake_tar(const char *script)
{
	char *dir = scratch("fake-tar"), *tar = join(dir, "tar");
	FILE *f = fopen(tar, "w");

	if (!f || fprintf(f, "#!/bin/sh\n%s\n", script) < 0 || fclose(f) != 0)
		die(tar);
	chmod(tar, 0755);
	free(tar);
	return dir;
}

static int read_dir(const char *dir, struct nd_mounted_file *f, char *err, size_t err_len)
{
	struct nd_shipped_mount m = { dir, "/d", 0 };

	return nd_read_mounted_file(&m, f, err, err_len);
}

static void test_tar(void)
{
	char *dir = scratch("tar-dir"), *path = getenv("PATH") ? strdup(getenv("PATH")) : strdup("/usr/bin:/bin"), *fake, *env,
	     err[ND_MOUNTS_ERR_MAX], want[ND_MOUNTS_ERR_MAX], *missing = join(dir, "missing");
	struct nd_mounted_file f;
	sigset_t term, old;
	int rc;

	/* a missing source: statSync's message */
	{
		struct nd_shipped_mount m = { missing, "/x", 0 };

		rc = nd_read_mounted_file(&m, &f, err, sizeof(err));
		snprintf(want, sizeof(want), "ENOENT: no such file or directory, stat '%s'", missing);
		check(rc == -ENOENT && strcmp(err, want) == 0, "read: a missing source: %d %s", rc, err);
	}
#define WITH_TAR(script)                                                                                                              \
	fake = fake_tar(script);                                                                                                      \
	if (asprintf(&env, "%s:%s", fake, path) < 0)                                                                                  \
		die("asprintf");                                                                                                      \
	setenv("PATH", env, 1)
#define WITHOUT_TAR()                                                                                                                 \
	setenv("PATH", path, 1);                                                                                                      \
	free(env);                                                                                                                    \
	free(fake)

	/* exactly the limit: taken; one byte more (stdout and stderr together): ENOBUFS */
	WITH_TAR("head -c 16777216 /dev/zero");
	rc = read_dir(dir, &f, err, sizeof(err));
	check(rc == 0 && f.len == ND_MAX_DIRECTORY_BYTES && f.directory, "tar: exactly MAX_DIRECTORY_BYTES is taken (rc %d, %zu)", rc,
	      f.len);
	free(f.content);
	free(f.destination);
	WITHOUT_TAR();
	WITH_TAR("head -c 16777206 /dev/zero; echo 0123456789 >&2");
	rc = read_dir(dir, &f, err, sizeof(err));
	check(rc == -ENOBUFS && strcmp(err, "spawnSync tar ENOBUFS") == 0 && f.content == NULL,
	      "tar: stdout and stderr together over the limit: %d %s", rc, err);
	WITHOUT_TAR();

	/* endless output, with SIGTERM blocked and SIGPIPE ignored as the daemon has them: tar is still ended */
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &old);
	signal(SIGPIPE, SIG_IGN);
	WITH_TAR("trap 'exit 7' PIPE; grep -E '^Sig(Blk|Ign)' /proc/self/status >&2; exec cat /dev/zero");
	rc = read_dir(dir, &f, err, sizeof(err));
	check(rc == -ENOBUFS, "tar: endless output ended (%d %s)", rc, err);
	WITHOUT_TAR();
	WITH_TAR("grep -E '^Sig(Blk|Ign)' /proc/self/status >&2; exit 3");
	rc = read_dir(dir, &f, err, sizeof(err));
	{
		/* glibc's posix_spawn leaves its own two (32, 33) ignored: no program sees them */
		unsigned long long blocked = 1, ignored = 1;
		const char *b = strstr(err, "SigBlk:\t"), *i = strstr(err, "SigIgn:\t");

		if (b && i) {
			blocked = strtoull(b + 8, NULL, 16);
			ignored = strtoull(i + 8, NULL, 16) & 0x7fffffffull;
		}
		check(rc < 0 && blocked == 0 && ignored == 0, "tar: started with no signal blocked or ignored: %s", err);
	}
	WITHOUT_TAR();
	sigprocmask(SIG_SETMASK, &old, NULL);
	signal(SIGPIPE, SIG_DFL);

	/* a failed tar: execFileSync's message, tar's stderr after it */
	WITH_TAR("echo 'tar: ./x: Cannot open: Permission denied' >&2; echo 'tar: Exiting with failure status due to previous errors' >&2; exit 2");
	rc = read_dir(dir, &f, err, sizeof(err));
	snprintf(want, sizeof(want),
		 "Command failed: tar -c -C %s .\ntar: ./x: Cannot open: Permission denied\ntar: Exiting with failure status due to "
		 "previous errors\n",
		 dir);
	check(rc < 0 && strcmp(err, want) == 0, "tar: failed:\n  got  %s\n  want %s", err, want);
	WITHOUT_TAR();
	WITH_TAR("kill -9 $$");
	rc = read_dir(dir, &f, err, sizeof(err));
	snprintf(want, sizeof(want), "Command failed: tar -c -C %s .", dir);
	check(rc < 0 && strcmp(err, want) == 0, "tar: killed: %s", err);
	WITHOUT_TAR();
	/* no tar at all */
	setenv("PATH", dir, 1);
	rc = read_dir(dir, &f, err, sizeof(err));
	check(rc == -ENOENT && strcmp(err, "spawnSync tar ENOENT") == 0, "tar: none in PATH: %d %s", rc, err);
	setenv("PATH", path, 1);

	/* the real one, with the daemon's mask: a symlink stays a symlink */
	write_file(missing, "data", "w");
	{
		char *link = join(dir, "link");

		symlink("missing", link);
		free(link);
	}
	rc = read_dir(dir, &f, err, sizeof(err));
	check(rc == 0 && f.len > 0 && f.directory, "tar: the real one (rc %d %s)", rc, rc ? err : "");
	if (rc == 0) {
		char *got = file_in_tar(f.content, f.len, "link");

		check(strcmp(got, "data") == 0, "tar: through the link: %s", got);
		free(got);
	}
	free(f.content);
	free(f.destination);
	free(path);
	free(dir);
	free(missing);
}

static void test_malformed(void)
{
	static const struct {
		const char *mounts, *err;
	} cases[] = {
		{ "{\"mounts\":{}}", "spec: mounts is not an array" },
		{ "{\"mounts\":\"x\"}", "spec: mounts is not an array" },
		{ "{\"mounts\":[null]}", "spec: mounts[0] is null" },
		{ "{\"mounts\":[{\"destination\":\"/a\",\"options\":\"rbind\"}]}", "spec: mounts[0].options is not an array" },
		{ "{\"mounts\":[{\"type\":\"tmpfs\"},{\"destination\":\"/a\",\"type\":\"bind\",\"source\":7}]}",
		  "spec: mounts[1].source is not a path" },
		{ "{\"mounts\":[{\"destination\":7,\"type\":\"bind\",\"source\":\"/etc/hostname\"}]}", "spec: mounts[0].destination is not a path" },
	};
	static const char *const none[] = {
		"{}",
		"{\"mounts\":null}",
		"{\"mounts\":[{\"destination\":\"/a\",\"type\":\"bind\",\"source\":\"\"}]}",
		"{\"mounts\":[{\"destination\":\"/a\",\"type\":\"bind\",\"source\":0}]}",
		"{\"mounts\":[{\"destination\":\"/a\",\"type\":\"tmpfs\",\"source\":\"/etc/hostname\",\"options\":[\"ro\"]}]}",
		"{\"mounts\":[{\"destination\":\"/dev/shm\",\"options\":[\"rbind\"],\"source\":\"/run/x/sandboxes/abc/shm\"}]}",
	};
	char err[ND_MOUNTS_ERR_MAX];
	struct nd_mounted_file *files;
	size_t n;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *spec = parse(cases[i].mounts);
		int rc = nd_mounted_files_read(spec, &files, &n, err, sizeof(err));

		check(rc == -EINVAL && strcmp(err, cases[i].err) == 0 && files == NULL && n == 0, "malformed %s: %d %s", cases[i].mounts, rc,
		      err);
		check(nd_termination_log_source(spec) == NULL, "malformed %s: no termination log", cases[i].mounts);
		json_decref(spec);
	}
	for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
		json_t *spec = parse(none[i]);
		int rc = nd_mounted_files_read(spec, &files, &n, err, sizeof(err));

		check(rc == 0 && n == 0, "none shipped %s: %d %s", none[i], rc, rc ? err : "");
		json_decref(spec);
	}
	/* an error cut short stays whole characters */
	{
		static const char whole[] = "ENOENT: no such file or directory, stat '/nonexistent/";
		char small[sizeof(whole) + 1]; /* room for the first byte of an é */
		json_t *spec = parse("{\"mounts\":[{\"destination\":\"/a\",\"type\":\"bind\",\"source\":\"/nonexistent/\u00e9\u00e9\u00e9\"}]}");
		unsigned char *bytes;
		size_t len;
		int rc = nd_mounted_files(spec, ND_CREATE_FILES_FIELD, &bytes, &len, small, sizeof(small));

		check(rc == -ENOENT && strcmp(small, whole) == 0, "cut: %d %s", rc, small);
		json_decref(spec);
	}
}

static void test_oci_patterns(void)
{
	static const struct {
		const char *s;
		int shm, termination;
	} cases[] = {
		{ "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s1/shm", 1, 0 },
		{ "/sandboxes/s1/shm", 1, 0 },
		{ "sandboxes/s1/shm", 0, 0 },
		{ "/sandboxes//shm", 0, 0 },
		{ "/sandboxes/a/b/shm", 0, 0 },
		{ "/xsandboxes/a/shm", 0, 0 },
		{ "/sandboxes/a/shm/", 0, 0 },
		{ "/var/lib/kubelet/pods/uid-1/containers/proxy/0badcafe", 0, 1 },
		{ "/pods/u/containers/c/12345678", 0, 1 },
		{ "/pods/u/containers/c/1234567", 0, 0 },
		{ "/pods/u/containers/c/123456789", 0, 0 },
		{ "/pods/u/containers/c/0BADCAFE", 0, 0 },
		{ "/pods//containers/c/12345678", 0, 0 },
		{ "/pods/u/containers//12345678", 0, 0 },
		{ "/pods/u/x/containers/c/12345678", 0, 0 },
		{ "pods/u/containers/c/12345678", 0, 0 },
		{ "/xpods/u/containers/c/12345678", 0, 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		check(hp_oci_sandbox_shm_source(cases[i].s, strlen(cases[i].s)) == cases[i].shm, "SANDBOX_SHM %s", cases[i].s);
		check(hp_oci_termination_log_source(cases[i].s, strlen(cases[i].s)) == cases[i].termination, "KUBELET_TERMINATION_LOG %s",
		      cases[i].s);
	}
}

/* Two mounts of one file share an inotify watch: a write reaches both; one replaced keeps the other's. */
static void test_shared_inode(void)
{
	char *hosts = scratch_file("files", "hosts");
	struct agent a = { 0 };
	struct daemon d;
	json_t *spec = spec_of("{\"destination\":\"/a\",\"type\":\"bind\",\"source\":\"%s\"},"
			       "{\"destination\":\"/b\",\"type\":\"bind\",\"source\":\"%s\"}",
			       hosts, hosts);

	write_file(hosts, "1", "w");
	daemon_start(&d, watch(spec), &a, 60000, 0, 0);
	write_file(hosts, "2", "a");
	check(until(&d, calls_are, 1, 2000) >= 0 && strcmp(destinations(&a, 0), "/a,/b") == 0, "shared: one write, both sent (%s)",
	      destinations(&a, 0));
	write_file(hosts, "3", "a");
	check(until(&d, calls_are, 2, 2000) >= 0, "shared: watched still");
	daemon_stop(&d);
	agent_free(&a);
	json_decref(spec);
	free(hosts);
}

/* A look asked while one is on follows it; a close during a look ends the watch at the look's end. */
static void test_look_order(void)
{
	char *hosts = scratch_file("files", "hosts");
	json_t *spec = spec_of("{\"destination\":\"/etc/hosts\",\"type\":\"bind\",\"source\":\"%s\"}", hosts);
	struct nd_mount_watch *w;
	struct nd_mounted_file *files;
	size_t n;

	write_file(hosts, "1", "w");
	w = watch(spec);
	nd_mount_watch_start(w, 0);
	check(nd_mount_watch_begin(w) == 1, "order: a look begins");
	check(nd_mount_watch_begin(w) == 0, "order: not two at once");
	n = nd_mount_watch_check(w, &files);
	check(n == 0 && files == NULL, "order: nothing changed");
	check(nd_mount_watch_sent(w, 0, NULL) == ND_MOUNT_NOW, "order: the look asked meanwhile follows");
	check(nd_mount_watch_begin(w) == 1, "order: and begins");
	sleep_ms(20);
	write_file(hosts, "2", "w");
	n = nd_mount_watch_check(w, &files);
	check(n == 1, "order: the change read (%zu)", n);
	nd_mounted_files_free(files, n);
	check(nd_mount_watch_close(w) == 0, "order: closed during a look: freed at its end");
	check(nd_mount_watch_sent(w, 14, "away") == ND_MOUNT_ENDED, "order: the look's end ends the watch");
	check(nd_mount_watch_drain(w) == ND_MOUNT_IDLE && nd_mount_watch_begin(w) == 0, "order: a closed watch stays idle");
	nd_mount_watch_free(w);
	json_decref(spec);
	free(hosts);
}

/* ---- modes --------------------------------------------------------------------------------- */

static int mode_fingerprint(const char *path)
{
	char out[ND_FINGERPRINT_SIZE], err[ND_MOUNTS_ERR_MAX];
	int rc = nd_source_fingerprint(path, out, err, sizeof(err));

	if (rc == -ENOENT)
		puts("gone");
	else if (rc < 0)
		printf("error: %s\n", err);
	else
		puts(out);
	return 0;
}

static int mode_files(const char *spec_file, const char *field)
{
	char err[ND_MOUNTS_ERR_MAX];
	json_error_t e;
	json_t *spec = json_load_file(spec_file, 0, &e);
	unsigned char *bytes;
	size_t len;
	int rc;

	if (!spec) {
		printf("error: %s\n", e.text);
		return 1;
	}
	rc = nd_mounted_files(spec, (uint32_t)atoi(field), &bytes, &len, err, sizeof(err));
	json_decref(spec);
	if (rc < 0) {
		printf("error: %s\n", err);
		return 0;
	}
	for (size_t i = 0; i < len; i++)
		printf("%02x", bytes[i]);
	putchar('\n');
	free(bytes);
	return 0;
}

int main(int argc, char **argv)
{
	char fifo[300];

	if (argc == 3 && strcmp(argv[1], "fingerprint") == 0)
		return mode_fingerprint(argv[2]);
	if (argc == 4 && strcmp(argv[1], "files") == 0)
		return mode_files(argv[2], argv[3]);
	snprintf(root, sizeof(root), "/tmp/hp-noded-mounts-XXXXXX");
	if (!mkdtemp(root))
		die("mkdtemp");
	/* the watch's lines, read back through a fifo as the pod's shim log */
	snprintf(fifo, sizeof(fifo), "%s/log", root);
	if (mkfifo(fifo, 0600) < 0 || (log_read_fd = open(fifo, O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0)
		die("log fifo");
	snprintf(log_fifo.path, sizeof(log_fifo.path), "%s", fifo);
	log_fifo.fd = -1;

	test_oci_patterns();
	test_encoding();
	test_malformed();
	test_fingerprint();
	test_termination_message();
	test_tar();
	test_look_order();
	test_data_swap();
	test_recheck_and_files();
	test_termination_log_and_shm();
	test_failures();
	test_change_before_read_and_close();
	test_kubelet_container();
	test_shared_inode();

	nd_fifo_close(&log_fifo);
	close(log_read_fd);
	sh("rm -rf '%s'", root);
	if (failures) {
		printf("%d of %d checks failed\n", failures, checks);
		return failures > 100 ? 100 : failures;
	}
	printf("%d checks: all mounts tests passed\n", checks);
	return 0;
}
