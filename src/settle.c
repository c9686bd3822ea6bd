/*
 * settle.c - the settle thread.
 *
 * A pass walks the 'N' rows in ticket order (keyset pagination, so a row
 * that cannot be settled never blocks the ones after it), computes each
 * fee with exact decimal arithmetic (dec_fee: volume x rate, half-up to
 * 2 decimals; the login's fee_rate row, else [fee] default_rate) and
 * writes a chunk per transaction. While writers keep committing, it settles
 * one chunk per SETTLE_MIN_GAP_MS so as not to compete with the answer path,
 * and catches up at full speed when they pause. The UPDATE only touches rows still 'N',
 * so several feed instances settling the same database agree.
 * Woken by the writers after a commit, or every settle_interval ms.
 * Watched like the writers (settle_watch(), from the main loop): a call
 * unanswered for 2 x stall_timeout (at least SETTLE_STALL_MIN_MS) is
 * cancelled and the connection made anew, so that a server that stopped
 * answering (a hung primary after a failover) does not hold settlement.
 */
#include "settle.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "decimal.h"
#include "log.h"
#include "metrics.h"
#include "timeutil.h"

#define SETTLE_MIN_GAP_MS 200
#define SETTLE_COALESCE_MS 20
#define SETTLE_SWEEP_MS 5000
/* a call unanswered this long (at least; else 2 x stall_timeout) is cancelled */
#define SETTLE_STALL_MIN_MS 10000  /* above SQLite's write gate, which may hold a call 5 s */

struct settler {
	pthread_t thread;
	bool started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool kicked, stopping;
	struct store *s;
	struct store_params sp;
	char *url, *password;
	int64_t default_rate;
	int interval_ms, retry_max_ms;
	size_t chunk;
	struct store_settle *rows;
	bool failing;         /* an error was logged; log the recovery once */
	int64_t resume;       /* ticket the next pass starts after */
	uint64_t last_sweep;  /* mono ms of the last pass from the first ticket */
	/* metrics.h counters: this thread adds, any thread reads */
	_Atomic uint64_t settled, adopted, unsettleable;
	/*
	 * The watch (settle_watch(), main thread): the database call in
	 * progress since call_since (mono ms, 0: none); stalled once the
	 * watch cancelled it. Under call_mu.
	 */
	pthread_mutex_t call_mu;
	uint64_t call_since, stall_ms;
	bool stalled;
	bool stall_said;      /* logged at warn level; again only after a call succeeded */
};

/* A database call begins: the watch may cancel it from now on. */
static void call_begin(struct settler *st)
{
	pthread_mutex_lock(&st->call_mu);
	st->call_since = mono_ms();
	st->stalled = false;
	pthread_mutex_unlock(&st->call_mu);
}

/* The call ended with r; one the watch cancelled is -ETIMEDOUT, whatever the cancel produced. */
static int call_end(struct settler *st, int r)
{
	uint64_t since;
	bool stalled;

	pthread_mutex_lock(&st->call_mu);
	since = st->call_since;
	stalled = st->stalled;
	st->call_since = 0;
	st->stalled = false;
	if (!stalled && r >= 0)
		st->stall_said = false;
	pthread_mutex_unlock(&st->call_mu);
	if (!stalled)
		return r;
	snprintf(st->s->errmsg, sizeof(st->s->errmsg), "stalled: no answer for %llu s",
		 (unsigned long long)((mono_ms() - since) / 1000));
	return -ETIMEDOUT;
}

/* Settles one chunk after `after`. Returns rows fetched (0 = done) or -errno. */
static int settle_chunk(struct settler *st, int64_t *after, size_t *ret_skipped)
{
	size_t n = 0, k = 0;
	int r = st->s->ops->fetch_unsettled(st->s, *after, st->chunk, st->rows, &n);

	if (r < 0 || n == 0)
		return r < 0 ? r : 0;
	*after = st->rows[n - 1].ticket;
	for (size_t i = 0; i < n; i++) {
		struct store_settle *row = &st->rows[i];
		int64_t rate = row->rate == -1 ? st->default_rate : row->rate;
		if (row->volume < 0 || rate < 0 || dec_fee(row->volume, rate, &row->fee) < 0) {
			if (*ret_skipped == 0)
				log_warn("cannot settle ticket %lld: %s", (long long)row->ticket,
					 row->volume < 0 ? "its volume is not a non-negative exact decimal" :
					 rate < 0 ? "its login's fee_rate is not a non-negative exact decimal" :
						    "the fee does not fit");
			(*ret_skipped)++;
			continue;
		}
		st->rows[k++] = *row;
	}
	if (k == 0)
		return (int)n;
	r = st->s->ops->begin(st->s);
	if (r == 0)
		r = st->s->ops->settle(st->s, st->rows, k);
	if (r == 0)
		r = st->s->ops->commit(st->s);
	if (r < 0) {
		store_rollback(st->s);
		return r;
	}
	metric_add(&st->settled, k);
	return (int)n;
}

static bool wait_for_work(struct settler *st, int ms)
{
	struct timespec ts = deadline_after_ms(ms);
	bool stop;

	pthread_mutex_lock(&st->mu);
	while (!st->kicked && !st->stopping)
		if (pthread_cond_timedwait(&st->cv, &st->mu, &ts) == ETIMEDOUT)
			break;
	st->kicked = false;
	stop = st->stopping;
	pthread_mutex_unlock(&st->mu);
	return !stop;
}

/* Sleeps ms, woken early only by stop (kicks stay pending for the next wait). */
static void pause_unless_stopping(struct settler *st, int ms)
{
	struct timespec ts = deadline_after_ms(ms);

	pthread_mutex_lock(&st->mu);
	while (!st->stopping)
		if (pthread_cond_timedwait(&st->cv, &st->mu, &ts) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&st->mu);
}

static void *settle_main(void *arg)
{
	struct settler *st = arg;
	int backoff = 0;
	bool first = true;    /* the first pass settles what an earlier run left */

	do {
		/*
		 * Resume where the last pass stopped: in MVCC databases the
		 * index over 'N' rows keeps entries of settled rows until vacuum,
		 * and walking them from the start every pass costs more and more.
		 * Rows below the position (out-of-order tickets, another
		 * instance's) are picked up by a full sweep every SETTLE_SWEEP_MS.
		 */
		uint64_t now = mono_ms();
		bool sweep = now - st->last_sweep >= SETTLE_SWEEP_MS;
		if (sweep) {
			st->resume = 0;
			st->last_sweep = now;
		}
		int64_t after = st->resume;
		size_t skipped = 0, total = 0;
		int r;

		for (;;) {
			call_begin(st);
			r = call_end(st, settle_chunk(st, &after, &skipped));
			if (r <= 0)
				break;
			total += (size_t)r;
			pthread_mutex_lock(&st->mu);
			bool stop = st->stopping, busy = st->kicked;
			st->kicked = false;
			pthread_mutex_unlock(&st->mu);
			if (stop)
				break;
			/*
			 * Writers committed meanwhile: the answer path is busy.
			 * Settle one chunk per SETTLE_MIN_GAP_MS then, and catch up
			 * at full speed when the load eases.
			 */
			if (busy)
				pause_unless_stopping(st, SETTLE_MIN_GAP_MS);
		}
		if (r == 0)
			st->resume = after;
		if (r == 0 && sweep)
			metric_set(&st->unsettleable, skipped);
		if (first)
			metric_set(&st->adopted, metric_get(&st->settled));
		first = false;
		if (r < 0) {
			/*
			 * An outage is reported by the writers, a stall by the
			 * watch; say other trouble once.
			 */
			if (!st->failing && r != -ENOTCONN && r != -EAGAIN && r != -ETIMEDOUT)
				log_warn("settle: %s; will retry", st->s->errmsg);
			else if (!st->failing)
				log_debug("settle: %s; will retry", st->s->errmsg);
			st->failing = true;
			backoff = backoff ? (backoff * 2 > st->retry_max_ms ? st->retry_max_ms : backoff * 2) : 100;
			if (r != -EAGAIN) {
				call_begin(st);
				(void)call_end(st, st->s->ops->reconnect(st->s));
			}
		} else {
			if (st->failing)
				log_info("settle: working again");
			st->failing = false;
			backoff = 0;
		}
		if (total)
			log_debug("settle: pass over %zu rows, %zu not settleable", total, skipped);
		if (!wait_for_work(st, backoff ? backoff : st->interval_ms))
			break;
		/* let the records of a few more commits join this pass */
		pause_unless_stopping(st, SETTLE_COALESCE_MS);
	} while (true);
	return NULL;
}

int settle_start(const struct feed_config *cfg, const struct store_params *sp,
		 struct settler **ret, char *err, size_t errsz)
{
	struct settler *st = calloc(1, sizeof(*st));
	int r = -ENOMEM;

	if (!st)
		return -ENOMEM;
	pthread_mutex_init(&st->mu, NULL);
	pthread_cond_init(&st->cv, NULL);
	pthread_mutex_init(&st->call_mu, NULL);
	st->stall_ms = 2000u * (uint64_t)cfg->stall_timeout;
	if (st->stall_ms < SETTLE_STALL_MIN_MS)
		st->stall_ms = SETTLE_STALL_MIN_MS;
	st->url = strdup(sp->url);
	st->password = sp->password ? strdup(sp->password) : NULL;
	st->sp = *sp;
	st->sp.url = st->url;
	st->sp.password = st->password;
	st->sp.background = true;
	/*
	 * A lost settle commit costs nothing: the rows stay 'N' and are settled
	 * again after a restart. So the settle connection does not wait for the
	 * disk (SQLite synchronous=NORMAL, PostgreSQL synchronous_commit=off).
	 */
	st->sp.durability = STORE_DURABLE_NORMAL;
	st->default_rate = cfg->default_rate;
	st->interval_ms = cfg->settle_interval;
	st->retry_max_ms = cfg->retry_max;
	st->chunk = (size_t)cfg->settle_batch;
	st->rows = calloc(st->chunk, sizeof(*st->rows));
	if (!st->url || (sp->password && !st->password) || !st->rows) {
		snprintf(err, errsz, "out of memory");
		goto fail;
	}
	r = store_find(st->url)->open(&st->sp, &st->s, err, errsz);
	if (r < 0)
		goto fail;
	r = -pthread_create(&st->thread, NULL, settle_main, st);
	if (r < 0) {
		snprintf(err, errsz, "cannot start the settle thread: %s", strerror(-r));
		goto fail;
	}
	st->started = true;
	*ret = st;
	return 0;
fail:
	settle_stop(&st);
	return r;
}

void settle_kick(void *arg)
{
	struct settler *st = arg;

	pthread_mutex_lock(&st->mu);
	st->kicked = true;
	pthread_cond_signal(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

void settle_watch(struct settler *st)
{
	uint64_t now = mono_ms();

	if (!st)
		return;
	/* under call_mu: the call cannot end (and the next one begin) meanwhile */
	pthread_mutex_lock(&st->call_mu);
	if (st->call_since && !st->stalled && now - st->call_since >= st->stall_ms) {
		st->stalled = true;
		if (!st->stall_said)
			log_warn("settle: no answer from the database for %llu s; the call is cancelled "
				 "and the settle thread reconnects",
				 (unsigned long long)((now - st->call_since) / 1000));
		else
			log_debug("settle: no answer from the database for %llu s again; cancelled",
				  (unsigned long long)((now - st->call_since) / 1000));
		st->stall_said = true;
		st->s->ops->cancel(st->s);
	}
	pthread_mutex_unlock(&st->call_mu);
}

void settle_counters(const struct settler *st, struct settle_counters *ret)
{
	ret->settled = metric_get(&st->settled);
	ret->adopted = metric_get(&st->adopted);
	ret->unsettleable = metric_get(&st->unsettleable);
}

void settle_stop(struct settler **ps)
{
	struct settler *st = *ps;

	if (!st)
		return;
	pthread_mutex_lock(&st->mu);
	st->stopping = true;
	pthread_cond_signal(&st->cv);
	pthread_mutex_unlock(&st->mu);
	/*
	 * A pass in progress gets a second to finish; then a database that
	 * does not answer must not hold up the exit: cancel whatever call the
	 * thread is in, again until it has ended (it may start a reconnect
	 * after the first cancel). Rows not settled stay 'N' for the next run.
	 */
	for (int waited = 0; st->started; waited += 50) {
		struct timespec ts = deadline_after_ms(50);

		if (pthread_timedjoin_np(st->thread, NULL, &ts) == 0)
			break;
		if (waited >= 1000)
			st->s->ops->cancel(st->s);
	}
	if (st->s)
		st->s->ops->close(st->s);
	pthread_mutex_destroy(&st->mu);
	pthread_cond_destroy(&st->cv);
	pthread_mutex_destroy(&st->call_mu);
	free(st->rows);
	free(st->url);
	if (st->password)
		explicit_bzero(st->password, strlen(st->password));
	free(st->password);
	free(st);
	*ps = NULL;
}
