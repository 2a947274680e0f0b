/*
 * A growable protobuf buffer for the C daemons: messages of any size built
 * field by field (pb.h's writer needs its room known first). A failed
 * allocation is remembered (`oom`) and every later write is a no-op, so a
 * caller checks once, at the end.
 */
#ifndef HETEROPOD_PROTO_PBUF_H
#define HETEROPOD_PROTO_PBUF_H

#include "pb.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct pbuf {
	unsigned char *p;
	size_t n, cap;
	int oom;
};

static inline int pbuf_reserve(struct pbuf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 256;
	unsigned char *p;

	if (b->oom)
		return -1;
	if (b->n + more <= b->cap)
		return 0;
	while (cap < b->n + more)
		cap *= 2;
	if (!(p = realloc(b->p, cap))) {
		b->oom = 1;
		return -1;
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

static inline void pbuf_raw(struct pbuf *b, const void *v, size_t len)
{
	if (len && pbuf_reserve(b, len) == 0) {
		memcpy(b->p + b->n, v, len);
		b->n += len;
	}
}

static inline void pbuf_varint(struct pbuf *b, uint64_t v)
{
	unsigned char tmp[10];

	pbuf_raw(b, tmp, put_varint(tmp, v));
}

/* Length-delimited field, written even when empty (bytes, messages). */
static inline void pbuf_bytes(struct pbuf *b, uint32_t field, const void *v, size_t len)
{
	pbuf_varint(b, (uint64_t)field << 3 | 2);
	pbuf_varint(b, len);
	pbuf_raw(b, v, len);
}

/* proto3 string and scalars: the default is not written. */
static inline void pbuf_string(struct pbuf *b, uint32_t field, const char *s)
{
	if (s && *s)
		pbuf_bytes(b, field, s, strlen(s));
}

static inline void pbuf_uint(struct pbuf *b, uint32_t field, uint64_t v)
{
	if (v) {
		pbuf_varint(b, (uint64_t)field << 3);
		pbuf_varint(b, v);
	}
}

/* A packed repeated uint32 field (none: not written). */
static inline void pbuf_packed(struct pbuf *b, uint32_t field, const uint16_t *v, size_t n)
{
	size_t len = 0;

	if (!n)
		return;
	for (size_t i = 0; i < n; i++)
		len += varint_len(v[i]);
	pbuf_varint(b, (uint64_t)field << 3 | 2);
	pbuf_varint(b, len);
	for (size_t i = 0; i < n; i++)
		pbuf_varint(b, v[i]);
}

static inline void pbuf_free(struct pbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->n = b->cap = 0;
	b->oom = 0;
}

#endif
