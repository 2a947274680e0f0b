/*
 * The DPU agent's API from C: the node's connection to the agent, mutually
 * authenticated TLS (OpenSSL) speaking ttrpc with heteropod.agent.v1.DpuAgent's
 * messages (cri-proto/heteropod/agent/v1/agent.proto), on the event loop
 * (src/common/loop.h, src/ttrpc/client.h), as src/agentapi/client.ts does. The
 * TLS rules are the same: the agent's certificate must chain to the node's CA
 * and name HP_AGENT_SERVER_NAME; the node's own certificate is presented.
 *
 * One connection, made on the first call and again by the first call after it
 * failed, each with the TLS files as they are then (a DPU set up again has a new
 * CA); a connection that could not be made stands for HP_AGENT_REDIAL_MS
 * (calls meanwhile fail at once with its reason). Calls and streams of any
 * number share it. agent-call.c is its command.
 *
 * The caller ignores SIGPIPE: writing to an agent that has closed the
 * connection (one that refuses our certificate does at once) must fail the
 * call, not end the process.
 */
#ifndef HETEROPOD_AGENTAPI_AGENT_CONN_H
#define HETEROPOD_AGENTAPI_AGENT_CONN_H

#include <stddef.h>

#include "../ttrpc/client.h"

#define HP_AGENT_SERVICE "heteropod.agent.v1.DpuAgent"
/* The name the agent's certificate carries (src/dpu/pki.ts), whatever its address. */
#define HP_AGENT_SERVER_NAME "heteropod-dpu-agent"
#define HP_AGENT_REDIAL_MS 200

struct hp_loop;

struct hp_agent_tls {
	const char *ca_file, *cert_file, *key_file;
};

struct hp_agent;

/*
 * The agent at `address` (host:port, [v6]:port). Its TLS files are read now
 * (and again for each new connection): NULL when one cannot be (`err` names it). `timeout_ms` bounds a connection
 * and is each unary call's deadline unless the call gives its own.
 */
struct hp_agent *hp_agent_new(struct hp_loop *l, const char *address, const struct hp_agent_tls *tls, long long timeout_ms, char *err,
			      size_t err_len);

/* Closes the connection: calls still open end CANCELLED. */
void hp_agent_free(struct hp_agent *a);

/* A unary call; timeout_ms < 0: the agent's timeout, 0: none. As hp_tcall_start. */
struct hp_tcall *hp_agent_call(struct hp_agent *a, const char *method, const void *req, size_t req_len, long long timeout_ms,
			       const struct hp_tcall_fns *fns, void *ctx);

/* A server stream (Events, Output, WatchPorts) or client stream (Input), with no deadline. */
struct hp_tcall *hp_agent_stream(struct hp_agent *a, const char *method, enum hp_tcall_kind kind, const void *req, size_t req_len,
				 const struct hp_tcall_fns *fns, void *ctx);

/* Bytes waiting to be written to the agent. */
size_t hp_agent_queued(const struct hp_agent *a);

#endif
