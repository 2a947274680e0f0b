/*
 * The node's connection to the DPU agent (agent-conn.h): the TLS context,
 * loaded once, and a ttrpc client connection made when a call needs one.
 */
#include "agent-conn.h"

#include "../common/loop.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct hp_agent {
	struct hp_loop *loop;
	SSL_CTX *ctx;
	char *ca_file, *cert_file, *key_file;
	struct hp_tclient *conn;
	long long dialed_at;
	long long timeout_ms;
	char address[256];
	char name[300];
};

static void say(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

/* OpenSSL's first queued reason, or `fallback`. */
static const char *tls_reason(char *buf, size_t len, const char *fallback)
{
	unsigned long e = ERR_get_error();

	if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "%s", fallback);
	ERR_clear_error();
	return buf;
}

/* The TLS context from the files as they are now: a DPU that was set up again has a new CA. */
static SSL_CTX *load_tls(const char *address, const char *ca, const char *cert, const char *key, char *err, size_t err_len)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	char why[256];

	if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: %s", address, tls_reason(why, sizeof(why), "no context"));
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: CA %s: %s", address, ca, tls_reason(why, sizeof(why), "unreadable"));
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: certificate %s: %s", address, cert, tls_reason(why, sizeof(why), "unreadable"));
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		say(err, err_len, "TLS for the DPU agent at %s: key %s: %s", address, key, tls_reason(why, sizeof(why), "unreadable"));
		goto fail;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

struct hp_agent *hp_agent_new(struct hp_loop *l, const char *address, const struct hp_agent_tls *tls, long long timeout_ms, char *err,
			      size_t err_len)
{
	struct hp_agent *a;
	char host[256];
	const char *port;

	if (hp_split_address(address, host, sizeof(host), &port) < 0) {
		say(err, err_len, "DPU agent address %s: not host:port", address);
		return NULL;
	}
	if (!(a = calloc(1, sizeof(*a)))) {
		say(err, err_len, "DPU agent at %s: out of memory", address);
		return NULL;
	}
	a->loop = l;
	a->timeout_ms = timeout_ms;
	snprintf(a->address, sizeof(a->address), "%s", address);
	snprintf(a->name, sizeof(a->name), "DPU agent at %s", address);
	if (!(a->ca_file = strdup(tls->ca_file)) || !(a->cert_file = strdup(tls->cert_file)) || !(a->key_file = strdup(tls->key_file))) {
		say(err, err_len, "DPU agent at %s: out of memory", address);
		goto fail;
	}
	/* Read now, so that a file missing or broken is said at once. */
	if (!(a->ctx = load_tls(address, a->ca_file, a->cert_file, a->key_file, err, err_len)))
		goto fail;
	return a;
fail:
	hp_agent_free(a);
	return NULL;
}

void hp_agent_free(struct hp_agent *a)
{
	if (!a)
		return;
	hp_tclient_destroy(a->conn);
	if (a->ctx)
		SSL_CTX_free(a->ctx);
	free(a->ca_file);
	free(a->cert_file);
	free(a->key_file);
	free(a);
}

/* The connection for a new call: the open one, a failed dial while it stands, or a new one. */
static struct hp_tclient *conn(struct hp_agent *a, char *err, size_t err_len)
{
	long long now = hp_now_ms();

	if (a->conn && hp_tclient_failed(a->conn) && (hp_tclient_answered(a->conn) || now - a->dialed_at >= HP_AGENT_REDIAL_MS)) {
		hp_tclient_destroy(a->conn);
		a->conn = NULL;
	}
	if (!a->conn) {
		/* Each new connection reads the TLS files again (the TS client does too). */
		SSL_CTX *ctx = load_tls(a->address, a->ca_file, a->cert_file, a->key_file, err, err_len);

		if (!ctx)
			return NULL;
		SSL_CTX_free(a->ctx);
		a->ctx = ctx;
		a->conn = hp_tclient_tls(a->loop, a->address, a->ctx, HP_AGENT_SERVER_NAME, a->name, a->timeout_ms, err, err_len);
		a->dialed_at = now;
	}
	return a->conn;
}

static struct hp_tcall *start(struct hp_agent *a, const char *method, const void *req, size_t req_len, const struct hp_tcall_opts *o,
			      const struct hp_tcall_fns *fns, void *ctx)
{
	char err[512];
	struct hp_tclient *c = conn(a, err, sizeof(err));

	if (!c) {
		/* The address does not parse, or no memory: the call fails at once. */
		struct hp_tstatus st = { .code = HP_CODE_UNAVAILABLE, .local = -EINVAL, .message = err };

		if (fns->done)
			fns->done(ctx, &st);
		return NULL;
	}
	return hp_tcall_start(c, HP_AGENT_SERVICE, method, req, req_len, o, fns, ctx);
}

struct hp_tcall *hp_agent_call(struct hp_agent *a, const char *method, const void *req, size_t req_len, long long timeout_ms,
			       const struct hp_tcall_fns *fns, void *ctx)
{
	struct hp_tcall_opts o = { HP_TCALL_UNARY, timeout_ms < 0 ? a->timeout_ms : timeout_ms, NULL, 0 };

	return start(a, method, req, req_len, &o, fns, ctx);
}

struct hp_tcall *hp_agent_stream(struct hp_agent *a, const char *method, enum hp_tcall_kind kind, const void *req, size_t req_len,
				 const struct hp_tcall_fns *fns, void *ctx)
{
	struct hp_tcall_opts o = { kind, 0, NULL, 0 };

	return start(a, method, req, req_len, &o, fns, ctx);
}

size_t hp_agent_queued(const struct hp_agent *a)
{
	return a->conn ? hp_tclient_queued(a->conn) : 0;
}
