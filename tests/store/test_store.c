/*
 * test_store.c - the store conformance test: the contract of store.h that
 * every backend (SQLite, PostgreSQL, MySQL/MariaDB) must meet.
 *
 * Runs against a real, throwaway database prepared by
 * tests/lib/with-<backend>.sh, which exports FEED_TEST_URL,
 * FEED_TEST_PASSWORD_FILE, FEED_TEST_BACKEND, FEED_TEST_SQL (a shell command
 * running SQL from stdin with admin rights, rows tab-separated) and
 * FEED_TEST_DB_STOP / FEED_TEST_DB_START. Every case starts from a database
 * without feed's tables and checks what the backend stored through
 * FEED_TEST_SQL, independently of the backend's own code. Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "decimal.h"
#include "store.h"

#define T_SQL_OUTMAX (64 * 1024)

/* ==== The environment set by with-<backend>.sh ==== */

static struct {
	const char *url;
	const char *backend;    /* sqlite | postgresql | mysql */
	const char *sql;
	const char *stop;
	const char *start;
	char password[256];
	bool has_password;
} t_env;

static bool t_is(const char *backend)
{
	return strcmp(t_env.backend, backend) == 0;
}

static const char *t_getenv(const char *name, bool required)
{
	const char *v = getenv(name);

	if (required && (!v || !*v)) {
		fprintf(stderr, "test_store: %s is not set; run me through "
			"tests/lib/with-<backend>.sh\n", name);
		exit(2);
	}
	return v ? v : "";
}

static void t_env_load(void)
{
	const char *pwfile;
	FILE *f;

	t_env.url = t_getenv("FEED_TEST_URL", true);
	t_env.backend = t_getenv("FEED_TEST_BACKEND", true);
	t_env.sql = t_getenv("FEED_TEST_SQL", true);
	t_env.stop = t_getenv("FEED_TEST_DB_STOP", false);
	t_env.start = t_getenv("FEED_TEST_DB_START", false);
	pwfile = t_getenv("FEED_TEST_PASSWORD_FILE", false);
	if (!*pwfile)
		return;
	f = fopen(pwfile, "re");
	if (!f || !fgets(t_env.password, sizeof(t_env.password), f)) {
		fprintf(stderr, "test_store: cannot read FEED_TEST_PASSWORD_FILE %s\n", pwfile);
		exit(2);
	}
	fclose(f);
	t_env.password[strcspn(t_env.password, "\r\n")] = '\0';
	t_env.has_password = true;
}

/* ==== Running SQL and shell commands outside the backend ==== */

static int t_tmpfile(void)
{
	const char *dir = getenv("TMPDIR");
	char path[512];
	int fd;

	snprintf(path, sizeof(path), "%s/feed-test-store.XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		fail_msg("mkostemp %s: %s", path, strerror(errno));
	unlink(path);
	return fd;
}

/*
 * Runs cmd with bash -c (the wrappers' commands may use bash syntax), stdin
 * from in[0..len), stdout into out (NUL-terminated, at most size - 1 bytes).
 * Returns the exit status, or -1 if it did not exit normally.
 */
static int t_shell(const char *cmd, const void *in, size_t len, char *out, size_t size)
{
	int ifd = t_tmpfile(), ofd = t_tmpfile(), status;
	ssize_t k;
	size_t got = 0;
	pid_t pid;

	if (len > 0 && write(ifd, in, len) != (ssize_t)len)
		fail_msg("writing SQL to a temporary file: %s", strerror(errno));
	lseek(ifd, 0, SEEK_SET);
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		fail_msg("fork: %s", strerror(errno));
	if (pid == 0) {
		if (dup2(ifd, 0) < 0 || dup2(ofd, 1) < 0)
			_exit(126);
		execl("/bin/bash", "bash", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			fail_msg("waitpid: %s", strerror(errno));
	lseek(ofd, 0, SEEK_SET);
	while (out && got + 1 < size && (k = read(ofd, out + got, size - 1 - got)) > 0)
		got += (size_t)k;
	if (out)
		out[got] = '\0';
	close(ifd);
	close(ofd);
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Runs SQL through FEED_TEST_SQL; fails the test if it fails. Output in out. */
static void t_sql(const char *sql, char *out, size_t size)
{
	int st = t_shell(t_env.sql, sql, strlen(sql), out, size);

	if (st != 0)
		fail_msg("FEED_TEST_SQL exited with %d on: %s", st, sql);
}

/* Runs SQL through FEED_TEST_SQL and returns its exit status. */
static int t_sql_try(const char *sql)
{
	char out[256];

	return t_shell(t_env.sql, sql, strlen(sql), out, sizeof(out));
}

/* Runs a query and compares its whole output with want. */
static void t_sql_expect(const char *sql, const char *want)
{
	static char out[T_SQL_OUTMAX];

	t_sql(sql, out, sizeof(out));
	if (strcmp(out, want) != 0)
		fail_msg("query: %s\nwant: \"%s\"\ngot:  \"%s\"", sql, want, out);
}

/*
 * Drops insignificant trailing zeros of decimal fields in place ("1.25000000"
 * -> "1.25", "0.00000000" -> "0"), so that MySQL's DECIMAL(p,8) output
 * compares with the canonical form. Exact: only zeros are removed.
 */
static void t_normalise(char *s)
{
	char *f = s;

	while (*f) {
		size_t flen = strcspn(f, "\t\n");
		char *dot = memchr(f, '.', flen), *end = f + flen;
		bool numeric = dot != NULL && dot > f;

		for (char *c = f + (*f == '-'); numeric && c < end; c++)
			if (c != dot && (*c < '0' || *c > '9'))
				numeric = false;
		if (numeric) {
			char *last = end;

			while (last > dot + 1 && last[-1] == '0')
				last--;
			if (last == dot + 1)
				last = dot;
			memmove(last, end, strlen(end) + 1);
			end = last;
		}
		f = *end ? end + 1 : end;
	}
}

/* Like t_sql_expect, after t_normalise of the output. */
static void t_sql_expect_dec(const char *sql, const char *want)
{
	static char out[T_SQL_OUTMAX];

	t_sql(sql, out, sizeof(out));
	t_normalise(out);
	if (strcmp(out, want) != 0)
		fail_msg("query: %s\nwant (normalised): \"%s\"\ngot  (normalised): \"%s\"", sql,
			 want, out);
}

/* SQL spelling of hex(body) for the backend under test. */
static const char *t_hex_body(void)
{
	return t_is("postgresql") ? "encode(body, 'hex')" : "hex(body)";
}

/* ==== Fixtures ==== */

struct t_fix {
	const struct store_ops *ops;
	struct store *s;
};

static const char *const t_tables[] = { "fee", "fee_rate", "fee_reject", "feed_schema" };

static struct store *t_open(const struct store_ops *ops)
{
	struct store_params p = {
		.url = t_env.url,
		.password = t_env.has_password ? t_env.password : NULL,
		.durability = STORE_DURABLE_FULL,
		.connect_timeout = 10,
	};
	struct store *s = NULL;
	char err[512] = "";
	int r;

	r = ops->open(&p, &s, err, sizeof(err));
	if (r != 0 || !s)
		fail_msg("open(%s) = %d: %s", t_env.url, r, err);
	assert_ptr_equal(s->ops, ops);
	return s;
}

static void t_ok(struct store *s, int r, const char *what)
{
	if (r != 0)
		fail_msg("%s = %d (%s): %s", what, r, strerror(-r), s->errmsg);
}

static int t_setup(void **state)
{
	struct t_fix *fx = calloc(1, sizeof(*fx));
	char sql[64];

	assert_non_null(fx);
	fx->ops = store_find(t_env.url);
	if (!fx->ops)
		fail_msg("store_find(%s) found no backend", t_env.url);
	assert_int_equal(fx->ops->version, STORE_OPS_VERSION);
	if (!fx->ops->open || !fx->ops->close || !fx->ops->reconnect || !fx->ops->migrate ||
	    !fx->ops->exec || !fx->ops->begin || !fx->ops->commit || !fx->ops->rollback ||
	    !fx->ops->lookup || !fx->ops->insert || !fx->ops->insert_rejects ||
	    !fx->ops->fetch_unsettled || !fx->ops->settle)
		fail_msg("backend %s leaves an operation NULL", fx->ops->name);
	if (fx->ops->default_writers < 1)
		fail_msg("backend %s has default_writers %d", fx->ops->name, fx->ops->default_writers);
	fx->s = t_open(fx->ops);
	for (size_t i = 0; i < sizeof(t_tables) / sizeof(t_tables[0]); i++) {
		snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS %s", t_tables[i]);
		t_ok(fx->s, fx->ops->exec(fx->s, sql), sql);
	}
	*state = fx;
	return 0;
}

static int t_teardown(void **state)
{
	struct t_fix *fx = *state;

	if (fx) {
		if (fx->s) {
			fx->ops->rollback(fx->s);
			fx->ops->close(fx->s);
		}
		free(fx);
	}
	*state = NULL;
	return 0;
}

/* migrate() and fail the test if it fails. */
static void t_migrate(struct t_fix *fx)
{
	t_ok(fx->s, fx->ops->migrate(fx->s), "migrate");
}

/* Inserts recs in one transaction and commits. */
static void t_insert(struct t_fix *fx, const struct record *recs, size_t n)
{
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->insert(fx->s, recs, NULL, n), "insert");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");
}

/* lookup() of n tickets; *ret_n rows into rows. */
static void t_lookup(struct t_fix *fx, const int64_t *tickets, size_t n,
		     struct store_row *rows, size_t *ret_n)
{
	*ret_n = (size_t)-1;
	t_ok(fx->s, fx->ops->lookup(fx->s, tickets, n, rows, ret_n), "lookup");
	assert_true(*ret_n <= n);
}

static const struct store_row *t_row(const struct store_row *rows, size_t n, int64_t ticket)
{
	for (size_t i = 0; i < n; i++)
		if (rows[i].ticket == ticket)
			return &rows[i];
	return NULL;
}

static void t_expect_row(const struct store_row *rows, size_t n, int64_t ticket, int64_t login,
			 int64_t volume)
{
	const struct store_row *r = t_row(rows, n, ticket);

	if (!r)
		fail_msg("lookup did not return ticket %" PRId64, ticket);
	assert_int_equal(r->login, login);
	assert_int_equal(r->volume, volume);
}

static void t_expect_fail(struct store *s, int r, int want, const char *what)
{
	if (r != want)
		fail_msg("%s = %d (%s), want %d (%s); errmsg: %s", what, r, strerror(-r), want,
			 strerror(-want), s->errmsg);
	if (s->errmsg[0] == '\0')
		fail_msg("%s failed with %d but left errmsg empty", what, r);
}

/* ==== Schema ==== */

static void test_migrate_twice(void **state)
{
	struct t_fix *fx = *state;

	t_migrate(fx);
	t_migrate(fx);
	t_sql_expect("SELECT version FROM feed_schema", "2\n");
	t_sql_expect("SELECT count(*) FROM fee", "0\n");
	t_sql_expect("SELECT count(*) FROM fee_rate", "0\n");
	t_sql_expect("SELECT count(*) FROM fee_reject", "0\n");

	/* A fresh connection migrating an up-to-date schema changes nothing. */
	struct store *s2 = t_open(fx->ops);
	t_ok(s2, fx->ops->migrate(s2), "migrate (second connection)");
	fx->ops->close(s2);
	t_sql_expect("SELECT version FROM feed_schema", "2\n");
}

/* ==== Insert and lookup ==== */

static void test_roundtrip_exact(void **state)
{
	struct t_fix *fx = *state;
	const struct record recs[] = {
		{ 1, 1, 0 },
		{ 2, 2, 1 },                            /* 0.00000001 */
		{ 3, 3, 125000000 },                    /* 1.25 */
		{ INT64_MAX, INT64_MAX, INT64_MAX },    /* 92233720368.54775807 */
	};
	const int64_t tickets[] = { 5, 3, INT64_MAX, 1, 4, 2, INT64_MAX - 1 };
	struct store_row rows[7];
	size_t n;

	t_migrate(fx);
	t_insert(fx, recs, 4);
	t_lookup(fx, tickets, 7, rows, &n);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < 4; i++)
		t_expect_row(rows, n, recs[i].ticket, recs[i].login, recs[i].volume);

	t_sql_expect_dec("SELECT ticket, login, volume FROM fee ORDER BY ticket",
			 "1\t1\t0\n2\t2\t0.00000001\n3\t3\t1.25\n"
			 "9223372036854775807\t9223372036854775807\t92233720368.54775807\n");
	t_sql_expect("SELECT count(*) FROM fee WHERE status = 'N' AND received_at IS NOT NULL"
		     " AND fee IS NULL AND settled_at IS NULL", "4\n");
}

static void test_lookup_absent(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 100, 7, 5 };
	const int64_t tickets[] = { 1, 99, 101, INT64_MAX };
	struct store_row rows[4];
	size_t n;

	t_migrate(fx);
	t_lookup(fx, tickets, 4, rows, &n);
	assert_int_equal(n, 0);
	t_lookup(fx, tickets, 0, rows, &n);
	assert_int_equal(n, 0);
	t_insert(fx, &rec, 1);
	t_lookup(fx, tickets, 4, rows, &n);
	assert_int_equal(n, 0);
}

/* Thousands of records in one transaction: the hot path. */
static void test_insert_many(void **state)
{
	enum { N = 5000 };
	struct t_fix *fx = *state;
	struct record *recs = calloc(N, sizeof(*recs));
	struct store_row *rows = calloc(N, sizeof(*rows));
	int64_t *tickets = calloc(N, sizeof(*tickets));
	size_t n;

	assert_non_null(recs);
	assert_non_null(rows);
	assert_non_null(tickets);
	for (size_t i = 0; i < N; i++) {
		recs[i] = (struct record){ (int64_t)(1000000 + i * 7), (int64_t)(i % 13 + 1),
					   (int64_t)(i * 12345678) };
		tickets[i] = recs[i].ticket;
	}
	t_migrate(fx);
	t_insert(fx, recs, N);
	t_lookup(fx, tickets, N, rows, &n);
	assert_int_equal(n, N);
	for (size_t i = 0; i < N; i += 997)
		t_expect_row(rows, n, recs[i].ticket, recs[i].login, recs[i].volume);
	t_sql_expect("SELECT count(*) FROM fee", "5000\n");
	free(recs);
	free(rows);
	free(tickets);
}

static void test_insert_existing(void **state)
{
	struct t_fix *fx = *state;
	const struct record first = { 10, 1, 100000000 };
	const struct record again[] = { { 11, 2, 200000000 }, { 10, 3, 300000000 } };
	const int64_t tickets[] = { 10, 11 };
	struct store_row rows[2];
	size_t n;
	int r;

	t_migrate(fx);
	t_insert(fx, &first, 1);

	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	fx->s->errmsg[0] = '\0';
	r = fx->ops->insert(fx->s, again, NULL, 2);
	t_expect_fail(fx->s, r, -EEXIST, "insert of an existing ticket");
	t_ok(fx->s, fx->ops->rollback(fx->s), "rollback");

	/* The table is as before: ticket 10 unchanged, 11 not there. */
	t_lookup(fx, tickets, 2, rows, &n);
	assert_int_equal(n, 1);
	t_expect_row(rows, n, 10, 1, 100000000);
	t_sql_expect_dec("SELECT ticket, login, volume FROM fee ORDER BY ticket", "10\t1\t1\n");

	/* The connection still works. */
	t_insert(fx, &again[0], 1);
	t_lookup(fx, tickets, 2, rows, &n);
	assert_int_equal(n, 2);
	t_expect_row(rows, n, 11, 2, 200000000);
}

/* insert_commit() where the backend has it, else insert() then commit(): the same contract. */
static int t_insert_commit(struct t_fix *fx, const struct record *recs, size_t n)
{
	int r;

	if (fx->ops->insert_commit)
		return fx->ops->insert_commit(fx->s, recs, NULL, n);
	r = fx->ops->insert(fx->s, recs, NULL, n);
	return r < 0 ? r : fx->ops->commit(fx->s);
}

static void test_insert_commit(void **state)
{
	struct t_fix *fx = *state;
	const struct record one[] = { { 20, 1, 100000000 } };
	const struct record two[] = { { 21, 2, 250000000 }, { 23, 5, 500000000 } };
	const struct record clash[] = { { 22, 3, 300000000 }, { 20, 4, 400000000 } };
	const int64_t tickets[] = { 20, 21, 22, 23 };
	struct store_row rows[4];
	size_t n;
	int r;

	t_migrate(fx);
	/*
	 * New rows, committed by the one call (a transaction of its own: BEGIN
	 * not sent yet) and seen from another session: one record (PostgreSQL:
	 * the pipeline), then two (insert() then commit()).
	 */
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, t_insert_commit(fx, one, 1), "insert_commit of one record");
	t_sql_expect_dec("SELECT ticket, status FROM fee ORDER BY ticket", "20\tN\n");
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, t_insert_commit(fx, two, 2), "insert_commit of two records");
	t_lookup(fx, tickets, 4, rows, &n);
	assert_int_equal(n, 3);
	t_expect_row(rows, n, 21, 2, 250000000);
	t_sql_expect_dec("SELECT ticket, status FROM fee ORDER BY ticket", "20\tN\n21\tN\n23\tN\n");

	/* a stored ticket, alone or in a batch: the ticket key's -EEXIST, nothing committed */
	for (size_t k = 1; k <= 2; k++) {
		t_ok(fx->s, fx->ops->begin(fx->s), "begin");
		fx->s->errmsg[0] = '\0';
		r = t_insert_commit(fx, k == 1 ? clash + 1 : clash, k);
		t_expect_fail(fx->s, r, -EEXIST, "insert_commit of an existing ticket");
		t_ok(fx->s, fx->ops->rollback(fx->s), "rollback");
		t_lookup(fx, tickets, 4, rows, &n);
		assert_int_equal(n, 3);
		t_expect_row(rows, n, 20, 1, 100000000);
	}

	/* after a lookup in the same transaction (BEGIN sent already), and the connection works */
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->lookup(fx->s, tickets, 4, rows, &n), "lookup");
	t_ok(fx->s, t_insert_commit(fx, clash, 1), "insert_commit after lookup");
	t_lookup(fx, tickets, 4, rows, &n);
	assert_int_equal(n, 4);
	t_expect_row(rows, n, 22, 3, 300000000);
}

/* A record the database refuses (a constraint on login 666) -> -EINVAL. */
static void test_refused_record(void **state)
{
	struct t_fix *fx = *state;
	const struct record recs[] = { { 20, 1, 1 }, { 21, 666, 2 }, { 22, 3, 3 } };
	const char *constraint;
	int r;

	t_migrate(fx);
	if (t_is("sqlite"))
		constraint = "CREATE TRIGGER no666 BEFORE INSERT ON fee WHEN NEW.login = 666 "
			     "BEGIN SELECT RAISE(ABORT, 'no666: login 666 refused'); END";
	else
		constraint = "ALTER TABLE fee ADD CONSTRAINT no666 CHECK (login <> 666)";
	t_ok(fx->s, fx->ops->exec(fx->s, constraint), "exec (constraint no666)");

	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	fx->s->errmsg[0] = '\0';
	r = fx->ops->insert(fx->s, recs, NULL, 3);
	t_expect_fail(fx->s, r, -EINVAL, "insert of login 666");
	if (!strstr(fx->s->errmsg, "no666"))
		fail_msg("errmsg does not name the cause (no666): %s", fx->s->errmsg);
	t_ok(fx->s, fx->ops->rollback(fx->s), "rollback");
	t_sql_expect("SELECT count(*) FROM fee", "0\n");

	/* The records around it go in without it. */
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->insert(fx->s, &recs[0], NULL, 1), "insert");
	t_ok(fx->s, fx->ops->insert(fx->s, &recs[2], NULL, 1), "insert");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");
	t_sql_expect("SELECT ticket FROM fee ORDER BY ticket", "20\n22\n");
}

static void test_rollback_discards(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 30, 1, 1 };

	t_migrate(fx);
	t_ok(fx->s, fx->ops->rollback(fx->s), "rollback without a transaction");
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->insert(fx->s, &rec, NULL, 1), "insert");
	t_ok(fx->s, fx->ops->rollback(fx->s), "rollback");
	t_ok(fx->s, fx->ops->rollback(fx->s), "second rollback");
	t_sql_expect("SELECT count(*) FROM fee", "0\n");
}

/*
 * The error that made a batch roll back stays the one reported, even when the
 * ROLLBACK fails too: on the servers the connection is really killed by the
 * statement that fails (KILL CONNECTION_ID(), pg_terminate_backend), so the
 * ROLLBACK after it meets a dead connection.
 */
static void test_rollback_keeps_the_cause(void **state)
{
	struct t_fix *fx = *state;
	const char *name = fx->ops->name;
	const char *kill = strcmp(name, "mysql") == 0 ? "KILL CONNECTION_ID()" :
			   strcmp(name, "postgresql") == 0 ? "SELECT pg_terminate_backend(pg_backend_pid())" :
			   "SELECT * FROM no_such_table_here";
	char cause[sizeof(fx->s->errmsg)];

	t_migrate(fx);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	assert_true(fx->ops->exec(fx->s, kill) < 0);
	assert_true(fx->s->errmsg[0] != '\0');
	memcpy(cause, fx->s->errmsg, sizeof(cause));
	int r = store_rollback(fx->s);
	if (strcmp(name, "mysql") == 0)
		assert_true(r < 0); /* the connection is gone: ROLLBACK cannot succeed */
	if (strncmp(fx->s->errmsg, cause, strlen(cause)) != 0)
		fail_msg("after rollback the error is \"%s\", not its cause \"%s\"", fx->s->errmsg, cause);
	t_ok(fx->s, fx->ops->reconnect(fx->s), "reconnect");
}

/* ==== Rejects ==== */

static void test_rejects_verbatim(void **state)
{
	enum { BIG = 1024 * 1024 };
	struct t_fix *fx = *state;
	static const char body[] = { 'a', '\0', 'b', '\xff', '\n', '\0' };
	char *big = malloc(BIG);
	struct store_reject rj[3] = {
		{ "tcp://127.0.0.1:5555", "line 1: volume: not a number", body, sizeof(body),
		  "127.0.0.1" },
		{ "ipc:///run/feed.sock", "empty request", "", 0, NULL },
		{ "tcp://127.0.0.1:5555", "too large", big, BIG, "client-a" },
	};
	char sql[256], want[256];

	assert_non_null(big);
	for (size_t i = 0; i < BIG; i++)
		big[i] = (char)(i % 251);   /* NULs included */
	t_migrate(fx);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->insert_rejects(fx->s, rj, 3), "insert_rejects");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");

	snprintf(sql, sizeof(sql), "SELECT endpoint, reason, %s FROM fee_reject WHERE id IN "
		 "(SELECT min(id) FROM fee_reject)", t_hex_body());
	snprintf(want, sizeof(want), "%s\t%s\t610062FF0A00\n", rj[0].endpoint, rj[0].reason);
	{
		char out[512];

		t_sql(sql, out, sizeof(out));
		if (strcasecmp(out, want) != 0)
			fail_msg("query: %s\nwant: \"%s\"\ngot:  \"%s\"", sql, want, out);
	}
	t_sql_expect("SELECT endpoint, reason, length(body) FROM fee_reject ORDER BY id",
		     "tcp://127.0.0.1:5555\tline 1: volume: not a number\t6\n"
		     "ipc:///run/feed.sock\tempty request\t0\n"
		     "tcp://127.0.0.1:5555\ttoo large\t1048576\n");
	t_sql_expect("SELECT count(*) FROM fee_reject WHERE received_at IS NOT NULL", "3\n");
	t_sql_expect("SELECT coalesce(source, 'NULL') FROM fee_reject ORDER BY id",
		     "127.0.0.1\nNULL\nclient-a\n");
	free(big);
}

/*
 * A reason cut inside a UTF-8 character (a server's translated message cut
 * at 200 bytes) is still stored, on every backend: the server backends put
 * '?' for the broken bytes rather than refuse the reject.
 */
static void test_reject_reason_broken_utf8(void **state)
{
	struct t_fix *fx = *state;
	/* "database refused the request: Ungültig", cut after the first byte of 'ü' */
	static const char reason[] = "database refused the request: Ung\xc3";
	struct store_reject rj = { "tcp://127.0.0.1:5555", reason, "x", 1, NULL };

	t_migrate(fx);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->insert_rejects(fx->s, &rj, 1), "insert_rejects of a broken reason");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");
	if (!t_is("sqlite"))    /* SQLite keeps the bytes as they are */
		t_sql_expect("SELECT reason FROM fee_reject",
			     "database refused the request: Ung?\n");
	else
		t_sql_expect("SELECT count(*) FROM fee_reject", "1\n");
}

/* ==== Error classes (store.h): which unique key, which limit ==== */

/* fee.ref follows login: two records of one login break a unique key that is not the ticket's. */
static void t_add_ref_key(struct t_fix *fx)
{
	const char *ddl[2] = { NULL, NULL };

	if (t_is("sqlite")) {
		ddl[0] = "ALTER TABLE fee ADD COLUMN ref INTEGER AS (login) VIRTUAL";
		ddl[1] = "CREATE UNIQUE INDEX fee_ref ON fee (ref)";
	} else if (t_is("postgresql")) {
		ddl[0] = "ALTER TABLE fee ADD COLUMN ref bigint GENERATED ALWAYS AS (login) STORED"
			 " CONSTRAINT fee_ref UNIQUE";
	} else {
		ddl[0] = "ALTER TABLE fee ADD COLUMN ref BIGINT AS (login) PERSISTENT,"
			 " ADD UNIQUE KEY fee_ref (ref)";
	}
	for (size_t i = 0; i < 2 && ddl[i]; i++)
		t_ok(fx->s, fx->ops->exec(fx->s, ddl[i]), ddl[i]);
}

/* Only the ticket key is -EEXIST; another unique key is the request's fault (-EINVAL). */
static void test_unique_other_key(void **state)
{
	struct t_fix *fx = *state;
	const struct record first = { 70, 7, 1 };
	const struct record same_login = { 71, 7, 2 }, same_ticket = { 70, 8, 3 };
	int r;

	t_migrate(fx);
	t_add_ref_key(fx);
	t_insert(fx, &first, 1);
	/* twice each: the second time from a connection that has seen the key once */
	for (int round = 0; round < 2; round++) {
		t_ok(fx->s, fx->ops->begin(fx->s), "begin");
		fx->s->errmsg[0] = '\0';
		r = fx->ops->insert(fx->s, &same_login, NULL, 1);
		if (r == -EEXIST) {
			/* a key unknown to the cached names: re-read, then decided (store.h) */
			fx->ops->rollback(fx->s);
			t_ok(fx->s, fx->ops->begin(fx->s), "begin");
			fx->s->errmsg[0] = '\0';
			r = fx->ops->insert(fx->s, &same_login, NULL, 1);
		}
		t_expect_fail(fx->s, r, -EINVAL, "insert breaking the unique key fee_ref");
		if (!strstr(fx->s->errmsg, "ref"))
			fail_msg("errmsg does not name the key (ref): %s", fx->s->errmsg);
		fx->ops->rollback(fx->s);

		t_ok(fx->s, fx->ops->begin(fx->s), "begin");
		fx->s->errmsg[0] = '\0';
		r = fx->ops->insert(fx->s, &same_ticket, NULL, 1);
		/* login 8 is new: only the ticket collides */
		t_expect_fail(fx->s, r, -EEXIST, "insert of an existing ticket beside fee_ref");
		fx->ops->rollback(fx->s);
	}
	t_sql_expect("SELECT ticket, login FROM fee", "70\t7\n");
}

static struct store_req t_req(const struct record *recs, size_t n, const char *body)
{
	return (struct store_req){ .recs = recs, .n = n, .endpoint = "tcp://127.0.0.1:5555",
				   .body = body, .len = strlen(body) };
}

/* store_write(): the request that breaks fee_ref is refused alone, kept in fee_reject. */
static void test_write_isolates_unique_violation(void **state)
{
	struct t_fix *fx = *state;
	const struct record a = { 80, 1, 1 }, b = { 81, 1, 2 }, c = { 82, 2, 3 };
	struct store_req q[3] = { t_req(&a, 1, "80,1,1"), t_req(&b, 1, "81,1,2"),
				  t_req(&c, 1, "82,2,3") };
	struct store_req *reqs[3] = { &q[0], &q[1], &q[2] };
	struct store_batch *batch = store_batch_new(16);
	int r;

	assert_non_null(batch);
	t_migrate(fx);
	t_add_ref_key(fx);
	r = store_write(fx->s, batch, reqs, 3);
	t_ok(fx->s, r, "store_write");
	assert_false(q[0].rejected);
	assert_true(q[1].rejected);
	assert_false(q[2].rejected);
	if (strncmp(q[1].reason, "database refused the request: ", 30) != 0)
		fail_msg("reason: %s", q[1].reason);
	t_sql_expect("SELECT ticket FROM fee ORDER BY ticket", "80\n82\n");
	t_sql_expect(t_is("postgresql") ? "SELECT encode(body, 'hex') FROM fee_reject"
					 : "SELECT lower(hex(body)) FROM fee_reject", "38312c312c32\n");
	store_batch_free(&batch);
}

/*
 * A real server limit: MariaDB's max_allowed_packet (2M here, set before
 * the connection), PostgreSQL's index row size (an index on fee_reject.body).
 * The body over it is -E2BIG from insert_rejects; store_write keeps it
 * truncated (MariaDB) or not at all (PostgreSQL: 64 KiB is still too big for
 * an index row), and the other reject of its batch whole.
 */
static void test_server_limit_reject(void **state)
{
	enum { BIG = 3100000 };
	struct t_fix *fx = *state;
	size_t mid_len = t_is("mysql") ? 1500000 : 1000;
	char *big = malloc(BIG + 1), *mid = malloc(mid_len + 1);
	struct store_req q[3];
	struct store_req *reqs[3] = { &q[0], &q[1], &q[2] };
	const struct record rec = { 90, 1, 1 };
	struct store_reject rj;
	struct store_batch *batch = store_batch_new(16);
	char want[128];
	int r;

	assert_non_null(big);
	assert_non_null(mid);
	assert_non_null(batch);
	srandom(7);
	for (size_t i = 0; i < BIG; i++)
		big[i] = (char)(1 + random() % 255);   /* no NUL: the helpers use strlen */
	for (size_t i = 0; i < mid_len; i++)
		mid[i] = (char)(1 + random() % 255);
	big[BIG] = mid[mid_len] = '\0';
	t_migrate(fx);
	if (t_is("mysql")) {
		/* a session keeps the global of its connect (a reconnect would not) */
		t_sql("SET GLOBAL max_allowed_packet = 2097152", NULL, 0);
		fx->ops->close(fx->s);
		fx->s = t_open(fx->ops);
		t_sql("SET GLOBAL max_allowed_packet = 134217728", NULL, 0);
	} else {
		t_sql("CREATE INDEX fee_reject_body ON fee_reject (body)", NULL, 0);
	}

	rj = (struct store_reject){ "tcp://127.0.0.1:5555", "too large", big, BIG, NULL };
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	fx->s->errmsg[0] = '\0';
	r = fx->ops->insert_rejects(fx->s, &rj, 1);
	t_expect_fail(fx->s, r, -E2BIG, "insert_rejects of a body over the server's limit");
	t_ok(fx->s, fx->ops->rollback(fx->s), "rollback (the connection is kept)");

	q[0] = t_req(NULL, 0, big);
	q[1] = t_req(NULL, 0, mid);
	q[2] = t_req(&rec, 1, "90,1,1");
	q[0].bad_input = q[1].bad_input = true;
	snprintf(q[0].reason, sizeof(q[0].reason), "big");
	snprintf(q[1].reason, sizeof(q[1].reason), "mid");
	r = store_write(fx->s, batch, reqs, 3);
	t_ok(fx->s, r, "store_write");
	assert_true(q[0].rejected && q[1].rejected && !q[2].rejected);
	assert_false(q[1].unstored);
	if (t_is("mysql")) {
		snprintf(want, sizeof(want), "big [stored truncated: 65536 of %d bytes]", BIG);
		assert_string_equal(q[0].reason, want);
		assert_false(q[0].unstored);
		snprintf(want, sizeof(want), "big [stored truncated: 65536 of %d bytes]\t65536\n"
			 "mid\t%zu\n", BIG, mid_len);
	} else {
		assert_string_equal(q[0].reason, "big [not stored: the database refused it]");
		assert_true(q[0].unstored);
		snprintf(want, sizeof(want), "mid\t%zu\n", mid_len);
	}
	assert_string_equal(q[1].reason, "mid");
	t_sql_expect("SELECT reason, length(body) FROM fee_reject ORDER BY id", want);
	t_sql_expect("SELECT ticket FROM fee", "90\n");
	store_batch_free(&batch);
	free(big);
	free(mid);
}

/*
 * MariaDB answers a packet over max_allowed_packet with 1153 and closes the
 * connection: store_write() goes on with a new one, the body kept truncated.
 */
static void test_mysql_packet_closes_connection(void **state)
{
	enum { BODY = 800000 };             /* sent in one packet (long data is for > 1 MiB) */
	struct t_fix *fx = *state;
	char *body = malloc(BODY + 1);
	const struct record rec = { 95, 1, 1 };
	struct store_req q[2];
	struct store_req *reqs[2] = { &q[0], &q[1] };
	struct store_batch *batch = store_batch_new(16);
	char want[128];
	int r;

	assert_non_null(body);
	assert_non_null(batch);
	memset(body, 'x', BODY);
	body[BODY] = '\0';
	t_migrate(fx);
	t_sql("SET GLOBAL max_allowed_packet = 524288", NULL, 0);
	fx->ops->close(fx->s);
	fx->s = t_open(fx->ops);        /* keeps 512K: a reconnect would not */
	t_sql("SET GLOBAL max_allowed_packet = 134217728", NULL, 0);
	q[0] = t_req(NULL, 0, body);
	q[0].bad_input = true;
	snprintf(q[0].reason, sizeof(q[0].reason), "big");
	q[1] = t_req(&rec, 1, "95,1,1");
	r = store_write(fx->s, batch, reqs, 2);
	t_ok(fx->s, r, "store_write");
	snprintf(want, sizeof(want), "big [stored truncated: 65536 of %d bytes]", BODY);
	assert_string_equal(q[0].reason, want);
	assert_true(q[0].rejected && !q[1].rejected);
	snprintf(want, sizeof(want), "big [stored truncated: 65536 of %d bytes]\t65536\n", BODY);
	t_sql_expect("SELECT reason, length(body) FROM fee_reject", want);
	t_sql_expect("SELECT ticket FROM fee", "95\n");
	store_batch_free(&batch);
	free(body);
}

/* ==== Settlement ==== */

static const struct store_settle *t_settle_row(const struct store_settle *rows, size_t n,
					       size_t i, int64_t ticket)
{
	if (i >= n)
		fail_msg("fetch_unsettled returned %zu rows, want ticket %" PRId64 " at %zu", n,
			 ticket, i);
	if (rows[i].ticket != ticket)
		fail_msg("fetch_unsettled row %zu is ticket %" PRId64 ", want %" PRId64, i,
			 rows[i].ticket, ticket);
	return &rows[i];
}

static void test_fetch_unsettled(void **state)
{
	struct t_fix *fx = *state;
	const struct record recs[] = {
		{ 5, 1, 100000000 }, { 3, 2, 250000000 }, { 9, 3, 1 }, { 7, 1, 0 }, { 11, 4, 5 },
	};
	struct store_settle rows[8];
	const struct store_settle *r;
	bool negative_rate;
	size_t n;

	t_migrate(fx);
	t_sql("INSERT INTO fee_rate (login, rate) VALUES (1, 0.01), (2, 0.5)", NULL, 0);
	/* A backend may refuse a negative rate (CHECK); if it stores one, it reports -2. */
	negative_rate = t_sql_try("INSERT INTO fee_rate (login, rate) VALUES (4, -1)") == 0;
	t_insert(fx, recs, 5);

	n = (size_t)-1;
	t_ok(fx->s, fx->ops->fetch_unsettled(fx->s, 0, 8, rows, &n), "fetch_unsettled");
	assert_int_equal(n, 5);
	r = t_settle_row(rows, n, 0, 3);
	assert_int_equal(r->login, 2);
	assert_int_equal(r->volume, 250000000);
	assert_int_equal(r->rate, 50000000);
	r = t_settle_row(rows, n, 1, 5);
	assert_int_equal(r->volume, 100000000);
	assert_int_equal(r->rate, 1000000);
	r = t_settle_row(rows, n, 2, 7);
	assert_int_equal(r->volume, 0);
	assert_int_equal(r->rate, 1000000);
	r = t_settle_row(rows, n, 3, 9);
	assert_int_equal(r->login, 3);
	assert_int_equal(r->volume, 1);
	assert_int_equal(r->rate, -1);
	r = t_settle_row(rows, n, 4, 11);
	if (negative_rate)
		assert_int_equal(r->rate, -2);

	/* Paging: after, max. */
	t_ok(fx->s, fx->ops->fetch_unsettled(fx->s, 3, 2, rows, &n), "fetch_unsettled");
	assert_int_equal(n, 2);
	t_settle_row(rows, n, 0, 5);
	t_settle_row(rows, n, 1, 7);
	t_ok(fx->s, fx->ops->fetch_unsettled(fx->s, 11, 8, rows, &n), "fetch_unsettled");
	assert_int_equal(n, 0);
}

static void test_settle(void **state)
{
	struct t_fix *fx = *state;
	const struct record recs[] = { { 1, 1, 125000000 }, { 2, 1, 1 }, { 3, 1, 2 } };
	struct store_settle first = { .ticket = 2, .fee = 100 };            /* 1.00 */
	struct store_settle rows[2] = { { .ticket = 1, .fee = 938 },        /* 9.38 */
					{ .ticket = 2, .fee = 4200 } };     /* ignored */
	struct store_settle got[4];
	char before[256], after[256];
	size_t n;

	t_migrate(fx);
	t_insert(fx, recs, 3);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->settle(fx->s, &first, 1), "settle");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");
	t_sql("SELECT settled_at FROM fee WHERE ticket = 2", before, sizeof(before));
	assert_true(strlen(before) > 1);

	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->settle(fx->s, rows, 2), "settle");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");

	t_sql_expect("SELECT ticket, status, fee FROM fee WHERE fee IS NOT NULL ORDER BY ticket",
		     "1\tY\t9.38\n2\tY\t1.00\n");
	t_sql_expect("SELECT ticket FROM fee WHERE status = 'Y' AND settled_at IS NOT NULL"
		     " ORDER BY ticket", "1\n2\n");
	t_sql_expect("SELECT ticket FROM fee WHERE status = 'N' AND fee IS NULL"
		     " AND settled_at IS NULL", "3\n");
	/* The row settled first kept its fee and its settled_at. */
	t_sql("SELECT settled_at FROM fee WHERE ticket = 2", after, sizeof(after));
	assert_string_equal(before, after);

	t_ok(fx->s, fx->ops->fetch_unsettled(fx->s, 0, 4, got, &n), "fetch_unsettled");
	assert_int_equal(n, 1);
	t_settle_row(got, n, 0, 3);
}

/* volume and fee read naturally (1.25, 9.38) in plain SQL, not scaled integers. */
static void test_reads_naturally(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 42, 1, 125000000 };
	const struct store_settle row = { .ticket = 42, .fee = 938 };

	t_migrate(fx);
	t_insert(fx, &rec, 1);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->settle(fx->s, &row, 1), "settle");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");
	t_sql_expect_dec("SELECT volume, fee FROM fee", "1.25\t9.38\n");
	t_sql_expect("SELECT fee FROM fee", "9.38\n");
}

/* ==== Adopting a classic fee table ==== */

static void t_create_classic(const char *rows)
{
	char sql[512];

	t_sql("CREATE TABLE fee (ticket BIGINT, login BIGINT, volume DECIMAL(12,2),"
	      " status CHAR(1))", NULL, 0);
	snprintf(sql, sizeof(sql), "INSERT INTO fee (ticket, login, volume, status) VALUES %s",
		 rows);
	t_sql(sql, NULL, 0);
}

static void test_classic_adoption(void **state)
{
	struct t_fix *fx = *state;
	const int64_t tickets[] = { 1, 2, 3, 4 };
	const struct record fresh = { 4, 40, 125000000 };
	const struct record dup = { 2, 99, 1 };
	struct store_settle got[8];
	struct store_row rows[4];
	size_t n;
	int r;

	t_create_classic("(1, 10, 1.50, 'N'), (2, 20, 2.25, 'Y'), (3, 30, 0, 'N')");
	t_migrate(fx);
	t_migrate(fx);
	t_sql_expect("SELECT version FROM feed_schema", "2\n");
	t_sql_expect_dec("SELECT ticket, login, volume, status FROM fee ORDER BY ticket",
			 "1\t10\t1.5\tN\n2\t20\t2.25\tY\n3\t30\t0\tN\n");

	t_lookup(fx, tickets, 4, rows, &n);
	assert_int_equal(n, 3);
	t_expect_row(rows, n, 1, 10, 150000000);
	t_expect_row(rows, n, 2, 20, 225000000);
	t_expect_row(rows, n, 3, 30, 0);

	t_insert(fx, &fresh, 1);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	fx->s->errmsg[0] = '\0';
	r = fx->ops->insert(fx->s, &dup, NULL, 1);
	t_expect_fail(fx->s, r, -EEXIST, "insert of an existing ticket into the adopted table");
	t_ok(fx->s, fx->ops->rollback(fx->s), "rollback");

	t_lookup(fx, tickets, 4, rows, &n);
	assert_int_equal(n, 4);
	t_expect_row(rows, n, 4, 40, 125000000);
	t_sql_expect("SELECT count(*) FROM fee", "4\n");
	t_sql_expect("SELECT count(*) FROM fee WHERE ticket = 4 AND status = 'N'"
		     " AND received_at IS NOT NULL", "1\n");

	t_ok(fx->s, fx->ops->fetch_unsettled(fx->s, 0, 8, got, &n), "fetch_unsettled");
	assert_int_equal(n, 3);
	t_settle_row(got, n, 0, 1);
	t_settle_row(got, n, 1, 3);
	t_settle_row(got, n, 2, 4);
}

/* An adopted table's own ticket key, whatever its name, is still the ticket key (-EEXIST). */
static void test_classic_own_ticket_key(void **state)
{
	struct t_fix *fx = *state;
	const struct record dup = { 1, 99, 1 }, fresh = { 2, 10, 1 };
	int r;

	t_sql("CREATE TABLE fee (ticket BIGINT, login BIGINT, volume DECIMAL(12,2),"
	      " status CHAR(1), CONSTRAINT classic_ticket UNIQUE (ticket))", NULL, 0);
	t_sql("INSERT INTO fee (ticket, login, volume, status) VALUES (1, 10, 1.50, 'N')", NULL, 0);
	t_migrate(fx);
	t_insert(fx, &fresh, 1);
	for (int round = 0; round < 2; round++) {
		t_ok(fx->s, fx->ops->begin(fx->s), "begin");
		fx->s->errmsg[0] = '\0';
		r = fx->ops->insert(fx->s, &dup, NULL, 1);
		t_expect_fail(fx->s, r, -EEXIST, "insert of an existing ticket (key classic_ticket)");
		t_ok(fx->s, fx->ops->rollback(fx->s), "rollback");
	}
	t_sql_expect("SELECT ticket, login FROM fee ORDER BY ticket", "1\t10\n2\t10\n");
}

static void test_classic_duplicates(void **state)
{
	struct t_fix *fx = *state;
	int r;

	t_create_classic("(1, 10, 1.50, 'N'), (1, 11, 2.00, 'N'), (2, 20, 2.25, 'Y')");
	fx->s->errmsg[0] = '\0';
	r = fx->ops->migrate(fx->s);
	/* the error contract (store.h): the same errno on every backend */
	t_expect_fail(fx->s, r, -EINVAL, "migrate of a fee table with duplicate tickets");
	if (!strstr(fx->s->errmsg, "SELECT ticket FROM fee GROUP BY ticket HAVING COUNT(*) > 1"))
		fail_msg("errmsg does not say how to find the duplicates: %s", fx->s->errmsg);
	t_sql_expect_dec("SELECT ticket, login, volume FROM fee ORDER BY ticket, login",
			 "1\t10\t1.5\n1\t11\t2\n2\t20\t2.25\n");
	/* Still refused on a second attempt, still nothing lost. */
	assert_true(fx->ops->migrate(fx->s) < 0);
	t_sql_expect("SELECT count(*) FROM fee", "3\n");
}

/* A fee table that is neither feed's nor a classic one is refused (-EINVAL), unchanged. */
static void test_foreign_fee_table(void **state)
{
	struct t_fix *fx = *state;
	int r;

	t_sql("CREATE TABLE fee (ticket BIGINT, login BIGINT)", NULL, 0);
	fx->s->errmsg[0] = '\0';
	r = fx->ops->migrate(fx->s);
	t_expect_fail(fx->s, r, -EINVAL, "migrate of a fee table without a volume column");
	if (!strstr(fx->s->errmsg, "no column volume"))
		fail_msg("errmsg does not name the missing column: %s", fx->s->errmsg);
	t_sql_expect("SELECT count(*) FROM fee", "0\n");
}

/* A schema written by a newer feed is refused, the same way on every backend, and left alone. */
static void test_schema_newer(void **state)
{
	struct t_fix *fx = *state;
	int r;

	t_migrate(fx);
	t_sql("UPDATE feed_schema SET version = 99", NULL, 0);
	fx->s->errmsg[0] = '\0';
	r = fx->ops->migrate(fx->s);
	t_expect_fail(fx->s, r, -EPROTO, "migrate of a schema of version 99");
	if (!strstr(fx->s->errmsg, "99") || !strstr(fx->s->errmsg, "newer"))
		fail_msg("errmsg does not name the newer version: %s", fx->s->errmsg);
	t_sql_expect("SELECT version FROM feed_schema", "99\n");
}

/* ==== The sender: fee.source, fee_reject.source ==== */

static struct store_req t_req_from(const struct record *recs, size_t n, const char *body,
				   const char *source)
{
	struct store_req q = t_req(recs, n, body);

	q.source = source;
	return q;
}

/* SQL for source in lower-case hex, "NULL" for NULL: a client's output escapes a tab or a backslash. */
static const char *t_hex_source(void)
{
	return t_is("postgresql") ? "CASE WHEN source IS NULL THEN 'NULL'"
				    " ELSE encode(convert_to(source, 'UTF8'), 'hex') END"
				  : "CASE WHEN source IS NULL THEN 'NULL' ELSE lower(hex(source)) END";
}

static void t_hex(const char *s, char *buf, size_t size)
{
	buf[0] = '\0';
	for (size_t i = 0; s[i] && 2 * i + 3 <= size; i++)
		snprintf(buf + 2 * i, 3, "%02x", (unsigned char)s[i]);
}

/* store_write() of reqs[0..n) in one call; fails the test if it fails. */
static void t_write(struct t_fix *fx, struct store_req *q, size_t n)
{
	struct store_req *reqs[16];
	struct store_batch *batch = store_batch_new(256);

	assert_non_null(batch);
	assert_true(n <= 16);
	for (size_t i = 0; i < n; i++)
		reqs[i] = &q[i];
	t_ok(fx->s, store_write(fx->s, batch, reqs, n), "store_write");
	store_batch_free(&batch);
}

/*
 * Each record carries its request's sender, in a batch of a few rows and in
 * one of many (PostgreSQL: INSERT ... VALUES, and INSERT ... SELECT FROM
 * unnest(); MariaDB: the bulk array); "" and NULL are SQL NULL; a quote, a
 * backslash and a tab are stored as they are. fee_reject carries it too.
 */
static void test_source_roundtrip(void **state)
{
	enum { MANY = 100 };
	struct t_fix *fx = *state;
	static const char odd[] = "o'brien\\x\ty";
	const struct record a[] = { { 1, 1, 1 }, { 2, 1, 2 } }, b = { 3, 2, 3 }, c = { 4, 3, 4 },
			    d = { 5, 4, 5 }, e = { 6, 5, 6 };
	struct record many[MANY];
	struct store_req q[7];
	char want[256], sql[256], hex[64];

	t_migrate(fx);
	q[0] = t_req_from(a, 2, "1,1,1\n2,1,2", "127.0.0.1");
	q[1] = t_req_from(&b, 1, "3,2,3", "client-a");
	q[2] = t_req_from(&c, 1, "4,3,4", "");
	q[3] = t_req_from(&d, 1, "5,4,5", NULL);
	q[4] = t_req_from(&e, 1, "6,5,6", odd);
	q[5] = t_req_from(NULL, 0, "junk", "client-b");
	q[6] = t_req_from(NULL, 0, "junk too", "");
	q[5].bad_input = q[6].bad_input = true;
	snprintf(q[5].reason, sizeof(q[5].reason), "bad");
	snprintf(q[6].reason, sizeof(q[6].reason), "bad too");
	t_write(fx, q, 7);
	for (size_t i = 0; i < 5; i++)
		assert_false(q[i].rejected);
	t_sql_expect("SELECT ticket, coalesce(source, 'NULL') FROM fee WHERE ticket < 6"
		     " ORDER BY ticket",
		     "1\t127.0.0.1\n2\t127.0.0.1\n3\tclient-a\n4\tNULL\n5\tNULL\n");
	t_hex(odd, hex, sizeof(hex));
	snprintf(sql, sizeof(sql), "SELECT %s FROM fee WHERE ticket = 6", t_hex_source());
	snprintf(want, sizeof(want), "%s\n", hex);
	t_sql_expect(sql, want);
	t_sql_expect("SELECT reason, coalesce(source, 'NULL') FROM fee_reject ORDER BY id",
		     "bad\tclient-b\nbad too\tNULL\n");

	/* many rows from three senders, in runs, in one insert */
	for (size_t i = 0; i < MANY; i++)
		many[i] = (struct record){ (int64_t)(100 + i), 7, 1 };
	q[0] = t_req_from(many, 40, "x", "10.1.2.3");
	q[1] = t_req_from(many + 40, 35, "x", odd);
	q[2] = t_req_from(many + 75, 25, "x", "");
	t_write(fx, q, 3);
	snprintf(sql, sizeof(sql), "SELECT %s, count(*) FROM fee WHERE ticket >= 100"
		 " GROUP BY source ORDER BY 2", t_hex_source());
	t_hex("10.1.2.3", want, sizeof(want));
	snprintf(want + strlen(want), sizeof(want) - strlen(want), "\t40\n");
	{
		char all[512];

		snprintf(all, sizeof(all), "NULL\t25\n%s\t35\n%s", hex, want);
		t_sql_expect(sql, all);
	}
	t_sql_expect("SELECT min(ticket), max(ticket) FROM fee WHERE source = '10.1.2.3'",
		     "100\t139\n");
}

/*
 * An identical re-send from another sender is accepted (not rejected) and
 * keeps the first sender: in a later batch and within one batch.
 */
static void test_source_resend_keeps_first(void **state)
{
	struct t_fix *fx = *state;
	const struct record r10 = { 10, 1, 100 }, r11 = { 11, 1, 110 };
	struct store_req q[2];

	t_migrate(fx);
	q[0] = t_req_from(&r10, 1, "10,1,100", "client-a");
	t_write(fx, q, 1);
	q[0] = t_req_from(&r10, 1, "10,1,100", "client-b");
	t_write(fx, q, 1);
	assert_false(q[0].rejected);

	q[0] = t_req_from(&r11, 1, "11,1,110", "127.0.0.1");
	q[1] = t_req_from(&r11, 1, "11,1,110", "client-b");
	t_write(fx, q, 2);
	assert_false(q[0].rejected);
	assert_false(q[1].rejected);
	t_sql_expect("SELECT ticket, source FROM fee ORDER BY ticket",
		     "10\tclient-a\n11\t127.0.0.1\n");
	t_sql_expect("SELECT count(*) FROM fee_reject", "0\n");
}

/*
 * migrate() once more, beside another session that read fee and wrote
 * fee_reject in a transaction it keeps open: DDL on either table would wait
 * for it and fail after the lock timeout (-EAGAIN). On SQLite (one write
 * lock: the reader would block migrate itself) the schema cookie says
 * whether any DDL ran.
 */
static void t_migrate_no_ddl(struct t_fix *fx)
{
	const struct store_reject rj = { "tcp://127.0.0.1:5555", "reader", "x", 1, "reader" };
	const int64_t ticket = 1;
	char before[64], after[64];
	struct store_row row;
	struct store *s2;
	size_t n;

	if (t_is("sqlite")) {
		t_sql("PRAGMA schema_version", before, sizeof(before));
		t_migrate(fx);
		t_sql("PRAGMA schema_version", after, sizeof(after));
		if (strcmp(before, after) != 0)
			fail_msg("a second migrate changed the schema (schema_version %s -> %s)",
				 before, after);
		return;
	}
	s2 = t_open(fx->ops);
	t_ok(s2, fx->ops->begin(s2), "begin (reader)");
	t_ok(s2, fx->ops->lookup(s2, &ticket, 1, &row, &n), "lookup (reader)");
	t_ok(s2, fx->ops->insert_rejects(s2, &rj, 1), "insert_rejects (reader)");
	t_ok(fx->s, fx->ops->migrate(fx->s), "migrate beside an open reader of fee and fee_reject");
	fx->ops->rollback(s2);
	fx->ops->close(s2);
}

/* Removes the schema 2 columns: the database as a feed of schema 1 left it. */
static void t_make_schema1(void)
{
	t_sql("ALTER TABLE fee DROP COLUMN source", NULL, 0);
	t_sql("ALTER TABLE fee_reject DROP COLUMN source", NULL, 0);
	t_sql("UPDATE feed_schema SET version = 1", NULL, 0);
}

/* A schema 1 database gains both columns; its rows keep NULL; new rows carry the sender. */
static void test_source_migrate_schema1(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 2, 20, 1 };
	struct store_req q;

	t_migrate(fx);
	t_make_schema1();
	t_sql("INSERT INTO fee (ticket, login, volume, status) VALUES (1, 10, 1.5, 'N')", NULL, 0);
	t_sql("INSERT INTO fee_reject (endpoint, reason, body) VALUES ('tcp://x', 'old', 'x')",
	      NULL, 0);
	t_migrate(fx);
	t_sql_expect("SELECT version FROM feed_schema", "2\n");
	t_sql_expect("SELECT ticket FROM fee WHERE source IS NULL", "1\n");
	t_sql_expect("SELECT reason FROM fee_reject WHERE source IS NULL", "old\n");
	q = t_req_from(&rec, 1, "2,20,1", "client-a");
	t_write(fx, &q, 1);
	t_sql_expect("SELECT ticket, coalesce(source, 'NULL') FROM fee ORDER BY ticket",
		     "1\tNULL\n2\tclient-a\n");
	t_migrate_no_ddl(fx);
	t_sql_expect("SELECT version FROM feed_schema", "2\n");
}

/* A classic table adopted gains fee.source; its rows keep NULL. */
static void test_source_classic(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 4, 40, 1 };
	struct store_req q;

	t_create_classic("(1, 10, 1.50, 'N'), (2, 20, 2.25, 'Y'), (3, 30, 0, 'N')");
	t_migrate(fx);
	t_sql_expect("SELECT count(*) FROM fee WHERE source IS NULL", "3\n");
	q = t_req_from(&rec, 1, "4,40,1", "10.0.0.7");
	t_write(fx, &q, 1);
	t_sql_expect("SELECT ticket FROM fee WHERE source = '10.0.0.7'", "4\n");
	t_migrate_no_ddl(fx);
}

/* ==== Connections ==== */

/* reconnect() on a healthy connection: the data stays, the connection works. */
static void test_reconnect_healthy(void **state)
{
	struct t_fix *fx = *state;
	const struct record recs[] = { { 50, 1, 1 }, { 51, 1, 2 } };
	const int64_t tickets[] = { 50, 51 };
	struct store_row rows[2];
	size_t n;

	t_migrate(fx);
	t_insert(fx, &recs[0], 1);
	t_ok(fx->s, fx->ops->reconnect(fx->s), "reconnect");
	t_insert(fx, &recs[1], 1);
	t_lookup(fx, tickets, 2, rows, &n);
	assert_int_equal(n, 2);
}

/* Server-based backends: the server goes away -> -ENOTCONN; reconnect() after it is back. */
static void test_server_restart(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 60, 1, 1 };
	const int64_t ticket = 60;
	struct store_row row;
	int r, st;
	size_t n;

	t_migrate(fx);
	st = t_shell(t_env.stop, "", 0, NULL, 0);
	if (st != 0)
		fail_msg("FEED_TEST_DB_STOP exited with %d", st);
	fx->s->errmsg[0] = '\0';
	r = fx->ops->begin(fx->s);
	if (r == 0)
		r = fx->ops->insert(fx->s, &rec, NULL, 1);
	fx->ops->rollback(fx->s);
	st = t_shell(t_env.start, "", 0, NULL, 0);
	if (st != 0)
		fail_msg("FEED_TEST_DB_START exited with %d", st);
	t_expect_fail(fx->s, r, -ENOTCONN, "begin/insert with the server stopped");

	t_ok(fx->s, fx->ops->reconnect(fx->s), "reconnect");
	t_insert(fx, &rec, 1);
	t_lookup(fx, &ticket, 1, &row, &n);
	assert_int_equal(n, 1);
}

/* ==== SQLite only ==== */

static void test_sqlite_bad_urls(void **state)
{
	static const char *const bad[] = {
		"sqlite://relative/path.db", "sqlite:relative.db", "sqlite://", "sqlite:///",
		"sqlite:///tmp/", "sqlite:///tmp/x.db?mode=ro", "postgresql://localhost/feed",
	};
	struct store_params p = { .durability = STORE_DURABLE_FULL };
	struct store *s;
	char err[512];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		s = NULL;
		err[0] = '\0';
		p.url = bad[i];
		assert_int_equal(store_sqlite_ops.open(&p, &s, err, sizeof(err)), -EINVAL);
		assert_null(s);
		if (!strstr(err, "sqlite:///"))
			fail_msg("errmsg for %s does not show the accepted form: %s", bad[i], err);
	}
}

static void test_sqlite_unusable_files(void **state)
{
	struct t_fix *fx = *state;
	struct store_params p = { .durability = STORE_DURABLE_NORMAL };
	char url[600], path[512], err[512];
	const char *db = t_env.url + strlen("sqlite://");
	struct store *s = NULL;
	int fd, r;

	/* The directory does not exist. */
	snprintf(url, sizeof(url), "sqlite://%s.missing-dir/feed.db", db);
	p.url = url;
	err[0] = '\0';
	r = fx->ops->open(&p, &s, err, sizeof(err));
	assert_true(r < 0);
	assert_null(s);
	if (!strstr(err, ".missing-dir"))
		fail_msg("errmsg does not name the path: %s", err);

	/* A file that is not a database. */
	snprintf(path, sizeof(path), "%s.not-a-db", db);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "this is not an SQLite database, just text\n", 42), 42);
	close(fd);
	snprintf(url, sizeof(url), "sqlite://%s", path);
	err[0] = '\0';
	r = fx->ops->open(&p, &s, err, sizeof(err));
	unlink(path);
	assert_true(r < 0);
	assert_null(s);
	if (!strstr(err, path))
		fail_msg("errmsg does not name the path: %s", err);

	/* A path that is a directory. */
	snprintf(path, sizeof(path), "%s.dir", db);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(url, sizeof(url), "sqlite://%s", path);
	err[0] = '\0';
	r = fx->ops->open(&p, &s, err, sizeof(err));
	rmdir(path);
	assert_true(r < 0);
	assert_null(s);
	if (!strstr(err, path))
		fail_msg("errmsg does not name the path: %s", err);
}

static void test_sqlite_wal(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 1, 1, 125000000 };
	const struct store_settle row = { .ticket = 1, .fee = 900 };

	t_migrate(fx);
	t_sql_expect("PRAGMA journal_mode", "wal\n");
	/* Exactly the canonical text, no trailing zeros, stored as text. */
	t_insert(fx, &rec, 1);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->settle(fx->s, &row, 1), "settle");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");
	t_sql_expect("SELECT volume, typeof(volume), fee, typeof(fee) FROM fee",
		     "1.25\ttext\t9.00\ttext\n");
	/* Timestamps are UTC ISO 8601. */
	t_sql_expect("SELECT count(*) FROM fee WHERE received_at LIKE '____-__-__T__:__:__.___Z'"
		     " AND settled_at LIKE '____-__-__T__:__:__.___Z'", "1\n");
	/* volume and fee are TEXT, so SQLite keeps them exact. */
	t_sql_expect("SELECT name, type FROM pragma_table_info('fee') WHERE name IN"
		     " ('volume', 'fee') ORDER BY name", "fee\tTEXT\nvolume\tTEXT\n");
	t_sql_expect("SELECT count(*) FROM sqlite_master WHERE type = 'index'"
		     " AND name = 'fee_unsettled' AND sql LIKE '%WHERE status = ''N''%'", "1\n");
}

/* A second writer waits busy_timeout for the write lock, then gets -EAGAIN. */
static void test_sqlite_busy(void **state)
{
	struct t_fix *fx = *state;
	const struct record rec = { 70, 1, 1 };
	struct store *s2;
	int r;

	t_migrate(fx);
	s2 = t_open(fx->ops);
	t_ok(fx->s, fx->ops->begin(fx->s), "begin");
	t_ok(fx->s, fx->ops->insert(fx->s, &rec, NULL, 1), "insert");
	s2->errmsg[0] = '\0';
	r = fx->ops->begin(s2);
	t_expect_fail(s2, r, -EAGAIN, "begin while another connection writes");
	t_ok(fx->s, fx->ops->commit(fx->s), "commit");
	t_ok(s2, fx->ops->rollback(s2), "rollback");
	t_ok(s2, fx->ops->begin(s2), "begin after the other writer committed");
	t_ok(s2, fx->ops->rollback(s2), "rollback");
	fx->ops->close(s2);
}

/* ==== main ==== */

#define T(f) cmocka_unit_test_setup_teardown(f, t_setup, t_teardown)

int main(void)
{
	const struct CMUnitTest common[] = {
		T(test_migrate_twice),
		T(test_roundtrip_exact),
		T(test_lookup_absent),
		T(test_insert_many),
		T(test_insert_existing),
		T(test_insert_commit),
		T(test_refused_record),
		T(test_rollback_discards),
		T(test_rollback_keeps_the_cause),
		T(test_rejects_verbatim),
		T(test_reject_reason_broken_utf8),
		T(test_fetch_unsettled),
		T(test_settle),
		T(test_reads_naturally),
		T(test_classic_adoption),
		T(test_classic_duplicates),
		T(test_schema_newer),
		T(test_foreign_fee_table),
		T(test_classic_own_ticket_key),
		T(test_reconnect_healthy),
		T(test_unique_other_key),
		T(test_write_isolates_unique_violation),
		T(test_source_roundtrip),
		T(test_source_resend_keeps_first),
		T(test_source_migrate_schema1),
		T(test_source_classic),
	};
	const struct CMUnitTest sqlite_only[] = {
		cmocka_unit_test(test_sqlite_bad_urls),
		T(test_sqlite_unusable_files),
		T(test_sqlite_wal),
		T(test_sqlite_busy),
	};
	const struct CMUnitTest server_only[] = {
		T(test_server_restart),
		T(test_server_limit_reject),
	};
	const struct CMUnitTest mysql_only[] = {
		T(test_mysql_packet_closes_connection),
	};
	int failed;

	t_env_load();
	failed = cmocka_run_group_tests_name("store", common, NULL, NULL);
	if (t_is("sqlite"))
		failed += cmocka_run_group_tests_name("store_sqlite", sqlite_only, NULL, NULL);
	else
		failed += cmocka_run_group_tests_name("store_server", server_only, NULL, NULL);
	if (t_is("mysql"))
		failed += cmocka_run_group_tests_name("store_mysql", mysql_only, NULL, NULL);
	return failed == 0 ? 0 : 1;
}
