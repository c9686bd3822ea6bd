/*
 * store_sqlite.c - the SQLite backend: store_sqlite_ops, URL sqlite:///path.
 *
 * One struct store_sqlite is one sqlite3 handle on one database file, in WAL
 * mode, used by one thread at a time (a writer thread or the settle thread).
 * It owns the handle and its prepared statements, which are prepared on first
 * use with SQLITE_PREPARE_PERSISTENT and reused for every batch after that.
 * Concurrent writers (other connections, other feed processes) are
 * serialised by SQLite's write lock: begin() is BEGIN IMMEDIATE and waits up
 * to SQ_BUSY_MS for it; after that the caller gets -EAGAIN.
 *
 * Volume, rate and fee are stored as TEXT ("1.25", "9.38"): a DECIMAL or
 * NUMERIC declared type would give the column NUMERIC affinity and turn the
 * values into binary floating point.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "decimal.h"
#include "store.h"
#include "store_int.h"
#include "timeutil.h"

#ifndef SQLITE_OPEN_EXRESCODE          /* before 3.37; extended codes are also set below */
#define SQLITE_OPEN_EXRESCODE 0
#endif

#define SQ_BUSY_MS 5000
#define SQ_PREFIX "sqlite://"
#define SQ_NOW "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"

/* The statements of the batch protocol, prepared once per connection. */
enum sq_stmt_id {
	SQ_BEGIN,
	SQ_COMMIT,
	SQ_ROLLBACK,
	SQ_LOOKUP,
	SQ_MAXTICKET,
	SQ_INSERT,
	SQ_REJECT,
	SQ_FETCH,
	SQ_SETTLE,
	SQ_NSTMT
};

static const struct {
	const char *what;       /* for error messages */
	const char *sql;
} sq_stmt_sql[SQ_NSTMT] = {
	[SQ_BEGIN] = { "BEGIN IMMEDIATE", "BEGIN IMMEDIATE" },
	[SQ_COMMIT] = { "COMMIT", "COMMIT" },
	[SQ_ROLLBACK] = { "ROLLBACK", "ROLLBACK" },
	[SQ_MAXTICKET] = { "SELECT max(ticket) from fee", "SELECT max(ticket) FROM fee" },
	[SQ_LOOKUP] = { "SELECT from fee",
		"SELECT ticket, login, volume FROM fee WHERE ticket = ?1" },
	/* received_at is explicit: an adopted table's column has no default. */
	[SQ_INSERT] = { "INSERT into fee",
		"INSERT INTO fee (ticket, login, volume, status, received_at, source) "
		"VALUES (?1, ?2, ?3, 'N', ?4, ?5)" },
	[SQ_REJECT] = { "INSERT into fee_reject",
		"INSERT INTO fee_reject (received_at, endpoint, reason, body, source) "
		"VALUES (" SQ_NOW ", ?1, ?2, ?3, ?4)" },
	/* "status = 'N'" literally, so that the partial index fee_unsettled applies. */
	[SQ_FETCH] = { "SELECT unsettled from fee",
		"SELECT f.ticket, f.login, f.volume, r.rate FROM fee AS f "
		"LEFT JOIN fee_rate AS r ON r.login = f.login "
		"WHERE f.status = 'N' AND f.ticket > ?1 ORDER BY f.ticket LIMIT ?2" },
	[SQ_SETTLE] = { "UPDATE fee (settle)",
		"UPDATE fee SET fee = ?2, status = 'Y', settled_at = ?3 "
		"WHERE ticket = ?1 AND status = 'N'" },
};

struct store_sqlite {
	struct store base;                      /* first: the caller's view */
	sqlite3 *db;
	char *path;
	enum store_durability durability;
	sqlite3_stmt *stmt[SQ_NSTMT];           /* NULL until first use */
	bool holds_write_mu;
	bool background;
	uint64_t busy_start;                    /* mono ms of the current busy wait */
	sqlite3 *live;                          /* db for cancel(), under sq_cancel_mu */
	atomic_bool cancelled;
};

/* Guards every store's `live`: cancel() runs on another thread than the owner. */
static pthread_mutex_t sq_cancel_mu = PTHREAD_MUTEX_INITIALIZER;

/*
 * SQLite has one write lock per database. This process's connections (the
 * writers, the settler) take turns through this gate instead of SQLite's
 * busy handler, which sleeps in steps of up to 100 ms; and a background
 * (settle) connection lets any waiting writer go first, so settlement does
 * not hold up answers. Other processes still meet the busy handler.
 */
static pthread_mutex_t sq_gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sq_gate_cv = PTHREAD_COND_INITIALIZER;
static bool sq_gate_busy;
static int sq_gate_writers_waiting;

/* Waits for the gate, at most SQ_BUSY_MS like SQLite's own busy handler; then -EAGAIN. */
static int sq_write_lock(struct store_sqlite *q)
{
	struct timespec deadline;
	int r = 0;

	if (q->holds_write_mu)
		return 0;
	deadline = deadline_after_ms(SQ_BUSY_MS);
	pthread_mutex_lock(&sq_gate_mu);
	if (!q->background)
		sq_gate_writers_waiting++;
	while (sq_gate_busy || (q->background && sq_gate_writers_waiting > 0)) {
		if (atomic_load(&q->cancelled)) {
			r = -EINTR;
			break;
		}
		if (pthread_cond_timedwait(&sq_gate_cv, &sq_gate_mu, &deadline) == ETIMEDOUT) {
			r = -EAGAIN;
			break;
		}
	}
	if (!q->background)
		sq_gate_writers_waiting--;
	if (r == 0) {
		sq_gate_busy = true;
		q->holds_write_mu = true;
	}
	pthread_mutex_unlock(&sq_gate_mu);
	if (r == -EINTR)
		snprintf(q->base.errmsg, sizeof(q->base.errmsg),
			 "sqlite: waiting for the write lock: cancelled");
	else if (r < 0)
		snprintf(q->base.errmsg, sizeof(q->base.errmsg),
			 "sqlite: database is locked by another connection of this process for %d ms",
			 SQ_BUSY_MS);
	return r;
}

static void sq_write_unlock(struct store_sqlite *q)
{
	if (!q->holds_write_mu)
		return;
	q->holds_write_mu = false;
	pthread_mutex_lock(&sq_gate_mu);
	sq_gate_busy = false;
	pthread_cond_broadcast(&sq_gate_cv);
	pthread_mutex_unlock(&sq_gate_mu);
}

/* "now" as SQLite's strftime('%Y-%m-%dT%H:%M:%fZ') prints it, computed once per call. */
static size_t sq_now(char buf[static 32])
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	return (size_t)snprintf(buf, 32, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
				tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
				ts.tv_nsec / 1000000);
}

static struct store_sqlite *sq_of(struct store *s)
{
	return (struct store_sqlite *)s;
}

/* ==== Errors ==== */

/*
 * Whether a unique violation is the ticket key's: SQLite names the column,
 * "UNIQUE constraint failed: fee.ticket", whatever the key (INTEGER PRIMARY
 * KEY, PRIMARY KEY, UNIQUE, an adopted table's unique index). Any other key
 * (a second UNIQUE column, a table a trigger writes to) is the request's fault.
 */
static bool sq_is_ticket_key(const char *msg)
{
	static const char pre[] = "UNIQUE constraint failed: ";

	return msg && strncmp(msg, pre, sizeof(pre) - 1) == 0 &&
	       strcasecmp(msg + sizeof(pre) - 1, "fee.ticket") == 0;
}

/* Maps an (extended) SQLite result code and its message onto store.h's error classes. */
static int sq_errno(int rc, const char *msg)
{
	switch (rc) {
	case SQLITE_CONSTRAINT_PRIMARYKEY:
	case SQLITE_CONSTRAINT_UNIQUE:
		return sq_is_ticket_key(msg) ? -EEXIST : -EINVAL;
	}
	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EAGAIN;
	case SQLITE_CONSTRAINT:    /* CHECK, NOT NULL, FOREIGN KEY, RAISE(ABORT) in a trigger */
	case SQLITE_MISMATCH:
		return -EINVAL;
	case SQLITE_TOOBIG:        /* SQLITE_LIMIT_LENGTH: a value, not the database */
		return -E2BIG;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_PERM:
	case SQLITE_AUTH:
		return -EACCES;
	case SQLITE_INTERRUPT:
		return -EINTR;
	default:                /* CANTOPEN, IOERR, NOTADB, CORRUPT, ERROR (no such
				   table...), RANGE (a bind index: feed's bug), ... */
		return -EIO;
	}
}

/*
 * Fills errmsg with "sqlite: <what>: <SQLite's message>" (plus the OS error
 * when SQLite has one) and returns the errno for rc. Call right after the
 * failing call, before anything else touches the handle.
 */
__attribute__((format(printf, 3, 4)))
static int sq_fail(struct store_sqlite *q, int rc, const char *fmt, ...)
{
	char what[256], ebuf[128];
	const char *msg = q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc);
	int sys = q->db ? sqlite3_system_errno(q->db) : 0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (sys != 0 && ((rc & 0xff) == SQLITE_CANTOPEN || (rc & 0xff) == SQLITE_IOERR ||
			 (rc & 0xff) == SQLITE_FULL))
		snprintf(q->base.errmsg, sizeof(q->base.errmsg), "sqlite: %s: %s (%s)", what,
			 msg, strerror_r(sys, ebuf, sizeof(ebuf)));
	else if (strcmp(msg, sqlite3_errstr(rc)) != 0)
		snprintf(q->base.errmsg, sizeof(q->base.errmsg), "sqlite: %s: %s (%s)", what,
			 msg, sqlite3_errstr(rc));
	else
		snprintf(q->base.errmsg, sizeof(q->base.errmsg), "sqlite: %s: %s", what, msg);
	return sq_errno(rc, msg);
}

/* ==== Statements ==== */

static int sq_stmt(struct store_sqlite *q, enum sq_stmt_id id, sqlite3_stmt **ret)
{
	int rc;

	if (!q->db) {
		snprintf(q->base.errmsg, sizeof(q->base.errmsg),
			 "sqlite: %s: not connected to %s (reconnect failed)", sq_stmt_sql[id].what,
			 q->path);
		return -ENOTCONN;
	}
	if (!q->stmt[id]) {
		rc = sqlite3_prepare_v3(q->db, sq_stmt_sql[id].sql, -1, SQLITE_PREPARE_PERSISTENT,
					&q->stmt[id], NULL);
		if (rc != SQLITE_OK) {
			q->stmt[id] = NULL;
			return sq_fail(q, rc, "preparing %s", sq_stmt_sql[id].what);
		}
	}
	*ret = q->stmt[id];
	return 0;
}

static void sq_finalize_all(struct store_sqlite *q)
{
	for (size_t i = 0; i < SQ_NSTMT; i++) {
		sqlite3_finalize(q->stmt[i]);
		q->stmt[i] = NULL;
	}
}

/* Runs a prepared statement that returns no rows. */
static int sq_run(struct store_sqlite *q, enum sq_stmt_id id)
{
	sqlite3_stmt *st = NULL;
	int r, rc;

	r = sq_stmt(q, id, &st);
	if (r < 0)
		return r;
	rc = sqlite3_step(st);
	r = rc == SQLITE_DONE ? 0 : sq_fail(q, rc, "%s", sq_stmt_sql[id].what);
	sqlite3_reset(st);
	return r;
}

/* Runs ad-hoc SQL (one or more statements); what names it in errors. */
static int sq_exec_sql(struct store_sqlite *q, const char *sql, const char *what)
{
	int rc;

	if (!q->db) {
		snprintf(q->base.errmsg, sizeof(q->base.errmsg),
			 "sqlite: %s: not connected to %s (reconnect failed)", what, q->path);
		return -ENOTCONN;
	}
	rc = sqlite3_exec(q->db, sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return sq_fail(q, rc, "%s", what);
	return 0;
}

/*
 * A stored decimal as DEC_SCALE units, or -1 if it is NULL, negative or not
 * an exact decimal feed can read. Adopted classic tables may hold INTEGER or
 * REAL values; REAL is read through SQLite's text rendering of it.
 */
static int64_t sq_column_dec(sqlite3_stmt *st, int col)
{
	const char *txt;
	int64_t v;
	int len;

	switch (sqlite3_column_type(st, col)) {
	case SQLITE_NULL:
		return -1;
	case SQLITE_INTEGER:
		v = sqlite3_column_int64(st, col);
		if (v < 0 || v > INT64_MAX / DEC_ONE)
			return -1;
		return v * DEC_ONE;
	default:
		txt = (const char *)sqlite3_column_text(st, col);
		len = sqlite3_column_bytes(st, col);
		return store_parse_amount(txt, (size_t)len);
	}
}

/* ==== Connection ==== */

/* The path of a sqlite:///absolute/path URL, or NULL if url has another form. */
static const char *sq_url_path(const char *url)
{
	size_t plen = strlen(SQ_PREFIX);
	const char *path;

	if (!url || strncasecmp(url, SQ_PREFIX, plen) != 0)
		return NULL;
	path = url + plen;
	if (path[0] != '/' || path[1] == '\0' || path[strlen(path) - 1] == '/')
		return NULL;
	if (strlen(path) >= PATH_MAX || strpbrk(path, "?#"))
		return NULL;
	return path;
}

/*
 * WAL creates path-wal and path-shm next to the database, so the directory
 * itself must be writable, not only the file.
 */
static int sq_check_dir(struct store_sqlite *q)
{
	char dir[PATH_MAX], ebuf[128];
	char *slash;
	int e;

	snprintf(dir, sizeof(dir), "%s", q->path);
	slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	if (access(dir, W_OK | X_OK) == 0)
		return 0;
	e = errno;
	snprintf(q->base.errmsg, sizeof(q->base.errmsg),
		 "sqlite: cannot use %.300s: directory %.*s is not writable (WAL creates "
		 "-wal and -shm files next to the database): %s", q->path,
		 (int)(strlen(dir) > 100 ? 100 : strlen(dir)), dir, strerror_r(e, ebuf, sizeof(ebuf)));
	return -e;
}

/* Reads one text row from a statement that should return one (a PRAGMA). */
static int sq_query_text(struct store_sqlite *q, const char *sql, const char *what,
			 char *buf, size_t size)
{
	sqlite3_stmt *st = NULL;
	int r = 0, rc;

	rc = sqlite3_prepare_v2(q->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK) {
		r = sq_fail(q, rc, "%s: %s", q->path, what);
		goto out;
	}
	rc = sqlite3_step(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		r = sq_fail(q, rc, "%s: %s", q->path, what);
		goto out;
	}
	snprintf(buf, size, "%s", rc == SQLITE_ROW && sqlite3_column_text(st, 0) ?
		 (const char *)sqlite3_column_text(st, 0) : "");
out:
	sqlite3_finalize(st);
	return r;
}

/*
 * The busy handler: SQLite's own waits up to SQ_BUSY_MS too, but in sleeps of
 * up to 100 ms and deaf to cancel(); this one sleeps at most 10 ms at a time
 * and gives up as soon as the store is cancelled.
 */
static int sq_busy(void *arg, int count)
{
	struct store_sqlite *q = arg;
	uint64_t now = mono_ms();

	if (count == 0)
		q->busy_start = now;
	if (atomic_load(&q->cancelled) || now - q->busy_start >= SQ_BUSY_MS)
		return 0;
	usleep(count < 10 ? 1000u * (unsigned)(count + 1) : 10000u);
	return 1;
}

static void sq_cancel(struct store *s)
{
	struct store_sqlite *q = sq_of(s);

	pthread_mutex_lock(&sq_cancel_mu);
	atomic_store(&q->cancelled, true);
	if (q->live)
		sqlite3_interrupt(q->live);   /* thread-safe while the handle is open */
	pthread_mutex_unlock(&sq_cancel_mu);
	/* a wait at this process's gate ends too */
	pthread_mutex_lock(&sq_gate_mu);
	pthread_cond_broadcast(&sq_gate_cv);
	pthread_mutex_unlock(&sq_gate_mu);
}

/* Opens q->path and sets the connection up; on failure q->db may be left open. */
static int sq_connect(struct store_sqlite *q)
{
	char mode[32];
	int r, rc;

	r = sq_check_dir(q);
	if (r < 0)
		return r;
	rc = sqlite3_open_v2(q->path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
			     SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE, NULL);
	if (rc != SQLITE_OK) {
		int sys = q->db ? sqlite3_system_errno(q->db) : 0;

		r = sq_fail(q, rc, "cannot open %s", q->path);
		return sys > 0 ? -sys : r;
	}
	sqlite3_extended_result_codes(q->db, 1);
	sqlite3_busy_handler(q->db, sq_busy, q);
	pthread_mutex_lock(&sq_cancel_mu);
	q->live = q->db;
	pthread_mutex_unlock(&sq_cancel_mu);

	/* Also the first real access to the file: fails here if it is not a database. */
	r = sq_query_text(q, "PRAGMA journal_mode = WAL", "setting journal_mode=WAL",
			  mode, sizeof(mode));
	if (r < 0)
		return r;
	if (strcasecmp(mode, "wal") != 0) {
		snprintf(q->base.errmsg, sizeof(q->base.errmsg),
			 "sqlite: %s: cannot switch to WAL journal mode (still \"%s\"); is the "
			 "directory writable and the file system local?", q->path, mode);
		return -EIO;
	}
	r = sq_exec_sql(q, q->durability == STORE_DURABLE_FULL ? "PRAGMA synchronous = FULL" :
			"PRAGMA synchronous = NORMAL", "setting synchronous");
	if (r < 0)
		return r;
	/*
	 * Page cache per connection (grows only as used): the default 2 MB
	 * makes a batch of thousands of out-of-order tickets spill and re-read
	 * B-tree pages; 32 MB halves the time of a 100k-record batch.
	 */
	r = sq_exec_sql(q, "PRAGMA cache_size = -32768", "setting cache_size");
	if (r < 0)
		return r;
	/* Reading in WAL mode opens (creates) -wal and -shm: proves they work. */
	return sq_query_text(q, "SELECT count(*) FROM sqlite_master", "reading the schema",
			     mode, sizeof(mode));
}

static void sq_disconnect(struct store_sqlite *q)
{
	pthread_mutex_lock(&sq_cancel_mu);
	q->live = NULL;
	pthread_mutex_unlock(&sq_cancel_mu);
	sq_finalize_all(q);
	sqlite3_close(q->db);   /* rolls back an open transaction */
	q->db = NULL;
	sq_write_unlock(q);
}

static void sq_close(struct store *s)
{
	struct store_sqlite *q = sq_of(s);

	if (!q)
		return;
	sq_disconnect(q);
	free(q->path);
	free(q);
}

static int sq_open(const struct store_params *p, struct store **ret, char *err, size_t errsz)
{
	struct store_sqlite *q = NULL;
	const char *path = sq_url_path(p->url);
	int r;

	if (!path) {
		snprintf(err, errsz, "sqlite: unsupported URL \"%s\": the accepted form is "
			 "sqlite:///absolute/path/to/file.db", p->url ? p->url : "");
		return -EINVAL;
	}
	q = calloc(1, sizeof(*q));
	if (!q) {
		r = -ENOMEM;
		snprintf(err, errsz, "sqlite: out of memory");
		goto out;
	}
	q->base.ops = &store_sqlite_ops;
	q->durability = p->durability;
	q->background = p->background;
	q->path = strdup(path);
	if (!q->path) {
		r = -ENOMEM;
		snprintf(err, errsz, "sqlite: out of memory");
		goto out;
	}
	r = sq_connect(q);
	if (r < 0) {
		snprintf(err, errsz, "%s", q->base.errmsg);
		goto out;
	}
	*ret = &q->base;
	q = NULL;
out:
	sq_close(q ? &q->base : NULL);
	return r;
}

static int sq_reconnect(struct store *s)
{
	struct store_sqlite *q = sq_of(s);
	int r;

	sq_disconnect(q);
	atomic_store(&q->cancelled, false);
	q->base.errmsg[0] = '\0';
	r = sq_connect(q);
	if (r < 0)
		sq_disconnect(q);
	return r;
}

/* ==== Schema ==== */

/* The write lock serialises concurrent feed processes migrating at once. */
static int sq_migrate_lock(struct store *s)
{
	struct store_sqlite *q = sq_of(s);
	int r = sq_write_lock(q);

	if (r == 0)
		r = sq_exec_sql(q, "BEGIN IMMEDIATE", "migrate: BEGIN IMMEDIATE");
	if (r < 0)
		sq_write_unlock(q);
	return r;
}

static int sq_migrate_unlock(struct store *s, int r)
{
	struct store_sqlite *q = sq_of(s);

	if (r == 0)
		r = sq_exec_sql(q, "COMMIT", "migrate: COMMIT");
	if (r < 0 && q->db && !sqlite3_get_autocommit(q->db))
		sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
	sq_write_unlock(q);
	return r;
}

static int sq_migrate_exec(struct store *s, const char *what, const char *sql)
{
	char w[128];

	snprintf(w, sizeof(w), "migrate: %s", what);
	return sq_exec_sql(sq_of(s), sql, w);
}

static int sq_migrate_query(struct store *s, const char *what, const char *sql,
			    struct store_qrow *ret)
{
	struct store_sqlite *q = sq_of(s);
	sqlite3_stmt *st = NULL;
	int r = 0, rc;

	rc = sqlite3_prepare_v2(q->db, sql, -1, &st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		ret->found = true;
		for (int c = 0; c < sqlite3_column_count(st) && c < STORE_QROW_COLS; c++) {
			const unsigned char *v = sqlite3_column_text(st, c);

			ret->null[c] = !v;
			snprintf(ret->val[c], sizeof(ret->val[c]), "%s", v ? (const char *)v : "");
		}
	} else if (rc != SQLITE_DONE) {
		r = sq_fail(q, rc, "migrate: %s", what);
	}
	sqlite3_finalize(st);
	return r;
}

static const struct store_migrate_ops sq_migrate_ops = {
	.lock = sq_migrate_lock,
	.unlock = sq_migrate_unlock,
	.exec = sq_migrate_exec,
	.query = sq_migrate_query,
	.q_table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '$T'",
	.q_column = "SELECT lower(type), NULL, NULL,"
		    " CASE WHEN \"notnull\" THEN 'NO' ELSE 'YES' END, dflt_value"
		    " FROM pragma_table_info('$T') WHERE lower(name) = '$C'",
	.q_index = "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '$I'",
	/* the rowid alias, or a one-column unique index */
	.q_ticket_key = "SELECT 1 WHERE (SELECT count(*) FROM pragma_table_info('fee')"
			"  WHERE lower(name) = 'ticket' AND pk = 1 AND lower(type) = 'integer')"
			" AND (SELECT count(*) FROM pragma_table_info('fee') WHERE pk > 0) = 1"
			" OR EXISTS (SELECT 1 FROM pragma_index_list('fee') AS il"
			"  WHERE il.\"unique\" AND NOT il.partial"
			"  AND (SELECT count(*) FROM pragma_index_info(il.name)) = 1"
			"  AND (SELECT lower(name) FROM pragma_index_info(il.name)) = 'ticket')",
	.create_fee = "CREATE TABLE fee ("
		      " ticket INTEGER PRIMARY KEY,"
		      " login INTEGER NOT NULL,"
		      " volume TEXT NOT NULL,"
		      " status TEXT NOT NULL DEFAULT 'N',"
		      " fee TEXT,"
		      " received_at TEXT NOT NULL DEFAULT (" SQ_NOW "),"
		      " settled_at TEXT,"
		      " source TEXT)",
	.create_rate = "CREATE TABLE IF NOT EXISTS fee_rate ("
		       " login INTEGER PRIMARY KEY,"
		       " rate TEXT NOT NULL)",
	.create_reject = "CREATE TABLE IF NOT EXISTS fee_reject ("
			 " id INTEGER PRIMARY KEY AUTOINCREMENT,"
			 " received_at TEXT NOT NULL DEFAULT (" SQ_NOW "),"
			 " endpoint TEXT NOT NULL,"
			 " reason TEXT NOT NULL,"
			 " body BLOB NOT NULL,"
			 " source TEXT)",
	.create_schema = "CREATE TABLE IF NOT EXISTS feed_schema (version INTEGER NOT NULL)",
	.add_cols = {
		{ "status", "ALTER TABLE fee ADD COLUMN status TEXT NOT NULL DEFAULT 'N'", NULL },
		{ "fee", "ALTER TABLE fee ADD COLUMN fee TEXT", NULL },
		/* ADD COLUMN takes no expression default; insert() sets it explicitly. */
		{ "received_at", "ALTER TABLE fee ADD COLUMN received_at TEXT", NULL },
		{ "settled_at", "ALTER TABLE fee ADD COLUMN settled_at TEXT", NULL },
		{ "source", "ALTER TABLE fee ADD COLUMN source TEXT", NULL },
	},
	.add_reject_source = "ALTER TABLE fee_reject ADD COLUMN source TEXT",
	.add_key = "CREATE UNIQUE INDEX fee_ticket ON fee (ticket)",
	.index_name = "fee_unsettled",
	.create_index = "CREATE INDEX fee_unsettled ON fee (ticket) WHERE status = 'N'",
	/* never waited for: BEGIN IMMEDIATE holds the database's one write lock */
	.ddl_lock_timeout_s = SQ_BUSY_MS / 1000,
	.lock_hint = "the processes that have the database open (fuser)",
};

static int sq_migrate(struct store *s)
{
	return store_migrate(s, &sq_migrate_ops);
}

static int sq_exec(struct store *s, const char *sql)
{
	struct store_sqlite *q = sq_of(s);
	char what[96];

	snprintf(what, sizeof(what), "exec \"%.60s%s\"", sql, strlen(sql) > 60 ? "..." : "");
	return sq_exec_sql(q, sql, what);
}

/* ==== Transactions ==== */

static int sq_begin(struct store *s)
{
	struct store_sqlite *q = sq_of(s);

	if (q->db && !sqlite3_get_autocommit(q->db)) {
		snprintf(q->base.errmsg, sizeof(q->base.errmsg),
			 "sqlite: BEGIN: a transaction is already open (missing rollback?)");
		return -EALREADY;
	}
	if (atomic_load(&q->cancelled)) {
		snprintf(q->base.errmsg, sizeof(q->base.errmsg), "sqlite: BEGIN: cancelled (reconnect first)");
		return -EINTR;
	}
	int r = sq_write_lock(q);
	if (r < 0)
		return r;
	r = sq_run(q, SQ_BEGIN);
	if (r < 0)
		sq_write_unlock(q);
	return r;
}

static int sq_commit(struct store *s)
{
	struct store_sqlite *q = sq_of(s);
	int r = sq_run(q, SQ_COMMIT);

	if (r == 0 || !q->db || sqlite3_get_autocommit(q->db))
		sq_write_unlock(q);
	return r;
}

static int sq_rollback(struct store *s)
{
	struct store_sqlite *q = sq_of(s);

	int r = 0;

	/* SQLite may already have rolled back by itself (IOERR, FULL, NOMEM...). */
	if (q->db && !sqlite3_get_autocommit(q->db))
		r = sq_run(q, SQ_ROLLBACK);
	sq_write_unlock(q);
	return r;
}

/* ==== The batch primitives ==== */

static int sq_max_ticket(struct store *s, int64_t *ret)
{
	struct store_sqlite *q = sq_of(s);
	sqlite3_stmt *st = NULL;
	int r, rc;

	r = sq_stmt(q, SQ_MAXTICKET, &st);
	if (r < 0)
		return r;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*ret = sqlite3_column_type(st, 0) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 0);
	else
		r = sq_fail(q, rc, "%s", sq_stmt_sql[SQ_MAXTICKET].what);
	sqlite3_reset(st);
	return r;
}

static int sq_lookup(struct store *s, const int64_t *tickets, size_t n,
		     struct store_row *rows, size_t *ret_n)
{
	struct store_sqlite *q = sq_of(s);
	sqlite3_stmt *st = NULL;
	size_t found = 0;
	int r, rc;

	r = sq_stmt(q, SQ_LOOKUP, &st);
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_int64(st, 1, tickets[i]);
		rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			if (found == n) {
				/* Only possible without a unique key on ticket. */
				snprintf(q->base.errmsg, sizeof(q->base.errmsg),
					 "sqlite: SELECT from fee: ticket %lld is stored more than "
					 "once (no unique key on fee.ticket: run migrate)",
					 (long long)tickets[i]);
				sqlite3_reset(st);
				return -EIO;
			}
			rows[found].ticket = sqlite3_column_int64(st, 0);
			rows[found].login = sqlite3_column_int64(st, 1);
			rows[found].volume = sq_column_dec(st, 2);
			found++;
			rc = sqlite3_step(st);
			if (rc == SQLITE_ROW) {
				snprintf(q->base.errmsg, sizeof(q->base.errmsg),
					 "sqlite: SELECT from fee: ticket %lld is stored more than "
					 "once (no unique key on fee.ticket: run migrate)",
					 (long long)tickets[i]);
				sqlite3_reset(st);
				return -EIO;
			}
		}
		if (rc != SQLITE_DONE) {
			r = sq_fail(q, rc, "SELECT from fee (ticket %lld)", (long long)tickets[i]);
			sqlite3_reset(st);
			return r;
		}
		sqlite3_reset(st);
	}
	*ret_n = found;
	return 0;
}

static int sq_insert(struct store *s, const struct record *recs, const char *const *srcs,
		     size_t n)
{
	struct store_sqlite *q = sq_of(s);
	char vol[DEC_STRMAX], now[32];
	sqlite3_stmt *st = NULL;
	size_t len;
	int r, rc;

	r = sq_stmt(q, SQ_INSERT, &st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 4, now, (int)sq_now(now), SQLITE_STATIC); /* bindings survive reset */
	for (size_t i = 0; i < n; i++) {
		const char *src = srcs ? srcs[i] : NULL;

		/* STATIC: the caller's text outlives the call; bound again when it changes */
		if (i == 0 || (srcs && src != srcs[i - 1])) {
			if (src)
				sqlite3_bind_text(st, 5, src, (int)strnlen(src, STORE_SOURCE_MAX),
						  SQLITE_STATIC);
			else
				sqlite3_bind_null(st, 5);
		}
		len = dec_format(recs[i].volume, DEC_SCALE, 0, vol);
		sqlite3_bind_int64(st, 1, recs[i].ticket);
		sqlite3_bind_int64(st, 2, recs[i].login);
		sqlite3_bind_text(st, 3, vol, (int)len, SQLITE_TRANSIENT);
		rc = sqlite3_step(st);
		if (rc != SQLITE_DONE) {
			r = sq_fail(q, rc, "INSERT into fee (ticket %lld)", (long long)recs[i].ticket);
			sqlite3_reset(st);
			return r;
		}
		sqlite3_reset(st);
	}
	return 0;
}

static int sq_insert_rejects(struct store *s, const struct store_reject *rj, size_t n)
{
	struct store_sqlite *q = sq_of(s);
	sqlite3_stmt *st = NULL;
	int r = 0, rc;

	r = sq_stmt(q, SQ_REJECT, &st);
	if (r < 0)
		return r;
	for (size_t i = 0; i < n && r == 0; i++) {
		/* STATIC: no copy of a body of up to 64 MiB; unbound again below. */
		sqlite3_bind_text(st, 1, rj[i].endpoint ? rj[i].endpoint : "", -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, rj[i].reason ? rj[i].reason : "", -1, SQLITE_STATIC);
		if (rj[i].len > 0 && rj[i].body)
			rc = sqlite3_bind_blob64(st, 3, rj[i].body, rj[i].len, SQLITE_STATIC);
		else
			rc = sqlite3_bind_zeroblob(st, 3, 0);
		if (rc == SQLITE_OK && rj[i].source)
			rc = sqlite3_bind_text(st, 4, rj[i].source, -1, SQLITE_STATIC);
		if (rc == SQLITE_OK)
			rc = sqlite3_step(st);
		if (rc != SQLITE_DONE)
			r = sq_fail(q, rc, "INSERT into fee_reject (%zu bytes)", rj[i].len);
		sqlite3_reset(st);
		sqlite3_clear_bindings(st);
	}
	return r;
}

static int sq_fetch_unsettled(struct store *s, int64_t after, size_t max,
			      struct store_settle *rows, size_t *ret_n)
{
	struct store_sqlite *q = sq_of(s);
	sqlite3_stmt *st = NULL;
	size_t n = 0;
	int r, rc = SQLITE_DONE;

	r = sq_stmt(q, SQ_FETCH, &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, after);
	sqlite3_bind_int64(st, 2, max > (size_t)INT64_MAX ? INT64_MAX : (int64_t)max);
	while (n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		rows[n].ticket = sqlite3_column_int64(st, 0);
		rows[n].login = sqlite3_column_int64(st, 1);
		rows[n].volume = sq_column_dec(st, 2);
		if (sqlite3_column_type(st, 3) == SQLITE_NULL)
			rows[n].rate = -1;
		else if ((rows[n].rate = sq_column_dec(st, 3)) < 0)
			rows[n].rate = -2;
		rows[n].fee = 0;
		n++;
	}
	if (n < max && rc != SQLITE_DONE) {
		r = sq_fail(q, rc, "%s", sq_stmt_sql[SQ_FETCH].what);
		sqlite3_reset(st);
		return r;
	}
	sqlite3_reset(st);      /* ends the implicit read transaction */
	*ret_n = n;
	return 0;
}

static int sq_settle(struct store *s, const struct store_settle *rows, size_t n)
{
	struct store_sqlite *q = sq_of(s);
	char fee[DEC_STRMAX], now[32];
	sqlite3_stmt *st = NULL;
	size_t len;
	int r, rc;

	r = sq_stmt(q, SQ_SETTLE, &st);
	if (r < 0)
		return r;
	sqlite3_bind_text(st, 3, now, (int)sq_now(now), SQLITE_STATIC);
	for (size_t i = 0; i < n; i++) {
		len = dec_format(rows[i].fee, FEE_SCALE, FEE_SCALE, fee);
		sqlite3_bind_int64(st, 1, rows[i].ticket);
		sqlite3_bind_text(st, 2, fee, (int)len, SQLITE_TRANSIENT);
		rc = sqlite3_step(st);
		if (rc != SQLITE_DONE) {
			r = sq_fail(q, rc, "UPDATE fee (settle ticket %lld)", (long long)rows[i].ticket);
			sqlite3_reset(st);
			return r;
		}
		sqlite3_reset(st);
	}
	return 0;
}

static const char *const sq_schemes[] = { "sqlite", NULL };

const struct store_ops store_sqlite_ops = {
	.version = STORE_OPS_VERSION,
	.name = "sqlite",
	.schemes = sq_schemes,
	.default_writers = 1,
	.open = sq_open,
	.close = sq_close,
	.reconnect = sq_reconnect,
	.migrate = sq_migrate,
	.exec = sq_exec,
	.begin = sq_begin,
	.commit = sq_commit,
	.rollback = sq_rollback,
	.max_ticket = sq_max_ticket,
	.lookup = sq_lookup,
	.insert = sq_insert,
	.insert_rejects = sq_insert_rejects,
	.fetch_unsettled = sq_fetch_unsettled,
	.settle = sq_settle,
	.cancel = sq_cancel,
};
