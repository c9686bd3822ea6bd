/*
 * settle.h - the settle stage: turns stored records ('N') into settled ones
 * ('Y', fee = volume x rate) on its own thread and database connection, so
 * that it never slows the answer path.
 */
#ifndef FEED_SETTLE_H
#define FEED_SETTLE_H

#include "config.h"
#include "store.h"

struct settler;

/* Connects and starts the thread. It settles rows left 'N' by a crash first. */
int settle_start(const struct feed_config *cfg, const struct store_params *sp,
		 struct settler **ret, char *err, size_t errsz);
/* Asks for a pass soon (new records were committed). Any thread; never blocks long. */
void settle_kick(void *settler);
/*
 * Any thread: rows settled since start; of those, rows found 'N' at start
 * (left by an earlier run, settled by the first pass); rows the last full
 * pass found but could not settle (volume or rate unreadable).
 */
struct settle_counters {
	uint64_t settled, adopted, unsettleable;
};
void settle_counters(const struct settler *st, struct settle_counters *ret);
/*
 * Main thread, at least once a second: cancels a database call of the settle
 * thread unanswered for 2 x stall_timeout (at least 10 s); the thread then
 * reconnects. Logs it. NULL-safe; never after settle_stop().
 */
void settle_watch(struct settler *st);
/* Stops the thread after its current transaction. NULL-safe; sets *ps = NULL. */
void settle_stop(struct settler **ps);

#endif
