/*
 * pipeline.h - requests between the socket thread and the writer threads.
 *
 * The main (socket) thread receives a request, parses it and submits it;
 * a writer thread takes whatever is queued (up to batch_max records, no
 * timer: batches grow with load), commits it with store_write() and hands
 * it back; the main thread then sends the reply. The main thread alone
 * accounts what is in flight, so admission needs no locks.
 */
#ifndef FEED_PIPELINE_H
#define FEED_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "request.h"
#include "store.h"

struct pipeline;

struct pipeline_stats {
	uint64_t committed_records;
	uint64_t accepted_requests;
	uint64_t rejected_requests;
	bool db_up;
	char db_error[256];           /* last database error while down */
	int64_t db_since;             /* unix time of the last up/down change */
	uint64_t outages;             /* up -> down changes since start */
};

/* The writers' counters, summed (any thread; each value whole, maybe a moment old). */
struct pipeline_counters {
	uint64_t requests_true, requests_false;
	uint64_t committed_records;   /* inserted (new) records */
	uint64_t duplicate_records;   /* accepted re-sends of records already stored */
	uint64_t rejected[REJECT_NREASONS];
	struct hist_snap commit_us;   /* duration of each committing store_write() */
	struct hist_snap batch_records;
};

/*
 * Opens cfg->writers connections and starts the writer threads. The
 * password is copied. On failure writes the reason into err.
 */
int pipeline_start(const struct feed_config *cfg, const struct store_params *sp,
		   struct pipeline **ret, char *err, size_t errsz);

/*
 * Main thread: may one more request be read? In flight are at most
 * queue_records records (every request counts at least one) and queue_bytes
 * bytes (every request counts its whole allocation), plus the one last admitted.
 */
bool pipeline_admit(const struct pipeline *p);
/* Main thread: accounts r as in flight; the writers see it at the next flush. */
void pipeline_submit(struct pipeline *p, struct request *r);
/* Main thread: hands what was submitted to the writers (one lock for a burst). */
void pipeline_flush(struct pipeline *p);
/*
 * Main thread, around its poll: sleep_begin says the main thread may sleep
 * (from now on a writer that finishes writes the descriptor); false when
 * done work is already waiting (poll without sleeping). sleep_end after the
 * poll, fd_ready when pipeline_fd() was readable.
 */
bool pipeline_sleep_begin(struct pipeline *p);
void pipeline_sleep_end(struct pipeline *p, bool fd_ready);
/* Main thread: takes the list of requests whose outcome is committed (NULL if none). */
struct request *pipeline_take_done(struct pipeline *p);
/* Main thread: a reply has been sent (or dropped) for r; frees it. */
void pipeline_release(struct pipeline *p, struct request *r);
/* fn(arg) runs on a writer thread after each commit that stored records; must not block. */
void pipeline_on_commit(struct pipeline *p, void (*fn)(void *), void *arg);
/* A descriptor that becomes readable when pipeline_take_done() has work (while asleep). */
int pipeline_fd(const struct pipeline *p);
size_t pipeline_inflight(const struct pipeline *p);
/* Main thread: records and bytes in flight (what admission counts). */
size_t pipeline_inflight_records(const struct pipeline *p);
size_t pipeline_inflight_bytes(const struct pipeline *p);
void pipeline_stats(struct pipeline *p, struct pipeline_stats *ret);
/* Any thread. */
void pipeline_counters(const struct pipeline *p, struct pipeline_counters *ret);
/*
 * Any thread: how long (ms) the oldest database call in progress has been
 * running; 0 when no writer is in a call. A stuck writer shows here.
 */
uint64_t pipeline_busy_ms(struct pipeline *p);

/*
 * Stops the writers: they finish what is queued first, unless `abandon`
 * is set (shutdown timeout passed), then the database call each may be in
 * is cancelled and they stop at once.
 * Requests still queued are freed unanswered. NULL-safe; sets *pp = NULL.
 */
void pipeline_stop(struct pipeline **pp, bool abandon);

#endif
