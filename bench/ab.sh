#!/bin/bash
#
# ab.sh - A/B of two feed builds for lock-step REQ clients, on one database.
#
# Usage: bench/ab.sh [--backend sqlite|postgres|mariadb] [--rounds N] [--seconds S]
#                    [--clients C] BUILD_A BUILD_B
#
# BUILD_A and BUILD_B are build directories (Release) holding feed and
# bench/{load,classic}. Runs itself inside tests/lib/with-<backend>.sh (a
# throwaway database), starts `feed run` from each build (durability = full,
# one table, SQLite: one file) and the classic loop from BUILD_A, then for N
# rounds (default 6) gives S seconds (default 3) of C lock-step REQ clients
# (default 1, the lone client) to A, to B and to the classic loop in turn:
# the machine's drift from one minute to the next falls on all three
# alike. Prints each slice and the
# rates over all slices, with B against A and each against the classic loop.
# Exit status 0 when every slice ran and got every record answered TRUE.
#
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
backend=sqlite rounds=6 secs=3 clients=1

usage() {
	sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case $1 in
	--backend) [ $# -ge 2 ] || usage; backend=$2; shift 2 ;;
	--rounds) [ $# -ge 2 ] || usage; rounds=$2; shift 2 ;;
	--seconds) [ $# -ge 2 ] || usage; secs=$2; shift 2 ;;
	--clients) [ $# -ge 2 ] || usage; clients=$2; shift 2 ;;
	-h|--help) sed -n '3,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	-*) usage ;;
	*) break ;;
	esac
done
[ $# = 2 ] || usage
case $backend in
sqlite|postgres|mariadb) ;;
postgresql) backend=postgres ;;
mysql) backend=mariadb ;;
*) usage ;;
esac
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: --rounds: a positive integer" >&2; exit 2; }
[[ $secs =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: --seconds: a positive integer" >&2; exit 2; }
[[ $clients =~ ^[1-9][0-9]*$ ]] || { echo "ab.sh: --clients: a positive integer" >&2; exit 2; }
A=$(cd "$1" && pwd) B=$(cd "$2" && pwd)
for b in "$A" "$B"; do
	for f in feed bench/load bench/classic; do
		[ -x "$b/$f" ] || { echo "ab.sh: $b/$f: not found (a Release build?)" >&2; exit 2; }
	done
done

if [ -z "${FEED_TEST_URL:-}" ]; then
	exec "$root/tests/lib/with-$backend.sh" "$0" --backend "$backend" --rounds "$rounds" \
		--seconds "$secs" --clients "$clients" "$A" "$B"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/feed-ab.XXXXXX")
pids=()
cleanup() {
	status=$?
	trap - EXIT INT TERM HUP
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf -- "$tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {    # wait_port PORT PID
	for _ in $(seq 1 300); do
		kill -0 "$2" 2>/dev/null || return 1
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# feed refuses to run as root: hand it an unprivileged user and the
# (throwaway) directories it writes to, as bench/run.sh does
run_user=
if [ "$(id -u)" = 0 ]; then
	run_user=${FEED_BENCH_USER:-nobody}
	chown "$run_user" "$tmp"
	if [ "$backend" = sqlite ]; then
		chown "$run_user" "$(dirname "${FEED_TEST_URL#sqlite://}")"
	fi
fi
pwfile=${FEED_TEST_PASSWORD_FILE:-}

declare -A ep
feed_conf() {    # feed_conf NAME PORT
	echo "[daemon]"
	[ -n "$run_user" ] && echo "user = $run_user"
	echo "pidfile = $tmp/$1.pid"
	echo "log = $tmp/$1.log"
	echo "[listen]"
	echo "endpoint = tcp://127.0.0.1:$2"
	echo "[database]"
	echo "url = $FEED_TEST_URL"
	[ -n "$pwfile" ] && echo "password_file = $pwfile"
	echo "durability = full"
}
for name in a b; do
	build=$A
	[ "$name" = b ] && build=$B
	port=$(free_port)
	feed_conf "$name" "$port" >"$tmp/$name.conf"
	ep[$name]=tcp://127.0.0.1:$port
	"$build/feed" run -c "$tmp/$name.conf" >"$tmp/$name.out" 2>&1 &
	pids+=($!)
	if ! wait_port "$port" "$!"; then
		cat "$tmp/$name.out" "$tmp/$name.log" >&2 2>/dev/null || true
		echo "ab.sh: feed ($name) did not start" >&2
		exit 1
	fi
done
classic_url=$FEED_TEST_URL
[ "$backend" = sqlite ] && classic_url=sqlite://$tmp/classic.db
cport=$(free_port)
ep[classic]=tcp://127.0.0.1:$cport
"$A/bench/classic" -e "${ep[classic]}" -u "$classic_url" -p "$pwfile" >"$tmp/classic.out" 2>&1 &
pids+=($!)
wait_port "$cport" "$!" || { cat "$tmp/classic.out" >&2; echo "ab.sh: classic did not start" >&2; exit 1; }

declare -A rec ms
for k in a b classic; do rec[$k]=0 ms[$k]=0; done
ticket=$(( $(date +%s) * 1000000000 ))
failed=0
echo "round  side     records/s  p50 ms  p99 ms"
for i in $(seq 1 "$rounds"); do
	for k in a b classic; do
		ticket=$((ticket + 10000000))
		st=0
		line=$("$A/bench/load" req -e "${ep[$k]}" -c "$clients" -N 100000000 -d "$secs" -s "$ticket" \
			2>"$tmp/load.err" | grep '^RESULT ') || st=$?
		if [ "$st" != 0 ] || [ -z "$line" ]; then
			echo "ab.sh: round $i, $k: load failed: $(tail -2 "$tmp/load.err" | tr '\n' ' ')" >&2
			failed=1
			continue
		fi
		r=$(sed -n 's/.* records=\([0-9]*\).*/\1/p' <<<"$line")
		e=$(sed -n 's/.* elapsed_ms=\([0-9]*\).*/\1/p' <<<"$line")
		rec[$k]=$(( ${rec[$k]} + r )) ms[$k]=$(( ${ms[$k]} + e ))
		awk -v i="$i" -v k="$k" -v r="$r" -v e="$e" -v l="$line" 'BEGIN {
			match(l, /p50_us=[0-9]+/); p50 = substr(l, RSTART + 7, RLENGTH - 7)
			match(l, /p99_us=[0-9]+/); p99 = substr(l, RSTART + 7, RLENGTH - 7)
			printf "%5d  %-7s  %9d  %6.2f  %6.2f\n", i, k, r * 1000 / e, p50 / 1000, p99 / 1000 }'
	done
done
rate() { [ "${ms[$1]}" -gt 0 ] && echo $(( ${rec[$1]} * 1000 / ${ms[$1]} )) || echo 0; }
ra=$(rate a) rb=$(rate b) rc=$(rate classic)
echo
echo "over all slices: A $ra/s, B $rb/s, classic $rc/s"
awk -v a="$ra" -v b="$rb" -v c="$rc" 'BEGIN {
	if (a > 0) printf "B / A: %.3fx\n", b / a
	if (c > 0) printf "A / classic: %.2fx, B / classic: %.2fx\n", a / c, b / c }'
exit "$failed"
