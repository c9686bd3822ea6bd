/*
 * daemon.c - process lifecycle: daemonize with a readiness pipe, pidfile
 * lock, privilege drop, signals, systemd notification, stop and status.
 *
 * `start` follows the SysV steps of daemon(7): sanitize descriptors and
 * signals, fork, setsid, fork, stdio to /dev/null, umask, chdir /. The
 * original process waits on a pipe and exits 0 only when the daemon says
 * it serves (endpoints bound, database open, pidfile held), else prints
 * the daemon's own error. `run` does the same work in the foreground.
 * Single instance is enforced by the pidfile's lock (flock), held for the
 * daemon's whole life; a pidfile left by kill -9 is harmless.
 *
 * Started as root, feed creates files (pidfile, log, ipc sockets) in
 * directories its run-as user may write to. That user could put a symlink
 * or a hard link there, so root never acts through such a path: it opens
 * the directory and checks it, opens the name relative to it with
 * O_NOFOLLOW, checks what it got, and changes owners through descriptors.
 */
#include "daemon.h"

#include <bsd/unistd.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "server.h"
#include "timeutil.h"
#include "store.h"

/* ==== Start-up context ==== */

struct ctx {
	const struct feed_config *cfg;
	const char *cfgpath;
	bool keep_log_level;       /* -v given: SIGHUP does not take log_level from the file */
	int notify_fd;             /* readiness pipe to the original process, or -1 */
	bool failed;               /* a start-up failure was sent on it */
	char status_path[PATH_MAX];
	char *pidfile_dir;
	const char *pidfile_name;  /* in cfg->pidfile */
	const char *status_name;   /* in status_path */
	int pid_dirfd;             /* the checked pidfile directory, or -1 */
	int pid_fd;                /* the locked pidfile, or -1 */
	uid_t uid;
	gid_t gid;
	bool drop;                 /* switch user after binding */
	bool config_error;         /* the start-up failure is the configuration's: exit 6 */
	time_t started;
	char endpoints[1024];
	char url[512];
	uint64_t watchdog_ms;      /* systemd WatchdogSec= (WATCHDOG_USEC), 0 = none */
	uint64_t watchdog_last;    /* mono ms of the last WATCHDOG=1 */
	bool watchdog_held;        /* pings withheld: a database call is stuck */
};

static void __attribute__((format(printf, 2, 0))) vfail(struct ctx *c, const char *fmt, va_list ap)
{
	char msg[1024];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	log_err("%s", msg);
	/*
	 * The first failure is what `start` prints; the pipe stays open until
	 * serve() has cleaned up (pidfile unlocked and removed), so that `start`
	 * returns only once `status` no longer sees a daemon.
	 */
	if (c->notify_fd >= 0 && !c->failed) {
		dprintf(c->notify_fd, "%s %s\n", c->config_error ? "CONFIG" : "ERROR", msg);
		c->failed = true;
	}
}

/* Reports a start-up failure: logged, and sent to the waiting `start`. */
static void __attribute__((format(printf, 2, 3))) fail(struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfail(c, fmt, ap);
	va_end(ap);
}

/* A start-up failure that a change of the configuration fixes (exit 6). */
static void __attribute__((format(printf, 2, 3))) fail_config(struct ctx *c, const char *fmt, ...)
{
	va_list ap;

	c->config_error = true;
	va_start(ap, fmt);
	vfail(c, fmt, ap);
	va_end(ap);
}

/* ==== systemd notification (sd_notify(3) protocol: one datagram) ==== */

static void sd_notify_msg(const char *msg)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	size_t len;
	int fd;

	if (!path || (path[0] != '/' && path[0] != '@') || strlen(path) >= sizeof(sa.sun_path))
		return;
	len = strlen(path);
	memcpy(sa.sun_path, path, len);
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0'; /* abstract namespace */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
		   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
		log_debug("sd_notify: %s", strerror(errno));
	close(fd);
}

/* ==== Status file (next to the pidfile; read by `feed status`) ==== */

static void status_path_for(const struct feed_config *cfg, char *buf, size_t size)
{
	size_t n = strlen(cfg->pidfile);

	if (n > 4 && strcmp(cfg->pidfile + n - 4, ".pid") == 0)
		snprintf(buf, size, "%.*s.status", (int)(n - 4), cfg->pidfile);
	else
		snprintf(buf, size, "%s.status", cfg->pidfile);
}

/*
 * sd_watchdog_enabled(3): WATCHDOG_USEC, for this very process when
 * WATCHDOG_PID is set (a `start`ed daemon is not the process systemd ran).
 */
static uint64_t watchdog_ms_from_env(void)
{
	const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
	char *end;
	unsigned long long v;

	if (!usec || !usec[0])
		return 0;
	if (pid && pid[0] && strtol(pid, NULL, 10) != (long)getpid())
		return 0;
	errno = 0;
	v = strtoull(usec, &end, 10);
	if (errno || *end || v < 1000) {
		log_warn("WATCHDOG_USEC=\"%.32s\" is not a number of microseconds: the systemd watchdog is not served", usec);
		return 0;
	}
	return v / 1000u;
}

/*
 * WATCHDOG=1 while the pipeline makes progress or is idle: called every
 * second by the main loop (a stuck loop pings no more), withheld while a
 * database call has run for the whole watchdog interval, so that systemd
 * restarts a feed whose writer is stuck. A call that [database]
 * stall_timeout cancels first ends the silence.
 */
static void watchdog_ping(struct ctx *c, const struct server_status *st)
{
	uint64_t now = mono_ms();

	if (!c->watchdog_ms)
		return;
	if (st->busy_ms >= c->watchdog_ms) {
		if (!c->watchdog_held)
			log_err("a database call has not returned for %llu s (WatchdogSec is %llu s): no longer telling systemd that feed is alive",
				(unsigned long long)(st->busy_ms / 1000), (unsigned long long)(c->watchdog_ms / 1000));
		c->watchdog_held = true;
		return;
	}
	if (c->watchdog_held)
		log_info("the stuck database call returned: telling systemd that feed is alive again");
	c->watchdog_held = false;
	/* a quarter of the interval: the loop reports once a second, not on the dot */
	if (now - c->watchdog_last >= c->watchdog_ms / 4) {
		sd_notify_msg("WATCHDOG=1");
		c->watchdog_last = now;
	}
}

/*
 * key=value on one line: a database's error text may hold line breaks
 * (PostgreSQL's do), which would end the value and start a key of its own.
 */
static void put_line(FILE *f, const char *key, const char *v)
{
	fprintf(f, "%s=", key);
	for (; *v; v++)
		fputc((unsigned char)*v < 0x20 ? ' ' : *v, f);
	fputc('\n', f);
}

static void write_status(struct ctx *c, const struct server_status *st)
{
	char tmp[NAME_MAX + 8];
	FILE *f = NULL;
	int fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp", c->status_name);
	fd = openat(c->pid_dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		log_debug("status file %s.tmp: %s", c->status_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return;
	}
	fprintf(f, "pid=%d\nstarted=%lld\nendpoint=%s\ndatabase=%s\n", (int)getpid(),
		(long long)c->started, c->endpoints, c->url);
	put_line(f, "state", st->line);
	fprintf(f, "written=%lld\ndb_up=%d\ndb_since=%lld\n", (long long)time(NULL), st->db_up,
		(long long)st->db_since);
	put_line(f, "db_error", st->db_up ? "" : st->db_error);
	fprintf(f, "committed=%llu\nduplicate=%llu\nrejected=%llu\ncommitted_rate=%.1f\nrejected_rate=%.2f\n",
		(unsigned long long)st->committed, (unsigned long long)st->duplicate,
		(unsigned long long)st->rejected, st->committed_rate, st->rejected_rate);
	fprintf(f, "queue_records=%llu\nqueue_bytes=%llu\nunsettled=%llu\ncommit_ms=%.2f\nbusy_ms=%llu\n",
		(unsigned long long)st->queue_records, (unsigned long long)st->queue_bytes,
		(unsigned long long)st->unsettled, st->commit_ms, (unsigned long long)st->busy_ms);
	if (fclose(f) != 0 || renameat(c->pid_dirfd, tmp, c->pid_dirfd, c->status_name) != 0)
		log_debug("status file %s: %s", c->status_path, strerror(errno));
}

/*
 * The daemon's last word for `feed stop`, which waits for it to exit but is
 * not its parent: how many requests it left unanswered. The status file
 * then outlives the daemon; stop reads and removes it.
 */
static int write_unanswered(struct ctx *c, int n)
{
	char line[32];
	int len = snprintf(line, sizeof(line), "unanswered=%d\n", n);
	int fd = c->pid_fd < 0 ? -1 :
		 openat(c->pid_dirfd, c->status_name, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	int r = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, line, (size_t)len) != len)
		r = -EIO;
	if (close(fd) < 0 && r == 0)
		r = -errno;
	return r;
}

static void on_state(void *arg, const struct server_status *st)
{
	struct ctx *c = arg;
	char msg[1300];

	write_status(c, st);
	snprintf(msg, sizeof(msg), "STATUS=%s", st->line);
	sd_notify_msg(msg);
	watchdog_ping(c, st);
}

static void on_reload(void *arg)
{
	struct ctx *c = arg;
	struct feed_config fresh;
	char *errs = NULL;
	size_t errs_len = 0;
	FILE *mem;
	int r;

	sd_notify_msg("RELOADING=1");
	r = log_reopen();
	if (r < 0)
		log_err("SIGHUP: cannot reopen the log file: %s (still writing to the old one)", strerror(-r));
	/* Only log_level is reloaded: the rest needs a restart (sockets, database, identity). */
	mem = open_memstream(&errs, &errs_len);
	config_defaults(&fresh);
	if (c->cfgpath && mem && config_load(&fresh, c->cfgpath, mem) == 0) {
		if (!c->keep_log_level)
			log_set_level((enum log_level)fresh.log_level);
		log_info("SIGHUP: %s, log_level = %s; other changes need a restart",
			 r < 0 ? "log NOT reopened" : "log reopened", log_level_name(log_get_level()));
	} else if (c->cfgpath) {
		if (mem)
			fflush(mem);
		log_err("SIGHUP: configuration not reloaded: %s", errs ? errs : "out of memory");
	} else {
		log_info("SIGHUP: %s", r < 0 ? "log NOT reopened" : "log reopened");
	}
	if (mem)
		fclose(mem);
	free(errs);
	config_free(&fresh);
	sd_notify_msg("READY=1");
}

/* ==== Privileges ==== */

/*
 * What keeps the current process from taking the configured identity, or
 * NULL: `check` asks too, so that it finds what `start` would refuse.
 */
static const char *identity_problem(const struct feed_config *cfg, char *buf, size_t size)
{
	struct passwd *pw;

	if (geteuid() != 0) {
		pw = cfg->user[0] ? getpwnam(cfg->user) : NULL;
		if (cfg->user[0] && (!pw || pw->pw_uid != geteuid())) {
			snprintf(buf, size, "cannot switch to user \"%s\": not running as root (running as uid %d); start feed as root or remove [daemon] user",
				 cfg->user, (int)geteuid());
			return buf;
		}
		return NULL;
	}
	if (!cfg->user[0])
		return "refusing to run as root: set [daemon] user in the configuration (e.g. user = feed) or pass --user NAME";
	pw = getpwnam(cfg->user);
	if (pw && pw->pw_uid == 0) {
		snprintf(buf, size, "[daemon] user \"%s\" is root: choose an unprivileged user", cfg->user);
		return buf;
	}
	return NULL;
}

int daemon_check_identity(const struct feed_config *cfg)
{
	char buf[512];
	const char *why = identity_problem(cfg, buf, sizeof(buf));

	if (why)
		fprintf(stderr, "feed: %s\n", why);
	return why ? EXIT_CONFIG : EXIT_OK;
}

static int resolve_user(struct ctx *c)
{
	const struct feed_config *cfg = c->cfg;
	struct passwd *pw;
	char buf[512];
	const char *why = identity_problem(cfg, buf, sizeof(buf));

	if (why) {
		fail_config(c, "%s", why);
		return -EPERM;
	}
	if (geteuid() != 0)
		return 0;
	errno = 0;
	pw = getpwnam(cfg->user);
	if (!pw) {
		fail_config(c, "[daemon] user: no such user \"%s\"%s%s", cfg->user, errno ? ": " : "", errno ? strerror(errno) : "");
		return -ENOENT;
	}
	c->uid = pw->pw_uid;
	c->gid = pw->pw_gid;
	if (cfg->group[0]) {
		struct group *gr = getgrnam(cfg->group);
		if (!gr) {
			fail_config(c, "[daemon] group: no such group \"%s\"", cfg->group);
			return -ENOENT;
		}
		c->gid = gr->gr_gid;
	}
	/*
	 * Libraries look in $HOME for the user's files: with TLS on, libpq
	 * opens ~/.postgresql/postgresql.crt and fails every connect when it
	 * cannot even look (EACCES under root's HOME once feed runs as the
	 * user). HOME becomes the user's, as su sets it; no thread exists yet.
	 */
	if (setenv("HOME", pw->pw_dir && pw->pw_dir[0] ? pw->pw_dir : "/", 1) < 0) {
		int r = -errno;

		fail(c, "[daemon] user \"%s\": cannot set HOME: %s", cfg->user, strerror(-r));
		return r;
	}
	c->drop = true;
	return 0;
}

/*
 * Before any thread exists (threads inherit both, and both are per thread):
 * no exec can ever grant privileges again (no_new_privs), and, when root
 * drops to the user, the capability bounding set is emptied, which needs
 * CAP_SETPCAP and so must come before setuid. The loop asks the kernel
 * where the set ends (PR_CAPBSET_READ fails with EINVAL past the last
 * capability) rather than trusting the headers or /proc.
 */
static int restrict_privileges(struct ctx *c)
{
	int r;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
		r = -errno;
		fail(c, "prctl(PR_SET_NO_NEW_PRIVS): %s", strerror(-r));
		return r;
	}
	if (!c->drop)
		return 0;
	for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++) {
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
			r = -errno;
			fail(c, "cannot drop capability %d from the bounding set: %s", cap, strerror(-r));
			return r;
		}
	}
	return 0;
}

static bool bounding_set_empty(void)
{
	int cap, r = 0;

	for (cap = 0; (r = prctl(PR_CAPBSET_READ, cap, 0, 0, 0)) == 0; cap++)
		;
	return r < 0 && errno == EINVAL && cap > 0;
}

/* initgroups -> setgid -> setuid, each checked; then prove root is gone. */
static int drop_privileges(struct ctx *c)
{
	const char *user = c->cfg->user;

	if (!c->drop)
		return 0;
	if (initgroups(user, c->gid) < 0) {
		fail(c, "initgroups(%s): %s", user, strerror(errno));
		return -errno;
	}
	if (setgid(c->gid) < 0) {
		fail(c, "setgid(%d): %s", (int)c->gid, strerror(errno));
		return -errno;
	}
	if (setuid(c->uid) < 0) {
		fail(c, "setuid(%d): %s", (int)c->uid, strerror(errno));
		return -errno;
	}
	if (setuid(0) != -1 || seteuid(0) != -1 || setgid(0) != -1 || getuid() != c->uid ||
	    geteuid() != c->uid || getgid() != c->gid || getegid() != c->gid ||
	    prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1 || !bounding_set_empty()) {
		fail(c, "privileges were not dropped completely (root could be regained); refusing to run");
		return -EPERM;
	}
	log_debug("running as user %s (uid %d, gid %d)", user, (int)c->uid, (int)c->gid);
	return 0;
}

/* ==== Files made for the run-as user (pidfile, log, ipc sockets) ==== */

/* The owner that a file feed did not just create must have: the run-as user. */
static uid_t file_owner(const struct ctx *c)
{
	return c->drop ? c->uid : geteuid();
}

/* Splits path into a malloc'ed directory and a pointer to its last name. */
static int split_path(const char *path, char **ret_dir, const char **ret_name)
{
	const char *slash = strrchr(path, '/');
	char *dir;

	if (!slash || !slash[1])
		return -EINVAL;
	dir = slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
	if (!dir)
		return -ENOMEM;
	*ret_dir = dir;
	*ret_name = slash + 1;
	return 0;
}

/*
 * Opens directory dir (just created by feed: then not through a symlink)
 * and checks that nobody but root and the run-as user can replace the
 * files in it: owned by one of them, and not writable by group or others,
 * unless sticky (there, others cannot rename or remove what feed creates).
 */
static int open_dir_checked(struct ctx *c, const char *what, const char *dir, bool created,
			    int *ret_fd)
{
	struct stat st;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (created ? O_NOFOLLOW : 0));

	if (fd < 0) {
		int r = -errno;
		fail(c, "%s: cannot open directory %s: %s", what, dir, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		int r = -errno;
		fail(c, "%s: cannot stat directory %s: %s", what, dir, strerror(-r));
		close(fd);
		return r;
	}
	if (st.st_uid != 0 && st.st_uid != geteuid() && st.st_uid != file_owner(c)) {
		fail(c, "%s: directory %s belongs to uid %d, who could replace the files feed makes there; use a directory owned by root or by the user feed runs as",
		     what, dir, (int)st.st_uid);
		close(fd);
		return -EPERM;
	}
	if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
		fail(c, "%s: directory %s is writable by other users (mode %04o, not sticky): they could replace the files feed makes there with symlinks; remove their write access (chmod go-w %s)",
		     what, dir, (unsigned)(st.st_mode & 07777), dir);
		close(fd);
		return -EPERM;
	}
	*ret_fd = fd;
	return 0;
}

/*
 * Opens name in the checked directory dirfd, creating it if missing, never
 * through a symlink, and checks that it is a plain file with no other name,
 * and, unless it was just created, that it already belongs to the run-as
 * user: root never takes over a file of someone else's. O_NONBLOCK: a FIFO
 * put there must not hang start-up (no effect on the regular file).
 */
static int open_file_checked(struct ctx *c, const char *what, const char *path, int dirfd,
			     const char *name, int flags, mode_t mode, int *ret_fd, bool *ret_created)
{
	const int base = flags | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
	struct stat st;
	bool created = false;
	int fd = -1, r = 0;

	for (int tries = 0; fd < 0 && tries < 8; tries++) {
		fd = openat(dirfd, name, base | O_CREAT | O_EXCL, mode);
		created = fd >= 0;
		if (fd < 0 && errno == EEXIST)
			fd = openat(dirfd, name, base, mode);
		if (fd < 0 && errno != ENOENT)
			break; /* ENOENT: removed between the two opens, try again */
	}
	if (fd < 0) {
		r = -errno;
		if (r == -ELOOP)
			fail(c, "%s: %s is a symbolic link: not following it (whoever can write its directory could point it at any file)",
			     what, path);
		else
			fail(c, "%s: cannot open %s: %s", what, path, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		fail(c, "%s: cannot stat %s: %s", what, path, strerror(-r));
	} else if (!S_ISREG(st.st_mode)) {
		r = -EPERM;
		fail(c, "%s: %s is not a regular file", what, path);
	} else if (st.st_nlink != 1) {
		r = -EPERM;
		fail(c, "%s: %s has %ld other hard links: not writing to it", what, path,
		     (long)st.st_nlink - 1);
	} else if (!created && st.st_uid != file_owner(c)) {
		r = -EPERM;
		fail(c, "%s: %s exists and belongs to uid %d, not to the user feed runs as (uid %d): not taking it over; remove it or give it to that user",
		     what, path, (int)st.st_uid, (int)file_owner(c));
	} else if (created && c->drop && fchown(fd, c->uid, c->gid) < 0) {
		r = -errno;
		fail(c, "%s: cannot give %s to user %s: %s", what, path, c->cfg->user, strerror(-r));
	}
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	*ret_created = created;
	return 0;
}

/* Creates the pidfile's directory if missing (owned by the run-as user) and opens it, checked. */
static int open_pidfile_dir(struct ctx *c)
{
	const char *what = "[daemon] pidfile";
	bool created;
	struct stat st;
	int r = split_path(c->cfg->pidfile, &c->pidfile_dir, &c->pidfile_name);

	if (r < 0) {
		fail(c, "%s: %s: %s", what, c->cfg->pidfile, r == -EINVAL ? "not a file path" : strerror(-r));
		return r;
	}
	c->status_name = strrchr(c->status_path, '/') + 1;
	created = mkdir(c->pidfile_dir, 0755) == 0;
	if (!created && errno != EEXIST) {
		r = -errno;
		fail(c, "%s: cannot create directory %s: %s", what, c->pidfile_dir, strerror(-r));
		return r;
	}
	r = open_dir_checked(c, what, c->pidfile_dir, created, &c->pid_dirfd);
	if (r < 0)
		return r;
	/* what was just made is root's; anything else already has its owner */
	if (created && c->drop && fstat(c->pid_dirfd, &st) == 0 && st.st_uid == geteuid() &&
	    fchown(c->pid_dirfd, c->uid, c->gid) < 0) {
		r = -errno;
		fail(c, "%s: cannot give %s to user %s: %s", what, c->pidfile_dir, c->cfg->user, strerror(-r));
		return r;
	}
	return 0;
}

/* Reads the pid a pidfile names (0 if none). */
static pid_t read_pid(int fd)
{
	char buf[32];
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	buf[n > 0 ? n : 0] = '\0';
	return (pid_t)strtol(buf, NULL, 10);
}

/* Does process pid have the file st open? (proof that it is the lock holder) */
static int holds_file(pid_t pid, const struct stat *st)
{
	char dir[64];
	DIR *d;
	struct dirent *e;
	int found = 0;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		struct stat fst;
		if (fstatat(dirfd(d), e->d_name, &fst, 0) == 0 && fst.st_dev == st->st_dev &&
		    fst.st_ino == st->st_ino) {
			found = 1;
			break;
		}
	}
	closedir(d);
	return found;
}

/*
 * Takes the pidfile's lock (held until exit) and empties the file. After
 * locking, the name must still lead to the locked file: an instance that
 * was stopping, or a `stop` cleaning up after SIGKILL, removes the name
 * while holding the lock, and a lock on a removed file protects nothing.
 */
static int lock_pidfile(struct ctx *c)
{
	const char *what = "[daemon] pidfile", *path = c->cfg->pidfile;

	for (int tries = 0; tries < 8; tries++) {
		struct stat held, named;
		bool created;
		int fd = -1, r = open_file_checked(c, what, path, c->pid_dirfd, c->pidfile_name, O_RDWR, 0644,
					      &fd, &created);
		if (r < 0)
			return r;
		if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
			r = -errno;
			pid_t other = read_pid(fd);
			/* the holder may also be a `stop` removing the file of a killed daemon */
			int h = other > 0 && fstat(fd, &held) == 0 ? holds_file(other, &held) : 0;
			if (r != -EWOULDBLOCK)
				fail(c, "%s: cannot lock %s: %s", what, path, strerror(-r));
			else if (h > 0 || (h < 0 && h != -ENOENT && (kill(other, 0) == 0 || errno == EPERM)))
				fail(c, "already running (pid %d)", (int)other);
			else
				fail(c, "%s: %s is locked by another process (a `feed stop` removing it?); try again",
				     what, path);
			close(fd);
			return r;
		}
		if (fstat(fd, &held) == 0 &&
		    fstatat(c->pid_dirfd, c->pidfile_name, &named, AT_SYMLINK_NOFOLLOW) == 0 &&
		    held.st_dev == named.st_dev && held.st_ino == named.st_ino) {
			if (ftruncate(fd, 0) < 0) {
				r = -errno;
				fail(c, "%s: cannot truncate %s: %s", what, path, strerror(errno));
				close(fd);
				return r;
			}
			c->pid_fd = fd;
			return 0;
		}
		close(fd); /* removed or replaced while we locked: lock the new one */
	}
	fail(c, "%s: %s keeps being replaced; is another feed starting and stopping?", what, path);
	return -EAGAIN;
}

static int write_pidfile(struct ctx *c)
{
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());

	if (pwrite(c->pid_fd, buf, (size_t)n, 0) != n) {
		fail(c, "cannot write pidfile %s: %s", c->cfg->pidfile, errno ? strerror(errno) : "short write");
		return -EIO;
	}
	return 0;
}

/* Removes the pidfile (and status file) if its name still leads to ours; unlocks it last. */
static void remove_pidfile(struct ctx *c, bool keep_status)
{
	struct stat held, named;

	if (c->pid_fd < 0)
		return;
	if (!keep_status)
		unlinkat(c->pid_dirfd, c->status_name, 0);
	if (fstat(c->pid_fd, &held) == 0 &&
	    fstatat(c->pid_dirfd, c->pidfile_name, &named, AT_SYMLINK_NOFOLLOW) == 0 &&
	    held.st_dev == named.st_dev && held.st_ino == named.st_ino &&
	    unlinkat(c->pid_dirfd, c->pidfile_name, 0) < 0)
		log_warn("cannot remove pidfile %s: %s", c->cfg->pidfile, strerror(errno));
	close(c->pid_fd);
	c->pid_fd = -1;
}

static int open_log(struct ctx *c, bool background)
{
	const char *what = "[daemon] log", *dest = c->cfg->log, *name;
	char *dir = NULL;
	bool created;
	int dirfd = -1, fd = -1, r;

	bool detached_stderr = background && strcmp(dest, "stderr") == 0;

	log_set_format((enum log_format)c->cfg->log_format);
	if (strcmp(dest, "auto") == 0 || detached_stderr)
		dest = background ? "syslog" : "stderr";
	if (dest[0] != '/') {
		r = log_open(dest, (enum log_level)c->cfg->log_level);
		if (r < 0)
			fail(c, "%s: cannot open %s: %s", what, dest, strerror(-r));
		else if (detached_stderr)   /* stderr is /dev/null once detached: say where the lines go */
			log_warn("%s = stderr, but `start` detaches from the terminal: logging to syslog instead (use `run` to log to stderr, or log = /path)",
				 what);
		return r;
	}
	/* a file: its owner must be the run-as user, so it can be reopened on SIGHUP */
	r = split_path(dest, &dir, &name);
	if (r < 0) {
		fail(c, "%s: %s: %s", what, dest, r == -EINVAL ? "not a file path" : strerror(-r));
		return r;
	}
	r = open_dir_checked(c, what, dir, false, &dirfd);
	if (r == 0)
		r = open_file_checked(c, what, dest, dirfd, name, O_WRONLY | O_APPEND, 0640, &fd, &created);
	if (r == 0)
		r = log_open_fd(fd, dest, (enum log_level)c->cfg->log_level);
	if (dirfd >= 0)
		close(dirfd);
	free(dir);
	return r;
}

/*
 * ipc:// sockets are files that bind creates, as root if started as root,
 * with mode 0770 (the umask around the bind): give them to the run-as user
 * and group, so that the group's members can connect. The run-as user may
 * own the socket's directory and replace the socket after bind: the owner
 * is changed only through a descriptor of the very socket that bind made
 * (a socket of ours, with one name), never through a symlink.
 */
static int prepare_ipc_endpoints(struct ctx *c)
{
	char list[sizeof(c->endpoints)], *save = NULL;

	snprintf(list, sizeof(list), "%s", c->endpoints);
	for (char *ep = strtok_r(list, ",", &save); ep; ep = strtok_r(NULL, ",", &save)) {
		if (strncmp(ep, "ipc://", 6) != 0 || ep[6] == '@')
			continue; /* tcp, or an abstract socket: no file */
		const char *path = ep + 6;
		struct stat st;
		int fd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC), r = 0;

		if (fd < 0 || fstat(fd, &st) < 0) {
			r = -errno;
			fail(c, "[listen] endpoint %s: cannot open %s: %s", ep, path, strerror(-r));
		} else if (S_ISLNK(st.st_mode)) {
			fail(c, "[listen] endpoint %s: %s was replaced by a symbolic link after bind: not following it",
			     ep, path);
			r = -ELOOP;
		} else if (!S_ISSOCK(st.st_mode) || st.st_uid != geteuid() || st.st_nlink != 1) {
			fail(c, "[listen] endpoint %s: %s is no longer the socket feed bound (replaced after bind?)",
			     ep, path);
			r = -EPERM;
		} else if (c->drop && fchownat(fd, "", c->uid, c->gid, AT_EMPTY_PATH) < 0) {
			r = -errno;
			fail(c, "[listen] endpoint %s: cannot give %s to user %s: %s", ep, path,
			     c->cfg->user, strerror(-r));
		}
		if (fd >= 0)
			close(fd);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ==== Serving ==== */

static int serve(struct ctx *c, bool background)
{
	const struct feed_config *cfg = c->cfg;
	struct server *srv = NULL;
	struct store_params sp = { .url = cfg->url, .durability = cfg->durability,
				   .connect_timeout = cfg->connect_timeout };
	char *password = NULL;
	char err[1024] = "";
	sigset_t mask;
	int sigfd = -1, rc = EXIT_FAIL, r, unanswered = 0;
	mode_t umask_saved;
	FILE *mem;
	char *errs = NULL;
	size_t errs_len = 0;

	c->started = time(NULL);
	c->watchdog_ms = watchdog_ms_from_env();
	umask((mode_t)cfg->umask);
	/*
	 * Requests are allocated and freed at a high rate: keep the heap's top
	 * instead of growing and trimming it for every burst (memory stays
	 * bounded by the queue limits).
	 */
	mallopt(M_TOP_PAD, 16 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
	store_url_redact(cfg->url, c->url, sizeof(c->url));
	status_path_for(cfg, c->status_path, sizeof(c->status_path));
	if (resolve_user(c) < 0 || restrict_privileges(c) < 0 || open_log(c, background) < 0 ||
	    open_pidfile_dir(c) < 0 || lock_pidfile(c) < 0)
		goto out;

	/* Signals go to the loop through a signalfd; blocked before any thread exists. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigfd < 0) {
		fail(c, "signalfd: %s", strerror(errno));
		goto out;
	}

	/* Secrets are read before dropping privileges (the file may be root's). */
	mem = open_memstream(&errs, &errs_len);
	if (!mem || config_read_password(cfg, &password, mem) < 0) {
		if (mem)
			fclose(mem);
		fail(c, "%s", errs ? errs : "out of memory");
		goto out;
	}
	fclose(mem);
	sp.password = password;

	/* ipc:// sockets get mode 0770 from bind itself: no chmod through a path afterwards */
	umask_saved = umask(0007);
	r = server_bind(cfg, &srv, err, sizeof(err));
	umask(umask_saved);
	if (r < 0) {
		fail(c, "%s", err);
		goto out;
	}
	snprintf(c->endpoints, sizeof(c->endpoints), "%s", server_endpoints(srv));
	if (prepare_ipc_endpoints(c) < 0)
		goto out;
	if (drop_privileges(c) < 0)
		goto out;
	if (faccessat(c->pid_dirfd, ".", W_OK | X_OK, 0) < 0) {
		fail(c, "[daemon] pidfile: directory %s is not writable by user %s, so the pidfile could not be removed at exit; use a directory that user owns (e.g. /run/feed)",
		     c->pidfile_dir, cfg->user[0] ? cfg->user : "(current)");
		goto out;
	}
	if (server_check_auth(srv, err, sizeof(err)) < 0) {
		fail_config(c, "%s", err);   /* as `check` reports it */
		goto out;
	}
	if (server_open_db(srv, &sp, err, sizeof(err)) < 0) {
		fail(c, "database %s: %s", c->url, err);
		goto out;
	}
	if (server_start_metrics(srv, err, sizeof(err)) < 0) {
		fail(c, "%s", err);
		goto out;
	}
	if (write_pidfile(c) < 0)
		goto out;

	log_info("feed %s serving %s, database %s, pid %d", FEED_VERSION, c->endpoints, c->url, (int)getpid());
	/* ps shows what runs and which configuration, not the command that started it */
	setproctitle("serving %s (-c %s)", c->endpoints, c->cfgpath ? c->cfgpath : "-");
	if (c->notify_fd >= 0) {
		dprintf(c->notify_fd, "READY %d\n", (int)getpid());
		close(c->notify_fd);
		c->notify_fd = -1;
	}
	{
		char msg[128];
		snprintf(msg, sizeof(msg), "READY=1\nMAINPID=%d", (int)getpid());
		sd_notify_msg(msg);
	}

	struct server_hooks hooks = { .arg = c, .reload = on_reload, .state = on_state };
	int lr = server_loop(srv, sigfd, &hooks);
	rc = lr < 0 ? EXIT_FAIL : EXIT_OK;
	unanswered = lr > 0 ? lr : 0;
	sd_notify_msg("STOPPING=1");
out:
	server_free(&srv);
	if (password) {
		explicit_bzero(password, strlen(password));
		free(password);
	}
	free(errs);
	if (sigfd >= 0)
		close(sigfd);
	/* the status file stays when it tells `stop` how many requests were left unanswered */
	remove_pidfile(c, unanswered > 0 && write_unanswered(c, unanswered) == 0);
	if (c->pid_dirfd >= 0)
		close(c->pid_dirfd);
	if (rc == EXIT_OK)
		log_info("stopped");
	if (c->config_error)
		rc = EXIT_CONFIG;
	free(c->pidfile_dir);
	if (c->notify_fd >= 0)
		close(c->notify_fd); /* EOF tells `start` that start-up failed */
	log_close();
	return rc;
}

/* Closes inherited descriptors and resets signal dispositions and mask. */
static void sanitize(void)
{
	struct sigaction sa = { .sa_handler = SIG_DFL };
	sigset_t none;

	closefrom(3);
	for (int sig = 1; sig < NSIG; sig++)
		if (sig != SIGKILL && sig != SIGSTOP)
			sigaction(sig, &sa, NULL); /* EINVAL for the RT signals libc keeps: fine */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

/* The original process of `start`: waits for READY or ERROR from the daemon. */
static int wait_ready(int fd, pid_t child, int timeout_s)
{
	char buf[2048];
	size_t len = 0;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	time_t deadline = time(NULL) + timeout_s;
	int status;

	for (;;) {
		int left = (int)(deadline - time(NULL));
		if (left <= 0) {
			fprintf(stderr, "feed: the daemon did not report readiness within %d s\n", timeout_s);
			close(fd);
			return EXIT_FAIL;
		}
		int r = poll(&pfd, 1, left * 1000);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 || (len += (size_t)n) >= sizeof(buf) - 1 || memchr(buf, '\n', len))
			break;
	}
	/* a failure: wait (bounded) for the daemon to finish cleaning up, i.e. EOF */
	if (len > 0 && strncmp(buf, "READY ", 6) != 0) {
		char drain[256];
		for (;;) {
			int left = (int)(deadline - time(NULL));
			if (left <= 0 || poll(&pfd, 1, left * 1000) <= 0)
				break;
			ssize_t n = read(fd, drain, sizeof(drain));
			if (n == 0 || (n < 0 && errno != EINTR))
				break;
		}
	}
	close(fd);
	waitpid(child, &status, 0); /* the intermediate child exits at once */
	buf[len] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (strncmp(buf, "READY ", 6) == 0) {
		printf("feed started (pid %s)\n", buf + 6);
		return EXIT_OK;
	}
	if (strncmp(buf, "CONFIG ", 7) == 0) {
		fprintf(stderr, "feed: %s\n", buf + 7);
		return EXIT_CONFIG;
	}
	if (strncmp(buf, "ERROR ", 6) == 0)
		fprintf(stderr, "feed: %s\n", buf + 6);
	else
		fprintf(stderr, "feed: the daemon exited during start-up without saying why; see its log\n");
	return EXIT_FAIL;
}

int daemon_serve(const struct feed_config *cfg, const char *cfgpath, bool keep_log_level,
		 bool background)
{
	struct ctx c = { .cfg = cfg, .cfgpath = cfgpath, .keep_log_level = keep_log_level,
			 .notify_fd = -1, .pid_dirfd = -1, .pid_fd = -1 };
	int pfd[2];
	pid_t pid;

	if (!background)
		return serve(&c, false);

	fflush(NULL);
	sanitize();
	if (pipe2(pfd, O_CLOEXEC) < 0) {
		fprintf(stderr, "feed: pipe: %s\n", strerror(errno));
		return EXIT_FAIL;
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "feed: fork: %s\n", strerror(errno));
		return EXIT_FAIL;
	}
	if (pid > 0) {
		close(pfd[1]);
		return wait_ready(pfd[0], pid, 60 + 3 * cfg->connect_timeout);
	}
	close(pfd[0]);
	if (setsid() < 0)
		_exit(EXIT_FAIL);
	pid = fork();
	if (pid < 0) {
		dprintf(pfd[1], "ERROR fork: %s\n", strerror(errno));
		_exit(EXIT_FAIL);
	}
	if (pid > 0)
		_exit(EXIT_OK);
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) {
		dprintf(pfd[1], "ERROR cannot redirect stdio to /dev/null: %s\n", strerror(errno));
		_exit(EXIT_FAIL);
	}
	if (null > 2)
		close(null);
	if (chdir("/") < 0) {
		dprintf(pfd[1], "ERROR chdir /: %s\n", strerror(errno));
		_exit(EXIT_FAIL);
	}
	c.notify_fd = pfd[1];
	_exit(serve(&c, true));
}

/* ==== stop, reload and status ==== */

/* How long `reload` waits for the daemon to reopen its log file. */
#define RELOAD_WAIT_MS 5000

/*
 * Opens a file of feed's for reading, as `stop` and `status` do (maybe as
 * root): never through a symlink, never a FIFO or device (no hang, no side
 * effect). Returns the descriptor or -errno.
 */
static int open_own_file(int dirfd, const char *path)
{
	struct stat st;
	int fd = openat(dirfd, path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int r = S_ISREG(st.st_mode) ? -errno : -EINVAL;
		close(fd);
		return r;
	}
	return fd;
}

/* Opens the pidfile; *ret_held tells whether a live daemon holds its lock. */
static int probe_pidfile(const char *path, bool *ret_held, pid_t *ret_pid, struct stat *ret_st)
{
	int fd = open_own_file(AT_FDCWD, path);

	if (fd < 0)
		return fd;
	if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
		*ret_held = false;
		flock(fd, LOCK_UN);
	} else if (errno == EWOULDBLOCK) {
		*ret_held = true;
	} else {
		int r = -errno;
		close(fd);
		return r;
	}
	*ret_pid = read_pid(fd);
	fstat(fd, ret_st);
	close(fd);
	return 0;
}

/* Waits up to ms for the process behind pidfd to exit (the pidfd becomes readable). */
static bool wait_exit(int pidfd, int ms)
{
	struct pollfd p = { .fd = pidfd, .events = POLLIN };
	int r;

	do
		r = poll(&p, 1, ms);
	while (r < 0 && errno == EINTR);
	return r > 0;
}

/*
 * After a SIGKILL: the killed daemon's pidfile and status file are stale;
 * removes them, unless a new instance took the pidfile meanwhile. The
 * decision and the removal are made holding the pidfile's lock, so no
 * instance can take it in between (one that opened the file just before
 * finds, once it has the lock, that the name no longer leads to it, and
 * takes a fresh file). The daemon removes its own files when it exits;
 * this is only for the one that could not.
 */
static void remove_stale_pidfile(const struct feed_config *cfg, pid_t killed)
{
	char *dir = NULL, sp[PATH_MAX];
	const char *name;
	struct stat locked, named;
	int dirfd = -1, fd = -1;

	status_path_for(cfg, sp, sizeof(sp));
	if (split_path(cfg->pidfile, &dir, &name) < 0)
		return;
	dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	fd = dirfd < 0 ? -1 : open_own_file(dirfd, name);
	if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0 && read_pid(fd) == killed &&
	    fstat(fd, &locked) == 0 && fstatat(dirfd, name, &named, AT_SYMLINK_NOFOLLOW) == 0 &&
	    locked.st_dev == named.st_dev && locked.st_ino == named.st_ino) {
		unlinkat(dirfd, strrchr(sp, '/') + 1, 0);
		unlinkat(dirfd, name, 0);
	}
	if (fd >= 0)
		close(fd); /* unlocks, after the removal */
	if (dirfd >= 0)
		close(dirfd);
	free(dir);
}

/* The count an exited daemon left in its status file (0 if none); removes the file. */
static int take_unanswered(const struct feed_config *cfg)
{
	char path[PATH_MAX], line[2048];
	int n = 0, fd;
	FILE *f;

	status_path_for(cfg, path, sizeof(path));
	fd = open_own_file(AT_FDCWD, path);
	f = fd >= 0 ? fdopen(fd, "r") : NULL;
	if (!f) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "unanswered=", 11) == 0)
			n = atoi(line + 11);
	fclose(f);
	if (n > 0)
		unlink(path);
	return n;
}

/*
 * Finds the running daemon through its pidfile and pins it: a pidfd of the
 * process proven to hold the pidfile. Every signal sent through the pidfd
 * goes to this very process, even if it exits and its pid is reused
 * meanwhile. Returns 0 (pinned), 1 (not running; said so on stdout), or
 * -errno (said why on stderr).
 */
static int pin_daemon(const struct feed_config *cfg, pid_t *ret_pid, int *ret_pidfd,
		      struct stat *ret_st)
{
	bool held = false;
	pid_t pid = 0;
	int r = probe_pidfile(cfg->pidfile, &held, &pid, ret_st);

	if (r == -ENOENT) {
		printf("feed is not running (no pidfile %s)\n", cfg->pidfile);
		return 1;
	}
	if (r < 0) {
		fprintf(stderr, "feed: cannot read pidfile %s: %s\n", cfg->pidfile, strerror(-r));
		return r;
	}
	if (!held) {
		printf("feed is not running (stale pidfile %s names pid %d, which was not signalled)\n",
		       cfg->pidfile, (int)pid);
		return 1;
	}
	/* pin the process first, then prove it holds the pidfile */
	int pfd = pid > 0 ? pidfd_open(pid, 0) : -1;
	r = pfd >= 0 ? holds_file(pid, ret_st) : 0;
	if (r <= 0) {
		fprintf(stderr, "feed: pidfile %s is locked but pid %d %s; not signalling it\n", cfg->pidfile,
			(int)pid, r == 0 ? "does not hold it" : "cannot be checked (permission?)");
		if (pfd >= 0)
			close(pfd);
		return -ESRCH;
	}
	*ret_pid = pid;
	*ret_pidfd = pfd;
	return 0;
}

int daemon_stop(const struct feed_config *cfg, int timeout)
{
	struct stat st;
	pid_t pid;
	int pfd, r = pin_daemon(cfg, &pid, &pfd, &st);

	if (r != 0)
		return r > 0 ? EXIT_OK : EXIT_FAIL;
	if (pidfd_send_signal(pfd, SIGTERM, NULL, 0) < 0) {
		fprintf(stderr, "feed: cannot signal pid %d: %s\n", (int)pid, strerror(errno));
		close(pfd);
		return EXIT_FAIL;
	}
	if (wait_exit(pfd, timeout * 1000)) {
		int left = take_unanswered(cfg);

		close(pfd);
		if (left > 0) {
			fprintf(stderr, "feed: stopped (pid %d), but %d requests were left unanswered at shutdown_timeout; their senders will re-send them\n",
				(int)pid, left);
			return EXIT_FAIL;
		}
		printf("feed stopped (pid %d)\n", (int)pid);
		return EXIT_OK;
	}
	fprintf(stderr, "feed: pid %d did not stop within %d s; sending SIGKILL (unanswered records will be re-sent by their senders)\n",
		(int)pid, timeout);
	pidfd_send_signal(pfd, SIGKILL, NULL, 0);
	wait_exit(pfd, 5000);
	close(pfd);
	remove_stale_pidfile(cfg, pid);
	return EXIT_FAIL;
}

/*
 * Is the daemon writing to the file its log path names now? After a
 * rotation that is the proof that it reopened the log. Returns 1, 0, or
 * -errno.
 */
static int writes_log(const struct feed_config *cfg, pid_t pid)
{
	struct stat st;

	if (lstat(cfg->log, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	return S_ISREG(st.st_mode) ? holds_file(pid, &st) : 0;
}

int daemon_reload(const struct feed_config *cfg)
{
	struct stat st;
	pid_t pid;
	int pfd, r = pin_daemon(cfg, &pid, &pfd, &st);

	if (r != 0)
		return EXIT_FAIL; /* not running is a failure here: nothing was reloaded */
	if (pidfd_send_signal(pfd, SIGHUP, NULL, 0) < 0) {
		fprintf(stderr, "feed: cannot signal pid %d: %s\n", (int)pid, strerror(errno));
		close(pfd);
		return EXIT_FAIL;
	}
	if (cfg->log[0] != '/') {
		close(pfd);
		printf("feed reloaded (pid %d)\n", (int)pid);
		return EXIT_OK;
	}
	/* logrotate compresses the old file next: return only once nothing is written to it */
	for (int ms = 0; ms < RELOAD_WAIT_MS; ms += 20) {
		if (wait_exit(pfd, 20)) {
			fprintf(stderr, "feed: pid %d exited after SIGHUP; see its log %s\n", (int)pid, cfg->log);
			close(pfd);
			return EXIT_FAIL;
		}
		r = writes_log(cfg, pid);
		if (r != 0)
			break;
	}
	close(pfd);
	if (r <= 0) {
		fprintf(stderr, "feed: pid %d did not reopen its log %s within %d s%s%s; it still writes to the old file\n",
			(int)pid, cfg->log, RELOAD_WAIT_MS / 1000, r < 0 ? ": " : "", r < 0 ? strerror(-r) : "");
		return EXIT_FAIL;
	}
	printf("feed reloaded (pid %d), log %s reopened\n", (int)pid, cfg->log);
	return EXIT_OK;
}

/* "3d 04:05:06" or "04:05:06" */
static void format_duration(long long secs, char *buf, size_t size)
{
	if (secs < 0)
		secs = 0;
	if (secs >= 86400)
		snprintf(buf, size, "%lldd %02lld:%02lld:%02lld", secs / 86400, secs % 86400 / 3600,
			 secs % 3600 / 60, secs % 60);
	else
		snprintf(buf, size, "%02lld:%02lld:%02lld", secs / 3600, secs % 3600 / 60, secs % 60);
}

static void format_time(long long t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!localtime_r(&tt, &tm) || !strftime(buf, size, "%Y-%m-%d %H:%M:%S %Z", &tm))
		snprintf(buf, size, "%lld", t);
}

/* The status file's key=value lines, as written by write_status(). */
struct status_file {
	long long started, written, db_since;
	int db_up;                    /* -1: not in the file (an older feed) */
	char endpoint[1024], database[512], state[1300], db_error[512];
	unsigned long long committed, duplicate, rejected, queue_records, queue_bytes, unsettled, busy_ms;
	double committed_rate, rejected_rate, commit_ms;
};

static void parse_status_line(struct status_file *sf, const char *line)
{
	const char *eq = strchr(line, '=');
	const char *v = eq ? eq + 1 : "";
	size_t k = eq ? (size_t)(eq - line) : 0;

#define KEY(name) (k == sizeof(name) - 1 && strncmp(line, name, k) == 0)
	if (KEY("started"))
		sf->started = strtoll(v, NULL, 10);
	else if (KEY("written"))
		sf->written = strtoll(v, NULL, 10);
	else if (KEY("endpoint"))
		snprintf(sf->endpoint, sizeof(sf->endpoint), "%s", v);
	else if (KEY("database"))
		snprintf(sf->database, sizeof(sf->database), "%s", v);
	else if (KEY("state"))
		snprintf(sf->state, sizeof(sf->state), "%s", v);
	else if (KEY("db_up"))
		sf->db_up = atoi(v);
	else if (KEY("db_since"))
		sf->db_since = strtoll(v, NULL, 10);
	else if (KEY("db_error"))
		snprintf(sf->db_error, sizeof(sf->db_error), "%s", v);
	else if (KEY("committed"))
		sf->committed = strtoull(v, NULL, 10);
	else if (KEY("duplicate"))
		sf->duplicate = strtoull(v, NULL, 10);
	else if (KEY("rejected"))
		sf->rejected = strtoull(v, NULL, 10);
	else if (KEY("committed_rate"))
		sf->committed_rate = strtod(v, NULL);
	else if (KEY("rejected_rate"))
		sf->rejected_rate = strtod(v, NULL);
	else if (KEY("queue_records"))
		sf->queue_records = strtoull(v, NULL, 10);
	else if (KEY("queue_bytes"))
		sf->queue_bytes = strtoull(v, NULL, 10);
	else if (KEY("unsettled"))
		sf->unsettled = strtoull(v, NULL, 10);
	else if (KEY("commit_ms"))
		sf->commit_ms = strtod(v, NULL);
	else if (KEY("busy_ms"))
		sf->busy_ms = strtoull(v, NULL, 10);
#undef KEY
}

static void print_status(const struct status_file *sf)
{
	long long now = (long long)time(NULL);
	char dur[48], when[64];

	format_duration(now - sf->started, dur, sizeof(dur));
	printf("  uptime:    %s\n", dur);
	printf("  endpoint:  %s\n", sf->endpoint);
	if (sf->db_up < 0) {
		printf("  database:  %s\n", sf->database);
	} else {
		format_time(sf->db_since, when, sizeof(when));
		format_duration(now - sf->db_since, dur, sizeof(dur));
		if (sf->db_up)
			printf("  database:  %s up (since %s, %s)\n", sf->database, when, dur);
		else
			printf("  database:  %s DOWN since %s (for %s): %s\n", sf->database, when, dur,
			       sf->db_error);
		printf("  committed: %llu records (%.1f/s over the last minute), %llu duplicates accepted\n",
		       sf->committed, sf->committed_rate, sf->duplicate);
		printf("  rejected:  %llu requests (%.2f/s over the last minute)\n", sf->rejected, sf->rejected_rate);
		printf("  queue:     %llu records, %llu bytes in flight\n", sf->queue_records, sf->queue_bytes);
		printf("  unsettled: %llu records\n", sf->unsettled);
		if (sf->commit_ms >= 0)
			printf("  commit:    %.1f ms on average over the last minute\n", sf->commit_ms);
		else
			printf("  commit:    none in the last minute\n");
		if (sf->busy_ms >= 1000)
			printf("  stuck:     a database call has been running for %llu s\n", sf->busy_ms / 1000);
		if (sf->written && now - sf->written > 5)
			printf("  warning:   this was written %lld s ago: the daemon's main loop may be stuck\n",
			       now - sf->written);
	}
	printf("  state:     %s\n", sf->state);
}

int daemon_status(const struct feed_config *cfg)
{
	struct stat st;
	bool held = false;
	pid_t pid = 0;
	char path[PATH_MAX], line[2048];
	int r = probe_pidfile(cfg->pidfile, &held, &pid, &st);
	FILE *f;

	if (r == -ENOENT) {
		printf("feed is not running\n");
		return STATUS_NOT_RUNNING;
	}
	if (r < 0) {
		printf("feed: cannot tell: pidfile %s: %s\n", cfg->pidfile, strerror(-r));
		return STATUS_UNKNOWN;
	}
	if (!held) {
		printf("feed is not running, but pidfile %s exists (pid %d, stale)\n", cfg->pidfile, (int)pid);
		return STATUS_DEAD_PIDFILE;
	}
	printf("feed is running (pid %d)\n", (int)pid);
	status_path_for(cfg, path, sizeof(path));
	r = open_own_file(AT_FDCWD, path);
	f = r < 0 ? NULL : fdopen(r, "r");
	if (!f) {
		if (r >= 0)
			close(r);
		return STATUS_RUNNING;
	}
	struct status_file *sf = calloc(1, sizeof(*sf));
	if (sf) {
		sf->db_up = -1;
		sf->commit_ms = -1;
		while (fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\n")] = '\0';
			parse_status_line(sf, line);
		}
		print_status(sf);
		free(sf);
	}
	fclose(f);
	return STATUS_RUNNING;
}
