/*
 * A container's rootfs layers: overlayLowerdirs and the warm half of
 * layerDigest (src/shim/layers.ts), for the node daemon. See layers.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../xpu/sha256.h"
#include "layers.h"

/* An index record is about 250 bytes and a path; anything longer is not one. */
#define INDEX_RECORD_MAX (64 * 1024)
#define DIGEST_PREFIX "sha256:"

/* Ends a text cut at `len - 1` bytes on a UTF-8 character boundary. */
static void cut_utf8(char *s, size_t len)
{
	size_t end = len - 1, start = end, need;
	unsigned char lead;

	while (start > 0 && ((unsigned char)s[start - 1] & 0xc0) == 0x80)
		start--;
	if (start == 0)
		return;
	lead = (unsigned char)s[start - 1];
	need = lead < 0x80 ? 1 : lead < 0xe0 ? 2 : lead < 0xf0 ? 3 : 4;
	if (end - (start - 1) < need)
		s[start - 1] = '\0';
}

static void set_err(char *err, size_t err_len, const char *text)
{
	size_t n;

	if (!err || err_len == 0)
		return;
	n = strlen(text);
	if (n < err_len) {
		memcpy(err, text, n + 1);
		return;
	}
	memcpy(err, text, err_len - 1);
	err[err_len - 1] = '\0';
	cut_utf8(err, err_len);
}

__attribute__((format(printf, 4, 5))) static int fail(int rc, char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!err || err_len == 0)
		return rc;
	va_start(ap, fmt);
	n = vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n >= err_len)
		cut_utf8(err, err_len);
	return rc;
}

static const char *or_empty(const char *s)
{
	return s ? s : "";
}

/* ------------------------------------------------------------------------- */
/* Rootfs mounts -> layer directories */

/* Overlay options that do not change how a layer lies on disk, and those allowed
 * only as =off (the TS's NEUTRAL_OVERLAY_OPTIONS and OFF_ONLY_OVERLAY_OPTIONS;
 * layers.ts says why the others are refused). */
static const char *const NEUTRAL_OPTIONS[] = { "index", "workdir", "upperdir", "volatile", "ro",
					       "rw",	"xino",	   "nfs_export", "uuid" };
static const char *const OFF_ONLY_OPTIONS[] = { "redirect_dir", "metacopy" };

static int key_in(const char *key, size_t key_len, const char *const *set, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (strlen(set[i]) == key_len && memcmp(set[i], key, key_len) == 0)
			return 1;
	return 0;
}

/* `s` as JSON.stringify quotes it (valid UTF-8 in, bytes above 0x7f as they are). */
static void put_json_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\b':
			fputs("\\b", f);
			break;
		case '\f':
			fputs("\\f", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		default:
			if (*p < 0x20)
				fprintf(f, "\\u%04x", *p);
			else
				fputc(*p, f);
		}
	}
	fputc('"', f);
}

/* describeMount: `type mount of "source" (options ["a","b"])`. */
static void describe_mount(FILE *f, const struct nd_mount *m)
{
	fprintf(f, "%s mount of ", or_empty(m->type));
	put_json_string(f, or_empty(m->source));
	fputs(" (options [", f);
	for (size_t i = 0; m->options && i < m->n_options; i++) {
		if (i > 0)
			fputc(',', f);
		put_json_string(f, or_empty(m->options[i]));
	}
	fputs("])", f);
}

/* Fails with `head`, then each of `mounts` described (joined by "; "), then the
 * text of fmt: how every message about the rootfs is built. */
__attribute__((format(printf, 6, 7))) static int mount_fail(char *err, size_t err_len, const char *head,
							     const struct nd_mount *mounts, size_t n, const char *fmt, ...)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	va_list ap;
	int rc = -EINVAL;

	if (!f)
		return fail(-ENOMEM, err, err_len, "describe the rootfs: out of memory");
	fputs(head, f);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			fputs("; ", f);
		describe_mount(f, &mounts[i]);
	}
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	if (fclose(f) != 0 || !text)
		rc = fail(-ENOMEM, err, err_len, "describe the rootfs: out of memory");
	else
		set_err(err, err_len, text);
	free(text);
	return rc;
}

void nd_layer_dirs_free(char **dirs, size_t n)
{
	if (!dirs)
		return;
	for (size_t i = 0; i < n; i++)
		free(dirs[i]);
	free(dirs);
}

/* Splits a lowerdir value at the ':' overlayfs treats as separators, a '\'
 * taking the next byte as it is (splitLowerdir: a trailing '\' stays). */
static int split_lowerdir(const char *value, char ***out, size_t *n_out)
{
	size_t len = strlen(value), cap = 1, n = 0, cur_len = 0;
	char **dirs, *cur;

	for (const char *p = value; *p; p++)
		cap += *p == ':';
	dirs = calloc(cap, sizeof(*dirs));
	cur = malloc(len + 1);
	if (!dirs || !cur)
		goto nomem;
	for (size_t i = 0; i <= len; i++) {
		char c = value[i];

		if (c == '\\' && i + 1 < len) {
			cur[cur_len++] = value[++i];
		} else if (c == ':' || c == '\0') {
			if (!(dirs[n] = strndup(cur, cur_len)))
				goto nomem;
			n++;
			cur_len = 0;
		} else {
			cur[cur_len++] = c;
		}
	}
	free(cur);
	*out = dirs;
	*n_out = n;
	return 0;
nomem:
	free(cur);
	nd_layer_dirs_free(dirs, n);
	return -ENOMEM;
}

static int bind_source(const struct nd_mount *m, char ***dirs, size_t *n_dirs, char *err, size_t err_len)
{
	const char *source = or_empty(m->source);
	int ro = 0;

	for (size_t i = 0; m->options && i < m->n_options; i++)
		ro |= strcmp(or_empty(m->options[i]), "ro") == 0;
	if (!ro)
		return mount_fail(err, err_len, "rootfs ", m, 1,
				  " is writable: only a read-only bind of a committed snapshot can be shipped as a layer");
	if (source[0] != '/')
		return mount_fail(err, err_len, "rootfs ", m, 1, ": source is not an absolute path");
	*dirs = calloc(1, sizeof(**dirs));
	if (!*dirs || !((*dirs)[0] = strdup(source))) {
		free(*dirs);
		*dirs = NULL;
		return fail(-ENOMEM, err, err_len, "rootfs layers: out of memory");
	}
	*n_dirs = 1;
	return 0;
}

int nd_overlay_lowerdirs(const struct nd_mount *mounts, size_t n_mounts, char ***dirs, size_t *n_dirs, char *err,
			 size_t err_len)
{
	const struct nd_mount *m = mounts;
	const char *type;
	char **lower = NULL;
	size_t n_lower = 0;
	int seen = 0, rc;

	*dirs = NULL;
	*n_dirs = 0;
	if (n_mounts == 0)
		return fail(-EINVAL, err, err_len,
			    "rootfs has no mounts: nothing to ship (is the container using a snapshotter?)");
	if (n_mounts > 1) {
		char head[64];

		snprintf(head, sizeof(head), "rootfs has %zu mounts (", n_mounts);
		return mount_fail(err, err_len, head, mounts, n_mounts,
				  "); only a single overlay or read-only bind mount can be shipped");
	}
	type = or_empty(m->type);
	if (strcmp(type, "bind") == 0 || strcmp(type, "rbind") == 0)
		return bind_source(m, dirs, n_dirs, err, err_len);
	if (strcmp(type, "overlay") != 0)
		return mount_fail(err, err_len, "rootfs ", m, 1,
				  ": mount type \"%s\" is not supported (overlay or read-only bind only)", type);
	for (size_t i = 0; m->options && i < m->n_options; i++) {
		const char *option = or_empty(m->options[i]), *eq = strchr(option, '=');
		size_t key_len = eq ? (size_t)(eq - option) : strlen(option);
		const char *value = eq ? eq + 1 : "";

		if (key_len == 8 && memcmp(option, "lowerdir", 8) == 0) {
			if (seen) {
				rc = mount_fail(err, err_len, "rootfs ", m, 1, ": lowerdir given twice");
				goto out;
			}
			seen = 1;
			if ((rc = split_lowerdir(value, &lower, &n_lower)) < 0) {
				rc = fail(rc, err, err_len, "rootfs layers: out of memory");
				goto out;
			}
		} else if (key_in(option, key_len, OFF_ONLY_OPTIONS, sizeof(OFF_ONLY_OPTIONS) / sizeof(*OFF_ONLY_OPTIONS))) {
			if (strcmp(value, "off") != 0) {
				rc = mount_fail(err, err_len, "rootfs ", m, 1,
						": option \"%s\" makes layers depend on each other and cannot be shipped",
						option);
				goto out;
			}
		} else if (!key_in(option, key_len, NEUTRAL_OPTIONS, sizeof(NEUTRAL_OPTIONS) / sizeof(*NEUTRAL_OPTIONS))) {
			rc = mount_fail(err, err_len, "rootfs ", m, 1, ": overlay option \"%s\" is not supported for shipping",
					option);
			goto out;
		}
	}
	if (!seen)
		return mount_fail(err, err_len, "rootfs ", m, 1, ": no lowerdir option");
	for (size_t i = 0; i < n_lower; i++) {
		if (lower[i][0] != '/') {
			rc = mount_fail(err, err_len, "rootfs ", m, 1, ": lowerdir \"%s\" is not an absolute path", lower[i]);
			goto out;
		}
	}
	*dirs = lower;
	*n_dirs = n_lower;
	lower = NULL;
	rc = 0;
out:
	nd_layer_dirs_free(lower, n_lower);
	return rc;
}

/* ------------------------------------------------------------------------- */
/* Digests, remembered */

/* `dir` made absolute as path.resolve makes it, by name only. *out malloc'd. */
static int resolve_path(const char *dir, char **out)
{
	char *joined, *res;
	size_t len = 0;

	if (dir[0] == '/') {
		joined = strdup(dir);
	} else {
		char *cwd = getcwd(NULL, 0);

		if (!cwd)
			return -errno;
		if (asprintf(&joined, "%s/%s", cwd, dir) < 0)
			joined = NULL;
		free(cwd);
	}
	if (!joined)
		return -ENOMEM;
	res = malloc(strlen(joined) + 2);
	if (!res) {
		free(joined);
		return -ENOMEM;
	}
	for (const char *p = joined; *p;) {
		const char *seg;
		size_t seg_len;

		while (*p == '/')
			p++;
		seg = p;
		while (*p && *p != '/')
			p++;
		seg_len = (size_t)(p - seg);
		if (seg_len == 0 || (seg_len == 1 && seg[0] == '.'))
			continue;
		if (seg_len == 2 && seg[0] == '.' && seg[1] == '.') {
			while (len > 0 && res[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
			continue;
		}
		res[len++] = '/';
		memcpy(res + len, seg, seg_len);
		len += seg_len;
	}
	if (len == 0)
		res[len++] = '/';
	res[len] = '\0';
	free(joined);
	*out = res;
	return 0;
}

/* sec * 10^9 + nsec in decimal, as Node's bigint ctimeNs (negative before 1970). */
static void format_ns(char out[48], int64_t sec, long nsec)
{
	__int128 v = (__int128)sec * 1000000000 + nsec;
	unsigned __int128 u = v < 0 ? -(unsigned __int128)v : (unsigned __int128)v;
	char digits[48];
	size_t n = 0, o = 0;

	do {
		digits[n++] = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u);
	if (v < 0)
		out[o++] = '-';
	while (n)
		out[o++] = digits[--n];
	out[o] = '\0';
}

int nd_layer_identity(const char *abs, struct nd_layer_identity *id, char *err, size_t err_len)
{
	struct stat st;

	if (stat(abs, &st) < 0) {
		int rc = -errno;

		return fail(rc, err, err_len, "stat layer %s: %s", abs, strerror(-rc));
	}
	if (!S_ISDIR(st.st_mode))
		return fail(-ENOTDIR, err, err_len, "layer %s is not a directory", abs);
	snprintf(id->dev, sizeof(id->dev), "%" PRIu64, (uint64_t)st.st_dev);
	snprintf(id->ino, sizeof(id->ino), "%" PRIu64, (uint64_t)st.st_ino);
	format_ns(id->ctime_ns, (int64_t)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	return 0;
}

/* indexFile: <index_dir>/<first 40 hex of sha256(abs)>.json. */
static int index_file(const char *index_dir, const char *abs, char out[PATH_MAX])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t sum[XPU_SHA256_BYTES];
	char name[41];
	int n;

	xpu_sha256(abs, strlen(abs), sum);
	for (size_t i = 0; i < 20; i++) {
		name[2 * i] = hex[sum[i] >> 4];
		name[2 * i + 1] = hex[sum[i] & 15];
	}
	name[40] = '\0';
	/* path.join('', name) is name itself: relative to the working directory. */
	n = snprintf(out, PATH_MAX, "%s%s%s.json", index_dir, index_dir[0] ? "/" : "", name);
	return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}

/* The whole file, NUL-ended, in *text (malloc'd); -errno, or -EFBIG past max. */
static int read_small_file(const char *file, size_t max, char **text, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	size_t n = 0;
	int fd, rc;

	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = -EISDIR;
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		rc = -EFBIG;
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	/* To the end, whatever fstat said: a record is replaced by rename, never grown. */
	for (;;) {
		ssize_t r = read(fd, buf + n, (size_t)st.st_size + 1 - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > (size_t)st.st_size) {
			rc = -EFBIG;
			goto out;
		}
	}
	buf[n] = '\0';
	*text = buf;
	*len = n;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	close(fd);
	return rc;
}

static int json_string_is(json_t *obj, const char *key, const char *want)
{
	const char *s = json_string_value(json_object_get(obj, key));

	return s && strcmp(s, want) == 0;
}

static int is_digest(const char *s)
{
	size_t prefix = strlen(DIGEST_PREFIX);

	if (!s || strncmp(s, DIGEST_PREFIX, prefix) != 0 || strlen(s) != prefix + 64)
		return 0;
	for (const char *p = s + prefix; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return 0;
	return 1;
}

/* The record for `abs` with identity `id` in `text`: 0 with the digest, or
 * -ENOENT saying why it does not stand. */
static int read_record(const char *abs, const char *file, const char *text, size_t len,
		       const struct nd_layer_identity *id, char digest[ND_LAYER_DIGEST_SIZE], uint64_t *size, char *err,
		       size_t err_len)
{
	json_error_t jerr;
	json_t *rec = json_loadb(text, len, 0, &jerr), *version, *jsize;
	const char *d;
	int rc = -ENOENT;

	if (!rec) {
		/* A crash before the writer's rename cannot tear it; anything else may. */
		return fail(-ENOENT, err, err_len, "layer %s: index record %s is not valid JSON: %s", abs, file, jerr.text);
	}
	version = json_object_get(rec, "version");
	/* version === 1 in JS: 1 and 1.0 alike. */
	if (!json_is_object(rec) || !json_is_number(version) || json_number_value(version) != 1.0) {
		fail(rc, err, err_len, "layer %s: index record %s is not of version 1", abs, file);
		goto out;
	}
	if (!json_string_is(rec, "dir", abs)) {
		fail(rc, err, err_len, "layer %s: index record %s is another directory's", abs, file);
		goto out;
	}
	if (!json_string_is(rec, "dev", id->dev) || !json_string_is(rec, "ino", id->ino) ||
	    !json_string_is(rec, "ctimeNs", id->ctime_ns)) {
		fail(rc, err, err_len,
		     "layer %s: index record %s is stale: the directory was re-made or changed (now dev %s ino %s ctimeNs %s)",
		     abs, file, id->dev, id->ino, id->ctime_ns);
		goto out;
	}
	/* Stricter than the TS, which returns whatever is there: a record no writer
	 * made is recomputed (and rewritten) rather than trusted. */
	d = json_string_value(json_object_get(rec, "digest"));
	jsize = json_object_get(rec, "size");
	if (!is_digest(d) || !json_is_integer(jsize) || json_integer_value(jsize) < 0) {
		fail(rc, err, err_len, "layer %s: index record %s has no valid digest and size", abs, file);
		goto out;
	}
	memcpy(digest, d, strlen(d) + 1);
	*size = (uint64_t)json_integer_value(jsize);
	rc = 0;
out:
	json_decref(rec);
	return rc;
}

int nd_layer_digest_cached(const char *dir, const char *index_dir, char digest[ND_LAYER_DIGEST_SIZE], uint64_t *size,
			   char *err, size_t err_len)
{
	struct nd_layer_identity id;
	char *abs = NULL, *text = NULL, file[PATH_MAX];
	size_t len = 0;
	int rc;

	digest[0] = '\0';
	*size = 0;
	rc = resolve_path(or_empty(dir), &abs);
	if (rc < 0)
		return fail(rc, err, err_len, "layer %s: resolve the path: %s", or_empty(dir), strerror(-rc));
	if ((rc = index_file(or_empty(index_dir), abs, file)) < 0) {
		fail(rc, err, err_len, "layer %s: index directory %s: path too long", abs, or_empty(index_dir));
		goto out;
	}
	if ((rc = nd_layer_identity(abs, &id, err, err_len)) < 0)
		goto out;
	rc = read_small_file(file, INDEX_RECORD_MAX, &text, &len);
	if (rc == -ENOMEM) {
		fail(rc, err, err_len, "layer %s: read index record %s: out of memory", abs, file);
		goto out;
	}
	if (rc < 0) {
		/* Missing (never digested), or unreadable: either way the cold path
		 * computes it and replaces the record, as layerDigest does. */
		fail(-ENOENT, err, err_len, "layer %s: no digest in the index (%s: %s)", abs, file,
		     rc == -EFBIG ? "too large for a record" : strerror(-rc));
		rc = -ENOENT;
		goto out;
	}
	rc = read_record(abs, file, text, len, &id, digest, size, err, err_len);
out:
	free(text);
	free(abs);
	return rc;
}
