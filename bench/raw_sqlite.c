/*
 * raw_sqlite.c - the SQLite ceiling: how fast this machine can insert rows
 * shaped like feed's with the same durability (WAL, synchronous=FULL).
 *
 *   raw_sqlite -f PATH [-N ROWS] [-b ROWS_PER_TRANSACTION]
 *
 * One prepared INSERT, ROWS_PER_TRANSACTION (default 10000) rows per
 * transaction, into the scratch table raw_fee (dropped first). Prints a
 * RESULT line (no per-request latency).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <sqlite3.h>

#include "bench_util.h"

static int rawl_exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		fprintf(stderr, "raw_sqlite: %s: %s\n", sql, msg ? msg : "?");
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	long rows = 1000000, per_tx = 10000;
	sqlite3 *db = NULL;
	sqlite3_stmt *ins = NULL;
	int64_t start;
	int opt, ret = 1;

	while ((opt = getopt(argc, argv, "f:N:b:")) != -1) {
		switch (opt) {
		case 'f': path = optarg; break;
		case 'N': rows = bench_num("-N", optarg, 1, 1000000000); break;
		case 'b': per_tx = bench_num("-b", optarg, 1, 10000000); break;
		default: goto usage;
		}
	}
	if (!path || optind != argc)
		goto usage;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
		fprintf(stderr, "raw_sqlite: %s: %s\n", path, sqlite3_errmsg(db));
		goto out;
	}
	sqlite3_busy_timeout(db, 5000);
	if (rawl_exec(db, "PRAGMA journal_mode=WAL") < 0 ||
	    rawl_exec(db, "PRAGMA synchronous=FULL") < 0 ||
	    rawl_exec(db, "DROP TABLE IF EXISTS raw_fee") < 0 ||
	    rawl_exec(db, "CREATE TABLE raw_fee (ticket INTEGER PRIMARY KEY, login INTEGER NOT NULL,"
		      " volume TEXT NOT NULL, status TEXT NOT NULL, received_at INTEGER NOT NULL)") < 0)
		goto out;
	if (sqlite3_prepare_v2(db, "INSERT INTO raw_fee VALUES (?1, ?2, ?3, 'N', ?4)", -1, &ins,
			       NULL) != SQLITE_OK) {
		fprintf(stderr, "raw_sqlite: %s\n", sqlite3_errmsg(db));
		goto out;
	}
	start = bench_now();
	for (long i = 0; i < rows; i += per_tx) {
		if (rawl_exec(db, "BEGIN") < 0)
			goto out;
		for (long j = i; j < rows && j < i + per_tx; j++) {
			sqlite3_reset(ins);
			sqlite3_bind_int64(ins, 1, j + 1);
			sqlite3_bind_int64(ins, 2, 1 + (j + 1) % 1000);
			sqlite3_bind_text(ins, 3, "1.25", 4, SQLITE_STATIC);
			sqlite3_bind_int64(ins, 4, 1700000000 + j / 100000);
			if (sqlite3_step(ins) != SQLITE_DONE) {
				fprintf(stderr, "raw_sqlite: insert: %s\n", sqlite3_errmsg(db));
				goto out;
			}
		}
		if (rawl_exec(db, "COMMIT") < 0)
			goto out;
	}
	bench_result((uint64_t)rows, bench_now() - start, NULL, 0);
	ret = 0;
out:
	sqlite3_finalize(ins);
	if (db) {
		if (ret == 0)
			rawl_exec(db, "DROP TABLE raw_fee");
		sqlite3_close(db);
	}
	return ret;
usage:
	fprintf(stderr, "usage: raw_sqlite -f PATH [-N ROWS] [-b ROWS_PER_TRANSACTION]\n");
	return 2;
}
