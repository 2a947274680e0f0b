/*
 * The proxy's codec (proxy.h, proxy-internal.h): protobuf fields read and
 * written, ttrpc headers, the Create rewrite for runc's shim, and the node
 * daemon's messages (Attach, the `placed` field of its answers). Bytes in,
 * bytes out: no I/O, so every function is tested on buffers.
 */
#include "proxy-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RUNC_OPTIONS_TYPE "containerd.runc.v1.Options"

/* ---- the Create rewrite ---------------------------------------------------- */

size_t hp_rewrite_bound(size_t len, size_t options_len)
{
	/* The payload's length varint grows by at most 9 bytes; the options field
	 * adds its tag, a length varint (at most 10) and its bytes. */
	return len + 9 + 1 + 10 + options_len;
}

/* 0, or -EBADMSG when the envelope (data of a frame) does not decode. */
int envelope_read(const unsigned char *data, size_t dlen, struct envelope *e)
{
	struct pb_field f;
	size_t i = 0;
	int r;

	memset(e, 0, sizeof(*e));
	while ((r = pb_next(data, dlen, &i, &f)) > 0) {
		if (f.wire != 2)
			continue;
		if (f.num == 1) {
			e->service = f.val;
			e->slen = f.vlen;
		} else if (f.num == 2) {
			e->method = f.val;
			e->mlen = f.vlen;
		} else if (f.num == 3) {
			e->payload_tag = f.start;
			e->payload = f.val;
			e->plen = f.vlen;
			e->payloads_total += f.total;
		}
	}
	return r < 0 ? -EBADMSG : 0;
}

int hp_rewrite_create(const unsigned char *frame, size_t len, const unsigned char *options, size_t options_len,
		      unsigned char *out, size_t cap, size_t *out_len)
{
	const unsigned char *data = frame + HP_TTRPC_HEADER, *payload;
	size_t dlen, i = 0, plen, kept = 0;
	size_t new_payload, new_dlen, o;
	struct envelope env;
	struct pb_field f;
	int r, had_options = 0;

	if (len < HP_TTRPC_HEADER || be32(frame) != len - HP_TTRPC_HEADER)
		return -EINVAL;
	dlen = len - HP_TTRPC_HEADER;
	if (frame[8] != HP_TTRPC_REQUEST)
		return 0;
	if (envelope_read(data, dlen, &env) < 0 || !is(env.service, env.slen, TASK_SERVICE) || !is(env.method, env.mlen, "Create") ||
	    !env.payload_tag)
		return 0;
	payload = env.payload;
	plen = env.plen;
	/* CreateTaskRequest: everything but options = 10 is kept. */
	i = 0;
	while ((r = pb_next(payload, plen, &i, &f)) > 0) {
		if (f.num == 10)
			had_options = 1;
		else
			kept += f.total;
	}
	if (r < 0 || (!had_options && !options))
		return 0;
	new_payload = kept + (options ? 1 + varint_len(options_len) + options_len : 0);
	new_dlen = dlen - env.payloads_total + 1 + varint_len(new_payload) + new_payload;
	if (new_dlen > HP_TTRPC_MAX_DATA)
		return -EMSGSIZE;
	*out_len = HP_TTRPC_HEADER + new_dlen;
	if (cap < *out_len)
		return -ENOSPC;

	out[0] = (unsigned char)(new_dlen >> 24);
	out[1] = (unsigned char)(new_dlen >> 16);
	out[2] = (unsigned char)(new_dlen >> 8);
	out[3] = (unsigned char)new_dlen;
	memcpy(out + 4, frame + 4, HP_TTRPC_HEADER - 4); /* stream id, type, flags */
	o = HP_TTRPC_HEADER;
	i = 0;
	while (pb_next(data, dlen, &i, &f) > 0) {
		size_t j = 0;
		struct pb_field g;

		if (f.num != 3 || f.wire != 2) {
			memcpy(out + o, f.start, f.total);
			o += f.total;
			continue;
		}
		if (f.start != env.payload_tag)
			continue; /* an earlier payload, overridden by the last */
		out[o++] = (3 << 3) | 2;
		o += put_varint(out + o, new_payload);
		while (pb_next(payload, plen, &j, &g) > 0) {
			if (g.num == 10)
				continue;
			memcpy(out + o, g.start, g.total);
			o += g.total;
		}
		if (options) {
			out[o++] = (10 << 3) | 2;
			o += put_varint(out + o, options_len);
			memcpy(out + o, options, options_len);
			o += options_len;
		}
	}
	return 1;
}

int hp_runc_options(const char *binary_name, const char *root, int systemd_cgroup, unsigned char *out, size_t cap)
{
	size_t blen = strlen(binary_name), rlen = strlen(root), tlen = strlen(RUNC_OPTIONS_TYPE);
	size_t value = (blen ? 1 + varint_len(blen) + blen : 0) + (rlen ? 1 + varint_len(rlen) + rlen : 0) + (systemd_cgroup ? 2 : 0);
	size_t o = 0;

	if (value == 0)
		return 0;
	if (1 + varint_len(tlen) + tlen + 1 + varint_len(value) + value > cap || cap > INT32_MAX)
		return -ENOSPC;
	out[o++] = (1 << 3) | 2; /* Any.type_url */
	o += put_varint(out + o, tlen);
	memcpy(out + o, RUNC_OPTIONS_TYPE, tlen);
	o += tlen;
	out[o++] = (2 << 3) | 2; /* Any.value */
	o += put_varint(out + o, value);
	if (blen) {
		out[o++] = (6 << 3) | 2;
		o += put_varint(out + o, blen);
		memcpy(out + o, binary_name, blen);
		o += blen;
	}
	if (rlen) {
		out[o++] = (7 << 3) | 2;
		o += put_varint(out + o, rlen);
		memcpy(out + o, root, rlen);
		o += rlen;
	}
	if (systemd_cgroup) {
		out[o++] = 9 << 3;
		out[o++] = 1;
	}
	return (int)o;
}

/* ---- the node daemon's messages ----------------------------------------------- */

static void attach_request(struct pb_writer *w, const struct hp_attach *a)
{
	pbw_string(w, 1, a->namespace);
	pbw_string(w, 2, a->group);
	pbw_string(w, 3, a->containerd_address);
	pbw_string(w, 4, a->ttrpc_address);
	pbw_string(w, 5, a->runc_address);
	pbw_string(w, 6, a->publish_binary);
	pbw_string(w, 7, a->bundle);
	pbw_string(w, 8, a->config_path);
	pbw_uint(w, 9, a->proxy_pid);
	pbw_uint(w, 10, a->debug ? 1 : 0);
}

int hp_attach_frame(const struct hp_attach *a, unsigned char *out, size_t cap)
{
	struct pb_writer size = { NULL, 0 }, w;
	size_t payload, dlen;

	attach_request(&size, a);
	payload = size.n;
	size.n = 0;
	pbw_string(&size, 1, HP_NODE_SERVICE);
	pbw_string(&size, 2, "Attach");
	pbw_varint(&size, 3 << 3 | 2);
	pbw_varint(&size, payload);
	dlen = size.n + payload;
	if (dlen > HP_TTRPC_MAX_DATA)
		return -EMSGSIZE;
	if (cap < HP_TTRPC_HEADER + dlen || HP_TTRPC_HEADER + dlen > INT32_MAX)
		return -ENOSPC;
	put_header(out, dlen, HP_ATTACH_STREAM, HP_TTRPC_REQUEST);
	w = (struct pb_writer){ out + HP_TTRPC_HEADER, 0 };
	pbw_string(&w, 1, HP_NODE_SERVICE);
	pbw_string(&w, 2, "Attach");
	pbw_varint(&w, 3 << 3 | 2);
	pbw_varint(&w, payload);
	attach_request(&w, a);
	return (int)(HP_TTRPC_HEADER + w.n);
}

int hp_take_placed(unsigned char *frame, size_t *len)
{
	unsigned char *data = frame + HP_TTRPC_HEADER;
	size_t dlen, i = 0, o = 0;
	struct pb_field f;
	uint64_t placed = 0;
	int r;

	if (*len < HP_TTRPC_HEADER || be32(frame) != *len - HP_TTRPC_HEADER || frame[8] != HP_TTRPC_RESPONSE)
		return -EINVAL;
	dlen = *len - HP_TTRPC_HEADER;
	while ((r = pb_next(data, dlen, &i, &f)) > 0) {
		if (f.num == HP_PLACED_FIELD && f.wire == 0)
			placed = f.u;
	}
	if (r < 0)
		return -EBADMSG;
	if (placed > INT32_MAX)
		placed = INT32_MAX; /* neither 1 nor 2: no placement the proxy knows */
	/* Second pass: every field but 15 slides down over the removed ones. */
	i = 0;
	while (pb_next(data, dlen, &i, &f) > 0) {
		if (f.num == HP_PLACED_FIELD && f.wire == 0)
			continue;
		memmove(data + o, f.start, f.total);
		o += f.total;
	}
	put_header(frame, o, be32(frame + 4), HP_TTRPC_RESPONSE); /* flags: 0 for unary */
	*len = HP_TTRPC_HEADER + o;
	return (int)placed;
}
