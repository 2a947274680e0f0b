/*
 * The netfilter rules of a split network namespace, as iptables-restore input,
 * and which half owns a TCP port. Pure functions of their input: the node
 * daemon and the TypeScript agent (src/netns/rules.ts, ports.ts, through
 * koffi) both call these, so both halves of every pod get the same rules.
 *
 * Each half keeps its rules in chains of its own, named after the pod
 * (HP-<tag>-PREROUTING, …), reached by one jump from the built-in chain that
 * carries the comment "heteropod pod <pod id> <side> half". An update replaces
 * the contents of the pod's chains in one iptables-restore transaction
 * (declaring a chain in --noflush input empties it); tear-down deletes exactly
 * the jumps to the pod's chains and the chains, found in iptables-save output,
 * so it also works after a crash from whatever state was left.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "sha256.h"
#include "xpu.h"

/* Text written into the caller's buffer as far as it fits; len counts all of
 * it, so the caller learns how much room the whole text needs. */
struct text {
	char *buf;
	size_t cap;
	size_t len;
};

static void text_init(struct text *t, char *buf, uint32_t cap)
{
	t->buf = cap ? buf : NULL;
	t->cap = t->buf ? cap : 0;
	t->len = 0;
	if (t->cap)
		t->buf[0] = '\0';
}

static void put_mem(struct text *t, const char *s, size_t n)
{
	if (t->len < t->cap) {
		size_t room = t->cap - 1 - t->len; /* one byte kept for the NUL */
		size_t k = n < room ? n : room;

		memcpy(t->buf + t->len, s, k);
		t->buf[t->len + k] = '\0';
	}
	t->len += n;
}

static void put(struct text *t, const char *s)
{
	put_mem(t, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void putf(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	/* vsnprintf writes what fits, NUL-ended, and returns the whole length. */
	va_start(ap, fmt);
	if (t->len < t->cap)
		n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
	else
		n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->len += (size_t)n;
}

static int text_result(const struct text *t)
{
	return t->len > INT_MAX ? -EOVERFLOW : (int)t->len;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void chain_tag(const char *pod_id, char tag[XPU_CHAIN_TAG_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";
	uint8_t sum[XPU_SHA256_BYTES];
	size_t n = strlen(pod_id);
	size_t i;

	for (i = 0; i < n && is_hex(pod_id[i]); i++)
		;
	if (i == n && n >= XPU_CHAIN_TAG_LEN) {
		memcpy(tag, pod_id, XPU_CHAIN_TAG_LEN);
	} else {
		xpu_sha256(pod_id, n, sum);
		for (i = 0; i < XPU_CHAIN_TAG_LEN / 2; i++) {
			tag[2 * i] = digits[sum[i] >> 4];
			tag[2 * i + 1] = digits[sum[i] & 15];
		}
	}
	tag[XPU_CHAIN_TAG_LEN] = '\0';
}

int xpu_rules_chain_tag(const char *pod_id, char *out, uint32_t out_len)
{
	char tag[XPU_CHAIN_TAG_LEN + 1];
	struct text t;

	if (!pod_id || (!out && out_len))
		return -EINVAL;
	chain_tag(pod_id, tag);
	text_init(&t, out, out_len);
	put(&t, tag);
	return text_result(&t);
}

int xpu_rules_chain_name(const char *pod_id, const char *builtin, char *out, uint32_t out_len)
{
	char tag[XPU_CHAIN_TAG_LEN + 1];
	struct text t;

	if (!pod_id || !builtin || (!out && out_len))
		return -EINVAL;
	chain_tag(pod_id, tag);
	text_init(&t, out, out_len);
	putf(&t, "HP-%s-", tag);
	put(&t, builtin);
	return text_result(&t);
}

/* Ports [from, from + XPU_MULTIPORT_MAX) of ports, comma-separated. */
static void put_chunk(struct text *t, const uint16_t *ports, uint32_t count, uint32_t from)
{
	for (uint32_t i = from; i < count && i < from + XPU_MULTIPORT_MAX; i++)
		putf(t, i == from ? "%u" : ",%u", ports[i]);
}

int xpu_rules_multiport(const uint16_t *ports, uint32_t count, char *out, uint32_t out_len)
{
	struct text t;

	if ((!ports && count) || (!out && out_len))
		return -EINVAL;
	text_init(&t, out, out_len);
	for (uint32_t i = 0; i < count; i += XPU_MULTIPORT_MAX) {
		put_chunk(&t, ports, count, i);
		put(&t, "\n");
	}
	return text_result(&t);
}

/* ---- One half's rules ---- */

/* Names that go into the text unquoted or inside a double-quoted comment must
 * not end the line, the word or the quotes. */
static bool comment_safe(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20 || c == 0x7f || c == '"' || c == '\\')
			return false;
	}
	return true;
}

static bool device_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= 16)
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c <= 0x20 || c == 0x7f || c == '/' || c == ':' || c == '"' || c == '\\')
			return false;
	}
	return true;
}

static int refuse(struct text *t, const char *why)
{
	put(t, why);
	return -EINVAL;
}

/* What one half's rules say, fixed for the whole text. */
struct half {
	const struct xpu_half_rules *r;
	bool host;
	const char *pod_ip; /* NULL: none */
	const char *tap;
	const char *self;   /* this half's link address */
	const char *peer;   /* the other half's */
	const char *other;  /* the other half, as the comments name it */
	char tag[XPU_CHAIN_TAG_LEN + 1];
};

/* One DNAT rule per multiport chunk of ports:
 * "-A HP-<tag>-<chain> <match> -p tcp -m multiport --dports <chunk> <comment> -j DNAT --to-destination <to>" */
static void put_port_dnats(struct text *t, const struct half *h, const uint16_t *ports, uint32_t count,
			   const char *chain, const char *match, const char *comment, const char *to)
{
	for (uint32_t i = 0; i < count; i += XPU_MULTIPORT_MAX) {
		putf(t, "-A HP-%s-%s %s -p tcp -m multiport --dports ", h->tag, chain, match);
		put_chunk(t, ports, count, i);
		putf(t, " -m comment --comment \"%s\" -j DNAT --to-destination %s\n", comment, to);
	}
}

static void put_jump(struct text *t, const struct half *h, const char *builtin)
{
	/* The pod id is put apart: it is the one string of unbounded length. */
	putf(t, "-I %s 1 -m comment --comment \"heteropod pod ", builtin);
	put(t, h->r->pod_id);
	putf(t, " %s half\" -j HP-%s-%s\n", h->host ? "host" : "dpu", h->tag, builtin);
}

static void put_nat(struct text *t, const struct half *h)
{
	static const char *const chains[] = { "PREROUTING", "OUTPUT", "POSTROUTING" };
	const struct xpu_half_rules *r = h->r;
	const char *ip = h->pod_ip;
	char match[64], comment[64];

	put(t, "*nat\n");
	for (int i = 0; i < 3; i++)
		putf(t, ":HP-%s-%s - [0:0]\n", h->tag, chains[i]);
	if (r->flags & XPU_RULES_JUMPS)
		for (int i = 0; i < 3; i++)
			put_jump(t, h, chains[i]);

	/* Localhost of the other half arrives SNATed to the peer's link address,
	 * for this half's link address: hand it to loopback, where a listener
	 * bound to 127.0.0.1 only (an admin port, say) sees it as local traffic,
	 * as in one namespace. Only that pair of addresses is mapped, so traffic
	 * from the network for the pod IP never reaches loopback-only listeners. */
	putf(t, "-A HP-%s-PREROUTING -s %s/32 -d %s/32 -i %s -p tcp -m comment --comment \"localhost from the %s half\" -j DNAT --to-destination 127.0.0.1\n",
	     h->tag, h->peer, h->self, h->tap, h->other);
	for (uint32_t i = 0; i < r->peer_ports_count; i += XPU_MULTIPORT_MAX) {
		/* One chunk at a time: its rules stay together, as before. */
		const uint16_t *chunk = r->peer_ports + i;
		uint32_t n = r->peer_ports_count - i < XPU_MULTIPORT_MAX ? r->peer_ports_count - i : XPU_MULTIPORT_MAX;

		if (h->host) {
			/* podIP:PORT from the network (eth0), for a DPU port. Not from
			 * the link: the DPU half's own traffic to the pod IP stays on
			 * its side (below). */
			snprintf(match, sizeof(match), "-d %s/32 ! -i %s", ip, h->tap);
			put_port_dnats(t, h, chunk, n, "PREROUTING", match, "pod IP to the DPU half", h->peer);
			snprintf(match, sizeof(match), "-d %s/32", ip);
			put_port_dnats(t, h, chunk, n, "OUTPUT", match, "pod IP to the DPU half", h->peer);
		}
		snprintf(comment, sizeof(comment), "localhost to the %s half", h->other);
		put_port_dnats(t, h, chunk, n, "OUTPUT", "-d 127.0.0.1/32", comment, h->peer);
	}
	if (!h->host && ip) {
		snprintf(match, sizeof(match), "-d %s/32", ip);
		if (r->flags & XPU_RULES_POD_IP_LOCAL)
			put_port_dnats(t, h, r->peer_ports, r->peer_ports_count, "OUTPUT", match,
				       "pod IP served in the host half", h->peer);
		else
			put_port_dnats(t, h, r->own_pod_ip_ports, r->own_pod_ip_ports_count, "OUTPUT", match,
				       "pod IP served in this half", h->self);
	}
	/* Loopback sources cannot leave a device (route_localnet lets them be
	 * routed at all); the peer sees this half's link address instead. */
	putf(t, "-A HP-%s-POSTROUTING -s 127.0.0.0/8 -o %s -m comment --comment \"localhost to the %s half\" -j SNAT --to-source %s\n",
	     h->tag, h->tap, h->other, h->self);
	if (h->host) {
		/* Egress of the DPU half leaves as the pod IP. */
		putf(t, "-A HP-%s-POSTROUTING -s %s/32 ! -o %s -m comment --comment \"DPU half egress as the pod IP\" -j SNAT --to-source %s\n",
		     h->tag, h->peer, h->tap, ip);
	}
	put(t, "COMMIT\n");
}

/* Forwarding between eth0 and the DPU half, ahead of anything that drops.
 * Towards the DPU half only what the pod's single namespace would accept:
 * replies to its egress and connections to its ports at the pod IP (DNAT).
 * Nothing from the network may reach its link address directly, nor claim a
 * link address as source (the DPU half maps those to loopback). */
static void put_host_filter(struct text *t, const struct half *h)
{
	const char *c = h->tag, *tap = h->tap;

	put(t, "*filter\n");
	putf(t, ":HP-%s-FORWARD - [0:0]\n", c);
	if (h->r->flags & XPU_RULES_JUMPS)
		put_jump(t, h, "FORWARD");
	putf(t, "-A HP-%s-FORWARD -s " XPU_LINK_NET " ! -i %s -m comment --comment \"link addresses only from the link\" -j DROP\n", c, tap);
	putf(t, "-A HP-%s-FORWARD -i %s -m comment --comment \"from the DPU half\" -j ACCEPT\n", c, tap);
	putf(t, "-A HP-%s-FORWARD -o %s -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment \"to the DPU half: replies, pod IP ports\" -j ACCEPT\n",
	     c, tap);
	putf(t, "-A HP-%s-FORWARD -o %s -m comment --comment \"to the DPU half: nothing else\" -j DROP\n", c, tap);
	put(t, "COMMIT\n");
}

int xpu_rules_half(const struct xpu_half_rules *r, char *out, uint32_t out_len)
{
	struct in_addr a;
	struct half h;
	struct text t;

	if (!out && out_len)
		return -EINVAL;
	text_init(&t, out, out_len);
	if (!r)
		return refuse(&t, "no rule input");
	if (r->side != XPU_SIDE_HOST && r->side != XPU_SIDE_DPU)
		return refuse(&t, "the side is neither host nor DPU");
	if (r->flags & ~(uint32_t)(XPU_RULES_JUMPS | XPU_RULES_POD_IP_LOCAL))
		return refuse(&t, "unknown flags");
	if (!r->pod_id || !r->pod_id[0])
		return refuse(&t, "the pod id is required");
	if (!comment_safe(r->pod_id))
		return refuse(&t, "the pod id holds a quote, a backslash or a control character");
	if ((!r->peer_ports && r->peer_ports_count) || (!r->own_pod_ip_ports && r->own_pod_ip_ports_count))
		return refuse(&t, "a port list without its ports");
	memset(&h, 0, sizeof(h));
	h.r = r;
	h.host = r->side == XPU_SIDE_HOST;
	h.pod_ip = r->pod_ip && r->pod_ip[0] ? r->pod_ip : NULL;
	h.tap = r->tap ? r->tap : XPU_LINK_TAP;
	if (h.host && !h.pod_ip)
		return refuse(&t, "the pod IP is required");
	/* A dotted quad is at most 15 characters: the match strings' size. */
	if (h.pod_ip && inet_pton(AF_INET, h.pod_ip, &a) != 1)
		return refuse(&t, "the pod IP is not an IPv4 address");
	if (!device_name(h.tap))
		return refuse(&t, "the link's device name is empty, too long or holds a space, slash, colon or quote");
	h.self = h.host ? XPU_HOST_LINK_IP : XPU_DPU_LINK_IP;
	h.peer = h.host ? XPU_DPU_LINK_IP : XPU_HOST_LINK_IP;
	h.other = h.host ? "DPU" : "host";
	chain_tag(r->pod_id, h.tag);

	put_nat(&t, &h);
	if (h.host)
		put_host_filter(&t, &h);
	return text_result(&t);
}

uint32_t xpu_half_rules_size(void)
{
	return sizeof(struct xpu_half_rules);
}

/* ---- Removal, from iptables-save output ---- */

struct line {
	const char *s;
	size_t n; /* without the '\n' */
};

static bool next_line(const char **p, const char *end, struct line *l)
{
	const char *nl;

	if (*p > end)
		return false;
	nl = memchr(*p, '\n', (size_t)(end - *p));
	l->s = *p;
	l->n = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
	*p = nl ? nl + 1 : end + 1; /* past the end: the last line was read */
	return true;
}

static bool starts(const struct line *l, const char *prefix)
{
	size_t n = strlen(prefix);

	return l->n >= n && memcmp(l->s, prefix, n) == 0;
}

static bool mem_starts(const char *s, size_t n, const char *prefix, size_t pn)
{
	return n >= pn && memcmp(s, prefix, pn) == 0;
}

/* ":NAME policy [p:b]": the pod's chain NAME, or false. */
static bool pods_chain(const struct line *l, const char *prefix, size_t pn, struct line *name)
{
	const char *sp;

	if (!starts(l, ":"))
		return false;
	name->s = l->s + 1;
	sp = memchr(name->s, ' ', l->n - 1);
	name->n = sp ? (size_t)(sp - name->s) : l->n - 1;
	return mem_starts(name->s, name->n, prefix, pn);
}

/* "-A CHAIN …": a jump (-j) or goto (-g) to one of the pod's chains from a
 * chain that is not the pod's (the pod's own are emptied with them). */
static bool jump_to_pods(const struct line *l, const char *prefix, size_t pn)
{
	char j[40], g[40];
	const char *chain, *sp;
	size_t cn;

	if (!starts(l, "-A "))
		return false;
	chain = l->s + 3;
	sp = memchr(chain, ' ', l->n - 3);
	cn = sp ? (size_t)(sp - chain) : l->n - 3;
	if (mem_starts(chain, cn, prefix, pn))
		return false;
	snprintf(j, sizeof(j), " -j %s", prefix);
	snprintf(g, sizeof(g), " -g %s", prefix);
	return memmem(l->s, l->n, j, strlen(j)) || memmem(l->s, l->n, g, strlen(g));
}

/* Section end: the next "*table" or "COMMIT" line, or the end of the text. */
static bool section_end(const struct line *l)
{
	return starts(l, "*") || starts(l, "COMMIT");
}

enum pass { CHAINS, DELETES, REMOVALS };

/* One pass over the lines of a table's section (from p, up to its end). */
static int section_pass(struct text *t, const char *p, const char *end, const char *prefix, size_t pn,
			enum pass pass)
{
	struct line l, name;
	int found = 0;

	while (next_line(&p, end, &l) && !section_end(&l)) {
		if (pass != DELETES && pods_chain(&l, prefix, pn, &name)) {
			found++;
			if (!t)
				continue;
			put(t, pass == CHAINS ? ":" : "-X ");
			put_mem(t, name.s, name.n);
			put(t, pass == CHAINS ? " - [0:0]\n" : "\n");
		} else if (pass == DELETES && jump_to_pods(&l, prefix, pn)) {
			found++;
			if (!t)
				continue;
			put(t, "-D ");
			put_mem(t, l.s + 3, l.n - 3);
			put(t, "\n");
		}
	}
	return found;
}

static bool blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

int xpu_rules_removal(const char *saved, const char *pod_id, char *out, uint32_t out_len)
{
	char tag[XPU_CHAIN_TAG_LEN + 1], prefix[XPU_CHAIN_TAG_LEN + 5];
	const char *p, *end;
	struct line l;
	struct text t;
	size_t pn;

	if (!saved || !pod_id || (!out && out_len))
		return -EINVAL;
	chain_tag(pod_id, tag);
	pn = (size_t)snprintf(prefix, sizeof(prefix), "HP-%s-", tag);
	text_init(&t, out, out_len);
	p = saved;
	end = saved + strlen(saved);
	/* Per table: its chains declared (which empties them), the jumps deleted,
	 * then the chains, now unreferenced and empty, deleted. */
	while (next_line(&p, end, &l)) {
		const char *name = l.s + 1, *name_end = l.s + l.n;

		if (!starts(&l, "*"))
			continue;
		while (name < name_end && blank(*name))
			name++;
		while (name_end > name && blank(name_end[-1]))
			name_end--;
		if (name == name_end)
			continue;
		if (!section_pass(NULL, p, end, prefix, pn, CHAINS) && !section_pass(NULL, p, end, prefix, pn, DELETES))
			continue;
		put(&t, "*");
		put_mem(&t, name, (size_t)(name_end - name));
		put(&t, "\n");
		section_pass(&t, p, end, prefix, pn, CHAINS);
		section_pass(&t, p, end, prefix, pn, DELETES);
		section_pass(&t, p, end, prefix, pn, REMOVALS);
		put(&t, "COMMIT\n");
	}
	return text_result(&t);
}

/* ---- Port ownership ---- */

/* One bit per TCP port. */
struct port_set {
	uint64_t bits[65536 / 64];
};

static void set_add(struct port_set *s, const uint16_t *ports, uint32_t count)
{
	for (uint32_t i = 0; i < count; i++)
		s->bits[ports[i] >> 6] |= 1ull << (ports[i] & 63);
}

/* The ports of s in ascending order; how many there are. */
static int set_list(const struct port_set *s, uint16_t *out, uint32_t max)
{
	uint32_t n = 0;

	for (uint32_t w = 0; w < 65536 / 64; w++)
		for (uint64_t b = s->bits[w]; b; b &= b - 1, n++)
			if (n < max)
				out[n] = (uint16_t)(w * 64 + (uint32_t)__builtin_ctzll(b));
	return (int)n;
}

int xpu_ports_sorted(const uint16_t *ports, uint32_t count, uint16_t *out, uint32_t max)
{
	struct port_set s;

	if ((!ports && count) || (!out && max))
		return -EINVAL;
	memset(&s, 0, sizeof(s));
	set_add(&s, ports, count); /* all read before any written: out may be ports */
	return set_list(&s, out, max);
}

uint32_t xpu_port_view_size(void)
{
	return sizeof(struct xpu_port_view);
}

static bool view_ok(const struct xpu_port_view *v)
{
	return v && (v->declared_dpu || !v->declared_dpu_count) && (v->host_listening || !v->host_listening_count) &&
	       (v->dpu_listening || !v->dpu_listening_count);
}

enum owner { DPU_OWNED, HOST_OWNED, CONFLICTING };

static int ownership(const struct xpu_port_view *v, enum owner which, uint16_t *out, uint32_t max)
{
	struct port_set result, host, dpu;

	if (!view_ok(v) || (!out && max))
		return -EINVAL;
	memset(&result, 0, sizeof(result));
	memset(&host, 0, sizeof(host));
	memset(&dpu, 0, sizeof(dpu));
	set_add(&host, v->host_listening, v->host_listening_count);
	set_add(&dpu, v->dpu_listening, v->dpu_listening_count);
	switch (which) {
	case DPU_OWNED: /* declared, and listened on in the DPU half only */
		set_add(&result, v->declared_dpu, v->declared_dpu_count);
		for (size_t w = 0; w < 65536 / 64; w++)
			result.bits[w] |= dpu.bits[w] & ~host.bits[w];
		break;
	case HOST_OWNED: /* listened on in the host half only, and not declared */
		set_add(&dpu, v->declared_dpu, v->declared_dpu_count);
		for (size_t w = 0; w < 65536 / 64; w++)
			result.bits[w] = host.bits[w] & ~dpu.bits[w];
		break;
	case CONFLICTING:
		for (size_t w = 0; w < 65536 / 64; w++)
			result.bits[w] = host.bits[w] & dpu.bits[w];
		break;
	}
	return set_list(&result, out, max);
}

int xpu_ports_dpu_owned(const struct xpu_port_view *v, uint16_t *out, uint32_t max)
{
	return ownership(v, DPU_OWNED, out, max);
}

int xpu_ports_host_owned(const struct xpu_port_view *v, uint16_t *out, uint32_t max)
{
	return ownership(v, HOST_OWNED, out, max);
}

int xpu_ports_conflicting(const struct xpu_port_view *v, uint16_t *out, uint32_t max)
{
	return ownership(v, CONFLICTING, out, max);
}
