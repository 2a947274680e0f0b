/*
 * The DPU agent's API from C: one mutually authenticated TLS connection to the
 * agent (OpenSSL), speaking ttrpc with heteropod.agent.v1.DpuAgent's messages
 * (cri-proto/heteropod/agent/v1/agent.proto), as src/agentapi/client.ts does.
 * The TLS rules are the same: the agent's certificate must chain to the node's
 * CA and name AGENT_SERVER_NAME; the node's own certificate is presented.
 *
 * This is the first part of a node daemon in C: unary calls and server streams,
 * one at a time, on a socket whose every wait but a stream's next message is
 * bounded. agent-call.c is its command.
 *
 * Functions return a negative errno on failure and fill `err` with what went
 * wrong, naming the agent's address. The caller ignores SIGPIPE: writing to an
 * agent that has closed the connection (one that refuses our certificate does
 * at once) must fail the call, not end the process.
 */
#ifndef HETEROPOD_AGENTAPI_AGENT_CONN_H
#define HETEROPOD_AGENTAPI_AGENT_CONN_H

#include <stddef.h>

#define HP_AGENT_SERVICE "heteropod.agent.v1.DpuAgent"
/* The name the agent's certificate carries (src/dpu/pki.ts), whatever its address. */
#define HP_AGENT_SERVER_NAME "heteropod-dpu-agent"

struct hp_agent_tls {
	const char *ca_file, *cert_file, *key_file;
};

struct hp_agent;

/*
 * Connects to `address` (host:port, [v6]:port) and completes the TLS handshake
 * within timeout_ms, which also bounds every later wait. NULL on failure, `err`
 * saying whether the agent was unreachable or TLS failed.
 */
struct hp_agent *hp_agent_connect(const char *address, const struct hp_agent_tls *tls, int timeout_ms, char *err, size_t err_len);

/*
 * One unary call: `method` of HP_AGENT_SERVICE with the encoded request. On an
 * answer: its google.rpc.Code (0: *resp holds the encoded response, malloc'd,
 * the caller's to free; otherwise `err` holds the agent's message). A negative
 * errno when the connection failed (it is then of no further use).
 */
int hp_agent_call(struct hp_agent *a, const char *method, const void *req, size_t req_len, unsigned char **resp, size_t *resp_len,
		  char *err, size_t err_len);

/*
 * A server-streamed call (Events, Output, WatchPorts): each message, encoded, to
 * on_message in order, with no deadline while they come. on_message returning
 * nonzero cancels the stream (our side closed, as the TS client does), and the
 * agent's end of it is then waited for within the timeout. Returns 0 when the
 * stream ended cleanly or was cancelled, the agent's google.rpc.Code when it
 * failed it (`err` then holds its message), a negative errno when the
 * connection failed.
 */
int hp_agent_stream(struct hp_agent *a, const char *method, const void *req, size_t req_len,
		    int (*on_message)(void *ctx, const unsigned char *m, size_t len), void *ctx, char *err, size_t err_len);

void hp_agent_close(struct hp_agent *a);

#endif
