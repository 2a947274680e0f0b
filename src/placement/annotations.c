/*
 * The pod's offload annotations (placement.h), as src/placement/annotations.ts
 * and parsePortsAnnotation of src/netns/ports.ts read them.
 *
 * The one rule for every heteropod.io/ value: it is read exactly as written.
 * Nothing is trimmed, and whitespace anywhere in a value is refused, so that
 * "istio-proxy, log-agent" or " require" fail loudly instead of meaning
 * something other than they look. An error quotes at most HP_QUOTE_CHARS
 * characters of the value, and says how long the rest is.
 *
 * Values are walked as (pointer, length) pieces of the one string, never
 * copied, so that an error can quote any piece. Characters are counted as
 * Unicode code points (see next_char), where the TS counts UTF-16 units.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "placement-internal.h"
#include "placement.h"

#define MAX_CONTAINER_NAME 63
#define MAX_PORT 65535

/* ---- messages --------------------------------------------------------------- */

/* Drops a character that snprintf cut in two from the end of s[0, len). */
static void trim_cut_character(char *s, size_t len)
{
	size_t start = len, need;
	unsigned char lead;

	while (start > 0 && ((unsigned char)s[start - 1] & 0xc0) == 0x80 && len - start < 3)
		start--;
	if (start == 0)
		return;
	lead = (unsigned char)s[start - 1];
	need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
	if (len - (start - 1) < need)
		s[start - 1] = '\0';
}

/*
 * Writes at err[at], where `at` is the length of the message so far; returns
 * the new length, err_len once the message has been cut (nothing more is then
 * added: a cut message never resumes after the cut).
 */
static size_t vput(char *err, size_t err_len, size_t at, const char *fmt, va_list ap)
{
	int w;

	if (!err || at >= err_len)
		return at;
	w = vsnprintf(err + at, err_len - at, fmt, ap);
	if (w < 0)
		return at;
	if ((size_t)w >= err_len - at) {
		trim_cut_character(err, err_len - 1);
		return err_len;
	}
	return at + (size_t)w;
}

int placement_errf(char *err, size_t err_len, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vput(err, err_len, 0, fmt, ap);
	va_end(ap);
	return code;
}

__attribute__((format(printf, 4, 5))) static size_t put(char *err, size_t err_len, size_t at, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	at = vput(err, err_len, at, fmt, ap);
	va_end(ap);
	return at;
}

/* ---- characters ------------------------------------------------------------- */

/*
 * The index after the character at s[i]: its lead byte and the continuation
 * bytes after it, at most three (so a malformed string still advances by at
 * most four bytes a character: a quote's size stays bounded). For the valid
 * UTF-8 jansson gives, one character is one code point.
 */
static size_t next_char(const char *s, size_t len, size_t i)
{
	size_t end = i + 1;

	while (end < len && end - i < 4 && ((unsigned char)s[end] & 0xc0) == 0x80)
		end++;
	return end;
}

/* The code point of s[i, end) (a character as next_char gives it); -1 if malformed. */
static long code_point(const char *s, size_t i, size_t end)
{
	const unsigned char *p = (const unsigned char *)s + i;
	size_t n = end - i;

	if (n == 1)
		return p[0] < 0x80 ? p[0] : -1;
	if (n == 2 && (p[0] & 0xe0) == 0xc0)
		return ((long)(p[0] & 0x1f) << 6) | (p[1] & 0x3f);
	if (n == 3 && (p[0] & 0xf0) == 0xe0)
		return ((long)(p[0] & 0x0f) << 12) | ((long)(p[1] & 0x3f) << 6) | (p[2] & 0x3f);
	if (n == 4 && (p[0] & 0xf8) == 0xf0)
		return ((long)(p[0] & 0x07) << 18) | ((long)(p[1] & 0x3f) << 12) | ((long)(p[2] & 0x3f) << 6) | (p[3] & 0x3f);
	return -1;
}

/* JavaScript's \s: WhiteSpace (TAB, VT, FF, ZWNBSP, the Zs category) and LineTerminator. */
static int is_js_space(long c)
{
	switch (c) {
	case 0x09: case 0x0a: case 0x0b: case 0x0c: case 0x0d: case 0x20:
	case 0xa0: case 0x1680: case 0x2028: case 0x2029: case 0x202f: case 0x205f: case 0x3000: case 0xfeff:
		return 1;
	default:
		return c >= 0x2000 && c <= 0x200a;
	}
}

/* ---- quoting ---------------------------------------------------------------- */

/*
 * JSON.stringify of s[0, len), cut to HP_QUOTE_CHARS characters. JSON.stringify
 * escapes " \ and the control characters below U+0020 (\b \f \n \r \t by name,
 * the others as \u00xx, lowercase); DEL and non-ASCII pass through.
 * Bounded: 64 characters of at most 6 bytes each, quotes, and the count.
 */
static void quote_n(const char *s, size_t len, char out[HP_QUOTED_SIZE])
{
	static const char hex[] = "0123456789abcdef";
	size_t i, o = 0, chars = 0, cut = len, total;

	for (i = 0; i < len; i = next_char(s, len, i))
		if (chars++ == HP_QUOTE_CHARS)
			cut = i;
	total = chars;
	out[o++] = '"';
	for (i = 0; i < cut; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *named = NULL;

		switch (c) {
		case '"': named = "\\\""; break;
		case '\\': named = "\\\\"; break;
		case '\b': named = "\\b"; break;
		case '\f': named = "\\f"; break;
		case '\n': named = "\\n"; break;
		case '\r': named = "\\r"; break;
		case '\t': named = "\\t"; break;
		}
		if (named) {
			out[o++] = named[0];
			out[o++] = named[1];
		} else if (c < 0x20) {
			memcpy(out + o, "\\u00", 4);
			out[o + 4] = hex[c >> 4];
			out[o + 5] = hex[c & 0xf];
			o += 6;
		} else {
			out[o++] = (char)c;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
	if (cut < len)
		snprintf(out + o, HP_QUOTED_SIZE - o, "... (%zu characters)", total);
}

void hp_quote(const char *value, char out[HP_QUOTED_SIZE])
{
	quote_n(value, strlen(value), out);
}

/* The TS AnnotationError: `annotation NAME=QUOTED: why`. Returns -EINVAL. */
__attribute__((format(printf, 5, 6))) static int annotation_error(char *err, size_t err_len, const char *annotation,
								   const char *value, const char *why, ...)
{
	char q[HP_QUOTED_SIZE];
	va_list ap;
	size_t at;

	quote_n(value, strlen(value), q);
	at = put(err, err_len, 0, "annotation %s=%s: ", annotation, q);
	va_start(ap, why);
	vput(err, err_len, at, why, ap);
	va_end(ap);
	return -EINVAL;
}

/* checkNoWhitespace: the rule of the file's comment. */
static int check_no_whitespace(const char *annotation, const char *value, const char *example, char *err, size_t err_len)
{
	size_t len = strlen(value), i, next, at = 1;

	for (i = 0; i < len; i = next, at++) {
		next = next_char(value, len, i);
		if (is_js_space(code_point(value, i, next)))
			return annotation_error(err, err_len, annotation, value,
						"whitespace at character %zu: values are read exactly as written, with no spaces (e.g. \"%s\")",
						at, example);
	}
	return 0;
}

/* ---- names ------------------------------------------------------------------ */

/* A DNS-1123 label: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters. */
static int is_container_name_n(const char *s, size_t len)
{
	size_t i;

	if (len == 0 || len > MAX_CONTAINER_NAME || s[0] == '-' || s[len - 1] == '-')
		return 0;
	for (i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return 0;
	return 1;
}

int hp_is_container_name(const char *name)
{
	return is_container_name_n(name, strlen(name));
}

static int names_contain(char *const *names, size_t n, const char *name, size_t len)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strlen(names[i]) == len && memcmp(names[i], name, len) == 0)
			return 1;
	return 0;
}

int hp_offload_names(const struct hp_offload *o, const char *name)
{
	return o && names_contain(o->containers, o->n, name, strlen(name));
}

/* ---- annotations ------------------------------------------------------------ */

static const char *json_kind(json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_INTEGER:
	case JSON_REAL: return "a number";
	case JSON_TRUE: return "true";
	case JSON_FALSE: return "false";
	case JSON_NULL: return "null";
	default: return "a string";
	}
}

int hp_annotation(json_t *annotations, const char *key, const char **value, char *err, size_t err_len)
{
	json_t *v = json_is_object(annotations) ? json_object_get(annotations, key) : NULL;

	*value = NULL;
	if (!v)
		return 0;
	/* The TS would fail reading such a value (a TypeError), or quote it as JSON. */
	if (!json_is_string(v))
		return placement_errf(err, err_len, -EINVAL, "annotation %s: the value is %s, not a string", key, json_kind(v));
	if (strlen(json_string_value(v)) != json_string_length(v))
		return placement_errf(err, err_len, -EINVAL, "annotation %s: the value holds a NUL character", key);
	*value = json_string_value(v);
	return 0;
}

int hp_mentions_offload(json_t *annotations)
{
	return json_is_object(annotations) && json_object_get(annotations, HP_ANNOTATION_OFFLOAD) != NULL;
}

void hp_offload_free(struct hp_offload *o)
{
	size_t i;

	for (i = 0; i < o->n; i++)
		free(o->containers[i]);
	free(o->containers);
	o->containers = NULL;
	o->n = 0;
	o->require = 0;
}

/* The comma-separated names of raw into out (empty on failure). */
static int parse_offload_list(const char *raw, struct hp_offload *out, char *err, size_t err_len)
{
	size_t len = strlen(raw), count = 1, i, start, end;
	char **names;

	for (i = 0; i < len; i++)
		count += raw[i] == ',';
	names = calloc(count, sizeof(*names));
	if (!names)
		return placement_errf(err, err_len, -ENOMEM, "out of memory reading %s", HP_ANNOTATION_OFFLOAD);
	out->containers = names;
	for (start = 0; start <= len; start = end + 1) {
		const char *name = raw + start;
		size_t name_len;
		char q[HP_QUOTED_SIZE];

		end = start;
		while (end < len && raw[end] != ',')
			end++;
		name_len = end - start;
		if (!is_container_name_n(name, name_len)) {
			quote_n(name, name_len, q);
			annotation_error(err, err_len, HP_ANNOTATION_OFFLOAD, raw,
					 "%s is not a container name (a comma-separated list of DNS-1123 labels, e.g. \"istio-proxy,log-agent\")", q);
			goto fail;
		}
		if (names_contain(names, out->n, name, name_len)) {
			annotation_error(err, err_len, HP_ANNOTATION_OFFLOAD, raw, "container %.*s is named twice", (int)name_len, name);
			goto fail;
		}
		names[out->n] = strndup(name, name_len);
		if (!names[out->n]) {
			placement_errf(err, err_len, -ENOMEM, "out of memory reading %s", HP_ANNOTATION_OFFLOAD);
			hp_offload_free(out);
			return -ENOMEM;
		}
		out->n++;
	}
	return 0;
fail:
	hp_offload_free(out);
	return -EINVAL;
}

int hp_parse_offload(json_t *annotations, struct hp_offload *out, char *err, size_t err_len)
{
	json_t *listed = json_is_object(annotations) ? json_object_get(annotations, HP_ANNOTATION_OFFLOAD) : NULL;
	const char *raw = "", *policy;
	int rc;

	memset(out, 0, sizeof(*out));
	/* `annotations[OFFLOAD] ?? ''`: null lists nothing, as absence does. */
	if (listed && !json_is_null(listed) && (rc = hp_annotation(annotations, HP_ANNOTATION_OFFLOAD, &raw, err, err_len)) < 0)
		return rc;
	if ((rc = check_no_whitespace(HP_ANNOTATION_OFFLOAD, raw, "istio-proxy,log-agent", err, err_len)) < 0)
		return rc;
	if (raw[0] != '\0' && (rc = parse_offload_list(raw, out, err, err_len)) < 0)
		return rc;
	if ((rc = hp_annotation(annotations, HP_ANNOTATION_OFFLOAD_POLICY, &policy, err, err_len)) < 0)
		goto fail;
	if (policy && strcmp(policy, "prefer") != 0) {
		if (strcmp(policy, "require") != 0) {
			rc = annotation_error(err, err_len, HP_ANNOTATION_OFFLOAD_POLICY, policy, "must be \"prefer\" or \"require\", exactly");
			goto fail;
		}
		out->require = 1;
	}
	return 0;
fail:
	hp_offload_free(out);
	return rc;
}

/* ---- heteropod.io/ports ------------------------------------------------------ */

/* The names of `offloaded`, comma-separated ("none" for none), malloc'd. */
static char *offloaded_list(const struct hp_offload *offloaded)
{
	size_t i, len = 0;
	char *s, *p;

	if (offloaded->n == 0)
		return strdup("none");
	for (i = 0; i < offloaded->n; i++)
		len += strlen(offloaded->containers[i]) + 1;
	s = p = malloc(len);
	if (!s)
		return NULL;
	for (i = 0; i < offloaded->n; i++) {
		size_t n = strlen(offloaded->containers[i]);

		if (i > 0)
			*p++ = ',';
		memcpy(p, offloaded->containers[i], n);
		p += n;
	}
	*p = '\0';
	return s;
}

/* 1 to 5 decimal digits, 1-65535 ("00080" is 80, as Number() reads it); -1 otherwise. */
static long port_number(const char *s, size_t len)
{
	long port = 0;
	size_t i;

	if (len < 1 || len > 5)
		return -1;
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		port = port * 10 + (s[i] - '0');
	}
	return port >= 1 && port <= MAX_PORT ? port : -1;
}

struct entry_name {
	const char *s;
	size_t len;
};

/*
 * One pass over the entries in order, so that the first fault the TS would
 * throw on is the one reported. owner[port] is 1 + the index of the entry that
 * declared it (each entry declares a port of its own, so at most 65535
 * entries); the declared ports, sorted and unique, are owner's nonzero slots.
 */
int hp_parse_ports(const char *value, const struct hp_offload *offloaded, uint16_t **ports, size_t *n, char *err,
		   size_t err_len)
{
	const char *v = value;
	size_t len, start, end, entries = 0, count = 0, port;
	struct entry_name *names = NULL;
	uint16_t *owner = NULL, *out = NULL;
	char q[HP_QUOTED_SIZE];
	int rc;

	*ports = NULL;
	*n = 0;
	if (!v || v[0] == '\0')
		return 0;
	if ((rc = check_no_whitespace(HP_ANNOTATION_PORTS, v, "istio-proxy=15001,15006;log-agent=24224", err, err_len)) < 0)
		return rc;
	len = strlen(v);
	owner = calloc(MAX_PORT + 1, sizeof(*owner));
	names = calloc(len / 2 + 1, sizeof(*names)); /* an entry takes at least "a=1" and a separator */
	if (!owner || !names) {
		rc = placement_errf(err, err_len, -ENOMEM, "out of memory reading %s", HP_ANNOTATION_PORTS);
		goto out;
	}
	for (start = 0; start <= len; start = end + 1) {
		const char *entry = v + start, *eq, *name, *p;
		size_t entry_len, name_len, p_len;

		end = start;
		while (end < len && v[end] != ';')
			end++;
		entry_len = end - start;
		if (entry_len == 0) {
			if (end == len)
				break; /* a trailing ";" is harmless */
			rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v,
					      "empty entry between \";\" separators (expected container=port,port;container=port)");
			goto out;
		}
		eq = memchr(entry, '=', entry_len);
		if (!eq) {
			quote_n(entry, entry_len, q);
			rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v, "entry %s has no \"=\" (expected container=port,port)", q);
			goto out;
		}
		name = entry;
		name_len = (size_t)(eq - entry);
		if (!is_container_name_n(name, name_len)) {
			quote_n(name, name_len, q);
			rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v, "%s is not a container name (a DNS-1123 label)", q);
			goto out;
		}
		for (size_t i = 0; i < entries; i++) {
			if (names[i].len == name_len && memcmp(names[i].s, name, name_len) == 0) {
				rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v, "container \"%.*s\" is listed twice", (int)name_len, name);
				goto out;
			}
		}
		if (offloaded && !names_contain(offloaded->containers, offloaded->n, name, name_len)) {
			char *list = offloaded_list(offloaded);

			if (!list) {
				rc = placement_errf(err, err_len, -ENOMEM, "out of memory reading %s", HP_ANNOTATION_PORTS);
				goto out;
			}
			rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v,
					      "container \"%.*s\" is not offloaded (heteropod.io/offload names: %s)", (int)name_len, name, list);
			free(list);
			goto out;
		}
		names[entries].s = name;
		names[entries].len = name_len;
		entries++;
		if (eq + 1 == v + end) {
			rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v, "container \"%.*s\" has no ports", (int)name_len, name);
			goto out;
		}
		for (p = eq + 1; p <= v + end; p += p_len + 1) {
			long number;
			size_t prev;

			p_len = 0;
			while (p + p_len < v + end && p[p_len] != ',')
				p_len++;
			number = port_number(p, p_len);
			if (number < 0) {
				quote_n(p, p_len, q);
				rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v,
						      "%s (container \"%.*s\") is not a port number in 1-65535", q, (int)name_len, name);
				goto out;
			}
			prev = owner[number];
			if (prev == entries) {
				rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v, "port %ld is listed twice for container \"%.*s\"",
						      number, (int)name_len, name);
				goto out;
			}
			if (prev) {
				rc = annotation_error(err, err_len, HP_ANNOTATION_PORTS, v, "port %ld is claimed by both \"%.*s\" and \"%.*s\"",
						      number, (int)names[prev - 1].len, names[prev - 1].s, (int)name_len, name);
				goto out;
			}
			owner[number] = (uint16_t)entries;
			count++;
		}
	}
	if (count > 0) {
		size_t i = 0;

		out = malloc(count * sizeof(*out));
		if (!out) {
			rc = placement_errf(err, err_len, -ENOMEM, "out of memory reading %s", HP_ANNOTATION_PORTS);
			goto out;
		}
		for (port = 1; port <= MAX_PORT; port++)
			if (owner[port])
				out[i++] = (uint16_t)port;
	}
	*ports = out;
	*n = count;
	rc = 0;
out:
	free(owner);
	free(names);
	return rc;
}
