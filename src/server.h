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

struct server_hooks {
	void *arg;
	/* SIGHUP: reopen logs, reload what can be reloaded. */
	void (*reload)(void *arg);
	/* A new one-line state (also at start): for the status file and systemd STATUS=. */
	void (*state)(void *arg, const char *line, bool db_up);
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
 * Serves until SIGTERM/SIGINT arrives on sigfd (a signalfd), then stops
 * reading, commits and answers what is in flight (bounded by
 * shutdown_timeout) and returns how many requests were left unanswered
 * (0 when all were); -errno on a fatal error.
 */
int server_loop(struct server *s, int sigfd, const struct server_hooks *h);
void server_free(struct server **ps);

#endif
