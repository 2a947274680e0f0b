/*
 * The protobuf wire format, as far as the C programs need it: the shim's proxy
 * and launcher (src/shim) and the agent's client (src/agentapi). pb.c.
 */
#ifndef HETEROPOD_PROTO_PB_H
#define HETEROPOD_PROTO_PB_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct pb_field {
	uint32_t num;
	unsigned wire;
	const unsigned char *start; /* the tag */
	size_t total;		    /* tag to end of value */
	const unsigned char *val;   /* length-delimited value (wire type 2) */
	size_t vlen;
	uint64_t u;		    /* varint value (wire type 0) */
};

/* The field of message p[0, len) at *i: 1 and `f`, 0 at the end, or -EBADMSG. */
int pb_next(const unsigned char *p, size_t len, size_t *i, struct pb_field *f);

/* A protobuf writer that only counts while `p` is NULL: the same calls size a
 * message and then write it. */
struct pb_writer {
	unsigned char *p;
	size_t n;
};

void pbw_raw(struct pb_writer *w, const void *v, size_t len);
void pbw_varint(struct pb_writer *w, uint64_t v);
void pbw_bytes(struct pb_writer *w, uint32_t field, const void *v, size_t len);
void pbw_string(struct pb_writer *w, uint32_t field, const char *s); /* proto3: "" is not written */
void pbw_uint(struct pb_writer *w, uint32_t field, uint64_t v);	    /* nor is 0 */

static inline size_t varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static inline size_t put_varint(unsigned char *out, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		out[n++] = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	out[n++] = (unsigned char)v;
	return n;
}

static inline int is(const unsigned char *p, size_t n, const char *s)
{
	return p && n == strlen(s) && memcmp(p, s, n) == 0;
}

#endif
