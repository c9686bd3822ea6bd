#!/bin/sh
# fuzz.sh - build the libFuzzer targets with clang in build-fuzz and run
# each for FUZZ_SECONDS (default 60): fuzz_protocol (the body parser) on a
# copy of tests/fuzz/corpus, fuzz_framing (frames in, request out) on a copy
# of tests/fuzz/corpus-framing.
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
cmake --build "$build" --target fuzz_protocol fuzz_framing -j "$jobs"

mkdir -p "$build/artifacts"
for target in protocol framing; do
	corpus=corpus
	[ "$target" = framing ] && corpus=corpus-framing
	# Work on a copy: the fuzzer adds files to its corpus directory.
	work="$build/$corpus-run"
	rm -rf "$work"
	mkdir -p "$work"
	cp "$root/tests/fuzz/$corpus"/* "$work"/
	"$build/tests/fuzz/fuzz_$target" \
		-max_total_time="$seconds" \
		-max_len=8192 \
		-timeout=10 \
		-print_final_stats=1 \
		-artifact_prefix="$build/artifacts/$target-" \
		"$work"
done
