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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "pipeline.h"
#include "ratelimit.h"
#include "settle.h"
#include "timeutil.h"
#include "transport.h"

#define RECV_BURST 512   /* messages read per turn before replies get a chance */
#define RATE_WINDOW 60   /* seconds of per-second samples kept for the recent rates */
#define LOOP_STUCK_MS 5000 /* /healthz: the main loop turns at least every second */

/* The counters at one moment, for rates over a window. */
struct sample {
	uint64_t ms;                  /* mono */
	uint64_t committed, rejected, commits, commit_us;
};

struct server {
	const struct feed_config *cfg;
	struct transport *t;
	struct pipeline *p;
	struct settler *settler;
	char url_redacted[512];
	struct request *parked, **parked_tail;    /* replies waiting for a full peer */
	size_t parked_records, parked_bytes;      /* their share of the in-flight budget */
	struct ratelimit rl_reject, rl_stuck;     /* log lines per rejected request, per stuck peer */
	struct metrics_http *http;
	double started;                           /* unix time, process_start_time_seconds */
	/* metrics.h counters the main thread alone writes */
	struct {
		struct metric_hist request_us;    /* receive to reply */
		_Atomic uint64_t queue_records, queue_bytes;
		_Atomic uint64_t heartbeat_ms;    /* mono ms of the loop's last turn */
		_Atomic uint64_t stopping;
	} m;
	/* main thread only: one sample per second, and the last summary's */
	struct sample ring[RATE_WINDOW + 1];
	unsigned ring_next, ring_len;
	struct sample last_summary;
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
	{
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		s->started = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
	}
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

static void replied(struct server *s, struct request *r, int rc, uint64_t now_us)
{
	if (rc == 0)
		metric_observe(&s->m.request_us, &hist_duration_us, now_us - r->recv_us);
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
	uint64_t now_us = mono_us(), now = now_us / 1000u;
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
			replied(s, r, rc, now_us);
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

/* ==== State, rates, the summary line ==== */

static void take_sample(struct server *s, uint64_t now, struct sample *ret)
{
	struct pipeline_counters pc;

	pipeline_counters(s->p, &pc);
	*ret = (struct sample){ .ms = now, .committed = pc.committed_records,
				.rejected = pc.requests_false + transport_unauthorized(s->t),
				.commits = hist_snap_count(&pc.commit_us), .commit_us = pc.commit_us.sum };
}

/* Records this sample; returns the oldest one kept (up to RATE_WINDOW s before). */
static const struct sample *ring_push(struct server *s, const struct sample *cur)
{
	const unsigned size = RATE_WINDOW + 1;
	const struct sample *oldest;

	s->ring[s->ring_next] = *cur;
	s->ring_next = (s->ring_next + 1) % size;
	if (s->ring_len < size)
		s->ring_len++;
	oldest = &s->ring[(s->ring_next + size - s->ring_len) % size];
	return oldest;
}

static double per_second(uint64_t delta, uint64_t ms)
{
	return ms ? (double)delta * 1000.0 / (double)ms : 0.0;
}

/*
 * Records committed by this process and not settled yet, plus those the
 * settler cannot settle. sc is read before committed: a record is settled
 * only once committed, so the difference is never negative but for rows an
 * earlier run left (adopted).
 */
static uint64_t unsettled(const struct settle_counters *sc, uint64_t committed)
{
	uint64_t fresh = sc->settled - sc->adopted;

	return (committed > fresh ? committed - fresh : 0) + sc->unsettleable;
}

static void log_summary(struct server *s, const struct server_status *st, const struct sample *cur)
{
	const struct sample *last = &s->last_summary;
	uint64_t ms = cur->ms - last->ms, commits = cur->commits - last->commits;
	char commit[48] = "no commits";

	if (commits)
		snprintf(commit, sizeof(commit), "commit %.1f ms avg",
			 (double)(cur->commit_us - last->commit_us) / (double)commits / 1000.0);
	log_info("summary: last %llu s: %llu records committed (%.1f/s), %llu requests rejected; in flight %llu records, %llu bytes; unsettled %llu; %s; database %s",
		 (unsigned long long)((ms + 500) / 1000), (unsigned long long)(cur->committed - last->committed),
		 per_second(cur->committed - last->committed, ms),
		 (unsigned long long)(cur->rejected - last->rejected),
		 (unsigned long long)st->queue_records, (unsigned long long)st->queue_bytes,
		 (unsigned long long)st->unsettled, commit, st->db_up ? "up" : "DOWN");
	s->last_summary = *cur;
}

static void report_state(struct server *s, const struct server_hooks *h, bool *last_up, uint64_t *last_ms)
{
	struct pipeline_stats ps;
	struct pipeline_counters pc;
	struct server_status st;
	struct sample cur;
	const struct sample *old;
	char line[1200];
	uint64_t now = mono_ms();

	pipeline_stats(s->p, &ps);
	if (ps.db_up == *last_up && now - *last_ms < 1000)
		return;
	*last_up = ps.db_up;
	*last_ms = now;
	struct settle_counters sc;
	settle_counters(s->settler, &sc);
	take_sample(s, now, &cur);
	old = ring_push(s, &cur);
	if (!s->last_summary.ms)
		s->last_summary = cur;
	pipeline_counters(s->p, &pc);
	st = (struct server_status){
		.line = line, .db_up = ps.db_up, .db_since = ps.db_since, .db_error = ps.db_error,
		.committed = cur.committed, .duplicate = pc.duplicate_records, .rejected = cur.rejected,
		.committed_rate = per_second(cur.committed - old->committed, cur.ms - old->ms),
		.rejected_rate = per_second(cur.rejected - old->rejected, cur.ms - old->ms),
		.queue_records = metric_get(&s->m.queue_records), .queue_bytes = metric_get(&s->m.queue_bytes),
		.commit_ms = cur.commits > old->commits ?
			(double)(cur.commit_us - old->commit_us) / (double)(cur.commits - old->commits) / 1000.0 : -1,
		.busy_ms = pipeline_busy_ms(s->p),
	};
	st.unsettled = unsettled(&sc, st.committed);
	if (ps.db_up)
		snprintf(line, sizeof(line), "serving %.300s; database %.300s up; %llu records committed, %llu requests rejected",
			 transport_endpoints(s->t), s->url_redacted,
			 (unsigned long long)st.committed, (unsigned long long)st.rejected);
	else
		snprintf(line, sizeof(line), "serving %.300s; database %.300s DOWN since %lld: %.255s; senders are held back",
			 transport_endpoints(s->t), s->url_redacted, (long long)ps.db_since, ps.db_error);
	if (s->cfg->summary_interval > 0 && now - s->last_summary.ms >= (uint64_t)s->cfg->summary_interval * 1000u)
		log_summary(s, &st, &cur);
	if (h->state)
		h->state(h->arg, &st);
}

/* ==== /metrics and /healthz (the HTTP thread) ==== */

static void render_metrics(void *arg, FILE *out)
{
	struct server *s = arg;
	struct pipeline_counters pc;
	struct pipeline_stats ps;
	struct hist_snap req = { 0 };
	uint64_t unauthorized;
	char labels[64];

	struct settle_counters sc;

	settle_counters(s->settler, &sc);   /* before the writers' (unsettled()) */
	pipeline_counters(s->p, &pc);
	pipeline_stats(s->p, &ps);
	unauthorized = transport_unauthorized(s->t);
	hist_snap_add(&req, &s->m.request_us);

	metrics_family(out, "feed_build_info", "gauge", "feed's version; always 1.");
	metrics_value(out, "feed_build_info", "version=\"" FEED_VERSION "\"", 1);
	metrics_family(out, "feed_requests_total", "counter", "Requests answered (outcome committed), by answer.");
	metrics_value(out, "feed_requests_total", "result=\"true\"", pc.requests_true);
	metrics_value(out, "feed_requests_total", "result=\"false\"", pc.requests_false + unauthorized);
	metrics_family(out, "feed_requests_rejected_total", "counter", "Requests answered FALSE, by reason.");
	for (int k = 0; k < REJECT_NREASONS; k++) {
		snprintf(labels, sizeof(labels), "reason=\"%s\"", reject_reason_names[k]);
		metrics_value(out, "feed_requests_rejected_total", labels,
			      pc.rejected[k] + (k == REJECT_UNAUTHORIZED ? unauthorized : 0));
	}
	metrics_family(out, "feed_records_committed_total", "counter", "Records inserted into fee.");
	metrics_value(out, "feed_records_committed_total", NULL, pc.committed_records);
	metrics_family(out, "feed_records_duplicate_total", "counter",
		       "Records accepted that were stored already (identical re-sends): not inserted again.");
	metrics_value(out, "feed_records_duplicate_total", NULL, pc.duplicate_records);
	metrics_family(out, "feed_queue_records", "gauge", "Records admitted and not yet answered.");
	metrics_value(out, "feed_queue_records", NULL, metric_get(&s->m.queue_records));
	metrics_family(out, "feed_queue_bytes", "gauge", "Request bytes admitted and not yet answered.");
	metrics_value(out, "feed_queue_bytes", NULL, metric_get(&s->m.queue_bytes));
	metrics_family(out, "feed_queue_limit_records", "gauge", "[listen] queue_records.");
	metrics_value(out, "feed_queue_limit_records", NULL, (uint64_t)s->cfg->queue_records);
	metrics_family(out, "feed_database_up", "gauge", "1 while the database answers, 0 while down or stalled.");
	metrics_value(out, "feed_database_up", NULL, ps.db_up ? 1 : 0);
	metrics_family(out, "feed_database_outages_total", "counter", "Times the database went down or stalled.");
	metrics_value(out, "feed_database_outages_total", NULL, ps.outages);
	metrics_family(out, "feed_database_call_seconds", "gauge",
		       "How long the oldest database call in progress has run; 0 if none.");
	metrics_double(out, "feed_database_call_seconds", NULL, (double)pipeline_busy_ms(s->p) / 1000.0);
	metrics_histogram(out, "feed_commit_duration_seconds", "Duration of each committing batch write.",
			  &hist_duration_us, &pc.commit_us);
	metrics_histogram(out, "feed_batch_records", "Records per committed batch (a rejected request counts 1).",
			  &hist_batch_records, &pc.batch_records);
	metrics_histogram(out, "feed_request_duration_seconds", "From receiving a request to sending its reply.",
			  &hist_duration_us, &req);
	metrics_family(out, "feed_unsettled_records", "gauge",
		       "Records committed by this process not settled yet, plus rows the settler cannot settle.");
	metrics_value(out, "feed_unsettled_records", NULL, unsettled(&sc, pc.committed_records));
	metrics_family(out, "feed_records_settled_total", "counter", "Records settled (fee computed).");
	metrics_value(out, "feed_records_settled_total", NULL, sc.settled);
	metrics_process(out, s->started);
}

static bool health(void *arg, char *why, size_t size)
{
	struct server *s = arg;
	struct pipeline_stats ps;
	uint64_t beat = metric_get(&s->m.heartbeat_ms), now = mono_ms();

	if (metric_get(&s->m.stopping)) {
		snprintf(why, size, "stopping");
		return false;
	}
	if (now - beat > LOOP_STUCK_MS) {
		snprintf(why, size, "the main loop has not turned for %llu s", (unsigned long long)((now - beat) / 1000));
		return false;
	}
	pipeline_stats(s->p, &ps);
	if (!ps.db_up) {
		time_t since = (time_t)ps.db_since;
		struct tm tm;
		char when[32] = "?";

		if (gmtime_r(&since, &tm))
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
		snprintf(why, size, "database down since %s (%lld s): %s", when,
			 (long long)(time(NULL) - ps.db_since), ps.db_error);
		for (char *p = why; *p; p++)   /* one line, whatever the database said */
			if ((unsigned char)*p < 0x20)
				*p = ' ';
		return false;
	}
	return true;
}

int server_start_metrics(struct server *s, char *err, size_t errsz)
{
	const struct metrics_handlers h = { .arg = s, .render = render_metrics, .health = health };

	if (!s->cfg->metrics_listen[0])
		return 0;
	metric_set(&s->m.heartbeat_ms, mono_ms());
	return metrics_http_start(s->cfg->metrics_listen, &h, &s->http, err, errsz);
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

		metric_set(&s->m.heartbeat_ms, mono_ms());
		settle_watch(s->settler);
		metric_set(&s->m.queue_records, pipeline_inflight_records(s->p));
		metric_set(&s->m.queue_bytes, pipeline_inflight_bytes(s->p));
		/* done work already waiting: look at the sockets, do not sleep */
		int timeout = pipeline_sleep_begin(s->p) ? (s->parked ? 10 : 1000) : 0;
		int r = transport_poll(s->t, want, fds, 2, timeout, &ready, &input);

		pipeline_sleep_end(s->p, ready & 2);

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
					metric_set(&s->m.stopping, 1);
					deadline = mono_ms() + (uint64_t)s->cfg->shutdown_timeout * 1000u;
					log_info("%s received: not accepting new requests; finishing %zu in flight",
						 strsignal((int)si.ssi_signo), pipeline_inflight(s->p));
				}
			}
		}
		send_replies(s);
		if (input) {
			uint64_t now_us = mono_us();   /* one clock read per burst */

			for (int i = 0; i < RECV_BURST && pipeline_admit(s->p); i++) {
				struct request *req;
				r = transport_recv(s->t, &req);
				if (r < 0) {
					log_err("receive failed: %s", strerror(-r));
					return r;
				}
				if (r == 0)
					break;
				req->recv_us = now_us;
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
	/* the HTTP thread reads everything below */
	metrics_http_stop(&s->http);
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
