/*
 * The window: the fixed layout shared by both ends of a link (and read by any
 * process for statistics). Every field that two processes touch is accessed with
 * __atomic builtins; each index and each futex word has a cache line of its own
 * so that the producer and the consumer do not write the same line.
 *
 *   0      struct xpu_hdr      identity, sizes, per-side state, ring control
 *   4096   ring 0 data         host -> DPU frames (ring_bytes)
 *   4096+R ring 1 data         DPU -> host frames (ring_bytes)
 *
 * Layout changes bump XPU_VERSION; reserved fields keep room for new counters.
 */
#ifndef XPU_LAYOUT_H
#define XPU_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define XPU_MAGIC 0x57585048u /* "HPXW" little-endian */
#define XPU_VERSION 1u
#define XPU_HDR_SIZE 4096u
#define XPU_CACHELINE 64

#define XPU_SIDE_FREE 0u
#define XPU_SIDE_ATTACHED 1u
#define XPU_SIDE_CLOSED 2u

#define XPU_ALIGNED __attribute__((aligned(XPU_CACHELINE)))

/* One end of the link, written only by the process that owns that side. */
struct xpu_side_hdr {
	uint32_t state;     /* XPU_SIDE_*; claimed with a compare-and-swap */
	int32_t pid;
	uint32_t mode;
	uint32_t peer_up;   /* the owner's view of the other side */
	uint64_t heartbeat; /* incremented by the owner's monitor every tick */
	uint64_t heartbeat_ns; /* CLOCK_MONOTONIC of the last tick (same-machine readers) */
	uint64_t link_downs;
	uint32_t doorbell;  /* futex word the owner's monitor sleeps on */
	/* A served link (the host side's mode XPU_MODE_SERVED): 1 + the number of
	 * the owner's descriptor of the host half's TAP device, which the other
	 * side copies with pidfd_getfd(2); 0: none. */
	int32_t tap_handle;
	char tap[16];
	char netns[112];
	uint64_t reserved[8];
} XPU_ALIGNED;

/* Control block of one SPSC ring. Indexes are free-running byte counts. */
struct xpu_ring_ctrl {
	/* Written by the producer only. */
	XPU_ALIGNED uint64_t head;
	/* Written by the consumer only. */
	XPU_ALIGNED uint64_t tail;
	/* 1 while the consumer sleeps (or is about to) waiting for data. Set by the
	 * consumer, cleared by whoever wakes it. */
	XPU_ALIGNED uint32_t cons_sleep;
	/* 1 while the producer sleeps waiting for space. */
	XPU_ALIGNED uint32_t prod_sleep;
	/* Producer statistics. */
	XPU_ALIGNED struct {
		uint64_t frames, bytes, drops, wakeups, full_waits, reserved[3];
	} prod;
	/* Consumer statistics. */
	XPU_ALIGNED struct {
		uint64_t sleeps, spins, tap_errors, reserved[5];
	} cons;
	uint64_t reserved[16];
};

struct xpu_hdr {
	uint32_t magic; /* written last at creation, with release order */
	uint32_t version;
	uint32_t header_size;
	uint32_t ring_bytes;
	uint64_t window_size;
	uint32_t frame_max;
	uint32_t flags;
	uint64_t created_ns;
	uint64_t reserved0[3];
	XPU_ALIGNED struct xpu_side_hdr side[2];
	XPU_ALIGNED struct xpu_ring_ctrl ring[2];
};

_Static_assert(sizeof(struct xpu_side_hdr) == 256, "side header layout");
_Static_assert(sizeof(struct xpu_ring_ctrl) == 512, "ring control layout");
_Static_assert(offsetof(struct xpu_hdr, side) == 64, "header layout");
_Static_assert(offsetof(struct xpu_hdr, ring) == 576, "header layout");
_Static_assert(sizeof(struct xpu_hdr) <= XPU_HDR_SIZE, "header fits its page");

static inline uint64_t xpu_window_bytes(uint32_t ring_bytes)
{
	return (uint64_t)XPU_HDR_SIZE + 2ull * ring_bytes;
}

#endif
