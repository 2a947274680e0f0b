/*
 * What annotations.c and placement.c share, hidden from whatever links them.
 */
#ifndef HETEROPOD_PLACEMENT_INTERNAL_H
#define HETEROPOD_PLACEMENT_INTERNAL_H

#include <stddef.h>

#define HP_HIDDEN __attribute__((visibility("hidden")))

/*
 * Writes the message into err (if err_len > 0), cut on a UTF-8 character
 * boundary when it does not fit, and returns `code`.
 */
HP_HIDDEN int placement_errf(char *err, size_t err_len, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
