/*
 * pipeline.c - the bounded queue, the writer threads and the done list.
 *
 * Threads: the main thread submits and takes done requests; each writer
 * thread owns one database connection and one scratch batch. Batching has
 * no timer: a writer takes everything queued (up to batch_max records) the
 * moment it is free, so a lone client waits for one commit, and under load
 * commits are shared by many requests (group commit). With several writers,
 * an idle one leaves a short queue to a colleague that is committing, for at
 * most one average commit (defer_to_colleague).
 *
 * Nothing is answered before its COMMIT returned. A database error keeps
 * the batch and retries it (reconnecting with capped exponential backoff);
 * the queue then fills and the main thread stops reading its sockets.
 *
 * A database that accepts the connection but never answers (stopped,
 * hung, a lock held forever) gives no error at all: a watchdog thread sees
 * a writer's call outstanding for stall_timeout, reports the database down
 * ("stalled"), and cancels the call, which then fails and is retried like
 * any other error. A commit whose outcome is unknown is resolved by the
 * retry, which looks its tickets up first.
 */
#include "pipeline.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "timeutil.h"

#define WATCHDOG_TICK_MS 200   /* how often the watchdog looks: stalls are seconds long */
#define STOP_CANCEL_MS 50      /* on abandon, calls still running are cancelled this often */

struct writer {
	pthread_t thread;
	struct pipeline *p;
	int idx;
	struct store *s;
	struct store_batch *batch;
	struct store_req **reqs;
	struct request **held;
	size_t cap;                 /* requests per batch */
	bool started;
	uint64_t busy_since;        /* mono us this writer took its batch; 0: idle (under p->mu) */
	size_t busy_records;        /* records of that batch (under p->mu) */
	/* what the watchdog sees: under call_mu, held only for a few instructions */
	pthread_mutex_t call_mu;
	uint64_t call_since;        /* mono ms the database call in progress began; 0: none */
	uint64_t stalled_ms;        /* set by the watchdog when it cancelled that call */
	uint64_t last_call_since;   /* when the last call that ended began (writer only) */
	/* counters this writer alone adds to (metrics.h), per batch, not per record */
	struct {
		_Atomic uint64_t requests_true, requests_false, committed, duplicate;
		_Atomic uint64_t rejected[REJECT_NREASONS];
		struct metric_hist commit_us, batch_records;
	} m;
};

struct pipeline {
	const struct store_ops *ops;
	struct store_params sp;
	char *url;
	char *password;
	size_t batch_max;
	int retry_max_ms;
	uint64_t stall_ms;           /* [database] stall_timeout */
	size_t queue_records, queue_bytes;
	atomic_bool abandoned;       /* = abandon, readable without mu */

	pthread_mutex_t mu;          /* queue, flags, stats */
	pthread_cond_t cv;           /* work queued, or stop: idle writers wait here */
	pthread_cond_t backoff_cv;   /* abandon: writers backing off wait here */
	struct request *qhead, **qtail;
	bool stopping, abandon;
	struct pipeline_stats st;
	uint64_t up_ms;              /* mono ms the database was last found up again */
	int idle;                    /* writers waiting for work */
	size_t queued_records;       /* records in the queue (qhead) */
	uint64_t commit_avg_us;      /* moving average of a commit's duration */

	pthread_mutex_t done_mu;
	struct request *dhead, **dtail;
	int efd;
	/*
	 * The eventfd is written only while the main thread may sleep in poll:
	 * a busy main thread finds done work by done_ready alone, without two
	 * system calls per batch. Both sides store their flag, then load the
	 * other's (seq_cst): one of them sees the other (pipeline_sleep_begin).
	 */
	atomic_bool done_ready;      /* dhead is not empty (set and cleared under done_mu) */
	atomic_bool main_asleep;     /* the main thread is in (or about to enter) poll */

	/* main thread only */
	size_t inflight, inflight_records, inflight_bytes;
	size_t pending_records;
	struct request *pending, **pending_tail;   /* submitted, not yet flushed */

	struct writer *w;
	int nw;

	pthread_t watchdog;
	bool watchdog_started;
	pthread_cond_t watch_cv;     /* stop: the watchdog waits here */

	void (*on_commit)(void *);
	void *on_commit_arg;
};

static void sleep_ms_unless_abandoned(struct pipeline *p, int ms)
{
	struct timespec ts = deadline_after_ms(ms);

	pthread_mutex_lock(&p->mu);
	if (!p->abandon)
		pthread_cond_timedwait(&p->backoff_cv, &p->mu, &ts);
	pthread_mutex_unlock(&p->mu);
}

static void db_down(struct pipeline *p, struct writer *w, int r)
{
	pthread_mutex_lock(&p->mu);
	/*
	 * A call that began before the database came back belongs to the outage
	 * that just ended (another writer recovered first; this one's cancelled
	 * call is only now returning): not a new outage. The caller reconnects
	 * and retries either way.
	 */
	if (p->st.db_up && w->last_call_since && w->last_call_since < p->up_ms) {
		pthread_mutex_unlock(&p->mu);
		return;
	}
	snprintf(p->st.db_error, sizeof(p->st.db_error), "%.255s", w->s->errmsg[0] ? w->s->errmsg : strerror(-r));
	if (p->st.db_up) {
		p->st.db_up = false;
		p->st.db_since = time(NULL);
		p->st.outages++;
		log_err("database unavailable: %s; records are kept and retried, senders wait", p->st.db_error);
	}
	pthread_mutex_unlock(&p->mu);
}

static void db_up(struct pipeline *p)
{
	pthread_mutex_lock(&p->mu);
	if (!p->st.db_up) {
		time_t now = time(NULL);
		log_info("database available again after %lld s", (long long)(now - p->st.db_since));
		p->up_ms = mono_ms();
		p->st.db_up = true;
		p->st.db_since = now;
		p->st.db_error[0] = '\0';
	}
	pthread_mutex_unlock(&p->mu);
}

/* ==== The watchdog ==== */

/*
 * A call begins: the watchdog may cancel it from now on. Returns false when
 * the pipeline is abandoned: no call may start then (pipeline_stop cancels
 * only the calls it can see).
 */
static bool call_begin(struct writer *w)
{
	bool ok;

	pthread_mutex_lock(&w->call_mu);
	ok = !atomic_load(&w->p->abandoned);
	if (ok) {
		w->call_since = mono_ms();
		w->stalled_ms = 0;
	}
	pthread_mutex_unlock(&w->call_mu);
	return ok;
}

/*
 * The call ended with r. A call the watchdog cancelled is a stall whatever
 * error the cancellation produced: -ETIMEDOUT, and errmsg says so.
 */
static int call_end(struct writer *w, int r)
{
	uint64_t stalled;

	pthread_mutex_lock(&w->call_mu);
	w->last_call_since = w->call_since;
	w->call_since = 0;
	stalled = w->stalled_ms;
	w->stalled_ms = 0;
	pthread_mutex_unlock(&w->call_mu);
	if (!stalled)
		return r;
	snprintf(w->s->errmsg, sizeof(w->s->errmsg), "stalled: no answer for %llu s",
		 (unsigned long long)(stalled / 1000));
	return -ETIMEDOUT;
}

static int watched_write(struct writer *w, size_t n)
{
	if (!call_begin(w))
		return -ECANCELED;
	return call_end(w, store_write(w->s, w->batch, w->reqs, n));
}

static int watched_reconnect(struct writer *w)
{
	if (!call_begin(w))
		return -ECANCELED;
	return call_end(w, w->s->ops->reconnect(w->s));
}

/* The database stalled under w: report the outage (once) and cancel the call. */
static void stall(struct pipeline *p, struct writer *w, uint64_t ms)
{
	pthread_mutex_lock(&p->mu);
	/* a call begun during an outage another writer saw end is cancelled, not a new outage */
	bool stale = p->st.db_up && w->call_since < p->up_ms;
	if (!stale)
		snprintf(p->st.db_error, sizeof(p->st.db_error), "stalled: no answer for %llu s",
			 (unsigned long long)(ms / 1000));
	if (p->st.db_up && !stale) {
		p->st.db_up = false;
		p->st.db_since = time(NULL);
		p->st.outages++;
		log_err("database unavailable: %s (writer %d); the call is cancelled and retried, records are kept, senders wait",
			p->st.db_error, w->idx);
	} else {
		log_debug("writer %d: no answer for %llu s; cancelling the call", w->idx,
			  (unsigned long long)(ms / 1000));
	}
	pthread_mutex_unlock(&p->mu);
	w->s->ops->cancel(w->s);
}

static void *watchdog_main(void *arg)
{
	struct pipeline *p = arg;

	pthread_mutex_lock(&p->mu);
	while (!p->stopping) {
		struct timespec ts = deadline_after_ms(WATCHDOG_TICK_MS);

		pthread_cond_timedwait(&p->watch_cv, &p->mu, &ts);
		pthread_mutex_unlock(&p->mu);
		for (int i = 0; i < p->nw; i++) {
			struct writer *w = &p->w[i];
			uint64_t now = mono_ms();

			/* under call_mu: the call cannot end (and reconnect) meanwhile */
			pthread_mutex_lock(&w->call_mu);
			if (w->call_since && !w->stalled_ms && now - w->call_since >= p->stall_ms) {
				w->stalled_ms = now - w->call_since;
				stall(p, w, w->stalled_ms);
			}
			pthread_mutex_unlock(&w->call_mu);
		}
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* Which of the fixed reasons (metrics.h) a rejected request counts under. */
static enum reject_reason reject_reason(const struct store_req *r)
{
	if (r->bad_input) {
		if (strncmp(r->reason, "malformed", 9) == 0)
			return REJECT_MALFORMED;
		if (strncmp(r->reason, "request too large", 17) == 0 ||
		    strncmp(r->reason, "too many records", 16) == 0)
			return REJECT_TOO_LARGE;
		return REJECT_PARSE;
	}
	return r->refused ? REJECT_REFUSED : REJECT_CONFLICT;
}

/* Commits one batch, retrying until it is committed or the pipeline is abandoned. */
static int commit_batch(struct writer *w, size_t n)
{
	struct pipeline *p = w->p;
	int backoff = 50, busy = 0;
	uint64_t busy_since = 0;
	bool fresh = false;           /* reconnected once already in this call */

	for (;;) {
		uint64_t t0 = mono_us();
		int r = watched_write(w, n);

		if (r == 0) {
			metric_observe(&w->m.commit_us, &hist_duration_us, mono_us() - t0);
			db_up(p);
			return 0;
		}
		pthread_mutex_lock(&p->mu);
		bool abandon = p->abandon;
		pthread_mutex_unlock(&p->mu);
		if (abandon)
			return -ECANCELED;
		if (r == -EAGAIN) {
			if (!busy_since)
				busy_since = mono_ms();
			if (mono_ms() - busy_since < p->stall_ms) {
				/* lock contention: retry soon, it is not an outage (yet) */
				log_debug("writer %d: transient database error, retrying: %s", w->idx, w->s->errmsg);
				busy = busy < 50 ? busy + 1 : 50;
				sleep_ms_unless_abandoned(p, 2 * busy);
				continue;
			}
		} else {
			busy_since = 0;
		}
		/*
		 * A connection that died in an outage the other writers already
		 * saw end fails once more: reconnect at once and retry before
		 * calling the database down, so that one outage is logged once.
		 */
		if (r != -EAGAIN && !fresh) {
			char cause[sizeof(w->s->errmsg)];

			fresh = true;
			memcpy(cause, w->s->errmsg, sizeof(cause));
			if (watched_reconnect(w) == 0) {
				/*
				 * Said once per writer: a failover (another
				 * node, a promoted standby) or a commit whose
				 * outcome is unknown passes through here
				 * without an outage to log.
				 */
				log_warn("writer %d: %s; reconnected, retrying the batch (its tickets are "
					 "looked up first)", w->idx, cause);
				continue;
			}
		}
		db_down(p, w, r);
		sleep_ms_unless_abandoned(p, backoff);
		backoff = backoff * 2 > p->retry_max_ms ? p->retry_max_ms : backoff * 2;
		busy = 0;
		if (r != -EAGAIN) {
			/*
			 * A cancelled (stalled) call leaves the connection unusable:
			 * always reconnect, and until that works its reason (a server
			 * that refuses durability = full, a wrong password) is what
			 * the log and `status` show, not "not connected".
			 */
			int rr;
			while ((rr = watched_reconnect(w)) < 0 && rr != -ECANCELED) {
				log_debug("writer %d: reconnect failed: %s", w->idx, w->s->errmsg);
				db_down(p, w, rr);
				pthread_mutex_lock(&p->mu);
				abandon = p->abandon;
				pthread_mutex_unlock(&p->mu);
				if (abandon)
					return -ECANCELED;
				sleep_ms_unless_abandoned(p, backoff);
				backoff = backoff * 2 > p->retry_max_ms ? p->retry_max_ms : backoff * 2;
			}
		}
	}
}

/* The CLOCK_REALTIME instant us microseconds from now, for pthread_cond_timedwait(). */
static struct timespec deadline_after_us(uint64_t us)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += (time_t)(us / 1000000u);
	ts.tv_nsec += (long)(us % 1000000u) * 1000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

/*
 * Under p->mu: should an idle writer leave the queue to a colleague that is
 * committing now? Yes while the queue holds fewer records than that commit
 * and it has run for less than DEFER_PATIENCE commits: the colleague takes
 * the queue the moment it finishes, so requests that trickle in share one
 * commit instead of being split one or two at a time over the writers
 * (which costs the database a commit, a flush, a round trip each). A deep
 * queue, or a commit that takes long (a stall, an outage), still gets a
 * second writer. Only small commits are waited for (lock-step senders):
 * a pipelining sender's large batches overlap as before.
 * Sets *ret_wait_us to when to look again.
 */
#define DEFER_MAX_RECORDS 128     /* larger commits are not waited for */
#define DEFER_PATIENCE 1          /* average commit durations */
#define DEFER_MIN_US 1000u
#define DEFER_MAX_US 50000u
static bool defer_to_colleague(struct pipeline *p, uint64_t *ret_wait_us)
{
	uint64_t oldest = 0, now, patience;
	size_t busy_records = 0;

	for (int i = 0; i < p->nw; i++) {
		const struct writer *x = &p->w[i];
		if (!x->busy_since)
			continue;
		busy_records += x->busy_records;
		if (!oldest || x->busy_since < oldest)
			oldest = x->busy_since;
	}
	if (!oldest || p->queued_records >= busy_records || busy_records > DEFER_MAX_RECORDS)
		return false;
	patience = DEFER_PATIENCE * p->commit_avg_us;
	patience = patience < DEFER_MIN_US ? DEFER_MIN_US : patience > DEFER_MAX_US ? DEFER_MAX_US : patience;
	now = mono_us();
	if (now - oldest >= patience)
		return false;
	*ret_wait_us = patience - (now - oldest);
	return true;
}

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	struct pipeline *p = w->p;

	for (;;) {
		size_t n = 0, records = 0;

		pthread_mutex_lock(&p->mu);
		w->busy_since = 0;
		w->busy_records = 0;
		for (;;) {
			uint64_t wait_us = 1000000u;   /* bounded wait; the signal is the real wake-up */
			if (p->stopping || (p->qhead && !defer_to_colleague(p, &wait_us)))
				break;
			struct timespec ts = deadline_after_us(wait_us);
			p->idle++;
			pthread_cond_timedwait(&p->cv, &p->mu, &ts);
			p->idle--;
		}
		if (!p->qhead || p->abandon) {
			pthread_mutex_unlock(&p->mu);
			break;
		}
		/* take whole requests, up to batch_max records (at least one request) */
		while (p->qhead && n < w->cap) {
			struct request *r = p->qhead;
			size_t cost = request_records(r);
			if (n > 0 && records + cost > p->batch_max)
				break;
			p->qhead = r->next;
			r->next = NULL;
			w->held[n] = r;
			w->reqs[n] = &r->sr;
			n++;
			records += cost;
		}
		p->queued_records -= records;
		w->busy_since = mono_us();
		w->busy_records = records;
		bool more = p->qhead && p->idle > 0;
		if (!p->qhead)
			p->qtail = &p->qhead;
		pthread_mutex_unlock(&p->mu);
		/* after the unlock: a colleague woken under it would only block on mu */
		if (more)
			pthread_cond_signal(&p->cv); /* more than one batch queued: wake a colleague */

		if (commit_batch(w, n) < 0) {
			for (size_t i = 0; i < n; i++)
				request_free(w->held[i]);
			continue; /* abandoned: the loop ends at the next check */
		}

		uint64_t committed = 0, acc = 0, rej = 0, dup = 0;
		pthread_mutex_lock(&p->done_mu);
		for (size_t i = 0; i < n; i++) {
			struct request *r = w->held[i];
			if (r->sr.rejected) {
				rej++;
				metric_add(&w->m.rejected[reject_reason(&r->sr)], 1);
			} else {
				acc++;
				committed += r->sr.n;
				dup += r->sr.dup;
			}
			*p->dtail = r;
			p->dtail = &r->next;
		}
		atomic_store(&p->done_ready, true);
		pthread_mutex_unlock(&p->done_mu);
		if (atomic_load(&p->main_asleep)) {
			uint64_t one = 1;
			ssize_t wr = write(p->efd, &one, sizeof(one));
			(void)wr; /* eventfd counter cannot overflow at this rate */
		}

		metric_add(&w->m.requests_true, acc);
		metric_add(&w->m.requests_false, rej);
		metric_add(&w->m.committed, committed - dup);
		metric_add(&w->m.duplicate, dup);
		metric_observe(&w->m.batch_records, &hist_batch_records, records);

		pthread_mutex_lock(&p->mu);
		{
			uint64_t took = mono_us() - w->busy_since;
			p->commit_avg_us = p->commit_avg_us ? (7 * p->commit_avg_us + took) / 8 : took;
		}
		p->st.committed_records += committed;
		p->st.accepted_requests += acc;
		p->st.rejected_requests += rej;
		void (*hook)(void *) = p->on_commit;
		void *hook_arg = p->on_commit_arg;
		pthread_mutex_unlock(&p->mu);
		if (hook && committed)
			hook(hook_arg);
	}
	return NULL;
}

static int open_store(struct pipeline *p, struct store **ret, char *err, size_t errsz)
{
	return p->ops->open(&p->sp, ret, err, errsz);
}

int pipeline_start(const struct feed_config *cfg, const struct store_params *sp,
		   struct pipeline **ret, char *err, size_t errsz)
{
	struct pipeline *p = calloc(1, sizeof(*p));
	int r = -ENOMEM;

	if (!p)
		return -ENOMEM;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	pthread_cond_init(&p->backoff_cv, NULL);
	pthread_cond_init(&p->watch_cv, NULL);
	pthread_mutex_init(&p->done_mu, NULL);
	p->qtail = &p->qhead;
	p->dtail = &p->dhead;
	p->pending_tail = &p->pending;
	p->efd = -1;
	p->ops = store_find(sp->url);
	p->url = strdup(sp->url);
	p->password = sp->password ? strdup(sp->password) : NULL;
	p->sp = *sp;
	p->sp.url = p->url;
	p->sp.password = p->password;
	p->batch_max = (size_t)cfg->batch_max;
	p->retry_max_ms = cfg->retry_max;
	p->stall_ms = (uint64_t)cfg->stall_timeout * 1000u;
	p->queue_records = (size_t)cfg->queue_records;
	p->queue_bytes = (size_t)cfg->queue_bytes;
	p->st.db_up = true;
	p->st.db_since = time(NULL);
	p->nw = cfg->writers ? cfg->writers : p->ops ? p->ops->default_writers : 1;
	p->w = calloc((size_t)p->nw, sizeof(*p->w));
	if (!p->url || (sp->password && !p->password) || !p->w || !p->ops)
		goto fail;
	p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (p->efd < 0) {
		r = -errno;
		snprintf(err, errsz, "eventfd: %s", strerror(errno));
		goto fail;
	}

	for (int i = 0; i < p->nw; i++) {
		struct writer *w = &p->w[i];
		w->p = p;
		w->idx = i;
		pthread_mutex_init(&w->call_mu, NULL);
		w->cap = p->batch_max;
		w->batch = store_batch_new(p->batch_max + (size_t)cfg->max_records);
		w->reqs = calloc(w->cap, sizeof(*w->reqs));
		w->held = calloc(w->cap, sizeof(*w->held));
		if (!w->batch || !w->reqs || !w->held) {
			r = -ENOMEM;
			snprintf(err, errsz, "out of memory for writer batches (batch_max %zu)", p->batch_max);
			goto fail;
		}
		r = open_store(p, &w->s, err, errsz);
		if (r < 0)
			goto fail;
		if (i == 0) {
			r = w->s->ops->migrate(w->s);
			if (r < 0) {
				snprintf(err, errsz, "database schema: %s", w->s->errmsg);
				goto fail;
			}
			if (w->s->durability[0])
				log_msg(w->s->durability_warn ? LOG_LVL_WARN : LOG_LVL_INFO,
					"database: %s", w->s->durability);
		}
	}
	for (int i = 0; i < p->nw; i++) {
		r = -pthread_create(&p->w[i].thread, NULL, writer_main, &p->w[i]);
		if (r < 0) {
			snprintf(err, errsz, "cannot start writer thread: %s", strerror(-r));
			goto fail;
		}
		p->w[i].started = true;
	}
	r = -pthread_create(&p->watchdog, NULL, watchdog_main, p);
	if (r < 0) {
		snprintf(err, errsz, "cannot start the watchdog thread: %s", strerror(-r));
		goto fail;
	}
	p->watchdog_started = true;
	*ret = p;
	return 0;
fail:
	if (r == -ENOMEM && !err[0])
		snprintf(err, errsz, "out of memory");
	pipeline_stop(&p, true);
	return r;
}

bool pipeline_admit(const struct pipeline *p)
{
	return p->inflight_records < p->queue_records && p->inflight_bytes < p->queue_bytes;
}

void pipeline_submit(struct pipeline *p, struct request *r)
{
	p->inflight++;
	p->inflight_records += request_records(r);
	p->inflight_bytes += r->cost;
	p->pending_records += request_records(r);
	r->next = NULL;
	*p->pending_tail = r;
	p->pending_tail = &r->next;
}

void pipeline_flush(struct pipeline *p)
{
	if (!p->pending)
		return;
	pthread_mutex_lock(&p->mu);
	*p->qtail = p->pending;
	p->qtail = p->pending_tail;
	p->queued_records += p->pending_records;
	bool wake = p->idle > 0; /* busy writers look at the queue when they finish */
	pthread_mutex_unlock(&p->mu);
	/*
	 * Signalled after the unlock: woken under the lock, the writer would
	 * run only to block on mu again (two more futex calls and a context
	 * switch on the answer path). It re-checks the queue under mu, so no
	 * wake-up is lost.
	 */
	if (wake)
		pthread_cond_signal(&p->cv);
	p->pending = NULL;
	p->pending_tail = &p->pending;
	p->pending_records = 0;
}

bool pipeline_sleep_begin(struct pipeline *p)
{
	atomic_store(&p->main_asleep, true);
	return !atomic_load(&p->done_ready);
}

void pipeline_sleep_end(struct pipeline *p, bool fd_ready)
{
	atomic_store(&p->main_asleep, false);
	if (fd_ready) {
		uint64_t v;
		ssize_t rd = read(p->efd, &v, sizeof(v));
		(void)rd; /* EAGAIN when already drained: done_ready is the truth */
	}
}

struct request *pipeline_take_done(struct pipeline *p)
{
	struct request *list;

	if (!atomic_load(&p->done_ready))
		return NULL;
	pthread_mutex_lock(&p->done_mu);
	list = p->dhead;
	p->dhead = NULL;
	p->dtail = &p->dhead;
	atomic_store(&p->done_ready, false);
	pthread_mutex_unlock(&p->done_mu);
	return list;
}

void pipeline_release(struct pipeline *p, struct request *r)
{
	p->inflight--;
	p->inflight_records -= request_records(r);
	p->inflight_bytes -= r->cost;
	request_free(r);
}

void pipeline_on_commit(struct pipeline *p, void (*fn)(void *), void *arg)
{
	pthread_mutex_lock(&p->mu);
	p->on_commit = fn;
	p->on_commit_arg = arg;
	pthread_mutex_unlock(&p->mu);
}

int pipeline_fd(const struct pipeline *p) { return p->efd; }
size_t pipeline_inflight(const struct pipeline *p) { return p->inflight; }
size_t pipeline_inflight_records(const struct pipeline *p) { return p->inflight_records; }
size_t pipeline_inflight_bytes(const struct pipeline *p) { return p->inflight_bytes; }

void pipeline_stats(struct pipeline *p, struct pipeline_stats *ret)
{
	pthread_mutex_lock(&p->mu);
	*ret = p->st;
	pthread_mutex_unlock(&p->mu);
}

void pipeline_counters(const struct pipeline *p, struct pipeline_counters *ret)
{
	memset(ret, 0, sizeof(*ret));
	for (int i = 0; i < p->nw; i++) {
		const struct writer *w = &p->w[i];
		ret->requests_true += metric_get(&w->m.requests_true);
		ret->requests_false += metric_get(&w->m.requests_false);
		ret->committed_records += metric_get(&w->m.committed);
		ret->duplicate_records += metric_get(&w->m.duplicate);
		for (int k = 0; k < REJECT_NREASONS; k++)
			ret->rejected[k] += metric_get(&w->m.rejected[k]);
		hist_snap_add(&ret->commit_us, &w->m.commit_us);
		hist_snap_add(&ret->batch_records, &w->m.batch_records);
	}
}

uint64_t pipeline_busy_ms(struct pipeline *p)
{
	uint64_t now = mono_ms(), oldest = 0;

	for (int i = 0; i < p->nw; i++) {
		struct writer *w = &p->w[i];
		pthread_mutex_lock(&w->call_mu);
		if (w->call_since && now - w->call_since > oldest)
			oldest = now - w->call_since;
		pthread_mutex_unlock(&w->call_mu);
	}
	return oldest;
}

/*
 * Joins w. When abandoning, the call it may be in (a stalled database, a
 * reconnect to a server that does not answer) is cancelled, and again every
 * STOP_CANCEL_MS: the writer starts no new call once abandoned, but one may
 * have begun just before, so a single cancel could miss it.
 */
static void join_writer(struct writer *w, bool abandon)
{
	while (abandon) {
		struct timespec ts = deadline_after_ms(STOP_CANCEL_MS);

		pthread_mutex_lock(&w->call_mu);
		if (w->call_since)
			w->s->ops->cancel(w->s);
		pthread_mutex_unlock(&w->call_mu);
		if (pthread_timedjoin_np(w->thread, NULL, &ts) == 0)
			return;
	}
	pthread_join(w->thread, NULL);
}

void pipeline_stop(struct pipeline **pp, bool abandon)
{
	struct pipeline *p = *pp;

	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stopping = true;
	p->abandon = abandon;
	atomic_store(&p->abandoned, abandon);
	pthread_cond_broadcast(&p->cv);
	pthread_cond_broadcast(&p->backoff_cv);
	pthread_cond_broadcast(&p->watch_cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; p->w && i < p->nw; i++) {
		struct writer *w = &p->w[i];
		if (w->started)
			join_writer(w, abandon);
	}
	if (p->watchdog_started)
		pthread_join(p->watchdog, NULL);
	for (int i = 0; p->w && i < p->nw; i++) {
		struct writer *w = &p->w[i];
		if (w->s)
			w->s->ops->close(w->s);
		if (w->p)
			pthread_mutex_destroy(&w->call_mu);
		store_batch_free(&w->batch);
		free(w->reqs);
		free(w->held);
	}
	for (struct request *r = p->qhead, *next; r; r = next) {
		next = r->next;
		request_free(r);
	}
	for (struct request *r = p->pending, *next; r; r = next) {
		next = r->next;
		request_free(r);
	}
	for (struct request *r = p->dhead, *next; r; r = next) {
		next = r->next;
		request_free(r);
	}
	if (p->efd >= 0)
		close(p->efd);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	pthread_cond_destroy(&p->backoff_cv);
	pthread_cond_destroy(&p->watch_cv);
	pthread_mutex_destroy(&p->done_mu);
	free(p->w);
	free(p->url);
	if (p->password)
		explicit_bzero(p->password, strlen(p->password));
	free(p->password);
	free(p);
	*pp = NULL;
}
