/*
 * Tests of the shim's ttrpc proxy (src/shim/proxy.c), built plain and with
 * AddressSanitizer by `make build` and run by test/unit/shim-proxy.test.ts.
 *
 * - the Create rewrite on buffers: options replaced, removed, appended; every other
 *   field kept byte for byte; frames it must leave alone; malformed envelopes and
 *   requests (relayed as they are), bad headers, random bytes;
 * - the node daemon's messages on buffers: the Attach frame field by field,
 *   Response field 15 (placed) taken out of the daemon's answers;
 * - the relay between real sockets, against a fake runc shim that echoes every
 *   request's data in its response: frames split at every byte, concurrent
 *   connections with the same stream id, a 1 MiB frame, malformed frames (an
 *   oversized or non-request header closes only that connection), a pod without
 *   offload never dialling the node daemon, and the proxy exiting, its socket
 *   removed, once the fake runc shim dies;
 * - an offload pod, the test playing the node daemon step by step: Attach first;
 *   Create placed=1 (the task's later requests reach the daemon, on any
 *   containerd connection; Shutdown and other ids reach runc) and placed=2 (the
 *   original Create reaches runc, rewritten; containerd gets runc's answer
 *   only) and placed=3 (the daemon's answer is containerd's; the task's
 *   later requests reach runc, its Delete the daemon); runc's 1 MiB answer and the daemon's interleaved whole; the daemon
 *   dying with a Wait, a State and a Create in flight (the Wait held, the others
 *   UNAVAILABLE); requests during the outage (UNAVAILABLE, Create to runc under
 *   prefer); the held Wait sent again after the daemon is back and answered on
 *   its stream id, the Wait of a closed connection dropped; Attach refused; and
 *   policy require without a daemon (FAILED_PRECONDITION naming the socket);
 * - an offload pod's stdio fifos (real fifos, the test holding containerd's read
 *   ends): the proxy holds a write end of each fifo of a daemon process (Create
 *   placed=1, Exec answered OK; stdout only with a terminal), through the
 *   daemon's death and restart, until the process's Wait is answered OK (the
 *   exec's only) or its task's Delete (the rest), on any containerd
 *   connection, and at the latest until it exits; nothing for a refused Exec,
 *   a failed Wait or a placed=2 task; a fifo without a reader or a missing path
 *   does not change Create's answer.
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

/* proxy-codec.c's frame header writer (proxy-internal.h, whose other names this
 * file's own encoder shares). */
void put_header(unsigned char *out, size_t dlen, uint32_t stream, unsigned type);

/* A ttrpc frame around data. */
static size_t frame(unsigned char *out, uint32_t stream, unsigned type, const unsigned char *data, size_t len)
{
	put_header(out, len, stream, type);
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
static void create_payload_for(struct msg *m, const char *id, int options, const char *bundle)
{
	static struct msg mount, opts, any;

	m->n = mount.n = opts.n = any.n = 0;
	put_str(m, 1, id);
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

static void create_payload(struct msg *m, int options, const char *bundle)
{
	create_payload_for(m, "pod-1", options, bundle);
}

/* The expected rewrite: the same request, its payload without field 10, plus `with`. */
static void create_expected_for(struct msg *m, const char *id, const char *bundle, const unsigned char *with, size_t with_len)
{
	create_payload_for(m, id, 0, bundle);
	if (with)
		put_bytes(m, 10, with, with_len);
}

static void create_expected(struct msg *m, const char *bundle, const unsigned char *with, size_t with_len)
{
	create_expected_for(m, "pod-1", bundle, with, with_len);
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

/* ---- the node daemon's messages on buffers -------------------------------- */

/* Field `num` of message p[0, len) (the last if repeated): 1 with its value
 * (bytes in val and vlen, a varint in u), 0 when absent, -1 when it does not decode. */
static int field_of(const unsigned char *p, size_t len, unsigned num, const unsigned char **val, size_t *vlen, uint64_t *u)
{
	size_t i = 0;
	int found = 0;

	while (i < len) {
		uint64_t tag = 0, v = 0;
		unsigned shift = 0;

		do {
			if (i >= len || shift > 63)
				return -1;
			tag |= (uint64_t)(p[i] & 0x7f) << shift;
			shift += 7;
		} while (p[i++] & 0x80);
		if ((tag & 7) != 0 && (tag & 7) != 2)
			return -1;
		shift = 0;
		do {
			if (i >= len || shift > 63)
				return -1;
			v |= (uint64_t)(p[i] & 0x7f) << shift;
			shift += 7;
		} while (p[i++] & 0x80);
		if ((tag & 7) == 2) {
			if (v > len - i)
				return -1;
			if ((tag >> 3) == num) {
				*val = p + i;
				*vlen = (size_t)v;
				found = 1;
			}
			i += (size_t)v;
		} else if ((tag >> 3) == num) {
			*u = v;
			found = 1;
		}
	}
	return found;
}

static int field_is(const unsigned char *p, size_t len, unsigned num, const char *s)
{
	const unsigned char *v = NULL;
	size_t vlen = 0;
	uint64_t u;

	return field_of(p, len, num, &v, &vlen, &u) == 1 && vlen == strlen(s) && memcmp(v, s, vlen) == 0;
}

static uint64_t varint_of(const unsigned char *p, size_t len, unsigned num)
{
	const unsigned char *v;
	size_t vlen;
	uint64_t u = 0;

	return field_of(p, len, num, &v, &vlen, &u) == 1 ? u : 0;
}

/* A Response frame { payload = 2 } from the daemon, with field 15 placed unless 0. */
static size_t daemon_answer(unsigned char *out, uint32_t stream, const struct msg *payload, unsigned placed)
{
	static struct msg r;

	r.n = 0;
	if (payload)
		put_bytes(&r, 2, payload->b, payload->n);
	if (placed)
		put_uint(&r, 15, placed);
	return frame(out, stream, 2, r.b, r.n);
}

/* Response { status = { code, message } } */
static size_t status_answer(unsigned char *out, uint32_t stream, unsigned code, const char *message)
{
	static struct msg r, st;

	r.n = st.n = 0;
	put_uint(&st, 1, code);
	put_str(&st, 2, message);
	put_bytes(&r, 1, st.b, st.n);
	return frame(out, stream, 2, r.b, r.n);
}

static const struct hp_attach test_attach = {
	.namespace = "k8s.io",
	.group = "pod-sandbox",
	.containerd_address = "/run/containerd/containerd.sock",
	.ttrpc_address = "/run/containerd/containerd.sock.ttrpc",
	.runc_address = "unix:///run/containerd/s/runc",
	.publish_binary = "/usr/bin/containerd",
	.bundle = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/pod-sandbox",
	.config_path = "/etc/heteropod/shim.toml",
	.proxy_pid = 300000,
	.debug = 1,
};

/* An Attach frame as the daemon should read it: the envelope, then each field. */
static int attach_ok(const unsigned char *f, size_t n, const struct hp_attach *a)
{
	const unsigned char *data = f + 10, *req = NULL;
	size_t dlen = n - 10, rlen = 0;
	uint64_t u;

	if (n < 10 || ((size_t)f[0] << 24 | (size_t)f[1] << 16 | (size_t)f[2] << 8 | f[3]) != dlen)
		return 0;
	if (memcmp(f + 4, "\x7f\xff\xff\xff\x01\x00", 6) != 0 || !field_is(data, dlen, 1, "heteropod.node.v1.Node") ||
	    !field_is(data, dlen, 2, "Attach") || field_of(data, dlen, 3, &req, &rlen, &u) != 1 ||
	    field_of(data, dlen, 5, &req, &rlen, &u) != 0 || field_of(data, dlen, 3, &req, &rlen, &u) != 1)
		return 0;
	return field_is(req, rlen, 1, a->namespace) && field_is(req, rlen, 2, a->group) &&
	       field_is(req, rlen, 3, a->containerd_address) && field_is(req, rlen, 4, a->ttrpc_address) &&
	       field_is(req, rlen, 5, a->runc_address) && field_is(req, rlen, 6, a->publish_binary) &&
	       field_is(req, rlen, 7, a->bundle) && field_is(req, rlen, 8, a->config_path) &&
	       varint_of(req, rlen, 9) == a->proxy_pid && varint_of(req, rlen, 10) == (a->debug ? 1u : 0u);
}

static void test_node_messages(void)
{
	static struct msg pid;
	unsigned char small[16];
	size_t n, wn;
	int r;

	/* Attach: every field, and nothing for the empty ones. */
	r = hp_attach_frame(&test_attach, out, sizeof(out));
	CHECK(r > 0 && attach_ok(out, (size_t)r, &test_attach), "Attach frame (%d)", r);
	CHECK(hp_attach_frame(&test_attach, small, sizeof(small)) == -ENOSPC, "Attach: -ENOSPC");
	{
		struct hp_attach bare = { .namespace = "ns", .group = "g", .bundle = "" };
		const unsigned char *v;
		size_t vlen;
		uint64_t u;

		r = hp_attach_frame(&bare, out, sizeof(out));
		CHECK(r > 0 && field_of(out + 10, (size_t)r - 10, 3, &v, &vlen, &u) == 1 && field_is(v, vlen, 1, "ns") &&
			      field_of(v, vlen, 7, &v, &vlen, &u) == 0,
		      "Attach without a bundle: no field 7");
	}

	/* placed=1, appended last: taken out, the rest byte for byte. */
	pid.n = 0;
	put_uint(&pid, 1, 4242);
	n = daemon_answer(in, 3, &pid, 1);
	wn = daemon_answer(want, 3, &pid, 0);
	r = hp_take_placed(in, &n);
	CHECK(r == 1 && n == wn && memcmp(in, want, wn) == 0, "placed=1 taken out (r=%d, %zu vs %zu bytes)", r, n, wn);
	n = daemon_answer(in, 5, NULL, 2);
	r = hp_take_placed(in, &n);
	CHECK(r == 2 && n == 10 && in[3] == 0, "placed=2 of an empty answer: an empty response left");
	/* An error answer has no field 15: unchanged. */
	n = status_answer(in, 7, 3, "bad spec");
	wn = status_answer(want, 7, 3, "bad spec");
	r = hp_take_placed(in, &n);
	CHECK(r == 0 && n == wn && memcmp(in, want, wn) == 0, "error answer unchanged (r=%d)", r);
	/* Field 15 wherever it is, repeated: the last wins, every copy goes. */
	{
		static struct msg m;

		m.n = 0;
		put_uint(&m, 15, 2);
		put_bytes(&m, 2, pid.b, pid.n);
		put_uint(&m, 15, 1);
		n = frame(in, 9, 2, m.b, m.n);
		wn = daemon_answer(want, 9, &pid, 0);
		r = hp_take_placed(in, &n);
		CHECK(r == 1 && n == wn && memcmp(in, want, wn) == 0, "repeated field 15 (r=%d)", r);
	}
	n = frame(in, 1, 2, (const unsigned char *)"\x12\x30x", 3);
	CHECK(hp_take_placed(in, &n) == -EBADMSG && n == 13, "undecodable answer left alone");
	n = daemon_answer(in, 1, &pid, 1);
	in[8] = 1;
	CHECK(hp_take_placed(in, &n) == -EINVAL, "a request is not an answer");
	n--;
	in[8] = 2;
	CHECK(hp_take_placed(in, &n) == -EINVAL, "length disagrees with the header");
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
	int runc_listener, proxy_listener, node_listener, a, b, c, status, i, r;
	char node_sock[96];
	struct pollfd pending_node;
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
	snprintf(node_sock, sizeof(node_sock), "%s/node.sock", dir);
	node_listener = listen_unix(node_sock); /* a node daemon this pod must never reach */
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

	pending_node = (struct pollfd){ .fd = node_listener, .events = POLLIN };
	CHECK(poll(&pending_node, 1, 0) == 0, "a pod without offload never dialled the node daemon");
	close(node_listener);
	unlink(node_sock);

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

/* ---- offload pods: the proxy with a fake node daemon ------------------------ */

static char node_path[96];

static int accept_within(int listener, int ms)
{
	struct pollfd p = { .fd = listener, .events = POLLIN };
	struct timeval tv = { 5, 0 };
	int fd;

	if (poll(&p, 1, ms) != 1)
		return -1;
	fd = accept(listener, NULL, NULL);
	if (fd >= 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static int quiet_for(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, ms) == 0;
}

/* Reads one whole frame into out; its length, or 0 on EOF, timeout or error. */
static size_t read_frame(int fd, unsigned char *out)
{
	size_t dlen;

	if (read_full(fd, out, 10) < 0)
		return 0;
	dlen = (size_t)out[0] << 24 | (size_t)out[1] << 16 | (size_t)out[2] << 8 | out[3];
	if (dlen > (1 << 21) - 10 || read_full(fd, out + 10, dlen) < 0)
		return 0;
	return 10 + dlen;
}

static int same_frame(const unsigned char *a, size_t an, const unsigned char *b, size_t bn)
{
	return an == bn && memcmp(a, b, an) == 0;
}

static uint32_t stream_of(const unsigned char *f)
{
	return (uint32_t)f[4] << 24 | (uint32_t)f[5] << 16 | (uint32_t)f[6] << 8 | f[7];
}

/* The status of a response frame: its code, the message copied to `message`. */
static int status_of(const unsigned char *f, size_t n, char *message, size_t cap)
{
	const unsigned char *st, *m;
	size_t slen, mlen;
	uint64_t u;

	message[0] = '\0';
	if (n < 10 || f[8] != 2 || field_of(f + 10, n - 10, 1, &st, &slen, &u) != 1)
		return 0;
	if (field_of(st, slen, 2, &m, &mlen, &u) == 1)
		snprintf(message, cap, "%.*s", (int)mlen, (const char *)m);
	return (int)varint_of(st, slen, 1);
}

/* A Task request whose payload is { id = 1 }. */
static size_t task_request(unsigned char *out, uint32_t stream, const char *method, const char *id)
{
	static struct msg m;

	m.n = 0;
	put_str(&m, 1, id);
	return request(out, stream, "containerd.task.v2.Task", method, &m);
}

/* The fake node daemon's side of Attach: read it, check it, answer OK. */
static int daemon_attach(int fd)
{
	static unsigned char f[1 << 16];
	size_t n = read_frame(fd, f);

	if (!n || !attach_ok(f, n, &test_attach))
		return -1;
	n = daemon_answer(f, 0x7fffffff, NULL, 0);
	return write_full(fd, f, n);
}

struct pod {
	pid_t runc, proxy;
};

static struct pod pod_start(const char *policy, const unsigned char *runc_options, size_t runc_options_len)
{
	struct pod pod;
	int runc_listener = listen_unix(runc_path), proxy_listener;

	pod.runc = fork();
	if (pod.runc == 0)
		fake_runc(runc_listener);
	close(runc_listener);
	proxy_listener = listen_unix(proxy_path);
	pod.proxy = fork();
	if (pod.proxy == 0) {
		struct hp_proxy p = {
			.listener = proxy_listener,
			.socket_path = proxy_path,
			.upstream = runc_path,
			.create_options = runc_options,
			.create_options_len = runc_options_len,
			.node_socket = node_path,
			.offload_policy = policy,
			.attach = &test_attach,
		};

		_exit(hp_proxy_run(&p) == 0 ? 0 : 1);
	}
	close(proxy_listener);
	return pod;
}

static void pod_stop(struct pod pod)
{
	int status;

	kill(pod.runc, SIGKILL);
	waitpid(pod.runc, NULL, 0);
	CHECK(waitpid(pod.proxy, &status, 0) == pod.proxy && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the proxy exits 0");
	unlink(runc_path);
}

static void test_offload(void)
{
	static unsigned char got[1 << 21], sent[1 << 16];
	static struct msg pid, exited;
	unsigned char runc[256];
	int rlen = hp_runc_options("", "/run/heteropod/runc", 0, runc, sizeof(runc));
	int node, n1, n2, n3, n4, a, b, c, r;
	size_t n, gn, wn, sn;
	char message[512];
	struct pod pod;

	strcpy(dir, "/tmp/hp-proxy-test-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		exit(1);
	}
	snprintf(proxy_path, sizeof(proxy_path), "%s/proxy.sock", dir);
	snprintf(runc_path, sizeof(runc_path), "%s/runc.sock", dir);
	snprintf(node_path, sizeof(node_path), "%s/node.sock", dir);
	node = listen_unix(node_path);
	pod = pod_start("prefer", runc, (size_t)rlen);
	a = dial(proxy_path);
	CHECK(a >= 0, "connect to the proxy");
	pid.n = 0;
	put_uint(&pid, 1, 4242);

	/* A task nobody placed is runc's, and needs no daemon. */
	n = task_request(in, 1, "State", "ctr-x");
	CHECK(roundtrip(a, in, n, in, n, 0) == 0, "State of an unknown id goes to runc");
	CHECK(quiet_for(node, 100), "no daemon connection for it");

	/* Create goes to the daemon unchanged, after Attach; placed=1 keeps the task there. */
	create_payload_for(&payload, "ctr-1", 1, "/run/containerd/bundle/ctr-1");
	sn = request(sent, 3, "containerd.task.v2.Task", "Create", &payload);
	CHECK(write_full(a, sent, sn) == 0, "send Create");
	n1 = accept_within(node, 2000);
	CHECK(n1 >= 0 && daemon_attach(n1) == 0, "Attach first, with every field");
	gn = read_frame(n1, got);
	CHECK(same_frame(got, gn, sent, sn), "the daemon gets Create unchanged (%zu vs %zu bytes)", gn, sn);
	n = daemon_answer(in, 3, &pid, 1);
	CHECK(write_full(n1, in, n) == 0, "answer placed=1");
	wn = daemon_answer(want, 3, &pid, 0);
	gn = read_frame(a, got);
	CHECK(same_frame(got, gn, want, wn), "containerd gets the answer without field 15");

	/* Later requests for ctr-1 reach the daemon; others runc. */
	sn = task_request(sent, 5, "Start", "ctr-1");
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "Start reaches the daemon");
	n = daemon_answer(in, 5, &pid, 0);
	CHECK(write_full(n1, in, n) == 0 && same_frame(got, read_frame(a, got), in, n), "its answer reaches containerd");
	n = task_request(in, 7, "State", "ctr-other");
	CHECK(roundtrip(a, in, n, in, n, 0) == 0, "State of another id goes to runc");
	n = task_request(in, 9, "Shutdown", "ctr-1");
	CHECK(roundtrip(a, in, n, in, n, 0) == 0, "Shutdown goes to runc, even for a daemon task");
	CHECK(quiet_for(n1, 100), "the daemon saw neither");

	/* placed=2: the original Create goes to runc, rewritten; only runc's answer comes back. */
	create_payload_for(&payload, "ctr-2", 1, "/b2");
	sn = request(sent, 11, "containerd.task.v2.Task", "Create", &payload);
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "Create ctr-2 to the daemon");
	n = daemon_answer(in, 11, NULL, 2);
	CHECK(write_full(n1, in, n) == 0, "answer placed=2");
	create_expected_for(&expected, "ctr-2", "/b2", runc, (size_t)rlen);
	wn = request(want, 11, "containerd.task.v2.Task", "Create", &expected);
	wn = frame(want, 11, 2, want + 10, wn - 10); /* the fake runc echoes it as a response */
	gn = read_frame(a, got);
	CHECK(same_frame(got, gn, want, wn), "runc got the rewritten Create; containerd its answer");
	CHECK(quiet_for(a, 150), "and nothing else");
	n = task_request(in, 13, "State", "ctr-2");
	CHECK(roundtrip(a, in, n, in, n, 0) == 0 && quiet_for(n1, 50), "State ctr-2 goes to runc");

	/* placed=3 (a sandbox the daemon wraps): the daemon's answer is containerd's;
	 * the task's later requests go straight to runc, but its Delete to the daemon. */
	create_payload_for(&payload, "sbx-3", 1, "/b3");
	sn = request(sent, 201, "containerd.task.v2.Task", "Create", &payload);
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "Create sbx-3 to the daemon");
	n = daemon_answer(in, 201, &pid, 3);
	CHECK(write_full(n1, in, n) == 0, "answer placed=3");
	wn = daemon_answer(want, 201, &pid, 0);
	CHECK(same_frame(got, read_frame(a, got), want, wn), "containerd gets the daemon's answer without field 15");
	{
		static const char *const direct[] = { "Start", "State", "Kill", "Wait", "Stats", "Connect" };
		uint32_t stream = 203;
		size_t i;

		for (i = 0; i < sizeof(direct) / sizeof(direct[0]); i++, stream += 2) {
			n = task_request(in, stream, direct[i], "sbx-3");
			CHECK(roundtrip(a, in, n, in, n, 0) == 0, "%s sbx-3 goes to runc", direct[i]);
		}
		CHECK(quiet_for(n1, 100), "the daemon saw none of them");
		sn = task_request(sent, stream, "Delete", "sbx-3");
		CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "Delete sbx-3 reaches the daemon");
		n = daemon_answer(in, stream, &pid, 0);
		CHECK(write_full(n1, in, n) == 0 && same_frame(got, read_frame(a, got), in, n), "its answer reaches containerd");
	}

	/* runc's large answer and the daemon's interleave only at frame boundaries. */
	{
		struct writer w;
		pthread_t t;
		size_t big, small, i, seen_big = 0, seen_small = 0;

		payload.n = 0;
		put_str(&payload, 1, "ctr-other");
		memset(want, 'y', 1 << 20);
		put_bytes(&payload, 7, want, 1 << 20);
		big = request(in, 15, "containerd.task.v2.Task", "Exec", &payload);
		small = task_request(in + big, 17, "State", "ctr-1");
		w = (struct writer){ a, in, big + small, 0 };
		CHECK(pthread_create(&t, NULL, write_in_background, &w) == 0, "writer thread");
		gn = read_frame(n1, got);
		CHECK(gn == small && memcmp(got, in + big, small) == 0, "State ctr-1 at the daemon");
		n = daemon_answer(sent, 17, &pid, 0);
		CHECK(write_full(n1, sent, n) == 0, "daemon answers during runc's 1 MiB answer");
		for (i = 0; i < 2; i++) {
			gn = read_frame(a, got);
			if (gn == big && stream_of(got) == 15 && memcmp(got + 10, in + 10, big - 10) == 0)
				seen_big++;
			else if (same_frame(got, gn, sent, n))
				seen_small++;
		}
		pthread_join(t, NULL);
		CHECK(seen_big == 1 && seen_small == 1, "both frames whole (%zu, %zu)", seen_big, seen_small);
	}

	/* A second containerd connection: the route table is the pod's. */
	b = dial(proxy_path);
	sn = task_request(sent, 1, "State", "ctr-1");
	CHECK(write_full(b, sent, sn) == 0, "State ctr-1 on another connection");
	n2 = accept_within(node, 2000);
	CHECK(n2 >= 0 && daemon_attach(n2) == 0, "its own daemon connection, Attach first");
	CHECK(same_frame(got, read_frame(n2, got), sent, sn), "State ctr-1 reaches the daemon");
	n = daemon_answer(in, 1, &pid, 0);
	CHECK(write_full(n2, in, n) == 0 && same_frame(got, read_frame(b, got), in, n), "answered on that connection");

	/* Requests in flight when the daemon dies. */
	wn = task_request(want, 3, "Wait", "ctr-1"); /* the Wait, kept to compare */
	CHECK(write_full(b, want, wn) == 0 && same_frame(got, read_frame(n2, got), want, wn), "Wait reaches the daemon");
	sn = task_request(sent, 19, "State", "ctr-1");
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "State in flight");
	create_payload_for(&payload, "ctr-4", 1, "/b4");
	sn = request(sent, 21, "containerd.task.v2.Task", "Create", &payload);
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "Create in flight");
	close(n1);
	close(n2);
	close(node);
	unlink(node_path);
	{
		int seen = 0, i;

		for (i = 0; i < 2; i++) {
			gn = read_frame(a, got);
			r = status_of(got, gn, message, sizeof(message));
			if (r == 14 && strstr(message, node_path) && strstr(message, "retry") && (stream_of(got) == 19 || stream_of(got) == 21))
				seen |= stream_of(got) == 19 ? 1 : 2;
		}
		CHECK(seen == 3, "in-flight State and Create answered UNAVAILABLE (%d: %s)", seen, message);
	}
	CHECK(quiet_for(b, 150), "the in-flight Wait is held, not answered");

	/* During the outage. */
	n = task_request(in, 5, "State", "ctr-1");
	CHECK(write_full(b, in, n) == 0, "State during the outage");
	gn = read_frame(b, got);
	r = status_of(got, gn, message, sizeof(message));
	CHECK(stream_of(got) == 5 && r == 14 && strstr(message, "the HeteroPod node daemon is not running") && strstr(message, node_path),
	      "UNAVAILABLE at once (%d: %s)", r, message);
	create_payload_for(&payload, "ctr-3", 1, "/b3");
	n = request(in, 7, "containerd.task.v2.Task", "Create", &payload);
	create_expected_for(&expected, "ctr-3", "/b3", runc, (size_t)rlen);
	wn = request(sent, 7, "containerd.task.v2.Task", "Create", &expected);
	CHECK(roundtrip(b, in, n, sent, wn, 0) == 0, "prefer: Create goes to runc, rewritten");
	c = dial(proxy_path);
	n = task_request(in, 1, "Wait", "ctr-1");
	CHECK(write_full(c, in, n) == 0 && quiet_for(c, 100), "another Wait held");
	close(c); /* its held Wait goes with it */
	usleep(100000);

	/* The daemon is back: the held Wait goes again after a new Attach, its answer to containerd. */
	node = listen_unix(node_path);
	n3 = accept_within(node, 2000);
	CHECK(n3 >= 0 && daemon_attach(n3) == 0, "reconnected within 250 ms, Attach first");
	wn = task_request(want, 3, "Wait", "ctr-1");
	CHECK(same_frame(got, read_frame(n3, got), want, wn), "the held Wait, as containerd sent it");
	exited.n = 0;
	put_uint(&exited, 1, 7);
	n = daemon_answer(in, 3, &exited, 0);
	CHECK(write_full(n3, in, n) == 0 && same_frame(got, read_frame(b, got), in, n), "its answer on the original stream id");
	CHECK(accept_within(node, 600) < 0, "no connection for the closed connection's Wait");

	/* Attach refused: a queued Create counts as never sent (prefer: runc). */
	create_payload_for(&payload, "ctr-5", 1, "/b5");
	n = request(in, 23, "containerd.task.v2.Task", "Create", &payload);
	CHECK(write_full(a, in, n) == 0, "Create ctr-5");
	n4 = accept_within(node, 2000);
	gn = n4 >= 0 ? read_frame(n4, got) : 0;
	CHECK(gn > 0 && attach_ok(got, gn, &test_attach), "Attach");
	sn = status_answer(sent, 0x7fffffff, 9, "no room");
	CHECK(write_full(n4, sent, sn) == 0 && closed_by_peer(n4), "Attach refused: the proxy hangs up");
	create_expected_for(&expected, "ctr-5", "/b5", runc, (size_t)rlen);
	wn = request(want, 23, "containerd.task.v2.Task", "Create", &expected);
	wn = frame(want, 23, 2, want + 10, wn - 10);
	CHECK(same_frame(got, read_frame(a, got), want, wn), "the Create went to runc instead");
	close(n4);
	close(n3);
	close(a);
	close(b);
	pod_stop(pod);
	close(node);
	unlink(node_path);

	/* require, no daemon: Create fails with FAILED_PRECONDITION naming the socket. */
	pod = pod_start("require", runc, (size_t)rlen);
	a = dial(proxy_path);
	create_payload_for(&payload, "ctr-1", 1, "/b");
	n = request(in, 1, "containerd.task.v2.Task", "Create", &payload);
	CHECK(write_full(a, in, n) == 0, "Create under require");
	gn = read_frame(a, got);
	r = status_of(got, gn, message, sizeof(message));
	CHECK(stream_of(got) == 1 && r == 9 && strstr(message, "heteropod.io/offload-policy=require") && strstr(message, node_path) &&
		      strstr(message, strerror(ENOENT)),
	      "FAILED_PRECONDITION (%d: %s)", r, message);
	n = task_request(in, 3, "State", "ctr-1");
	CHECK(roundtrip(a, in, n, in, n, 0) == 0, "the id was never the daemon's: runc answers");
	close(a);
	pod_stop(pod);
	rmdir(dir);
}

/* ---- offload pods: containerd's stdio fifos -------------------------------- */

struct fifo {
	char path[128];
	int rd; /* containerd's read end, or -1 */
};

static void fifo_make(struct fifo *f, const char *name, int reader)
{
	snprintf(f->path, sizeof(f->path), "%s/%s", dir, name);
	CHECK(mkfifo(f->path, 0600) == 0, "mkfifo %s: %s", f->path, strerror(errno));
	f->rd = reader ? open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC) : -1;
	CHECK(!reader || f->rd >= 0, "open the read end of %s", f->path);
}

static void fifo_remove(struct fifo *f)
{
	if (f->rd >= 0)
		close(f->rd);
	unlink(f->path);
}

/*
 * 1 when a writer other than the test holds the fifo open: a write end of our
 * own comes and goes and containerd's reader sees its byte and then no EOF;
 * 0 when the reader sees EOF (nobody else has it open); -1 on an error.
 */
static int writer_held(struct fifo *f)
{
	struct pollfd p = { .fd = f->rd, .events = POLLIN };
	unsigned char b;
	int w = open(f->path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);

	if (w < 0)
		return -1;
	if (write(w, "x", 1) != 1) {
		close(w);
		return -1;
	}
	close(w);
	if (read(f->rd, &b, 1) != 1)
		return -1;
	if (poll(&p, 1, 100) == 0)
		return 1;
	return read(f->rd, &b, 1) == 0 ? 0 : -1;
}

/* Whether containerd's reader sees EOF within `ms`: the last writer let go. */
static int eof_within(struct fifo *f, int ms)
{
	struct pollfd p = { .fd = f->rd, .events = POLLIN };
	unsigned char b;

	return poll(&p, 1, ms) == 1 && read(f->rd, &b, 1) == 0;
}

/* CreateTaskRequest { id = 1, bundle = 2, terminal = 4, stdout = 6, stderr = 7 } */
static void create_stdio(struct msg *m, const char *id, const char *out, const char *err, int terminal)
{
	m->n = 0;
	put_str(m, 1, id);
	put_str(m, 2, "/run/containerd/io.containerd.runtime.v2.task/k8s.io/ctr");
	if (terminal)
		put_uint(m, 4, 1);
	if (out)
		put_str(m, 6, out);
	if (err)
		put_str(m, 7, err);
}

/* ExecProcessRequest { id = 1, exec_id = 2, stdout = 5, stderr = 6, spec = 7 } */
static void exec_stdio(struct msg *m, const char *id, const char *exec_id, const char *out, const char *err)
{
	static struct msg any;

	m->n = any.n = 0;
	put_str(m, 1, id);
	put_str(m, 2, exec_id);
	put_str(m, 5, out);
	put_str(m, 6, err);
	put_str(&any, 1, "types.containerd.io/opencontainers/runtime-spec/1/Process");
	put_str(&any, 2, "{\"args\":[\"sh\",\"-c\",\"date\"],\"cwd\":\"/\"}");
	put_bytes(m, 7, any.b, any.n);
}

/* WaitRequest or DeleteRequest { id = 1, exec_id = 2 } */
static size_t process_request(unsigned char *out, uint32_t stream, const char *method, const char *id, const char *exec_id)
{
	static struct msg m;

	m.n = 0;
	put_str(&m, 1, id);
	if (exec_id)
		put_str(&m, 2, exec_id);
	return request(out, stream, "containerd.task.v2.Task", method, &m);
}

/* containerd sends `sent` on `a`; the daemon on `d` gets it unchanged and answers
 * `answer`; containerd gets that answer. */
static int daemon_call(int a, int d, const unsigned char *sent, size_t sn, const unsigned char *answer, size_t an)
{
	static unsigned char got[1 << 16];

	if (write_full(a, sent, sn) < 0 || !same_frame(got, read_frame(d, got), sent, sn))
		return -1;
	if (write_full(d, answer, an) < 0)
		return -2;
	return same_frame(got, read_frame(a, got), answer, an) ? 0 : -3;
}

static void test_stdio(void)
{
	static unsigned char got[1 << 16], sent[1 << 16], ans[1 << 16];
	static struct msg pid, exited;
	struct fifo c1out, c1err, e1out, e1err, e2out, e2err, e3out, e3err, nr, rout, rerr, tout, terr;
	char missing[128];
	int node, n1, n2, a, b;
	size_t sn, an, gn;
	struct pod pod;

	strcpy(dir, "/tmp/hp-proxy-test-XXXXXX");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		exit(1);
	}
	snprintf(proxy_path, sizeof(proxy_path), "%s/proxy.sock", dir);
	snprintf(runc_path, sizeof(runc_path), "%s/runc.sock", dir);
	snprintf(node_path, sizeof(node_path), "%s/node.sock", dir);
	snprintf(missing, sizeof(missing), "%s/no-such-fifo", dir);
	node = listen_unix(node_path);
	pod = pod_start("prefer", NULL, 0);
	/* made after the fork: only the test holds these */
	fifo_make(&c1out, "c1-out", 1);
	fifo_make(&c1err, "c1-err", 1);
	fifo_make(&e1out, "e1-out", 1);
	fifo_make(&e1err, "e1-err", 1);
	fifo_make(&e2out, "e2-out", 1);
	fifo_make(&e2err, "e2-err", 1);
	fifo_make(&e3out, "e3-out", 1);
	fifo_make(&e3err, "e3-err", 1);
	fifo_make(&nr, "no-reader", 0);
	fifo_make(&rout, "r-out", 1);
	fifo_make(&rerr, "r-err", 1);
	fifo_make(&tout, "t-out", 1);
	fifo_make(&terr, "t-err", 1);
	a = dial(proxy_path);
	CHECK(a >= 0, "connect to the proxy");
	pid.n = 0;
	put_uint(&pid, 1, 4242);
	CHECK(writer_held(&c1out) == 0, "before Create, nobody holds ctr-1's stdout");

	/* Create placed=1: the proxy holds a write end of stdout and stderr. */
	create_stdio(&payload, "ctr-1", c1out.path, c1err.path, 0);
	sn = request(sent, 1, "containerd.task.v2.Task", "Create", &payload);
	CHECK(write_full(a, sent, sn) == 0, "send Create ctr-1");
	n1 = accept_within(node, 2000);
	CHECK(n1 >= 0 && daemon_attach(n1) == 0, "Attach");
	CHECK(same_frame(got, read_frame(n1, got), sent, sn), "the daemon gets Create ctr-1");
	an = daemon_answer(ans, 1, &pid, 1);
	CHECK(write_full(n1, ans, an) == 0, "answer placed=1");
	an = daemon_answer(ans, 1, &pid, 0);
	CHECK(same_frame(got, read_frame(a, got), ans, an), "containerd gets the answer");
	CHECK(writer_held(&c1out) == 1 && writer_held(&c1err) == 1, "the proxy holds ctr-1's stdout and stderr");

	/* Execs answered OK: theirs too; one the daemon refuses: nothing. */
	exec_stdio(&payload, "ctr-1", "e1", e1out.path, e1err.path);
	sn = request(sent, 3, "containerd.task.v2.Task", "Exec", &payload);
	an = daemon_answer(ans, 3, NULL, 0);
	CHECK(daemon_call(a, n1, sent, sn, ans, an) == 0, "Exec e1 answered");
	exec_stdio(&payload, "ctr-1", "e2", e2out.path, e2err.path);
	sn = request(sent, 5, "containerd.task.v2.Task", "Exec", &payload);
	an = daemon_answer(ans, 5, NULL, 0);
	CHECK(daemon_call(a, n1, sent, sn, ans, an) == 0, "Exec e2 answered");
	exec_stdio(&payload, "ctr-1", "e3", e3out.path, e3err.path);
	sn = request(sent, 7, "containerd.task.v2.Task", "Exec", &payload);
	an = status_answer(ans, 7, 6, "exec e3: already exists");
	CHECK(daemon_call(a, n1, sent, sn, ans, an) == 0, "Exec e3 refused");
	CHECK(writer_held(&e1out) == 1 && writer_held(&e1err) == 1 && writer_held(&e2out) == 1 && writer_held(&e2err) == 1,
	      "the proxy holds the execs' fifos");
	CHECK(writer_held(&e3out) == 0 && writer_held(&e3err) == 0, "not those of an Exec the daemon refused");

	/* A Wait that fails lets nothing go. */
	sn = process_request(sent, 9, "Wait", "ctr-1", "e2");
	an = status_answer(ans, 9, 4, "context deadline exceeded");
	CHECK(daemon_call(a, n1, sent, sn, ans, an) == 0, "Wait e2 fails");
	CHECK(writer_held(&e2out) == 1, "e2's fifos still held");

	/* The daemon dies with Wait(ctr-1, e1) in flight: the Wait is held, and so are the fifos. */
	sn = process_request(sent, 11, "Wait", "ctr-1", "e1");
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "Wait e1 reaches the daemon");
	close(n1);
	CHECK(quiet_for(a, 150), "the Wait is held");
	CHECK(!eof_within(&c1out, 100) && !eof_within(&e1out, 0) && !eof_within(&e1err, 0), "no EOF when the daemon dies");
	CHECK(writer_held(&c1out) == 1 && writer_held(&c1err) == 1 && writer_held(&e1out) == 1 && writer_held(&e2err) == 1,
	      "the proxy holds every fifo while the daemon is down");

	/* The daemon is back: the held Wait's OK answer lets e1's fifos go, and only them. */
	n2 = accept_within(node, 2000);
	CHECK(n2 >= 0 && daemon_attach(n2) == 0, "reconnected, Attach");
	CHECK(same_frame(got, read_frame(n2, got), sent, sn), "the held Wait sent again");
	exited.n = 0;
	put_uint(&exited, 2, 0);
	an = daemon_answer(ans, 11, &exited, 0);
	CHECK(write_full(n2, ans, an) == 0 && same_frame(got, read_frame(a, got), ans, an), "containerd gets its answer");
	CHECK(eof_within(&e1out, 1000) && eof_within(&e1err, 1000), "e1's readers see EOF");
	CHECK(writer_held(&c1out) == 1 && writer_held(&c1err) == 1 && writer_held(&e2out) == 1 && writer_held(&e2err) == 1,
	      "the init process's and e2's still held");

	/* Delete of the task, on another containerd connection: the rest. */
	b = dial(proxy_path);
	sn = process_request(sent, 1, "Delete", "ctr-1", NULL);
	CHECK(write_full(b, sent, sn) == 0, "Delete ctr-1 on another connection");
	n1 = accept_within(node, 2000);
	CHECK(n1 >= 0 && daemon_attach(n1) == 0 && same_frame(got, read_frame(n1, got), sent, sn), "Delete reaches the daemon");
	an = daemon_answer(ans, 1, &exited, 0);
	CHECK(write_full(n1, ans, an) == 0 && same_frame(got, read_frame(b, got), ans, an), "Delete answered");
	CHECK(eof_within(&c1out, 1000) && eof_within(&c1err, 1000) && eof_within(&e2out, 1000) && eof_within(&e2err, 1000),
	      "Delete lets the init process's and e2's fifos go");

	/* A fifo without a reader, a path that does not exist: Create is answered as ever. */
	create_stdio(&payload, "ctr-2", nr.path, missing, 0);
	sn = request(sent, 13, "containerd.task.v2.Task", "Create", &payload);
	an = daemon_answer(ans, 13, &pid, 1);
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n2, got), sent, sn), "Create ctr-2 reaches the daemon");
	CHECK(write_full(n2, ans, an) == 0, "answer placed=1");
	an = daemon_answer(ans, 13, &pid, 0);
	CHECK(same_frame(got, read_frame(a, got), ans, an), "Create ctr-2 answered normally");
	nr.rd = open(nr.path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	CHECK(nr.rd >= 0 && writer_held(&nr) == 0, "nothing held for it");

	/* placed=2: runc's task, nothing opened. */
	create_stdio(&payload, "ctr-3", rout.path, rerr.path, 0);
	sn = request(sent, 15, "containerd.task.v2.Task", "Create", &payload);
	an = daemon_answer(ans, 15, NULL, 2);
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n2, got), sent, sn), "Create ctr-3 reaches the daemon");
	CHECK(write_full(n2, ans, an) == 0, "answer placed=2");
	gn = read_frame(a, got);
	CHECK(gn == sn && stream_of(got) == 15 && got[8] == 2, "runc answers Create ctr-3");
	CHECK(writer_held(&rout) == 0 && writer_held(&rerr) == 0, "nothing held for a runc task");

	/* A terminal: stdout only; held until the proxy exits. */
	create_stdio(&payload, "ctr-4", tout.path, terr.path, 1);
	sn = request(sent, 17, "containerd.task.v2.Task", "Create", &payload);
	an = daemon_answer(ans, 17, &pid, 1);
	CHECK(write_full(a, sent, sn) == 0 && same_frame(got, read_frame(n2, got), sent, sn), "Create ctr-4 reaches the daemon");
	CHECK(write_full(n2, ans, an) == 0, "answer placed=1");
	an = daemon_answer(ans, 17, &pid, 0);
	CHECK(same_frame(got, read_frame(a, got), ans, an), "Create ctr-4 answered");
	CHECK(writer_held(&tout) == 1 && writer_held(&terr) == 0, "a terminal's stdout held, its stderr not");

	close(a);
	close(b);
	close(n1);
	close(n2);
	pod_stop(pod);
	CHECK(eof_within(&tout, 1000), "the proxy's exit lets the rest go");
	fifo_remove(&c1out);
	fifo_remove(&c1err);
	fifo_remove(&e1out);
	fifo_remove(&e1err);
	fifo_remove(&e2out);
	fifo_remove(&e2err);
	fifo_remove(&e3out);
	fifo_remove(&e3err);
	fifo_remove(&nr);
	fifo_remove(&rout);
	fifo_remove(&rerr);
	fifo_remove(&tout);
	fifo_remove(&terr);
	close(node);
	unlink(node_path);
	rmdir(dir);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	test_rewrite();
	test_node_messages();
	test_relay();
	test_offload();
	test_stdio();
	if (failures) {
		fprintf(stderr, "%d proxy test(s) failed\n", failures);
		return 1;
	}
	printf("all proxy tests passed\n");
	return 0;
}
