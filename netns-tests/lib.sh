# shellcheck shell=bash
# netns-tests/lib.sh — shared helpers for egressd's network-namespace tests.
#
# Sourced (bash) by every netns-tests/*.sh script and by scripts/demo.sh.
# What it gives:
#   - unique names per run: every namespace is "${EG_ID}-<role>" with
#     EG_ID=eg<pid> (override with EG_ID=...), so parallel runs never collide;
#   - a private temp dir $EG_TMP, removed at exit (kept with EG_KEEP_TMP=1);
#   - process tracking: eg_spawn starts a process inside a namespace in the
#     background and remembers its PID; cleanup stops exactly those PIDs
#     (and whatever is left inside our own namespaces, by PID), never by name;
#   - trap cleanup on EXIT/INT/TERM: kill tracked PIDs, delete our namespaces
#     by name, remove the temp dir;
#   - wait_until: poll a condition with a bounded timeout (no fixed sleeps as
#     synchronisation);
#   - pass/fail/skip_check: one line per check, counted; summary prints
#     exactly "N passed, N failed, N skipped" and returns non-zero on failure;
#   - plan_checks N: the suite declares, right after sourcing this file, how
#     many check lines it prints; summary fails (one FAIL line, counted) when
#     passed + failed + skipped differs, so a check that silently did not run
#     shows; fail_unplanned: a failure outside the plan (a precondition, a
#     crash), counted as failed but not as a check;
#   - skip_all: exit 0 with a reason when we cannot run (not root, tool
#     missing); the declared checks count as skipped;
#   - die / eg_abort: stop the suite loudly, also from inside $(...): the
#     summary still prints, with the checks that never ran counted against
#     the plan.
#
# Safety: nothing here touches the root network namespace. Links are created
# directly inside our namespaces with `ip -n NS link add ... peer ... netns NS2`.

EG_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # used by topology.sh and the test scripts
EG_REPO=$(cd "$EG_LIB_DIR/.." && pwd)
# shellcheck disable=SC2034
EG_TOOLS="$EG_LIB_DIR/tools"
EG_ID=${EG_ID:-eg$$}

EG_PASSED=0
EG_FAILED=0
EG_SKIPPED=0
EG_UNPLANNED=0    # failures that are not checks (fail_unplanned)
EG_PLANNED=""     # plan_checks N
EG_SUMMARY_DONE=0
EG_PIDS=()        # processes we started, stopped at cleanup by PID
EG_NETNS=()       # namespaces we created, deleted at cleanup by name
EG_TMP=""
EG_CLEANED=0

# ---------------------------------------------------------------- output

log()  { printf '# %s\n' "$*" >&2; }

# die WHY — stop the suite: ERROR on stderr, then (in a planned suite) a
# counted failure and the summary, so the checks that never ran show as
# missing from the plan. Works inside $(...) too: a subshell hands the
# reason to the main shell (SIGUSR1, see eg_init) and exits.
die() {
	printf 'ERROR: %s\n' "$*" >&2
	eg_stop "$@"
}
# eg_stop WHY — die without the ERROR line (already printed).
eg_stop() {
	if [ "${BASHPID:-$$}" != "$$" ]; then
		if [ -n "$EG_TMP" ] && [ -d "$EG_TMP" ]; then printf '%s\n' "$*" >>"$EG_TMP/abort"; fi
		kill -s USR1 "$$" 2>/dev/null
		exit 1
	fi
	trap '' USR1 # once is enough (nested $(...) may each have signalled)
	if [ -n "$EG_PLANNED" ] && [ "$EG_SUMMARY_DONE" -eq 0 ]; then
		fail_unplanned "aborted" "$*"
		summary
	fi
	exit 1
}
# eg_on_abort — the main shell's side of die in a subshell (trap on USR1).
eg_on_abort() {
	local why="a helper in a subshell died"
	[ -n "$EG_TMP" ] && [ -s "$EG_TMP/abort" ] && why=$(tr '\n' ' ' <"$EG_TMP/abort")
	eg_stop "${why% }"
}

pass() {
	EG_PASSED=$((EG_PASSED + 1))
	printf 'PASS: %s\n' "$1"
}

# fail NAME WHY...
fail() {
	local name=$1; shift
	EG_FAILED=$((EG_FAILED + 1))
	printf 'FAIL: %s: %s\n' "$name" "$*"
}

# skip_check NAME WHY...  (one check could not run; not a failure)
skip_check() {
	local name=$1; shift
	EG_SKIPPED=$((EG_SKIPPED + 1))
	printf 'SKIP: %s: %s\n' "$name" "$*"
}

# fail_n N NAME WHY... / skip_n N NAME WHY... — N checks that could not
# run, as N FAIL (or SKIP) lines "NAME (k/N)": a branch that cannot reach
# its checks still reports each of them, so every path prints the same
# number of check lines (plan_checks).
fail_n() {
	local n=$1 name=$2 k; shift 2
	for k in $(seq 1 "$n"); do fail "$name ($k/$n)" "$@"; done
}
skip_n() {
	local n=$1 name=$2 k; shift 2
	for k in $(seq 1 "$n"); do skip_check "$name ($k/$n)" "$@"; done
}

# check NAME CMD...  — pass if CMD succeeds, fail (with its output) if not.
check() {
	local name=$1; shift
	local out
	if out=$("$@" 2>&1); then
		pass "$name"
	else
		fail "$name" "$(printf '%s' "$out" | tail -n 5 | tr '\n' ' ')"
	fi
}

# fail_unplanned NAME WHY... — a failure that is not one of the declared
# checks (a precondition such as "egressd started", or "egressd still
# running at the end"): counted as failed, left out of the plan.
fail_unplanned() {
	EG_UNPLANNED=$((EG_UNPLANNED + 1))
	fail "$@"
}

# plan_checks N — this suite prints N check lines (pass/fail/skip_check).
plan_checks() {
	case $1 in
	'' | *[!0-9]*) die "plan_checks: '$1' is not a count" ;;
	esac
	EG_PLANNED=$1
}

# summary — the closing line "N passed, N failed, N skipped"; non-zero on
# any failure. A suite that declared no plan, or whose checks do not add up
# to the plan, gets one more (counted) failure saying so.
summary() {
	local ran
	EG_SUMMARY_DONE=1
	ran=$((EG_PASSED + EG_FAILED - EG_UNPLANNED + EG_SKIPPED))
	if [ -z "$EG_PLANNED" ]; then
		fail_unplanned "plan" "$(basename "$0") declared no plan_checks: its checks cannot be counted against a plan"
	elif [ "$ran" -ne "$EG_PLANNED" ]; then
		fail_unplanned "plan" "$(basename "$0") declares $EG_PLANNED checks but reported $ran" \
			"($EG_PASSED passed, $((EG_FAILED - EG_UNPLANNED)) failed, $EG_SKIPPED skipped)"
	fi
	printf '%d passed, %d failed, %d skipped\n' "$EG_PASSED" "$EG_FAILED" "$EG_SKIPPED"
	[ "$EG_FAILED" -eq 0 ]
}

# skip_all WHY — this whole script cannot run here: say why, exit 0. Every
# declared check counts as skipped (1 without a plan). In CI (CI=true)
# run-all.sh turns skips that are not on netns-tests/ci-skips.txt into
# failures, so a machine that cannot run a suite never passes it.
skip_all() {
	printf 'SKIP: all %d checks: %s\n' "${EG_PLANNED:-1}" "$*"
	printf '0 passed, 0 failed, %d skipped\n' "${EG_PLANNED:-1}"
	exit 0
}

# ---------------------------------------------------------------- requirements

# require_root_and_tools TOOL... — skip (exit 0) when not root, when network
# namespaces cannot be created, or when a tool is missing.
require_root_and_tools() {
	[ "$(id -u)" -eq 0 ] || skip_all "needs root (network namespaces)"
	local t missing=""
	for t in ip "$@"; do
		command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
	done
	[ -z "$missing" ] || skip_all "missing tools:$missing"
	# Can we make a namespace at all (e.g. not in an unprivileged container)?
	local probe="${EG_ID}-probe"
	if ! ip netns add "$probe" 2>/dev/null; then
		skip_all "cannot create network namespaces (ip netns add failed)"
	fi
	ip netns del "$probe" 2>/dev/null
}

# The real interpreter path, so a pyenv shim does not sit between us and the PID.
python_bin() {
	if [ -z "${EG_PYTHON:-}" ]; then
		EG_PYTHON=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || EG_PYTHON=python3
		[ -n "$EG_PYTHON" ] || EG_PYTHON=python3
	fi
	printf '%s\n' "$EG_PYTHON"
}

# ---------------------------------------------------------------- temp dir, trap

eg_init() {
	EG_TMP=$(mktemp -d "${TMPDIR:-/tmp}/egressd-netns.${EG_ID}.XXXXXX") || die "mktemp failed"
	trap eg_cleanup EXIT
	trap eg_on_abort USR1
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# ns_name ROLE — the namespace name for a role in this run.
ns_name() { printf '%s-%s\n' "$EG_ID" "$1"; }

# ns_add NAME — create a namespace and remember it for cleanup. Loopback up,
# IPv6 DAD off (addresses usable at once), nothing else.
ns_add() {
	local ns=$1
	ip netns add "$ns" || die "ip netns add $ns failed"
	EG_NETNS+=("$ns")
	ip -n "$ns" link set lo up
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 \
		net.ipv6.conf.default.accept_dad=0 >/dev/null 2>&1 || true
}

# eg_spawn NS LOGFILE CMD... — run CMD inside NS in the background with a
# raised fd limit; remember its PID (ip netns exec execs, so $! is CMD's PID).
# The PID is left in EG_LAST_PID.
eg_spawn() {
	local ns=$1 logf=$2; shift 2
	(
		ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
		exec ip netns exec "$ns" "$@"
	) >>"$logf" 2>&1 </dev/null &
	EG_LAST_PID=$!
	EG_PIDS+=("$EG_LAST_PID")
	# No job-control chatter ("Killed") when we stop it on purpose; it is
	# still our child (pid_alive checks that) and still reaped by bash.
	disown "$EG_LAST_PID" 2>/dev/null || true
}

# pid_alive PID — alive and still our own child (a PID that has exited and
# been reused by some other process is never signalled).
pid_alive() {
	kill -0 "$1" 2>/dev/null || return 1
	[ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = "$$" ]
}

# pid_gone PID — exited (a zombie awaiting its reaper counts as gone).
pid_gone() {
	pid_alive "$1" || return 0
	[ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" = "Z" ]
}

# stop_pid PID [SIGNAL] — signal one PID, wait (bounded) until it is gone,
# then SIGKILL. Reaps it if it is our child.
stop_pid() {
	local pid=$1 sig=${2:-TERM}
	pid_alive "$pid" || { wait "$pid" 2>/dev/null; return 0; }
	kill -s "$sig" "$pid" 2>/dev/null
	wait_until 5 pid_gone "$pid"
	pid_alive "$pid" && kill -s KILL "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	return 0
}

# ns_pids NS — PIDs of processes living in namespace NS.
ns_pids() { ip netns pids "$1" 2>/dev/null; }
ns_empty() { [ -z "$(ns_pids "$1")" ]; }

# kill_ns_pids NS [SIGNAL] — signal every process inside NS, by PID.
# Only ever used on namespaces this run created (so only on processes it
# started, and their children).
kill_ns_pids() {
	local ns=$1 sig=${2:-KILL} p
	for p in $(ns_pids "$ns"); do
		kill -s "$sig" "$p" 2>/dev/null
	done
}

eg_cleanup() {
	local rc=$? pid ns
	[ "$EG_CLEANED" -eq 1 ] && return "$rc"
	EG_CLEANED=1
	trap - EXIT INT TERM
	trap '' USR1
	if declare -F eg_cleanup_hook >/dev/null; then eg_cleanup_hook || true; fi
	for pid in "${EG_PIDS[@]}"; do
		pid_alive "$pid" && kill -s TERM "$pid" 2>/dev/null
	done
	for pid in "${EG_PIDS[@]}"; do
		wait_until 3 pid_gone "$pid"
		pid_alive "$pid" && kill -s KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	# Anything still inside our namespaces (forked children of what we
	# started, e.g. danted's helpers) — by PID, then the namespaces by name.
	for ns in "${EG_NETNS[@]}"; do
		kill_ns_pids "$ns" KILL
	done
	for ns in "${EG_NETNS[@]}"; do
		wait_until 2 ns_empty "$ns"
		ip netns del "$ns" 2>/dev/null || true
	done
	if [ -n "$EG_TMP" ] && [ -d "$EG_TMP" ]; then
		if [ "${EG_KEEP_TMP:-0}" = 1 ]; then
			log "kept temp dir $EG_TMP"
		else
			rm -rf "$EG_TMP"
		fi
	fi
	return "$rc"
}

# ---------------------------------------------------------------- waiting

# wait_until TIMEOUT_SECS CMD... — poll CMD (every 50 ms) until it succeeds;
# return 1 if it has not within TIMEOUT_SECS.
wait_until() {
	local timeout=$1; shift
	local deadline now
	deadline=$(( $(date +%s%N) + timeout * 1000000000 ))
	while :; do
		"$@" >/dev/null 2>&1 && return 0
		now=$(date +%s%N)
		[ "$now" -ge "$deadline" ] && return 1
		sleep 0.05
	done
}

# tcp_listening NS PORT [ADDR] — is something listening on tcp PORT (at ADDR)?
tcp_listening() {
	local ns=$1 port=$2 addr=${3:-}
	local out
	out=$(ip netns exec "$ns" ss -ltnH "sport = :$port" 2>/dev/null) || return 1
	if [ -n "$addr" ]; then
		printf '%s\n' "$out" | grep -qF "$addr:$port"
	else
		[ -n "$out" ]
	fi
}

# wait_tcp_listen NS PORT [ADDR] [TIMEOUT]
wait_tcp_listen() {
	wait_until "${4:-10}" tcp_listening "$1" "$2" "${3:-}"
}

# now_ns — monotonic-enough wall clock in nanoseconds.
now_ns() { date +%s%N; }
