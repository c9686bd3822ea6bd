/*
 * store_int.h - what the backends share and nothing else of feed needs:
 * reading values the servers print, and the migration driver
 * (store_migrate.c) with the catalog and DDL hooks each backend gives it.
 * Include it from store_*.c only; the rest of feed sees store.h.
 */
#ifndef FEED_STORE_INT_H
#define FEED_STORE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define STORE_STR_(x) #x
#define STORE_STR(x) STORE_STR_(x)

/* ==== store.c: values as the servers print them ==== */

/*
 * A (possibly negative) int64 printed by the server, s[0..len). 0, or
 * -EINVAL (s NULL, not an integer), -ERANGE (outside int64). *ret untouched
 * on failure.
 */
int store_parse_i64(const char *s, size_t len, int64_t *ret);

/*
 * A non-negative exact decimal at DEC_SCALE ("1.25", "1.25000000000",
 * "3"), or -1 if s is NULL (SQL NULL), negative or not a decimal feed can
 * read exactly: struct store_row's and struct store_settle's convention.
 */
int64_t store_parse_amount(const char *s, size_t len);

/*
 * The names of fee's ticket keys, as a server backend read them, to tell a
 * ticket race (-EEXIST) from another key's violation (-EINVAL) by the key
 * name the server reports (store.h). Read once per connection, before an
 * insert; a name not among them read in an earlier transaction may be a key
 * added or renamed since: store_keys_class() says -EEXIST once and marks them
 * stale, so that they are read again before the retry.
 */
struct store_keys {
	char names[256];              /* " name name " */
	bool known;                   /* read since connect or since a doubt */
	unsigned long txn, read_txn;  /* transactions begun; the one names were read in */
};

static inline void store_keys_begin(struct store_keys *k)
{
	k->txn++;
}

/* Starts reading the names anew. */
void store_keys_reset(struct store_keys *k);
/* Adds one name; one that does not fit is left out (retried once more, then -EINVAL). */
void store_keys_add(struct store_keys *k, const char *name);
/* All names read, in this transaction. */
void store_keys_done(struct store_keys *k);
/* The class of a unique violation of the key name[0..len) on fee. */
int store_keys_class(struct store_keys *k, const char *name, size_t len);

/*
 * The standard SQLSTATE classes -> store.h's error classes, for a code the
 * backend does not know more precisely: 08 connection exception -ENOTCONN,
 * 40001 serialization failure -EAGAIN, 22 data exception and 23 integrity
 * constraint -EINVAL (the request's values), 54 program limit -E2BIG (its
 * size); 42 (no such table, permission), 53 (resources), HY000 and anything
 * else, or no state at all, say nothing about the request: -EIO, an outage.
 */
int store_sqlstate_errno(const char *state);

/*
 * Text for a server's text column: s itself if it is valid UTF-8, else a
 * copy in *ret_copy (the caller frees it) with each bad byte as '?', so that
 * a message cut inside a character does not make the server refuse a whole
 * reject. "" for NULL; NULL if out of memory.
 */
const char *store_clean_text(const char *s, char **ret_copy);

/* vsnprintf into s->errmsg. */
void store_setmsg(struct store *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ==== store_migrate.c: the one migration driver ==== */

#define STORE_QROW_COLS 5
#define STORE_QROW_LEN 64

/* The first row of a catalog query, as text (cut to STORE_QROW_LEN - 1 bytes). */
struct store_qrow {
	bool found;                   /* the query returned a row */
	bool null[STORE_QROW_COLS];
	char val[STORE_QROW_COLS][STORE_QROW_LEN];
};

/*
 * The columns an existing fee table may lack: a classic fee(ticket, login,
 * volume, status) table all of them, feed's schema 1 source.
 */
enum { STORE_ADD_COLS = 5 };

/*
 * What a backend gives the migration driver: a few driver calls and the SQL
 * text of its catalog queries and DDL. In catalog queries $T stands for a
 * table, $C for a column and $I for an index: names of feed's own schema
 * ([a-z_] only), substituted as they are.
 */
struct store_migrate_ops {
	/*
	 * Serialises migrations between feed processes (bounded wait: -EAGAIN
	 * with a message) and opens the migration's transaction where DDL is
	 * transactional; sets the DDL lock timeout below. On failure it
	 * leaves nothing held and no transaction open.
	 */
	int (*lock)(struct store *s);
	/* Commits (r == 0) or rolls back, releases the lock; returns r or a COMMIT's error. */
	int (*unlock)(struct store *s, int r);
	/* Runs one statement; what names it in errmsg. */
	int (*exec)(struct store *s, const char *what, const char *sql);
	/* Runs one query, its first row into *ret (ret->found false if none). */
	int (*query)(struct store *s, const char *what, const char *sql, struct store_qrow *ret);
	/*
	 * The ALTER that widens fee's column col, as read by q_column, without
	 * losing a value (ids to 64 bits, volume to DEC_SCALE fractional digits
	 * and 11 integer ones). NULL: the backend never widens (SQLite's types
	 * are the values').
	 */
	void (*widen_sql)(const char *col, const struct store_qrow *c, char *sql, size_t size);
	bool widen_best_effort;       /* a refused widening is undone by a savepoint and
					 skipped (a view depends on the column) */

	const char *q_table;          /* a row iff table $T exists */
	/* data_type, numeric_precision, numeric_scale, is_nullable (YES/NO),
	   column_default of $T.$C; no row if there is no such column */
	const char *q_column;
	const char *q_index;          /* a row iff index $I exists (on fee) */
	const char *q_ticket_key;     /* a row iff fee(ticket) alone has a unique key */

	const char *create_fee, *create_rate, *create_reject, *create_schema;
	struct {
		const char *name;
		const char *add;              /* adds the missing column */
		const char *set_default;      /* sets its default where it has none, or NULL */
	} add_cols[STORE_ADD_COLS];
	const char *add_reject_source; /* adds fee_reject.source to an existing fee_reject */
	const char *add_key;          /* a unique key on fee(ticket) */
	const char *primary_index;    /* if fee has no index of this name (its primary key), */
	const char *add_primary_key;  /* ... this statement instead of add_key */
	const char *index_name;       /* the index behind WHERE status = 'N' ORDER BY ticket */
	const char *create_index;
	const char *const *set_version; /* statements recording STORE_SCHEMA_VERSION, NULL-ended;
					  NULL: DELETE then INSERT in the migration's transaction */
	int ddl_lock_timeout_s;       /* how long DDL waits for a lock on a table */
	const char *lock_hint;        /* where to see who holds it: "SHOW PROCESSLIST" */
};

/*
 * store_ops.migrate for every backend: lock; refuse a newer feed_schema
 * (-EPROTO); create fee or adopt it (required columns, duplicate tickets
 * refused with -EINVAL, missing columns added, narrow columns widened, the
 * ticket key added) running DDL only where the catalog says it is needed;
 * create the other tables and the index; record the version; unlock.
 */
int store_migrate(struct store *s, const struct store_migrate_ops *m);

#endif
