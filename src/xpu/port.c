/*
 * Ports: one end of a link. A TAP device inside a network namespace, a pump
 * thread per direction between it and the window's rings, and a monitor thread
 * that keeps this side's heartbeat and decides whether the peer is alive.
 *
 * Threads of a port:
 *   tap->ring  reads frames (virtio_net_hdr + Ethernet) from the TAP device into
 *              the ring this side produces, until EAGAIN, then waits on the fd.
 *   ring->tap  writes frames from the ring this side consumes into the TAP device.
 *   monitor    every tick: heartbeat, peer liveness, carrier on/off.
 * The data path never leaves these threads.
 *
 * A served link (the host side in XPU_MODE_SERVED, see xpu.h): the host side
 * has its monitor only. The DPU side's monitor takes a copy of the host's TAP
 * descriptor once the host publishes it, and from then on
 *   tap->ring  writes what it reads from the DPU's TAP into the host's TAP,
 *   served     reads the host's TAP and writes into the DPU's TAP,
 * and the rings carry nothing. Both count into the rings' statistics.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"
#include "ring.h"

#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

#define PUMP_BATCH 32
/* A producer waiting for room wakes at least this often to notice that the link
 * went down (the monitor's interrupt can come just before it marks itself
 * asleep). Other waits are untimed: stopping the port wakes them, and a timer
 * armed and cancelled at every sleep is CPU spent per burst for nothing. */
#define FULL_WAIT_MS 1000
/* The affinity of a pump thread is read again at most this often. */
#define CPUS_RECHECK_NS 1000000000ull
/* Interrupts a tap->ring pump blocked in read(2) when its port stops: a
 * real-time signal (no embedding process, node included, uses one), sent to
 * that thread alone with pthread_kill, handled by a no-op installed without
 * SA_RESTART so that the read returns EINTR. Every other thread of ours keeps
 * it blocked. */
#define STOP_SIGNAL (SIGRTMIN + 7)

struct xpu_port {
	struct xpu_window *w;
	struct xpu_side_hdr *me;
	struct xpu_side_hdr *peer;
	struct xpu_ring tx; /* this side produces */
	struct xpu_ring rx; /* this side consumes */
	int side;
	int mode;
	int tapfd;
	int evfd;
	uint32_t stop;    /* set once by xpu_port_close */
	uint32_t link_up; /* the monitor's verdict, read by the pumps */
	uint32_t corrupt; /* the consumer met a record no honest peer writes */
	uint64_t spin_max_ns;
	/* The DPU side of a served link: its copy of the host's TAP descriptor,
	 * -1 until the monitor takes it; kept until the port closes. */
	int host_tap;
	pthread_t th_tx, th_rx, th_mon, th_srv;
	unsigned threads; /* THREAD_* bits: which of them run */
};

#define THREAD_TX 1u
#define THREAD_RX 2u
#define THREAD_MON 4u
#define THREAD_SRV 8u

/* ---- TAP device, created from a short-lived thread inside the namespace ---- */

struct tap_req {
	const char *name;
	int fd; /* result */
};

static int tap_configure(int fd, const char *name)
{
	struct ifreq ifr;
	unsigned offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
	int sock, rc = 0;

	memset(&ifr, 0, sizeof(ifr));
	/* IFF_VNET_HDR: each frame carries a virtio_net_hdr, so checksum and GSO
	 * metadata cross the link with the frame; IFF_NO_CARRIER: the carrier
	 * comes on only when the peer is there. */
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_NO_CARRIER;
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		return errno == EBUSY ? -EEXIST : -errno;
	/* Offloads let the kernel hand us (and take from us) unchecksummed GSO
	 * frames up to 64 KiB. UDP segmentation is newer: try it, then without. */
	if (ioctl(fd, TUNSETOFFLOAD, offloads | TUN_F_USO4 | TUN_F_USO6) < 0 &&
	    ioctl(fd, TUNSETOFFLOAD, offloads) < 0)
		return -errno;

	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) {
		rc = -errno;
	} else {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(sock, SIOCSIFFLAGS, &ifr) < 0)
			rc = -errno;
	}
	close(sock);
	return rc;
}

static int tap_open_in_ns(void *arg)
{
	struct tap_req *req = arg;
	int fd, rc;

	if (if_nametoindex(req->name) != 0)
		return -EEXIST;
	fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	rc = tap_configure(fd, req->name);
	if (rc < 0) {
		close(fd); /* a non-persistent TAP device goes with its fd */
		return rc;
	}
	req->fd = fd;
	return 0;
}

/* The caller's thread (e.g. node's main thread) never changes namespace. */
static int tap_open(const char *netns_path, const char *name, int *out)
{
	struct tap_req req = { name, -1 };
	int rc = xpu_in_netns_path(netns_path, tap_open_in_ns, &req);

	if (rc < 0)
		return rc;
	*out = req.fd;
	return 0;
}

static void tap_set_carrier(int fd, int on)
{
	int v = on;
	(void)ioctl(fd, TUNSETCARRIER, &v);
}

/* ---- pumps ---- */

static int stopping(struct xpu_port *p)
{
	return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE) != 0;
}

static int link_is_up(struct xpu_port *p)
{
	return __atomic_load_n(&p->link_up, __ATOMIC_ACQUIRE) != 0;
}

static void stop_signal_noop(int sig)
{
	(void)sig;
}

static int stop_signal_ok; /* the handler is ours: blocking reads may be used */
static pthread_once_t stop_signal_once = PTHREAD_ONCE_INIT;

/* Installs the no-op handler unless the process already handles the signal
 * itself (then pumps never block in read and keep polling). */
static void stop_signal_install(void)
{
	struct sigaction sa, old;

	if (sigaction(STOP_SIGNAL, NULL, &old) < 0)
		return;
	if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN && old.sa_handler != stop_signal_noop)
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = stop_signal_noop;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: a blocked read returns EINTR */
	if (sigaction(STOP_SIGNAL, &sa, NULL) == 0)
		stop_signal_ok = 1;
}

/* Block until fd is readable, the port stops (the eventfd) or timeout_ms
 * passes (-1: no timeout). */
static void wait_readable(struct xpu_port *p, int fd, int timeout_ms)
{
	struct pollfd fds[2] = {
		{ .fd = fd, .events = POLLIN },
		{ .fd = p->evfd, .events = POLLIN },
	};
	(void)poll(fds, 2, timeout_ms);
}

static void wait_tap_readable(struct xpu_port *p)
{
	wait_readable(p, p->tapfd, -1);
}

/* How long a pump of this port may spin before it sleeps, as of now. SLEEP
 * never spins. ELASTIC spins only when the calling thread may run on more than
 * one CPU. On one CPU, what the TAP reader waits for (the half's applications'
 * next frame, the kernel's work for it) needs the very CPU the spin holds, so
 * spinning only delays it; and any spin, the ring reader's too, is time taken
 * from everything else on that CPU: on the DPU (one core for the agent, the
 * pumps of every pod and the sidecars) it is time the sidecars do not get. That is a rule here
 * rather than a setting, because no configuration wants the other behaviour;
 * ELASTIC on one CPU is SLEEP. A cpuset may change while the port runs, so
 * pumps ask again now and then (spin_refresh). POLL is the explicit
 * benchmark baseline and spins whatever the CPUs. */
static uint64_t spin_max_now(const struct xpu_port *p)
{
	cpu_set_t set;

	if (p->mode == XPU_MODE_SLEEP)
		return 0;
	if (p->mode == XPU_MODE_ELASTIC && sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) <= 1)
		return 0;
	return p->spin_max_ns;
}

/* ELASTIC: re-read the thread's CPUs when the last look is older than
 * CPUS_RECHECK_NS (one system call a second at most, on the wait path only). */
static void spin_refresh(const struct xpu_port *p, struct xpu_spin *sp, uint64_t *checked_ns, uint64_t now)
{
	if (p->mode != XPU_MODE_ELASTIC || now - *checked_ns < CPUS_RECHECK_NS)
		return;
	*checked_ns = now;
	xr_spin_limit(sp, spin_max_now(p));
}

/* A pump that never spins reads the TAP blocking: one read(2) a frame and
 * none to find the queue empty (a non-blocking reader pays a read that says
 * EAGAIN and a poll that sleeps for every burst, which with request/response
 * traffic is nearly every frame). A pump that may spin keeps the fd
 * non-blocking and spins on read. The fd's flags are this thread's alone to
 * change: the ring->tap pump's writes do not block on a TAP either way. */
static void tap_set_blocking(struct xpu_port *p, int *blocking, int want)
{
	int fl;

	if (want == *blocking)
		return;
	fl = fcntl(p->tapfd, F_GETFL);
	if (fl < 0 || fcntl(p->tapfd, F_SETFL, want ? fl & ~O_NONBLOCK : fl | O_NONBLOCK) < 0)
		return;
	*blocking = want;
}

/* A pump that may block in read(2) lets the stop signal in (pump threads start
 * with every signal blocked). */
static void accept_stop_signal(void)
{
	sigset_t stop_set;

	sigemptyset(&stop_set);
	sigaddset(&stop_set, STOP_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &stop_set, NULL);
}

static int tap_should_block(const struct xpu_port *p, const struct xpu_spin *sp)
{
	return stop_signal_ok && p->mode != XPU_MODE_POLL && sp->max_ns == 0;
}

static void *pump_tap_to_ring(void *arg)
{
	struct xpu_port *p = arg;
	struct xpu_ring *r = &p->tx;
	struct xpu_ring_ctrl *c = r->c;
	struct xpu_spin sp;
	uint8_t *scratch = malloc(XPU_FRAME_MAX);
	uint64_t spin_t0 = 0, cpus_checked = xr_now_ns();
	unsigned batch = 0;
	int blocking = 0;

	if (!scratch)
		return NULL;
	accept_stop_signal();
	xr_spin_init(&sp, spin_max_now(p));
	tap_set_blocking(p, &blocking, tap_should_block(p, &sp));
	while (!stopping(p)) {
		int host_tap = __atomic_load_n(&p->host_tap, __ATOMIC_ACQUIRE);
		int up = host_tap < 0 && link_is_up(p);
		void *buf = scratch;
		ssize_t n;

		if (blocking || p->mode == XPU_MODE_ELASTIC) {
			/* A blocking reader never sees EAGAIN, where the affinity is
			 * otherwise looked at again: look here (a clock read; the
			 * system call once a second). */
			spin_refresh(p, &sp, &cpus_checked, xr_now_ns());
			tap_set_blocking(p, &blocking, tap_should_block(p, &sp));
		}

		if (up) {
			buf = xr_reserve(r, XPU_FRAME_MAX);
			if (!buf) {
				if (batch) {
					xr_kick(r, 0);
					batch = 0;
				}
				xr_wait(r, 1, XPU_FRAME_MAX, p->mode, &sp, &p->stop, FULL_WAIT_MS);
				continue;
			}
		}
		n = read(p->tapfd, buf, XPU_FRAME_MAX);
		if (n > 0) {
			if (spin_t0) {
				xr_spin_paid(&sp);
				spin_t0 = 0;
			}
			/* The read may have waited since the look above (a blocking
			 * reader, on one CPU, waits there from before the peer opens):
			 * look again. A host's device taken meanwhile is the frame's
			 * way out; a link come up meanwhile, the ring (the first frame
			 * after link-up, a SYN or its answer, was dropped and cost a
			 * retransmission). */
			if (host_tap < 0 && !up) {
				host_tap = __atomic_load_n(&p->host_tap, __ATOMIC_ACQUIRE);
				if (host_tap < 0 && link_is_up(p)) {
					void *room = xr_reserve(r, XPU_FRAME_MAX);

					if (room) {
						memcpy(room, buf, (size_t)n);
						up = 1;
					}
				}
			}
			if (host_tap >= 0) {
				/* Served: into the host's TAP, whether or not the
				 * host side's process is there. */
				if (write(host_tap, buf, (size_t)n) < 0) {
					xr_stat_add(&c->prod.drops, 1);
				} else {
					xr_stat_add(&c->prod.frames, 1);
					xr_stat_add(&c->prod.bytes, (uint64_t)n);
				}
				continue;
			}
			if (!up) {
				/* No peer, or no room: the frame cannot cross. */
				xr_stat_add(&c->prod.drops, 1);
				continue;
			}
			xr_commit(r, (uint32_t)n);
			xr_stat_add(&c->prod.frames, 1);
			xr_stat_add(&c->prod.bytes, (uint64_t)n);
			/* Batching: wake the consumer once per batch, not per frame; a
			 * consumer that is spinning sees each frame as it is published.
			 * A blocking reader cannot see a burst end (the next read
			 * sleeps), so it kicks every frame: a system call only when
			 * the consumer sleeps, and it stays awake through a burst. */
			if (blocking || ++batch >= PUMP_BATCH) {
				xr_kick(r, 0);
				batch = 0;
			}
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (batch) {
			xr_kick(r, 0);
			batch = 0;
		}
		if (n < 0 && errno == EAGAIN) {
			if (p->mode == XPU_MODE_POLL) {
				xr_cpu_relax();
				continue;
			}
			/* Elastic: retry for the adaptive spin budget (none on one
			 * CPU, none in SLEEP), then sleep in poll. */
			uint64_t now = xr_now_ns();
			if (!spin_t0)
				spin_t0 = now;
			if (now - spin_t0 < sp.budget_ns) {
				/* What this waits for is the half's applications'
				 * next frame: let them have the CPU between tries
				 * (each try is a system call anyway). Without the
				 * yield, with more runnable threads than CPUs, the
				 * spin kept the application off a core: bench-xpu's
				 * elastic half round trip went from 21 to 75 us. */
				sched_yield();
				continue;
			}
			spin_t0 = 0;
			wait_tap_readable(p);
			if (sp.max_ns)
				xr_spin_slept(&sp, xr_now_ns() - now);
			continue;
		}
		/* Any other error: count it and do not spin on it. */
		xr_stat_add(&c->prod.drops, 1);
		wait_tap_readable(p);
	}
	free(scratch);
	return NULL;
}

static void *pump_ring_to_tap(void *arg)
{
	struct xpu_port *p = arg;
	struct xpu_ring *r = &p->rx;
	struct xpu_ring_ctrl *c = r->c;
	struct xpu_spin sp;
	uint64_t cpus_checked = xr_now_ns();
	unsigned batch = 0;

	/* This ring's producer is the peer's pump, on the other side's CPUs, so a
	 * spin here could catch the next frame and spare the peer a wake-up (a
	 * system call and a cross-CPU interrupt on the peer's side). But a spin
	 * holds this side's CPU: on one CPU (the DPU's) it is time taken from the
	 * sidecars: with it the agent's CPU per request doubled, and the DPU's
	 * one core, already the bound on requests per second, had less for the
	 * proxy (bench-sidecar --app keepalive, two runs). So the one-CPU rule
	 * holds here too. */
	xr_spin_init(&sp, spin_max_now(p));
	while (!stopping(p)) {
		const void *buf;
		uint32_t len;
		int rc = xr_peek(r, &buf, &len);

		if (rc == 0) {
			if (write(p->tapfd, buf, len) < 0)
				xr_stat_add(&c->cons.tap_errors, 1);
			xr_release(r);
			if (++batch >= PUMP_BATCH) {
				xr_kick(r, 1);
				batch = 0;
			}
			continue;
		}
		if (batch) {
			xr_kick(r, 1);
			batch = 0;
		}
		if (rc == -EBADMSG) {
			/* A corrupt ring is not recoverable from this side: take the
			 * link down and wait to be closed. */
			__atomic_store_n(&p->corrupt, 1, __ATOMIC_RELEASE);
			struct timespec ts = { 0, 100 * 1000000L };
			nanosleep(&ts, NULL);
			continue;
		}
		if (p->mode == XPU_MODE_ELASTIC)
			spin_refresh(p, &sp, &cpus_checked, xr_now_ns());
		xr_wait(r, 0, 0, p->mode, &sp, &p->stop, -1);
	}
	return NULL;
}

/* The DPU side of a served link: the host's TAP into the DPU's. Reads block
 * (stopping the port interrupts them, as the tap->ring pump's); without our
 * stop signal the descriptor stays non-blocking and the pump polls it. */
static void *pump_served(void *arg)
{
	struct xpu_port *p = arg;
	struct xpu_ring_ctrl *c = p->rx.c; /* ring 0: host -> DPU */
	uint8_t *scratch = malloc(XPU_FRAME_MAX);
	int fl;

	if (!scratch)
		return NULL;
	accept_stop_signal();
	/* The flag belongs to the open file, which the host's copy shares; the
	 * host side never reads it. */
	fl = fcntl(p->host_tap, F_GETFL);
	if (stop_signal_ok && fl >= 0)
		(void)fcntl(p->host_tap, F_SETFL, fl & ~O_NONBLOCK);
	while (!stopping(p)) {
		ssize_t n = read(p->host_tap, scratch, XPU_FRAME_MAX);

		if (n > 0) {
			xr_stat_add(&c->prod.frames, 1);
			xr_stat_add(&c->prod.bytes, (uint64_t)n);
			if (write(p->tapfd, scratch, (size_t)n) < 0)
				xr_stat_add(&c->cons.tap_errors, 1);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		/* EAGAIN, or the device went with its namespace (EBADFD): wait
		 * for a frame or the stop, at most a second. */
		wait_readable(p, p->host_tap, n < 0 && errno == EAGAIN ? -1 : 1000);
	}
	free(scratch);
	return NULL;
}

/* ---- taking the host's TAP device across ---- */

/* A copy of the descriptor of the host's TAP device that the owner of side s
 * publishes, checked to be TAP device name. */
static int tap_take(const struct xpu_side_hdr *s, const char *name, int *out)
{
	/* The pid first: an owner clears the handle before it writes its pid. */
	int32_t pid = __atomic_load_n(&s->pid, __ATOMIC_ACQUIRE);
	int32_t handle = __atomic_load_n(&s->tap_handle, __ATOMIC_ACQUIRE);
	struct ifreq ifr;
	int pidfd, fd;

	if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != XPU_SIDE_ATTACHED || handle <= 0 || pid <= 0)
		return -ENOENT;
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		return -errno;
	fd = (int)syscall(SYS_pidfd_getfd, pidfd, handle - 1, 0); /* close-on-exec */
	close(pidfd);
	if (fd < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	if (ioctl(fd, TUNGETIFF, &ifr) < 0 || strncmp(ifr.ifr_name, name, IFNAMSIZ) != 0) {
		close(fd);
		return -ESTALE;
	}
	*out = fd;
	return 0;
}

struct rps_req {
	char dev[IFNAMSIZ];
	char mask[160];
};

#define SYSFS_FLAGS (MS_NOSUID | MS_NODEV | MS_NOEXEC)

/* Inside the device's namespace, on a thread of its own: a mount namespace of
 * the thread's own with a sysfs of this network namespace, for the device's
 * receive queue's CPU mask (sysfs is the only interface to it). A namespace has
 * one sysfs superblock, and a pod's containers mount it read-only (runc does),
 * which makes every mount of it read-only: then the superblock is made writable
 * for the write and read-only again after it. The containers' own mounts are
 * read-only by themselves throughout. */
static int rps_in_ns(void *arg)
{
	struct rps_req *r = arg;
	char path[96];
	int fd, rc = 0, was_ro = 0;
	ssize_t len = (ssize_t)strlen(r->mask);

	if (unshare(CLONE_NEWNS) < 0)
		return -errno;
	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0 ||
	    mount("sysfs", "/sys", "sysfs", SYSFS_FLAGS, NULL) < 0)
		return -errno;
	snprintf(path, sizeof(path), "/sys/class/net/%s/queues/rx-0/rps_cpus", r->dev);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == EROFS) {
		if (mount(NULL, "/sys", NULL, MS_REMOUNT | SYSFS_FLAGS, NULL) < 0)
			return -errno;
		was_ro = 1;
		fd = open(path, O_WRONLY | O_CLOEXEC);
	}
	if (fd < 0) {
		rc = -errno;
	} else {
		if (write(fd, r->mask, (size_t)len) != len)
			rc = -errno;
		close(fd);
	}
	if (was_ro && mount(NULL, "/sys", NULL, MS_REMOUNT | MS_RDONLY | SYSFS_FLAGS, NULL) < 0 && rc == 0)
		rc = -errno;
	return rc;
}

/* Steers the receive work of what the DPU end writes into the host's TAP to
 * the CPUs this thread may not run on (the host's, when the DPU end runs in
 * the DPU's cpuset), as a device's interrupt lands on the host's CPUs. Without
 * such CPUs (an end that may run anywhere) nothing is changed. */
static int tap_steer_to_host(int fd, const char *name)
{
	struct rps_req r;
	cpu_set_t own;
	uint32_t words[CPU_SETSIZE / 32] = { 0 };
	long ncpu = sysconf(_SC_NPROCESSORS_CONF);
	int nsfd, rc, top = -1;
	size_t off = 0;

	if (ncpu <= 0 || ncpu > CPU_SETSIZE || sched_getaffinity(0, sizeof(own), &own) < 0)
		return -EINVAL;
	for (long cpu = 0; cpu < ncpu; cpu++) {
		if (CPU_ISSET(cpu, &own))
			continue;
		words[cpu / 32] |= 1u << (cpu % 32);
		top = (int)(cpu / 32);
	}
	if (top < 0)
		return 0;
	/* sysfs's cpumask format: 32-bit hex words, the highest first, commas between. */
	for (int i = top; i >= 0 && off < sizeof(r.mask); i--)
		off += (size_t)snprintf(r.mask + off, sizeof(r.mask) - off, i == top ? "%x" : ",%08x", words[i]);
	if (off >= sizeof(r.mask))
		return -ENOSPC;
	snprintf(r.dev, sizeof(r.dev), "%.*s", IFNAMSIZ - 1, name);
	nsfd = ioctl(fd, TUNGETDEVNETNS);
	if (nsfd < 0)
		return -errno;
	rc = xpu_in_netns(nsfd, rps_in_ns, &r);
	close(nsfd);
	return rc;
}

/* The DPU side's monitor: once the host side serves its TAP device through us,
 * take it and start serving. Failures are tried again at the next tick. */
static void serve_host_tap(struct xpu_port *p)
{
	sigset_t all, old;
	int fd;

	if (__atomic_load_n(&p->peer->mode, __ATOMIC_ACQUIRE) != XPU_MODE_SERVED ||
	    tap_take(p->peer, p->peer->tap, &fd) < 0)
		return;
	(void)tap_steer_to_host(fd, p->peer->tap); /* accounting only: the frames cross either way */
	__atomic_store_n(&p->host_tap, fd, __ATOMIC_RELEASE);
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	if (pthread_create(&p->th_srv, NULL, pump_served, p) == 0) {
		pthread_setname_np(p->th_srv, "xpu-served");
		p->threads |= THREAD_SRV;
		/* Published for a new owner of the host side to take back. */
		__atomic_store_n(&p->me->tap_handle, fd + 1, __ATOMIC_RELEASE);
	} else {
		__atomic_store_n(&p->host_tap, -1, __ATOMIC_RELEASE);
		close(fd);
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* ---- liveness ---- */

static void ring_doorbell(struct xpu_side_hdr *s)
{
	__atomic_add_fetch(&s->doorbell, 1, __ATOMIC_RELEASE);
	xr_futex_wake(&s->doorbell);
}

static void *monitor(void *arg)
{
	struct xpu_port *p = arg;
	uint64_t last_hb = __atomic_load_n(&p->peer->heartbeat, __ATOMIC_RELAXED);
	uint64_t last_seen = 0; /* 0: never seen the peer's heartbeat move */
	int first = 1, was_alive = 0;

	while (!stopping(p)) {
		uint32_t bell = __atomic_load_n(&p->me->doorbell, __ATOMIC_ACQUIRE);
		uint64_t now = xr_now_ns();
		uint64_t hb;
		uint32_t state;
		int alive;

		__atomic_store_n(&p->me->heartbeat, __atomic_load_n(&p->me->heartbeat, __ATOMIC_RELAXED) + 1,
				 __ATOMIC_RELEASE);
		__atomic_store_n(&p->me->heartbeat_ns, now, __ATOMIC_RELAXED);

		state = __atomic_load_n(&p->peer->state, __ATOMIC_ACQUIRE);
		hb = __atomic_load_n(&p->peer->heartbeat, __ATOMIC_ACQUIRE);
		if (hb != last_hb) {
			last_hb = hb;
			last_seen = now;
		}
		if (p->side == XPU_SIDE_DPU && __atomic_load_n(&p->host_tap, __ATOMIC_RELAXED) < 0)
			serve_host_tap(p);
		/* Serving the host's device, the DPU side's link is up whatever
		 * becomes of the host side's process. */
		alive = __atomic_load_n(&p->host_tap, __ATOMIC_RELAXED) >= 0 ||
			(state == XPU_SIDE_ATTACHED && last_seen != 0 &&
			 now - last_seen < (uint64_t)XPU_PEER_TIMEOUT_MS * 1000000ull &&
			 !__atomic_load_n(&p->corrupt, __ATOMIC_ACQUIRE));
		if (alive != link_is_up(p)) {
			__atomic_store_n(&p->link_up, (uint32_t)alive, __ATOMIC_RELEASE);
			tap_set_carrier(p->tapfd, alive);
			if (!alive) {
				xr_stat_add(&p->me->link_downs, 1);
				/* A producer waiting for room the dead peer will never
				 * free must notice and drop instead. */
				xr_interrupt(&p->tx, 1);
			}
		}
		__atomic_store_n(&p->me->peer_up, (uint32_t)alive, __ATOMIC_RELAXED);
		/* The link comes up within a moment of the second side's open, not
		 * ticks later: our first beat, and our seeing the peer, ring the
		 * peer's monitor, which then beats and looks at once (each side rings
		 * twice at most per link up, so the two never ring each other on). */
		if (first || (alive && !was_alive))
			ring_doorbell(p->peer);
		first = 0;
		was_alive = alive;
		/* Sleep one tick, or less when the peer rings (it closed, or it has come up). */
		xr_futex_wait(&p->me->doorbell, bell, XPU_TICK_MS);
	}
	return NULL;
}

/* ---- open / close ---- */

/* Whether the process runs: it exists and has not exited. An exited process
 * its parent has not reaped yet (a zombie; an init may reap late) holds no
 * descriptor or mapping any more, so its side of a window is free. */
static int pid_running(pid_t pid)
{
	char path[32], buf[512], *paren;
	ssize_t n;
	int fd;

	if (kill(pid, 0) != 0 && errno != EPERM)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno != ENOENT;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 1;
	buf[n] = '\0';
	/* The state follows the command name, in parentheses, which may hold ')'. */
	paren = strrchr(buf, ')');
	if (!paren || paren[1] != ' ')
		return 1;
	return paren[2] != 'Z' && paren[2] != 'X';
}

static int side_owner_alive(const struct xpu_side_hdr *s)
{
	int32_t pid = __atomic_load_n(&s->pid, __ATOMIC_RELAXED);
	if (pid <= 0)
		return 0;
	return pid_running(pid);
}

/* Claim a side of the window for this process. A side left attached by a
 * process that no longer exists may be taken over. */
static int claim_side(struct xpu_side_hdr *s)
{
	uint32_t st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
	if (st == XPU_SIDE_ATTACHED && side_owner_alive(s))
		return -EBUSY;
	if (!__atomic_compare_exchange_n(&s->state, &st, XPU_SIDE_ATTACHED, 0, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE))
		return -EBUSY;
	/* A dead owner's handle means nothing in this process. */
	__atomic_store_n(&s->tap_handle, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&s->pid, (int32_t)getpid(), __ATOMIC_RELEASE);
	return 0;
}

static void release_side(struct xpu_side_hdr *s)
{
	__atomic_store_n(&s->peer_up, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->tap_handle, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&s->pid, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&s->state, XPU_SIDE_CLOSED, __ATOMIC_RELEASE);
}

static int valid_tap_name(const char *name)
{
	size_t n = name ? strlen(name) : 0;
	if (n == 0 || n >= IFNAMSIZ)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (name[i] == '/' || name[i] == ':' || name[i] <= ' ' || name[i] == 0x7f)
			return 0;
	return 1;
}

static uint64_t spin_max_from_env(void)
{
	const char *v = getenv("HETEROPOD_XPU_SPIN_US");
	char *end;
	unsigned long us;
	if (!v || !*v)
		return XPU_SPIN_MAX_NS;
	us = strtoul(v, &end, 10);
	if (*end || us > 10000)
		return XPU_SPIN_MAX_NS;
	return (uint64_t)us * 1000u;
}

/* Joins a pump that may be blocked in read(2): the signal makes the read
 * return. One sent before the pump entered read is consumed by the handler and
 * the read still blocks, so send again until it ends. */
static void join_reader(pthread_t th)
{
	for (;;) {
		struct timespec deadline;

		if (stop_signal_ok)
			pthread_kill(th, STOP_SIGNAL);
		clock_gettime(CLOCK_REALTIME, &deadline);
		deadline.tv_nsec += 20 * 1000000L;
		if (deadline.tv_nsec >= 1000000000L) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000L;
		}
		if (pthread_timedjoin_np(th, NULL, &deadline) == 0)
			return;
	}
}

static void stop_threads(struct xpu_port *p)
{
	uint64_t one = 1;

	__atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
	xr_interrupt(&p->tx, 1);
	xr_interrupt(&p->rx, 0);
	if (write(p->evfd, &one, sizeof(one)) < 0) {
		/* eventfd counter cannot overflow here; the poll timeout covers it */
	}
	ring_doorbell(p->me);
	if (p->threads & THREAD_TX)
		join_reader(p->th_tx);
	if (p->threads & THREAD_RX)
		pthread_join(p->th_rx, NULL);
	if (p->threads & THREAD_MON)
		pthread_join(p->th_mon, NULL);
	/* Only the monitor starts it: read once the monitor has ended. */
	if (p->threads & THREAD_SRV)
		join_reader(p->th_srv);
	p->threads = 0;
}

int xpu_port_open(xpu_window *w, int side, const char *netns_path, const char *tap_name, int mode,
		  xpu_port **out)
{
	struct xpu_port *p;
	sigset_t all, old;
	int rc;

	if (!w || !out || !netns_path || (side != XPU_SIDE_HOST && side != XPU_SIDE_DPU) ||
	    (mode != XPU_MODE_ELASTIC && mode != XPU_MODE_POLL && mode != XPU_MODE_SLEEP &&
	     !(mode == XPU_MODE_SERVED && side == XPU_SIDE_HOST)) ||
	    !valid_tap_name(tap_name))
		return -EINVAL;
	*out = NULL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->w = w;
	p->side = side;
	p->mode = mode;
	p->tapfd = -1;
	p->host_tap = -1;
	p->me = &w->hdr->side[side];
	p->peer = &w->hdr->side[1 - side];
	p->spin_max_ns = spin_max_from_env();
	pthread_once(&stop_signal_once, stop_signal_install);
	p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->evfd < 0) {
		rc = -errno;
		free(p);
		return rc;
	}

	rc = claim_side(p->me);
	if (rc < 0)
		goto fail_free;
	rc = tap_open(netns_path, tap_name, &p->tapfd);
	/* The device outlived the side's last owner because the DPU end serves it. */
	if (rc == -EEXIST && mode == XPU_MODE_SERVED && tap_take(p->peer, tap_name, &p->tapfd) == 0)
		rc = 0;
	if (rc < 0)
		goto fail_release;

	p->me->mode = (uint32_t)mode;
	memset(p->me->tap, 0, sizeof(p->me->tap));
	strncpy(p->me->tap, tap_name, sizeof(p->me->tap) - 1);
	memset(p->me->netns, 0, sizeof(p->me->netns));
	strncpy(p->me->netns, netns_path, sizeof(p->me->netns) - 1);
	__atomic_store_n(&p->me->heartbeat_ns, xr_now_ns(), __ATOMIC_RELAXED);
	/* Ring `side` carries this side's outbound frames. */
	xr_init(&p->tx, &w->hdr->ring[side], xpu_ring_data(w, side), w->hdr->ring_bytes);
	xr_init(&p->rx, &w->hdr->ring[1 - side], xpu_ring_data(w, 1 - side), w->hdr->ring_bytes);

	if (mode == XPU_MODE_SERVED) /* after the mode: the DPU end looks at both */
		__atomic_store_n(&p->me->tap_handle, p->tapfd + 1, __ATOMIC_RELEASE);

	/* Pump threads take no signals: the embedding process (node) handles them.
	 * Named so that tools (and the benchmark) can tell transport CPU time. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = 0;
	if (mode != XPU_MODE_SERVED) {
		rc = -pthread_create(&p->th_tx, NULL, pump_tap_to_ring, p);
		if (rc == 0) {
			p->threads |= THREAD_TX;
			pthread_setname_np(p->th_tx, "xpu-tap2ring");
			rc = -pthread_create(&p->th_rx, NULL, pump_ring_to_tap, p);
		}
		if (rc == 0) {
			p->threads |= THREAD_RX;
			pthread_setname_np(p->th_rx, "xpu-ring2tap");
		}
	}
	if (rc == 0) {
		rc = -pthread_create(&p->th_mon, NULL, monitor, p);
		if (rc == 0) {
			p->threads |= THREAD_MON;
			pthread_setname_np(p->th_mon, "xpu-monitor");
		}
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc < 0)
		goto fail_threads;

	w->ports++;
	ring_doorbell(p->peer); /* let the peer see us without waiting a tick */
	*out = p;
	return 0;

fail_threads:
	stop_threads(p);
	close(p->tapfd);
fail_release:
	release_side(p->me);
fail_free:
	close(p->evfd);
	free(p);
	return rc;
}

int xpu_port_close(xpu_port *p)
{
	if (!p)
		return -EINVAL;
	stop_threads(p);
	release_side(p->me);
	ring_doorbell(p->peer); /* the peer's monitor sees the link go down now */
	close(p->tapfd);
	if (p->host_tap >= 0)
		close(p->host_tap);
	close(p->evfd);
	p->w->ports--;
	free(p);
	return 0;
}

int xpu_port_link_up(const xpu_port *p)
{
	if (!p)
		return -EINVAL;
	return (int)__atomic_load_n(&p->link_up, __ATOMIC_ACQUIRE);
}
