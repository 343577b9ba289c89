#!/usr/bin/env bash
# netns-tests/hostile.sh — untrusted containers and hostile remotes (issue 21):
# no packet of a container leaves around its tunnel or by another
# container's tunnel, whatever the container or a remote does (SPEC §4).
#
#  c0 10.8.0.10 fd08::10 ─┐ route: cone        ┌─ exit0 100.64.0.2:1081 "forge": hostile_tool forge-relay
#  c1 10.8.0.11 fd08::11 ─┤ route: direct      ├─ exit1, exit2 danted "exit1", "exit2" (198.51.100.2, .3)
#  c2 10.8.0.12 fd08::12 ─┼─ gw: br0 ──────────┼─ exit3 udptool socks5, FULL CONE "cone" (198.51.100.4,
#  c3 10.8.0.13 fd08::13 ─┤ route: exit1,      │  2001:db8:100::4)
#  c4 10.8.0.14 fd08::14 ─┘ moved by route set ├─ dlink 100.64.9.1/24 2001:db8:100:9::1/64 ── inet
#                            egressd           │  routed, no NAT: the link of "direct" (Direct(interface:
#  c2 -> exit2, c4 -> forge: Docker labels     │  "dlink")), so its traffic is not on gw's uplink
#  (tools/fake_docker.py on a Unix socket;     └─ uplink 198.51.100.200 2001:db8:100::c8 (MASQUERADE) ── inet
#  the config routes only c0, c1, c3)
#
#  gw nat PREROUTING -i uplink, as `docker run -p`: :8080/tcp -> c2:80, :8053/udp -> c2:5353 (v4, v6).
#  inet: who-am-i R1 203.0.113.10:5000 / [2001:db8:203::10]:5000 (HTTP on :80, hold on :9004), the
#  stranger B 203.0.113.11 / 2001:db8:203::11 port 6001, routes 10.8.0.0/24 and fd08::/64 via gw's
#  uplink (B2 only), and the leak detector (topology.sh: whatever arrives from gw's uplink address
#  or from a container address).
#
# Checks (one PASS/FAIL line each):
#  A1-A4 answers to a stranger leave only through the tunnel: c sends one
#        datagram to R1 through a full-cone path (A1 SOCKS v4, A2 SOCKS v6 via
#        exit3; A3 Direct v4, A4 Direct v6 via dlink), learning its mapping; B,
#        which c never addressed, writes to that mapping; egressd delivers it to
#        c from B's address; c answers B 5 times. At B: 5 answers, all from the
#        exit's address, none from anywhere else (10.8.0.x, gw's uplink), and
#        the leak detector counted 0. (Before issue 21 the kill switch's
#        `--ctdir REPLY` exemption let them out natively: conntrack had seen
#        B -> c first.)
#  A5-A6 controls: the same attacks (A5 SOCKS v4, A6 Direct v6) with a hole
#        for exactly this flow (c -> B ACCEPTed in gw's mangle PREROUTING and
#        FORWARD, before egressd's rules: what the old reply exemption did for
#        it) — B gets native answers and the leak detector moves.
#  B1    a published port still answers: from inet, gw:8080/tcp and gw:8053/udp
#        (v4 and v6) reach c2's service through the DNAT and its replies come
#        back (from gw's address, un-DNATed). Its control is B2's probe.
#  B2    a connection that enters a container without DNAT (inet routes
#        10.8.0.0/24 and fd08::/64 via gw) gets no native answer: the probes
#        reach c2 (its SYN counter and its service's log move) but no TCP
#        connection is established and no UDP answer comes from c2's or gw's
#        address; the leak detector counted 0. (An answer through c2's tunnel
#        would be allowed; egressd's rules drop or tunnel it.) Control: B1,
#        the same service and prober through the DNAT, answers. (Before
#        issue 21 both answered natively, from 10.8.0.12 / fd08::12.)
#  C1    a relay naming a label-routed neighbour as a reply's source: c4's
#        exit (the forge relay; c4 routed there by its Docker label) answers
#        each datagram with forged sources c2 (label-routed), c3 (config-
#        routed) and 203.0.113.99 / 2001:db8:203::99 (no container), then
#        genuinely. c4 must not receive the one naming c2, and
#        udp_drop_reply_source for c4's source moves by 2 per family (c2's
#        and c3's), v4 and v6. (Before issue 21 the reply-source check knew
#        config routes and intercept.sources only: c2's was delivered.)
#  C2    control: the same run delivers the forged non-container source (c4's
#        collector sees forged datagrams) and drops and counts the config-
#        routed neighbour c3's (the counter moves).
#  D1    the reset race: c3's route alternates exit1/exit2 by `route set
#        --reset-flows` (as many switches as fit in RACE_SECS, 40 s, at most
#        400, 50-250 ms apart) while c3 runs flows back to back (4 threads
#        each of: fresh TCP who-am-i connections; held TCP connections whose
#        "bye", 0-300 ms later, is answered only while the flow lives; UDP
#        sockets asking the who-am-i 1-4 times). Every flow that started
#        after a `route set` returned and ended before the next began must
#        leave by that switch's exit (the who-am-i answer names it), and
#        every held flow answering a "bye" sent after a switch returned must
#        be on that switch's exit (the flows open at a switch are reset; one
#        routed under the old route that starts after the reset survives it):
#        0 violations, no `route set` error, >= 100 decisive flows. (Before
#        issue 21: 6-17 violations a run, UDP sessions and connections
#        whose first packet came while `route set` ran, started on the old
#        exit after the reset and still used it 20-200 ms later.)
#  D2    control: the detector sees each switch move the traffic: >= 20
#        windows with decisive flows, >= 90 % of them show the new exit, and
#        both exits are seen.
#
# Usage: sudo netns-tests/hostile.sh   (EGRESSD=path to another binary,
#        RACE_SECS=N, EG_KEEP_TMP=1 keeps logs). Needs root; skips otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 12
# shellcheck source=topology.sh
. "$HERE/topology.sh"
NEXITS=4
NCONT=5

require_root_and_tools nft iptables ip6tables microsocks danted python3 ss timeout awk
eg_init
T0=$(date +%s)
ensure_egressd || die "cannot build egressd"

RACE_SECS=${RACE_SECS:-40}
B4=$TARGET4B
B6=2001:db8:203::11
B_PORT=6001
DL4=100.64.9.1
DL6=2001:db8:100:9::1
SOCK=$EG_TMP/egressd.sock
CONF=$EG_TMP/egressd.ron
DSOCK=$EG_TMP/docker.sock
DSTATE=$EG_TMP/docker.state

ht() { pytool hostile_tool "$@"; }
ht_bg() { pytool_bg hostile_tool "$@"; }
ctl() { nsx "$NS_GW" timeout 10 "$(egressd_bin)" "$@" --socket "$SOCK"; }
prom() { ctl stats --prometheus; }
# metric PROM NAME [LABEL] — a value from `egressd stats --prometheus`, 0 if absent.
metric() {
	printf '%s\n' "$1" | awk -v m="$2" -v l="${3:-}" '
		{ k = $1 } l == "" && k == m { v = $2 } l != "" && k == m "{" l "}" { v = $2 }
		END { print (v == "" ? 0 : v) }'
}
field() { printf '%s\n' "$2" | awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }'; }
oneline() { tr '\n' ' ' | cut -c1-400; }

# ================================================================== topology
topo_up
topo_start_services
nsx "$NS_INET" ip addr add "$B6/128" dev lo nodad
# The Direct tunnel's own link: gw dlink <-> inet, routed (no NAT: a full
# cone needs the mapping to take anyone's datagrams). Only sockets bound to
# dlink (SO_BINDTODEVICE) use it: `oif dlink` policy rules.
ip -n "$NS_GW" link add dlink type veth peer name to-dlink netns "$NS_INET"
ip -n "$NS_GW" addr add "$DL4/24" dev dlink
ip -n "$NS_GW" addr add "$DL6/64" dev dlink nodad
ip -n "$NS_GW" link set dlink up
ip -n "$NS_INET" addr add 100.64.9.2/24 dev to-dlink
ip -n "$NS_INET" addr add 2001:db8:100:9::2/64 dev to-dlink nodad
ip -n "$NS_INET" link set to-dlink up
nsx "$NS_GW" ip rule add oif dlink lookup 60 priority 160
nsx "$NS_GW" ip -6 rule add oif dlink lookup 60 priority 160
nsx "$NS_GW" ip route add default via 100.64.9.2 dev dlink table 60
nsx "$NS_GW" ip -6 route add default via 2001:db8:100:9::2 dev dlink table 60
# B2: inet reaches the containers directly, through gw's uplink.
nsx "$NS_INET" ip route add 10.8.0.0/24 via "$GW_UPLINK4"
nsx "$NS_INET" ip -6 route add fd08::/64 via "$GW_UPLINK6"
# B1: published ports, as `docker run -p` makes them.
for t in iptables ip6tables; do
	if [ "$t" = iptables ]; then c2a=10.8.0.12; else c2a="[fd08::12]"; fi
	nsx "$NS_GW" "$t" -w -t nat -A PREROUTING -i uplink -p tcp --dport 8080 -j DNAT --to-destination "$c2a:80"
	nsx "$NS_GW" "$t" -w -t nat -A PREROUTING -i uplink -p udp --dport 8053 -j DNAT --to-destination "$c2a:5353"
done
nsx "${NS_C[2]}" nft -f - <<-'EOF' || die "c2: nft -f could not create the SYN counter"
table inet egin {
	counter syn80 { }
	chain in {
		type filter hook input priority 0; policy accept;
		tcp dport 80 tcp flags & (syn | ack) == syn counter name syn80
	}
}
EOF
syn80() { nft_counter "${NS_C[2]}" egin syn80; }

# c2's service (B), the forging relay (C), the fake Docker (C).
eg_spawn "${NS_C[2]}" "$EG_TMP/svc.log" "$(python_bin)" -u "$EG_TOOLS/hostile_tool.py" svc c2 \
	10.8.0.12 fd08::12 --tcp 80 --udp 5353 --ready "$EG_TMP/svc.ready"
eg_spawn "${NS_EXIT[0]}" "$EG_TMP/forge.log" "$(python_bin)" -u "$EG_TOOLS/hostile_tool.py" forge-relay \
	100.64.0.2 1081 --forge 10.8.0.12,10.8.0.13,203.0.113.99 \
	--forge6 fd08::12,fd08::13,2001:db8:203::99 --ready "$EG_TMP/forge.ready"
cat >"$DSTATE" <<EOF
c2 10.8.0.12 fd08::12 egressd.tunnel=exit2
c4 10.8.0.14 fd08::14 egressd.tunnel=forge
EOF
eg_spawn "$NS_GW" "$EG_TMP/docker.log" "$(python_bin)" -u "$EG_TOOLS/fake_docker.py" serve \
	"$DSOCK" "$DSTATE" --ready "$EG_TMP/docker.ready"
for r in svc forge docker; do
	wait_until 15 test -e "$EG_TMP/$r.ready" || die "$r did not start: $(tail -n 3 "$EG_TMP/$r.log" | oneline)"
done

cat >"$CONF" <<EOF
(
    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
    tunnels: {
        "exit1": Socks5(server: "100.64.1.2:1080"),
        "exit2": Socks5(server: "100.64.2.2:1080"),
        "cone": Socks5(server: "100.64.3.2:1080"),
        "forge": Socks5(server: "100.64.0.2:1081"),
        "direct": Direct(interface: "dlink"),
    },
    // c2 and c4 are routed by their Docker labels only.
    routes: [
        (source: "10.8.0.10", tunnel: "cone"), (source: "fd08::10", tunnel: "cone"),
        (source: "10.8.0.11", tunnel: "direct"), (source: "fd08::11", tunnel: "direct"),
        (source: "10.8.0.13", tunnel: "exit1"), (source: "fd08::13", tunnel: "exit1"),
    ],
    intercept: (tcp: Redirect),
    dns: (upstream: "192.0.2.53:53"),
    docker: (socket: "$DSOCK", label: "egressd.tunnel"),
    control: (socket: "$SOCK"),
)
EOF
RUST_LOG=info egressd_up_or_exit "$CONF"
labels_live() { [ "$(metric "$(prom)" egressd_docker_label_routes)" = 4 ]; }
wait_until 15 labels_live ||
	fail_unplanned "label routes" "egressd has not taken c2's and c4's label routes from fake_docker.py within 15 s: $(ctl route list 2>&1 | oneline)"

# ================================================================== A
# a_attack TAG NS R1 B WANT — c in NS talks to R1, the stranger B writes to
# its mapping, c answers B 5 times. Sets A_OUT (the stranger's line), A_PEER
# (c's), A_LEAK (packets the leak detector counted meanwhile).
a_attack() {
	local tag=$1 ns=$2 r1=$3 b=$4 want=$5 l0 pid
	rm -f "$EG_TMP/$tag.map"
	l0=$(leak_count)
	ht_bg "$ns" "$EG_TMP/$tag.peer" peer "$r1" "$UDP_WHO_PORT" 5 "$EG_TMP/$tag.map" 10
	pid=$EG_LAST_PID
	if wait_until 10 test -s "$EG_TMP/$tag.map"; then
		A_OUT=$(ht "$NS_INET" stranger "$b" "$B_PORT" "$EG_TMP/$tag.map" "$want" 5 3)
	else
		A_OUT="(c learnt no mapping from R1)"
	fi
	wait_until 15 pid_gone "$pid"
	stop_pid "$pid"
	A_PEER=$(oneline <"$EG_TMP/$tag.peer")
	A_LEAK=$(($(leak_count) - l0))
}

# a_check ID WHAT NS R1 B WANT
a_check() {
	local id=$1 what=$2
	a_attack "$id" "$3" "$4" "$5" "$6"
	if [[ "$A_OUT" == "got 5 want 5 other 0 "* ]] && [ "$A_LEAK" -eq 0 ]; then
		pass "$id $what: the stranger's 5 answers all came from the exit ($6), none natively; leak detector 0 ($A_PEER)"
	else
		fail "$id $what: the stranger's answers must all come from the exit ($6), the leak detector must stay 0" \
			"stranger: $A_OUT; leak detector: $A_LEAK; c: $A_PEER"
	fi
}

a_check A1 "SOCKS full cone v4" "${NS_C[0]}" "$TARGET4" "$B4" "$(exit_egress4 3)"
a_check A2 "SOCKS full cone v6" "${NS_C[0]}" "$TARGET6" "$B6" "$(exit_egress6 3)"
a_check A3 "Direct (own link) v4" "${NS_C[1]}" "$TARGET4" "$B4" "$DL4"
a_check A4 "Direct (own link) v6" "${NS_C[1]}" "$TARGET6" "$B6" "$DL6"

# hole TOOL -I|-D SRC DST — ACCEPT SRC -> DST (UDP) ahead of egressd's
# intercept (mangle PREROUTING) and kill switch (mangle FORWARD).
hole() {
	local t=$1 op=$2 spec="-i br0 -s $3 -d $4 -p udp -j ACCEPT" hook
	for hook in PREROUTING FORWARD; do
		if [ "$op" = -I ]; then
			# shellcheck disable=SC2086  # spec is words
			nsx "$NS_GW" "$t" -w -t mangle -I "$hook" 1 $spec || return 1
		else
			# shellcheck disable=SC2086
			nsx "$NS_GW" "$t" -w -t mangle -D "$hook" $spec
		fi
	done
}
# a_control ID WHAT TOOL NS CONT R1 B WANT
a_control() {
	local id=$1 what=$2 t=$3 ns=$4 cont=$5 r1=$6 b=$7 want=$8 other
	if ! hole "$t" -I "$cont" "$b"; then
		hole "$t" -D "$cont" "$b" 2>/dev/null
		fail "$id control: $what" "could not insert the hole ($t) in gw"
		return
	fi
	a_attack "$id" "$ns" "$r1" "$b" "$want"
	hole "$t" -D "$cont" "$b"
	other=$(field other "$A_OUT")
	if [[ "$A_PEER" == *"answered 5"* ]] && [ "${other:-0}" -ge 1 ] && [ "$A_LEAK" -ge 1 ]; then
		pass "$id control: $what with a hole for c -> B ahead of egressd's rules: native answers reach B and the leak detector moves ($A_OUT; leak detector $A_LEAK)"
	else
		fail "$id control: $what with a hole for c -> B, B must see native answers and the leak detector move (else A1-A4 prove nothing)" \
			"stranger: $A_OUT; leak detector: $A_LEAK; c: $A_PEER"
	fi
}
a_control A5 "SOCKS full cone v4" iptables "${NS_C[0]}" 10.8.0.10 "$TARGET4" "$B4" "$(exit_egress4 3)"
a_control A6 "Direct (own link) v6" ip6tables "${NS_C[1]}" fd08::11 "$TARGET6" "$B6" "$DL6"

# ================================================================== B
# B2 first: B1's DNAT replies (gw's uplink address, un-DNATed) are counted by
# the leak detector, as they should be; nothing may be counted during B2.
l0=$(leak_count)
s0=$(syn80)
u0=$(grep -c '^udp ' "$EG_TMP/svc.log")
P4=$(ht "$NS_INET" probe 10.8.0.12 80 5353 2)
P6=$(ht "$NS_INET" probe fd08::12 80 5353 2)
B2_LEAK=$(($(leak_count) - l0))
B2_SYN=$(($(syn80) - s0))
B2_UDP=$(($(grep -c '^udp ' "$EG_TMP/svc.log") - u0))
native() { [[ "$1" == *"tcp OK"* || "$1" == *"10.8.0."* || "$1" == *"fd08::"* || "$1" == *"$GW_UPLINK4"* || "$1" == *"$GW_UPLINK6"* ]]; }
if [[ "$P4" == "tcp "* && "$P6" == "tcp "* ]] && ! native "$P4" && ! native "$P6" &&
	[ "$B2_LEAK" -eq 0 ] && [ "$B2_SYN" -ge 2 ] && [ "$B2_UDP" -ge 2 ]; then
	pass "B2 connections into c2 without DNAT get no native answer (v4: $P4; v6: $P6); c2 saw $B2_SYN SYNs and $B2_UDP datagrams; leak detector 0"
else
	fail "B2 a connection into a container without DNAT must get no native answer, nothing may leak" \
		"v4: $P4; v6: $P6; c2 saw $B2_SYN SYNs, $B2_UDP datagrams (both must be >= 2); leak detector $B2_LEAK"
fi

Q4=$(ht "$NS_INET" probe "$GW_UPLINK4" 8080 8053 3)
Q6=$(ht "$NS_INET" probe "$GW_UPLINK6" 8080 8053 3)
if [[ "$Q4" == "tcp OK:c2_saw_198.51.100.254:"*" udp $GW_UPLINK4:8053=c2_saw_198.51.100.254:"* ]] &&
	[[ "$Q6" == "tcp OK:c2_saw_[2001:db8:100::fe]:"*" udp [$GW_UPLINK6]:8053=c2_saw_[2001:db8:100::fe]:"* ]]; then
	pass "B1 published ports answer through the DNAT: v4 $Q4; v6 $Q6"
else
	fail "B1 published ports (gw:8080/tcp, gw:8053/udp -> c2) must answer" "v4: $Q4; v6: $Q6"
fi

# ================================================================== C
key4='source="10.8.0.14/32"'
key6='source="fd08::14/128"'
p0=$(prom)
C4=$(ht "${NS_C[4]}" collect "$TARGET4" "$UDP_WHO_PORT" 2)
C6=$(ht "${NS_C[4]}" collect "$TARGET6" "$UDP_WHO_PORT" 2)
p1=$(prom)
printf '%s\n' "$p1" >"$EG_TMP/c.prom"
d4=$(($(metric "$p1" egressd_udp_drop_reply_source_total "$key4") - $(metric "$p0" egressd_udp_drop_reply_source_total "$key4")))
d6=$(($(metric "$p1" egressd_udp_drop_reply_source_total "$key6") - $(metric "$p0" egressd_udp_drop_reply_source_total "$key6")))
if [[ "$C4" == *"$TARGET4:$UDP_WHO_PORT=echo ask"* && "$C6" == *"[$TARGET6]:$UDP_WHO_PORT=echo ask"* ]] &&
	[[ "$C4" != *"10.8.0.12:"* && "$C6" != *"[fd08::12]:"* ]] && [ "$d4" -eq 2 ] && [ "$d6" -eq 2 ]; then
	pass "C1 forged replies naming the label-routed neighbour c2 dropped and counted (udp_drop_reply_source +$d4 v4, +$d6 v6 for c4; c4 got: $C4 | $C6)"
else
	fail "C1 a reply naming the label-routed neighbour c2 must be dropped, counted 2 per family (c2's and c3's) for c4" \
		"v4 got: $C4; v6 got: $C6; udp_drop_reply_source +$d4 v4, +$d6 v6"
fi
if [[ "$C4" == *"203.0.113.99:$UDP_WHO_PORT=forged"* && "$C6" == *"[2001:db8:203::99]:$UDP_WHO_PORT=forged"* ]] &&
	[[ "$C4" != *"10.8.0.13:"* && "$C6" != *"[fd08::13]:"* ]] && [ "$d4" -ge 1 ] && [ "$d6" -ge 1 ]; then
	pass "C2 control: a forged non-container source reaches c4 (the collector sees forgeries) and the config-routed c3's is dropped and counted (+$d4, +$d6)"
else
	fail "C2 control: the forged non-container source must reach c4 and c3's must be dropped and counted (else C1 proves nothing)" \
		"v4 got: $C4; v6 got: $C6; udp_drop_reply_source +$d4 v4, +$d6 v6"
fi

# ================================================================== D
rm -f "$EG_TMP/race.stop"
ht_bg "${NS_C[3]}" "$EG_TMP/race.client" race-client "$TARGET4" "$UDP_WHO_PORT" $((RACE_SECS + 10)) 4 \
	"$EG_TMP/race.conns" "$EG_TMP/race.stop" "$EG_TMP/race.ready"
RC_PID=$EG_LAST_PID
wait_until 15 test -e "$EG_TMP/race.ready" || log "race: c3's client had no answer within 15 s"
SW=$(EG_TOOL_TIMEOUT=$((RACE_SECS + 30)) ht "$NS_GW" race-switch "$(egressd_bin)" "$SOCK" 10.8.0.13 exit1 exit2 \
	"$RACE_SECS" 400 0.05 0.25 "$EG_TMP/race.switches")
sleep 1 # flows in the last window, after the last switch
: >"$EG_TMP/race.stop"
wait_until 10 pid_gone "$RC_PID"
stop_pid "$RC_PID"
RACE=$(ht "$NS_GW" race-check "$EG_TMP/race.switches" "$EG_TMP/race.conns" exit1 \
	"exit1=$(exit_egress4 1),exit2=$(exit_egress4 2)")
log "race: $SW; client: $(oneline <"$EG_TMP/race.client"); $RACE"
viol=$(field violations "$RACE")
errs=$(field errors "$RACE")
dec=$(field decisive "$RACE")
wins=$(field windows "$RACE")
moved=$(field moved "$RACE")
seen=$(field seen "$RACE")
if [ -n "$viol" ] && [ "$viol" -eq 0 ] && [ "$errs" -eq 0 ] && [ "$dec" -ge 100 ]; then
	pass "D1 IP reuse under load (route set --reset-flows): no flow started after a switch left by the old exit ($RACE)"
else
	fail "D1 every flow started after route set returned must leave by the new exit (0 violations, no route set error, >= 100 decisive flows)" \
		"$RACE; switcher: $SW"
fi
if [ -n "$wins" ] && [ "$wins" -ge 20 ] && [ $((moved * 10)) -ge $((wins * 9)) ] &&
	[[ "$seen" == *exit1:* && "$seen" == *exit2:* ]]; then
	pass "D2 control: the switches move the traffic: $moved of $wins windows show the new exit; seen $seen"
else
	fail "D2 control: each switch must visibly move the traffic (>= 20 windows, >= 90 % with the new exit, both exits seen)" "$RACE"
fi

finish_suite hostile.sh
