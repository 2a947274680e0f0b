/*
 * ttrpc's frame, as the C programs read and write it: a 10-byte header (data
 * length, stream id, both big-endian; type; flags), then the data.
 */
#ifndef HETEROPOD_TTRPC_FRAME_H
#define HETEROPOD_TTRPC_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* ttrpc framing (ttrpc 1.1, which containerd 1.6 uses). */
#define HP_TTRPC_HEADER 10u
#define HP_TTRPC_MAX_DATA (4u << 20)
#define HP_TTRPC_REQUEST 1u
#define HP_TTRPC_RESPONSE 2u

static inline uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A frame header: data length, stream id, type, flags 0. */
static inline void put_header(unsigned char *out, size_t dlen, uint32_t stream, unsigned type)
{
	out[0] = (unsigned char)(dlen >> 24);
	out[1] = (unsigned char)(dlen >> 16);
	out[2] = (unsigned char)(dlen >> 8);
	out[3] = (unsigned char)dlen;
	out[4] = (unsigned char)(stream >> 24);
	out[5] = (unsigned char)(stream >> 16);
	out[6] = (unsigned char)(stream >> 8);
	out[7] = (unsigned char)stream;
	out[8] = (unsigned char)type;
	out[9] = 0;
}

#endif
