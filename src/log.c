/*
 * log.c - stderr / syslog / file logging with reopen for logrotate.
 *
 * State is process-global and guarded by a mutex only where the destination
 * changes (open, reopen); writers take the same mutex for the file descriptor
 * so that a reopen never races a write onto a closed descriptor.
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

enum dest { DEST_STDERR, DEST_SYSLOG, DEST_FILE };

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static enum dest dest = DEST_STDERR;
static int fd = STDERR_FILENO;
static char path[4096];
/* Relaxed is enough: a thread may log one more or one fewer line around a change. */
static _Atomic(enum log_level) cur_level = LOG_LVL_INFO;

static const char *const level_names[] = { "error", "warning", "info", "debug" };

/* O_NOFOLLOW: whoever may write the log's directory must not choose the file written. */
static int open_file(const char *p)
{
	int f = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0640);
	return f < 0 ? -errno : f;
}

static void close_dest(void)
{
	if (dest == DEST_FILE && fd >= 0)
		close(fd);
	if (dest == DEST_SYSLOG)
		closelog();
	dest = DEST_STDERR;
	fd = STDERR_FILENO;
}

int log_open(const char *d, enum log_level level)
{
	int r = 0;

	pthread_mutex_lock(&lock);
	close_dest();
	if (strcmp(d, "stderr") == 0) {
		/* close_dest() left stderr */
	} else if (strcmp(d, "syslog") == 0) {
		dest = DEST_SYSLOG;
		openlog("feed", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	} else {
		int f = open_file(d);
		if (f < 0) {
			r = f;
		} else {
			dest = DEST_FILE;
			fd = f;
			snprintf(path, sizeof(path), "%s", d);
		}
	}
	log_set_level(level);
	pthread_mutex_unlock(&lock);
	return r;
}

int log_open_fd(int f, const char *p, enum log_level level)
{
	pthread_mutex_lock(&lock);
	close_dest();
	dest = DEST_FILE;
	fd = f;
	snprintf(path, sizeof(path), "%s", p);
	log_set_level(level);
	pthread_mutex_unlock(&lock);
	return 0;
}

int log_reopen(void)
{
	int r = 0;

	pthread_mutex_lock(&lock);
	if (dest == DEST_FILE) {
		int f = open_file(path);
		if (f < 0) {
			r = f; /* keep writing to the old file rather than losing lines */
		} else {
			close(fd);
			fd = f;
		}
	}
	pthread_mutex_unlock(&lock);
	return r;
}

void log_close(void)
{
	pthread_mutex_lock(&lock);
	close_dest();
	pthread_mutex_unlock(&lock);
}

void log_set_level(enum log_level level)
{
	atomic_store_explicit(&cur_level, level, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
	return atomic_load_explicit(&cur_level, memory_order_relaxed);
}

void log_vmsg(enum log_level level, const char *fmt, va_list ap)
{
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	char line[2048];
	size_t n = 0;
	int saved = errno;

	if (level > log_get_level())
		return;
	pthread_mutex_lock(&lock);
	if (dest == DEST_SYSLOG) {
		vsnprintf(line, sizeof(line), fmt, ap);
		syslog(prio[level], "%s", line);
	} else {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ feed[%d] %s: ",
				      ts.tv_nsec / 1000000, (int)getpid(), level_names[level]);
		int m = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
		if (m < 0)
			m = 0;
		n += (size_t)m < sizeof(line) - n - 1 ? (size_t)m : sizeof(line) - n - 2;
		line[n++] = '\n';
		ssize_t w = write(fd, line, n);
		(void)w; /* nowhere left to report a failed log write */
	}
	pthread_mutex_unlock(&lock);
	errno = saved;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}
