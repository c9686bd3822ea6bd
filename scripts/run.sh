#!/bin/bash
# run.sh - the README's first command: set up, build, and run feed in the
# foreground on the embedded default (SQLite in ./var, endpoint on 127.0.0.1).
#
#   scripts/run.sh [PORT] [feed options...]     e.g. scripts/run.sh 5556 -v
#
# PORT defaults to 5555. The configuration is ./var/feed.conf (written on
# first use; edit it freely; PORT overrides its endpoint). As root, feed runs
# as user nobody, which then owns ./var. "serving" is said once feed serves
# (its pidfile names it: written after bind and database open), not before.
# FEED_BIN=PATH runs that binary without setup and build; FEED_VAR=DIR is used
# instead of ./var (the tests use both).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

port=5555
if [[ ${1:-} =~ ^[0-9]+$ ]]; then
	port=$1
	shift
fi
if [ -z "${FEED_BIN:-}" ]; then
	scripts/setup.sh
	cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	cmake --build build -j"$(nproc)" --target feed
	FEED_BIN=build/feed
fi
var=${FEED_VAR:-$top/var}
endpoint=tcp://127.0.0.1:$port

mkdir -p "$var"
if [ ! -e "$var/feed.conf" ]; then
	user_line=""
	[ "$(id -u)" -eq 0 ] && user_line="user = nobody"
	cat > "$var/feed.conf" <<CONF
; Development configuration written by scripts/run.sh (see feed.conf.example).
[daemon]
pidfile = $var/feed.pid
log = stderr
$user_line

[listen]
endpoint = tcp://127.0.0.1:5555

[database]
url = sqlite://$var/feed.db

[fee]
default_rate = 0.5
CONF
fi
[ "$(id -u)" -eq 0 ] && chown -R nobody "$var"
feed=("$FEED_BIN" -c "$var/feed.conf" -e "$endpoint")
if "${feed[@]}" status >/dev/null 2>&1; then
	echo "feed: already running with $var/feed.conf; stop it with: ${feed[*]} stop" >&2
	exit 1
fi
rm -f "$var/feed.pid"      # a stale one (kill -9) would look like a ready feed

"${feed[@]}" "$@" run &
pid=$!
trap 'kill -TERM $pid 2>/dev/null' INT TERM
for _ in $(seq 600); do
	[ -s "$var/feed.pid" ] && break
	kill -0 $pid 2>/dev/null || break
	sleep 0.1
done
if ! kill -0 $pid 2>/dev/null || [ ! -s "$var/feed.pid" ]; then
	wait $pid || exit $?
	exit 1
fi
echo "feed: serving on $endpoint, database $var/feed.db; Ctrl-C stops it." >&2
echo "feed: try: echo 1001,42,1.25 | $FEED_BIN send -e $endpoint" >&2
wait $pid
