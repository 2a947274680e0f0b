/*
 * Window API tests for libxpu through its public header, built with the library
 * sources (plain and AddressSanitizer) and run by test/unit/xpu-rings.test.ts.
 * No namespace or TAP device is created: ports are only asked to fail.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layout.h"
#include "xpu.h"

static int failures;
static char dir[] = "/dev/shm/heteropod";

#define CHECK(cond, ...)                                                                \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
			fprintf(stderr, __VA_ARGS__);                                   \
			fprintf(stderr, "\n");                                          \
			failures++;                                                     \
		}                                                                       \
	} while (0)

static void path_for(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/hpx-ctest-%d-%s.xpu", dir, (int)getpid(), name);
}

static void patch(const char *path, off_t off, const void *bytes, size_t n)
{
	int fd = open(path, O_RDWR);
	if (fd < 0 || pwrite(fd, bytes, n, off) != (ssize_t)n) {
		perror("patch");
		exit(2);
	}
	close(fd);
}

int main(void)
{
	char p[256], q[256];
	xpu_window *w = NULL, *w2 = NULL;
	xpu_port *port = NULL;
	struct xpu_stats st;
	struct stat sb;
	int rc;

	CHECK(xpu_stats_size() == sizeof(struct xpu_stats), "stats size");

	path_for(p, sizeof(p), "bad");
	CHECK(xpu_window_create(p, 300000, &w) == -EINVAL, "ring not a power of two");
	CHECK(xpu_window_create(p, 128 * 1024, &w) == -EINVAL, "ring too small");
	CHECK(xpu_window_create(p, 128u * 1024 * 1024, &w) == -EINVAL, "ring too large");
	CHECK(stat(p, &sb) < 0 && errno == ENOENT, "no file left by a refused create");
	CHECK(xpu_window_create(NULL, 0, &w) == -EINVAL, "NULL path");

	path_for(p, sizeof(p), "ok");
	rc = xpu_window_create(p, XPU_RING_MIN, &w);
	CHECK(rc == 0, "create: %d", rc);
	CHECK(stat(p, &sb) == 0 && sb.st_size == (off_t)xpu_window_bytes(XPU_RING_MIN), "file size");
	CHECK(xpu_window_create(p, XPU_RING_MIN, &w2) == -EEXIST, "create over an existing window");
	rc = xpu_window_attach(p, &w2);
	CHECK(rc == 0, "attach: %d", rc);
	rc = xpu_window_stats(p, &st);
	CHECK(rc == 0 && st.version == XPU_VERSION && st.ring_bytes == XPU_RING_MIN && !st.link_up &&
		      st.frame_max == XPU_FRAME_MAX,
	      "stats of a new window");

	/* Ports that cannot open leave the side free to claim. */
	CHECK(xpu_port_open(w, 2, "/proc/self/ns/net", "xpu0", XPU_MODE_ELASTIC, &port) == -EINVAL, "bad side");
	CHECK(xpu_port_open(w, XPU_SIDE_HOST, "/proc/self/ns/net", "xpu0", 7, &port) == -EINVAL, "bad mode");
	CHECK(xpu_port_open(w, XPU_SIDE_HOST, "/proc/self/ns/net", "a/b", XPU_MODE_ELASTIC, &port) == -EINVAL,
	      "bad TAP name");
	CHECK(xpu_port_open(w, XPU_SIDE_HOST, "/proc/self/ns/net", "0123456789abcdef", XPU_MODE_ELASTIC, &port) ==
		      -EINVAL,
	      "TAP name too long");
	CHECK(xpu_port_open(w, XPU_SIDE_HOST, "/nonexistent/netns", "xpu0", XPU_MODE_ELASTIC, &port) == -ENOENT,
	      "missing namespace");
	CHECK(xpu_port_open(w, XPU_SIDE_HOST, "/etc/hostname", "xpu0", XPU_MODE_ELASTIC, &port) == -EINVAL,
	      "not a namespace");
	CHECK(xpu_port_open(w, XPU_SIDE_DPU, "/proc/self/ns/uts", "xpu0", XPU_MODE_POLL, &port) == -EINVAL,
	      "another kind of namespace");
	CHECK(port == NULL, "no handle on failure");
	CHECK(xpu_window_stats(p, &st) == 0 && st.side[0].state != 1 && st.side[1].state != 1, "sides released");
	CHECK(xpu_window_close(w2) == 0, "close attached");
	CHECK(xpu_window_close(w) == 0, "close created");
	CHECK(xpu_window_close(NULL) == -EINVAL, "close NULL");

	/* Wrong magic, version, size. */
	uint32_t v = 99;
	path_for(q, sizeof(q), "version");
	CHECK(xpu_window_create(q, XPU_RING_MIN, &w) == 0 && xpu_window_close(w) == 0, "create");
	patch(q, offsetof(struct xpu_hdr, version), &v, sizeof(v));
	CHECK(xpu_window_attach(q, &w) == -EPROTONOSUPPORT, "wrong version");
	CHECK(xpu_window_stats(q, &st) == -EPROTONOSUPPORT, "stats: wrong version");
	patch(q, offsetof(struct xpu_hdr, magic), "JUNK", 4);
	CHECK(xpu_window_attach(q, &w) == -EBADMSG, "wrong magic");
	unlink(q);

	path_for(q, sizeof(q), "size");
	CHECK(xpu_window_create(q, XPU_RING_MIN, &w) == 0 && xpu_window_close(w) == 0, "create");
	CHECK(truncate(q, 4096) == 0, "truncate");
	CHECK(xpu_window_attach(q, &w) == -EMSGSIZE, "short file");
	CHECK(truncate(q, 0) == 0, "truncate");
	CHECK(xpu_window_attach(q, &w) == -EBADMSG, "empty file");
	unlink(q);
	CHECK(xpu_window_attach(dir, &w) == -EISDIR || xpu_window_attach(dir, &w) == -EBADMSG, "a directory");
	CHECK(xpu_window_attach("/nonexistent.xpu", &w) == -ENOENT, "missing window");

	unlink(p);
	if (failures) {
		fprintf(stderr, "%d failure(s)\n", failures);
		return 1;
	}
	printf("all window tests passed\n");
	return 0;
}
