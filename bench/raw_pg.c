/*
 * raw_pg.c - the PostgreSQL ceiling: bulk COPY of rows shaped like feed's
 * into a scratch table, ROWS_PER_TRANSACTION (default 10000) per transaction.
 *
 *   raw_pg -u postgresql://... [-p PASSWORD_FILE] [-N ROWS] [-b ROWS_PER_TRANSACTION]
 *
 * The table raw_fee is dropped, created, filled and dropped. Prints a
 * RESULT line (no per-request latency).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "bench_util.h"

#define RAWP_CHUNK 65536

static int rawp_exec(PGconn *c, const char *sql)
{
	PGresult *res = PQexec(c, sql);
	int r = 0;

	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		fprintf(stderr, "raw_pg: %s: %s", sql, PQerrorMessage(c));
		r = -EIO;
	}
	PQclear(res);
	return r;
}

/* COPYs rows [first, first + n). */
static int rawp_copy(PGconn *c, long first, long n)
{
	char buf[RAWP_CHUNK];
	size_t len = 0;
	PGresult *res;
	int r = 0;

	res = PQexec(c, "COPY raw_fee (ticket, login, volume, status, received_at) FROM STDIN");
	if (PQresultStatus(res) != PGRES_COPY_IN) {
		fprintf(stderr, "raw_pg: COPY: %s", PQerrorMessage(c));
		PQclear(res);
		return -EIO;
	}
	PQclear(res);
	for (long j = first; j < first + n; j++) {
		if (len + 128 > sizeof(buf)) {
			if (PQputCopyData(c, buf, (int)len) != 1)
				r = -EIO;
			len = 0;
		}
		len += (size_t)snprintf(buf + len, sizeof(buf) - len,
					"%ld\t%ld\t1.25\tN\t2024-01-01 00:00:00+00\n",
					j + 1, 1 + (j + 1) % 1000);
	}
	if (len > 0 && PQputCopyData(c, buf, (int)len) != 1)
		r = -EIO;
	if (PQputCopyEnd(c, NULL) != 1)
		r = -EIO;
	while ((res = PQgetResult(c)) != NULL) {
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			fprintf(stderr, "raw_pg: COPY: %s", PQerrorMessage(c));
			r = -EIO;
		}
		PQclear(res);
	}
	return r;
}

int main(int argc, char **argv)
{
	const char *url = NULL, *pwfile = NULL;
	long rows = 1000000, per_tx = 10000;
	char pw[256] = "";
	PGconn *c = NULL;
	int64_t start;
	int opt, ret = 1;

	while ((opt = getopt(argc, argv, "u:p:N:b:")) != -1) {
		switch (opt) {
		case 'u': url = optarg; break;
		case 'p': pwfile = optarg; break;
		case 'N': rows = bench_num("-N", optarg, 1, 1000000000); break;
		case 'b': per_tx = bench_num("-b", optarg, 1, 10000000); break;
		default: goto usage;
		}
	}
	if (!url || optind != argc)
		goto usage;
	if (pwfile && *pwfile && bench_read_password(pwfile, pw, sizeof(pw)) < 0) {
		fprintf(stderr, "raw_pg: cannot read %s\n", pwfile);
		return 1;
	}
	{
		const char *keys[] = { "dbname", "password", NULL };
		const char *vals[] = { url, pw[0] ? pw : NULL, NULL };

		c = PQconnectdbParams(keys, vals, 1);
	}
	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(stderr, "raw_pg: %s", PQerrorMessage(c));
		goto out;
	}
	if (rawp_exec(c, "SET client_min_messages = warning") < 0 ||
	    rawp_exec(c, "DROP TABLE IF EXISTS raw_fee") < 0 ||
	    rawp_exec(c, "CREATE TABLE raw_fee (ticket bigint PRIMARY KEY, login bigint NOT NULL,"
		      " volume numeric(20,8) NOT NULL, status char(1) NOT NULL,"
		      " received_at timestamptz NOT NULL)") < 0)
		goto out;
	start = bench_now();
	for (long i = 0; i < rows; i += per_tx) {
		long n = rows - i < per_tx ? rows - i : per_tx;

		if (rawp_exec(c, "BEGIN") < 0 || rawp_copy(c, i, n) < 0 ||
		    rawp_exec(c, "COMMIT") < 0)
			goto out;
	}
	bench_result((uint64_t)rows, bench_now() - start, NULL, 0);
	rawp_exec(c, "DROP TABLE raw_fee");
	ret = 0;
out:
	PQfinish(c);
	return ret;
usage:
	fprintf(stderr, "usage: raw_pg -u URL [-p PASSWORD_FILE] [-N ROWS] [-b ROWS_PER_TRANSACTION]\n");
	return 2;
}
