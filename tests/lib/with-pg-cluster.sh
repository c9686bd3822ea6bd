#!/bin/bash
#
# with-pg-cluster.sh - run a command against a throwaway PostgreSQL primary
# with two synchronous (quorum) standbys, streaming on 127.0.0.1.
#
# Usage: tests/lib/with-pg-cluster.sh COMMAND [ARGS...]
#
# Like with-postgres.sh (temporary directory, trust authentication, free
# ports, runs the servers as the postgres user when root, stops them and
# removes everything on exit, INT, TERM, HUP), but three nodes: pg0 is
# initdb'ed as the primary, pg1 and pg2 are made with pg_basebackup -R and
# stream from it. The command starts once both standbys stream and one of
# them is synchronous.
#
# synchronous_standby_names = 'ANY 1 (pg0, pg1, pg2)': a commit waits until
# one standby, either one, has flushed it (quorum commit). Why ANY 1 rather
# than FIRST 1: with ANY, every acknowledged commit is on the disk of at
# least one standby, so promoting the standby that received the most WAL
# (pg_last_wal_receive_lsn) never loses an acknowledged commit, and either
# standby may be down without stopping writes. The list names every node so
# that the same setting (copied by pg_basebackup) still holds after a
# promotion: a node never waits for itself, only for its own standbys.
#
# Exported to COMMAND:
#   FEED_TEST_BACKEND        postgresql
#   FEED_TEST_URL            postgresql://postgres@127.0.0.1:P0,127.0.0.1:P1,
#                            127.0.0.1:P2/feed?target_session_attrs=read-write
#   FEED_TEST_PASSWORD_FILE  "" (trust authentication)
#   FEED_TEST_SQL            command: SQL on stdin, run on whichever node is
#                            the primary now (the URL above), rows tab-separated
#   FEED_TEST_PG_PORTS       "P0 P1 P2", the ports of pg0, pg1, pg2
#   FEED_TEST_PG_DATA        their data directories, same order
#   FEED_TEST_PG_NODE_SQL    command N: SQL on stdin, run on node N (0..2),
#                            database feed, rows tab-separated
#   FEED_TEST_PG_CTL         command N ARGS...: pg_ctl -D <node N> ARGS, as the
#                            servers' user (stop -m immediate, promote, start)
#   FEED_TEST_PG_FOLLOW      command N M: node N (a standby) streams from node M
#                            from now on (primary_conninfo, reload); bounded
#
set -euo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 COMMAND [ARGS...]" >&2
	exit 2
fi

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
TIMEOUT=30

unset PGHOST PGHOSTADDR PGPORT PGDATABASE PGUSER PGPASSWORD PGPASSFILE \
      PGSERVICE PGSERVICEFILE PGSSLMODE PGOPTIONS PGDATA PGTARGETSESSIONATTRS

as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/feed-pgc.XXXXXX")
ports=(0 0 0)
started=(0 0 0)
child=

cleanup() {
	status=$?
	trap - EXIT INT TERM HUP
	if [ -n "$child" ]; then
		kill -TERM "$child" 2>/dev/null || true
		wait "$child" 2>/dev/null || true
	fi
	for n in 0 1 2; do
		if [ "${started[$n]}" = 1 ]; then
			# a test may have left a process stopped (SIGSTOP)
			if [ -f "$tmp/pg$n/postmaster.pid" ]; then
				pid=$(head -1 "$tmp/pg$n/postmaster.pid")
				pkill -CONT -P "$pid" 2>/dev/null || true
			fi
			as_pg "$PGBIN/pg_ctl" -D "$tmp/pg$n" -m immediate -w -t "$TIMEOUT" \
				stop >/dev/null 2>&1 || true
		fi
	done
	rm -rf -- "$tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

fail() {
	echo "with-pg-cluster.sh: $*" >&2
	for n in 0 1 2; do
		if [ -s "$tmp/pg$n.log" ]; then
			echo "---- log of pg$n ----" >&2
			tail -n 40 "$tmp/pg$n.log" >&2
		fi
	done
	exit 1
}

if [ "$(id -u)" -eq 0 ]; then
	chown postgres: "$tmp"
fi
chmod 0700 "$tmp"

free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Starts node n on a free port (a few tries: another wrapper may take the
# port first). The port goes into node.conf, included last by
# postgresql.conf, so that pg_ctl start brings the node back on it.
start_node() {
	local n=$1 data=$tmp/pg$1 log=$tmp/pg$1.log try_port
	for attempt in 1 2 3 4 5; do
		try_port=$(free_port)
		printf "port = %s\n" "$try_port" >"$data/node.conf"
		if as_pg "$PGBIN/pg_ctl" -D "$data" -l "$log" -w -t "$TIMEOUT" \
			start >/dev/null 2>&1; then
			ports[$n]=$try_port
			started[$n]=1
			return 0
		fi
		as_pg "$PGBIN/pg_ctl" -D "$data" -m immediate -w -t "$TIMEOUT" \
			stop >/dev/null 2>&1 || true
		grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null \
			|| fail "pg$n did not start within ${TIMEOUT}s"
	done
	fail "pg$n did not start: no free port after 5 attempts"
}

# Setup statements commit locally: no standby exists yet to wait for.
psql_node() {
	PGOPTIONS='-c synchronous_commit=local' "$PGBIN/psql" -X -h 127.0.0.1 -p "${ports[$1]}" -U postgres -d "$2" -Atq \
		-v ON_ERROR_STOP=1 -c "$3"
}

as_pg "$PGBIN/initdb" -D "$tmp/pg0" -U postgres -A trust -E UTF8 --locale=C \
	--no-sync >"$tmp/initdb.log" 2>&1 \
	|| { cat "$tmp/initdb.log" >&2; fail "initdb failed"; }

# In postgresql.conf, which pg_basebackup copies: the standbys run the same
# settings, and a promoted one waits for its own standbys the same way.
as_pg tee -a "$tmp/pg0/postgresql.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
fsync = on
shared_buffers = 32MB
max_connections = 100
logging_collector = off
wal_level = replica
max_wal_senders = 10
wal_keep_size = '256MB'
hot_standby = on
synchronous_commit = on
synchronous_standby_names = 'ANY 1 (pg0, pg1, pg2)'
wal_receiver_status_interval = '1s'
include_if_exists = 'node.conf'
EOF

start_node 0
psql_node 0 postgres 'CREATE DATABASE feed' >/dev/null \
	|| fail "CREATE DATABASE feed failed"

for n in 1 2; do
	as_pg "$PGBIN/pg_basebackup" -D "$tmp/pg$n" -X stream -c fast --no-sync \
		-d "host=127.0.0.1 port=${ports[0]} user=postgres" >"$tmp/basebackup$n.log" 2>&1 \
		|| { cat "$tmp/basebackup$n.log" >&2; fail "pg_basebackup of pg$n failed"; }
	as_pg touch "$tmp/pg$n/standby.signal"
	as_pg chmod 0700 "$tmp/pg$n"
	# application_name is the name synchronous_standby_names knows it by
	echo "primary_conninfo = 'host=127.0.0.1 port=${ports[0]} user=postgres application_name=pg$n'" \
		| as_pg tee "$tmp/pg$n/postgresql.auto.conf" >/dev/null
	start_node "$n"
done

# Both standbys streaming, and the quorum formed: a commit can complete.
deadline=$((SECONDS + TIMEOUT))
while :; do
	got=$(psql_node 0 postgres "SELECT count(*) FILTER (WHERE state = 'streaming')
		|| ' ' || count(*) FILTER (WHERE sync_state IN ('sync', 'quorum'))
		FROM pg_stat_replication" 2>/dev/null || true)
	read -r nstream nsync <<<"$got" || true
	if [ "${nstream:-0}" -ge 2 ] && [ "${nsync:-0}" -ge 1 ]; then
		break
	fi
	[ $SECONDS -lt $deadline ] || fail "standbys not streaming within ${TIMEOUT}s (got: $got)"
	sleep 0.1
done

as_pg_cmd=
if [ "$(id -u)" -eq 0 ]; then
	as_pg_cmd="runuser -u postgres --"
fi
tab=$(printf '\t')
url="postgresql://postgres@127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}/feed?target_session_attrs=read-write"
cat >"$tmp/sql" <<EOF
#!/bin/sh
PGCONNECT_TIMEOUT=5 exec '$PGBIN/psql' -X '$url' -Atq -v ON_ERROR_STOP=1 -F '$tab' "\$@"
EOF
cat >"$tmp/node-sql" <<EOF
#!/bin/sh
# node-sql N: SQL on stdin, on node N
set -e
ports="${ports[*]}"
n=\$1; shift
port=\$(echo \$ports | cut -d' ' -f\$((n + 1)))
PGCONNECT_TIMEOUT=5 exec '$PGBIN/psql' -X -h 127.0.0.1 -p "\$port" -U postgres -d feed -Atq -v ON_ERROR_STOP=1 -F '$tab' "\$@"
EOF
cat >"$tmp/ctl" <<EOF
#!/bin/sh
# ctl N ARGS: pg_ctl on node N
n=\$1; shift
exec $as_pg_cmd '$PGBIN/pg_ctl' -D "$tmp/pg\$n" -l "$tmp/pg\$n.log" -t $TIMEOUT "\$@"
EOF
cat >"$tmp/follow" <<EOF
#!/bin/sh
# follow N M: standby N streams from node M (the new timeline: recovery_target_timeline = latest)
set -e
ports="${ports[*]}"
port=\$(echo \$ports | cut -d' ' -f\$((\$2 + 1)))
echo "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=\$port user=postgres application_name=pg\$1'; SELECT pg_reload_conf();" \
	| '$tmp/node-sql' "\$1" >/dev/null
EOF
chmod 0755 "$tmp/sql" "$tmp/node-sql" "$tmp/ctl" "$tmp/follow"

export FEED_TEST_BACKEND=postgresql
export FEED_TEST_URL="$url"
export FEED_TEST_PASSWORD_FILE=""
export FEED_TEST_SQL="$tmp/sql"
export FEED_TEST_PG_PORTS="${ports[*]}"
export FEED_TEST_PG_DATA="$tmp/pg0 $tmp/pg1 $tmp/pg2"
export FEED_TEST_PG_NODE_SQL="$tmp/node-sql"
export FEED_TEST_PG_CTL="$tmp/ctl"
export FEED_TEST_PG_FOLLOW="$tmp/follow"

set +e
"$@" <&0 &
child=$!
wait "$child"
status=$?
child=
set -e
exit "$status"
