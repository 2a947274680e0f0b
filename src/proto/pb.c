/*
 * The protobuf wire format, as far as the C programs need it (pb.h): fields read
 * one by one from a message, and a writer that sizes a message with the same
 * calls that write it. Bytes in, bytes out.
 */
#include "pb.h"

#include <errno.h>

static int pb_varint(const unsigned char *p, size_t len, size_t *i, uint64_t *v)
{
	uint64_t out = 0;
	unsigned shift = 0;

	for (;;) {
		unsigned char b;

		if (*i >= len || shift > 63)
			return -EBADMSG;
		b = p[(*i)++];
		out |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			break;
		shift += 7;
	}
	*v = out;
	return 0;
}

/* The field of message p[0, len) at *i: 1 and `f`, 0 at the end, or -EBADMSG. */
int pb_next(const unsigned char *p, size_t len, size_t *i, struct pb_field *f)
{
	size_t start = *i;
	uint64_t tag, n;

	if (*i >= len)
		return 0;
	if (pb_varint(p, len, i, &tag) < 0 || (tag >> 3) == 0 || (tag >> 3) > 0x1fffffff)
		return -EBADMSG;
	f->num = (uint32_t)(tag >> 3);
	f->wire = (unsigned)(tag & 7);
	f->val = NULL;
	f->vlen = 0;
	f->u = 0;
	switch (f->wire) {
	case 0:
		if (pb_varint(p, len, i, &f->u) < 0)
			return -EBADMSG;
		break;
	case 1:
		if (len - *i < 8)
			return -EBADMSG;
		*i += 8;
		break;
	case 5:
		if (len - *i < 4)
			return -EBADMSG;
		*i += 4;
		break;
	case 2:
		if (pb_varint(p, len, i, &n) < 0 || n > len - *i)
			return -EBADMSG;
		f->val = p + *i;
		f->vlen = (size_t)n;
		*i += (size_t)n;
		break;
	default: /* groups (3, 4) are not proto3; 6 and 7 do not exist */
		return -EBADMSG;
	}
	f->start = p + start;
	f->total = *i - start;
	return 1;
}

void pbw_raw(struct pb_writer *w, const void *v, size_t len)
{
	if (w->p && len)
		memcpy(w->p + w->n, v, len);
	w->n += len;
}

void pbw_varint(struct pb_writer *w, uint64_t v)
{
	unsigned char b[10];

	pbw_raw(w, b, put_varint(b, v));
}

void pbw_bytes(struct pb_writer *w, uint32_t field, const void *v, size_t len)
{
	pbw_varint(w, (uint64_t)field << 3 | 2);
	pbw_varint(w, len);
	pbw_raw(w, v, len);
}

/* proto3: an empty string is not written */
void pbw_string(struct pb_writer *w, uint32_t field, const char *s)
{
	if (s && *s)
		pbw_bytes(w, field, s, strlen(s));
}

void pbw_uint(struct pb_writer *w, uint32_t field, uint64_t v)
{
	if (v) {
		pbw_varint(w, (uint64_t)field << 3);
		pbw_varint(w, v);
	}
}
