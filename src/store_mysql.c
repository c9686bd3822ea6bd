/*
 * store_mysql.c - the MySQL / MariaDB backend (URL schemes mysql://, mariadb://).
 *
 * Owns one Connector/C connection (struct store_mysql), its parsed URL, a
 * bounded SQL buffer and the prepared bulk INSERT. Used by one thread at a
 * time: a writer thread of the pipeline, or the settlement thread.
 *
 * URL: mysql://[user[:password]@]host[:port][,host[:port]...]/database[?key=value&...],
 * every part percent-decoded; keys: socket, ssl-mode (DISABLED, PREFERRED,
 * REQUIRED, VERIFY_CA, VERIFY_IDENTITY), ssl-ca, ssl-cert, ssl-key,
 * ssl-capath, ssl-cipher, connect-timeout. With Connector/C, VERIFY_CA also
 * checks the host name (it cannot verify the chain alone); REQUIRED is
 * checked after the handshake (the connector silently falls back otherwise).
 *
 * Session: autocommit stays on, begin() opens an explicit transaction;
 * strict sql_mode (out-of-range values are errors, not warnings), READ
 * COMMITTED, time_zone +00:00 so that CURRENT_TIMESTAMP(6) stored into the
 * DATETIME(6) columns is UTC. Volumes and fees travel as exact decimal
 * literals written by dec_format() and come back as text read by
 * dec_parse(); no binary floating point anywhere.
 *
 * Several hosts are the nodes of a MariaDB Galera Cluster (or any set of
 * equivalent servers): each connect tries them in turn, each within
 * connect-timeout, starting with the node in use (the first one at open)
 * or, when that node failed (connection lost, 1047 out of the primary
 * component), the one after it; a Galera node is taken only when it is
 * ready (wsrep_ready = ON, Primary) and, if any is, Synced (see
 * my_check_node()). Certification conflicts (1213 at COMMIT) are -EAGAIN
 * like any deadlock; a COMMIT cut short (2013, 1180) is -ENOTCONN: its
 * outcome is unknown, and the retry looks its tickets up on the next node.
 *
 * Durability is a server setting here: COMMIT is durable only with
 * innodb_flush_log_at_trx_commit = 1 (and sync_binlog = 1 with a binary
 * log). Every connect reads them: durability = full refuses a server
 * without them, normal accepts it and says so (my_check_durability()).
 *
 * insert() uses MariaDB's bulk protocol (array binding, one round trip per
 * chunk) when the server offers it, else bounded multi-row INSERTs, which
 * every MySQL and MariaDB accepts (bulk measured 10-25% faster on MariaDB
 * 10.11). fee_reject bodies of up to 64 MiB need the server's
 * max_allowed_packet above that (e.g. 128M); the default 16M refuses them.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <mysql.h>

#include "decimal.h"
#include "store.h"
#include "store_int.h"
#include "timeutil.h"
#include "url.h"

#define MY_SQL_MAX         (256 * 1024)   /* bound of one generated statement */
#define MY_LOOKUP_CHUNK    2000           /* tickets per SELECT ... IN (...) */
#define MY_INSERT_CHUNK    2000           /* rows per multi-row INSERT */
#define MY_BULK_CHUNK      5000           /* rows per bulk (array) execute */
#define MY_SETTLE_CHUNK    200            /* rows per UPDATE ... CASE (its cost grows with chunk²) */
#define MY_LONGDATA_CHUNK  (1024 * 1024)  /* fee_reject body pieces */
#define MY_RW_TIMEOUT      120            /* read/write timeout, seconds: above
					     innodb_lock_wait_timeout (50) and
					     GET_LOCK's wait (30) */
#define MY_DEFAULT_CONNECT_TIMEOUT 10

#define STR_(x) #x
#define STR(x) STR_(x)

enum my_ssl_mode {
	MY_SSL_PREFERRED = 0,
	MY_SSL_DISABLED,
	MY_SSL_REQUIRED,
	MY_SSL_VERIFY_CA,
	MY_SSL_VERIFY_IDENTITY,
};

/* The URL, decoded: the strings point into url (or password_file's copy), NULL if absent. */
struct my_conninfo {
	struct url url;
	char *password_file;          /* params->password, owned (wiped when freed) */
	const char *user;
	const char *password;
	size_t nhosts;                /* url.hosts[0..nhosts): "" host means localhost */
	const char *database;
	const char *socket;
	const char *ssl_ca;
	const char *ssl_cert;
	const char *ssl_key;
	const char *ssl_capath;
	const char *ssl_cipher;
	unsigned int connect_timeout;
	enum my_ssl_mode ssl_mode;
};

/*
 * One row of the bulk INSERT, bound row-wise (STMT_ATTR_ROW_SIZE): the
 * connector reads every column at the same offset in each row, so the
 * sender is copied in (a few bytes; the array is allocated once).
 */
struct my_bulkrow {
	int64_t ticket;
	int64_t login;
	unsigned long vol_len;
	unsigned long src_len;
	char src_ind;                 /* STMT_INDICATOR_NULL: unknown sender */
	char vol[DEC_STRMAX];
	char src[STORE_SOURCE_MAX];
};

struct store_mysql {
	struct store base;            /* first: a struct store * points here */
	struct store_keys keys;       /* the unique keys on fee(ticket) */
	const struct record *ins_recs; /* during insert(): its records, for my_unique_class */
	size_t ins_n;
	unsigned long max_packet;     /* the session's max_allowed_packet, read for packet_conn */
	MYSQL *packet_conn;
	MYSQL *conn;                  /* NULL while disconnected */
	struct my_conninfo ci;
	size_t node;                  /* ci.url.hosts[] index: the node in use, or the
					 next to try */
	bool node_failed;             /* its last error says the node is gone or not
					 usable (-ENOTCONN): reconnect starts past it */
	char node_name[300];          /* "127.0.0.1:3306", of the node in use or being tried */
	char galera[160];             /* the node's wsrep state, "" if not a Galera node */
	bool connecting;              /* in my_connect(): it names the nodes itself */
	unsigned int last_code;       /* the server's code of the last error, 0 if none */
	enum store_durability durability;
	MYSQL_STMT *ins_stmt;         /* bulk INSERT, prepared lazily */
	struct my_bulkrow *bulk;      /* MY_BULK_CHUNK rows, allocated lazily */
	bool can_bulk;                /* server speaks MariaDB's bulk protocol */
	char *sql;                    /* MY_SQL_MAX bytes */
	size_t sql_len;
	bool sql_full;
	/* cancel(): the live session, under my_cancel_mu */
	bool armed;                   /* fd and thread_id describe a live session */
	my_socket fd;
	unsigned long thread_id;      /* the server's id of this session */
	size_t armed_node;            /* on which node */
	unsigned long orphan_id;      /* a cancelled session, killed by the next reconnect */
	size_t orphan_node;           /* on which node: an id means nothing on another one */
	atomic_bool cancelled;
};

/*
 * Guards every store's cancel fields: cancel() runs on another thread while
 * the owner may be replacing its connection. Held for a few instructions only.
 */
static pthread_mutex_t my_cancel_mu = PTHREAD_MUTEX_INITIALIZER;

static inline struct store_mysql *my_of(struct store *s)
{
	return (struct store_mysql *)s;
}

/* ==== Errors ==== */

/* mysql_errno -> the error classes of store.h. */
static const struct {
	unsigned int code;
	int err;
} my_errtab[] = {
	{ 1213, -EAGAIN },     /* ER_LOCK_DEADLOCK; Galera: a certification conflict at
				  COMMIT, or a brute-force abort by a replicated write */
	{ 1205, -EAGAIN },     /* ER_LOCK_WAIT_TIMEOUT */
	{ 1020, -EAGAIN },     /* ER_CHECKREAD: record changed since last read */
	{ 1412, -EAGAIN },     /* ER_TABLE_DEF_CHANGED */
	{ 2002, -ENOTCONN },   /* CR_CONNECTION_ERROR */
	{ 2003, -ENOTCONN },   /* CR_CONN_HOST_ERROR */
	{ 2006, -ENOTCONN },   /* CR_SERVER_GONE_ERROR */
	{ 2013, -ENOTCONN },   /* CR_SERVER_LOST */
	{ 2055, -ENOTCONN },   /* CR_SERVER_LOST_EXTENDED */
	{ 1040, -ENOTCONN },   /* ER_CON_COUNT_ERROR */
	{ 1053, -ENOTCONN },   /* ER_SERVER_SHUTDOWN */
	{ 1927, -ENOTCONN },   /* ER_CONNECTION_KILLED (MariaDB) */
	{ 4031, -ENOTCONN },   /* ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8) */
	{ 1047, -ENOTCONN },   /* ER_UNKNOWN_COM_ERROR: Galera "WSREP has not yet prepared
				  node for application use" (out of the primary component) */
	{ 1180, -ENOTCONN },   /* ER_ERROR_DURING_COMMIT "Got error N during COMMIT";
				  Galera: the node lost the primary component while
				  replicating. Outcome unknown: another node, look up */
	{ 1129, -ENOTCONN },   /* ER_HOST_IS_BLOCKED */
	{ 1152, -ENOTCONN },   /* ER_ABORTING_CONNECTION */
	{ 1158, -ENOTCONN },   /* ER_NET_READ_ERROR */
	{ 1159, -ENOTCONN },   /* ER_NET_READ_INTERRUPTED */
	{ 1160, -ENOTCONN },   /* ER_NET_ERROR_ON_WRITE */
	{ 1161, -ENOTCONN },   /* ER_NET_WRITE_INTERRUPTED */
	{ 1062, -EEXIST },     /* ER_DUP_ENTRY: sorted by my_unique_class() */
	{ 1586, -EEXIST },     /* ER_DUP_ENTRY_WITH_KEY_NAME: likewise */
	{ 1153, -E2BIG },      /* ER_NET_PACKET_TOO_LARGE: max_allowed_packet (08S01,
				  but the request's size, not the connection) */
	{ 1301, -E2BIG },      /* ER_WARN_ALLOWED_PACKET_OVERFLOWED */
	{ 1390, -E2BIG },      /* ER_PS_MANY_PARAM */
	{ 1264, -EINVAL },     /* ER_WARN_DATA_OUT_OF_RANGE */
	{ 1265, -EINVAL },     /* WARN_DATA_TRUNCATED */
	{ 1292, -EINVAL },     /* ER_TRUNCATED_WRONG_VALUE */
	{ 1366, -EINVAL },     /* ER_TRUNCATED_WRONG_VALUE_FOR_FIELD */
	{ 1406, -EINVAL },     /* ER_DATA_TOO_LONG */
	{ 1048, -EINVAL },     /* ER_BAD_NULL_ERROR */
	{ 3819, -EINVAL },     /* ER_CHECK_CONSTRAINT_VIOLATED (MySQL) */
	{ 4025, -EINVAL },     /* ER_CONSTRAINT_FAILED (MariaDB) */
	{ 1690, -EINVAL },     /* ER_DATA_OUT_OF_RANGE */
	{ 1365, -EINVAL },     /* ER_DIVISION_BY_ZERO */
	{ 1644, -EINVAL },     /* ER_SIGNAL_EXCEPTION: a trigger refused the row */
};

/*
 * The numbers above first; then the SQLSTATE class (store_sqlstate_errno),
 * so that a data error feed does not list still isolates its request: 22
 * data exception, 23 integrity constraint. 1105 (ER_UNKNOWN_ERROR) is a
 * limit only when it is about max_allowed_packet (a body sent as long data
 * over it); else, like every other code (42 no such table or permission,
 * HY000 ...), an outage.
 */
static int my_errclass(unsigned int code, const char *state, const char *msg)
{
	for (size_t i = 0; i < sizeof(my_errtab) / sizeof(my_errtab[0]); i++)
		if (my_errtab[i].code == code)
			return my_errtab[i].err;
	if (code == 1105 && msg && strstr(msg, "max_allowed_packet"))
		return -E2BIG;
	return store_sqlstate_errno(state);
}

/*
 * Whether a duplicate-key error names a ticket key of fee: its message ends
 * with the key, "... for key 'PRIMARY'" (MariaDB) or "... for key
 * 'fee.PRIMARY'" (MySQL 8), in any language. Key names come from
 * my_load_ticket_keys(), and store_keys_class() decides. MariaDB
 * does not name the table: a table a trigger writes to may have a key of the
 * same name ('PRIMARY'), so the entry must also be a ticket being inserted.
 */
static int my_unique_class(struct store_mysql *m, const char *msg)
{
	const char *end = msg + strlen(msg), *q, *name, *v = strchr(msg, '\'');
	int64_t entry;
	bool ours = false;
	int len = 0;

	/* the entry: "Duplicate entry '123' for key ..." */
	if (m->ins_recs && v && sscanf(v, "'%" SCNd64 "'%n", &entry, &len) == 1 && len > 0) {
		for (size_t i = 0; i < m->ins_n && !ours; i++)
			ours = m->ins_recs[i].ticket == entry;
		if (!ours)
			return -EINVAL;
	}

	while (end > msg && (end[-1] == '\'' || end[-1] == '`' || end[-1] == '"' ||
			     end[-1] == ' ' || end[-1] == '.'))
		end--;
	for (q = end; q > msg && q[-1] != '\'' && q[-1] != '`' && q[-1] != '"'; q--)
		;
	name = q;
	if (end - name > 3 && !strncmp(name, "fee.", 4))
		name += 4;
	if (q == msg || end <= name)
		return -EINVAL;
	return store_keys_class(&m->keys, name, (size_t)(end - name));
}

static int my_classify(struct store_mysql *m, unsigned int code, const char *state, const char *msg)
{
	int r = my_errclass(code, state, msg);

	return r == -EEXIST ? my_unique_class(m, msg) : r;
}

static void my_seterr(struct store_mysql *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void my_seterr(struct store_mysql *m, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(m->base.errmsg, sizeof(m->base.errmsg), fmt, ap);
	va_end(ap);
}

/*
 * Notes what an error of class r says about the node: -ENOTCONN, that it is
 * gone or unusable (the next connect starts past it). With several hosts, an
 * error about the database rather than the request names the node (a
 * request's refusal does not: its reason is the same on every node).
 */
static int my_noted(struct store_mysql *m, int r)
{
	size_t len = strlen(m->base.errmsg);

	if (r == -ENOTCONN)
		m->node_failed = true;
	if (m->ci.nhosts > 1 && !m->connecting && r != -EINVAL && r != -E2BIG && r != -EEXIST)
		snprintf(m->base.errmsg + len, sizeof(m->base.errmsg) - len, " (node %.100s)",
			 m->node_name);
	return r;
}

/* Records the connection's last error for what and returns its class. */
static int my_fail(struct store_mysql *m, const char *what)
{
	unsigned int code = mysql_errno(m->conn);

	m->last_code = code;
	if (code == 0) {
		my_seterr(m, "%s failed: no error reported by the client library", what);
		return my_noted(m, -EIO);
	}
	my_seterr(m, "%s failed: ERROR %u (%s): %s", what, code,
		  mysql_sqlstate(m->conn), mysql_error(m->conn));
	return my_noted(m, my_classify(m, code, mysql_sqlstate(m->conn), mysql_error(m->conn)));
}

static int my_stmt_fail(struct store_mysql *m, MYSQL_STMT *st, const char *what)
{
	unsigned int code = mysql_stmt_errno(st);

	if (code == 0)
		return my_fail(m, what);
	m->last_code = code;
	my_seterr(m, "%s failed: ERROR %u (%s): %s", what, code,
		  mysql_stmt_sqlstate(st), mysql_stmt_error(st));
	return my_noted(m, my_classify(m, code, mysql_stmt_sqlstate(st), mysql_stmt_error(st)));
}

static int my_need_conn(struct store_mysql *m)
{
	if (m->conn)
		return 0;
	my_seterr(m, "not connected to the MySQL server");
	return -ENOTCONN;
}

/* ==== SQL text buffer (bounded) ==== */

static void my_sql_reset(struct store_mysql *m)
{
	m->sql_len = 0;
	m->sql_full = false;
	m->sql[0] = '\0';
}

static void my_sql_add(struct store_mysql *m, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void my_sql_add(struct store_mysql *m, const char *fmt, ...)
{
	va_list ap;
	int r;

	if (m->sql_full)
		return;
	va_start(ap, fmt);
	r = vsnprintf(m->sql + m->sql_len, MY_SQL_MAX - m->sql_len, fmt, ap);
	va_end(ap);
	if (r < 0 || (size_t)r >= MY_SQL_MAX - m->sql_len) {
		m->sql_full = true;
		return;
	}
	m->sql_len += (size_t)r;
}

/* Runs one statement and discards any result. */
static int my_query(struct store_mysql *m, const char *what, const char *sql, size_t len)
{
	MYSQL_RES *res = NULL;
	int r;

	r = my_need_conn(m);
	if (r < 0)
		return r;
	if (mysql_real_query(m->conn, sql, len) != 0)
		return my_fail(m, what);
	res = mysql_store_result(m->conn);
	if (res)
		mysql_free_result(res);
	else if (mysql_field_count(m->conn) != 0)
		return my_fail(m, what);
	return 0;
}

static int my_query_str(struct store_mysql *m, const char *what, const char *sql)
{
	return my_query(m, what, sql, strlen(sql));
}

/* Runs the statement in the SQL buffer. */
static int my_query_buf(struct store_mysql *m, const char *what)
{
	if (m->sql_full) {
		my_seterr(m, "%s: generated statement exceeds %d bytes", what, MY_SQL_MAX);
		return -E2BIG;
	}
	return my_query(m, what, m->sql, m->sql_len);
}

/* Runs a query expected to yield a result set; *ret is freed by the caller. */
static int my_select(struct store_mysql *m, const char *what, const char *sql, size_t len,
		     unsigned int ncols, MYSQL_RES **ret)
{
	MYSQL_RES *res = NULL;
	int r;

	r = my_need_conn(m);
	if (r < 0)
		return r;
	if (mysql_real_query(m->conn, sql, len) != 0)
		return my_fail(m, what);
	res = mysql_store_result(m->conn);
	if (!res)
		return my_fail(m, what);
	if (mysql_num_fields(res) != ncols) {
		my_seterr(m, "%s: expected %u columns, got %u", what, ncols,
			  mysql_num_fields(res));
		mysql_free_result(res);
		return -EIO;
	}
	*ret = res;
	return 0;
}

/* ==== URL (parsed by url.c) ==== */

static void my_conninfo_free(struct my_conninfo *ci)
{
	url_free(&ci->url);
	if (ci->password_file) {
		explicit_bzero(ci->password_file, strlen(ci->password_file));
		free(ci->password_file);
	}
	memset(ci, 0, sizeof(*ci));
}

static bool my_parse_uint(const char *s, unsigned long min, unsigned long max, unsigned int *ret)
{
	unsigned long v = 0;

	if (!*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		v = v * 10 + (unsigned long)(*s - '0');
		if (v > max)
			return false;
	}
	if (v < min)
		return false;
	*ret = (unsigned int)v;
	return true;
}

static int my_parse_query_key(struct my_conninfo *ci, const char *key, const char *val,
			      char *err, size_t errsz)
{
	static const char *const modes[] = {
		[MY_SSL_PREFERRED] = "PREFERRED",
		[MY_SSL_DISABLED] = "DISABLED",
		[MY_SSL_REQUIRED] = "REQUIRED",
		[MY_SSL_VERIFY_CA] = "VERIFY_CA",
		[MY_SSL_VERIFY_IDENTITY] = "VERIFY_IDENTITY",
	};
	const char **slot = NULL;

	if (strcmp(key, "socket") == 0)
		slot = &ci->socket;
	else if (strcmp(key, "ssl-ca") == 0)
		slot = &ci->ssl_ca;
	else if (strcmp(key, "ssl-cert") == 0)
		slot = &ci->ssl_cert;
	else if (strcmp(key, "ssl-key") == 0)
		slot = &ci->ssl_key;
	else if (strcmp(key, "ssl-capath") == 0)
		slot = &ci->ssl_capath;
	else if (strcmp(key, "ssl-cipher") == 0)
		slot = &ci->ssl_cipher;
	if (slot) {
		*slot = val;
		return 0;
	}

	if (strcmp(key, "ssl-mode") == 0) {
		for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
			if (strcasecmp(val, modes[i]) == 0) {
				ci->ssl_mode = (enum my_ssl_mode)i;
				return 0;
			}
		}
		snprintf(err, errsz, "mysql URL: ssl-mode must be DISABLED, PREFERRED, "
			 "REQUIRED, VERIFY_CA or VERIFY_IDENTITY, got \"%.64s\"", val);
		return -EINVAL;
	}
	if (strcmp(key, "connect-timeout") == 0) {
		if (!my_parse_uint(val, 1, 3600, &ci->connect_timeout)) {
			snprintf(err, errsz, "mysql URL: connect-timeout must be 1..3600 "
				 "seconds, got \"%.64s\"", val);
			return -EINVAL;
		}
		return 0;
	}
	snprintf(err, errsz, "mysql URL: unknown parameter \"%.64s\"", key);
	return -EINVAL;
}

/*
 * mysql://[user[:password]@]host[:port][,host[:port]...]/database[?key=value&...]
 * (url.h). The host may be empty when a socket is given (one host then:
 * the socket is the local server's).
 */
static int my_parse_url(const char *url, struct my_conninfo *ci, char *err, size_t errsz)
{
	const struct url *u = &ci->url;
	char uerr[256];
	int r;

	memset(ci, 0, sizeof(*ci));
	r = url_parse(url, &ci->url, uerr, sizeof(uerr));
	if (r < 0) {
		snprintf(err, errsz, "mysql URL: %s", uerr);
		return r;
	}
	r = -EINVAL;
	if (!u->database || !u->database[0] || strchr(u->database, '/')) {
		snprintf(err, errsz, "mysql URL: no database name (expected mysql://host/database)");
		goto out;
	}
	for (size_t i = 0; u->nhosts > 1 && i < u->nhosts; i++)
		if (!u->hosts[i].name || !u->hosts[i].name[0]) {
			snprintf(err, errsz, "mysql URL: host %zu of %zu is empty", i + 1, u->nhosts);
			goto out;
		}
	ci->nhosts = u->nhosts;
	ci->user = u->user;
	ci->password = u->password;
	ci->database = u->database;
	r = 0;
	for (size_t i = 0; r == 0 && i < u->nparams; i++)
		r = my_parse_query_key(ci, u->params[i].key, u->params[i].value, err, errsz);
	if (r == 0 && (ci->nhosts == 0 || !u->hosts[0].name[0]) && !ci->socket) {
		snprintf(err, errsz, "mysql URL: no host (and no socket parameter)");
		r = -EINVAL;
	}
	if (r == 0 && ci->nhosts > 1 && ci->socket) {
		snprintf(err, errsz, "mysql URL: the socket parameter names one local server, "
			 "but %zu hosts are given", ci->nhosts);
		r = -EINVAL;
	}
out:
	if (r < 0)
		my_conninfo_free(ci);
	return r;
}

/* ==== Connection ==== */

/* ==== Cancel ==== */

/* Publishes the new session for cancel(). Owner thread, after connecting. */
static void my_arm_cancel(struct store_mysql *m)
{
	pthread_mutex_lock(&my_cancel_mu);
	m->fd = mysql_get_socket(m->conn);
	m->thread_id = mysql_thread_id(m->conn);
	m->armed_node = m->node;
	m->armed = (int)m->fd >= 0;
	pthread_mutex_unlock(&my_cancel_mu);
}

static void my_disarm_cancel(struct store_mysql *m)
{
	pthread_mutex_lock(&my_cancel_mu);
	m->armed = false;
	pthread_mutex_unlock(&my_cancel_mu);
}

/*
 * Shutting the socket down ends the owner's wait at once, whatever the
 * server does; a KILL over a fresh connection would itself wait for a
 * stalled server. The server's side of the session (a query, a lock wait, a
 * transaction holding locks) is killed from the next connection instead.
 */
static void my_cancel(struct store *s)
{
	struct store_mysql *m = my_of(s);

	pthread_mutex_lock(&my_cancel_mu);
	atomic_store(&m->cancelled, true);
	if (m->armed) {
		shutdown(m->fd, SHUT_RDWR);
		m->armed = false;
		m->orphan_id = m->thread_id;
		m->orphan_node = m->armed_node;
	}
	pthread_mutex_unlock(&my_cancel_mu);
}

/*
 * mysql_real_connect() through the non-blocking API, so that it ends at
 * connect_timeout however far the handshake got (a stopped server accepts
 * TCP and never greets), and at once on cancel(). Returns 1 when connected,
 * 0 when refused (mysql_error() says why), -ENOTCONN with errmsg set when it
 * timed out or was cancelled.
 */
static int my_real_connect(struct store_mysql *m, const char *host, unsigned int port)
{
	const struct my_conninfo *ci = &m->ci;
	uint64_t deadline = mono_ms() + (uint64_t)ci->connect_timeout * 1000u;
	uint64_t lib_deadline = 0;
	MYSQL *ret = NULL;
	int status;

	if (mysql_options(m->conn, MYSQL_OPT_NONBLOCK, 0) != 0)
		return mysql_real_connect(m->conn, host, ci->user, ci->password, ci->database,
					  port, ci->socket, 0) ? 1 : 0;
	status = mysql_real_connect_start(&ret, m->conn, host, ci->user, ci->password,
					  ci->database, port, ci->socket, 0);
	while (status) {
		struct pollfd pfd = { .fd = mysql_get_socket(m->conn) };
		uint64_t now = mono_ms();
		int wait = 100, ready = 0;

		if (atomic_load(&m->cancelled)) {
			my_seterr(m, "connect to MySQL server %.100s: cancelled: the server did not answer", host);
			return -ENOTCONN;
		}
		if (now >= deadline) {
			my_seterr(m, "connect to MySQL server %.100s: no answer within connect-timeout (%u s)",
				  host, ci->connect_timeout);
			return -ENOTCONN;
		}
		if (status & MYSQL_WAIT_READ)
			pfd.events |= POLLIN;
		if (status & MYSQL_WAIT_WRITE)
			pfd.events |= POLLOUT;
		if (status & MYSQL_WAIT_EXCEPT)
			pfd.events |= POLLPRI;
		if ((status & MYSQL_WAIT_TIMEOUT) && !lib_deadline)
			lib_deadline = now + mysql_get_timeout_value_ms(m->conn);
		if (deadline - now < (uint64_t)wait)
			wait = (int)(deadline - now);
		/* short slices: cancel() cannot reach this socket before it is published */
		if (poll(&pfd, 1, wait) > 0) {
			if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
				ready |= MYSQL_WAIT_READ;
			if (pfd.revents & (POLLOUT | POLLHUP | POLLERR))
				ready |= MYSQL_WAIT_WRITE;
			if (pfd.revents & POLLPRI)
				ready |= MYSQL_WAIT_EXCEPT;
		} else if (lib_deadline && mono_ms() >= lib_deadline) {
			ready = MYSQL_WAIT_TIMEOUT;
		}
		if (ready) {
			lib_deadline = 0;
			status = mysql_real_connect_cont(&ret, m->conn, ready);
		}
	}
	return ret ? 1 : 0;
}

static void my_disconnect(struct store_mysql *m)
{
	my_disarm_cancel(m);
	if (m->ins_stmt) {
		mysql_stmt_close(m->ins_stmt);
		m->ins_stmt = NULL;
	}
	if (m->conn) {
		mysql_close(m->conn);
		m->conn = NULL;
	}
	m->can_bulk = false;
}

static int my_set_options(struct store_mysql *m)
{
	const struct my_conninfo *ci = &m->ci;
	unsigned int ct = ci->connect_timeout, rw = MY_RW_TIMEOUT;
	my_bool off = 0, on = 1;
	int r = 0;

	r |= mysql_optionsv(m->conn, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
	r |= mysql_optionsv(m->conn, MYSQL_OPT_READ_TIMEOUT, &rw);
	r |= mysql_optionsv(m->conn, MYSQL_OPT_WRITE_TIMEOUT, &rw);
	r |= mysql_optionsv(m->conn, MYSQL_SET_CHARSET_NAME, "utf8mb4");
	/* a silent reconnect would lose the open transaction */
	r |= mysql_optionsv(m->conn, MYSQL_OPT_RECONNECT, &off);
	r |= mysql_optionsv(m->conn, MYSQL_OPT_LOCAL_INFILE, &off);
	if (ci->socket) {
		unsigned int proto = MYSQL_PROTOCOL_SOCKET;

		r |= mysql_optionsv(m->conn, MYSQL_OPT_PROTOCOL, &proto);
	}

	if (ci->ssl_mode == MY_SSL_DISABLED) {
		r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_ENFORCE, &off);
		r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &off);
	} else {
		/* Any TLS option makes the connector try TLS, falling back to plain. */
		r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_ENFORCE, &on);
		if (ci->ssl_ca)
			r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_CA, ci->ssl_ca);
		if (ci->ssl_capath)
			r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_CAPATH, ci->ssl_capath);
		if (ci->ssl_cert)
			r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_CERT, ci->ssl_cert);
		if (ci->ssl_key)
			r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_KEY, ci->ssl_key);
		if (ci->ssl_cipher)
			r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_CIPHER, ci->ssl_cipher);
		if (ci->ssl_mode >= MY_SSL_VERIFY_CA)
			r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &on);
		else
			r |= mysql_optionsv(m->conn, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &off);
	}
	if (r != 0) {
		my_seterr(m, "cannot set MySQL client options");
		return -EINVAL;
	}
	return 0;
}

/*
 * A COMMIT is on disk when the server answers only with the InnoDB log
 * flushed at every commit (1, or MariaDB's 3) and, when it writes a binary
 * log, that log synced at every commit too (recovery trusts the binlog).
 * These are the server's global settings: full refuses to run without them,
 * normal runs and says what it accepted. Read at every connect.
 */
static int my_check_durability(struct store_mysql *m)
{
	static const char q[] = "SELECT @@GLOBAL.innodb_flush_log_at_trx_commit,"
				" @@GLOBAL.log_bin, @@GLOBAL.sync_binlog";
	bool full = m->durability != STORE_DURABLE_NORMAL;
	int64_t v[3] = { -1, -1, -1 };
	const char *var = NULL, *why = "";
	int64_t val = 0;
	MYSQL_RES *res = NULL;
	MYSQL_ROW row;
	int r;

	r = my_select(m, "read the server's durability settings", q, sizeof(q) - 1, 3, &res);
	if (r < 0)
		return r;
	row = mysql_fetch_row(res);
	if (row) {
		unsigned long *len = mysql_fetch_lengths(res);

		for (int i = 0; i < 3; i++)
			if (!row[i] || store_parse_i64(row[i], len[i], &v[i]) < 0)
				v[i] = -1;
	}
	mysql_free_result(res);
	if (v[0] < 0 || v[1] < 0 || v[2] < 0) {
		my_seterr(m, "read the server's durability settings: unexpected answer to %s", q);
		return -EIO;
	}
	if (v[0] != 1 && v[0] != 3) {
		var = "innodb_flush_log_at_trx_commit";
		val = v[0];
		why = "the InnoDB log is not flushed to disk at every commit";
	} else if (v[1] && v[2] != 1) {
		var = "sync_binlog";
		val = v[2];
		why = "the binary log (log_bin = ON) is not synced to disk at every commit";
	}
	m->base.durability_warn = var != NULL && !full;
	if (!var) {
		snprintf(m->base.durability, sizeof(m->base.durability),
			 "innodb_flush_log_at_trx_commit = %" PRId64 ", log_bin = %s, sync_binlog = %"
			 PRId64 " (durability = %s)", v[0], v[1] ? "ON" : "OFF", v[2],
			 full ? "full" : "normal");
		return 0;
	}
	if (!full) {
		snprintf(m->base.durability, sizeof(m->base.durability),
			 "the server has %s = %" PRId64 ": %s, so a commit feed answered TRUE can be "
			 "lost in a crash of the machine (durability = normal accepts this)",
			 var, val, why);
		return 0;
	}
	my_seterr(m, "durability = full, but the server has %s = %" PRId64 ": %s, so a commit "
		  "feed answered TRUE could be lost in a crash of the machine. Either set %s = 1 "
		  "on the server (SET GLOBAL and in its configuration file), or set "
		  "durability = normal in the [database] section of feed.conf to accept that risk",
		  var, val, why, var);
	return -EIO;
}

/*
 * Connector/C reports a certificate that does not name the host only as
 * "Validation of SSL server certificate failed" (its X509_check_host /
 * X509_check_ip_asc step; a chain that does not verify carries OpenSSL's
 * own reason instead): say why, or the message names no cause.
 */
static void my_explain_tls(struct store_mysql *m, const char *host)
{
	size_t len = strlen(m->base.errmsg);

	if (mysql_errno(m->conn) != 2026 /* CR_SSL_CONNECTION_ERROR */ ||
	    !strstr(mysql_error(m->conn), "Validation of SSL server certificate failed"))
		return;
	snprintf(m->base.errmsg + len, sizeof(m->base.errmsg) - len,
		 " (the server's certificate does not name the host %.100s: neither a "
		 "subjectAltName nor the common name matches it, which ssl-mode VERIFY_CA "
		 "and VERIFY_IDENTITY both require)", host);
}

/*
 * A Galera node is usable when it is ready for statements (wsrep_ready ON:
 * else every table answers 1047) in the primary component; Synced as well,
 * unless no node is (a donor or a node catching up takes writes, slower).
 * A server without wsrep (wsrep_on OFF or absent: MySQL, a plain MariaDB,
 * whose wsrep_ready reads OFF too) is taken as it is. Fills m->galera.
 * Returns 0; -ENOTCONN, not ready; -EBUSY, ready but not Synced (errmsg
 * says so, and the caller tries it again only if nothing better is found).
 */
static int my_check_node(struct store_mysql *m, bool need_synced)
{
	static const char qon[] = "SHOW GLOBAL VARIABLES LIKE 'wsrep_on'";
	static const char qst[] = "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', "
				  "'wsrep_cluster_status', 'wsrep_local_state_comment', "
				  "'wsrep_cluster_size')";
	static const char *const names[] = { "wsrep_ready", "wsrep_cluster_status",
					     "wsrep_local_state_comment", "wsrep_cluster_size" };
	char val[4][40] = { "?", "?", "?", "?" };
	MYSQL_RES *res = NULL;
	MYSQL_ROW row;
	bool on;
	int r;

	m->galera[0] = '\0';
	r = my_select(m, "SHOW VARIABLES LIKE 'wsrep_on'", qon, sizeof(qon) - 1, 2, &res);
	if (r < 0)
		return r;
	row = mysql_fetch_row(res);
	on = row && row[1] && strcasecmp(row[1], "ON") == 0;
	mysql_free_result(res);
	if (!on)
		return 0;
	r = my_select(m, "SHOW STATUS LIKE 'wsrep_%'", qst, sizeof(qst) - 1, 2, &res);
	if (r < 0)
		return r;
	while ((row = mysql_fetch_row(res)))
		for (size_t i = 0; i < 4; i++)
			if (row[0] && row[1] && strcasecmp(row[0], names[i]) == 0)
				snprintf(val[i], sizeof(val[i]), "%s", row[1]);
	mysql_free_result(res);
	snprintf(m->galera, sizeof(m->galera), "Galera node, %s, %s, cluster of %s%s",
		 val[2], val[1], val[3], strcmp(val[0], "ON") ? ", not ready" : "");
	if (strcmp(val[0], "ON") != 0 || strcmp(val[1], "Primary") != 0) {
		my_seterr(m, "node not ready for use: wsrep_ready = %s, wsrep_cluster_status = %s, "
			  "wsrep_local_state_comment = %s", val[0], val[1], val[2]);
		return -ENOTCONN;
	}
	if (need_synced && strcmp(val[2], "Synced") != 0) {
		my_seterr(m, "node not Synced: wsrep_local_state_comment = %s", val[2]);
		return -EBUSY;
	}
	return 0;
}

/*
 * idle_transaction_timeout (MariaDB 10.3+): feed never leaves a transaction
 * waiting on itself (it decides between statements in microseconds). A feed
 * process stopped or hung in the middle of one holds its row locks, and
 * another instance writing the same tickets waits on them for as long as it
 * lasts (innodb_lock_wait_timeout, then again at every retry); the server
 * closes such a session after 30 s, the locks go, and the stopped instance
 * finds its connection gone and retries. MySQL has no equivalent: there the
 * other instance waits innodb_lock_wait_timeout (1205), retries and waits
 * again, until the stopped one resumes or is killed.
 */
static int my_set_idle_timeout(struct store_mysql *m)
{
	const char *v = mysql_get_server_info(m->conn);

	if (!v || !strstr(v, "MariaDB"))
		return 0;
	return my_query_str(m, "set session idle_transaction_timeout",
			    "SET SESSION idle_transaction_timeout = 30");
}

/* Connects to node i of the URL and sets the session up; errmsg says why not. */
static int my_connect_node(struct store_mysql *m, size_t i, bool need_synced)
{
	const struct my_conninfo *ci = &m->ci;
	const struct url_host *h = &ci->url.hosts[i];
	const char *host = h->name && h->name[0] ? h->name : "localhost";
	bool v6 = strchr(host, ':') != NULL;
	int r;

	my_disconnect(m);
	m->node = i;
	m->galera[0] = '\0';
	if (ci->socket)
		snprintf(m->node_name, sizeof(m->node_name), "socket %.250s", ci->socket);
	else if (h->port)
		snprintf(m->node_name, sizeof(m->node_name), "%s%.250s%s:%u", v6 ? "[" : "", host,
			 v6 ? "]" : "", h->port);
	else
		snprintf(m->node_name, sizeof(m->node_name), "%.250s", host);
	m->conn = mysql_init(NULL);
	if (!m->conn) {
		my_seterr(m, "mysql_init: out of memory");
		return -ENOMEM;
	}
	r = my_set_options(m);
	if (r < 0)
		goto out;

	r = my_real_connect(m, host, h->port);
	if (r < 0)
		goto out;
	if (r == 0) {
		char what[320];

		snprintf(what, sizeof(what), "connect to MySQL server %.100s%s%.100s",
			 ci->socket ? "socket " : "",
			 ci->socket ? "" : host, ci->socket ? ci->socket : "");
		r = my_fail(m, what);
		my_explain_tls(m, host);
		/* unreachable server: retry later; refused (access, database): -EIO */
		if (r != -ENOTCONN)
			r = -EIO;
		goto out;
	}
	if (ci->ssl_mode >= MY_SSL_REQUIRED && !mysql_get_ssl_cipher(m->conn)) {
		my_seterr(m, "connect to MySQL server %.100s: ssl-mode requires TLS but the "
			  "server did not negotiate it", host);
		r = -EIO;
		goto out;
	}
	my_arm_cancel(m);
	r = my_check_node(m, need_synced);
	if (r < 0)
		goto out;
	r = my_query_str(m, "set session sql_mode/time_zone",
			 "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', "
			 "SESSION time_zone = '+00:00'");
	if (r < 0)
		goto out;
	r = my_query_str(m, "set session isolation level",
			 "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");
	if (r < 0)
		goto out;
	r = my_set_idle_timeout(m);
	if (r < 0)
		goto out;
	r = my_check_durability(m);
	if (r < 0)
		goto out;
	if (ci->nhosts > 1 || m->galera[0]) {
		char d[sizeof(m->base.durability)];

		/* logged once per open: which node, in which state */
		snprintf(d, sizeof(d), "%s", m->base.durability);
		snprintf(m->base.durability, sizeof(m->base.durability), "node %.60s%s%.100s%s: %.210s",
			 m->node_name, m->galera[0] ? " (" : "", m->galera, m->galera[0] ? ")" : "", d);
	}
	{
		unsigned long caps = 0, ext = 0;

		/*
		 * MARIADB_STMT_BULK_SUPPORTED(), without needing a statement.
		 * Not on a Galera node: there a bulk INSERT escapes the
		 * certification conflict with another node's INSERT of the same
		 * ticket, and both COMMITs succeed (seen on MariaDB 10.11.19 with
		 * galera 26.4.23: both feed instances answered TRUE for one
		 * ticket, one row stored; test_cluster_galera.py). The
		 * multi-row INSERT is certified as it should be.
		 */
		if (!m->galera[0] &&
		    mariadb_get_infov(m->conn, MARIADB_CONNECTION_SERVER_CAPABILITIES, &caps) == 0 &&
		    mariadb_get_infov(m->conn, MARIADB_CONNECTION_EXTENDED_SERVER_CAPABILITIES,
				      &ext) == 0)
			m->can_bulk = !(caps & CLIENT_MYSQL) &&
				      (ext & (MARIADB_CLIENT_STMT_BULK_OPERATIONS >> 32));
	}
	r = 0;
out:
	if (r < 0) {
		my_disarm_cancel(m);
		if (m->conn) {
			mysql_close(m->conn);
			m->conn = NULL;
		}
		m->can_bulk = false;
	}
	return r;
}

/*
 * Tries the nodes in turn from start, wrapping, each within connect-timeout:
 * the first usable one is taken (one not Synced only when none is). With
 * one host, its error as it is; with several, every node's, and -ENOTCONN
 * if any node may come back (else the last refusal: a password, durability).
 */
static int my_connect(struct store_mysql *m, size_t start)
{
	size_t n = m->ci.nhosts ? m->ci.nhosts : 1;
	char why[sizeof(m->base.errmsg)] = "";
	bool unsynced[URL_HOSTS_MAX] = { false };
	bool any_unsynced = false, any_down = false;
	size_t tried = start;
	int r = -ENOTCONN, last = -ENOTCONN;

	m->connecting = true;
	for (int pass = 0; pass < 2; pass++) {
		for (size_t k = 0; k < n; k++) {
			size_t i = (start + k) % n;
			size_t len = strlen(why);

			if (pass == 1 && !unsynced[i])
				continue;
			if (k > 0 && atomic_load(&m->cancelled))
				break;      /* a stalled connect: the next call goes on */
			tried = i;
			/* one host: nothing better to wait for than a node not Synced */
			r = my_connect_node(m, i, pass == 0 && n > 1);
			if (r == 0 || n == 1) {
				m->node_failed = r < 0;
				m->connecting = false;
				return r;
			}
			if (r == -EBUSY) {
				unsynced[i] = any_unsynced = true;
			} else {
				any_down |= r == -ENOTCONN;
				last = r;
			}
			snprintf(why + len, sizeof(why) - len, "%s%.100s: %.*s", len ? "; " : "",
				 m->node_name, (int)(sizeof(why) / n), m->base.errmsg);
		}
		if (!any_unsynced || atomic_load(&m->cancelled))
			break;
	}
	/* nothing usable: the next connect starts past the last node tried
	   (one that stalled until cancelled, or a whole round: start again) */
	m->connecting = false;
	m->node = tried;
	m->node_failed = true;
	my_seterr(m, "no usable MySQL server among %zu hosts: %s", n, why);
	return any_down || any_unsynced ? -ENOTCONN : last;
}

static void my_close(struct store *s)
{
	struct store_mysql *m;

	if (!s)
		return;
	m = my_of(s);
	my_disconnect(m);
	my_conninfo_free(&m->ci);
	free(m->bulk);
	free(m->sql);
	free(m);
}

static int my_open(const struct store_params *p, struct store **ret, char *err, size_t errsz)
{
	struct store_mysql *m;
	int r;

	m = calloc(1, sizeof(*m));
	if (!m) {
		snprintf(err, errsz, "out of memory");
		return -ENOMEM;
	}
	m->base.ops = &store_mysql_ops;
	m->durability = p->durability;
	r = my_parse_url(p->url, &m->ci, err, errsz);
	if (r < 0) {
		free(m);
		return r;
	}
	if (p->password) {
		m->ci.password = m->ci.password_file = strdup(p->password);
		if (!m->ci.password) {
			r = -ENOMEM;
			snprintf(err, errsz, "out of memory");
			goto out;
		}
	}
	if (m->ci.connect_timeout == 0)
		m->ci.connect_timeout = p->connect_timeout > 0 ? (unsigned int)p->connect_timeout
							       : MY_DEFAULT_CONNECT_TIMEOUT;
	m->sql = malloc(MY_SQL_MAX);
	if (!m->sql) {
		r = -ENOMEM;
		snprintf(err, errsz, "out of memory");
		goto out;
	}
	my_sql_reset(m);
	r = my_connect(m, 0);
	if (r < 0) {
		snprintf(err, errsz, "%s", m->base.errmsg);
		goto out;
	}
	*ret = &m->base;
	r = 0;
out:
	if (r < 0)
		my_close(&m->base);
	return r;
}

static int my_reconnect(struct store *s)
{
	struct store_mysql *m = my_of(s);
	size_t n = m->ci.nhosts ? m->ci.nhosts : 1, orphan_node;
	unsigned long orphan;
	int r;

	pthread_mutex_lock(&my_cancel_mu);
	atomic_store(&m->cancelled, false);   /* a cancel from now on is for this reconnect */
	orphan = m->orphan_id;
	orphan_node = m->orphan_node;
	pthread_mutex_unlock(&my_cancel_mu);
	m->base.errmsg[0] = '\0';
	/* the node in use again, unless it failed: then the next one */
	r = my_connect(m, m->node_failed ? (m->node + 1) % n : m->node);
	if (r == 0 && orphan && orphan_node != m->node) {
		/* a thread id names a session on its own node only; that node ends
		   the session when it next reads the socket cancel() shut down */
		pthread_mutex_lock(&my_cancel_mu);
		if (m->orphan_id == orphan)
			m->orphan_id = 0;
		pthread_mutex_unlock(&my_cancel_mu);
	} else if (r == 0 && orphan) {
		char sql[48];

		/* best effort: ER_NO_SUCH_THREAD when it has ended by itself */
		snprintf(sql, sizeof(sql), "KILL CONNECTION %lu", orphan);
		if (mysql_query(m->conn, sql) != 0)
			(void)mysql_errno(m->conn);
		pthread_mutex_lock(&my_cancel_mu);
		if (m->orphan_id == orphan)
			m->orphan_id = 0;
		pthread_mutex_unlock(&my_cancel_mu);
	}
	return r;
}

/* ==== Transactions ==== */

static int my_exec(struct store *s, const char *sql)
{
	return my_query_str(my_of(s), "statement", sql);
}

static int my_begin(struct store *s)
{
	store_keys_begin(&my_of(s)->keys);
	return my_query_str(my_of(s), "START TRANSACTION", "START TRANSACTION");
}

static int my_commit(struct store *s)
{
	return my_query_str(my_of(s), "COMMIT", "COMMIT");
}

static int my_rollback(struct store *s)
{
	return my_query_str(my_of(s), "ROLLBACK", "ROLLBACK");
}

/* ==== Schema ==== */

/* The value of a one-row, one-column query into *ret (-1 if NULL, no row). */
static int my_select_i64(struct store_mysql *m, const char *what, const char *sql, int64_t *ret)
{
	MYSQL_RES *res = NULL;
	MYSQL_ROW row;
	unsigned long *lens;
	int r;

	r = my_select(m, what, sql, strlen(sql), 1, &res);
	if (r < 0)
		return r;
	*ret = -1;
	row = mysql_fetch_row(res);
	if (row && row[0]) {
		lens = mysql_fetch_lengths(res);
		if (store_parse_i64(row[0], lens[0], ret) < 0) {
			my_seterr(m, "%s: unexpected value \"%.*s\"", what,
				  (int)(lens[0] > 40 ? 40 : lens[0]), row[0]);
			r = -EIO;
		}
	}
	mysql_free_result(res);
	return r;
}

/*
 * DDL waits for a metadata lock that any open transaction on the table
 * holds, and every later statement on the table queues behind that wait
 * (lock_wait_timeout defaults to a year): the migration (store_migrate.c)
 * runs DDL only where the catalog says it is needed, and waits at most this
 * long for the lock. DDL commits implicitly: there is no transaction to roll back.
 */
#define MY_DDL_LOCK_TIMEOUT_S 5

/* Keeps errmsg across a statement run only to clean up. */
static void my_quiet(struct store_mysql *m, const char *what, const char *sql)
{
	char keep[sizeof(m->base.errmsg)];

	memcpy(keep, m->base.errmsg, sizeof(keep));
	my_query_str(m, what, sql);
	memcpy(m->base.errmsg, keep, sizeof(keep));
}

static int my_migrate_lock(struct store *s)
{
	struct store_mysql *m = my_of(s);
	int64_t got;
	int r;

	r = my_select_i64(m, "GET_LOCK('feed_migrate')", "SELECT GET_LOCK('feed_migrate', 30)",
			  &got);
	if (r < 0)
		return r;
	if (got != 1) {
		my_seterr(m, "migrate: another feed held the lock 'feed_migrate' for 30 s");
		return -EAGAIN;
	}
	r = my_query_str(m, "set lock_wait_timeout for the migration",
			 "SET SESSION lock_wait_timeout = " STR(MY_DDL_LOCK_TIMEOUT_S));
	if (r < 0 && m->conn)
		my_quiet(m, "RELEASE_LOCK", "DO RELEASE_LOCK('feed_migrate')");
	return r;
}

static int my_migrate_unlock(struct store *s, int r)
{
	struct store_mysql *m = my_of(s);
	int rr;

	if (!m->conn)
		return r;
	if (r < 0)      /* the version's transaction, if open */
		my_quiet(m, "ROLLBACK", "ROLLBACK");
	/* the batches that follow on this connection keep the server's default */
	if (r < 0) {
		my_quiet(m, "reset lock_wait_timeout", "SET SESSION lock_wait_timeout = DEFAULT");
	} else {
		rr = my_query_str(m, "reset lock_wait_timeout",
				  "SET SESSION lock_wait_timeout = DEFAULT");
		r = rr < 0 ? rr : r;
	}
	if (m->conn)
		my_quiet(m, "RELEASE_LOCK", "DO RELEASE_LOCK('feed_migrate')");
	return r;
}

static int my_migrate_exec(struct store *s, const char *what, const char *sql)
{
	return my_query_str(my_of(s), what, sql);
}

static int my_migrate_query(struct store *s, const char *what, const char *sql,
			    struct store_qrow *ret)
{
	struct store_mysql *m = my_of(s);
	MYSQL_RES *res = NULL;
	MYSQL_ROW row;
	int r = my_need_conn(m);

	if (r < 0)
		return r;
	if (mysql_real_query(m->conn, sql, strlen(sql)) != 0 ||
	    !(res = mysql_store_result(m->conn)))
		return my_fail(m, what);
	row = mysql_fetch_row(res);
	if (row) {
		unsigned long *len = mysql_fetch_lengths(res);

		ret->found = true;
		for (unsigned int c = 0; c < mysql_num_fields(res) && c < STORE_QROW_COLS; c++) {
			ret->null[c] = !row[c];
			snprintf(ret->val[c], sizeof(ret->val[c]), "%.*s",
				 (int)(len[c] < STORE_QROW_LEN ? len[c] : STORE_QROW_LEN - 1),
				 row[c] ? row[c] : "");
		}
	}
	mysql_free_result(res);
	return 0;
}

/*
 * INT ids to BIGINT; a DECIMAL volume narrower than DECIMAL(19,8), which
 * would round new volumes silently (MySQL only notes fractional rounding,
 * even when strict), to 8 fractional digits and at least 11 integer ones.
 * Nullability kept.
 */
static void my_widen_sql(const char *col, const struct store_qrow *c, char *sql, size_t size)
{
	const char *nn = !strcmp(c->val[3], "NO") ? " NOT NULL" : "";
	long digits = strtol(c->val[1], NULL, 10) - strtol(c->val[2], NULL, 10);

	if (strcmp(col, "volume"))
		snprintf(sql, size, "ALTER TABLE fee MODIFY %s BIGINT%s", col, nn);
	else
		snprintf(sql, size, "ALTER TABLE fee MODIFY volume DECIMAL(%ld,%d)%s",
			 (digits > 11 ? digits : 11) + DEC_SCALE, DEC_SCALE, nn);
}

static const char *const my_set_version[] = {
	"START TRANSACTION",
	"DELETE FROM feed_schema",
	"INSERT INTO feed_schema (version) VALUES (" STORE_STR(STORE_SCHEMA_VERSION) ")",
	"COMMIT",
	NULL,
};

static const struct store_migrate_ops my_migrate_ops = {
	.lock = my_migrate_lock,
	.unlock = my_migrate_unlock,
	.exec = my_migrate_exec,
	.query = my_migrate_query,
	.widen_sql = my_widen_sql,
	.q_table = "SELECT 1 FROM information_schema.tables"
		   " WHERE table_schema = DATABASE() AND table_name = '$T'",
	.q_column = "SELECT data_type, numeric_precision, numeric_scale, is_nullable,"
		    " column_default FROM information_schema.columns"
		    " WHERE table_schema = DATABASE() AND table_name = '$T' AND column_name = '$C'",
	.q_index = "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE()"
		   " AND table_name = '$T' AND index_name = '$I' LIMIT 1",
	.q_ticket_key = "SELECT index_name FROM information_schema.statistics"
			" WHERE table_schema = DATABASE() AND table_name = 'fee'"
			" AND non_unique = 0 GROUP BY index_name"
			" HAVING COUNT(*) = 1 AND MAX(column_name) = 'ticket' LIMIT 1",
	.create_fee = "CREATE TABLE IF NOT EXISTS fee ("
		      " ticket BIGINT NOT NULL PRIMARY KEY,"
		      " login BIGINT NOT NULL,"
		      " volume DECIMAL(19,8) NOT NULL,"
		      " status CHAR(1) NOT NULL DEFAULT 'N',"
		      " fee DECIMAL(20,2) NULL,"
		      " received_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
		      " settled_at DATETIME(6) NULL,"
		      " source VARCHAR(255) NULL,"
		      " CONSTRAINT fee_volume_nonneg CHECK (volume >= 0),"
		      " KEY fee_status_ticket (status, ticket)"
		      ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
	.create_rate = "CREATE TABLE IF NOT EXISTS fee_rate ("
		       " login BIGINT NOT NULL PRIMARY KEY,"
		       " rate DECIMAL(19,8) NOT NULL"
		       ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
	.create_reject = "CREATE TABLE IF NOT EXISTS fee_reject ("
			 " id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,"
			 " received_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),"
			 " endpoint TEXT NOT NULL,"
			 " reason TEXT NOT NULL,"
			 " body LONGBLOB NOT NULL,"
			 " source VARCHAR(255) NULL"
			 ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
	.create_schema = "CREATE TABLE IF NOT EXISTS feed_schema ("
			 " version INT NOT NULL"
			 ") ENGINE=InnoDB",
	.add_cols = {
		{ "status", "ALTER TABLE fee ADD COLUMN status CHAR(1) NOT NULL DEFAULT 'N'", NULL },
		{ "fee", "ALTER TABLE fee ADD COLUMN fee DECIMAL(20,2) NULL", NULL },
		{ "received_at", "ALTER TABLE fee ADD COLUMN received_at DATETIME(6) NOT NULL "
				 "DEFAULT CURRENT_TIMESTAMP(6)", NULL },
		{ "settled_at", "ALTER TABLE fee ADD COLUMN settled_at DATETIME(6) NULL", NULL },
		/* a nullable last column: instant on MariaDB 10.3+, existing rows read NULL */
		{ "source", "ALTER TABLE fee ADD COLUMN source VARCHAR(255) NULL", NULL },
	},
	.add_reject_source = "ALTER TABLE fee_reject ADD COLUMN source VARCHAR(255) NULL",
	.add_key = "ALTER TABLE fee ADD UNIQUE KEY fee_ticket (ticket)",
	.primary_index = "PRIMARY",
	.add_primary_key = "ALTER TABLE fee ADD PRIMARY KEY (ticket)",
	.index_name = "fee_status_ticket",
	.create_index = "ALTER TABLE fee ADD INDEX fee_status_ticket (status, ticket)",
	.set_version = my_set_version,
	.ddl_lock_timeout_s = MY_DDL_LOCK_TIMEOUT_S,
	.lock_hint = "SHOW PROCESSLIST",
};

/*
 * GET_LOCK is local to one Galera node: instances starting at once on two
 * nodes both write feed_schema, and one loses the certification (1213).
 * The other's migration is then done or nearly: run again, a few times.
 */
#define MY_MIGRATE_TRIES 5

static int my_migrate(struct store *s)
{
	struct store_mysql *m = my_of(s);
	int r = 0;

	for (int i = 0; i < MY_MIGRATE_TRIES; i++) {
		m->last_code = 0;
		r = store_migrate(s, &my_migrate_ops);
		if (r != -EAGAIN || m->last_code != 1213)
			break;
		struct timespec ts = { 0, 100L * 1000 * 1000 * (i + 1) };  /* < 1 s */

		nanosleep(&ts, NULL);
	}
	return r;
}

/* ==== The batch primitives ==== */

static int my_max_ticket(struct store *s, int64_t *ret)
{
	struct store_mysql *m = my_of(s);
	int r = my_need_conn(m);

	if (r == 0)
		r = my_select_i64(m, "SELECT max(ticket) from fee", "SELECT max(ticket) FROM fee", ret);
	if (r == 0 && *ret < 0)
		*ret = 0; /* empty table: my_select_i64 reports NULL as -1 */
	return r;
}

static int my_lookup(struct store *s, const int64_t *tickets, size_t n,
		     struct store_row *rows, size_t *ret_n)
{
	struct store_mysql *m = my_of(s);
	size_t got = 0;
	int r = 0;

	for (size_t i = 0; i < n; i += MY_LOOKUP_CHUNK) {
		size_t end = n - i < MY_LOOKUP_CHUNK ? n : i + MY_LOOKUP_CHUNK;
		MYSQL_RES *res = NULL;
		MYSQL_ROW row;

		my_sql_reset(m);
		my_sql_add(m, "SELECT ticket, login, volume FROM fee WHERE ticket IN (");
		for (size_t j = i; j < end; j++)
			my_sql_add(m, "%s%" PRId64, j > i ? "," : "", tickets[j]);
		my_sql_add(m, ")");
		if (m->sql_full) {
			my_seterr(m, "lookup: statement exceeds %d bytes", MY_SQL_MAX);
			return -E2BIG;
		}
		r = my_select(m, "SELECT from fee", m->sql, m->sql_len, 3, &res);
		if (r < 0)
			return r;
		while ((row = mysql_fetch_row(res))) {
			unsigned long *len = mysql_fetch_lengths(res);
			struct store_row *o = &rows[got];

			if (got == n) {
				my_seterr(m, "lookup: more rows than tickets; is fee.ticket "
					  "unique?");
				r = -EIO;
				break;
			}
			if (store_parse_i64(row[0], len[0], &o->ticket) < 0) {
				my_seterr(m, "lookup: unreadable ticket \"%.*s\" in fee",
					  (int)(len[0] > 40 ? 40 : len[0]), row[0] ? row[0] : "");
				r = -EIO;
				break;
			}
			/* 0 is no valid login: an unreadable one can only conflict */
			if (store_parse_i64(row[1], len[1], &o->login) < 0)
				o->login = 0;
			o->volume = store_parse_amount(row[2], len[2]);
			got++;
		}
		mysql_free_result(res);
		if (r < 0)
			return r;
	}
	*ret_n = got;
	return 0;
}

/* src as an SQL literal into buf (2 * STORE_SOURCE_MAX + 3 bytes): NULL, or quoted and escaped. */
static void my_sql_text(struct store_mysql *m, const char *src, char *buf)
{
	unsigned long len;

	if (!src) {
		memcpy(buf, "NULL", 5);
		return;
	}
	len = (unsigned long)strnlen(src, STORE_SOURCE_MAX);
	buf[0] = '\'';
	/* the connection's escaping: it knows NO_BACKSLASH_ESCAPES and the charset */
	len = mysql_real_escape_string(m->conn, buf + 1, src, len);
	memcpy(buf + 1 + len, "'", 2);
}

/* Portable path: INSERT ... VALUES (...),(...) of at most MY_INSERT_CHUNK rows. */
static int my_insert_multi(struct store_mysql *m, const struct record *recs,
			   const char *const *srcs, size_t n)
{
	char vol[DEC_STRMAX], src[2 * STORE_SOURCE_MAX + 3];
	int r;

	for (size_t i = 0; i < n; i += MY_INSERT_CHUNK) {
		size_t end = n - i < MY_INSERT_CHUNK ? n : i + MY_INSERT_CHUNK;

		my_sql_reset(m);
		my_sql_add(m, "INSERT INTO fee (ticket, login, volume, status, source) VALUES ");
		for (size_t j = i; j < end; j++) {
			/* escaped once per run of rows from one sender */
			if (j == i || (srcs && srcs[j] != srcs[j - 1]))
				my_sql_text(m, srcs ? srcs[j] : NULL, src);
			dec_format(recs[j].volume, DEC_SCALE, 0, vol);
			my_sql_add(m, "%s(%" PRId64 ",%" PRId64 ",%s,'N',%s)", j > i ? "," : "",
				   recs[j].ticket, recs[j].login, vol, src);
		}
		r = my_query_buf(m, "INSERT into fee");
		if (r < 0)
			return r;
	}
	return 0;
}

/* MariaDB path: one prepared INSERT executed over arrays of MY_BULK_CHUNK rows. */
static int my_insert_bulk(struct store_mysql *m, const struct record *recs,
			  const char *const *srcs, size_t n)
{
	static const char sql[] =
		"INSERT INTO fee (ticket, login, volume, status, source) VALUES (?, ?, ?, 'N', ?)";
	MYSQL_BIND bind[4];
	size_t rowsize = sizeof(struct my_bulkrow);
	int r;

	if (!m->bulk) {
		m->bulk = calloc(MY_BULK_CHUNK, sizeof(*m->bulk));
		if (!m->bulk) {
			my_seterr(m, "INSERT into fee: out of memory");
			return -ENOMEM;
		}
	}
	if (!m->ins_stmt) {
		m->ins_stmt = mysql_stmt_init(m->conn);
		if (!m->ins_stmt)
			return my_fail(m, "prepare INSERT into fee");
		if (mysql_stmt_prepare(m->ins_stmt, sql, sizeof(sql) - 1) != 0) {
			r = my_stmt_fail(m, m->ins_stmt, "prepare INSERT into fee");
			mysql_stmt_close(m->ins_stmt);
			m->ins_stmt = NULL;
			return r;
		}
	}
	memset(bind, 0, sizeof(bind));
	bind[0].buffer_type = MYSQL_TYPE_LONGLONG;
	bind[0].buffer = &m->bulk[0].ticket;
	bind[1].buffer_type = MYSQL_TYPE_LONGLONG;
	bind[1].buffer = &m->bulk[0].login;
	bind[2].buffer_type = MYSQL_TYPE_NEWDECIMAL;
	bind[2].buffer = m->bulk[0].vol;
	bind[2].length = &m->bulk[0].vol_len;
	bind[3].buffer_type = MYSQL_TYPE_STRING;
	bind[3].buffer = m->bulk[0].src;
	bind[3].length = &m->bulk[0].src_len;
	bind[3].u.indicator = &m->bulk[0].src_ind;

	for (size_t i = 0; i < n; i += MY_BULK_CHUNK) {
		unsigned int cnt = (unsigned int)(n - i < MY_BULK_CHUNK ? n - i : MY_BULK_CHUNK);

		for (unsigned int j = 0; j < cnt; j++) {
			struct my_bulkrow *b = &m->bulk[j];
			const char *src = srcs ? srcs[i + j] : NULL;

			b->ticket = recs[i + j].ticket;
			b->login = recs[i + j].login;
			b->vol_len = dec_format(recs[i + j].volume, DEC_SCALE, 0, b->vol);
			b->src_ind = src ? STMT_INDICATOR_NONE : STMT_INDICATOR_NULL;
			b->src_len = src ? strnlen(src, STORE_SOURCE_MAX) : 0;
			memcpy(b->src, src ? src : "", b->src_len);
		}
		if (mysql_stmt_attr_set(m->ins_stmt, STMT_ATTR_ARRAY_SIZE, &cnt) != 0 ||
		    mysql_stmt_attr_set(m->ins_stmt, STMT_ATTR_ROW_SIZE, &rowsize) != 0 ||
		    mysql_stmt_bind_param(m->ins_stmt, bind) != 0)
			return my_stmt_fail(m, m->ins_stmt, "bind INSERT into fee");
		if (mysql_stmt_execute(m->ins_stmt) != 0)
			return my_stmt_fail(m, m->ins_stmt, "INSERT into fee");
	}
	return 0;
}

/* Reads the names of fee's ticket keys into m->keys, once (see my_unique_class). */
static int my_load_ticket_keys(struct store_mysql *m)
{
	static const char sql[] =
		"SELECT index_name FROM information_schema.statistics"
		" WHERE table_schema = DATABASE() AND table_name = 'fee' AND non_unique = 0"
		" GROUP BY index_name HAVING COUNT(*) = 1 AND MAX(column_name) = 'ticket'";
	MYSQL_RES *res = NULL;
	MYSQL_ROW row;
	int r;

	if (m->keys.known)
		return 0;
	r = my_select(m, "look up the unique keys of fee.ticket", sql, sizeof(sql) - 1, 1, &res);
	if (r < 0)
		return r;
	store_keys_reset(&m->keys);
	while ((row = mysql_fetch_row(res)))
		store_keys_add(&m->keys, row[0] ? row[0] : "");
	mysql_free_result(res);
	store_keys_done(&m->keys);
	return 0;
}

static int my_insert(struct store *s, const struct record *recs, const char *const *srcs,
		     size_t n)
{
	struct store_mysql *m = my_of(s);
	int r;

	r = my_need_conn(m);
	if (r == 0 && n > 0)
		r = my_load_ticket_keys(m);
	if (r < 0 || n == 0)
		return r;
	m->ins_recs = recs;
	m->ins_n = n;
	r = m->can_bulk ? my_insert_bulk(m, recs, srcs, n) : my_insert_multi(m, recs, srcs, n);
	m->ins_recs = NULL;
	return r;
}

/*
 * The session's max_allowed_packet, read once per connection. A packet over
 * it makes the server answer 1153 and close the connection, and the client
 * may see only the close (2006, 2013: an outage, retried forever), so a body
 * that cannot fit is refused here, before it is sent (-E2BIG).
 */
static int my_max_packet(struct store_mysql *m)
{
	int64_t v;
	int r;

	if (m->packet_conn == m->conn && m->conn)
		return 0;
	r = my_select_i64(m, "SELECT @@max_allowed_packet", "SELECT @@max_allowed_packet", &v);
	if (r < 0)
		return r;
	m->max_packet = v > 0 ? (unsigned long)v : (unsigned long)-1;
	m->packet_conn = m->conn;
	return 0;
}

static int my_insert_one_reject(struct store_mysql *m, MYSQL_STMT *st,
				const struct store_reject *rj)
{
	static const char empty[1];
	MYSQL_BIND bind[4];
	unsigned long elen = strlen(rj->endpoint), rlen = strlen(rj->reason);
	unsigned long slen = rj->source ? (unsigned long)strnlen(rj->source, STORE_SOURCE_MAX) : 0;
	my_bool snull = !rj->source;
	unsigned long blen = (unsigned long)rj->len;
	bool longdata = rj->len > MY_LONGDATA_CHUNK;

	/*
	 * The largest packet this sends (1 KiB for statement id, types,
	 * lengths): over the limit, refused here; a long body whose pieces
	 * fit goes to the server, which refuses it whole without closing (1105).
	 */
	size_t packet = (longdata ? MY_LONGDATA_CHUNK : (size_t)elen + rlen + blen) + 1024;

	if (packet > m->max_packet) {
		my_seterr(m, "INSERT into fee_reject: body of %zu bytes does not fit the server's "
			  "max_allowed_packet (%lu): raise it", rj->len, m->max_packet);
		return -E2BIG;
	}

	memset(bind, 0, sizeof(bind));
	bind[0].buffer_type = MYSQL_TYPE_STRING;
	bind[0].buffer = (void *)rj->endpoint;
	bind[0].length = &elen;
	bind[1].buffer_type = MYSQL_TYPE_STRING;
	bind[1].buffer = (void *)rj->reason;
	bind[1].length = &rlen;
	bind[2].buffer_type = MYSQL_TYPE_LONG_BLOB;
	bind[2].buffer = rj->len ? (void *)rj->body : (void *)empty;
	bind[2].length = &blen;
	bind[3].buffer_type = MYSQL_TYPE_STRING;
	bind[3].buffer = rj->source ? (void *)rj->source : (void *)empty;
	bind[3].length = &slen;
	bind[3].is_null = &snull;
	if (mysql_stmt_bind_param(st, bind) != 0)
		return my_stmt_fail(m, st, "bind INSERT into fee_reject");
	if (longdata) {
		/* big bodies go in pieces, each well under max_allowed_packet */
		for (size_t off = 0; off < rj->len; off += MY_LONGDATA_CHUNK) {
			size_t len = rj->len - off < MY_LONGDATA_CHUNK ? rj->len - off
								       : MY_LONGDATA_CHUNK;

			if (mysql_stmt_send_long_data(st, 2, (const char *)rj->body + off,
						      (unsigned long)len) != 0)
				return my_stmt_fail(m, st, "send fee_reject body");
		}
	}
	if (mysql_stmt_execute(st) != 0) {
		unsigned int code = mysql_stmt_errno(st);
		int r = my_stmt_fail(m, st, "INSERT into fee_reject");

		/* 1105 for long data, 1153 otherwise: the server's limit, not ours */
		if (code == 1105 || code == 1153) {
			size_t len = strlen(m->base.errmsg);

			snprintf(m->base.errmsg + len, sizeof(m->base.errmsg) - len,
				 " (body of %zu bytes: raise the server's max_allowed_packet)",
				 rj->len);
		}
		return r;
	}
	return 0;
}

static int my_insert_rejects(struct store *s, const struct store_reject *rj, size_t n)
{
	static const char sql[] =
		"INSERT INTO fee_reject (endpoint, reason, body, source) VALUES (?, ?, ?, ?)";
	struct store_mysql *m = my_of(s);
	MYSQL_STMT *st = NULL;
	int r;

	r = my_need_conn(m);
	if (r == 0 && n > 0)
		r = my_max_packet(m);
	if (r < 0 || n == 0)
		return r;
	st = mysql_stmt_init(m->conn);
	if (!st)
		return my_fail(m, "prepare INSERT into fee_reject");
	if (mysql_stmt_prepare(st, sql, sizeof(sql) - 1) != 0) {
		r = my_stmt_fail(m, st, "prepare INSERT into fee_reject");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct store_reject x = rj[i];
		char *ce = NULL, *cr = NULL, *cs = NULL;

		/* strict mode refuses invalid UTF-8 (1366): the reject would be lost */
		x.endpoint = store_clean_text(rj[i].endpoint, &ce);
		x.reason = store_clean_text(rj[i].reason, &cr);
		x.source = rj[i].source ? store_clean_text(rj[i].source, &cs) : NULL;
		if (!x.endpoint || !x.reason || (rj[i].source && !x.source)) {
			my_seterr(m, "insert_rejects: out of memory");
			r = -ENOMEM;
		} else {
			r = my_insert_one_reject(m, st, &x);
		}
		free(ce);
		free(cr);
		free(cs);
		if (r < 0)
			goto out;
	}
	r = 0;
out:
	mysql_stmt_close(st);
	return r;
}

static int my_fetch_unsettled(struct store *s, int64_t after, size_t max,
			      struct store_settle *rows, size_t *ret_n)
{
	struct store_mysql *m = my_of(s);
	MYSQL_RES *res = NULL;
	MYSQL_ROW row;
	size_t got = 0;
	int r;

	if (max == 0) {
		*ret_n = 0;
		return 0;
	}
	my_sql_reset(m);
	my_sql_add(m, "SELECT f.ticket, f.login, f.volume, r.rate FROM fee f"
		   " LEFT JOIN fee_rate r ON r.login = f.login"
		   " WHERE f.status = 'N' AND f.ticket > %" PRId64
		   " ORDER BY f.ticket LIMIT %zu", after, max);
	r = my_select(m, "SELECT unsettled from fee", m->sql, m->sql_len, 4, &res);
	if (r < 0)
		return r;
	while ((row = mysql_fetch_row(res))) {
		unsigned long *len = mysql_fetch_lengths(res);
		struct store_settle *o = &rows[got];

		if (got == max) {
			my_seterr(m, "fetch_unsettled: more than %zu rows; is "
				  "fee_rate.login unique?", max);
			r = -EIO;
			goto out;
		}
		if (store_parse_i64(row[0], len[0], &o->ticket) < 0) {
			my_seterr(m, "fetch_unsettled: unreadable ticket \"%.*s\" in fee",
				  (int)(len[0] > 40 ? 40 : len[0]), row[0] ? row[0] : "");
			r = -EIO;
			goto out;
		}
		if (store_parse_i64(row[1], len[1], &o->login) < 0)
			o->login = 0;
		o->volume = store_parse_amount(row[2], len[2]);
		if (!row[3]) {
			o->rate = -1;            /* no fee_rate row for the login */
		} else {
			o->rate = store_parse_amount(row[3], len[3]);
			if (o->rate < 0)
				o->rate = -2;
		}
		o->fee = 0;
		got++;
	}
	*ret_n = got;
	r = 0;
out:
	mysql_free_result(res);
	return r;
}

/* One UPDATE per chunk: fee = CASE ticket WHEN ... END, only rows still 'N'. */
static int my_settle(struct store *s, const struct store_settle *rows, size_t n)
{
	struct store_mysql *m = my_of(s);
	char fee[DEC_STRMAX];
	int r;

	for (size_t i = 0; i < n; i += MY_SETTLE_CHUNK) {
		size_t end = n - i < MY_SETTLE_CHUNK ? n : i + MY_SETTLE_CHUNK;

		my_sql_reset(m);
		my_sql_add(m, "UPDATE fee SET fee = CASE ticket");
		for (size_t j = i; j < end; j++) {
			dec_format(rows[j].fee, FEE_SCALE, FEE_SCALE, fee);
			my_sql_add(m, " WHEN %" PRId64 " THEN %s", rows[j].ticket, fee);
		}
		my_sql_add(m, " END, status = 'Y', settled_at = CURRENT_TIMESTAMP(6)"
			   " WHERE status = 'N' AND ticket IN (");
		for (size_t j = i; j < end; j++)
			my_sql_add(m, "%s%" PRId64, j > i ? "," : "", rows[j].ticket);
		my_sql_add(m, ")");
		r = my_query_buf(m, "UPDATE fee (settle)");
		if (r < 0)
			return r;
	}
	return 0;
}

static const char *const my_schemes[] = { "mysql", "mariadb", NULL };

const struct store_ops store_mysql_ops = {
	.version = STORE_OPS_VERSION,
	.name = "mysql",
	.schemes = my_schemes,
	.default_writers = 2,
	.open = my_open,
	.close = my_close,
	.reconnect = my_reconnect,
	.migrate = my_migrate,
	.exec = my_exec,
	.begin = my_begin,
	.commit = my_commit,
	.rollback = my_rollback,
	.max_ticket = my_max_ticket,
	.lookup = my_lookup,
	.insert = my_insert,
	.insert_rejects = my_insert_rejects,
	.fetch_unsettled = my_fetch_unsettled,
	.settle = my_settle,
	.cancel = my_cancel,
};
