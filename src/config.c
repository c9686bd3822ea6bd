/*
 * config.c - the one table of configuration keys, and everything derived
 * from it: defaults, INI parsing (libinih), bounds checks with file:line
 * errors, command-line overrides and `feed example-config`.
 *
 * Runs on the main thread before anything starts; the struct is read-only
 * afterwards (SIGHUP re-reads only the keys marked reloadable).
 *
 * The file is read through our own line reader, which hands libinih only
 * text it reads the way the documentation says: every byte is checked (no
 * control bytes), every line is bounded, leading whitespace is dropped (no
 * continuation lines) and each line's shape is checked, so that every bad
 * line is reported with its number, not only the first one inih notices.
 * Config and command-line text is escaped in every message.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "decimal.h"
#include "log.h"
#include "metrics.h"
#include "store.h"

enum key_type { K_STR, K_INT, K_ENUM, K_RATE, K_OCTAL };

/* Checks a K_STR value; returns NULL if fine, else why not (a static string). */
typedef const char *(*str_check_fn)(const char *v);

struct key {
	const char *section;
	const char *name;
	enum key_type type;
	size_t offset;
	const char *def;
	long min, max;                /* K_INT, K_OCTAL */
	const char *const *choices;   /* K_ENUM: index = stored int */
	const char *help;
	str_check_fn check;           /* K_STR, optional */
};

static const char *const log_levels[] = { "error", "warning", "info", "debug", NULL };
static const char *const durabilities[] = { "full", "normal", NULL };
static const char *const log_formats[] = { "text", "json", NULL };

#define OFF(f) offsetof(struct feed_config, f)

/*
 * String checks run where the value is set, so that the error names its
 * origin (FILE:LINE or the command-line option), like every other key.
 */
static const char *check_abs_path(const char *v)
{
	return v[0] == '/' ? NULL : "must be an absolute path";
}

static const char *check_opt_abs_path(const char *v)
{
	return v[0] == '\0' || v[0] == '/' ? NULL : "must be empty or an absolute path";
}

static const char *check_log(const char *v)
{
	if (strcmp(v, "auto") == 0 || strcmp(v, "stderr") == 0 || strcmp(v, "syslog") == 0 || v[0] == '/')
		return NULL;
	return "must be stderr, syslog, auto or an absolute path";
}

/* What is wrong with the one endpoint ep[0..len), or NULL: tcp://HOST:PORT or ipc://PATH. */
static const char *endpoint_error(const char *ep, size_t len)
{
	if (len > 6 && strncmp(ep, "ipc://", 6) == 0)
		return NULL;
	if (len > 6 && strncmp(ep, "tcp://", 6) == 0) {
		const char *colon = memrchr(ep + 6, ':', len - 6);
		size_t digits = colon ? len - (size_t)(colon + 1 - ep) : 0;

		if (!colon || colon == ep + 6)
			return "a tcp:// endpoint needs HOST:PORT (e.g. tcp://127.0.0.1:5555)";
		if (!(digits == 1 && colon[1] == '*') &&
		    (digits == 0 || digits > 5 || strspn(colon + 1, "0123456789") < digits ||
		     atoi(colon + 1) < 1 || atoi(colon + 1) > 65535))
			return "the port of a tcp:// endpoint must be 1..65535 (or * for any)";
		return NULL;
	}
	if (memmem(ep, len, ":/", 2) || memchr(ep, ':', len))
		return "an endpoint must start with tcp:// or ipc:// (e.g. tcp://127.0.0.1:5555)";
	return "an endpoint is tcp://HOST:PORT or ipc:///path";
}

static const char *check_endpoint(const char *v)
{
	const char *why = NULL;
	bool any = false;

	for (const char *p = v; *p && !why; ) {
		p += strspn(p, " \t,");
		size_t len = strcspn(p, ",");
		while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len) {
			any = true;
			why = endpoint_error(p, len);
		}
		p += strcspn(p, ",");
	}
	if (why)
		return why;
	return any ? NULL : "at least one ZeroMQ endpoint is needed (e.g. tcp://127.0.0.1:5555)";
}

/* [send] endpoint: empty (the [listen] one) or a list of endpoints to connect to. */
static const char *check_opt_endpoint(const char *v)
{
	return v[0] ? check_endpoint(v) : NULL;
}

static const char *check_url(const char *v)
{
	return store_find(v) ? NULL :
	       "unsupported scheme (accepted: sqlite:///abs/path, postgresql://..., postgres://..., mysql://..., mariadb://...)";
}

static const char *check_metrics_listen(const char *v)
{
	struct sockaddr_storage sa;
	socklen_t len;

	return v[0] ? metrics_parse_listen(v, &sa, &len) : NULL;
}

/* The table. Order is the order of `feed example-config` and the docs. */
static const struct key keys[] = {
	{ "daemon", "pidfile", K_STR, OFF(pidfile), "/run/feed/feed.pid", 0, 0, NULL,
	  "Pidfile, locked for the daemon's whole life (single instance). Its directory must be writable by `user`.",
	  check_abs_path },
	{ "daemon", "user", K_STR, OFF(user), "", 0, 0, NULL,
	  "User to run as after binding (required when started as root).", NULL },
	{ "daemon", "group", K_STR, OFF(group), "", 0, 0, NULL,
	  "Group to run as (default: the user's primary group).", NULL },
	{ "daemon", "log", K_STR, OFF(log), "auto", 0, 0, NULL,
	  "stderr | syslog | /absolute/path | auto (stderr for `run`, syslog for `start`).", check_log },
	{ "daemon", "log_level", K_ENUM, OFF(log_level), "info", 0, 0, log_levels,
	  "error | warning | info | debug.", NULL },
	{ "daemon", "log_format", K_ENUM, OFF(log_format), "text", 0, 0, log_formats,
	  "text | json (one JSON object per line, for log shippers; files and stderr, not syslog).", NULL },
	{ "daemon", "umask", K_OCTAL, OFF(umask), "027", 01, 0777, NULL,
	  "File creation mask of the daemon, octal, 001..777 (never 0).", NULL },
	{ "daemon", "shutdown_timeout", K_INT, OFF(shutdown_timeout), "25", 1, 3600, NULL,
	  "Seconds `stop` lets the daemon commit and answer in-flight records before it gives up on them.", NULL },

	{ "listen", "endpoint", K_STR, OFF(endpoint), "tcp://127.0.0.1:5555", 0, 0, NULL,
	  "ZeroMQ endpoint(s) to bind, comma separated (tcp://host:port, ipc:///path).", check_endpoint },
	{ "listen", "max_message_bytes", K_INT, OFF(max_message_bytes), "1048576", 64, 2097152, NULL,
	  "Largest request body accepted; larger ones are answered FALSE and stored in fee_reject.", NULL },
	{ "listen", "max_records", K_INT, OFF(max_records), "10000", 1, 1000000, NULL,
	  "Most records in one request.", NULL },
	{ "listen", "hwm", K_INT, OFF(hwm), "10000", 10, 10000000, NULL,
	  "ZeroMQ high-water mark per peer, in messages (send and receive).", NULL },
	{ "listen", "queue_records", K_INT, OFF(queue_records), "200000", 1, 100000000, NULL,
	  "Records admitted but not yet answered; when reached, feed stops reading its sockets.", NULL },
	{ "listen", "queue_bytes", K_INT, OFF(queue_bytes), "67108864", 65536, 2000000000, NULL,
	  "Request bytes admitted but not yet answered; when reached, feed stops reading its sockets.", NULL },
	{ "listen", "curve_server_cert", K_STR, OFF(curve_server_cert), "", 0, 0, NULL,
	  "The server's secret CURVE certificate (NAME.key_secret, mode 0600); set: every tcp:// endpoint requires CURVE (docs/security.md).",
	  check_opt_abs_path },
	{ "listen", "curve_clients", K_STR, OFF(curve_clients), "", 0, 0, NULL,
	  "Directory of the allowed clients' public certificates (NAME.key); rescanned when it changes and on SIGHUP.",
	  check_opt_abs_path },
	{ "listen", "allow", K_STR, OFF(allow), "", 0, 0, NULL,
	  "Peer addresses accepted on tcp:// endpoints, comma separated: IPv4/IPv6 addresses and CIDR ranges; empty = any.",
	  auth_allow_check },

	{ "database", "url", K_STR, OFF(url), "sqlite:///var/lib/feed/feed.db", 0, 0, NULL,
	  "sqlite:///abs/path.db | postgresql://user@host:port/db?... | mysql://user@host:port/db?...", check_url },
	{ "database", "password_file", K_STR, OFF(password_file), "", 0, 0, NULL,
	  "File whose first line is the database password (keeps it off command lines and URLs).",
	  check_opt_abs_path },
	{ "database", "durability", K_ENUM, OFF(durability), "full", 0, 0, durabilities,
	  "full: TRUE only once the commit is on disk | normal: safe against a crash of feed, not of the machine.", NULL },
	{ "database", "writers", K_INT, OFF(writers), "0", 0, 64, NULL,
	  "Writer threads/connections; 0 = automatic (1 for SQLite, 2 for servers).", NULL },
	{ "database", "batch_max", K_INT, OFF(batch_max), "20000", 1, 1000000, NULL,
	  "Most records committed in one transaction (batches grow with load, no timer).", NULL },
	{ "database", "connect_timeout", K_INT, OFF(connect_timeout), "10", 1, 600, NULL,
	  "Seconds to wait for a database connection.", NULL },
	{ "database", "retry_max", K_INT, OFF(retry_max), "5000", 10, 600000, NULL,
	  "Cap of the reconnect backoff, milliseconds.", NULL },
	{ "database", "stall_timeout", K_INT, OFF(stall_timeout), "10", 1, 3599, NULL,
	  "Seconds a database call (or lock wait) may go unanswered before feed calls the database down, cancels the call and retries it; must be below shutdown_timeout.", NULL },

	{ "fee", "default_rate", K_RATE, OFF(default_rate), "0", 0, 0, NULL,
	  "Rate for logins without a fee_rate row: fee = volume x rate, rounded half-up to 2 decimals.", NULL },
	{ "fee", "settle_interval", K_INT, OFF(settle_interval), "1000", 10, 3600000, NULL,
	  "Milliseconds between settle passes when nothing new arrives.", NULL },
	{ "fee", "settle_batch", K_INT, OFF(settle_batch), "1000", 1, 1000000, NULL,
	  "Rows settled per transaction.", NULL },

	{ "metrics", "listen", K_STR, OFF(metrics_listen), "", 0, 0, NULL,
	  "HOST:PORT (numeric: 127.0.0.1:9187, [::1]:9187) serving GET /metrics (Prometheus) and /healthz; empty = off.",
	  check_metrics_listen },
	{ "metrics", "summary_interval", K_INT, OFF(summary_interval), "60", 0, 86400, NULL,
	  "Seconds between the one-line summaries logged at info level (rates, queue, backlog); 0 = none.", NULL },

	{ "send", "endpoint", K_STR, OFF(send_endpoint), "", 0, 0, NULL,
	  "`feed send`: feed instance(s) to send to, comma separated; empty = the first [listen] endpoint (also -e).",
	  check_opt_endpoint },
	{ "send", "server_key", K_STR, OFF(send_server_key), "", 0, 0, NULL,
	  "`feed send`: the server's public certificate (NAME.key); set: speak CURVE (also --server-key).",
	  check_opt_abs_path },
	{ "send", "cert", K_STR, OFF(send_cert), "", 0, 0, NULL,
	  "`feed send`: this client's secret certificate (NAME.key_secret) (also --cert).", check_opt_abs_path },
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static const struct key *find_key(const char *section, const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

static void print_choices(FILE *errs, const char *const *choices)
{
	for (size_t i = 0; choices[i]; i++)
		fprintf(errs, "%s%s", i ? ", " : "", choices[i]);
}

/* The sections, in table order: "daemon, listen, database, fee". */
static void print_sections(FILE *errs)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (i == 0 || strcmp(keys[i].section, keys[i - 1].section) != 0)
			fprintf(errs, "%s%s", i ? ", " : "", keys[i].section);
}

/* The table's spelling of a known section name (so that it outlives the line), or NULL. */
static const char *known_section(const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, name) == 0)
			return keys[i].section;
	return NULL;
}

size_t config_escape(const char *s, char *buf, size_t size)
{
	size_t i, o = 0;

	for (i = 0; s[i]; i++) {
		unsigned char ch = (unsigned char)s[i];
		char e[5];
		size_t n;

		if (ch == '"' || ch == '\\')
			n = (size_t)snprintf(e, sizeof(e), "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			n = (size_t)snprintf(e, sizeof(e), "\\x%02x", ch);
		else
			e[0] = (char)ch, n = 1;
		if (o + n >= size)
			break;
		memcpy(buf + o, e, n);
		o += n;
	}
	buf[o] = '\0';
	return i;
}

/*
 * Room for a whole line of the file escaped (198 bytes x 4) with its quotes:
 * only command-line text can be longer, and is shown cut, saying so.
 */
#define SHOW_MAX 1024

/* s escaped and in quotes, or its escaped start and "... (N bytes)" if too long. Returns buf. */
static const char *quote(const char *s, char buf[SHOW_MAX])
{
	size_t len = strlen(s), n;

	buf[0] = '"';
	n = config_escape(s, buf + 1, SHOW_MAX - 40);
	if (n < len)
		snprintf(buf + strlen(buf), 40, "\"... (%zu bytes)", len);
	else
		strcat(buf, "\"");
	return buf;
}

/* A name (key, section) escaped, "..." if cut. Returns buf. */
static const char *show(const char *s, char buf[SHOW_MAX])
{
	if (config_escape(s, buf, SHOW_MAX - 4) < strlen(s))
		strcat(buf, "...");
	return buf;
}

/* Parses v per k into the struct; on error prints "origin: [s] k: why" and returns -EINVAL. */
static int set_value(struct feed_config *c, const struct key *k, const char *v,
		     const char *origin, FILE *errs)
{
	char *p = (char *)c + k->offset;
	char q[SHOW_MAX];
	char *end;

	switch (k->type) {
	case K_STR: {
		const char *why = k->check ? k->check(v) : NULL;
		if (why) {
			/* a URL may carry a password: never echo it ("pw" -> "***": 3 more bytes at most) */
			size_t size = strlen(v) + 4;
			char *redacted = malloc(size);
			if (!redacted)
				return -ENOMEM;
			store_url_redact(v, redacted, size);
			fprintf(errs, "%s: [%s] %s: %s, got %s\n", origin, k->section, k->name, why, quote(redacted, q));
			free(redacted);
			return -EINVAL;
		}
		char *dup = strdup(v);
		if (!dup)
			return -ENOMEM;
		free(*(char **)p);
		*(char **)p = dup;
		return 0;
	}
	case K_INT:
	case K_OCTAL: {
		errno = 0;
		long n = strtol(v, &end, k->type == K_OCTAL ? 8 : 10);
		if (*v == '\0' || *end != '\0' || errno || n < k->min || n > k->max) {
			if (k->type == K_OCTAL)
				fprintf(errs, "%s: [%s] %s: must be an octal number %03lo..%03lo, got %s\n",
					origin, k->section, k->name, k->min, k->max, quote(v, q));
			else
				fprintf(errs, "%s: [%s] %s: must be an integer %ld..%ld, got %s\n",
					origin, k->section, k->name, k->min, k->max, quote(v, q));
			return -EINVAL;
		}
		*(int *)p = (int)n;
		return 0;
	}
	case K_ENUM:
		for (int i = 0; k->choices[i]; i++) {
			if (strcmp(k->choices[i], v) == 0) {
				*(int *)p = i;
				return 0;
			}
		}
		fprintf(errs, "%s: [%s] %s: must be one of ", origin, k->section, k->name);
		print_choices(errs, k->choices);
		fprintf(errs, ", got %s\n", quote(v, q));
		return -EINVAL;
	case K_RATE: {
		const char *why = NULL;
		int64_t r;
		if (dec_parse(v, strlen(v), DEC_SCALE, DEC_STRICT, &r, &why) < 0) {
			fprintf(errs, "%s: [%s] %s: must be a decimal >= 0 with at most %d fractional digits, got %s%s%s\n",
				origin, k->section, k->name, DEC_SCALE, quote(v, q), why ? ": " : "", why ? why : "");
			return -EINVAL;
		}
		*(int64_t *)p = r;
		return 0;
	}
	}
	return -EINVAL;
}

void config_defaults(struct feed_config *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < NKEYS; i++)
		if (set_value(c, &keys[i], keys[i].def, "default", stderr) < 0)
			abort(); /* a bad default is a programmer error */
}

/* "origin: [section] key: unknown key; [section] accepts: ..." or the unknown section. */
static void print_unknown(FILE *errs, const char *origin, const char *section, const char *key)
{
	char s[SHOW_MAX], k[SHOW_MAX];

	if (!known_section(section)) {
		fprintf(errs, "%s: unknown section [%s] (known: ", origin, show(section, s));
		print_sections(errs);
		fprintf(errs, ")\n");
		return;
	}
	fprintf(errs, "%s: [%s] %s: unknown key; [%s] accepts:", origin, section, show(key, k), section);
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0)
			fprintf(errs, " %s", keys[i].name);
	/* a key put under the wrong header */
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].name, key) == 0)
			fprintf(errs, "; %s is a key of [%s]", keys[i].name, keys[i].section);
	fputc('\n', errs);
}

int config_set(struct feed_config *c, const char *section, const char *key,
	       const char *value, const char *origin, FILE *errs)
{
	const struct key *k = find_key(section, key);

	if (!k) {
		print_unknown(errs, origin, section, key);
		return -ENOENT;
	}
	return set_value(c, k, value, origin, errs);
}

/* ==== Reading the file ==== */

/* A configuration file is a few KiB; this also ends reading /dev/zero or a log given by mistake. */
#define CONFIG_MAX_BYTES (1 << 20)
/* Enough to fix a file by; bounds the output (and the SIGHUP log message) for a file that is no config. */
#define CONFIG_MAX_ERRORS 100

struct load_ctx {
	struct feed_config *c;
	FILE *f;
	FILE *errs;
	char *path;             /* escaped, for messages */
	char *origin;           /* "path:line" of the current line */
	size_t origin_size;
	int nerr;
	int line;               /* line the reader returned last = line of the entry */
	size_t bytes;           /* read so far */
	int read_errno;         /* the file could not be read to its end */
	bool oom;
	bool stop;              /* read no further: too many errors, too large, unreadable, out of memory */
	bool in_section;        /* a [section] header was seen */
	const char *section;    /* current section (the table's string); NULL if unknown or broken */
	int set_on[NKEYS];      /* line on which each key was set, 0 = not yet */
};

static void count_error(struct load_ctx *ctx)
{
	if (++ctx->nerr == CONFIG_MAX_ERRORS && !ctx->stop) {
		fprintf(ctx->errs, "%s:%d: too many errors (%d); the rest of the file is not read\n",
			ctx->path, ctx->line, CONFIG_MAX_ERRORS);
		ctx->stop = true;
	}
}

/* Prints "path:line: <fmt>" and counts one error. */
__attribute__((format(printf, 2, 3)))
static void load_error(struct load_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	fprintf(ctx->errs, "%s:%d: ", ctx->path, ctx->line);
	va_start(ap, fmt);
	vfprintf(ctx->errs, fmt, ap);
	va_end(ap);
	fputc('\n', ctx->errs);
	count_error(ctx);
}

/* inih's scan: the first of `chars`, an inline comment (";" after whitespace), or the end. */
static char *scan(const char *s, const char *chars)
{
	bool was_space = false;

	while (*s && !strchr(chars, *s) && !(was_space && *s == ';')) {
		was_space = *s == ' ' || *s == '\t';
		s++;
	}
	return (char *)s;
}

/* Reports the line as a syntax error and hands inih an empty line instead. */
static char *syntax_error(struct load_ctx *ctx, char *line, const char *why)
{
	char q[SHOW_MAX];

	load_error(ctx, "syntax error: %s, got %s", why, quote(line, q));
	line[0] = '\0';
	return line;
}

/*
 * Checks the shape of one line (control bytes and length already checked),
 * the way inih will read it, so that every bad line is reported and not only
 * the first; follows the sections. Returns the line to hand inih ("" when bad).
 */
static char *check_line(struct load_ctx *ctx, char *line)
{
	char *s = line, *end;

	if (ctx->line == 1 && strncmp(s, "\xEF\xBB\xBF", 3) == 0)
		s += 3;   /* UTF-8 byte order mark */
	/* inih takes an indented line for more of the previous key's value: no continuations here */
	s += strspn(s, " \t");
	memmove(line, s, strlen(s) + 1);
	end = line + strlen(line);
	while (end > line && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';

	if (line[0] == '\0' || line[0] == ';' || line[0] == '#')
		return line;
	if (line[0] == '[') {
		char *close = scan(line + 1, "]");
		char s_name[SHOW_MAX];
		const char *rest;

		/* keys under a broken or unknown header are not checked: the header is the error */
		ctx->in_section = true;
		ctx->section = NULL;
		if (*close != ']')
			return syntax_error(ctx, line, "no \"]\" ends the section name");
		/* inih ignores what follows "]": "[daemon] log_level = debug" would set nothing */
		rest = close + 1 + strspn(close + 1, " \t");
		if (*rest != '\0' && *rest != ';')
			return syntax_error(ctx, line, "only a ; comment may follow \"[section]\"");
		*close = '\0';
		ctx->section = known_section(line + 1);
		if (!ctx->section) {
			fprintf(ctx->errs, "%s:%d: unknown section [%s] (known: ", ctx->path, ctx->line,
				show(line + 1, s_name));
			print_sections(ctx->errs);
			fprintf(ctx->errs, ")\n");
			count_error(ctx);
		}
		*close = ']';
		return line;
	}
	end = scan(line, "=:");
	if (*end != '=' && *end != ':')
		return syntax_error(ctx, line, "expected \"[section]\", \"key = value\" or a ; comment");
	if (end == line)
		return syntax_error(ctx, line, *end == '=' ? "no key before the \"=\"" : "no key before the \":\"");
	return line;
}

/*
 * inih's line reader. Reads one line of at most num - 2 bytes (a line that
 * fills inih's buffer would be taken for a truncated one) without its LF or
 * CRLF, byte by byte: a NUL must not end the line early, or the rest of a
 * long line would be read as a line of its own (fgets + strlen did that).
 * Control bytes other than tab are refused: the file is text.
 */
static char *read_line(char *str, int num, void *stream)
{
	struct load_ctx *ctx = stream;
	size_t limit = (size_t)num - 2, len = 0, bad_col = 0;
	int ch, bad = -1;
	bool any = false;

	if (ctx->stop)
		return NULL;
	for (;;) {
		ch = getc(ctx->f);
		if (ch == EOF) {
			if (ferror(ctx->f)) {
				ctx->read_errno = errno ? errno : EIO;
				ctx->stop = true;
				return NULL;
			}
			if (!any)
				return NULL;
			break;
		}
		if (!any) {
			any = true;
			ctx->line++;
		}
		if (++ctx->bytes > CONFIG_MAX_BYTES) {
			if (bad >= 0)
				load_error(ctx, "control byte \\x%02x in column %zu: a configuration file is text",
					   bad, bad_col);
			if (!ctx->stop)
				load_error(ctx, "file larger than %d bytes: not a configuration file? (not read further)",
					   CONFIG_MAX_BYTES);
			ctx->stop = true;
			str[0] = '\0';
			return str;
		}
		if (ch == '\n')
			break;
		if (ch == '\r') {
			int next = getc(ctx->f);
			if (next == '\n' || next == EOF) {
				ctx->bytes += next == '\n';
				break;
			}
			ungetc(next, ctx->f);
		}
		if (bad < 0 && ((ch < 0x20 && ch != '\t') || ch == 0x7f)) {
			bad = ch;
			bad_col = len + 1;
		}
		if (len < limit)
			str[len] = (char)ch;
		len++;
	}
	str[len < limit ? len : limit] = '\0';
	if (bad >= 0) {
		load_error(ctx, "control byte \\x%02x in column %zu: a configuration file is text", bad, bad_col);
		str[0] = '\0';
	} else if (len > limit) {
		load_error(ctx, "line longer than %zu characters", limit);
		str[0] = '\0';   /* ignore the line */
	} else {
		check_line(ctx, str);
	}
	return str;
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
	struct load_ctx *ctx = user;
	const struct key *k;
	char q[SHOW_MAX];
	int r;

	(void)section;   /* ours is ctx->section: inih's copy is cut at 49 bytes */
	if (ctx->stop)
		return 1;
	snprintf(ctx->origin, ctx->origin_size, "%s:%d", ctx->path, ctx->line);
	if (!ctx->in_section) {
		fprintf(ctx->errs, "%s: key %s outside of any section\n", ctx->origin, quote(name, q));
		count_error(ctx);
		return 1;
	}
	if (!ctx->section)
		return 1;   /* its header was reported */
	k = find_key(ctx->section, name);
	if (!k) {
		print_unknown(ctx->errs, ctx->origin, ctx->section, name);
		count_error(ctx);
		return 1;
	}
	if (ctx->set_on[k - keys]) {
		/* the first would silently lose to the second: an edit of the first would do nothing */
		fprintf(ctx->errs, "%s: [%s] %s: set again (first on line %d); a key may be set once\n",
			ctx->origin, k->section, k->name, ctx->set_on[k - keys]);
		count_error(ctx);
		return 1;
	}
	ctx->set_on[k - keys] = ctx->line;
	r = set_value(ctx->c, k, value, ctx->origin, ctx->errs);
	if (r == -ENOMEM)
		ctx->oom = ctx->stop = true;
	else if (r < 0)
		count_error(ctx);
	return 1;
}

/* s escaped into a new string (4 bytes per byte at most), or NULL. */
static char *escape_dup(const char *s)
{
	size_t size = strlen(s) * 4 + 1;
	char *buf = malloc(size);

	if (buf)
		config_escape(s, buf, size);
	return buf;
}

int config_load(struct feed_config *c, const char *path, FILE *errs)
{
	struct load_ctx ctx = { .c = c, .errs = errs };
	int r;

	ctx.path = escape_dup(path);
	ctx.origin_size = ctx.path ? strlen(ctx.path) + 16 : 0;
	ctx.origin = ctx.path ? malloc(ctx.origin_size) : NULL;
	if (!ctx.origin) {
		fprintf(errs, "cannot read the configuration file: out of memory\n");
		r = -ENOMEM;
		goto out;
	}
	ctx.f = fopen(path, "re");
	if (!ctx.f) {
		r = -errno;
		fprintf(errs, "%s: cannot open configuration file: %s\n", ctx.path, strerror(-r));
		goto out;
	}
	r = ini_parse_stream(read_line, &ctx, on_entry, &ctx);
	fclose(ctx.f);
	if (ctx.read_errno) {
		/* a directory, an I/O error: what was read is not the whole file */
		fprintf(errs, "%s: cannot read configuration file: %s\n", ctx.path, strerror(ctx.read_errno));
		r = -ctx.read_errno;
		goto out;
	}
	if (ctx.oom || r < 0) {
		fprintf(errs, "%s: cannot parse configuration file (out of memory)\n", ctx.path);
		r = -ENOMEM;
		goto out;
	}
	if (r > 0) {
		/* check_line() hands inih only lines it accepts: should it still object, say where */
		fprintf(errs, "%s:%d: syntax error: expected \"[section]\", \"key = value\" or a ; comment\n",
			ctx.path, r);
		ctx.nerr++;
	}
	r = ctx.nerr;
out:
	free(ctx.origin);
	free(ctx.path);
	return r;
}

int config_validate(const struct feed_config *c, FILE *errs)
{
	int nerr = 0;

	/* single-key checks are done by set_value(); only cross-key ones remain */
	if ((long)c->max_message_bytes * 2 > (long)c->queue_bytes) {
		fprintf(errs, "[listen] queue_bytes (%d) must be at least twice max_message_bytes (%d)\n",
			c->queue_bytes, c->max_message_bytes);
		nerr++;
	}
	/* a stalled call must be cancelled before `stop` gives up on the daemon */
	if (c->stall_timeout >= c->shutdown_timeout) {
		fprintf(errs, "[database] stall_timeout (%d) must be below [daemon] shutdown_timeout (%d)\n",
			c->stall_timeout, c->shutdown_timeout);
		nerr++;
	}
	/* what `start` resolves before it can drop privileges: check finds it too */
	errno = 0;
	if (c->user[0] && !getpwnam(c->user)) {
		fprintf(errs, "[daemon] user: no such user \"%s\"%s%s\n", c->user,
			errno ? ": " : "", errno ? strerror(errno) : "");
		nerr++;
	}
	errno = 0;
	if (c->group[0] && !getgrnam(c->group)) {
		fprintf(errs, "[daemon] group: no such group \"%s\"%s%s\n", c->group,
			errno ? ": " : "", errno ? strerror(errno) : "");
		nerr++;
	}
	if (!c->curve_server_cert[0] != !c->curve_clients[0]) {
		fprintf(errs, "[listen] curve_server_cert and curve_clients go together: %s is set, %s is not\n",
			c->curve_server_cert[0] ? "curve_server_cert" : "curve_clients",
			c->curve_server_cert[0] ? "curve_clients" : "curve_server_cert");
		nerr++;
	}
	return nerr;
}

int config_read_password(const struct feed_config *c, char **ret, FILE *errs)
{
	char buf[1024], shown[SHOW_MAX];
	const char *why = NULL;
	size_t len = 0;
	FILE *f;
	int ch, r = 0;

	*ret = NULL;
	if (!c->password_file[0])
		return 0;
	/* read as root: never through a symlink, never from a FIFO or device */
	int fd = open(c->password_file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		fprintf(errs, "[database] password_file: %s: %s\n", show(c->password_file, shown),
			S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file");
		return -EINVAL;
	}
	f = fd >= 0 ? fdopen(fd, "r") : NULL;
	if (!f) {
		r = -errno;
		if (fd >= 0)
			close(fd);
		if (r == -ELOOP)
			r = -EINVAL; /* O_NOFOLLOW met a symlink */
		fprintf(errs, "[database] password_file: cannot read %s: %s\n", show(c->password_file, shown),
			r == -EINVAL ? "it is a symbolic link (give the file itself)" : strerror(-r));
		return r;
	}
	/* byte by byte: a NUL, a cut or a read error would silently give another password */
	while ((ch = getc(f)) != EOF && ch != '\n') {
		if (ch == '\0')
			why = "its first line holds a NUL byte";
		else if (len == sizeof(buf) - 1)
			why = "first line longer than 1023 bytes";
		if (why)
			break;
		buf[len++] = (char)ch;
	}
	if (!why && ferror(f)) {
		r = errno ? -errno : -EIO;
		why = strerror(-r);
	}
	fclose(f);
	if (len && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	if (why) {
		fprintf(errs, "[database] password_file: %s: %s\n", show(c->password_file, shown), why);
		r = r ? r : -EINVAL;
	} else {
		*ret = strdup(buf);
		r = *ret ? 0 : -ENOMEM;
	}
	explicit_bzero(buf, sizeof(buf));
	return r;
}

void config_print_example(FILE *out)
{
	const char *section = "";

	fprintf(out, "; feed.conf - configuration of feed(8).\n"
		     "; Generated by `feed example-config` from the table in src/config.c:\n"
		     "; every key with its default. Uncomment and change what you need.\n");
	for (size_t i = 0; i < NKEYS; i++) {
		const struct key *k = &keys[i];
		if (strcmp(section, k->section) != 0) {
			section = k->section;
			fprintf(out, "\n[%s]\n", section);
		}
		fprintf(out, "; %s\n", k->help);
		if (k->type == K_INT)
			fprintf(out, "; range %ld..%ld\n", k->min, k->max);
		fprintf(out, ";%s = %s\n", k->name, k->def);
	}
}

void config_free(struct feed_config *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type == K_STR) {
			char **p = (char **)((char *)c + keys[i].offset);
			free(*p);
			*p = NULL;
		}
	}
}
