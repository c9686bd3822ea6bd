/*
 * server.h - the serving process's main loop: sockets in, pipeline, replies
 * out, signals. Owns the transport, the pipeline and the settler.
 */
#ifndef FEED_SERVER_H
#define FEED_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "store.h"

struct server;

/* The state as the main loop sees it, once a second (and at each database up/down). */
struct server_status {
	const char *line;             /* one line, for systemd STATUS= */
	bool db_up;
	int64_t db_since;             /* unix time of the last up/down change */
	const char *db_error;         /* while down */
	uint64_t committed;           /* records inserted since start */
	uint64_t duplicate;           /* records accepted again (re-sends) */
	uint64_t rejected;            /* requests answered FALSE */
	double committed_rate;        /* records/s over the last minute (or since start) */
	double rejected_rate;         /* requests/s, same window */
	uint64_t queue_records, queue_bytes;   /* in flight: admitted, not answered */
	uint64_t unsettled;           /* records waiting for the settler (see operations.md) */
	double commit_ms;             /* mean commit duration over that window; < 0: none */
	uint64_t busy_ms;             /* the oldest database call in progress; 0: none */
};

struct server_hooks {
	void *arg;
	/* SIGHUP: reopen logs, reload what can be reloaded. */
	void (*reload)(void *arg);
	/* The state, at start, then every second: for the status file, systemd STATUS= and WATCHDOG=. */
	void (*state)(void *arg, const struct server_status *st);
};

/* Binds the endpoints (as root if needed: before dropping privileges). */
int server_bind(const struct feed_config *cfg, struct server **ret, char *err, size_t errsz);
/* Opens the database: migrates, starts writers and the settler. */
/*
 * After the privilege drop: reads curve_clients again as the user that will
 * rescan it, so that a directory only root can read fails the start instead
 * of locking every client out at the first change. 0 or -errno (err says why).
 */
int server_check_auth(struct server *s, char *err, size_t errsz);
int server_open_db(struct server *s, const struct store_params *sp, char *err, size_t errsz);
const char *server_endpoints(const struct server *s);
/*
 * After server_open_db, as the run-as user: serves [metrics] listen (if set)
 * on its own thread. 0 or -errno (err says why: a port in use, ...).
 */
int server_start_metrics(struct server *s, char *err, size_t errsz);
/*
 * Serves until SIGTERM/SIGINT arrives on sigfd (a signalfd), then stops
 * reading, commits and answers what is in flight (bounded by
 * shutdown_timeout) and returns how many requests were left unanswered
 * (0 when all were); -errno on a fatal error.
 */
int server_loop(struct server *s, int sigfd, const struct server_hooks *h);
void server_free(struct server **ps);

#endif
