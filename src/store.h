/*
 * store.h - the storage interface: one const struct store_ops per backend
 * (store_sqlite.c, store_pg.c, store_mysql.c), chosen by URL scheme.
 *
 * Backends implement small primitives (lookup, insert, ...) inside a
 * transaction the caller opens; the batch algorithm shared by all of them
 * (idempotency, conflicts, rejects, splitting a batch around a bad record)
 * lives in store.c. A struct store is one connection and is used by one
 * thread at a time (only cancel() comes from another thread). Backends
 * never log; they return a negative errno and leave a message in s->errmsg.
 *
 * Error classes, the same for every backend (the one contract; each
 * backend's classification function says how its codes map onto it):
 *   -EAGAIN     transient, retry the transaction now: deadlock, serialization
 *               failure, lock wait timeout, SQLite BUSY/LOCKED.
 *   -ENOTCONN   the connection is gone or unusable: connection lost, server
 *               shutting down, too many connections, cannot connect.
 *               Caller backs off, calls reconnect(), retries.
 *   -EEXIST     unique violation of the ticket key only (another writer stored
 *               the ticket since lookup), told by the key the server names:
 *               PostgreSQL's constraint name, MySQL's key name in error 1062
 *               (and its entry, one of the tickets inserted: MariaDB does not
 *               name the table), SQLite's "UNIQUE constraint failed:
 *               fee.ticket". Caller rolls back, looks the batch up again and
 *               retries. PostgreSQL and MySQL read the ticket key's names once
 *               per connection; a key they do not know is -EEXIST once more
 *               (added or renamed since?): they read the names again before
 *               the next insert, and the retry is classified by them.
 *   -EINVAL     the database refuses a value of this request: SQLSTATE class
 *               22 (data exception), class 23 (integrity constraint: check,
 *               not null, foreign key, any unique key but the ticket's), a
 *               trigger's deliberate refusal (PostgreSQL RAISE, MySQL SIGNAL,
 *               SQLite RAISE(ABORT)). Caller isolates the request.
 *   -E2BIG      a server limit met by this request or batch: MySQL 1153 and
 *               1301 and 1105 about max_allowed_packet, PostgreSQL class 54,
 *               SQLITE_TOOBIG. Caller splits the batch; a request that fails
 *               alone is refused; a fee_reject body is kept truncated.
 *   other       an outage (schema missing, permission, disk full, anything
 *               unclassified): caller logs, backs off and retries; nothing
 *               is answered.
 *
 * Why only those are "permanent": refusing a request answers FALSE, which a
 * client takes as final. That is right when the request itself is what the
 * database refuses (its value, its size: -EINVAL, -E2BIG); other requests
 * still go in. An error about the database rather than the request (a
 * missing table or column, a permission, a full disk) would hit every
 * request alike: taken as permanent it would turn every record into a reject
 * - data loss by rejection, and fee_reject may be just as unusable. So it
 * stays an outage, retried until the operator fixes it, with nothing
 * answered FALSE. A trigger's RAISE/SIGNAL is the owner's own refusal of the
 * row (SQLite even reports it as a constraint), so it refuses the request. A
 * data error can follow a schema change (a column narrowed): the requests
 * it hits are refused, but each one is kept in fee_reject with the reason.
 * Classes are decided by SQLSTATE class where the server has
 * one (store_sqlstate_errno() in store.c, after each backend's own codes), so a data error feed does not list by number still isolates; an
 * error with no class (or an unknown one) is retried. For the same reason a
 * rejected body is only ever answered FALSE once it is stored (or, refused
 * even truncated, logged), never dropped because fee_reject is unusable.
 */
#ifndef FEED_STORE_H
#define FEED_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol.h"

#define STORE_OPS_VERSION 3       /* 2: insert() takes the senders, store_reject.source;
                                     3: insert_commit() */
#define STORE_SCHEMA_VERSION 2    /* 2: fee.source, fee_reject.source */

/*
 * Bytes of a sender kept (store_req.source, store_reject.source): a
 * certificate name or a peer address, ASCII; MariaDB's column is VARCHAR(255).
 */
#define STORE_SOURCE_MAX 255

enum store_durability { STORE_DURABLE_FULL = 0, STORE_DURABLE_NORMAL = 1 };

struct store_params {
	const char *url;              /* full URL, scheme included */
	const char *password;         /* from password_file, or NULL (URL may hold one) */
	enum store_durability durability;
	int connect_timeout;          /* seconds */
	bool background;              /* settle connection: yields to the writers where
					 the database has one write lock (SQLite) */
};

/* An existing fee row, as found by lookup(). */
struct store_row {
	int64_t ticket;
	int64_t login;
	int64_t volume;               /* DEC_SCALE units; -1 if the stored value is not
					 a non-negative exact decimal feed can read */
};

/* A rejected request, stored verbatim in fee_reject. */
struct store_reject {
	const char *endpoint;         /* where it arrived, e.g. "tcp://127.0.0.1:5555" */
	const char *reason;           /* the text sent back after "FALSE: " */
	const void *body;             /* the request bytes, verbatim (may hold NULs) */
	size_t len;
	const char *source;           /* the sender, or NULL if unknown (SQL NULL) */
};

/* A row to settle: fetched with the login's rate, written back with its fee. */
struct store_settle {
	int64_t ticket;
	int64_t login;
	int64_t volume;               /* DEC_SCALE units; -1 if unreadable or negative */
	int64_t rate;                 /* DEC_SCALE units (>= 0); -1 if the login has no
					 fee_rate row, -2 if its rate is unreadable or negative */
	int64_t fee;                  /* FEE_SCALE units; set by the caller before settle() */
};

/*
 * One connection. Each backend embeds this as the first member of its own
 * struct (struct store_pg { struct store base; PGconn *conn; ... }) and sets
 * base.ops in open(). errmsg holds the last error, "" if none.
 * durability says, after open(), how commits reach the disk as read back from
 * the server ("synchronous_commit = on"), "" if the backend has nothing to
 * say; durability_warn is set when that is weaker than durability = full
 * (accepted with normal). The caller logs it once.
 */
struct store {
	const struct store_ops *ops;
	char errmsg[512];
	char durability[384];
	bool durability_warn;
};

struct store_ops {
	int version;                  /* STORE_OPS_VERSION */
	const char *name;             /* "sqlite", "postgresql", "mysql" */
	const char *const *schemes;   /* URL schemes this backend takes, NULL-terminated */
	/* Traits: what the rest of feed needs to know about a backend, asked here
	   rather than by comparing ops pointers. */
	int default_writers;          /* writer threads when writers = 0: 1 where the
					 database has one write lock (SQLite), else 2 */

	/* Connects. On failure returns -errno and writes the reason into err. */
	int (*open)(const struct store_params *p, struct store **ret, char *err, size_t errsz);
	void (*close)(struct store *s);                  /* NULL-safe */
	int (*reconnect)(struct store *s);

	/*
	 * Creates the schema or brings it to STORE_SCHEMA_VERSION: fee, fee_rate,
	 * fee_reject, feed_schema. Adopts a classic fee(ticket, login, volume,
	 * status) table keeping its rows. Idempotent; safe when several feed
	 * instances run it at once. Runs its own transaction(s). Errors, the
	 * same on every backend: -EPROTO feed_schema holds a version newer than
	 * STORE_SCHEMA_VERSION (nothing changed); -EINVAL an existing fee table
	 * feed cannot adopt (duplicate tickets, a required column missing);
	 * -EAGAIN a lock waited for too long (another migration, a session
	 * holding fee); else the classes above.
	 */
	int (*migrate)(struct store *s);
	/* Runs one SQL statement outside the batch protocol (migration, tests). */
	int (*exec)(struct store *s, const char *sql);

	int (*begin)(struct store *s);
	int (*commit)(struct store *s);
	int (*rollback)(struct store *s);                /* safe to call after any error */

	/* The largest ticket in fee, 0 if it is empty. Inside the caller's transaction. */
	int (*max_ticket)(struct store *s, int64_t *ret);
	/* Rows of fee whose ticket is in tickets[0..n): at most n into rows, count in *ret_n. */
	int (*lookup)(struct store *s, const int64_t *tickets, size_t n,
		      struct store_row *rows, size_t *ret_n);
	/*
	 * Inserts recs[0..n) with status 'N' and received_at = now, and
	 * source = srcs[i] (the sender; NULL: unknown, SQL NULL). srcs may be
	 * NULL (every sender unknown); neighbours mostly share one pointer (one
	 * request's records), which backends may use to bind it once. All or error.
	 */
	int (*insert)(struct store *s, const struct record *recs, const char *const *srcs,
		      size_t n);
	/*
	 * Optional (NULL: the caller runs insert() then commit()). insert() and
	 * commit() of the caller's transaction in one round trip where the
	 * backend can (PostgreSQL: BEGIN, a one-record INSERT and COMMIT in
	 * one libpq pipeline). Errors are insert()'s or commit()'s, classified alike;
	 * after one the caller rolls back. Nothing may be added to the
	 * transaction after it.
	 */
	int (*insert_commit)(struct store *s, const struct record *recs,
			     const char *const *srcs, size_t n);
	/* Inserts rejected requests into fee_reject with received_at = now. */
	int (*insert_rejects)(struct store *s, const struct store_reject *r, size_t n);

	/*
	 * Up to max rows with status 'N' and ticket > after, by ticket, with the
	 * login's rate (LEFT JOIN fee_rate). Outside a transaction is fine.
	 */
	int (*fetch_unsettled)(struct store *s, int64_t after, size_t max,
			       struct store_settle *rows, size_t *ret_n);
	/*
	 * For each row: fee, status 'Y', settled_at = now, only WHERE status = 'N'
	 * (so that two instances settling the same row agree). Inside a transaction.
	 */
	int (*settle)(struct store *s, const struct store_settle *rows, size_t n);

	/*
	 * Cancels, from another thread, the call the owner has in progress on s
	 * (a statement, a lock wait, a reconnect): it fails soon with an error,
	 * and so does every call after it until the owner's next reconnect(),
	 * which also ends the server's side of the cancelled session. Returns at
	 * once (never waits for the server: a stalled one would not answer).
	 * Safe at any time between open() and close(), never concurrently with close().
	 */
	void (*cancel)(struct store *s);
};

extern const struct store_ops store_sqlite_ops;
extern const struct store_ops store_pg_ops;
extern const struct store_ops store_mysql_ops;

/* ==== store.c: registry and the shared batch algorithm ==== */

/* The backend for url's scheme, or NULL. */
const struct store_ops *store_find(const char *url);

/* Copies url with any password replaced by "***" (for logs and status): url_redact(). */
void store_url_redact(const char *url, char *buf, size_t size);


/* ==== store.c: the batch algorithm shared by all backends ==== */

/* One request as the batch writer sees it. */
struct store_req {
	const struct record *recs;    /* parsed records; n = 0 if rejected before */
	size_t n;
	const char *endpoint;
	const char *source;           /* the sender: client certificate name (CURVE) or peer
					 address, at most STORE_SOURCE_MAX bytes; "" or NULL if
					 unknown, stored as SQL NULL in fee.source and
					 fee_reject.source */
	const void *body;             /* verbatim request bytes, for fee_reject */
	size_t len;
	bool bad_input;               /* in: rejected by the parser, reason set; never changes */
	/* store.c's own state; zero before the first store_write() */
	bool refused;                 /* the database refused one of its records */
	bool done;                    /* its outcome is committed: a retry skips it */
	unsigned char keep;           /* how much of its body fee_reject is offered */
	/* out */
	bool rejected;                /* answered FALSE */
	bool unstored;                /* rejected, and the database would not store it even
					 truncated: the caller logs it instead */
	size_t dup;                   /* accepted: how many of its records were stored already
					 (identical re-sends), not inserted again */
	char reason[256];             /* why (without "FALSE: "); in for bad_input */
};

/* Scratch space of one writer, sized for the largest batch. Owned by the writer. */
struct store_batch;

/* cap: most records in one call. Returns NULL on allocation failure. */
struct store_batch *store_batch_new(size_t cap);
void store_batch_free(struct store_batch **b);

/*
 * Rolls back after an error, keeping that error in s->errmsg (a failed
 * ROLLBACK is appended to it, never put in its place). Returns rollback's result.
 */
int store_rollback(struct store *s);

/*
 * Commits the requests reqs[0..n) in one transaction (or a few, when a
 * request the database refuses (-EINVAL, -E2BIG) has to be isolated: the
 * batch is split in halves until it stands alone, for its records as for
 * its body in fee_reject): new records inserted,
 * identical re-sends accepted, conflicting requests and parser-rejected ones
 * stored in fee_reject and marked rejected with a reason. Returns 0 when
 * every request has its outcome committed; otherwise a negative errno of
 * the classes above, and the caller retries the whole call: requests whose
 * outcome was already committed (done) are skipped, the others decided anew.
 */
int store_write(struct store *s, struct store_batch *b, struct store_req **reqs, size_t n);

#endif
