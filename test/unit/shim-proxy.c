/*
 * Tests of the shim's ttrpc proxy (src/shim/proxy.c), built plain and with
 * AddressSanitizer by `make build` and run by test/unit/shim-proxy.test.ts.
 *
 * - the Create rewrite on buffers: options replaced, removed, appended; every other
 *   field kept byte for byte; frames it must leave alone; malformed envelopes and
 *   requests (relayed as they are), bad headers, random bytes;
 * - the relay between real sockets, against a fake runc shim that echoes every
 *   request's data in its response: frames split at every byte, concurrent
 *   connections with the same stream id, a 1 MiB frame, malformed frames (an
 *   oversized or non-request header closes only that connection), and the proxy
 *   exiting, its socket removed, once the fake runc shim dies.
 */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;

#define CHECK(cond, ...)                                                         \
	do {                                                                     \
		if (!(cond)) {                                                   \
			failures++;                                              \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                            \
			fputc('\n', stderr);                                     \
		}                                                                \
	} while (0)

/* ---- a small protobuf writer ------------------------------------------------ */

struct msg {
	unsigned char b[1 << 21];
	size_t n;
};

static void put_varint(struct msg *m, uint64_t v)
{
	while (v >= 0x80) {
		m->b[m->n++] = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	m->b[m->n++] = (unsigned char)v;
}

static void put_bytes(struct msg *m, unsigned field, const void *p, size_t len)
{
	put_varint(m, field << 3 | 2);
	put_varint(m, len);
	memcpy(m->b + m->n, p, len);
	m->n += len;
}

static void put_str(struct msg *m, unsigned field, const char *s)
{
	put_bytes(m, field, s, strlen(s));
}

static void put_uint(struct msg *m, unsigned field, uint64_t v)
{
	put_varint(m, field << 3);
	put_varint(m, v);
}

/* A ttrpc frame around data. */
static size_t frame(unsigned char *out, uint32_t stream, unsigned type, const unsigned char *data, size_t len)
{
	out[0] = (unsigned char)(len >> 24);
	out[1] = (unsigned char)(len >> 16);
	out[2] = (unsigned char)(len >> 8);
	out[3] = (unsigned char)len;
	out[4] = (unsigned char)(stream >> 24);
	out[5] = (unsigned char)(stream >> 16);
	out[6] = (unsigned char)(stream >> 8);
	out[7] = (unsigned char)stream;
	out[8] = (unsigned char)type;
	out[9] = 0;
	memcpy(out + 10, data, len);
	return len + 10;
}

/* Request { service, method, payload, timeout_nano, metadata } as containerd sends it. */
static size_t request(unsigned char *out, uint32_t stream, const char *service, const char *method, const struct msg *payload)
{
	static struct msg env, kv;

	env.n = kv.n = 0;
	put_str(&env, 1, service);
	put_str(&env, 2, method);
	put_bytes(&env, 3, payload->b, payload->n);
	put_uint(&env, 4, 5000000000ull);
	put_str(&kv, 1, "containerd-namespace-ttrpc");
	put_str(&kv, 2, "k8s.io");
	put_bytes(&env, 5, kv.b, kv.n);
	return frame(out, stream, HP_TTRPC_REQUEST, env.b, env.n);
}

static const char OUR_OPTIONS_TYPE[] = "runtimeoptions.v1.Options";

/* CreateTaskRequest with our options at field 10 (twice if asked), other fields around it. */
static void create_payload(struct msg *m, int options, const char *bundle)
{
	static struct msg mount, opts, any;

	m->n = mount.n = opts.n = any.n = 0;
	put_str(m, 1, "pod-1");
	put_str(m, 2, bundle);
	put_str(&mount, 1, "overlay");
	put_str(&mount, 2, "overlay");
	put_str(&mount, 4, "lowerdir=/a:/b");
	put_bytes(m, 3, mount.b, mount.n);
	put_str(m, 6, "/run/fifo/stdout");
	put_str(&opts, 2, "/etc/heteropod/shim.toml");
	put_str(&any, 1, OUR_OPTIONS_TYPE);
	put_bytes(&any, 2, opts.b, opts.n);
	if (options)
		put_bytes(m, 10, any.b, any.n);
	put_str(m, 7, "/run/fifo/stderr");
	if (options > 1)
		put_bytes(m, 10, any.b, any.n);
}

/* The expected rewrite: the same request, its payload without field 10, plus `with`. */
static void create_expected(struct msg *m, const char *bundle, const unsigned char *with, size_t with_len)
{
	create_payload(m, 0, bundle);
	if (with)
		put_bytes(m, 10, with, with_len);
}

static unsigned char in[1 << 21], out[1 << 21], want[1 << 21];
static struct msg payload, expected;

/* ---- the rewrite on buffers ------------------------------------------------- */

static void test_rewrite(void)
{
	unsigned char runc[256];
	int rlen = hp_runc_options("", "/run/heteropod/runc", 0, runc, sizeof(runc));
	size_t n, got = 0, wn;
	int r;

	/* hp_runc_options: Any { type_url, value = Options { root = 7 } } */
	{
		static const unsigned char any[] = "\x0a\x1a" "containerd.runc.v1.Options" "\x12\x15\x3a\x13/run/heteropod/runc";
		unsigned char small[8];

		CHECK(rlen == (int)sizeof(any) - 1 && memcmp(runc, any, sizeof(any) - 1) == 0, "runc options encoding (%d bytes)", rlen);
		CHECK(hp_runc_options("", "", 0, small, sizeof(small)) == 0, "no [runc] settings: no options");
		CHECK(hp_runc_options("runc", "/x", 1, small, sizeof(small)) == -ENOSPC, "too small");
		rlen = hp_runc_options("crun", "/r", 1, out, sizeof(out));
		CHECK(rlen > 0 && memmem(out, (size_t)rlen, "\x32\x04" "crun" "\x3a\x02/r\x48\x01", 12) != NULL, "binary_name, root, systemd_cgroup");
		rlen = hp_runc_options("", "/run/heteropod/runc", 0, runc, sizeof(runc));
	}

	/* Our options replaced by runc's, every other byte as it was. */
	create_payload(&payload, 1, "/run/containerd/bundle/pod-1");
	n = request(in, 7, "containerd.task.v2.Task", "Create", &payload);
	r = hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got);
	create_expected(&expected, "/run/containerd/bundle/pod-1", runc, (size_t)rlen);
	wn = request(want, 7, "containerd.task.v2.Task", "Create", &expected);
	CHECK(r == 1 && got == wn && memcmp(out, want, wn) == 0, "options replaced (r=%d, %zu vs %zu bytes)", r, got, wn);

	/* Removed when the config has no [runc] settings; both copies of a repeated field. */
	create_payload(&payload, 2, "/b");
	n = request(in, 9, "containerd.task.v2.Task", "Create", &payload);
	r = hp_rewrite_create(in, n, NULL, 0, out, sizeof(out), &got);
	create_expected(&expected, "/b", NULL, 0);
	wn = request(want, 9, "containerd.task.v2.Task", "Create", &expected);
	CHECK(r == 1 && got == wn && memcmp(out, want, wn) == 0, "options removed (r=%d)", r);

	/* Appended to a Create without options (ctr sends none). */
	create_payload(&payload, 0, "/b");
	n = request(in, 1, "containerd.task.v2.Task", "Create", &payload);
	r = hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got);
	create_expected(&expected, "/b", runc, (size_t)rlen);
	wn = request(want, 1, "containerd.task.v2.Task", "Create", &expected);
	CHECK(r == 1 && got == wn && memcmp(out, want, wn) == 0, "options appended (r=%d)", r);
	CHECK(hp_rewrite_create(in, n, NULL, 0, out, sizeof(out), &got) == 0, "nothing to remove, nothing to add: as is");

	/* The payload's length varint grows from one byte to two. */
	{
		char bundle[128];

		memset(bundle, 'b', sizeof(bundle));
		bundle[40] = '\0';
		create_payload(&payload, 0, bundle);
		CHECK(payload.n < 128, "payload below 128 bytes (%zu)", payload.n);
		n = request(in, 3, "containerd.task.v2.Task", "Create", &payload);
		r = hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got);
		create_expected(&expected, bundle, runc, (size_t)rlen);
		CHECK(expected.n >= 128, "rewritten payload above 128 bytes (%zu)", expected.n);
		wn = request(want, 3, "containerd.task.v2.Task", "Create", &expected);
		CHECK(r == 1 && got == wn && memcmp(out, want, wn) == 0, "length varint grows (r=%d)", r);
		CHECK(got <= hp_rewrite_bound(n, (size_t)rlen), "within the bound");
		CHECK(hp_rewrite_create(in, n, runc, (size_t)rlen, out, got - 1, &got) == -ENOSPC, "-ENOSPC below the size");
	}

	/* Left alone: other methods, other services, responses. */
	create_payload(&payload, 1, "/b");
	n = request(in, 5, "containerd.task.v2.Task", "State", &payload);
	CHECK(hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got) == 0, "State untouched");
	n = request(in, 5, "containerd.task.v2.Tasks", "Create", &payload);
	CHECK(hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got) == 0, "another service untouched");
	n = request(in, 5, "containerd.task.v2.Task", "Create", &payload);
	in[8] = 2;
	CHECK(hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got) == 0, "a response untouched");
	in[8] = 1;
	CHECK(hp_rewrite_create(in, n - 1, runc, (size_t)rlen, out, sizeof(out), &got) == -EINVAL, "length disagrees with header");
	CHECK(hp_rewrite_create(in, 5, runc, (size_t)rlen, out, sizeof(out), &got) == -EINVAL, "shorter than a header");

	/* Malformed envelopes and requests are relayed as they are (runc's shim answers them). */
	{
		static const unsigned char bad[][12] = {
			{ 0x0a, 0x30, 'x' },		      /* length beyond the message */
			{ 0x0a, 0x01, 'x', 0x80 },	      /* truncated varint */
			{ 0x0b, 0x01 },			      /* wire type 3 */
			{ 0x00, 0x01 },			      /* field number 0 */
			{ 0x0d, 0x01, 0x02 },		      /* fixed32 cut short */
			{ 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01 }, /* varint too long */
		};
		size_t i;

		for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			n = frame(in, 1, 1, bad[i], sizeof(bad[i]));
			CHECK(hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got) == 0, "bad envelope %zu", i);
		}
		/* a Create whose CreateTaskRequest does not decode */
		payload.n = 0;
		put_str(&payload, 1, "pod");
		payload.b[payload.n++] = 0x52;
		payload.b[payload.n++] = 0x7f;
		n = request(in, 1, "containerd.task.v2.Task", "Create", &payload);
		CHECK(hp_rewrite_create(in, n, runc, (size_t)rlen, out, sizeof(out), &got) == 0, "bad CreateTaskRequest relayed as is");
	}

	/* Random bytes behind a valid header: never a crash, and a rewrite is a valid frame. */
	{
		unsigned seed = 12345;
		int i, rewritten = 0;

		for (i = 0; i < 200000; i++) {
			size_t len = (size_t)(rand_r(&seed) % 96), j;

			create_payload(&payload, 1, "/b");
			n = request(in, 1, "containerd.task.v2.Task", "Create", &payload);
			/* a valid Create with some bytes flipped, or plain noise */
			if (i % 2) {
				for (j = 0; j < 3; j++)
					in[10 + (size_t)rand_r(&seed) % (n - 10)] = (unsigned char)rand_r(&seed);
			} else {
				for (j = 0; j < len; j++)
					want[j] = (unsigned char)rand_r(&seed);
				n = frame(in, 1, 1, want, len);
			}
			r = hp_rewrite_create(in, n, runc, (size_t)rlen, out, hp_rewrite_bound(n, (size_t)rlen), &got);
			CHECK(r == 0 || r == 1, "fuzz %d: %d", i, r);
			if (r == 1) {
				rewritten++;
				CHECK(got >= 10 && ((size_t)out[0] << 24 | (size_t)out[1] << 16 | (size_t)out[2] << 8 | out[3]) == got - 10,
				      "fuzz %d: header length", i);
			}
		}
		CHECK(rewritten > 1000, "the fuzzing reached the rewrite (%d)", rewritten);
	}
}

/* ---- the relay between sockets --------------------------------------------- */

static char dir[40], proxy_path[96], runc_path[96];

static int listen_unix(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 64) < 0) {
		perror(path);
		exit(1);
	}
	return fd;
}

static int dial(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct timeval tv = { 5, 0 };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static int read_full(int fd, unsigned char *p, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = read(fd, p + got, len - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const unsigned char *p, size_t len)
{
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The fake runc shim: answers every request frame with a response frame (same
 * stream id) whose data is the request's data, so the test sees what arrived. */
static void fake_runc(int listener)
{
	struct pollfd fds[32];
	static unsigned char bufs[31][1 << 21];
	size_t lens[32] = { 0 };
	int n = 1, i;

	fds[0] = (struct pollfd){ .fd = listener, .events = POLLIN };
	for (;;) {
		if (poll(fds, (nfds_t)n, -1) < 0)
			continue;
		if ((fds[0].revents & POLLIN) && n < 32) {
			int c = accept(listener, NULL, NULL);

			if (c >= 0) {
				fds[n] = (struct pollfd){ .fd = c, .events = POLLIN };
				lens[n++] = 0;
			}
		}
		for (i = 1; i < n; i++) {
			unsigned char *b = bufs[i - 1];
			ssize_t r;

			if (!(fds[i].revents & (POLLIN | POLLHUP)))
				continue;
			r = read(fds[i].fd, b + lens[i], sizeof(bufs[0]) - lens[i]);
			if (r <= 0) {
				close(fds[i].fd);
				fds[i] = fds[--n];
				lens[i] = lens[n];
				if (i != n)
					memcpy(b, bufs[n - 1], lens[i]);
				i--;
				continue;
			}
			lens[i] += (size_t)r;
			while (lens[i] >= 10) {
				size_t dlen = (size_t)b[0] << 24 | (size_t)b[1] << 16 | (size_t)b[2] << 8 | b[3];

				if (lens[i] < 10 + dlen)
					break;
				b[8] = 2;
				write_full(fds[i].fd, b, 10 + dlen);
				memmove(b, b + 10 + dlen, lens[i] - 10 - dlen);
				lens[i] -= 10 + dlen;
			}
		}
	}
}

/* Sends a frame and reads the echo; 0 when the echo's data equals `expect`. */
static int roundtrip(int fd, const unsigned char *f, size_t n, const unsigned char *expect, size_t en, int bytewise)
{
	static unsigned char reply[(1 << 21)];
	size_t i;

	if (bytewise) {
		for (i = 0; i < n; i++) {
			if (write_full(fd, f + i, 1) < 0)
				return -1;
			if (i % 7 == 0)
				usleep(200); /* let the proxy see the pieces separately */
		}
	} else if (write_full(fd, f, n) < 0) {
		return -1;
	}
	if (read_full(fd, reply, 10) < 0)
		return -2;
	{
		size_t dlen = (size_t)reply[0] << 24 | (size_t)reply[1] << 16 | (size_t)reply[2] << 8 | reply[3];

		if (dlen != en - 10 || memcmp(reply + 4, expect + 4, 4) != 0 || reply[8] != 2)
			return -3;
		if (read_full(fd, reply + 10, dlen) < 0)
			return -4;
		return memcmp(reply + 10, expect + 10, dlen) == 0 ? 0 : -5;
	}
}

struct writer {
	int fd;
	const unsigned char *p;
	size_t len;
	int err;
};

static void *write_in_background(void *arg)
{
	struct writer *w = arg;

	w->err = write_full(w->fd, w->p, w->len);
	return NULL;
}

static int closed_by_peer(int fd)
{
	unsigned char b;

	return read(fd, &b, 1) == 0;
}

static void test_relay(void)
{
	unsigned char runc[256];
	int rlen = hp_runc_options("", "/run/heteropod/runc", 0, runc, sizeof(runc));
	int runc_listener, proxy_listener, a, b, c, status, i, r;
	pid_t runc_pid, proxy_pid;
	size_t n, wn;
	struct timespec t0, t1;

	strcpy(dir, "/tmp/hp-proxy-test-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		exit(1);
	}
	snprintf(proxy_path, sizeof(proxy_path), "%s/proxy.sock", dir);
	snprintf(runc_path, sizeof(runc_path), "%s/runc.sock", dir);
	runc_listener = listen_unix(runc_path);
	runc_pid = fork();
	if (runc_pid == 0)
		fake_runc(runc_listener);
	close(runc_listener);
	proxy_listener = listen_unix(proxy_path);
	proxy_pid = fork();
	if (proxy_pid == 0) {
		struct hp_proxy p = {
			.listener = proxy_listener,
			.socket_path = proxy_path,
			.upstream = runc_path,
			.create_options = runc,
			.create_options_len = (size_t)rlen,
		};

		_exit(hp_proxy_run(&p) == 0 ? 0 : 1);
	}
	close(proxy_listener);

	a = dial(proxy_path);
	b = dial(proxy_path);
	CHECK(a >= 0 && b >= 0, "connect to the proxy");

	/* Unchanged: a State request, and a request that does not decode. */
	create_payload(&payload, 1, "/b");
	n = request(in, 1, "containerd.task.v2.Task", "State", &payload);
	CHECK(roundtrip(a, in, n, in, n, 0) == 0, "State relayed unchanged");
	n = frame(in, 3, 1, (const unsigned char *)"\x0a\x30garbage", 9);
	CHECK(roundtrip(a, in, n, in, n, 0) == 0, "undecodable request relayed unchanged");

	/* Create, sent a byte at a time: rewritten. */
	create_payload(&payload, 1, "/run/containerd/bundle/pod-1");
	n = request(in, 5, "containerd.task.v2.Task", "Create", &payload);
	create_expected(&expected, "/run/containerd/bundle/pod-1", runc, (size_t)rlen);
	wn = request(want, 5, "containerd.task.v2.Task", "Create", &expected);
	CHECK(roundtrip(a, in, n, want, wn, 1) == 0, "Create rewritten, split at every byte");

	/* Two connections, both using stream id 1: each gets its own answer. */
	create_payload(&payload, 0, "/for-b");
	n = request(in, 1, "containerd.task.v2.Task", "Pids", &payload);
	CHECK(roundtrip(b, in, n, in, n, 0) == 0, "second connection, same stream id");

	/* Several frames in one write, the last one large (1 MiB): the buffer grows. */
	{
		size_t total = 0, one;

		payload.n = 0;
		put_str(&payload, 1, "x");
		one = request(in, 7, "containerd.task.v2.Task", "Kill", &payload);
		total = one;
		memcpy(in + total, in, one);
		total += one;
		payload.n = 0;
		memset(want, 'z', 1 << 20);
		put_bytes(&payload, 7, want, 1 << 20);
		n = request(in + total, 9, "containerd.task.v2.Task", "Exec", &payload);
		/* written while the answers are read, as a ttrpc client does */
		struct writer w = { a, in, total + n, 0 };
		pthread_t t;

		CHECK(pthread_create(&t, NULL, write_in_background, &w) == 0, "writer thread");
		CHECK(roundtrip(a, in, 0, in, one, 0) == 0 && roundtrip(a, in, 0, in, one, 0) == 0, "two small frames in one write");
		r = roundtrip(a, in, 0, in + total, n, 0);
		CHECK(r == 0, "a 1 MiB frame (%d)", r);
		pthread_join(t, NULL);
		CHECK(w.err == 0, "three frames written");
	}

	/* Malformed headers close only their own connection. */
	c = dial(proxy_path);
	memcpy(in, "\x00\x50\x00\x00\x00\x00\x00\x01\x01\x00", 10); /* 5 MiB */
	CHECK(write_full(c, in, 10) == 0 && closed_by_peer(c), "a frame over 4 MiB closes the connection");
	close(c);
	c = dial(proxy_path);
	payload.n = 0;
	put_str(&payload, 1, "pod-1");
	n = request(in, 1, "containerd.task.v2.Task", "State", &payload);
	in[8] = 3; /* a ttrpc 1.2 data frame: not spoken by containerd 1.6 */
	CHECK(write_full(c, in, n) == 0 && closed_by_peer(c), "a non-request frame closes the connection");
	close(c);
	c = dial(proxy_path);
	CHECK(write_full(c, in, 4) == 0, "half a header");
	close(c); /* containerd gone mid-frame */
	n = request(in, 11, "containerd.task.v2.Task", "State", &payload);
	CHECK(roundtrip(b, in, n, in, n, 0) == 0, "the other connections still work");

	/* Many connections opened and closed: nothing accumulates. */
	for (i = 0; i < 200; i++) {
		c = dial(proxy_path);
		CHECK(c >= 0 && roundtrip(c, in, n, in, n, 0) == 0, "connection %d", i);
		close(c);
	}

	/* runc's shim dies: the proxy closes every connection and exits, its socket gone. */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	kill(runc_pid, SIGKILL);
	waitpid(runc_pid, NULL, 0);
	CHECK(closed_by_peer(a) && closed_by_peer(b), "connections closed when runc's shim is gone");
	CHECK(waitpid(proxy_pid, &status, 0) == proxy_pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the proxy exits 0");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	CHECK(t1.tv_sec - t0.tv_sec < 3, "within 3 s");
	CHECK(access(proxy_path, F_OK) < 0, "its socket is removed");
	close(a);
	close(b);
	unlink(runc_path);
	rmdir(dir);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	test_rewrite();
	test_relay();
	if (failures) {
		fprintf(stderr, "%d proxy test(s) failed\n", failures);
		return 1;
	}
	printf("all proxy tests passed\n");
	return 0;
}
