/*
 * Single-producer single-consumer ring of variable-size frames, and the elastic
 * notification between its two ends. All the concurrency of libxpu lives here.
 *
 * A frame is an 8-byte record header {len, flags} followed by len bytes, padded
 * to 8. A frame never wraps: when it does not fit before the end of the data
 * area the producer writes a WRAP record there and puts the frame at offset 0.
 *
 * Ordering contract:
 *  - producer: writes frame bytes and record headers, then store-release head;
 *    consumer: load-acquire head, then reads them.
 *  - consumer: reads a frame, then store-release tail; producer: load-acquire
 *    tail before it overwrites the released bytes.
 *  - sleep/wake (Dekker): the sleeper stores its mark, full fence, re-checks the
 *    index; the waker publishes the index, full fence, reads the mark. At least
 *    one of them sees the other's store, so a wake-up is never lost.
 *
 * Each side keeps a process-local struct xpu_ring; only the producer's or the
 * consumer's half of it is used by a given thread.
 */
#ifndef XPU_RING_H
#define XPU_RING_H

#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "layout.h"
#include "xpu.h"

#define XR_REC 8u
#define XR_WRAP 1u

struct xr_rec {
	uint32_t len;
	uint32_t flags;
};

struct xpu_ring {
	struct xpu_ring_ctrl *c;
	uint8_t *data;
	uint32_t size;
	/* producer-local */
	uint64_t head;
	uint64_t tail_cache;
	uint32_t skip; /* wrap padding in front of the current reservation */
	/* consumer-local */
	uint64_t tail;
	uint64_t head_cache;
	uint32_t cur_span;
};

/* Adaptive spin: the time a waiter spins before it sleeps grows while spinning
 * pays off and shrinks when it does not. */
struct xpu_spin {
	uint64_t budget_ns;
	uint64_t max_ns;
};

#define XPU_SPIN_MIN_NS 1000u
#define XPU_SPIN_START_NS 20000u
#define XPU_SPIN_MAX_NS 100000u
/* Spin iterations between offers of the CPU (sched_yield) in xr_wait. */
#define XR_SPIN_YIELD 16u

static inline void xr_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

static inline uint64_t xr_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Statistics have a single writer each; a relaxed store keeps readers in other
 * processes from seeing a torn value. */
static inline void xr_stat_add(uint64_t *p, uint64_t v)
{
	__atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}

/* Shared (not private) futexes: the two ends live in different processes. */
static inline int xr_futex_wait(uint32_t *word, uint32_t val, int timeout_ms)
{
	struct timespec ts, *tp = NULL;
	if (timeout_ms >= 0) {
		ts.tv_sec = timeout_ms / 1000;
		ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
		tp = &ts;
	}
	return (int)syscall(SYS_futex, word, FUTEX_WAIT, val, tp, NULL, 0);
}

static inline void xr_futex_wake(uint32_t *word)
{
	syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static inline uint32_t xr_span(uint32_t len)
{
	return XR_REC + ((len + 7u) & ~7u);
}

static inline void xr_init(struct xpu_ring *r, struct xpu_ring_ctrl *c, uint8_t *data, uint32_t size)
{
	memset(r, 0, sizeof(*r));
	r->c = c;
	r->data = data;
	r->size = size;
	/* acquire: pairs with the other end's release of the same index, so a side
	 * that takes over from a dead process starts from a consistent position. */
	r->head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
	r->tail_cache = __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE);
	r->tail = r->tail_cache;
	r->head_cache = r->head;
}

/* Producer: room for a frame of up to maxlen bytes, or NULL when the ring is
 * too full. The frame is invisible to the consumer until xr_commit. */
static inline void *xr_reserve(struct xpu_ring *r, uint32_t maxlen)
{
	uint32_t need = xr_span(maxlen);
	uint32_t pos = (uint32_t)(r->head & (r->size - 1));
	uint32_t contig = r->size - pos;
	uint32_t skip = contig < need ? contig : 0;
	uint64_t want = (uint64_t)skip + need;

	if (r->head + want - r->tail_cache > r->size) {
		/* acquire: the consumer's reads of the bytes it released are done
		 * before we overwrite them. */
		r->tail_cache = __atomic_load_n(&r->c->tail, __ATOMIC_ACQUIRE);
		if (r->head + want - r->tail_cache > r->size)
			return NULL;
	}
	r->skip = skip;
	return r->data + (skip ? 0 : pos) + XR_REC;
}

/* Producer: publish the reserved frame with its actual length. */
static inline void xr_commit(struct xpu_ring *r, uint32_t len)
{
	uint32_t pos = (uint32_t)(r->head & (r->size - 1));
	struct xr_rec *rec;

	if (r->skip) {
		rec = (struct xr_rec *)(r->data + pos);
		rec->len = 0;
		rec->flags = XR_WRAP;
		pos = 0;
	}
	rec = (struct xr_rec *)(r->data + pos);
	rec->len = len;
	rec->flags = 0;
	r->head += r->skip + xr_span(len);
	r->skip = 0;
	/* release: the frame bytes and both record headers are visible before the
	 * index that publishes them. */
	__atomic_store_n(&r->c->head, r->head, __ATOMIC_RELEASE);
}

/* Producer convenience: copy a frame in. -EAGAIN when full, -EMSGSIZE when
 * larger than XPU_FRAME_MAX. */
static inline int xr_push(struct xpu_ring *r, const void *buf, uint32_t len)
{
	void *dst;
	if (len > XPU_FRAME_MAX)
		return -EMSGSIZE;
	dst = xr_reserve(r, len);
	if (!dst)
		return -EAGAIN;
	memcpy(dst, buf, len);
	xr_commit(r, len);
	return 0;
}

/* Consumer: the oldest frame, left in place until xr_release. -EAGAIN when
 * empty; -EBADMSG when the ring holds a record no honest producer writes. */
static inline int xr_peek(struct xpu_ring *r, const void **buf, uint32_t *len)
{
	uint32_t pos;
	const struct xr_rec *rec;

	if (r->tail == r->head_cache) {
		/* acquire: pairs with xr_commit's release of head. */
		r->head_cache = __atomic_load_n(&r->c->head, __ATOMIC_ACQUIRE);
		if (r->tail == r->head_cache)
			return -EAGAIN;
	}
	pos = (uint32_t)(r->tail & (r->size - 1));
	rec = (const struct xr_rec *)(r->data + pos);
	if (rec->flags & XR_WRAP) {
		r->tail += r->size - pos; /* local only: released with the frame */
		pos = 0;
		rec = (const struct xr_rec *)r->data;
		if (r->tail == r->head_cache)
			return -EBADMSG;
	}
	if (rec->len > XPU_FRAME_MAX || pos + xr_span(rec->len) > r->size ||
	    r->tail + xr_span(rec->len) > r->head_cache)
		return -EBADMSG;
	*len = rec->len;
	*buf = rec + 1;
	r->cur_span = xr_span(rec->len);
	return 0;
}

/* Consumer: give the frame returned by xr_peek back to the producer. */
static inline void xr_release(struct xpu_ring *r)
{
	r->tail += r->cur_span;
	r->cur_span = 0;
	/* release: our reads of the frame complete before the producer may reuse
	 * its bytes (pairs with the acquire in xr_reserve). */
	__atomic_store_n(&r->c->tail, r->tail, __ATOMIC_RELEASE);
}

/* Consumer convenience: copy the oldest frame out. Returns its length, -EAGAIN
 * when empty, -ENOBUFS when cap is too small (the frame stays). */
static inline int xr_pop(struct xpu_ring *r, void *buf, uint32_t cap)
{
	const void *src;
	uint32_t len;
	int rc = xr_peek(r, &src, &len);
	if (rc < 0)
		return rc;
	if (len > cap)
		return -ENOBUFS;
	memcpy(buf, src, len);
	xr_release(r);
	return (int)len;
}

static inline int xr_has_data(struct xpu_ring *r)
{
	if (r->tail != r->head_cache)
		return 1;
	r->head_cache = __atomic_load_n(&r->c->head, __ATOMIC_ACQUIRE);
	return r->tail != r->head_cache;
}

static inline int xr_has_space(struct xpu_ring *r, uint32_t maxlen)
{
	return xr_reserve(r, maxlen) != NULL;
}

static inline int xr_ready(struct xpu_ring *r, int for_space, uint32_t need)
{
	return for_space ? xr_has_space(r, need) : xr_has_data(r);
}

/* Wake the other end if it said it is asleep: for_space=0 from the producer
 * after publishing frames, for_space=1 from the consumer after releasing them.
 * Returns 1 when a futex wake was issued. */
static inline int xr_kick(struct xpu_ring *r, int for_space)
{
	uint32_t *word = for_space ? &r->c->prod_sleep : &r->c->cons_sleep;
	/* full fence: our index store (head or tail) is ordered before reading the
	 * sleep mark; pairs with the fence in xr_wait. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (__atomic_load_n(word, __ATOMIC_RELAXED) != 1)
		return 0;
	if (__atomic_exchange_n(word, 0, __ATOMIC_SEQ_CST) != 1)
		return 0;
	xr_futex_wake(word);
	if (!for_space)
		xr_stat_add(&r->c->prod.wakeups, 1);
	return 1;
}

/* Wake a waiter unconditionally, e.g. to make it notice *stop. Call after the
 * store to *stop; the waiter re-checks *stop after its fence. */
static inline void xr_interrupt(struct xpu_ring *r, int for_space)
{
	uint32_t *word = for_space ? &r->c->prod_sleep : &r->c->cons_sleep;
	__atomic_thread_fence(__ATOMIC_SEQ_CST); /* *stop before the mark */
	__atomic_store_n(word, 0, __ATOMIC_SEQ_CST);
	xr_futex_wake(word);
}

static inline void xr_spin_init(struct xpu_spin *sp, uint64_t max_ns)
{
	sp->max_ns = max_ns;
	sp->budget_ns = max_ns < XPU_SPIN_START_NS ? max_ns : XPU_SPIN_START_NS;
}

/* Change the most a waiter may spin (0: never). */
static inline void xr_spin_limit(struct xpu_spin *sp, uint64_t max_ns)
{
	sp->max_ns = max_ns;
	if (sp->budget_ns > max_ns)
		sp->budget_ns = max_ns;
	else if (sp->budget_ns == 0 && max_ns > 0)
		sp->budget_ns = max_ns < XPU_SPIN_START_NS ? max_ns : XPU_SPIN_START_NS;
}

/* Spin-phase bookkeeping, shared with the TAP reader's wait. The budget
 * doubles when spinning found work, and after a sleep that ended soon enough
 * that a longer spin would have caught it; it halves after a long sleep. It
 * never drops below XPU_SPIN_MIN_NS so that it can grow again. */
static inline void xr_spin_paid(struct xpu_spin *sp)
{
	uint64_t b = sp->budget_ns * 2;
	if (b < XPU_SPIN_MIN_NS)
		b = XPU_SPIN_MIN_NS;
	sp->budget_ns = b > sp->max_ns ? sp->max_ns : b;
}

static inline void xr_spin_slept(struct xpu_spin *sp, uint64_t slept_ns)
{
	if (slept_ns < sp->max_ns) {
		xr_spin_paid(sp);
		return;
	}
	sp->budget_ns /= 2;
	if (sp->budget_ns < XPU_SPIN_MIN_NS)
		sp->budget_ns = sp->max_ns < XPU_SPIN_MIN_NS ? sp->max_ns : XPU_SPIN_MIN_NS;
}

/* Wait until the ring has data (for_space=0, consumer) or room for a frame of
 * need bytes (for_space=1, producer). Returns 1 when ready, 0 when *stop was
 * set or timeout_ms passed (the caller re-checks its own conditions).
 * ELASTIC spins adaptively, then sleeps on the futex; POLL only spins. */
static inline int xr_wait(struct xpu_ring *r, int for_space, uint32_t need, int mode,
			  struct xpu_spin *sp, const uint32_t *stop, int timeout_ms)
{
	uint32_t *word = for_space ? &r->c->prod_sleep : &r->c->cons_sleep;
	uint64_t t0, now;
	unsigned i;
	int ready;

	if (xr_ready(r, for_space, need))
		return 1;
	if (for_space)
		xr_stat_add(&r->c->prod.full_waits, 1);
	t0 = xr_now_ns();
	if (mode == XPU_MODE_POLL) {
		for (i = 1;; i++) {
			if (xr_ready(r, for_space, need))
				return 1;
			if (__atomic_load_n(stop, __ATOMIC_RELAXED))
				return 0;
			if ((i & 1023) == 0 && xr_now_ns() - t0 >= (uint64_t)timeout_ms * 1000000ull)
				return 0;
			xr_cpu_relax();
		}
	}

	/* A waiter that must not keep the threads it waits for off a core (one
	 * CPU for all of them) has a budget of 0 and does not spin at all. With
	 * more CPUs than one, the producer may still be queued behind this very
	 * spinner (more runnable threads than CPUs), so the spinner offers its
	 * CPU every XR_SPIN_YIELD iterations: without these offers, here and in
	 * the TAP reader, bench-xpu's elastic half round trip on two vCPUs went
	 * from 21 to 75 us. A yield with nothing else runnable returns at once. */
	for (i = 1; sp->budget_ns > 0; i++) {
		if (xr_ready(r, for_space, need)) {
			xr_spin_paid(sp);
			if (!for_space)
				xr_stat_add(&r->c->cons.spins, 1);
			return 1;
		}
		if (__atomic_load_n(stop, __ATOMIC_RELAXED))
			return 0;
		if ((i & 15) == 0) {
			now = xr_now_ns();
			if (now - t0 >= sp->budget_ns)
				break;
		}
		if ((i % XR_SPIN_YIELD) == 0)
			sched_yield();
		else
			xr_cpu_relax();
	}

	__atomic_store_n(word, 1, __ATOMIC_SEQ_CST);
	/* full fence: the sleep mark is visible before we re-read the index; pairs
	 * with the fence in xr_kick (and xr_interrupt for *stop). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	ready = xr_ready(r, for_space, need);
	if (!ready && !__atomic_load_n(stop, __ATOMIC_RELAXED)) {
		if (!for_space)
			xr_stat_add(&r->c->cons.sleeps, 1);
		/* Returns at once when a waker already cleared the mark. The
		 * clock is read only for a budget that can grow. */
		t0 = sp->max_ns ? xr_now_ns() : 0;
		xr_futex_wait(word, 1, timeout_ms);
		ready = xr_ready(r, for_space, need);
		if (sp->max_ns)
			xr_spin_slept(sp, xr_now_ns() - t0);
	}
	__atomic_store_n(word, 0, __ATOMIC_RELAXED);
	return ready;
}

#endif
