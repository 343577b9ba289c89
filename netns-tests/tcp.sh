#!/usr/bin/env bash
# netns-tests/tcp.sh — egressd's TCP path, end to end, in network namespaces.
#
#  c0 10.8.0.10 fd08::10 ─┐                      ┌─ exit0 (microsocks) ─┐ 198.51.100.1  2001:db8:100::1
#  c1 10.8.0.11 fd08::11 ─┤  gw: br0 10.8.0.1    ├─ exit1 (danted)    ─┤ 198.51.100.2  2001:db8:100::2
#  c2 10.8.0.12 fd08::12 ─┼─ egressd :10900 ─────┴─ exit2 (danted)    ─┤ 198.51.100.3  2001:db8:100::3
#  c3 10.8.0.13 fd08::13 ─┘  (c3: no route)                            ├─ inet: 203.0.113.10
#                            uplink 198.51.100.200 (MASQUERADE) ───────┘        2001:db8:203::10
#
# Checks (one PASS/FAIL line each; see topology.sh for the addresses):
#   0  control: before egressd, c0 leaks out of gw's uplink (198.51.100.200)
#      and the leak detector in inet counts it, and c3's ping (v4, v6) gets a
#      reply (so 5's "ping unanswered" can fail); afterwards c0 no longer leaks
#   1  c0/c1/c2 each leave via their own exit (the target sees .1/.2/.3)
#   2  50 MB up and 50 MB down per container arrive intact (sha256 both ends)
#   3  half-close passes through egressd in both directions (through the
#      danted exits: microsocks ends both directions on the first EOF, so no
#      proxy in front of it could pass a half-close):
#      - the client ends first (c1 v4, c2 v6): after its shutdown(SHUT_WR)
#        the full 2 MB echo still arrives (the echo only starts at EOF, so it
#        also shows the EOF reached the target);
#      - the target ends first (c1 v4, tools/halfclose_tool.py on port 9010):
#        the client reads "bye" and the target's EOF, and only then sends
#        2 MB, which the target receives whole.
#      A relay that closes both ways on the first EOF fails all three.
#   4  1000 concurrent flows from c0 (microsocks exit) all complete
#   5  c3 (no route) gets a reset, and nothing at all reaches inet from it
#      (TCP, UDP, ICMP; v4 and v6): the pings were sent and went unanswered
#      (a ping that could not be sent is a failure, not "dropped")
#   6  the exit's SOCKS server dies mid-transfer: the client's flow ends
#      within 2 s; after a restart new flows work (danted and microsocks)
#   7  a direct connection to egressd's own listener is closed, no data,
#      and nothing goes upstream (loop guard); control: the same client
#      gets data from a real service, and that flow does reach the exit
#   8  IPv6: c0/c1/c2 over fd08:: leave via their exit's v6 address
#   9  `egressd rules` applied twice changes nothing (idempotent)
#  10  `egressd rules --delete` restores the state from before the rules,
#      and c0 then leaks again (control)
#  11  TCP by TPROXY (`intercept: (tcp: Tproxy)`), same daemon: c0..c2 v4+v6
#      leave via their exits, a 10 MB upload is intact, c3 gets a reset
#
# 36 check lines on every path (plan_checks). egressd starting and its rules
# applying are preconditions (the suite stops), not checks.
#
# Usage: sudo netns-tests/tcp.sh     (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
plan_checks 36

require_root_and_tools nft iptables ip6tables curl microsocks danted python3 ss timeout ps
eg_init
# Connections to the exits are counted here: no warm pools (pools.sh tests them).
SOCKS_OPTS="warm: 0, warm_udp: 0, "
T0=$(date +%s)

# snap_rules — what `egressd rules` may touch in gw: iptables rules and
# user chains (table-qualified; empty built-in tables, which iptables-nft
# leaves behind, and counters ignored), policy rules, non-kernel routes.
snap_rules() {
	local t
	{
		for t in iptables-save ip6tables-save; do
			nsx "$NS_GW" "$t" | awk -v fam="$t" '
				/^\*/ { table = substr($0, 2); next }
				/^:/ { split($1, c, ":"); if (c[2] !~ /^(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING)$/) print fam, table, "chain", c[2]; next }
				/^-A/ { print fam, table, $0 }'
		done
		nsx "$NS_GW" ip rule
		nsx "$NS_GW" ip -6 rule
		nsx "$NS_GW" ip route show table all | grep -v 'proto kernel'
		nsx "$NS_GW" ip -6 route show table all | grep -v 'proto kernel'
	} 2>&1
}

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"

topo_up
topo_start_services
# The target that ends first (check 3): tools/halfclose_tool.py in inet.
HC_PORT=9010
eg_spawn "$NS_INET" "$EG_TMP/halfclose-serve.log" "$(python_bin)" "$EG_TOOLS/halfclose_tool.py" serve \
	"$TARGET4" "$TARGET6" --port "$HC_PORT" --log "$EG_TMP/halfclose.log" --ready "$EG_TMP/halfclose.ready"
wait_until 15 test -e "$EG_TMP/halfclose.ready" ||
	die "halfclose_tool.py serve did not start: $(tail -n 5 "$EG_TMP/halfclose-serve.log")"
CONF=$EG_TMP/egressd.ron
topo_write_config "$CONF" "$EG_TMP/egressd.sock"

# ------------------------------------------------------------------ 0 control
leak0=$(leak_count)
seen4=$(curl_whoami "${NS_C[0]}")
seen6=$(curl_whoami "${NS_C[0]}" -6)
ping4=$(ping_result "${NS_C[3]}" "$TARGET4" 1)
ping6=$(ping_result "${NS_C[3]}" "$TARGET6" 1)
leak1=$(leak_count)
if [ "$seen4" = "$GW_UPLINK4" ] && [ "$seen6" = "$GW_UPLINK6" ] && [ "$leak1" -gt "$leak0" ] &&
	[ "$ping4" = reply ] && [ "$ping6" = reply ]; then
	pass "0a control: without egressd c0 leaks as $seen4 / $seen6, c3's pings are answered, the leak detector counts it ($((leak1 - leak0)) packets)"
else
	fail "0a control: without egressd c0 should leak via the uplink" \
		"saw v4='$seen4' v6='$seen6', c3 ping v4 '$ping4' v6 '$ping6', detector delta $((leak1 - leak0))"
fi

# ------------------------------------------------------------------ egressd up
snap_rules >"$EG_TMP/rules.pristine"
egressd_up_or_exit "$CONF"

seen=$(curl_whoami "${NS_C[0]}")
if [ "$seen" != "$GW_UPLINK4" ] && [ "$seen" = "$(exit_egress4 0)" ]; then
	pass "0b with egressd c0 no longer leaks (target sees $seen)"
else
	fail "0b with egressd c0 must not leak" "target saw '$seen'"
fi

# ------------------------------------------------------------------ 1 per-container exit (v4)
for i in 0 1 2; do
	want=$(exit_egress4 "$i")
	seen=$(curl_whoami "${NS_C[i]}")
	if [ "$seen" = "$want" ]; then
		pass "1 c$i TCP leaves via exit$i (target sees $seen)"
	else
		fail "1 c$i TCP leaves via exit$i" "target saw '$seen', want $want"
	fi
done

# ------------------------------------------------------------------ 8 IPv6
for i in 0 1 2; do
	want=$(exit_egress6 "$i")
	seen=$(curl_whoami "${NS_C[i]}" -6)
	if [ "$seen" = "$want" ]; then
		pass "8 c$i IPv6 TCP leaves via exit$i (target sees $seen)"
	else
		fail "8 c$i IPv6 TCP leaves via exit$i" "target saw '$seen', want $want"
	fi
done

# ------------------------------------------------------------------ 2 bulk transfers
BULK=$((50 * 1000 * 1000))
for i in 0 1 2; do
	out=$(egtool "${NS_C[i]}" upload "$TARGET4" 9006 "$BULK" 2>&1)
	case $out in
	ok*) pass "2 c$i 50 MB upload arrives intact through exit$i" ;;
	*) fail "2 c$i 50 MB upload through exit$i" "$out" ;;
	esac
	out=$(egtool "${NS_C[i]}" download "$TARGET4" 9002 "$BULK" 2>&1)
	case $out in
	ok*) pass "2 c$i 50 MB download arrives intact through exit$i" ;;
	*) fail "2 c$i 50 MB download through exit$i" "$out" ;;
	esac
done
out=$(egtool "${NS_C[0]}" upload "$TARGET6" 9006 $((10 * 1000 * 1000)) 2>&1)
case $out in
ok*) pass "2 c0 10 MB IPv6 upload arrives intact" ;;
*) fail "2 c0 10 MB IPv6 upload" "$out" ;;
esac
out=$(egtool "${NS_C[0]}" download "$TARGET6" 9002 $((10 * 1000 * 1000)) 2>&1)
case $out in
ok*) pass "2 c0 10 MB IPv6 download arrives intact" ;;
*) fail "2 c0 10 MB IPv6 download" "$out" ;;
esac

# ------------------------------------------------------------------ 3 half-close
# Through the danted exits (they keep a half-close): microsocks itself
# closes both directions when either side sends EOF, so c0 (exit0) cannot
# show it. The client ends first: c1 over IPv4, c2 over IPv6.
client_ends_first() { # I HOST FAMILY
	local out
	out=$(egtool "${NS_C[$1]}" halfclose "$2" 9003 $((2 * 1000 * 1000)) 2>&1)
	case $out in
	ok*) pass "3 c$1 half-close ($3), the client ends first: full 2 MB echo after its shutdown(SHUT_WR) (exit$1)" ;;
	*) fail "3 c$1 half-close ($3) through exit$1, the client ends first" "$out" ;;
	esac
}
client_ends_first 1 "$TARGET4" v4
client_ends_first 2 "$TARGET6" v6
# The target ends first: the download direction is over, the upload must
# still carry 2 MB (sent only after the client saw the target's EOF).
out=$(pytool halfclose_tool "${NS_C[1]}" client "$TARGET4" "$HC_PORT" $((2 * 1000 * 1000)) --log "$EG_TMP/halfclose.log" 2>&1)
case $out in
ok*) pass "3 c1 half-close (v4), the target ends first: $out (exit1)" ;;
*) fail "3 c1 half-close (v4) through exit1, the target ends first" "$out" ;;
esac

# ------------------------------------------------------------------ 4 1000 concurrent
out=$(egtool "${NS_C[0]}" many "$TARGET4" 9004 1000 "$(exit_egress4 0)" 2>&1)
case $out in
ok*) pass "4 1000 concurrent flows from c0 via exit0: ${out#ok }" ;;
*) fail "4 1000 concurrent flows from c0 via exit0" "$out" ;;
esac

# ------------------------------------------------------------------ 5 no route: reset, no leak
leak0=$(leak_count)
r4=$(egtool "${NS_C[3]}" expect-reset "$TARGET4" 80 2>&1)
r6=$(egtool "${NS_C[3]}" expect-reset "$TARGET6" 80 2>&1)
egtool "${NS_C[3]}" udp-send "$TARGET4" 9999 3 >/dev/null 2>&1
egtool "${NS_C[3]}" udp-send "$PUBDNS4" 53 3 >/dev/null 2>&1
egtool "${NS_C[3]}" udp-send "$TARGET6" 9999 3 >/dev/null 2>&1
ping4=$(ping_result "${NS_C[3]}" "$TARGET4" 2)
ping6=$(ping_result "${NS_C[3]}" "$TARGET6" 2)
leak1=$(leak_count)
for pair in "v4:$r4" "v6:$r6"; do
	fam=${pair%%:*}
	res=${pair#*:}
	case $res in
	reset* | refused*) pass "5 c3 (no route) TCP $fam gets a reset: $res" ;;
	*) fail "5 c3 (no route) TCP $fam must get a reset" "got: $res" ;;
	esac
done
if [ "$leak1" -eq "$leak0" ] && [ "$ping4" = timeout ] && [ "$ping6" = timeout ]; then
	pass "5 c3 (no route): nothing reaches inet (TCP, UDP, ICMP sent and unanswered; v4+v6: 0 packets)"
else
	fail "5 c3 (no route) must not leak" \
		"leak detector counted $((leak1 - leak0)) packets; ping v4 '$ping4' v6 '$ping6' (want timeout: sent, unanswered)"
fi

# ------------------------------------------------------------------ 7 loop guard
# A flow whose original destination is egressd's own listener must be closed
# by egressd itself, without going upstream: count connections made to c0's
# exit. Control: the same client, to a real service, gets data, and that
# flow does open a connection to the exit.
syn0=$(socks_syn_count 0)
ctl=$(egtool "${NS_C[0]}" expect-reset "$TARGET4" 80 2>&1)
syn1=$(socks_syn_count 0)
case $ctl in
data:*HTTP*) [ "$syn1" -gt "$syn0" ] && ctl_ok=1 || ctl_ok=0 ;;
*) ctl_ok=0 ;;
esac
for dst in 10.8.0.1 fd08::1; do
	if [ "$ctl_ok" -ne 1 ]; then
		fail "7 loop guard ($dst)" "control failed: a real flow got '$ctl' and opened $((syn1 - syn0)) connections to exit0"
		continue
	fi
	syn0=$(socks_syn_count 0)
	res=$(egtool "${NS_C[0]}" expect-reset "$dst" "$LISTEN_PORT" 2>&1)
	syn1=$(socks_syn_count 0)
	case $res in
	eof-nodata* | reset*)
		if [ "$syn1" -eq "$syn0" ]; then
			pass "7 loop guard: direct connection to [$dst]:$LISTEN_PORT closed with no data ($res), nothing sent upstream"
		else
			fail "7 loop guard: [$dst]:$LISTEN_PORT" "closed ($res) but only after opening $((syn1 - syn0)) connection(s) to exit0"
		fi
		;;
	*) fail "7 loop guard: direct connection to [$dst]:$LISTEN_PORT must be closed" "got: $res" ;;
	esac
done

# ------------------------------------------------------------------ 9 rules idempotent
snap_rules >"$EG_TMP/rules.before"
if egressd_rules_apply --config "$CONF" >"$EG_TMP/rules2.out" 2>&1; then
	snap_rules >"$EG_TMP/rules.after"
	if diff -u "$EG_TMP/rules.before" "$EG_TMP/rules.after" >"$EG_TMP/rules.diff"; then
		pass "9 egressd rules applied a second time changes nothing"
	else
		fail "9 egressd rules is not idempotent" "$(grep '^[-+][^-+]' "$EG_TMP/rules.diff" | head -n 4 | tr '\n' ' ')"
	fi
else
	fail "9 egressd rules applied a second time" "$(tail -n 3 "$EG_TMP/rules2.out" | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 6 exit dies mid-transfer
# exit1 (danted) with c1, then exit0 (microsocks) with c0.
for i in 1 0; do
	name="6 exit$i SOCKS server killed mid-transfer"
	ready=$EG_TMP/trickle$i.ready
	res=$EG_TMP/trickle$i.out
	rm -f "$ready" "$res"
	egtool_bg "${NS_C[i]}" "$res" trickle "$TARGET4" 9005 "$ready"
	cpid=$EG_LAST_PID
	if ! wait_until 10 test -s "$ready"; then
		fail "$name" "the trickle never started flowing: $(cat "$res")"
		fail "6 exit$i restarted" "not run: the kill before it could not run"
		stop_pid "$cpid"
		continue
	fi
	if ! pid_alive "$cpid"; then
		fail "$name" "control: the flow ended before the kill: $(cat "$res")"
		fail "6 exit$i restarted" "not run: the kill before it could not run"
		continue
	fi
	t_kill=$(now_ns)
	socks_kill "$i"
	if wait_until 5 test -s "$res"; then
		read -r _ t_end reason nbytes <"$res" || true
		dt_ms=$(((t_end - t_kill) / 1000000))
		case $reason in
		eof | reset)
			if [ "$dt_ms" -le 2000 ]; then
				pass "$name: the client saw $reason after ${dt_ms} ms ($nbytes bytes before)"
			else
				fail "$name" "the client saw $reason only after ${dt_ms} ms (> 2 s)"
			fi
			;;
		*) fail "$name" "the client's flow ended with '$reason' after ${dt_ms} ms" ;;
		esac
	else
		fail "$name" "the client's flow did not end within 5 s of the kill"
	fi
	stop_pid "$cpid"
	socks_start "$i"
	want=$(exit_egress4 "$i")
	seen=$(curl_whoami "${NS_C[i]}")
	if [ "$seen" = "$want" ]; then
		pass "6 exit$i restarted: new connections through it work (target sees $seen)"
	else
		fail "6 exit$i restarted: new connections through it" "target saw '$seen', want $want"
	fi
done

# ------------------------------------------------------------------ 10 rules --delete
# Everything `rules` added goes away (the state equals the one before), and
# then c0 leaks again through the uplink (so the delete really removed the
# intercept and the kill switch: a control for the whole run).
if "$(egressd_bin)" rules --config "$CONF" --delete >"$EG_TMP/rules-delete.sh" 2>"$EG_TMP/rules-delete.err" &&
	nsx "$NS_GW" sh -e "$EG_TMP/rules-delete.sh" >"$EG_TMP/rules-delete.out" 2>&1; then
	snap_rules >"$EG_TMP/rules.deleted"
	seen=$(curl_whoami "${NS_C[0]}")
	if ! diff -u "$EG_TMP/rules.pristine" "$EG_TMP/rules.deleted" >"$EG_TMP/rules-delete.diff"; then
		fail "10 egressd rules --delete restores the state before the rules" \
			"$(grep '^[-+][^-+]' "$EG_TMP/rules-delete.diff" | head -n 4 | tr '\n' ' ')"
	elif [ "$seen" != "$GW_UPLINK4" ]; then
		fail "10 after rules --delete c0 should leak again (control)" "target saw '$seen'"
	else
		pass "10 egressd rules --delete restores the state before the rules (c0 leaks again as $seen)"
	fi
else
	fail "10 egressd rules --delete | sh" "$(cat "$EG_TMP/rules-delete.err" "$EG_TMP/rules-delete.out" 2>/dev/null | tail -n 3 | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 11 TCP by TPROXY
# The same listener serves TPROXY'd TCP (told apart per connection): switch
# the intercept to `tcp: Tproxy`, keep the daemon running.
CONF_TP=$EG_TMP/egressd-tproxy.ron
sed 's/intercept: (tcp: Redirect)/intercept: (tcp: Tproxy)/' "$CONF" >"$CONF_TP"
if ! grep -q 'tcp: Tproxy' "$CONF_TP"; then
	fail_n 5 "11 TPROXY config" "could not derive it from $CONF"
elif ! egressd_rules_apply --config "$CONF_TP" >"$EG_TMP/rules-tp.out" 2>&1; then
	fail_n 5 "11 egressd rules (tcp: Tproxy) | sh" "$(tail -n 3 "$EG_TMP/rules-tp.out" | tr '\n' ' ')"
else
	for i in 0 1 2; do
		want4=$(exit_egress4 "$i")
		want6=$(exit_egress6 "$i")
		seen4=$(curl_whoami "${NS_C[i]}")
		seen6=$(curl_whoami "${NS_C[i]}" -6)
		if [ "$seen4" = "$want4" ] && [ "$seen6" = "$want6" ]; then
			pass "11 TPROXY: c$i TCP leaves via exit$i (target sees $seen4, $seen6)"
		else
			fail "11 TPROXY: c$i TCP leaves via exit$i" "target saw '$seen4' / '$seen6', want $want4 / $want6"
		fi
	done
	out=$(egtool "${NS_C[2]}" upload "$TARGET4" 9006 $((10 * 1000 * 1000)) 2>&1)
	case $out in
	ok*) pass "11 TPROXY: c2 10 MB upload arrives intact" ;;
	*) fail "11 TPROXY: c2 10 MB upload" "$out" ;;
	esac
	leak0=$(leak_count)
	r4=$(egtool "${NS_C[3]}" expect-reset "$TARGET4" 80 2>&1)
	leak1=$(leak_count)
	case $r4 in
	reset* | refused*)
		if [ "$leak1" -eq "$leak0" ]; then
			pass "11 TPROXY: c3 (no route) gets a reset ($r4), nothing reaches inet"
		else
			fail "11 TPROXY: c3 (no route)" "reset, but the leak detector counted $((leak1 - leak0)) packets"
		fi
		;;
	*) fail "11 TPROXY: c3 (no route) must get a reset" "got: $r4" ;;
	esac
fi

if pid_gone "$EGRESSD_PID"; then
	fail_unplanned "egressd still running at the end" "it exited: $(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
fi
log "tcp.sh took $(($(date +%s) - T0)) s"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
summary
