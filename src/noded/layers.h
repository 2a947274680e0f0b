/*
 * A container's rootfs layers for the node daemon: which directories they are,
 * and each one's digest when the host's layer index already knows it. The C
 * port of overlayLowerdirs and of the index lookup of layerDigest
 * (src/shim/layers.ts). The cold path (a directory never digested, layers the
 * agent lacks) stays in TypeScript: `heteropod layers digest` and
 * `heteropod layers ship` (src/cli/layers.ts), which write the index this reads.
 *
 * Functions return 0 or a negative errno, never set errno for the caller, and
 * fill `err` (err_len bytes, NUL-ended, cut on a UTF-8 character boundary when
 * too short) with what went wrong. ND_LAYERS_ERR_MAX holds every message but one
 * quoting unusually long mount sources or options.
 */
#ifndef HETEROPOD_NODED_LAYERS_H
#define HETEROPOD_NODED_LAYERS_H

#include <stddef.h>
#include <stdint.h>

#define ND_LAYERS_ERR_MAX 4096

/* "sha256:" and 64 lowercase hex digits, NUL-ended. */
#define ND_LAYER_DIGEST_SIZE 72

/* A containerd Mount (containerd/types/mount.proto) of a CreateTaskRequest's
 * rootfs. A NULL string counts as empty, NULL options as none. */
struct nd_mount {
	const char *type, *source;
	const char *const *options;
	size_t n_options;
};

/*
 * The read-only layer directories of a rootfs, top layer first, exactly as
 * overlayLowerdirs gives them: one overlay mount (lowerdir=top:...:bottom, a '\'
 * escaping the next character; upperdir, workdir and the options that do not
 * change how a layer lies on disk allowed; redirect_dir and metacopy only =off),
 * or one bind/rbind mount with "ro" (its source). Anything else fails with
 * -EINVAL and the TS's message, `rootfs <type> mount of "<source>" (options
 * [...]): why` (sources and options quoted as JSON.stringify does). On 0,
 * *dirs is a malloc'd array of *n_dirs malloc'd strings (free with
 * nd_layer_dirs_free); on failure *dirs is NULL and *n_dirs 0.
 */
int nd_overlay_lowerdirs(const struct nd_mount *mounts, size_t n_mounts, char ***dirs, size_t *n_dirs, char *err,
			 size_t err_len);
void nd_layer_dirs_free(char **dirs, size_t n);

/*
 * A directory's identity as layerDigest records it: st_dev, st_ino and st_ctim
 * in nanoseconds, decimal, as Node's bigint stat gives them (dev, ino, ctimeNs).
 */
struct nd_layer_identity {
	char dev[24], ino[24], ctime_ns[48];
};

/*
 * The identity of directory `abs` (stat(2), following symlinks). -ENOTDIR
 * with layerDigest's message when it is no directory; stat's -errno otherwise.
 */
int nd_layer_identity(const char *abs, struct nd_layer_identity *id, char *err, size_t err_len);

/*
 * The digest and size of layer directory `dir` from the index in `index_dir`
 * (<state_dir>/layers), without reading the directory: the record
 * <index_dir>/<first 40 hex of sha256(absolute dir)>.json, valid when its
 * version is 1 and its dir, dev, ino and ctimeNs are those of the directory now.
 * `dir` is made absolute as path.resolve does (against the working directory,
 * '.', '..' and repeated '/' resolved by name, symlinks kept).
 *
 *   0        the digest ("sha256:<hex>") in `digest`, the tar's length in *size;
 *   -ENOENT  no valid record (missing, torn, another version, a directory
 *            re-made or changed since, a digest or size of the wrong form): run
 *            the cold path, which computes and records it. Also the directory
 *            itself missing (stat's ENOENT): the cold path then fails on it;
 *   -ENOTDIR `dir` is no directory;
 *   other    stat's -errno, -ENAMETOOLONG, -ENOMEM.
 * `err` says which, on -ENOENT too (for a debug log).
 */
int nd_layer_digest_cached(const char *dir, const char *index_dir, char digest[ND_LAYER_DIGEST_SIZE], uint64_t *size,
			   char *err, size_t err_len);

#endif
