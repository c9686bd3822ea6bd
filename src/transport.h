/*
 * transport.h - the ZeroMQ side of the daemon: ROUTER sockets, requests in,
 * replies out. With auth.c (the ZAP handler), the only server files that
 * include <zmq.h>. Main thread only.
 */
#ifndef FEED_TRANSPORT_H
#define FEED_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "pipeline.h"

struct transport;

/* Creates the context and binds every endpoint of cfg. Call after the last fork. */
int transport_open(const struct feed_config *cfg, struct transport **ret, char *err, size_t errsz);
/* Closes sockets (linger bounded) and the context. NULL-safe; sets *pt = NULL. */
void transport_close(struct transport **pt);

/*
 * Rereads [listen] curve_clients now (SIGHUP; after the privilege drop, to
 * see it as the daemon's user will). 0 without CURVE; -errno with err set.
 */
int transport_auth_rescan(struct transport *t, char *err, size_t errsz);

/* Any thread: requests refused as not authorized since start. */
uint64_t transport_unauthorized(const struct transport *t);

/* The endpoints as bound (wildcard ports resolved), comma separated. */
const char *transport_endpoints(const struct transport *t);

/*
 * Waits up to timeout_ms for socket input (only if want_input) or for one
 * of fds[0..nfds) to become readable; bit i of *ret_fds is set for fds[i].
 * Pending handshakes are answered here (the ZAP handler) whatever want_input.
 * *ret_input tells whether a socket has input. Returns 0 or -errno (EINTR is 0).
 */
int transport_poll(struct transport *t, bool want_input, const int *fds, size_t nfds,
		   int timeout_ms, unsigned *ret_fds, bool *ret_input);

/*
 * Receives one message from any socket without blocking, parsed into a new
 * request (records filled, or sr.rejected with the reason). Returns 1 with
 * *ret set (owned by the caller), 0 if no socket has a message, -errno on
 * error. A message that cannot be answered (no routing id) is dropped and logged.
 */
int transport_recv(struct transport *t, struct request **ret);

/*
 * Sends r's reply ("TRUE" or "FALSE: reason"). Returns 0 when sent or when
 * the peer is gone (the reply is dropped: the client re-sends), -EAGAIN when
 * the peer's pipe is full (try again later), other -errno on error.
 */
int transport_reply(struct transport *t, struct request *r);

#endif
