#!/usr/bin/env bash
# netns-tests/release.sh — the release tarball (scripts/release.sh) on a
# minimal root: an empty directory with busybox-static and its applet links,
# no libc, nothing else. The tarball is unpacked and checked there, and
# egressd runs there through chroot (inside a network namespace of this run,
# so nothing it could touch is the host's).
#
# The tarball: $EG_RELEASE_TARBALL if set, else scripts/release.sh builds
# one into this run's temp dir.
#
# Checks (one PASS/FAIL line each; 9 on every path, plan_checks):
#   1  the tarball's sha256 matches its .sha256 file; it holds exactly egressd,
#      egressd.service, egressd.example.ron, grafana-dashboard.json, README.md,
#      SHA256SUMS; `sha256sum -c SHA256SUMS` (busybox, in the chroot) passes
#   2  control: the root has no libc, so the glibc build of egressd cannot
#      start there
#   3  `egressd --version` in the chroot: "egressd VERSION (COMMIT)", COMMIT =
#      this checkout's `git rev-parse --short HEAD`
#   4  `egressd check --config egressd.example.ron` in the chroot: exit 0,
#      names both tunnels
#   5  `egressd rules --config egressd.example.ron` (iptables) in the chroot:
#      exit 0, rules scoped to br-+, TPROXY
#   6  the same with --backend nft
#   7  control: a broken config -> exit 1 with file:line:column
#   8  `egressd rules` with no interfaces named needs `ip` (iproute2) to find
#      them: in the chroot it exits 1 and says so (the example names its
#      interfaces for that reason)
#   9  usage errors exit 2 (no command; an unknown flag)
#
# Usage: sudo netns-tests/release.sh (EG_KEEP_TMP=1 keeps the root).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 9

require_root_and_tools chroot tar gzip sha256sum busybox readelf
eg_init
T0=$(date +%s)

# ---- the tarball
if [ -n "${EG_RELEASE_TARBALL:-}" ]; then
	TARBALL=$EG_RELEASE_TARBALL
else
	log "building the release (scripts/release.sh)"
	OUT="$EG_TMP/dist" bash "$EG_REPO/scripts/release.sh" >"$EG_TMP/release.out" 2>&1 ||
		die "scripts/release.sh failed: $(tail -n 5 "$EG_TMP/release.out" | tr '\n' ' ')"
	TARBALL=""
	for f in "$EG_TMP"/dist/egressd-*-x86_64-linux-musl.tar.gz; do
		[ -f "$f" ] && TARBALL=$f && break
	done
fi
[ -f "$TARBALL" ] || die "no release tarball ($TARBALL)"
NAME=$(basename "$TARBALL" .tar.gz)
VERSION=${NAME#egressd-}
VERSION=${VERSION%-x86_64-linux-musl}

# ---- the minimal root: busybox-static and its applets, nothing else
BB=$(command -v busybox)
readelf -lW "$BB" | grep -q 'Requesting program interpreter' && die "$BB is not static (install busybox-static)"
ROOT=$EG_TMP/root
mkdir -p "$ROOT/bin" "$ROOT/tmp" "$ROOT/opt"
cp "$BB" "$ROOT/bin/busybox"
for a in $("$ROOT/bin/busybox" --list); do
	[ "$a" = busybox ] || ln -s busybox "$ROOT/bin/$a"
done
cp "$TARBALL" "$ROOT/tmp/"
NS=$(ns_name rel)
ns_add "$NS"
# inroot CMD... — CMD in the chroot (in this run's namespace), PATH=/bin.
CHROOT=$(command -v chroot)
inroot() { ip netns exec "$NS" env -i PATH=/bin "$CHROOT" "$ROOT" "$@"; }
inroot sh -c "cd /opt && gzip -dc /tmp/$NAME.tar.gz | tar xf -" >"$EG_TMP/untar.out" 2>&1 ||
	die "unpacking in the chroot failed: $(cat "$EG_TMP/untar.out")"
D=/opt/$NAME

# ------------------------------------------------------------------ 1 contents and sums
want_sum=""
[ -f "$TARBALL.sha256" ] && want_sum=$(cut -d' ' -f1 "$TARBALL.sha256")
got_sum=$(sha256sum "$TARBALL" | cut -d' ' -f1)
files=$(cd "$ROOT$D" && find . -mindepth 1 -maxdepth 1 -printf '%f\n' | LC_ALL=C sort | tr '\n' ' ')
want_files="99-egressd-bridge.conf README.md SHA256SUMS egressd egressd.example.ron egressd.service grafana-dashboard.json "
sums=$(inroot sh -c "cd $D && sha256sum -c SHA256SUMS" 2>&1)
sums_rc=$?
if [ "$got_sum" = "$want_sum" ] && [ "$files" = "$want_files" ] && [ "$sums_rc" -eq 0 ]; then
	pass "1 $NAME.tar.gz ($(stat -c %s "$TARBALL") bytes): sha256 matches, holds $files, SHA256SUMS verify in the chroot"
else
	fail "1 the tarball" "sha256 $got_sum vs '$want_sum'; files '$files' (want '$want_files'); sha256sum -c: $(printf '%s' "$sums" | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 2 control: no libc
GLIBC_BIN=${EGRESSD:-$EG_REPO/target/release/egressd}
if [ -x "$GLIBC_BIN" ] && readelf -lW "$GLIBC_BIN" | grep -q 'Requesting program interpreter'; then
	cp "$GLIBC_BIN" "$ROOT/tmp/egressd-glibc"
	out=$(inroot /tmp/egressd-glibc --version 2>&1)
	rc=$?
	if [ "$rc" -ne 0 ] && [ -z "$(ls -d "$ROOT"/lib* "$ROOT"/usr 2>/dev/null)" ]; then
		pass "2 control: the root has no libc: the glibc build cannot start there (exit $rc: $(printf '%s' "$out" | head -n 1))"
	else
		fail "2 control: the glibc build must not start in the minimal root" "exit $rc: $out"
	fi
	rm -f "$ROOT/tmp/egressd-glibc"
else
	fail "2 control: no dynamically linked egressd to try" "$GLIBC_BIN is missing or static (cargo build --release)"
fi

# ------------------------------------------------------------------ 3 --version
out=$(inroot "$D/egressd" --version 2>&1)
rc=$?
commit=$(git -C "$EG_REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$rc" -eq 0 ] && [ "$out" = "egressd $VERSION ($commit)" ]; then
	pass "3 egressd --version in the chroot: $out"
else
	fail "3 egressd --version" "exit $rc: '$out', want 'egressd $VERSION ($commit)' (a tarball of another commit? set EG_RELEASE_TARBALL or rebuild)"
fi

# ------------------------------------------------------------------ 4 check
out=$(inroot "$D/egressd" check --config "$D/egressd.example.ron" 2>&1)
rc=$?
if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep -q '"\?hk' && printf '%s' "$out" | grep -q '"\?sg'; then
	pass "4 egressd check --config egressd.example.ron in the chroot: exit 0 ($(printf '%s' "$out" | head -n 1))"
else
	fail "4 egressd check on the example" "exit $rc: $(printf '%s' "$out" | head -n 8 | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 5-6 rules
out=$(inroot "$D/egressd" rules --config "$D/egressd.example.ron" 2>&1)
rc=$?
if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep -q -- '-i br-+' && printf '%s' "$out" | grep -q TPROXY; then
	pass "5 egressd rules (iptables) in the chroot: exit 0, $(printf '%s\n' "$out" | grep -c -- '-i br-+') lines scoped to br-+, TPROXY"
else
	fail "5 egressd rules (iptables) on the example" "exit $rc: $(printf '%s' "$out" | head -n 5 | tr '\n' ' ')"
fi
out=$(inroot "$D/egressd" rules --backend nft --config "$D/egressd.example.ron" 2>&1)
rc=$?
if [ "$rc" -eq 0 ] && printf '%s' "$out" | grep -q 'br-\*' && printf '%s' "$out" | grep -q 'tproxy'; then
	pass "6 egressd rules --backend nft in the chroot: exit 0, scoped to br-*, tproxy"
else
	fail "6 egressd rules --backend nft on the example" "exit $rc: $(printf '%s' "$out" | head -n 5 | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 7 broken config
printf '(\n    listen: ["10.8.0.1:10900"],\n    tunnels: { "a": Socks5(server: "nonsense") },\n    routes: [],\n)\n' >"$ROOT/tmp/bad.ron"
out=$(inroot "$D/egressd" check --config /tmp/bad.ron 2>&1)
rc=$?
if [ "$rc" -eq 1 ] && printf '%s' "$out" | grep -q '/tmp/bad.ron:[0-9]*:[0-9]*'; then
	pass "7 control: a broken config in the chroot: exit 1, $(printf '%s' "$out" | head -n 1)"
else
	fail "7 control: a broken config must exit 1 naming file:line:column" "exit $rc: $(printf '%s' "$out" | head -n 3 | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 8 rules without named interfaces
sed -e '/interfaces: \["br-+"\],/d' "$ROOT$D/egressd.example.ron" >"$ROOT/tmp/noif.ron"
out=$(inroot "$D/egressd" rules --config /tmp/noif.ron 2>&1)
rc=$?
if grep -q 'br-+' "$ROOT/tmp/noif.ron"; then
	fail "8 rules without named interfaces" "could not remove the interfaces line from the example"
elif [ "$rc" -eq 1 ] && printf '%s' "$out" | grep -q 'ip -o addr show'; then
	pass "8 egressd rules with no interfaces named needs iproute2 to find them: exit 1, $(printf '%s' "$out" | head -n 1)"
else
	fail "8 egressd rules with no interfaces named, no ip binary" "exit $rc: $(printf '%s' "$out" | head -n 3 | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 9 usage
inroot "$D/egressd" >/dev/null 2>&1
rc1=$?
inroot "$D/egressd" --bogus >/dev/null 2>&1
rc2=$?
if [ "$rc1" -eq 2 ] && [ "$rc2" -eq 2 ]; then
	pass "9 usage errors exit 2 in the chroot (no command, an unknown flag)"
else
	fail "9 usage errors must exit 2" "no command: $rc1, --bogus: $rc2"
fi

log "release.sh took $(($(date +%s) - T0)) s"
summary
