#!/usr/bin/env bash
# The test command (README): installs what a fresh Debian 12 machine lacks,
# then runs the structure, format and lint checks, the unit and loopback
# tests, the fuzz targets briefly, and the network-namespace end-to-end tests
# (those that mostly wait beside the fuzz and static builds, see step 3).
#
#   scripts/test.sh            everything (root needed for the netns tests)
#   QUICK=1 scripts/test.sh    skip the slow netns checks (long idle waits)
#
# Ends with one line `total: N passed, N failed, N skipped`; exits non-zero on
# any failure. Skipped: unit tests cargo reports as ignored (the privileged
# rules tests when not root) and netns checks that could not run (every
# declared check of a suite when not root or a server is missing).
#
# In CI (CI=true) a skip is a failure: an ignored unit test fails the run,
# and so does a skipped netns check unless netns-tests/ci-skips.txt lists it
# with its reason (run-all.sh enforces that). The run then names each
# check that did not run. A green CI run has tested every claim.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { printf '\n== %s\n' "$*"; }
failed_stages=()
stage() { # stage NAME CMD...: run, remember failure, keep going
    local name=$1 t0=$SECONDS; shift
    log "$name"
    if "$@"; then echo "-- $name: ok ($((SECONDS - t0)) s)"; else echo "-- $name: FAILED ($((SECONDS - t0)) s)"; failed_stages+=("$name"); fi
}

# --- 1. What the tests need, installed idempotently -----------------------
install_deps() {
    bash scripts/install-deps.sh || return 1
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
    rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
        || rustup target add x86_64-unknown-linux-musl
    if [ -d fuzz ]; then
        rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
        command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
    fi
}
stage "install dependencies" install_deps

# --- 2. Static checks and unit/loopback tests ---------------------------------
# Module layers and cycles, file and data-path fn lengths (scripts/structure.py).
# Its self-test runs too, and first: a checker that could not find a cycle
# would pass a tangled tree.
check_structure() {
    local rc=0
    python3 scripts/structure_test.py || rc=1
    python3 scripts/structure.py || rc=1
    return "$rc"
}
stage "structure" check_structure
stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --all-targets --locked -- -D warnings
unit_log=$(mktemp)
# The privileged tests (rules scripts run in throwaway namespaces) are
# #[ignore]d so that an unprivileged run shows them as ignored, not passed;
# as root they run.
unit_args=()
[ "$(id -u)" -eq 0 ] && unit_args=(-- --include-ignored)
stage "cargo test" bash -c "cargo test --locked ${unit_args[*]} 2>&1 | tee '$unit_log'; exit \${PIPESTATUS[0]}"
unit_passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$unit_log" | awk '{s+=$4} END {print s+0}')
unit_failed=$(grep -oE 'test result: .*[0-9]+ failed;' "$unit_log" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
unit_ignored=$(grep -oE 'test result: .*[0-9]+ ignored;' "$unit_log" | grep -oE '[0-9]+ ignored' | awk '{s+=$1} END {print s+0}')
ci=0
case ${CI:-} in true | 1 | yes) ci=1 ;; esac
ci_skipped=()   # what did not run, named, for the end of a CI run
if [ "$ci" -eq 1 ] && [ "$unit_ignored" -gt 0 ]; then
    while IFS= read -r t; do ci_skipped+=("unit test $t (ignored)"); done \
        < <(grep -E '^test .* \.\.\. ignored' "$unit_log" | sed -E 's/^test (.*) \.\.\. ignored.*/\1/')
    # Counted as failed, not skipped (run as root: they need namespaces).
    unit_failed=$((unit_failed + unit_ignored))
    unit_ignored=0
fi
rm -f "$unit_log"

# --- 3. The release binary; the netns tests start beside what follows -------
# Most suites mostly wait (timeouts, idle sessions, dockerd): run-all.sh runs
# those in lanes while fuzz and the static build below use the CPU at nice 10
# (nothing those two check depends on speed). The suites that measure rates,
# gaps, memory, CPU or descriptors (run-all.sh's SOLO list) wait for
# $netns_gate, opened when those stages are done, and then run alone. The
# netns output is shown whole after the other stages.
stage "cargo build --release" cargo build --release --locked
# Run also when not root: every suite then skips, and its declared checks
# count as skipped in the total instead of vanishing.
netns_passed=0 netns_failed=0 netns_skipped=0
[ "$(id -u)" -eq 0 ] || echo "netns tests need root (network namespaces, iptables): they will all skip"
work=$(mktemp -d)
netns_log=$work/netns.log
netns_gate=$work/quiet
EG_SOLO_GATE="$netns_gate" EGRESSD="$repo/target/release/egressd" \
    bash netns-tests/run-all.sh >"$netns_log" 2>&1 </dev/null &
netns_pid=$!
# Interrupted meanwhile: stop them by PID (run-all.sh stops its suites, and
# each removes its namespaces).
# shellcheck disable=SC2317
on_exit() {
    if [ -n "$netns_pid" ] && kill -0 "$netns_pid" 2>/dev/null; then
        kill -s TERM "$netns_pid" 2>/dev/null
        wait "$netns_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap on_exit EXIT
echo "(netns tests started in the background; their output follows the other stages)"

# --- 4. Fuzz targets briefly (scripts/fuzz.sh runs them for longer), and the
# static binary
if [ -x scripts/fuzz.sh ]; then
    stage "fuzz (brief)" nice -n 10 env FUZZ_SECONDS="${FUZZ_SECONDS:-4}" scripts/fuzz.sh
fi
stage "static musl build" nice -n 10 scripts/build-static.sh

# --- 5. The netns tests: the solo suites now run on a quiet machine ----------
touch "$netns_gate"
log "netns tests"
tail -n +1 -f --pid="$netns_pid" "$netns_log"
wait "$netns_pid"
rc=$?
netns_pid=""
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$netns_log" | tail -n 1)
netns_passed=$(echo "$line" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
netns_failed=$(echo "$line" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
netns_skipped=$(echo "$line" | grep -oE '[0-9]+ skipped' | grep -oE '[0-9]+' || echo 0)
if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
    failed_stages+=("netns tests")
    [ "${netns_failed:-0}" -gt 0 ] || netns_failed=1
fi
while IFS= read -r l; do ci_skipped+=("netns ${l#FAIL: }"); done \
    < <(grep -E '^FAIL: .*(skipped, not allowed in CI)' "$netns_log")

echo
echo "unit tests: ${unit_passed} passed, ${unit_failed} failed, ${unit_ignored} skipped (ignored)"
echo "netns checks: ${netns_passed} passed, ${netns_failed} failed, ${netns_skipped} skipped"
if [ ${#ci_skipped[@]} -gt 0 ]; then
    echo "did not run, which CI counts as failed (${#ci_skipped[@]}):"
    printf '  %s\n' "${ci_skipped[@]}"
fi
if [ ${#failed_stages[@]} -gt 0 ]; then
    echo "failed stages: ${failed_stages[*]}"
fi
total_failed=$(( unit_failed + netns_failed + ${#failed_stages[@]} ))
echo "total: $(( unit_passed + netns_passed )) passed, ${total_failed} failed, $(( unit_ignored + netns_skipped )) skipped"
[ "$total_failed" -eq 0 ]
