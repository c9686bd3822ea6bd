/*
 * bench_util.c - helpers shared by the benchmark programs (see bench_util.h).
 * Pure functions plus stdout/stderr; used from any thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

int64_t bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int bench_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

void bench_result(uint64_t records, int64_t elapsed_ns, int64_t *lat, size_t n)
{
	int64_t ms = elapsed_ns / 1000000;
	uint64_t rate = elapsed_ns > 0 ? (uint64_t)((__int128)records * 1000000000 / elapsed_ns) : 0;

	printf("RESULT records=%" PRIu64 " elapsed_ms=%" PRId64 " rate=%" PRIu64, records, ms, rate);
	if (n == 0) {
		printf(" p50_us=- p99_us=-\n");
	} else {
		qsort(lat, n, sizeof(*lat), bench_cmp);
		/* nearest-rank percentiles */
		printf(" p50_us=%" PRId64 " p99_us=%" PRId64 "\n",
		       lat[(n * 50 + 99) / 100 - 1] / 1000, lat[(n * 99 + 99) / 100 - 1] / 1000);
	}
	fflush(stdout);
}

long bench_num(const char *opt, const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end != '\0' || v < min || v > max) {
		fprintf(stderr, "%s must be %ld..%ld, got \"%s\"\n", opt, min, max, s);
		exit(2);
	}
	return v;
}

/* Copies s[0..n) into dst (size dsz); -EINVAL if it does not fit. */
static int bench_copy(char *dst, size_t dsz, const char *s, size_t n)
{
	if (n >= dsz)
		return -EINVAL;
	memcpy(dst, s, n);
	dst[n] = '\0';
	return 0;
}

int bench_url_parse(const char *url, struct bench_url *ret)
{
	struct bench_url u;
	const char *p, *at, *slash, *colon, *end;

	memset(&u, 0, sizeof(u));
	p = strstr(url, "://");
	if (!p || bench_copy(u.scheme, sizeof(u.scheme), url, (size_t)(p - url)) < 0)
		return -EINVAL;
	p += 3;
	if (strcmp(u.scheme, "sqlite") == 0) {
		if (*p != '/' || bench_copy(u.path, sizeof(u.path), p, strcspn(p, "?")) < 0)
			return -EINVAL;
		*ret = u;
		return 0;
	}
	end = p + strcspn(p, "?");
	slash = memchr(p, '/', (size_t)(end - p));
	if (!slash)
		slash = end;
	at = memchr(p, '@', (size_t)(slash - p));
	if (at) {
		colon = memchr(p, ':', (size_t)(at - p));
		if (colon) {
			if (bench_copy(u.user, sizeof(u.user), p, (size_t)(colon - p)) < 0 ||
			    bench_copy(u.password, sizeof(u.password), colon + 1,
				       (size_t)(at - colon - 1)) < 0)
				return -EINVAL;
		} else if (bench_copy(u.user, sizeof(u.user), p, (size_t)(at - p)) < 0) {
			return -EINVAL;
		}
		p = at + 1;
	}
	colon = memchr(p, ':', (size_t)(slash - p));
	if (colon) {
		char port[8];

		if (bench_copy(port, sizeof(port), colon + 1, (size_t)(slash - colon - 1)) < 0)
			return -EINVAL;
		u.port = (unsigned)strtoul(port, NULL, 10);
	} else {
		colon = slash;
	}
	if (bench_copy(u.host, sizeof(u.host), p, (size_t)(colon - p)) < 0)
		return -EINVAL;
	if (slash < end && bench_copy(u.db, sizeof(u.db), slash + 1, (size_t)(end - slash - 1)) < 0)
		return -EINVAL;
	*ret = u;
	return 0;
}

int bench_read_password(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	if (n < 0) {
		r = -errno;
		goto out;
	}
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0';
out:
	close(fd);
	return r;
}
