/*
 * The node daemon's rootfs layers (src/noded/layers.h) against the TS they port
 * (src/shim/layers.ts): every overlayLowerdirs case of test/unit/layers.test.ts
 * with the whole message the TS gives, then what only C can get wrong (quoting,
 * the error buffer's end, ownership on every path); the index lookup on hit,
 * miss, a stale identity, torn JSON, another version and records no writer
 * made. Each failure prints a line naming its case; the exit status is the
 * count of failures.
 *
 * Modes for test/unit/noded-layers.test.ts, which compares them with the TS:
 *   lookup DIR INDEXDIR  "<digest> <size>", or "<ERRNO NAME>: <message>" and exit 1
 *   identity DIR         "<dev> <ino> <ctimeNs>"
 *   lowerdirs JSON       JSON [{type, source, options}] in; {"dirs":[...]} or {"error":"..."} out
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../../src/xpu/sha256.h"
#include "layers.h"
#include "check.h"


#define OPTS(...) ((const char *const[]){ __VA_ARGS__ })
#define NOPTS(...) (sizeof(OPTS(__VA_ARGS__)) / sizeof(char *))
#define MOUNT(t, s, ...) { .type = (t), .source = (s), .options = OPTS(__VA_ARGS__), .n_options = NOPTS(__VA_ARGS__) }

#define S "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"

/* mounts give exactly the dirs `want` (NULL-ended). */
static void want_dirs(const char *name, const struct nd_mount *mounts, size_t n, const char *const *want)
{
	char err[ND_LAYERS_ERR_MAX], **dirs;
	size_t n_dirs, n_want = 0;
	int rc = nd_overlay_lowerdirs(mounts, n, &dirs, &n_dirs, err, sizeof(err));

	while (want[n_want])
		n_want++;
	check(rc == 0, "%s: rc %d (%s)", name, rc, rc ? err : "");
	if (rc != 0)
		return;
	check(n_dirs == n_want, "%s: %zu dirs, want %zu", name, n_dirs, n_want);
	for (size_t i = 0; i < n_dirs && i < n_want; i++)
		check(strcmp(dirs[i], want[i]) == 0, "%s: dir %zu is \"%s\", want \"%s\"", name, i, dirs[i], want[i]);
	nd_layer_dirs_free(dirs, n_dirs);
}

/* mounts fail with -EINVAL and exactly `want`. */
static void want_error(const char *name, const struct nd_mount *mounts, size_t n, const char *want)
{
	char err[ND_LAYERS_ERR_MAX], **dirs = (char **)1;
	size_t n_dirs = 7;
	int rc = nd_overlay_lowerdirs(mounts, n, &dirs, &n_dirs, err, sizeof(err));

	check(rc == -EINVAL, "%s: rc %d, want -EINVAL", name, rc);
	check(dirs == NULL && n_dirs == 0, "%s: a failure leaves a result", name);
	if (rc == -EINVAL)
		check(strcmp(err, want) == 0, "%s:\n  got  %s\n  want %s", name, err, want);
	if (rc == 0)
		nd_layer_dirs_free(dirs, n_dirs);
}

static void test_lowerdirs_ts_cases(void)
{
	const struct nd_mount snapshot[] = { MOUNT("overlay", "overlay", "index=off", "workdir=" S "/9/work",
						   "upperdir=" S "/9/fs", "lowerdir=" S "/3/fs:" S "/2/fs") };
	const struct nd_mount escaped[] = { MOUNT("overlay", "overlay", "lowerdir=/a\\:b:/c", "ro") };
	const struct nd_mount bind[] = { MOUNT("bind", S "/2/fs", "rbind", "ro") };
	const struct nd_mount writable[] = { MOUNT("bind", "/x", "rbind", "rw") };
	const struct nd_mount tmpfs[] = { { .type = "tmpfs", .source = "tmpfs" } };
	const struct nd_mount userxattr[] = { MOUNT("overlay", "overlay", "userxattr", "lowerdir=/a") };
	const struct nd_mount metacopy[] = { MOUNT("overlay", "overlay", "metacopy=on", "lowerdir=/a") };
	const struct nd_mount no_lower[] = { MOUNT("overlay", "overlay", "upperdir=/u") };
	const struct nd_mount relative[] = { MOUNT("overlay", "overlay", "lowerdir=rel/a") };
	const struct nd_mount two[] = { MOUNT("bind", "/a", "ro"), MOUNT("bind", "/b", "ro") };

	want_dirs("snapshotter overlay", snapshot, 1, OPTS(S "/3/fs", S "/2/fs", NULL));
	want_dirs("escaped ':'", escaped, 1, OPTS("/a:b", "/c", NULL));
	want_dirs("read-only rbind", bind, 1, OPTS(S "/2/fs", NULL));
	want_error("no mounts", NULL, 0, "rootfs has no mounts: nothing to ship (is the container using a snapshotter?)");
	want_error("writable bind", writable, 1,
		   "rootfs bind mount of \"/x\" (options [\"rbind\",\"rw\"]) is writable: only a read-only bind of a "
		   "committed snapshot can be shipped as a layer");
	want_error("tmpfs", tmpfs, 1,
		   "rootfs tmpfs mount of \"tmpfs\" (options []): mount type \"tmpfs\" is not supported (overlay or "
		   "read-only bind only)");
	want_error("userxattr", userxattr, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"userxattr\",\"lowerdir=/a\"]): overlay option "
		   "\"userxattr\" is not supported for shipping");
	want_error("metacopy=on", metacopy, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"metacopy=on\",\"lowerdir=/a\"]): option "
		   "\"metacopy=on\" makes layers depend on each other and cannot be shipped");
	want_error("no lowerdir", no_lower, 1, "rootfs overlay mount of \"overlay\" (options [\"upperdir=/u\"]): no lowerdir option");
	want_error("relative lowerdir", relative, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"lowerdir=rel/a\"]): lowerdir \"rel/a\" is not an "
		   "absolute path");
	want_error("two mounts", two, 2,
		   "rootfs has 2 mounts (bind mount of \"/a\" (options [\"ro\"]); bind mount of \"/b\" (options "
		   "[\"ro\"])); only a single overlay or read-only bind mount can be shipped");
}

static void test_lowerdirs_more(void)
{
	const struct nd_mount off[] = { MOUNT("overlay", "overlay", "redirect_dir=off", "metacopy=off", "xino=auto",
					      "volatile", "lowerdir=/l1:/l2:/l3") };
	const struct nd_mount redirect_on[] = { MOUNT("overlay", "overlay", "lowerdir=/a", "redirect_dir=on") };
	const struct nd_mount bare_metacopy[] = { MOUNT("overlay", "overlay", "lowerdir=/a", "metacopy") };
	const struct nd_mount twice[] = { MOUNT("overlay", "overlay", "lowerdir=/a", "lowerdir=/b") };
	const struct nd_mount lower_plus[] = { MOUNT("overlay", "overlay", "lowerdir+=/a") };
	const struct nd_mount trailing[] = { MOUNT("overlay", "overlay", "lowerdir=/a\\") };
	const struct nd_mount backslashes[] = { MOUNT("overlay", "overlay", "lowerdir=/a\\\\:/b\\c") };
	const struct nd_mount empty_lower[] = { MOUNT("overlay", "overlay", "lowerdir=") };
	const struct nd_mount hole[] = { MOUNT("overlay", "overlay", "lowerdir=/a::/b") };
	const struct nd_mount bind_relative[] = { MOUNT("rbind", "snap/fs", "ro") };
	const struct nd_mount bind_no_options[] = { { .type = "bind", .source = "/s" } };
	const struct nd_mount nulls[] = { { .type = NULL, .source = NULL } };
	const struct nd_mount quoted[] = { MOUNT("bind", "/a\"b\\c\nd\x01\x1f\t\r\b\f\x7f/é", "rw") };

	want_dirs("=off options, three layers", off, 1, OPTS("/l1", "/l2", "/l3", NULL));
	want_error("redirect_dir=on", redirect_on, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"lowerdir=/a\",\"redirect_dir=on\"]): option "
		   "\"redirect_dir=on\" makes layers depend on each other and cannot be shipped");
	want_error("metacopy without a value", bare_metacopy, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"lowerdir=/a\",\"metacopy\"]): option \"metacopy\" "
		   "makes layers depend on each other and cannot be shipped");
	want_error("lowerdir twice", twice, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"lowerdir=/a\",\"lowerdir=/b\"]): lowerdir given twice");
	want_error("lowerdir+", lower_plus, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"lowerdir+=/a\"]): overlay option \"lowerdir+=/a\" is "
		   "not supported for shipping");
	want_dirs("a trailing '\\' stays", trailing, 1, OPTS("/a\\", NULL));
	want_dirs("'\\\\' is one '\\', '\\c' is 'c'", backslashes, 1, OPTS("/a\\", "/bc", NULL));
	want_error("empty lowerdir", empty_lower, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"lowerdir=\"]): lowerdir \"\" is not an absolute path");
	want_error("an empty layer between two", hole, 1,
		   "rootfs overlay mount of \"overlay\" (options [\"lowerdir=/a::/b\"]): lowerdir \"\" is not an absolute "
		   "path");
	want_error("relative bind source", bind_relative, 1,
		   "rootfs rbind mount of \"snap/fs\" (options [\"ro\"]): source is not an absolute path");
	want_error("bind with no options", bind_no_options, 1,
		   "rootfs bind mount of \"/s\" (options []) is writable: only a read-only bind of a committed snapshot "
		   "can be shipped as a layer");
	want_error("NULL type and source", nulls, 1,
		   "rootfs  mount of \"\" (options []): mount type \"\" is not supported (overlay or read-only bind only)");
	want_error("JSON.stringify's quoting", quoted, 1,
		   "rootfs bind mount of \"/a\\\"b\\\\c\\nd\\u0001\\u001f\\t\\r\\b\\f\x7f/é\" (options [\"rw\"]) is "
		   "writable: only a read-only bind of a committed snapshot can be shipped as a layer");
}

/* A message longer than the buffer is cut on a character boundary, and a
 * buffer of one byte, or none, is no problem. */
static void test_error_buffer(void)
{
	const struct nd_mount m[] = { MOUNT("bind", "/ééééé", "rw") };
	char err[64], **dirs;
	size_t n;

	/* "rootfs bind mount of \"/" is 23 bytes, each é two. */
	const struct {
		size_t len;
		const char *want;
	} cuts[] = {
		{ 30, "rootfs bind mount of \"/ééé" }, /* 29 bytes: three é fit exactly */
		{ 31, "rootfs bind mount of \"/ééé" }, /* 30: half of the fourth is dropped */
		{ 32, "rootfs bind mount of \"/éééé" },
	};
	for (size_t i = 0; i < sizeof(cuts) / sizeof(*cuts); i++) {
		memset(err, 'x', sizeof(err));
		check(nd_overlay_lowerdirs(m, 1, &dirs, &n, err, cuts[i].len) == -EINVAL, "cut at %zu: rc", cuts[i].len);
		check(strcmp(err, cuts[i].want) == 0, "cut at %zu: \"%s\"", cuts[i].len, err);
	}
	memset(err, 'x', sizeof(err));
	check(nd_overlay_lowerdirs(m, 1, &dirs, &n, err, 1) == -EINVAL && err[0] == '\0', "a one-byte buffer");
	check(nd_overlay_lowerdirs(m, 1, &dirs, &n, NULL, 0) == -EINVAL, "no buffer");
	check(nd_overlay_lowerdirs(NULL, 0, &dirs, &n, err, 5) == -EINVAL && strcmp(err, "root") == 0,
	      "a plain message cut: \"%s\"", err);
}

/* ------------------------------------------------------------------------- */
/* The index */

static char base[64], layer[128], index_dir[128];

/* The index file name of `abs`: the first 40 hex of its SHA-256 (that the TS
 * names it alike, test/unit/noded-layers.test.ts checks). */
static void index_name(const char *abs, char hex40[41])
{
	uint8_t sum[XPU_SHA256_BYTES];

	xpu_sha256(abs, strlen(abs), sum);
	for (size_t i = 0; i < 20; i++)
		snprintf(hex40 + 2 * i, 3, "%02x", sum[i]);
}

static void write_file(const char *file, const char *text)
{
	FILE *f = fopen(file, "w");

	if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
		printf("FAIL write %s\n", file);
		exit(1);
	}
}

#define DIGEST "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"

/* A record for `dir` with `id` and `version`, then `rest` (its digest and size) as given. */
static void write_record(const char *file, const char *version, const char *dir, const struct nd_layer_identity *id,
			 const char *rest)
{
	char text[4096];

	snprintf(text, sizeof(text), "{\"version\":%s,\"dir\":\"%s\",\"dev\":\"%s\",\"ino\":\"%s\",\"ctimeNs\":\"%s\",%s}",
		 version, dir, id->dev, id->ino, id->ctime_ns, rest);
	write_file(file, text);
}

static int lookup(const char *dir, char digest[ND_LAYER_DIGEST_SIZE], uint64_t *size, char *err, size_t err_len)
{
	return nd_layer_digest_cached(dir, index_dir, digest, size, err, err_len);
}

static void want_miss(const char *name, const char *dir, const char *why)
{
	char err[ND_LAYERS_ERR_MAX], digest[ND_LAYER_DIGEST_SIZE];
	uint64_t size = 9;
	int rc = lookup(dir, digest, &size, err, sizeof(err));

	check(rc == -ENOENT, "%s: rc %d, want -ENOENT (%s)", name, rc, rc ? err : digest);
	check(digest[0] == '\0' && size == 0, "%s: a miss leaves a digest", name);
	if (rc == -ENOENT)
		check(strstr(err, why) != NULL, "%s: \"%s\" does not say \"%s\"", name, err, why);
}

static void want_hit(const char *name, const char *dir, const char *want, uint64_t want_size)
{
	char err[ND_LAYERS_ERR_MAX], digest[ND_LAYER_DIGEST_SIZE];
	uint64_t size = 0;
	int rc = lookup(dir, digest, &size, err, sizeof(err));

	check(rc == 0, "%s: rc %d (%s)", name, rc, rc ? err : "");
	if (rc == 0)
		check(strcmp(digest, want) == 0 && size == want_size, "%s: %s %llu", name, digest, (unsigned long long)size);
}

static void test_index(void)
{
	struct nd_layer_identity id, other;
	char err[ND_LAYERS_ERR_MAX], digest[ND_LAYER_DIGEST_SIZE], hex[41], file[256], path[512], cwd[4096], text[1024];
	uint64_t size;

	check(nd_layer_identity(layer, &id, err, sizeof(err)) == 0, "identity: %s", err);
	index_name(layer, hex);
	snprintf(file, sizeof(file), "%s/%s.json", index_dir, hex);

	want_miss("no record", layer, "no digest in the index");
	write_record(file, "1", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_hit("a record", layer, DIGEST, 10240);

	/* The same directory by other names, as path.resolve reads them. */
	snprintf(path, sizeof(path), "%s//./x/..//layer/", base);
	want_hit("a name with //, . and ..", path, DIGEST, 10240);
	if (!getcwd(cwd, sizeof(cwd)) || chdir(base) != 0) {
		printf("FAIL chdir %s\n", base);
		exit(1);
	}
	want_hit("a relative name", "layer", DIGEST, 10240);
	want_hit("a relative name with ..", "./layer/../layer", DIGEST, 10240);
	if (chdir(cwd) != 0)
		exit(1);

	/* Version 1.0 is version 1 to JSON.parse; "1" and 2 are not. */
	write_record(file, "1.0", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_hit("version 1.0", layer, DIGEST, 10240);
	write_record(file, "2", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_miss("version 2", layer, "is not of version 1");
	write_record(file, "\"1\"", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_miss("version \"1\"", layer, "is not of version 1");

	/* Torn, or not a record at all. */
	write_record(file, "1", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":10240");
	{
		FILE *f = fopen(file, "r");
		size_t n = f ? fread(text, 1, sizeof(text) - 1, f) : 0;

		if (f)
			fclose(f);
		text[n / 2] = '\0';
		write_file(file, text);
	}
	want_miss("a torn record", layer, "is not valid JSON");
	write_file(file, "");
	want_miss("an empty file", layer, "is not valid JSON");
	write_file(file, "[1]");
	want_miss("an array", layer, "is not of version 1");
	write_file(file, "null");
	want_miss("null", layer, "is not valid JSON");

	/* Another directory's record under this name (a hash prefix collision). */
	write_record(file, "1", "/elsewhere", &id, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_miss("another directory's", layer, "another directory's");

	/* A stale identity: each field on its own. */
	other = id;
	other.ino[0] = other.ino[0] == '9' ? '1' : (char)(other.ino[0] + 1);
	write_record(file, "1", layer, &other, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_miss("another inode", layer, "is stale");
	other = id;
	other.dev[0] = other.dev[0] == '9' ? '1' : (char)(other.dev[0] + 1);
	write_record(file, "1", layer, &other, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_miss("another device", layer, "is stale");
	snprintf(text, sizeof(text), "{\"version\":1,\"dir\":\"%s\",\"dev\":%s,\"ino\":\"%s\",\"ctimeNs\":\"%s\",\"digest\":\"" DIGEST
		 "\",\"size\":1}", layer, id.dev, id.ino, id.ctime_ns);
	write_file(file, text);
	want_miss("dev a number, not a string", layer, "is stale");
	write_record(file, "1", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":10240");
	want_hit("a record again", layer, DIGEST, 10240);
	/* ctime is stamped with a coarse clock: a tick later, or it may not move. */
	usleep(20 * 1000);
	if (chmod(layer, 0700) != 0)
		exit(1);
	want_miss("the directory's ctime changed (chmod)", layer, "is stale");
	check(nd_layer_identity(layer, &other, err, sizeof(err)) == 0 && strcmp(other.ctime_ns, id.ctime_ns) != 0 &&
		      strcmp(other.ino, id.ino) == 0,
	      "chmod changes ctimeNs (%s -> %s), not ino", id.ctime_ns, other.ctime_ns);
	id = other;

	/* Records no writer made. */
	write_record(file, "1", layer, &id, "\"digest\":\"sha256:5891B5B522D5DF086D0FF0B110FBD9D21BB4FC7163AF34D08286A2E846F6BE03\",\"size\":1");
	want_miss("an upper-case digest", layer, "no valid digest and size");
	write_record(file, "1", layer, &id, "\"digest\":\"sha256:5891\",\"size\":1");
	want_miss("a short digest", layer, "no valid digest and size");
	write_record(file, "1", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":-1");
	want_miss("a negative size", layer, "no valid digest and size");
	write_record(file, "1", layer, &id, "\"digest\":\"" DIGEST "\"");
	want_miss("no size", layer, "no valid digest and size");
	write_record(file, "1", layer, &id, "\"digest\":\"" DIGEST "\",\"size\":0");
	want_hit("size 0", layer, DIGEST, 0);

	/* The index file a directory, or too large. */
	unlink(file);
	if (mkdir(file, 0700) != 0)
		exit(1);
	want_miss("the index file a directory", layer, "no digest in the index");
	rmdir(file);
	{
		char *big = malloc(70 * 1024);

		memset(big, ' ', 70 * 1024 - 1);
		big[70 * 1024 - 1] = '\0';
		write_file(file, big);
		free(big);
	}
	want_miss("a record too large", layer, "too large");
	unlink(file);

	/* No directory there: stat's errors, -ENOENT among them. */
	snprintf(path, sizeof(path), "%s/file", base);
	write_file(path, "not a layer");
	check(lookup(path, digest, &size, err, sizeof(err)) == -ENOTDIR, "a file: -ENOTDIR");
	snprintf(text, sizeof(text), "layer %s is not a directory", path);
	check(strcmp(err, text) == 0, "a file: \"%s\"", err);
	snprintf(path, sizeof(path), "%s/missing", base);
	check(lookup(path, digest, &size, err, sizeof(err)) == -ENOENT && strstr(err, "stat layer") == err,
	      "a missing directory: -ENOENT from stat: \"%s\"", err);
	snprintf(path, sizeof(path), "%s/file/sub", base);
	check(lookup(path, digest, &size, err, sizeof(err)) == -ENOTDIR && strstr(err, "stat layer") == err,
	      "below a file: stat's -ENOTDIR: \"%s\"", err);
}

static void test_index_setup(void)
{
	snprintf(base, sizeof(base), "/tmp/hp-noded-layers-XXXXXX");
	if (!mkdtemp(base)) {
		printf("FAIL mkdtemp\n");
		exit(1);
	}
	snprintf(layer, sizeof(layer), "%s/layer", base);
	snprintf(index_dir, sizeof(index_dir), "%s/index", base);
	if (mkdir(layer, 0755) != 0 || mkdir(index_dir, 0700) != 0)
		exit(1);
}

static void test_index_teardown(void)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", base);
	if (system(cmd) != 0)
		printf("FAIL remove %s\n", base);
}

/* ------------------------------------------------------------------------- */
/* Modes */

static int mode_lookup(const char *dir, const char *idx)
{
	char err[ND_LAYERS_ERR_MAX], digest[ND_LAYER_DIGEST_SIZE];
	uint64_t size;
	int rc = nd_layer_digest_cached(dir, idx, digest, &size, err, sizeof(err));

	if (rc < 0) {
		printf("%s: %s\n", strerrorname_np(-rc), err);
		return 1;
	}
	printf("%s %llu\n", digest, (unsigned long long)size);
	return 0;
}

static int mode_identity(const char *dir)
{
	struct nd_layer_identity id;
	char err[ND_LAYERS_ERR_MAX];

	if (nd_layer_identity(dir, &id, err, sizeof(err)) < 0) {
		printf("%s\n", err);
		return 1;
	}
	printf("%s %s %s\n", id.dev, id.ino, id.ctime_ns);
	return 0;
}

static int mode_lowerdirs(const char *text)
{
	json_error_t jerr;
	json_t *in = json_loads(text, 0, &jerr), *out;
	struct nd_mount *mounts;
	const char **options;
	size_t n, n_options = 0, used = 0, n_dirs;
	char err[ND_LAYERS_ERR_MAX], **dirs, *dumped;
	int rc;

	if (!json_is_array(in)) {
		fprintf(stderr, "lowerdirs: not a JSON array: %s\n", jerr.text);
		return 2;
	}
	n = json_array_size(in);
	for (size_t i = 0; i < n; i++)
		n_options += json_array_size(json_object_get(json_array_get(in, i), "options"));
	mounts = calloc(n + 1, sizeof(*mounts));
	options = calloc(n_options + 1, sizeof(*options));
	for (size_t i = 0; i < n; i++) {
		json_t *m = json_array_get(in, i), *o = json_object_get(m, "options");

		mounts[i].type = json_string_value(json_object_get(m, "type"));
		mounts[i].source = json_string_value(json_object_get(m, "source"));
		mounts[i].options = options + used;
		mounts[i].n_options = json_array_size(o);
		for (size_t j = 0; j < json_array_size(o); j++)
			options[used++] = json_string_value(json_array_get(o, j));
	}
	rc = nd_overlay_lowerdirs(mounts, n, &dirs, &n_dirs, err, sizeof(err));
	if (rc == 0) {
		json_t *list = json_array();

		for (size_t i = 0; i < n_dirs; i++)
			json_array_append_new(list, json_string(dirs[i]));
		out = json_pack("{so}", "dirs", list);
		nd_layer_dirs_free(dirs, n_dirs);
	} else {
		out = json_pack("{ss}", "error", err);
	}
	dumped = json_dumps(out, JSON_COMPACT);
	puts(dumped);
	free(dumped);
	json_decref(out);
	json_decref(in);
	free(options);
	free(mounts);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "lookup") == 0)
		return mode_lookup(argv[2], argv[3]);
	if (argc == 3 && strcmp(argv[1], "identity") == 0)
		return mode_identity(argv[2]);
	if (argc == 3 && strcmp(argv[1], "lowerdirs") == 0)
		return mode_lowerdirs(argv[2]);
	if (argc != 1) {
		fprintf(stderr, "usage: noded-test-layers [lookup DIR INDEXDIR | identity DIR | lowerdirs JSON]\n");
		return 2;
	}
	test_lowerdirs_ts_cases();
	test_lowerdirs_more();
	test_error_buffer();
	test_index_setup();
	test_index();
	test_index_teardown();
	if (failures) {
		printf("%d of %d checks failed\n", failures, checks);
		return failures > 125 ? 125 : failures;
	}
	printf("all noded layers tests passed (%d checks)\n", checks);
	return 0;
}
