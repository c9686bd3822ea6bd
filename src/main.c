/*
 * main.c - the one binary: global options, then a command from a table.
 *
 *   feed [-c FILE] [options] COMMAND [command options]
 *
 * Exit codes: 0 success, 1 failure, 2 bad usage, 6 configuration error;
 * `status` uses the LSB codes (0 running, 1 dead with pidfile, 3 not
 * running, 4 unknown). main() is the only place that calls exit.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bsd/unistd.h>

#include "auth.h"
#include "client.h"
#include "config.h"
#include "daemon.h"
#include "log.h"
#include "store.h"

struct opts {
	const char *config;
	bool config_given;
	const char *endpoint, *database, *pidfile, *log, *user;
	int verbose;
	int timeout;          /* stop, restart */
};

struct command {
	const char *name;
	int (*fn)(struct opts *o, struct feed_config *cfg, int argc, char **argv);
	const char *args;
	const char *help;
};

static int cmd_start(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_run(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_stop(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_restart(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_reload(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_status(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_check(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_migrate(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_send(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_keygen(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_example(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_version(struct opts *o, struct feed_config *cfg, int argc, char **argv);
static int cmd_help(struct opts *o, struct feed_config *cfg, int argc, char **argv);

static const struct command commands[] = {
	{ "start", cmd_start, "", "Start the daemon in the background; returns once it serves (or prints why it could not)." },
	{ "run", cmd_run, "", "Serve in the foreground, logging to stderr (systemd Type=notify, containers)." },
	{ "stop", cmd_stop, "[--timeout SECONDS]", "Stop the running daemon gracefully: SIGTERM, wait (default shutdown_timeout + 5 s = 30 s), then SIGKILL." },
	{ "restart", cmd_restart, "[--timeout SECONDS]", "stop, then start." },
	{ "reload", cmd_reload, "", "Make the running daemon reopen its log and re-read log_level (SIGHUP); with a log file, returns once it writes to the new one (logrotate's postrotate)." },
	{ "status", cmd_status, "", "Show whether feed runs (LSB exit codes: 0 running, 1 dead with pidfile, 3 stopped, 4 unknown)." },
	{ "check", cmd_check, "", "Validate the configuration and open the database; print \"configuration OK\" or every error." },
	{ "migrate", cmd_migrate, "", "Create or upgrade the database schema (also done at every start)." },
	{ "send", cmd_send, "[-e ENDPOINT] [-w WINDOW] [-n RECORDS_PER_REQUEST] [-t TIMEOUT_MS] [-r MAX_RESENDS] [-q] [--server-key FILE --cert FILE] [FILE...]",
	  "Send records (ticket,login,volume lines) from FILEs or stdin; exit 0 only if all got TRUE." },
	{ "keygen", cmd_keygen, "NAME [-d DIR]",
	  "Make a CURVE key pair: DIR/NAME.key (public, 0644) and DIR/NAME.key_secret (0600); DIR defaults to \".\"." },
	{ "example-config", cmd_example, "", "Print every configuration key with its default and description." },
	{ "version", cmd_version, "", "Print the version." },
	{ "help", cmd_help, "[COMMAND]", "Show help for feed or for one command." },
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static const struct command *find_command(const char *name)
{
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (strcmp(commands[i].name, name) == 0)
			return &commands[i];
	return NULL;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: feed [-c FILE] [options] COMMAND [ARGS]\n"
		"\n"
		"Options (override the configuration file):\n"
		"  -c, --config FILE     configuration file (default %s)\n"
		"  -e, --endpoint LIST   [listen] endpoint\n"
		"  -d, --database URL    [database] url\n"
		"  -p, --pidfile PATH    [daemon] pidfile\n"
		"  -l, --log DEST        [daemon] log (stderr, syslog, /path)\n"
		"  -u, --user NAME       [daemon] user\n"
		"  -v, --verbose         log_level debug\n"
		"  -h, --help            this help\n"
		"\nCommands:\n", CONFIG_DEFAULT_PATH);
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(out, "  %-15s %s\n", commands[i].name, commands[i].help);
	fprintf(out, "\nExit codes: 0 success, 1 failure, 2 usage, 6 configuration error; see feed(8).\n");
}

static void command_usage(FILE *out, const struct command *c)
{
	fprintf(out, "usage: feed [options] %s %s\n  %s\n", c->name, c->args, c->help);
}

static const struct option global_long[] = {
	{ "config", required_argument, NULL, 'c' },
	{ "endpoint", required_argument, NULL, 'e' },
	{ "database", required_argument, NULL, 'd' },
	{ "pidfile", required_argument, NULL, 'p' },
	{ "log", required_argument, NULL, 'l' },
	{ "user", required_argument, NULL, 'u' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "version", no_argument, NULL, 'V' },
	{ "timeout", required_argument, NULL, 'T' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/* Returns 0, 1 for --help, 2 for --version, or -EINVAL (message printed). */
static int parse_opt(struct opts *o, int c, const struct command *cmd)
{
	switch (c) {
	case 'c': o->config = optarg; o->config_given = true; return 0;
	case 'e': o->endpoint = optarg; return 0;
	case 'd': o->database = optarg; return 0;
	case 'p': o->pidfile = optarg; return 0;
	case 'l': o->log = optarg; return 0;
	case 'u': o->user = optarg; return 0;
	case 'v': o->verbose++; return 0;
	case 'h': return 1;
	case 'V': return 2;
	case 'T': {
		char *end;
		long t = strtol(optarg, &end, 10);
		if (!cmd || (strcmp(cmd->name, "stop") && strcmp(cmd->name, "restart"))) {
			fprintf(stderr, "feed: --timeout is an option of stop and restart\n");
			return -EINVAL;
		}
		if (*optarg == '\0' || *end || t < 1 || t > 86400) {
			char shown[64];
			config_escape(optarg, shown, sizeof(shown));
			fprintf(stderr, "feed: --timeout: must be 1..86400 seconds, got \"%s\"\n", shown);
			return -EINVAL;
		}
		o->timeout = (int)t;
		return 0;
	}
	default:
		return -EINVAL; /* getopt printed the problem */
	}
}

/* Loads the file and the overrides; prints every error. Returns 0 or EXIT_CONFIG. */
static int load_config(struct opts *o, struct feed_config *cfg)
{
	int nerr = 0, r;

	r = config_load(cfg, o->config, stderr);
	if (r < 0) {
		if (!o->config_given)
			fprintf(stderr, "feed: use -c FILE to name another configuration file\n");
		return EXIT_CONFIG;
	}
	nerr += r;
	struct { const char *v, *sec, *key, *opt; } ov[] = {
		{ o->endpoint, "listen", "endpoint", "--endpoint" },
		{ o->database, "database", "url", "--database" },
		{ o->pidfile, "daemon", "pidfile", "--pidfile" },
		{ o->log, "daemon", "log", "--log" },
		{ o->user, "daemon", "user", "--user" },
		{ o->verbose ? "debug" : NULL, "daemon", "log_level", "-v" },
	};
	for (size_t i = 0; i < sizeof(ov) / sizeof(ov[0]); i++)
		if (ov[i].v && config_set(cfg, ov[i].sec, ov[i].key, ov[i].v, ov[i].opt, stderr) < 0)
			nerr++;
	nerr += config_validate(cfg, stderr);
	if (nerr) {
		fprintf(stderr, "feed: %d configuration error%s; nothing started\n", nerr, nerr == 1 ? "" : "s");
		return EXIT_CONFIG;
	}
	return 0;
}

static int cmd_start(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	if (strcmp(cfg->log, "stderr") == 0)
		fprintf(stderr, "feed: warning: [daemon] log = stderr, but `start` detaches from the terminal: logging to syslog instead (use `run` to log to stderr, or log = /path)\n");
	return daemon_serve(cfg, o->config, o->verbose > 0, true);
}

static int cmd_run(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	return daemon_serve(cfg, o->config, o->verbose > 0, false);
}

/* --timeout, or long enough for the daemon's own shutdown_timeout to run out first */
static int stop_timeout(const struct opts *o, const struct feed_config *cfg)
{
	return o->timeout ? o->timeout : cfg->shutdown_timeout + 5;
}

static int cmd_stop(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	return daemon_stop(cfg, stop_timeout(o, cfg));
}

static int cmd_restart(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	int r = daemon_stop(cfg, stop_timeout(o, cfg));

	if (r != EXIT_OK)
		return r;
	return daemon_serve(cfg, o->config, o->verbose > 0, true);
}

static int cmd_reload(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	return daemon_reload(cfg);
}

static int cmd_status(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	return daemon_status(cfg);
}

/* Opens the database once (check, migrate). */
static int open_db(struct feed_config *cfg, bool migrate)
{
	struct store_params sp = { .url = cfg->url, .durability = cfg->durability,
				   .connect_timeout = cfg->connect_timeout };
	char err[1024] = "", redacted[512];
	struct store *s = NULL;
	char *password = NULL;
	int r;

	store_url_redact(cfg->url, redacted, sizeof(redacted));
	if (config_read_password(cfg, &password, stderr) < 0)
		return EXIT_CONFIG;
	sp.password = password;
	r = store_find(cfg->url)->open(&sp, &s, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "feed: database %s: %s\n", redacted, err);
	} else if (migrate && (r = s->ops->migrate(s)) < 0) {
		fprintf(stderr, "feed: database %s: %s\n", redacted, s->errmsg);
	} else if (s->durability[0]) {
		fprintf(s->durability_warn ? stderr : stdout, "%sdatabase %s: %s\n",
			s->durability_warn ? "feed: warning: " : "", redacted, s->durability);
	}
	if (s)
		s->ops->close(s);
	if (password) {
		explicit_bzero(password, strlen(password));
		free(password);
	}
	if (r < 0)
		return EXIT_FAIL;
	if (migrate)
		printf("database %s: schema at version %d\n", redacted, STORE_SCHEMA_VERSION);
	return EXIT_OK;
}

/* The CURVE certificates and directory, as `start` would read them (as the caller). */
static int check_curve(struct feed_config *cfg)
{
	struct auth *a = NULL;
	char err[1024], shown[1100];
	enum log_level level = log_get_level();
	int r;

	log_set_level(LOG_LVL_WARN);    /* skipped files, not the count */
	r = auth_open(cfg, &a, err, sizeof(err));
	log_set_level(level);
	if (r < 0) {
		config_escape(err, shown, sizeof(shown));
		fprintf(stderr, "feed: %s\n", shown);
		return EXIT_CONFIG;
	}
	auth_free(&a);
	return EXIT_OK;
}

static int cmd_check(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	int r = daemon_check_identity(cfg);

	if (r == EXIT_OK)
		r = check_curve(cfg);

	if (r != EXIT_OK)
		return r;
	r = open_db(cfg, false);

	if (r == EXIT_OK)
		printf("configuration OK\n");
	return r;
}

static int cmd_migrate(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	return open_db(cfg, true);
}

/* `send` needs a configuration only for its defaults: endpoint(s), [send] keys. */
static void client_endpoint(struct opts *o, struct client_defaults *d)
{
	struct feed_config cfg;
	FILE *null = fopen("/dev/null", "we");
	const char *ep;
	char *buf = d->endpoint;
	size_t size = sizeof(d->endpoint);

	config_defaults(&cfg);
	if (null && (o->config_given || access(o->config, R_OK) == 0))
		config_load(&cfg, o->config, null);
	ep = o->endpoint ? o->endpoint : cfg.endpoint;
	if (!o->endpoint && cfg.send_endpoint[0])      /* all of them: one per feed instance */
		snprintf(buf, size, "%s", cfg.send_endpoint);
	else
		snprintf(buf, size, "%.*s", (int)strcspn(ep, ","), ep);
	/* a wildcard bind address is not a destination */
	char *star = strstr(buf, "://*:");
	if (!star)
		star = strstr(buf, "://0.0.0.0:");
	if (star) {
		char rest[256];
		snprintf(rest, sizeof(rest), "%s", strchr(star + 3, ':'));
		snprintf(star + 3, size - (size_t)(star + 3 - buf), "127.0.0.1%s", rest);
	}
	if (cfg.send_server_key[0])
		d->server_key = strdup(cfg.send_server_key);
	if (cfg.send_cert[0])
		d->cert = strdup(cfg.send_cert);
	if (null)
		fclose(null);
	config_free(&cfg);
}

static int cmd_send(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	struct client_defaults d = { 0 };

	client_endpoint(o, &d);
	int r = client_send(&d, argc, argv);
	free(d.server_key);
	free(d.cert);
	return r;
}

/* Options after `keygen` are its own: -d is the directory there, not --database. */
static int cmd_keygen(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "dir", required_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *dir = ".", *name = NULL;
	char err[1024];
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "+d:h", longopts, NULL)) != -1 || optind < argc) {
		if (c == -1) {   /* NAME may come before -d */
			if (name) {
				fprintf(stderr, "feed: keygen takes one NAME\n");
				command_usage(stderr, find_command("keygen"));
				return EXIT_USAGE;
			}
			name = argv[optind++];
			continue;
		}
		if (c == 'd') {
			dir = optarg;
		} else if (c == 'h') {
			command_usage(stdout, find_command("keygen"));
			return EXIT_OK;
		} else {
			command_usage(stderr, find_command("keygen"));
			return EXIT_USAGE;
		}
	}
	if (!name) {
		fprintf(stderr, "feed: keygen needs a NAME (the client's name in fee.source)\n");
		command_usage(stderr, find_command("keygen"));
		return EXIT_USAGE;
	}
	if (auth_keygen(dir, name, err, sizeof(err)) < 0) {
		char shown[1100];
		config_escape(err, shown, sizeof(shown));
		fprintf(stderr, "feed: keygen: %s\n", shown);
		return EXIT_FAIL;
	}
	printf("%s/%s.key\n%s/%s.key_secret\n", dir, name, dir, name);
	return EXIT_OK;
}

static int cmd_example(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	config_print_example(stdout);
	return EXIT_OK;
}

static int cmd_version(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	printf("feed %s\n", FEED_VERSION);
	return EXIT_OK;
}

static int cmd_help(struct opts *o, struct feed_config *cfg, int argc, char **argv)
{
	if (argc > 2) {
		fprintf(stderr, "feed: help takes at most one COMMAND\n");
		return EXIT_USAGE;
	}
	if (argc == 2) {
		const struct command *c = find_command(argv[1]);
		if (!c) {
			char shown[64];
			config_escape(argv[1], shown, sizeof(shown));
			fprintf(stderr, "feed: unknown command \"%s\"\n", shown);
			usage(stderr);
			return EXIT_USAGE;
		}
		if (c->fn == cmd_send)
			client_usage(stdout);    /* the very text of `feed send --help` */
		else
			command_usage(stdout, c);
		return EXIT_OK;
	}
	usage(stdout);
	return EXIT_OK;
}

/* Commands that need no configuration file. */
static bool needs_config(const struct command *c)
{
	return c->fn != cmd_send && c->fn != cmd_keygen && c->fn != cmd_example && c->fn != cmd_version && c->fn != cmd_help;
}

int main(int argc, char **argv)
{
	struct opts o = { .config = CONFIG_DEFAULT_PATH };
	struct feed_config cfg;
	const struct command *cmd;
	char abs_config[PATH_MAX];
	int c, r;

	/* before anything points into argv: the daemon's title overwrites it (environ is moved) */
	setproctitle_init(argc, argv, environ);

	/* global options, up to the command */
	while ((c = getopt_long(argc, argv, "+c:e:d:p:l:u:vh", global_long, NULL)) != -1) {
		r = parse_opt(&o, c, NULL);
		if (r == 1) {
			usage(stdout);
			return EXIT_OK;
		}
		if (r == 2)
			return cmd_version(&o, NULL, 0, NULL);
		if (r < 0) {
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "feed: no command given\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	cmd = find_command(argv[optind]);
	if (!cmd) {
		char shown[64];
		config_escape(argv[optind], shown, sizeof(shown));
		fprintf(stderr, "feed: unknown command \"%s\"\n", shown);
		usage(stderr);
		return EXIT_USAGE;
	}
	argc -= optind;
	argv += optind;
	optind = 1;

	if (cmd->fn == cmd_send || cmd->fn == cmd_keygen) {
		/* options after `send` and `keygen` are their own */
		return cmd->fn(&o, NULL, argc, argv);
	}
	/* command options: the global ones are accepted here too */
	while ((c = getopt_long(argc, argv, "c:e:d:p:l:u:vh", global_long, NULL)) != -1) {
		r = parse_opt(&o, c, cmd);
		if (r == 2)
			return cmd_version(&o, NULL, 0, NULL);
		if (r == 1) {
			command_usage(stdout, cmd);
			return EXIT_OK;
		}
		if (r < 0) {
			command_usage(stderr, cmd);
			return EXIT_USAGE;
		}
	}
	if (cmd->fn != cmd_help && optind < argc) {
		char shown[64];
		config_escape(argv[optind], shown, sizeof(shown));
		fprintf(stderr, "feed: %s: unexpected argument \"%s\"\n", cmd->name, shown);
		command_usage(stderr, cmd);
		return EXIT_USAGE;
	}
	if (cmd->fn == cmd_help)
		return cmd_help(&o, NULL, argc - optind + 1, argv + optind - 1);

	/* the daemon re-reads the file on SIGHUP from /, after its title has overwritten argv */
	if (o.config[0] == '/' || !realpath(o.config, abs_config))
		snprintf(abs_config, sizeof(abs_config), "%s", o.config);
	o.config = abs_config;
	config_defaults(&cfg);
	if (needs_config(cmd)) {
		r = load_config(&o, &cfg);
		if (r) {
			config_free(&cfg);
			return r;
		}
	}
	r = cmd->fn(&o, &cfg, argc, argv);
	config_free(&cfg);
	return r;
}
