/*
 * Task events to containerd, in the order they were published (create → start
 * → exit → delete), as src/shim/events.ts: handlers only enqueue; one call at
 * a time forwards the oldest to containerd's Events service (Forward, with the
 * pod's namespace in the metadata) on its ttrpc socket, retrying a bounded
 * number of times (about 10 s, a containerd restart) on a new connection.
 * One forwarder per containerd ttrpc address, shared by the pods it serves.
 */
#ifndef HETEROPOD_NODED_EVENTS_H
#define HETEROPOD_NODED_EVENTS_H

#include <stddef.h>

struct hp_loop;
struct nd_forwarder;

struct nd_forwarder *nd_forwarder_new(struct hp_loop *l, const char *address);
/* Queues an encoded ForwardRequest for containerd namespace `ns`; `topic` is for the log. */
void nd_forwarder_enqueue(struct nd_forwarder *f, const void *request, size_t len, const char *ns, const char *topic);
/* Events still to forward. */
size_t nd_forwarder_pending(const struct nd_forwarder *f);
void nd_forwarder_free(struct nd_forwarder *f);
const char *nd_forwarder_address(const struct nd_forwarder *f);

#endif
