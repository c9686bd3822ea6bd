#!/bin/sh
# with-galera.sh COMMAND [ARGS...] - runs COMMAND against a throwaway 3-node
# MariaDB Galera Cluster.
#
# Like with-mariadb.sh, but three mariadbd on 127.0.0.1, each with its own
# temporary data directory, free ports (client, group communication, IST,
# SST) and socket, joined in one cluster: node 1 bootstraps it
# (--wsrep-new-cluster), nodes 2 and 3 join by rsync SST, and COMMAND runs
# once the cluster has 3 members, each ready (wsrep_ready = ON) and Synced.
# Every node is durable as with-mariadb.sh's server (InnoDB log flushed and
# binary log synced at every commit), kept small for a 2-core machine (32M
# buffer pool, 32M gcache, no performance_schema), with the failure
# detection of the group shortened (a node killed is evicted in ~3 s, not
# ~10 s: the tests stay short; FEED_TEST_GALERA_EVS=default keeps Galera's
# defaults). Everything is shut down and removed at the
# end, also when COMMAND or the setup fails. Exits with COMMAND's status.
# Must run as root (mariadbd drops to the mysql user).
#
# Exported, beside with-mariadb.sh's FEED_TEST_* (FEED_TEST_SQL runs as root
# on node 1; FEED_TEST_DB_STOP/START stop and start the whole cluster):
#   FEED_TEST_URL            mysql://feed@127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/feed
#   FEED_TEST_GALERA_NODES   3
#   FEED_TEST_GALERA_PORT_i  node i's client port (i = 1..3)
#   FEED_TEST_GALERA_URL_i   mysql://feed@127.0.0.1:Pi/feed
#   FEED_TEST_GALERA_SQL_i   a root client on node i (-N -B, database feed)
#   FEED_TEST_GALERA_KILL_i  kills node i with SIGKILL and waits until it is gone
#   FEED_TEST_GALERA_START_i starts node i again (it rejoins by IST or SST)
#                            and waits until it is Synced
#   FEED_TEST_GALERA_WAIT    waits until the cluster has all 3 nodes Synced
#   FEED_TEST_GALERA_PIDFILE_i  node i's mariadbd pidfile
set -eu

if [ $# -lt 1 ]; then
	echo "usage: $0 COMMAND [ARGS...]" >&2
	exit 2
fi

wait_secs=90
nodes="1 2 3"
provider=/usr/lib/galera/libgalera_smm.so
for f in "$provider" /usr/bin/wsrep_sst_rsync /usr/bin/rsync; do
	if [ ! -e "$f" ]; then
		echo "with-galera.sh: $f is missing (Debian: apt-get install galera-4 rsync)" >&2
		exit 1
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/feed-galera.XXXXXX")
chmod 0755 "$tmp"

cleanup() {
	rc=$?
	trap - EXIT INT TERM HUP
	for i in $nodes; do
		if [ -f "$tmp/stop$i.sh" ]; then
			sh "$tmp/stop$i.sh" >/dev/null 2>&1 || :
		fi
	done
	rm -rf "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# 12 distinct free ports in one go: client, gcomm, IST and SST for each node.
ports=$(python3 -c 'import socket
socks = []
for _ in range(12):
	s = socket.socket()
	s.bind(("127.0.0.1", 0))
	socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
	s.close()')
port_of() { # port_of KIND NODE: KIND 0 client, 1 gcomm, 2 IST, 3 SST
	echo "$ports" | tr ' ' '\n' | sed -n "$(( ($2 - 1) * 4 + $1 + 1 ))p"
}
gcomm=
for i in $nodes; do
	gcomm="$gcomm${gcomm:+,}127.0.0.1:$(port_of 1 "$i")"
done

for i in $nodes; do
	mkdir "$tmp/data$i" "$tmp/run$i"
	chown mysql:mysql "$tmp/data$i" "$tmp/run$i"
done
# Node 1 gets the system tables; the others receive node 1's data by SST.
if ! mariadb-install-db --no-defaults --datadir="$tmp/data1" --user=mysql \
	--auth-root-authentication-method=normal --skip-test-db \
	--skip-name-resolve >"$tmp/install.log" 2>&1; then
	echo "with-galera.sh: mariadb-install-db failed:" >&2
	cat "$tmp/install.log" >&2
	exit 1
fi

# The status of node i as "ready cluster_status state size", or nothing.
cat >"$tmp/state.sh" <<EOF
#!/bin/sh
mariadb --no-defaults -uroot --socket='$tmp/run'\$1/sock --connect-timeout=2 -N -B -e \\
	"SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_cluster_status',
	 'wsrep_local_state_comment', 'wsrep_cluster_size')" 2>/dev/null |
	awk '{ v[\$1] = \$2 } END { if (v["wsrep_ready"] != "")
		print v["wsrep_ready"], v["wsrep_cluster_status"], v["wsrep_local_state_comment"],
		      v["wsrep_cluster_size"] }'
EOF

# Failure detection: a node killed is evicted after evs.suspect_timeout
# (default 5 s); shorter here, unless FEED_TEST_GALERA_EVS=default (to
# measure failover as a default cluster has it).
evs=";evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;evs.install_timeout=PT4S"
if [ "${FEED_TEST_GALERA_EVS:-}" = default ]; then
	evs=
fi
for i in $nodes; do
	port=$(port_of 0 "$i")
	gport=$(port_of 1 "$i")
	iport=$(port_of 2 "$i")
	sport=$(port_of 3 "$i")
	cat >"$tmp/start$i.sh" <<EOF
#!/bin/sh
# Starts node $i in the background (extra mariadbd options as arguments, e.g.
# --wsrep-new-cluster) and waits until it is ready and Synced.
mariadbd --no-defaults --datadir='$tmp/data$i' --socket='$tmp/run$i/sock' \\
	--port=$port --bind-address=127.0.0.1 --user=mysql \\
	--pid-file='$tmp/run$i/mariadbd.pid' --log-error='$tmp/run$i/error.log' \\
	--innodb-flush-log-at-trx-commit=1 --skip-name-resolve \\
	--log-bin='$tmp/data$i/binlog' --sync-binlog=1 --server-id=1 --log-slave-updates \\
	--innodb-buffer-pool-size=32M --innodb-log-file-size=48M --performance-schema=OFF \\
	--max-connections=200 --max-allowed-packet=128M \\
	--binlog-format=ROW --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2 \\
	--wsrep-on=ON --wsrep-provider=$provider --wsrep-cluster-name=feedtest \\
	--wsrep-cluster-address='gcomm://$gcomm' \\
	--wsrep-node-name=node$i --wsrep-node-address=127.0.0.1:$gport \\
	--wsrep-node-incoming-address=127.0.0.1:$port \\
	--wsrep-sst-method=rsync --wsrep-sst-receive-address=127.0.0.1:$sport \\
	--wsrep-provider-options='gmcast.listen_addr=tcp://127.0.0.1:$gport;ist.recv_addr=127.0.0.1:$iport;gcache.size=32M$evs' \\
	--wsrep-slave-threads=1 "\$@" \\
	</dev/null >>'$tmp/run$i/stdout.log' 2>&1 &
pid=\$!
i=0
while [ \$i -lt $((wait_secs * 10)) ]; do
	case "\$(sh '$tmp/state.sh' $i)" in
	"ON Primary Synced "*) exit 0 ;;
	esac
	kill -0 \$pid 2>/dev/null || break
	sleep 0.1
	i=\$((i + 1))
done
echo "with-galera.sh: node $i (port $port) did not become ready and Synced:" >&2
tail -n 40 '$tmp/run$i/error.log' '$tmp/run$i/stdout.log' >&2 2>/dev/null
kill -9 \$pid 2>/dev/null
exit 1
EOF
	cat >"$tmp/stop$i.sh" <<EOF
#!/bin/sh
# Clean shutdown of node $i, bounded: mariadb-admin, then SIGTERM, then SIGKILL.
pid=\$(cat '$tmp/run$i/mariadbd.pid' 2>/dev/null) || exit 0
[ -n "\$pid" ] || exit 0
mariadb-admin --no-defaults -uroot --socket='$tmp/run$i/sock' \\
	--connect-timeout=2 shutdown >/dev/null 2>&1 || kill -TERM "\$pid" 2>/dev/null
i=0
while kill -0 "\$pid" 2>/dev/null; do
	if [ \$i -ge $((wait_secs * 10)) ]; then
		echo "with-galera.sh: node $i (\$pid) did not stop, killing it" >&2
		kill -9 "\$pid" 2>/dev/null
		sleep 0.5
		break
	fi
	sleep 0.1
	i=\$((i + 1))
done
rm -f '$tmp/run$i/mariadbd.pid'
exit 0
EOF
	cat >"$tmp/kill$i.sh" <<EOF
#!/bin/sh
# SIGKILL to node $i: a crash, nothing flushed, no goodbye to the group.
pid=\$(cat '$tmp/run$i/mariadbd.pid' 2>/dev/null) || exit 0
[ -n "\$pid" ] || exit 0
kill -9 "\$pid" 2>/dev/null
i=0
while kill -0 "\$pid" 2>/dev/null && [ \$i -lt 100 ]; do
	sleep 0.1
	i=\$((i + 1))
done
rm -f '$tmp/run$i/mariadbd.pid'
EOF
done

cat >"$tmp/wait.sh" <<EOF
#!/bin/sh
# Waits (bounded) until every node is ready, Primary, Synced, in a cluster of 3.
i=0
while [ \$i -lt $((wait_secs * 10)) ]; do
	ok=0
	for n in $nodes; do
		case "\$(sh '$tmp/state.sh' \$n)" in
		"ON Primary Synced 3") ok=\$((ok + 1)) ;;
		esac
	done
	[ \$ok -eq 3 ] && exit 0
	sleep 0.1
	i=\$((i + 1))
done
echo "with-galera.sh: the cluster did not reach 3 Synced nodes:" >&2
for n in $nodes; do echo "node \$n: \$(sh '$tmp/state.sh' \$n)" >&2; done
exit 1
EOF

cat >"$tmp/startall.sh" <<EOF
#!/bin/sh
# The whole cluster: node 1 bootstraps it (from its own data, which is the
# newest when the nodes were stopped last to first), 2 and 3 join.
set -e
sed -i 's/^safe_to_bootstrap: 0/safe_to_bootstrap: 1/' '$tmp/data1/grastate.dat' 2>/dev/null || :
sh '$tmp/start1.sh' --wsrep-new-cluster
sh '$tmp/start2.sh'
sh '$tmp/start3.sh'
sh '$tmp/wait.sh'
EOF
cat >"$tmp/stopall.sh" <<EOF
#!/bin/sh
sh '$tmp/stop3.sh'; sh '$tmp/stop2.sh'; sh '$tmp/stop1.sh'
EOF

if ! sh "$tmp/startall.sh"; then
	echo "with-galera.sh: cannot start the cluster" >&2
	exit 1
fi

password=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
umask 077
printf '%s' "$password" >"$tmp/password"
chmod 0600 "$tmp/password"
umask 022

# Replicated to every node (DDL and account statements go through TOI).
root_sql="mariadb --no-defaults -uroot --socket=$tmp/run1/sock --default-character-set=utf8mb4"
$root_sql <<EOF
CREATE DATABASE feed CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER 'feed'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER 'feed'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON feed.* TO 'feed'@'127.0.0.1';
GRANT ALL PRIVILEGES ON feed.* TO 'feed'@'localhost';
EOF

hosts=
for i in $nodes; do
	port=$(port_of 0 "$i")
	hosts="$hosts${hosts:+,}127.0.0.1:$port"
	export "FEED_TEST_GALERA_PORT_$i=$port"
	export "FEED_TEST_GALERA_URL_$i=mysql://feed@127.0.0.1:$port/feed"
	export "FEED_TEST_GALERA_SQL_$i=mariadb --no-defaults -uroot --socket=$tmp/run$i/sock --default-character-set=utf8mb4 -N -B feed"
	export "FEED_TEST_GALERA_KILL_$i=sh $tmp/kill$i.sh"
	export "FEED_TEST_GALERA_START_$i=sh $tmp/start$i.sh"
	export "FEED_TEST_GALERA_PIDFILE_$i=$tmp/run$i/mariadbd.pid"
done
export FEED_TEST_GALERA_NODES=3
export FEED_TEST_GALERA_WAIT="sh $tmp/wait.sh"
export FEED_TEST_BACKEND=mysql
export FEED_TEST_URL="mysql://feed@$hosts/feed"
export FEED_TEST_PASSWORD_FILE="$tmp/password"
export FEED_TEST_SQL="$root_sql -N -B feed"
export FEED_TEST_DB_STOP="sh $tmp/stopall.sh"
export FEED_TEST_DB_START="sh $tmp/startall.sh"
export FEED_TEST_DB_PIDFILE="$tmp/run1/mariadbd.pid"

set +e
"$@"
rc=$?
set -e
exit "$rc"
