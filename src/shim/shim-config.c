/*
 * The shim.toml reader (shim-config.h). One pass over the lines: a key is checked
 * where it stands (known, not set before, of its type, in range), so its error
 * names its own line. What needs the whole file ([dpu] address without its TLS
 * files) is checked at the end, at the line of the key it concerns. The first
 * error ends the read: one message, never a partial config.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim-config.h"

/* <state_dir>/s/<64 hex digits> must fit a unix socket path (launcher.c, paths.ts). */
#define MAX_SOCKET_PATH 106
#define MAX_STATE_DIR (MAX_SOCKET_PATH - 3 - 64)
#define MAX_FILE_SIZE (1 << 20)
/* How much of a line or value an error quotes. */
#define QUOTE_MAX 40
#define MAX_KEY 64
#define BARE_KEY "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

enum kind { BOOL, STRING, INTEGER };

struct value {
	enum kind kind;
	char *s;     /* STRING, owned */
	long long n; /* BOOL (0 or 1), INTEGER */
};

/* Checks a value of the right kind; fills `what` and returns -1 when it is wrong. */
typedef int check_fn(const struct value *v, char *what, size_t cap);

struct field {
	const char *name; /* "key" or "section.key" */
	enum kind kind;
	size_t offset; /* of an int (BOOL), a char * (STRING) or a long (INTEGER) */
	check_fn *check;
};

static check_fn check_state_dir, check_not_empty, check_address, check_timeout, check_host_mode;

#define AT(member) offsetof(struct shim_config, member)
static const struct field fields[] = {
	{ "debug", BOOL, AT(debug), NULL },
	{ "state_dir", STRING, AT(state_dir), check_state_dir },
	{ "runc_shim", STRING, AT(runc_shim), check_not_empty },
	{ "runc.root", STRING, AT(runc_root), NULL },
	{ "runc.binary_name", STRING, AT(runc_binary_name), NULL },
	{ "runc.systemd_cgroup", BOOL, AT(runc_systemd_cgroup), NULL },
	{ "dpu.address", STRING, AT(dpu_address), check_address },
	{ "dpu.ca", STRING, AT(dpu_ca), NULL },
	{ "dpu.cert", STRING, AT(dpu_cert), NULL },
	{ "dpu.key", STRING, AT(dpu_key), NULL },
	{ "dpu.timeout_ms", INTEGER, AT(dpu_timeout_ms), check_timeout },
	{ "xpu.host_mode", STRING, AT(xpu_host_mode), check_host_mode },
};
#undef AT
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static const char *const sections[] = { "runc", "dpu", "xpu" };
#define NSECTIONS (sizeof(sections) / sizeof(sections[0]))

/* Modes of src/xpu/native's MODES, as config.ts's HOST_MODES. */
static const char *const host_modes[] = { "served", "sleep", "elastic", "poll" };

struct parser {
	const char *file;
	unsigned line;
	const char *section; /* "" or one of sections[] */
	unsigned section_line[NSECTIONS];
	unsigned field_line[NFIELDS]; /* 0: not set in the file */
	char *why;
	size_t why_len;
};

static int error_at(struct parser *p, unsigned line, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int error_at(struct parser *p, unsigned line, const char *key, const char *fmt, ...)
{
	int n = snprintf(p->why, p->why_len, "%s:%u: %s: ", p->file, line, key);
	va_list ap;

	if (n >= 0 && (size_t)n < p->why_len) {
		va_start(ap, fmt);
		vsnprintf(p->why + n, p->why_len - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* Length of the UTF-8 sequence at s (at most n bytes), 0 if it is not valid. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len, i;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4;
	else
		return 0;
	if (n < len)
		return 0;
	for (i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	/* no overlong forms, no surrogates, nothing past U+10FFFF */
	if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0) || (s[0] == 0xf0 && s[1] < 0x90) ||
	    (s[0] == 0xf4 && s[1] >= 0x90))
		return 0;
	return len;
}

static int utf8_valid(const char *s)
{
	size_t n = strlen(s), i, len;

	for (i = 0; i < n; i += len)
		if (!(len = utf8_seq((const unsigned char *)s + i, n - i)))
			return 0;
	return 1;
}

/*
 * `s` as a quoted string for a message: at most QUOTE_MAX bytes of it (whole
 * characters), then "…" if it goes on; quotes, backslashes, control characters
 * and bytes that are not UTF-8 escaped, so the message is one line of UTF-8.
 */
static const char *quote(char *out, size_t cap, const char *s)
{
	size_t o = 0, i = 0, n = strlen(s), len;

	out[o++] = '"';
	while (i < n && i < QUOTE_MAX && o + 8 < cap) {
		unsigned char c = (unsigned char)s[i];

		len = utf8_seq((const unsigned char *)s + i, n - i);
		if (len > 1 && i + len <= QUOTE_MAX) {
			memcpy(out + o, s + i, len);
			o += len;
		} else if (len > 1) {
			break;
		} else if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
			len = 1;
		} else if (c < 0x20 || c == 0x7f || len == 0) {
			o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
			len = 1;
		} else {
			out[o++] = (char)c;
		}
		i += len;
	}
	out[o++] = '"';
	out[o] = '\0';
	if (i < n && o + 4 < cap)
		strcpy(out + o, "…");
	return out;
}

/* A line that names no key: the key slot of the message quotes the line. */
static int unparsable(struct parser *p, const char *line, const char *what)
{
	char q[8 * QUOTE_MAX];

	return error_at(p, p->line, quote(q, sizeof(q), line), "%s", what);
}

static const char *skip_ws(const char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	return s;
}

static int ends_value(char c)
{
	return c == '\0' || c == ' ' || c == '\t' || c == '#';
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static char *put_utf8(char *o, unsigned long cp)
{
	if (cp < 0x80) {
		*o++ = (char)cp;
	} else if (cp < 0x800) {
		*o++ = (char)(0xc0 | cp >> 6);
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*o++ = (char)(0xe0 | cp >> 12);
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*o++ = (char)(0xf0 | cp >> 18);
		*o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
		*o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*o++ = (char)(0x80 | (cp & 0x3f));
	}
	return o;
}

/*
 * A string value at s (at its opening quote): a basic string with TOML's escapes,
 * or a literal string without any. Sets *end past the closing quote. 0, -1 with
 * `what` filled, or -ENOMEM.
 */
static int parse_string(const char *s, const char **end, struct value *v, char *what, size_t cap)
{
	char quote_char = *s, *out = malloc(strlen(s) + 1), *o = out; /* escapes only shrink */
	const char *p;

	if (!out)
		return -ENOMEM;
	for (p = s + 1; *p && *p != quote_char; p++) {
		unsigned char c = (unsigned char)*p;

		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			snprintf(what, cap, "control character 0x%02x in a string (write it as an escape)", c);
			goto bad;
		}
		if (quote_char == '\'' || c != '\\') {
			*o++ = (char)c;
			continue;
		}
		switch (*++p) {
		case 'b': *o++ = '\b'; break;
		case 't': *o++ = '\t'; break;
		case 'n': *o++ = '\n'; break;
		case 'f': *o++ = '\f'; break;
		case 'r': *o++ = '\r'; break;
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case 'u':
		case 'U': {
			int digits = *p == 'u' ? 4 : 8, i, h;
			unsigned long cp = 0;

			for (i = 1; i <= digits; i++) {
				if ((h = hex_value(p[i])) < 0) {
					snprintf(what, cap, "\\%c needs %d hex digits", *p, digits);
					goto bad;
				}
				cp = cp << 4 | (unsigned long)h;
			}
			if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
				snprintf(what, cap, "\\%.*s is not a character allowed in a string", digits + 1, p);
				goto bad;
			}
			o = put_utf8(o, cp);
			p += digits;
			break;
		}
		case '\0':
			snprintf(what, cap, "unterminated string");
			goto bad;
		default:
			snprintf(what, cap, "unknown escape \\%c in a string", *p);
			goto bad;
		}
	}
	if (*p != quote_char) {
		snprintf(what, cap, "unterminated string");
		goto bad;
	}
	*o = '\0';
	if (!utf8_valid(out)) {
		snprintf(what, cap, "string is not UTF-8");
		goto bad;
	}
	*end = p + 1;
	v->kind = STRING;
	v->s = out;
	return 0;
bad:
	free(out);
	return -1;
}

/* A decimal integer as TOML writes one: a sign, no leading zeros, `_` between digits. */
static int parse_integer(const char *s, const char **end, struct value *v, char *what, size_t cap)
{
	const char *p = s;
	int negative = *p == '-';
	unsigned long long n = 0, limit = negative ? (unsigned long long)LLONG_MAX + 1 : LLONG_MAX;

	if (*p == '+' || *p == '-')
		p++;
	if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
		return 1; /* not an integer */
	for (; (*p >= '0' && *p <= '9') || (*p == '_' && p[1] >= '0' && p[1] <= '9' && p[-1] != '_'); p++) {
		if (*p == '_')
			continue;
		if (n > (limit - (unsigned long long)(*p - '0')) / 10) {
			snprintf(what, cap, "integer out of range");
			return -1;
		}
		n = n * 10 + (unsigned long long)(*p - '0');
	}
	if (!ends_value(*p))
		return 1;
	*end = p;
	v->kind = INTEGER;
	v->n = negative ? (long long)(0 - n) : (long long)n;
	return 0;
}

/* The value at s. 0, -1 with `what` filled, or -ENOMEM. */
static int parse_value(const char *s, const char **end, struct value *v, char *what, size_t cap)
{
	char q[8 * QUOTE_MAX];
	int r;

	if (!strncmp(s, "\"\"\"", 3) || !strncmp(s, "'''", 3)) {
		snprintf(what, cap, "multi-line strings are not supported");
		return -1;
	}
	if (*s == '"' || *s == '\'')
		return parse_string(s, end, v, what, cap);
	if ((!strncmp(s, "true", 4) && ends_value(s[4])) || (!strncmp(s, "false", 5) && ends_value(s[5]))) {
		v->kind = BOOL;
		v->n = *s == 't';
		*end = s + (v->n ? 4 : 5);
		return 0;
	}
	if (*s == '\0' || *s == '#') {
		snprintf(what, cap, "no value");
		return -1;
	}
	if ((r = parse_integer(s, end, v, what, cap)) <= 0)
		return r;
	snprintf(what, cap, "value %s is not a \"string\", a 'string', true, false or an integer", quote(q, sizeof(q), s));
	return -1;
}

static const char *kind_wanted(enum kind k)
{
	return k == BOOL ? "true or false" : k == STRING ? "a string" : "an integer";
}

static const char *kind_found(enum kind k)
{
	return k == BOOL ? "a boolean" : k == STRING ? "a string" : "an integer";
}

/* ---- what the values mean -------------------------------------------------- */

static int check_state_dir(const struct value *v, char *what, size_t cap)
{
	char q[8 * QUOTE_MAX];
	size_t n = strlen(v->s);

	if (v->s[0] != '/') {
		snprintf(what, cap, "must be an absolute path, not %s", quote(q, sizeof(q), v->s));
		return -1;
	}
	if (n > MAX_STATE_DIR) {
		snprintf(what, cap, "%zu bytes, more than %d: <state_dir>/s/<64 hex digits> must fit a unix socket path (%d bytes)",
			 n, MAX_STATE_DIR, MAX_SOCKET_PATH);
		return -1;
	}
	return 0;
}

static int check_not_empty(const struct value *v, char *what, size_t cap)
{
	if (v->s[0])
		return 0;
	snprintf(what, cap, "must not be empty");
	return -1;
}

/* host:port, port 1-65535; an IPv6 address in brackets. Empty: no DPU. */
static int check_address(const struct value *v, char *what, size_t cap)
{
	char q[8 * QUOTE_MAX];
	const char *s = v->s, *host_end, *port;
	size_t digits;

	if (!s[0])
		return 0;
	if (s[0] == '[') {
		host_end = strchr(s, ']');
		if (!host_end || host_end == s + 1 || host_end[1] != ':' ||
		    strspn(s + 1, "0123456789abcdefABCDEF:.") != (size_t)(host_end - s - 1) || !memchr(s + 1, ':', (size_t)(host_end - s - 1)))
			goto not_host_port;
		port = host_end + 2;
	} else {
		port = strrchr(s, ':');
		if (!port || port == s || strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_") != (size_t)(port - s))
			goto not_host_port;
		port++;
	}
	digits = strspn(port, "0123456789");
	if (digits == 0 || port[digits] != '\0')
		goto not_host_port;
	if (digits > 5 || atoi(port) < 1 || atoi(port) > 65535) {
		snprintf(what, cap, "port %.*s%s is out of range (1-65535)", digits > 10 ? 10 : (int)digits, port, digits > 10 ? "…" : "");
		return -1;
	}
	return 0;
not_host_port:
	snprintf(what, cap, "%s is not host:port (an IPv6 address in brackets: [fd00::2]:7443)", quote(q, sizeof(q), s));
	return -1;
}

static int check_timeout(const struct value *v, char *what, size_t cap)
{
	/* Node's timers take at most 2^31-1 ms; a longer one fires at once. */
	if (v->n >= 1 && v->n <= 2147483647)
		return 0;
	snprintf(what, cap, "must be between 1 and 2147483647, not %lld", v->n);
	return -1;
}

static int check_host_mode(const struct value *v, char *what, size_t cap)
{
	char q[8 * QUOTE_MAX];
	size_t i;

	for (i = 0; i < sizeof(host_modes) / sizeof(host_modes[0]); i++)
		if (!strcmp(v->s, host_modes[i]))
			return 0;
	snprintf(what, cap, "must be one of served, sleep, elastic, poll, not %s", quote(q, sizeof(q), v->s));
	return -1;
}

/* ---- lines ------------------------------------------------------------------- */

static int parse_header(struct parser *p, const char *line)
{
	const char *name = skip_ws(line + 1), *q;
	size_t n = strspn(name, BARE_KEY "."), i;
	char key[MAX_KEY + 8];

	q = skip_ws(name + n);
	if (line[1] == '[' || n == 0 || *q != ']')
		return unparsable(p, line, "not a [section] header");
	q = skip_ws(q + 1);
	if (*q && *q != '#')
		return unparsable(p, line, "text after the [section] header");
	snprintf(key, sizeof(key), "[%.*s]", (int)(n < MAX_KEY ? n : MAX_KEY), name);
	for (i = 0; i < NSECTIONS; i++)
		if (strlen(sections[i]) == n && !strncmp(name, sections[i], n))
			break;
	if (i == NSECTIONS)
		return error_at(p, p->line, key, "unknown section (the sections are [runc], [dpu], [xpu])");
	if (p->section_line[i])
		return error_at(p, p->line, key, "section repeated (first at line %u)", p->section_line[i]);
	p->section_line[i] = p->line;
	p->section = sections[i];
	return 0;
}

/* The keys a section has, for the message about one it has not. */
static void known_keys(const char *section, char *out, size_t cap)
{
	size_t i, o = 0, sn = strlen(section);

	out[0] = '\0';
	for (i = 0; i < NFIELDS; i++) {
		const char *name = fields[i].name, *dot = strchr(name, '.');
		const char *key = dot ? dot + 1 : name;

		if (sn ? !(dot && (size_t)(dot - name) == sn && !strncmp(name, section, sn)) : dot != NULL)
			continue;
		o += (size_t)snprintf(out + o, cap - o, "%s%s", o ? ", " : "", key);
		if (o >= cap)
			return;
	}
}

static int unknown_key(struct parser *p, const char *name)
{
	const char *dot = strrchr(name, '.');
	size_t sn = dot ? (size_t)(dot - name) : 0, i;
	char keys[256];

	if (sn == 0) {
		known_keys("", keys, sizeof(keys));
		return error_at(p, p->line, name, "unknown key (the top-level keys are %s)", keys);
	}
	for (i = 0; i < NSECTIONS; i++) {
		if (strlen(sections[i]) == sn && !strncmp(name, sections[i], sn)) {
			known_keys(sections[i], keys, sizeof(keys));
			return error_at(p, p->line, name, "unknown key ([%s] has %s)", sections[i], keys);
		}
	}
	return error_at(p, p->line, name, "unknown key (no section [%.*s]; the sections are [runc], [dpu], [xpu])", (int)sn, name);
}

static int parse_key_value(struct parser *p, const char *s, const char *line, struct shim_config *c)
{
	char name[2 * MAX_KEY + 8], what[16 * QUOTE_MAX], q[8 * QUOTE_MAX];
	const struct field *f = NULL;
	struct value v = { 0 };
	size_t o, i;
	int r;

	o = (size_t)snprintf(name, sizeof(name), "%s%s", p->section, p->section[0] ? "." : "");
	for (;;) { /* key, or dotted.key: a section's key at the top level */
		size_t n = strspn(s, BARE_KEY);

		if (n == 0 || o + n + 1 >= sizeof(name))
			return unparsable(p, line, "not key = value, a [section] header or a comment");
		memcpy(name + o, s, n);
		o += n;
		name[o] = '\0';
		s = skip_ws(s + n);
		if (*s != '.')
			break;
		name[o++] = '.';
		s = skip_ws(s + 1);
	}
	if (*s != '=')
		return unparsable(p, line, "not key = value, a [section] header or a comment");
	s = skip_ws(s + 1);
	for (i = 0; i < NFIELDS && !f; i++)
		if (!strcmp(fields[i].name, name))
			f = &fields[i];
	if (!f)
		return unknown_key(p, name);
	i = (size_t)(f - fields);
	if (p->field_line[i])
		return error_at(p, p->line, name, "set twice (first at line %u)", p->field_line[i]);
	if ((r = parse_value(s, &s, &v, what, sizeof(what))) < 0)
		return r == -ENOMEM ? r : error_at(p, p->line, name, "%s", what);
	s = skip_ws(s);
	if (*s && *s != '#') {
		free(v.s);
		return error_at(p, p->line, name, "text after the value: %s", quote(q, sizeof(q), s));
	}
	if (v.kind != f->kind) {
		free(v.s);
		return error_at(p, p->line, name, "must be %s, not %s", kind_wanted(f->kind), kind_found(v.kind));
	}
	if (f->check && f->check(&v, what, sizeof(what)) < 0) {
		free(v.s);
		return error_at(p, p->line, name, "%s", what);
	}
	if (f->kind == STRING) {
		char **field = (char **)((char *)c + f->offset);

		free(*field);
		*field = v.s;
	} else if (f->kind == BOOL) {
		*(int *)((char *)c + f->offset) = (int)v.n;
	} else {
		*(long *)((char *)c + f->offset) = (long)v.n;
	}
	p->field_line[i] = p->line;
	return 0;
}

static int parse_line(struct parser *p, const char *line, struct shim_config *c)
{
	const char *s = skip_ws(line); /* an error quotes the line from here */

	if (*s == '\0' || *s == '#')
		return 0;
	if (*s == '[')
		return parse_header(p, s);
	return parse_key_value(p, s, s, c);
}

static unsigned line_of(const struct parser *p, const char *name)
{
	size_t i;

	for (i = 0; i < NFIELDS; i++)
		if (!strcmp(fields[i].name, name))
			return p->field_line[i];
	return 0;
}

/* What no single line decides. */
static int check_whole(struct parser *p, const struct shim_config *c)
{
	char missing[64] = "";

	if (!c->dpu_address[0])
		return 0;
	if (!c->dpu_ca[0])
		strcat(missing, ", ca");
	if (!c->dpu_cert[0])
		strcat(missing, ", cert");
	if (!c->dpu_key[0])
		strcat(missing, ", key");
	if (!missing[0])
		return 0;
	return error_at(p, line_of(p, "dpu.address"), "dpu.address", "needs ca, cert and key in [dpu] (missing: %s)", missing + 2);
}

static int set_defaults(struct shim_config *c)
{
	memset(c, 0, sizeof(*c));
	c->state_dir = strdup(DEFAULT_STATE_DIR);
	c->runc_shim = strdup(DEFAULT_RUNC_SHIM);
	c->runc_root = strdup("");
	c->runc_binary_name = strdup("");
	c->dpu_address = strdup("");
	c->dpu_ca = strdup("");
	c->dpu_cert = strdup("");
	c->dpu_key = strdup("");
	c->dpu_timeout_ms = DEFAULT_DPU_TIMEOUT_MS;
	c->xpu_host_mode = strdup(DEFAULT_XPU_HOST_MODE);
	if (!c->state_dir || !c->runc_shim || !c->runc_root || !c->runc_binary_name || !c->dpu_address || !c->dpu_ca ||
	    !c->dpu_cert || !c->dpu_key || !c->xpu_host_mode) {
		shim_config_free(c);
		return -ENOMEM;
	}
	return 0;
}

int shim_config_parse(const char *file, const char *text, size_t len, struct shim_config *c, char *why, size_t why_len)
{
	struct parser p = { .file = file, .section = "", .why = why, .why_len = why_len };
	size_t at = 0;
	int err;

	if ((err = set_defaults(c)) < 0)
		goto out_of_memory;
	if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3))
		at = 3; /* a byte order mark */
	while (at < len) {
		const char *nl = memchr(text + at, '\n', len - at);
		size_t end = nl ? (size_t)(nl - text) : len, n = end - at;
		char *line;

		p.line++;
		if (n > 0 && text[at + n - 1] == '\r')
			n--;
		line = strndup(text + at, n);
		if (!line) {
			err = -ENOMEM;
			goto out_of_memory;
		}
		if (strlen(line) != n)
			err = unparsable(&p, line, "a NUL byte in the line");
		else
			err = parse_line(&p, line, c);
		free(line);
		if (err == -ENOMEM)
			goto out_of_memory;
		if (err < 0)
			goto fail;
		at = end + 1;
	}
	if ((err = check_whole(&p, c)) < 0)
		goto fail;
	return 0;
out_of_memory:
	snprintf(why, why_len, "%s: out of memory", file);
fail:
	shim_config_free(c);
	return err;
}

/* The whole file, NUL-terminated; 0 or a negative errno (-EFBIG past MAX_FILE_SIZE). */
static int read_all(const char *path, char **text, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = NULL, *bigger;
	ssize_t got;
	int fd = open(path, O_RDONLY | O_CLOEXEC), err;

	if (fd < 0)
		return -errno;
	for (;;) {
		if (n == cap || !buf) {
			if (buf)
				cap *= 2;
			if (cap > MAX_FILE_SIZE + 1)
				cap = MAX_FILE_SIZE + 1;
			if (buf && n == cap) {
				err = -EFBIG;
				goto fail;
			}
			if (!(bigger = realloc(buf, cap + 1))) {
				err = -ENOMEM;
				goto fail;
			}
			buf = bigger;
		}
		got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			err = -errno;
			goto fail;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	close(fd);
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return 0;
fail:
	close(fd);
	free(buf);
	return err;
}

int shim_config_load(const char *path, struct shim_config *c, char *why, size_t why_len)
{
	const char *file = path && path[0] ? path : DEFAULT_CONFIG;
	char *text = NULL;
	size_t len = 0;
	int err = read_all(file, &text, &len);

	if (err == -ENOENT)
		return shim_config_parse(file, "", 0, c, why, why_len); /* absent: the defaults */
	if (err < 0) {
		memset(c, 0, sizeof(*c));
		if (err == -EFBIG)
			snprintf(why, why_len, "%s: read: larger than %d bytes", file, MAX_FILE_SIZE);
		else
			snprintf(why, why_len, "%s: read: %s", file, strerror(-err));
		return err;
	}
	err = shim_config_parse(file, text, len, c, why, why_len);
	free(text);
	return err;
}

int shim_config_read(const char *path, struct shim_config *c)
{
	char why[SHIM_CONFIG_ERROR_MAX];

	return shim_config_load(path, c, why, sizeof(why));
}

void shim_config_free(struct shim_config *c)
{
	free(c->state_dir);
	free(c->runc_shim);
	free(c->runc_root);
	free(c->runc_binary_name);
	free(c->dpu_address);
	free(c->dpu_ca);
	free(c->dpu_cert);
	free(c->dpu_key);
	free(c->xpu_host_mode);
	memset(c, 0, sizeof(*c));
}

/* ---- the `config` action ------------------------------------------------------ */

static void json_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			fprintf(out, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(out, "\\u%04x", ch);
		else
			fputc(ch, out);
	}
	fputc('"', out);
}

static const char *json_bool(int b)
{
	return b ? "true" : "false";
}

int shim_config_main(const char *path)
{
	char why[SHIM_CONFIG_ERROR_MAX];
	struct shim_config c;
	FILE *out = stdout;

	if (shim_config_load(path, &c, why, sizeof(why)) < 0) {
		fprintf(stderr, "%s\n", why);
		return 1;
	}
	/* The fields and names of ShimConfig in src/shim/config.ts. */
	fprintf(out, "{\"debug\":%s,\"stateDir\":", json_bool(c.debug));
	json_string(out, c.state_dir);
	fputs(",\"runcShim\":", out);
	json_string(out, c.runc_shim);
	fputs(",\"runc\":{\"root\":", out);
	json_string(out, c.runc_root);
	fputs(",\"binaryName\":", out);
	json_string(out, c.runc_binary_name);
	fprintf(out, ",\"systemdCgroup\":%s},\"dpu\":{\"address\":", json_bool(c.runc_systemd_cgroup));
	json_string(out, c.dpu_address);
	fputs(",\"ca\":", out);
	json_string(out, c.dpu_ca);
	fputs(",\"cert\":", out);
	json_string(out, c.dpu_cert);
	fputs(",\"key\":", out);
	json_string(out, c.dpu_key);
	fprintf(out, ",\"timeoutMs\":%ld},\"xpu\":{\"hostMode\":", c.dpu_timeout_ms);
	json_string(out, c.xpu_host_mode);
	fputs("}}\n", out);
	shim_config_free(&c);
	if (fflush(out) != 0 || ferror(out)) {
		fprintf(stderr, "containerd-shim-heteropod-v2: config: write: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
