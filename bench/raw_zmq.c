/*
 * raw_zmq.c - the ZeroMQ ceiling, and a stand-in server for development.
 *
 *   raw_zmq bench [-N MESSAGES] [-w WINDOW]
 *       A ROUTER echo thread and a pipelining DEALER in one process over
 *       tcp://127.0.0.1 (a free port), one small message per request, as feed
 *       frames them: [""][id][body] -> [""][id]["TRUE"]. Prints a RESULT line.
 *   raw_zmq echo -e ENDPOINT [-f N] [-x N]
 *       Binds a ROUTER and answers every request TRUE until SIGINT/SIGTERM;
 *       with -f, every Nth request gets "FALSE: line 1: volume: refused by
 *       raw_zmq -f"; with -x, every Nth request is dropped unanswered (to
 *       exercise a client's re-sends). Accepts REQ and DEALER clients.
 *
 * The echo thread runs its own loop; main runs the DEALER.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zmq.h>

#include "bench_util.h"

#define RAWZ_MAX_FRAMES 8

static volatile sig_atomic_t rawz_stop;

static void rawz_on_signal(int sig)
{
	(void)sig;
	rawz_stop = 1;
}

struct rawz_echo {
	void *sock;
	long false_every, drop_every;
	uint64_t seen;
};

/* Reads one request (all frames) and answers it. Returns 0, or -errno. */
static int rawz_echo_one(struct rawz_echo *e)
{
	zmq_msg_t f[RAWZ_MAX_FRAMES];
	int nf = 0, more = 1, r = 0;
	size_t ms = sizeof(more);

	while (more) {
		zmq_msg_t scratch, *m = nf < RAWZ_MAX_FRAMES ? &f[nf] : &scratch;

		zmq_msg_init(m);
		if (zmq_msg_recv(m, e->sock, nf == 0 ? ZMQ_DONTWAIT : 0) < 0) {
			r = -errno;
			zmq_msg_close(m);
			break;
		}
		zmq_getsockopt(e->sock, ZMQ_RCVMORE, &more, &ms);
		if (m == &scratch)
			zmq_msg_close(m);
		else
			nf++;
	}
	if (r == 0 && nf >= 3) {
		/* envelope: routing id, [""], [request id] (DEALER) ... body last */
		const char *answer = "TRUE";

		e->seen++;
		if (e->drop_every && e->seen % (uint64_t)e->drop_every == 0)
			goto out;
		if (e->false_every && e->seen % (uint64_t)e->false_every == 0)
			answer = "FALSE: line 1: volume: refused by raw_zmq -f";
		/* a sent message is left empty; closing it after is harmless */
		for (int i = 0; i < nf - 1; i++)
			zmq_msg_send(&f[i], e->sock, ZMQ_SNDMORE);
		zmq_send(e->sock, answer, strlen(answer), 0);
	}
out:
	for (int i = 0; i < nf; i++)
		zmq_msg_close(&f[i]);
	return r;
}

static void *rawz_echo_thread(void *arg)
{
	struct rawz_echo *e = arg;

	while (!rawz_stop) {
		zmq_pollitem_t it = { .socket = e->sock, .events = ZMQ_POLLIN };

		if (zmq_poll(&it, 1, 100) < 0 && errno != EINTR)
			break;
		while (rawz_echo_one(e) == 0)
			;
		if (errno == ETERM)
			break;
	}
	return NULL;
}

static int rawz_bench(void *ctx, long count, long window)
{
	struct rawz_echo e = { 0 };
	char ep[256];
	size_t eplen = sizeof(ep);
	int64_t *sent_at = calloc((size_t)count, sizeof(int64_t));
	int64_t *lat = malloc((size_t)count * sizeof(int64_t));
	int64_t next = 0, done = 0, start, last;
	int linger = 0, hwm = (int)window * 2 + 1000;
	pthread_t tid;
	void *d;
	int ret = 1;

	if (!sent_at || !lat)
		return 1;
	e.sock = zmq_socket(ctx, ZMQ_ROUTER);
	d = zmq_socket(ctx, ZMQ_DEALER);
	zmq_setsockopt(e.sock, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(e.sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(e.sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(d, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(d, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (zmq_bind(e.sock, "tcp://127.0.0.1:*") < 0 ||
	    zmq_getsockopt(e.sock, ZMQ_LAST_ENDPOINT, ep, &eplen) < 0 ||
	    zmq_connect(d, ep) < 0) {
		fprintf(stderr, "raw_zmq: %s\n", zmq_strerror(errno));
		goto out;
	}
	if (pthread_create(&tid, NULL, rawz_echo_thread, &e) != 0)
		goto out;
	start = last = bench_now();
	while (done < count) {
		zmq_pollitem_t it = { .socket = d, .events = ZMQ_POLLIN };

		while (next - done < window && next < count) {
			uint64_t id = (uint64_t)next;
			char body[32];
			int n = snprintf(body, sizeof(body), "%" PRId64 ",1,1.25\n", next + 1);

			if (zmq_send(d, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
				break;
			zmq_send(d, &id, sizeof(id), ZMQ_SNDMORE);
			zmq_send(d, body, (size_t)n, 0);
			sent_at[next++] = bench_now();
		}
		if (zmq_poll(&it, 1, 100) < 0 && errno != EINTR)
			break;
		for (;;) {
			char f0[8], f2[16];
			uint64_t id;

			if (zmq_recv(d, f0, sizeof(f0), ZMQ_DONTWAIT) < 0)
				break;
			if (zmq_recv(d, &id, sizeof(id), 0) != sizeof(id) ||
			    zmq_recv(d, f2, sizeof(f2), 0) != 4 || id >= (uint64_t)next) {
				fprintf(stderr, "raw_zmq: malformed reply\n");
				goto stop;
			}
			lat[done++] = bench_now() - sent_at[id];
			last = bench_now();
		}
		if (bench_now() - last > 10000000000LL) {
			fprintf(stderr, "raw_zmq: no reply for 10 s\n");
			goto stop;
		}
	}
	bench_result((uint64_t)done, bench_now() - start, lat, (size_t)done);
	ret = 0;
stop:
	rawz_stop = 1;
	pthread_join(tid, NULL);
out:
	zmq_close(d);
	zmq_close(e.sock);
	free(sent_at);
	free(lat);
	return ret;
}

static int rawz_serve(void *ctx, const char *endpoint, long false_every, long drop_every)
{
	struct rawz_echo e = { .false_every = false_every, .drop_every = drop_every };
	int linger = 0, hwm = 100000;
	struct sigaction sa = { .sa_handler = rawz_on_signal };

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	e.sock = zmq_socket(ctx, ZMQ_ROUTER);
	zmq_setsockopt(e.sock, ZMQ_LINGER, &linger, sizeof(linger));
	zmq_setsockopt(e.sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(e.sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (zmq_bind(e.sock, endpoint) < 0) {
		fprintf(stderr, "raw_zmq: bind %s: %s\n", endpoint, zmq_strerror(errno));
		zmq_close(e.sock);
		return 1;
	}
	printf("ready %s\n", endpoint);
	fflush(stdout);
	rawz_echo_thread(&e);
	fprintf(stderr, "raw_zmq: answered %" PRIu64 " requests\n", e.seen);
	zmq_close(e.sock);
	return 0;
}

_Noreturn static void rawz_usage(void)
{
	fprintf(stderr, "usage: raw_zmq bench [-N MESSAGES] [-w WINDOW]\n"
			"       raw_zmq echo -e ENDPOINT [-f FALSE_EVERY] [-x DROP_EVERY]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	long count = 1000000, window = 1000, false_every = 0, drop_every = 0;
	const char *endpoint = NULL;
	void *ctx;
	int opt, ret;

	if (argc < 2)
		rawz_usage();
	optind = 2;
	while ((opt = getopt(argc, argv, "N:w:e:f:x:")) != -1) {
		switch (opt) {
		case 'N': count = bench_num("-N", optarg, 1, 100000000); break;
		case 'w': window = bench_num("-w", optarg, 1, 100000); break;
		case 'e': endpoint = optarg; break;
		case 'f': false_every = bench_num("-f", optarg, 1, 1000000000); break;
		case 'x': drop_every = bench_num("-x", optarg, 1, 1000000000); break;
		default: rawz_usage();
		}
	}
	if (optind != argc)
		rawz_usage();
	ctx = zmq_ctx_new();
	if (strcmp(argv[1], "bench") == 0)
		ret = rawz_bench(ctx, count, window);
	else if (strcmp(argv[1], "echo") == 0 && endpoint)
		ret = rawz_serve(ctx, endpoint, false_every, drop_every);
	else
		rawz_usage();
	zmq_ctx_term(ctx);
	return ret;
}
