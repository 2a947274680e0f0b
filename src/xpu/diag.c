/*
 * Listening TCP sockets of a network namespace, asked of the kernel with
 * NETLINK_SOCK_DIAG (inet_diag).
 *
 * A dump whose state filter is TCP_LISTEN alone makes the kernel walk only its
 * listening hash and stop there: the cost follows the number of listeners, not
 * the number of sockets (a namespace under HTTP load holds tens of thousands in
 * TIME_WAIT, which /proc/net/tcp lists one line each).
 *
 * A netlink socket answers for the namespace it was created in, for as long as
 * it lives; so the socket is made once, from a short-lived thread inside the
 * namespace, and every later dump on it needs no namespace switch.
 */
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "internal.h"

/* include/net/tcp_states.h; not in the UAPI headers. */
#define DIAG_TCP_LISTEN 10

/* A dump's reply comes in as recv is called (the kernel fills the next part in
 * recvmsg), so a recv waits only if the kernel misbehaves; bound it all the
 * same, since the caller may be an event loop. */
#define DIAG_RECV_TIMEOUT_MS 1000

/* The kernel sizes a dump's messages to the reader's buffer, up to 32 KiB. */
#define DIAG_RECV_BYTES 32768

_Static_assert(sizeof(struct xpu_listener) == 20, "struct xpu_listener is part of the ABI");

/* ---- the socket, created from a thread inside the namespace ---- */

static int diag_open_in_ns(void *arg)
{
	struct timeval tv = { DIAG_RECV_TIMEOUT_MS / 1000, (DIAG_RECV_TIMEOUT_MS % 1000) * 1000 };
	int fd;

	(void)arg;
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
		int rc = -errno;

		close(fd);
		return rc;
	}
	return fd;
}

int xpu_diag_open(int netns_fd)
{
	return xpu_in_netns(netns_fd, diag_open_in_ns, NULL);
}

/* ---- one dump ---- */

/* Each dump on any socket gets its own sequence number, so that a reply left
 * unread by an earlier dump that gave up (a recv timeout) is told apart. */
static uint32_t diag_seq;

static int send_dump_request(int fd, int family, uint32_t seq)
{
	struct {
		struct nlmsghdr nlh;
		struct inet_diag_req_v2 req;
	} msg;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK }; /* nl_pid 0: the kernel */
	ssize_t n;

	memset(&msg, 0, sizeof(msg));
	msg.nlh.nlmsg_len = sizeof(msg);
	msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
	msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	msg.nlh.nlmsg_seq = seq;
	msg.req.sdiag_family = family;
	msg.req.sdiag_protocol = IPPROTO_TCP;
	msg.req.idiag_states = 1u << DIAG_TCP_LISTEN;
	/* idiag_ext 0: no attributes wanted; id zero: no address or port filter. */

	do
		n = sendto(fd, &msg, sizeof(msg), 0, (struct sockaddr *)&kernel, sizeof(kernel));
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return n == sizeof(msg) ? 0 : -EIO;
}

static void put_listener(struct xpu_listener *l, const struct inet_diag_msg *m)
{
	memset(l, 0, sizeof(*l));
	l->family = m->idiag_family == AF_INET6 ? 6 : 4;
	l->port = ntohs(m->id.idiag_sport);
	memcpy(l->addr, m->id.idiag_src, l->family == 6 ? 16 : 4);
}

/*
 * Send a dump request for family and read its reply to the end. Listeners go
 * to out[*count] onward while *count < max; *count counts them all. Returns 0
 * or -errno; a reply that is not for this request is skipped.
 */
static int dump_family(int fd, int family, struct xpu_listener *out, int max, int *count)
{
	union { /* nlmsghdr alignment for the walk over the buffer */
		struct nlmsghdr nlh;
		char bytes[DIAG_RECV_BYTES];
	} buf;
	uint32_t seq = __atomic_add_fetch(&diag_seq, 1, __ATOMIC_RELAXED);
	int rc;

	rc = send_dump_request(fd, family, seq);
	if (rc < 0)
		return rc;
	for (;;) {
		struct sockaddr_nl from;
		socklen_t fromlen = sizeof(from);
		struct nlmsghdr *h;
		ssize_t n;
		int len;

		n = recvfrom(fd, buf.bytes, sizeof(buf.bytes), MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		if (n > (ssize_t)sizeof(buf.bytes))
			return -EMSGSIZE; /* MSG_TRUNC gives the datagram's full length */
		if (from.nl_pid != 0)
			continue; /* not from the kernel */
		len = (int)n;
		for (h = &buf.nlh; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
			const struct inet_diag_msg *m = NLMSG_DATA(h);

			if (h->nlmsg_seq != seq)
				continue; /* the rest of an abandoned dump */
			if (h->nlmsg_type == NLMSG_DONE) {
				/* The payload, when present, is the dump's final status. */
				if (h->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
					int status;

					memcpy(&status, NLMSG_DATA(h), sizeof(status));
					if (status < 0)
						return status;
				}
				return 0;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = NLMSG_DATA(h);

				if (h->nlmsg_len < NLMSG_LENGTH(sizeof(*e)))
					return -EBADMSG;
				if (e->error < 0)
					return e->error;
				continue; /* an acknowledgement: not asked for, harmless */
			}
			if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
			    h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg)))
				continue;
			/* The state filter is the kernel's; checking it again costs nothing. */
			if (m->idiag_state != DIAG_TCP_LISTEN || m->idiag_family != family)
				continue;
			if (*count < max)
				put_listener(&out[*count], m);
			(*count)++;
		}
	}
}

int xpu_diag_listeners(int fd, struct xpu_listener *out, int max)
{
	int count = 0, rc;

	if (fd < 0 || max < 0 || (max > 0 && !out))
		return -EINVAL;
	rc = dump_family(fd, AF_INET, out, max, &count);
	if (rc < 0)
		return rc;
	rc = dump_family(fd, AF_INET6, out, max, &count);
	/* A kernel without IPv6 has no AF_INET6 handler: no IPv6 listeners. */
	if (rc < 0 && rc != -EAFNOSUPPORT && rc != -ENOENT)
		return rc;
	return count;
}

uint32_t xpu_listener_size(void)
{
	return sizeof(struct xpu_listener);
}
