/*
 * The C placement (src/placement/placement.h) against the TS it ports: every
 * case of test/unit/placement.test.ts and the heteropod.io/ports cases of
 * test/unit/netns.test.ts, the same inputs, with the whole message the TS gives
 * expected where those tests match part of it; then what only C can get wrong
 * (JSON types, the 64-character quote, the error buffer's end, the free-memory
 * figure). Each failure prints a line naming its case; the exit status is the
 * count of failures. test/unit/placement-c.test.ts runs the plain and the
 * ASan+UBSan builds.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "placement.h"
#include "check.h"

#define MiB (1024ull * 1024)


static json_t *parse(const char *what, const char *text, size_t flags)
{
	json_error_t e;
	json_t *v = json_loads(text, flags | JSON_DECODE_ANY, &e);

	if (!v) {
		printf("FAIL %s: the test's JSON does not parse: %s\n", what, e.text);
		exit(1);
	}
	return v;
}

static char *repeat(const char *s, size_t times)
{
	size_t n = strlen(s);
	char *out = malloc(n * times + 1);

	if (!out)
		exit(1);
	for (size_t i = 0; i < times; i++)
		memcpy(out + i * n, s, n);
	out[n * times] = '\0';
	return out;
}

/* ---- heteropod.io/offload ------------------------------------------------------ */

/* want_err NULL: accepted, with the names joined by "," and the policy. */
static void offload_case(const char *what, json_t *annotations, const char *want_names, int want_require, const char *want_err)
{
	struct hp_offload o;
	char err[HP_ERR_MAX] = "", names[1024] = "";
	int rc = hp_parse_offload(annotations, &o, err, sizeof(err));

	if (want_err) {
		check(rc == -EINVAL, "offload %s: rc %d, want -EINVAL", what, rc);
		check(strcmp(err, want_err) == 0, "offload %s:\n  got  %s\n  want %s", what, err, want_err);
		check(o.n == 0 && o.containers == NULL, "offload %s: a refused value leaves names behind", what);
	} else {
		for (size_t i = 0; i < o.n; i++)
			snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? "," : "", o.containers[i]);
		check(rc == 0, "offload %s: rc %d (%s)", what, rc, err);
		check(strcmp(names, want_names) == 0, "offload %s: names \"%s\", want \"%s\"", what, names, want_names);
		check(o.require == want_require, "offload %s: require %d, want %d", what, o.require, want_require);
	}
	hp_offload_free(&o);
}

static void offload_text(const char *what, const char *json, const char *want_names, int want_require, const char *want_err)
{
	json_t *a = parse(what, json, JSON_ALLOW_NUL);

	offload_case(what, a, want_names, want_require, want_err);
	json_decref(a);
}

#define NOT_A_NAME " is not a container name (a comma-separated list of DNS-1123 labels, e.g. \"istio-proxy,log-agent\")"
#define WS_OFFLOAD ": values are read exactly as written, with no spaces (e.g. \"istio-proxy,log-agent\")"
#define NOT_A_POLICY ": must be \"prefer\" or \"require\", exactly"

/* test/unit/placement.test.ts, 'annotations: list, policy, defaults' and the bad values. */
static void test_offload(void)
{
	json_t *a;

	offload_text("{}", "{}", "", 0, NULL);
	offload_text("a list", "{\"heteropod.io/offload\":\"istio-proxy,log-agent\"}", "istio-proxy,log-agent", 0, NULL);
	offload_text("require", "{\"heteropod.io/offload\":\"a\",\"heteropod.io/offload-policy\":\"require\"}", "a", 1, NULL);
	offload_text("prefer", "{\"heteropod.io/offload\":\"a\",\"heteropod.io/offload-policy\":\"prefer\"}", "a", 0, NULL);
	offload_text("empty", "{\"heteropod.io/offload\":\"\"}", "", 0, NULL);

	a = parse("mentions", "{\"heteropod.io/offload\":\"\"}", 0);
	check(hp_mentions_offload(a), "mentionsOffload({offload: ''})");
	json_decref(a);
	a = parse("mentions", "{\"other\":\"x\"}", 0);
	check(!hp_mentions_offload(a), "mentionsOffload({other: 'x'})");
	json_decref(a);

	/* The TS tests match a part of each; these are the TS's whole messages. */
	offload_text("Proxy", "{\"heteropod.io/offload\":\"Proxy\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"Proxy\": \"Proxy\"" NOT_A_NAME);
	offload_text("a,,b", "{\"heteropod.io/offload\":\"a,,b\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"a,,b\": \"\"" NOT_A_NAME);
	offload_text("a,a", "{\"heteropod.io/offload\":\"a,a\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"a,a\": container a is named twice");
	offload_text("64 x", "{\"heteropod.io/offload\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\": "
		     "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"" NOT_A_NAME);
	offload_text("Require", "{\"heteropod.io/offload\":\"a\",\"heteropod.io/offload-policy\":\"Require\"}", NULL, 0,
		     "annotation heteropod.io/offload-policy=\"Require\"" NOT_A_POLICY);
	offload_text("leading space", "{\"heteropod.io/offload\":\" istio-proxy,log-agent\"}", NULL, 0,
		     "annotation heteropod.io/offload=\" istio-proxy,log-agent\": whitespace at character 1" WS_OFFLOAD);
	offload_text("space after comma", "{\"heteropod.io/offload\":\"istio-proxy, log-agent\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"istio-proxy, log-agent\": whitespace at character 13" WS_OFFLOAD);
	offload_text("one space", "{\"heteropod.io/offload\":\" \"}", NULL, 0,
		     "annotation heteropod.io/offload=\" \": whitespace at character 1" WS_OFFLOAD);
	offload_text("require+space", "{\"heteropod.io/offload\":\"a\",\"heteropod.io/offload-policy\":\"require \"}", NULL, 0,
		     "annotation heteropod.io/offload-policy=\"require \"" NOT_A_POLICY);
	offload_text("require+newline", "{\"heteropod.io/offload\":\"a\",\"heteropod.io/offload-policy\":\"require\\n\"}", NULL, 0,
		     "annotation heteropod.io/offload-policy=\"require\\n\"" NOT_A_POLICY);

	/* Beyond the TS tests, each checked against the TS. */
	offload_text("trailing comma", "{\"heteropod.io/offload\":\"a,\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"a,\": \"\"" NOT_A_NAME);
	offload_text("63 characters", "{\"heteropod.io/offload\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
		     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 0, NULL);
	offload_text("no-break space", "{\"heteropod.io/offload\":\"\xc3\xa9\\u00a0x\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"\xc3\xa9\xc2\xa0x\": whitespace at character 2" WS_OFFLOAD);
	offload_text("ideographic space", "{\"heteropod.io/offload\":\"a\\u3000\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"a\xe3\x80\x80\": whitespace at character 2" WS_OFFLOAD);
	offload_text("BOM", "{\"heteropod.io/offload\":\"a\\ufeff\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"a\xef\xbb\xbf\": whitespace at character 2" WS_OFFLOAD);
	offload_text("U+180E is no space", "{\"heteropod.io/offload\":\"a\\u180e\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"a\xe1\xa0\x8e\": \"a\xe1\xa0\x8e\"" NOT_A_NAME);
	offload_text("U+0085 is no space", "{\"heteropod.io/offload\":\"a\\u0085\"}", NULL, 0,
		     "annotation heteropod.io/offload=\"a\xc2\x85\": \"a\xc2\x85\"" NOT_A_NAME);
}

/* placement.test.ts: 'an error quotes at most a short prefix of a long value'. */
static void test_long_values(void)
{
	char *b = repeat("b", 9998), *long_value = malloc(10001), *prefix = repeat("b", 63), want[1024];
	json_t *a;

	snprintf(long_value, 10001, "a%sc", b);
	a = json_pack("{ss}", HP_ANNOTATION_OFFLOAD, long_value);
	snprintf(want, sizeof(want),
		 "annotation heteropod.io/offload=\"a%s\"... (10000 characters): \"a%s\"... (10000 characters)" NOT_A_NAME, prefix, prefix);
	offload_case("a 10,000-character list", a, NULL, 0, want);
	check(strlen(want) < 400, "a 10,000-character list: %zu characters", strlen(want));
	json_decref(a);

	a = json_pack("{ssss}", HP_ANNOTATION_OFFLOAD, "a", HP_ANNOTATION_OFFLOAD_POLICY, long_value);
	snprintf(want, sizeof(want), "annotation heteropod.io/offload-policy=\"a%s\"... (10000 characters)" NOT_A_POLICY, prefix);
	offload_case("a 10,000-character policy", a, NULL, 0, want);
	json_decref(a);
	free(b);
	free(long_value);
	free(prefix);
}

/* ---- heteropod.io/ports ----------------------------------------------------------- */

/* want_err NULL: accepted, giving want_ports ("1,2,3"). offloaded "": none; NULL: no check. */
static void ports_case(const char *what, const char *value, const char *offloaded, const char *want_ports, const char *want_err)
{
	struct hp_offload o = { 0 };
	char err[HP_ERR_MAX] = "", list[512] = "", names[256];
	uint16_t *ports = (uint16_t *)&o; /* not NULL: the call must set it */
	size_t n = 99;
	int rc;

	if (offloaded && offloaded[0]) {
		char *save, *name;

		snprintf(names, sizeof(names), "%s", offloaded);
		o.containers = calloc(16, sizeof(char *));
		for (name = strtok_r(names, ",", &save); name; name = strtok_r(NULL, ",", &save))
			o.containers[o.n++] = strdup(name);
	}
	rc = hp_parse_ports(value, offloaded ? &o : NULL, &ports, &n, err, sizeof(err));
	if (want_err) {
		check(rc == -EINVAL, "ports %s: rc %d, want -EINVAL", what, rc);
		check(strcmp(err, want_err) == 0, "ports %s:\n  got  %s\n  want %s", what, err, want_err);
		check(ports == NULL && n == 0, "ports %s: a refused value gives ports", what);
	} else {
		for (size_t i = 0; i < n && strlen(list) < sizeof(list) - 8; i++)
			snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%u", i ? "," : "", ports[i]);
		check(rc == 0, "ports %s: rc %d (%s)", what, rc, err);
		check(strcmp(list, want_ports) == 0, "ports %s: [%s], want [%s]", what, list, want_ports);
		check((n == 0) == (ports == NULL), "ports %s: %zu ports at %p", what, n, (void *)ports);
	}
	free(ports);
	hp_offload_free(&o);
}

#define WS_PORTS ": values are read exactly as written, with no spaces (e.g. \"istio-proxy=15001,15006;log-agent=24224\")"

/* test/unit/netns.test.ts, the heteropod.io/ports cases. */
static void test_ports(void)
{
	char *ones = repeat("1", 10000), *value = malloc(10003), *ones62 = repeat("1", 62), *ones64 = repeat("1", 64), want[1024];

	/* The C parser gives declaredPortList's result: every port, sorted, unique. */
	ports_case("one container", "istio-proxy=15001,15006", NULL, "15001,15006", NULL);
	ports_case("two and a trailing ;", "istio-proxy=15001,15006;log-agent=24224;", NULL, "15001,15006,24224", NULL);
	ports_case("sorted", "b=3,1;a=2", NULL, "1,2,3", NULL);
	ports_case("empty", "", NULL, "", NULL);
	ports_case("absent", NULL, NULL, "", NULL);
	ports_case("offloaded", "proxy=1,65535", "proxy,metrics", "1,65535", NULL);

	ports_case("no =", "istio-proxy", NULL, NULL,
		   "annotation heteropod.io/ports=\"istio-proxy\": entry \"istio-proxy\" has no \"=\" (expected container=port,port)");
	ports_case("no name", "=15001", NULL, NULL, "annotation heteropod.io/ports=\"=15001\": \"\" is not a container name (a DNS-1123 label)");
	ports_case("bad name", "Istio_Proxy=1", NULL, NULL,
		   "annotation heteropod.io/ports=\"Istio_Proxy=1\": \"Istio_Proxy\" is not a container name (a DNS-1123 label)");
	ports_case("no ports", "proxy=", NULL, NULL, "annotation heteropod.io/ports=\"proxy=\": container \"proxy\" has no ports");
	ports_case("port 0", "proxy=0", NULL, NULL,
		   "annotation heteropod.io/ports=\"proxy=0\": \"0\" (container \"proxy\") is not a port number in 1-65535");
	ports_case("port 65536", "proxy=65536", NULL, NULL,
		   "annotation heteropod.io/ports=\"proxy=65536\": \"65536\" (container \"proxy\") is not a port number in 1-65535");
	ports_case("http", "proxy=80,http", NULL, NULL,
		   "annotation heteropod.io/ports=\"proxy=80,http\": \"http\" (container \"proxy\") is not a port number in 1-65535");
	ports_case("empty port", "proxy=1,,2", NULL, NULL,
		   "annotation heteropod.io/ports=\"proxy=1,,2\": \"\" (container \"proxy\") is not a port number in 1-65535");
	ports_case("port -1", "proxy=-1", NULL, NULL,
		   "annotation heteropod.io/ports=\"proxy=-1\": \"-1\" (container \"proxy\") is not a port number in 1-65535");
	ports_case("80 twice", "proxy=80,80", NULL, NULL,
		   "annotation heteropod.io/ports=\"proxy=80,80\": port 80 is listed twice for container \"proxy\"");
	ports_case("80 claimed twice", "a=80;b=80", NULL, NULL,
		   "annotation heteropod.io/ports=\"a=80;b=80\": port 80 is claimed by both \"a\" and \"b\"");
	ports_case("a twice", "a=1;a=2", NULL, NULL, "annotation heteropod.io/ports=\"a=1;a=2\": container \"a\" is listed twice");
	ports_case("empty entry", "a=1;;b=2", NULL, NULL,
		   "annotation heteropod.io/ports=\"a=1;;b=2\": empty entry between \";\" separators (expected container=port,port;container=port)");
	ports_case("leading space", " a=1", NULL, NULL, "annotation heteropod.io/ports=\" a=1\": whitespace at character 1" WS_PORTS);
	ports_case("spaces around =", "a = 1", NULL, NULL, "annotation heteropod.io/ports=\"a = 1\": whitespace at character 2" WS_PORTS);
	ports_case("tab", "a=1,\t2", NULL, NULL, "annotation heteropod.io/ports=\"a=1,\\t2\": whitespace at character 5" WS_PORTS);
	snprintf(value, 10003, "a=%s", ones);
	snprintf(want, sizeof(want),
		 "annotation heteropod.io/ports=\"a=%s\"... (10002 characters): \"%s\"... (10000 characters) (container \"a\") is not a port number in 1-65535",
		 ones62, ones64);
	ports_case("a 10,000-digit port", value, NULL, NULL, want);
	check(strlen(want) < 400, "a 10,000-digit port: %zu characters", strlen(want));
	ports_case("not offloaded", "app=8080", "proxy", NULL,
		   "annotation heteropod.io/ports=\"app=8080\": container \"app\" is not offloaded (heteropod.io/offload names: proxy)");

	/* Beyond the TS tests, each checked against the TS. */
	ports_case("none offloaded", "app=8080", "", NULL,
		   "annotation heteropod.io/ports=\"app=8080\": container \"app\" is not offloaded (heteropod.io/offload names: none)");
	ports_case("two offloaded", "app=8080", "x,y", NULL,
		   "annotation heteropod.io/ports=\"app=8080\": container \"app\" is not offloaded (heteropod.io/offload names: x,y)");
	ports_case("only ;", ";", NULL, NULL,
		   "annotation heteropod.io/ports=\";\": empty entry between \";\" separators (expected container=port,port;container=port)");
	ports_case("leading zeros", "a=00080", NULL, "80", NULL);
	ports_case("second =", "a=1=2", NULL, NULL,
		   "annotation heteropod.io/ports=\"a=1=2\": \"1=2\" (container \"a\") is not a port number in 1-65535");
	ports_case("six digits", "a=123456", NULL, NULL,
		   "annotation heteropod.io/ports=\"a=123456\": \"123456\" (container \"a\") is not a port number in 1-65535");
	free(ones);
	free(value);
	free(ones62);
	free(ones64);
}

/* Every port 65535..1 in one entry, then one more entry claiming a port: the tables' bounds. */
static void test_all_ports(void)
{
	size_t len = 2 + 65535 * 6 + 16, at, n = 0;
	char *v = malloc(len), err[HP_ERR_MAX];
	uint16_t *ports = NULL;
	int rc, sorted = 1;

	at = (size_t)snprintf(v, len, "a=");
	for (unsigned p = 65535; p >= 1; p--)
		at += (size_t)snprintf(v + at, len - at, "%u%s", p, p > 1 ? "," : "");
	rc = hp_parse_ports(v, NULL, &ports, &n, err, sizeof(err));
	for (size_t i = 0; rc == 0 && i < n; i++)
		sorted &= ports[i] == i + 1;
	check(rc == 0 && n == 65535 && sorted, "every port: rc %d, %zu ports, sorted %d (%s)", rc, n, sorted, rc ? err : "");
	free(ports);
	snprintf(v + at, len - at, ";b=7");
	rc = hp_parse_ports(v, NULL, &ports, &n, err, sizeof(err));
	check(rc == -EINVAL && strstr(err, ": port 7 is claimed by both \"a\" and \"b\""), "every port and b=7: rc %d, %s", rc, err);
	free(v);
}

/* ---- placement ------------------------------------------------------------------ */

static int not_dir(const char *path)
{
	(void)path;
	return 0;
}

static int kubelet_x_is_dir(const char *path)
{
	return strcmp(path, "/var/lib/kubelet/x") == 0;
}

static int cfg_or_shm_is_dir(const char *path)
{
	size_t n = strlen(path);

	return strcmp(path, "/cfg") == 0 || (n >= 4 && strcmp(path + n - 4, "/shm") == 0);
}

static int every_path_is_dir(const char *path)
{
	(void)path;
	return 1;
}

struct place {
	const char *offload; /* the pod's heteropod.io/offload */
	int require;
	const char *name; /* the container */
	const char *spec; /* JSON; NULL: no spec */
	const char *unavailable;
	unsigned long long memory_free;
	int (*is_directory)(const char *);
};

/*
 * want_rc 0: placed on want_dpu with want_reason (NULL: none); otherwise the
 * call fails with want_rc and the message want_err.
 */
static void place_case(const char *what, const struct place *c, int want_rc, int want_dpu, const char *want_reason, const char *want_err)
{
	struct hp_offload pod;
	struct hp_dpu_state dpu = { c->unavailable, c->memory_free };
	struct hp_placement p;
	char err[HP_ERR_MAX] = "";
	json_t *spec = c->spec ? parse(what, c->spec, 0) : NULL, *ann = json_pack("{ssss}", HP_ANNOTATION_OFFLOAD, c->offload,
										 HP_ANNOTATION_OFFLOAD_POLICY, c->require ? "require" : "prefer");
	int rc = hp_parse_offload(ann, &pod, err, sizeof(err));

	check(rc == 0, "%s: the pod's annotations: %s", what, err);
	rc = hp_place_container(&pod, c->name, spec, &dpu, c->is_directory, &p, err, sizeof(err));
	check(rc == want_rc, "%s: rc %d, want %d (%s)", what, rc, want_rc, rc ? err : "");
	if (want_rc == 0 && rc == 0) {
		check(p.dpu == want_dpu, "%s: on the %s, want the %s", what, p.dpu ? "DPU" : "host", want_dpu ? "DPU" : "host");
		check(want_reason ? p.reason && strcmp(p.reason, want_reason) == 0 : p.reason == NULL,
		      "%s: reason\n  got  %s\n  want %s", what, p.reason ? p.reason : "(none)", want_reason ? want_reason : "(none)");
	} else if (want_rc != 0) {
		check(strcmp(err, want_err) == 0, "%s:\n  got  %s\n  want %s", what, err, want_err);
		check(p.reason == NULL && p.dpu == 0, "%s: a failed call placed the container", what);
	}
	hp_placement_free(&p);
	hp_offload_free(&pod);
	json_decref(spec);
	json_decref(ann);
}

#define DPU_OK_FREE (512 * MiB)
#define REQUIRE_BUT "container proxy must run on the DPU (heteropod.io/offload-policy=require), but "

/* Under prefer: on the host with `why`; under require: refused with it. */
static void hurdle(const char *what, struct place c, const char *why)
{
	char name[256], want[2048];

	c.require = 0;
	snprintf(name, sizeof(name), "%s (prefer)", what);
	place_case(name, &c, 0, 0, why, NULL);
	c.require = 1;
	snprintf(name, sizeof(name), "%s (require)", what);
	snprintf(want, sizeof(want), REQUIRE_BUT "%s", why);
	place_case(name, &c, -EPERM, 0, NULL, want);
}

/* test/unit/placement.test.ts, the three placement tests. */
static void test_placement(void)
{
	struct place c = { "proxy", 0, "proxy", "{}", "", DPU_OK_FREE, not_dir };

	place_case("named: the DPU", &c, 0, 1, NULL, NULL);
	c.name = "app";
	place_case("not named: the host", &c, 0, 0, NULL, NULL);
	c.unavailable = "down";
	c.memory_free = 0;
	place_case("not named, the DPU down: the host", &c, 0, 0, NULL, NULL);

	c = (struct place){ "proxy", 0, "proxy", "{}", "DPU agent at x unreachable", 0, kubelet_x_is_dir };
	hurdle("unreachable", c, "DPU agent at x unreachable");
	c = (struct place){ "proxy", 0, "proxy", "{\"linux\":{\"resources\":{\"memory\":{\"limit\":1073741824}}}}", "", DPU_OK_FREE, kubelet_x_is_dir };
	hurdle("too big", c, "the DPU has 536870912 bytes of memory free, the container's limit is 1073741824");
	c.spec = "{\"linux\":{\"namespaces\":[{\"type\":\"pid\",\"path\":\"/proc/1/ns/pid\"}]}}";
	hurdle("shared pid namespace", c, "the pod shares one process namespace, which cannot span host and DPU");
	c.spec = "{\"mounts\":[{\"destination\":\"/data\",\"type\":\"bind\",\"source\":\"/var/lib/kubelet/x\",\"options\":[\"rbind\",\"rw\"]}]}";
	hurdle("writable volume", c, "a writable volume cannot span host and DPU: /data (writable volume from /var/lib/kubelet/x)");

	c = (struct place){ "proxy", 1, "proxy",
			    "{\"mounts\":["
			    "{\"destination\":\"/etc/hosts\",\"type\":\"bind\",\"source\":\"/run/x/hosts\",\"options\":[\"rbind\",\"rw\"]},"
			    "{\"destination\":\"/config\",\"type\":\"bind\",\"source\":\"/cfg\",\"options\":[\"rbind\",\"ro\"]},"
			    "{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"/run/containerd/io.containerd.grpc.v1.cri/sandboxes/abc/shm\",\"options\":[\"rbind\",\"rw\"]},"
			    "{\"destination\":\"/proc\",\"type\":\"proc\",\"source\":\"proc\"}]}",
			    "", DPU_OK_FREE, cfg_or_shm_is_dir };
	place_case("files, read-only directories and the sandbox /dev/shm ship", &c, 0, 1, NULL, NULL);
}

/* The checks' order, several volumes, the memory figures, and stat(2) for is_directory. */
static void test_placement_more(void)
{
	struct place c = { "proxy", 0, "proxy", NULL, "", DPU_OK_FREE, every_path_is_dir };
	char dir[] = "/tmp/placement-c-XXXXXX", file[64], spec[512], want[512];
	int fd;

	place_case("no spec", &c, 0, 1, NULL, NULL);
	c.spec = "{\"mounts\":[{\"destination\":\"/a\",\"type\":\"bind\",\"source\":\"/x\"},{\"destination\":\"/b\",\"options\":[\"bind\"],\"source\":\"/y\"},"
		 "{\"destination\":\"/c\",\"options\":[\"rbind\"],\"source\":\"/z\"}],"
		 "\"linux\":{\"resources\":{\"memory\":{\"limit\":1073741824}}}}";
	hurdle("three volumes", c,
	       "a writable volume cannot span host and DPU: /a (writable volume from /x), /b (writable volume from /y), /c (writable volume from /z)");
	c.spec = "{\"mounts\":[{\"destination\":\"/a\",\"type\":\"bind\",\"source\":\"/x\"}],"
		 "\"linux\":{\"namespaces\":[{\"type\":\"pid\",\"path\":\"/proc/1/ns/pid\"}]}}";
	hurdle("the process namespace before volumes", c, "the pod shares one process namespace, which cannot span host and DPU");
	c.unavailable = "no DPU is configured";
	hurdle("the DPU before the spec", c, "no DPU is configured");
	c.spec = "{\"linux\":{\"namespaces\":{}}}";
	hurdle("the DPU before a malformed spec", c, "no DPU is configured");
	c.unavailable = NULL;
	c.spec = "{\"mounts\":[{\"destination\":\"/x\",\"type\":\"tmpfs\",\"source\":\"tmpfs\"}]}";
	place_case("unavailable NULL: available", &c, 0, 1, NULL, NULL);

	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":536870912}}}}";
	place_case("a limit of all the free memory fits", &c, 0, 1, NULL, NULL);
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":536870913}}}}";
	hurdle("one byte over", c, "the DPU has 536870912 bytes of memory free, the container's limit is 536870913");
	c.memory_free = 0;
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":1.5e9}}}}";
	hurdle("a limit written as a real", c, "the DPU has 0 bytes of memory free, the container's limit is 1500000000");
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":100.5}}}}";
	hurdle("a fractional limit", c, "the DPU has 0 bytes of memory free, the container's limit is 100.5");
	/* A double holds 2^53 + 1 as 2^53; JavaScript prints 1e21 as 1e+21. */
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":9007199254740993}}}}";
	hurdle("a limit above 2^53", c, "the DPU has 0 bytes of memory free, the container's limit is 9007199254740992");
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":1e21}}}}";
	hurdle("a limit of 1e21", c, "the DPU has 0 bytes of memory free, the container's limit is 1e+21");
	c.memory_free = 18446744073709551615ull;
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":1e300}}}}";
	hurdle("all of uint64 free", c, "the DPU has 18446744073709552000 bytes of memory free, the container's limit is 1e+300");
	c.memory_free = 0;
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":0.000001}}}}";
	hurdle("a tiny limit", c, "the DPU has 0 bytes of memory free, the container's limit is 0.000001");
	c.spec = "{\"linux\":{\"resources\":{\"memory\":{\"limit\":1e-7}}}}";
	hurdle("a tinier limit", c, "the DPU has 0 bytes of memory free, the container's limit is 1e-7");

	/* is_directory NULL: stat(2). */
	if (!mkdtemp(dir)) {
		check(0, "mkdtemp: %s", strerror(errno));
		return;
	}
	snprintf(file, sizeof(file), "%s/file", dir);
	fd = creat(file, 0600);
	check(fd >= 0, "creat %s: %s", file, strerror(errno));
	if (fd >= 0)
		close(fd);
	c = (struct place){ "proxy", 0, "proxy", spec, "", DPU_OK_FREE, NULL };
	snprintf(spec, sizeof(spec), "{\"mounts\":[{\"destination\":\"/f\",\"type\":\"bind\",\"source\":\"%s\"},"
		 "{\"destination\":\"/missing\",\"type\":\"bind\",\"source\":\"%s/missing\"},"
		 "{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"%s\"}]}", file, dir, dir);
	snprintf(want, sizeof(want), "a writable volume cannot span host and DPU: /d (writable volume from %s)", dir);
	place_case("stat: a file, a missing path, a directory", &c, 0, 0, want, NULL);
	unlink(file);
	rmdir(dir);
}

/*
 * Fields of the wrong JSON type: what the TS does with each (checked against
 * it), or, where it throws a TypeError, -EINVAL naming the field.
 */
static void test_spec_types(void)
{
	struct place c = { "proxy", 0, "proxy", NULL, "", 0, every_path_is_dir };
	static const char *no_limit[] = {
		"{\"linux\":{\"resources\":{\"memory\":{\"limit\":\"1073741824\"}}}}",
		"{\"linux\":{\"resources\":{\"memory\":{\"limit\":0}}}}",
		"{\"linux\":{\"resources\":{\"memory\":{\"limit\":-1}}}}",
		"{\"linux\":{\"resources\":{\"memory\":{\"limit\":null}}}}",
		"{\"linux\":{\"resources\":{\"memory\":{\"limit\":true}}}}",
		"{\"linux\":{\"resources\":{\"memory\":[1]}}}",
		"{\"linux\":{\"resources\":\"x\"}}",
		"{\"linux\":[{\"resources\":{\"memory\":{\"limit\":1}}}]}",
		"{\"linux\":null}",
		"[{\"linux\":{\"resources\":{\"memory\":{\"limit\":1}}}}]",
		"\"a spec\"",
	};
	static const char *no_pid_namespace[] = {
		"{\"linux\":{\"namespaces\":null}}",
		"{\"linux\":{\"namespaces\":[5,\"pid\",[],{\"type\":\"pid\"},{\"type\":\"pid\",\"path\":\"\"},{\"type\":\"pid\",\"path\":0},"
		"{\"type\":\"pid\",\"path\":0.0},{\"type\":\"pid\",\"path\":false},{\"type\":\"pid\",\"path\":null},{\"type\":[\"pid\"],\"path\":\"/p\"},"
		"{\"type\":\"network\",\"path\":\"/p\"}]}}",
		"{\"linux\":\"namespaces\"}",
	};
	static const char *pid_namespace[] = {
		"{\"linux\":{\"namespaces\":[{\"type\":\"pid\",\"path\":{}}]}}",
		"{\"linux\":{\"namespaces\":[{\"type\":\"pid\",\"path\":[]}]}}",
		"{\"linux\":{\"namespaces\":[{\"type\":\"pid\",\"path\":true}]}}",
		"{\"linux\":{\"namespaces\":[{\"type\":\"pid\",\"path\":-2}]}}",
		/* some() stops at the first: a null after it is not reached */
		"{\"linux\":{\"namespaces\":[{\"type\":\"pid\",\"path\":\"/p\"},null]}}",
	};
	static const char *no_volume[] = {
		"{\"mounts\":null}",
		"{\"mounts\":\"bind\"}",
		"{\"mounts\":[5,\"bind\",[],true,{}]}",
		/* options a string, type bind: `"rbind,ro".includes('ro')` */
		"{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\",\"options\":\"rbind,ro\"}]}",
		"{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\",\"options\":[\"rbind\",\"rw\",\"ro\"]}]}",
		/* not a bind mount: the type must be the string "bind" */
		"{\"mounts\":[{\"destination\":\"/d\",\"type\":[\"bind\"],\"source\":\"/s\"}]}",
		"{\"mounts\":[{\"destination\":\"/d\",\"type\":\"BIND\",\"source\":\"/s\",\"options\":[\"Bind\",[\"rbind\"]]}]}",
		/* no source a directory could be: empty, or not a string */
		"{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"\"},{\"destination\":\"/e\",\"type\":\"bind\",\"source\":[\"/s\"]},"
		"{\"destination\":\"/f\",\"type\":\"bind\",\"source\":7},{\"destination\":\"/g\",\"type\":\"bind\"}]}",
		/* the sandbox's /dev/shm: the regular expression tests String(source) */
		"{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"/x/sandboxes/a/shm\"}]}",
		"{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"/sandboxes/a\\nb/shm\"}]}",
		"{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":[\"/x/sandboxes/a/shm\"],\"options\":{}}]}",
		"{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":[\"a\",[\"/sandboxes/b/shm\"]],\"options\":5}]}",
	};
	static const struct {
		const char *spec, *volumes;
	} volume[] = {
		{ "{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\",\"options\":\"rbind,rw\"}]}", "/d (writable volume from /s)" },
		{ "{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\",\"options\":[\"RO\",[\"ro\"]]}]}", "/d (writable volume from /s)" },
		{ "{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\",\"options\":null}]}", "/d (writable volume from /s)" },
		/* the destination as a template literal writes it */
		{ "{\"mounts\":[{\"destination\":[\"a\",[\"b\",null],1.5],\"type\":\"bind\",\"source\":\"/s\"}]}", "a,b,,1.5 (writable volume from /s)" },
		{ "{\"mounts\":[{\"type\":\"bind\",\"source\":\"/s\"}]}", "undefined (writable volume from /s)" },
		{ "{\"mounts\":[{\"destination\":null,\"type\":\"bind\",\"source\":\"/s\"}]}", "null (writable volume from /s)" },
		{ "{\"mounts\":[{\"destination\":{\"a\":1},\"type\":\"bind\",\"source\":\"/s\"}]}", "[object Object] (writable volume from /s)" },
		{ "{\"mounts\":[{\"destination\":1e21,\"type\":\"bind\",\"source\":\"/s\"}]}", "1e+21 (writable volume from /s)" },
		{ "{\"mounts\":[{\"destination\":false,\"type\":\"bind\",\"source\":\"/s\"}]}", "false (writable volume from /s)" },
		/* not the sandbox's /dev/shm */
		{ "{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"/x/sandboxes//shm\"}]}",
		  "/dev/shm (writable volume from /x/sandboxes//shm)" },
		{ "{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"/x/sandboxes/a/b/shm\"}]}",
		  "/dev/shm (writable volume from /x/sandboxes/a/b/shm)" },
		{ "{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"sandboxes/a/shm\"}]}",
		  "/dev/shm (writable volume from sandboxes/a/shm)" },
		{ "{\"mounts\":[{\"destination\":\"/dev/shm/\",\"type\":\"bind\",\"source\":\"/x/sandboxes/a/shm\"}]}",
		  "/dev/shm/ (writable volume from /x/sandboxes/a/shm)" },
		{ "{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":\"/x/sandboxes/a/shm/\"}]}",
		  "/dev/shm (writable volume from /x/sandboxes/a/shm/)" },
	};
	static const struct {
		const char *spec, *err;
	} type_error[] = {
		{ "{\"linux\":{\"namespaces\":{}}}", "spec: linux.namespaces is not an array" },
		{ "{\"linux\":{\"namespaces\":\"pid\"}}", "spec: linux.namespaces is not an array" },
		{ "{\"linux\":{\"namespaces\":[{\"type\":\"network\"},null]}}", "spec: linux.namespaces[1] is null" },
		{ "{\"mounts\":{}}", "spec: mounts is not an array" },
		{ "{\"mounts\":5}", "spec: mounts is not an array" },
		{ "{\"mounts\":true}", "spec: mounts is not an array" },
		{ "{\"mounts\":[null]}", "spec: mounts[0] is null" },
		/* every mount is looked at: a writable volume before does not stop it */
		{ "{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\"},null]}", "spec: mounts[1] is null" },
		/* `(m.options ?? []).some(...)` when the type is not "bind" */
		{ "{\"mounts\":[{\"destination\":\"/d\",\"source\":\"/s\",\"options\":\"rbind\"}]}", "spec: mounts[0].options is not an array" },
		{ "{\"mounts\":[{\"destination\":\"/d\",\"source\":\"/s\",\"options\":{}}]}", "spec: mounts[0].options is not an array" },
		/* `.includes('ro')` when it is */
		{ "{\"mounts\":[{},{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\",\"options\":{}}]}", "spec: mounts[1].options is not an array" },
		{ "{\"mounts\":[{\"destination\":\"/d\",\"type\":\"bind\",\"source\":\"/s\",\"options\":5}]}", "spec: mounts[0].options is not an array" },
		{ "{\"mounts\":[{\"destination\":\"/dev/shm\",\"type\":\"bind\",\"source\":[\"/x/sandboxes/a/shm/\"],\"options\":5}]}",
		  "spec: mounts[0].options is not an array" },
	};
	char what[128], why[512];
	size_t i;

	for (i = 0; i < sizeof(no_limit) / sizeof(no_limit[0]); i++) {
		snprintf(what, sizeof(what), "no memory limit %zu", i);
		c.spec = no_limit[i];
		place_case(what, &c, 0, 1, NULL, NULL);
	}
	for (i = 0; i < sizeof(no_pid_namespace) / sizeof(no_pid_namespace[0]); i++) {
		snprintf(what, sizeof(what), "no pod process namespace %zu", i);
		c.spec = no_pid_namespace[i];
		place_case(what, &c, 0, 1, NULL, NULL);
	}
	for (i = 0; i < sizeof(pid_namespace) / sizeof(pid_namespace[0]); i++) {
		snprintf(what, sizeof(what), "the pod's process namespace %zu", i);
		c.spec = pid_namespace[i];
		hurdle(what, c, "the pod shares one process namespace, which cannot span host and DPU");
	}
	for (i = 0; i < sizeof(no_volume) / sizeof(no_volume[0]); i++) {
		snprintf(what, sizeof(what), "no writable volume %zu", i);
		c.spec = no_volume[i];
		place_case(what, &c, 0, 1, NULL, NULL);
	}
	for (i = 0; i < sizeof(volume) / sizeof(volume[0]); i++) {
		snprintf(what, sizeof(what), "a writable volume %zu", i);
		snprintf(why, sizeof(why), "a writable volume cannot span host and DPU: %s", volume[i].volumes);
		c.spec = volume[i].spec;
		hurdle(what, c, why);
	}
	for (i = 0; i < sizeof(type_error) / sizeof(type_error[0]); i++) {
		snprintf(what, sizeof(what), "a TypeError in the TS %zu", i);
		c.spec = type_error[i].spec;
		c.require = 0;
		place_case(what, &c, -EINVAL, 0, NULL, type_error[i].err);
		c.require = 1;
		place_case(what, &c, -EINVAL, 0, NULL, type_error[i].err);
	}
}

/* Annotations of the wrong JSON type. */
static void test_annotation_types(void)
{
	json_t *a;
	const char *v;
	char err[HP_ERR_MAX];
	int rc;

	offload_text("annotations an array", "[{\"heteropod.io/offload\":\"a\"}]", "", 0, NULL);
	offload_text("annotations a string", "\"heteropod.io/offload\"", "", 0, NULL);
	offload_text("annotations null", "null", "", 0, NULL);
	offload_case("no annotations", NULL, "", 0, NULL);
	offload_text("offload null", "{\"heteropod.io/offload\":null}", "", 0, NULL);
	offload_text("offload a number", "{\"heteropod.io/offload\":5}", NULL, 0,
		     "annotation heteropod.io/offload: the value is a number, not a string");
	offload_text("offload an array", "{\"heteropod.io/offload\":[\"a\"]}", NULL, 0,
		     "annotation heteropod.io/offload: the value is an array, not a string");
	offload_text("policy null", "{\"heteropod.io/offload\":\"a\",\"heteropod.io/offload-policy\":null}", NULL, 0,
		     "annotation heteropod.io/offload-policy: the value is null, not a string");
	offload_text("policy true", "{\"heteropod.io/offload\":\"a\",\"heteropod.io/offload-policy\":true}", NULL, 0,
		     "annotation heteropod.io/offload-policy: the value is true, not a string");
	offload_text("policy an object", "{\"heteropod.io/offload-policy\":{}}", NULL, 0,
		     "annotation heteropod.io/offload-policy: the value is an object, not a string");
	offload_text("a NUL", "{\"heteropod.io/offload\":\"a\\u0000b\"}", NULL, 0,
		     "annotation heteropod.io/offload: the value holds a NUL character");
	/* the policy is read with or without containers */
	offload_text("policy alone", "{\"heteropod.io/offload-policy\":\"require\"}", "", 1, NULL);

	a = parse("mentions", "{\"heteropod.io/offload\":null}", 0);
	check(hp_mentions_offload(a), "mentionsOffload({offload: null})");
	json_decref(a);
	check(!hp_mentions_offload(NULL), "mentionsOffload(undefined)");
	a = parse("mentions", "[\"heteropod.io/offload\"]", 0);
	check(!hp_mentions_offload(a), "mentionsOffload(an array)");
	json_decref(a);

	a = parse("annotation", "{\"heteropod.io/ports\":\"a=1\",\"n\":1}", 0);
	rc = hp_annotation(a, HP_ANNOTATION_PORTS, &v, err, sizeof(err));
	check(rc == 0 && v && strcmp(v, "a=1") == 0, "hp_annotation of a string: rc %d", rc);
	rc = hp_annotation(a, "absent", &v, err, sizeof(err));
	check(rc == 0 && v == NULL, "hp_annotation of an absent key: rc %d", rc);
	rc = hp_annotation(a, "n", &v, err, sizeof(err));
	check(rc == -EINVAL && v == NULL && strcmp(err, "annotation n: the value is a number, not a string") == 0,
	      "hp_annotation of a number: rc %d, %s", rc, err);
	json_decref(a);
}

/* ---- quoting and messages ------------------------------------------------------------ */

static void quote_case(const char *what, const char *value, const char *want)
{
	char q[HP_QUOTED_SIZE];

	hp_quote(value, q);
	check(strcmp(q, want) == 0, "quote %s:\n  got  %s\n  want %s", what, q, want);
}

/* JSON.stringify's escapes, and the cut at 64 characters (code points, not bytes). */
static void test_quote(void)
{
	char *s, *want, *e;

	quote_case("empty", "", "\"\"");
	quote_case("escapes", "\x01\x7f\xe2\x80\xa8\xc3\xa9\"\\\b\f\n\r\t\x1b\x1f /",
		   "\"\\u0001\x7f\xe2\x80\xa8\xc3\xa9\\\"\\\\\\b\\f\\n\\r\\t\\u001b\\u001f /\"");
	s = repeat("x", 64);
	want = malloc(128);
	snprintf(want, 128, "\"%s\"", s);
	quote_case("64 characters", s, want);
	free(s);
	s = repeat("x", 65);
	snprintf(want, 128, "\"%.64s\"... (65 characters)", s);
	quote_case("65 characters", s, want);
	free(s);
	free(want);

	s = repeat("\xc3\xa9", 70); /* é: 2 bytes */
	e = repeat("\xc3\xa9", 64);
	want = malloc(512);
	snprintf(want, 512, "\"%s\"... (70 characters)", e);
	quote_case("70 two-byte characters", s, want);
	free(s);
	free(e);
	s = repeat("\xe2\x82\xac", 64); /* €: 3 bytes, exactly 64 */
	snprintf(want, 512, "\"%s\"", s);
	quote_case("64 three-byte characters", s, want);
	free(s);
	s = repeat("\xf0\x9f\x98\x80", 100); /* 😀: 4 bytes (2 UTF-16 units: the TS would cut at 32) */
	e = repeat("\xf0\x9f\x98\x80", 64);
	snprintf(want, 512, "\"%s\"... (100 characters)", e);
	quote_case("100 four-byte characters", s, want);
	free(s);
	free(e);
	s = repeat("\x01", 10000); /* the largest quote: 64 six-byte escapes */
	e = repeat("\\u0001", 64);
	snprintf(want, 512, "\"%s\"... (10000 characters)", e);
	quote_case("10,000 control characters", s, want);
	check(strlen(want) < HP_QUOTED_SIZE, "the largest quote fits");
	free(s);
	free(e);
	/* Not UTF-8 (jansson gives none, a caller of hp_parse_ports might): still bounded. */
	s = repeat("\x80", 10000);
	e = repeat("\x80\x80\x80\x80", 64);
	snprintf(want, 512, "\"%s\"... (2500 characters)", e);
	quote_case("stray continuation bytes", s, want);
	free(s);
	free(e);
	free(want);

	check(hp_is_container_name("a") && hp_is_container_name("a-1") && hp_is_container_name("0"), "container names");
	s = repeat("a", 63);
	check(hp_is_container_name(s), "63 characters is a name");
	free(s);
	s = repeat("a", 64);
	check(!hp_is_container_name(s), "64 characters is not a name");
	free(s);
	check(!hp_is_container_name("") && !hp_is_container_name("-a") && !hp_is_container_name("a-") && !hp_is_container_name("A") &&
	      !hp_is_container_name("a_b") && !hp_is_container_name("a.b"), "not container names");
}

/* A message longer than the caller's buffer: cut, never inside a UTF-8 character. */
static void short_buffer_case(const char *value, size_t err_len, const char *want)
{
	json_t *a = json_pack("{ss}", HP_ANNOTATION_OFFLOAD, value);
	struct hp_offload o;
	char err[64];
	int rc;

	memset(err, 'z', sizeof(err));
	rc = hp_parse_offload(a, &o, err, err_len);
	check(rc == -EINVAL && strcmp(err, want) == 0, "a %zu-byte buffer: rc %d, \"%s\", want \"%s\"", err_len, rc, err, want);
	json_decref(a);
}

static void test_short_buffer(void)
{
	/* annotation heteropod.io/offload=" is 33 bytes */
	short_buffer_case("\xc3\xa9\xc3\xa9", 34, "annotation heteropod.io/offload=\"");
	short_buffer_case("\xc3\xa9\xc3\xa9", 35, "annotation heteropod.io/offload=\"");
	short_buffer_case("\xc3\xa9\xc3\xa9", 36, "annotation heteropod.io/offload=\"\xc3\xa9");
	short_buffer_case("\xc3\xa9\xc3\xa9", 37, "annotation heteropod.io/offload=\"\xc3\xa9");
	for (size_t n = 35; n <= 37; n++)
		short_buffer_case("\xf0\x9f\x98\x80", n, "annotation heteropod.io/offload=\"");
	short_buffer_case("\xf0\x9f\x98\x80", 38, "annotation heteropod.io/offload=\"\xf0\x9f\x98\x80");
	short_buffer_case("\xf0\x9f\x98\x80", 1, "");
	{
		json_t *a = json_pack("{ss}", HP_ANNOTATION_OFFLOAD, "A");
		struct hp_offload o;

		check(hp_parse_offload(a, &o, NULL, 0) == -EINVAL, "no buffer");
		json_decref(a);
	}
}

int main(void)
{
	test_offload();
	test_long_values();
	test_ports();
	test_all_ports();
	test_placement();
	test_placement_more();
	test_spec_types();
	test_annotation_types();
	test_quote();
	test_short_buffer();
	if (failures) {
		printf("%d of %d placement checks failed\n", failures, checks);
		return 1;
	}
	printf("%d checks: all placement tests passed\n", checks);
	return 0;
}
