/*
 * log.h - the daemon's one logger.
 *
 * Destinations: stderr, syslog, or a file (reopened on SIGHUP for logrotate).
 * Thread-safe: every line is written with one write(2) (files, stderr) or one
 * syslog(3) call; the level is an atomic (set on SIGHUP, read by every thread). Library-style modules do not log; their callers do, once.
 */
#ifndef FEED_LOG_H
#define FEED_LOG_H

#include <stdarg.h>

enum log_level { LOG_LVL_ERR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };
/* Lines in files and on stderr: text, or one JSON object per line for log shippers. */
enum log_format { LOG_FMT_TEXT = 0, LOG_FMT_JSON };

/*
 * dest: "stderr", "syslog" or an absolute file path (a symlink there is not
 * followed). Returns 0 or -errno.
 */
int log_open(const char *dest, enum log_level level);
/*
 * Logs to fd, a file opened for appending by the caller (who checked it);
 * takes ownership of fd. path is what log_reopen opens. Returns 0.
 */
int log_open_fd(int fd, const char *path, enum log_level level);
/* Reopens a file destination (no-op otherwise), not following a symlink. Returns 0 or -errno. */
int log_reopen(void);
void log_set_level(enum log_level level);
/* "error", "warning", "info", "debug". */
const char *log_level_name(enum log_level level);
/* Call before any thread logs (not synchronized). Syslog lines stay plain text. */
void log_set_format(enum log_format f);
enum log_level log_get_level(void);
void log_close(void);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

#define log_err(...)   log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_get_level() >= LOG_LVL_DEBUG) log_msg(LOG_LVL_DEBUG, __VA_ARGS__); } while (0)

#endif
