/*
 * What `start` learns from containerd's inputs besides its flags: the config
 * path out of the runtime options on stdin (a protobuf Any holding
 * runtimeoptions.v1.Options), and from the bundle's config.json the pod the
 * task belongs to and whether, and how, the pod offloads.
 *
 * Contract shared with src/shim (options.ts, paths.ts):
 *   group  = annotation io.kubernetes.cri.sandbox-id of ./config.json, else the id
 *   offload: the key heteropod.io/offload present (any value, even empty); its
 *   policy heteropod.io/offload-policy, "prefer" when absent.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "launcher.h"
#include "proxy-internal.h"

#define SANDBOX_ID_KEY "\"io.kubernetes.cri.sandbox-id\""
#define OFFLOAD_KEY "\"heteropod.io/offload\""
#define OFFLOAD_POLICY_KEY "\"heteropod.io/offload-policy\""
#define BUNDLE_SPEC "config.json"

/* ---- runtime options ------------------------------------------------------- */

/* Length-delimited field `want` of message p[0, len), its first occurrence
 * (read with the proxy's codec); 0 if absent or malformed. */
static int first_bytes_field(const unsigned char *p, size_t len, unsigned want, const unsigned char **val, size_t *vlen)
{
	struct pb_field f;
	size_t i = 0;

	while (pb_next(p, len, &i, &f) == 1) {
		if (f.num == want && f.wire == 2) {
			*val = f.val;
			*vlen = f.vlen;
			return 1;
		}
	}
	return 0;
}

char *config_path_from_options(const unsigned char *any, size_t len)
{
	const unsigned char *type, *value, *path;
	size_t tlen, vlen, plen;
	static const char suffix[] = "runtimeoptions.v1.Options";

	if (!first_bytes_field(any, len, 1, &type, &tlen) || tlen < sizeof(suffix) - 1 ||
	    memcmp(type + tlen - (sizeof(suffix) - 1), suffix, sizeof(suffix) - 1) != 0)
		return strdup("");
	if (!first_bytes_field(any, len, 2, &value, &vlen) || !first_bytes_field(value, vlen, 2, &path, &plen))
		return strdup("");
	return strndup((const char *)path, plen);
}

/* ---- the bundle's annotations ---------------------------------------------- */

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
 * (followed by a colon, not inside a JSON string), as a new string. NULL with
 * errno 0 when absent or not a plain string, NULL with ENOMEM when it cannot be
 * copied. Escapes are not decoded: annotation values the shim reads (ids,
 * policies) have none.
 */
static char *annotation_of(const char *spec, const char *quoted_key)
{
	const char *p, *q, *end;

	errno = 0;
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

/*
 * The policy as the node daemon reads it (src/placement/annotations.ts): exactly
 * "prefer" or "require", nothing trimmed. The error quotes at most 64 characters
 * of the value, as the spec has it.
 */
static int check_policy(const char *policy, char *why, size_t why_len)
{
	size_t len = strlen(policy);

	if (strcmp(policy, "prefer") == 0 || strcmp(policy, "require") == 0)
		return 0;
	if (len <= 64)
		snprintf(why, why_len, "annotation heteropod.io/offload-policy=\"%s\": must be \"prefer\" or \"require\", exactly", policy);
	else
		snprintf(why, why_len, "annotation heteropod.io/offload-policy=\"%.64s\"... (%zu characters): must be \"prefer\" or \"require\", exactly", policy, len);
	return -EINVAL;
}

int group_of(const char *id, struct task_group *out, char *why, size_t why_len)
{
	int err;

	char *spec = read_file(BUNDLE_SPEC), *group = NULL, *policy = NULL;

	if (!spec) {
		snprintf(why, why_len, "read bundle spec %s", BUNDLE_SPEC);
		return -errno;
	}
	if (has_offload_annotation(spec)) {
		policy = annotation_of(spec, OFFLOAD_POLICY_KEY);
		if (!policy && errno == 0)
			policy = strdup("prefer");
		if (!policy)
			goto nomem;
		if ((err = check_policy(policy, why, why_len)) < 0) {
			free(policy);
			free(spec);
			return err;
		}
	}
	group = annotation_of(spec, SANDBOX_ID_KEY);
	if (!group && errno != 0)
		goto nomem;
	if (!group || !*group) {
		free(group);
		group = strdup(id);
		if (!group)
			goto nomem;
	}
	free(spec);
	out->group = group;
	out->offload_policy = policy;
	return 0;

nomem:
	snprintf(why, why_len, "annotations of bundle spec %s", BUNDLE_SPEC);
	free(policy);
	free(spec);
	return -ENOMEM;
}

void task_group_free(struct task_group *g)
{
	free(g->group);
	free(g->offload_policy);
	g->group = g->offload_policy = NULL;
}
