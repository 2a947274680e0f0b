/*
 * libxpu: the XPU transport, a shared-memory packet link between the host half
 * and the DPU half of a pod.
 *
 * One window (a file, normally under /dev/shm/heteropod/) holds a fixed-layout
 * header and two single-producer single-consumer rings of variable-size frames:
 * ring 0 carries host->DPU, ring 1 DPU->host. Each end of the link ("side") is
 * owned by one process, which opens a port: a TAP device inside a network
 * namespace plus one pump thread per direction between the TAP device and a ring.
 *
 * The library also answers, for the namespace of either half, which TCP ports
 * are listened on (xpu_diag_*), and does the namespace work around a port
 * without starting a process (xpu_netns_*). It makes the netfilter rules of
 * each half and decides which half owns a TCP port (xpu_rules_*, xpu_ports_*),
 * for every program that sets up a split network, so that all make the same.
 *
 * Contract for every function: a return value < 0 is a negative errno; nothing
 * is read from the global errno. Handles are opaque and owned by the caller until
 * passed to the matching close function.
 */
#ifndef XPU_H
#define XPU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XPU_API __attribute__((visibility("default")))

typedef struct xpu_window xpu_window;
typedef struct xpu_port xpu_port;

enum xpu_side { XPU_SIDE_HOST = 0, XPU_SIDE_DPU = 1 };

/* ELASTIC: a consumer with nothing to read spins adaptively, then sleeps on a
 * futex in the window; a producer enters the kernel only to wake a consumer that
 * has said it is asleep. A pump thread allowed only one CPU (its affinity, e.g.
 * a cpuset of one core) never spins: ELASTIC is SLEEP there, since what it waits
 * for needs the CPU it would spin on. POLL: never sleeps (kernel-bypass baseline). SLEEP:
 * ELASTIC without the spin: every wait sleeps at once, so the end costs CPU
 * per frame moved and none while waiting, at a wake-up's latency per burst
 * (the host's end of an offloaded pod: the host's CPU is what offload saves).
 * SERVED (the host side only): this process runs no pump; the DPU end serves
 * the host's TAP device, as a DPU serves the queues of a device it emulates for
 * the host (BlueField's virtio-net emulation). The DPU end takes a copy of the
 * device's descriptor (pidfd_getfd(2): both ends run on this machine), reads
 * what the host half sends and writes what it receives, and steers the host's
 * receive work to the CPUs that are not its own (RPS), so for each frame the
 * host's CPU does its network stack's work and nothing else. The link no
 * longer depends on the host end's process: the frames cross while it is
 * down, and a new owner of the side takes the device back from the DPU end. */
enum xpu_mode { XPU_MODE_ELASTIC = 0, XPU_MODE_POLL = 1, XPU_MODE_SLEEP = 2, XPU_MODE_SERVED = 3 };

/* Largest frame a ring carries: a 64 KiB GSO segment, its Ethernet header and
 * the virtio_net_hdr in front of it, with room to spare. */
#define XPU_FRAME_MAX 65792u

/* Ring sizes accepted by xpu_window_create (bytes of frame data per ring, a
 * power of two). 0 selects the default. */
#define XPU_RING_MIN (256u * 1024u)
#define XPU_RING_MAX (64u * 1024u * 1024u)
#define XPU_RING_DEFAULT (4u * 1024u * 1024u)

/* Per-direction counters. Producer-side: frames, bytes, drops (frames read from
 * the TAP device that could not cross: link down or unwritable), wakeups (futex
 * wakes issued to a sleeping consumer). Consumer-side: sleeps (futex waits),
 * spins (times spinning found work and saved a sleep), tap_errors (frames the
 * consumer could not write into its TAP device). */
struct xpu_dir_stats {
	uint64_t frames;
	uint64_t bytes;
	uint64_t drops;
	uint64_t wakeups;
	uint64_t sleeps;
	uint64_t spins;
	uint64_t tap_errors;
	uint64_t full_waits; /* times the producer found the ring full */
};

struct xpu_side_info {
	int32_t pid;       /* owner process, 0 when free */
	uint32_t state;    /* 0 free, 1 attached, 2 closed */
	uint32_t mode;     /* enum xpu_mode of the owner */
	uint32_t alive;    /* attached and heartbeat fresh (seen from the reader) */
	uint32_t peer_up;  /* this side's own view: the peer is alive */
	uint32_t reserved;
	uint64_t heartbeat;
	uint64_t link_downs; /* times this side saw the link go down */
	char tap[16];
	char netns[112];
};

struct xpu_stats {
	uint32_t version;
	uint32_t link_up;
	uint32_t ring_bytes;
	uint32_t frame_max;
	struct xpu_side_info side[2];
	struct xpu_dir_stats dir[2]; /* 0: host->DPU, 1: DPU->host */
};

/* Create a new window file at path (O_EXCL: -EEXIST when it exists). The
 * directory /dev/shm/heteropod is created when path is inside it. On error no
 * file is left behind. */
XPU_API int xpu_window_create(const char *path, uint32_t ring_bytes, xpu_window **out);

/* Map an existing window. -EBADMSG: not a window (wrong magic); -EPROTONOSUPPORT:
 * another layout version; -EMSGSIZE: file size does not match its header. */
XPU_API int xpu_window_attach(const char *path, xpu_window **out);

/* Unmap. Ports opened on the window must be closed first (-EBUSY otherwise). */
XPU_API int xpu_window_close(xpu_window *w);

/* Open one end of the link: claim the side in the window (-EBUSY when a live
 * process owns it), create TAP device tap_name inside the network namespace at
 * netns_path (-EINVAL: not a network namespace; -EEXIST: the name is in use
 * there), bring it up, and start its pump threads and liveness monitor. The
 * host side in XPU_MODE_SERVED starts no pump, and when the device is still
 * there because the DPU end serves it (the side's last owner died), takes it
 * back from the DPU end. */
XPU_API int xpu_port_open(xpu_window *w, int side, const char *netns_path,
			  const char *tap_name, int mode, xpu_port **out);

/* Stop the pumps, remove the TAP device, release the side (the peer sees the
 * link go down at once). Never blocks on the peer. */
XPU_API int xpu_port_close(xpu_port *p);

/* 1 when both ends are attached and alive, 0 otherwise. */
XPU_API int xpu_port_link_up(const xpu_port *p);

/* Read the statistics of the window at path; any process may call it. */
XPU_API int xpu_window_stats(const char *path, struct xpu_stats *out);

/* sizeof(struct xpu_stats), for bindings that check their layout. */
XPU_API uint32_t xpu_stats_size(void);

/* ---- Listening sockets of a network namespace (NETLINK_SOCK_DIAG) ---- */

/* One listening TCP socket. */
struct xpu_listener {
	uint8_t family;   /* 4 or 6 */
	uint8_t reserved; /* 0 */
	uint16_t port;    /* host byte order */
	uint8_t addr[16]; /* network byte order; IPv4 in the first 4 bytes, the rest 0 */
};

/* A close-on-exec NETLINK_SOCK_DIAG socket that answers for the network
 * namespace netns_fd refers to (an open /proc/PID/ns/net or /run/netns/NAME),
 * for as long as it is open; it keeps the namespace alive. Returns the socket,
 * for the caller to close(2), or -errno: -EINVAL when netns_fd is not a network
 * namespace, -EPERM without CAP_SYS_ADMIN. The calling thread's namespace never
 * changes (a thread of the library enters the namespace and ends). */
XPU_API int xpu_diag_open(int netns_fd);

/* The TCP sockets in state LISTEN of fd's namespace (fd from xpu_diag_open):
 * IPv4 first, then IPv6 (none when the kernel has no IPv6). The kernel walks
 * its listening sockets only, so the cost does not grow with connections or
 * TIME_WAIT sockets. Returns how many there are, which may exceed max: then
 * out holds the first max and the caller may ask again with more room.
 * -ETIMEDOUT when the kernel has not answered within a second. Not for two
 * threads at once on the same fd. */
XPU_API int xpu_diag_listeners(int fd, struct xpu_listener *out, int max);

/* sizeof(struct xpu_listener), for bindings that check their layout. */
XPU_API uint32_t xpu_listener_size(void);

/* ---- Network namespace work without a process ---- */

/* Each call runs on a short-lived thread of the library that enters the
 * namespace at netns_path (setns changes that thread only); -ENOENT when
 * nothing is at netns_path, -EINVAL when it is not a network namespace. */

/* One IPv4 address of the namespace. */
struct xpu_addr4 {
	char dev[16];     /* the device (its label, e.g. "eth0") */
	uint8_t addr[4];  /* network byte order */
	uint8_t prefix;   /* prefix length */
	uint8_t reserved[3];
};

/* The IPv4 addresses of the namespace (SIOCGIFCONF). Returns how many there
 * are, which may exceed max: out holds the first max. */
XPU_API int xpu_netns_addrs4(const char *netns_path, struct xpu_addr4 *out, int max);

/* sizeof(struct xpu_addr4), for bindings that check their layout. */
XPU_API uint32_t xpu_addr4_size(void);

/* Reads the sysctls named in reads ("net.ipv4.ip_local_port_range\n…"; a
 * name with a slash is a path below /proc/sys, as sysctl(8) takes it), then
 * writes those in writes ("name=value\n…"). out receives one line per read
 * value. On failure out holds the name that failed and nothing after it was
 * done. -ENOSPC when the values do not fit in out. */
XPU_API int xpu_netns_sysctls(const char *netns_path, const char *reads, const char *writes, char *out, uint32_t out_len);

/* Sets up the link's device dev: its MAC address, its address cidr
 * ("169.254.77.1/30"), a permanent neighbour entry for the peer (peer,
 * peer_mac), a route to route ("default" or "a.b.c.d/n") via the peer unless
 * route is NULL or "", and lo up when lo_up. On failure why names the step. */
XPU_API int xpu_netns_link4(const char *netns_path, const char *dev, const char *mac, const char *cidr,
			    const char *peer, const char *peer_mac, const char *route, int lo_up, char *why,
			    uint32_t why_len);

/* Runs a program in the namespace at netns_path: args holds its argv, each
 * string ending in NUL (args_len bytes in all; the program is looked up in
 * PATH), input goes to its stdin, its stdout and stderr come back in out and
 * err (*out_used and *err_used count every byte; more than fits is dropped).
 * The program is started with posix_spawn from a thread of the library inside
 * the namespace: nothing of the caller's memory is copied, no nsenter runs.
 * Returns its wait status (waitpid's, >= 0) or -errno: -ENOENT when the
 * program is not found. Blocks until it exits: call it off the event loop. */
XPU_API int xpu_run(const char *netns_path, const char *args, uint32_t args_len, const char *input,
		    uint32_t input_len, char *out, uint32_t out_len, uint32_t *out_used, char *err, uint32_t err_len,
		    uint32_t *err_used);

/* xpu_run, also in the caller's own namespace (netns_path NULL: no thread
 * enters one), with the program's working directory cwd (NULL: the caller's)
 * and its environment env, NUL-ended "NAME=value" strings, env_len bytes in all
 * (NULL: the caller's; a lone NUL, env_len 1: an empty one). */
XPU_API int xpu_run_in(const char *netns_path, const char *cwd, const char *env, uint32_t env_len, const char *args,
		       uint32_t args_len, const char *input, uint32_t input_len, char *out, uint32_t out_len,
		       uint32_t *out_used, char *err, uint32_t err_len, uint32_t *err_used);

/* ---- The split network's netfilter rules and port ownership ---- */

/* Text results are written like snprintf(3): the return value is the length of
 * the whole text, not counting its NUL (-EOVERFLOW: more than an int holds);
 * when that is >= out_len, out holds as much as fits, NUL-ended (when
 * out_len > 0), and the caller may ask again with return value + 1 bytes.
 * Port lists are uint16_t in host byte order, written like
 * xpu_diag_listeners: the return value is how many there are, which may exceed
 * max; out holds the first max. NULL with a count or length of 0 is allowed
 * everywhere. Nothing here enters a namespace or runs a program. */

/* The link between the halves: its two addresses, its subnet and the device
 * that carries it in each half. */
#define XPU_HOST_LINK_IP "169.254.77.1"
#define XPU_DPU_LINK_IP "169.254.77.2"
#define XPU_LINK_NET "169.254.77.0/30"
#define XPU_LINK_TAP "xpu0"

/* The length of a pod's tag in chain names. */
#define XPU_CHAIN_TAG_LEN 12
/* iptables' multiport match takes at most this many ports a rule. */
#define XPU_MULTIPORT_MAX 15

/* The pod's tag in chain names: the first 12 characters of a CRI sandbox id
 * (12 or more of [0-9a-f], as `crictl pods` shows them), or of the hex SHA-256
 * of any other id. Returns 12. Chain names are at most 28 characters:
 * "HP-" + 12 + "-POSTROUTING" is 27. */
XPU_API int xpu_rules_chain_tag(const char *pod_id, char *out, uint32_t out_len);

/* The pod's chain hung off the built-in chain builtin: "HP-<tag>-<builtin>". */
XPU_API int xpu_rules_chain_name(const char *pod_id, const char *builtin, char *out, uint32_t out_len);

/* ports, in the order given, as multiport lists of at most XPU_MULTIPORT_MAX:
 * "1,2,…,15\n16\n", one line each; "" for no ports. */
XPU_API int xpu_rules_multiport(const uint16_t *ports, uint32_t count, char *out, uint32_t out_len);

/* xpu_half_rules.flags */
enum {
	/* Also insert the jumps from the built-in chains (the first install only:
	 * updates rewrite the pod's chains and leave the jumps in place). */
	XPU_RULES_JUMPS = 1u << 0,
	/* DPU half only: the pod IP is an address of this half (it has the DPU's
	 * uplink): its own traffic to the pod IP stays local by itself, and for
	 * the host half's ports (peer_ports) crosses to the host half. */
	XPU_RULES_POD_IP_LOCAL = 1u << 1,
};

/* What the rules of one half are made from. */
struct xpu_half_rules {
	int32_t side;       /* enum xpu_side */
	uint32_t flags;     /* XPU_RULES_* */
	const char *pod_id;
	const char *pod_ip; /* IPv4; required for the host half; NULL or "": none */
	const char *tap;    /* the link's device; NULL: XPU_LINK_TAP */
	/* Ports whose listener is in the other half: this half's traffic for them
	 * crosses. In the order given. */
	const uint16_t *peer_ports;
	/* DPU half only: ports it serves at the pod IP. Its own traffic to the pod
	 * IP for them stays local instead of going out to the host half and back. */
	const uint16_t *own_pod_ip_ports;
	uint32_t peer_ports_count;
	uint32_t own_pod_ip_ports_count;
};

/* The iptables-restore --noflush input of one half: the nat table (and on the
 * host half the filter table), each in chains of the pod's own (emptied by
 * being declared), reached by jumps that carry the comment
 * "heteropod pod <pod id> <side> half". -EINVAL when r does not make rules (no
 * pod id, or one with a quote, backslash or control character, which a rule's
 * comment cannot carry; the host half without a pod IP; a pod IP that is not
 * IPv4; an unknown side or flag; a device name that cannot be one): then out
 * holds why ("the pod IP is required"), the text for a message. */
XPU_API int xpu_rules_half(const struct xpu_half_rules *r, char *out, uint32_t out_len);

/* sizeof(struct xpu_half_rules), for bindings that check their layout. */
XPU_API uint32_t xpu_half_rules_size(void);

/* From iptables-save output, the iptables-restore --noflush input that removes
 * every jump to the pod's chains from a chain not the pod's, and the pod's
 * chains; "" (0) when nothing of the pod's is there. Rules of anyone else are
 * left alone; lines outside a "*table" … "COMMIT" section are ignored. */
XPU_API int xpu_rules_removal(const char *saved, const char *pod_id, char *out, uint32_t out_len);

/* The ports, each once, in ascending order. out may be ports itself. */
XPU_API int xpu_ports_sorted(const uint16_t *ports, uint32_t count, uint16_t *out, uint32_t max);

/* What one half knows of a pod's ports: the ports declared for offloaded
 * containers in heteropod.io/ports, and the listeners seen in each half. */
struct xpu_port_view {
	const uint16_t *declared_dpu;
	const uint16_t *host_listening;
	const uint16_t *dpu_listening;
	uint32_t declared_dpu_count;
	uint32_t host_listening_count;
	uint32_t dpu_listening_count;
};

/* sizeof(struct xpu_port_view), for bindings that check their layout. */
XPU_API uint32_t xpu_port_view_size(void);

/* Port ownership, in order of precedence: a declared port is the DPU half's,
 * whether or not a host process also listens on it; otherwise a port is the
 * half's in which it is listened on; listened on in both halves (a conflict),
 * each half's localhost reaches its own listener and the pod IP the host
 * half. Each result is sorted, each port once. */

/* Ports the DPU half serves, seen from the host half: traffic for them to
 * 127.0.0.1 or to the pod IP crosses to the DPU half. */
XPU_API int xpu_ports_dpu_owned(const struct xpu_port_view *v, uint16_t *out, uint32_t max);

/* Ports the host half serves, seen from the DPU half: its traffic for them to
 * 127.0.0.1 crosses to the host half. */
XPU_API int xpu_ports_host_owned(const struct xpu_port_view *v, uint16_t *out, uint32_t max);

/* Ports listened on in both halves. */
XPU_API int xpu_ports_conflicting(const struct xpu_port_view *v, uint16_t *out, uint32_t max);

#ifdef __cplusplus
}
#endif
#endif
