/*
 * daemon.h - the process lifecycle: start (daemon(7) SysV steps with a
 * readiness pipe), run (foreground, systemd Type=notify), stop, status;
 * the pidfile lock, privilege drop and signals.
 */
#ifndef FEED_DAEMON_H
#define FEED_DAEMON_H

#include <stdbool.h>

#include "config.h"

/* Exit codes (documented in feed(8)). */
enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,          /* runtime failure: already running, cannot bind, database, ... */
	EXIT_USAGE = 2,
	EXIT_CONFIG = 6,        /* LSB "not configured": the configuration is invalid */
};

/* LSB status codes. */
enum {
	STATUS_RUNNING = 0,
	STATUS_DEAD_PIDFILE = 1,
	STATUS_NOT_RUNNING = 3,
	STATUS_UNKNOWN = 4,
};

/*
 * Serves until stopped. background: detach, and return (in the original
 * process) only once the daemon serves or has failed. cfgpath (absolute: the
 * daemon runs in /) is re-read on SIGHUP for log_level, unless
 * keep_log_level (set on the command line). Returns the exit code.
 */
int daemon_serve(const struct feed_config *cfg, const char *cfgpath, bool keep_log_level,
		 bool background);
/*
 * For `check`: can this process take [daemon] user the way `start` would?
 * Prints why not. Returns EXIT_OK or EXIT_CONFIG.
 */
int daemon_check_identity(const struct feed_config *cfg);
/* Stops the instance holding the pidfile lock; SIGKILL after timeout seconds. */
int daemon_stop(const struct feed_config *cfg, int timeout);
/*
 * Sends SIGHUP to the instance holding the pidfile lock; with a log file,
 * returns once the daemon writes to the file the log path names (after a
 * rotation: the new one). Returns the exit code.
 */
int daemon_reload(const struct feed_config *cfg);
/* Prints the state; returns an LSB status code. */
int daemon_status(const struct feed_config *cfg);

#endif
