#!/usr/bin/env bash
# netns-tests/dnsflood.sh — DNS over TCP within budgets, a late answer that
# costs only its own query, and a new-session rate that a fast-failing exit
# cannot reset (issue 23, items 1 and 3), end to end, in network namespaces.
#
#  c0 10.8.0.10 (A) ─┐                           ┌─ exit0 microsocks 100.64.0.2:1080 (TCP only)
#  c1 10.8.0.11 (B) ─┤  gw: br0 10.8.0.1         │    tunnel "dns0" (udp: false): port-53 datagrams
#  c2 10.8.0.12 (C) ─┼─ egressd :10900 ──────────┤    of A, B, C go as DNS over TCP through it;
#  c3 10.8.0.13 (D) ─┘  threads: 1               │    tunnel "udp0" (udp: true, D's): microsocks
#                                                │    refuses UDP ASSOCIATE at once (fails fast)
#                                                │    exit0 drops every SYN to 203.0.113.100-139:53:
#                                                └──  40 resolvers whose connections never come up
#  inet: 192.0.2.53 (the topology's DNS, UDP+TCP), 203.0.113.53 and .54
#        (tools/dnsflood_tool.py resolver: every answer 300 ms late, slow.test
#        never answered; .54 also closes the connection 2 s after slow.test,
#        as egressd itself did before issue 23 at its answer timeout)
#
# One worker (threads: 1): A, B and C share the worker, its pending budget
# and its loop. Each phase starts a fresh egressd (its counters at 0, its
# VmHWM its own peak).
#
# (a) The DNS-over-TCP flood (issue 23 item 1; before the fix one container
#     took egressd from 3 MiB to 695 MiB): A sends, from one socket,
#     12 000 port-53 datagrams, 60 000 and 4 000 bytes in turn, to the 40
#     blackholed resolvers, as fast as it can (at most 10 s), while B
#     resolves through the same tunnel (TXT whoami.test @192.0.2.53, a fresh
#     socket every 20 ms, several in flight, 5 s timeout).
#     limited: the defaults (dns_max_query_bytes 4 096, 64 KiB unwritten per
#              connection, pending bytes 4 MiB a worker / 1 MiB a source).
#     control: the limits off (queries up to 65 535 bytes, 1 GiB queued per
#              connection and pending, rate 10^6/s), and the flood cut to
#              2 000 datagrams (68 MB) so that it cannot eat the machine.
# (b) A slow resolver (dns_answer_timeout_secs: 2): B asks 203.0.113.53 for
#     slow.test (never answered), then 50 lookups 100 ms apart on the same
#     connection (each answered 300 ms late: about 3 in flight at any time,
#     through the moment slow.test times out); C asks the same resolver.
#     control: the same against .54, which closes the connection when the
#     old egressd would have: the lookups in flight then are lost, so the
#     check below can see such a loss.
# (c) The fast-failing exit (issue 23 item 3): D opens new UDP sessions
#     (a fresh socket, one datagram) 200 a second for 3 s through "udp0";
#     each association fails within a millisecond, so D holds no session
#     between two. udp: (new_sessions_per_source_per_sec: 20,
#     new_sessions_per_source_burst: 40).
#     control: max_idle_sources: 0 (a source's rate state forgotten with
#     its last session, as before the fix).
#
# Checks (one PASS/FAIL line each):
#   1  precondition (a): the 40 resolvers are black holes (exit0 dropped
#      >= 40 SYNs to them) and A's flood was sent in full in both rounds
#   2  (a) limited: egressd's peak RSS (VmHWM) <= its idle RSS + 4 MiB
#      (pending_bytes_per_worker: A's queued queries and connections) +
#      12 MiB (hand-off batches, sockets, allocator), as fairness.sh states
#   3  (a) limited: every one of B's lookups during and after A's flood
#      answered (>= 100)
#   4  (a) limited: A's refusals counted for A's source (dns_tcp_drop_too_big,
#      and pending bytes or a full connection queue), none of B's; and once
#      A's connections have closed, A's own lookups are answered again
#      (what they held of A's budget came back)
#   5  (a) control: the same flood with the limits off takes egressd past
#      that bound (so 2 can fail)
#   6  (b) every lookup of B asked on the connection where slow.test went
#      late is answered, and C's too; slow.test is counted once
#      (dns_tcp_timeouts 1 for B's source) and B's connection was not
#      replaced (1 connection opened for B's source during the round);
#      nothing of C's timed out, was lost or dropped
#   7  (b) control: with the connection closed at that moment (by .54),
#      B loses the lookups in flight (>= 1)
#   8  (c) limited: the exit saw at most burst + rate x (3 s + 1 s) = 120
#      connections from D's sessions, and udp_drop_source_rate counted the
#      rest for D's source
#   9  (c) control: with the rate state forgotten, the exit saw more than
#      twice that bound
#
# Usage: sudo netns-tests/dnsflood.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs; DNSFLOOD_PRE=1 with a binary from
#        before issue 23: the controls, whose configs use its new keys, are
#        skipped). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 9
# shellcheck source=topology.sh
. "$HERE/topology.sh"
NEXITS=1

require_root_and_tools nft iptables ip6tables microsocks python3 ss timeout awk
eg_init
ensure_egressd || die "cannot build egressd"
T0=$(date +%s)

PRE=${DNSFLOOD_PRE:-0}
FLOOD_COUNT=12000
CONTROL_COUNT=2000
FLOOD_SIZES=60000,4000
PENDING_WORKER_KIB=4096
SLACK_KIB=$((12 * 1024))
RATE=20
BURST=40
SESS_RATE=200
SESS_SECS=3
MAX_ATTEMPTS=$((BURST + RATE * (SESS_SECS + 1)))
SLOW4=203.0.113.53
CLOSER4=203.0.113.54
A_SRC='source="10.8.0.10/32"'
B_SRC='source="10.8.0.11/32"'
C_SRC='source="10.8.0.12/32"'
D_SRC='source="10.8.0.13/32"'
OFF_A="dns_max_query_bytes: 65535, dns_queue_bytes_per_connection: 1073741824, pending_bytes_per_worker: 1073741824, pending_bytes_per_source: 1073741824, new_sessions_per_source_per_sec: 1000000, new_sessions_per_source_burst: 1000000"
ON_C="new_sessions_per_source_per_sec: $RATE, new_sessions_per_source_burst: $BURST"
OFF_C="$ON_C, max_idle_sources: 0"

dft() { EG_TOOL_TIMEOUT=120 pytool dnsflood_tool "$@"; }
drops_of() { drops_matching "$1" "$2" '^egressd_(udp|dns_tcp)_drop_'; }
status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }

topo_up
# The dnsflood resolvers, on inet's loopback like the topology's services.
ip -n "$NS_INET" addr add "$SLOW4/32" dev lo
ip -n "$NS_INET" addr add "$CLOSER4/32" dev lo
topo_start_services
eg_spawn "$NS_INET" "$EG_TMP/slow.log" "$(python_bin)" -u "$EG_TOOLS/dnsflood_tool.py" resolver "$SLOW4" \
	--delay-ms 300 --slow slow.test -1 --ready "$EG_TMP/slow.ready"
eg_spawn "$NS_INET" "$EG_TMP/closer.log" "$(python_bin)" -u "$EG_TOOLS/dnsflood_tool.py" resolver "$CLOSER4" \
	--delay-ms 300 --slow slow.test -1 --close-after-slow 2 --ready "$EG_TMP/closer.ready"
wait_until 15 test -e "$EG_TMP/slow.ready" -a -e "$EG_TMP/closer.ready" ||
	die "the dnsflood resolvers did not start: $(tail -n 3 "$EG_TMP/slow.log" "$EG_TMP/closer.log")"
# exit0: SYNs to the 40 resolvers are counted and vanish (microsocks's
# connects hang; egressd's SOCKS handshakes for them never finish).
nsx "${NS_EXIT[0]}" nft -f - <<-'EOF' || die "exit0: nft -f could not load the black hole (table inet eghole)"
table inet eghole {
	counter syn { }
	chain out {
		type filter hook output priority -10; policy accept;
		ip daddr 203.0.113.100-203.0.113.139 tcp dport 53 tcp flags & (syn | ack) == syn counter name syn drop
		ip daddr 203.0.113.100-203.0.113.139 drop
	}
}
EOF
SYN0=$(nft_counter "${NS_EXIT[0]}" eghole syn)

SOCK=$EG_TMP/egressd.sock
CONF=$EG_TMP/egressd.ron
RULES_DONE=0
# egressd_fresh UDP_RON — a fresh egressd with these udp settings; B's
# lookups work before anything else happens. Sets IDLE_KIB.
egressd_fresh() {
	local warm
	egressd_stop
	cat >"$CONF" <<-EOF
	(
	    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
	    tunnels: {
	        "dns0": Socks5(server: "100.64.0.2:1080", udp: false, warm: 0, warm_udp: 0),
	        "udp0": Socks5(server: "100.64.0.2:1080", warm: 0, warm_udp: 0),
	    },
	    routes: [
	        (source: "10.8.0.10", tunnel: "dns0"),
	        (source: "10.8.0.11", tunnel: "dns0"),
	        (source: "10.8.0.12", tunnel: "dns0"),
	        (source: "10.8.0.13", tunnel: "udp0"),
	    ],
	    intercept: (tcp: Redirect),
	    dns: (upstream: "192.0.2.53:53"),
	    control: (socket: "$SOCK"),
	    threads: 1,
	    udp: ($1),
	)
	EOF
	if [ "$RULES_DONE" -eq 0 ]; then
		RUST_LOG=info egressd_up_or_exit "$CONF"
		RULES_DONE=1
	else
		RUST_LOG=info egressd_start --config "$CONF" || die "egressd (udp: $1) did not start"
	fi
	warm=$(dft "${NS_C[1]}" lookups "$PUBDNS4" 10 20 5000)
	case $warm in
	"sent 10 answered 10 "*) ;;
	*) die "B's lookups do not work before the flood: $warm" ;;
	esac
	IDLE_KIB=$(status_kib "$EGRESSD_PID" VmRSS)
	[ -n "$IDLE_KIB" ] || die "cannot read egressd's RSS"
}

# flood_round TAG UDP_RON COUNT — phase (a): A floods COUNT datagrams while
# B resolves; then B keeps resolving 6 s more (A's connections reach their
# timeouts meanwhile). Results in R_* under TAG.
declare -A R_FLOOD R_LOOK R_AFTER R_HWM R_PEAKS R_IDLE R_PROM
flood_round() {
	local tag=$1 on=$EG_TMP/$1.on stop=$EG_TMP/$1.stop look_pid peaks_pid
	egressd_fresh "$2"
	R_IDLE[$tag]=$IDLE_KIB
	rm -f "$stop" "$EG_TMP/$tag.peaks"
	eg_spawn "$NS_GW" "$EG_TMP/$tag.peakslog" "$(python_bin)" "$EG_TOOLS/dnsflood_tool.py" peaks \
		"$EGRESSD_PID" "$EG_TMP/$tag.peaks" "$stop"
	peaks_pid=$EG_LAST_PID
	: >"$on"
	dft "${NS_C[1]}" lookups "$PUBDNS4" 1000 20 5000 --from-file "$on" >"$EG_TMP/$tag.look" 2>&1 &
	look_pid=$!
	R_FLOOD[$tag]=$(dft "${NS_C[0]}" flood 203.0.113 100 40 "$3" 10 "$FLOOD_SIZES")
	sleep 6 # B goes on resolving while A's connections time out (not a synchronisation)
	rm -f "$on"
	wait "$look_pid"
	R_LOOK[$tag]=$(cat "$EG_TMP/$tag.look")
	# A's own lookups once its connections have closed: what they held of
	# A's budget came back.
	R_AFTER[$tag]=$(dft "${NS_C[0]}" lookups "$PUBDNS4" 5 20 3000)
	R_HWM[$tag]=$(status_kib "$EGRESSD_PID" VmHWM)
	: >"$stop"
	wait_until 5 test -e "$EG_TMP/$tag.peaks"
	stop_pid "$peaks_pid"
	R_PEAKS[$tag]=$(cat "$EG_TMP/$tag.peaks" 2>/dev/null)
	R_PROM[$tag]=$(prom_or_die)
	printf '%s\n' "${R_PROM[$tag]}" >"$EG_TMP/$tag.prom"
	log "(a) $tag: A's flood: ${R_FLOOD[$tag]}"
	log "(a) $tag: B's lookups: ${R_LOOK[$tag]}; A's lookups after: ${R_AFTER[$tag]}"
	log "(a) $tag: egressd idle ${R_IDLE[$tag]} KiB, VmHWM ${R_HWM[$tag]:-?} KiB, sampled ${R_PEAKS[$tag]}"
}

# ================================================================== (a)
flood_round on "" "$FLOOD_COUNT"
if [ "$PRE" != 1 ]; then
	flood_round off "$OFF_A" "$CONTROL_COUNT"
fi
syn=$(($(nft_counter "${NS_EXIT[0]}" eghole syn) - SYN0))

# ------------------------------------------------------------------ 1 precondition
sent_on=$(field sent "${R_FLOOD[on]}")
sent_off=$(field sent "${R_FLOOD[off]:-sent $CONTROL_COUNT}")
if [ "$syn" -ge 40 ] && [ "${sent_on:-0}" -eq "$FLOOD_COUNT" ] && [ "${sent_off:-0}" -eq "$CONTROL_COUNT" ]; then
	pass "1 the 40 resolvers are black holes ($syn SYNs to them dropped at exit0) and A's floods were sent in full: ${R_FLOOD[on]}; control: ${R_FLOOD[off]:-skipped}"
else
	fail "1 the resolvers must be black holes and A's flood sent in full (every check of (a) depends on it)" \
		"SYNs dropped $syn (want >= 40); limited: ${R_FLOOD[on]}; control: ${R_FLOOD[off]:-skipped}"
fi

# ------------------------------------------------------------------ 2-4 limited
budget=$((R_IDLE[on] + PENDING_WORKER_KIB + SLACK_KIB))
hwm=${R_HWM[on]:-0}
if [ "$hwm" -gt 0 ] && [ "$hwm" -le "$budget" ]; then
	pass "2 (a) limited: egressd's peak RSS $((hwm / 1024)) MiB <= idle + 4 MiB + 12 MiB = $((budget / 1024)) MiB (${R_PEAKS[on]})"
else
	fail "2 (a) limited: egressd's peak RSS must stay within idle + 4 MiB + 12 MiB" \
		"VmHWM ${hwm} KiB > $budget KiB (idle ${R_IDLE[on]}; ${R_PEAKS[on]})"
fi
L=${R_LOOK[on]}
sent=$(field sent "$L") answered=$(field answered "$L")
if [ "${sent:-0}" -ge 100 ] && [ "$answered" = "$sent" ]; then
	pass "3 (a) limited: every one of B's lookups through the same tunnel answered during and after A's flood: $L"
else
	fail "3 (a) limited: every one of B's lookups (>= 100) must be answered" "$L"
fi
P=${R_PROM[on]}
big=$(metric "$P" egressd_dns_tcp_drop_too_big_total "$A_SRC")
pb=$(metric "$P" egressd_udp_drop_pending_bytes_total "$A_SRC")
qf=$(metric "$P" egressd_dns_tcp_drop_queue_full_total "$A_SRC")
bd=$(drops_of "$P" "$B_SRC")
after=$(field answered "${R_AFTER[on]}")
if [ "$big" -gt 0 ] && [ $((pb + qf)) -gt 0 ] && [ -z "$bd" ] && [ "$after" = 5 ]; then
	pass "4 (a) limited: A's refusals counted for A's source ($(drops_of "$P" "$A_SRC"); connections opened $(metric "$P" egressd_dns_tcp_connections_total "$A_SRC"), stalled $(metric "$P" egressd_dns_tcp_stalled_total "$A_SRC")), none of B's; A's budget came back (its lookups after: $after/5)"
else
	fail "4 (a) limited: A's too-big and budget refusals must be counted for A, none for B, and A's budget must come back" \
		"A: too_big $big, pending_bytes $pb, queue_full $qf (want too_big > 0 and one of the others > 0); B: '${bd}' (want none); A's lookups after the flood: ${R_AFTER[on]} (want 5 answered)"
fi

# ------------------------------------------------------------------ 5 control
if [ "$PRE" = 1 ]; then
	skip_check "5 (a) control" "DNSFLOOD_PRE=1: a binary from before issue 23 has no keys to turn the limits off"
else
	budget_off=$((R_IDLE[off] + PENDING_WORKER_KIB + SLACK_KIB))
	if [ "${R_HWM[off]:-0}" -gt "$budget_off" ]; then
		pass "5 (a) control: with the limits off, $CONTROL_COUNT datagrams took egressd to $((R_HWM[off] / 1024)) MiB, past $((budget_off / 1024)) MiB (${R_PEAKS[off]}; B: $(field answered "${R_LOOK[off]}")/$(field sent "${R_LOOK[off]}") answered)"
	else
		fail "5 (a) control: with the limits off the flood should pass the bound (else 2 proves nothing)" \
			"VmHWM ${R_HWM[off]:-none} KiB <= $budget_off KiB"
	fi
fi

# ================================================================== (b)
egressd_fresh "dns_answer_timeout_secs: 2"
P0=$(prom_or_die) # B's connection to 192.0.2.53 (its warm-up lookups) is already counted
# slow_round RESOLVER TAG — B asks for slow.test, then 50 lookups (and C 50).
slow_round() {
	local srv=$1 tag=$2 slow_pid c_pid
	dft "${NS_C[1]}" lookups "$srv" 1 10 6000 --name slow.test >"$EG_TMP/$tag.slow" 2>&1 &
	slow_pid=$!
	sleep 0.2 # slow.test goes first (ordering, not synchronisation: its own count is checked)
	dft "${NS_C[2]}" lookups "$srv" 50 100 3000 >"$EG_TMP/$tag.c" 2>&1 &
	c_pid=$!
	dft "${NS_C[1]}" lookups "$srv" 50 100 3000 >"$EG_TMP/$tag.b" 2>&1
	wait "$c_pid" "$slow_pid"
	log "(b) $tag: B's slow.test: $(cat "$EG_TMP/$tag.slow"); B: $(cat "$EG_TMP/$tag.b"); C: $(cat "$EG_TMP/$tag.c")"
}
slow_round "$SLOW4" slow
P=$(prom_or_die)
printf '%s\n' "$P" >"$EG_TMP/slow.prom"
LB=$(cat "$EG_TMP/slow.b") LC=$(cat "$EG_TMP/slow.c")
to_b=$(metric "$P" egressd_dns_tcp_timeouts_total "$B_SRC")
cd_=$(drops_of "$P" "$C_SRC")
lost_c=$(($(metric "$P" egressd_dns_tcp_timeouts_total "$C_SRC") + $(metric "$P" egressd_dns_tcp_lost_total "$C_SRC")))
conn_b=$(($(metric "$P" egressd_dns_tcp_connections_total "$B_SRC") - $(metric "$P0" egressd_dns_tcp_connections_total "$B_SRC")))
slow_seen=$(grep -c '^slow ' "$EG_TMP/slow.log")
if [ "$(field answered "$LB")" = 50 ] && [ "$(field answered "$LC")" = 50 ] && [ "$slow_seen" -eq 1 ] &&
	[ "$to_b" -eq 1 ] && [ "$conn_b" -eq 1 ] && [ "$lost_c" -eq 0 ] && [ -z "$cd_" ]; then
	pass "6 (b) slow.test went late on B's connection and only it was dropped (dns_tcp_timeouts $to_b, connections $conn_b; C: none timed out, lost or dropped): B $LB; C $LC"
else
	fail "6 (b) a late answer must cost only its own query" \
		"B: $LB; C: $LC (want 50 answered each); slow.test seen $slow_seen (want 1), B's dns_tcp_timeouts $to_b (want 1), connections $conn_b (want 1); C's timeouts + lost $lost_c (want 0), drops '$cd_' (want none)"
fi
slow_round "$CLOSER4" closer
LB=$(cat "$EG_TMP/closer.b")
closed=$(grep -c '^closed-after-slow ' "$EG_TMP/closer.log")
if [ "$closed" -ge 1 ] && [ "$(field lost "$LB")" -ge 1 ]; then
	pass "7 (b) control: the connection closed when slow.test went late loses the lookups in flight on it: B $LB"
else
	fail "7 (b) control: a connection closed under B's lookups should lose some (else 6 proves nothing)" \
		"closed $closed times; B: $LB"
fi

# ================================================================== (c)
# sessions_round TAG UDP_RON — D opens sessions through the fast-failing exit.
sessions_round() {
	local tag=$1 s0
	egressd_fresh "$2"
	s0=$(socks_syn_count 0)
	R_SESS[$tag]=$(dft "${NS_C[3]}" sessions "$TARGET4" "$UDP_WHO_PORT" "$SESS_RATE" "$SESS_SECS")
	sleep 1 # the last association attempts finish (not a synchronisation: counted below either way)
	R_ATT[$tag]=$(($(socks_syn_count 0) - s0))
	R_PROM[$tag]=$(prom_or_die)
	printf '%s\n' "${R_PROM[$tag]}" >"$EG_TMP/$tag.prom"
	log "(c) $tag: D: ${R_SESS[$tag]}; exit0 saw ${R_ATT[$tag]} connections; failed associations $(metric "${R_PROM[$tag]}" egressd_udp_assoc_failed_total), rate drops $(metric "${R_PROM[$tag]}" egressd_udp_drop_source_rate_total "$D_SRC")"
}
declare -A R_SESS R_ATT
sessions_round son "$ON_C"
P=${R_PROM[son]}
rt=$(metric "$P" egressd_udp_drop_source_rate_total "$D_SRC")
failed=$(metric "$P" egressd_udp_assoc_failed_total)
if [ "${R_ATT[son]}" -le "$MAX_ATTEMPTS" ] && [ "$rt" -gt 0 ] && [ "$failed" -ge 1 ] &&
	[ "$(field sent "${R_SESS[son]}")" -ge $((SESS_RATE * SESS_SECS * 9 / 10)) ]; then
	pass "8 (c) the fast-failing exit saw ${R_ATT[son]} connections <= $MAX_ATTEMPTS (burst $BURST + $RATE/s x 4 s) of D's ${R_SESS[son]}; udp_drop_source_rate $rt for D, $failed associations refused"
else
	fail "8 (c) the new-session rate must bite against a fast-failing exit" \
		"exit saw ${R_ATT[son]} (want <= $MAX_ATTEMPTS); rate drops $rt (want > 0); failed associations $failed (want >= 1); D: ${R_SESS[son]}"
fi
if [ "$PRE" = 1 ]; then
	skip_check "9 (c) control" "DNSFLOOD_PRE=1: a binary from before issue 23 has no max_idle_sources"
else
	sessions_round soff "$OFF_C"
	if [ "${R_ATT[soff]}" -gt $((2 * MAX_ATTEMPTS)) ]; then
		pass "9 (c) control: with the rate state forgotten (max_idle_sources: 0) the exit saw ${R_ATT[soff]} connections, > 2 x $MAX_ATTEMPTS (rate drops $(metric "${R_PROM[soff]}" egressd_udp_drop_source_rate_total "$D_SRC"))"
	else
		fail "9 (c) control: with the rate state forgotten the exit should see far more (else 8 proves nothing)" \
			"exit saw ${R_ATT[soff]} (want > $((2 * MAX_ATTEMPTS))); D: ${R_SESS[soff]}"
	fi
fi

finish_suite dnsflood.sh
