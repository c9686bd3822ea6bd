/*
 * raw_mysql.c - the MySQL/MariaDB ceiling: multi-row INSERTs (1000 rows per
 * statement) of rows shaped like feed's into a scratch InnoDB table,
 * ROWS_PER_TRANSACTION (default 10000) per transaction.
 *
 *   raw_mysql -u mysql://user@host:port/db [-p PASSWORD_FILE] [-N ROWS]
 *             [-b ROWS_PER_TRANSACTION]
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

#include <mysql.h>

#include "bench_util.h"

#define RAWM_PER_STMT 1000
#define RAWM_SQL_MAX (RAWM_PER_STMT * 96 + 256)

static int rawm_exec(MYSQL *m, const char *sql, size_t len)
{
	if (mysql_real_query(m, sql, len) != 0) {
		fprintf(stderr, "raw_mysql: %.60s...: %s\n", sql, mysql_error(m));
		return -EIO;
	}
	return 0;
}

static int rawm_q(MYSQL *m, const char *sql)
{
	return rawm_exec(m, sql, strlen(sql));
}

int main(int argc, char **argv)
{
	const char *url = NULL, *pwfile = NULL;
	long rows = 1000000, per_tx = 10000;
	char pw[256] = "", *sql = NULL;
	struct bench_url u;
	MYSQL *m = NULL;
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
	if (!url || optind != argc || bench_url_parse(url, &u) < 0)
		goto usage;
	if (pwfile && *pwfile && bench_read_password(pwfile, pw, sizeof(pw)) < 0) {
		fprintf(stderr, "raw_mysql: cannot read %s\n", pwfile);
		return 1;
	}
	sql = malloc(RAWM_SQL_MAX);
	m = mysql_init(NULL);
	if (!sql || !m)
		goto out;
	if (!mysql_real_connect(m, u.host[0] ? u.host : "127.0.0.1", u.user[0] ? u.user : NULL,
				pw[0] ? pw : (u.password[0] ? u.password : NULL),
				u.db[0] ? u.db : NULL, u.port, NULL, 0)) {
		fprintf(stderr, "raw_mysql: %s\n", mysql_error(m));
		goto out;
	}
	if (rawm_q(m, "DROP TABLE IF EXISTS raw_fee") < 0 ||
	    rawm_q(m, "CREATE TABLE raw_fee (ticket BIGINT PRIMARY KEY, login BIGINT NOT NULL,"
		   " volume DECIMAL(20,8) NOT NULL, status CHAR(1) NOT NULL,"
		   " received_at DATETIME(6) NOT NULL) ENGINE=InnoDB") < 0 ||
	    rawm_q(m, "SET autocommit = 0") < 0)
		goto out;
	start = bench_now();
	for (long i = 0; i < rows; i += per_tx) {
		long end = rows - i < per_tx ? rows : i + per_tx;

		for (long j = i; j < end; j += RAWM_PER_STMT) {
			size_t len = (size_t)snprintf(sql, RAWM_SQL_MAX, "INSERT INTO raw_fee VALUES ");

			for (long k = j; k < end && k < j + RAWM_PER_STMT; k++)
				len += (size_t)snprintf(sql + len, RAWM_SQL_MAX - len,
							"%s(%ld,%ld,1.25,'N','2024-01-01 00:00:00')",
							k == j ? "" : ",", k + 1, 1 + (k + 1) % 1000);
			if (rawm_exec(m, sql, len) < 0)
				goto out;
		}
		if (rawm_q(m, "COMMIT") < 0)
			goto out;
	}
	bench_result((uint64_t)rows, bench_now() - start, NULL, 0);
	rawm_q(m, "DROP TABLE raw_fee");
	ret = 0;
out:
	if (m)
		mysql_close(m);
	free(sql);
	return ret;
usage:
	fprintf(stderr, "usage: raw_mysql -u mysql://user@host:port/db [-p PASSWORD_FILE] [-N ROWS]"
		" [-b ROWS_PER_TRANSACTION]\n");
	return 2;
}
