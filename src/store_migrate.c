/*
 * store_migrate.c - the migration driver every backend's migrate() runs.
 *
 * Owns the sequence that brings a database to STORE_SCHEMA_VERSION: the
 * lock against concurrent migrations, the version check, creating feed's
 * tables or adopting a classic fee(ticket, login, volume, status) table,
 * the ticket key and the index, the version record. Backends give it their
 * catalog queries, their DDL text and a few driver calls (store_int.h).
 *
 * DDL takes a lock every reader and writer of the table queues behind
 * (PostgreSQL's ACCESS EXCLUSIVE, MySQL's metadata lock): every step reads
 * the catalog first and runs DDL only where it is needed, so a second
 * instance starts beside a long reader of fee. Runs on the thread that owns
 * the store.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "store_int.h"

#define MIG_SQL_MAX 1024

/* The columns any adoptable fee table has. */
static const char *const mig_required[] = { "ticket", "login", "volume" };

/* sql with $T, $C and $I replaced by t, c and i. -E2BIG if it does not fit. */
static int mig_expand(const char *sql, const char *t, const char *c, const char *i,
		      char *buf, size_t size)
{
	size_t len = 0;

	for (const char *p = sql; *p; p++) {
		const char *sub = NULL;

		if (p[0] == '$')
			sub = p[1] == 'T' ? t : p[1] == 'C' ? c : p[1] == 'I' ? i : NULL;
		if (sub) {
			size_t n = strlen(sub);

			if (len + n >= size)
				return -E2BIG;
			memcpy(buf + len, sub, n);
			len += n;
			p++;
			continue;
		}
		if (len + 1 >= size)
			return -E2BIG;
		buf[len++] = *p;
	}
	buf[len] = '\0';
	return 0;
}

/* Runs catalog query q for table t, column c, index i. */
static int mig_query(struct store *s, const struct store_migrate_ops *m, const char *what,
		     const char *q, const char *t, const char *c, const char *i,
		     struct store_qrow *ret)
{
	char sql[MIG_SQL_MAX];

	memset(ret, 0, sizeof(*ret));
	if (mig_expand(q, t, c ? c : "", i ? i : "", sql, sizeof(sql)) < 0) {
		store_setmsg(s, "migrate: %s: catalog query over %d bytes", what, MIG_SQL_MAX);
		return -E2BIG;
	}
	return m->query(s, what, sql, ret);
}

/*
 * Runs one DDL statement on table. A lock wait that timed out (-EAGAIN) says
 * which table it waited for and how to find who holds it.
 */
static int mig_ddl(struct store *s, const struct store_migrate_ops *m, const char *what,
		   const char *table, const char *sql)
{
	int r = m->exec(s, what, sql);

	if (r == -EAGAIN)
		store_setmsg(s, "%s: waited %d s for a lock on table %s, which another session "
			     "holds (an open transaction that read or wrote %s: see %s); end it "
			     "and start feed again", what, m->ddl_lock_timeout_s, table, table,
			     m->lock_hint);
	return r;
}

static int mig_table_exists(struct store *s, const struct store_migrate_ops *m,
			    const char *table, bool *ret)
{
	struct store_qrow row;
	char what[64];
	int r;

	snprintf(what, sizeof(what), "looking up table %s", table);
	r = mig_query(s, m, what, m->q_table, table, NULL, NULL, &row);
	if (r == 0)
		*ret = row.found;
	return r;
}

/*
 * The version feed_schema records, 0 if none; refuses one newer than this
 * feed's. *ret_rows: how many rows hold it (1 unless damaged or new).
 */
static int mig_version(struct store *s, const struct store_migrate_ops *m, int64_t *ret,
		       int64_t *ret_rows)
{
	struct store_qrow row = { 0 };
	bool exists = false;
	int r;

	*ret = 0;
	*ret_rows = 0;
	r = mig_table_exists(s, m, "feed_schema", &exists);
	if (r < 0 || !exists)
		return r;
	r = m->query(s, "reading feed_schema", "SELECT max(version), count(*) FROM feed_schema",
		     &row);
	if (r < 0 || !row.found || row.null[0])
		return r;
	if (store_parse_i64(row.val[1], strlen(row.val[1]), ret_rows) < 0)
		*ret_rows = 0;
	if (store_parse_i64(row.val[0], strlen(row.val[0]), ret) < 0) {
		store_setmsg(s, "migrate: feed_schema holds version \"%.40s\", not a number",
			     row.val[0]);
		return -EIO;
	}
	if (*ret > STORE_SCHEMA_VERSION) {
		/* Written by a newer feed: do not "migrate" it backwards. */
		store_setmsg(s, "migrate: the database has schema version %lld (feed_schema), "
			     "newer than this feed supports (%d): run a newer feed",
			     (long long)*ret, STORE_SCHEMA_VERSION);
		return -EPROTO;
	}
	return 0;
}

/* A classic table may hold duplicate tickets: refuse, delete nothing. */
static int mig_check_duplicates(struct store *s, const struct store_migrate_ops *m)
{
	struct store_qrow row = { 0 };
	int r;

	r = m->query(s, "looking for duplicate tickets in fee",
		     "SELECT ticket FROM fee WHERE ticket IS NOT NULL"
		     " GROUP BY ticket HAVING COUNT(*) > 1 LIMIT 1", &row);
	if (r < 0 || !row.found)
		return r;
	store_setmsg(s, "migrate: cannot add a unique key on fee.ticket: existing rows hold "
		     "duplicate tickets (e.g. %.24s); find them with SELECT ticket FROM fee "
		     "GROUP BY ticket HAVING COUNT(*) > 1 and resolve them by hand (feed deletes "
		     "no rows)", row.val[0]);
	return -EINVAL;
}

/*
 * Adds the columns an existing fee table lacks (a classic table all of them,
 * schema 1 source), and the defaults feed relies on.
 */
static int mig_add_columns(struct store *s, const struct store_migrate_ops *m)
{
	char what[96];
	int r;

	for (size_t i = 0; i < STORE_ADD_COLS; i++) {
		const char *name = m->add_cols[i].name, *sql = NULL;
		struct store_qrow col;

		r = mig_query(s, m, "reading the columns of fee", m->q_column, "fee", name, NULL,
			      &col);
		if (r < 0)
			return r;
		if (!col.found) {
			/* added without a default first: existing rows keep NULL, not 'N' or now() */
			snprintf(what, sizeof(what), "adding column fee.%s", name);
			r = mig_ddl(s, m, what, "fee", m->add_cols[i].add);
			if (r < 0)
				return r;
		}
		sql = !col.found || col.null[4] ? m->add_cols[i].set_default : NULL;
		if (!sql)
			continue;
		snprintf(what, sizeof(what), "setting the default of fee.%s", name);
		r = mig_ddl(s, m, what, "fee", sql);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Whether fee's column, as q_column read it, would lose values feed writes. */
static bool mig_narrow(const char *col, const struct store_qrow *c)
{
	static const char *const small_ints[] = { "tinyint", "smallint", "mediumint", "int",
						  "integer" };
	const char *type = c->val[0];

	if (!strcmp(col, "volume")) {
		long prec, scale;

		if ((strcmp(type, "numeric") && strcmp(type, "decimal")) || c->null[1] || c->null[2])
			return false;   /* DOUBLE, TEXT: converting could change stored values */
		prec = strtol(c->val[1], NULL, 10);
		scale = strtol(c->val[2], NULL, 10);
		return scale < DEC_SCALE || prec - scale < 11;
	}
	for (size_t i = 0; i < sizeof(small_ints) / sizeof(small_ints[0]); i++)
		if (!strcmp(type, small_ints[i]))
			return true;
	return false;
}

/*
 * Widens narrow ids to 64 bits and a narrow DECIMAL volume, which would
 * refuse or silently round feed's values. Lossless; a lock timeout is never
 * skipped (the column would stay narrow).
 */
static int mig_widen(struct store *s, const struct store_migrate_ops *m)
{
	static const char *const cols[] = { "volume", "ticket", "login" };
	char sql[256], what[64];
	int r = 0;

	if (!m->widen_sql)
		return 0;
	for (size_t i = 0; i < sizeof(cols) / sizeof(cols[0]); i++) {
		struct store_qrow c;

		r = mig_query(s, m, "reading the columns of fee", m->q_column, "fee", cols[i], NULL,
			      &c);
		if (r < 0)
			return r;
		if (!c.found || !mig_narrow(cols[i], &c))
			continue;
		m->widen_sql(cols[i], &c, sql, sizeof(sql));
		snprintf(what, sizeof(what), "widening fee.%s", cols[i]);
		if (!m->widen_best_effort) {
			r = mig_ddl(s, m, what, "fee", sql);
			if (r < 0)
				return r;
			continue;
		}
		r = m->exec(s, "SAVEPOINT", "SAVEPOINT feed_widen");
		if (r < 0)
			return r;
		r = mig_ddl(s, m, what, "fee", sql);
		if (r == 0)
			r = m->exec(s, "RELEASE SAVEPOINT", "RELEASE SAVEPOINT feed_widen");
		else if (r != -EAGAIN && r != -ENOTCONN)  /* refused: keep the old type */
			r = m->exec(s, "ROLLBACK TO SAVEPOINT", "ROLLBACK TO SAVEPOINT feed_widen");
		if (r < 0)
			return r;
	}
	return 0;
}

/* The unique key on fee(ticket), where fee has none. */
static int mig_add_key(struct store *s, const struct store_migrate_ops *m)
{
	const char *sql = m->add_key;

	if (m->primary_index) {
		struct store_qrow pk;
		int r = mig_query(s, m, "looking up the primary key of fee", m->q_index, "fee",
				  NULL, m->primary_index, &pk);

		if (r < 0)
			return r;
		if (!pk.found)
			sql = m->add_primary_key;
	}
	/* rows written since the duplicate check make this fail (a unique violation) */
	return mig_ddl(s, m, "adding a unique key on fee.ticket", "fee", sql);
}

/* Brings an existing fee table (feed's own or a classic one) to the current layout. */
static int mig_adopt(struct store *s, const struct store_migrate_ops *m)
{
	struct store_qrow row;
	bool has_key;
	int r;

	for (size_t i = 0; i < sizeof(mig_required) / sizeof(mig_required[0]); i++) {
		r = mig_query(s, m, "reading the columns of fee", m->q_column, "fee",
			      mig_required[i], NULL, &row);
		if (r < 0)
			return r;
		if (!row.found) {
			store_setmsg(s, "migrate: table fee exists but has no column %s; it is "
				     "neither feed's nor a classic fee(ticket, login, volume, "
				     "status) table", mig_required[i]);
			return -EINVAL;
		}
	}
	r = mig_query(s, m, "looking for a unique key on fee.ticket", m->q_ticket_key, "fee",
		      NULL, NULL, &row);
	if (r < 0)
		return r;
	has_key = row.found;
	/* before any change: DDL commits by itself in MySQL */
	if (!has_key) {
		r = mig_check_duplicates(s, m);
		if (r < 0)
			return r;
	}
	r = mig_add_columns(s, m);
	if (r == 0)
		r = mig_widen(s, m);
	if (r == 0 && !has_key)
		r = mig_add_key(s, m);
	return r;
}

/* Creates table where it is missing (no DDL, so no lock, on one that exists). */
static int mig_create(struct store *s, const struct store_migrate_ops *m, const char *table,
		      const char *sql)
{
	char what[64];
	bool exists = false;
	int r = mig_table_exists(s, m, table, &exists);

	if (r < 0 || exists)
		return r;
	snprintf(what, sizeof(what), "creating table %s", table);
	return mig_ddl(s, m, what, table, sql);
}

/* Adds table.col where the catalog says it is missing; existing rows keep NULL. */
static int mig_add_column(struct store *s, const struct store_migrate_ops *m, const char *table,
			  const char *col, const char *sql)
{
	struct store_qrow row;
	char what[96];
	int r;

	snprintf(what, sizeof(what), "reading the columns of %s", table);
	r = mig_query(s, m, what, m->q_column, table, col, NULL, &row);
	if (r < 0 || row.found)
		return r;
	snprintf(what, sizeof(what), "adding column %s.%s", table, col);
	return mig_ddl(s, m, what, table, sql);
}

static int mig_run(struct store *s, const struct store_migrate_ops *m)
{
	struct store_qrow idx;
	bool has_fee = false;
	int64_t version, rows;
	int r;

	r = mig_version(s, m, &version, &rows);
	if (r < 0)
		return r;
	r = mig_table_exists(s, m, "fee", &has_fee);
	if (r < 0)
		return r;
	r = has_fee ? mig_adopt(s, m) : mig_ddl(s, m, "creating table fee", "fee", m->create_fee);
	if (r < 0)
		return r;
	r = mig_query(s, m, "looking up the indexes of fee", m->q_index, "fee", NULL,
		      m->index_name, &idx);
	if (r == 0 && !idx.found)
		r = mig_ddl(s, m, "creating an index on fee", "fee", m->create_index);
	if (r == 0)
		r = mig_create(s, m, "fee_rate", m->create_rate);
	if (r == 0)
		r = mig_create(s, m, "fee_reject", m->create_reject);
	if (r == 0)     /* a fee_reject of schema 1 */
		r = mig_add_column(s, m, "fee_reject", "source", m->add_reject_source);
	if (r == 0)
		r = mig_create(s, m, "feed_schema", m->create_schema);
	if (r < 0 || (version == STORE_SCHEMA_VERSION && rows == 1))
		return r;
	/* backends whose DDL commits by itself give their own (in a transaction) */
	static const char *const set_version[] = {
		"DELETE FROM feed_schema",
		"INSERT INTO feed_schema (version) VALUES (" STORE_STR(STORE_SCHEMA_VERSION) ")",
		NULL,
	};
	const char *const *sv = m->set_version ? m->set_version : set_version;
	for (size_t i = 0; sv[i] && r == 0; i++)
		r = m->exec(s, "recording the schema version", sv[i]);
	return r;
}

int store_migrate(struct store *s, const struct store_migrate_ops *m)
{
	int r = m->lock(s);

	if (r < 0)
		return r;
	r = mig_run(s, m);
	return m->unlock(s, r);
}
