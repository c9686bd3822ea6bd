#!/bin/bash
#
# with-sqlite.sh - run a command against a throwaway SQLite database.
#
# Usage: tests/lib/with-sqlite.sh COMMAND [ARGS...]
#
# Makes a private temporary directory under ${TMPDIR:-/tmp} (the database
# file is created there on first use, with its WAL files next to it), runs
# COMMAND with the FEED_TEST_* variables exported, then removes the
# directory, also when COMMAND fails or is interrupted. Exits with COMMAND's
# status. Several copies may run at once. There is no server: stopping and
# starting it are no-ops.
#
# Exported to COMMAND:
#   FEED_TEST_BACKEND        sqlite
#   FEED_TEST_URL            sqlite:///TMPDIR/feed-sqlite.XXXXXX/feed.db
#   FEED_TEST_PASSWORD_FILE  "" (no password)
#   FEED_TEST_SQL            shell command: runs SQL from stdin against the
#                            database, rows tab-separated, no headers
#   FEED_TEST_DB_STOP        true
#   FEED_TEST_DB_START       true
#
set -euo pipefail

if [ $# -lt 1 ]; then
	echo "usage: $0 COMMAND [ARGS...]" >&2
	exit 2
fi

command -v sqlite3 >/dev/null || { echo "with-sqlite.sh: sqlite3 (the CLI) is not installed" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/feed-sqlite.XXXXXX")

cleanup() {
	status=$?
	trap - EXIT INT TERM HUP
	rm -rf -- "$tmp"
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

chmod 0700 "$tmp"
db=$tmp/feed.db

export FEED_TEST_BACKEND=sqlite
export FEED_TEST_URL="sqlite://$db"
export FEED_TEST_PASSWORD_FILE=""
# A literal tab inside single quotes: works under sh as well as bash. The
# CLI waits for feed's write lock like feed does (.timeout) and stops at the
# first error (-bail) so that a failing statement fails the command.
export FEED_TEST_SQL="sqlite3 -batch -bail -noheader -cmd '.timeout 5000' -separator '	' '$db'"
export FEED_TEST_DB_STOP=true
export FEED_TEST_DB_START=true

set +e
"$@"
status=$?
set -e
exit "$status"
