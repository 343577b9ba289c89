#!/usr/bin/env bash
# netns-tests/doctor.sh — `egressd doctor` names what is broken, in network namespaces.
#
#  c0..c3 10.8.0.1x fd08::1x ─ br0 ─ gw: egressd 10.8.0.1:10900 [fd08::1]:10900
#                                     │  (rules applied: iptables, then nft)
#                                     ├─ exit0 100.64.0.2:1080 microsocks (TCP only)
#                                     ├─ exit1 100.64.1.2:1080 danted (TCP + UDP)
#                                     └─ exit2 100.64.2.2:1080 danted (TCP + UDP)
#
# doctor runs in gw (as an operator would on the host) against the live setup.
# Checks (one PASS/FAIL line each):
#   1  the good setup: doctor exits 0, no FAIL line; every tunnel probed ok
#      (exit0: UDP off; exit1: UDP ASSOCIATE accepted)
#   2  the article's trap: bridge-nf-call-iptables=1 in gw (only there) → exit 1
#      and a FAIL line naming net.bridge.bridge-nf-call-iptables with the
#      sysctl fix; the same for bridge-nf-call-ip6tables; back to 0 → exit 0
#   3  a deleted `ip rule fwmark` (v4) → FAIL `ip rule v4`; running the fix
#      doctor prints → exit 0 again. Same for the `local default dev lo` route.
#   4  a deleted UDP TPROXY jump (v4, mangle PREROUTING) and a deleted
#      TPROXY rule (v6, EGRESSD_UDP) → FAIL `udp TPROXY v4/v6` naming them;
#      TCP REDIRECT still ok; rules re-applied → exit 0
#   5  nft backend: iptables rules removed, `rules --backend nft` applied →
#      exit 0, checks say nft; its tproxy chain flushed → FAIL udp TPROXY
#      with the `--backend nft` fix
#   6  exit0 (microsocks, no UDP ASSOCIATE) configured with `udp: true` →
#      FAIL `tunnel exit0` suggesting `udp: false`; danted's tunnels stay ok
#   7  egressd stopped → FAIL `listener ...`: not running
#
# 14 check lines on every path (plan_checks; without br_netfilter the 3
# bridge checks are skips); egressd starting and its rules applying are
# preconditions (the suite stops), not checks.
#
# Usage: sudo netns-tests/doctor.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
plan_checks 14

require_root_and_tools nft iptables ip6tables iptables-save ip6tables-save microsocks danted python3 ss timeout ps
eg_init
T0=$(date +%s)

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"

# doctor CONF — run `egressd doctor` in gw; output in $DOC, exit code in $DOC_RC.
DOC_N=0
doctor() {
	DOC_N=$((DOC_N + 1))
	DOC=$EG_TMP/doctor-$DOC_N.out
	timeout -k 5 60 ip netns exec "$NS_GW" "$(egressd_bin)" doctor --config "$1" >"$DOC" 2>&1
	DOC_RC=$?
}
# doc_has REGEX — a line of the last doctor output matches (extended regex).
doc_has() { grep -Eq -- "$1" "$DOC"; }
# doc_fix NAME — the fix command of the last output's FAIL line for check NAME.
doc_fix() { grep -E "^FAIL $1 " "$DOC" | head -n 1 | sed -n 's/.*; fix: //p'; }
# doc_show — the last output, for a failure's details (to stderr).
doc_show() { sed 's/^/#   /' "$DOC" >&2; }
# doc_fails — the FAIL lines of the last output, on one line.
doc_fails() { grep '^FAIL' "$DOC" | cut -c1-160 | tr '\n' '|'; }

bridge_sysctl() { nsx "$NS_GW" sysctl -qw "net.bridge.bridge-nf-call-$1=$2" >/dev/null; }

topo_up
topo_start_services
CONF=$EG_TMP/egressd.ron
topo_write_config "$CONF"
# The fix commands doctor prints name the config as given: keep it a plain path.

if ! egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1; then
	die "egressd rules | sh: $(tail -n 3 "$EG_TMP/rules.out" | tr '\n' ' ')"
fi
EGRESSD_LOG=$EG_TMP/egressd.log
if ! egressd_start --config "$CONF"; then
	die "egressd run: did not listen on 10.8.0.1:$LISTEN_PORT and [fd08::1]:$LISTEN_PORT within 15 s"
fi

# ------------------------------------------------------------------ 1 good setup
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ] && ! doc_has '^FAIL'; then
	pass "1 good setup: doctor exits 0 with no FAIL ($(tail -n 1 "$DOC"))"
else
	fail "1 good setup: doctor should pass" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
if doc_has '^ok   tunnel exit0 .*UDP off' && doc_has '^ok   tunnel exit1 .*UDP ASSOCIATE accepted' &&
	doc_has '^ok   udp TPROXY v4 +iptables' && doc_has '^ok   ip rule v6 '; then
	pass "1 doctor probed the tunnels (exit0 UDP off, exit1 UDP ASSOCIATE accepted) and read the iptables rules"
else
	fail "1 doctor should report each tunnel and the rules" "$(tr '\n' '|' <"$DOC" | cut -c1-400)"
fi

# ------------------------------------------------------------------ 2 bridge trap
if ! nsx "$NS_GW" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
	skip_n 3 "2 bridge trap" "br_netfilter is not loaded on this kernel (no bridge-nf-call-iptables in gw)"
else
	for t in iptables ip6tables; do
		bridge_sysctl "$t" 1
		doctor "$CONF"
		fix=$(doc_fix "bridge-nf-call-$t")
		if [ "$DOC_RC" -eq 1 ] && doc_has "^FAIL bridge-nf-call-$t .*net\.bridge\.bridge-nf-call-$t = 1.*UdpNoPorts" &&
			[ "${fix%% *}" = sysctl ] && [[ "$fix" == *"net.bridge.bridge-nf-call-$t=0"* ]]; then
			pass "2 bridge-nf-call-$t=1 in gw: doctor exits 1 and names the trap (fix: ${fix%%   *})"
		else
			fail "2 bridge-nf-call-$t=1 in gw should be a FAIL naming it" "exit $DOC_RC: $(doc_fails)"
			doc_show
		fi
		bridge_sysctl "$t" 0
	done
	doctor "$CONF"
	if [ "$DOC_RC" -eq 0 ] && doc_has '^ok   bridge-nf-call-iptables .*= 0 \(10\.8\.0\.1 is on bridge br0\)'; then
		pass "2 control: back to 0, doctor passes and sees 10.8.0.1 on bridge br0"
	else
		fail "2 control: with the sysctls at 0 doctor should pass" "exit $DOC_RC: $(doc_fails)"
	fi
fi

# ------------------------------------------------------------------ 3 ip rule / route
# apply_fix NAME — run the fix doctor printed for NAME inside gw.
apply_fix() {
	local fix
	fix=$(doc_fix "$1")
	[ -n "$fix" ] || return 1
	nsx "$NS_GW" sh -c "${fix%%   *}"
}
nsx "$NS_GW" ip rule del fwmark "$LISTEN_PORT/$LISTEN_PORT" lookup "$LISTEN_PORT"
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL ip rule v4 .*no rule sends fwmark 0x2a94/0x2a94' &&
	[ "$(doc_fix 'ip rule v4')" = "ip rule add fwmark 10900/10900 lookup 10900" ] && ! doc_has '^FAIL ip rule v6'; then
	pass "3 deleted ip rule: FAIL ip rule v4 with the fix 'ip rule add fwmark 10900/10900 lookup 10900'"
else
	fail "3 a deleted ip rule should be named" "exit $DOC_RC: $(doc_fails)"
fi
apply_fix 'ip rule v4'
nsx "$NS_GW" ip route del local default dev lo table "$LISTEN_PORT"
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^ok   ip rule v4 ' && doc_has '^FAIL local route v4 .*table 10900'; then
	pass "3 the printed fix restored the ip rule; a deleted local route is named: $(doc_fix 'local route v4')"
else
	fail "3 ip rule fix / deleted local route" "exit $DOC_RC: $(doc_fails)"
fi
apply_fix 'local route v4'
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ]; then
	pass "3 control: after the printed fixes doctor passes again"
else
	fail "3 control: the printed fixes should make doctor pass" "exit $DOC_RC: $(doc_fails)"
fi

# ------------------------------------------------------------------ 4 UDP TPROXY rules
nsx "$NS_GW" iptables -w -t mangle -D PREROUTING -s 10.8.0.0/24 -p udp -m addrtype ! --dst-type LOCAL -j EGRESSD_UDP
nsx "$NS_GW" ip6tables -w -t mangle -D EGRESSD_UDP -p udp -j TPROXY --on-port "$LISTEN_PORT" --on-ip fd08::1 \
	--tproxy-mark "$LISTEN_PORT/$LISTEN_PORT"
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] &&
	doc_has '^FAIL udp TPROXY v4 .*no mangle PREROUTING rule sends UDP from 10\.8\.0\.0/24 to TPROXY' &&
	doc_has '^FAIL udp TPROXY v6 .*mangle EGRESSD_UDP .*has no final .*-j TPROXY' &&
	doc_has '^ok   tcp REDIRECT v4 ' && [[ "$(doc_fix 'udp TPROXY v4')" == "egressd rules --config "*" | sh -e" ]]; then
	pass "4 deleted UDP TPROXY rules: FAIL udp TPROXY v4 (the PREROUTING jump) and v6 (EGRESSD_UDP's TPROXY), TCP still ok"
else
	fail "4 deleted UDP TPROXY rules should be named" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ]; then
	pass "4 control: rules re-applied, doctor passes"
else
	fail "4 control: re-applied rules should pass" "exit $DOC_RC: $(doc_fails)"
fi

# ------------------------------------------------------------------ 5 nft backend
egressd_rules_apply --config "$CONF" --delete >"$EG_TMP/rules.out" 2>&1
egressd_rules_apply --config "$CONF" --backend nft >"$EG_TMP/rules.out" 2>&1
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ] && doc_has '^ok   udp TPROXY v6 +nft: inet egressd' && doc_has '^ok   kill switch v4 +nft:'; then
	pass "5 nft backend: doctor passes and reads table inet egressd"
else
	fail "5 nft backend should pass" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
nsx "$NS_GW" nft flush chain inet egressd tproxy_prerouting
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL udp TPROXY v4 .*no nft prerouting rule' &&
	[[ "$(doc_fix 'udp TPROXY v4')" == *"--backend nft | sh -e" ]]; then
	pass "5 nft tproxy chain flushed: FAIL udp TPROXY with the fix '$(doc_fix 'udp TPROXY v4')'"
else
	fail "5 a flushed nft tproxy chain should be named" "exit $DOC_RC: $(doc_fails)"
fi
egressd_rules_apply --config "$CONF" --backend nft --delete >"$EG_TMP/rules.out" 2>&1
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1

# ------------------------------------------------------------------ 6 SOCKS without UDP
UDPCONF=$EG_TMP/egressd-udp.ron
sed 's/"exit0": Socks5(server: "100.64.0.2:1080", udp: false)/"exit0": Socks5(server: "100.64.0.2:1080", udp: true)/' \
	"$CONF" >"$UDPCONF"
if ! grep -q '"exit0": Socks5(server: "100.64.0.2:1080", udp: true)' "$UDPCONF"; then
	fail "6 config with exit0 udp: true" "topology's exit0 line changed; cannot write the config"
else
	doctor "$UDPCONF"
	if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL tunnel exit0 .*UDP ASSOCIATE' && [[ "$(doc_fix 'tunnel exit0')" == *'udp: false'* ]] &&
		doc_has '^ok   tunnel exit1 .*UDP ASSOCIATE accepted'; then
		pass "6 microsocks with udp: true: FAIL tunnel exit0 suggesting udp: false; danted's exit1 ok"
	else
		fail "6 microsocks with udp: true should be a FAIL suggesting udp: false" "exit $DOC_RC: $(doc_fails)"
		doc_show
	fi
fi

# ------------------------------------------------------------------ 7 egressd not running
egressd_stop
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL listener 10\.8\.0\.1:10900 .*not running' && doc_has '^FAIL listener \[fd08::1\]:10900 '; then
	pass "7 egressd stopped: FAIL listener 10.8.0.1:10900 and [fd08::1]:10900 (not running)"
else
	fail "7 a stopped egressd should be named" "exit $DOC_RC: $(doc_fails)"
fi

# One broken setup's report, for the log.
log "doctor output (egressd stopped):"
doc_show
log "doctor.sh took $(($(date +%s) - T0)) s (logs in $EG_TMP)"
summary
