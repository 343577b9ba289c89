#!/usr/bin/env bash
# netns-tests/udp.sh — egressd's UDP path (TPROXY), end to end, in network namespaces.
#
#  c0 10.8.0.10 fd08::10 ─┐                      ┌─ exit0 (microsocks, TCP only) ─┐ 198.51.100.1  2001:db8:100::1
#  c1 10.8.0.11 fd08::11 ─┤  gw: br0 10.8.0.1    ├─ exit1 (danted)              ─┤ 198.51.100.2  2001:db8:100::2
#  c2 10.8.0.12 fd08::12 ─┼─ egressd :10900 ─────┼─ exit2 (danted)              ─┤ 198.51.100.3  2001:db8:100::3
#  c3 10.8.0.13 fd08::13 ─┤  (c3: no route)      └─ exit3 (udptool.py socks5,   ─┤ 198.51.100.4  2001:db8:100::4
#  c4 10.8.0.14 fd08::14 ─┘  UDP: mangle TPROXY      full-cone UDP relay)        │
#                            + fwmark → local table                              │
#                            uplink 198.51.100.200 (MASQUERADE) ─────────────────┴─ inet:
#      who-am-i UDP 203.0.113.10:5000 [2001:db8:203::10]:5000 ("<peer ip:port> ...")
#      DNS 192.0.2.53:53 [2001:db8:203::53]:53, UDP+TCP (TXT whoami.test = client ip)
#      full-cone probe: A 203.0.113.10:5002 has B 203.0.113.11:5001 write to A's peer
#
# Checks (one PASS/FAIL line each; see topology.sh for the addresses):
#   0  control: before egressd, c1's UDP leaks out of gw's uplink (the service
#      sees 198.51.100.200, the leak detector counts it)
#   1  c1/c2 UDP leave via their own exit (danted): the service sees .2/.3
#   2  the reply comes from exactly where the container sent (recvfrom)
#   3  dig TXT whoami.test @192.0.2.53 (and @2001:db8:203::53): c1/c2 get their
#      exit's address over UDP; c0 (exit0, microsocks, `udp: false`) over TCP
#      (DNS over TCP: the server must see a TCP query from 198.51.100.1)
#   4  full cone (c4 via exit3): sent to A only, B's datagram arrives from
#      203.0.113.11:5001; control: through danted (connected relay) it cannot
#   5  a session idle 45 s (> conntrack's 30 s) keeps its association (same
#      exit port) and gets its reply; control: with idle_timeout_secs 3 a
#      6 s pause gives a new association (QUICK=1 skips both)
#   6  2000 UDP sessions (2000 sockets) from c1 all get their replies
#   7  `udp: (max_sessions: 100)`: 500 sessions one after another from c4 all
#      get replies; >= 400 associations are closed at the exit (evictions)
#      and egressd counts >= 400 evictions (`egressd stats`, total and
#      exit3's; without a stats command: lines of its debug log)
#   8  (the article's bridge trap: moved to docker.sh BR1-BR5, where dockerd
#      itself has loaded br_netfilter, so its outcome does not depend on the
#      order the suites run in)
#   9  IPv6: c1/c2 over fd08:: — the service at [2001:db8:203::10]:5000 sees
#      the exit's v6 address, the reply comes from [2001:db8:203::10]:5000
#  10  c3 (no route): no reply, nothing reaches inet (leak detector), egressd
#      dropped it as unrouted
#      10b c0 (exit0, `udp: false`): non-DNS UDP is dropped the same way
#  11  datagrams straight to the listener (10.8.0.1:10900, [fd08::1]:10900,
#      not TPROXY'd): no answer, no association opened at the exit;
#      control: the same client to a real service does open one
#  12  nothing leaked out of gw's uplink during the whole run
#  13  a UDP flow that began before `egressd rules` (check 0's 5-tuple, its
#      conntrack entry still NAT'd to the uplink) goes through exit1 afterwards
#
# 26 check lines on every path (plan_checks); egressd starting and its rules
# applying are preconditions (the suite stops), not checks.
#
# Usage: sudo netns-tests/udp.sh   (QUICK=1 skips the 45 s idle check;
#        EGRESSD=path to use another binary, EG_KEEP_TMP=1 to keep logs).
# Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
plan_checks 26
# The full-cone exit (exit3) and its container (c4).
NEXITS=4
NCONT=5
QUICK=${QUICK:-0}
IDLE_WAIT=45

require_root_and_tools nft iptables ip6tables microsocks danted python3 ss timeout ps dig awk
eg_init
# Connections to the exits are counted here: no warm pools (pools.sh tests them).
SOCKS_OPTS="warm: 0, warm_udp: 0, "
T0=$(date +%s)

# field N STRING — the Nth whitespace-separated word of STRING.
field() { printf '%s\n' "$2" | awk -v n="$1" '{ print $n }'; }
# port_of "1.2.3.4:5" / "[::1]:5" -> 5 (ip_of: topology.sh)
port_of() { printf '%s\n' "${1##*:}"; }
# log_count FILE PATTERN — lines of FILE matching PATTERN (fixed string).
log_count() { grep -cF -- "$2" "$1" 2>/dev/null || true; }
# exit3_stat KEY — a counter of exit3's SOCKS server (udptool.py socks5).
exit3_stat() {
	local v
	v=$(awk -v k="$1" '{ for (i = 1; i < NF; i += 2) if ($i == k) print $(i + 1) }' "$EG_TMP/socks3.status" 2>/dev/null)
	printf '%s\n' "${v:-0}"
}
exit3_stat_ge() { [ "$(exit3_stat "$1")" -ge "$2" ]; }

# restart_egressd CONF TAG — stop egressd, start it with CONF (log egressd-TAG.log).
restart_egressd() {
	egressd_stop
	EGRESSD_LOG=$EG_TMP/egressd-$2.log
	egressd_start --config "$1"
}

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"

topo_up
topo_start_services
CONF=$EG_TMP/egressd.ron
topo_write_config "$CONF" "$EG_TMP/egressd.sock"

# ------------------------------------------------------------------ 0 control
# From a fixed local port below ip_local_port_range: no later socket of the
# tests gets it by chance, so the NAT'd conntrack entry this flow leaves
# in gw concerns check 13 only.
OLD_FLOW_PORT=30998
leak0=$(leak_count)
out=$(udptool "${NS_C[1]}" ask "$TARGET4" "$UDP_WHO_PORT" 2 1 "$OLD_FLOW_PORT")
leak1=$(leak_count)
seen=$(ip_of "$(field 4 "$out")")
if [ "$seen" = "$GW_UPLINK4" ] && [ "$leak1" -gt "$leak0" ]; then
	pass "0 control: without egressd c1's UDP leaks as $seen and the leak detector counts it ($((leak1 - leak0)) packets)"
else
	fail "0 control: without egressd c1's UDP should leak via the uplink" "got '$out', detector delta $((leak1 - leak0))"
fi

# ------------------------------------------------------------------ egressd up
EGRESSD_LOG=$EG_TMP/egressd-main.log
egressd_up_or_exit "$CONF"
LEAK_START=$(leak_count)

# ------------------------------------------------------------------ 13 a flow from before the rules
# The flow of check 0 (same 5-tuple, within conntrack's timeout) continues
# after the rules are in place: it must now go through exit1 too. Its
# conntrack entry still carries the MASQUERADE of before; TPROXY delivers
# the datagram locally and the entry's SNAT is applied at LOCAL_IN, so
# unless something removes the stale entry egressd sees 198.51.100.200.
nr0=$(log_count "$EGRESSD_LOG" "$GW_UPLINK4:")
out=$(udptool "${NS_C[1]}" ask "$TARGET4" "$UDP_WHO_PORT" 2 2 "$OLD_FLOW_PORT")
nr1=$(log_count "$EGRESSD_LOG" "$GW_UPLINK4:")
if [ "$(ip_of "$(field 4 "$out")")" = "$(exit_egress4 1)" ]; then
	pass "13 a UDP flow that began before the rules (c1:$OLD_FLOW_PORT) now leaves via exit1 (the service sees $(field 4 "$out"))"
else
	fail "13 a UDP flow that began before the rules must go through exit1 afterwards" \
		"client: $out; egressd log lines naming $GW_UPLINK4 as the source: $((nr1 - nr0)) ($(grep -F "$GW_UPLINK4:" "$EGRESSD_LOG" | tail -n 1 | cut -c1-160)) — stale conntrack NAT entry?"
fi

# 5 runs in the background while the other checks go on: one socket of c2
# asks, stays silent 45 s, asks again.
IDLE_OUT=$EG_TMP/idle.out
if [ "$QUICK" != 1 ]; then
	udptool_bg "${NS_C[2]}" "$IDLE_OUT" idle "$TARGET4" "$UDP_WHO_PORT" "$IDLE_WAIT"
	IDLE_PID=$EG_LAST_PID
	IDLE_T0=$(date +%s)
fi

# ------------------------------------------------------------------ 1, 2 per-container exit, reply source (v4)
for i in 1 2; do
	out=$(udptool "${NS_C[i]}" ask "$TARGET4" "$UDP_WHO_PORT")
	from=$(field 3 "$out")
	seen=$(field 4 "$out")
	want=$(exit_egress4 "$i")
	if [ "$(ip_of "$seen")" = "$want" ]; then
		pass "1 c$i UDP leaves via exit$i (the service sees $seen)"
	else
		fail "1 c$i UDP leaves via exit$i" "want $want, got '$out'"
	fi
	if [ "$from" = "$TARGET4:$UDP_WHO_PORT" ]; then
		pass "2 c$i: the reply comes from $from, where it sent"
	else
		fail "2 c$i: the reply must come from $TARGET4:$UDP_WHO_PORT" "got '$out'"
	fi
done

# ------------------------------------------------------------------ 9 IPv6
for i in 1 2; do
	out=$(udptool "${NS_C[i]}" ask "$TARGET6" "$UDP_WHO_PORT")
	from=$(field 3 "$out")
	seen=$(field 4 "$out")
	want=$(exit_egress6 "$i")
	if [ "$(ip_of "$seen")" = "$want" ] && [ "$from" = "[$TARGET6]:$UDP_WHO_PORT" ]; then
		pass "9 c$i IPv6 UDP leaves via exit$i (the service sees $seen), the reply comes from $from"
	else
		fail "9 c$i IPv6 UDP via exit$i" "want the service to see $want and the reply from [$TARGET6]:$UDP_WHO_PORT; got '$out'"
	fi
done

# ------------------------------------------------------------------ 3 DNS
for i in 1 2; do
	want=$(exit_egress4 "$i")
	n0=$(log_count "$EG_TMP/udpsvc.log" "dns udp $want whoami.test")
	got=$(dig_txt "${NS_C[i]}" "$PUBDNS4")
	n1=$(log_count "$EG_TMP/udpsvc.log" "dns udp $want whoami.test")
	if [ "$got" = "$want" ] && [ "$n1" -gt "$n0" ]; then
		pass "3 c$i dig TXT whoami.test @$PUBDNS4 answers $got (over UDP via exit$i)"
	else
		fail "3 c$i dig whoami.test @$PUBDNS4 via exit$i" "want $want over UDP; dig said '$got', UDP queries from $want seen: $((n1 - n0))"
	fi
done
want=$(exit_egress6 1)
got=$(dig_txt "${NS_C[1]}" "$PUBDNS6")
if [ "$got" = "$want" ]; then
	pass "3 c1 dig TXT whoami.test @$PUBDNS6 answers $got (IPv6, via exit1)"
else
	fail "3 c1 dig whoami.test @$PUBDNS6 via exit1" "want $want; dig said '$got'"
fi
# c0: exit0 is microsocks, `udp: false`: the query must go over the tunnel's TCP.
for srv in "$PUBDNS4" "$PUBDNS6"; do
	case $srv in *:*) want=$(exit_egress6 0) ;; *) want=$(exit_egress4 0) ;; esac
	n0=$(log_count "$EG_TMP/udpsvc.log" "dns tcp $want whoami.test")
	nd0=$(log_count "$EGRESSD_LOG" "carries no UDP")
	got=$(dig_txt "${NS_C[0]}" "$srv")
	n1=$(log_count "$EG_TMP/udpsvc.log" "dns tcp $want whoami.test")
	nd1=$(log_count "$EGRESSD_LOG" "carries no UDP")
	if [ "$got" = "$want" ] && [ "$n1" -gt "$n0" ]; then
		pass "3 c0 dig TXT whoami.test @$srv answers $got: DNS over TCP through exit0 (microsocks, udp: false)"
	elif [ "$nd1" -gt "$nd0" ]; then
		fail "3 c0 DNS over TCP (exit0, udp: false) @$srv" \
			"not in the daemon yet: egressd dropped the query ('tunnel carries no UDP; dropped', $((nd1 - nd0))x in its log); dig said '$got'"
	else
		fail "3 c0 DNS over TCP (exit0, udp: false) @$srv" \
			"want $want over TCP; dig said '$got', TCP queries from $want seen by the server: $((n1 - n0))"
	fi
done

# ------------------------------------------------------------------ 4 full cone
# c4 -> exit3 (udptool.py socks5: its remote-side sockets are unconnected, so
# it relays whatever arrives at the client's mapping). c4 sends only to A; A
# has B write to the address it saw. B's datagram must reach c4 from B.
a0=$(exit3_stat assoc_opened)
out=$(udptool "${NS_C[4]}" fullcone "$TARGET4" "$CONE_A_PORT" "$TARGET4B" "$CONE_B_PORT" 3)
rc=$?
a1=$(exit3_stat assoc_opened)
mapped=$(printf '%s\n' "$out" | sed -n 's/.*A saw \([^ ;]*\).*/\1/p')
if [ "$rc" -eq 0 ] && [ "$(ip_of "$mapped")" = "$(exit_egress4 3)" ] && [ "$a1" -gt "$a0" ]; then
	pass "4 full cone: c4 sent only to A, B's datagram arrived from $TARGET4B:$CONE_B_PORT (mapping $mapped at exit3): $out"
else
	fail "4 full cone via exit3" "want a datagram from $TARGET4B:$CONE_B_PORT and A to see $(exit_egress4 3); associations opened at exit3: $((a1 - a0)); client: $out"
fi
# Control: danted connects its relay socket to the target, so through exit1
# B's datagram is filtered out at the exit; A's answer still arrives.
out=$(udptool "${NS_C[1]}" fullcone "$TARGET4" "$CONE_A_PORT" "$TARGET4B" "$CONE_B_PORT" 2)
rc=$?
case $out in
*"$TARGET4:$CONE_A_PORT=A saw"*)
	if [ "$rc" -ne 0 ]; then
		pass "4 control: through exit1 (danted, connected relay socket) only A's answer arrives, not B's: $out"
	else
		fail "4 control: through danted B's datagram should be filtered at the exit" "it arrived: $out"
	fi
	;;
*) fail "4 control: through exit1 A's answer should arrive" "got: $out" ;;
esac

# ------------------------------------------------------------------ 10 no route
leak0=$(leak_count)
nr0=$(log_count "$EGRESSD_LOG" "no route for this source")
s0=$(log_count "$EG_TMP/udpsvc.log" "udp5000 ")
r4=$(udptool "${NS_C[3]}" none "$TARGET4" "$UDP_WHO_PORT" 2)
rc4=$?
r6=$(udptool "${NS_C[3]}" none "$TARGET6" "$UDP_WHO_PORT" 2)
rc6=$?
d3=$(nsx "${NS_C[3]}" timeout 10 dig +short +tries=1 +time=2 TXT whoami.test @"$PUBDNS4" 2>&1 | tail -n 1)
leak1=$(leak_count)
nr1=$(log_count "$EGRESSD_LOG" "no route for this source")
s1=$(log_count "$EG_TMP/udpsvc.log" "udp5000 ")
if [ "$rc4" -eq 0 ] && [ "$rc6" -eq 0 ] && [ "$leak1" -eq "$leak0" ] && [ "$s1" -eq "$s0" ] &&
	[ "$nr1" -ge $((nr0 + 7)) ] && ! printf '%s' "$d3" | grep -q '^"'; then
	pass "10 c3 (no route): no reply (v4, v6, DNS), nothing reached inet, egressd dropped $((nr1 - nr0)) datagrams as unrouted"
else
	fail "10 c3 (no route) UDP must be dropped by egressd" \
		"v4: $r4; v6: $r6; dig: $d3; leak detector +$((leak1 - leak0)), service saw +$((s1 - s0)), egressd 'no route' lines +$((nr1 - nr0)) (want >= 7)"
fi

# c0's tunnel has no UDP (`udp: false`): anything but DNS is dropped (fail
# closed) — no reply, nothing out of gw's uplink, nothing at the service.
leak0=$(leak_count)
nd0=$(log_count "$EGRESSD_LOG" "carries no UDP")
s0=$(log_count "$EG_TMP/udpsvc.log" "udp5000 ")
r4=$(udptool "${NS_C[0]}" none "$TARGET4" "$UDP_WHO_PORT" 2)
rc4=$?
r6=$(udptool "${NS_C[0]}" none "$TARGET6" "$UDP_WHO_PORT" 2)
rc6=$?
leak1=$(leak_count)
nd1=$(log_count "$EGRESSD_LOG" "carries no UDP")
s1=$(log_count "$EG_TMP/udpsvc.log" "udp5000 ")
if [ "$rc4" -eq 0 ] && [ "$rc6" -eq 0 ] && [ "$leak1" -eq "$leak0" ] && [ "$s1" -eq "$s0" ] && [ "$nd1" -gt "$nd0" ]; then
	pass "10b c0 (exit0, udp: false) non-DNS UDP: no reply (v4, v6), nothing reached inet, egressd dropped it ($((nd1 - nd0))x 'carries no UDP')"
else
	fail "10b c0 (exit0, udp: false) non-DNS UDP must be dropped" \
		"v4: $r4; v6: $r6; leak detector +$((leak1 - leak0)), service saw +$((s1 - s0)), egressd 'carries no UDP' lines +$((nd1 - nd0))"
fi

# ------------------------------------------------------------------ 11 straight to the listener
syn0=$(socks_syn_count 1)
ctl=$(udptool "${NS_C[1]}" ask "$TARGET4" "$UDP_WHO_PORT")
syn1=$(socks_syn_count 1)
for dst in 10.8.0.1 fd08::1; do
	if [ "$syn1" -le "$syn0" ] || [ "$(ip_of "$(field 4 "$ctl")")" != "$(exit_egress4 1)" ]; then
		fail "11 datagram straight to [$dst]:$LISTEN_PORT" "control failed: a real session got '$ctl' and opened $((syn1 - syn0)) connections to exit1"
		continue
	fi
	a0=$(socks_syn_count 1)
	l0=$(log_count "$EGRESSD_LOG" "straight to the listener")
	res=$(udptool "${NS_C[1]}" none "$dst" "$LISTEN_PORT" 2)
	rc=$?
	a1=$(socks_syn_count 1)
	l1=$(log_count "$EGRESSD_LOG" "straight to the listener")
	if [ "$rc" -eq 0 ] && [ "$a1" -eq "$a0" ] && [ "$l1" -gt "$l0" ]; then
		pass "11 datagrams straight to [$dst]:$LISTEN_PORT: no answer, nothing upstream, dropped by egressd ($((l1 - l0))x) (control: a real session opened $((syn1 - syn0)))"
	else
		fail "11 datagrams straight to [$dst]:$LISTEN_PORT" \
			"client: $res; connections to exit1 +$((a1 - a0)); egressd 'straight to the listener' lines +$((l1 - l0))"
	fi
done

# ------------------------------------------------------------------ 6 2000 sessions
out=$(udptool "${NS_C[1]}" many "$TARGET4" "$UDP_WHO_PORT" 2000 20 --want-ip "$(exit_egress4 1)")
case $out in
ok*) pass "6 2000 UDP sessions from c1 via exit1: ${out#ok }" ;;
*) fail "6 2000 UDP sessions from c1 via exit1" "$out" ;;
esac

# ------------------------------------------------------------------ 5 idle 45 s
if [ "$QUICK" = 1 ]; then
	skip_check "5 session idle ${IDLE_WAIT} s keeps its association" "QUICK=1"
else
	left=$((IDLE_WAIT + 20 - ($(date +%s) - IDLE_T0)))
	[ "$left" -lt 1 ] && left=1
	wait_until "$left" pid_gone "$IDLE_PID"
	stop_pid "$IDLE_PID"
	out=$(cat "$IDLE_OUT")
	# "first FROM SEEN second FROM SEEN"
	f1=$(field 2 "$out") s1=$(field 3 "$out") f2=$(field 5 "$out") s2=$(field 6 "$out")
	want=$(exit_egress4 2)
	if [ "$f1" = "$TARGET4:$UDP_WHO_PORT" ] && [ "$f2" = "$f1" ] && [ "$(ip_of "$s1")" = "$want" ] && [ "$s2" = "$s1" ]; then
		pass "5 c2: after ${IDLE_WAIT} s idle the reply still arrives through the same association (exit port $(port_of "$s1"))"
	else
		fail "5 c2: after ${IDLE_WAIT} s idle the same association must answer" "$out"
	fi
fi

# ------------------------------------------------------------------ 7 max_sessions 100
CONF_MAX=$EG_TMP/egressd-max.ron
topo_write_config "$CONF_MAX" "$EG_TMP/egressd.sock" 'udp: (max_sessions: 100),'
if ! restart_egressd "$CONF_MAX" max; then
	fail_n 3 "7 egressd with udp: (max_sessions: 100)" "did not start: $(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
else
	o0=$(exit3_stat assoc_opened)
	c0=$(exit3_stat assoc_closed)
	out=$(udptool "${NS_C[4]}" many "$TARGET4" "$UDP_WHO_PORT" 500 60 --sequential --want-ip "$(exit_egress4 3)")
	rc=$?
	# Evictions close the association's control connection: exit3 sees it.
	# (Its status file lags up to 0.2 s: wait for the opens too. max_sessions
	# is split across the workers, so 400 closes can come before 500 opens.)
	wait_until 5 exit3_stat_ge assoc_closed $((c0 + 400))
	wait_until 5 exit3_stat_ge assoc_opened $((o0 + 500))
	o1=$(exit3_stat assoc_opened)
	c1=$(exit3_stat assoc_closed)
	case $out in *" last=yes "*) last=1 ;; *) last=0 ;; esac
	if [ "$rc" -eq 0 ] && [ "$last" -eq 1 ]; then
		pass "7 max_sessions 100: 500 sessions from c4 one after another all answered, the 500th too: ${out#ok }"
	else
		fail "7 max_sessions 100: new sessions must keep working" "$out"
	fi
	if [ $((o1 - o0)) -ge 500 ] && [ $((c1 - c0)) -ge 400 ] && [ $((o1 - o0 - (c1 - c0))) -le 100 ]; then
		pass "7 max_sessions 100: exit3 saw $((o1 - o0)) associations opened, $((c1 - c0)) closed again (evicted), at most 100 left"
	else
		fail "7 max_sessions 100: evictions must close associations" \
			"exit3 saw $((o1 - o0)) opened, $((c1 - c0)) closed (want >= 500 opened, >= 400 closed, <= 100 left open)"
	fi
	# egressd's own count: `egressd stats --prometheus` (total and exit3's),
	# or, from a daemon without the stats command, its debug log.
	if prom=$(nsx "$NS_GW" "$(egressd_bin)" stats --socket "$EG_TMP/egressd.sock" --prometheus 2>&1); then
		evt=$(printf '%s\n' "$prom" | awk '$1 == "egressd_udp_sessions_evicted_total" { print $2 }')
		ev3=$(printf '%s\n' "$prom" | awk '$1 == "egressd_udp_sessions_evicted_total{tunnel=\"exit3\"}" { print $2 }')
		if [ "${evt:-0}" -ge 400 ] && [ "${ev3:-0}" -ge 400 ]; then
			pass "7 max_sessions 100: egressd stats counts $evt evictions ($ev3 for exit3)"
		else
			fail "7 max_sessions 100: egressd stats should count >= 400 evictions, in total and for exit3" \
				"egressd_udp_sessions_evicted_total ${evt:-missing}, {tunnel=\"exit3\"} ${ev3:-missing}"
		fi
	else
		ev=$(grep -ciE 'evict' "$EGRESSD_LOG" || true)
		if [ "$ev" -ge 400 ]; then
			pass "7 max_sessions 100: egressd logged $ev evictions (no stats command: $(printf '%s' "$prom" | head -n 1))"
		else
			fail "7 max_sessions 100: egressd should count >= 400 evictions" \
				"no stats command ($(printf '%s' "$prom" | head -n 1)) and $ev lines match 'evict' in $(basename "$EGRESSD_LOG")"
		fi
	fi
fi

# ------------------------------------------------------------------ 5 control: a short idle timeout does end the session
if [ "$QUICK" = 1 ]; then
	skip_check "5 control: idle_timeout_secs 3 ends the association" "QUICK=1"
else
	CONF_IDLE=$EG_TMP/egressd-idle.ron
	topo_write_config "$CONF_IDLE" "$EG_TMP/egressd.sock" 'udp: (idle_timeout_secs: 3),'
	if ! restart_egressd "$CONF_IDLE" idle; then
		fail "5 control: egressd with idle_timeout_secs 3" "did not start: $(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
	else
		out=$(udptool "${NS_C[2]}" idle "$TARGET4" "$UDP_WHO_PORT" 6)
		s1=$(field 3 "$out") s2=$(field 6 "$out")
		if [ "$(ip_of "$s1")" = "$(exit_egress4 2)" ] && [ "$(ip_of "$s2")" = "$(exit_egress4 2)" ] && [ "$s1" != "$s2" ]; then
			pass "5 control: with idle_timeout_secs 3, after 6 s a new association answers (exit port $(port_of "$s1") -> $(port_of "$s2"))"
		else
			fail "5 control: with idle_timeout_secs 3 the second reply must come through a new association" "$out"
		fi
	fi
fi

# ------------------------------------------------------------------ 12 no leak in the whole run
no_leak_since "$LEAK_START" 12

finish_suite udp.sh
