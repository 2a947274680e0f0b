/*
 * Tests of libxpu's split-network rules and port ownership through the public
 * header, built with their sources (plain and AddressSanitizer) and run by
 * test/unit/xpu-rules.test.ts: the internal SHA-256 against the FIPS 180-2
 * vectors, chain tags, every text in buffers of every size too small (the
 * length needed comes back; nothing is written past the buffer, which ASan
 * checks: each buffer is allocated to its exact size), multiport chunks, one
 * half's rules, removal from iptables-save output, and port ownership.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"
#include "xpu.h"

static int failures;

#define CHECK(cond, ...)                                                                \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
			fprintf(stderr, __VA_ARGS__);                                   \
			fprintf(stderr, "\n");                                          \
			failures++;                                                     \
		}                                                                       \
	} while (0)

#define N(a) ((uint32_t)(sizeof(a) / sizeof((a)[0])))

static const char POD[] = "4f2a9c7e1b3d5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd";
#define T "4f2a9c7e1b3d"

static void sha_hex(const void *data, size_t len, char hex[65])
{
	uint8_t d[XPU_SHA256_BYTES];

	xpu_sha256(data, len, d);
	for (int i = 0; i < XPU_SHA256_BYTES; i++)
		sprintf(hex + 2 * i, "%02x", d[i]);
}

static void test_sha256(void)
{
	char hex[65], *million;
	static const char two_blocks[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

	sha_hex("abc", 3, hex);
	CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "abc: %s", hex);
	sha_hex(two_blocks, strlen(two_blocks), hex);
	CHECK(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"), "448 bits: %s", hex);
	million = malloc(1000000);
	memset(million, 'a', 1000000);
	sha_hex(million, 1000000, hex);
	CHECK(!strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "a million a: %s", hex);
	free(million);
	sha_hex("", 0, hex);
	CHECK(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "empty: %s", hex);
}

/* The text f writes, whole; and f asked again with every shorter buffer, each
 * allocated to its exact size: the same length back, the text's prefix in it,
 * NUL-ended. Returns the whole text (to free) or NULL after a failure. */
typedef int (*text_fn)(const void *arg, char *out, uint32_t out_len);

static char *whole_text(const char *what, text_fn f, const void *arg)
{
	int n = f(arg, NULL, 0);
	char *full;

	CHECK(n >= 0, "%s: %d", what, n);
	if (n < 0)
		return NULL;
	full = malloc((size_t)n + 1);
	CHECK(f(arg, full, (uint32_t)n + 1) == n, "%s: the same length with room", what);
	CHECK(full[n] == '\0' && strlen(full) == (size_t)n, "%s: NUL-ended", what);
	for (uint32_t len = 1; len <= (uint32_t)n; len++) {
		char *small = malloc(len);
		int m = f(arg, small, len);

		CHECK(m == n, "%s in %u bytes: %d, want %d", what, len, m, n);
		CHECK(small[len - 1] == '\0' && !memcmp(small, full, len - 1), "%s in %u bytes: a NUL-ended prefix", what, len);
		free(small);
	}
	return full;
}

static int tag_of(const void *arg, char *out, uint32_t len)
{
	return xpu_rules_chain_tag(arg, out, len);
}

static void check_tag(const char *pod_id, const char *want)
{
	char *tag = whole_text("chain tag", tag_of, pod_id);

	CHECK(tag && !strcmp(tag, want), "tag of \"%s\": %s, want %s", pod_id, tag ? tag : "(none)", want);
	free(tag);
}

static void test_chain_names(void)
{
	char hex[65], name[64], hashed[XPU_CHAIN_TAG_LEN + 1];

	/* A CRI sandbox id: its first 12 characters, 12 being enough. */
	check_tag(POD, T);
	check_tag(T, T);
	/* Anything else: the SHA-256 of the id. */
	sha_hex("my pod!", 7, hex);
	snprintf(hashed, sizeof(hashed), "%.12s", hex);
	check_tag("my pod!", hashed);
	check_tag("my pod!", "734077cc20ad"); /* sha256sum(1) of the same bytes */
	check_tag("4f2a9c7e1b3", "438276500c21"); /* 11 hex characters */
	check_tag("4F2A9C7E1B3D5F60", "409a635b3e5c"); /* upper case */
	check_tag("4f2a9c7e1b3d-", "1504f5404b1f"); /* hex, then something else */
	check_tag("", "e3b0c44298fc");

	CHECK(xpu_rules_chain_name(POD, "POSTROUTING", name, sizeof(name)) == 27, "27 characters");
	CHECK(!strcmp(name, "HP-" T "-POSTROUTING"), "%s", name);
	CHECK(xpu_rules_chain_name("x", "POSTROUTING", name, 10) == 27, "the length needed");
	CHECK(!strncmp(name, "HP-", 3) && strlen(name) == 9, "a prefix: %s", name);
	CHECK(xpu_rules_chain_tag(NULL, name, sizeof(name)) == -EINVAL, "no pod id");
	CHECK(xpu_rules_chain_name(POD, NULL, name, sizeof(name)) == -EINVAL, "no built-in chain");
	CHECK(xpu_rules_chain_tag(POD, NULL, 5) == -EINVAL, "no buffer, but a length");
}

struct ports_arg {
	const uint16_t *ports;
	uint32_t count;
};

static int multiport_of(const void *arg, char *out, uint32_t len)
{
	const struct ports_arg *a = arg;

	return xpu_rules_multiport(a->ports, a->count, out, len);
}

static int count_lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

static void test_multiport(void)
{
	uint16_t ports[31];
	struct ports_arg a = { ports, 0 };
	char *text;

	for (int i = 0; i < 31; i++)
		ports[i] = (uint16_t)(1000 + i);
	static const struct {
		uint32_t count;
		int lines;
		const char *last;
	} cases[] = {
		{ 1, 1, "1000\n" },
		{ 15, 1, "1000,1001,1002,1003,1004,1005,1006,1007,1008,1009,1010,1011,1012,1013,1014\n" },
		{ 16, 2, "1015\n" },
		{ 30, 2, "1015,1016,1017,1018,1019,1020,1021,1022,1023,1024,1025,1026,1027,1028,1029\n" },
		{ 31, 3, "1030\n" },
	};
	for (uint32_t i = 0; i < N(cases); i++) {
		a.count = cases[i].count;
		text = whole_text("multiport", multiport_of, &a);
		if (!text)
			continue;
		size_t n = strlen(text), ln = strlen(cases[i].last);
		CHECK(count_lines(text) == cases[i].lines, "%u ports: %d lines", a.count, count_lines(text));
		CHECK(n >= ln && !strcmp(text + n - ln, cases[i].last) && (n == ln || text[n - ln - 1] == '\n'),
		      "%u ports: last chunk %s", a.count, text);
		free(text);
	}
	CHECK(xpu_rules_multiport(NULL, 0, NULL, 0) == 0, "no ports: nothing");
	CHECK(xpu_rules_multiport(NULL, 3, NULL, 0) == -EINVAL, "a count without ports");
	ports[0] = 65535;
	ports[1] = 0;
	a.count = 2;
	text = whole_text("multiport", multiport_of, &a);
	CHECK(text && !strcmp(text, "65535,0\n"), "in the order given: %s", text);
	free(text);
}

static int half_of(const void *arg, char *out, uint32_t len)
{
	return xpu_rules_half(arg, out, len);
}

#define J(side) "-m comment --comment \"heteropod pod 4f2a9c7e1b3d5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd " side " half\""
#define C "HP-" T

static const char HOST_RULES[] =
	"*nat\n"
	":" C "-PREROUTING - [0:0]\n"
	":" C "-OUTPUT - [0:0]\n"
	":" C "-POSTROUTING - [0:0]\n"
	"-I PREROUTING 1 " J("host") " -j " C "-PREROUTING\n"
	"-I OUTPUT 1 " J("host") " -j " C "-OUTPUT\n"
	"-I POSTROUTING 1 " J("host") " -j " C "-POSTROUTING\n"
	"-A " C "-PREROUTING -s 169.254.77.2/32 -d 169.254.77.1/32 -i xpu0 -p tcp -m comment --comment \"localhost from the DPU half\" -j DNAT --to-destination 127.0.0.1\n"
	"-A " C "-PREROUTING -d 10.233.250.2/32 ! -i xpu0 -p tcp -m multiport --dports 15000,15006 -m comment --comment \"pod IP to the DPU half\" -j DNAT --to-destination 169.254.77.2\n"
	"-A " C "-OUTPUT -d 10.233.250.2/32 -p tcp -m multiport --dports 15000,15006 -m comment --comment \"pod IP to the DPU half\" -j DNAT --to-destination 169.254.77.2\n"
	"-A " C "-OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports 15000,15006 -m comment --comment \"localhost to the DPU half\" -j DNAT --to-destination 169.254.77.2\n"
	"-A " C "-POSTROUTING -s 127.0.0.0/8 -o xpu0 -m comment --comment \"localhost to the DPU half\" -j SNAT --to-source 169.254.77.1\n"
	"-A " C "-POSTROUTING -s 169.254.77.2/32 ! -o xpu0 -m comment --comment \"DPU half egress as the pod IP\" -j SNAT --to-source 10.233.250.2\n"
	"COMMIT\n"
	"*filter\n"
	":" C "-FORWARD - [0:0]\n"
	"-I FORWARD 1 " J("host") " -j " C "-FORWARD\n"
	"-A " C "-FORWARD -s 169.254.77.0/30 ! -i xpu0 -m comment --comment \"link addresses only from the link\" -j DROP\n"
	"-A " C "-FORWARD -i xpu0 -m comment --comment \"from the DPU half\" -j ACCEPT\n"
	"-A " C "-FORWARD -o xpu0 -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -m comment --comment \"to the DPU half: replies, pod IP ports\" -j ACCEPT\n"
	"-A " C "-FORWARD -o xpu0 -m comment --comment \"to the DPU half: nothing else\" -j DROP\n"
	"COMMIT\n";

/* The DPU half, the pod IP not its own, no jumps, its own pod-IP port. */
static const char DPU_RULES[] =
	"*nat\n"
	":" C "-PREROUTING - [0:0]\n"
	":" C "-OUTPUT - [0:0]\n"
	":" C "-POSTROUTING - [0:0]\n"
	"-A " C "-PREROUTING -s 169.254.77.1/32 -d 169.254.77.2/32 -i hpx0 -p tcp -m comment --comment \"localhost from the host half\" -j DNAT --to-destination 127.0.0.1\n"
	"-A " C "-OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports 8080 -m comment --comment \"localhost to the host half\" -j DNAT --to-destination 169.254.77.1\n"
	"-A " C "-OUTPUT -d 10.233.250.2/32 -p tcp -m multiport --dports 15006 -m comment --comment \"pod IP served in this half\" -j DNAT --to-destination 169.254.77.2\n"
	"-A " C "-POSTROUTING -s 127.0.0.0/8 -o hpx0 -m comment --comment \"localhost to the host half\" -j SNAT --to-source 169.254.77.2\n"
	"COMMIT\n";

static int count_of(const char *s, const char *what)
{
	int n = 0;

	for (const char *p = s; (p = strstr(p, what)); p += strlen(what))
		n++;
	return n;
}

static void test_half_rules(void)
{
	static const uint16_t dpu_ports[] = { 15000, 15006 }, host_ports[] = { 8080 }, own[] = { 15006 };
	struct xpu_half_rules r = {
		.side = XPU_SIDE_HOST,
		.flags = XPU_RULES_JUMPS,
		.pod_id = POD,
		.pod_ip = "10.233.250.2",
		.peer_ports = dpu_ports,
		.peer_ports_count = N(dpu_ports),
	};
	uint16_t many[31];
	char why[128], tiny[8];
	char *text;

	text = whole_text("host half", half_of, &r);
	CHECK(text && !strcmp(text, HOST_RULES), "host half:\n%s", text);
	free(text);

	r = (struct xpu_half_rules){
		.side = XPU_SIDE_DPU,
		.pod_id = POD,
		.pod_ip = "10.233.250.2",
		.tap = "hpx0",
		.peer_ports = host_ports,
		.peer_ports_count = 1,
		.own_pod_ip_ports = own,
		.own_pod_ip_ports_count = 1,
	};
	text = whole_text("DPU half", half_of, &r);
	CHECK(text && !strcmp(text, DPU_RULES), "DPU half:\n%s", text);
	free(text);

	/* On the DPU's uplink the pod IP is the half's own: only the host half's ports cross. */
	r.flags = XPU_RULES_POD_IP_LOCAL;
	text = whole_text("DPU half, pod IP local", half_of, &r);
	CHECK(text && strstr(text, "-A " C "-OUTPUT -d 10.233.250.2/32 -p tcp -m multiport --dports 8080 -m comment --comment \"pod IP served in the host half\" -j DNAT --to-destination 169.254.77.1\n"),
	      "%s", text);
	CHECK(text && !strstr(text, "served in this half"), "%s", text);
	free(text);

	/* No pod IP on the DPU half: nothing for it; nothing for the empty lists. */
	r = (struct xpu_half_rules){ .side = XPU_SIDE_DPU, .pod_id = POD, .pod_ip = "", .own_pod_ip_ports = own, .own_pod_ip_ports_count = 1 };
	text = whole_text("DPU half without pod IP or ports", half_of, &r);
	CHECK(text && !strstr(text, "pod IP served") && !strstr(text, "multiport") && !strstr(text, "*filter") && count_lines(text) == 7,
	      "%s", text);
	free(text);

	/* 31 ports: three rules of at most 15, each chunk's rules together. */
	for (int i = 0; i < 31; i++)
		many[i] = (uint16_t)(1000 + i);
	r = (struct xpu_half_rules){ .side = XPU_SIDE_HOST, .pod_id = POD, .pod_ip = "10.0.0.1", .peer_ports = many, .peer_ports_count = 31 };
	text = whole_text("host half, 31 ports", half_of, &r);
	CHECK(text && count_of(text, "localhost to the DPU half\" -j DNAT") == 3 && count_of(text, "--dports") == 9, "%s", text);
	CHECK(text && strstr(text, "--dports 1015,") && strstr(text, "--dports 1030 ") && !strstr(text, "-I "), "%s", text);
	CHECK(text && strstr(text, "1014 -m comment --comment \"pod IP to the DPU half\" -j DNAT --to-destination 169.254.77.2\n-A " C "-OUTPUT -d 10.0.0.1/32"),
	      "PREROUTING, then OUTPUT, a chunk at a time");
	free(text);

	/* Refused, saying why: what the agent's message is made of. */
	static const struct {
		struct xpu_half_rules r;
		const char *why;
	} bad[] = {
		{ { .side = XPU_SIDE_HOST, .pod_id = POD }, "the pod IP is required" },
		{ { .side = XPU_SIDE_HOST, .pod_id = POD, .pod_ip = "" }, "the pod IP is required" },
		{ { .side = XPU_SIDE_DPU, .pod_id = POD, .pod_ip = "fd00::1" }, "the pod IP is not an IPv4 address" },
		{ { .side = XPU_SIDE_HOST, .pod_id = POD, .pod_ip = "10.0.0.1/32" }, "the pod IP is not an IPv4 address" },
		{ { .side = 2, .pod_id = POD }, "the side is neither host nor DPU" },
		{ { .side = XPU_SIDE_DPU, .flags = 4, .pod_id = POD }, "unknown flags" },
		{ { .side = XPU_SIDE_DPU }, "the pod id is required" },
		{ { .side = XPU_SIDE_DPU, .pod_id = "" }, "the pod id is required" },
		{ { .side = XPU_SIDE_DPU, .pod_id = "a\"b" }, "the pod id holds a quote, a backslash or a control character" },
		{ { .side = XPU_SIDE_DPU, .pod_id = "a\nb" }, "the pod id holds a quote, a backslash or a control character" },
		{ { .side = XPU_SIDE_DPU, .pod_id = POD, .tap = "" }, "the link's device name is empty, too long or holds a space, slash, colon or quote" },
		{ { .side = XPU_SIDE_DPU, .pod_id = POD, .tap = "a b" }, "the link's device name is empty, too long or holds a space, slash, colon or quote" },
		{ { .side = XPU_SIDE_DPU, .pod_id = POD, .tap = "sixteen-chars-xx" }, "the link's device name is empty, too long or holds a space, slash, colon or quote" },
		{ { .side = XPU_SIDE_DPU, .pod_id = POD, .peer_ports_count = 1 }, "a port list without its ports" },
	};
	for (uint32_t i = 0; i < N(bad); i++) {
		memset(why, 'x', sizeof(why));
		int rc = xpu_rules_half(&bad[i].r, why, sizeof(why));
		CHECK(rc == -EINVAL && !strcmp(why, bad[i].why), "case %u: %d \"%.*s\"", i, rc, (int)sizeof(why) - 1, why);
		CHECK(xpu_rules_half(&bad[i].r, tiny, sizeof(tiny)) == -EINVAL && strlen(tiny) == sizeof(tiny) - 1,
		      "case %u: why, cut to the buffer", i);
		CHECK(xpu_rules_half(&bad[i].r, NULL, 0) == -EINVAL, "case %u: without a buffer", i);
	}
	CHECK(xpu_rules_half(NULL, NULL, 0) == -EINVAL, "no input");
	CHECK(xpu_half_rules_size() == sizeof(struct xpu_half_rules), "layout size");
}

static const char SAVED[] =
	"# Generated by iptables-save v1.8.9 (nf_tables)\n"
	"-A FORWARD -j " C "-FORWARD\n" /* outside any table: not a rule */
	"*filter\n"
	":INPUT ACCEPT [0:0]\n"
	":FORWARD DROP [0:0]\n"
	":OUTPUT ACCEPT [0:0]\n"
	":" C "-FORWARD - [0:0]\n"
	"-A FORWARD " J("host") " -j " C "-FORWARD\n"
	"-A FORWARD -i eth0 -j ACCEPT\n"
	"-A " C "-FORWARD -i xpu0 -m comment --comment \"from the DPU half\" -j ACCEPT\n"
	"COMMIT\n"
	"# Completed\n"
	"*nat\n"
	":PREROUTING ACCEPT [0:0]\n"
	":OUTPUT ACCEPT [0:0]\n"
	":" C "-OUTPUT - [0:0]\n"
	":" C "-PREROUTING - [0:0]\n"
	":HP-0123456789ab-OUTPUT - [0:0]\n"
	":ISTIO_INBOUND - [0:0]\n"
	"-A PREROUTING -p tcp -j ISTIO_INBOUND\n"
	"-A PREROUTING -g " C "-PREROUTING\n"
	"-A OUTPUT " J("host") " -j " C "-OUTPUT\n"
	"-A OUTPUT -j HP-0123456789ab-OUTPUT\n"
	"-A " C "-OUTPUT -j " C "-PREROUTING\n"
	"-A " C "-OUTPUT -d 127.0.0.1/32 -p tcp -m multiport --dports 1 -j DNAT --to-destination 169.254.77.2\n"
	"COMMIT\n"
	"*mangle\n"
	":PREROUTING ACCEPT [0:0]\n"
	"-A PREROUTING -j MARK --set-mark 1\n"
	"COMMIT\n";

static const char REMOVAL[] =
	"*filter\n"
	":" C "-FORWARD - [0:0]\n"
	"-D FORWARD " J("host") " -j " C "-FORWARD\n"
	"-X " C "-FORWARD\n"
	"COMMIT\n"
	"*nat\n"
	":" C "-OUTPUT - [0:0]\n"
	":" C "-PREROUTING - [0:0]\n"
	"-D PREROUTING -g " C "-PREROUTING\n"
	"-D OUTPUT " J("host") " -j " C "-OUTPUT\n"
	"-X " C "-OUTPUT\n"
	"-X " C "-PREROUTING\n"
	"COMMIT\n";

struct removal_arg {
	const char *saved, *pod_id;
};

static int removal_of(const void *arg, char *out, uint32_t len)
{
	const struct removal_arg *a = arg;

	return xpu_rules_removal(a->saved, a->pod_id, out, len);
}

static void test_removal(void)
{
	struct removal_arg a = { SAVED, POD };
	char *text, *other, *p;
	char buf[8];

	text = whole_text("removal", removal_of, &a);
	CHECK(text && !strcmp(text, REMOVAL), "removal:\n%s", text);
	free(text);

	/* Another pod's: only its chain and jump. */
	a.pod_id = "0123456789abcdef";
	text = whole_text("removal of the other pod", removal_of, &a);
	CHECK(text && !strcmp(text, "*nat\n:HP-0123456789ab-OUTPUT - [0:0]\n-D OUTPUT -j HP-0123456789ab-OUTPUT\n-X HP-0123456789ab-OUTPUT\nCOMMIT\n"),
	      "%s", text);
	free(text);

	/* Nothing of the pod's: nothing, and the buffer holds "". */
	other = strdup(SAVED);
	while ((p = strstr(other, T)))
		memcpy(p, "ffffffffffff", 12);
	a = (struct removal_arg){ other, POD };
	memset(buf, 'x', sizeof(buf));
	CHECK(xpu_rules_removal(other, POD, buf, sizeof(buf)) == 0 && buf[0] == '\0', "no chain of the pod's");
	free(other);
	CHECK(xpu_rules_removal("", POD, buf, sizeof(buf)) == 0 && buf[0] == '\0', "empty input");
	CHECK(xpu_rules_removal("", POD, NULL, 0) == 0, "empty input, no buffer");

	/* A table without COMMIT at the end of the text, in CRLF lines, and a
	 * jump with no table: the table's name trimmed, the rest kept as it is. */
	a = (struct removal_arg){ "-A X -j " C "-OUTPUT\r\nCOMMIT\r\n* nat \r\n:" C "-OUTPUT - [0:0]\r\n-A OUTPUT -j " C "-OUTPUT\r", POD };
	text = whole_text("removal, CRLF", removal_of, &a);
	CHECK(text && !strcmp(text, "*nat\n:" C "-OUTPUT - [0:0]\n-D OUTPUT -j " C "-OUTPUT\r\n-X " C "-OUTPUT\nCOMMIT\n"), "%s", text);
	free(text);

	CHECK(xpu_rules_removal(NULL, POD, NULL, 0) == -EINVAL, "no saved text");
	CHECK(xpu_rules_removal("", NULL, NULL, 0) == -EINVAL, "no pod id");
}

static int same(const uint16_t *a, int n, const uint16_t *want, int wn)
{
	return n == wn && !memcmp(a, want, (size_t)wn * sizeof(*a));
}

static void test_ports(void)
{
	static const uint16_t declared[] = { 15006 }, host[] = { 8080, 7000, 15006 }, dpu[] = { 15000, 7000, 9100 };
	struct xpu_port_view v = { declared, host, dpu, N(declared), N(host), N(dpu) };
	struct xpu_port_view none = { 0 };
	uint16_t out[8], *exact;
	int n;

	n = xpu_ports_dpu_owned(&v, out, N(out));
	CHECK(same(out, n, (uint16_t[]){ 9100, 15000, 15006 }, 3), "DPU-owned: %d", n);
	n = xpu_ports_host_owned(&v, out, N(out));
	CHECK(same(out, n, (uint16_t[]){ 8080 }, 1), "host-owned: %d (not 7000: the DPU's own; not 15006: declared)", n);
	n = xpu_ports_conflicting(&v, out, N(out));
	CHECK(same(out, n, (uint16_t[]){ 7000 }, 1), "conflicts: %d", n);
	CHECK(xpu_ports_dpu_owned(&none, NULL, 0) == 0 && xpu_ports_host_owned(&none, NULL, 0) == 0 &&
		      xpu_ports_conflicting(&none, NULL, 0) == 0,
	      "nothing known: nothing owned");

	/* More than there is room for: the count, and the first ones only. */
	exact = malloc(2 * sizeof(*exact));
	CHECK(xpu_ports_dpu_owned(&v, exact, 2) == 3 && exact[0] == 9100 && exact[1] == 15000, "the first two of three");
	free(exact);

	uint16_t ports[] = { 443, 80, 65535, 0, 80, 443, 1 };
	n = xpu_ports_sorted(ports, N(ports), ports, N(ports)); /* in place */
	CHECK(same(ports, n, (uint16_t[]){ 0, 1, 80, 443, 65535 }, 5), "sorted, each once: %d", n);
	CHECK(xpu_ports_sorted(NULL, 0, NULL, 0) == 0, "none");
	CHECK(xpu_ports_sorted(NULL, 1, out, 1) == -EINVAL, "a count without ports");
	CHECK(xpu_ports_sorted(ports, 1, NULL, 1) == -EINVAL, "room without a buffer");
	CHECK(xpu_ports_dpu_owned(NULL, out, 1) == -EINVAL, "no view");
	none.host_listening_count = 1;
	CHECK(xpu_ports_conflicting(&none, out, 1) == -EINVAL, "a count without ports");
	CHECK(xpu_port_view_size() == sizeof(struct xpu_port_view), "layout size");
}

int main(void)
{
	test_sha256();
	test_chain_names();
	test_multiport();
	test_half_rules();
	test_removal();
	test_ports();
	if (failures) {
		fprintf(stderr, "%d rules test(s) failed\n", failures);
		return 1;
	}
	printf("all rules tests passed\n");
	return 0;
}
