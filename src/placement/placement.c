/*
 * Where one container of a pod runs (placement.h), as src/placement/placement.ts
 * decides it, with isBindMount and isSandboxShm of src/oci/mounts.ts (their C
 * port, src/oci/mounts.c, shared with the node daemon).
 *
 * The spec is read the way JavaScript reads the parsed JSON: `a?.b` of a value
 * that is no object is undefined; `x ?? []` makes null an empty list; `===`
 * compares type and value; a template literal turns any value into text
 * (js_string). Where the TS would throw a TypeError (an array method called on
 * something else, a property read from null), the call fails with -EINVAL.
 * The checks run in the TS order, each only when reached, so that the same
 * spec gives the same placement or fails the same way.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../oci/mounts.h"
#include "placement-internal.h"
#include "placement.h"

/* ---- text ------------------------------------------------------------------- */

/* A growing string; after a failed allocation it stays as it was, with oom set. */
struct text {
	char *s;
	size_t len, cap;
	int oom;
};

static void text_add(struct text *t, const char *s, size_t n)
{
	if (t->oom)
		return;
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 128;
		char *grown;

		while (cap < t->len + n + 1)
			cap *= 2;
		grown = realloc(t->s, cap);
		if (!grown) {
			t->oom = 1;
			return;
		}
		t->s = grown;
		t->cap = cap;
	}
	memcpy(t->s + t->len, s, n);
	t->len += n;
	t->s[t->len] = '\0';
}

static void text_adds(struct text *t, const char *s)
{
	text_add(t, s, strlen(s));
}

/*
 * A number as JavaScript's Number.prototype.toString writes it: the fewest
 * digits that read back as the same double, in plain notation for exponents
 * -7 < n <= 21 and as d.ddde+n beyond. So 2^53 + 1, read as a double, prints
 * 9007199254740992, and 1e21 prints 1e+21, as `${limit}` does in the TS.
 */
static void js_number(double d, char out[32])
{
	char e[32], digits[20];
	int precision, exponent, k = 0, n, i, o = 0;
	const char *p;

	if (isnan(d)) {
		strcpy(out, "NaN");
		return;
	}
	if (d == 0) {
		strcpy(out, "0"); /* -0 too */
		return;
	}
	if (d < 0) {
		out[o++] = '-';
		d = -d;
	}
	if (isinf(d)) {
		strcpy(out + o, "Infinity");
		return;
	}
	for (precision = 1; precision < 17; precision++) {
		snprintf(e, sizeof(e), "%.*e", precision - 1, d);
		if (strtod(e, NULL) == d)
			break;
	}
	snprintf(e, sizeof(e), "%.*e", precision - 1, d);
	for (p = e; *p != 'e'; p++)
		if (*p != '.')
			digits[k++] = *p;
	exponent = atoi(p + 1);
	n = exponent + 1; /* the value is 0.digits * 10^n */
	if (k <= n && n <= 21) {
		memcpy(out + o, digits, (size_t)k);
		o += k;
		for (i = k; i < n; i++)
			out[o++] = '0';
	} else if (0 < n && n <= 21) {
		memcpy(out + o, digits, (size_t)n);
		o += n;
		out[o++] = '.';
		memcpy(out + o, digits + n, (size_t)(k - n));
		o += k - n;
	} else if (-6 < n && n <= 0) {
		out[o++] = '0';
		out[o++] = '.';
		for (i = n; i < 0; i++)
			out[o++] = '0';
		memcpy(out + o, digits, (size_t)k);
		o += k;
	} else {
		out[o++] = digits[0];
		if (k > 1) {
			out[o++] = '.';
			memcpy(out + o, digits + 1, (size_t)(k - 1));
			o += k - 1;
		}
		o += snprintf(out + o, 32 - (size_t)o, "e%c%d", n - 1 < 0 ? '-' : '+', abs(n - 1));
	}
	out[o] = '\0';
}

/*
 * A JSON value as JavaScript's String() (a template literal) writes it: an
 * absent value "undefined", an array its elements' texts joined by "," (null
 * elements empty), an object "[object Object]".
 */
static void js_string(struct text *t, json_t *v)
{
	char number[32];
	size_t i;

	if (!v) {
		text_adds(t, "undefined");
		return;
	}
	switch (json_typeof(v)) {
	case JSON_STRING:
		text_add(t, json_string_value(v), json_string_length(v));
		break;
	case JSON_INTEGER:
	case JSON_REAL:
		js_number(json_number_value(v), number);
		text_adds(t, number);
		break;
	case JSON_TRUE:
		text_adds(t, "true");
		break;
	case JSON_FALSE:
		text_adds(t, "false");
		break;
	case JSON_NULL:
		text_adds(t, "null");
		break;
	case JSON_ARRAY:
		for (i = 0; i < json_array_size(v); i++) {
			json_t *e = json_array_get(v, i);

			if (i > 0)
				text_adds(t, ",");
			if (!json_is_null(e))
				js_string(t, e);
		}
		break;
	case JSON_OBJECT:
		text_adds(t, "[object Object]");
		break;
	}
}

/* ---- reading the spec -------------------------------------------------------- */

/* Whether the array holds the string `a` or `b` (NULL: only a). */
static int array_has(json_t *array, const char *a, const char *b)
{
	size_t i;

	for (i = 0; i < json_array_size(array); i++) {
		json_t *e = json_array_get(array, i);

		if (hp_json_is(e, a) || (b && hp_json_is(e, b)))
			return 1;
	}
	return 0;
}

static int is_directory_stat(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * sharesPodPidNamespace: a "pid" namespace with a path joins the sandbox's.
 * 1 or 0, or -EINVAL where `(linux.namespaces ?? []).some(ns => ns.type ...)`
 * throws.
 */
static int shares_pod_pid_namespace(json_t *spec, char *err, size_t err_len)
{
	json_t *namespaces = hp_json_member(hp_json_member(spec, "linux"), "namespaces");
	size_t i;

	if (!namespaces || json_is_null(namespaces))
		return 0;
	if (!json_is_array(namespaces))
		return placement_errf(err, err_len, -EINVAL, "spec: linux.namespaces is not an array");
	for (i = 0; i < json_array_size(namespaces); i++) {
		json_t *ns = json_array_get(namespaces, i);

		if (json_is_null(ns))
			return placement_errf(err, err_len, -EINVAL, "spec: linux.namespaces[%zu] is null", i);
		if (hp_json_is(hp_json_member(ns, "type"), "pid") && hp_json_truthy(hp_json_member(ns, "path")))
			return 1;
	}
	return 0;
}

/*
 * One mount of unshippableMounts: 1 (a writable directory bind mount, its
 * description added to `list`), 0, or -EINVAL/-ENOMEM.
 *   isBindMount:  m.type === 'bind' || (m.options ?? []).some(bind or rbind)
 *   isSandboxShm: m.destination === '/dev/shm' && SANDBOX_SHM.test(m.source ?? '')
 *   writable:     !(m.options ?? []).includes('ro')  (a string: a substring test)
 *   directory:    m.source && isDirectory(m.source)  (a string; other values
 *                 stat(2) would not take)
 */
static int unshippable_mount(json_t *m, size_t i, int (*is_directory)(const char *), struct text *list, char *err,
			     size_t err_len)
{
	json_t *options = hp_json_member(m, "options"), *source = hp_json_member(m, "source"), *destination = hp_json_member(m, "destination");
	int writable, bind;

	if (json_is_null(m))
		return placement_errf(err, err_len, -EINVAL, "spec: mounts[%zu] is null", i);
	/* a mount that is not null fails only for its options */
	if ((bind = hp_oci_is_bind_mount(m)) < 0)
		return placement_errf(err, err_len, -EINVAL, "spec: mounts[%zu].options is not an array", i);
	if (!bind)
		return 0;
	if (hp_json_is(destination, "/dev/shm") && source && !json_is_null(source)) {
		struct text s = { 0 };
		int shm;

		js_string(&s, source);
		if (s.oom) {
			free(s.s);
			return placement_errf(err, err_len, -ENOMEM, "out of memory reading the spec's mounts");
		}
		shm = hp_oci_sandbox_shm_source(s.s ? s.s : "", s.len);
		free(s.s);
		if (shm)
			return 0;
	}
	if (!options || json_is_null(options))
		writable = 1;
	else if (json_is_array(options))
		writable = !array_has(options, "ro", NULL);
	else if (json_is_string(options))
		writable = !memmem(json_string_value(options), json_string_length(options), "ro", 2);
	else
		return placement_errf(err, err_len, -EINVAL, "spec: mounts[%zu].options is not an array", i);
	if (!writable || !json_is_string(source) || json_string_length(source) == 0 || !is_directory(json_string_value(source)))
		return 0;
	if (list->len > 0)
		text_adds(list, ", ");
	js_string(list, destination);
	text_adds(list, " (writable volume from ");
	text_adds(list, json_string_value(source));
	text_adds(list, ")");
	return 1;
}

/*
 * unshippableMounts, joined by ", " into `list` (empty when none). 0, or
 * -EINVAL where `for (const m of spec.mounts ?? [])` and the tests above throw.
 */
static int unshippable_mounts(json_t *spec, int (*is_directory)(const char *), struct text *list, char *err,
			      size_t err_len)
{
	json_t *mounts = hp_json_member(spec, "mounts");
	size_t i;
	int rc;

	/* A string iterates as its characters, none of which is a bind mount. */
	if (!mounts || json_is_null(mounts) || json_is_string(mounts))
		return 0;
	if (!json_is_array(mounts))
		return placement_errf(err, err_len, -EINVAL, "spec: mounts is not an array");
	for (i = 0; i < json_array_size(mounts); i++)
		if ((rc = unshippable_mount(json_array_get(mounts, i), i, is_directory, list, err, err_len)) < 0)
			return rc;
	if (list->oom)
		return placement_errf(err, err_len, -ENOMEM, "out of memory reading the spec's mounts");
	return 0;
}

/* memoryLimit: linux.resources.memory.limit when a number above 0, else 0. */
static double memory_limit(json_t *spec)
{
	json_t *limit = hp_json_member(hp_json_member(hp_json_member(hp_json_member(spec, "linux"), "resources"), "memory"), "limit");

	return json_is_number(limit) && json_number_value(limit) > 0 ? json_number_value(limit) : 0;
}

/* ---- placing ----------------------------------------------------------------- */

void hp_placement_free(struct hp_placement *p)
{
	free(p->reason);
	p->reason = NULL;
	p->dpu = 0;
}

/* The container cannot go to the DPU: on the host under prefer, an error under require. */
static int refuse(const struct hp_offload *pod, const char *name, const char *why, struct hp_placement *out, char *err,
		  size_t err_len)
{
	if (pod->require)
		return placement_errf(err, err_len, -EPERM,
				      "container %s must run on the DPU (heteropod.io/offload-policy=require), but %s", name, why);
	out->reason = strdup(why);
	if (!out->reason)
		return placement_errf(err, err_len, -ENOMEM, "out of memory placing container %s", name);
	return 0;
}

int hp_place_container(const struct hp_offload *pod, const char *name, json_t *spec, const struct hp_dpu_state *dpu,
		       int (*is_directory)(const char *path), struct hp_placement *out, char *err, size_t err_len)
{
	struct text mounts = { 0 }, why = { 0 };
	char limit_text[32], free_text[32];
	double limit, free_bytes = (double)dpu->memory_free_bytes;
	int rc;

	out->dpu = 0;
	out->reason = NULL;
	if (!hp_offload_names(pod, name))
		return 0;
	if (dpu->unavailable && dpu->unavailable[0])
		return refuse(pod, name, dpu->unavailable, out, err, err_len);
	if ((rc = shares_pod_pid_namespace(spec, err, err_len)) != 0)
		return rc < 0 ? rc : refuse(pod, name, "the pod shares one process namespace, which cannot span host and DPU", out, err, err_len);
	rc = unshippable_mounts(spec, is_directory ? is_directory : is_directory_stat, &mounts, err, err_len);
	if (rc == 0 && mounts.len > 0) {
		text_adds(&why, "a writable volume cannot span host and DPU: ");
		text_add(&why, mounts.s, mounts.len);
		rc = why.oom ? placement_errf(err, err_len, -ENOMEM, "out of memory placing container %s", name)
			     : refuse(pod, name, why.s, out, err, err_len);
		free(why.s);
		free(mounts.s);
		return rc;
	}
	free(mounts.s);
	if (rc < 0)
		return rc;
	limit = memory_limit(spec);
	if (limit > free_bytes) {
		char text[128];

		js_number(free_bytes, free_text);
		js_number(limit, limit_text);
		snprintf(text, sizeof(text), "the DPU has %s bytes of memory free, the container's limit is %s", free_text, limit_text);
		return refuse(pod, name, text, out, err, err_len);
	}
	out->dpu = 1;
	return 0;
}
