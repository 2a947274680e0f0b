/*
 * Ring tests for libxpu (src/xpu/ring.h), run by test/unit/xpu-rings.test.ts in
 * three builds: plain -O2, AddressSanitizer and ThreadSanitizer.
 *
 *   xpu-test-rings [--frames N] [--roundtrips N] [--threads]
 *
 * --threads runs the two-party tests with two threads of one process instead
 * of two processes (ThreadSanitizer sees only threads). Every test waits with
 * untimed futex sleeps, so a lost wake-up hangs, and the watchdog turns the
 * hang into a failure.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ring.h"

#define WATCHDOG_S 150

static int failures;

#define CHECK(cond, ...)                                                     \
	do {                                                                 \
		if (!(cond)) {                                               \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                        \
			fprintf(stderr, "\n");                               \
			failures++;                                          \
			return;                                              \
		}                                                            \
	} while (0)

/* A ring's control block and data in one shared anonymous mapping, so that a
 * forked child shares it as two processes share a window. */
struct shared_ring {
	struct xpu_ring_ctrl ctrl;
	uint64_t result[4]; /* producer's checksum and count, for the consumer */
	uint8_t data[];
};

static struct shared_ring *ring_new(uint32_t size)
{
	void *m = mmap(NULL, sizeof(struct shared_ring) + size, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	return m;
}

static void ring_free(struct shared_ring *s, uint32_t size)
{
	munmap(s, sizeof(struct shared_ring) + size);
}

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64* */
	uint64_t x = *s;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 2685821657736338717ull;
}

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 1099511628211ull;
	}
	return h;
}

static uint8_t *pattern; /* XPU_FRAME_MAX + 256 bytes of a fixed pattern */

static const uint8_t *pattern_for(uint32_t len)
{
	return pattern + (len % 251);
}

/* Frames of every size from 0 to XPU_FRAME_MAX, alone and two at a time, so
 * that large frames meet the end of the ring at many offsets. */
static void test_every_size(void)
{
	const uint32_t size = XPU_RING_MIN;
	struct shared_ring *s = ring_new(size);
	struct xpu_ring p, c;
	static uint8_t out[XPU_FRAME_MAX];
	uint64_t wraps_before;

	xr_init(&p, &s->ctrl, s->data, size);
	xr_init(&c, &s->ctrl, s->data, size);
	for (uint32_t len = 0; len <= XPU_FRAME_MAX; len++) {
		CHECK(xr_push(&p, pattern_for(len), len) == 0, "push len %u", len);
		if (len & 1) {
			uint32_t l2 = XPU_FRAME_MAX - len;
			CHECK(xr_push(&p, pattern_for(l2), l2) == 0, "push second len %u", l2);
			CHECK(xr_pop(&c, out, sizeof(out)) == (int)len, "pop len %u", len);
			CHECK(memcmp(out, pattern_for(len), len) == 0, "content len %u", len);
			CHECK(xr_pop(&c, out, sizeof(out)) == (int)l2, "pop second len %u", l2);
			CHECK(memcmp(out, pattern_for(l2), l2) == 0, "content len %u", l2);
		} else {
			CHECK(xr_pop(&c, out, sizeof(out)) == (int)len, "pop len %u", len);
			CHECK(memcmp(out, pattern_for(len), len) == 0, "content len %u", len);
		}
		CHECK(xr_pop(&c, out, sizeof(out)) == -EAGAIN, "empty after len %u", len);
	}
	wraps_before = p.head / size;
	CHECK(wraps_before > 1000, "expected many wrap-arounds, got %llu", (unsigned long long)wraps_before);
	CHECK(xr_push(&p, pattern, XPU_FRAME_MAX + 1) == -EMSGSIZE, "oversize frame refused");
	/* A frame larger than the caller's buffer stays in the ring. */
	CHECK(xr_push(&p, pattern, 100) == 0, "push 100");
	CHECK(xr_pop(&c, out, 99) == -ENOBUFS, "small buffer");
	CHECK(xr_pop(&c, out, 100) == 100, "pop after ENOBUFS");
	ring_free(s, size);
	printf("ok every size 0..%u (%llu wrap-arounds)\n", XPU_FRAME_MAX, (unsigned long long)wraps_before);
}

/* Many small and medium frames with the consumer lagging behind, so the wrap
 * record lands at every 8-byte offset near the end of the ring. */
static void test_wrap_around(void)
{
	const uint32_t size = XPU_RING_MIN;
	struct shared_ring *s = ring_new(size);
	struct xpu_ring p, c;
	static uint8_t out[XPU_FRAME_MAX];
	uint64_t rs = 42, sent = 0, got = 0;
	uint32_t lens[64];

	xr_init(&p, &s->ctrl, s->data, size);
	xr_init(&c, &s->ctrl, s->data, size);
	for (int round = 0; round < 200000; round++) {
		uint32_t len = (uint32_t)(rng_next(&rs) % 3001);
		if (xr_push(&p, pattern_for(len + (uint32_t)sent), len) == 0) {
			lens[sent % 64] = len;
			sent++;
		}
		/* keep up to 48 frames in flight */
		while (sent - got > 48 || (round & 7) == 0) {
			uint32_t want = lens[got % 64];
			int n = xr_pop(&c, out, sizeof(out));
			if (n == -EAGAIN)
				break;
			CHECK(n == (int)want, "frame %llu: len %d, want %u", (unsigned long long)got, n, want);
			CHECK(memcmp(out, pattern_for(want + (uint32_t)got), want) == 0, "frame %llu content",
			      (unsigned long long)got);
			got++;
		}
	}
	CHECK(p.head / size > 100, "wrapped only %llu times", (unsigned long long)(p.head / size));
	ring_free(s, size);
	printf("ok wrap-around (%llu frames, %llu wraps)\n", (unsigned long long)sent,
	       (unsigned long long)(p.head / size));
}

/* A full ring refuses frames (back-pressure) until the consumer frees room,
 * and loses nothing. */
static void test_backpressure(void)
{
	const uint32_t size = XPU_RING_MIN, len = 1000;
	struct shared_ring *s = ring_new(size);
	struct xpu_ring p, c;
	uint8_t out[1000];
	uint32_t n = 0, expect = size / xr_span(len);

	xr_init(&p, &s->ctrl, s->data, size);
	xr_init(&c, &s->ctrl, s->data, size);
	for (;;) {
		uint32_t seq = n;
		memset(out, 0, sizeof(out));
		memcpy(out, &seq, sizeof(seq));
		if (xr_push(&p, out, len) == -EAGAIN)
			break;
		n++;
		CHECK(n <= expect, "ring accepted more than fits: %u", n);
	}
	CHECK(n >= expect - 1, "ring full too early: %u of %u", n, expect);
	CHECK(!xr_has_space(&p, len), "full ring reports space");
	/* Free one frame: exactly one more fits (it may need the wrap). */
	CHECK(xr_pop(&c, out, sizeof(out)) == (int)len, "pop first");
	CHECK(xr_push(&p, out, 8) == 0 || xr_pop(&c, out, sizeof(out)) == (int)len, "room after pop");
	/* Drain everything in order. */
	uint32_t seen = 1, seq;
	int r;
	while ((r = xr_pop(&c, out, sizeof(out))) >= 0) {
		if (r == (int)len) {
			memcpy(&seq, out, sizeof(seq));
			CHECK(seq == seen, "order: got %u want %u", seq, seen);
			seen++;
		}
	}
	CHECK(r == -EAGAIN, "drained ring: %d", r);
	CHECK(seen >= n - 1, "lost frames: %u of %u", seen, n);
	ring_free(s, size);
	printf("ok full-ring back-pressure (%u frames of %u bytes fill %u)\n", n, len, size);
}

/* ---- two parties: processes (fork) or threads ---- */

struct party {
	struct shared_ring *s;
	uint32_t size;
	uint64_t frames;
	uint32_t stop; /* never set: waits are untimed */
	struct shared_ring *back; /* second ring, for ping-pong */
	int ok;
};

/* Producer of the bulk test: frames of 8..263 bytes, a sequence number in
 * front, random bytes behind; a running checksum of everything sent. */
static void *bulk_producer(void *arg)
{
	struct party *pa = arg;
	struct xpu_ring p;
	struct xpu_spin sp;
	uint64_t rs = 7, sum = 14695981039346656037ull;

	xr_init(&p, &pa->s->ctrl, pa->s->data, pa->size);
	xr_spin_init(&sp, XPU_SPIN_MAX_NS);
	for (uint64_t i = 0; i < pa->frames; i++) {
		uint64_t r = rng_next(&rs);
		uint32_t len = 8 + (uint32_t)(r % 256);
		uint8_t *buf;
		while (!(buf = xr_reserve(&p, len)))
			xr_wait(&p, 1, len, XPU_MODE_ELASTIC, &sp, &pa->stop, -1);
		memcpy(buf, &i, 8);
		for (uint32_t j = 8; j < len; j++)
			buf[j] = (uint8_t)(r >> ((j & 7) * 8)) ^ (uint8_t)j;
		sum = fnv1a(sum, buf, len);
		xr_commit(&p, len);
		if ((i & 15) == 15 || i + 1 == pa->frames)
			xr_kick(&p, 0);
	}
	__atomic_store_n(&pa->s->result[0], sum, __ATOMIC_RELEASE);
	return NULL;
}

static void *bulk_consumer(void *arg)
{
	struct party *pa = arg;
	struct xpu_ring c;
	struct xpu_spin sp;
	uint64_t sum = 14695981039346656037ull;

	pa->ok = 0;
	xr_init(&c, &pa->s->ctrl, pa->s->data, pa->size);
	xr_spin_init(&sp, XPU_SPIN_MAX_NS);
	for (uint64_t i = 0; i < pa->frames; i++) {
		const void *buf = NULL;
		uint32_t len = 0;
		uint64_t seq;
		int rc;
		while ((rc = xr_peek(&c, &buf, &len)) == -EAGAIN)
			xr_wait(&c, 0, 0, XPU_MODE_ELASTIC, &sp, &pa->stop, -1);
		if (rc < 0 || len < 8 || len > 263) {
			fprintf(stderr, "FAIL bulk: frame %llu: rc %d len %u\n", (unsigned long long)i, rc, len);
			return NULL;
		}
		memcpy(&seq, buf, 8);
		if (seq != i) {
			fprintf(stderr, "FAIL bulk: frame %llu has sequence %llu\n", (unsigned long long)i,
				(unsigned long long)seq);
			return NULL;
		}
		sum = fnv1a(sum, buf, len);
		xr_release(&c);
		if ((i & 15) == 15)
			xr_kick(&c, 1);
	}
	xr_kick(&c, 1);
	pa->s->result[1] = sum;
	pa->ok = 1;
	return NULL;
}

/* Runs producer and consumer as two processes or two threads. */
static int run_pair(void *(*prod)(void *), void *(*cons)(void *), struct party *pa, int threads)
{
	if (threads) {
		pthread_t th;
		pthread_create(&th, NULL, prod, pa);
		cons(pa);
		pthread_join(th, NULL);
		return pa->ok;
	}
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 0;
	}
	if (pid == 0) {
		alarm(WATCHDOG_S);
		prod(pa);
		_exit(0);
	}
	cons(pa);
	int st = 0;
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "FAIL producer process: status %#x\n", st);
		return 0;
	}
	return pa->ok;
}

static void test_bulk(uint64_t frames, int threads)
{
	const uint32_t size = 1u << 20;
	struct party pa = { .s = ring_new(size), .size = size, .frames = frames };
	uint64_t t0 = xr_now_ns();
	int ok = run_pair(bulk_producer, bulk_consumer, &pa, threads);
	double secs = (double)(xr_now_ns() - t0) / 1e9;
	uint64_t want = __atomic_load_n(&pa.s->result[0], __ATOMIC_ACQUIRE);

	CHECK(ok, "consumer failed");
	CHECK(want == pa.s->result[1], "checksum: sent %016llx received %016llx", (unsigned long long)want,
	      (unsigned long long)pa.s->result[1]);
	printf("ok %llu frames across two %s, checksums match (%.2f s, %.1f M frames/s; consumer sleeps %llu, producer wakeups %llu)\n",
	       (unsigned long long)frames, threads ? "threads" : "processes", secs, (double)frames / secs / 1e6,
	       (unsigned long long)pa.s->ctrl.cons.sleeps, (unsigned long long)pa.s->ctrl.prod.wakeups);
	ring_free(pa.s, size);
}

/* Sleeps until the next ping-pong message arrives; true when it carries `want`. */
static int receive_expect(struct xpu_ring *rx, struct xpu_spin *sp, uint32_t *stop, uint64_t want, const char *what)
{
	const void *b = NULL;
	uint32_t len = 0;
	uint64_t v;

	while (xr_peek(rx, &b, &len) == -EAGAIN)
		xr_wait(rx, 0, 0, XPU_MODE_ELASTIC, sp, stop, -1);
	memcpy(&v, b, 8);
	xr_release(rx);
	if (v != want)
		fprintf(stderr, "FAIL pingpong: %s %llu want %llu\n", what, (unsigned long long)v, (unsigned long long)want);
	return v == want;
}

/* Ping-pong where both ends sleep as soon as they find nothing (spin budget 0):
 * every message needs a wake-up, and the sender pauses a random while first so
 * the wake-up races the sleeper at every point of its way to sleep. */
static void pingpong(struct shared_ring *out_r, struct shared_ring *in_r, uint32_t size, uint64_t n, int initiator,
		     uint32_t *stop, int *ok)
{
	struct xpu_ring tx, rx;
	struct xpu_spin sp;
	uint64_t rs = initiator ? 99 : 77;

	*ok = 0;
	xr_init(&tx, &out_r->ctrl, out_r->data, size);
	xr_init(&rx, &in_r->ctrl, in_r->data, size);
	xr_spin_init(&sp, 0);
	for (uint64_t i = 0; i < n; i++) {
		if (!initiator && !receive_expect(&rx, &sp, stop, i, "got"))
			return;
		uint64_t pause = rng_next(&rs) % 4;
		if (pause == 1)
			sched_yield();
		else if (pause == 2)
			for (volatile int k = 0; k < (int)(rng_next(&rs) % 2000); k++)
				;
		if (xr_push(&tx, &i, 8) != 0) {
			fprintf(stderr, "FAIL pingpong: ring full\n");
			return;
		}
		xr_kick(&tx, 0);
		if (initiator && !receive_expect(&rx, &sp, stop, i, "echo"))
			return;
	}
	*ok = 1;
}

static void *pp_initiator(void *arg)
{
	struct party *pa = arg;
	int ok;
	pingpong(pa->s, pa->back, pa->size, pa->frames, 1, &pa->stop, &ok);
	pa->s->result[2] = (uint64_t)ok;
	return NULL;
}

static void *pp_responder(void *arg)
{
	struct party *pa = arg;
	pingpong(pa->back, pa->s, pa->size, pa->frames, 0, &pa->stop, &pa->ok);
	return NULL;
}

static void test_sleep_wake(uint64_t roundtrips, int threads)
{
	const uint32_t size = XPU_RING_MIN;
	struct party pa = { .s = ring_new(size), .back = ring_new(size), .size = size, .frames = roundtrips };
	uint64_t t0 = xr_now_ns();
	int ok = run_pair(pp_initiator, pp_responder, &pa, threads);
	double secs = (double)(xr_now_ns() - t0) / 1e9;
	uint64_t sleeps = pa.s->ctrl.cons.sleeps + pa.back->ctrl.cons.sleeps;
	uint64_t wakeups = pa.s->ctrl.prod.wakeups + pa.back->ctrl.prod.wakeups;

	CHECK(ok && pa.s->result[2] == 1, "ping-pong failed");
	CHECK(sleeps > 0 && wakeups > 0, "sleep path not exercised: sleeps %llu wakeups %llu",
	      (unsigned long long)sleeps, (unsigned long long)wakeups);
	/* A spin budget of 0 (SLEEP, or ELASTIC on one CPU) goes to sleep at once:
	 * no wait may be counted as saved by spinning. */
	CHECK(pa.s->ctrl.cons.spins == 0 && pa.back->ctrl.cons.spins == 0, "budget 0 spun: %llu + %llu",
	      (unsigned long long)pa.s->ctrl.cons.spins, (unsigned long long)pa.back->ctrl.cons.spins);
	printf("ok sleep/wake race: %llu round trips across two %s, no lost wake-up (%.2f s; sleeps %llu, wakeups %llu)\n",
	       (unsigned long long)roundtrips, threads ? "threads" : "processes", secs, (unsigned long long)sleeps,
	       (unsigned long long)wakeups);
	ring_free(pa.s, size);
	ring_free(pa.back, size);
}

/* The spin budget: a limit of 0 (no spinning) holds whatever happens, and a
 * limit restored later gives the budget room to grow again. */
static void test_spin_limit(void)
{
	struct xpu_spin sp;

	xr_spin_init(&sp, XPU_SPIN_MAX_NS);
	CHECK(sp.budget_ns == XPU_SPIN_START_NS, "start budget %llu", (unsigned long long)sp.budget_ns);
	xr_spin_limit(&sp, 0);
	CHECK(sp.budget_ns == 0 && sp.max_ns == 0, "limit 0: budget %llu", (unsigned long long)sp.budget_ns);
	for (int i = 0; i < 10; i++) {
		xr_spin_paid(&sp);
		xr_spin_slept(&sp, 10);
		xr_spin_slept(&sp, 10000000);
	}
	CHECK(sp.budget_ns == 0, "budget grew past a limit of 0: %llu", (unsigned long long)sp.budget_ns);
	xr_spin_limit(&sp, XPU_SPIN_MAX_NS);
	CHECK(sp.budget_ns > 0, "budget stuck at 0 after the limit came back");
	for (int i = 0; i < 20; i++)
		xr_spin_paid(&sp);
	CHECK(sp.budget_ns == XPU_SPIN_MAX_NS, "budget %llu, max %u", (unsigned long long)sp.budget_ns, XPU_SPIN_MAX_NS);
	xr_spin_limit(&sp, 5000);
	CHECK(sp.budget_ns == 5000, "lowered limit: budget %llu", (unsigned long long)sp.budget_ns);
	printf("ok spin budget limits (0: never spins)\n");
}

/* A waiter with a budget of 0 that finds nothing sleeps without spinning, and
 * a timed wait comes back when nobody wakes it. */
static void test_no_spin_wait(void)
{
	const uint32_t size = XPU_RING_MIN;
	struct shared_ring *s = ring_new(size);
	struct xpu_ring c;
	struct xpu_spin sp;
	uint32_t stop = 0;
	uint64_t t0;
	int ready;

	xr_init(&c, &s->ctrl, s->data, size);
	xr_spin_init(&sp, 0);
	t0 = xr_now_ns();
	ready = xr_wait(&c, 0, 0, XPU_MODE_ELASTIC, &sp, &stop, 20);
	CHECK(!ready, "empty ring reported ready");
	CHECK(s->ctrl.cons.sleeps == 1 && s->ctrl.cons.spins == 0, "sleeps %llu spins %llu",
	      (unsigned long long)s->ctrl.cons.sleeps, (unsigned long long)s->ctrl.cons.spins);
	CHECK(xr_now_ns() - t0 >= 15000000ull, "timed wait returned early");
	CHECK(__atomic_load_n(&s->ctrl.cons_sleep, __ATOMIC_RELAXED) == 0, "sleep mark left set");
	ring_free(s, size);
	printf("ok budget 0: a wait sleeps at once\n");
}

int main(int argc, char **argv)
{
	uint64_t frames = 10000000, roundtrips = 200000;
	int threads = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--frames") && i + 1 < argc)
			frames = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--roundtrips") && i + 1 < argc)
			roundtrips = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--threads"))
			threads = 1;
		else {
			fprintf(stderr, "usage: %s [--frames N] [--roundtrips N] [--threads]\n", argv[0]);
			return 2;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	alarm(WATCHDOG_S); /* a lost wake-up hangs; the alarm makes it a failure */
	pattern = malloc(XPU_FRAME_MAX + 256);
	for (uint32_t i = 0; i < XPU_FRAME_MAX + 256; i++)
		pattern[i] = (uint8_t)(i * 131u + 7u);

	test_spin_limit();
	test_no_spin_wait();
	test_wrap_around();
	test_every_size();
	test_backpressure();
	test_bulk(frames, threads);
	test_sleep_wake(roundtrips, threads);
	free(pattern);
	if (failures) {
		fprintf(stderr, "%d failure(s)\n", failures);
		return 1;
	}
	printf("all ring tests passed\n");
	return 0;
}
