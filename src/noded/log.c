/* The C node daemon's log (log.h). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int nd_debug_enabled;

/* Workers log too (the host half, the mount watch): a pod's fifo is opened, written and closed under it. */
static pthread_mutex_t fifo_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const LEVELS[] = { "debug", "info", "warning", "error" };

/* A value as log.ts writes it: bare when it is [A-Za-z0-9_.-/:@+]+, else a JSON string. */
static size_t put_value(char *out, size_t cap, size_t at, const char *v, int force_quote)
{
	int bare = !force_quote && *v;

	for (const char *p = v; bare && *p; p++)
		bare = (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("_.-/:@+", *p);
	if (bare)
		return at + (size_t)snprintf(out + at, at < cap ? cap - at : 0, "%s", v);
	at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\"");
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p == '"' || *p == '\\')
			at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\\%c", *p);
		else if (*p == '\n')
			at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\\n");
		else if (*p < 0x20)
			at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\\u%04x", *p);
		else
			at += (size_t)snprintf(out + at, at < cap ? cap - at : 0, "%c", *p);
	}
	return at + (size_t)snprintf(out + at, at < cap ? cap - at : 0, "\"");
}

static void to_fifo(struct nd_fifo *f, const char *line, size_t len)
{
	if (f->fd < 0 && (f->fd = open(f->path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0)
		return; /* no reader yet */
	if (write(f->fd, line, len) < 0 && errno != EAGAIN) {
		close(f->fd);
		f->fd = -1;
	}
}

void nd_log(struct nd_fifo *fifo, const char *const *ctx, enum nd_level level, const char *msg, ...)
{
	char line[8192];
	size_t at, cap = sizeof(line) - 2;
	struct timespec ts;
	struct tm tm;
	va_list ap;

	if (level == ND_DEBUG && !nd_debug_enabled)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	at = (size_t)snprintf(line, cap, "time=\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\" level=%s msg=", tm.tm_year + 1900, tm.tm_mon + 1,
			      tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, LEVELS[level]);
	at = put_value(line, cap, at, msg, 1);
	for (const char *const *kv = ctx; kv && kv[0]; kv += 2) {
		if (!kv[1] || !kv[1][0])
			continue;
		at += (size_t)snprintf(line + at, at < cap ? cap - at : 0, " %s=", kv[0]);
		at = put_value(line, cap, at, kv[1], 0);
	}
	va_start(ap, msg);
	for (const char *k; (k = va_arg(ap, const char *));) {
		const char *v = va_arg(ap, const char *);

		if (!v || !v[0])
			continue;
		at += (size_t)snprintf(line + at, at < cap ? cap - at : 0, " %s=", k);
		at = put_value(line, cap, at, v, 0);
	}
	va_end(ap);
	if (at > cap)
		at = cap; /* cut: a line stays one line */
	line[at++] = '\n';
	if (write(2, line, at) < 0) {
		/* nowhere else to say it */
	}
	if (fifo) {
		pthread_mutex_lock(&fifo_lock);
		to_fifo(fifo, line, at);
		pthread_mutex_unlock(&fifo_lock);
	}
}

void nd_fifo_close(struct nd_fifo *f)
{
	pthread_mutex_lock(&fifo_lock);
	if (f->fd >= 0)
		close(f->fd);
	f->fd = -1;
	pthread_mutex_unlock(&fifo_lock);
}
