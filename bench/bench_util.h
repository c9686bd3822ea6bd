/*
 * bench_util.h - small helpers shared by the benchmark programs in bench/:
 * clock, latency percentiles, the one-line RESULT report run.sh parses,
 * database URL and password-file handling. Not part of feed.
 */
#ifndef FEED_BENCH_UTIL_H
#define FEED_BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Monotonic time in nanoseconds. */
int64_t bench_now(void);

/*
 * Prints "RESULT records=N elapsed_ms=M rate=R p50_us=A p99_us=B" to stdout.
 * lat[0..n) are per-request latencies in ns (sorted in place); n = 0 prints
 * p50_us=- p99_us=-.
 */
void bench_result(uint64_t records, int64_t elapsed_ns, int64_t *lat, size_t n);

/* Parses a positive integer option value or exits with status 2. */
long bench_num(const char *opt, const char *s, long min, long max);

/* A database URL, split: scheme://user[:password]@host[:port]/db[?...] */
struct bench_url {
	char scheme[16];
	char user[128];
	char password[256];
	char host[256];
	unsigned port;
	char db[128];
	char path[1024];              /* sqlite:///abs/path -> /abs/path */
};

/* Returns 0 or -EINVAL. */
int bench_url_parse(const char *url, struct bench_url *ret);

/* Reads the first line of path into buf (password files). Returns 0 or -errno. */
int bench_read_password(const char *path, char *buf, size_t size);

#endif
