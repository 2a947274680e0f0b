/*
 * sourceFingerprint of src/shim/mounted-files.ts (mounts.h): the same text
 * hashed, so that the C and the TS fingerprints of a source are one. Where the
 * TS leans on Node, this does what Node does: readdirSync (names decoded as V8
 * decodes UTF-8), Array.prototype.sort (UTF-16 order), path.join (normalized),
 * a bigint stat printed (signed 64-bit fields, times in nanoseconds).
 */
#include "mounts.h"

#include "../xpu/sha256.h"
#include "mounts-internal.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Appends a C string (without its NUL). */
static void text_adds(struct nd_mounts_bytes *t, const char *s)
{
	nd_mounts_bytes_add(t, s, strlen(s));
}

/*
 * Bytes as Node reads a file name or link target into a string (UTF-8 decoded,
 * each maximal invalid subpart replaced by U+FFFD: the WHATWG decoder V8 has),
 * written back as UTF-8.
 */
static void add_decoded(struct nd_mounts_bytes *t, const unsigned char *s, size_t n)
{
	static const unsigned char REPLACEMENT[] = { 0xef, 0xbf, 0xbd };
	unsigned need = 0, seen = 0;
	unsigned char lower = 0x80, upper = 0xbf;
	size_t start = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char b = s[i];

		if (need == 0) {
			start = i;
			if (b <= 0x7f) {
				nd_mounts_bytes_add(t, &b, 1);
			} else if (b >= 0xc2 && b <= 0xdf) {
				need = 1;
			} else if (b >= 0xe0 && b <= 0xef) {
				lower = b == 0xe0 ? 0xa0 : 0x80;
				upper = b == 0xed ? 0x9f : 0xbf;
				need = 2;
			} else if (b >= 0xf0 && b <= 0xf4) {
				lower = b == 0xf0 ? 0x90 : 0x80;
				upper = b == 0xf4 ? 0x8f : 0xbf;
				need = 3;
			} else {
				nd_mounts_bytes_add(t, REPLACEMENT, sizeof(REPLACEMENT));
			}
			continue;
		}
		if (b < lower || b > upper) {
			/* the sequence so far is one replacement; b starts afresh */
			need = seen = 0;
			lower = 0x80;
			upper = 0xbf;
			nd_mounts_bytes_add(t, REPLACEMENT, sizeof(REPLACEMENT));
			i--;
			continue;
		}
		lower = 0x80;
		upper = 0xbf;
		if (++seen == need) {
			nd_mounts_bytes_add(t, s + start, i + 1 - start);
			need = seen = 0;
		}
	}
	if (need)
		nd_mounts_bytes_add(t, REPLACEMENT, sizeof(REPLACEMENT));
}

/* The next code point of valid UTF-8 at *p. */
static uint32_t next_code_point(const unsigned char **p)
{
	const unsigned char *s = *p;
	uint32_t c;

	if (s[0] < 0x80) {
		c = s[0];
		*p += 1;
	} else if (s[0] < 0xe0) {
		c = (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
		*p += 2;
	} else if (s[0] < 0xf0) {
		c = (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
		*p += 3;
	} else {
		c = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 | (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
		*p += 4;
	}
	return c;
}

/*
 * Array.prototype.sort's default order: by UTF-16 code units. A code point
 * beyond U+FFFF is a surrogate pair (0xD800...), so it sorts after U+D7FF and
 * before U+E000..U+FFFF; within each group code point order is unit order.
 */
static uint32_t utf16_rank(uint32_t c)
{
	return c >= 0xe000 && c <= 0xffff ? c + 0x200000 : c;
}

static int utf16_order(const void *a, const void *b)
{
	const unsigned char *x = *(const unsigned char *const *)a, *y = *(const unsigned char *const *)b;

	while (*x && *y) {
		uint32_t cx = utf16_rank(next_code_point(&x)), cy = utf16_rank(next_code_point(&y));

		if (cx != cy)
			return cx < cy ? -1 : 1;
	}
	return *x ? 1 : *y ? -1 : 0;
}

/* Where the last '/' of t's text from `base` is (relative to base), or -1. */
static long last_slash_from(const struct nd_mounts_bytes *t, size_t base)
{
	for (size_t k = t->len; k > base; k--)
		if (t->p[k - 1] == '/')
			return (long)(k - 1 - base);
	return -1;
}

/* path.posix.normalize's normalizeString (a '.' segment dropped, a '..' one
 * taking the one before; kept above the root only when relative), appended to
 * t: `res` is t's text from where it was. */
static void normalize_string(struct nd_mounts_bytes *t, const char *path, size_t len, int allow_above_root)
{
	size_t base = t->len, last_segment = 0;
	long last_slash = -1;
	int dots = 0;
	char code = 0;

	for (size_t i = 0; i <= len && !t->oom; i++) {
		if (i < len)
			code = path[i];
		else if (code == '/')
			break;
		else
			code = '/';
		if (code == '/') {
			size_t res = t->len - base;

			if (last_slash == (long)i - 1 || dots == 1) {
				/* NOOP */
			} else if (dots == 2) {
				if (res < 2 || last_segment != 2 || t->p[t->len - 1] != '.' || t->p[t->len - 2] != '.') {
					if (res > 2) {
						long at = last_slash_from(t, base);

						if (at == -1) {
							t->len = base;
							last_segment = 0;
						} else {
							t->len = base + (size_t)at;
							last_segment = (size_t)((long)(t->len - base) - 1 - last_slash_from(t, base));
						}
						last_slash = (long)i;
						dots = 0;
						continue;
					} else if (res != 0) {
						t->len = base;
						last_segment = 0;
						last_slash = (long)i;
						dots = 0;
						continue;
					}
				}
				if (allow_above_root) {
					text_adds(t, t->len > base ? "/.." : "..");
					last_segment = 2;
				}
			} else {
				if (t->len > base)
					nd_mounts_bytes_add(t, "/", 1);
				nd_mounts_bytes_add(t, path + last_slash + 1, i - (size_t)(last_slash + 1));
				last_segment = i - (size_t)(last_slash + 1);
			}
			last_slash = (long)i;
			dots = 0;
		} else if (code == '.' && dots != -1) {
			dots++;
		} else {
			dots = -1;
		}
	}
}

/* path.join(dir, name) for a name that is not empty: normalize(dir + '/' + name), NUL-ended in t. */
static void path_join(struct nd_mounts_bytes *t, const char *dir, const char *name)
{
	struct nd_mounts_bytes joined = { 0 };
	int absolute;

	t->len = 0;
	text_adds(&joined, dir);
	nd_mounts_bytes_add(&joined, "/", 1);
	text_adds(&joined, name);
	if (joined.oom) {
		free(joined.p);
		t->oom = 1;
		return;
	}
	absolute = joined.p[0] == '/';
	if (absolute)
		nd_mounts_bytes_add(t, "/", 1);
	normalize_string(t, (char *)joined.p + absolute, joined.len - (size_t)absolute, !absolute);
	if (t->len == (size_t)absolute && !absolute)
		nd_mounts_bytes_add(t, ".", 1); /* no trailing '/': name is not empty */
	nd_mounts_bytes_add(t, "", 1);
	t->len--;
	free(joined.p);
}

/* A bigint's decimal: a signed 64-bit value, as Node's BigInt64Array holds a stat. */
static void add_int64(struct nd_mounts_bytes *t, int64_t v)
{
	char s[32];

	snprintf(s, sizeof(s), "%lld", (long long)v);
	text_adds(t, s);
}

/* sec * 10^9 + nsec, as Node's nsFromTimeSpecBigInt makes mtimeNs and ctimeNs. */
static void add_ns(struct nd_mounts_bytes *t, const struct timespec *ts)
{
	__int128 v = (__int128)ts->tv_sec * 1000000000 + ts->tv_nsec;
	char s[48], *p = s + sizeof(s);
	int negative = v < 0;
	unsigned __int128 u = negative ? -(unsigned __int128)v : (unsigned __int128)v;

	*--p = '\0';
	do {
		*--p = (char)('0' + (int)(u % 10));
		u /= 10;
	} while (u);
	if (negative)
		*--p = '-';
	text_adds(t, p);
}

/* describe(): `ino:mode:size:mtimeNs:ctimeNs:link`. */
static int describe(struct nd_mounts_bytes *t, const char *path, const struct stat *st, char *err, size_t err_len)
{
	add_int64(t, (int64_t)st->st_ino);
	nd_mounts_bytes_add(t, ":", 1);
	add_int64(t, (int64_t)st->st_mode);
	nd_mounts_bytes_add(t, ":", 1);
	add_int64(t, (int64_t)st->st_size);
	nd_mounts_bytes_add(t, ":", 1);
	add_ns(t, &st->st_mtim);
	nd_mounts_bytes_add(t, ":", 1);
	add_ns(t, &st->st_ctim);
	nd_mounts_bytes_add(t, ":", 1);
	if (S_ISLNK(st->st_mode)) {
		size_t cap = 256;

		for (;;) {
			char *target = malloc(cap);
			ssize_t r;

			if (!target) {
				t->oom = 1;
				return 0;
			}
			r = readlink(path, target, cap);
			if (r < 0) {
				int e = errno;

				free(target);
				return nd_fs_error(err, err_len, e, "readlink", path);
			}
			if ((size_t)r < cap) {
				add_decoded(t, (unsigned char *)target, (size_t)r);
				free(target);
				break;
			}
			free(target);
			cap *= 2;
		}
	}
	return 0;
}

static void free_names(char **names, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

/* readdirSync(dir).sort(): the names, decoded as Node decodes them, in JavaScript's order. */
static int read_names(const char *dir, char ***names, size_t *n, char *err, size_t err_len)
{
	char **out = NULL;
	size_t count = 0, cap = 0;
	struct dirent *e;
	DIR *d = opendir(dir);

	*names = NULL;
	*n = 0;
	if (!d)
		return nd_fs_error(err, err_len, errno, "scandir", dir);
	for (;;) {
		struct nd_mounts_bytes name = { 0 };

		errno = 0;
		if (!(e = readdir(d))) {
			if (errno) {
				int rc = nd_fs_error(err, err_len, errno, "scandir", dir);

				closedir(d);
				free_names(out, count);
				return rc;
			}
			break;
		}
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		add_decoded(&name, (unsigned char *)e->d_name, strlen(e->d_name));
		nd_mounts_bytes_add(&name, "", 1);
		if (count == cap) {
			char **grown = name.oom ? NULL : realloc(out, (cap = cap * 2 + 16) * sizeof(*grown));

			if (!grown)
				name.oom = 1;
			else
				out = grown;
		}
		if (name.oom) {
			free(name.p);
			closedir(d);
			free_names(out, count);
			return nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", dir);
		}
		out[count++] = (char *)name.p;
	}
	closedir(d);
	if (count)
		qsort(out, count, sizeof(*out), utf16_order);
	*names = out;
	*n = count;
	return 0;
}

/* walk(): every entry under dir, `rel` its path from the source. */
static int walk(struct nd_mounts_bytes *t, const char *dir, const char *rel, char *err, size_t err_len)
{
	struct nd_mounts_bytes p = { 0 }, sub = { 0 };
	char **names;
	size_t n;
	int rc = read_names(dir, &names, &n, err, err_len);

	for (size_t i = 0; rc == 0 && i < n; i++) {
		struct stat st;

		path_join(&p, dir, names[i]);
		if (p.oom) {
			rc = nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", dir);
			break;
		}
		if (lstat((char *)p.p, &st) < 0) {
			rc = nd_fs_error(err, err_len, errno, "lstat", (char *)p.p);
			break;
		}
		text_adds(t, rel);
		text_adds(t, names[i]);
		nd_mounts_bytes_add(t, "", 1);
		if ((rc = describe(t, (char *)p.p, &st, err, err_len)) < 0)
			break;
		nd_mounts_bytes_add(t, "\n", 1);
		if (S_ISDIR(st.st_mode)) {
			sub.len = 0;
			text_adds(&sub, rel);
			text_adds(&sub, names[i]);
			text_adds(&sub, "/");
			nd_mounts_bytes_add(&sub, "", 1);
			if (sub.oom) {
				rc = nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", dir);
				break;
			}
			/* p and sub stay as they are until the next name */
			rc = walk(t, (char *)p.p, (char *)sub.p, err, err_len);
		}
	}
	free(p.p);
	free(sub.p);
	free_names(names, n);
	return rc;
}

int nd_source_fingerprint(const char *source, char out[ND_FINGERPRINT_SIZE], char *err, size_t err_len)
{
	static const char HEX[] = "0123456789abcdef";
	struct nd_mounts_bytes t = { 0 };
	uint8_t digest[XPU_SHA256_BYTES];
	struct stat st;
	int rc;

	out[0] = '\0';
	if (stat(source, &st) < 0)
		return nd_fs_error(err, err_len, errno, "stat", source);
	nd_mounts_bytes_add(&t, ".\0", 2);
	rc = describe(&t, source, &st, err, err_len);
	nd_mounts_bytes_add(&t, "\n", 1);
	if (rc == 0 && S_ISDIR(st.st_mode))
		rc = walk(&t, source, "", err, err_len);
	if (rc == 0 && t.oom)
		rc = nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", source);
	if (rc == 0) {
		xpu_sha256(t.p ? t.p : (unsigned char *)"", t.len, digest);
		for (int i = 0; i < XPU_SHA256_BYTES; i++) {
			out[2 * i] = HEX[digest[i] >> 4];
			out[2 * i + 1] = HEX[digest[i] & 15];
		}
		out[2 * XPU_SHA256_BYTES] = '\0';
	}
	free(t.p);
	return rc;
}
