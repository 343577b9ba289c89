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
# In CI (CI=true) a skipped check fails the run, unless it is on the
# reviewed list netns-tests/ci-skips.txt (suite, check-name prefix, reason):
# a check that could not run proves nothing, and a machine where every suite
# skips (not root) must not come out green. Each such skip is printed as a
# FAIL line naming the check and counted as failed instead of skipped; a
# whole suite skipped (skip_all) counts all its declared checks.
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
CI_SKIPS=${EG_CI_SKIPS:-$HERE/ci-skips.txt}
ci=0
case ${CI:-} in true | 1 | yes) ci=1 ;; esac

# ci_skip_allowed SUITE CHECK — is CHECK of SUITE on the reviewed list?
ci_skip_allowed() {
	local suite=$1 check=$2 s p entry
	[ -f "$CI_SKIPS" ] || return 1
	while IFS= read -r entry; do
		case $entry in '' | '#'*) continue ;; esac
		s=${entry%%[[:space:]]*}
		p=${entry#"$s"}
		p=${p%%|*}
		p=$(printf '%s' "$p" | sed -E 's/^[[:space:]]+//; s/[[:space:]]+$//')
		[ "$s" = "$suite" ] && [ -n "$p" ] && [ "${check#"$p"}" != "$check" ] && return 0
	done <"$CI_SKIPS"
	return 1
}

# ci_unlisted_skips SUITE OUTFILE — print a FAIL line for each SKIP of the
# suite's output that CI does not allow; the number of checks they stand
# for goes to $CI_BAD.
ci_unlisted_skips() {
	local suite=$1 out=$2 rest name n skip
	CI_BAD=0
	while IFS= read -r skip; do
		rest=${skip#SKIP: }
		if [[ $rest =~ ^all\ ([0-9]+)\ checks:\ (.*)$ ]]; then
			n=${BASH_REMATCH[1]}
			echo "FAIL: $suite: all $n checks skipped, not allowed in CI: ${BASH_REMATCH[2]}"
			CI_BAD=$((CI_BAD + n))
			continue
		fi
		name=${rest%%: *}
		if ci_skip_allowed "$suite" "$name"; then
			echo "# $suite: skip of '$name' allowed in CI (netns-tests/ci-skips.txt)"
		else
			echo "FAIL: $suite: check skipped, not allowed in CI (not in netns-tests/ci-skips.txt): $rest"
			CI_BAD=$((CI_BAD + 1))
		fi
	done < <(grep -E '^SKIP: ' "$out")
}

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
	CI_BAD=0
	[ "$ci" -eq 1 ] && [ -n "$line" ] && ci_unlisted_skips "$name" "$out"
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
	if [ "$CI_BAD" -gt 0 ]; then
		# Checks CI does not allow to skip count as failed, not skipped.
		[ "$CI_BAD" -le "$k" ] || CI_BAD=$k
		k=$((k - CI_BAD))
		f=$((f + CI_BAD))
	fi
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
