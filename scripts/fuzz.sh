#!/bin/sh
# fuzz.sh - build the libFuzzer targets with clang in build-fuzz and run
# fuzz_protocol for FUZZ_SECONDS (default 60) on a copy of tests/fuzz/corpus.
# Exits non-zero if the build fails or the fuzzer finds a crash, a leak or a
# broken invariant; the reproducer is left in build-fuzz/artifacts/.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-fuzz"
seconds="${FUZZ_SECONDS:-60}"
jobs="${FUZZ_JOBS:-2}"

case "$seconds" in
''|*[!0-9]*) echo "fuzz.sh: FUZZ_SECONDS must be a number of seconds, got '$seconds'" >&2
	exit 2 ;;
esac

cmake -S "$root" -B "$build" -DCMAKE_C_COMPILER=clang -DFEED_FUZZ=ON \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build "$build" --target fuzz_protocol -j "$jobs"

# Work on a copy: the fuzzer adds files to its corpus directory.
work="$build/corpus-run"
rm -rf "$work"
mkdir -p "$work" "$build/artifacts"
cp "$root"/tests/fuzz/corpus/* "$work"/

"$build/tests/fuzz/fuzz_protocol" \
	-max_total_time="$seconds" \
	-max_len=8192 \
	-timeout=10 \
	-print_final_stats=1 \
	-artifact_prefix="$build/artifacts/" \
	"$work"
