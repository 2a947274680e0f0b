/*
 * A buffer grown to hold `need` bytes (doubling from 4 KiB), for the C daemons'
 * connection buffers. 0, or -ENOMEM with the buffer as it was.
 */
#ifndef HETEROPOD_COMMON_GROW_H
#define HETEROPOD_COMMON_GROW_H

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

static inline int hp_grow(unsigned char **buf, size_t *cap, size_t need)
{
	size_t n = *cap ? *cap : 4096;
	unsigned char *p;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	if (!(p = realloc(*buf, n)))
		return -ENOMEM;
	*buf = p;
	*cap = n;
	return 0;
}

#endif
