#!/usr/bin/env bash
# netns-tests/run-all.sh — run every netns test script and add up the results.
#
# Runs each netns-tests/*.sh except lib.sh, topology.sh and itself, in turn
# (each builds and removes its own namespaces), shows its output, and reads
# its closing "N passed, N failed[, N skipped]" line. A script that exits
# non-zero without counting a failure, or prints no summary, counts as one
# failure. Skips are carried: a suite that cannot run here (not root, a
# server missing) counts all its declared checks as skipped. Prints the
# totals as the last line, always "N passed, N failed, N skipped"; exits
# non-zero on any failure.
#
# Builds egressd (cargo build --release) first unless EGRESSD points at a
# binary or EG_NO_BUILD=1. Extra arguments name the scripts to run (default:
# all of them).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

total_pass=0
total_fail=0
total_skip=0

if [ -z "${EGRESSD:-}" ] && [ "${EG_NO_BUILD:-0}" != 1 ] && [ "$(id -u)" -eq 0 ]; then
	if ! (cd "$REPO" && cargo build --release --quiet); then
		echo "FAIL: build: cargo build --release failed"
		total_fail=$((total_fail + 1))
	fi
fi

if [ $# -gt 0 ]; then
	scripts=("$@")
else
	scripts=()
	for f in "$HERE"/*.sh; do
		case $(basename "$f") in
		lib.sh | topology.sh | run-all.sh) continue ;;
		esac
		scripts+=("$f")
	done
fi

for s in "${scripts[@]}"; do
	name=$(basename "$s")
	echo "=== $name"
	out=$(mktemp "${TMPDIR:-/tmp}/egressd-run-all.XXXXXX")
	bash "$s" 2>&1 | tee "$out"
	rc=${PIPESTATUS[0]}
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$out" | tail -n 1)
	rm -f "$out"
	if [ -z "$line" ]; then
		echo "FAIL: $name: no summary line (exit code $rc)"
		total_fail=$((total_fail + 1))
		continue
	fi
	p=$(printf '%s\n' "$line" | sed -E 's/^([0-9]+) passed.*/\1/')
	f=$(printf '%s\n' "$line" | sed -E 's/^[0-9]+ passed, ([0-9]+) failed.*/\1/')
	k=0
	case $line in *skipped) k=$(printf '%s\n' "$line" | sed -E 's/.*, ([0-9]+) skipped$/\1/') ;; esac
	total_pass=$((total_pass + p))
	total_fail=$((total_fail + f))
	total_skip=$((total_skip + k))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "FAIL: $name: exited $rc"
		total_fail=$((total_fail + 1))
	fi
done

printf '%d passed, %d failed, %d skipped\n' "$total_pass" "$total_fail" "$total_skip"
[ "$total_fail" -eq 0 ]
