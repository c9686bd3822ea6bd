#!/bin/sh
# with-mariadb.sh COMMAND [ARGS...] - runs COMMAND against a throwaway MariaDB.
#
# Creates a temporary data directory under ${TMPDIR:-/tmp}, starts a private
# mariadbd on 127.0.0.1 and a free port (socket inside the temp dir), creates
# database `feed` and users 'feed'@'127.0.0.1' / 'feed'@'localhost' with a
# random password, runs COMMAND with the FEED_TEST_* variables exported (see
# tests/store/test_store.c), then shuts the server down and removes
# everything, also when COMMAND or the setup fails. Exits with COMMAND's
# status. Independent of any system service; safe to run several at once.
# The server is set up as durable production servers are: a binary log,
# synced at every commit like the InnoDB log (feed's durability = full
# refuses anything less).
# Must run as root (mariadbd drops to the mysql user).
#
# With FEED_TEST_TLS=1 the server also speaks TLS (plain connections stay
# allowed, FEED_TEST_URL is unchanged): tests/lib/mkcert.sh makes a CA and a
# server certificate for IP:127.0.0.1 and DNS:localhost in a second
# temporary directory (readable by feed's user, removed as well), mariadbd
# gets --ssl-ca/--ssl-cert/--ssl-key (FLUSH SSL re-reads those files) and
# performance_schema (status_by_thread shows each session's Ssl_cipher), and
# these are exported too:
#   FEED_TEST_TLS_DIR   that directory: ca.crt, ca.key (root's), the
#                       server's server.crt and server.key (mysql's); a test
#                       may add certificates
#   FEED_TEST_TLS_CA    the CA certificate: ssl-ca=
set -eu

if [ $# -lt 1 ]; then
	echo "usage: $0 COMMAND [ARGS...]" >&2
	exit 2
fi

wait_secs=30
tls=
tmp=$(mktemp -d "${TMPDIR:-/tmp}/feed-mariadb.XXXXXX")
# mariadbd runs as mysql: it needs to reach the temp dir and own run/.
chmod 0755 "$tmp"
mkdir "$tmp/data" "$tmp/run"
chown mysql:mysql "$tmp/data" "$tmp/run"

cleanup() {
	rc=$?
	trap - EXIT INT TERM HUP
	if [ -f "$tmp/stop.sh" ]; then
		sh "$tmp/stop.sh" >/dev/null 2>&1 || :
	fi
	rm -rf "$tmp"
	if [ -n "$tls" ]; then
		rm -rf "$tls"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

if ! mariadb-install-db --no-defaults --datadir="$tmp/data" --user=mysql \
	--auth-root-authentication-method=normal --skip-test-db \
	--skip-name-resolve >"$tmp/install.log" 2>&1; then
	echo "with-mariadb.sh: mariadb-install-db failed:" >&2
	cat "$tmp/install.log" >&2
	exit 1
fi

# TLS: the certificates live outside $tmp so that a test may replace the
# server's files and feed (another user) can read the CA file.
tls_opts=
if [ "${FEED_TEST_TLS:-0}" = 1 ]; then
	tls=$(mktemp -d "${TMPDIR:-/tmp}/feed-mariadb-tls.XXXXXX")
	chmod 0755 "$tls"
	mkcert=$(dirname "$0")/mkcert.sh
	if ! sh "$mkcert" ca "$tls" ca ||
	   ! sh "$mkcert" server "$tls" server ca IP:127.0.0.1,DNS:localhost; then
		echo "with-mariadb.sh: cannot make the test certificates" >&2
		exit 1
	fi
	chown mysql:mysql "$tls/server.key" "$tls/server.crt"
	tls_opts="--ssl-ca='$tls/ca.crt' --ssl-cert='$tls/server.crt' --ssl-key='$tls/server.key' --performance-schema=ON"
fi

# The start/stop scripts are also what FEED_TEST_DB_START/STOP run, so the
# test restarts the server exactly as it was first started.
write_scripts() {
	cat >"$tmp/start.sh" <<EOF
#!/bin/sh
# Starts the test server in the background and waits until it answers.
mariadbd --no-defaults --datadir='$tmp/data' --socket='$tmp/run/sock' \\
	--port=$1 --bind-address=127.0.0.1 --user=mysql \\
	--pid-file='$tmp/run/mariadbd.pid' --log-error='$tmp/run/error.log' \\
	--innodb-flush-log-at-trx-commit=1 --skip-name-resolve \\
	--log-bin='$tmp/data/binlog' --sync-binlog=1 --server-id=1 \\
	--innodb-buffer-pool-size=64M --max-connections=200 \\
	--max-allowed-packet=128M $tls_opts \\
	</dev/null >>'$tmp/run/stdout.log' 2>&1 &
pid=\$!
i=0
while [ \$i -lt $((wait_secs * 10)) ]; do
	if mariadb-admin --no-defaults -uroot --socket='$tmp/run/sock' \\
		--connect-timeout=2 ping >/dev/null 2>&1; then
		exit 0
	fi
	kill -0 \$pid 2>/dev/null || break
	sleep 0.1
	i=\$((i + 1))
done
echo "with-mariadb.sh: mariadbd did not become ready on port $1:" >&2
cat '$tmp/run/error.log' '$tmp/run/stdout.log' >&2 2>/dev/null
kill -9 \$pid 2>/dev/null
exit 1
EOF
	cat >"$tmp/stop.sh" <<EOF
#!/bin/sh
# Clean shutdown, bounded: mariadb-admin, then SIGTERM, then SIGKILL.
pid=\$(cat '$tmp/run/mariadbd.pid' 2>/dev/null) || exit 0
[ -n "\$pid" ] || exit 0
mariadb-admin --no-defaults -uroot --socket='$tmp/run/sock' \\
	--connect-timeout=2 shutdown >/dev/null 2>&1 || kill -TERM "\$pid" 2>/dev/null
i=0
while kill -0 "\$pid" 2>/dev/null; do
	if [ \$i -ge $((wait_secs * 10)) ]; then
		echo "with-mariadb.sh: mariadbd \$pid did not stop, killing it" >&2
		kill -9 "\$pid" 2>/dev/null
		sleep 0.5
		break
	fi
	sleep 0.1
	i=\$((i + 1))
done
rm -f '$tmp/run/mariadbd.pid'
exit 0
EOF
}

# Another wrapper may grab the port between probe and bind: try a few.
port=
for attempt in 1 2 3 4 5; do
	p=$(free_port)
	write_scripts "$p"
	if sh "$tmp/start.sh" 2>"$tmp/start.err"; then
		port=$p
		break
	fi
	if ! grep -q -i 'address already in use' "$tmp/run/error.log" 2>/dev/null; then
		break
	fi
	: >"$tmp/run/error.log"
done
if [ -z "$port" ]; then
	cat "$tmp/start.err" >&2
	exit 1
fi

password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
umask 077
printf '%s' "$password" >"$tmp/password"
chmod 0600 "$tmp/password"
umask 022

root_sql="mariadb --no-defaults -uroot --socket=$tmp/run/sock --default-character-set=utf8mb4"
$root_sql <<EOF
CREATE DATABASE feed CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER 'feed'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER 'feed'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON feed.* TO 'feed'@'127.0.0.1';
GRANT ALL PRIVILEGES ON feed.* TO 'feed'@'localhost';
FLUSH PRIVILEGES;
EOF

export FEED_TEST_BACKEND=mysql
export FEED_TEST_URL="mysql://feed@127.0.0.1:$port/feed"
export FEED_TEST_PASSWORD_FILE="$tmp/password"
export FEED_TEST_SQL="$root_sql -N -B feed"
export FEED_TEST_DB_STOP="sh $tmp/stop.sh"
export FEED_TEST_DB_START="sh $tmp/start.sh"
# mariadbd's pidfile: tests stop the server process (SIGSTOP)
export FEED_TEST_DB_PIDFILE="$tmp/run/mariadbd.pid"
if [ -n "$tls" ]; then
	export FEED_TEST_TLS_DIR="$tls"
	export FEED_TEST_TLS_CA="$tls/ca.crt"
fi

set +e
"$@"
rc=$?
set -e
exit "$rc"
