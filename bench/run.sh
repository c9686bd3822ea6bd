#!/bin/bash
#
# run.sh - feed's benchmark: one command, one markdown page of results.
#
# Usage: bench/run.sh [--backend sqlite|postgres|pg-sync|mariadb|galera] [--quick]
#
# Expects a Release build in BUILD_DIR (default: build/ at the top of the
# repository): BUILD_DIR/feed and BUILD_DIR/bench/{load,classic,raw_*}. Runs
# itself inside tests/lib/with-<backend>.sh (a throwaway database: a
# temporary SQLite file, or a private PostgreSQL / MariaDB server; pg-sync:
# PostgreSQL with two quorum-synchronous standbys, tests/lib/with-pg-cluster.sh,
# every commit waiting for one of them; galera: a 3-node MariaDB Galera
# Cluster: feed's URL names the 3 nodes, the raw and classic baselines run on
# node 1 alone), then
# measures, each with nothing else running:
#   raw limits   raw_zmq (DEALER -> ROUTER echo), raw_sqlite / raw_pg / raw_mysql,
#                and `raw_zmq echo` (a bare ROUTER answering TRUE) serving
#                1 lone REQ client and 64 REQ clients: the transport's limit
#   classic loop bench/classic: 1 lone REQ client, then 64 REQ clients
#   feed         `feed run` (durability = full): 1 lone REQ client, then
#                $alt_rounds (8; --quick 3) rounds of 1 s slices of it alternating
#                with the classic loop's lone client (the lone-client target's
#                ratio: both measured in the same minutes), 64 REQ
#                clients, 64 REQ clients paced to half the rate they just
#                reached (load -r; latency from each scheduled send), 1
#                DEALER with 1 record per request at windows 100, 1000 and
#                $WINDOW (default 8000), and (window $WINDOW100, default 200)
#                with 100 records per request; then the bare echo again with
#                64 REQ clients paced to that same half rate (the
#                transport's own p99 there)
#   feed CURVE   the same feed with [listen] curve_server_cert (keys from
#                `feed keygen`): 1 lone REQ client and both DEALER scenarios
# Over every scenario the machine's busy CPU time (/proc/stat) and the client's
# own (the measured program's) are taken: the report shows, for the lone and
# 64-client scenarios, the client's CPU and the rest's (feed, the database
# server, the kernel) per record.
# After every scenario the table's row count is checked against the records
# acknowledged TRUE. Prints the results as markdown and writes them to
# bench/results-<backend>-<date>.md. Exit status 0 if every scenario ran
# and every check passed (whether the targets are met is in the report).
#
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
backend=sqlite
quick=0

usage() {
	echo "usage: bench/run.sh [--backend sqlite|postgres|pg-sync|mariadb|galera] [--quick]" >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--backend) [ $# -ge 2 ] || usage; backend=$2; shift 2 ;;
	--backend=*) backend=${1#--backend=}; shift ;;
	--quick) quick=1; shift ;;
	-h|--help) sed -n '3,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) usage ;;
	esac
done
case $backend in
sqlite|postgres|pg-sync|mariadb|galera) ;;
postgresql) backend=postgres ;;
mysql) backend=mariadb ;;
*) usage ;;
esac

BUILD_DIR=${BUILD_DIR:-$root/build}
# Requests in flight of the pipelining client: below feed's [listen] hwm (10000).
export WINDOW=${FEED_BENCH_WINDOW:-8000} WINDOW100=${FEED_BENCH_WINDOW100:-200}
case $BUILD_DIR in /*) ;; *) BUILD_DIR=$PWD/$BUILD_DIR ;; esac
export BUILD_DIR

# ==== outside: re-run inside the throwaway database ====
if [ -z "${FEED_BENCH_INNER:-}" ]; then
	for p in feed bench/load bench/classic bench/raw_zmq bench/raw_sqlite bench/raw_pg bench/raw_mysql; do
		[ -x "$BUILD_DIR/$p" ] || {
			echo "run.sh: $BUILD_DIR/$p not found; build first:" >&2
			echo "  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j" >&2
			exit 1
		}
	done
	grep -q 'CMAKE_BUILD_TYPE:STRING=Release' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null ||
		echo "run.sh: warning: $BUILD_DIR is not a Release build; numbers will be low" >&2
	export FEED_BENCH_INNER=1
	case $backend in
	sqlite) lib=with-sqlite.sh ;;
	postgres) lib=with-postgres.sh ;;
	pg-sync) lib=with-pg-cluster.sh ;;
	mariadb) lib=with-mariadb.sh ;;
	galera) lib=with-galera.sh ;;
	esac
	args=(--backend "$backend")
	[ "$quick" = 1 ] && args+=(--quick)
	exec "$root/tests/lib/$lib" "$0" "${args[@]}"
fi

# ==== inside: FEED_TEST_URL, FEED_TEST_PASSWORD_FILE, FEED_TEST_SQL are set ====
: "${FEED_TEST_URL:?run.sh must run inside tests/lib/with-*.sh}"
: "${FEED_TEST_SQL:?}"
pwfile=${FEED_TEST_PASSWORD_FILE:-}
B=$BUILD_DIR/bench
# pg-sync is PostgreSQL to every scenario; only the report says which
label=$backend
[ "$backend" = pg-sync ] && backend=postgres

if [ "$quick" = 1 ]; then
	secs=2; recs1=1000000; recs100=10000000; rawrecs=300000; alt_rounds=3
else
	secs=8; recs1=5000000; recs100=40000000; rawrecs=2000000; alt_rounds=8
fi
# fresh tickets for every run and scenario: now x 1e9 + scenario x 1e8
ticket_base=$(( $(date +%s) * 1000000000 ))

tmp=$(mktemp -d "${TMPDIR:-/tmp}/feed-bench.XXXXXX")
feed_pid=
classic_pid=
cleanup() {
	status=$?
	trap - EXIT INT TERM HUP
	for p in $feed_pid $classic_pid; do
		kill -TERM "$p" 2>/dev/null || true
	done
	for p in $feed_pid $classic_pid; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf -- "$tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

log() { echo "run.sh: $*" >&2; }
failures=0
fail() { log "FAILED: $*"; failures=$((failures + 1)); }

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
		echo $(( 20000 + RANDOM % 40000 ))
}

# Waits until something accepts TCP connections on 127.0.0.1:$1 while $2 lives.
wait_port() {
	local port=$1 pid=$2
	for _ in $(seq 1 300); do
		kill -0 "$pid" 2>/dev/null || return 1
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

sql() { sh -c "$FEED_TEST_SQL" <<<"$1"; }

count_rows() {    # count_rows TABLE [SQL_COMMAND]
	sh -c "${2:-$FEED_TEST_SQL}" <<<"SELECT count(*) FROM $1;" 2>/dev/null | tr -d '[:space:]' || true
}

# Results: rate[key], p50[key], p99[key] (microseconds), recs[key], elapsed[key] (ms);
# over the run, busy[key] and busy_ms[key] (the machine's busy CPU time, as % of one
# CPU and in ms) and cli_ms[key] (the CPU time of the measured program, the client).
declare -A rate p50 p99 recs elapsed busy busy_ms cli_ms
hz=$(getconf CLK_TCK)

# "BUSY TOTAL" jiffies of all CPUs: busy is user, nice, system, irq and softirq;
# idle, iowait and steal (the hypervisor's) are not
cpu_jiffies() { awk '/^cpu / { b = $2 + $3 + $4 + $7 + $8; print b, b + $5 + $6 + $9 }' /proc/stat; }
# The CPU ms of this shell's waited-for children, into the variable named $1
# (bash's times, run in this shell: a $(...) subshell has children of its own)
children_ms() {
	times >"$tmp/times"
	printf -v "$1" '%s' "$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, a, /[ms]/)
		t += a[1] * 60000 + a[2] * 1000 } printf "%d\n", t }' "$tmp/times")"
}

# measure KEY COMMAND...: runs a program that prints a RESULT line.
measure() {
	local key=$1 out line st=0 j0 j1 c0 c1
	shift
	log "$key: $*"
	children_ms c0
	j0=$(cpu_jiffies)
	out=$("$@" 2>"$tmp/$key.err") || st=$?
	j1=$(cpu_jiffies)
	children_ms c1
	read -r busy[$key] busy_ms[$key] < <(awk -v a="$j0" -v b="$j1" -v n="$(nproc)" -v hz="$hz" 'BEGIN {
		split(a, x, " "); split(b, y, " ")
		if (y[2] > x[2]) printf "%.0f %.0f\n", 100 * n * (y[1] - x[1]) / (y[2] - x[2]), (y[1] - x[1]) * 1000 / hz }')
	cli_ms[$key]=$((c1 - c0))
	if [ "$st" != 0 ]; then
		fail "$key: exit status $st ($(tail -3 "$tmp/$key.err" | tr '\n' ' '))"
	fi
	line=$(grep '^RESULT ' <<<"$out" | tail -1 || true)
	if [ -z "$line" ]; then
		rate[$key]=; recs[$key]=0
		return 0
	fi
	recs[$key]=$(sed -n 's/.* records=\([0-9]*\).*/\1/p' <<<"$line")
	rate[$key]=$(sed -n 's/.* rate=\([0-9]*\).*/\1/p' <<<"$line")
	elapsed[$key]=$(sed -n 's/.* elapsed_ms=\([0-9]*\).*/\1/p' <<<"$line")
	p50[$key]=$(sed -n 's/.* p50_us=\([0-9-]*\).*/\1/p' <<<"$line")
	p99[$key]=$(sed -n 's/.* p99_us=\([0-9-]*\).*/\1/p' <<<"$line")
	log "$key: ${rate[$key]} records/s"
}

# check_rows TABLE EXPECTED KEY [SQL_COMMAND]
check_rows() {
	local n
	n=$(count_rows "$1" "${4:-}")
	if [ "$n" != "$2" ]; then
		fail "$3: $1 holds ${n:-?} rows, expected $2"
	else
		log "$3: $1 holds $n rows, as expected"
	fi
}

# ==== raw limits ====
measure raw_zmq "$B/raw_zmq" bench -N "$rawrecs" -w "$WINDOW"
case $backend in
sqlite)
	measure raw_db "$B/raw_sqlite" -f "$tmp/raw.db" -N "$rawrecs" -b 10000
	rm -f "$tmp"/raw.db*
	classic_url="sqlite://$tmp/classic.db"
	classic_sql="sqlite3 -batch $tmp/classic.db"
	raw_name="raw_sqlite (10,000 rows/transaction, WAL, synchronous=FULL)"
	;;
postgres)
	measure raw_db "$B/raw_pg" -u "$FEED_TEST_URL" -p "$pwfile" -N "$rawrecs" -b 10000
	classic_url=$FEED_TEST_URL
	# the classic loop reads one host: the primary's (pg0 until a failover)
	if [ "$label" = pg-sync ]; then
		classic_url=postgresql://postgres@127.0.0.1:${FEED_TEST_PG_PORTS%% *}/feed
	fi
	classic_sql=$FEED_TEST_SQL
	raw_name="raw_pg (COPY, 10,000 rows/transaction)"
	;;
mariadb|galera)
	# Galera: the baselines on node 1 (they take one host), replicated all the same
	node_url=${FEED_TEST_GALERA_URL_1:-$FEED_TEST_URL}
	measure raw_db "$B/raw_mysql" -u "$node_url" -p "$pwfile" -N "$rawrecs" -b 10000
	classic_url=$node_url
	classic_sql=$FEED_TEST_SQL
	raw_name="raw_mysql (multi-row INSERT, 10,000 rows/transaction)"
	;;
esac

# ==== the transport's limit for lock-step clients: a bare ROUTER echo ====
echo_run() {   # echo_run KEY LOAD_ARGS...: `load req` against a fresh raw_zmq echo
	local key=$1 port ep
	shift
	port=$(free_port)
	ep=tcp://127.0.0.1:$port
	"$B/raw_zmq" echo -e "$ep" >"$tmp/echo.out" 2>&1 &
	classic_pid=$!
	if ! wait_port "$port" "$classic_pid"; then
		cat "$tmp/echo.out" >&2
		fail "raw_zmq echo did not start"
	else
		measure "$key" "$B/load" req -e "$ep" -N "$recs1" -d "$secs" -s 1 "$@"
	fi
	kill -TERM "$classic_pid" 2>/dev/null || true
	wait "$classic_pid" 2>/dev/null || true
	classic_pid=
}
echo_run echo_1 -c 1
echo_run echo_64 -c 64

# ==== the classic loop ====
port=$(free_port)
ep=tcp://127.0.0.1:$port
"$B/classic" -e "$ep" -u "$classic_url" -p "$pwfile" >"$tmp/classic.out" 2>&1 &
classic_pid=$!
if ! wait_port "$port" "$classic_pid"; then
	cat "$tmp/classic.out" >&2
	fail "classic did not start"
else
	measure classic_1 "$B/load" req -e "$ep" -c 1 -N "$recs1" -d "$secs" -s $((ticket_base + 1))
	check_rows classic_fee "${recs[classic_1]:-0}" classic_1 "$classic_sql"
	measure classic_64 "$B/load" req -e "$ep" -c 64 -N "$recs1" -d "$secs" \
		-s $((ticket_base + 100000001))
	check_rows classic_fee $(( ${recs[classic_1]:-0} + ${recs[classic_64]:-0} )) classic_64 "$classic_sql"
fi
# left running: feed's lone REQ client alternates with it below
classic_ep=$ep
classic_total=$(( ${recs[classic_1]:-0} + ${recs[classic_64]:-0} ))

# ==== feed ====
port=$(free_port)
ep=tcp://127.0.0.1:$port
conf=$tmp/feed.conf
# feed refuses to run as root: as root, hand it an unprivileged user and the
# directories it writes to (both throwaway).
run_user=
if [ "$(id -u)" = 0 ]; then
	run_user=${FEED_BENCH_USER:-nobody}
	chown "$run_user" "$tmp"
	if [ "$backend" = sqlite ]; then
		dbfile=${FEED_TEST_URL#sqlite://}
		chown "$run_user" "$(dirname "$dbfile")"
		for f in "$dbfile" "$dbfile-wal" "$dbfile-shm"; do
			[ -e "$f" ] && chown "$run_user" "$f"
		done
	fi
fi
feed_conf() {    # feed_conf ENDPOINT [LISTEN_LINE...]
	echo "[daemon]"
	[ -n "$run_user" ] && echo "user = $run_user"
	echo "pidfile = $tmp/feed.pid"
	echo "log = $tmp/feed.log"
	echo "log_level = info"
	echo "[listen]"
	echo "endpoint = $1"
	shift
	for l in "$@"; do echo "$l"; done
	echo "[database]"
	echo "url = $FEED_TEST_URL"
	[ -n "$pwfile" ] && echo "password_file = $pwfile"
	echo "durability = full"
}
feed_conf "$ep" >"$conf"
total=0
step() {     # step KEY SCENARIO_NO LOAD_ARGS...
	local key=$1 n=$2
	shift 2
	measure "$key" "$B/load" "$@" -e "$ep" -d "$secs" -s $((ticket_base + n * 100000000 + 1))
	total=$((total + ${recs[$key]:-0}))
	check_rows fee "$total" "$key"
}
"$BUILD_DIR/feed" run -c "$conf" >"$tmp/feed.out" 2>&1 &
feed_pid=$!
if ! wait_port "$port" "$feed_pid"; then
	cat "$tmp/feed.out" "$tmp/feed.log" >&2 2>/dev/null || true
	fail "feed did not start (see above)"
else
	step feed_1 2 req -c 1 -N "$recs1"
	# The lone REQ ratio, robust to a machine whose speed drifts from one
	# minute to the next: 1 s slices, feed and the classic loop in turn.
	alt_rec=(0 0) alt_ms=(0 0)
	for i in $(seq 1 "$alt_rounds"); do
		for side in 0 1; do
			key=alt_$side
			if [ "$side" = 0 ]; then
				measure "$key" "$B/load" req -e "$ep" -c 1 -N "$recs1" -d 1 \
					-s $((ticket_base + 1200000000 + i * 1000000 + 1))
				total=$((total + ${recs[$key]:-0}))
			elif [ -n "$classic_pid" ]; then
				measure "$key" "$B/load" req -e "$classic_ep" -c 1 -N "$recs1" -d 1 \
					-s $((ticket_base + 1300000000 + i * 1000000 + 1))
				classic_total=$((classic_total + ${recs[$key]:-0}))
			fi
			alt_rec[$side]=$(( ${alt_rec[$side]} + ${recs[$key]:-0} ))
			alt_ms[$side]=$(( ${alt_ms[$side]} + ${elapsed[$key]:-0} ))
		done
	done
	for side in 0 1; do
		# a rate over all slices; no percentiles (those of one slice would mislead)
		p50[alt_$side]=; p99[alt_$side]=
		[ "${alt_ms[$side]}" -gt 0 ] && rate[alt_$side]=$(( ${alt_rec[$side]} * 1000 / ${alt_ms[$side]} ))
	done
	check_rows fee "$total" feed_alt
	[ -n "$classic_pid" ] && check_rows classic_fee "$classic_total" classic_alt "$classic_sql"
	step feed_64 3 req -c 64 -N "$recs1"
	if [ -n "${rate[feed_64]:-}" ] && [ "${rate[feed_64]}" -ge 2 ]; then
		step feed_64_half 9 req -c 64 -N "$recs1" -r $(( ${rate[feed_64]} / 2 ))
	fi
	step feed_w100 10 dealer -w 100 -b 1 -N "$recs1"
	step feed_w1000 11 dealer -w 1000 -b 1 -N "$recs1"
	step feed_pipe1 4 dealer -w "$WINDOW" -b 1 -N "$recs1"
	step feed_pipe100 5 dealer -w "$WINDOW100" -b 100 -N "$recs100"
fi
if kill -TERM "$feed_pid" 2>/dev/null; then
	st=0
	wait "$feed_pid" 2>/dev/null || st=$?
	[ "$st" = 0 ] || fail "feed exited with status $st after SIGTERM"
fi
feed_pid=
kill -TERM "$classic_pid" 2>/dev/null || true
wait "$classic_pid" 2>/dev/null || true
classic_pid=
if [ "$backend" = sqlite ]; then
	rm -f "$tmp"/classic.db*
else
	sql "DROP TABLE IF EXISTS classic_fee;" >/dev/null 2>&1 || true
fi

# the transport alone at the paced rate feed_64_half ran at: its own p99
if [ -n "${rate[feed_64]:-}" ] && [ "${rate[feed_64]}" -ge 2 ]; then
	echo_run echo_64_half -c 64 -r $(( ${rate[feed_64]} / 2 ))
fi

# ==== feed with CURVE: the same lone-REQ and pipelined scenarios, encrypted ====
curve=$tmp/curve
mkdir -p "$curve/clients"
chmod 755 "$curve" "$curve/clients"
if "$BUILD_DIR/feed" keygen server -d "$curve" >/dev/null &&
   "$BUILD_DIR/feed" keygen bench -d "$curve" >/dev/null &&
   cp "$curve/bench.key" "$curve/clients/"; then
	port=$(free_port)
	ep=tcp://127.0.0.1:$port
	feed_conf "$ep" "curve_server_cert = $curve/server.key_secret" "curve_clients = $curve/clients" >"$conf"
	"$BUILD_DIR/feed" run -c "$conf" >"$tmp/feed.out" 2>&1 &
	feed_pid=$!
	if ! wait_port "$port" "$feed_pid"; then
		cat "$tmp/feed.out" "$tmp/feed.log" >&2 2>/dev/null || true
		fail "feed with CURVE did not start (see above)"
	else
		keys=(-S "$curve/server.key" -C "$curve/bench.key_secret")
		step curve_1 6 req -c 1 -N "$recs1" "${keys[@]}"
		step curve_pipe1 7 dealer -w "$WINDOW" -b 1 -N "$recs1" "${keys[@]}"
		step curve_pipe100 8 dealer -w "$WINDOW100" -b 100 -N "$recs100" "${keys[@]}"
	fi
	if kill -TERM "$feed_pid" 2>/dev/null; then
		st=0
		wait "$feed_pid" 2>/dev/null || st=$?
		[ "$st" = 0 ] || fail "feed with CURVE exited with status $st after SIGTERM"
	fi
	feed_pid=
else
	fail "feed keygen failed"
fi

# ==== report ====
ratio() {    # ratio A B -> "123x" or "-"
	if [ -n "${1:-}" ] && [ -n "${2:-}" ] && [ "${2:-0}" != 0 ]; then
		awk -v a="$1" -v b="$2" 'BEGIN { r = a / b; printf (r >= 10 ? "%.0fx" : (r >= 0.01 ? "%.2fx" : "%.4fx")), r }'
	else
		echo "-"
	fi
}
ms() {       # microseconds -> milliseconds
	case ${1:-} in
	''|-) echo "-" ;;
	*) awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }' ;;
	esac
}
num() { [ -n "${1:-}" ] && printf "%'d" "$1" 2>/dev/null || echo "${1:-n/a}"; }

c1=${rate[classic_1]:-}
c64=${rate[classic_64]:-}
cbest=$c1
[ -n "$c64" ] && { [ -z "$cbest" ] || [ "$c64" -gt "$cbest" ]; } && cbest=$c64
rawdb=${rate[raw_db]:-}

row() {      # row LABEL KEY CLASSIC RAW
	printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$(num "${rate[$2]:-}")" \
		"$(ms "${p50[$2]:-}")" "$(ms "${p99[$2]:-}")" "$(ratio "${rate[$2]:-}" "$3")" \
		"$(ratio "${rate[$2]:-}" "$4")"
}

target() {   # target TEXT OK
	if [ "$2" = 1 ]; then echo "- [x] $1"; else echo "- [ ] $1 — **not met**"; fi
}
ge() { [ -n "${1:-}" ] && [ -n "${2:-}" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }' && echo 1 || echo 0; }

date_s=$(date -u +%Y-%m-%d)
out=$root/bench/results-$label-$date_s.md
cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
fs=$(df -PT "${TMPDIR:-/tmp}" | awk 'NR == 2 { print $2 }')
rev=$(git -C "$root" describe --always --dirty 2>/dev/null || echo unknown)
case $backend in
sqlite) server="SQLite $(sqlite3 --version | cut -d' ' -f1) (file on $fs)" ;;
postgres) server=$(sql "SELECT version();" | cut -d, -f1)
	[ "$label" = pg-sync ] && server="$server, primary + 2 standbys, synchronous_standby_names = '$(sql "SHOW synchronous_standby_names;")'" ;;
mariadb) server="MariaDB $(sql "SELECT version();")" ;;
galera) server="MariaDB $(sql "SELECT version();"), Galera cluster of 3 nodes on this machine" ;;
esac

{
	echo "## $label, $date_s$([ "$quick" = 1 ] && echo ", --quick")"
	echo
	echo "feed $rev; $server; durability = full; $(nproc) CPUs ($cpu), $(free -g | awk '/^Mem:/ { print $2 }') GiB,"
	echo "Linux $(uname -r); client and server on the same machine over tcp://127.0.0.1;"
	echo "each scenario bounded to ${secs} s."
	echo
	echo "| scenario | records/s | p50 ms | p99 ms | x classic | x raw limit |"
	echo "|---|---:|---:|---:|---:|---:|"
	row "feed, 1 REQ client, 1 record/request" feed_1 "$c1" "$rawdb"
	row "feed, 64 REQ clients, 1 record/request" feed_64 "$c64" "$rawdb"
	row "feed, 1 DEALER (window $WINDOW), 1 record/request" feed_pipe1 "$cbest" "$rawdb"
	row "feed, 1 DEALER (window $WINDOW100), 100 records/request" feed_pipe100 "$cbest" "$rawdb"
	row "classic loop, 1 REQ client" classic_1 "$c1" "$rawdb"
	row "classic loop, 64 REQ clients" classic_64 "$c64" "$rawdb"
	row "raw limit: $raw_name" raw_db "$cbest" "$rawdb"
	row "raw limit: raw_zmq (DEALER -> ROUTER echo, window $WINDOW)" raw_zmq "$cbest" ""
	row "raw limit: raw_zmq echo (bare ROUTER), 1 REQ client" echo_1 "$c1" ""
	row "raw limit: raw_zmq echo (bare ROUTER), 64 REQ clients" echo_64 "$c64" ""
	echo
	echo "Latency (issue 11): lock-step senders, and pipelining with a modest window:"
	echo
	echo "| scenario | records/s | p50 ms | p99 ms | ratio |"
	echo "|---|---:|---:|---:|---:|"
	lrow() { printf '| %s | %s | %s | %s | %s |\n' "$1" "$(num "${rate[$2]:-}")" "$(ms "${p50[$2]:-}")" \
		"$(ms "${p99[$2]:-}")" "$3"; }
	lrow "feed, 1 REQ client" feed_1 "$(ratio "${rate[feed_1]:-}" "$c1") classic"
	lrow "classic loop, 1 REQ client" classic_1 ""
	lrow "feed, 1 REQ client, $alt_rounds 1 s slices alternating with the classic loop's" alt_0 \
		"$(ratio "${rate[alt_0]:-}" "${rate[alt_1]:-}") classic"
	lrow "classic loop, 1 REQ client, the slices in between" alt_1 ""
	lrow "feed, 64 REQ clients" feed_64 "$(ratio "${rate[feed_64]:-}" "${rate[echo_64]:-}") raw echo"
	lrow "raw_zmq echo, 64 REQ clients" echo_64 ""
	lrow "feed, 64 REQ clients paced to half of feed's 64-client rate" feed_64_half \
		"p99 $(ratio "${p99[feed_64_half]:-}" "${p50[feed_1]:-}") lone p50"
	lrow "raw_zmq echo, 64 REQ clients paced to that same rate" echo_64_half \
		"p99 $(ratio "${p99[echo_64_half]:-}" "${p50[feed_1]:-}") feed's lone p50"
	lrow "feed, 1 DEALER (window 100), 1 record/request" feed_w100 ""
	lrow "feed, 1 DEALER (window 1000), 1 record/request" feed_w1000 ""
	lrow "feed, 1 DEALER (window $WINDOW), 1 record/request" feed_pipe1 ""
	echo
	echo "Where the CPU went ($(nproc) CPUs, shared by the client, feed and the database server):"
	echo
	echo "| scenario | records/s | CPUs busy | client CPU us/record | the rest, us/record |"
	echo "|---|---:|---:|---:|---:|"
	for pair in "feed, 1 REQ client:feed_1" "classic loop, 1 REQ client:classic_1" \
		"feed, 64 REQ clients:feed_64" "classic loop, 64 REQ clients:classic_64" \
		"raw_zmq echo, 64 REQ clients:echo_64" "feed, 64 REQ clients at half rate:feed_64_half" \
		"raw_zmq echo, 64 REQ clients at that rate:echo_64_half"; do
		IFS=: read -r what k <<<"$pair"
		[ -n "${busy[$k]:-}" ] && [ "${recs[$k]:-0}" -gt 0 ] || continue
		# the rest: all busy CPU time (feed, the database, the kernel) but the client's
		awk -v l="$what" -v r="${rate[$k]}" -v b="${busy[$k]}" -v bm="${busy_ms[$k]}" \
			-v c="${cli_ms[$k]}" -v n="${recs[$k]}" 'BEGIN {
			printf "| %s | %d | %d%% | %.1f | %.1f |\n", l, r, b, c * 1000 / n, (bm - c) * 1000 / n }'
	done
	echo
	echo "CURVE (every message encrypted and authenticated) beside plain, same run, same database:"
	echo
	echo "| scenario | plain records/s | CURVE records/s | CURVE p50 ms | CURVE p99 ms | CURVE / plain |"
	echo "|---|---:|---:|---:|---:|---:|"
	for pair in "1 REQ client, 1 record/request:feed_1:curve_1" \
		"1 DEALER (window $WINDOW), 1 record/request:feed_pipe1:curve_pipe1" \
		"1 DEALER (window $WINDOW100), 100 records/request:feed_pipe100:curve_pipe100"; do
		IFS=: read -r label pk ck <<<"$pair"
		printf '| %s | %s | %s | %s | %s | %s |\n' "$label" "$(num "${rate[$pk]:-}")" \
			"$(num "${rate[$ck]:-}")" "$(ms "${p50[$ck]:-}")" "$(ms "${p99[$ck]:-}")" \
			"$(ratio "${rate[$ck]:-}" "${rate[$pk]:-}")"
	done
	echo
	echo "x classic: feed's rate over the classic loop's with the same clients (1 or 64 REQ);"
	echo "pipelined rows and the raw limits are compared with the classic loop's best."
	echo "x raw limit: over the raw bulk insert into the same database."
	echo
	echo "Targets:"
	case $backend in
	sqlite)
		target "pipelined, 1 record/request >= 300,000 records/s (got $(num "${rate[feed_pipe1]:-}"))" \
			"$(ge "${rate[feed_pipe1]:-}" 300000)"
		target "pipelined, 1 record/request >= 100x the classic loop (got $(ratio "${rate[feed_pipe1]:-}" "$cbest"))" \
			"$(ge "${rate[feed_pipe1]:-}" "$(( ${cbest:-0} * 100 ))")"
		;;
	postgres)
		target "pipelined >= 100,000 records/s (got $(num "${rate[feed_pipe1]:-}"))" \
			"$(ge "${rate[feed_pipe1]:-}" 100000)"
		target "pipelined >= 50x the classic loop (got $(ratio "${rate[feed_pipe1]:-}" "$cbest"))" \
			"$(ge "${rate[feed_pipe1]:-}" "$(( ${cbest:-0} * 50 ))")"
		;;
	mariadb)
		target "pipelined >= 150,000 records/s (got $(num "${rate[feed_pipe1]:-}"))" \
			"$(ge "${rate[feed_pipe1]:-}" 150000)"
		target "pipelined >= 50x the classic loop (got $(ratio "${rate[feed_pipe1]:-}" "$cbest"))" \
			"$(ge "${rate[feed_pipe1]:-}" "$(( ${cbest:-0} * 50 ))")"
		;;
	esac
	case $backend in
	sqlite) lone=1.6 ;;
	*) lone=1.3 ;;
	esac
	# the alternating slices: the two loops measured in the same minutes
	target "lone REQ client >= ${lone}x the classic loop, alternating slices (got $(ratio "${rate[alt_0]:-}" "${rate[alt_1]:-}"))" \
		"$(ge "${rate[alt_0]:-}" "$(awk -v c="${rate[alt_1]:-0}" -v k="$lone" 'BEGIN { print c * k }')")"
	target "64 REQ clients >= 0.75x the bare ZeroMQ echo's (got $(ratio "${rate[feed_64]:-}" "${rate[echo_64]:-}"))" \
		"$(ge "${rate[feed_64]:-}" "$(awk -v e="${rate[echo_64]:-0}" 'BEGIN { print e * 0.75 }')")"
	[ "$backend" = sqlite ] &&
		target "pipelined, window 1,000, 1 record/request >= 300,000 records/s (got $(num "${rate[feed_w1000]:-}"))" \
			"$(ge "${rate[feed_w1000]:-}" 300000)"
	target "64 REQ clients at half rate: p99 <= 3x the lone client's p50 (got $(ms "${p99[feed_64_half]:-}") ms vs $(ms "${p50[feed_1]:-}") ms, $(ratio "${p99[feed_64_half]:-}" "${p50[feed_1]:-}"))" \
		"$(ge "$(awk -v p="${p50[feed_1]:-0}" 'BEGIN { print p * 3 }')" "${p99[feed_64_half]:-}")"
	if [ "$failures" -gt 0 ]; then
		echo
		echo "**$failures check(s) failed during this run; see run.sh's messages.**"
	fi
} >"$tmp/report.md"

cat "$tmp/report.md"
cp "$tmp/report.md" "$out"
log "written to $out"
[ "$failures" = 0 ]
