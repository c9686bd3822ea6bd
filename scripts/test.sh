#!/bin/bash
# test.sh - the README's second command: set up, build, run the whole test suite.
#
# 1. build/ with -Wall -Wextra -Werror, all tests (unit, store conformance on
#    SQLite, PostgreSQL and MariaDB, end-to-end on all three);
# 2. build-asan/ with AddressSanitizer + UndefinedBehaviorSanitizer, all tests again;
# 3. build-tsan/ with ThreadSanitizer, the end-to-end ingest and stall tests again
#    (the writer, watchdog, settle and main threads under load and in outages);
# 4. the fuzzers (body parser, framing) for FUZZ_SECONDS each (default 60).
# Database servers are throwaway ones the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --test
jobs=${TEST_JOBS:-2}

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFEED_WERROR=ON >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j"$jobs"

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFEED_WERROR=ON -DFEED_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
# Sanitizer reports go to files, so that those of daemons (whose stderr is
# /dev/null, running as nobody) are seen too: any report fails the run.
reports=$(mktemp -d "${TMPDIR:-/tmp}/feed-sanitizers.XXXXXX")
chmod 1777 "$reports"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:log_path=$reports/asan \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan \
	ctest --test-dir build-asan --output-on-failure -j"$jobs"
if [ -n "$(ls -A "$reports")" ]; then
	echo "test.sh: sanitizer reports:" >&2
	cat "$reports"/* >&2
	exit 1
fi
rm -rf "$reports"

# ThreadSanitizer: the end-to-end ingest tests (every backend) against a TSan
# build; any report fails the run. tests/tsan.supp names the uninstrumented
# libraries whose own synchronisation TSan cannot see, each with its reason.
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFEED_WERROR=ON -DFEED_TSAN=ON >/dev/null
cmake --build build-tsan -j"$(nproc)"
reports=$(mktemp -d "${TMPDIR:-/tmp}/feed-tsan.XXXXXX")
chmod 1777 "$reports"
TSAN_OPTIONS="suppressions=$PWD/tests/tsan.supp:log_path=$reports/tsan:second_deadlock_stack=1" \
	ctest --test-dir build-tsan --output-on-failure -j"$jobs" -R '^e2e_(ingest|stall)_'
if [ -n "$(ls -A "$reports")" ]; then
	echo "test.sh: ThreadSanitizer reports:" >&2
	cat "$reports"/* >&2
	exit 1
fi
rm -rf "$reports"

FUZZ_SECONDS=${FUZZ_SECONDS:-60} scripts/fuzz.sh
echo "test.sh: all tests passed"
