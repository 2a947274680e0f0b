/*
 * Windows: creating, validating, mapping and reading the statistics of the
 * shared-memory file that holds a link.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "ring.h"

#define SHM_DIR "/dev/shm/heteropod"

static int valid_ring_bytes(uint32_t n)
{
	return n >= XPU_RING_MIN && n <= XPU_RING_MAX && (n & (n - 1)) == 0;
}

/* Create /dev/shm/heteropod when the window goes there. */
static int ensure_shm_dir(const char *path)
{
	size_t n = strlen(SHM_DIR);
	if (strncmp(path, SHM_DIR, n) != 0 || path[n] != '/')
		return 0;
	if (mkdir(SHM_DIR, 0700) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int xpu_window_create(const char *path, uint32_t ring_bytes, xpu_window **out)
{
	struct xpu_window *w = NULL;
	struct xpu_hdr *h;
	uint64_t size;
	void *map;
	int fd, rc;

	if (!path || !out)
		return -EINVAL;
	*out = NULL;
	if (ring_bytes == 0)
		ring_bytes = XPU_RING_DEFAULT;
	if (!valid_ring_bytes(ring_bytes))
		return -EINVAL;
	rc = ensure_shm_dir(path);
	if (rc < 0)
		return rc;
	size = xpu_window_bytes(ring_bytes);

	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0) {
		rc = -errno;
		goto fail_unlink;
	}
	map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		rc = -errno;
		goto fail_unlink;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		munmap(map, size);
		rc = -ENOMEM;
		goto fail_unlink;
	}
	close(fd);

	/* The file is zero-filled: indexes, states and counters start at 0. */
	h = map;
	h->version = XPU_VERSION;
	h->header_size = XPU_HDR_SIZE;
	h->ring_bytes = ring_bytes;
	h->window_size = size;
	h->frame_max = XPU_FRAME_MAX;
	h->created_ns = xr_now_ns();
	/* release: a process that sees the magic sees the whole header. */
	__atomic_store_n(&h->magic, XPU_MAGIC, __ATOMIC_RELEASE);

	w->hdr = h;
	w->size = size;
	*out = w;
	return 0;

fail_unlink:
	close(fd);
	unlink(path);
	return rc;
}

/* Validate the header of an open window file; returns its size or -errno. */
static int64_t check_window(int fd)
{
	struct xpu_hdr h;
	struct stat st;
	ssize_t n;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EBADMSG;
	n = pread(fd, &h, sizeof(h), 0);
	if (n < 0)
		return -errno;
	if ((size_t)n < offsetof(struct xpu_hdr, side) || h.magic != XPU_MAGIC)
		return -EBADMSG;
	if (h.version != XPU_VERSION)
		return -EPROTONOSUPPORT;
	if (h.header_size != XPU_HDR_SIZE || !valid_ring_bytes(h.ring_bytes) ||
	    h.window_size != xpu_window_bytes(h.ring_bytes) ||
	    (uint64_t)st.st_size != h.window_size || h.frame_max != XPU_FRAME_MAX)
		return -EMSGSIZE;
	return (int64_t)h.window_size;
}

static int map_window(const char *path, int writable, struct xpu_hdr **hdr, uint64_t *size)
{
	int64_t sz;
	void *map;
	int fd;

	fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	sz = check_window(fd);
	if (sz < 0) {
		close(fd);
		return (int)sz;
	}
	map = mmap(NULL, (size_t)sz, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return -errno;
	*hdr = map;
	*size = (uint64_t)sz;
	return 0;
}

int xpu_window_attach(const char *path, xpu_window **out)
{
	struct xpu_window *w;
	struct xpu_hdr *h;
	uint64_t size;
	int rc;

	if (!path || !out)
		return -EINVAL;
	*out = NULL;
	rc = map_window(path, 1, &h, &size);
	if (rc < 0)
		return rc;
	w = calloc(1, sizeof(*w));
	if (!w) {
		munmap(h, size);
		return -ENOMEM;
	}
	w->hdr = h;
	w->size = size;
	*out = w;
	return 0;
}

int xpu_window_close(xpu_window *w)
{
	if (!w)
		return -EINVAL;
	if (w->ports > 0)
		return -EBUSY;
	munmap(w->hdr, w->size);
	free(w);
	return 0;
}

static void copy_str(char *dst, size_t cap, const char *src, size_t srccap)
{
	size_t n = strnlen(src, srccap);
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

int xpu_window_stats(const char *path, struct xpu_stats *out)
{
	struct xpu_hdr *h;
	uint64_t size, now;
	int rc, s;

	if (!path || !out)
		return -EINVAL;
	rc = map_window(path, 0, &h, &size);
	if (rc < 0)
		return rc;
	memset(out, 0, sizeof(*out));
	now = xr_now_ns();
	out->version = h->version;
	out->ring_bytes = h->ring_bytes;
	out->frame_max = h->frame_max;
	for (s = 0; s < 2; s++) {
		struct xpu_side_hdr *sh = &h->side[s];
		struct xpu_side_info *si = &out->side[s];
		uint64_t hb_ns = __atomic_load_n(&sh->heartbeat_ns, __ATOMIC_RELAXED);
		si->state = __atomic_load_n(&sh->state, __ATOMIC_ACQUIRE);
		si->pid = __atomic_load_n(&sh->pid, __ATOMIC_RELAXED);
		si->mode = __atomic_load_n(&sh->mode, __ATOMIC_RELAXED);
		si->peer_up = __atomic_load_n(&sh->peer_up, __ATOMIC_RELAXED);
		si->heartbeat = __atomic_load_n(&sh->heartbeat, __ATOMIC_RELAXED);
		si->link_downs = __atomic_load_n(&sh->link_downs, __ATOMIC_RELAXED);
		/* Freshness uses this machine's monotonic clock: meaningful because
		 * the emulated DPU shares it; a remote reader would use heartbeats. */
		si->alive = si->state == XPU_SIDE_ATTACHED && hb_ns <= now &&
			    now - hb_ns < (uint64_t)XPU_PEER_TIMEOUT_MS * 1000000ull;
		copy_str(si->tap, sizeof(si->tap), sh->tap, sizeof(sh->tap));
		copy_str(si->netns, sizeof(si->netns), sh->netns, sizeof(sh->netns));
	}
	out->link_up = out->side[0].alive && out->side[1].alive && out->side[0].peer_up &&
		       out->side[1].peer_up;
	for (s = 0; s < 2; s++) {
		struct xpu_ring_ctrl *c = &h->ring[s];
		struct xpu_dir_stats *d = &out->dir[s];
		d->frames = __atomic_load_n(&c->prod.frames, __ATOMIC_RELAXED);
		d->bytes = __atomic_load_n(&c->prod.bytes, __ATOMIC_RELAXED);
		d->drops = __atomic_load_n(&c->prod.drops, __ATOMIC_RELAXED);
		d->wakeups = __atomic_load_n(&c->prod.wakeups, __ATOMIC_RELAXED);
		d->full_waits = __atomic_load_n(&c->prod.full_waits, __ATOMIC_RELAXED);
		d->sleeps = __atomic_load_n(&c->cons.sleeps, __ATOMIC_RELAXED);
		d->spins = __atomic_load_n(&c->cons.spins, __ATOMIC_RELAXED);
		d->tap_errors = __atomic_load_n(&c->cons.tap_errors, __ATOMIC_RELAXED);
	}
	munmap(h, size);
	return 0;
}

uint32_t xpu_stats_size(void)
{
	return (uint32_t)sizeof(struct xpu_stats);
}
