/*
 * load.c - the benchmark load generator: sends fresh, unique records to a
 * feed-compatible endpoint and reports records/s and request latency.
 *
 *   load req    -e ENDPOINT -c CLIENTS -N RECORDS -s FIRST_TICKET [-d SECONDS] [-t MS]
 *               [-r RATE] [-S SERVER.key -C CLIENT.key_secret]
 *   load dealer -e ENDPOINT -w WINDOW -b RECORDS_PER_REQUEST -N RECORDS
 *               -s FIRST_TICKET [-d SECONDS] [-t MS] [-S SERVER.key -C CLIENT.key_secret]
 *
 * With -S and -C every socket is a CURVE client (certificates in the ZPL
 * format of `feed keygen`).
 *
 * req: CLIENTS threads, each a REQ socket in lock-step, 1 record per request.
 * With -r the clients pace themselves to RATE requests/s in all: each sends
 * on a fixed schedule (every CLIENTS/RATE s, the clients' phases spread over
 * one period), and a request's latency counts from its scheduled time, not
 * from when it was sent, so that a server falling behind shows in p99 (no
 * coordinated omission).
 * dealer: one DEALER socket, WINDOW requests in flight, frames [""][id][body].
 * Tickets are FIRST_TICKET.. so that a run never repeats an earlier one.
 * Stops issuing after SECONDS (default 60); a request unanswered for MS
 * (default 30000) fails the run. Prints one RESULT line (bench_util.h), the
 * counts on stderr; exits 0 only if every request got TRUE.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "bench_util.h"

#define LOAD_BODY_LINE 64             /* "ticket,login,1.25\n" fits easily */
#define LOAD_MAX_RECORDS 100000000L

struct load_opts {
	const char *endpoint;
	char server_key[41], public_key[41], secret_key[41];   /* Z85; empty: plain */
	long clients, window, batch, records, seconds, timeout_ms, rate;
	int64_t first_ticket;
};

struct load_thread {
	pthread_t tid;
	const struct load_opts *o;
	void *ctx;
	pthread_barrier_t *barrier;
	int64_t first, count;          /* tickets [first, first + count) */
	int64_t deadline;              /* stop issuing after this (monotonic ns) */
	int64_t start, period;         /* -r: the first send and the gap between sends (ns); 0: no pacing */
	int64_t *lat;
	size_t nlat;
	uint64_t ok, bad, failed;
	char why[160];
};

static size_t load_record(char *buf, size_t size, int64_t ticket)
{
	int n = snprintf(buf, size, "%" PRId64 ",%" PRId64 ",1.25\n", ticket, 1 + ticket % 1000);

	return n > 0 && (size_t)n < size ? (size_t)n : 0;
}

/* The Z85 value of "NAME = \"...\"" in a ZPL certificate file, into out[41]. Exits on failure. */
static void load_cert_key(const char *path, const char *name, char out[41])
{
	char buf[4096];
	FILE *f = fopen(path, "re");
	size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
	const char *p;

	if (f)
		fclose(f);
	buf[n] = '\0';
	p = strstr(buf, name);
	p = p ? strchr(p, '"') : NULL;
	if (!p || strlen(p + 1) < 41 || p[41] != '"') {
		fprintf(stderr, "load: %s: no %s\n", path, name);
		exit(2);
	}
	memcpy(out, p + 1, 40);
	out[40] = '\0';
}

static int load_curve(const struct load_opts *o, void *s)
{
	if (!o->server_key[0])
		return 0;
	return zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, o->server_key, 40) ||
	       zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, o->public_key, 40) ||
	       zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, o->secret_key, 40) ? -1 : 0;
}

/* ==== req: lock-step REQ clients ==== */

static void *load_req_thread(void *arg)
{
	struct load_thread *t = arg;
	int linger = 0, tmo = (int)t->o->timeout_ms;
	char body[LOAD_BODY_LINE], reply[256];
	void *s = zmq_socket(t->ctx, ZMQ_REQ);

	if (!s) {
		snprintf(t->why, sizeof(t->why), "zmq_socket: %s", zmq_strerror(errno));
		pthread_barrier_wait(t->barrier);
		return NULL;
	}
	zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof(tmo));
	zmq_setsockopt(s, ZMQ_SNDTIMEO, &tmo, sizeof(tmo));
	if (load_curve(t->o, s) < 0)
		snprintf(t->why, sizeof(t->why), "CURVE: %s", zmq_strerror(errno));
	else if (zmq_connect(s, t->o->endpoint) < 0)
		snprintf(t->why, sizeof(t->why), "connect: %s", zmq_strerror(errno));
	pthread_barrier_wait(t->barrier);
	for (int64_t i = 0; i < t->count && !t->why[0]; i++) {
		size_t len = load_record(body, sizeof(body), t->first + i);
		int64_t t0 = bench_now();
		int n;

		if (t0 > t->deadline)
			break;
		if (t->period) {
			int64_t due = t->start + i * t->period;
			if (due > t->deadline)
				break;
			if (due > t0) {
				struct timespec ts = { .tv_sec = due / 1000000000LL, .tv_nsec = due % 1000000000LL };
				while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
					;
			}
			t0 = due;   /* late sends count their wait */
		}
		if (zmq_send(s, body, len, 0) < 0) {
			snprintf(t->why, sizeof(t->why), "send: %s", zmq_strerror(errno));
			break;
		}
		n = zmq_recv(s, reply, sizeof(reply) - 1, 0);
		if (n < 0) {
			snprintf(t->why, sizeof(t->why), "no reply within %ld ms: %s",
				 t->o->timeout_ms, zmq_strerror(errno));
			t->failed++;
			break;
		}
		t->lat[t->nlat++] = bench_now() - t0;
		if (n == 4 && memcmp(reply, "TRUE", 4) == 0) {
			t->ok++;
		} else {
			t->bad++;
			if (t->bad == 1) {
				reply[n < (int)sizeof(reply) - 1 ? n : (int)sizeof(reply) - 1] = '\0';
				fprintf(stderr, "load: ticket %" PRId64 ": %s\n", t->first + i, reply);
			}
		}
	}
	zmq_close(s);
	return NULL;
}

static int load_req(const struct load_opts *o, void *ctx)
{
	struct load_thread *th = calloc((size_t)o->clients, sizeof(*th));
	pthread_barrier_t barrier;
	uint64_t ok = 0, bad = 0, failed = 0;
	int64_t *lat = NULL, start, per = (o->records + o->clients - 1) / o->clients;
	size_t nlat = 0;
	long started = 0;
	int ret = 1;

	if (!th)
		return 1;
	pthread_barrier_init(&barrier, NULL, (unsigned)o->clients + 1);
	lat = malloc((size_t)o->records * sizeof(*lat));
	if (!lat)
		goto out;
	for (long i = 0; i < o->clients; i++) {
		struct load_thread *t = &th[i];
		int64_t first = (int64_t)i * per;

		t->o = o;
		t->ctx = ctx;
		t->barrier = &barrier;
		t->first = o->first_ticket + first;
		t->count = first >= o->records ? 0 :
			   (first + per > o->records ? o->records - first : per);
		t->deadline = INT64_MAX;
		t->lat = lat + first;
		if (pthread_create(&t->tid, NULL, load_req_thread, t) != 0) {
			fprintf(stderr, "load: pthread_create failed\n");
			exit(1);
		}
		started++;
	}
	start = bench_now();
	for (long i = 0; i < o->clients; i++) {
		th[i].deadline = start + o->seconds * 1000000000LL;
		if (o->rate) {
			th[i].period = o->clients * 1000000000LL / o->rate;
			/* 10 ms for everyone to reach the barrier, then phases spread over a period */
			th[i].start = start + 10000000LL + th[i].period * i / o->clients;
		}
	}
	pthread_barrier_wait(&barrier);
	for (long i = 0; i < started; i++)
		pthread_join(th[i].tid, NULL);
	start = bench_now() - start;
	for (long i = 0; i < o->clients; i++) {
		ok += th[i].ok;
		bad += th[i].bad;
		failed += th[i].failed;
		if (th[i].why[0])
			fprintf(stderr, "load: client %ld: %s\n", i, th[i].why);
		/* compact the per-thread latency runs */
		memmove(lat + nlat, th[i].lat, th[i].nlat * sizeof(*lat));
		nlat += th[i].nlat;
	}
	fprintf(stderr, "load: TRUE %" PRIu64 ", FALSE %" PRIu64 ", no reply %" PRIu64 "\n",
		ok, bad, failed);
	bench_result(ok, start, lat, nlat);
	ret = bad == 0 && failed == 0 && ok > 0 ? 0 : 1;
out:
	pthread_barrier_destroy(&barrier);
	free(lat);
	free(th);
	return ret;
}

/* ==== dealer: one pipelining client ==== */

static int load_dealer(const struct load_opts *o, void *ctx)
{
	int64_t nreq = (o->records + o->batch - 1) / o->batch;
	int64_t *sent_at = calloc((size_t)nreq, sizeof(*sent_at));
	int64_t *lat = malloc((size_t)nreq * sizeof(*lat));
	char *body = malloc((size_t)o->batch * LOAD_BODY_LINE);
	int linger = 0, hwm = (int)o->window * 2 + 1000;
	int64_t next = 0, done = 0, inflight = 0, start, deadline, last_reply;
	uint64_t ok = 0, bad = 0;
	size_t nlat = 0;
	void *s = NULL;
	int ret = 1;

	if (!sent_at || !lat || !body)
		goto out;
	s = zmq_socket(ctx, ZMQ_DEALER);
	if (!s)
		goto out;
	zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (load_curve(o, s) < 0) {
		fprintf(stderr, "load: CURVE: %s\n", zmq_strerror(errno));
		goto out;
	}
	if (zmq_connect(s, o->endpoint) < 0) {
		fprintf(stderr, "load: connect %s: %s\n", o->endpoint, zmq_strerror(errno));
		goto out;
	}
	start = last_reply = bench_now();
	deadline = start + o->seconds * 1000000000LL;
	while (done < next || next < nreq) {
		zmq_pollitem_t it = { .socket = s, .events = ZMQ_POLLIN };
		int64_t now = bench_now();

		while (inflight < o->window && next < nreq && now < deadline) {
			int64_t first = o->first_ticket + next * o->batch;
			int64_t n = o->records - next * o->batch;
			uint64_t id = (uint64_t)next;
			size_t len = 0;

			if (n > o->batch)
				n = o->batch;
			for (int64_t i = 0; i < n; i++)
				len += load_record(body + len, LOAD_BODY_LINE, first + i);
			if (zmq_send(s, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
				if (errno == EAGAIN)
					break;
				goto out;
			}
			zmq_send(s, &id, sizeof(id), ZMQ_SNDMORE);
			zmq_send(s, body, len, 0);
			sent_at[next++] = bench_now();
			inflight++;
		}
		if (now >= deadline && inflight == 0)
			break;
		if (zmq_poll(&it, 1, 100) < 0 && errno != EINTR)
			goto out;
		for (;;) {
			zmq_msg_t f[3];
			int nf = 0, more = 1;
			size_t ms = sizeof(more);
			uint64_t id;

			for (; more && nf < 3; nf++) {
				zmq_msg_init(&f[nf]);
				if (zmq_msg_recv(&f[nf], s, ZMQ_DONTWAIT) < 0) {
					zmq_msg_close(&f[nf]);
					more = -1;
					break;
				}
				zmq_getsockopt(s, ZMQ_RCVMORE, &more, &ms);
			}
			if (more == -1 && nf == 0)
				break;
			if (nf == 3 && more == 0 && zmq_msg_size(&f[1]) == sizeof(id)) {
				memcpy(&id, zmq_msg_data(&f[1]), sizeof(id));
				if (id < (uint64_t)next && sent_at[id] != 0) {
					int64_t recs = o->records - (int64_t)id * o->batch;

					if (recs > o->batch)
						recs = o->batch;
					lat[nlat++] = bench_now() - sent_at[id];
					sent_at[id] = 0;
					done++;
					inflight--;
					last_reply = bench_now();
					if (zmq_msg_size(&f[2]) == 4 &&
					    memcmp(zmq_msg_data(&f[2]), "TRUE", 4) == 0) {
						ok += (uint64_t)recs;
					} else {
						if (bad == 0)
							fprintf(stderr, "load: request %" PRIu64 ": %.*s\n", id,
								(int)zmq_msg_size(&f[2]),
								(char *)zmq_msg_data(&f[2]));
						bad += (uint64_t)recs;
					}
				}
			}
			for (int i = 0; i < nf; i++)
				zmq_msg_close(&f[i]);
		}
		if (inflight > 0 && bench_now() - last_reply > o->timeout_ms * 1000000LL) {
			fprintf(stderr, "load: no reply for %ld ms, %" PRId64 " requests unanswered\n",
				o->timeout_ms, inflight);
			break;
		}
	}
	fprintf(stderr, "load: TRUE %" PRIu64 ", FALSE %" PRIu64 ", no reply %" PRId64 " requests\n",
		ok, bad, inflight);
	bench_result(ok, bench_now() - start, lat, nlat);
	ret = bad == 0 && inflight == 0 && ok > 0 ? 0 : 1;
out:
	if (s)
		zmq_close(s);
	free(sent_at);
	free(lat);
	free(body);
	return ret;
}

_Noreturn static void load_usage(void)
{
	fprintf(stderr,
		"usage: load req    -e ENDPOINT -c CLIENTS -N RECORDS -s FIRST_TICKET [-d SECONDS] [-t MS]\n"
		"                   [-r RATE] [-S SERVER.key -C CLIENT.key_secret]\n"
		"       load dealer -e ENDPOINT -w WINDOW -b RECORDS_PER_REQUEST -N RECORDS\n"
		"                   -s FIRST_TICKET [-d SECONDS] [-t MS] [-S SERVER.key -C CLIENT.key_secret]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct load_opts o = { .clients = 1, .window = 1000, .batch = 1, .records = 100000,
			       .seconds = 60, .timeout_ms = 30000, .first_ticket = 1 };
	const char *mode;
	void *ctx;
	int opt, ret;

	if (argc < 2)
		load_usage();
	mode = argv[1];
	optind = 2;
	while ((opt = getopt(argc, argv, "e:c:w:b:N:s:d:t:r:S:C:")) != -1) {
		switch (opt) {
		case 'e': o.endpoint = optarg; break;
		case 'c': o.clients = bench_num("-c", optarg, 1, 1024); break;
		case 'w': o.window = bench_num("-w", optarg, 1, 100000); break;
		case 'b': o.batch = bench_num("-b", optarg, 1, 100000); break;
		case 'N': o.records = bench_num("-N", optarg, 1, LOAD_MAX_RECORDS); break;
		case 's': o.first_ticket = bench_num("-s", optarg, 1, INT64_MAX / 2); break;
		case 'd': o.seconds = bench_num("-d", optarg, 1, 3600); break;
		case 't': o.timeout_ms = bench_num("-t", optarg, 1, 3600000); break;
		case 'r': o.rate = bench_num("-r", optarg, 1, 100000000); break;
		case 'S': load_cert_key(optarg, "public-key", o.server_key); break;
		case 'C':
			load_cert_key(optarg, "public-key", o.public_key);
			load_cert_key(optarg, "secret-key", o.secret_key);
			break;
		default: load_usage();
		}
	}
	if (!o.endpoint || optind != argc || !o.server_key[0] != !o.public_key[0])
		load_usage();
	ctx = zmq_ctx_new();
	if (!ctx)
		return 1;
	if (strcmp(mode, "req") == 0)
		ret = load_req(&o, ctx);
	else if (strcmp(mode, "dealer") == 0)
		ret = load_dealer(&o, ctx);
	else
		load_usage();
	zmq_ctx_term(ctx);
	return ret;
}
