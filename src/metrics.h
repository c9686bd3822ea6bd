/*
 * metrics.h - counters for /metrics, and the HTTP server that serves them.
 *
 * Every counter has one owner thread (a writer, the main thread, the
 * settler) that alone adds to it; the HTTP thread only reads. So adding is
 * a relaxed load and store (no locked instruction, no lock per record), and
 * reading is a relaxed load: a scrape sees each value whole, maybe a moment
 * old, and ThreadSanitizer sees atomics, not a race.
 *
 * The HTTP server (libmicrohttpd, its own polling thread) answers
 * GET /metrics with what a render callback writes, and GET /healthz with
 * 200 "ok" or 503 and the one-line reason a health callback gives.
 */
#ifndef FEED_METRICS_H
#define FEED_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/* Owner thread only: c += n. */
static inline void metric_add(_Atomic uint64_t *c, uint64_t n)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

/* Owner thread only: c = v (a gauge). */
static inline void metric_set(_Atomic uint64_t *c, uint64_t v)
{
	atomic_store_explicit(c, v, memory_order_relaxed);
}

/* Any thread. */
static inline uint64_t metric_get(const _Atomic uint64_t *c)
{
	return atomic_load_explicit((_Atomic uint64_t *)c, memory_order_relaxed);
}

/* ==== Histograms ==== */

#define HIST_MAX_BOUNDS 16

/* Upper bounds in integer units (microseconds, records); `scale` turns them into the exported unit. */
struct hist_spec {
	const uint64_t *bounds;
	size_t n;                   /* <= HIST_MAX_BOUNDS */
	double scale;
};

extern const struct hist_spec hist_duration_us;   /* seconds, observed in microseconds */
extern const struct hist_spec hist_batch_records; /* records */

/* One owner thread's histogram: per-bucket (not cumulative) counts, +Inf last. */
struct metric_hist {
	_Atomic uint64_t bucket[HIST_MAX_BOUNDS + 1];
	_Atomic uint64_t sum;
};

/* Owner thread only. A linear scan: a dozen compares, once per batch or reply. */
static inline void metric_observe(struct metric_hist *h, const struct hist_spec *spec, uint64_t v)
{
	size_t i = 0;

	while (i < spec->n && v > spec->bounds[i])
		i++;
	metric_add(&h->bucket[i], 1);
	metric_add(&h->sum, v);
}

/* A histogram read (summed over threads). */
struct hist_snap {
	uint64_t bucket[HIST_MAX_BOUNDS + 1];
	uint64_t sum;
};

/* Any thread: adds h's current values into s. */
void hist_snap_add(struct hist_snap *s, const struct metric_hist *h);
uint64_t hist_snap_count(const struct hist_snap *s);

/* ==== Rejected requests, by a fixed set of reasons (no client-controlled label) ==== */

enum reject_reason {
	REJECT_PARSE,          /* a line the parser refused */
	REJECT_CONFLICT,       /* a ticket already stored with other values */
	REJECT_REFUSED,        /* the database refused a value (constraint, trigger, size) */
	REJECT_MALFORMED,      /* ZeroMQ framing */
	REJECT_TOO_LARGE,      /* over max_message_bytes or max_records */
	REJECT_UNAUTHORIZED,   /* a CURVE client removed after its handshake */
	REJECT_NREASONS
};

extern const char *const reject_reason_names[REJECT_NREASONS];

/* ==== Text format (Prometheus exposition format 0.0.4) ==== */

void metrics_family(FILE *out, const char *name, const char *type, const char *help);
void metrics_value(FILE *out, const char *name, const char *labels, uint64_t v);
void metrics_double(FILE *out, const char *name, const char *labels, double v);
/* A whole histogram family: HELP, TYPE, cumulative buckets, _sum, _count. */
void metrics_histogram(FILE *out, const char *name, const char *help, const struct hist_spec *spec,
		       const struct hist_snap *s);
/* process_resident_memory_bytes, process_open_fds, process_start_time_seconds. */
void metrics_process(FILE *out, double start_time);

/* ==== The HTTP server ==== */

/*
 * Parses "HOST:PORT" (numeric IPv4, or [IPv6]) for [metrics] listen.
 * Returns NULL and fills *ret and *ret_len, or why not (a static string).
 */
const char *metrics_parse_listen(const char *v, struct sockaddr_storage *ret, socklen_t *ret_len);

struct metrics_http;

struct metrics_handlers {
	void *arg;
	/* Writes the /metrics body. Runs on the HTTP thread. */
	void (*render)(void *arg, FILE *out);
	/* true if healthy; else writes a one-line reason. Runs on the HTTP thread. */
	bool (*health)(void *arg, char *why, size_t size);
};

/*
 * Binds listen and starts the server thread. 0, or -errno with err saying
 * why (a port in use, an address not on this host).
 */
int metrics_http_start(const char *addr, const struct metrics_handlers *h,
		       struct metrics_http **ret, char *err, size_t errsz);
/* Stops the thread: no callback runs after it returns. NULL-safe; sets *pp = NULL. */
void metrics_http_stop(struct metrics_http **pp);

#endif
