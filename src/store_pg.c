/*
 * store_pg.c - the PostgreSQL backend (libpq): store_pg_ops.
 *
 * Owns one PGconn per struct store and the PostgreSQL form of feed's schema.
 * Runs on whichever thread owns the store (a writer thread or the settlement
 * thread); one thread at a time per connection, as libpq requires.
 *
 * Values cross the wire as text: volumes and fees as dec_format() output
 * into NUMERIC columns (so '1.25' reads back as 1.25), arrays as text array
 * literals. The hot path insert() is one INSERT ... SELECT FROM unnest()
 * over array parameters, never a COPY (see pg_insert_unnest()), or a
 * multi-row INSERT up to PG_VALUES_MAX rows; a batch of one record with
 * nothing else in its transaction sends BEGIN, that INSERT and COMMIT in
 * one round trip, a libpq pipeline (insert_commit()). lookup()
 * and settle() are one statement each over an array parameter. No prepared
 * statements are kept, so reconnect() only re-applies the session settings.
 *
 * Replication: the URL may name several hosts (libpq tries them in order;
 * target_session_attrs=read-write picks the primary), and every reconnect
 * tries them all again, so a promoted standby is found by itself. With
 * synchronous standbys, TRUE must wait for them: a COMMIT that comes back
 * with a WARNING (its wait for synchronous replication was cancelled) is an
 * unknown outcome, and a transaction that accepts rows it only found (a
 * retry after such a COMMIT or a lost connection) makes its own commit wait
 * for replication (pg_commit).
 */
#include "store.h"
#include "store_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <libpq-fe.h>

#include "decimal.h"
#include "timeutil.h"
#include "url.h"

/* pg_advisory_xact_lock key serialising migrate() between feed processes. */
#define PG_MIGRATE_LOCK "7379646571"  /* arbitrary, constant */

#define STR_(x) #x
#define STR(x) STR_(x)

/* Rows of fee_reject per INSERT statement (PG_REJECT_PARAMS each, limit 65535). */
#define PG_REJECT_CHUNK 1000
#define PG_REJECT_PARAMS 4     /* endpoint, reason, body, source */

#define PG_VALUES_MAX 32       /* up to this many rows: INSERT ... VALUES, else unnest() */

struct store_pg {
	struct store base;            /* first: struct store * <-> struct store_pg * */
	struct store_keys keys;       /* the unique indexes on fee(ticket) */
	PGconn *conn;
	enum store_durability durability;
	bool begin_pending;           /* BEGIN not sent yet: it rides on the first statement */
	bool rotate;                  /* the next reconnect starts at the next host (pg_reset) */
	/* this transaction: what pg_commit needs to know to make it wait for the standbys */
	bool wrote;                   /* inserted or updated something */
	bool seen;                    /* lookup() found rows; seen_ticket is one of them */
	int64_t seen_ticket;
	/* a WARNING the server sent during COMMIT (pg_notice) */
	bool in_commit, commit_warned;
	char commit_warning[256];
	/* cancel(): the live session, under pg_cancel_mu */
	bool armed;                   /* fd, pid and port describe a live session */
	int fd;
	int pid, port;                /* the server backend and our local port (-1: unix socket) */
	struct sockaddr_storage srv;  /* the server's address (getpeername) */
	int orphan_pid, orphan_port;  /* a cancelled session, ended by the next reconnect */
	struct sockaddr_storage orphan_srv; /* ... if that reconnect reaches the same server */
	atomic_bool cancelled;
};

/*
 * Guards every store's cancel fields: cancel() runs on another thread while
 * the owner may be replacing its socket. Held for a few instructions only.
 */
static pthread_mutex_t pg_cancel_mu = PTHREAD_MUTEX_INITIALIZER;

static struct store_pg *pg_of(struct store *s)
{
	return (struct store_pg *)s;
}

/* ==== Errors ==== */

static void pg_setmsg(struct store_pg *p, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void pg_setmsg(struct store_pg *p, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(p->base.errmsg, sizeof(p->base.errmsg), fmt, ap);
	va_end(ap);
}

/* libpq's messages span lines ("...\n\tIs the server running"): one line. */
static void pg_flatten(char *s)
{
	char *w = s;
	bool space = false;

	for (const char *r = s; *r; r++) {
		if (*r == '\n' || *r == '\t' || *r == ' ') {
			space = true;
			continue;
		}
		if (space && w != s)
			*w++ = ' ';
		space = false;
		*w++ = *r;
	}
	*w = '\0';
}

/*
 * SQLSTATE -> store.h's classes: PostgreSQL's own codes first, then the
 * standard classes (store_sqlstate_errno). 55P03 is a lock wait that timed
 * out; unique violations (23505) are sorted by pg_unique_class().
 */
static int pg_errno_of(const char *state)
{
	static const struct {
		const char *state;
		int err;
	} codes[] = {
		{ "40P01", -EAGAIN },       /* deadlock_detected */
		{ "55P03", -EAGAIN },       /* lock_not_available */
		{ "57P01", -ENOTCONN },     /* admin_shutdown */
		{ "57P02", -ENOTCONN },     /* crash_shutdown */
		{ "57P03", -ENOTCONN },     /* cannot_connect_now */
		{ "53300", -ENOTCONN },     /* too_many_connections */
		{ "23505", -EEXIST },       /* unique_violation */
		{ "P0001", -EINVAL },       /* RAISE EXCEPTION: a trigger refuses the row */
	};

	for (size_t i = 0; state && i < sizeof(codes) / sizeof(codes[0]); i++)
		if (!strcmp(state, codes[i].state))
			return codes[i].err;
	return store_sqlstate_errno(state);
}

/*
 * A unique violation is a ticket race (-EEXIST) only on a unique index of
 * fee(ticket) alone, whatever its name (fee_pkey, fee_ticket_key, an adopted
 * table's own); any other key (a second UNIQUE column, a table a trigger
 * writes to) is the request's fault (-EINVAL). The names are read once per
 * connection (pg_load_ticket_keys, before an insert; store_keys_class).
 */
static int pg_unique_class(struct store_pg *p, const PGresult *res)
{
	const char *table = PQresultErrorField(res, PG_DIAG_TABLE_NAME);
	const char *name = PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME);

	if (!table || !name || strcmp(table, "fee") != 0)
		return -EINVAL;
	return store_keys_class(&p->keys, name, strlen(name));
}

static int pg_fail(struct store_pg *p, const PGresult *res, const char *what);

/* Reads the names of fee's ticket keys into p->keys, once (see pg_unique_class). */
static int pg_load_ticket_keys(struct store_pg *p)
{
	static const char sql[] =
		"SELECT c.relname FROM pg_index i"
		" JOIN pg_class c ON c.oid = i.indexrelid"
		" JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
		" WHERE i.indrelid = (quote_ident(current_schema()) || '.fee')::regclass"
		" AND i.indisunique AND i.indnkeyatts = 1"
		" AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'ticket'";
	PGresult *res;
	int r = 0;

	if (p->keys.known)
		return 0;
	res = PQexec(p->conn, sql);
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = pg_fail(p, res, "looking up the unique keys of fee.ticket");
		PQclear(res);
		return r;
	}
	store_keys_reset(&p->keys);
	for (int i = 0; i < PQntuples(res); i++)
		store_keys_add(&p->keys, PQgetvalue(res, i, 0));
	PQclear(res);
	store_keys_done(&p->keys);
	return 0;
}

/*
 * Fills errmsg from a failed result (res may be NULL: no result at all) and
 * returns the error class. Does not free res.
 */
static int pg_fail(struct store_pg *p, const PGresult *res, const char *what)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *sev = res ? PQresultErrorField(res, PG_DIAG_SEVERITY) : NULL;
	const char *prim = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
	int r;

	if (state && prim) {
		pg_setmsg(p, "%s failed: %s %s: %s%s%s%s", what, sev ? sev : "ERROR", state,
			  prim, detail ? " (" : "", detail ? detail : "", detail ? ")" : "");
		r = pg_errno_of(state);
		if (r == -EEXIST)
			r = pg_unique_class(p, res);
	} else if (res && PQresultStatus(res) != PGRES_FATAL_ERROR) {
		pg_setmsg(p, "%s failed: unexpected result %s", what,
			  PQresStatus(PQresultStatus(res)));
		r = -EIO;
	} else {
		/* Reported by libpq itself: the connection, most likely. */
		const char *m = res ? PQresultErrorMessage(res) : "";

		pg_setmsg(p, "%s failed: %s", what, *m ? m : PQerrorMessage(p->conn));
		r = res ? -EIO : -ENOTCONN;
	}
	if (PQstatus(p->conn) == CONNECTION_BAD)
		r = -ENOTCONN;
	pg_flatten(p->base.errmsg);
	return r;
}

/* Runs sql (no parameters, no rows wanted). */
static int pg_cmd(struct store_pg *p, const char *sql, const char *what)
{
	PGresult *res = PQexec(p->conn, sql);
	int r = 0;

	if (!res || (PQresultStatus(res) != PGRES_COMMAND_OK &&
		     PQresultStatus(res) != PGRES_TUPLES_OK))
		r = pg_fail(p, res, what);
	PQclear(res);
	return r;
}

/* Runs one statement with nvals text parameters; its result is discarded. */
static int pg_cmd_params(struct store_pg *p, const char *sql, int nvals,
			 const char *const *vals, const char *what)
{
	PGresult *res = PQexecParams(p->conn, sql, nvals, NULL, vals, NULL, NULL, 0);
	int r = 0;

	if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
		r = pg_fail(p, res, what);
	PQclear(res);
	return r;
}

/* ==== Values ==== */

static int64_t pg_get_i64(const PGresult *res, int row, int col)
{
	int64_t v = 0;

	if (PQgetisnull(res, row, col) ||
	    store_parse_i64(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col), &v) < 0)
		return 0;
	return v;
}

/* A non-negative decimal at DEC_SCALE, or -1 if NULL, negative or unreadable. */
static int64_t pg_get_dec(const PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return -1;
	return store_parse_amount(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col));
}

/* "{1,2,3}" from tickets[0..n). Caller frees. */
static char *pg_i64_array(const int64_t *v, size_t stride, size_t n)
{
	size_t cap = n * 21 + 3, len = 0;
	char *buf = malloc(cap);

	if (!buf)
		return NULL;
	buf[len++] = '{';
	for (size_t i = 0; i < n; i++) {
		const int64_t *x = (const int64_t *)((const char *)v + i * stride);

		len += (size_t)snprintf(buf + len, cap - len, i ? ",%lld" : "%lld",
					(long long)*x);
	}
	buf[len++] = '}';
	buf[len] = '\0';
	return buf;
}

/* "{1.25,3}" from decimals v[0..n) at scale, as dec_format(min_frac). Caller frees. */
static char *pg_dec_array(const int64_t *v, size_t stride, size_t n, int scale, int min_frac)
{
	char *buf = malloc(n * DEC_STRMAX + 3), d[DEC_STRMAX];
	size_t len = 0;

	if (!buf)
		return NULL;
	buf[len++] = '{';
	for (size_t i = 0; i < n; i++) {
		const int64_t *x = (const int64_t *)((const char *)v + i * stride);
		size_t dl = dec_format(*x, scale, min_frac, d);

		if (i)
			buf[len++] = ',';
		memcpy(buf + len, d, dl);
		len += dl;
	}
	buf[len++] = '}';
	buf[len] = '\0';
	return buf;
}

/* ==== Connection ==== */

/*
 * libpq prints notices on stderr by default; library code stays quiet. A
 * WARNING during COMMIT is kept: the server says the commit returned without
 * what it should have waited for ("canceling wait for synchronous
 * replication ... already committed locally, but might not have been
 * replicated"). Told by the untranslated severity, whatever lc_messages says.
 */
static void pg_notice(void *arg, const PGresult *res)
{
	struct store_pg *p = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *prim = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);

	if (!p->in_commit || p->commit_warned || !sev || strcmp(sev, "WARNING") != 0)
		return;
	p->commit_warned = true;
	snprintf(p->commit_warning, sizeof(p->commit_warning), "%s%s%s",
		 prim ? prim : "(no message)", detail ? " " : "", detail ? detail : "");
}

/*
 * Session settings, applied after every (re)connect; the last statement
 * reads back the synchronous_commit in force on this very connection.
 *
 * full never runs weaker than on, whatever the role or database default
 * (ALTER ROLE ... SET synchronous_commit = off would otherwise make TRUE
 * precede the WAL flush): off and local are raised to on, and so is
 * remote_write, which flushes locally but waits only for a synchronous
 * standby's write, not its flush. on and remote_apply (stronger) are kept.
 * normal does not wait for the disk at all.
 *
 * idle_in_transaction_session_timeout: feed never leaves a transaction
 * waiting on itself (it decides between statements in microseconds). A feed
 * process that is stopped or hung in the middle of one holds its row locks,
 * and another instance writing the same tickets waits on them for as long
 * as it lasts; the server ends such a session after 30 s, the locks go, and
 * the stopped instance finds its connection gone and retries.
 */
#define PG_SESSION_COMMON "SET TimeZone = 'UTC'; SET idle_in_transaction_session_timeout = '30s';"
static const char pg_session_full_sql[] =
	PG_SESSION_COMMON
	"SELECT set_config('synchronous_commit', 'on', false)"
	" WHERE current_setting('synchronous_commit') NOT IN ('on', 'remote_apply');"
	"SHOW synchronous_commit";
static const char pg_session_normal_sql[] =
	PG_SESSION_COMMON "SET synchronous_commit = off; SHOW synchronous_commit";

/* ==== Cancel ==== */

/* Publishes the new session's socket for cancel(). Owner thread, after connecting. */
static void pg_arm_cancel(struct store_pg *p)
{
	struct sockaddr_storage a;
	socklen_t alen = sizeof(a);
	struct sockaddr_storage srv;
	socklen_t slen = sizeof(srv);
	int port = -1;

	if (getsockname(PQsocket(p->conn), (struct sockaddr *)&a, &alen) == 0) {
		if (a.ss_family == AF_INET)
			port = ntohs(((struct sockaddr_in *)&a)->sin_port);
		else if (a.ss_family == AF_INET6)
			port = ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
	}
	memset(&srv, 0, sizeof(srv));
	if (getpeername(PQsocket(p->conn), (struct sockaddr *)&srv, &slen) < 0)
		memset(&srv, 0, sizeof(srv));
	pthread_mutex_lock(&pg_cancel_mu);
	p->srv = srv;
	p->fd = PQsocket(p->conn);
	p->pid = PQbackendPID(p->conn);
	p->port = port;
	p->armed = p->fd >= 0;
	pthread_mutex_unlock(&pg_cancel_mu);
}

/* Owner thread, before its socket is closed or replaced. */
static void pg_disarm_cancel(struct store_pg *p)
{
	pthread_mutex_lock(&pg_cancel_mu);
	p->armed = false;
	pthread_mutex_unlock(&pg_cancel_mu);
}

/*
 * PQcancel() is not used: it waits for the postmaster to close the cancel
 * connection, and a stalled (stopped, overloaded) server never does. Shutting
 * our socket down ends the owner's wait at once; the server's side of the
 * session is ended from the next connection (pg_end_orphan).
 */
static void pg_cancel(struct store *s)
{
	struct store_pg *p = pg_of(s);

	pthread_mutex_lock(&pg_cancel_mu);
	atomic_store(&p->cancelled, true);
	if (p->armed) {
		shutdown(p->fd, SHUT_RDWR);
		p->armed = false;
		p->orphan_pid = p->pid;
		p->orphan_port = p->port;
		p->orphan_srv = p->srv;
	}
	pthread_mutex_unlock(&pg_cancel_mu);
}

/*
 * Ends the backend of a cancelled session (it may still wait for a lock, or
 * sit in a transaction, holding locks). Matched on pid and client port so
 * that a reused pid is left alone. Best effort: failure changes nothing.
 */
static void pg_end_orphan(struct store_pg *p, int pid, int port)
{
	char a[16], b[16];
	const char *vals[2] = { a, b };
	PGresult *res;

	snprintf(a, sizeof(a), "%d", pid);
	snprintf(b, sizeof(b), "%d", port);
	res = PQexecParams(p->conn,
			   "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
			   " WHERE pid = $1::int AND coalesce(client_port, -1) = $2::int",
			   2, NULL, vals, NULL, NULL, 0);
	PQclear(res);
}

/* libpq's connect_timeout of this connection, in ms (libpq's async calls leave it to us). */
static long pg_connect_timeout_ms(struct store_pg *p)
{
	PQconninfoOption *opts = PQconninfo(p->conn);
	long ms = 10000;

	for (PQconninfoOption *o = opts; o && o->keyword; o++)
		if (!strcmp(o->keyword, "connect_timeout") && o->val && atol(o->val) > 0)
			ms = atol(o->val) * 1000L;
	PQconninfoFree(opts);
	return ms;
}

/* Entries of a comma-separated libpq list ("h1,h2,h3": 3); 0 for NULL or "". */
static int pg_list_len(const char *s)
{
	int n = s && *s ? 1 : 0;

	for (; s && *s; s++)
		n += *s == ',';
	return n;
}

/* s ("a,b,c") with its first entry moved to the end ("b,c,a"). Caller frees; NULL: no memory. */
static char *pg_list_rotate(const char *s)
{
	const char *comma = strchr(s, ',');
	size_t len = strlen(s);
	char *out = malloc(len + 1);

	if (!out)
		return NULL;
	if (!comma) {
		memcpy(out, s, len + 1);
		return out;
	}
	snprintf(out, len + 1, "%s,%.*s", comma + 1, (int)(comma - s), s);
	return out;
}

/*
 * Starts a new connection with this one's parameters. rotate: the host list
 * (host, hostaddr, and port where it has one entry per host) starts at the
 * second host, the first moving to the end. Why: libpq tries the hosts in
 * order, and a host that accepts the TCP connection but never answers (a hung
 * or stopped server, a vanished machine) takes the whole connect_timeout, as
 * libpq's asynchronous connect has no timeout of its own: without rotation
 * every reconnect would wait on that host and never reach the standby that
 * was promoted behind it. NULL if out of memory.
 */
static PGconn *pg_connect_start(struct store_pg *p, bool rotate)
{
	PQconninfoOption *opts = PQconninfo(p->conn);
	const char **keys = NULL, **vals = NULL;
	char *rotated[3] = { NULL, NULL, NULL };
	size_t nopts = 0, k = 0;
	int hosts = 0;
	PGconn *c = NULL;

	if (!opts)
		return NULL;
	for (PQconninfoOption *o = opts; o->keyword; o++, nopts++)
		if (!strcmp(o->keyword, "host") || !strcmp(o->keyword, "hostaddr"))
			hosts = pg_list_len(o->val) > hosts ? pg_list_len(o->val) : hosts;
	keys = calloc(nopts + 1, sizeof(*keys));
	vals = calloc(nopts + 1, sizeof(*vals));
	if (!keys || !vals)
		goto out;
	for (PQconninfoOption *o = opts; o->keyword; o++) {
		const char *v = o->val;
		int slot = !strcmp(o->keyword, "host") ? 0 : !strcmp(o->keyword, "hostaddr") ? 1 :
			   !strcmp(o->keyword, "port") ? 2 : -1;

		if (!v)
			continue;
		if (rotate && hosts > 1 && slot >= 0 && pg_list_len(v) == hosts) {
			rotated[slot] = pg_list_rotate(v);
			if (!rotated[slot])
				goto out;
			v = rotated[slot];
		}
		keys[k] = o->keyword;
		vals[k++] = v;
	}
	keys[k] = NULL;
	vals[k] = NULL;
	c = PQconnectStartParams(keys, vals, 0);
out:
	for (int i = 0; i < 3; i++)
		free(rotated[i]);
	free(keys);
	free(vals);
	PQconninfoFree(opts);
	return c;
}

/*
 * A new connection in place of the old one, bounded by connect_timeout and
 * ended early by cancel(). An attempt that ran out of time (or was cancelled)
 * makes the next one start at the next host (pg_connect_start).
 */
static int pg_reset(struct store_pg *p)
{
	uint64_t deadline = mono_ms() + (uint64_t)pg_connect_timeout_ms(p);
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	PGconn *c = pg_connect_start(p, p->rotate);

	if (!c) {
		pg_setmsg(p, "reconnect failed: out of memory");
		return -ENOMEM;
	}
	PQfinish(p->conn);
	p->conn = c;
	p->rotate = false;
	if (PQstatus(c) == CONNECTION_BAD)
		st = PGRES_POLLING_FAILED;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		struct pollfd pfd = { .fd = PQsocket(p->conn),
				      .events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT };
		uint64_t now = mono_ms();

		if (atomic_load(&p->cancelled)) {
			pg_setmsg(p, "reconnect cancelled: the server did not answer");
			p->rotate = true;
			return -ENOTCONN;
		}
		if (now >= deadline) {
			const char *h = PQhost(p->conn), *port = PQport(p->conn);

			pg_setmsg(p, "reconnect failed: no answer within connect_timeout (%ld s)"
				  " from %s:%s",
				  pg_connect_timeout_ms(p) / 1000, h ? h : "?", port ? port : "?");
			p->rotate = true;
			return -ENOTCONN;
		}
		/* short slices: cancel() does not wake poll() before the socket is published */
		int n = poll(&pfd, 1, deadline - now < 100 ? (int)(deadline - now) : 100);
		if (n > 0)
			st = PQconnectPoll(p->conn);
	}
	if (st == PGRES_POLLING_FAILED) {
		/* Same parameters as open(), whose password never reaches errmsg. */
		pg_setmsg(p, "reconnect failed: %s", PQerrorMessage(p->conn));
		pg_flatten(p->base.errmsg);
		return -ENOTCONN;
	}
	return 0;
}

/* Session settings, applied after every (re)connect. */
static int pg_session(struct store_pg *p)
{
	bool full = p->durability != STORE_DURABLE_NORMAL;
	PGresult *res;
	const char *sc;
	int r = 0;

	PQsetNoticeReceiver(p->conn, pg_notice, p);
	pg_arm_cancel(p);
	res = PQexec(p->conn, full ? pg_session_full_sql : pg_session_normal_sql);
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		r = pg_fail(p, res, "session setup");
		goto out;
	}
	sc = PQgetvalue(res, 0, 0);
	if (full && strcmp(sc, "on") && strcmp(sc, "remote_apply")) {
		pg_setmsg(p, "session setup: synchronous_commit is %.40s after setting it to on "
			  "(durability = full)", sc);
		r = -EIO;
		goto out;
	}
	snprintf(p->base.durability, sizeof(p->base.durability),
		 "synchronous_commit = %.40s (durability = %s)", sc, full ? "full" : "normal");
	p->base.durability_warn = false;
out:
	PQclear(res);
	return r;
}

/* The raw password of a URI "scheme://user:PASSWORD@host", or NULL. */
static char *pg_uri_password(const char *url)
{
	size_t len;
	const char *pw = url_password_raw(url, &len);

	return pw && len ? strndup(pw, len) : NULL;
}

/* Removes from msg any password the URL or params carry. */
static void pg_redact(char *msg, const struct store_params *params)
{
	PQconninfoOption *opts;
	char *raw;

	url_scrub(msg, params->password);
	raw = pg_uri_password(params->url);
	url_scrub(msg, raw);
	free(raw);
	opts = PQconninfoParse(params->url, NULL);
	for (PQconninfoOption *o = opts; o && o->keyword; o++)
		if (!strcmp(o->keyword, "password"))
			url_scrub(msg, o->val);
	PQconninfoFree(opts);
}

static int pg_open(const struct store_params *params, struct store **ret, char *err,
		   size_t errsz)
{
	const char *keys[16], *vals[16];
	struct store_pg *p = NULL;
	char timeout[24], *perr = NULL;
	PQconninfoOption *opts;
	int k = 0, r;

	if (!params || !params->url) {
		snprintf(err, errsz, "no database URL");
		return -EINVAL;
	}
	/* Checked first so that a malformed URL is -EINVAL, not "cannot connect". */
	opts = PQconninfoParse(params->url, &perr);
	if (!opts) {
		r = perr ? -EINVAL : -ENOMEM;
		snprintf(err, errsz, "invalid PostgreSQL URL: %s",
			 perr ? perr : "out of memory");
		PQfreemem(perr);
		goto out;
	}
	PQconninfoFree(opts);

	p = calloc(1, sizeof(*p));
	if (!p) {
		snprintf(err, errsz, "out of memory");
		r = -ENOMEM;
		goto out;
	}
	p->base.ops = &store_pg_ops;
	p->durability = params->durability;

	/*
	 * Entries before dbname are defaults the URL may override; entries
	 * after it override the URL (see PQconnectdbParams, expand_dbname).
	 */
	keys[k] = "application_name"; vals[k++] = "feed";
	keys[k] = "client_encoding"; vals[k++] = "UTF8";
	/*
	 * A server that vanishes without a FIN (failover, partition) must show
	 * as an outage within seconds, not after the kernel's 2-hour keepalive:
	 * probe idle connections, and give up on unacknowledged data after 30 s.
	 * The URL may override each of these.
	 */
	keys[k] = "keepalives"; vals[k++] = "1";
	keys[k] = "keepalives_idle"; vals[k++] = "10";
	keys[k] = "keepalives_interval"; vals[k++] = "5";
	keys[k] = "keepalives_count"; vals[k++] = "3";
	keys[k] = "tcp_user_timeout"; vals[k++] = "30000";
	if (params->connect_timeout > 0) {
		snprintf(timeout, sizeof(timeout), "%d", params->connect_timeout);
		keys[k] = "connect_timeout"; vals[k++] = timeout;
	}
	keys[k] = "dbname"; vals[k++] = params->url;
	if (params->password && *params->password) {
		keys[k] = "password"; vals[k++] = params->password;
	}
	keys[k] = NULL; vals[k] = NULL;

	p->conn = PQconnectdbParams(keys, vals, 1);
	if (!p->conn) {
		snprintf(err, errsz, "cannot connect: out of memory");
		r = -ENOMEM;
		goto out;
	}
	if (PQstatus(p->conn) != CONNECTION_OK) {
		snprintf(err, errsz, "cannot connect: %s", PQerrorMessage(p->conn));
		r = -ENOTCONN;
		goto out;
	}
	r = pg_session(p);
	if (r < 0) {
		snprintf(err, errsz, "%s", p->base.errmsg);
		goto out;
	}
	p->base.errmsg[0] = '\0';
	*ret = &p->base;
	p = NULL;
	r = 0;
out:
	if (r < 0) {
		pg_flatten(err);
		pg_redact(err, params);
	}
	if (p) {
		PQfinish(p->conn);
		free(p);
	}
	return r;
}

static void pg_close(struct store *s)
{
	struct store_pg *p;

	if (!s)
		return;
	p = pg_of(s);
	pg_disarm_cancel(p);
	PQfinish(p->conn);
	free(p);
}

static int pg_reconnect(struct store *s)
{
	struct store_pg *p = pg_of(s);
	struct sockaddr_storage orphan_srv;
	int orphan_pid, orphan_port, r;

	pthread_mutex_lock(&pg_cancel_mu);
	p->armed = false;
	atomic_store(&p->cancelled, false);   /* a cancel from now on is for this reconnect */
	orphan_pid = p->orphan_pid;
	orphan_port = p->orphan_port;
	orphan_srv = p->orphan_srv;
	pthread_mutex_unlock(&pg_cancel_mu);

	p->begin_pending = false;
	r = pg_reset(p);
	if (r < 0)
		return r;
	r = pg_session(p);
	if (r < 0)
		return r;
	if (orphan_pid > 0) {
		/*
		 * Only on the server the session was on: after a failover the
		 * same pid and port on the new primary are someone else's (and
		 * the old server's session ended with it, or will on its own).
		 */
		pthread_mutex_lock(&pg_cancel_mu);
		bool same = memcmp(&p->srv, &orphan_srv, sizeof(orphan_srv)) == 0;
		pthread_mutex_unlock(&pg_cancel_mu);
		if (same)
			pg_end_orphan(p, orphan_pid, orphan_port);
		pthread_mutex_lock(&pg_cancel_mu);
		if (p->orphan_pid == orphan_pid)
			p->orphan_pid = 0;
		pthread_mutex_unlock(&pg_cancel_mu);
	}
	return 0;
}

/* ==== Schema ==== */

/*
 * DDL on fee takes ACCESS EXCLUSIVE (SHARE for an index), which queues
 * behind any open transaction that read fee and makes every writer queue
 * behind it: the migration (store_migrate.c) runs DDL only where the catalog
 * says it is needed, and waits at most this long for a lock.
 */
#define PG_DDL_LOCK_TIMEOUT_S 5
/* How long a second instance waits for the first one's migration. */
#define PG_MIGRATE_WAIT_S 30

/* pg_migrate_lock's steps; the caller rolls back on failure. */
static int pg_migrate_begin(struct store_pg *p)
{
	PGresult *res;
	const char *state;
	int r = pg_cmd(p, "BEGIN", "BEGIN");

	if (r < 0)
		return r;
	res = PQexec(p->conn, "SET LOCAL lock_timeout = '" STR(PG_MIGRATE_WAIT_S) "s';"
			      "SELECT pg_advisory_xact_lock(" PG_MIGRATE_LOCK ")");
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state && !strcmp(state, "55P03")) {
		pg_setmsg(p, "waited " STR(PG_MIGRATE_WAIT_S) " s for another feed's migration "
			  "(pg_advisory_xact_lock(" PG_MIGRATE_LOCK ")) to end");
		r = -EAGAIN;
	} else if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = pg_fail(p, res, "taking the migration lock");
	}
	PQclear(res);
	if (r == 0)
		r = pg_cmd(p, "SET LOCAL lock_timeout = '" STR(PG_DDL_LOCK_TIMEOUT_S) "s'",
			   "SET LOCAL lock_timeout");
	if (r < 0)
		return r;
	res = PQexec(p->conn, "SELECT current_schema() IS NOT NULL");
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = pg_fail(p, res, "reading current_schema()");
	} else if (strcmp(PQgetvalue(res, 0, 0), "t")) {
		pg_setmsg(p, "no schema to create feed's tables in: search_path names "
			  "no existing schema");
		r = -EIO;
	}
	PQclear(res);
	return r;
}

static int pg_migrate_unlock(struct store *s, int r)
{
	struct store_pg *p = pg_of(s);

	if (r == 0)
		r = pg_cmd(p, "COMMIT", "COMMIT of the migration");
	if (r < 0 && PQstatus(p->conn) == CONNECTION_OK &&
	    PQtransactionStatus(p->conn) != PQTRANS_IDLE)
		PQclear(PQexec(p->conn, "ROLLBACK"));
	return r;
}

/*
 * Takes the migration lock (bounded wait) in the migration's transaction,
 * in which DDL is transactional; a schema to create the tables in must exist.
 * On failure the transaction is rolled back.
 */
static int pg_migrate_lock(struct store *s)
{
	int r = pg_migrate_begin(pg_of(s));

	return r < 0 ? pg_migrate_unlock(s, r) : 0;
}

static int pg_migrate_exec(struct store *s, const char *what, const char *sql)
{
	return pg_cmd(pg_of(s), sql, what);
}

static int pg_migrate_query(struct store *s, const char *what, const char *sql,
			    struct store_qrow *ret)
{
	struct store_pg *p = pg_of(s);
	PGresult *res = PQexec(p->conn, sql);
	int r = 0;

	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = pg_fail(p, res, what);
	} else if (PQntuples(res) > 0) {
		ret->found = true;
		for (int c = 0; c < PQnfields(res) && c < STORE_QROW_COLS; c++) {
			ret->null[c] = PQgetisnull(res, 0, c);
			snprintf(ret->val[c], sizeof(ret->val[c]), "%s", PQgetvalue(res, 0, c));
		}
	}
	PQclear(res);
	return r;
}

/* ids to bigint; a NUMERIC volume of too few digits to plain NUMERIC. */
static void pg_widen_sql(const char *col, const struct store_qrow *c, char *sql, size_t size)
{
	snprintf(sql, size, "ALTER TABLE fee ALTER COLUMN %s TYPE %s", col,
		 strcmp(col, "volume") ? "bigint" : "numeric");
}

static const struct store_migrate_ops pg_migrate_ops = {
	.lock = pg_migrate_lock,
	.unlock = pg_migrate_unlock,
	.exec = pg_migrate_exec,
	.query = pg_migrate_query,
	.widen_sql = pg_widen_sql,
	/* a view depending on the column keeps the old type */
	.widen_best_effort = true,
	/* as CREATE TABLE IF NOT EXISTS: any relation of that name */
	.q_table = "SELECT 1 WHERE to_regclass(quote_ident(current_schema()) || '.$T') IS NOT NULL",
	.q_column = "SELECT data_type, numeric_precision, numeric_scale, is_nullable,"
		    " column_default FROM information_schema.columns"
		    " WHERE table_schema = current_schema() AND table_name = '$T'"
		    " AND column_name = '$C'",
	.q_index = "SELECT 1 WHERE to_regclass(quote_ident(current_schema()) || '.$I') IS NOT NULL",
	.q_ticket_key = "SELECT 1 FROM pg_index i"
			" JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
			" WHERE i.indrelid = (quote_ident(current_schema()) || '.fee')::regclass"
			" AND i.indisunique AND i.indisvalid AND i.indnkeyatts = 1"
			" AND i.indpred IS NULL AND i.indexprs IS NULL AND a.attname = 'ticket'",
	.create_fee = "CREATE TABLE IF NOT EXISTS fee ("
		      " ticket bigint PRIMARY KEY,"
		      " login bigint NOT NULL,"
		      " volume numeric NOT NULL CHECK (volume >= 0),"
		      " status char(1) NOT NULL DEFAULT 'N',"
		      " fee numeric(20,2),"
		      " received_at timestamptz NOT NULL DEFAULT now(),"
		      " settled_at timestamptz,"
		      " source text)",
	.create_rate = "CREATE TABLE IF NOT EXISTS fee_rate ("
		       " login bigint PRIMARY KEY,"
		       " rate numeric(38,8) NOT NULL)",
	.create_reject = "CREATE TABLE IF NOT EXISTS fee_reject ("
			 " id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
			 " received_at timestamptz NOT NULL DEFAULT now(),"
			 " endpoint text NOT NULL,"
			 " reason text NOT NULL,"
			 " body bytea NOT NULL,"
			 " source text)",
	.create_schema = "CREATE TABLE IF NOT EXISTS feed_schema (version integer NOT NULL)",
	.add_cols = {
		{ "status", "ALTER TABLE fee ADD COLUMN status char(1)",
		  "ALTER TABLE fee ALTER COLUMN status SET DEFAULT 'N'" },
		{ "fee", "ALTER TABLE fee ADD COLUMN fee numeric(20,2)", NULL },
		/* Existing rows: received_at unknown (NULL); new rows: now(). */
		{ "received_at", "ALTER TABLE fee ADD COLUMN received_at timestamptz",
		  "ALTER TABLE fee ALTER COLUMN received_at SET DEFAULT now()" },
		{ "settled_at", "ALTER TABLE fee ADD COLUMN settled_at timestamptz", NULL },
		/* nullable, no default: metadata only, existing rows read NULL */
		{ "source", "ALTER TABLE fee ADD COLUMN source text", NULL },
	},
	.add_reject_source = "ALTER TABLE fee_reject ADD COLUMN source text",
	.add_key = "CREATE UNIQUE INDEX fee_ticket_key ON fee (ticket)",
	.index_name = "fee_unsettled_idx",
	.create_index = "CREATE INDEX fee_unsettled_idx ON fee (ticket) WHERE status = 'N'",
	.ddl_lock_timeout_s = PG_DDL_LOCK_TIMEOUT_S,
	.lock_hint = "pg_locks and pg_stat_activity",
};

static int pg_migrate(struct store *s)
{
	return store_migrate(s, &pg_migrate_ops);
}

static int pg_exec(struct store *s, const char *sql)
{
	return pg_cmd(pg_of(s), sql, "SQL statement");
}

/* ==== Transactions ==== */

/*
 * BEGIN is deferred to the batch's first statement, which carries it in the
 * same round trip where it can (lookup); a lone request then costs three
 * round trips (BEGIN+max, INSERT, COMMIT) instead of five.
 */
static int pg_begin(struct store *s)
{
	struct store_pg *p = pg_of(s);

	store_keys_begin(&p->keys);
	p->begin_pending = true;
	p->wrote = false;
	p->seen = false;
	return 0;
}

/*
 * What the result of a COMMIT (sent with in_commit set, so that the notice
 * receiver watched it) means: 0 committed, else -errno with errmsg set.
 */
static int pg_commit_result(struct store_pg *p, PGresult *res)
{
	if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
		return pg_fail(p, res, "COMMIT");
	if (strcmp(PQcmdStatus(res), "COMMIT")) {
		/* COMMIT of a failed transaction "succeeds" as ROLLBACK. */
		pg_setmsg(p, "COMMIT failed: the server rolled the transaction back (%s)",
			  PQcmdStatus(res));
		return -EIO;
	}
	if (p->commit_warned) {
		/*
		 * Committed here, maybe not replicated: the outcome is unknown.
		 * The caller reconnects and looks the tickets up; what it finds
		 * is accepted by a commit that waits (pg_commit()).
		 */
		pg_setmsg(p, "COMMIT returned with a warning, outcome unknown: %s", p->commit_warning);
		pg_flatten(p->base.errmsg);
		return -ENOTCONN;
	}
	return 0;
}

/* One statement of a pipeline (pg_pipeline). */
struct pg_step {
	const char *sql;
	int nvals;
	const char *const *vals;
	const char *what;
};

/*
 * Runs steps[0..n) in one round trip (libpq pipeline mode, one sync) and
 * returns the first failure, classified as any other; the server skips the
 * statements after it. commit_at: the index of a COMMIT step, whose
 * result is judged as pg_commit()'s (pg_commit_result()), or -1.
 */
static int pg_pipeline(struct store_pg *p, const struct pg_step *steps, int n, int commit_at)
{
	PGresult *res;
	bool synced = false;
	int r = 0;

	if (!PQenterPipelineMode(p->conn))
		return pg_fail(p, NULL, steps[0].what);
	for (int i = 0; i < n && r == 0; i++)
		if (!PQsendQueryParams(p->conn, steps[i].sql, steps[i].nvals, NULL, steps[i].vals,
				       NULL, NULL, 0))
			r = pg_fail(p, NULL, steps[i].what);
	if (r == 0 && !PQpipelineSync(p->conn))
		r = pg_fail(p, NULL, steps[0].what);
	if (r < 0) {
		PQexitPipelineMode(p->conn);
		return r;
	}
	for (int i = 0; i < n; i++) {
		if (i == commit_at) {
			p->in_commit = true;
			p->commit_warned = false;
		}
		res = PQgetResult(p->conn);
		if (r == 0 && i == commit_at) {
			r = pg_commit_result(p, res);   /* its notices came before it */
		} else if (r == 0) {
			ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

			if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
				r = pg_fail(p, res, steps[i].what);
		}
		if (!res)
			break;                  /* the connection is gone: nothing more comes */
		PQclear(res);
		while ((res = PQgetResult(p->conn)) != NULL)   /* the NULL that ends each query */
			PQclear(res);
	}
	p->in_commit = false;
	/* the sync's own result (bounded: a lost connection gives NULL) */
	for (int k = 0; k < n + 2 && !synced; k++) {
		res = PQgetResult(p->conn);
		if (!res)
			break;
		synced = PQresultStatus(res) == PGRES_PIPELINE_SYNC;
		PQclear(res);
	}
	if (!PQexitPipelineMode(p->conn) && r == 0) {
		pg_setmsg(p, "%s: the pipeline did not end: %s", steps[0].what, PQerrorMessage(p->conn));
		pg_flatten(p->base.errmsg);
		r = -ENOTCONN;
	}
	return r;
}

static int pg_flush_begin(struct store_pg *p)
{
	if (!p->begin_pending)
		return 0;
	p->begin_pending = false;
	return pg_cmd(p, "BEGIN", "BEGIN");
}

/*
 * Makes this transaction write WAL, so that its COMMIT waits for the
 * synchronous standbys like any write: it locks a row it found (FOR KEY
 * SHARE, which only a DELETE or a key change conflicts with, and which is
 * WAL-logged). PostgreSQL commits a transaction that wrote no WAL without
 * waiting for replication, and an xid alone (pg_current_xact_id()) writes
 * none: measured, it returned while both standbys were stopped.
 */
static int pg_lock_seen(struct store_pg *p)
{
	char t[24];
	const char *vals[1] = { t };
	PGresult *res;
	int r = 0;

	snprintf(t, sizeof(t), "%lld", (long long)p->seen_ticket);
	res = PQexecParams(p->conn, "SELECT 1 FROM fee WHERE ticket = $1::bigint FOR KEY SHARE",
			   1, NULL, vals, NULL, NULL, 0);
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = pg_fail(p, res, "locking a found row of fee (to wait for the standbys)");
	} else if (PQntuples(res) != 1) {
		/* deleted since lookup: decide the batch anew */
		pg_setmsg(p, "ticket %lld found in fee is gone: looking again", (long long)p->seen_ticket);
		r = -EAGAIN;
	}
	PQclear(res);
	return r;
}

static int pg_commit(struct store *s)
{
	struct store_pg *p = pg_of(s);
	PGresult *res;
	int r = 0;

	if (p->begin_pending) {     /* nothing was done: nothing to commit */
		p->begin_pending = false;
		return 0;
	}
	/*
	 * Rows found but nothing written: they may be those of a commit whose
	 * outcome was unknown (a connection lost during COMMIT, a wait for the
	 * standbys cancelled), committed on this server and perhaps nowhere
	 * else. Accepting them takes a commit that waits for replication. A
	 * transaction that wrote anything waits anyway, for a later WAL position.
	 */
	if (!p->wrote && p->seen && p->durability != STORE_DURABLE_NORMAL) {
		r = pg_lock_seen(p);
		if (r < 0)
			return r;
	}
	p->in_commit = true;
	p->commit_warned = false;
	res = PQexec(p->conn, "COMMIT");
	p->in_commit = false;
	r = pg_commit_result(p, res);
	PQclear(res);
	return r;
}

static int pg_rollback(struct store *s)
{
	struct store_pg *p = pg_of(s);

	p->begin_pending = false;
	if (PQstatus(p->conn) != CONNECTION_OK) {
		/* The server rolls back a lost session by itself. */
		if (!p->base.errmsg[0])
			pg_setmsg(p, "ROLLBACK: connection lost");
		return -ENOTCONN;
	}
	if (PQtransactionStatus(p->conn) == PQTRANS_IDLE)
		return 0;
	return pg_cmd(p, "ROLLBACK", "ROLLBACK");
}

/* ==== Batches ==== */

/* Also sends a pending BEGIN: the batch's first round trip does both. */
static int pg_max_ticket(struct store *s, int64_t *ret)
{
	struct store_pg *p = pg_of(s);
	const char *sql = "SELECT coalesce(max(ticket), 0) FROM fee";
	PGresult *res;
	int r = 0;

	if (p->begin_pending) {
		/* one round trip: the simple query protocol runs both, returns the last */
		p->begin_pending = false;
		sql = "BEGIN; SELECT coalesce(max(ticket), 0) FROM fee";
	}
	res = PQexec(p->conn, sql);

	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
		r = pg_fail(p, res, "SELECT max(ticket) from fee");
	else
		*ret = pg_get_i64(res, 0, 0);
	PQclear(res);
	return r;
}

static int pg_lookup(struct store *s, const int64_t *tickets, size_t n,
		     struct store_row *rows, size_t *ret_n)
{
	struct store_pg *p = pg_of(s);
	PGresult *res = NULL;
	const char *vals[1];
	char *arr = NULL;
	size_t got = 0;
	int r = 0;

	if (n == 0)
		goto done;
	r = pg_flush_begin(p);
	if (r < 0)
		goto out;
	arr = pg_i64_array(tickets, sizeof(*tickets), n);
	if (!arr) {
		pg_setmsg(p, "lookup: out of memory for %zu tickets", n);
		r = -ENOMEM;
		goto out;
	}
	vals[0] = arr;
	res = PQexecParams(p->conn, "SELECT ticket, login, volume::text FROM fee"
				    " WHERE ticket = ANY($1::bigint[])",
			   1, NULL, vals, NULL, NULL, 0);
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = pg_fail(p, res, "SELECT from fee");
		goto out;
	}
	for (int i = 0; i < PQntuples(res) && got < n; i++, got++) {
		rows[got].ticket = pg_get_i64(res, i, 0);
		rows[got].login = pg_get_i64(res, i, 1);
		rows[got].volume = pg_get_dec(res, i, 2);
	}
	if (got > 0) {
		p->seen = true;
		p->seen_ticket = rows[0].ticket;
	}
done:
	*ret_n = got;
out:
	PQclear(res);
	free(arr);
	return r;
}

/*
 * A few rows: one multi-row INSERT, the values in its text. The senders
 * go as parameters, one per run of rows that share one.
 */
#define PG_VALUES_SQL (96 + PG_VALUES_MAX * 112)

/* The INSERT of recs[0..n) (n <= PG_VALUES_MAX) into sql; returns its parameters' count. */
static int pg_values_sql(const struct record *recs, const char *const *srcs, size_t n,
			 char sql[PG_VALUES_SQL], const char *vals[PG_VALUES_MAX])
{
	char vol[DEC_STRMAX], src[24];
	int nvals = 0;
	size_t len = (size_t)snprintf(sql, PG_VALUES_SQL,
				      "INSERT INTO fee (ticket, login, volume, status, source) VALUES ");

	for (size_t i = 0; i < n; i++) {
		const char *sr = srcs ? srcs[i] : NULL;

		if (!sr)
			snprintf(src, sizeof(src), "NULL");
		else if (nvals > 0 && sr == vals[nvals - 1])
			snprintf(src, sizeof(src), "$%d", nvals);
		else {
			vals[nvals++] = sr;
			snprintf(src, sizeof(src), "$%d", nvals);
		}
		dec_format(recs[i].volume, DEC_SCALE, 0, vol);
		/* integers and a decimal feed formatted itself: nothing to quote */
		len += (size_t)snprintf(sql + len, PG_VALUES_SQL - len, "%s(%lld,%lld,'%s','N',%s)",
					i ? "," : "", (long long)recs[i].ticket,
					(long long)recs[i].login, vol, src);
	}
	return nvals;
}

static int pg_insert_values(struct store_pg *p, const struct record *recs,
			    const char *const *srcs, size_t n)
{
	char sql[PG_VALUES_SQL];
	const char *vals[PG_VALUES_MAX];
	int nvals = pg_values_sql(recs, srcs, n, sql, vals);

	return pg_cmd_params(p, sql, nvals, vals, "INSERT into fee");
}

/*
 * Whether srcs[i] starts a new entry of the senders' array: not NULL, and
 * not the text of the last one that did (*prev, its index + 1; 0: none).
 * The array's elements are found by walking it from the start, so a batch
 * of single-record requests from one sender must not list it once a row.
 */
static bool pg_new_source(const char *const *srcs, size_t i, size_t *prev)
{
	if (!srcs || !srcs[i])
		return false;
	if (*prev && (srcs[i] == srcs[*prev - 1] ||
		      strncmp(srcs[i], srcs[*prev - 1], STORE_SOURCE_MAX) == 0))
		return false;
	*prev = i + 1;
	return true;
}

/*
 * More rows: one INSERT ... SELECT FROM unnest() over array parameters, in
 * one message; the senders in $5, once per run of rows from one, and each
 * row's index into it in $4 (0: none, which reads NULL).
 *
 * Not COPY, though COPY is faster (bench/run.sh --quick, PostgreSQL: one
 * DEALER with 100 records a request, 327,000-373,000 records/s with COPY,
 * 249,000-291,000 with this): a COPY inserts its rows, and locks their
 * tickets, as its data arrives, and while the server waits for the rest of
 * that data neither idle_in_transaction_session_timeout nor a cancel ends
 * it. A feed process that hung in the middle of sending one kept those
 * locks for as long as it hung, and another instance given the same tickets
 * waited as long (test_multi's test_hung_in_the_middle_of_a_statement). A
 * statement runs only once its message is whole: a process hung while
 * sending one holds nothing new, and between statements the server's
 * timeout applies. A ticket inserted meanwhile by another writer makes the
 * INSERT fail with 23505 (-EEXIST), after waiting for that writer.
 */
static int pg_insert_unnest(struct store_pg *p, const struct record *recs,
			    const char *const *srcs, size_t n)
{
	const char *vals[5];
	char *tickets = NULL, *logins = NULL, *vols = NULL, *idx = NULL, *names = NULL;
	size_t runs = 0, il = 0, nl = 0;
	int r = 0;

	/* the senders of a batch are few: most rows repeat the one before */
	for (size_t i = 0, prev = 0; i < n; i++)
		if (pg_new_source(srcs, i, &prev))
			runs++;
	tickets = pg_i64_array(&recs[0].ticket, sizeof(*recs), n);
	logins = pg_i64_array(&recs[0].login, sizeof(*recs), n);
	vols = pg_dec_array(&recs[0].volume, sizeof(*recs), n, DEC_SCALE, 0);
	idx = malloc(n * 21 + 3);
	/* a quoted name: every byte escaped at worst, quotes, a comma */
	names = malloc(runs * (2 * STORE_SOURCE_MAX + 3) + 3);
	if (!tickets || !logins || !vols || !idx || !names) {
		pg_setmsg(p, "insert: out of memory for %zu rows", n);
		r = -ENOMEM;
		goto out;
	}
	idx[il++] = names[nl++] = '{';
	runs = 0;
	for (size_t i = 0, prev = 0; i < n; i++) {
		const char *src = srcs ? srcs[i] : NULL;

		if (pg_new_source(srcs, i, &prev)) {
			if (runs++)
				names[nl++] = ',';
			names[nl++] = '"';
			for (size_t k = 0; src[k] && k < STORE_SOURCE_MAX; k++) {
				if (src[k] == '"' || src[k] == '\\')
					names[nl++] = '\\';
				names[nl++] = src[k];
			}
			names[nl++] = '"';
		}
		il += (size_t)snprintf(idx + il, n * 21 + 3 - il, i ? ",%zu" : "%zu",
				       src ? runs : 0);
	}
	idx[il++] = names[nl++] = '}';
	idx[il] = names[nl] = '\0';
	vals[0] = tickets;
	vals[1] = logins;
	vals[2] = vols;
	vals[3] = idx;
	vals[4] = names;
	r = pg_cmd_params(p, "INSERT INTO fee (ticket, login, volume, status, source)"
			  " SELECT u.t, u.l, u.v, 'N', ($5::text[])[u.s] FROM unnest($1::bigint[],"
			  " $2::bigint[], $3::numeric[], $4::int[]) AS u(t, l, v, s)",
			  5, vals, "INSERT into fee");
out:
	free(names);
	free(idx);
	free(vols);
	free(logins);
	free(tickets);
	return r;
}

static int pg_insert(struct store *s, const struct record *recs, const char *const *srcs,
		     size_t n)
{
	struct store_pg *p = pg_of(s);
	int r;

	if (n == 0)
		return 0;
	r = pg_flush_begin(p);
	if (r == 0)
		r = pg_load_ticket_keys(p);
	if (r < 0)
		return r;
	p->wrote = true;
	if (n <= PG_VALUES_MAX)
		return pg_insert_values(p, recs, srcs, n);
	return pg_insert_unnest(p, recs, srcs, n);
}

/*
 * A batch of one record (a lone lock-step sender's, whose answer waits for
 * this batch alone): BEGIN, the INSERT and COMMIT in one round trip, a
 * libpq pipeline, where they took three (measured: +10 % for a lone REQ
 * client). A larger batch, whose round trips serve several requests, keeps
 * insert() then commit(): the gain there was not measured, and its
 * transaction stays open between round trips as it always did
 * (test_multi's stop-while-storing test needs such a transaction).
 */
static int pg_insert_commit(struct store *s, const struct record *recs,
			    const char *const *srcs, size_t n)
{
	struct store_pg *p = pg_of(s);
	char sql[PG_VALUES_SQL];
	const char *vals[PG_VALUES_MAX];
	struct pg_step steps[3];
	int k = 0, r;

	if (n != 1) {
		r = pg_insert(s, recs, srcs, n);
		return r < 0 ? r : pg_commit(s);
	}
	r = pg_load_ticket_keys(p);     /* a catalog read, before BEGIN is fine */
	if (r < 0)
		return r;
	p->wrote = true;
	if (p->begin_pending)
		steps[k++] = (struct pg_step){ "BEGIN", 0, NULL, "BEGIN" };
	p->begin_pending = false;
	steps[k++] = (struct pg_step){ sql, pg_values_sql(recs, srcs, n, sql, vals), vals,
				       "INSERT into fee" };
	steps[k++] = (struct pg_step){ "COMMIT", 0, NULL, "COMMIT" };
	return pg_pipeline(p, steps, k, k - 1);
}

static int pg_insert_rejects(struct store *s, const struct store_reject *rj, size_t n)
{
	struct store_pg *p = pg_of(s);
	const char **vals = NULL;
	int *lens = NULL, *fmts = NULL;
	char **copies = NULL, *sql = NULL;
	size_t cap;
	int r = 0;

	if (n == 0)
		return 0;
	r = pg_flush_begin(p);
	if (r < 0)
		return r;
	p->wrote = true;
	cap = 64 + PG_REJECT_CHUNK * 40;
	sql = malloc(cap);
	vals = calloc(PG_REJECT_PARAMS * PG_REJECT_CHUNK, sizeof(*vals));
	lens = calloc(PG_REJECT_PARAMS * PG_REJECT_CHUNK, sizeof(*lens));
	fmts = calloc(PG_REJECT_PARAMS * PG_REJECT_CHUNK, sizeof(*fmts));
	copies = calloc(3 * PG_REJECT_CHUNK, sizeof(*copies));
	if (!sql || !vals || !lens || !fmts || !copies) {
		pg_setmsg(p, "insert_rejects: out of memory");
		r = -ENOMEM;
		goto out;
	}
	for (size_t done = 0; done < n; ) {
		size_t m = n - done < PG_REJECT_CHUNK ? n - done : PG_REJECT_CHUNK;
		size_t len = (size_t)snprintf(sql, cap, "INSERT INTO fee_reject"
					      " (endpoint, reason, body, source) VALUES ");
		PGresult *res;

		for (size_t i = 0; i < m; i++) {
			const struct store_reject *x = &rj[done + i];

			if (x->len > 0x7fffffff) {
				pg_setmsg(p, "INSERT into fee_reject failed: body of %zu bytes "
					  "is too large", x->len);
				r = -EINVAL;
				goto out;
			}
			const char **v = &vals[PG_REJECT_PARAMS * i];

			v[0] = store_clean_text(x->endpoint, &copies[3 * i]);
			v[1] = store_clean_text(x->reason, &copies[3 * i + 1]);
			/* a NULL parameter is SQL NULL: an unknown sender */
			v[3] = x->source ? store_clean_text(x->source, &copies[3 * i + 2]) : NULL;
			if (!v[0] || !v[1] || (x->source && !v[3])) {
				pg_setmsg(p, "insert_rejects: out of memory");
				r = -ENOMEM;
				goto out;
			}
			/* The body goes as a binary parameter: verbatim, NULs and all. */
			v[2] = x->len ? x->body : "";
			lens[PG_REJECT_PARAMS * i + 2] = (int)x->len;
			fmts[PG_REJECT_PARAMS * i + 2] = 1;
			len += (size_t)snprintf(sql + len, cap - len, "%s($%zu,$%zu,$%zu,$%zu)",
						i ? "," : "", 4 * i + 1, 4 * i + 2, 4 * i + 3,
						4 * i + 4);
		}
		res = PQexecParams(p->conn, sql, (int)(PG_REJECT_PARAMS * m), NULL, vals, lens, fmts, 0);
		if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
			r = pg_fail(p, res, "INSERT into fee_reject");
		PQclear(res);
		for (size_t i = 0; i < 3 * m; i++) {
			free(copies[i]);
			copies[i] = NULL;
		}
		if (r < 0)
			goto out;
		done += m;
	}
out:
	if (copies)
		for (size_t i = 0; i < 3 * PG_REJECT_CHUNK; i++)
			free(copies[i]);
	free(copies);
	free(fmts);
	free(lens);
	free(vals);
	free(sql);
	return r;
}

/* ==== Settlement ==== */

static int pg_fetch_unsettled(struct store *s, int64_t after, size_t max,
			      struct store_settle *rows, size_t *ret_n)
{
	struct store_pg *p = pg_of(s);
	char a[24], m[24];
	const char *vals[2] = { a, m };
	PGresult *res = NULL;
	size_t got = 0;
	int r = 0;

	if (max == 0)
		goto done;
	snprintf(a, sizeof(a), "%lld", (long long)after);
	snprintf(m, sizeof(m), "%zu", max);
	res = PQexecParams(p->conn,
			   "SELECT f.ticket, f.login, f.volume::text, r.rate::text,"
			   " r.login IS NOT NULL"
			   " FROM fee f LEFT JOIN fee_rate r ON r.login = f.login"
			   " WHERE f.status = 'N' AND f.ticket > $1::bigint"
			   " ORDER BY f.ticket LIMIT $2::bigint",
			   2, NULL, vals, NULL, NULL, 0);
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		r = pg_fail(p, res, "SELECT unsettled rows from fee");
		goto out;
	}
	for (int i = 0; i < PQntuples(res) && got < max; i++, got++) {
		struct store_settle *x = &rows[got];

		x->ticket = pg_get_i64(res, i, 0);
		x->login = pg_get_i64(res, i, 1);
		x->volume = pg_get_dec(res, i, 2);
		if (strcmp(PQgetvalue(res, i, 4), "t"))
			x->rate = -1;
		else if ((x->rate = pg_get_dec(res, i, 3)) < 0)
			x->rate = -2;
		x->fee = 0;
	}
done:
	*ret_n = got;
out:
	PQclear(res);
	return r;
}

static int pg_settle(struct store *s, const struct store_settle *rows, size_t n)
{
	struct store_pg *p = pg_of(s);
	const char *vals[2];
	char *tickets = NULL, *fees = NULL;
	int r = 0;

	if (n == 0)
		return 0;
	r = pg_flush_begin(p);
	if (r < 0)
		return r;
	p->wrote = true;          /* maybe no row (settled elsewhere): nothing is answered */
	tickets = pg_i64_array(&rows[0].ticket, sizeof(*rows), n);
	fees = pg_dec_array(&rows[0].fee, sizeof(*rows), n, FEE_SCALE, 2);
	if (!tickets || !fees) {
		pg_setmsg(p, "settle: out of memory for %zu rows", n);
		r = -ENOMEM;
		goto out;
	}
	vals[0] = tickets;
	vals[1] = fees;
	r = pg_cmd_params(p, "UPDATE fee SET fee = u.fee, status = 'Y', settled_at = now()"
			  " FROM unnest($1::bigint[], $2::numeric[]) AS u(ticket, fee)"
			  " WHERE fee.ticket = u.ticket AND fee.status = 'N'",
			  2, vals, "UPDATE fee (settle)");
out:
	free(fees);
	free(tickets);
	return r;
}

static const char *const pg_schemes[] = { "postgresql", "postgres", NULL };

const struct store_ops store_pg_ops = {
	.version = STORE_OPS_VERSION,
	.name = "postgresql",
	.schemes = pg_schemes,
	.default_writers = 2,
	.open = pg_open,
	.close = pg_close,
	.reconnect = pg_reconnect,
	.migrate = pg_migrate,
	.exec = pg_exec,
	.begin = pg_begin,
	.commit = pg_commit,
	.rollback = pg_rollback,
	.max_ticket = pg_max_ticket,
	.lookup = pg_lookup,
	.insert = pg_insert,
	.insert_commit = pg_insert_commit,
	.insert_rejects = pg_insert_rejects,
	.fetch_unsettled = pg_fetch_unsettled,
	.settle = pg_settle,
	.cancel = pg_cancel,
};
