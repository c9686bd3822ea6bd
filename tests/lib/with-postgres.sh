#!/bin/bash
#
# with-postgres.sh - run a command against a throwaway PostgreSQL server.
#
# Usage: tests/lib/with-postgres.sh COMMAND [ARGS...]
#
# Creates a private cluster in a temporary directory under ${TMPDIR:-/tmp}
# (initdb as the postgres user, trust authentication: nothing but this
# script and its command can reach it), listening on 127.0.0.1 on a free
# port and on a unix socket inside the temporary directory, creates the
# database "feed", runs COMMAND with the FEED_TEST_* variables exported,
# then stops the server and removes the directory, also when COMMAND or
# the setup fails (or on INT/TERM/HUP). Exits with
# COMMAND's status. Several copies may run at once.
#
# Exported to COMMAND:
#   FEED_TEST_BACKEND        postgresql
#   FEED_TEST_URL            postgresql://postgres@127.0.0.1:PORT/feed
#   FEED_TEST_PASSWORD_FILE  "" (trust authentication, no password)
#   FEED_TEST_SQL            command (a script in the temporary directory):
#                            runs the SQL on its stdin as superuser in the
#                            feed database, prints rows tab-separated
#   FEED_TEST_DB_STOP        command: stops the server (fast shutdown)
#   FEED_TEST_DB_START       command: starts it again, same data and port
#   FEED_TEST_DB_PIDFILE     the postmaster's pidfile (its pid on line 1):
#                            tests stop the server's processes (SIGSTOP)
#
# With FEED_TEST_TLS=1 the server also speaks TLS (ssl = on; plain
# connections stay allowed, FEED_TEST_URL is unchanged): tests/lib/mkcert.sh
# makes a CA and a server certificate for IP:127.0.0.1 and DNS:localhost in
# a second temporary directory (readable by feed's user, removed as well),
# and these are exported too:
#   FEED_TEST_TLS_DIR        that directory: ca.crt, ca.key (root's), the
#                            server's server.crt and server.key (the
#                            postgres user's); a test may add certificates
#   FEED_TEST_TLS_CA         the CA certificate: sslrootcert=
#
set -euo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 COMMAND [ARGS...]" >&2
	exit 2
fi

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
TIMEOUT=30

# Whatever the caller's environment says about libpq defaults must not
# redirect the test to another server.
unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGSSLMODE PGOPTIONS PGDATA

as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/feed-pg.XXXXXX")
data=$tmp/data
log=$tmp/server.log
started=0
child=
tls=

cleanup() {
	status=$?
	trap - EXIT INT TERM HUP
	if [ -n "$child" ]; then
		kill -TERM "$child" 2>/dev/null || true
		wait "$child" 2>/dev/null || true
	fi
	if [ "$started" = 1 ]; then
		as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -w -t "$TIMEOUT" \
			stop >/dev/null 2>&1 || true
	fi
	rm -rf -- "$tmp"
	if [ -n "$tls" ]; then
		rm -rf -- "$tls"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

fail() {
	echo "with-postgres.sh: $*" >&2
	if [ -s "$log" ]; then
		echo "---- server log ($log) ----" >&2
		cat "$log" >&2
		echo "---- end of server log ----" >&2
	fi
	exit 1
}

if [ "$(id -u)" -eq 0 ]; then
	chown postgres: "$tmp"
fi
chmod 0700 "$tmp"

as_pg "$PGBIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C \
	--no-sync >"$tmp/initdb.log" 2>&1 \
	|| { cat "$tmp/initdb.log" >&2; fail "initdb failed"; }

# TLS: the certificates live outside $tmp (0700, the server's) so that
# feed, running as another user, can read the CA file.
ssl_conf=
if [ "${FEED_TEST_TLS:-0}" = 1 ]; then
	tls=$(mktemp -d "${TMPDIR:-/tmp}/feed-pg-tls.XXXXXX")
	chmod 0755 "$tls"
	mkcert=$(dirname "$0")/mkcert.sh
	sh "$mkcert" ca "$tls" ca || fail "cannot make the test CA"
	sh "$mkcert" server "$tls" server ca IP:127.0.0.1,DNS:localhost \
		|| fail "cannot make the server certificate"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$tls/server.key" "$tls/server.crt"
	fi
	ssl_conf="ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'"
fi

free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# A port picked by binding port 0 may be taken again before the server
# binds it (another wrapper running at the same time): try a few ports.
port=
for attempt in 1 2 3 4 5; do
	try_port=$(free_port)
	# Settings go into the configuration file so that a plain
	# "pg_ctl start" (FEED_TEST_DB_START) brings the same server back.
	cat >"$data/postgresql.auto.conf" <<-EOF
		listen_addresses = '127.0.0.1'
		port = $try_port
		unix_socket_directories = '$tmp'
		fsync = on
		shared_buffers = 32MB
		max_connections = 100
		logging_collector = off
		$ssl_conf
	EOF
	if as_pg "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t "$TIMEOUT" \
		start >/dev/null 2>&1; then
		port=$try_port
		started=1
		break
	fi
	# Not started (port taken?): make sure nothing is left running.
	as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -w -t "$TIMEOUT" \
		stop >/dev/null 2>&1 || true
	if ! grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null; then
		fail "server did not start within ${TIMEOUT}s"
	fi
done
[ -n "$port" ] || fail "server did not start: no free port after 5 attempts"

"$PGBIN/psql" -X -h 127.0.0.1 -p "$port" -U postgres -d postgres -q \
	-v ON_ERROR_STOP=1 -c 'CREATE DATABASE feed' >/dev/null \
	|| fail "CREATE DATABASE feed failed"

# The three commands are small scripts in the temporary directory: their
# paths work with sh -c, popen() and plain word splitting alike.
as_pg_cmd=
if [ "$(id -u)" -eq 0 ]; then
	as_pg_cmd="runuser -u postgres --"
fi
tab=$(printf '\t')
cat >"$tmp/sql" <<EOF
#!/bin/sh
exec '$PGBIN/psql' -X -h 127.0.0.1 -p $port -U postgres -d feed -Atq -v ON_ERROR_STOP=1 -F '$tab' "\$@"
EOF
cat >"$tmp/stop" <<EOF
#!/bin/sh
exec $as_pg_cmd '$PGBIN/pg_ctl' -D '$data' -m fast -w -t $TIMEOUT stop >/dev/null
EOF
cat >"$tmp/start" <<EOF
#!/bin/sh
exec $as_pg_cmd '$PGBIN/pg_ctl' -D '$data' -l '$log' -w -t $TIMEOUT start >/dev/null
EOF
chmod 0755 "$tmp/sql" "$tmp/stop" "$tmp/start"

export FEED_TEST_BACKEND=postgresql
export FEED_TEST_URL="postgresql://postgres@127.0.0.1:$port/feed"
export FEED_TEST_PASSWORD_FILE=""
export FEED_TEST_SQL="$tmp/sql"
export FEED_TEST_DB_STOP="$tmp/stop"
export FEED_TEST_DB_START="$tmp/start"
export FEED_TEST_DB_PIDFILE="$data/postmaster.pid"
if [ -n "$tls" ]; then
	export FEED_TEST_TLS_DIR="$tls"
	export FEED_TEST_TLS_CA="$tls/ca.crt"
fi

# In the background so that a signal to this script is handled at once
# (bash runs traps only between foreground commands); stdin stays ours.
set +e
"$@" <&0 &
child=$!
wait "$child"
status=$?
child=
set -e
exit "$status"
