/*
 * config.h - the configuration: one table of keys (config.c) -> struct feed_config.
 *
 * Every key has a default, bounds and a description in that table; parsing
 * the INI file, command-line overrides, defaults, `feed example-config` and
 * the documentation all come from it.
 */
#ifndef FEED_CONFIG_H
#define FEED_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CONFIG_DEFAULT_PATH "/etc/feed/feed.conf"

struct feed_config {
	/* [daemon] */
	char *pidfile;
	char *user;
	char *group;
	char *log;              /* "auto", "stderr", "syslog" or an absolute path */
	int log_level;          /* enum log_level */
	int log_format;         /* enum log_format */
	int umask;
	int shutdown_timeout;   /* seconds to finish in-flight work on stop */
	/* [listen] */
	char *endpoint;         /* comma-separated ZeroMQ endpoints */
	int max_message_bytes;
	int max_records;
	int hwm;                /* ZeroMQ high-water mark, messages per peer */
	int queue_records;      /* records admitted but not yet answered */
	int queue_bytes;        /* request bytes admitted but not yet answered */
	char *curve_server_cert; /* the server's secret certificate; "" = no CURVE */
	char *curve_clients;    /* directory of allowed client public certificates */
	char *allow;            /* peer addresses / CIDR ranges accepted; "" = any */
	/* [database] */
	char *url;
	char *password_file;
	int durability;         /* enum store_durability */
	int writers;
	int batch_max;          /* records per transaction */
	int connect_timeout;    /* seconds */
	int retry_max;          /* backoff cap, milliseconds */
	int stall_timeout;      /* seconds a database call may go unanswered before it is an outage */
	/* [fee] */
	int64_t default_rate;   /* DEC_SCALE units */
	int settle_interval;    /* milliseconds between settle passes when idle */
	int settle_batch;       /* rows per settle transaction */
	/* [metrics] */
	char *metrics_listen;   /* HOST:PORT for /metrics and /healthz; "" = off */
	int summary_interval;   /* seconds between summary log lines; 0 = none */
	/* [send] */
	char *send_endpoint;    /* `feed send`: comma-separated endpoints, or "" */
	char *send_server_key;  /* `feed send`: the server's public certificate */
	char *send_cert;        /* `feed send`: the client's secret certificate */
};

/* Fills every key with its default. */
void config_defaults(struct feed_config *c);

/*
 * Reads an INI file over the current values. Every error is printed to
 * `errs` as "FILE:LINE: [section] key: problem", with config text escaped
 * (config_escape()); after 100 errors, or 1 MiB, the rest is not read.
 * A key set twice, a control byte, an unknown or broken [section] header
 * (even with no keys under it) are errors. Returns the number of errors
 * (0 = fine) or -errno if the file cannot be read to its end (also printed).
 */
int config_load(struct feed_config *c, const char *path, FILE *errs);

/*
 * Sets one key from text, as the file would. `origin` names where the value
 * came from for the error message ("--endpoint", "feed.conf:12") and is
 * printed as is (escape what is not a literal); the value is escaped.
 * Returns 0 or -EINVAL/-ENOENT/-ENOMEM after printing the problem to errs.
 */
int config_set(struct feed_config *c, const char *section, const char *key,
	       const char *value, const char *origin, FILE *errs);

/* Cross-key checks (URL scheme known, endpoints non-empty, ...). Returns error count. */
int config_validate(const struct feed_config *c, FILE *errs);

/*
 * Reads password_file (its first line, without LF or CRLF, at most 1023 bytes,
 * no NUL) into *ret (owned). 0 if none configured; a negative errno after
 * printing why (a longer line, a NUL byte or a read error is refused).
 */
int config_read_password(const struct feed_config *c, char **ret, FILE *errs);

/*
 * Writes s into buf (size >= 1, always terminated) as printable ASCII, for
 * messages that quote config or command-line text: control bytes, DEL and
 * bytes >= 0x80 become \xNN, '"' and '\\' are backslashed, so that no escape
 * sequence reaches a terminal or a log raw. Stops before an escape that
 * does not fit; returns how many bytes of s were written (strlen(s) if all).
 */
size_t config_escape(const char *s, char *buf, size_t size);

/* Prints every key, its default and description as an INI file. */
void config_print_example(FILE *out);

/* Frees the strings; the struct may be reused after config_defaults(). NULL-safe. */
void config_free(struct feed_config *c);

#endif
