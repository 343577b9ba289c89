#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS each (default 300) on
# nightly, starting from the seed corpus in fuzz/corpus/<target>. New inputs
# go to a scratch directory, so the seed corpus in git stays as it is; a
# crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
#
#   scripts/fuzz.sh                 all targets, 5 minutes each
#   FUZZ_SECONDS=20 scripts/fuzz.sh all targets briefly (scripts/test.sh does this)
#   scripts/fuzz.sh config          one target
#
# FUZZ_JOBS targets (default 2, one a core on the 2-core CI machine) run at
# the same time, each still for FUZZ_SECONDS; each one's result line is
# printed when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-300}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# Every target fuzz/Cargo.toml declares must be run: a target cargo-fuzz
# does not list, or a list that comes back empty, fails the run instead of
# passing with nothing fuzzed.
mapfile -t declared < <(awk '/^\[\[bin\]\]/ {b = 1; next} b && /^name *=/ {gsub(/.*= *"|".*/, ""); print; b = 0}' fuzz/Cargo.toml)
[ ${#declared[@]} -gt 0 ] || { echo "fuzz: fuzz/Cargo.toml declares no targets" >&2; exit 1; }
mapfile -t listed < <(cargo +nightly fuzz list)
# (Compared in the shell: `printf | grep -q` under pipefail fails when grep
# quits at its match before printf has written the rest — seen on a busy
# machine as "doctor_firewall is not listed".)
is_listed() {
    local l
    for l in "${listed[@]}"; do [ "$l" = "$1" ] && return 0; done
    return 1
}
for d in "${declared[@]}"; do
    is_listed "$d" || { echo "fuzz: target $d (fuzz/Cargo.toml) is not listed by cargo fuzz list" >&2; exit 1; }
done
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${declared[@]}")
# All of them: one build of every target first (one cargo run compiles and
# links them in parallel); `cargo fuzz run` below then finds each one built.
if [ $# -eq 0 ]; then
    cargo +nightly fuzz build >/dev/null 2>&1 || cargo +nightly fuzz build
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# fuzz_one T — fuzz target T for $secs; its verdict (and, on failure, the
# end of its log) goes to $scratch/T.verdict; exits non-zero on failure.
fuzz_one() {
    local t=$1 out="$scratch/$1.log" v="$scratch/$1.verdict" runs n
    mkdir -p "$scratch/$t" "fuzz/corpus/$t"
    if cargo +nightly fuzz run "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$out" 2>&1; then
        # libFuzzer ends a run that reached its time with "Done N runs in S
        # second(s)"; without that line (or with 0 runs) nothing was fuzzed.
        runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$out" | tail -n 1) || true
        n=$(printf '%s' "$runs" | grep -oE '[0-9]+' | head -n 1)
        if [ -z "$runs" ] || [ "${n:-0}" -eq 0 ]; then
            { echo "fuzz $t: FAILED (no 'Done N runs' line with N > 0: the target did not fuzz)"
              tail -n 20 "$out"; } >"$v"
            return 1
        fi
        echo "fuzz $t: ok ($runs)" >"$v"
    else
        { echo "fuzz $t: FAILED"; tail -n 40 "$out"; } >"$v"
        return 1
    fi
}
jobs_max=${FUZZ_JOBS:-2}
case $jobs_max in '' | *[!0-9]* | 0) jobs_max=1 ;; esac
fails=0
declare -A running=()
next=0
while [ "$next" -lt ${#targets[@]} ] || [ ${#running[@]} -gt 0 ]; do
    if [ "$next" -lt ${#targets[@]} ] && [ ${#running[@]} -lt "$jobs_max" ]; then
        fuzz_one "${targets[next]}" &
        running[$!]=${targets[next]}
        next=$((next + 1))
        continue
    fi
    done_pid=""
    rc=0
    wait -n -p done_pid "${!running[@]}" || rc=$?
    [ -n "$done_pid" ] || continue
    t=${running[$done_pid]}
    unset "running[$done_pid]"
    if [ -s "$scratch/$t.verdict" ]; then cat "$scratch/$t.verdict"; else echo "fuzz $t: FAILED (no verdict, exit $rc)"; rc=1; fi
    [ "$rc" -eq 0 ] || fails=$((fails + 1))
done
echo "fuzz: ${#targets[@]} targets run, $fails failed"
[ "$fails" -eq 0 ]
