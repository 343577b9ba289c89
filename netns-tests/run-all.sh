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
#
# Lanes: most suites spend their time waiting (timeouts, idle sessions,
# dockerd), so the suites not on the SOLO list below run EG_LANES (default 3)
# at a time, each with its output buffered to a file and printed whole, under
# its "=== name" line, when it ends (in the order they end). The SOLO suites
# then run one by one with nothing beside them, their output shown live as
# before: they measure rates, memory, CPU or gaps that a busy machine moves.
# Suites that share something outside their namespaces (the dockerd suites:
# /run/containerd) are in one group and never run at the same time.
# EG_LANES=1 runs every suite in turn. EG_SOLO_GATE=FILE: before the first
# SOLO suite, wait (up to EG_SOLO_GATE_SECS, 3600) until FILE exists
# (scripts/test.sh opens it when its own CPU-heavy stages are done).

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

# SOLO: suites that run with nothing beside them (checked by rate, memory,
# CPU time or delivery gaps, which other suites' load would move):
#   classes, fairness, dockerclass  shaped rates (lower bounds near the rate)
#   starve                          descriptor/CPU starvation, service latency
#   dnsflood                        egressd's peak memory under a flood
#   quotas                          a throttle's rate (0.7..1.1 Mbit/s), 4 s ends
#   faults                          2 s connect timeout against Python fault
#                                   servers: a starved server looks like a timeout
#   hostile                         D1, the route-switch race (issue 21): beside
#                                   the lanes it once saw 3 UDP flows leave by
#                                   the old exit; serially it never has
#   upgrade                         zero lost connects/datagrams/lookups
#   release                         builds the static binary (scripts/release.sh)
#                                   unless scripts/test.sh's build left it
SOLO=" classes.sh fairness.sh dockerclass.sh starve.sh dnsflood.sh quotas.sh faults.sh hostile.sh upgrade.sh release.sh "
is_solo() { [[ $SOLO == *" $1 "* ]]; }
# suite_group NAME — suites of one group never run at the same time.
suite_group() {
	case $1 in
	docker.sh | labels.sh | dockerclass.sh) echo dockerd ;; # /run/containerd
	*) echo "$1" ;;
	esac
}

# tally NAME OUTFILE RC — add up one suite's closing line (its output has
# been shown) and remove OUTFILE.
tally() {
	local name=$1 out=$2 rc=$3 line p f k
	line=$(grep -E '^[0-9]+ passed, [0-9]+ failed(, [0-9]+ skipped)?$' "$out" | tail -n 1)
	CI_BAD=0
	[ "$ci" -eq 1 ] && [ -n "$line" ] && ci_unlisted_skips "$name" "$out"
	rm -f "$out"
	if [ -z "$line" ]; then
		echo "FAIL: $name: no summary line (exit code $rc)"
		total_fail=$((total_fail + 1))
		return
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
}

lanes=${EG_LANES:-3}
case $lanes in '' | *[!0-9]* | 0) lanes=1 ;; esac
# A fixed EG_ID would give every suite the same namespace names.
[ -z "${EG_ID:-}" ] || lanes=1
# Longest first (seconds on the 2-core CI machine), so the lanes end
# together; docker.sh first of all (its dockerd loads br_netfilter, below).
LONG_FIRST="docker.sh labels.sh doctor.sh udp.sh"
pooled=() solo=()
for l in $LONG_FIRST; do
	for s in "${scripts[@]}"; do
		[ "$(basename "$s")" = "$l" ] && [ "$lanes" -gt 1 ] && pooled+=("$s")
	done
done
for s in "${scripts[@]}"; do
	name=$(basename "$s")
	[[ " $LONG_FIRST " == *" $name "* ]] && [ "$lanes" -gt 1 ] && continue
	if [ "$lanes" -gt 1 ] && ! is_solo "$name"; then pooled+=("$s"); else solo+=("$s"); fi
done
# The first dockerd loads br_netfilter, and the kernel then gives every
# existing namespace bridge-nf-call-iptables=1: a suite whose gw was built
# before that (topology.sh turns it off only if it exists) would have its
# bridge traffic through iptables from then on. So while the module is not
# loaded, nothing starts beside the first dockerd suite until it is (or that
# suite has ended).
brnf_hold=0
if [ ! -e /proc/sys/net/bridge ]; then
	for s in "${pooled[@]}"; do
		[ "$(suite_group "$(basename "$s")")" = dockerd ] && brnf_hold=1
	done
fi

# The pooled suites, up to $lanes at a time: started in the given order,
# skipping one whose group is running; each one's output goes to a file,
# shown whole when it ends.
lane_dir=$(mktemp -d "${TMPDIR:-/tmp}/egressd-run-all.XXXXXX")
declare -A run_name=() run_group=()
# Interrupted: stop the running suites by PID (each cleans up on TERM).
# shellcheck disable=SC2317
stop_lanes() {
	local pid
	for pid in "${!run_name[@]}"; do kill -s TERM "$pid" 2>/dev/null; done
	wait
	rm -rf "$lane_dir"
	exit 130
}
trap stop_lanes INT TERM
busy_groups=" "
pending=("${pooled[@]}")
t_pool=$SECONDS
while [ ${#pending[@]} -gt 0 ] || [ ${#run_name[@]} -gt 0 ]; do
	if [ ${#run_name[@]} -lt "$lanes" ] && [ ${#pending[@]} -gt 0 ]; then
		started=0
		for i in "${!pending[@]}"; do
			s=${pending[i]}
			name=$(basename "$s")
			g=$(suite_group "$name")
			[[ $busy_groups == *" $g "* ]] && continue
			bash "$s" >"$lane_dir/$name.out" 2>&1 </dev/null &
			run_name[$!]=$name
			run_group[$!]=$g
			busy_groups="$busy_groups$g "
			unset 'pending[i]'
			pending=("${pending[@]}")
			started=1
			if [ "$brnf_hold" -eq 1 ] && [ "$g" = dockerd ]; then
				brnf_hold=0
				t_hold=$SECONDS
				while [ ! -e /proc/sys/net/bridge ] && kill -0 "$!" 2>/dev/null && [ $((SECONDS - t_hold)) -lt 300 ]; do sleep 0.5; done
				echo "# br_netfilter loaded by $name's dockerd after $((SECONDS - t_hold)) s: the other lanes start"
			fi
			break
		done
		[ "$started" -eq 1 ] && continue
	fi
	# A lane is free only when a suite ends: wait for any one of them.
	done_pid=""
	wait -n -p done_pid "${!run_name[@]}"
	rc=$?
	[ -n "$done_pid" ] || continue
	name=${run_name[$done_pid]}
	busy_groups=${busy_groups/" ${run_group[$done_pid]} "/ }
	unset "run_name[$done_pid]" "run_group[$done_pid]"
	echo "=== $name"
	cat "$lane_dir/$name.out"
	tally "$name" "$lane_dir/$name.out" "$rc"
done
rmdir "$lane_dir" 2>/dev/null
trap - INT TERM
[ ${#pooled[@]} -gt 0 ] && echo "# ${#pooled[@]} suites in $lanes lanes took $((SECONDS - t_pool)) s"

if [ ${#solo[@]} -gt 0 ] && [ -n "${EG_SOLO_GATE:-}" ] && [ ! -e "$EG_SOLO_GATE" ]; then
	gate_t0=$SECONDS
	while [ ! -e "$EG_SOLO_GATE" ] && [ $((SECONDS - gate_t0)) -lt "${EG_SOLO_GATE_SECS:-3600}" ]; do sleep 1; done
	if [ -e "$EG_SOLO_GATE" ]; then
		echo "# waited $((SECONDS - gate_t0)) s for the machine to be quiet ($EG_SOLO_GATE)"
	else
		echo "# $EG_SOLO_GATE not there after ${EG_SOLO_GATE_SECS:-3600} s: the solo suites run anyway"
	fi
fi

# The SOLO suites (all of them with EG_LANES=1), one by one, shown live.
for s in "${solo[@]}"; do
	name=$(basename "$s")
	echo "=== $name"
	out=$(mktemp "${TMPDIR:-/tmp}/egressd-run-all.XXXXXX")
	bash "$s" 2>&1 | tee "$out"
	tally "$name" "$out" "${PIPESTATUS[0]}"
done

printf '%d passed, %d failed, %d skipped\n' "$total_pass" "$total_fail" "$total_skip"
[ "$total_fail" -eq 0 ]
