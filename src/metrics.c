/*
 * metrics.c - the Prometheus text format, process metrics and the HTTP
 * server for /metrics and /healthz (libmicrohttpd, its own thread).
 *
 * The listening socket is made and bound here, not by libmicrohttpd, so
 * that a port in use fails `start` with the system's own reason.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const uint64_t duration_bounds[] = { 100, 250, 500, 1000, 2500, 5000, 10000, 25000,
					    50000, 100000, 250000, 500000, 1000000, 2500000,
					    5000000, 10000000 };
static const uint64_t batch_bounds[] = { 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000,
					 10000, 20000, 50000, 100000 };

const struct hist_spec hist_duration_us = { duration_bounds,
					    sizeof(duration_bounds) / sizeof(duration_bounds[0]), 1e-6 };
const struct hist_spec hist_batch_records = { batch_bounds,
					      sizeof(batch_bounds) / sizeof(batch_bounds[0]), 1 };

const char *const reject_reason_names[REJECT_NREASONS] = {
	[REJECT_PARSE] = "parse",
	[REJECT_CONFLICT] = "conflict",
	[REJECT_REFUSED] = "refused",
	[REJECT_MALFORMED] = "malformed",
	[REJECT_TOO_LARGE] = "too_large",
	[REJECT_UNAUTHORIZED] = "unauthorized",
};

void hist_snap_add(struct hist_snap *s, const struct metric_hist *h)
{
	for (size_t i = 0; i <= HIST_MAX_BOUNDS; i++)
		s->bucket[i] += metric_get(&h->bucket[i]);
	s->sum += metric_get(&h->sum);
}

uint64_t hist_snap_count(const struct hist_snap *s)
{
	uint64_t n = 0;

	for (size_t i = 0; i <= HIST_MAX_BOUNDS; i++)
		n += s->bucket[i];
	return n;
}

/* ==== Text format ==== */

void metrics_family(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_value(FILE *out, const char *name, const char *labels, uint64_t v)
{
	fprintf(out, "%s%s%s%s %llu\n", name, labels ? "{" : "", labels ? labels : "", labels ? "}" : "",
		(unsigned long long)v);
}

void metrics_double(FILE *out, const char *name, const char *labels, double v)
{
	fprintf(out, "%s%s%s%s %.17g\n", name, labels ? "{" : "", labels ? labels : "", labels ? "}" : "", v);
}

void metrics_histogram(FILE *out, const char *name, const char *help, const struct hist_spec *spec,
		       const struct hist_snap *s)
{
	uint64_t cum = 0;

	metrics_family(out, name, "histogram", help);
	for (size_t i = 0; i < spec->n; i++) {
		cum += s->bucket[i];
		fprintf(out, "%s_bucket{le=\"%.6g\"} %llu\n", name, (double)spec->bounds[i] * spec->scale,
			(unsigned long long)cum);
	}
	/*
	 * The +Inf bucket and _count are the same sum of the buckets read, so
	 * they agree even when a scrape races an observation.
	 */
	cum += s->bucket[spec->n];
	fprintf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
	fprintf(out, "%s_sum %.17g\n", name, (double)s->sum * spec->scale);
	fprintf(out, "%s_count %llu\n", name, (unsigned long long)cum);
}

static long open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	long n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

static long long resident_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "re");
	long long size, rss;
	int n;

	if (!f)
		return -1;
	n = fscanf(f, "%lld %lld", &size, &rss);
	fclose(f);
	return n == 2 ? rss * sysconf(_SC_PAGESIZE) : -1;
}

void metrics_process(FILE *out, double start_time)
{
	long long rss = resident_bytes();
	long fds = open_fds();

	if (rss >= 0) {
		metrics_family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
		metrics_value(out, "process_resident_memory_bytes", NULL, (uint64_t)rss);
	}
	if (fds >= 0) {
		metrics_family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
		metrics_value(out, "process_open_fds", NULL, (uint64_t)fds);
	}
	metrics_family(out, "process_start_time_seconds", "gauge",
		       "Start time of the process since unix epoch in seconds.");
	metrics_double(out, "process_start_time_seconds", NULL, start_time);
}

/* ==== [metrics] listen ==== */

const char *metrics_parse_listen(const char *v, struct sockaddr_storage *ret, socklen_t *ret_len)
{
	char host[64];
	const char *colon, *port_text;
	char *end;
	size_t hl;
	long port;

	memset(ret, 0, sizeof(*ret));
	if (v[0] == '[') {
		const char *close = strchr(v, ']');
		if (!close || close[1] != ':')
			return "must be HOST:PORT, an IPv6 address in brackets: [::1]:9187";
		hl = (size_t)(close - v - 1);
		if (hl >= sizeof(host))
			return "the address is too long";
		memcpy(host, v + 1, hl);
		host[hl] = '\0';
		port_text = close + 2;
	} else {
		colon = strrchr(v, ':');
		if (!colon)
			return "must be HOST:PORT, e.g. 127.0.0.1:9187 (or empty: no metrics)";
		hl = (size_t)(colon - v);
		if (hl >= sizeof(host))
			return "the address is too long";
		memcpy(host, v, hl);
		host[hl] = '\0';
		port_text = colon + 1;
	}
	errno = 0;
	port = strtol(port_text, &end, 10);
	if (!port_text[0] || *end || errno || port < 1 || port > 65535)
		return "the port must be 1..65535 (HOST:PORT, e.g. 127.0.0.1:9187)";
	if (v[0] == '[') {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ret;
		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			return "not a numeric IPv6 address (e.g. [::1]:9187)";
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		*ret_len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)ret;
		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			return "the host must be a numeric IPv4 address (e.g. 127.0.0.1:9187, 0.0.0.0:9187) or [IPv6]";
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		*ret_len = sizeof(*a);
	}
	return NULL;
}

/* ==== The HTTP server ==== */

#define HTTP_CONNECTIONS 32     /* scrapers and health checkers at once */
#define HTTP_TIMEOUT_S 10       /* an idle connection is closed after this */

struct metrics_http {
	struct MHD_Daemon *d;
	struct metrics_handlers h;
	int fd;                     /* ours until MHD_start_daemon succeeds, then MHD's */
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
			     char *body, size_t len)
{
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result r;

	if (!resp) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

static enum MHD_Result reply_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
	char *body = strdup(text);

	return body ? reply(conn, status, "text/plain; charset=utf-8", body, strlen(body)) : MHD_NO;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_size, void **state)
{
	struct metrics_http *m = cls;

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n");
	if (strcmp(url, "/metrics") == 0) {
		char *body = NULL;
		size_t len = 0;
		FILE *out = open_memstream(&body, &len);

		if (!out)
			return MHD_NO;
		m->h.render(m->h.arg, out);
		if (fclose(out) != 0) {
			free(body);
			return MHD_NO;
		}
		return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len);
	}
	if (strcmp(url, "/healthz") == 0) {
		char why[512] = "", line[520];

		if (m->h.health(m->h.arg, why, sizeof(why)))
			return reply_text(conn, MHD_HTTP_OK, "ok\n");
		snprintf(line, sizeof(line), "%s\n", why);
		return reply_text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, line);
	}
	return reply_text(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics or /healthz\n");
}

int metrics_http_start(const char *addr, const struct metrics_handlers *h,
		       struct metrics_http **ret, char *err, size_t errsz)
{
	struct sockaddr_storage sa;
	socklen_t len;
	const char *why = metrics_parse_listen(addr, &sa, &len);
	struct metrics_http *m;
	int one = 1, r;

	if (why) {
		snprintf(err, errsz, "[metrics] listen \"%s\": %s", addr, why);
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->h = *h;
	m->fd = socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (m->fd < 0 || setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(m->fd, (struct sockaddr *)&sa, len) < 0 || listen(m->fd, 64) < 0) {
		r = -errno;
		snprintf(err, errsz, "[metrics] listen %s: cannot bind: %s", addr, strerror(-r));
		goto fail;
	}
	m->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL, handle, m,
				MHD_OPTION_LISTEN_SOCKET, m->fd,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTIONS,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
				MHD_OPTION_END);
	if (!m->d) {
		r = errno ? -errno : -EIO;
		snprintf(err, errsz, "[metrics] listen %s: cannot start the HTTP server: %s", addr,
			 strerror(-r));
		goto fail;
	}
	*ret = m;
	return 0;
fail:
	if (m->fd >= 0)
		close(m->fd);
	free(m);
	return r;
}

void metrics_http_stop(struct metrics_http **pp)
{
	struct metrics_http *m = *pp;

	if (!m)
		return;
	MHD_stop_daemon(m->d); /* joins its thread and closes the listening socket */
	free(m);
	*pp = NULL;
}
