/* Process-local state shared by window.c and port.c. Not installed. */
#ifndef XPU_INTERNAL_H
#define XPU_INTERNAL_H

#include "layout.h"
#include "xpu.h"

/* A side whose heartbeat has not moved for this long is taken for dead. */
#define XPU_PEER_TIMEOUT_MS 1000u
/* The monitor's heartbeat period: five beats in a timeout, so a monitor held
 * off its CPU for a while (the DPU's one core under load) is not taken for
 * dead; each tick is a wake-up of every link end, idle or not. */
#define XPU_TICK_MS 200

struct xpu_window {
	struct xpu_hdr *hdr;
	uint64_t size;
	int ports; /* ports open on this mapping; guarded by the caller (control path) */
};

static inline uint8_t *xpu_ring_data(struct xpu_window *w, int ring)
{
	return (uint8_t *)w->hdr + w->hdr->header_size + (uint64_t)ring * w->hdr->ring_bytes;
}

/* Runs fn(arg) on a short-lived thread of the library that has entered the
 * network namespace netns_fd refers to, and returns its result (or -errno of
 * setns: -EINVAL when netns_fd is not a network namespace). setns changes the
 * calling thread only: the caller's thread never changes namespace. */
int xpu_in_netns(int netns_fd, int (*fn)(void *), void *arg);
/* The same for the namespace at path: -ENOENT when nothing is there. */
int xpu_in_netns_path(const char *path, int (*fn)(void *), void *arg);

#endif
