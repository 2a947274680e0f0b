/*
 * What the C programs need to know about an OCI spec's mounts, in one place: the
 * port of src/oci/mounts.ts for placement (src/placement) and the node daemon's
 * shipped mounts (src/noded/mounts.c). A mount is one element of the spec's
 * "mounts" as jansson parsed it, read the way the TS reads the parsed JSON:
 * `m.type === 'bind'` compares type and value, `(m.options ?? []).some(...)`
 * throws a TypeError for options that are neither absent, null nor an array
 * (-EINVAL here). Regular expressions are tested on a source's text; what text
 * a source of another JSON type has (String()) is the caller's to say.
 */
#ifndef HETEROPOD_OCI_MOUNTS_H
#define HETEROPOD_OCI_MOUNTS_H

#include <jansson.h>
#include <string.h>
#include <stddef.h>

/* The kubelet's default terminationMessagePath. */
#define HP_OCI_DEFAULT_TERMINATION_MESSAGE_PATH "/dev/termination-log"

/* What the kubelet reads of a termination-message file: its last 4096 bytes
 * (kubecontainer.MaxContainerTerminationMessageLength). */
#define HP_OCI_MAX_TERMINATION_MESSAGE_BYTES 4096

/* ---- JSON as the TS reads it (the OCI spec's fields) ---- */

/* v[key] of an object; NULL for anything else or absent. */
static inline json_t *hp_json_member(json_t *v, const char *key)
{
	return json_is_object(v) ? json_object_get(v, key) : NULL;
}

/* `v === 'literal'`. */
static inline int hp_json_is(json_t *v, const char *literal)
{
	return json_is_string(v) && json_string_length(v) == strlen(literal) && strcmp(json_string_value(v), literal) == 0;
}

/* Boolean(v) of a JSON value; absent is false. */
static inline int hp_json_truthy(json_t *v)
{
	switch (v ? json_typeof(v) : JSON_NULL) {
	case JSON_STRING: return json_string_length(v) > 0;
	case JSON_INTEGER:
	case JSON_REAL: return json_number_value(v) != 0;
	case JSON_TRUE:
	case JSON_ARRAY:
	case JSON_OBJECT: return 1;
	default: return 0;
	}
}

/*
 * isBindMount: type "bind", or "bind" or "rbind" among the options. 1 or 0;
 * -EINVAL where the TS throws: a null mount, or (type not "bind") options that
 * are neither absent, null nor an array.
 */
int hp_oci_is_bind_mount(json_t *m);

/* SANDBOX_SHM, /\/sandboxes\/[^/]+\/shm$/: CRI's per-sandbox /dev/shm, by its
 * host path (`len` bytes at s). */
int hp_oci_sandbox_shm_source(const char *s, size_t len);

/*
 * isSandboxShm of a mount whose source is a string, absent or null:
 * destination "/dev/shm" and a source SANDBOX_SHM matches. A source of another
 * JSON type counts as not matching (the caller that must be exact for it tests
 * String(source) with hp_oci_sandbox_shm_source).
 */
int hp_oci_is_sandbox_shm(json_t *m);

/* KUBELET_TERMINATION_LOG, /\/pods\/[^/]+\/containers\/[^/]+\/[0-9a-f]{8}$/:
 * the kubelet's per-instance termination-message file, by its host path. */
int hp_oci_termination_log_source(const char *s, size_t len);

/*
 * isTerminationLog: a bind mount with a truthy source (Boolean()), at the
 * default terminationMessagePath or from a kubelet termination-message file.
 * 1, 0, or -EINVAL as hp_oci_is_bind_mount. A source of another JSON type than
 * string never matches the kubelet's pattern here.
 */
int hp_oci_is_termination_log(json_t *m);

/* terminationMessageTail: where the part the kubelet would read begins in a
 * message of `len` bytes. */
static inline size_t hp_oci_termination_message_tail(size_t len)
{
	return len > HP_OCI_MAX_TERMINATION_MESSAGE_BYTES ? len - HP_OCI_MAX_TERMINATION_MESSAGE_BYTES : 0;
}

#endif
