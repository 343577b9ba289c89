#!/usr/bin/env bash
# Runs every cargo-fuzz target for FUZZ_SECONDS each (default 300) on
# nightly, starting from the seed corpus in fuzz/corpus/<target>. New inputs
# go to a scratch directory, so the seed corpus in git stays as it is; a
# crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
#
#   scripts/fuzz.sh                 all targets, 5 minutes each
#   FUZZ_SECONDS=20 scripts/fuzz.sh all targets briefly (scripts/test.sh does this)
#   scripts/fuzz.sh config          one target
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-300}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fails=0
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "fuzz/corpus/$t"
    out="$scratch/$t.log"
    if cargo +nightly fuzz run "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$out" 2>&1; then
        runs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$out" | tail -n 1)
        echo "fuzz $t: ok (${runs:-no run count})"
    else
        echo "fuzz $t: FAILED"
        tail -n 40 "$out"
        fails=$((fails + 1))
    fi
done
[ "$fails" -eq 0 ]
