/*
 * classic.c - the baseline: the "classic loop" daemon feed replaces.
 *
 *   classic -e ENDPOINT -u URL [-p PASSWORD_FILE]
 *
 * One thread, one REP socket. For each record of a request: an autocommitted
 * INSERT of (ticket, login, volume, 'N') into classic_fee, then an
 * autocommitted UPDATE to status 'Y', then the reply TRUE. The database is
 * chosen by URL scheme like feed's (sqlite:///abs/path with WAL and
 * synchronous=FULL as feed uses, postgresql://..., mysql://...). The table
 * classic_fee is dropped and re-created at start. Prints "ready" on stdout
 * once it serves; stops on SIGINT/SIGTERM.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <mysql.h>
#include <sqlite3.h>
#include <zmq.h>

#include "bench_util.h"

#define CLASSIC_FIELD 32

static volatile sig_atomic_t classic_stop;

static void classic_on_signal(int sig)
{
	(void)sig;
	classic_stop = 1;
}

struct classic_db {
	const char *kind;
	sqlite3 *lite;
	sqlite3_stmt *ins, *upd;
	PGconn *pg;
	MYSQL *my;
	char err[256];
};

/* ==== Database ==== */

static int classic_lite_exec(struct classic_db *db, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(db->lite, sql, NULL, NULL, &msg) != SQLITE_OK) {
		snprintf(db->err, sizeof(db->err), "%s: %s", sql, msg ? msg : "?");
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

static int classic_pg_exec(struct classic_db *db, const char *sql)
{
	PGresult *res = PQexec(db->pg, sql);
	int r = 0;

	if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
		snprintf(db->err, sizeof(db->err), "%s", PQerrorMessage(db->pg));
		r = -EIO;
	}
	PQclear(res);
	return r;
}

static int classic_my_exec(struct classic_db *db, const char *sql)
{
	if (mysql_query(db->my, sql) != 0) {
		snprintf(db->err, sizeof(db->err), "%s", mysql_error(db->my));
		return -EIO;
	}
	return 0;
}

static int classic_open(struct classic_db *db, const char *url, const char *pwfile)
{
	struct bench_url u;
	char pw[256] = "";

	if (bench_url_parse(url, &u) < 0) {
		snprintf(db->err, sizeof(db->err), "cannot parse URL");
		return -EINVAL;
	}
	if (pwfile && *pwfile && bench_read_password(pwfile, pw, sizeof(pw)) < 0) {
		snprintf(db->err, sizeof(db->err), "cannot read %s", pwfile);
		return -EIO;
	}
	if (strcmp(u.scheme, "sqlite") == 0) {
		db->kind = "sqlite";
		if (sqlite3_open_v2(u.path, &db->lite, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
				    NULL) != SQLITE_OK) {
			snprintf(db->err, sizeof(db->err), "%s", sqlite3_errmsg(db->lite));
			return -EIO;
		}
		sqlite3_busy_timeout(db->lite, 5000);
		if (classic_lite_exec(db, "PRAGMA journal_mode=WAL") < 0 ||
		    classic_lite_exec(db, "PRAGMA synchronous=FULL") < 0 ||
		    classic_lite_exec(db, "DROP TABLE IF EXISTS classic_fee") < 0 ||
		    classic_lite_exec(db, "CREATE TABLE classic_fee (ticket INTEGER PRIMARY KEY,"
				      " login INTEGER NOT NULL, volume TEXT NOT NULL,"
				      " status TEXT NOT NULL)") < 0)
			return -EIO;
		if (sqlite3_prepare_v2(db->lite, "INSERT INTO classic_fee VALUES (?1, ?2, ?3, 'N')",
				       -1, &db->ins, NULL) != SQLITE_OK ||
		    sqlite3_prepare_v2(db->lite, "UPDATE classic_fee SET status = 'Y' WHERE ticket = ?1",
				       -1, &db->upd, NULL) != SQLITE_OK) {
			snprintf(db->err, sizeof(db->err), "%s", sqlite3_errmsg(db->lite));
			return -EIO;
		}
		return 0;
	}
	if (strcmp(u.scheme, "postgresql") == 0 || strcmp(u.scheme, "postgres") == 0) {
		const char *keys[] = { "dbname", "password", NULL };
		const char *vals[] = { url, pw[0] ? pw : NULL, NULL };
		PGresult *res;

		db->kind = "postgresql";
		db->pg = PQconnectdbParams(keys, vals, 1);
		if (PQstatus(db->pg) != CONNECTION_OK) {
			snprintf(db->err, sizeof(db->err), "%s", PQerrorMessage(db->pg));
			return -EIO;
		}
		if (classic_pg_exec(db, "SET client_min_messages = warning") < 0 ||
		    classic_pg_exec(db, "DROP TABLE IF EXISTS classic_fee") < 0 ||
		    classic_pg_exec(db, "CREATE TABLE classic_fee (ticket bigint PRIMARY KEY,"
				    " login bigint NOT NULL, volume numeric(20,8) NOT NULL,"
				    " status char(1) NOT NULL)") < 0)
			return -EIO;
		res = PQprepare(db->pg, "ins", "INSERT INTO classic_fee VALUES ($1, $2, $3, 'N')",
				3, NULL);
		PQclear(res);
		res = PQprepare(db->pg, "upd", "UPDATE classic_fee SET status = 'Y' WHERE ticket = $1",
				1, NULL);
		PQclear(res);
		return 0;
	}
	if (strcmp(u.scheme, "mysql") == 0 || strcmp(u.scheme, "mariadb") == 0) {
		const char *pass = pw[0] ? pw : (u.password[0] ? u.password : NULL);

		db->kind = "mysql";
		db->my = mysql_init(NULL);
		if (!db->my || !mysql_real_connect(db->my, u.host[0] ? u.host : "127.0.0.1",
						   u.user[0] ? u.user : NULL, pass,
						   u.db[0] ? u.db : NULL, u.port, NULL, 0)) {
			snprintf(db->err, sizeof(db->err), "%s", db->my ? mysql_error(db->my) : "no memory");
			return -EIO;
		}
		if (classic_my_exec(db, "SET autocommit = 1") < 0 ||
		    classic_my_exec(db, "DROP TABLE IF EXISTS classic_fee") < 0 ||
		    classic_my_exec(db, "CREATE TABLE classic_fee (ticket BIGINT PRIMARY KEY,"
				    " login BIGINT NOT NULL, volume DECIMAL(20,8) NOT NULL,"
				    " status CHAR(1) NOT NULL) ENGINE=InnoDB") < 0)
			return -EIO;
		return 0;
	}
	snprintf(db->err, sizeof(db->err), "unsupported scheme \"%s\"", u.scheme);
	return -EINVAL;
}

static void classic_close(struct classic_db *db)
{
	sqlite3_finalize(db->ins);
	sqlite3_finalize(db->upd);
	if (db->lite)
		sqlite3_close(db->lite);
	if (db->pg)
		PQfinish(db->pg);
	if (db->my)
		mysql_close(db->my);
}

/* The classic loop's two statements for one record. */
static int classic_store(struct classic_db *db, const char *ticket, const char *login,
			 const char *volume)
{
	char sql[256];

	if (db->lite) {
		sqlite3_reset(db->ins);
		sqlite3_bind_int64(db->ins, 1, strtoll(ticket, NULL, 10));
		sqlite3_bind_int64(db->ins, 2, strtoll(login, NULL, 10));
		sqlite3_bind_text(db->ins, 3, volume, -1, SQLITE_STATIC);
		if (sqlite3_step(db->ins) != SQLITE_DONE)
			goto lite_fail;
		sqlite3_reset(db->upd);
		sqlite3_bind_int64(db->upd, 1, strtoll(ticket, NULL, 10));
		if (sqlite3_step(db->upd) != SQLITE_DONE)
			goto lite_fail;
		return 0;
lite_fail:
		snprintf(db->err, sizeof(db->err), "%s", sqlite3_errmsg(db->lite));
		return -EIO;
	}
	if (db->pg) {
		const char *v[3] = { ticket, login, volume };
		PGresult *res = PQexecPrepared(db->pg, "ins", 3, v, NULL, NULL, 0);
		int ok = PQresultStatus(res) == PGRES_COMMAND_OK;

		PQclear(res);
		if (ok) {
			res = PQexecPrepared(db->pg, "upd", 1, v, NULL, NULL, 0);
			ok = PQresultStatus(res) == PGRES_COMMAND_OK;
			PQclear(res);
		}
		if (!ok) {
			snprintf(db->err, sizeof(db->err), "%s", PQerrorMessage(db->pg));
			return -EIO;
		}
		return 0;
	}
	/* fields are digits and '.' only (checked by the caller) */
	snprintf(sql, sizeof(sql), "INSERT INTO classic_fee VALUES (%s, %s, %s, 'N')",
		 ticket, login, volume);
	if (classic_my_exec(db, sql) < 0)
		return -EIO;
	snprintf(sql, sizeof(sql), "UPDATE classic_fee SET status = 'Y' WHERE ticket = %s", ticket);
	return classic_my_exec(db, sql);
}

/* ==== Requests ==== */

/* Copies the next comma/newline-terminated field of p into out. */
static const char *classic_field(const char *p, const char *end, char out[CLASSIC_FIELD])
{
	size_t n = 0;

	while (p < end && *p != ',' && *p != '\n') {
		if (n + 1 >= CLASSIC_FIELD || !((*p >= '0' && *p <= '9') || *p == '.'))
			return NULL;
		out[n++] = *p++;
	}
	out[n] = '\0';
	return n > 0 ? p : NULL;
}

static void classic_handle(struct classic_db *db, const char *body, size_t len,
			   char *reply, size_t rsize)
{
	const char *p = body, *end = body + len;

	snprintf(reply, rsize, "TRUE");
	while (p < end) {
		char t[CLASSIC_FIELD], l[CLASSIC_FIELD], v[CLASSIC_FIELD];

		if (!(p = classic_field(p, end, t)) || *p++ != ',' ||
		    !(p = classic_field(p, end, l)) || *p++ != ',' ||
		    !(p = classic_field(p, end, v))) {
			snprintf(reply, rsize, "FALSE: malformed record");
			return;
		}
		if (p < end)
			p++;               /* the newline */
		if (classic_store(db, t, l, v) < 0) {
			snprintf(reply, rsize, "FALSE: %s", db->err);
			return;
		}
	}
}

int main(int argc, char **argv)
{
	const char *endpoint = NULL, *url = NULL, *pwfile = NULL;
	struct sigaction sa = { .sa_handler = classic_on_signal };
	struct classic_db db = { 0 };
	char body[4096], reply[320];
	uint64_t answered = 0;
	void *ctx = NULL, *sock = NULL;
	int opt, linger = 0, ret = 1;

	while ((opt = getopt(argc, argv, "e:u:p:")) != -1) {
		switch (opt) {
		case 'e': endpoint = optarg; break;
		case 'u': url = optarg; break;
		case 'p': pwfile = optarg; break;
		default: goto usage;
		}
	}
	if (!endpoint || !url || optind != argc)
		goto usage;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (classic_open(&db, url, pwfile) < 0) {
		fprintf(stderr, "classic: %s\n", db.err);
		goto out;
	}
	ctx = zmq_ctx_new();
	sock = zmq_socket(ctx, ZMQ_REP);
	zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
	if (zmq_bind(sock, endpoint) < 0) {
		fprintf(stderr, "classic: bind %s: %s\n", endpoint, zmq_strerror(errno));
		goto out;
	}
	printf("ready %s %s\n", db.kind, endpoint);
	fflush(stdout);
	while (!classic_stop) {
		zmq_pollitem_t it = { .socket = sock, .events = ZMQ_POLLIN };
		int n;

		if (zmq_poll(&it, 1, 200) <= 0)
			continue;
		n = zmq_recv(sock, body, sizeof(body), ZMQ_DONTWAIT);
		if (n < 0)
			continue;
		if ((size_t)n > sizeof(body))
			snprintf(reply, sizeof(reply), "FALSE: request too long");
		else
			classic_handle(&db, body, (size_t)n, reply, sizeof(reply));
		zmq_send(sock, reply, strlen(reply), 0);
		answered++;
	}
	fprintf(stderr, "classic: answered %" PRIu64 " requests\n", answered);
	ret = 0;
out:
	if (sock)
		zmq_close(sock);
	if (ctx)
		zmq_ctx_term(ctx);
	classic_close(&db);
	return ret;
usage:
	fprintf(stderr, "usage: classic -e ENDPOINT -u URL [-p PASSWORD_FILE]\n");
	return 2;
}
