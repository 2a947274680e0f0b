/*
 * The management link's guard (src/shim/mgmt-filter.ts, whose text and rules
 * these are): the DPU agent listens on the DPU's management network, which the
 * host reaches directly; one chain drops every packet the host forwards onto
 * that link, in the family of the agent's address, so that a pod with a default
 * route through the host cannot reach it. Made at each start of the daemon (and
 * looked for again at each sweep while the agent's link is not known), kept
 * while the daemon is down: a daemon that stops does not open the link to pods.
 */
#include "noded.h"

#include "../xpu/xpu.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define MGMT_CHAIN "HETEROPOD-MGMT"

struct guard {
	struct nd_daemon *d;
	char address[256];
	char dev[64];
	int family; /* 4 or 6; 0: no link of its own */
};

/* Runs argv (NUL-separated in `args`) in the daemon's namespace, `input` on its stdin; 0 when it exits 0. */
static int run(const char *args, size_t args_len, const char *input, char *out, size_t out_len, char *err, size_t err_len)
{
	char errbuf[1024];
	uint32_t used = 0, err_used = 0;
	int st = xpu_run_in(NULL, NULL, NULL, 0, args, (uint32_t)args_len, input, input ? (uint32_t)strlen(input) : 0, out,
			    out ? (uint32_t)out_len - 1 : 0, &used, errbuf, sizeof(errbuf) - 1, &err_used);

	if (out)
		out[used < out_len ? used : out_len - 1] = '\0';
	errbuf[err_used < sizeof(errbuf) ? err_used : sizeof(errbuf) - 1] = '\0';
	if (st < 0) {
		snprintf(err, err_len, "%s: %s", args, strerror(-st));
		return st;
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		snprintf(err, err_len, "%s: %.900s", args, errbuf[0] ? errbuf : "failed");
		return -EIO;
	}
	return 0;
}

#define ARGS(...) ((const char[]){ __VA_ARGS__ }), sizeof((const char[]){ __VA_ARGS__ })

static void guard_run(struct nd_work *w)
{
	struct guard *g = w->ctx;
	char host[256], ip[INET6_ADDRSTRLEN], route[2048], args[512], rules[512], *nl, *dev;
	const char *port;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	size_t n;
	int v6;

	if (hp_split_address(g->address, host, sizeof(host), &port) < 0) {
		snprintf(w->err, sizeof(w->err), "DPU agent address \"%s\": expected host:port", g->address);
		w->rc = -EINVAL;
		return;
	}
	if ((w->rc = getaddrinfo(host, NULL, &hints, &ai)) != 0) {
		snprintf(w->err, sizeof(w->err), "%s: %s", host, gai_strerror(w->rc));
		w->rc = -EHOSTUNREACH;
		return;
	}
	v6 = ai->ai_family == AF_INET6;
	inet_ntop(ai->ai_family, v6 ? (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr : (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr,
		  ip, sizeof(ip));
	freeaddrinfo(ai);
	/* The link the agent's address is directly on (not through a gateway, not local). */
	n = (size_t)snprintf(args, sizeof(args), "ip%croute%cget%c%s", 0, 0, 0, ip) + 1;
	if ((w->rc = run(args, n, NULL, route, sizeof(route), w->err, sizeof(w->err))) < 0)
		return;
	if ((nl = strchr(route, '\n')))
		*nl = '\0';
	dev = strstr(route, " dev ");
	if (strstr(route, " via ") || strncmp(route, "local", 5) == 0 || !dev)
		return; /* family 0: no link of its own */
	dev += 5;
	snprintf(g->dev, sizeof(g->dev), "%.*s", (int)strcspn(dev, " "), dev);
	if (strcmp(g->dev, "lo") == 0)
		return;
	g->family = v6 ? 6 : 4;
	snprintf(rules, sizeof(rules),
		 "*filter\n:%s - [0:0]\n-A %s -o %s -m comment --comment \"heteropod: no forwarded packet onto the DPU management link\" -j DROP\nCOMMIT\n",
		 MGMT_CHAIN, MGMT_CHAIN, g->dev);
	if ((w->rc = v6 ? run(ARGS("ip6tables-restore\0-w\0--noflush"), rules, NULL, 0, w->err, sizeof(w->err))
			: run(ARGS("iptables-restore\0-w\0--noflush"), rules, NULL, 0, w->err, sizeof(w->err))) < 0)
		return;
	/* hooked first in FORWARD, once */
	if ((v6 ? run(ARGS("ip6tables\0-w\0-C\0FORWARD\0-j\0" MGMT_CHAIN), NULL, NULL, 0, w->err, sizeof(w->err))
		: run(ARGS("iptables\0-w\0-C\0FORWARD\0-j\0" MGMT_CHAIN), NULL, NULL, 0, w->err, sizeof(w->err))) == 0)
		return;
	w->rc = v6 ? run(ARGS("ip6tables\0-w\0-I\0FORWARD\0001\0-j\0" MGMT_CHAIN), NULL, NULL, 0, w->err, sizeof(w->err))
		   : run(ARGS("iptables\0-w\0-I\0FORWARD\0001\0-j\0" MGMT_CHAIN), NULL, NULL, 0, w->err, sizeof(w->err));
}

static void guard_done(struct nd_work *w)
{
	struct guard *g = w->ctx;
	struct nd_daemon *d = g->d;

	d->guarding = 0;
	if (w->rc < 0) {
		nd_log(NULL, NULL, ND_ERROR, "guard the management link", "address", g->address, "error", w->err, NULL);
	} else if (!g->family) {
		/* Routed (or its link not up yet): asked again at each sweep, said once. */
		if (!d->unguarded_said)
			nd_log(NULL, NULL, ND_WARN, "DPU agent not on a link of its own: management link not guarded", "address", g->address, NULL);
		d->unguarded_said = 1;
	} else {
		d->guarded = 1;
		nd_log(NULL, NULL, ND_INFO, "management link guarded: no forwarded packet reaches it", "link", g->dev, "family",
		       g->family == 6 ? "6" : "4", "chain", MGMT_CHAIN, NULL);
	}
	free(g);
}

void nd_guard_management(struct nd_daemon *d)
{
	struct guard *g;
	struct nd_work *w;

	if (d->guarded || d->guarding || !d->cfg.dpu_address[0])
		return;
	if (!(g = calloc(1, sizeof(*g))) || !(w = calloc(1, sizeof(*w)))) {
		free(g);
		return;
	}
	g->d = d;
	snprintf(g->address, sizeof(g->address), "%s", d->cfg.dpu_address);
	w->run = guard_run;
	w->done = guard_done;
	w->ctx = g;
	d->guarding = 1;
	nd_work(d, w);
}
