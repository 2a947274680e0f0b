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
/* ttrpc 1.2's streams: a stream's messages after its request, and the flags. */
#define HP_TTRPC_DATA 3u
#define HP_TTRPC_REMOTE_CLOSED 0x1u /* the sender sends nothing more on the stream */
#define HP_TTRPC_REMOTE_OPEN 0x2u   /* on a request: the sender will send data frames */
#define HP_TTRPC_NO_DATA 0x4u	    /* the frame carries no message */

static inline uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A frame header: data length, stream id, type, flags. */
static inline void put_header_flags(unsigned char *out, size_t dlen, uint32_t stream, unsigned type, unsigned flags)
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
	out[9] = (unsigned char)flags;
}

/* A frame header with no flags (a unary call's request or response). */
static inline void put_header(unsigned char *out, size_t dlen, uint32_t stream, unsigned type)
{
	put_header_flags(out, dlen, stream, type, 0);
}

#endif
