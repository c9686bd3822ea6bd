#!/bin/bash
# run.sh - the README's first command: set up, build, and run feed in the
# foreground on the embedded default (SQLite in ./var, endpoint on 127.0.0.1).
#
#   scripts/run.sh [feed options...]     e.g. scripts/run.sh -v
#
# The configuration is ./var/feed.conf (written on first use; edit it freely).
# As root, feed runs as user nobody, which then owns ./var.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target feed

mkdir -p var
if [ ! -e var/feed.conf ]; then
	user_line=""
	[ "$(id -u)" -eq 0 ] && user_line="user = nobody"
	cat > var/feed.conf <<CONF
; Development configuration written by scripts/run.sh (see feed.conf.example).
[daemon]
pidfile = $top/var/feed.pid
log = stderr
$user_line

[listen]
endpoint = tcp://127.0.0.1:5555

[database]
url = sqlite://$top/var/feed.db

[fee]
default_rate = 0.5
CONF
fi
[ "$(id -u)" -eq 0 ] && chown -R nobody var
echo "feed: serving on tcp://127.0.0.1:5555, database $top/var/feed.db; Ctrl-C stops it." >&2
echo "feed: try: echo 1001,42,1.25 | build/feed send -e tcp://127.0.0.1:5555" >&2
exec build/feed -c var/feed.conf "$@" run
