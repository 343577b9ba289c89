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
#      (exit0: UDP off; exit1: UDP ASSOCIATE accepted); the per-interface
#      firewall lines (tcp/udp/dns intercept, kill switch in mangle FORWARD,
#      published ports, stranger replies, forged sources, dns path naming
#      dns.upstream) are ok
#      Each SOCKS5 tunnel's line says whether pipelining works (microsocks:
#      not taken; danted: works) and what a new connection waits for.
#   2  (the article's bridge trap: moved to docker.sh BR3 and BR5, where
#      dockerd itself has loaded br_netfilter)
#   3  a deleted `ip rule fwmark` (v4) → FAIL `ip rule v4`; running the fix
#      doctor prints → exit 0 again. Same for the `local default dev lo` route.
#   4  a deleted intercept jump (v4, mangle PREROUTING) and a deleted final
#      TPROXY rule (v6, EGRESSD_TPROXY) → FAIL `udp TPROXY v4/v6 br0` and
#      `dns v4 br0`; TCP REDIRECT still ok; rules re-applied → exit 0. The
#      v4 port-53 TPROXY rule deleted → FAIL `dns v4 br0` naming the reserved
#      RETURN that now comes first (the host's resolver is private)
#   5  nft backend: iptables rules removed, `rules --backend nft` applied →
#      exit 0, checks say nft; its tproxy chain flushed → FAIL udp TPROXY
#      with the `--backend nft` fix
#   6  exit0 (microsocks, no UDP ASSOCIATE) configured with `udp: true` →
#      FAIL `tunnel exit0` suggesting `udp: false`; danted's tunnels stay ok
#   7  kill switch: the mangle FORWARD jump deleted and a Docker-style
#      `-A FORWARD -i br0 ! -o br0 -j ACCEPT` added → FAIL `kill switch v4
#      br0` naming that ACCEPT, and it is real: a ping from c3 reaches the
#      leak detector; an older egressd's filter FORWARD kill switch appended
#      behind the ACCEPT → the FAIL names both rules in order; rules re-applied
#      → ok (mangle comes first whatever filter holds) and no ping leaks
#   8  published ports: the kill switch's `--ctstate DNAT --ctdir REPLY -j
#      RETURN` deleted → FAIL `published ports v4 br0` naming the DROP; the raw
#      rpfilter jump deleted → warn `forged sources v4 br0`; rules re-applied
#      → exit 0. The previous version's exemption (`--ctdir REPLY -j RETURN`,
#      every reply) put back → FAIL `stranger replies v4 br0` naming it (a
#      container's answer to a remote that wrote first would leave natively),
#      published ports still ok; rules re-applied → the bare RETURN is gone
#      (replaced, not kept beside the new one) and doctor passes
#   9  a v4-only config (fd08::1/64 stays on br0): `ipv6` ok (only
#      kill-switched); the v6 mangle FORWARD jump deleted → FAIL `ipv6`
#  10  egressd stopped → FAIL `listener ...`: not running
#
# Usage: sudo netns-tests/doctor.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"

plan_checks 23 # before the root and tool check: a skip counts all 23
require_root_and_tools nft iptables ip6tables iptables-save ip6tables-save microsocks danted python3 ss timeout ps ping
eg_init
T0=$(date +%s)

if ! ensure_egressd; then
	fail "build" "egressd binary $(egressd_bin) missing and cargo build --release failed"
	summary
	exit 1
fi

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


topo_up
topo_start_services
CONF=$EG_TMP/egressd.ron
topo_write_config "$CONF"
# The fix commands doctor prints name the config as given: keep it a plain path.

if ! egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1; then
	fail "egressd rules | sh" "$(tail -n 3 "$EG_TMP/rules.out" | tr '\n' ' ')"
	summary
	exit 1
fi
EGRESSD_LOG=$EG_TMP/egressd.log
if ! egressd_start --config "$CONF"; then
	fail "egressd run" "did not listen on 10.8.0.1:$LISTEN_PORT and [fd08::1]:$LISTEN_PORT within 15 s"
	summary
	exit 1
fi

# ------------------------------------------------------------------ 1 good setup
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ] && ! doc_has '^FAIL'; then
	pass "1 good setup: doctor exits 0 with no FAIL ($(tail -n 1 "$DOC"))"
else
	fail "1 good setup: doctor should pass" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
if doc_has '^ok   tunnel exit0 .*UDP off.*pipelining not taken.*warm pool of 2: .*~2 round trip' &&
	doc_has '^ok   tunnel exit1 .*UDP ASSOCIATE accepted.*pipelining works.*warm pool of 2: .*~1 round trip' &&
	doc_has '^ok   udp TPROXY v4 br0 +iptables: mangle PREROUTING -> EGRESSD_TPROXY -> TPROXY 10\.8\.0\.1:10900' &&
	doc_has '^ok   ip rule v6 '; then
	pass "1 doctor probed the tunnels (exit0 UDP off, microsocks takes no pipelining; exit1 UDP ASSOCIATE accepted, danted pipelines) and read the iptables rules"
else
	fail "1 doctor should report each tunnel and the rules" "$(tr '\n' '|' <"$DOC" | cut -c1-400)"
fi
missing=""
for f in v4 v6; do
	for n in "tcp REDIRECT" "udp TPROXY" dns "kill switch" "published ports" "stranger replies" "forged sources"; do
		doc_has "^ok   $n $f br0 " || missing="$missing|$n $f"
	done
done
if [ -z "$missing" ] && doc_has '^ok   kill switch v6 br0 +iptables: ip6tables mangle FORWARD -> EGRESSD_KILL: DROP' &&
	doc_has '^ok   dns path .*dns\.upstream 192\.0\.2\.53:53' && doc_has '^ok   interfaces +br0 \(subnets: 10\.8\.0\.0/24, fd08::/64\)'; then
	pass "1 per interface and family: intercepts, kill switch (mangle FORWARD), published ports, stranger replies, forged sources ok; dns path names dns.upstream"
else
	fail "1 the firewall lines should all be ok" "missing:$missing; $(doc_fails)"
	doc_show
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

# ------------------------------------------------------------------ 4 intercept rules
TPROXY_ARGS="--on-port $LISTEN_PORT --on-ip"
nsx "$NS_GW" iptables -w -t mangle -D PREROUTING -i br0 -j EGRESSD_TPROXY
# shellcheck disable=SC2086  # TPROXY_ARGS is words
nsx "$NS_GW" ip6tables -w -t mangle -D EGRESSD_TPROXY -p udp -j TPROXY $TPROXY_ARGS fd08::1 \
	--tproxy-mark "$LISTEN_PORT/$LISTEN_PORT"
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] &&
	doc_has '^FAIL udp TPROXY v4 br0 .*is not intercepted: no prerouting rule for this interface sends it to TPROXY' &&
	doc_has '^FAIL udp TPROXY v6 br0 .*UDP to \[2001:db8:203::10\]:5000 from br0 \(fd08::/64\) is not intercepted' &&
	doc_has '^FAIL dns v4 br0 ' && doc_has '^ok   dns v6 br0 ' &&
	doc_has '^ok   tcp REDIRECT v4 br0 ' && [[ "$(doc_fix 'udp TPROXY v4 br0')" == "egressd rules --config "*" | sh -e" ]]; then
	pass "4 deleted intercept rules: FAIL udp TPROXY v4 (the PREROUTING jump, DNS too) and v6 (the final TPROXY), TCP still ok"
else
	fail "4 deleted intercept rules should be named" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1
# shellcheck disable=SC2086
nsx "$NS_GW" iptables -w -t mangle -D EGRESSD_TPROXY -p udp -m udp --dport 53 -j TPROXY $TPROXY_ARGS 10.8.0.1 \
	--tproxy-mark 0x2a94/0x2a94
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL dns v4 br0 .*UDP to .*:53 from br0 .*is not intercepted: `-A EGRESSD_TPROXY .*-j RETURN` \(mangle EGRESSD_TPROXY rule [0-9]+\) returns it first' &&
	doc_has '^ok   udp TPROXY v4 br0 '; then
	pass "4 port-53 TPROXY deleted: FAIL dns v4 br0 naming the RETURN that comes first ($(grep -o 'UDP to [^ ]*:53' "$DOC" | head -n 1))"
else
	fail "4 a missing port-53 intercept should be a dns FAIL" "exit $DOC_RC: $(doc_fails)"
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
if [ "$DOC_RC" -eq 0 ] && doc_has '^ok   udp TPROXY v6 br0 +nft: inet egressd tproxy_prerouting' &&
	doc_has '^ok   kill switch v4 br0 +nft: inet egressd kill_switch -> kill: DROP' && doc_has '^ok   forged sources v6 br0 +nft:'; then
	pass "5 nft backend: doctor passes and reads table inet egressd"
else
	fail "5 nft backend should pass" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
nsx "$NS_GW" nft flush chain inet egressd tproxy_prerouting
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL udp TPROXY v4 br0 .*no prerouting rule for this interface' &&
	[[ "$(doc_fix 'udp TPROXY v4 br0')" == *"--backend nft | sh -e" ]]; then
	pass "5 nft tproxy chain flushed: FAIL udp TPROXY with the fix '$(doc_fix 'udp TPROXY v4 br0')'"
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

# ------------------------------------------------------------------ 7 kill switch order
# ping_leaks — one ping from c3 (no route: killed, never tunnelled) to the
# target; true when the leak detector counted something.
ping_leaks() {
	local before
	before=$(leak_count)
	nsx "${NS_C[3]}" ping -c 1 -W 1 "$TARGET4" >/dev/null 2>&1
	[ "$(leak_count)" -gt "$before" ]
}
nsx "$NS_GW" iptables -w -t mangle -D FORWARD -i br0 -j EGRESSD_KILL
nsx "$NS_GW" iptables -w -A FORWARD -i br0 ! -o br0 -j ACCEPT
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] &&
	doc_has '^FAIL kill switch v4 br0 +ICMP to 203\.0\.113\.10 from br0 \(10\.8\.0\.0/24\) is accepted by `-A FORWARD -i br0 ! -o br0 -j ACCEPT` \(filter FORWARD rule 1\)' &&
	doc_has '^ok   kill switch v6 br0 ' && [[ "$(doc_fix 'kill switch v4 br0')" == "egressd rules --config "*" | sh -e" ]]; then
	pass "7 mangle FORWARD jump gone, Docker-style ACCEPT: FAIL kill switch v4 naming the ACCEPT"
else
	fail "7 a missing kill switch behind an ACCEPT should be named" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
if ping_leaks; then
	pass "7 that FAIL is real: a ping from c3 reached the leak detector"
else
	fail "7 negative control" "with the kill switch gone and the ACCEPT in place, c3's ping should leak (else the test proves nothing)"
fi
# An older egressd's kill switch: filter FORWARD, behind Docker's ACCEPT.
nsx "$NS_GW" iptables -w -N EGRESSD_OLD_KILL
nsx "$NS_GW" iptables -w -A EGRESSD_OLD_KILL -j DROP
nsx "$NS_GW" iptables -w -A FORWARD -s 10.8.0.0/24 -j EGRESSD_OLD_KILL
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] &&
	doc_has '^FAIL kill switch v4 br0 .*`-A FORWARD -i br0 ! -o br0 -j ACCEPT` \(filter FORWARD rule 1\), before the kill switch `-A FORWARD -s 10\.8\.0\.0/24 -j EGRESSD_OLD_KILL` \(filter FORWARD rule 2\)'; then
	pass "7 old filter FORWARD kill switch behind the ACCEPT: the FAIL names both rules in order (1, then 2)"
else
	fail "7 the order of ACCEPT and old kill switch should be named" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ] && doc_has '^ok   kill switch v4 br0 +iptables: mangle FORWARD -> EGRESSD_KILL: DROP' && ! ping_leaks; then
	pass "7 control: rules re-applied, the mangle kill switch comes first despite the ACCEPT; no ping leaks"
else
	fail "7 control: re-applied rules should pass and hold" "exit $DOC_RC: $(doc_fails)"
fi
nsx "$NS_GW" iptables -w -D FORWARD -s 10.8.0.0/24 -j EGRESSD_OLD_KILL
nsx "$NS_GW" iptables -w -F EGRESSD_OLD_KILL
nsx "$NS_GW" iptables -w -X EGRESSD_OLD_KILL
nsx "$NS_GW" iptables -w -D FORWARD -i br0 ! -o br0 -j ACCEPT

# ------------------------------------------------------------------ 8 published ports, forged sources
nsx "$NS_GW" iptables -w -t mangle -D EGRESSD_KILL -m conntrack --ctstate DNAT --ctdir REPLY -j RETURN
nsx "$NS_GW" iptables -w -t raw -D PREROUTING -i br0 -j EGRESSD_RPF
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] &&
	doc_has '^FAIL published ports v4 br0 .*\(TCP\) .*is dropped by `-A EGRESSD_KILL -j DROP` .*published ports break.*REPLY' &&
	doc_has '^ok   published ports v6 br0 ' && doc_has '^warn forged sources v4 br0 .*CAP_NET_RAW' &&
	doc_has '^ok   forged sources v6 br0 '; then
	pass "8 REPLY+DNAT RETURN deleted: FAIL published ports v4 (docker -p); rpfilter jump deleted: warn forged sources v4"
else
	fail "8 published ports / forged sources should be named" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ] && ! doc_has '^warn forged'; then
	pass "8 control: rules re-applied, doctor passes with no forged-source warning"
else
	fail "8 control: re-applied rules should pass" "exit $DOC_RC: $(doc_fails)"
fi

# The previous version's exemption: every reply, an answer to a stranger's
# datagram (conntrack REPLY without DNAT) included.
nsx "$NS_GW" iptables -w -t mangle -R EGRESSD_KILL 1 -m conntrack --ctdir REPLY -j RETURN
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] &&
	doc_has '^FAIL stranger replies v4 br0 .* from br0 .*a reply without DNAT.* passes the kill switch: `-A EGRESSD_KILL -m conntrack --ctdir REPLY -j RETURN` \(mangle EGRESSD_KILL rule 1\) lets it out' &&
	doc_has '^ok   stranger replies v6 br0 ' && doc_has '^ok   published ports v4 br0 ' &&
	[[ "$(doc_fix 'stranger replies v4 br0')" == "egressd rules --config "*" | sh -e" ]]; then
	pass "8 the previous version's bare REPLY RETURN: FAIL stranger replies v4 naming it, with the rules fix; published ports ok"
else
	fail "8 a kill switch that lets every reply out should FAIL stranger replies v4" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1
doctor "$CONF"
if [ "$DOC_RC" -eq 0 ] && ! nsx "$NS_GW" iptables-save -t mangle | grep -q -- '-m conntrack --ctdir REPLY -j RETURN$' &&
	[ "$(nsx "$NS_GW" iptables-save -t mangle | grep -c -- '--ctstate DNAT --ctdir REPLY -j RETURN')" -eq 2 ]; then
	pass "8 control: rules re-applied replace the bare REPLY RETURN (none left beside the new one); doctor passes"
else
	fail "8 control: rules re-applied should replace the bare REPLY RETURN" "exit $DOC_RC: $(doc_fails) $(nsx "$NS_GW" iptables-save -t mangle | grep -- '--ctdir REPLY' | tr '\n' '|')"
fi

# ------------------------------------------------------------------ 9 IPv6 with a v4-only config
V4CONF=$EG_TMP/egressd-v4.ron
sed 's/listen: \["10.8.0.1:10900", "\[fd08::1\]:10900"\]/listen: ["10.8.0.1:10900"]/' "$CONF" >"$V4CONF"
doctor "$V4CONF"
if grep -q 'listen: \["10.8.0.1:10900"\]' "$V4CONF" && [ "$DOC_RC" -eq 0 ] &&
	doc_has '^ok   ipv6 +br0 fd08::1/64 but egressd has no IPv6 listen address: .*only dropped by the IPv6 kill switch' &&
	! doc_has 'udp TPROXY v6'; then
	pass "9 v4-only config, fd08::1/64 on br0: ipv6 ok, only kill-switched"
else
	fail "9 a v4-only config should report br0's IPv6" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
nsx "$NS_GW" ip6tables -w -t mangle -D FORWARD -i br0 -j EGRESSD_KILL
doctor "$V4CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL ipv6 .*it leaves natively' && doc_has '^FAIL kill switch v6 br0 '; then
	pass "9 v6 kill switch gone: FAIL ipv6 (leaves natively) and kill switch v6"
else
	fail "9 a v6 interface without intercept or kill switch should FAIL" "exit $DOC_RC: $(doc_fails)"
	doc_show
fi
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1

# ------------------------------------------------------------------ 10 egressd not running
egressd_stop
doctor "$CONF"
if [ "$DOC_RC" -eq 1 ] && doc_has '^FAIL listener 10\.8\.0\.1:10900 .*not running' && doc_has '^FAIL listener \[fd08::1\]:10900 '; then
	pass "10 egressd stopped: FAIL listener 10.8.0.1:10900 and [fd08::1]:10900 (not running)"
else
	fail "10 a stopped egressd should be named" "exit $DOC_RC: $(doc_fails)"
fi

# One broken setup's report, for the log.
log "doctor output (egressd stopped):"
doc_show
log "doctor.sh took $(($(date +%s) - T0)) s (logs in $EG_TMP)"
summary
