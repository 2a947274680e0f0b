/*
 * The C unit tests' check: counts every check, prints each failing one as
 * "FAIL <what>" on stdout, and leaves the verdict to the test's main
 * (`failures`, `checks`). One copy per test program (static).
 */
#ifndef HETEROPOD_TEST_CHECK_H
#define HETEROPOD_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int failures, checks;

__attribute__((format(printf, 2, 3), unused)) static void check(int ok, const char *fmt, ...)
{
	va_list ap;

	checks++;
	if (ok)
		return;
	failures++;
	fputs("FAIL ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

#endif
