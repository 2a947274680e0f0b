/*
 * The host half of a pod's split network namespace in C (src/noded/half.h), as
 * root, in a network namespace of the test's own, hp-halftest-<pid>: eth0 (one
 * end of a veth pair whose other end stays inside) with 10.200.0.5/24. Nothing
 * outside it is touched but the test pods' window files, and the namespace is
 * deleted at exit, whatever happened (test/unit/noded-half.test.ts deletes it
 * too should this process die). Built with libxpu's sources, plain and with
 * ASan+UBSan.
 *
 * Modes: sleep and elastic. Not served: the host end of a served link is only
 * useful with a DPU end that takes its device, which this test has not.
 *
 * Each failure prints a line naming its case; the exit status is 1 when any.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "half.h"
#include "xpu.h"
#include "check.h"

#define POD_IP "10.200.0.5"

static char ns_name[64], ns_path[128], fake_bin[128], saved_path[8192];
static char *test_pods[8];
static int n_test_pods;

/* ---- the test's namespace and files ---- */

static void cleanup(void)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "ip netns del %s 2>/dev/null", ns_name);
	if (system(cmd) < 0)
		perror("ip netns del");
	for (int i = 0; i < n_test_pods; i++) {
		char file[256];

		snprintf(file, sizeof(file), "/dev/shm/heteropod/pod-%s.xpu", test_pods[i]);
		unlink(file);
		free(test_pods[i]);
	}
	n_test_pods = 0;
	if (fake_bin[0]) {
		char f[192];

		snprintf(f, sizeof(f), "%s/iptables-restore", fake_bin);
		unlink(f);
		rmdir(fake_bin);
	}
}

static void on_signal(int sig)
{
	cleanup();
	signal(sig, SIG_DFL);
	raise(sig);
}

__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	return st < 0 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* A command's stdout (malloc'd, NUL-ended). */
__attribute__((format(printf, 1, 2))) static char *capture(const char *fmt, ...)
{
	char cmd[1024];
	size_t len = 0, cap = 65536;
	char *buf = malloc(cap);
	va_list ap;
	FILE *f;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	f = popen(cmd, "r");
	if (!buf || !f) {
		perror(cmd);
		exit(2);
	}
	while ((n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
		len += n;
		if (cap - len < 4096) {
			cap *= 2;
			buf = realloc(buf, cap);
			if (!buf)
				exit(2);
		}
	}
	buf[len] = '\0';
	pclose(f);
	return buf;
}

static int count(const char *hay, const char *needle)
{
	int n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static char *iptables_save(void)
{
	return capture("ip netns exec %s iptables-save", ns_name);
}

/* A test pod's id, remembered for clean-up. */
static const char *pod(int n)
{
	char *id;

	if (asprintf(&id, "halftest-%d-%d", (int)getpid(), n) < 0 || n_test_pods == 8)
		exit(2);
	test_pods[n_test_pods++] = id;
	return id;
}

static void tag_of(const char *pod_id, char tag[16])
{
	xpu_rules_chain_tag(pod_id, tag, 16);
}

static int window_exists(const char *pod_id)
{
	char file[256];
	struct stat st;

	snprintf(file, sizeof(file), "/dev/shm/heteropod/pod-%s.xpu", pod_id);
	return stat(file, &st) == 0;
}

static int has_xpu0(void)
{
	return sh("ip -n %s link show dev xpu0 >/dev/null 2>&1", ns_name) == 0;
}

/* One sysctl of the namespace, trimmed ("" when unreadable). */
static void sysctl_get(const char *name, char *out, size_t len)
{
	char reads[256], buf[4200];
	char *s, *e;

	snprintf(reads, sizeof(reads), "%s\n", name);
	if (xpu_netns_sysctls(ns_path, reads, NULL, buf, sizeof(buf)) < 0) {
		snprintf(out, len, "(unreadable)");
		return;
	}
	for (s = buf; *s == ' ' || *s == '\t'; s++)
		;
	for (e = s + strlen(s); e > s && (e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'); e--)
		;
	*e = '\0';
	snprintf(out, len, "%s", s);
}

/* What the half changes and close puts back. */
struct snapshot {
	char range[64], reserved[256], eth_forwarding[16];
};

static void snapshot(struct snapshot *s)
{
	sysctl_get("net.ipv4.ip_local_port_range", s->range, sizeof(s->range));
	sysctl_get("net.ipv4.ip_local_reserved_ports", s->reserved, sizeof(s->reserved));
	sysctl_get("net/ipv4/conf/eth0/forwarding", s->eth_forwarding, sizeof(s->eth_forwarding));
}

static void check_as_before(const char *what, const struct snapshot *before)
{
	struct snapshot now;
	char *saved = iptables_save();

	snapshot(&now);
	check(strcmp(now.range, before->range) == 0, "%s: port range %s, was %s", what, now.range, before->range);
	check(strcmp(now.reserved, before->reserved) == 0, "%s: reserved ports \"%s\", were \"%s\"", what,
	      now.reserved, before->reserved);
	check(strcmp(now.eth_forwarding, before->eth_forwarding) == 0, "%s: eth0 forwarding %s, was %s", what,
	      now.eth_forwarding, before->eth_forwarding);
	check(!strstr(saved, "HP-") && !strstr(saved, "heteropod pod"), "%s: no chain or jump left:\n%s", what, saved);
	check(!has_xpu0(), "%s: no xpu0 left", what);
	free(saved);
}

/* Puts the namespace's settings back (after a half that restored what a crashed one set). */
static void restore(const struct snapshot *s)
{
	char writes[512], out[256];

	snprintf(writes, sizeof(writes),
		 "net.ipv4.ip_local_port_range=%s\nnet.ipv4.ip_local_reserved_ports=%s\nnet/ipv4/conf/eth0/forwarding=%s\n",
		 s->range, s->reserved, s->eth_forwarding);
	if (xpu_netns_sysctls(ns_path, NULL, writes, out, sizeof(out)) < 0) {
		fprintf(stderr, "restore the namespace's sysctls: %s\n", out);
		exit(2);
	}
}

/* ---- a listener inside the namespace ---- */

struct listen_req {
	int port;
	int fd;
};

/* setns changes this thread only; the socket stays in the namespace it was made in. */
static void *listen_in_ns(void *p)
{
	struct listen_req *r = p;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)r->port) };
	int nsfd = open(ns_path, O_RDONLY | O_CLOEXEC), one = 1;

	r->fd = -1;
	if (nsfd < 0 || setns(nsfd, CLONE_NEWNET) < 0) {
		perror("setns");
		if (nsfd >= 0)
			close(nsfd);
		return NULL;
	}
	close(nsfd);
	r->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r->fd < 0 || setsockopt(r->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(r->fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(r->fd, 4) < 0) {
		perror("listen in the test namespace");
		if (r->fd >= 0)
			close(r->fd);
		r->fd = -1;
	}
	return NULL;
}

static int listen_on(int port)
{
	struct listen_req r = { port, -1 };
	pthread_t th;

	if (pthread_create(&th, NULL, listen_in_ns, &r) != 0)
		return -1;
	pthread_join(th, NULL);
	return r.fd;
}

/* ---- the log ---- */

struct log_seen {
	int lines;
	char last[1024];
	char level[16];
};

static void log_to(void *ctx, const char *level, const char *msg)
{
	struct log_seen *s = ctx;

	s->lines++;
	snprintf(s->last, sizeof(s->last), "%s", msg);
	snprintf(s->level, sizeof(s->level), "%s", level);
}

static struct nd_half_opts opts_for(const char *pod_id, const uint16_t *declared, size_t n, int mode)
{
	struct nd_half_opts o = {
		.pod_id = pod_id,
		.netns_path = ns_path,
		.pod_ip = POD_IP,
		.declared_dpu_ports = declared,
		.n_declared = n,
		.mode = mode,
	};
	return o;
}

/* ---- the tests ---- */

static void test_pod_address(void)
{
	char ip[32] = "", err[512];
	int prefix = -1, rc;

	rc = nd_pod_address(ns_path, "eth0", ip, sizeof(ip), &prefix, err, sizeof(err));
	check(rc == 0 && strcmp(ip, POD_IP) == 0 && prefix == 24, "pod address of eth0: %d %s/%d %s", rc, ip, prefix,
	      rc ? err : "");
	rc = nd_pod_address(ns_path, "lo", ip, sizeof(ip), &prefix, err, sizeof(err));
	check(rc < 0 && strstr(err, "read the pod IP (IPv4 of lo) in ") &&
		      strstr(err, ": lo has no IPv4 address (has CNI set the pod's network up?)"),
	      "loopback's 127.0.0.1 is not the pod's: %d %s", rc, err);
	rc = nd_pod_address(ns_path, "eth9", ip, sizeof(ip), &prefix, err, sizeof(err));
	check(rc < 0 && strstr(err, "eth9 has no IPv4 address"), "no such device: %s", err);
	rc = nd_pod_address("/tmp", "eth0", ip, sizeof(ip), &prefix, err, sizeof(err));
	check(rc == -EINVAL && strcmp(err, "read the pod IP (IPv4 of eth0) in /tmp: not a network namespace") == 0,
	      "not a namespace: %s", err);
	rc = nd_pod_address(ns_path, "eth0", ip, 4, &prefix, err, sizeof(err));
	check(rc == -ENOSPC, "no room for the address: %d %s", rc, err);
}

/* Opens refused before anything is done. */
static void test_refused(const struct snapshot *before)
{
	const char *id = pod(1);
	uint16_t zero = 0;
	struct nd_half_opts o;
	struct nd_half *h = (void *)&o; /* to see it set to NULL */
	char err[1024], expect[512];
	int rc;

	o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
	o.pod_ip = NULL;
	rc = nd_half_open(&o, &h, err, sizeof(err));
	snprintf(expect, sizeof(expect), "open the host half of pod %s: the pod IP is required", id);
	check(rc == -EINVAL && h == NULL && strcmp(err, expect) == 0, "no pod IP: %s", err);

	o = opts_for("bad id", NULL, 0, XPU_MODE_SLEEP);
	rc = nd_half_open(&o, &h, err, sizeof(err));
	snprintf(expect, sizeof(expect), "open the host half of pod bad id in %s: invalid pod id \"bad id\"", ns_path);
	check(rc == -EINVAL && strcmp(err, expect) == 0, "bad pod id: %s", err);

	o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
	o.netns_path = "/tmp";
	rc = nd_half_open(&o, &h, err, sizeof(err));
	snprintf(expect, sizeof(expect), "open the host half of pod %s in /tmp: /tmp is not a network namespace", id);
	check(rc == -EINVAL && strcmp(err, expect) == 0, "a directory is not a namespace: %s", err);
	o.netns_path = "/proc/self/ns/uts";
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -EINVAL && strstr(err, "/proc/self/ns/uts is not a network namespace"),
	      "a namespace of another type: %s", err);
	o.netns_path = "/nonexistent/netns";
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -EINVAL && strstr(err, "/nonexistent/netns is not a network namespace"), "no such path: %s", err);

	o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
	o.pod_ip = "10.200.0";
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -EINVAL && strstr(err, ": pod IP \"10.200.0\" is not an IPv4 address"), "bad pod IP: %s", err);

	o = opts_for(id, &zero, 1, XPU_MODE_SLEEP);
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -EINVAL && strstr(err, ": declared port 0 is not a port number"), "declared port 0: %s", err);

	o = opts_for(id, NULL, 0, 9);
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -EINVAL && strstr(err, ": XPU mode 9 is not one of elastic, poll, sleep, served"), "bad mode: %s",
	      err);

	o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
	o.resume_sysctls = "net.ipv4.ip_local_port_range\n";
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -EINVAL && strstr(err, "saved line \"net.ipv4.ip_local_port_range\" is not name=value"),
	      "a takeover's saved sysctls without a value: %s", err);

	check(!window_exists(id), "refused opens leave no window");
	check_as_before("refused opens", before);
}

/* Opens that fail part-way undo what they did. */
static void test_failed(const struct snapshot *before)
{
	const char *id = pod(2);
	struct nd_half_opts o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
	struct nd_half *h;
	char err[2048], f[192], path[8400];
	FILE *script;
	int rc, prefix;

	/* No device has the pod IP: after the window, the port and the link. */
	o.pod_ip = "10.200.0.99";
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -ENODEV && strstr(err, "no device in ") &&
		      strstr(err, " has the pod IP 10.200.0.99 (has CNI set the pod's network up?)"),
	      "pod IP on no device: %d %s", rc, err);
	check(!window_exists(id), "pod IP on no device: the window is removed");
	check_as_before("pod IP on no device", before);

	/* eth0 without its address, as before CNI has run. */
	if (sh("ip -n %s addr del " POD_IP "/24 dev eth0", ns_name) != 0) {
		check(0, "take eth0's address away");
		return;
	}
	o.pod_ip = POD_IP;
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == -ENODEV && strstr(err, " has the pod IP " POD_IP " (has CNI set"), "eth0 without an address: %s",
	      err);
	check(!window_exists(id), "eth0 without an address: the window is removed");
	check_as_before("eth0 without an address", before);
	rc = nd_pod_address(ns_path, "eth0", f, sizeof(f), &prefix, err, sizeof(err));
	check(rc == -ENOENT && strstr(err, ": eth0 has no IPv4 address"), "pod address of eth0 without one: %s", err);
	if (sh("ip -n %s addr add " POD_IP "/24 dev eth0", ns_name) != 0) {
		check(0, "give eth0 its address back");
		return;
	}

	/* iptables-restore fails: the last step, after the sysctls were swapped. */
	snprintf(fake_bin, sizeof(fake_bin), "/tmp/hp-halftest-%d", (int)getpid());
	snprintf(f, sizeof(f), "%s/iptables-restore", fake_bin);
	if (mkdir(fake_bin, 0700) < 0 || !(script = fopen(f, "w"))) {
		perror(fake_bin);
		exit(2);
	}
	fputs("#!/bin/sh\necho 'fake iptables-restore failure' >&2\nexit 3\n", script);
	fclose(script);
	chmod(f, 0700);
	snprintf(path, sizeof(path), "%s:%s", fake_bin, saved_path);
	setenv("PATH", path, 1);
	o.pod_ip = POD_IP;
	rc = nd_half_open(&o, &h, err, sizeof(err));
	setenv("PATH", saved_path, 1);
	check(rc < 0 && strstr(err, ": iptables-restore -w --noflush (in ") &&
		      strstr(err, "): fake iptables-restore failure"),
	      "iptables-restore fails: %d %s", rc, err);
	check(!window_exists(id), "iptables-restore fails: the window is removed");
	check_as_before("iptables-restore fails", before);
}

static void check_rules(const char *what, const char *pod_id, const char *dports)
{
	static const char *const chains[] = { "PREROUTING", "OUTPUT", "POSTROUTING", "FORWARD" };
	char *saved = iptables_save(), tag[16], want[512], jump[256];

	tag_of(pod_id, tag);
	snprintf(jump, sizeof(jump), "\"heteropod pod %s host half\"", pod_id);
	check(count(saved, jump) == 4, "%s: one jump from each built-in chain (%d):\n%s", what, count(saved, jump),
	      saved);
	for (int i = 0; i < 4; i++) {
		snprintf(want, sizeof(want), ":HP-%s-%s - [0:0]", tag, chains[i]);
		check(strstr(saved, want) != NULL, "%s: chain %s", what, want);
		snprintf(want, sizeof(want), "-j HP-%s-%s", tag, chains[i]);
		check(count(saved, want) == 1, "%s: %s once", what, want);
	}
	if (dports) {
		snprintf(want, sizeof(want),
			 "-A HP-%s-PREROUTING -d " POD_IP "/32 ! -i xpu0 -p tcp -m multiport --dports %s -m comment --comment \"pod IP to the DPU half\" -j DNAT --to-destination 169.254.77.2",
			 tag, dports);
		check(strstr(saved, want) != NULL, "%s: DNAT of the pod IP's %s:\n%s", what, dports, saved);
		snprintf(want, sizeof(want), "-A HP-%s-OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports %s ", tag,
			 dports);
		check(strstr(saved, want) != NULL, "%s: DNAT of localhost's %s", what, dports);
	} else {
		check(!strstr(saved, "--dports"), "%s: no port crosses:\n%s", what, saved);
	}
	free(saved);
}

static void check_ports(const char *what, struct nd_half *h, const uint16_t *want, size_t n)
{
	const uint16_t *ports;
	size_t k = nd_half_ports(h, &ports);

	check(k == n && (n == 0 || memcmp(ports, want, n * sizeof(*want)) == 0), "%s: %zu ports (want %zu)", what, k,
	      n);
}

/* The whole life of a half: open, its ports both ways, close. */
static void test_life(int mode, const char *mode_name, const struct snapshot *before)
{
	const char *id = pod(mode == XPU_MODE_SLEEP ? 3 : 4);
	const uint16_t declared[] = { 15001 };
	struct nd_half_opts o = opts_for(id, declared, 1, mode);
	struct log_seen seen = { 0 };
	struct nd_half *h, *h2 = NULL;
	char err[2048], v[256], file[8400], what[64], *saved;
	struct xpu_addr4 a[8];
	int rc, changed = -1, fd, n;
	uint16_t peer[2];

	snprintf(what, sizeof(what), "%s half", mode_name);
	o.log = log_to;
	o.log_ctx = &seen;
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == 0, "%s: open: %s", what, err);
	if (rc < 0)
		return;

	/* The link's device. */
	n = xpu_netns_addrs4(ns_path, a, 8);
	rc = 0;
	for (int i = 0; i < n && i < 8; i++)
		rc |= strcmp(a[i].dev, "xpu0") == 0 && a[i].addr[0] == 169 && a[i].addr[1] == 254 && a[i].addr[2] == 77 &&
		      a[i].addr[3] == 1 && a[i].prefix == 30;
	check(rc, "%s: xpu0 has 169.254.77.1/30", what);
	saved = capture("ip -n %s link show dev xpu0", ns_name);
	check(strstr(saved, "link/ether 02:68:70:77:00:01") != NULL, "%s: xpu0's MAC address: %s", what, saved);
	free(saved);
	saved = capture("ip -n %s neigh show dev xpu0", ns_name);
	check(strstr(saved, "169.254.77.2 lladdr 02:68:70:77:00:02 PERMANENT") != NULL, "%s: the peer's entry: %s", what,
	      saved);
	free(saved);

	/* The window. */
	snprintf(file, sizeof(file), "/dev/shm/heteropod/pod-%s.xpu", id);
	check(strcmp(nd_half_window_path(h), file) == 0 && window_exists(id), "%s: window %s", what,
	      nd_half_window_path(h));

	/* The sysctls, and what was there before. */
	sysctl_get("net/ipv4/conf/xpu0/route_localnet", v, sizeof(v));
	check(strcmp(v, "1") == 0, "%s: xpu0 route_localnet %s", what, v);
	sysctl_get("net/ipv6/conf/xpu0/disable_ipv6", v, sizeof(v));
	check(strcmp(v, "1") == 0, "%s: xpu0 disable_ipv6 %s", what, v);
	sysctl_get("net/ipv4/conf/xpu0/forwarding", v, sizeof(v));
	check(strcmp(v, "1") == 0, "%s: xpu0 forwarding %s", what, v);
	sysctl_get("net/ipv4/conf/eth0/forwarding", v, sizeof(v));
	check(strcmp(v, "1") == 0, "%s: eth0 forwarding %s", what, v);
	sysctl_get("net.ipv4.ip_local_port_range", v, sizeof(v));
	check(strcmp(v, "32768\t46999") == 0, "%s: port range %s", what, v);
	sysctl_get("net.ipv4.ip_local_reserved_ports", v, sizeof(v));
	check(strcmp(v, "15001") == 0, "%s: the declared port reserved: \"%s\"", what, v);
	snprintf(file, sizeof(file),
		 "net.ipv4.ip_local_port_range=%s\nnet.ipv4.ip_local_reserved_ports=%s\nnet/ipv4/conf/eth0/forwarding=%s\n",
		 before->range, before->reserved, before->eth_forwarding);
	check(strcmp(nd_half_saved_sysctls(h), file) == 0, "%s: saved sysctls:\n%s", what, nd_half_saved_sysctls(h));

	/* The rules: the declared port crosses. */
	check_rules(what, id, "15001");

	/* A second half for the pod while this one lives. */
	rc = nd_half_open(&o, &h2, err, sizeof(err));
	snprintf(file, sizeof(file), "is in use by its host end (pid %d)", (int)getpid());
	check(rc == -EBUSY && h2 == NULL && strstr(err, file), "%s: a second open: %d %s", what, rc, err);
	check(window_exists(id), "%s: a refused second open leaves the first's window", what);

	/* Its own listeners. */
	rc = nd_half_poll(h, &changed, err, sizeof(err));
	check(rc == 0 && changed == 0, "%s: nothing listens yet: %d %d %s", what, rc, changed, err);
	check_ports(what, h, NULL, 0);
	fd = listen_on(7001);
	check(fd >= 0, "%s: listen on 7001 in the namespace", what);
	rc = nd_half_poll(h, &changed, err, sizeof(err));
	check(rc == 0 && changed == 1, "%s: a listener on 7001 is a change: %d %d %s", what, rc, changed, err);
	peer[0] = 7001;
	check_ports(what, h, peer, 1);
	rc = nd_half_poll(h, &changed, err, sizeof(err));
	check(rc == 0 && changed == 0, "%s: the same listener again is none", what);
	check_rules(what, id, "15001"); /* the host half's own port does not cross */

	/* The other half's. */
	peer[0] = 8080;
	rc = nd_half_set_peer_ports(h, peer, 1, err, sizeof(err));
	check(rc == 0, "%s: peer ports 8080: %s", what, err);
	check_rules(what, id, "8080,15001");
	sysctl_get("net.ipv4.ip_local_reserved_ports", v, sizeof(v));
	check(strcmp(v, "8080,15001") == 0, "%s: reserved follows the DPU half's ports: \"%s\"", what, v);

	/* Unchanged: no iptables-restore runs (the fake one would fail). */
	snprintf(file, sizeof(file), "%s:%s", fake_bin, saved_path);
	setenv("PATH", file, 1);
	peer[0] = 7001;
	peer[1] = 8080;
	rc = nd_half_set_peer_ports(h, peer, 2, err, sizeof(err));
	check(rc == 0, "%s: 7001 in both halves changes no rule: %s", what, err);
	check(seen.lines == 1 && strcmp(seen.level, "warn") == 0, "%s: one warning: %d %s", what, seen.lines, seen.level);
	snprintf(file, sizeof(file),
		 "host half of pod %s: ports 7001 are listened on in both halves: each half's localhost keeps its own listener, the pod IP reaches the host half",
		 id);
	check(strcmp(seen.last, file) == 0, "%s: the conflict's warning: %s", what, seen.last);
	rc = nd_half_set_peer_ports(h, peer, 2, err, sizeof(err));
	check(rc == 0 && seen.lines == 1, "%s: the same conflict is not warned of twice", what);

	/* A change while iptables-restore fails: the error, then the next try applies. */
	close(fd);
	rc = nd_half_poll(h, &changed, err, sizeof(err));
	snprintf(file, sizeof(file), "host half of pod %s: update rules: iptables-restore -w --noflush (in %s): fake iptables-restore failure",
		 id, ns_path);
	check(rc < 0 && changed == 1 && strcmp(err, file) == 0, "%s: a failed update: %d %d %s", what, rc, changed, err);
	check_ports(what, h, NULL, 0);
	setenv("PATH", saved_path, 1);
	rc = nd_half_set_peer_ports(h, peer, 2, err, sizeof(err));
	check(rc == 0, "%s: the update again: %s", what, err);
	check_rules(what, id, "7001,8080,15001");
	sysctl_get("net.ipv4.ip_local_reserved_ports", v, sizeof(v));
	check(strcmp(v, "7001,8080,15001") == 0, "%s: reserved: \"%s\"", what, v);

	peer[0] = 0;
	rc = nd_half_set_peer_ports(h, peer, 1, err, sizeof(err));
	snprintf(file, sizeof(file), "host half of pod %s: peer listening port 0 is not a port number", id);
	check(rc == -EINVAL && strcmp(err, file) == 0, "%s: peer port 0: %s", what, err);

	rc = nd_half_close(h, err, sizeof(err));
	check(rc == 0, "%s: close: %s", what, err);
	check(!window_exists(id), "%s: close removes the window", what);
	check_as_before(what, before);
}

/*
 * Opens the half in a child that is then killed, as a node daemon that dies:
 * the window, the rules and the sysctls stay (the TAP device goes with the
 * child's descriptor). Returns the child's saved sysctls (malloc'd).
 */
static char *open_and_die(const char *id, struct timespec *died)
{
	int p[2], st;
	char *buf = calloc(1, 8192);
	size_t len = 0;
	ssize_t n;
	pid_t pid;

	if (!buf || pipe(p) < 0) {
		perror("pipe");
		exit(2);
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(2);
	}
	if (pid == 0) {
		struct nd_half_opts o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
		struct nd_half *h;
		char err[2048];

		close(p[0]);
		if (nd_half_open(&o, &h, err, sizeof(err)) < 0) {
			dprintf(p[1], "ERROR %s", err);
			_exit(1);
		}
		dprintf(p[1], "%s", nd_half_saved_sysctls(h));
		close(p[1]);
		for (;;)
			pause();
	}
	close(p[1]);
	while (len < 8191 && (n = read(p[0], buf + len, 8191 - len)) > 0)
		len += (size_t)n;
	close(p[0]);
	kill(pid, SIGKILL);
	clock_gettime(CLOCK_MONOTONIC, died);
	waitpid(pid, &st, 0);
	if (strncmp(buf, "ERROR ", 6) == 0) {
		check(0, "open in the child: %s", buf + 6);
		return buf;
	}
	/* The device goes as the kernel releases the child's descriptors. */
	for (int i = 0; i < 100 && has_xpu0(); i++)
		usleep(10000);
	return buf;
}

/* A takeover: the next daemon resumes the half a dead one left. */
static void test_takeover(const struct snapshot *before)
{
	const char *id = pod(5);
	struct nd_half_opts o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
	struct timespec died;
	char err[2048], *saved = open_and_die(id, &died), *rules;
	struct nd_half *h;
	int rc;

	check(window_exists(id), "takeover: the dead half's window stays");
	check_rules("takeover: the dead half's rules", id, NULL);
	check(!has_xpu0(), "takeover: the dead half's xpu0 went with it");
	o.resume_sysctls = saved;
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == 0, "takeover: open: %s", err);
	if (rc == 0) {
		check(strcmp(nd_half_saved_sysctls(h), saved) == 0, "takeover: the first open's sysctls are kept: %s",
		      nd_half_saved_sysctls(h));
		check(has_xpu0(), "takeover: xpu0");
		check_rules("takeover: the dead half's chains went first", id, NULL);
		rc = nd_half_close(h, err, sizeof(err));
		check(rc == 0, "takeover: close: %s", err);
	}
	check(!window_exists(id), "takeover: close removes the window");
	check_as_before("takeover: close puts back what the first open found", before);
	rules = iptables_save();
	check(!strstr(rules, id), "takeover: nothing of the pod's left");
	free(rules);
	free(saved);
}

/* A new half (no takeover) after the last one's owner died. */
static void test_reopen(const struct snapshot *before)
{
	const char *id = pod(6);
	struct nd_half_opts o = opts_for(id, NULL, 0, XPU_MODE_SLEEP);
	struct timespec died, now;
	char err[2048], *saved = open_and_die(id, &died);
	struct nd_half *h;
	long ms;
	int rc;

	/* Its heartbeat is fresh for a second after it died: the window is taken
	 * for in use (looked at only while surely so: the machine may be slow). */
	clock_gettime(CLOCK_MONOTONIC, &now);
	ms = (now.tv_sec - died.tv_sec) * 1000 + (now.tv_nsec - died.tv_nsec) / 1000000;
	if (ms >= 500) {
		printf("reopen at once: not tried, %ld ms went by since the kill\n", ms);
	} else {
		rc = nd_half_open(&o, &h, err, sizeof(err));
		check(rc == -EBUSY && strstr(err, "is in use by its host end (pid "), "reopen at once: %d %s", rc, err);
		if (rc == 0)
			nd_half_close(h, err, sizeof(err));
		check(window_exists(id), "reopen at once: the window stays");
		check_rules("reopen at once: the rules stay", id, NULL);
	}

	usleep(1300 * 1000);
	rc = nd_half_open(&o, &h, err, sizeof(err));
	check(rc == 0, "reopen: %s", err);
	if (rc == 0) {
		check(window_exists(id) && has_xpu0(), "reopen: a new window and xpu0");
		check_rules("reopen: the dead half's chains went first", id, NULL);
		rc = nd_half_close(h, err, sizeof(err));
		check(rc == 0, "reopen: close: %s", err);
	}
	check(!window_exists(id), "reopen: close removes the window");
	/* The new half found (and put back) what the dead one had set. */
	restore(before);
	check_as_before("reopen", before);
	free(saved);
}

int main(void)
{
	struct snapshot before;
	const char *path = getenv("PATH");

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (geteuid() != 0) {
		printf("needs root (network namespaces, TAP devices, netfilter)\n");
		return 77;
	}
	snprintf(saved_path, sizeof(saved_path), "%s", path ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
	snprintf(ns_name, sizeof(ns_name), "hp-halftest-%d", (int)getpid());
	snprintf(ns_path, sizeof(ns_path), "/run/netns/%s", ns_name);
	atexit(cleanup);
	/* As the daemon: a program that exits before reading all its input
	 * (the failing iptables-restore here) makes libxpu's write to it fail
	 * with EPIPE, not kill the process. */
	signal(SIGPIPE, SIG_IGN);
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	signal(SIGHUP, on_signal);
	if (sh("ip netns add %s", ns_name) != 0 || sh("ip -n %s link set lo up", ns_name) != 0 ||
	    sh("ip -n %s link add eth0 type veth peer name eth1", ns_name) != 0 ||
	    sh("ip -n %s addr add " POD_IP "/24 dev eth0", ns_name) != 0 ||
	    sh("ip -n %s link set eth0 up", ns_name) != 0 || sh("ip -n %s link set eth1 up", ns_name) != 0) {
		printf("FAIL could not set up namespace %s\n", ns_name);
		return 1;
	}
	snapshot(&before);

	test_pod_address();
	test_refused(&before);
	test_failed(&before);
	test_life(XPU_MODE_SLEEP, "sleep", &before);
	test_life(XPU_MODE_ELASTIC, "elastic", &before);
	test_takeover(&before);
	test_reopen(&before);

	if (failures) {
		printf("%d of %d half checks failed\n", failures, checks);
		return 1;
	}
	printf("%d checks: all half tests passed\n", checks);
	return 0;
}
