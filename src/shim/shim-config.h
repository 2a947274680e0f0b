/*
 * The shim's configuration file (shim.toml): its one reader. The launcher and the
 * proxy call it directly; the Node shim and the CLI run it as the binary's
 * `config` action (src/shim/config.ts), so every reader accepts and refuses the
 * same files with the same message.
 *
 * The file is a TOML subset: comments, `[section]` headers, `key = value` (bare
 * or dotted keys) with "basic strings" (TOML escapes), 'literal strings', true,
 * false and decimal integers, each line optionally ending in a comment. Strict:
 * an unknown section or key, a key set twice, a value of the wrong type or out of
 * range, and a line that does not parse are each an error, reported as one line
 *
 *   <file>:<line>: <key>: <what is wrong>
 *
 * where <key> is `section.key` (`key` at the top level), `[section]` for a
 * header, or the quoted start of a line that names no key.
 */
#ifndef HETEROPOD_SHIM_CONFIG_H
#define HETEROPOD_SHIM_CONFIG_H

#include <limits.h>
#include <stddef.h>

#define DEFAULT_CONFIG "/etc/heteropod/shim.toml"
#define DEFAULT_STATE_DIR "/run/heteropod-shim"
#define DEFAULT_RUNC_SHIM "containerd-shim-runc-v2"
#define DEFAULT_DPU_TIMEOUT_MS 5000
#define DEFAULT_XPU_HOST_MODE "served"

/* Room for any message of the reader: a path, a key, a quoted value. */
#define SHIM_CONFIG_ERROR_MAX (PATH_MAX + 1024)

/* The config, defaults filled in. Every string is owned and never NULL once read. */
struct shim_config {
	int debug;
	char *state_dir, *runc_shim;
	/* [runc]: containerd.runc.v1.Options for host containers */
	char *runc_root, *runc_binary_name;
	int runc_systemd_cgroup;
	/* [dpu]: the DPU agent (address empty: no DPU) and the shim's TLS files */
	char *dpu_address, *dpu_ca, *dpu_cert, *dpu_key;
	long dpu_timeout_ms;
	/* [xpu]: sleep, elastic or poll */
	char *xpu_host_mode;
};

/*
 * Parses `len` bytes of `text`, the contents of `file` (named in messages only).
 * Returns 0, -EINVAL with the one-line message in `why`, or -ENOMEM. On error *c
 * holds nothing; either way shim_config_free may be called on it.
 */
int shim_config_parse(const char *file, const char *text, size_t len, struct shim_config *c, char *why, size_t why_len);

/*
 * Reads `path` (DEFAULT_CONFIG when NULL or empty). A missing file gives the
 * defaults; any other failure to read it is an error ("<file>: read: <reason>").
 * Returns 0 or a negative errno, with the message in `why`.
 */
int shim_config_load(const char *path, struct shim_config *c, char *why, size_t why_len);

/* shim_config_load without the message. */
int shim_config_read(const char *path, struct shim_config *c);

void shim_config_free(struct shim_config *c);

/*
 * The `config` action: prints the config read from `path` as one JSON object
 * (the fields of ShimConfig in config.ts) and returns 0, or prints the error line
 * to stderr and returns 1.
 */
int shim_config_main(const char *path);

#endif
