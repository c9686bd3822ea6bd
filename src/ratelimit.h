/*
 * ratelimit.h - at most `burst` log lines per `interval_ms`; the rest are
 * counted and summarised once the interval ends ("suppressed N ..."), so
 * that a flood of bad requests cannot flood the log. One owner thread.
 */
#ifndef FEED_RATELIMIT_H
#define FEED_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

struct ratelimit {
	uint64_t interval_ms;
	unsigned burst;
	uint64_t start;               /* mono ms the current interval began */
	unsigned n;                   /* lines let through in it */
	uint64_t suppressed;          /* lines held back since the last summary */
};

#define RATELIMIT_INIT(ms, b) { .interval_ms = (ms), .burst = (b) }

/* May one more line be logged now? Counts it as suppressed if not. */
static inline bool ratelimit_ok(struct ratelimit *rl, uint64_t now_ms)
{
	if (now_ms - rl->start >= rl->interval_ms) {
		rl->start = now_ms;
		rl->n = 0;
	}
	if (rl->n < rl->burst) {
		rl->n++;
		return true;
	}
	rl->suppressed++;
	return false;
}

/* Lines suppressed, once their interval has ended (then reset); else 0. */
static inline uint64_t ratelimit_suppressed(struct ratelimit *rl, uint64_t now_ms)
{
	uint64_t n = rl->suppressed;

	if (!n || now_ms - rl->start < rl->interval_ms)
		return 0;
	rl->suppressed = 0;
	return n;
}

#endif
