/*
 * containerd-shim-heteropod-v2 launcher: the `start` action in C.
 *
 * containerd runs `<shim> ... start` cold for every task and waits for it; a
 * Node.js start-up for each would dominate pod start time. This does `start`
 * without Node: find the pod's shim socket, and if nothing answers there, start
 * containerd-shim-runc-v2 for the pod and the C proxy of proxy.c in front of it
 * (proxy-start.c; the `proxy` action is that process), listening on the pod's
 * socket; then write `address` and the start record into the bundle and print
 * the address. `config` prints the shim config as read (shim-config.c); every
 * other action (delete, -v) is handed to the Node implementation with execv.
 *
 * Offload: a pod whose sandbox spec has the `heteropod.io/offload` annotation
 * (any value, even empty) is served the same way, and its proxy is also told the
 * node daemon's socket, <state_dir>/node.sock (one Node.js daemon per node,
 * started by no `start`), and the pod's `heteropod.io/offload-policy` annotation
 * (absent: "prefer"; any other value is passed as it is). The proxy routes the
 * pod's tasks between runc's shim and the daemon (proxy.h). A pod without the
 * annotation gets a proxy that never looks at the daemon. Container tasks of a
 * pod find the pod's socket answering and join it.
 *
 * Contract shared with src/shim (paths.ts, options.ts, record.ts; shim-config.c
 * reads the config for both):
 *   socket = <state_dir>/s/hex(sha256("heteropod\0" address "\0" namespace "\0" group))
 *   group  = annotation io.kubernetes.cri.sandbox-id of ./config.json, else the id
 *   state_dir from the top-level `state_dir = "..."` of the config file named by
 *   the runtime options on stdin (runtimeoptions.v1.Options.config_path), else
 *   /etc/heteropod/shim.toml; default /run/heteropod-shim.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "launcher.h"

#define SANDBOX_ID_KEY "\"io.kubernetes.cri.sandbox-id\""
#define OFFLOAD_KEY "\"heteropod.io/offload\""
#define OFFLOAD_POLICY_KEY "\"heteropod.io/offload-policy\""
#define MAX_SOCKET_PATH 106

/* ---- SHA-256 (FIPS 180-4) -------------------------------------------------- */

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, hh;
	int i;

	for (i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
	for (i = 0; i < 64; i++) {
		uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
		uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
		hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static void sha256_hex(const unsigned char *data, size_t len, char out[65])
{
	uint32_t h[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
	unsigned char block[64];
	size_t done = 0, rest;
	uint64_t bits = (uint64_t)len * 8;
	int i;

	for (; len - done >= 64; done += 64)
		sha256_block(h, data + done);
	rest = len - done;
	memset(block, 0, sizeof(block));
	memcpy(block, data + done, rest);
	block[rest] = 0x80;
	if (rest >= 56) {
		sha256_block(h, block);
		memset(block, 0, sizeof(block));
	}
	for (i = 0; i < 8; i++)
		block[63 - i] = (unsigned char)(bits >> (8 * i));
	sha256_block(h, block);
	for (i = 0; i < 8; i++)
		snprintf(out + 8 * i, 9, "%08x", h[i]);
}

/* ---- small helpers ------------------------------------------------------- */

static void fail(const char *what, const char *detail)
{
	fprintf(stderr, "containerd-shim-heteropod-v2: start: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	exit(1);
}

/* Reads a whole file (or fd) into a NUL-terminated buffer; NULL if it cannot. */
static char *read_fd(int fd, size_t *len_out)
{
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap + 1);
	ssize_t n;

	if (!buf)
		return NULL;
	for (;;) {
		if (len == cap) {
			char *bigger = realloc(buf, cap * 2 + 1);
			if (!bigger) {
				free(buf);
				return NULL;
			}
			buf = bigger;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			free(buf);
			return NULL;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	if (len_out)
		*len_out = len;
	return buf;
}

char *read_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *text;

	if (fd < 0)
		return NULL;
	text = read_fd(fd, NULL);
	close(fd);
	return text;
}

/* Protobuf: finds length-delimited field `want` of a message; 0 if absent. */
static int pb_field(const unsigned char *p, size_t len, unsigned want, const unsigned char **val, size_t *vlen)
{
	size_t i = 0;

	while (i < len) {
		uint64_t tag = 0, n = 0;
		int shift = 0;

		do {
			if (i >= len || shift > 63)
				return 0;
			tag |= (uint64_t)(p[i] & 0x7f) << shift;
			shift += 7;
		} while (p[i++] & 0x80);
		switch (tag & 7) {
		case 0:
			while (i < len && (p[i] & 0x80))
				i++;
			i++;
			break;
		case 1:
			i += 8;
			break;
		case 5:
			i += 4;
			break;
		case 2:
			shift = 0;
			do {
				if (i >= len || shift > 63)
					return 0;
				n |= (uint64_t)(p[i] & 0x7f) << shift;
				shift += 7;
			} while (p[i++] & 0x80);
			if (n > len - i)
				return 0;
			if ((tag >> 3) == want) {
				*val = p + i;
				*vlen = (size_t)n;
				return 1;
			}
			i += (size_t)n;
			break;
		default:
			return 0;
		}
	}
	return 0;
}

/* runtimeoptions.v1.Options.config_path out of the Any on stdin, else "". */
static char *config_path_from_options(const unsigned char *any, size_t len)
{
	const unsigned char *type, *value, *path;
	size_t tlen, vlen, plen;
	static const char suffix[] = "runtimeoptions.v1.Options";
	char *out;

	if (!pb_field(any, len, 1, &type, &tlen) || tlen < sizeof(suffix) - 1 ||
	    memcmp(type + tlen - (sizeof(suffix) - 1), suffix, sizeof(suffix) - 1) != 0)
		return strdup("");
	if (!pb_field(any, len, 2, &value, &vlen) || !pb_field(value, vlen, 2, &path, &plen))
		return strdup("");
	out = malloc(plen + 1);
	if (!out)
		return NULL;
	memcpy(out, path, plen);
	out[plen] = '\0';
	return out;
}

int debug_from_env(void)
{
	const char *v = getenv("HETEROPOD_DEBUG");

	return v && *v && strcmp(v, "0") != 0 && strcmp(v, "false") != 0;
}

/*
 * Whether the spec has the key "heteropod.io/offload": followed by a colon, and
 * not inside a JSON string (there its quotes would be escaped). In an OCI spec
 * only annotations have keys of that form.
 */
static int has_offload_annotation(const char *spec)
{
	const char *p;

	for (p = strstr(spec, OFFLOAD_KEY); p; p = strstr(p + 1, OFFLOAD_KEY)) {
		const char *q = p + strlen(OFFLOAD_KEY);

		if (p > spec && p[-1] == '\\')
			continue;
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		if (*q == ':')
			return 1;
	}
	return 0;
}

/*
 * The string value of the key `quoted_key` (quotes included) when it is a key
 * (followed by a colon, not inside a JSON string), as a new string; NULL when
 * absent or not a plain string. Escapes are not decoded: annotation values the
 * shim reads (ids, policies) have none.
 */
static char *annotation_of(const char *spec, const char *quoted_key)
{
	const char *p, *q, *end;

	for (p = strstr(spec, quoted_key); p; p = strstr(p + 1, quoted_key)) {
		if (p > spec && p[-1] == '\\')
			continue;
		q = p + strlen(quoted_key);
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		if (*q != ':')
			continue;
		q++;
		while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')
			q++;
		if (*q != '"' || !(end = strchr(q + 1, '"')))
			return NULL;
		return strndup(q + 1, (size_t)(end - q - 1));
	}
	return NULL;
}

/* The pod the task belongs to (its sandbox-id annotation, else the task id) and,
 * if it asks for offload, its policy (a new string; NULL without offload). */
static char *group_of(const char *id, char **offload_policy)
{
	char *spec = read_file("config.json"), *group;

	if (!spec)
		fail("read bundle spec config.json", strerror(errno));
	*offload_policy = NULL;
	if (has_offload_annotation(spec)) {
		*offload_policy = annotation_of(spec, OFFLOAD_POLICY_KEY);
		if (!*offload_policy)
			*offload_policy = strdup("prefer");
		if (!*offload_policy)
			fail("out of memory", NULL);
	}
	group = annotation_of(spec, SANDBOX_ID_KEY);
	if (group && !*group) {
		free(group);
		group = NULL;
	}
	free(spec);
	return group ? group : strdup(id);
}

int mkdir_p(const char *dir, mode_t mode)
{
	char buf[PATH_MAX];
	char *p;

	if (snprintf(buf, sizeof(buf), "%s", dir) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Whether something accepts connections on the unix socket at `path`. */
int socket_answers(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, ok;

	if (strlen(path) >= sizeof(addr.sun_path))
		return 0;
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	ok = connect(fd, (const struct sockaddr *)&addr, sizeof(addr)) == 0;
	close(fd);
	return ok;
}

int listen_at(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	int fd, err;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0); /* no CLOEXEC: the daemon inherits it */
	if (fd < 0)
		return -errno;
	unlink(path);
	if (bind(fd, (const struct sockaddr *)&addr, sizeof(addr)) < 0 || chmod(path, 0600) < 0 || listen(fd, 128) < 0) {
		err = -errno;
		close(fd);
		unlink(path);
		return err;
	}
	return fd;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	size_t len = strlen(text);

	if (fd < 0 || write(fd, text, len) != (ssize_t)len)
		fail("write", path);
	close(fd);
}

/* JSON string body for the start record: the few characters that need escaping. */
static void json_escape(char *out, size_t cap, const char *in)
{
	size_t o = 0;

	for (; *in && o + 7 < cap; in++) {
		unsigned char c = (unsigned char)*in;
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20) {
			o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
		} else {
			out[o++] = (char)c;
		}
	}
	out[o] = '\0';
}

/* ---- main -------------------------------------------------------------- */

static const char *flag_value(int argc, char **argv, int *i, const char *name)
{
	const char *arg = argv[*i] + (argv[*i][1] == '-' ? 2 : 1);
	size_t n = strlen(name);

	if (strncmp(arg, name, n) != 0)
		return NULL;
	if (arg[n] == '=')
		return arg + n + 1;
	if (arg[n] != '\0' || *i + 1 >= argc)
		return NULL;
	return argv[++*i];
}

static int parse_flags(int argc, char **argv, struct flags *f)
{
	int i;

	memset(f, 0, sizeof(*f));
	for (i = 1; i < argc; i++) {
		const char *v;

		if (argv[i][0] != '-') {
			if (f->action)
				return -1;
			f->action = argv[i];
		} else if (!strcmp(argv[i], "-debug") || !strcmp(argv[i], "--debug")) {
			f->debug = 1;
		} else if ((v = flag_value(argc, argv, &i, "namespace"))) {
			f->namespace = v;
		} else if ((v = flag_value(argc, argv, &i, "address"))) {
			f->address = v;
		} else if ((v = flag_value(argc, argv, &i, "publish-binary"))) {
			f->publish_binary = v;
		} else if ((v = flag_value(argc, argv, &i, "id"))) {
			f->id = v;
		} else if ((v = flag_value(argc, argv, &i, "socket"))) {
			f->socket = v;
		} else if ((v = flag_value(argc, argv, &i, "runc-address"))) {
			f->runc_address = v;
		} else if ((v = flag_value(argc, argv, &i, "work-dir"))) {
			f->work_dir = v;
		} else if ((v = flag_value(argc, argv, &i, "config"))) {
			f->config = v;
		} else if ((v = flag_value(argc, argv, &i, "node-socket"))) {
			f->node_socket = v;
		} else if ((v = flag_value(argc, argv, &i, "offload-policy"))) {
			f->offload_policy = v;
		} else if ((v = flag_value(argc, argv, &i, "ttrpc-address"))) {
			f->ttrpc_address = v;
		} else if ((v = flag_value(argc, argv, &i, "bundle"))) {
			f->bundle = v;
		} else {
			return -1; /* anything else: the Node implementation decides */
		}
	}
	return 0;
}

int self_exe(char *out, size_t cap)
{
	ssize_t n = readlink("/proc/self/exe", out, cap - 1);

	if (n <= 0)
		return -errno;
	out[n] = '\0';
	return 0;
}

/* dist/src/shim/main.js of the checkout this launcher was built in (build/). */
static void main_js(char *out, size_t cap)
{
	char exe[PATH_MAX];
	char *slash;

	if (self_exe(exe, sizeof(exe)) < 0)
		fail("find own path", strerror(errno));
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	slash = strrchr(exe, '/');
	if (slash)
		*slash = '\0';
	if (snprintf(out, cap, "%s/dist/src/shim/main.js", exe) >= (int)cap)
		fail("main.js path too long", NULL);
}

static void exec_node(char *mainjs, int argc, char **argv)
{
	char **args = calloc((size_t)argc + 3, sizeof(char *));
	int i;

	if (!args)
		fail("out of memory", NULL);
	args[0] = "node";
	args[1] = mainjs;
	for (i = 1; i < argc; i++)
		args[i + 1] = argv[i];
	execvp("node", args);
	fail("exec node", strerror(errno));
}

int main(int argc, char **argv)
{
	char mainjs[PATH_MAX], hex[65], record[3 * PATH_MAX], esc_cfg[PATH_MAX], esc_group[PATH_MAX];
	char config_error[SHIM_CONFIG_ERROR_MAX];
	char *stdin_bytes, *config_path, *state_dir, *group, *key, *offload_policy;
	struct sockaddr_un addr;
	struct shim_config config;
	struct flags f;
	size_t in_len = 0, key_len;
	int err;

	if (parse_flags(argc, argv, &f) == 0 && f.action && !strcmp(f.action, "config"))
		return shim_config_main(f.config);
	if (parse_flags(argc, argv, &f) == 0 && f.action && !strcmp(f.action, "proxy"))
		return proxy_main(&f);
	main_js(mainjs, sizeof(mainjs));
	if (parse_flags(argc, argv, &f) < 0 || !f.action || strcmp(f.action, "start") != 0 || !f.namespace || !f.address || !f.id)
		exec_node(mainjs, argc, argv);

	stdin_bytes = isatty(0) ? strdup("") : read_fd(0, &in_len);
	if (!stdin_bytes)
		stdin_bytes = strdup("");
	config_path = config_path_from_options((const unsigned char *)stdin_bytes, in_len);
	if (!config_path)
		fail("out of memory", NULL);
	/* Every pod, offloading or not, fails here on a bad config, with the one line
	 * that names file, line and key (containerd puts it in RunPodSandbox's error). */
	if (shim_config_load(config_path, &config, config_error, sizeof(config_error)) < 0) {
		fprintf(stderr, "%s\n", config_error);
		return 1;
	}
	state_dir = config.state_dir;
	group = group_of(f.id, &offload_policy);

	key_len = strlen("heteropod") + 1 + strlen(f.address) + 1 + strlen(f.namespace) + 1 + strlen(group);
	key = malloc(key_len + 1);
	if (!group || !key)
		fail("out of memory", NULL);
	snprintf(key, key_len + 1, "heteropod%c%s%c%s%c%s", 0, f.address, 0, f.namespace, 0, group);
	sha256_hex((const unsigned char *)key, key_len, hex);

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	if (snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/s/%s", state_dir, hex) > MAX_SOCKET_PATH)
		fail("socket path longer than 106 bytes; choose a shorter state_dir", state_dir);

	if (!socket_answers(addr.sun_path)) {
		char sdir[PATH_MAX], cwd[PATH_MAX], why[PATH_MAX + 256], node_socket[PATH_MAX];
		struct start_request req = { &f, &config, config_path, group, addr.sun_path, cwd, NULL, NULL };

		snprintf(sdir, sizeof(sdir), "%s/s", state_dir);
		if ((err = mkdir_p(sdir, 0711)) < 0)
			fail(sdir, strerror(-err));
		if (!getcwd(cwd, sizeof(cwd)))
			fail("getcwd", strerror(errno));
		if (offload_policy) {
			if (snprintf(node_socket, sizeof(node_socket), "%s/%s", state_dir, NODE_SOCKET) > MAX_SOCKET_PATH)
				fail("node daemon socket path longer than 106 bytes; choose a shorter state_dir", state_dir);
			req.offload_policy = offload_policy;
			req.node_socket = node_socket;
		}
		if ((err = proxy_start(&req, why, sizeof(why))) < 0)
			fail(why, strerror(-err));
	}

	json_escape(esc_cfg, sizeof(esc_cfg), config_path);
	json_escape(esc_group, sizeof(esc_group), group);
	snprintf(record, sizeof(record), "{\"configPath\":\"%s\",\"group\":\"%s\"}", esc_cfg, esc_group);
	write_file("heteropod-shim.json", record);
	{
		char address[sizeof(addr.sun_path) + 8];

		snprintf(address, sizeof(address), "unix://%s", addr.sun_path);
		write_file("address", address);
		if (write(1, address, strlen(address)) != (ssize_t)strlen(address))
			return 1;
	}
	return 0;
}
