/*
 * server.c - the main loop of the serving process (main thread).
 *
 * One zmq_poll over the ROUTER sockets, the signalfd and the pipeline's
 * eventfd. Each turn: handle signals; send the replies of committed
 * requests; read new requests while the pipeline admits them. When the
 * pipeline is full the sockets are not polled for input, so ZeroMQ's
 * high-water marks push back on the senders. A reply that cannot be sent
 * yet (peer pipe full) is kept and retried; requests held that way count
 * as in flight, so memory stays bounded.
 */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "pipeline.h"
#include "ratelimit.h"
#include "settle.h"
#include "timeutil.h"
#include "transport.h"

#define RECV_BURST 512   /* messages read per turn before replies get a chance */

struct server {
	const struct feed_config *cfg;
	struct transport *t;
	struct pipeline *p;
	struct settler *settler;
	char url_redacted[512];
	struct request *parked, **parked_tail;    /* replies waiting for a full peer */
	size_t parked_records, parked_bytes;      /* their share of the in-flight budget */
	struct ratelimit rl_reject, rl_stuck;     /* log lines per rejected request, per stuck peer */
};

/*
 * A reply whose peer does not read (its pipe is full) is parked, and only
 * that peer waits: input goes on, the other peers' replies go out. A parked
 * reply is retried each turn (one try per stuck peer) and dropped after
 * PARKED_MS, or sooner, oldest first, when parked replies hold more than a
 * share of the in-flight budget (1/PARKED_SHARE), so that a stuck peer
 * cannot starve the others of admission. The records are committed: the
 * client's re-send is answered TRUE.
 */
#define PARKED_MS 5000
#define PARKED_SHARE 4
#define STUCK_MAX 16            /* stuck peers remembered per pass */

int server_bind(const struct feed_config *cfg, struct server **ret, char *err, size_t errsz)
{
	struct server *s = calloc(1, sizeof(*s));
	int r;

	if (!s)
		return -ENOMEM;
	s->cfg = cfg;
	s->parked_tail = &s->parked;
	s->rl_reject = (struct ratelimit)RATELIMIT_INIT(1000, 10);
	s->rl_stuck = (struct ratelimit)RATELIMIT_INIT(10000, 5);
	store_url_redact(cfg->url, s->url_redacted, sizeof(s->url_redacted));
	r = transport_open(cfg, &s->t, err, errsz);
	if (r < 0) {
		free(s);
		return r;
	}
	*ret = s;
	return 0;
}

int server_check_auth(struct server *s, char *err, size_t errsz)
{
	return transport_auth_rescan(s->t, err, errsz);
}

int server_open_db(struct server *s, const struct store_params *sp, char *err, size_t errsz)
{
	int r = pipeline_start(s->cfg, sp, &s->p, err, errsz);

	if (r < 0)
		return r;
	r = settle_start(s->cfg, sp, &s->settler, err, errsz);
	if (r < 0)
		return r;
	pipeline_on_commit(s->p, settle_kick, s->settler);
	return 0;
}

const char *server_endpoints(const struct server *s) { return transport_endpoints(s->t); }

/*
 * A rejected request the database would not keep even truncated: the log is
 * where it stays (its first bytes, hex, with its length).
 */
static void log_unstored(const struct request *r)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *b = r->sr.body;
	char dump[2 * 512 + 1];
	size_t n = r->sr.len < 512 ? r->sr.len : 512;

	for (size_t i = 0; i < n; i++) {
		dump[2 * i] = hex[b[i] >> 4];
		dump[2 * i + 1] = hex[b[i] & 15];
	}
	dump[2 * n] = '\0';
	log_err("rejected a request from %s that the database would not store in fee_reject: %s; its %zu bytes begin (hex) %s",
		r->sr.endpoint, r->sr.reason, r->sr.len, dump);
}

static void park(struct server *s, struct request *r, uint64_t now)
{
	if (!r->parked_ms) {
		r->parked_ms = now;
		if (ratelimit_ok(&s->rl_stuck, now))
			log_warn("%s is not reading its replies: they are held for %d ms, then dropped",
				 r->sr.endpoint, PARKED_MS);
	}
	r->next = NULL;
	*s->parked_tail = r;
	s->parked_tail = &r->next;
	s->parked_records += request_records(r);
	s->parked_bytes += r->cost;
}

/* Is r's peer one that was found full in this pass? */
static bool stuck(struct request *const *st, size_t n, const struct request *r)
{
	for (size_t i = 0; i < n; i++)
		if (request_same_peer(st[i], r))
			return true;
	return false;
}

static void replied(struct server *s, struct request *r, int rc)
{
	if (rc < 0)
		log_warn("%s: reply not sent: %s", r->sr.endpoint, strerror(-rc));
	if (r->sr.unstored)
		log_unstored(r);
	else if (r->sr.rejected && ratelimit_ok(&s->rl_reject, mono_ms()))
		log_info("rejected a request from %s: %s", r->sr.endpoint, r->sr.reason);
	pipeline_release(s->p, r);
}

/* Sends replies: first the parked ones, then the newly committed, each peer in order. */
static void send_replies(struct server *s)
{
	struct request *r, *next, *st[STUCK_MAX];
	size_t nst = 0, dropped = 0;
	uint64_t now = mono_ms();
	size_t max_records = (size_t)s->cfg->queue_records / PARKED_SHARE;
	size_t max_bytes = (size_t)s->cfg->queue_bytes / PARKED_SHARE;

	*s->parked_tail = pipeline_take_done(s->p);
	r = s->parked;
	s->parked = NULL;
	s->parked_tail = &s->parked;
	s->parked_records = s->parked_bytes = 0;
	for (; r; r = next) {
		next = r->next;
		if (r->parked_ms && now - r->parked_ms > PARKED_MS) {
			dropped++;
			pipeline_release(s->p, r);
			continue;
		}
		if (stuck(st, nst, r)) {
			park(s, r, now);
			continue;
		}
		int rc = transport_reply(s->t, r);
		if (rc != -EAGAIN) {
			replied(s, r, rc);
			continue;
		}
		if (nst < STUCK_MAX)
			st[nst++] = r;
		park(s, r, now);
	}
	/* over their share of the budget: drop the oldest */
	while (s->parked && (s->parked_records > max_records || s->parked_bytes > max_bytes)) {
		r = s->parked;
		s->parked = r->next;
		if (!s->parked)
			s->parked_tail = &s->parked;
		s->parked_records -= request_records(r);
		s->parked_bytes -= r->cost;
		dropped++;
		pipeline_release(s->p, r);
	}
	if (dropped)
		log_warn("dropped %zu replies to peers that did not read them (their records are committed; a re-send is answered TRUE)",
			 dropped);
	uint64_t n = ratelimit_suppressed(&s->rl_reject, now);
	if (n)
		log_info("suppressed %llu more lines about rejected requests (each is in fee_reject)",
			 (unsigned long long)n);
}

static void report_state(struct server *s, const struct server_hooks *h, bool *last_up, uint64_t *last_ms)
{
	struct pipeline_stats st;
	char line[1200];
	uint64_t now = mono_ms();

	pipeline_stats(s->p, &st);
	if (st.db_up == *last_up && now - *last_ms < 1000)
		return;
	*last_up = st.db_up;
	*last_ms = now;
	if (st.db_up)
		snprintf(line, sizeof(line), "serving %.300s; database %.300s up; %llu records committed, %llu requests rejected",
			 transport_endpoints(s->t), s->url_redacted,
			 (unsigned long long)st.committed_records, (unsigned long long)st.rejected_requests);
	else
		snprintf(line, sizeof(line), "serving %.300s; database %.300s DOWN since %lld: %.255s; senders are held back",
			 transport_endpoints(s->t), s->url_redacted, (long long)st.db_since, st.db_error);
	if (h->state)
		h->state(h->arg, line, st.db_up);
}

int server_loop(struct server *s, int sigfd, const struct server_hooks *h)
{
	bool stopping = false, last_up = true;
	uint64_t deadline = 0, last_report = 0;
	int fds[2] = { sigfd, pipeline_fd(s->p) };

	report_state(s, h, &last_up, &last_report);
	for (;;) {
		unsigned ready = 0;
		bool input = false;
		bool want = !stopping && pipeline_admit(s->p);
		int r = transport_poll(s->t, want, fds, 2, s->parked ? 10 : 1000, &ready, &input);

		if (r < 0) {
			log_err("poll failed: %s", strerror(-r));
			return r;
		}
		if (ready & 1) {
			struct signalfd_siginfo si;
			while (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
				if (si.ssi_signo == SIGHUP) {
					char err[512];
					if (transport_auth_rescan(s->t, err, sizeof(err)) < 0)
						log_err("SIGHUP: %s; no client is allowed until it can be read", err);
					if (h->reload)
						h->reload(h->arg);
				} else if (!stopping) {
					stopping = true;
					deadline = mono_ms() + (uint64_t)s->cfg->shutdown_timeout * 1000u;
					log_info("%s received: not accepting new requests; finishing %zu in flight",
						 strsignal((int)si.ssi_signo), pipeline_inflight(s->p));
				}
			}
		}
		send_replies(s);
		if (input) {
			for (int i = 0; i < RECV_BURST && pipeline_admit(s->p); i++) {
				struct request *req;
				r = transport_recv(s->t, &req);
				if (r < 0) {
					log_err("receive failed: %s", strerror(-r));
					return r;
				}
				if (r == 0)
					break;
				pipeline_submit(s->p, req);
			}
			pipeline_flush(s->p);
		}
		report_state(s, h, &last_up, &last_report);
		if (stopping) {
			if (pipeline_inflight(s->p) == 0)
				return 0;
			if (mono_ms() >= deadline) {
				log_err("shutdown_timeout (%d s) passed with %zu requests unanswered; they were not confirmed and senders will re-send them",
					s->cfg->shutdown_timeout, pipeline_inflight(s->p));
				return (int)pipeline_inflight(s->p);
			}
		}
	}
}

void server_free(struct server **ps)
{
	struct server *s = *ps;

	if (!s)
		return;
	/* writers first: they kick the settler after each commit */
	if (s->p) {
		for (struct request *r = s->parked, *next; r; r = next) {
			next = r->next;
			pipeline_release(s->p, r);
		}
		pipeline_stop(&s->p, true);
	}
	settle_stop(&s->settler);
	transport_close(&s->t);
	free(s);
	*ps = NULL;
}
