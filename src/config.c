/*
 * config.c - the one table of configuration keys, and everything derived
 * from it: defaults, INI parsing (libinih), bounds checks with file:line
 * errors, command-line overrides and `feed example-config`.
 *
 * Runs on the main thread before anything starts; the struct is read-only
 * afterwards (SIGHUP re-reads only the keys marked reloadable).
 */
#include "config.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "log.h"
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

static const char *check_endpoint(const char *v)
{
	v += strspn(v, " \t,");
	return *v ? NULL : "at least one ZeroMQ endpoint is needed (e.g. tcp://127.0.0.1:5555)";
}

static const char *check_url(const char *v)
{
	return store_find(v) ? NULL :
	       "unsupported scheme (accepted: sqlite:///abs/path, postgresql://..., postgres://..., mysql://..., mariadb://...)";
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
};

#define NKEYS (sizeof(keys) / sizeof(keys[0]))

static const struct key *find_key(const char *section, const char *name)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0 && strcmp(keys[i].name, name) == 0)
			return &keys[i];
	return NULL;
}

static bool section_known(const char *section)
{
	for (size_t i = 0; i < NKEYS; i++)
		if (strcmp(keys[i].section, section) == 0)
			return true;
	return false;
}

static void print_choices(FILE *errs, const char *const *choices)
{
	for (size_t i = 0; choices[i]; i++)
		fprintf(errs, "%s%s", i ? ", " : "", choices[i]);
}

/* Parses v per k into the struct; on error prints "origin: [s] k: why" and returns -EINVAL. */
static int set_value(struct feed_config *c, const struct key *k, const char *v,
		     const char *origin, FILE *errs)
{
	char *p = (char *)c + k->offset;
	char *end;

	switch (k->type) {
	case K_STR: {
		const char *why = k->check ? k->check(v) : NULL;
		if (why) {
			char shown[256];
			/* a URL may carry a password: never echo it */
			store_url_redact(v, shown, sizeof(shown));
			fprintf(errs, "%s: [%s] %s: %s, got \"%s\"\n", origin, k->section, k->name, why, shown);
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
				fprintf(errs, "%s: [%s] %s: must be an octal number %03lo..%03lo, got \"%s\"\n",
					origin, k->section, k->name, k->min, k->max, v);
			else
				fprintf(errs, "%s: [%s] %s: must be an integer %ld..%ld, got \"%s\"\n",
					origin, k->section, k->name, k->min, k->max, v);
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
		fprintf(errs, ", got \"%s\"\n", v);
		return -EINVAL;
	case K_RATE: {
		const char *why = NULL;
		int64_t r;
		if (dec_parse(v, strlen(v), DEC_SCALE, DEC_STRICT, &r, &why) < 0) {
			fprintf(errs, "%s: [%s] %s: must be a decimal >= 0 with at most %d fractional digits, got \"%s\"%s%s\n",
				origin, k->section, k->name, DEC_SCALE, v, why ? ": " : "", why ? why : "");
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

int config_set(struct feed_config *c, const char *section, const char *key,
	       const char *value, const char *origin, FILE *errs)
{
	const struct key *k = find_key(section, key);

	if (!k) {
		if (!section_known(section)) {
			fprintf(errs, "%s: unknown section [%s] (known: daemon, listen, database, fee)\n",
				origin, section);
		} else {
			fprintf(errs, "%s: [%s] %s: unknown key; [%s] accepts:", origin, section, key, section);
			for (size_t i = 0; i < NKEYS; i++)
				if (strcmp(keys[i].section, section) == 0)
					fprintf(errs, " %s", keys[i].name);
			fputc('\n', errs);
		}
		return -ENOENT;
	}
	return set_value(c, k, value, origin, errs);
}

struct load_ctx {
	struct feed_config *c;
	const char *path;
	FILE *f;
	FILE *errs;
	int nerr;
	int line;               /* line the reader returned last = line of the entry */
	char bad_section[64];   /* last unknown section reported */
};

/* inih's line reader, counting lines (this inih build passes no line numbers). */
static char *read_line(char *str, int num, void *stream)
{
	struct load_ctx *ctx = stream;
	char *r = fgets(str, num, ctx->f);
	size_t n;

	if (!r)
		return NULL;
	ctx->line++;
	n = strlen(str);
	if (n == (size_t)num - 1 && str[n - 1] != '\n') {
		int ch;
		fprintf(ctx->errs, "%s:%d: line longer than %d characters\n", ctx->path, ctx->line, num - 2);
		ctx->nerr++;
		while ((ch = fgetc(ctx->f)) != EOF && ch != '\n')
			;
		str[0] = '\0';   /* ignore the line */
	}
	return r;
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
	struct load_ctx *ctx = user;
	char origin[4200];

	snprintf(origin, sizeof(origin), "%s:%d", ctx->path, ctx->line);
	if (*section == '\0') {
		fprintf(ctx->errs, "%s: key \"%s\" outside of any section\n", origin, name);
		ctx->nerr++;
		return 1;
	}
	if (!section_known(section)) {
		if (strcmp(ctx->bad_section, section) != 0) {
			fprintf(ctx->errs, "%s: unknown section [%s] (known: daemon, listen, database, fee)\n",
				origin, section);
			snprintf(ctx->bad_section, sizeof(ctx->bad_section), "%s", section);
			ctx->nerr++;
		}
		return 1;
	}
	if (config_set(ctx->c, section, name, value, origin, ctx->errs) < 0)
		ctx->nerr++;
	return 1;
}

int config_load(struct feed_config *c, const char *path, FILE *errs)
{
	struct load_ctx ctx = { .c = c, .path = path, .errs = errs };
	int r;

	ctx.f = fopen(path, "re");
	if (!ctx.f) {
		r = -errno;
		fprintf(errs, "%s: cannot open configuration file: %s\n", path, strerror(errno));
		return r;
	}
	r = ini_parse_stream(read_line, &ctx, on_entry, &ctx);
	fclose(ctx.f);
	if (r > 0) {
		/* inih reports the first syntax error's line (other lines still apply) */
		fprintf(errs, "%s:%d: syntax error: expected \"[section]\", \"key = value\" or a ; comment\n",
			path, r);
		ctx.nerr++;
	} else if (r < 0) {
		fprintf(errs, "%s: cannot parse configuration file (out of memory)\n", path);
		return -ENOMEM;
	}
	return ctx.nerr;
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
	return nerr;
}

int config_read_password(const struct feed_config *c, char **ret, FILE *errs)
{
	char buf[1024];
	FILE *f;

	*ret = NULL;
	if (!c->password_file[0])
		return 0;
	f = fopen(c->password_file, "re");
	if (!f) {
		int r = -errno;
		fprintf(errs, "[database] password_file: cannot read %s: %s\n", c->password_file, strerror(errno));
		return r;
	}
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = '\0';
	fclose(f);
	buf[strcspn(buf, "\r\n")] = '\0';
	*ret = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	return *ret ? 0 : -ENOMEM;
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
