/*
 * The C node daemon's log: logrus-style lines, as src/common/log.ts writes them
 * (`time="…" level=… msg="…" key=value …`), to stderr (the daemon's log) and,
 * for a pod's lines, to the pod's shim log fifo too (the sandbox bundle's `log`,
 * which containerd copies into its own log). A fifo without a reader drops the
 * line and is opened again on a later one; nothing here blocks or fails.
 */
#ifndef HETEROPOD_NODED_LOG_H
#define HETEROPOD_NODED_LOG_H

enum nd_level { ND_DEBUG, ND_INFO, ND_WARN, ND_ERROR };

/* A pod's shim log fifo (fd -1 until a reader is there). */
struct nd_fifo {
	char path[4096];
	int fd;
};

extern int nd_debug_enabled;

/*
 * One line: `msg`, then the fields of `ctx` (a NULL-ended list of key, value
 * pairs, or NULL), then those given (key, value, …, NULL). An empty value is
 * left out. `fifo`, when not NULL, gets the line too.
 */
void nd_log(struct nd_fifo *fifo, const char *const *ctx, enum nd_level level, const char *msg, ...) __attribute__((sentinel));

void nd_fifo_close(struct nd_fifo *f);

#endif
