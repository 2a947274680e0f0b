/*
 * The host half of a pod's split network namespace, for the node daemon in C:
 * what openHostHalf / NetnsHalf (src/netns/half.ts) do on the host side. The
 * half owns, in the pod's CNI namespace, the host end of the pod's XPU link
 * (its window /dev/shm/heteropod/pod-<pod id>.xpu and TAP xpu0,
 * 169.254.77.1/30), the sysctls it changes (put back at close) and its
 * netfilter chains HP-<tag>-*. The DPU half is the agent's.
 *
 * Blocking: every function may run programs (iptables-restore, iptables-save)
 * and enter the namespace from a short-lived thread of libxpu. The daemon calls
 * them on a worker thread, never two at once for one half; the half keeps no
 * thread, timer or global of its own (the pump threads are libxpu's port's).
 * The process ignores SIGPIPE (the daemon does): a program that exits before
 * reading all of its input (iptables-restore failing early) must make
 * libxpu's write to it fail, not end the process.
 *
 * Every function returning int returns 0 (or a count) or a negative errno, and
 * on failure writes into err (when err_len > 0) a message that says what
 * failed, as the TS half's errors do.
 */
#ifndef HETEROPOD_NODED_HALF_H
#define HETEROPOD_NODED_HALF_H

#include <stddef.h>
#include <stdint.h>

struct nd_half;

struct nd_half_opts {
	const char *pod_id;	/* CRI sandbox id */
	const char *netns_path; /* the pod's CNI namespace (host half) */
	const char *pod_ip;	/* IPv4, dotted */
	const uint16_t *declared_dpu_ports; /* heteropod.io/ports: the DPU half's from the start */
	size_t n_declared;
	int mode; /* enum xpu_mode of the host end ([xpu] host_mode: served, sleep, elastic, poll) */
	/*
	 * NULL for a new half. For a takeover after the previous owner died: the
	 * sysctls the first open saved (nd_half_saved_sysctls, "name=value" lines),
	 * to put back at close. The window is then attached (what its rings hold
	 * kept) when no running process holds its host end.
	 */
	const char *resume_sysctls;
	/* Warnings (ports listened on in both halves), level "warn"; NULL: stderr. */
	void (*log)(void *ctx, const char *level, const char *msg);
	void *log_ctx;
};

/* Opens the host half; on failure everything done so far is undone. */
int nd_half_open(const struct nd_half_opts *o, struct nd_half **out, char *err, size_t err_len);

/*
 * The other half's listening TCP ports (the DPU half's, as the agent reports
 * them): the rules and ip_local_reserved_ports brought up to date (skipped
 * when unchanged).
 */
int nd_half_set_peer_ports(struct nd_half *h, const uint16_t *ports, size_t n, char *err, size_t err_len);

/*
 * One look at this half's own listening TCP ports. *changed is set when they
 * differ from the last look, and then the rules are brought up to date too; a
 * failed update is returned with *changed still set (the ports are new, the
 * rules are tried again at the next change or set_peer_ports).
 */
int nd_half_poll(struct nd_half *h, int *changed, char *err, size_t err_len);

/* The ports of the last look, sorted, each once; valid until the next poll. */
size_t nd_half_ports(const struct nd_half *h, const uint16_t **ports);

/*
 * What the namespace had before the half, for the pod's record (a takeover's
 * resume_sysctls): "name=value\n" lines.
 */
const char *nd_half_saved_sysctls(const struct nd_half *h);

const char *nd_half_window_path(const struct nd_half *h);

/*
 * Removes everything: the rules, the sysctls back, the port, the window (kept
 * when the rules could not be removed: the next open or clean-up finds them by
 * it). Every step is tried; err lists each step that failed
 * ("close the host half of pod X: step: why; step: why"). Frees h.
 */
int nd_half_close(struct nd_half *h, char *err, size_t err_len);

/*
 * The pod address: the IPv4 address and prefix length of dev (eth0, as CNI
 * names it) in the namespace, not one of 127.0.0.0/8 (podAddress in half.ts).
 */
int nd_pod_address(const char *netns_path, const char *dev, char *ip, size_t ip_len, int *prefix, char *err,
		   size_t err_len);

#endif
