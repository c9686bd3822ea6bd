/*
 * request.h - one request from the wire: its frames, its records, its
 * outcome. This module alone allocates and frees it.
 *
 * One request, one allocation: the struct, then its parsed records, the
 * envelope frames (each as a 4-byte length + bytes), the id, the body, the
 * endpoint text and the source. `cost` is that whole allocation: admission counts it,
 * so that empty, malformed and odd-shaped requests are paid for like any
 * other. Pure: no I/O, no ZeroMQ (fuzzed by tests/fuzz/fuzz_framing.c).
 */
#ifndef FEED_REQUEST_H
#define FEED_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"
#include "store.h"

#define REQUEST_MAX_FRAMES 32   /* frames of one message that are kept; more is malformed */
#define REQUEST_SOURCE_MAX 255  /* bytes of the source kept */

struct request {
	struct request *next;
	struct store_req sr;          /* the store's view: records, body, outcome */
	unsigned sock;                /* index of the socket it came from */
	unsigned char *env;           /* envelope frames (routing id first) */
	size_t env_len;
	unsigned nenv;
	bool delimited;               /* had an empty delimiter frame */
	unsigned char *id;            /* request id frame, or NULL */
	size_t id_len;
	size_t cost;                  /* bytes of the allocation, as admission counts them */
	uint64_t parked_ms;           /* mono ms its reply first found the peer full; 0 if not */
	uint64_t recv_us;             /* mono us it was received (set by the main loop) */
};

/* One received frame, borrowed. */
struct frame {
	const void *data;
	size_t len;
};

/*
 * Builds a request from the first nf (<= REQUEST_MAX_FRAMES) frames of a
 * message of `total` frames; f[0] is the routing id. The frames are copied.
 * `where` is the endpoint text ("tcp://... peer 1.2.3.4:5"), copied too, and
 * so is `source` (the sender: a certificate name or an address; NULL = "").
 * Malformed framing or a body the parser refuses gives a request with
 * sr.rejected set and the reason. Returns NULL only when out of memory.
 */
struct request *request_from_frames(const struct frame *f, unsigned nf, size_t total,
				    const struct proto_limits *lim, const char *where, const char *source,
				    unsigned sock);

/* Records this request counts as for admission: at least one. */
static inline size_t request_records(const struct request *r) { return r->sr.n ? r->sr.n : 1; }

/* Do a and b go back to the same peer (same socket, same routing id)? */
bool request_same_peer(const struct request *a, const struct request *b);

/*
 * Walks an envelope: *cursor starts at r->env; each call returns the next
 * frame's bytes and length and advances. Call it r->nenv times.
 */
const unsigned char *request_env_next(const unsigned char **cursor, size_t *ret_len);

/* NULL-safe. */
void request_free(struct request *r);

#endif
