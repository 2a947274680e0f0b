/* Task events to containerd (events.h). */
#include "events.h"

#include "../common/loop.h"
#include "../ttrpc/client.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ATTEMPTS 12
#define MAX_BACKOFF_MS 1000
#define FORWARD_TIMEOUT_MS 5000
#define CONNECT_TIMEOUT_MS 2000
#define EVENTS_SERVICE "containerd.services.events.ttrpc.v1.Events"
#define NAMESPACE_KEY "containerd-namespace-ttrpc"

struct event {
	struct event *next;
	unsigned char *request;
	size_t len;
	char ns[128];
	char topic[64];
};

struct nd_forwarder {
	struct hp_loop *loop;
	char address[4096];
	struct hp_tclient *client;
	struct event *head, **tail;
	size_t pending;
	struct hp_tcall *inflight;
	struct hp_timer retry;
	int attempt;
};

static void forward_next(struct nd_forwarder *f);

struct nd_forwarder *nd_forwarder_new(struct hp_loop *l, const char *address)
{
	struct nd_forwarder *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	f->loop = l;
	f->tail = &f->head;
	snprintf(f->address, sizeof(f->address), "%s", address);
	return f;
}

const char *nd_forwarder_address(const struct nd_forwarder *f)
{
	return f->address;
}

size_t nd_forwarder_pending(const struct nd_forwarder *f)
{
	return f->pending;
}

static void pop(struct nd_forwarder *f)
{
	struct event *e = f->head;

	f->head = e->next;
	if (!f->head)
		f->tail = &f->head;
	f->pending--;
	f->attempt = 0;
	free(e->request);
	free(e);
}

static void retry_now(struct hp_timer *t)
{
	forward_next(container_of(t, struct nd_forwarder, retry));
}

static void forwarded(void *ctx, const struct hp_tstatus *st)
{
	struct nd_forwarder *f = ctx;
	struct event *e = f->head;

	f->inflight = NULL;
	if (st->code == 0) {
		nd_log(NULL, NULL, ND_DEBUG, "event forwarded", "topic", e->topic, NULL);
		pop(f);
		forward_next(f);
		return;
	}
	/* A new connection for the next try: containerd may have restarted. */
	hp_tclient_destroy(f->client);
	f->client = NULL;
	if (++f->attempt >= ATTEMPTS) {
		nd_log(NULL, NULL, ND_ERROR, "forward event: giving up", "topic", e->topic, "error", st->message, NULL);
		pop(f);
		forward_next(f);
		return;
	}
	{
		long long backoff = 50LL << (f->attempt < 10 ? f->attempt : 10);

		hp_timer_start(f->loop, &f->retry, backoff < MAX_BACKOFF_MS ? backoff : MAX_BACKOFF_MS, retry_now);
	}
}

static void forward_next(struct nd_forwarder *f)
{
	static const struct hp_tcall_fns fns = { NULL, forwarded };
	struct event *e = f->head;
	struct hp_tmeta meta;
	struct hp_tcall_opts o = { HP_TCALL_UNARY, FORWARD_TIMEOUT_MS, &meta, 1 };
	struct hp_tcall *k;
	char err[256];

	if (!e || f->inflight || f->retry.armed)
		return;
	if (!f->address[0]) {
		nd_log(NULL, NULL, ND_ERROR, "forward event: giving up", "topic", e->topic, "error", "TTRPC_ADDRESS is not set", NULL);
		pop(f);
		forward_next(f);
		return;
	}
	if (!f->client && !(f->client = hp_tclient_unix(f->loop, f->address, "containerd's events", CONNECT_TIMEOUT_MS, err, sizeof(err)))) {
		struct hp_tstatus st = { .code = 14, .message = err };

		forwarded(f, &st);
		return;
	}
	meta.key = NAMESPACE_KEY;
	meta.value = e->ns;
	/* A call that fails at once has ended (and maybe started the next) before this returns. */
	k = hp_tcall_start(f->client, EVENTS_SERVICE, "Forward", e->request, e->len, &o, &fns, f);
	if (k)
		f->inflight = k;
}

void nd_forwarder_enqueue(struct nd_forwarder *f, const void *request, size_t len, const char *ns, const char *topic)
{
	struct event *e = calloc(1, sizeof(*e));

	if (!e || !(e->request = malloc(len ? len : 1))) {
		free(e);
		nd_log(NULL, NULL, ND_ERROR, "forward event: out of memory", "topic", topic, NULL);
		return;
	}
	memcpy(e->request, request, len);
	e->len = len;
	snprintf(e->ns, sizeof(e->ns), "%s", ns);
	snprintf(e->topic, sizeof(e->topic), "%s", topic);
	*f->tail = e;
	f->tail = &e->next;
	f->pending++;
	forward_next(f);
}

void nd_forwarder_free(struct nd_forwarder *f)
{
	if (!f)
		return;
	hp_timer_stop(f->loop, &f->retry);
	if (f->inflight)
		hp_tcall_cancel(f->inflight);
	hp_tclient_destroy(f->client);
	while (f->head)
		pop(f);
	free(f);
}
