/*
 * The host half of a pod's split network namespace (half.h): openHostHalf and
 * the host side of NetnsHalf (src/netns/half.ts), with rules.ts's applyRules,
 * savedRules and removeRules and exec.ts's sysctls. The work itself is
 * libxpu's (src/xpu/xpu.h): the window and port, the link's device, sysctls
 * and addresses, listeners, the rules text and port ownership, and running
 * iptables-restore / iptables-save inside the namespace. What is here is the
 * order of that work, its undoing, the state between calls and the messages.
 */
#include "half.h"

#include "../xpu/xpu.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Windows live here (xpu window.ts WINDOW_DIR); libxpu makes it on create. */
#define WINDOW_DIR "/dev/shm/heteropod"
/* The link's two ends: locally administered unicast addresses, fixed, so no
 * ARP crosses the link (a permanent neighbour entry for the peer). */
#define HOST_LINK_MAC "02:68:70:77:00:01"
#define DPU_LINK_MAC "02:68:70:77:00:02"
#define HOST_LINK_CIDR XPU_HOST_LINK_IP "/30"
/* HOST_EPHEMERAL of src/netns/uplink.ts: the host half's own connections take
 * their ports from here, the DPU half's from 47000-60999 (DPU_EPHEMERAL), so
 * the replies to each half's connections come back to it. */
#define HOST_EPHEMERAL "32768 46999"
#define RESERVED_PORTS "net.ipv4.ip_local_reserved_ports"
#define PORT_RANGE "net.ipv4.ip_local_port_range"
/* POD_ID in half.ts: [A-Za-z0-9][A-Za-z0-9_.-]{0,127} */
#define POD_ID_MAX 128
/* One step's reason, before its context is put in front. */
#define WHY_MAX 2048
/* What a program run in the namespace may write: stdout grows (iptables-save
 * of a namespace with many rules), stderr is kept for the message. */
#define RUN_OUT_FIRST (64u << 10)
#define RUN_ERR_MAX (16u << 10)
/* xpu_netns_sysctls' output for the values read (libxpu takes a value up to 4 KiB). */
#define SYSCTL_OUT_MAX 16384
#define LOOK_ROOM_FIRST 64
/* struct xpu_side_info.state of a side a process has claimed */
#define SIDE_ATTACHED 1

struct nd_half {
	char *pod_id, *netns_path, *pod_ip;
	char window_path[sizeof(WINDOW_DIR "/pod-.xpu") + POD_ID_MAX];
	xpu_window *window;
	xpu_port *port;
	int diag_fd; /* NETLINK_SOCK_DIAG socket in the namespace; holds it alive */

	uint16_t *declared, *peer, *listening; /* the port view (peer and listening sorted) */
	uint32_t n_declared, n_peer, n_listening;
	/* The records of the last look as the kernel gave them: the same bytes need no sorting. */
	struct xpu_listener *looked, *last_raw;
	int looked_room, n_last_raw;

	char *saved_sysctls;  /* "name=value\n": what close puts back */
	char *applied_rules;  /* the rules text (without jumps) the namespace has */
	char *last_conflicts; /* the conflicting ports last warned of, "1,2" */
	char *reserved_now;   /* ip_local_reserved_ports as the namespace has it, NULL: not known */

	void (*log)(void *ctx, const char *level, const char *msg);
	void *log_ctx;
};

/* ---- messages ---- */

__attribute__((format(printf, 4, 5))) static int fail(char *buf, size_t len, int rc, const char *fmt, ...)
{
	va_list ap;

	if (len > 0) {
		va_start(ap, fmt);
		vsnprintf(buf, len, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* "EINVAL (Invalid argument)", as errnoText in src/xpu/native.ts. */
struct errno_text {
	char s[96];
};

static struct errno_text errno_text(int e)
{
	struct errno_text t;
	const char *name = strerrorname_np(e);

	if (name)
		snprintf(t.s, sizeof(t.s), "%s (%s)", name, strerror(e));
	else
		snprintf(t.s, sizeof(t.s), "errno %d", e);
	return t;
}

#define ERRNO_TEXT(rc) (errno_text(-(rc)).s)

/* What entering the namespace at path said, when nothing inside failed. */
static const char *netns_reason(int rc, struct errno_text *t)
{
	if (rc == -ENOENT)
		return "no such network namespace";
	if (rc == -EINVAL)
		return "not a network namespace";
	*t = errno_text(-rc);
	return t->s;
}

static const char *window_reason(int rc, struct errno_text *t)
{
	switch (-rc) {
	case ENOENT:
		return "no such window";
	case EBADMSG:
		return "not an XPU window (wrong magic)";
	case EPROTONOSUPPORT:
		return "unsupported window layout version";
	case EMSGSIZE:
		return "window size does not match its header";
	case EACCES:
	case EPERM:
		return "permission denied";
	}
	*t = errno_text(-rc);
	return t->s;
}

/* A line of the half's, "host half of pod X: …", to opts.log or stderr (logged as the TS half does). */
__attribute__((format(printf, 3, 4))) static void half_log(const struct nd_half *h, const char *level,
							   const char *fmt, ...)
{
	char *msg = NULL, *line = NULL;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return; /* no memory: the warning is lost, nothing else */
	if (asprintf(&line, "host half of pod %s: %s", h->pod_id, msg) >= 0) {
		if (h->log)
			h->log(h->log_ctx, level, line);
		else
			fprintf(stderr, "heteropod netns %s: %s\n", level, line);
		free(line);
	}
	free(msg);
}

/* ---- small helpers ---- */

/* [A-Za-z0-9][A-Za-z0-9_.-]{0,127}: the window's name (podWindowPath). */
static int valid_pod_id(const char *id)
{
	size_t n = id ? strlen(id) : 0;

	if (n == 0 || n > POD_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');

		if (!alnum && (i == 0 || !strchr("_.-", c)))
			return 0;
	}
	return 1;
}

/* A path that is a network namespace (an nsfs mount or /proc/PID/ns/net):
 * on the nsfs device, and a namespace of the network type. */
static int is_netns(const char *path)
{
	struct stat st, own;
	int fd, type;

	if (stat(path, &st) < 0 || stat("/proc/self/ns/net", &own) < 0 || st.st_dev != own.st_dev)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	type = ioctl(fd, NS_GET_NSTYPE);
	close(fd);
	return type == CLONE_NEWNET;
}

/* processRunning (src/common/processes.ts): the process exists and has not
 * exited; a zombie holds no file, device or mapping any more. */
static int process_running(pid_t pid)
{
	char path[64], stat[512];
	const char *paren;
	ssize_t n;
	int fd;

	if (pid <= 0 || (kill(pid, 0) < 0 && errno != EPERM))
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, stat, sizeof(stat) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	stat[n] = '\0';
	/* The state follows the command name, in parentheses, which may hold any character. */
	paren = strrchr(stat, ')');
	return paren && paren[1] == ' ' && paren[2] && paren[2] != 'Z' && paren[2] != 'X';
}

/* "1,2,3" ("" for none); NULL without memory. */
static char *ports_text(const uint16_t *ports, uint32_t n)
{
	char *s = malloc((size_t)n * 6 + 1);
	size_t at = 0;

	if (!s)
		return NULL;
	s[0] = '\0';
	for (uint32_t i = 0; i < n; i++)
		at += (size_t)sprintf(s + at, i ? ",%u" : "%u", ports[i]);
	return s;
}

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* ---- ports ---- */

static struct xpu_port_view port_view(const struct nd_half *h)
{
	struct xpu_port_view v = {
		.declared_dpu = h->declared,
		.host_listening = h->listening,
		.dpu_listening = h->peer,
		.declared_dpu_count = h->n_declared,
		.host_listening_count = h->n_listening,
		.dpu_listening_count = h->n_peer,
	};
	return v;
}

typedef int (*ownership_fn)(const struct xpu_port_view *v, uint16_t *out, uint32_t max);

/* One of libxpu's port sets of the half's view, in *out (malloc'd); how many. */
static int owned_ports(const struct nd_half *h, ownership_fn fn, uint16_t **out)
{
	struct xpu_port_view v = port_view(h);
	uint16_t *ports;
	int n;

	n = fn(&v, NULL, 0);
	if (n < 0)
		return n;
	ports = malloc(((size_t)n + 1) * sizeof(*ports));
	if (!ports)
		return -ENOMEM;
	n = fn(&v, ports, (uint32_t)n);
	if (n < 0) {
		free(ports);
		return n;
	}
	*out = ports;
	return n;
}

/* The same, as "1,2,3". */
static int owned_text(const struct nd_half *h, ownership_fn fn, char **out)
{
	uint16_t *ports;
	int n = owned_ports(h, fn, &ports);

	if (n < 0)
		return n;
	*out = ports_text(ports, (uint32_t)n);
	free(ports);
	return *out ? 0 : -ENOMEM;
}

/* ---- programs in the namespace (runProgram, inNetns) ---- */

/*
 * Runs args (each NUL-ended, args_len bytes) in the namespace with input on
 * its stdin; its stdout, NUL-ended, in *out (malloc'd) when out is not NULL.
 * Output larger than the buffer is read again with room for it. Fails with the
 * command line and its stderr, or its exit code.
 */
static int run_in_netns(const char *netns, const char *shown, const char *args, uint32_t args_len,
			const char *input, char **out, char *why, size_t why_len)
{
	uint32_t cap = RUN_OUT_FIRST, out_used, err_used;
	char *buf = NULL, *err;
	int status, rc;

	err = malloc(RUN_ERR_MAX + 1);
	if (!err)
		return fail(why, why_len, -ENOMEM, "%s (in %s): out of memory", shown, netns);
	for (;;) {
		char *bigger = realloc(buf, cap);

		if (!bigger) {
			rc = fail(why, why_len, -ENOMEM, "%s (in %s): out of memory", shown, netns);
			goto out;
		}
		buf = bigger;
		status = xpu_run(netns, args, args_len, input, input ? (uint32_t)strlen(input) : 0, buf, cap - 1,
				 &out_used, err, RUN_ERR_MAX, &err_used);
		if (status < 0) {
			/* posix_spawn says ENOENT for a program not found and a namespace not there. */
			if (status == -ENOENT)
				rc = fail(why, why_len, status, "%s (in %s): %s: not found (or no such network namespace)",
					  shown, netns, args);
			else
				rc = fail(why, why_len, status, "%s (in %s): %s", shown, netns, ERRNO_TEXT(status));
			goto out;
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			char *s = err, *e;

			err[err_used < RUN_ERR_MAX ? err_used : RUN_ERR_MAX] = '\0';
			while (is_space(*s))
				s++;
			for (e = s + strlen(s); e > s && is_space(e[-1]); e--)
				;
			*e = '\0';
			if (*s)
				rc = fail(why, why_len, -EIO, "%s (in %s): %s", shown, netns, s);
			else if (WIFSIGNALED(status))
				rc = fail(why, why_len, -EIO, "%s (in %s): killed by signal %d", shown, netns, WTERMSIG(status));
			else
				rc = fail(why, why_len, -EIO, "%s (in %s): exit code %d", shown, netns, WEXITSTATUS(status));
			goto out;
		}
		if (!out || out_used < cap)
			break;
		cap = out_used + 4096; /* and once more, with room for all of it */
	}
	if (out) {
		buf[out_used] = '\0';
		*out = buf;
		buf = NULL;
	}
	rc = 0;
out:
	free(buf);
	free(err);
	return rc;
}

#define ARGS(...) __VA_ARGS__, sizeof(__VA_ARGS__)

static int apply_rules(const char *netns, const char *text, char *why, size_t why_len)
{
	return run_in_netns(netns, "iptables-restore -w --noflush", ARGS("iptables-restore\0-w\0--noflush"), text, NULL,
			    why, why_len);
}

/* Every rule and chain in the namespace, from its live state. */
static int saved_rules(const char *netns, char **out, char *why, size_t why_len)
{
	return run_in_netns(netns, "iptables-save", ARGS("iptables-save"), NULL, out, why, why_len);
}

/* Removes the pod's jumps and chains from the namespace; returns how many chains went. */
static int remove_rules(const char *netns, const char *pod_id, char *why, size_t why_len)
{
	char *saved, *text = NULL;
	int n, rc;

	rc = saved_rules(netns, &saved, why, why_len);
	if (rc < 0)
		return rc;
	n = xpu_rules_removal(saved, pod_id, NULL, 0);
	if (n <= 0) {
		rc = n < 0 ? fail(why, why_len, n, "removal of the rules of pod %s: %s", pod_id, ERRNO_TEXT(n)) : 0;
		goto out;
	}
	text = malloc((size_t)n + 1);
	if (!text) {
		rc = fail(why, why_len, -ENOMEM, "removal of the rules of pod %s: out of memory", pod_id);
		goto out;
	}
	xpu_rules_removal(saved, pod_id, text, (uint32_t)n + 1);
	rc = apply_rules(netns, text, why, why_len);
	for (const char *l = text; rc >= 0 && *l; l = *strchrnul(l, '\n') ? strchrnul(l, '\n') + 1 : "")
		rc += strncmp(l, "-X ", 3) == 0;
out:
	free(text);
	free(saved);
	return rc;
}

/* The host half's rules now (with the jumps from the built-in chains for the first install). */
static int half_rules(const struct nd_half *h, int jumps, char **out, char *why, size_t why_len)
{
	struct xpu_half_rules r;
	uint16_t *crossing;
	uint32_t cap = 4096;
	char *buf = NULL;
	int n;

	/* The host half's traffic for the DPU half's ports crosses. */
	n = owned_ports(h, xpu_ports_dpu_owned, &crossing);
	if (n < 0)
		return fail(why, why_len, n, "rules for the host half of pod %s: %s", h->pod_id, ERRNO_TEXT(n));
	memset(&r, 0, sizeof(r));
	r.side = XPU_SIDE_HOST;
	r.flags = jumps ? XPU_RULES_JUMPS : 0;
	r.pod_id = h->pod_id;
	r.pod_ip = h->pod_ip;
	r.tap = XPU_LINK_TAP;
	r.peer_ports = crossing;
	r.peer_ports_count = (uint32_t)n;
	for (;;) {
		char *bigger = realloc(buf, cap);

		if (!bigger) {
			n = -ENOMEM;
			break;
		}
		buf = bigger;
		n = xpu_rules_half(&r, buf, cap);
		if (n < 0 || (uint32_t)n < cap)
			break;
		cap = (uint32_t)n + 1;
	}
	free(crossing);
	if (n < 0) {
		/* EINVAL: the input makes no rules, and the text says why. */
		if (n == -EINVAL)
			fail(why, why_len, n, "rules for the host half of pod %s: %s", h->pod_id, buf);
		else
			fail(why, why_len, n, "rules for the host half of pod %s: %s", h->pod_id, ERRNO_TEXT(n));
		free(buf);
		return n;
	}
	*out = buf;
	return 0;
}

/* ---- sysctls (swapSysctls, writeSysctls) ---- */

/* A name a "name=value" line can carry (sysctlLine). */
static int sysctl_name_ok(const char *netns, const char *name, char *why, size_t why_len)
{
	if (!*name || strpbrk(name, "\n="))
		return fail(why, why_len, -EINVAL, "sysctl in %s: \"%s\" is not a sysctl name", netns, name);
	return 0;
}

/* Reads the names in reads, then writes writes ("name=value\n"), in one visit
 * to the namespace; the values read, one a line, in out. */
static int sysctls(const char *netns, const char *reads, const char *writes, char *out, uint32_t out_len, char *why,
		   size_t why_len)
{
	struct errno_text t;
	int rc;

	rc = xpu_netns_sysctls(netns, reads, writes, out, out_len);
	if (rc < 0) {
		/* out names the sysctl that failed; without it, the namespace could not be entered. */
		if (out[0])
			return fail(why, why_len, rc, "sysctl in %s (%s): %s", netns, out, ERRNO_TEXT(rc));
		return fail(why, why_len, rc, "sysctl in %s: %s", netns, netns_reason(rc, &t));
	}
	return 0;
}

static int write_sysctls(const char *netns, const char *writes, char *why, size_t why_len)
{
	char out[256];

	if (!*writes)
		return 0;
	return sysctls(netns, "", writes, out, sizeof(out), why, why_len);
}

/*
 * Reads the sysctls named in keep (one a line), then writes want: what the
 * namespace had, in *saved as "name=value\n" lines (each value trimmed).
 */
static int swap_sysctls(const char *netns, const char *keep, const char *want, char **saved, char *why,
			size_t why_len)
{
	char *out, *text, *at;
	const char *name, *value;
	size_t len;
	int rc;

	out = malloc(SYSCTL_OUT_MAX);
	text = malloc(strlen(keep) + SYSCTL_OUT_MAX + 1);
	if (!out || !text) {
		rc = fail(why, why_len, -ENOMEM, "sysctl in %s: out of memory", netns);
		goto fail;
	}
	rc = sysctls(netns, keep, want, out, SYSCTL_OUT_MAX, why, why_len);
	if (rc < 0)
		goto fail;
	at = text;
	name = keep;
	value = out;
	while (*name) {
		const char *name_end = strchrnul(name, '\n'), *value_end = strchrnul(value, '\n');
		const char *s = value, *e = value_end;

		while (s < e && is_space(*s))
			s++;
		while (e > s && is_space(e[-1]))
			e--;
		len = (size_t)(name_end - name);
		memcpy(at, name, len);
		at += len;
		*at++ = '=';
		memcpy(at, s, (size_t)(e - s));
		at += e - s;
		*at++ = '\n';
		name = *name_end ? name_end + 1 : name_end;
		value = *value_end ? value_end + 1 : value_end;
	}
	*at = '\0';
	free(out);
	*saved = text;
	return 0;
fail:
	free(out);
	free(text);
	return rc;
}

/* The value of name in "name=value\n" lines, as a new string; NULL when absent or without memory. */
static char *sysctl_value(const char *lines, const char *name)
{
	size_t n = strlen(name);

	for (const char *l = lines; *l;) {
		const char *e = strchrnul(l, '\n');

		if ((size_t)(e - l) > n && strncmp(l, name, n) == 0 && l[n] == '=')
			return strndup(l + n + 1, (size_t)(e - l) - n - 1);
		l = *e ? e + 1 : e;
	}
	return NULL;
}

/* A takeover's saved sysctls: "name=value" lines, each ending in '\n' here. */
static int resume_text(const char *netns, const char *in, char **out, char *why, size_t why_len)
{
	char *text = malloc(strlen(in) + 2), *at = text;

	if (!text)
		return fail(why, why_len, -ENOMEM, "saved sysctls: out of memory");
	for (const char *l = in; *l;) {
		const char *e = strchrnul(l, '\n'), *eq = memchr(l, '=', (size_t)(e - l));

		if (e > l) {
			if (!eq || eq == l) {
				free(text);
				return fail(why, why_len, -EINVAL, "sysctl in %s: saved line \"%.*s\" is not name=value",
					    netns, (int)(e - l), l);
			}
			memcpy(at, l, (size_t)(e - l));
			at += e - l;
			*at++ = '\n';
		}
		l = *e ? e + 1 : e;
	}
	*at = '\0';
	*out = text;
	return 0;
}

/* ---- addresses ---- */

/* The namespace's IPv4 addresses, in *out (malloc'd); how many. */
static int addrs4(const char *netns, struct xpu_addr4 **out, char *why, size_t why_len)
{
	struct xpu_addr4 *buf = NULL;
	struct errno_text t;
	int room = 16, n;

	for (;;) {
		struct xpu_addr4 *bigger = realloc(buf, (size_t)room * sizeof(*buf));

		if (!bigger) {
			free(buf);
			return fail(why, why_len, -ENOMEM, "list the IPv4 addresses in %s: out of memory", netns);
		}
		buf = bigger;
		n = xpu_netns_addrs4(netns, buf, room);
		if (n < 0) {
			free(buf);
			return fail(why, why_len, n, "list the IPv4 addresses in %s: %s", netns, netns_reason(n, &t));
		}
		if (n <= room)
			break;
		room = n + 4;
	}
	*out = buf;
	return n;
}

/* The device in the namespace that carries address ip (eth0, as CNI names it). */
static int device_with_address(const char *netns, const char *ip, char dev[16], char *why, size_t why_len)
{
	struct xpu_addr4 *a;
	struct in_addr want;
	int n, i;

	inet_pton(AF_INET, ip, &want); /* checked at open */
	n = addrs4(netns, &a, why, why_len);
	if (n < 0)
		return n;
	for (i = 0; i < n && memcmp(a[i].addr, &want, 4) != 0; i++)
		;
	if (i < n)
		memcpy(dev, a[i].dev, 16);
	free(a);
	if (i == n)
		return fail(why, why_len, -ENODEV,
			    "no device in %s has the pod IP %s (has CNI set the pod's network up?)", netns, ip);
	return 0;
}

int nd_pod_address(const char *netns_path, const char *dev, char *ip, size_t ip_len, int *prefix, char *err,
		   size_t err_len)
{
	char why[WHY_MAX];
	struct xpu_addr4 *a;
	int n, i;

	if (!netns_path || !dev || !ip || !prefix)
		return fail(err, err_len, -EINVAL, "read the pod IP: no namespace, device or result given");
	if (!is_netns(netns_path))
		return fail(err, err_len, -EINVAL, "read the pod IP (IPv4 of %s) in %s: not a network namespace", dev,
			    netns_path);
	n = addrs4(netns_path, &a, why, sizeof(why));
	if (n < 0)
		return fail(err, err_len, n, "read the pod IP (IPv4 of %s) in %s: %s", dev, netns_path, why);
	/* Not 127.0.0.0/8: a loopback address is of the namespace, not the pod's network. */
	for (i = 0; i < n && (strncmp(a[i].dev, dev, sizeof(a[i].dev)) != 0 || a[i].addr[0] == 127); i++)
		;
	if (i == n) {
		free(a);
		return fail(err, err_len, -ENOENT,
			    "read the pod IP (IPv4 of %s) in %s: %s has no IPv4 address (has CNI set the pod's network up?)",
			    dev, netns_path, dev);
	}
	if (!inet_ntop(AF_INET, a[i].addr, ip, (socklen_t)ip_len)) {
		free(a);
		return fail(err, err_len, -ENOSPC, "read the pod IP (IPv4 of %s) in %s: no room for the address", dev,
			    netns_path);
	}
	*prefix = a[i].prefix;
	free(a);
	return 0;
}

/* ---- the window ---- */

/* Removes a window file, and the window directory with the last window in it. */
static int remove_window(const char *file, char *why, size_t why_len)
{
	int rc = unlink(file) < 0 && errno != ENOENT ? -errno : 0;

	if (rc < 0)
		return fail(why, why_len, rc, "unlink %s: %s", file, ERRNO_TEXT(rc));
	(void)rmdir(WINDOW_DIR); /* other windows remain, or it is gone */
	return 0;
}

/*
 * A window left by a host half whose owner died without closing it: no live
 * end means nobody uses it. A live end means this pod already has a host half
 * (or the DPU half of a previous one is still attached). 1 when there was one:
 * the host half's rules go only before its window does, so without a window
 * there are no rules of the pod to remove.
 */
static int remove_stale_window(const char *file, char *why, size_t why_len)
{
	struct xpu_stats s;
	struct stat st;
	char live[128] = "";
	int rc;

	if (stat(file, &st) < 0)
		return 0;
	/* Not a readable window: ours to replace. */
	if (xpu_window_stats(file, &s) == 0) {
		if (s.side[XPU_SIDE_HOST].alive)
			snprintf(live, sizeof(live), "host end (pid %d)", s.side[XPU_SIDE_HOST].pid);
		if (s.side[XPU_SIDE_DPU].alive)
			snprintf(live + strlen(live), sizeof(live) - strlen(live), "%sDPU end (pid %d)",
				 live[0] ? " and " : "", s.side[XPU_SIDE_DPU].pid);
	}
	if (live[0])
		return fail(why, why_len, -EBUSY, "XPU window %s is in use by its %s", file, live);
	rc = remove_window(file, why, why_len);
	return rc < 0 ? rc : 1;
}

/*
 * The window of a host half being resumed: attached when no running process
 * holds its host end (*w NULL when there is no window). The host end's owner
 * ran on this machine, so whether it still runs is asked of the kernel: its
 * heartbeat stays fresh for a second after it died, and a restart of the node
 * daemon inside that second (an upgrade) must take the pod over all the same.
 */
static int attach_orphan_window(const char *file, xpu_window **w, char *why, size_t why_len)
{
	struct errno_text t;
	struct xpu_stats s;
	struct stat st;
	int rc;

	*w = NULL;
	if (stat(file, &st) < 0)
		return 0;
	rc = xpu_window_stats(file, &s);
	if (rc < 0)
		return fail(why, why_len, rc, "read XPU window %s: %s", file, window_reason(rc, &t));
	if (s.side[XPU_SIDE_HOST].state == SIDE_ATTACHED && process_running(s.side[XPU_SIDE_HOST].pid))
		return fail(why, why_len, -EBUSY, "XPU window %s: its host end is held by live process %d", file,
			    s.side[XPU_SIDE_HOST].pid);
	rc = xpu_window_attach(file, w);
	if (rc < 0)
		return fail(why, why_len, rc, "attach XPU window %s: %s", file, window_reason(rc, &t));
	return 0;
}

static int open_port(struct nd_half *h, int mode, char *why, size_t why_len)
{
	char reason[PATH_MAX + 96];
	int rc;

	rc = xpu_port_open(h->window, XPU_SIDE_HOST, h->netns_path, XPU_LINK_TAP, mode, &h->port);
	if (rc == 0)
		return 0;
	switch (-rc) {
	case ENOENT:
		snprintf(reason, sizeof(reason), "network namespace %s does not exist", h->netns_path);
		break;
	case EINVAL:
		snprintf(reason, sizeof(reason), "%s is not a network namespace", h->netns_path);
		break;
	case EEXIST:
		snprintf(reason, sizeof(reason), "a network device named " XPU_LINK_TAP " already exists in %s",
			 h->netns_path);
		break;
	case EBUSY:
		snprintf(reason, sizeof(reason), "the host side is already attached by a live process");
		break;
	case EPERM:
	case EACCES:
		snprintf(reason, sizeof(reason), "permission denied (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)");
		break;
	default:
		snprintf(reason, sizeof(reason), "%s", ERRNO_TEXT(rc));
	}
	return fail(why, why_len, rc, "open XPU port " XPU_LINK_TAP " (host side of %s) in %s: %s", h->window_path,
		    h->netns_path, reason);
}

/* ---- listeners (ListenerWatcher) ---- */

static int open_watcher(struct nd_half *h, char *why, size_t why_len)
{
	struct errno_text t;
	int nsfd, rc;

	h->looked = malloc(LOOK_ROOM_FIRST * sizeof(*h->looked));
	if (!h->looked)
		return fail(why, why_len, -ENOMEM, "watch listening sockets in %s: out of memory", h->netns_path);
	h->looked_room = LOOK_ROOM_FIRST;
	nsfd = open(h->netns_path, O_RDONLY | O_CLOEXEC);
	if (nsfd < 0) {
		rc = -errno;
		return fail(why, why_len, rc, "watch listening sockets in %s: %s", h->netns_path, ERRNO_TEXT(rc));
	}
	rc = xpu_diag_open(nsfd);
	close(nsfd); /* the socket holds the namespace from here on */
	if (rc < 0)
		return fail(why, why_len, rc, "watch listening sockets in %s: netlink sock_diag socket: %s", h->netns_path,
			    rc == -EINVAL ? "not a network namespace" : (t = errno_text(-rc)).s);
	h->diag_fd = rc;
	return 0;
}

/* Asks the kernel: the records in h->looked; how many. */
static int look(struct nd_half *h, char *why, size_t why_len)
{
	struct xpu_listener *bigger;
	int n;

	for (;;) {
		n = xpu_diag_listeners(h->diag_fd, h->looked, h->looked_room);
		if (n < 0)
			return fail(why, why_len, n, "list listening sockets in %s: %s", h->netns_path, ERRNO_TEXT(n));
		if (n <= h->looked_room)
			return n;
		/* More than there was room for: ask again with room for them and a
		 * few that may have appeared in between. */
		bigger = realloc(h->looked, ((size_t)n + 16) * sizeof(*bigger));
		if (!bigger)
			return fail(why, why_len, -ENOMEM, "list listening sockets in %s: out of memory", h->netns_path);
		h->looked = bigger;
		h->looked_room = n + 16;
	}
}

/* Look now; *changed when the ports (sorted, each once) differ from the last look. */
static int refresh(struct nd_half *h, int *changed, char *why, size_t why_len)
{
	struct xpu_listener *raw;
	uint16_t *ports;
	int n, k;

	*changed = 0;
	n = look(h, why, why_len);
	if (n < 0)
		return n;
	if (n == h->n_last_raw && (n == 0 || memcmp(h->looked, h->last_raw, (size_t)n * sizeof(*raw)) == 0))
		return 0; /* the same sockets */
	raw = malloc(((size_t)n + 1) * sizeof(*raw));
	ports = malloc(((size_t)n + 1) * sizeof(*ports));
	if (!raw || !ports) {
		free(raw);
		free(ports);
		return fail(why, why_len, -ENOMEM, "list listening sockets in %s: out of memory", h->netns_path);
	}
	memcpy(raw, h->looked, (size_t)n * sizeof(*raw));
	free(h->last_raw);
	h->last_raw = raw;
	h->n_last_raw = n;
	for (int i = 0; i < n; i++)
		ports[i] = h->looked[i].port;
	k = xpu_ports_sorted(ports, (uint32_t)n, ports, (uint32_t)n);
	if ((uint32_t)k == h->n_listening && (k == 0 || memcmp(ports, h->listening, (size_t)k * sizeof(*ports)) == 0)) {
		free(ports);
		return 0;
	}
	free(h->listening);
	h->listening = ports;
	h->n_listening = (uint32_t)k;
	*changed = 1;
	return 0;
}

/* ---- bringing the namespace up to date ---- */

/*
 * What else follows the port sets: the DPU half's ports are reserved here, so
 * the host half's own connections never take a port the pod IP routes to the
 * DPU half. A write that changes nothing is skipped. (The TS half also keys
 * this on the host-owned ports, for the DPU half's uplink: the host half has
 * none.)
 */
static int apply_ports(struct nd_half *h, char *why, size_t why_len)
{
	char *reserved, *line;
	int rc;

	rc = owned_text(h, xpu_ports_dpu_owned, &reserved);
	if (rc < 0)
		return fail(why, why_len, rc, "ports of pod %s: %s", h->pod_id, ERRNO_TEXT(rc));
	if (h->reserved_now && strcmp(h->reserved_now, reserved) == 0) {
		free(reserved);
		return 0;
	}
	if (asprintf(&line, RESERVED_PORTS "=%s\n", reserved) < 0) {
		free(reserved);
		return fail(why, why_len, -ENOMEM, "sysctl in %s: out of memory", h->netns_path);
	}
	rc = write_sysctls(h->netns_path, line, why, why_len);
	free(line);
	if (rc == 0) {
		free(h->reserved_now);
		h->reserved_now = reserved;
		reserved = NULL;
	}
	free(reserved);
	return rc;
}

/* First install, with the jumps from the built-in chains. */
static int install_rules(struct nd_half *h, char *why, size_t why_len)
{
	char *text;
	int rc;

	rc = half_rules(h, 1, &text, why, why_len);
	if (rc < 0)
		return rc;
	rc = apply_rules(h->netns_path, text, why, why_len);
	free(text);
	if (rc < 0)
		return rc;
	rc = half_rules(h, 0, &h->applied_rules, why, why_len);
	if (rc < 0)
		return rc;
	return apply_ports(h, why, why_len);
}

/* Bring the rules up to date with what is known now (skipped when unchanged). */
static int sync_rules(struct nd_half *h, char *why, size_t why_len)
{
	char *conflicts, *text;
	int rc;

	rc = owned_text(h, xpu_ports_conflicting, &conflicts);
	if (rc < 0)
		return fail(why, why_len, rc, "ports of pod %s: %s", h->pod_id, ERRNO_TEXT(rc));
	if (strcmp(conflicts, h->last_conflicts) != 0) {
		free(h->last_conflicts);
		h->last_conflicts = conflicts;
		if (*conflicts)
			half_log(h, "warn",
				 "ports %s are listened on in both halves: each half's localhost keeps its own listener, the pod IP reaches the host half",
				 conflicts);
	} else {
		free(conflicts);
	}
	rc = half_rules(h, 0, &text, why, why_len);
	if (rc < 0)
		return rc;
	if (strcmp(text, h->applied_rules) != 0) {
		rc = apply_rules(h->netns_path, text, why, why_len);
		if (rc < 0) {
			free(text);
			return rc;
		}
		free(h->applied_rules);
		h->applied_rules = text;
	} else {
		free(text);
	}
	return apply_ports(h, why, why_len);
}

/* ---- open and close ---- */

static void half_free(struct nd_half *h)
{
	free(h->pod_id);
	free(h->netns_path);
	free(h->pod_ip);
	free(h->declared);
	free(h->peer);
	free(h->listening);
	free(h->looked);
	free(h->last_raw);
	free(h->saved_sysctls);
	free(h->applied_rules);
	free(h->last_conflicts);
	free(h->reserved_now);
	free(h);
}

/* The half's strings and ports, copied; NULL without memory. */
static struct nd_half *half_new(const struct nd_half_opts *o)
{
	struct nd_half *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->diag_fd = -1;
	h->log = o->log;
	h->log_ctx = o->log_ctx;
	snprintf(h->window_path, sizeof(h->window_path), WINDOW_DIR "/pod-%s.xpu", o->pod_id);
	h->pod_id = strdup(o->pod_id);
	h->netns_path = strdup(o->netns_path);
	h->pod_ip = strdup(o->pod_ip);
	h->last_conflicts = strdup("");
	h->declared = malloc((o->n_declared + 1) * sizeof(*h->declared));
	if (!h->pod_id || !h->netns_path || !h->pod_ip || !h->last_conflicts || !h->declared) {
		half_free(h);
		return NULL;
	}
	if (o->n_declared)
		memcpy(h->declared, o->declared_dpu_ports, o->n_declared * sizeof(*h->declared));
	h->n_declared = (uint32_t)o->n_declared;
	return h;
}

/* Checks what open is given; the reason in why. */
static int check_opts(const struct nd_half_opts *o, char *why, size_t why_len)
{
	struct in_addr a;

	if (!valid_pod_id(o->pod_id))
		return fail(why, why_len, -EINVAL, "invalid pod id \"%s\"", o->pod_id);
	if (!is_netns(o->netns_path))
		return fail(why, why_len, -EINVAL, "%s is not a network namespace", o->netns_path);
	if (inet_pton(AF_INET, o->pod_ip, &a) != 1)
		return fail(why, why_len, -EINVAL, "pod IP \"%s\" is not an IPv4 address", o->pod_ip);
	if (o->n_declared > 65535 || (o->n_declared && !o->declared_dpu_ports))
		return fail(why, why_len, -EINVAL, "%zu declared ports", o->n_declared);
	for (size_t i = 0; i < o->n_declared; i++)
		if (o->declared_dpu_ports[i] == 0)
			return fail(why, why_len, -EINVAL, "declared port 0 is not a port number");
	if (o->mode != XPU_MODE_ELASTIC && o->mode != XPU_MODE_POLL && o->mode != XPU_MODE_SLEEP &&
	    o->mode != XPU_MODE_SERVED)
		return fail(why, why_len, -EINVAL, "XPU mode %d is not one of elastic, poll, sleep, served", o->mode);
	return 0;
}

/*
 * The sysctls the half sets. route_localnet on xpu0: 127.0.0.1 may be routed
 * out of it (before SNAT) and DNATed to on arrival. Forwarding: from eth0 to
 * the DPU half for its ports, and from xpu0 out for its egress. No IPv6 on
 * the link: only the pod's IPv4 traffic crosses it. Settings of xpu0 go with
 * the device; eth0's and the namespace's are put back at close.
 */
static int sysctl_sets(const char *netns, const char *eth, char **keep, char **want, char *why, size_t why_len)
{
	int rc;

	rc = sysctl_name_ok(netns, eth, why, why_len);
	if (rc < 0)
		return rc;
	*keep = *want = NULL;
	if (asprintf(keep, PORT_RANGE "\n" RESERVED_PORTS "\nnet/ipv4/conf/%s/forwarding\n", eth) < 0) {
		*keep = NULL;
		return fail(why, why_len, -ENOMEM, "sysctl in %s: out of memory", netns);
	}
	if (asprintf(want,
		     "net/ipv4/conf/" XPU_LINK_TAP "/route_localnet=1\n"
		     "net/ipv6/conf/" XPU_LINK_TAP "/disable_ipv6=1\n"
		     PORT_RANGE "=" HOST_EPHEMERAL "\n"
		     "net/ipv4/conf/" XPU_LINK_TAP "/forwarding=1\n"
		     "net/ipv4/conf/%s/forwarding=1\n",
		     eth) < 0) {
		free(*keep);
		*keep = *want = NULL;
		return fail(why, why_len, -ENOMEM, "sysctl in %s: out of memory", netns);
	}
	return 0;
}

int nd_half_open(const struct nd_half_opts *o, struct nd_half **out, char *err, size_t err_len)
{
	char why[WHY_MAX], undo_why[WHY_MAX], eth[16], *keep = NULL, *want = NULL;
	int rc, fresh = 0, created = 0, sysctls_set = 0, rules_ours = 0, rules_left = 0, changed;
	struct errno_text t;
	struct nd_half *h;

	if (!o || !out || !o->pod_id || !o->netns_path)
		return fail(err, err_len, -EINVAL, "open the host half of a pod: no pod id, namespace or result given");
	*out = NULL;
	if (!o->pod_ip || !*o->pod_ip)
		return fail(err, err_len, -EINVAL, "open the host half of pod %s: the pod IP is required", o->pod_id);
	rc = check_opts(o, why, sizeof(why));
	if (rc < 0)
		goto refuse;
	h = half_new(o);
	if (!h) {
		rc = fail(why, sizeof(why), -ENOMEM, "out of memory");
		goto refuse;
	}

	/* The window: a takeover attaches the orphan's; a new half replaces a stale one. */
	if (o->resume_sysctls) {
		rc = attach_orphan_window(h->window_path, &h->window, why, sizeof(why));
		if (rc < 0)
			goto undo;
	}
	if (!h->window) {
		rc = mkdir(WINDOW_DIR, 0700) < 0 && errno != EEXIST ? -errno : 0;
		if (rc < 0) {
			rc = fail(why, sizeof(why), rc, "create directory " WINDOW_DIR ": %s", ERRNO_TEXT(rc));
			goto undo;
		}
		rc = remove_stale_window(h->window_path, why, sizeof(why));
		if (rc < 0)
			goto undo;
		/* No rules of the pod can be in the namespace: the pod had no
		 * window, which outlives its rules. */
		fresh = rc == 0 && !o->resume_sysctls;
		rc = xpu_window_create(h->window_path, 0, &h->window);
		if (rc < 0) {
			rc = fail(why, sizeof(why), rc, "create XPU window %s: %s", h->window_path,
				  rc == -EEXIST ? "it already exists" : window_reason(rc, &t));
			goto undo;
		}
		created = 1;
	}
	rc = open_port(h, o->mode, why, sizeof(why));
	if (rc < 0)
		goto undo;

	/* The link is a point-to-point wire with fixed ends. The host half's
	 * loopback is CNI's; no route: the DPU half is reached on the link's subnet. */
	rc = xpu_netns_link4(h->netns_path, XPU_LINK_TAP, HOST_LINK_MAC, HOST_LINK_CIDR, XPU_DPU_LINK_IP, DPU_LINK_MAC,
			     NULL, 0, undo_why, sizeof(undo_why));
	if (rc < 0) {
		if (undo_why[0])
			rc = fail(why, sizeof(why), rc, "set up " XPU_LINK_TAP " in %s (%s): %s", h->netns_path, undo_why,
				  ERRNO_TEXT(rc));
		else
			rc = fail(why, sizeof(why), rc, "set up " XPU_LINK_TAP " in %s: %s", h->netns_path,
				  netns_reason(rc, &t));
		goto undo;
	}

	rc = device_with_address(h->netns_path, h->pod_ip, eth, why, sizeof(why));
	if (rc < 0)
		goto undo;
	rc = sysctl_sets(h->netns_path, eth, &keep, &want, why, sizeof(why));
	if (rc < 0)
		goto undo;
	if (o->resume_sysctls) {
		rc = resume_text(h->netns_path, o->resume_sysctls, &h->saved_sysctls, why, sizeof(why));
		if (rc == 0)
			rc = write_sysctls(h->netns_path, want, why, sizeof(why));
	} else {
		rc = swap_sysctls(h->netns_path, keep, want, &h->saved_sysctls, why, sizeof(why));
	}
	if (rc < 0)
		goto undo;
	sysctls_set = 1;

	rc = open_watcher(h, why, sizeof(why));
	if (rc < 0)
		goto undo;
	/* A new half knows what the namespace reserves; a takeover does not. */
	if (!o->resume_sysctls)
		h->reserved_now = sysctl_value(h->saved_sysctls, RESERVED_PORTS);
	/* One look now, so that the first rules know the listeners already there. */
	rc = refresh(h, &changed, why, sizeof(why));
	if (rc < 0)
		goto undo;
	/* Chains a previous half of this pod left (its owner died and nothing
	 * cleaned up) go first, so that jumps are never doubled. */
	if (!fresh) {
		rc = remove_rules(h->netns_path, h->pod_id, why, sizeof(why));
		if (rc < 0)
			goto undo;
	}
	rules_ours = 1;
	rc = install_rules(h, why, sizeof(why));
	if (rc < 0)
		goto undo;
	free(keep);
	free(want);
	*out = h;
	return 0;

undo:
	/* In reverse; the error that made us undo is the one reported. */
	if (rules_ours && remove_rules(h->netns_path, h->pod_id, undo_why, sizeof(undo_why)) < 0)
		rules_left = 1; /* the window stays, for the next open or clean-up to find them by */
	if (h->diag_fd >= 0)
		close(h->diag_fd);
	if (sysctls_set)
		(void)write_sysctls(h->netns_path, h->saved_sysctls, undo_why, sizeof(undo_why));
	if (h->port)
		xpu_port_close(h->port); /* the device goes, and its addresses with it */
	if (h->window)
		xpu_window_close(h->window);
	if (created && !rules_left)
		(void)remove_window(h->window_path, undo_why, sizeof(undo_why));
	free(keep);
	free(want);
	half_free(h);
refuse:
	return fail(err, err_len, rc, "open the host half of pod %s in %s: %s", o->pod_id, o->netns_path, why);
}

int nd_half_set_peer_ports(struct nd_half *h, const uint16_t *ports, size_t n, char *err, size_t err_len)
{
	char why[WHY_MAX];
	uint16_t *sorted;
	int k, rc;

	if (!h || (n && !ports) || n > 65535)
		return fail(err, err_len, -EINVAL, "set the peer's listening ports: no half or no ports given");
	for (size_t i = 0; i < n; i++)
		if (ports[i] == 0)
			return fail(err, err_len, -EINVAL,
				    "host half of pod %s: peer listening port 0 is not a port number", h->pod_id);
	sorted = malloc((n + 1) * sizeof(*sorted));
	if (!sorted)
		return fail(err, err_len, -ENOMEM, "host half of pod %s: out of memory", h->pod_id);
	k = xpu_ports_sorted(ports, (uint32_t)n, sorted, (uint32_t)n);
	free(h->peer);
	h->peer = sorted;
	h->n_peer = (uint32_t)k;
	rc = sync_rules(h, why, sizeof(why));
	if (rc < 0)
		return fail(err, err_len, rc, "host half of pod %s: update rules: %s", h->pod_id, why);
	return 0;
}

int nd_half_poll(struct nd_half *h, int *changed, char *err, size_t err_len)
{
	char why[WHY_MAX];
	int rc;

	if (!h || !changed)
		return fail(err, err_len, -EINVAL, "look at listening ports: no half given");
	rc = refresh(h, changed, why, sizeof(why));
	if (rc < 0)
		return fail(err, err_len, rc, "host half of pod %s: %s", h->pod_id, why);
	if (!*changed)
		return 0;
	rc = sync_rules(h, why, sizeof(why));
	if (rc < 0)
		return fail(err, err_len, rc, "host half of pod %s: update rules: %s", h->pod_id, why);
	return 0;
}

size_t nd_half_ports(const struct nd_half *h, const uint16_t **ports)
{
	static const uint16_t none[1];

	*ports = h->n_listening ? h->listening : none;
	return h->n_listening;
}

const char *nd_half_saved_sysctls(const struct nd_half *h)
{
	return h->saved_sysctls;
}

const char *nd_half_window_path(const struct nd_half *h)
{
	return h->window_path;
}

/* One failed step of close, appended to list as "step: why"; the first failure's errno is kept. */
__attribute__((format(printf, 5, 6))) static void step_failed(char *list, size_t cap, int *first, int rc,
							 const char *fmt, ...)
{
	size_t at = strlen(list);
	va_list ap;

	if (at > 0 && at + 2 < cap)
		at += (size_t)snprintf(list + at, cap - at, "; ");
	if (at < cap) {
		va_start(ap, fmt);
		vsnprintf(list + at, cap - at, fmt, ap);
		va_end(ap);
	}
	if (*first == 0)
		*first = rc;
}

int nd_half_close(struct nd_half *h, char *err, size_t err_len)
{
	char failed[4 * WHY_MAX] = "", why[WHY_MAX];
	int rc, first = 0, rules_left = 0;

	if (!h)
		return fail(err, err_len, -EINVAL, "close the host half of a pod: no half given");
	close(h->diag_fd);
	h->diag_fd = -1;
	/* A namespace already deleted took its rules and sysctls with it. */
	if (is_netns(h->netns_path)) {
		rc = remove_rules(h->netns_path, h->pod_id, why, sizeof(why));
		if (rc < 0) {
			rules_left = 1;
			step_failed(failed, sizeof(failed), &first, rc, "remove netfilter rules: %s", why);
		}
		rc = write_sysctls(h->netns_path, h->saved_sysctls, why, sizeof(why));
		if (rc < 0)
			step_failed(failed, sizeof(failed), &first, rc, "restore sysctls: %s", why);
	}
	rc = xpu_port_close(h->port);
	if (rc < 0)
		step_failed(failed, sizeof(failed), &first, rc, "close XPU port " XPU_LINK_TAP ": %s", ERRNO_TEXT(rc));
	rc = xpu_window_close(h->window);
	if (rc < 0)
		step_failed(failed, sizeof(failed), &first, rc, "close XPU window: %s", ERRNO_TEXT(rc));
	/* The window outlives the rules: an open finds them by it (remove_stale_window). */
	if (!rules_left) {
		rc = remove_window(h->window_path, why, sizeof(why));
		if (rc < 0)
			step_failed(failed, sizeof(failed), &first, rc, "remove XPU window %s: %s", h->window_path, why);
	}
	if (first < 0)
		fail(err, err_len, first, "close the host half of pod %s: %s", h->pod_id, failed);
	half_free(h);
	return first;
}
