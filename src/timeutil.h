/*
 * timeutil.h - deadlines for pthread_cond_timedwait (CLOCK_REALTIME) and a
 * monotonic millisecond clock. Header-only.
 */
#ifndef FEED_TIMEUTIL_H
#define FEED_TIMEUTIL_H

#include <stdint.h>
#include <time.h>

/* The CLOCK_REALTIME instant ms milliseconds from now, for pthread_cond_timedwait(). */
static inline struct timespec deadline_after_ms(long ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static inline uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline uint64_t mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

#endif
