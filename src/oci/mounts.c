/*
 * An OCI spec's mounts (mounts.h), as src/oci/mounts.ts reads them. The two
 * regular expressions are matched by hand: each is anchored at the end, so the
 * text is read backwards from there.
 */
#include "mounts.h"

#include <errno.h>
#include <string.h>

int hp_oci_is_bind_mount(json_t *m)
{
	json_t *options;

	if (!m || json_is_null(m))
		return -EINVAL;
	if (hp_json_is(hp_json_member(m, "type"), "bind"))
		return 1;
	options = hp_json_member(m, "options");
	if (!options || json_is_null(options))
		return 0;
	if (!json_is_array(options))
		return -EINVAL;
	for (size_t i = 0; i < json_array_size(options); i++) {
		json_t *o = json_array_get(options, i);

		if (hp_json_is(o, "bind") || hp_json_is(o, "rbind"))
			return 1;
	}
	return 0;
}

/* Where the `/[^/]+` ending at `end` begins (its '/'), or `end` when there is none. */
static size_t segment_before(const char *s, size_t end)
{
	size_t slash = end;

	while (slash > 0 && s[slash - 1] != '/')
		slash--;
	/* s[slash, end) holds no '/'; s[slash - 1] is one, when slash > 0 */
	if (slash == 0 || slash == end)
		return end;
	return slash - 1;
}

/* Whether s[0, end) ends with `suffix`. */
static int ends_with(const char *s, size_t end, const char *suffix)
{
	size_t n = strlen(suffix);

	return end >= n && memcmp(s + end - n, suffix, n) == 0;
}

int hp_oci_sandbox_shm_source(const char *s, size_t len)
{
	size_t at;

	if (!ends_with(s, len, "/shm"))
		return 0;
	at = segment_before(s, len - 4);
	return at != len - 4 && ends_with(s, at, "/sandboxes");
}

int hp_oci_termination_log_source(const char *s, size_t len)
{
	size_t at;

	/* [0-9a-f]{8}$ after a '/' */
	if (len < 9 || s[len - 9] != '/')
		return 0;
	for (size_t i = len - 8; i < len; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	at = segment_before(s, len - 9); /* the container's name */
	if (at == len - 9 || !ends_with(s, at, "/containers"))
		return 0;
	at -= strlen("/containers");
	return segment_before(s, at) != at && ends_with(s, segment_before(s, at), "/pods"); /* the pod's uid */
}

int hp_oci_is_sandbox_shm(json_t *m)
{
	json_t *source = hp_json_member(m, "source");

	return hp_json_is(hp_json_member(m, "destination"), "/dev/shm") && json_is_string(source) &&
	       hp_oci_sandbox_shm_source(json_string_value(source), json_string_length(source));
}

int hp_oci_is_termination_log(json_t *m)
{
	json_t *source;
	int bind = hp_oci_is_bind_mount(m);

	if (bind <= 0)
		return bind;
	source = hp_json_member(m, "source");
	if (!hp_json_truthy(source))
		return 0;
	if (hp_json_is(hp_json_member(m, "destination"), HP_OCI_DEFAULT_TERMINATION_MESSAGE_PATH))
		return 1;
	return json_is_string(source) && hp_oci_termination_log_source(json_string_value(source), json_string_length(source));
}
