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
static enum log_format format = LOG_FMT_TEXT;   /* set before any thread exists */

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

const char *log_level_name(enum log_level level)
{
	return (unsigned)level < sizeof(level_names) / sizeof(level_names[0]) ? level_names[level] : "?";
}

void log_set_format(enum log_format f)
{
	format = f;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	size_t len = s[0] < 0xC2 ? 0 : s[0] < 0xE0 ? 2 : s[0] < 0xF0 ? 3 : s[0] < 0xF5 ? 4 : 0;

	if (len == 0 || len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	/* overlong 3- and 4-byte forms, surrogates, past U+10FFFF */
	if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0) ||
	    (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))
		return 0;
	return len;
}

/*
 * Appends msg to out[*n..size) as the body of a JSON string: quotes,
 * backslashes and control bytes escaped, invalid UTF-8 replaced by U+FFFD,
 * so that a shipper always gets one valid object per line. Stops, whole
 * characters only, before leaving fewer than `keep` bytes.
 */
static void json_escape(char *out, size_t *n, size_t size, size_t keep, const char *msg)
{
	const unsigned char *p = (const unsigned char *)msg;
	size_t left = strlen(msg);

	while (left) {
		char esc[8];
		const char *add = esc;
		size_t len, used = 1;

		if (*p == '"' || *p == '\\') {
			esc[0] = '\\', esc[1] = (char)*p, len = 2;
		} else if (*p < 0x20 || *p == 0x7F) {
			len = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", *p);
		} else if (*p < 0x80) {
			add = (const char *)p, len = 1;
		} else if ((used = utf8_len(p, left)) > 0) {
			add = (const char *)p, len = used;
		} else {
			add = "\xEF\xBF\xBD", len = 3, used = 1;
		}
		if (*n + len + keep > size)
			break;
		memcpy(out + *n, add, len);
		*n += len;
		p += used;
		left -= used;
	}
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
		char stamp[40], msg[1800];

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		n = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		snprintf(stamp + n, sizeof(stamp) - n, ".%03ldZ", ts.tv_nsec / 1000000);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		if (format == LOG_FMT_JSON) {
			n = (size_t)snprintf(line, sizeof(line),
					     "{\"time\":\"%s\",\"level\":\"%s\",\"pid\":%d,\"msg\":\"",
					     stamp, level_names[level], (int)getpid());
			json_escape(line, &n, sizeof(line), 3, msg);
			line[n++] = '"';
			line[n++] = '}';
		} else {
			n = (size_t)snprintf(line, sizeof(line), "%s feed[%d] %s: %s", stamp, (int)getpid(),
					     level_names[level], msg);
			if (n > sizeof(line) - 2)
				n = sizeof(line) - 2;
		}
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
