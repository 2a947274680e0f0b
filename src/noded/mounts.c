/*
 * An offloaded container's shipped mounts (mounts.h): which, their content now
 * and its encoding, and the termination message written back, as
 * src/shim/mounted-files.ts has them. Where the TS leans on Node (statSync,
 * readFileSync, execFileSync, an error's message), this does what Node does,
 * so that the messages read the same. Their fingerprints are fingerprint.c's.
 */
#include "mounts.h"

#include "../oci/mounts.h"
#include "mounts-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ---- messages ------------------------------------------------------------------ */

int nd_mounts_errf(char *err, size_t err_len, int code, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!err || err_len == 0)
		return code;
	va_start(ap, fmt);
	n = vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n >= err_len) {
		/* cut before the last character when the end split it */
		size_t end = err_len - 1, lead = end;

		while (lead > 0 && ((unsigned char)err[lead - 1] & 0xc0) == 0x80)
			lead--;
		if (lead > 0) {
			unsigned char c = (unsigned char)err[lead - 1];
			size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;

			if (end - (lead - 1) < need)
				end = lead - 1;
		}
		err[end] = '\0';
	}
	return code;
}

/* libuv's name and text of each errno Node knows (util.getSystemErrorMap()). */
static const struct {
	int e;
	const char *name, *text;
} UV_ERRORS[] = {
	{ EPERM, "EPERM", "operation not permitted" },
	{ ENOENT, "ENOENT", "no such file or directory" },
	{ ESRCH, "ESRCH", "no such process" },
	{ EINTR, "EINTR", "interrupted system call" },
	{ EIO, "EIO", "i/o error" },
	{ ENXIO, "ENXIO", "no such device or address" },
	{ E2BIG, "E2BIG", "argument list too long" },
	{ EBADF, "EBADF", "bad file descriptor" },
	{ EAGAIN, "EAGAIN", "resource temporarily unavailable" },
	{ ENOMEM, "ENOMEM", "not enough memory" },
	{ EACCES, "EACCES", "permission denied" },
	{ EFAULT, "EFAULT", "bad address in system call argument" },
	{ EBUSY, "EBUSY", "resource busy or locked" },
	{ EEXIST, "EEXIST", "file already exists" },
	{ EXDEV, "EXDEV", "cross-device link not permitted" },
	{ ENODEV, "ENODEV", "no such device" },
	{ ENOTDIR, "ENOTDIR", "not a directory" },
	{ EISDIR, "EISDIR", "illegal operation on a directory" },
	{ EINVAL, "EINVAL", "invalid argument" },
	{ ENFILE, "ENFILE", "file table overflow" },
	{ EMFILE, "EMFILE", "too many open files" },
	{ ENOTTY, "ENOTTY", "inappropriate ioctl for device" },
	{ ETXTBSY, "ETXTBSY", "text file is busy" },
	{ EFBIG, "EFBIG", "file too large" },
	{ ENOSPC, "ENOSPC", "no space left on device" },
	{ ESPIPE, "ESPIPE", "invalid seek" },
	{ EROFS, "EROFS", "read-only file system" },
	{ EMLINK, "EMLINK", "too many links" },
	{ EPIPE, "EPIPE", "broken pipe" },
	{ ERANGE, "ERANGE", "result too large" },
	{ ENAMETOOLONG, "ENAMETOOLONG", "name too long" },
	{ ENOSYS, "ENOSYS", "function not implemented" },
	{ ENOTEMPTY, "ENOTEMPTY", "directory not empty" },
	{ ELOOP, "ELOOP", "too many symbolic links encountered" },
	{ EUNATCH, "EUNATCH", "protocol driver not attached" },
	{ ENODATA, "ENODATA", "no data available" },
	{ ENONET, "ENONET", "machine is not on the network" },
	{ EPROTO, "EPROTO", "protocol error" },
	{ EOVERFLOW, "EOVERFLOW", "value too large for defined data type" },
	{ EILSEQ, "EILSEQ", "illegal byte sequence" },
	{ ENOTSOCK, "ENOTSOCK", "socket operation on non-socket" },
	{ EDESTADDRREQ, "EDESTADDRREQ", "destination address required" },
	{ EMSGSIZE, "EMSGSIZE", "message too long" },
	{ EPROTOTYPE, "EPROTOTYPE", "protocol wrong type for socket" },
	{ ENOPROTOOPT, "ENOPROTOOPT", "protocol not available" },
	{ EPROTONOSUPPORT, "EPROTONOSUPPORT", "protocol not supported" },
	{ ESOCKTNOSUPPORT, "ESOCKTNOSUPPORT", "socket type not supported" },
	{ ENOTSUP, "ENOTSUP", "operation not supported on socket" },
	{ EAFNOSUPPORT, "EAFNOSUPPORT", "address family not supported" },
	{ EADDRINUSE, "EADDRINUSE", "address already in use" },
	{ EADDRNOTAVAIL, "EADDRNOTAVAIL", "address not available" },
	{ ENETDOWN, "ENETDOWN", "network is down" },
	{ ENETUNREACH, "ENETUNREACH", "network is unreachable" },
	{ ECONNABORTED, "ECONNABORTED", "software caused connection abort" },
	{ ECONNRESET, "ECONNRESET", "connection reset by peer" },
	{ ENOBUFS, "ENOBUFS", "no buffer space available" },
	{ EISCONN, "EISCONN", "socket is already connected" },
	{ ENOTCONN, "ENOTCONN", "socket is not connected" },
	{ ESHUTDOWN, "ESHUTDOWN", "cannot send after transport endpoint shutdown" },
	{ ETIMEDOUT, "ETIMEDOUT", "connection timed out" },
	{ ECONNREFUSED, "ECONNREFUSED", "connection refused" },
	{ EHOSTDOWN, "EHOSTDOWN", "host is down" },
	{ EHOSTUNREACH, "EHOSTUNREACH", "host is unreachable" },
	{ EALREADY, "EALREADY", "connection already in progress" },
	{ EREMOTEIO, "EREMOTEIO", "remote I/O error" },
	{ ECANCELED, "ECANCELED", "operation canceled" },
};

/* An errno as Node names it: libuv's name and text, or UNKNOWN for one libuv does not map. */
static void uv_error(int e, const char **name, const char **text)
{
	for (size_t i = 0; i < sizeof(UV_ERRORS) / sizeof(UV_ERRORS[0]); i++)
		if (UV_ERRORS[i].e == e) {
			*name = UV_ERRORS[i].name;
			*text = UV_ERRORS[i].text;
			return;
		}
	*name = "UNKNOWN";
	*text = "unknown error";
}

int nd_fs_error(char *err, size_t err_len, int e, const char *syscall, const char *path)
{
	const char *name, *text;

	uv_error(e, &name, &text);
	if (path)
		return nd_mounts_errf(err, err_len, -e, "%s: %s, %s '%s'", name, text, syscall, path);
	return nd_mounts_errf(err, err_len, -e, "%s: %s, %s", name, text, syscall);
}

/* ---- which mounts ---------------------------------------------------------------- */

int nd_shipped_mounts(json_t *spec, struct nd_shipped_mount **mounts, size_t *n, char *err, size_t err_len)
{
	json_t *all = hp_json_member(spec, "mounts");
	struct nd_shipped_mount *out = NULL;
	size_t count = 0, cap = 0;

	*mounts = NULL;
	*n = 0;
	/* spec.mounts ?? [] */
	if (!all || json_is_null(all))
		return 0;
	if (!json_is_array(all))
		return nd_mounts_errf(err, err_len, -EINVAL, "spec: mounts is not an array");
	for (size_t i = 0; i < json_array_size(all); i++) {
		json_t *m = json_array_get(all, i), *source, *destination;
		int bind = hp_oci_is_bind_mount(m);

		if (bind < 0) {
			free(out);
			if (json_is_null(m))
				return nd_mounts_errf(err, err_len, -EINVAL, "spec: mounts[%zu] is null", i);
			return nd_mounts_errf(err, err_len, -EINVAL, "spec: mounts[%zu].options is not an array", i);
		}
		source = hp_json_member(m, "source");
		if (!bind || !hp_json_truthy(source))
			continue;
		if (!json_is_string(source) || strlen(json_string_value(source)) != json_string_length(source)) {
			free(out);
			return nd_mounts_errf(err, err_len, -EINVAL, "spec: mounts[%zu].source is not a path", i);
		}
		if (hp_oci_is_sandbox_shm(m))
			continue;
		destination = hp_json_member(m, "destination");
		if (destination && !json_is_null(destination) &&
		    (!json_is_string(destination) || strlen(json_string_value(destination)) != json_string_length(destination))) {
			free(out);
			return nd_mounts_errf(err, err_len, -EINVAL, "spec: mounts[%zu].destination is not a path", i);
		}
		if (count == cap) {
			struct nd_shipped_mount *grown = realloc(out, (cap = cap * 2 + 4) * sizeof(*grown));

			if (!grown) {
				free(out);
				return nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading the spec's mounts");
			}
			out = grown;
		}
		out[count].source = json_string_value(source);
		out[count].destination = json_is_string(destination) ? json_string_value(destination) : "";
		out[count].termination_log = hp_oci_is_termination_log(m) > 0;
		count++;
	}
	*mounts = out;
	*n = count;
	return 0;
}

char *nd_termination_log_source(json_t *spec)
{
	struct nd_shipped_mount *m;
	char *source = NULL;
	size_t n;

	if (nd_shipped_mounts(spec, &m, &n, NULL, 0) < 0)
		return NULL;
	for (size_t i = 0; i < n && !source; i++)
		if (m[i].termination_log)
			source = strdup(m[i].source);
	free(m);
	return source;
}

/* ---- reading them ---------------------------------------------------------------- */

/* Node's kIoMaxLength: readFileSync refuses a larger file. */
#define IO_MAX_LENGTH 2147483647LL
#define READ_UNKNOWN_CHUNK 65536

/* readFileSync(file): a regular file's fstat size read (less at an early EOF),
 * anything else read to its end. */
static int read_file(const char *file, unsigned char **content, size_t *len, char *err, size_t err_len)
{
	unsigned char *buf = NULL;
	size_t size, at = 0, cap;
	struct stat st;
	int fd, rc = 0;

	if ((fd = open(file, O_RDONLY | O_CLOEXEC)) < 0)
		return nd_fs_error(err, err_len, errno, "open", file);
	if (fstat(fd, &st) < 0) {
		rc = nd_fs_error(err, err_len, errno, "fstat", NULL);
		goto out;
	}
	size = S_ISREG(st.st_mode) ? (size_t)st.st_size : 0;
	if (S_ISREG(st.st_mode) && st.st_size > IO_MAX_LENGTH) {
		rc = nd_mounts_errf(err, err_len, -EFBIG, "File size (%lld) is greater than 2 GiB", (long long)st.st_size);
		goto out;
	}
	cap = size ? size : READ_UNKNOWN_CHUNK;
	if (!(buf = malloc(cap))) {
		rc = nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", file);
		goto out;
	}
	for (;;) {
		ssize_t r;

		if (at == cap) {
			unsigned char *grown;

			if (size) /* the regular file's size is read, no more */
				break;
			if (!(grown = realloc(buf, cap += READ_UNKNOWN_CHUNK))) {
				rc = nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", file);
				goto out;
			}
			buf = grown;
		}
		if ((r = read(fd, buf + at, cap - at)) < 0) {
			if (errno == EINTR)
				continue;
			rc = nd_fs_error(err, err_len, errno, "read", NULL);
			goto out;
		}
		if (r == 0)
			break;
		at += (size_t)r;
	}
	*content = buf;
	*len = at;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return rc;
}

void nd_mounts_bytes_add(struct nd_mounts_bytes *b, const void *p, size_t n)
{
	if (b->oom || n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		unsigned char *grown;

		while (cap < b->len + n)
			cap *= 2;
		if (!(grown = realloc(b->p, cap))) {
			b->oom = 1;
			return;
		}
		b->p = grown;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

/*
 * execFileSync('tar', ['-c', '-C', dir, '.'], { maxBuffer }): tar's stdout is
 * the content; its stdin is empty, its stderr collected and passed on to ours.
 * Once stdout and stderr together hold more than ND_MAX_DIRECTORY_BYTES, tar
 * gets SIGTERM and its pipes are closed (ENOBUFS). The child starts with no
 * signal blocked and every signal at its default: the daemon blocks SIGTERM
 * for its signalfd and ignores SIGPIPE.
 */
static int tar_directory(const char *dir, unsigned char **content, size_t *len, char *err, size_t err_len)
{
	char *argv[] = { "tar", "-c", "-C", (char *)dir, ".", NULL };
	int out[2] = { -1, -1 }, errp[2] = { -1, -1 }, status = 0, rc = 0, overflow = 0, e;
	struct nd_mounts_bytes stdout_b = { 0 }, stderr_b = { 0 };
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	pid_t pid;

	if (pipe2(out, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
		const char *name, *text;

		e = errno;
		if (out[0] >= 0) {
			close(out[0]);
			close(out[1]);
		}
		uv_error(e, &name, &text);
		return nd_mounts_errf(err, err_len, -e, "spawnSync tar %s", name);
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	e = posix_spawnp(&pid, "tar", &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(out[1]);
	close(errp[1]);
	if (e) {
		const char *name, *text;

		close(out[0]);
		close(errp[0]);
		uv_error(e, &name, &text);
		return nd_mounts_errf(err, err_len, -e, "spawnSync tar %s", name);
	}
	{
		struct pollfd fds[2] = { { out[0], POLLIN, 0 }, { errp[0], POLLIN, 0 } };
		struct nd_mounts_bytes *into[2] = { &stdout_b, &stderr_b };
		unsigned char chunk[65536];
		int open_fds = 2;

		while (open_fds > 0 && !overflow) {
			if (poll(fds, 2, -1) < 0) {
				if (errno == EINTR)
					continue;
				break;
			}
			for (int i = 0; i < 2; i++) {
				ssize_t r;

				if (fds[i].fd < 0 || !fds[i].revents)
					continue;
				r = read(fds[i].fd, chunk, sizeof(chunk));
				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					close(fds[i].fd);
					fds[i].fd = -1;
					open_fds--;
					continue;
				}
				nd_mounts_bytes_add(into[i], chunk, (size_t)r);
				if (stdout_b.len + stderr_b.len > ND_MAX_DIRECTORY_BYTES) {
					overflow = 1;
					break;
				}
			}
		}
		/* over the limit (or poll failed): tar must not wait on a pipe no one reads */
		if (open_fds > 0)
			kill(pid, SIGTERM);
		for (int i = 0; i < 2; i++)
			if (fds[i].fd >= 0)
				close(fds[i].fd);
	}
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (stderr_b.len && write(2, stderr_b.p, stderr_b.len) < 0) {
		/* the daemon's log is gone: nowhere to say it */
	}
	if (stdout_b.oom || stderr_b.oom)
		rc = nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", dir);
	else if (overflow)
		rc = nd_mounts_errf(err, err_len, -ENOBUFS, "spawnSync tar ENOBUFS");
	else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		rc = nd_mounts_errf(err, err_len, -EIO, "Command failed: tar -c -C %s .%s%.*s", dir, stderr_b.len ? "\n" : "",
				    (int)stderr_b.len, stderr_b.p ? (char *)stderr_b.p : "");
	free(stderr_b.p);
	if (rc < 0) {
		free(stdout_b.p);
		return rc;
	}
	*content = stdout_b.p;
	*len = stdout_b.len;
	return 0;
}

int nd_read_mounted_file(const struct nd_shipped_mount *m, struct nd_mounted_file *out, char *err, size_t err_len)
{
	struct stat st;
	int rc;

	memset(out, 0, sizeof(*out));
	if (stat(m->source, &st) < 0)
		return nd_fs_error(err, err_len, errno, "stat", m->source);
	out->directory = S_ISDIR(st.st_mode);
	out->mode = st.st_mode & 07777;
	out->termination_log = m->termination_log && !out->directory;
	if (out->directory)
		rc = tar_directory(m->source, &out->content, &out->len, err, err_len);
	else
		rc = read_file(m->source, &out->content, &out->len, err, err_len);
	if (rc == 0 && !(out->destination = strdup(m->destination)))
		rc = nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading %s", m->source);
	if (rc < 0) {
		free(out->content);
		free(out->destination);
		memset(out, 0, sizeof(*out));
	}
	return rc;
}

void nd_mounted_files_free(struct nd_mounted_file *files, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(files[i].destination);
		free(files[i].content);
	}
	free(files);
}

int nd_mounted_files_read(json_t *spec, struct nd_mounted_file **files, size_t *n, char *err, size_t err_len)
{
	struct nd_shipped_mount *m;
	size_t count;
	int rc;

	*files = NULL;
	*n = 0;
	if ((rc = nd_shipped_mounts(spec, &m, &count, err, err_len)) < 0 || count == 0)
		return rc;
	if (!(*files = calloc(count, sizeof(**files)))) {
		free(m);
		return nd_mounts_errf(err, err_len, -ENOMEM, "out of memory reading the spec's mounts");
	}
	for (size_t i = 0; i < count; i++) {
		if ((rc = nd_read_mounted_file(&m[i], &(*files)[i], err, err_len)) < 0) {
			nd_mounted_files_free(*files, i);
			*files = NULL;
			free(m);
			return rc;
		}
	}
	*n = count;
	free(m);
	return 0;
}

/* ---- encoding ---------------------------------------------------------------------- */

/* The length of one MountedFile as nd_mounted_files_encode writes it. */
static size_t mounted_file_size(const struct nd_mounted_file *f)
{
	size_t n = 0, d = f->destination ? strlen(f->destination) : 0;

	if (d)
		n += 1 + varint_len(d) + d;
	if (f->len)
		n += 1 + varint_len(f->len) + f->len;
	if (f->directory)
		n += 2;
	if (f->mode)
		n += 1 + varint_len(f->mode);
	if (f->termination_log)
		n += 2;
	return n;
}

void nd_mounted_files_encode(struct pbuf *b, uint32_t field, const struct nd_mounted_file *files, size_t n)
{
	size_t total = 0;

	for (size_t i = 0; i < n; i++) {
		size_t size = mounted_file_size(&files[i]);

		total += varint_len((uint64_t)field << 3 | 2) + varint_len(size) + size;
	}
	if (pbuf_reserve(b, total) < 0)
		return;
	for (size_t i = 0; i < n; i++) {
		const struct nd_mounted_file *f = &files[i];

		pbuf_varint(b, (uint64_t)field << 3 | 2);
		pbuf_varint(b, mounted_file_size(f));
		pbuf_string(b, 1, f->destination);
		if (f->len)
			pbuf_bytes(b, 2, f->content, f->len);
		pbuf_uint(b, 3, f->directory ? 1 : 0);
		pbuf_uint(b, 4, f->mode);
		pbuf_uint(b, 5, f->termination_log ? 1 : 0);
	}
}

int nd_mounted_files(json_t *spec, uint32_t field, unsigned char **out, size_t *len, char *err, size_t err_len)
{
	struct nd_mounted_file *files;
	struct pbuf b = { 0 };
	size_t n;
	int rc;

	*out = NULL;
	*len = 0;
	if ((rc = nd_mounted_files_read(spec, &files, &n, err, err_len)) < 0)
		return rc;
	nd_mounted_files_encode(&b, field, files, n);
	nd_mounted_files_free(files, n);
	if (b.oom) {
		pbuf_free(&b);
		return nd_mounts_errf(err, err_len, -ENOMEM, "out of memory encoding the spec's mounts");
	}
	*out = b.p;
	*len = b.n;
	return 0;
}

/* ---- the termination message ------------------------------------------------------ */

int nd_write_termination_message(const char *file, const void *message, size_t len, char *err, size_t err_len)
{
	size_t from = hp_oci_termination_message_tail(len), n = len - from, written = 0;
	const unsigned char *content = (const unsigned char *)message + from;
	int fd, rc = 1;

	if ((fd = open(file, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
		if (errno == ENOENT)
			return 0;
		return nd_fs_error(err, err_len, errno, "open", file);
	}
	while (written < n) {
		ssize_t r = pwrite(fd, content + written, n - written, (off_t)written);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = nd_fs_error(err, err_len, errno, "write", NULL);
			break;
		}
		written += (size_t)r;
	}
	if (rc == 1 && ftruncate(fd, (off_t)n) < 0)
		rc = nd_fs_error(err, err_len, errno, "ftruncate", NULL);
	close(fd);
	return rc;
}
