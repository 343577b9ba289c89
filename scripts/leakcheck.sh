#!/usr/bin/env bash
# scripts/leakcheck.sh — run egressd's unit and loopback tests under
# valgrind --leak-check=full and say whether they are clean (issue 7, item 6).
#
# What it does:
#   1. `cargo test --no-run --message-format=json` builds the test binaries
#      (debug profile: symbols for valgrind's stacks) and lists them: the
#      library's unit tests, src/main.rs's, and every tests/*.rs loopback test.
#   2. Runs each binary under
#        valgrind --leak-check=full --show-leak-kinds=definite,indirect
#                 --errors-for-leak-kinds=definite,indirect --error-exitcode=99
#      with `--test-threads=1` (valgrind serialises threads anyway; one at a
#      time keeps the output readable) and `--skip netns`: the privileged
#      rules tests in src/rules/netns_tests.rs run `ip netns`/iptables shell
#      scripts, which is neither our process's memory nor quick under valgrind.
#   3. Prints one line per binary (clean / NOT CLEAN with valgrind's summary)
#      and a closing verdict; exit 0 when every binary is clean.
#
# "Possibly lost" and "still reachable" blocks are reported but do not fail
# the run: Rust's test harness and std keep a few process-lifetime
# allocations (thread-locals of threads still parked at exit, the output
# capture) that valgrind classes that way. Definite and indirect leaks, and
# any memory error (invalid read/write, uninitialised use), fail it.
#
# Usage: scripts/leakcheck.sh [FILTER...]   (FILTERs go to every test binary)
#        LEAKCHECK_TIMEOUT=secs per binary (default 900)
# Needs valgrind (installed with apt-get when missing and we are root).
set -u
cd "$(dirname "$0")/.." || exit 1

if ! command -v valgrind >/dev/null 2>&1; then
	if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "# installing valgrind (apt-get)" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 ||
			{ apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1; }
	fi
	command -v valgrind >/dev/null 2>&1 || { echo "leakcheck: valgrind is missing (apt-get install valgrind)"; exit 1; }
fi
command -v python3 >/dev/null 2>&1 || { echo "leakcheck: python3 is needed to read cargo's JSON"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/egressd-leakcheck.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "# building the test binaries (cargo test --no-run)" >&2
if ! cargo test --no-run --message-format=json >"$tmp/build.json" 2>"$tmp/build.err"; then
	echo "leakcheck: cargo test --no-run failed:"
	tail -n 20 "$tmp/build.err"
	exit 1
fi
# Every test executable of this package (unit tests of lib and bin, tests/*.rs).
python3 - "$tmp/build.json" "$PWD/Cargo.toml" >"$tmp/bins" <<-'EOF'
	import json, os, sys
	seen = set()
	for line in open(sys.argv[1]):
	    try:
	        m = json.loads(line)
	    except ValueError:
	        continue
	    if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test"):
	        continue
	    exe = m.get("executable")
	    if exe and exe not in seen and os.path.realpath(m.get("manifest_path", "")) == os.path.realpath(sys.argv[2]):
	        seen.add(exe)
	        print(exe)
	EOF
if [ ! -s "$tmp/bins" ]; then
	echo "leakcheck: found no test binaries in cargo's output"
	exit 1
fi

supp=$tmp/rust.supp
# Nothing to suppress so far; the file is here so a known false positive can
# be added with a comment saying why.
: >"$supp"

bad=0
n=0
while read -r bin; do
	n=$((n + 1))
	name=$(basename "$bin")
	log=$tmp/$name.vg
	t0=$(date +%s)
	timeout -k 10 "${LEAKCHECK_TIMEOUT:-900}" valgrind --quiet --leak-check=full \
		--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
		--error-exitcode=99 --track-origins=no --fair-sched=yes --suppressions="$supp" \
		--log-file="$log" "$bin" --test-threads=1 --skip netns "$@" >"$tmp/$name.out" 2>&1
	rc=$?
	dt=$(($(date +%s) - t0))
	tests=$(grep -E '^test result:' "$tmp/$name.out" | tail -n 1)
	if [ "$rc" -eq 0 ]; then
		echo "clean: $name ($dt s; ${tests:-no test summary})"
	else
		bad=$((bad + 1))
		case $rc in
		99) why="valgrind found errors or leaks" ;;
		124 | 137) why="timed out after ${LEAKCHECK_TIMEOUT:-900} s" ;;
		*) why="the tests failed (exit $rc): $(grep -E '^(test result|failures:|    [a-z_:]+$)' "$tmp/$name.out" | head -n 5 | tr '\n' ' ')" ;;
		esac
		echo "NOT CLEAN: $name ($dt s): $why"
		grep -E 'definitely lost|indirectly lost|Invalid|uninitialised|ERROR SUMMARY' "$log" | head -n 10 | sed 's/^/#   /'
		sed -n '1,60p' "$log" | sed 's/^/#   /'
	fi
done <"$tmp/bins"

if [ "$bad" -eq 0 ]; then
	echo "leakcheck: clean ($n test binaries under valgrind --leak-check=full, no definite/indirect leaks, no memory errors)"
	exit 0
fi
echo "leakcheck: NOT clean ($bad of $n test binaries)"
exit 1
