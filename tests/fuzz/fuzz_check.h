/*
 * fuzz_check.h - invariants of the libFuzzer targets are checked with
 * FUZZ_CHECK (abort with the condition), not assert: release builds define
 * NDEBUG.
 */
#ifndef FEED_FUZZ_CHECK_H
#define FEED_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_CHECK(cond)                                                       \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "%s:%d: invariant failed: %s\n",       \
				__FILE__, __LINE__, #cond);                    \
			abort();                                               \
		}                                                              \
	} while (0)

#endif
