/*
 * Network namespace work without a process: what a half of a pod's split
 * network used to start `nsenter` and `ip` or `sysctl` for (the IPv4 addresses
 * of the namespace, its sysctls, the addresses, neighbour and route of the
 * link's TAP device), done by a short-lived thread of the library that enters
 * the namespace. setns(2) changes only the calling thread, and /proc/sys/net
 * and sockets answer for the namespace of the thread that opens them, so the
 * caller's thread (node's main thread) never changes namespace and no process
 * is forked from a large one. What still needs a tool (iptables-restore, ip's
 * batches) is run by xpu_run: started with posix_spawn from such a thread,
 * without nsenter, and without copying the caller's memory map as fork(2) does.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

_Static_assert(sizeof(struct xpu_addr4) == 24, "struct xpu_addr4 is part of the ABI");

/* Longest sysctl path and value handled: /proc/sys/net/ipv4/conf/<dev>/<key>
 * is far shorter; ip_local_reserved_ports may be long. */
#define SYSCTL_PATH_MAX 256
#define SYSCTL_VALUE_MAX 4096
/* SIOCGIFCONF: room for this many addresses. */
#define IFCONF_MAX 256

/* ---- a thread inside the namespace ---- */

struct ns_call {
	int netns_fd;
	int (*fn)(void *);
	void *arg;
	int rc;
};

static void *ns_thread(void *p)
{
	struct ns_call *c = p;

	/* setns changes this thread only, and the thread ends here. */
	if (setns(c->netns_fd, CLONE_NEWNET) < 0) {
		c->rc = -errno; /* EINVAL: not a network namespace; EPERM: no CAP_SYS_ADMIN */
		return NULL;
	}
	c->rc = c->fn(c->arg);
	return NULL;
}

int xpu_in_netns(int netns_fd, int (*fn)(void *), void *arg)
{
	struct ns_call c = { netns_fd, fn, arg, -EIO };
	pthread_t th;
	int rc;

	if (netns_fd < 0)
		return -EBADF;
	rc = pthread_create(&th, NULL, ns_thread, &c);
	if (rc)
		return -rc;
	pthread_join(th, NULL);
	return c.rc;
}

int xpu_in_netns_path(const char *path, int (*fn)(void *), void *arg)
{
	int fd, rc;

	if (!path)
		return -EINVAL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT || errno == ENOTDIR ? -ENOENT : -errno;
	rc = xpu_in_netns(fd, fn, arg);
	close(fd);
	return rc;
}

/* ---- IPv4 addresses ---- */

struct addrs_req {
	struct xpu_addr4 *out;
	int max;
};

static int addrs_in_ns(void *p)
{
	struct addrs_req *r = p;
	struct ifreq reqs[IFCONF_MAX];
	struct ifconf ifc;
	int sock, n, i, rc = 0;

	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return -errno;
	ifc.ifc_len = sizeof(reqs);
	ifc.ifc_req = reqs;
	if (ioctl(sock, SIOCGIFCONF, &ifc) < 0) {
		rc = -errno;
		goto out;
	}
	n = ifc.ifc_len / (int)sizeof(struct ifreq);
	for (i = 0; i < n; i++) {
		struct ifreq mask = reqs[i];
		struct sockaddr_in *a = (struct sockaddr_in *)&reqs[i].ifr_addr;

		if (a->sin_family != AF_INET)
			continue;
		if (ioctl(sock, SIOCGIFNETMASK, &mask) < 0) {
			rc = -errno;
			goto out;
		}
		if (rc < r->max) {
			struct xpu_addr4 *o = &r->out[rc];

			memset(o, 0, sizeof(*o));
			memcpy(o->dev, reqs[i].ifr_name, sizeof(o->dev) - 1);
			memcpy(o->addr, &a->sin_addr, 4);
			o->prefix = (uint8_t)__builtin_popcount(((struct sockaddr_in *)&mask.ifr_netmask)->sin_addr.s_addr);
		}
		rc++;
	}
out:
	close(sock);
	return rc;
}

int xpu_netns_addrs4(const char *netns_path, struct xpu_addr4 *out, int max)
{
	struct addrs_req r = { out, max };

	if (!out || max < 0)
		return -EINVAL;
	return xpu_in_netns_path(netns_path, addrs_in_ns, &r);
}

uint32_t xpu_addr4_size(void)
{
	return sizeof(struct xpu_addr4);
}

/* ---- sysctls ---- */

struct sysctl_req {
	const char *reads;
	const char *writes;
	char *out;
	uint32_t out_len;
};

/* /proc/sys/<name>: a name with a slash is a path already (sysctl(8) takes
 * both; a device name may hold a dot), else its dots are separators. */
static int sysctl_path(const char *name, size_t len, char *path)
{
	size_t i, base = strlen("/proc/sys/");
	int slashes = memchr(name, '/', len) != NULL;

	if (len == 0 || base + len >= SYSCTL_PATH_MAX || memmem(name, len, "..", 2))
		return -EINVAL;
	memcpy(path, "/proc/sys/", base);
	for (i = 0; i < len; i++)
		path[base + i] = !slashes && name[i] == '.' ? '/' : name[i];
	path[base + len] = 0;
	return 0;
}

/* Says which name failed, in out, for the caller's message. */
static int sysctl_failed(struct sysctl_req *r, const char *name, size_t len, int rc)
{
	if (r->out_len > 0)
		snprintf(r->out, r->out_len, "%.*s", (int)len, name);
	return rc;
}

static int sysctls_in_ns(void *p)
{
	struct sysctl_req *r = p;
	char path[SYSCTL_PATH_MAX], value[SYSCTL_VALUE_MAX];
	uint32_t used = 0;
	const char *s, *e;
	int fd, rc;
	ssize_t n;

	if (r->out_len > 0)
		r->out[0] = 0;
	/* Every read first: what the namespace had, before any write. */
	for (s = r->reads; s && *s; s = *e ? e + 1 : e) {
		e = strchrnul(s, '\n');
		if (e == s)
			continue;
		if ((rc = sysctl_path(s, (size_t)(e - s), path)) < 0)
			return sysctl_failed(r, s, (size_t)(e - s), rc);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return sysctl_failed(r, s, (size_t)(e - s), -errno);
		n = read(fd, value, sizeof(value) - 1);
		rc = n < 0 ? -errno : 0;
		close(fd);
		if (rc < 0)
			return sysctl_failed(r, s, (size_t)(e - s), rc);
		while (n > 0 && value[n - 1] == '\n')
			n--;
		/* One line per value, each ending in '\n'; an empty value is an empty line. */
		if (used + (uint32_t)n + 2 > r->out_len)
			return sysctl_failed(r, s, (size_t)(e - s), -ENOSPC);
		memcpy(r->out + used, value, (size_t)n);
		used += (uint32_t)n;
		r->out[used++] = '\n';
		r->out[used] = 0;
	}
	for (s = r->writes; s && *s; s = *e ? e + 1 : e) {
		const char *eq;

		e = strchrnul(s, '\n');
		if (e == s)
			continue;
		eq = memchr(s, '=', (size_t)(e - s));
		if (!eq)
			return sysctl_failed(r, s, (size_t)(e - s), -EINVAL);
		if ((rc = sysctl_path(s, (size_t)(eq - s), path)) < 0)
			return sysctl_failed(r, s, (size_t)(eq - s), rc);
		fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			return sysctl_failed(r, s, (size_t)(eq - s), -errno);
		/* An empty value is written as a newline: the kernel takes "" as nothing to do. */
		n = e - eq - 1 > 0 ? write(fd, eq + 1, (size_t)(e - eq - 1)) : write(fd, "\n", 1);
		rc = n < 0 ? -errno : 0;
		close(fd);
		if (rc < 0)
			return sysctl_failed(r, s, (size_t)(eq - s), rc);
	}
	return 0;
}

int xpu_netns_sysctls(const char *netns_path, const char *reads, const char *writes, char *out, uint32_t out_len)
{
	struct sysctl_req r = { reads, writes, out, out_len };

	if (!out || out_len == 0)
		return -EINVAL;
	return xpu_in_netns_path(netns_path, sysctls_in_ns, &r);
}

/* ---- the link's device ---- */

struct link_req {
	const char *dev;
	const char *mac;
	const char *cidr;
	const char *peer;
	const char *peer_mac;
	const char *route;
	int lo_up;
	char *why;
	uint32_t why_len;
};

static int parse_mac(const char *text, unsigned char mac[6])
{
	unsigned v[6];
	char end;
	int i;

	if (!text || sscanf(text, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &end) != 6)
		return -EINVAL;
	for (i = 0; i < 6; i++)
		mac[i] = (unsigned char)v[i];
	return 0;
}

/* "a.b.c.d/n" (or "default": 0.0.0.0/0) into an address and a mask. */
static int parse_cidr(const char *text, struct in_addr *addr, struct in_addr *mask)
{
	char ip[INET_ADDRSTRLEN];
	const char *slash;
	unsigned prefix;
	char end;

	if (!text)
		return -EINVAL;
	if (strcmp(text, "default") == 0) {
		addr->s_addr = mask->s_addr = 0;
		return 0;
	}
	slash = strchr(text, '/');
	if (!slash || (size_t)(slash - text) >= sizeof(ip) || sscanf(slash + 1, "%u%c", &prefix, &end) != 1 || prefix > 32)
		return -EINVAL;
	memcpy(ip, text, (size_t)(slash - text));
	ip[slash - text] = 0;
	if (inet_pton(AF_INET, ip, addr) != 1)
		return -EINVAL;
	mask->s_addr = prefix ? htonl(~0u << (32 - prefix)) : 0;
	return 0;
}

static void set_in(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in *in = (struct sockaddr_in *)sa;

	memset(in, 0, sizeof(*in));
	in->sin_family = AF_INET;
	in->sin_addr = a;
}

static int link_failed(struct link_req *r, const char *step, int rc)
{
	if (r->why_len > 0)
		snprintf(r->why, r->why_len, "%s", step);
	return rc;
}

static int set_up(int sock, const char *dev)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, dev, IFNAMSIZ - 1);
	if (ioctl(sock, SIOCGIFFLAGS, &ifr) < 0)
		return -errno;
	if (ifr.ifr_flags & IFF_UP)
		return 0;
	ifr.ifr_flags |= IFF_UP;
	return ioctl(sock, SIOCSIFFLAGS, &ifr) < 0 ? -errno : 0;
}

static int link_in_ns(void *p)
{
	struct link_req *r = p;
	unsigned char mac[6], peer_mac[6];
	struct in_addr addr, mask, peer, dst, dst_mask;
	struct ifreq ifr;
	struct arpreq arp;
	struct rtentry rt;
	int sock, rc = 0;

	if (parse_mac(r->mac, mac) < 0)
		return link_failed(r, "MAC address", -EINVAL);
	if (parse_mac(r->peer_mac, peer_mac) < 0)
		return link_failed(r, "peer's MAC address", -EINVAL);
	if (parse_cidr(r->cidr, &addr, &mask) < 0 || strcmp(r->cidr, "default") == 0)
		return link_failed(r, "address", -EINVAL);
	if (!r->peer || inet_pton(AF_INET, r->peer, &peer) != 1)
		return link_failed(r, "peer address", -EINVAL);
	if (r->route && *r->route && parse_cidr(r->route, &dst, &dst_mask) < 0)
		return link_failed(r, "route", -EINVAL);

	sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0)
		return link_failed(r, "socket", -errno);

	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, r->dev, IFNAMSIZ - 1);
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	memcpy(ifr.ifr_hwaddr.sa_data, mac, 6);
	if (ioctl(sock, SIOCSIFHWADDR, &ifr) < 0) {
		rc = link_failed(r, "set the MAC address", -errno);
		goto out;
	}
	/* The address, then its mask: the kernel's prefix route follows the mask. */
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, r->dev, IFNAMSIZ - 1);
	set_in(&ifr.ifr_addr, addr);
	if (ioctl(sock, SIOCSIFADDR, &ifr) < 0) {
		rc = link_failed(r, "add the address", -errno);
		goto out;
	}
	set_in(&ifr.ifr_netmask, mask);
	if (ioctl(sock, SIOCSIFNETMASK, &ifr) < 0) {
		rc = link_failed(r, "set the address's prefix length", -errno);
		goto out;
	}
	/* A permanent neighbour entry: no ARP crosses the link. */
	memset(&arp, 0, sizeof(arp));
	set_in(&arp.arp_pa, peer);
	arp.arp_ha.sa_family = ARPHRD_ETHER;
	memcpy(arp.arp_ha.sa_data, peer_mac, 6);
	arp.arp_flags = ATF_PERM | ATF_COM;
	strncpy(arp.arp_dev, r->dev, sizeof(arp.arp_dev) - 1);
	if (ioctl(sock, SIOCSARP, &arp) < 0) {
		rc = link_failed(r, "add the peer's neighbour entry", -errno);
		goto out;
	}
	if (r->route && *r->route) {
		memset(&rt, 0, sizeof(rt));
		set_in(&rt.rt_dst, dst);
		set_in(&rt.rt_genmask, dst_mask);
		set_in(&rt.rt_gateway, peer);
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = (char *)r->dev;
		if (ioctl(sock, SIOCADDRT, &rt) < 0) {
			rc = link_failed(r, "add the route via the peer", -errno);
			goto out;
		}
	}
	if (r->lo_up && (rc = set_up(sock, "lo")) < 0)
		rc = link_failed(r, "set lo up", rc);
out:
	close(sock);
	return rc;
}

int xpu_netns_link4(const char *netns_path, const char *dev, const char *mac, const char *cidr, const char *peer,
		    const char *peer_mac, const char *route, int lo_up, char *why, uint32_t why_len)
{
	struct link_req r = { dev, mac, cidr, peer, peer_mac, route, lo_up, why, why_len };

	if (!dev || !*dev || strlen(dev) >= IFNAMSIZ || !why || why_len == 0)
		return -EINVAL;
	why[0] = 0;
	return xpu_in_netns_path(netns_path, link_in_ns, &r);
}

/* ---- a program run in the namespace ---- */

struct run_req {
	char **argv;
	char **envp; /* NULL: the caller's environment */
	const char *cwd; /* NULL: the caller's directory */
	const char *input;
	uint32_t input_len;
	char *out, *err;
	uint32_t out_len, err_len;
	uint32_t *out_used, *err_used;
};

/* Keeps what fits of a stream, counts all of it. */
static int drain(int fd, char *buf, uint32_t len, uint32_t *used)
{
	char scratch[4096];
	ssize_t n;

	for (;;) {
		char *to = *used < len ? buf + *used : scratch;
		size_t room = *used < len ? len - *used : sizeof(scratch);

		n = read(fd, to, room);
		if (n > 0) {
			*used += (uint32_t)n; /* past len: counted, not kept */
			continue;
		}
		if (n == 0)
			return 1; /* end of stream */
		if (errno == EINTR)
			continue;
		return errno == EAGAIN ? 0 : -errno;
	}
}

static int run_in_ns(void *p)
{
	struct run_req *r = p;
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	uint32_t written = 0;
	int status = 0, rc, open_out = 1, open_err = 1;

	pid_t pid;

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
		rc = -errno;
		goto close_pipes;
	}
	/* Our ends only: the tool's stay blocking, as a tool expects. */
	fcntl(out[0], F_SETFL, O_NONBLOCK);
	fcntl(err[0], F_SETFL, O_NONBLOCK);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, err[1], 2);
	if (r->cwd)
		posix_spawn_file_actions_addchdir_np(&fa, r->cwd);
	/* The child starts as from a shell: no signal blocked, every handler the
	 * default (node's handlers and masks are not the tool's). */
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	/* posix_spawn: clone(CLONE_VM | CLONE_VFORK), so nothing of a large
	 * caller's memory is copied; the child is in this thread's namespace. */
	rc = -posix_spawnp(&pid, r->argv[0], &fa, &attr, r->argv, r->envp ? r->envp : environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	in[0] = out[1] = err[1] = -1;
	if (rc < 0)
		goto close_pipes;

	/* Input and output together: a tool may write before it has read all of it. */
	if (r->input_len == 0) {
		close(in[1]);
		in[1] = -1;
	} else {
		fcntl(in[1], F_SETFL, O_NONBLOCK);
	}
	while (open_out || open_err || in[1] >= 0) {
		struct pollfd fds[3] = {
			{ open_out ? out[0] : -1, POLLIN, 0 },
			{ open_err ? err[0] : -1, POLLIN, 0 },
			{ in[1], POLLOUT, 0 },
		};

		if (poll(fds, 3, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (open_out && fds[0].revents && drain(out[0], r->out, r->out_len, r->out_used) != 0)
			open_out = 0;
		if (open_err && fds[1].revents && drain(err[0], r->err, r->err_len, r->err_used) != 0)
			open_err = 0;
		if (in[1] >= 0 && fds[2].revents) {
			ssize_t n = write(in[1], r->input + written, r->input_len - written);

			if (n > 0)
				written += (uint32_t)n;
			/* EPIPE (POLLERR): the tool did not read it all; its status says why. */
			if (written == r->input_len || (n < 0 && errno != EAGAIN && errno != EINTR)) {
				close(in[1]);
				in[1] = -1;
			}
		}
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			rc = -errno;
			goto close_pipes;
		}
	}
	rc = status;
close_pipes:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
		if (err[i] >= 0)
			close(err[i]);
	}
	return rc;
}

#define RUN_ARGS_MAX 256
#define RUN_ENV_MAX 256

/* Splits len bytes of NUL-ended strings into vec (max entries, then NULL). */
static int split_strings(const char *buf, uint32_t len, char **vec, int max)
{
	uint32_t i = 0;
	int n = 0;

	if (len == 0 || buf[len - 1] != 0)
		return -EINVAL;
	while (i < len) {
		if (n == max)
			return -E2BIG;
		vec[n++] = (char *)buf + i;
		i += (uint32_t)strlen(buf + i) + 1;
	}
	vec[n] = NULL;
	return n;
}

int xpu_run_in(const char *netns_path, const char *cwd, const char *env, uint32_t env_len, const char *args,
	       uint32_t args_len, const char *input, uint32_t input_len, char *out, uint32_t out_len,
	       uint32_t *out_used, char *err, uint32_t err_len, uint32_t *err_used)
{
	char *argv[RUN_ARGS_MAX + 1], *envp[RUN_ENV_MAX + 1];
	struct run_req r = { argv, NULL, cwd, input, input_len, out, err, out_len, err_len, out_used, err_used };
	int rc;

	if (!args || !out_used || !err_used || (input_len && !input) || (env_len && !env))
		return -EINVAL;
	*out_used = *err_used = 0;
	rc = split_strings(args, args_len, argv, RUN_ARGS_MAX);
	if (rc < 0)
		return rc;
	if (env) {
		/* An empty environment is one empty string: env_len 1. */
		rc = env_len == 1 ? (envp[0] = NULL, 0) : split_strings(env, env_len, envp, RUN_ENV_MAX);
		if (rc < 0)
			return rc;
		r.envp = envp;
	}
	return netns_path ? xpu_in_netns_path(netns_path, run_in_ns, &r) : run_in_ns(&r);
}

int xpu_run(const char *netns_path, const char *args, uint32_t args_len, const char *input, uint32_t input_len,
	    char *out, uint32_t out_len, uint32_t *out_used, char *err, uint32_t err_len, uint32_t *err_used)
{
	if (!netns_path)
		return -EINVAL;
	return xpu_run_in(netns_path, NULL, NULL, 0, args, args_len, input, input_len, out, out_len, out_used, err,
			  err_len, err_used);
}
