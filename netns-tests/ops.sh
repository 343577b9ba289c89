#!/usr/bin/env bash
# netns-tests/ops.sh — operating egressd: counters, live routes, reload, graceful
# stop, the nftables backend and least privilege, end to end in network namespaces.
#
#  c0 10.8.0.10 fd08::10 ─┐                      ┌─ exit0 (microsocks, TCP) ─┐ 198.51.100.1  2001:db8:100::1
#  c1 10.8.0.11 fd08::11 ─┤  gw: br0 10.8.0.1    ├─ exit1 (danted)          ─┤ 198.51.100.2  2001:db8:100::2
#  c2 10.8.0.12 fd08::12 ─┼─ egressd :10900 ─────┴─ exit2 (danted)          ─┤ 198.51.100.3  2001:db8:100::3
#  c3 10.8.0.13 fd08::13 ─┘  (c3: no route)                                  ├─ inet: 203.0.113.10 (TCP services,
#       control socket + metrics on 127.0.0.1:9109 in gw                     │  UDP who-am-i :5000)
#                            uplink 198.51.100.200 (MASQUERADE) ─────────────┘
#
# Checks (one PASS/FAIL line each; see topology.sh for the addresses):
#   1  counters: 20 MB up and 20 MB down over TCP from c1 show in exit1's
#      tcp_bytes_up/down (`egressd stats --prometheus`) within 2 %; 200 UDP
#      datagrams of 500 bytes in udp_dgrams/bytes_up/down within a datagram;
#      control: exit0's and exit2's counters did not move; the metrics
#      endpoint (GET /metrics) serves the same numbers
#   2  `route set --source 10.8.0.10 --tunnel exit1 --reset-flows`: c0's held
#      connection (via exit0) ends within 2 s, c2's does not (control); new
#      connections from c0 leave as exit1; `route list` shows it; `route set`
#      without --reset-flows keeps c0's open flow (control) and moves new ones
#      (exit2); `route del` removes it and c0 then gets a reset (no route)
#   3  SIGHUP under steady traffic: 20 paced TCP transfers (c1 + c2, up and
#      down, sha256; control: all open across the reload) all complete
#      intact; UDP ping-pongs from c1 (whose route changes: its session moves
#      to the new exit at the next datagram) and c2 (route unchanged: keeps
#      its association, one exit port) lose nothing; new connections from c1
#      use the new exit (exit2), TCP v4/v6 and UDP; a config with a syntax
#      error on SIGHUP is logged with file:line:col and the running routes
#      stay; and the counters are live (tcp_flows_active, bytes growing
#      mid-transfer)
#   4  SIGTERM: a ~2 s transfer sent SIGTERM mid-way completes intact; a new
#      connection after SIGTERM is refused/reset at once (not hung); egressd
#      exits 0 within 6 s
#   5  `rules --backend nft` (no iptables rules of egressd present; control:
#      without rules c1 leaks as .200, the leak detector counts it and c3's
#      ping is answered): c1 TCP v4/v6 and UDP v4/v6 leave as exit1, c3 (no
#      route) leaks nothing (TCP reset, UDP unanswered, ping sent and
#      unanswered, leak detector still); `--backend nft --delete` removes the
#      table and the mark routing (c1 leaks again: control)
#   6  egressd as `nobody` with only CAP_NET_ADMIN (setpriv, ambient): c1's
#      TCP and UDP (IP_TRANSPARENT reply sockets) leave as exit1, the control
#      socket works; negative control: as `nobody` without capabilities UDP
#      does not work (UDP sent and unanswered, a tool error is no pass), or
#      egressd refuses to start and (6e) the refusal names the missing
#      privilege (CAP_NET_ADMIN / IP_TRANSPARENT); 6e is a skip when egressd
#      did start
#
# 30 check lines on every path (plan_checks); egressd starting and its rules
# applying are preconditions (the suite stops), not checks.
#
# Usage: sudo netns-tests/ops.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
plan_checks 30

require_root_and_tools nft iptables ip6tables iptables-save ip6tables-save curl microsocks danted \
	python3 ss timeout ps setpriv awk
eg_init
T0=$(date +%s)

METRICS=127.0.0.1:9109

# field N STRING — the Nth whitespace-separated word of STRING.
field() { printf '%s\n' "$2" | awk -v n="$1" '{ print $n }'; }
# kv KEY STRING — the word after KEY in STRING ("sent 3 recv 2": kv recv -> 2).
kv() { printf '%s\n' "$2" | awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }'; }
# kveq KEY STRING — the value of KEY=value in STRING.
kveq() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }
oneline() { tr '\n' ' ' | cut -c1-"${1:-300}"; }

# ops_start CONF LOG [PREFIX...] — `egressd run --config CONF` in gw, run
# through PREFIX (e.g. setpriv ...), log to LOG; wait for both listeners.
# Not disowned (unlike eg_spawn), so `wait` gives its exit code. PID in
# EGRESSD_PID (PREFIX execs: it is egressd's own PID).
ops_start() {
	local conf=$1 logf=$2; shift 2
	EGRESSD_LOG=$logf
	(
		ulimit -n 65536 2>/dev/null || true
		exec ip netns exec "$NS_GW" "$@" env RUST_LOG=debug "$(egressd_bin)" run --config "$conf"
	) >>"$logf" 2>&1 </dev/null &
	EGRESSD_PID=$!
	EG_PIDS+=("$EGRESSD_PID")
	wait_until 15 egressd_up_or_dead && egressd_listening
}

# ops_tool NS ARGS... / ops_tool_bg NS OUTFILE ARGS... — tools/ops_tool.py
# inside NS with a hard time bound (background: tracked by PID, EG_LAST_PID).
ops_tool() { EG_TOOL_TIMEOUT=120 pytool ops_tool "$@"; }
ops_tool_bg() { EG_TOOL_TIMEOUT=120 pytool_bg ops_tool "$@"; }

# ctl ARGS... — the egressd CLI against this run's control socket (in gw;
# the socket is a file, the namespace does not matter to it).
ctl() {
	local sub=$1; shift
	case $sub in
	stats) nsx "$NS_GW" timeout 10 "$(egressd_bin)" stats --socket "$SOCK" "$@" ;;
	route) nsx "$NS_GW" timeout 10 "$(egressd_bin)" route "$1" "${@:2}" --socket "$SOCK" ;;
	esac
}

# prom FILE NAME TUNNEL — a counter's value for TUNNEL ("" for the total)
# from Prometheus text: egressd_NAME or egressd_NAME_total. A tunnel's
# series appear once a worker has used it: absent counts as 0.
prom() {
	local f=$1 name=$2 t=$3 lbl=""
	[ -n "$t" ] && lbl="{tunnel=\"$t\"}"
	awk -v a="egressd_${name}${lbl}" -v b="egressd_${name}_total${lbl}" \
		'$1 == a || $1 == b { print $2; found = 1; exit } END { if (!found) print 0 }' "$f"
}

# udp_who NS HOST — who-am-i over UDP: "<from> <seen-ip>" or the tool's line.
udp_who() {
	local out
	out=$(udptool "$1" ask "$2" "$UDP_WHO_PORT" 2 2 2>&1)
	case $out in
	"reply from "*) printf '%s %s\n' "$(ip_of "$(field 3 "$out")")" "$(ip_of "$(field 4 "$out")")" ;;
	*) printf '%s\n' "$out" ;;
	esac
}

# trickle_start NS NAME — egtool trickle (1 KiB every 20 ms) from NS; waits
# until it flows. PID in EG_LAST_PID; its end line goes to $EG_TMP/NAME.out.
trickle_start() {
	local ns=$1 name=$2
	rm -f "$EG_TMP/$name.ready" "$EG_TMP/$name.out"
	egtool_bg "$ns" "$EG_TMP/$name.out" trickle "$TARGET4" 9005 "$EG_TMP/$name.ready"
	wait_until 10 test -s "$EG_TMP/$name.ready"
}

# iptables_egressd_rules — egressd's iptables/ip6tables rules and chains in gw.
iptables_egressd_rules() {
	{ nsx "$NS_GW" iptables-save; nsx "$NS_GW" ip6tables-save; } 2>/dev/null | grep -i egressd
}
iptables_clean() { [ -z "$(iptables_egressd_rules)" ]; }
# log_count_gt TEXT N — more than N lines of egressd's log contain TEXT
# (re-read at every poll of wait_until).
log_count_gt() { [ "$(grep -c -- "$1" "$EGRESSD_LOG")" -gt "$2" ]; }

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"

topo_up
topo_start_services
CONF=$EG_TMP/egressd.ron
SOCK=$EG_TMP/egressd.sock
topo_write_config "$CONF" "" "control: (socket: \"$SOCK\", metrics_listen: \"$METRICS\"),"

if ! ops_start "$CONF" "$EG_TMP/egressd-main.log"; then
	show_egressd_log
	die "egressd run: did not listen on 10.8.0.1:$LISTEN_PORT and [fd08::1]:$LISTEN_PORT within 15 s"
fi
if ! egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1; then
	die "egressd rules | sh: $(tail -n 3 "$EG_TMP/rules.out" | oneline)"
fi
wait_until 5 test -S "$SOCK" || die "egressd's control socket $SOCK did not appear"

# ================================================================== 1 counters
MB20=$((20 * 1000 * 1000))
UDP_N=200
UDP_SIZE=500
ctl stats --prometheus >"$EG_TMP/prom0" 2>&1
up_out=$(egtool "${NS_C[1]}" upload "$TARGET4" 9006 "$MB20" 2>&1)
down_out=$(egtool "${NS_C[1]}" download "$TARGET4" 9002 "$MB20" 2>&1)
udp_out=$(ops_tool "${NS_C[1]}" udp-burst "$TARGET4" "$UDP_WHO_PORT" "$UDP_N" "$UDP_SIZE" 2>&1)
# What crossed egressd for exit1, payload only: the sized sink's request
# line "20000000\n" and its reply "<sha256hex> 20000000\n" (74 bytes), the
# source's request line (9 bytes) and the 20 MB each way.
want_up=$((MB20 + 9 + 9))
want_down=$((MB20 + 74))
tcp_settled() {
	ctl stats --prometheus >"$EG_TMP/prom1" 2>&1 || return 1
	[ $(($(prom "$EG_TMP/prom1" tcp_bytes_up exit1) - $(prom "$EG_TMP/prom0" tcp_bytes_up exit1))) -ge $((want_up * 98 / 100)) ] &&
		[ $(($(prom "$EG_TMP/prom1" tcp_bytes_down exit1) - $(prom "$EG_TMP/prom0" tcp_bytes_down exit1))) -ge $((want_down * 98 / 100)) ]
}
wait_until 5 tcp_settled
sleep 0.3 # counters of the flows' last reads land with their close
ctl stats --prometheus >"$EG_TMP/prom1" 2>&1
if ! grep -q '^egressd_' "$EG_TMP/prom1"; then
	fail_n 4 "1a-1d counters: egressd stats --prometheus" "$(head -n 3 "$EG_TMP/prom1" | oneline)"
else
	delta() { echo $(($(prom "$EG_TMP/prom1" "$1" "$2") - $(prom "$EG_TMP/prom0" "$1" "$2"))); }
	d_up=$(delta tcp_bytes_up exit1)
	d_down=$(delta tcp_bytes_down exit1)
	d_flows=$(delta tcp_flows_total exit1)
	# |got - want| <= 2 % of want
	within() { local g=$1 w=$2 d; d=$((g - w)); d=${d#-}; [ $((d * 100)) -le $((w * 2)) ]; }
	case "$up_out $down_out" in
	ok*ok*)
		if within "$d_up" "$want_up" && within "$d_down" "$want_down" && [ "$d_flows" -ge 2 ]; then
			pass "1a counters: TCP exit1 tcp_bytes_up +$d_up (sent $want_up), tcp_bytes_down +$d_down (sent $want_down), tcp_flows_total +$d_flows"
		else
			fail "1a counters: TCP bytes of exit1 within 2 %" \
				"tcp_bytes_up +$d_up (want $want_up), tcp_bytes_down +$d_down (want $want_down), tcp_flows_total +$d_flows"
		fi
		;;
	*) fail "1a counters: TCP transfers did not complete" "upload: $up_out; download: $down_out" ;;
	esac
	sent_n=$(kv sent "$udp_out")
	sent_b=$(kv bytes "$udp_out")
	recv_n=$(kv recv "$udp_out")
	recv_b=$(printf '%s\n' "$udp_out" | awk '{ print $8 }')
	u_dup=$(delta udp_dgrams_up exit1)
	u_bup=$(delta udp_bytes_up exit1)
	u_ddn=$(delta udp_dgrams_down exit1)
	u_bdn=$(delta udp_bytes_down exit1)
	# within a datagram: counts +-1, bytes +- one datagram (request or reply)
	near() { local d=$(($1 - $2)); d=${d#-}; [ "$d" -le "$3" ]; }
	if [ "${sent_n:-0}" -ne "$UDP_N" ] || [ "${recv_n:-0}" -lt $((UDP_N - 2)) ]; then
		fail "1b counters: UDP burst" "the client saw: $udp_out"
	elif near "$u_dup" "$sent_n" 1 && near "$u_bup" "$sent_b" "$UDP_SIZE" &&
		near "$u_ddn" "$recv_n" 1 && near "$u_bdn" "$recv_b" 100; then
		pass "1b counters: UDP exit1 udp_dgrams_up +$u_dup / udp_bytes_up +$u_bup (sent $sent_n / $sent_b), udp_dgrams_down +$u_ddn / udp_bytes_down +$u_bdn (received $recv_n / $recv_b)"
	else
		fail "1b counters: UDP of exit1 within a datagram" \
			"udp_dgrams_up +$u_dup udp_bytes_up +$u_bup (sent $sent_n / $sent_b); udp_dgrams_down +$u_ddn udp_bytes_down +$u_bdn (received $recv_n / $recv_b)"
	fi
	# Control: traffic is counted against its own tunnel only.
	moved=""
	for t in exit0 exit2; do
		for m in tcp_bytes_up tcp_bytes_down udp_bytes_up udp_bytes_down tcp_flows_total; do
			[ "$(delta "$m" "$t")" -ne 0 ] && moved="$moved $t.$m+$(delta "$m" "$t")"
		done
	done
	t_up=$(delta tcp_bytes_up "")
	if [ -z "$moved" ] && [ "$t_up" -ge "$d_up" ]; then
		pass "1c counters (control): exit0's and exit2's did not move; the total tcp_bytes_up (+$t_up) covers exit1's"
	else
		fail "1c counters (control): only exit1's counters move" "moved:${moved:- none}; total tcp_bytes_up +$t_up vs exit1 +$d_up"
	fi
	# The metrics endpoint serves the same counters (nothing flows now).
	http=$(nsx "$NS_GW" curl -sS --max-time 5 -o "$EG_TMP/metrics.http" -w '%{http_code}' "http://$METRICS/metrics" 2>&1)
	ctl stats --prometheus >"$EG_TMP/prom2" 2>&1
	m_http=$(prom "$EG_TMP/metrics.http" tcp_bytes_up exit1)
	m_cli=$(prom "$EG_TMP/prom2" tcp_bytes_up exit1)
	types=$(grep -c '^# TYPE egressd_' "$EG_TMP/metrics.http" 2>/dev/null)
	if [ "$http" = 200 ] && [ "$m_http" = "$m_cli" ] && [ "$m_http" -gt 0 ] && [ "${types:-0}" -gt 10 ]; then
		pass "1d GET http://$METRICS/metrics: 200, $types metrics with # TYPE, tcp_bytes_up{tunnel=\"exit1\"} $m_http = the CLI's"
	else
		fail "1d GET /metrics serves the counters" "http $http, endpoint says $m_http, CLI says $m_cli, $types TYPE lines"
	fi
fi
ctl stats >"$EG_TMP/stats.table" 2>&1
if grep -q '^exit1 ' "$EG_TMP/stats.table"; then
	pass "1e egressd stats prints the per-tunnel table ($(grep '^exit1 ' "$EG_TMP/stats.table" | tr -s ' '))"
else
	fail "1e egressd stats prints a table" "$(head -n 3 "$EG_TMP/stats.table" | oneline)"
fi

# ================================================================== 2 live routes
# c0's held connection goes through exit0; c2's (exit2) is the bystander.
c0_seen=$(curl_whoami "${NS_C[0]}")
trk_c0=0
trk_c2=0
trickle_start "${NS_C[0]}" trk-c0 && trk_c0=$EG_LAST_PID
trickle_start "${NS_C[2]}" trk-c2 && trk_c2=$EG_LAST_PID
if [ "$trk_c0" = 0 ] || [ "$trk_c2" = 0 ]; then
	fail_n 4 "2a-2d route set --reset-flows" "the held connections never started flowing: $(cat "$EG_TMP/trk-c0.out" "$EG_TMP/trk-c2.out" 2>/dev/null | oneline)"
else
	t_set=$(now_ns)
	set_out=$(ctl route set --source 10.8.0.10 --tunnel exit1 --reset-flows 2>&1)
	set_rc=$?
	wait_until 3 test -s "$EG_TMP/trk-c0.out"
	sleep 0.5
	c0_end=$(cat "$EG_TMP/trk-c0.out" 2>/dev/null)
	c2_end=$(cat "$EG_TMP/trk-c2.out" 2>/dev/null)
	read -r _ t_end reason nbytes <<<"${c0_end:-x 0 none 0}"
	dt_ms=$(((t_end - t_set) / 1000000))
	seen=$(curl_whoami "${NS_C[0]}")
	if [ "$set_rc" -ne 0 ]; then
		fail "2a route set --source 10.8.0.10 --tunnel exit1 --reset-flows" "exit $set_rc: $set_out"
	elif [ "$c0_seen" != "$(exit_egress4 0)" ]; then
		fail "2a route set --reset-flows (precondition)" "before the change c0 left as '$c0_seen', want exit0's $(exit_egress4 0)"
	elif [ -z "$c0_end" ]; then
		fail "2a route set --reset-flows: c0's open connection must end" "it was still open 3.5 s later; egressd said: $set_out"
	elif [ "$reason" != reset ] && [ "$reason" != eof ] || [ "$dt_ms" -gt 2000 ]; then
		fail "2a route set --reset-flows: c0's open connection" "ended with '$reason' after $dt_ms ms"
	else
		pass "2a route set c0 -> exit1 --reset-flows: c0's open connection via exit0 ended ($reason after $dt_ms ms, $nbytes bytes before)"
	fi
	if [ -z "$c2_end" ] && pid_alive "$trk_c2"; then
		pass "2b (control) c2's open connection (exit2) is untouched by c0's reset"
	else
		fail "2b (control) c2's open connection must keep flowing" "it ended: '$c2_end'"
	fi
	if [ "$seen" = "$(exit_egress4 1)" ]; then
		pass "2c after route set, new connections from c0 leave as exit1 ($seen; before: $c0_seen)"
	else
		fail "2c after route set, new connections from c0 leave as exit1" "target saw '$seen', want $(exit_egress4 1)"
	fi
	list=$(ctl route list 2>&1)
	if printf '%s\n' "$list" | grep -qx '10.8.0.10/32 -> exit1  (route set)'; then
		pass "2d route list shows 10.8.0.10/32 -> exit1 with its origin (route set)"
	else
		fail "2d route list shows 10.8.0.10/32 -> exit1" "$(printf '%s' "$list" | oneline)"
	fi
fi
# Without --reset-flows: the open flow stays, new flows move.
if trickle_start "${NS_C[0]}" trk-c0b; then
	trk_pid=$EG_LAST_PID
	set_out=$(ctl route set --source 10.8.0.10 --tunnel exit2 2>&1)
	sleep 1.5
	seen=$(curl_whoami "${NS_C[0]}")
	if [ -s "$EG_TMP/trk-c0b.out" ] || ! pid_alive "$trk_pid"; then
		fail "2e (control) route set without --reset-flows keeps c0's open flow" "it ended: $(cat "$EG_TMP/trk-c0b.out") ($set_out)"
	elif [ "$seen" != "$(exit_egress4 2)" ]; then
		fail "2e route set c0 -> exit2 (no reset)" "new connection seen as '$seen', want $(exit_egress4 2) ($set_out)"
	else
		pass "2e (control) route set c0 -> exit2 without --reset-flows: the open flow keeps going, new ones leave as $seen"
	fi
else
	fail "2e route set without --reset-flows" "the held connection never flowed: $(cat "$EG_TMP/trk-c0b.out" 2>/dev/null)"
fi
del_out=$(ctl route del --source 10.8.0.10 2>&1)
del_rc=$?
list=$(ctl route list 2>&1)
res=$(egtool "${NS_C[0]}" expect-reset "$TARGET4" 80 2>&1)
if [ "$del_rc" -ne 0 ]; then
	fail "2f route del --source 10.8.0.10" "exit $del_rc: $del_out"
elif printf '%s\n' "$list" | grep -q '^10.8.0.10/32 '; then
	fail "2f route del removes the route" "route list still shows it: $(printf '%s' "$list" | oneline)"
else
	case $res in
	reset* | refused*) pass "2f route del: 10.8.0.10/32 gone from route list, c0 now gets the no-route reset ($res)" ;;
	*) fail "2f after route del c0 must get the no-route reset (default Reject)" "got: $res" ;;
	esac
fi
# The trickles would end on their own (60 s); stop them now, by PID.
for p in "$trk_c0" "$trk_c2" "${trk_pid:-0}"; do
	[ "$p" != 0 ] && stop_pid "$p"
done

# ================================================================== 3 SIGHUP
# Back to the file's routes first (route del above removed c0's).
kill -HUP "$EGRESSD_PID"
wait_until 5 grep -q 'reloaded' "$EGRESSD_LOG"
before_c1=$(curl_whoami "${NS_C[1]}")
CONF_NEW=$EG_TMP/egressd-new.ron
sed 's/(source: "10.8.0.11", tunnel: "exit1"), (source: "fd08::11", tunnel: "exit1")/(source: "10.8.0.11", tunnel: "exit2"), (source: "fd08::11", tunnel: "exit2")/' \
	"$CONF" >"$CONF_NEW"
rm -f "$EG_TMP/hup.ready" "$EG_TMP/hup-pp.stop"
ops_tool_bg "${NS_C[1]}" "$EG_TMP/hup-c1.out" paced 5 5 "$TARGET4" 9006 9002 $((3 * 1000 * 1000)) 700000 "$EG_TMP/hup.ready" 40
pc1=$EG_LAST_PID
ops_tool_bg "${NS_C[2]}" "$EG_TMP/hup-c2.out" paced 5 5 "$TARGET4" 9006 9002 $((3 * 1000 * 1000)) 700000 "$EG_TMP/hup2.ready" 40
pc2=$EG_LAST_PID
ops_tool_bg "${NS_C[1]}" "$EG_TMP/hup-pp.out" udp-pingpong "$TARGET4" "$UDP_WHO_PORT" "$EG_TMP/hup-pp.stop" 40 0.05
ppp=$EG_LAST_PID
ops_tool_bg "${NS_C[2]}" "$EG_TMP/hup-pp2.out" udp-pingpong "$TARGET4" "$UDP_WHO_PORT" "$EG_TMP/hup-pp.stop" 40 0.05
ppp2=$EG_LAST_PID
if ! wait_until 15 test -e "$EG_TMP/hup.ready" || ! wait_until 5 test -e "$EG_TMP/hup2.ready"; then
	fail_n 5 "3a-3d, 3f SIGHUP under traffic" "the 20 transfers never got going: $(cat "$EG_TMP/hup-c1.out" "$EG_TMP/hup-c2.out" 2>/dev/null | oneline)"
else
	# Counters are live: mid-transfer, the flows show as active and the
	# byte counters grow between two samples.
	ctl stats --prometheus >"$EG_TMP/prom-live0" 2>&1
	sleep 0.5
	ctl stats --prometheus >"$EG_TMP/prom-live1" 2>&1
	act=$(prom "$EG_TMP/prom-live1" tcp_flows_active "")
	g_up=$(($(prom "$EG_TMP/prom-live1" tcp_bytes_up "") - $(prom "$EG_TMP/prom-live0" tcp_bytes_up "")))
	g_dn=$(($(prom "$EG_TMP/prom-live1" tcp_bytes_down "") - $(prom "$EG_TMP/prom-live0" tcp_bytes_down "")))
	if [ "$act" -ge 20 ] && [ "$g_up" -gt 100000 ] && [ "$g_dn" -gt 100000 ]; then
		pass "3f counters are live: mid-transfer tcp_flows_active $act, tcp_bytes_up +$g_up and tcp_bytes_down +$g_dn in 0.5 s"
	else
		fail "3f counters move while traffic flows" "tcp_flows_active $act (want >= 20), in 0.5 s tcp_bytes_up +$g_up, tcp_bytes_down +$g_dn"
	fi
	cp "$CONF_NEW" "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
	n_rel=$(grep -c 'reloaded' "$EGRESSD_LOG")
	t_hup=$(now_ns)
	kill -HUP "$EGRESSD_PID"
	wait_until 5 log_count_gt 'reloaded' "$n_rel"
	after_c1=$(curl_whoami "${NS_C[1]}")
	after_c1_6=$(curl_whoami "${NS_C[1]}" -6)
	after_udp=$(udp_who "${NS_C[1]}" "$TARGET4")
	wait_until 30 pid_gone "$pc1"
	wait_until 10 pid_gone "$pc2"
	touch "$EG_TMP/hup-pp.stop"
	wait_until 5 pid_gone "$ppp"
	wait_until 5 pid_gone "$ppp2"
	pp2=$(cat "$EG_TMP/hup-pp2.out" 2>/dev/null)
	r1=$(cat "$EG_TMP/hup-c1.out" 2>/dev/null)
	r2=$(cat "$EG_TMP/hup-c2.out" 2>/dev/null)
	pp=$(cat "$EG_TMP/hup-pp.out" 2>/dev/null)
	spanned=1
	for r in "$r1" "$r2"; do
		ms=$(kveq max_start_ns "$r")
		me=$(kveq min_end_ns "$r")
		{ [ "${ms:-0}" -gt 0 ] && [ "${ms:-0}" -lt "$t_hup" ] && [ "${me:-0}" -gt "$t_hup" ]; } || spanned=0
	done
	case "$r1|$r2" in
	ok*"|"ok*)
		if [ "$spanned" -eq 1 ]; then
			pass "3a SIGHUP mid-transfer: 20/20 paced TCP transfers (3 MB each, c1 via exit1 + c2 via exit2, up and down) intact, all open across the reload"
		else
			fail "3a SIGHUP mid-transfer (control)" "the transfers did not span the reload (t_hup $t_hup): $r1 / $r2"
		fi
		;;
	*) fail "3a SIGHUP mid-transfer: every transfer intact" "c1: $r1; c2: $r2" ;;
	esac
	# c1's route changed: egressd moves its session to the new tunnel at
	# the next datagram (README: "a session keeps its association when its
	# tunnel did not change"); what must hold is that nothing is lost.
	lost=$(kv lost "$pp")
	if [ "${lost:-x}" = 0 ] && [ "$(kv sent "$pp")" -gt 20 ]; then
		pass "3b SIGHUP: c1's UDP ping-pong (its route changed) lost nothing: $pp"
	else
		fail "3b SIGHUP: c1's running UDP ping-pong loses nothing" "$pp"
	fi
	# c2's route did not change: its session keeps its association (one
	# address and port at the exit for the whole run).
	lost2=$(kv lost "$pp2")
	peers2=$(kv peers "$pp2")
	case $peers2 in
	"$(exit_egress4 2)":*)
		if [ "${lost2:-x}" = 0 ] && [ "$(kv sent "$pp2")" -gt 20 ] && [ "${peers2#*,}" = "$peers2" ]; then
			pass "3c SIGHUP: c2's UDP session (route unchanged) kept its association, one exit address $peers2, nothing lost"
		else
			fail "3c SIGHUP: c2's UDP session (route unchanged) keeps its association and loses nothing" "$pp2"
		fi
		;;
	*) fail "3c SIGHUP: c2's UDP session (route unchanged) keeps its association via exit2" "$pp2" ;;
	esac
	if [ "$before_c1" = "$(exit_egress4 1)" ] && [ "$after_c1" = "$(exit_egress4 2)" ] &&
		[ "$after_c1_6" = "$(exit_egress6 2)" ] && [ "$(field 2 "$after_udp")" = "$(exit_egress4 2)" ]; then
		pass "3d after SIGHUP, new flows from c1 use the new route: TCP $after_c1 / $after_c1_6, UDP $(field 2 "$after_udp") (before: $before_c1)"
	else
		fail "3d after SIGHUP, new flows from c1 use exit2" \
			"before '$before_c1'; after: TCP '$after_c1' / '$after_c1_6', UDP '$after_udp' (want $(exit_egress4 2) / $(exit_egress6 2))"
	fi
fi
# A bad config: syntax error (and a route change that must not apply).
sed 's/(source: "10.8.0.11", tunnel: "exit2")/(source: "10.8.0.11" tunnel: "exit0")/' "$CONF_NEW" >"$CONF.tmp" && mv "$CONF.tmp" "$CONF"
n_fail=$(grep -c 'reload failed' "$EGRESSD_LOG")
kill -HUP "$EGRESSD_PID"
wait_until 5 log_count_gt 'reload failed' "$n_fail"
errline=$(grep 'reload failed' "$EGRESSD_LOG" | tail -n 1)
seen=$(curl_whoami "${NS_C[1]}")
if ! pid_alive "$EGRESSD_PID"; then
	fail "3e SIGHUP with a bad config" "egressd exited: $(tail -n 3 "$EGRESSD_LOG" | oneline)"
elif ! printf '%s\n' "$errline" | grep -qE "$(basename "$CONF"):[0-9]+:[0-9]+"; then
	fail "3e SIGHUP with a bad config is logged with file:line:col" "log: '${errline:-nothing}'"
elif [ "$seen" != "$(exit_egress4 2)" ]; then
	fail "3e after a failed reload the running routes stay" "c1 left as '$seen', want $(exit_egress4 2)"
else
	pass "3e SIGHUP with a syntax error: logged ($(printf '%s\n' "$errline" | grep -oE "$(basename "$CONF"):[0-9]+:[0-9]+: .*")), egressd keeps running with the old routes (c1 still $seen)"
fi
cp "$CONF_NEW" "$CONF"

# ================================================================== 4 SIGTERM drains
rm -f "$EG_TMP/term.ready"
ops_tool_bg "${NS_C[1]}" "$EG_TMP/term.out" paced 1 1 "$TARGET4" 9006 9002 $((2 * 1000 * 1000)) 1000000 "$EG_TMP/term.ready" 20
pterm=$EG_LAST_PID
if ! wait_until 10 test -e "$EG_TMP/term.ready"; then
	fail_n 3 "4a-4c SIGTERM drains" "the transfer never got going: $(cat "$EG_TMP/term.out")"
else
	sleep 0.3
	t_term=$(now_ns)
	kill -TERM "$EGRESSD_PID"
	sleep 0.2
	newc=$(egtool "${NS_C[2]}" expect-reset "$TARGET4" 80 2>&1)
	wait_until 8 pid_gone "$pterm"
	wait_until 8 pid_gone "$EGRESSD_PID"
	t_gone=$(now_ns)
	if pid_gone "$EGRESSD_PID"; then
		wait "$EGRESSD_PID" 2>/dev/null
		erc=$?
	else
		erc=running
	fi
	gone_ms=$(((t_gone - t_term) / 1000000))
	r=$(cat "$EG_TMP/term.out")
	me=$(kveq min_end_ns "$r")
	case $r in
	ok*)
		if [ "${me:-0}" -gt "$t_term" ]; then
			pass "4a SIGTERM mid-transfer: the running transfers (2 MB up, 2 MB down) completed intact $(((me - t_term) / 1000000)) ms after SIGTERM"
		else
			fail "4a SIGTERM mid-transfer (control)" "the transfers ended before SIGTERM: $r"
		fi
		;;
	*) fail "4a SIGTERM: the running transfer completes intact" "$r" ;;
	esac
	case $newc in
	refused* | reset* | eof-nodata*) pass "4b a new connection after SIGTERM is turned away at once ($newc)" ;;
	*) fail "4b a new connection after SIGTERM must be refused/reset, not hang" "got: $newc" ;;
	esac
	if [ "$erc" = 0 ] && [ "$gone_ms" -le 6000 ]; then
		pass "4c egressd exited 0, $gone_ms ms after SIGTERM ($(grep -o 'stopped:.*' "$EGRESSD_LOG" | tail -n 1 | cut -c1-60))"
	else
		fail "4c egressd exits 0 within 6 s of SIGTERM" "exit code $erc after $gone_ms ms; $(tail -n 3 "$EGRESSD_LOG" | oneline)"
	fi
fi
egressd_stop

# ================================================================== 5 nft backend
CONF=$EG_TMP/egressd-nft.ron
topo_write_config "$CONF" "" "control: (socket: \"$SOCK\", metrics_listen: \"$METRICS\"),"
if ! ops_start "$CONF" "$EG_TMP/egressd-nft.log"; then
	fail_n 5 "5a-5e egressd run (for nft)" "did not start: $(tail -n 3 "$EGRESSD_LOG" | oneline)"
else
	"$(egressd_bin)" rules --config "$CONF" --delete >"$EG_TMP/rules-del.sh" &&
		nsx "$NS_GW" sh -e "$EG_TMP/rules-del.sh" >"$EG_TMP/rules-del.out" 2>&1
	# Control for 5d: without rules c1 leaks as .200, c3's ping is answered,
	# and the leak detector counts both.
	lk0=$(leak_count)
	leak_seen=$(curl_whoami "${NS_C[1]}")
	cping=$(ping_result "${NS_C[3]}" "$TARGET4" 1)
	lk1=$(leak_count)
	if ! iptables_clean; then
		fail_n 4 "5a-5d no iptables rules of egressd before the nft backend" "$(iptables_egressd_rules | head -n 3 | oneline)"
	elif [ "$leak_seen" != "$GW_UPLINK4" ] || [ "$cping" != reply ] || [ "$lk1" -le "$lk0" ]; then
		fail_n 4 "5a-5d (control) without any rules c1 must leak via the uplink and c3's ping be answered" \
			"target saw '$leak_seen', c3 ping '$cping', leak detector +$((lk1 - lk0))"
	elif ! egressd_rules_apply --config "$CONF" --backend nft >"$EG_TMP/rules-nft.out" 2>&1; then
		fail_n 4 "5a-5d egressd rules --backend nft | sh -e" "$(tail -n 3 "$EG_TMP/rules-nft.out" | oneline)"
	elif ! iptables_clean || ! nsx "$NS_GW" nft list table inet egressd >/dev/null 2>&1; then
		fail_n 4 "5a-5d rules --backend nft: only table inet egressd" "iptables: $(iptables_egressd_rules | head -n 2 | oneline); nft: $(nsx "$NS_GW" nft list tables | oneline)"
	else
		pass "5a rules --backend nft | sh -e: table inet egressd, no iptables rules of egressd (control: without rules c1 leaked as $leak_seen, c3's ping was answered, the leak detector counted $((lk1 - lk0)) packets)"
		s4=$(curl_whoami "${NS_C[1]}")
		s6=$(curl_whoami "${NS_C[1]}" -6)
		u4=$(udp_who "${NS_C[1]}" "$TARGET4")
		u6=$(udp_who "${NS_C[1]}" "$TARGET6")
		if [ "$s4" = "$(exit_egress4 1)" ] && [ "$s6" = "$(exit_egress6 1)" ]; then
			pass "5b nft: c1 TCP leaves as exit1 ($s4, $s6)"
		else
			fail "5b nft: c1 TCP leaves as exit1" "target saw '$s4' / '$s6'"
		fi
		if [ "$u4" = "$TARGET4 $(exit_egress4 1)" ] && [ "$u6" = "$TARGET6 $(exit_egress6 1)" ]; then
			pass "5c nft: c1 UDP leaves as exit1, replies from the address asked ($u4; $u6)"
		else
			fail "5c nft: c1 UDP leaves as exit1" "v4: '$u4', v6: '$u6' (want '<from> <seen>' = $TARGET4 $(exit_egress4 1) / $TARGET6 $(exit_egress6 1))"
		fi
		leak0=$(leak_count)
		r4=$(egtool "${NS_C[3]}" expect-reset "$TARGET4" 80 2>&1)
		r6=$(egtool "${NS_C[3]}" expect-reset "$TARGET6" 80 2>&1)
		un=$(udptool "${NS_C[3]}" none "$TARGET4" "$UDP_WHO_PORT" 1 2>&1)
		ping4=$(ping_result "${NS_C[3]}" "$TARGET4" 1)
		leak1=$(leak_count)
		case "$r4 $r6" in
		reset*reset* | refused*refused* | reset*refused* | refused*reset*)
			if [ "$leak1" -eq "$leak0" ] && [ "$ping4" = timeout ] && [ "$un" = "no reply" ]; then
				pass "5d nft: c3 (no route) TCP v4/v6 reset, UDP unanswered ($un), ping sent and unanswered, 0 packets reach inet"
			else
				fail "5d nft: c3 (no route) must leak nothing" "leak detector +$((leak1 - leak0)), ping '$ping4' (want timeout), UDP '$un' (want no reply)"
			fi
			;;
		*) fail "5d nft: c3 (no route) gets a TCP reset" "v4: $r4; v6: $r6" ;;
		esac
	fi
	if "$(egressd_bin)" rules --config "$CONF" --backend nft --delete >"$EG_TMP/rules-nftdel.sh" &&
		nsx "$NS_GW" sh -e "$EG_TMP/rules-nftdel.sh" >"$EG_TMP/rules-nftdel.out" 2>&1; then
		seen=$(curl_whoami "${NS_C[1]}")
		if nsx "$NS_GW" nft list table inet egressd >/dev/null 2>&1; then
			fail "5e rules --backend nft --delete removes the table" "table inet egressd is still there"
		elif nsx "$NS_GW" ip rule | grep -q 'fwmark'; then
			fail "5e rules --backend nft --delete removes the mark routing" "$(nsx "$NS_GW" ip rule | grep fwmark | oneline)"
		elif [ "$seen" != "$GW_UPLINK4" ]; then
			fail "5e after --delete c1 should leak again (control)" "target saw '$seen'"
		else
			pass "5e rules --backend nft --delete: table and ip rule gone (c1 leaks again as $seen: control)"
		fi
	else
		fail "5e egressd rules --backend nft --delete | sh -e" "$(tail -n 3 "$EG_TMP/rules-nftdel.out" 2>/dev/null | oneline)"
	fi
fi
egressd_stop

# ================================================================== 6 least privilege
# The config and the control socket's directory must be reachable by nobody.
chmod 711 "$EG_TMP"
PRIV=$EG_TMP/priv
mkdir -p "$PRIV"
chown nobody:nogroup "$PRIV"
SOCK=$PRIV/egressd.sock
CONF=$PRIV/egressd.ron
topo_write_config "$CONF" "$SOCK"
chmod 644 "$CONF"
if ! egressd_rules_apply --config "$CONF" >"$EG_TMP/rules-priv.out" 2>&1; then
	fail_unplanned "6 egressd rules | sh -e (for the unprivileged run)" "$(tail -n 3 "$EG_TMP/rules-priv.out" | oneline)"
fi
# shellcheck disable=SC2054  # the commas belong to setpriv's --bounding-set
SETPRIV_CAP=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=+net_admin
	--ambient-caps=+net_admin --bounding-set=-all,+net_admin)
if ! ops_start "$CONF" "$EG_TMP/egressd-nobody.log" "${SETPRIV_CAP[@]}"; then
	fail_n 3 "6a-6c egressd as nobody with CAP_NET_ADMIN starts" "$(grep -iE 'error|warn' "$EGRESSD_LOG" | tail -n 3 | oneline)"
else
	st=/proc/$EGRESSD_PID/status
	uid=$(awk '$1 == "Uid:" { print $2 "/" $3 }' "$st")
	capeff=$(awk '$1 == "CapEff:" { print $2 }' "$st")
	capbnd=$(awk '$1 == "CapBnd:" { print $2 }' "$st")
	wait_until 5 test -S "$SOCK"
	sock_own=$(stat -c '%U %a' "$SOCK" 2>/dev/null)
	s4=$(curl_whoami "${NS_C[1]}")
	s6=$(curl_whoami "${NS_C[1]}" -6)
	u4=$(udp_who "${NS_C[1]}" "$TARGET4")
	u6=$(udp_who "${NS_C[1]}" "$TARGET6")
	routes=$(ctl route list 2>&1)
	if [ "$uid" != 65534/65534 ] || [ "$capeff" != 0000000000001000 ] || [ "$capbnd" != 0000000000001000 ]; then
		fail "6a egressd runs as nobody with CAP_NET_ADMIN only" "uid $uid CapEff $capeff CapBnd $capbnd"
	elif [ "$s4" = "$(exit_egress4 1)" ] && [ "$s6" = "$(exit_egress6 1)" ]; then
		pass "6a egressd as nobody (uid $uid, CapEff $capeff = CAP_NET_ADMIN only): c1 TCP leaves as exit1 ($s4, $s6)"
	else
		fail "6a egressd as nobody: c1 TCP leaves as exit1" "target saw '$s4' / '$s6'"
	fi
	if [ "$u4" = "$TARGET4 $(exit_egress4 1)" ] && [ "$u6" = "$TARGET6 $(exit_egress6 1)" ]; then
		pass "6b egressd as nobody: c1 UDP leaves as exit1, replies from the address asked (IP_TRANSPARENT works: $u4; $u6)"
	else
		fail "6b egressd as nobody: c1 UDP leaves as exit1" "v4: '$u4', v6: '$u6'; log: $(grep -iE 'transparent|permission|denied|error' "$EGRESSD_LOG" | tail -n 2 | oneline)"
	fi
	if [ "$sock_own" = "nobody 600" ] && printf '%s\n' "$routes" | grep -q '10.8.0.11/32 -> exit1'; then
		pass "6c control socket owned by nobody, mode 600, answers route list"
	else
		fail "6c control socket of the unprivileged daemon" "owner/mode '$sock_own'; route list: $(printf '%s' "$routes" | oneline)"
	fi
fi
egressd_stop
# Negative control: nobody without any capability.
rm -f "$SOCK"
SETPRIV_NOCAP=(setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all)
if ops_start "$CONF" "$EG_TMP/egressd-nocap.log" "${SETPRIV_NOCAP[@]}"; then
	capeff=$(awk '$1 == "CapEff:" { print $2 }' "/proc/$EGRESSD_PID/status")
	u4=$(udp_who "${NS_C[1]}" "$TARGET4")
	s4=$(curl_whoami "${NS_C[1]}")
	why=$(grep -iE 'transparent|CAP_NET_ADMIN|permission|not permitted' "$EGRESSD_LOG" | head -n 2 | oneline 240)
	# Only "sent, no reply" passes: a tool error says nothing about egressd.
	case $u4 in
	"no reply")
		pass "6d (negative control) as nobody without capabilities (CapEff $capeff) egressd runs but UDP gets no reply ('$u4'; TCP: '$s4'); log: ${why:-nothing about it}"
		;;
	"reply from"* | "$TARGET4 "*)
		fail "6d (negative control) without CAP_NET_ADMIN UDP must not work" "CapEff $capeff, UDP got '$u4'"
		;;
	*)
		fail "6d (negative control) without CAP_NET_ADMIN UDP must go unanswered" "the client could not tell: '$u4'"
		;;
	esac
	skip_check "6e the refusal names the missing privilege" "egressd started without capabilities: no refusal to read"
	egressd_stop
else
	wait_until 3 pid_gone "$EGRESSD_PID"
	if pid_gone "$EGRESSD_PID"; then
		wait "$EGRESSD_PID" 2>/dev/null
		nrc=$?
	else
		nrc=running
	fi
	# What a user running at the default log level sees: the error lines.
	msg=$(grep -E ' ERROR ' "$EGRESSD_LOG" | tail -n 2 | sed 's/^\[[^]]*\] *//' | oneline 300)
	if [ "$nrc" != 0 ] && [ "$nrc" != running ]; then
		pass "6d (negative control) as nobody without capabilities egressd cannot set up UDP and refuses to start (exit $nrc): $msg"
		if printf '%s\n' "$msg" | grep -qE 'CAP_NET_ADMIN|IP_TRANSPARENT'; then
			pass "6e the refusal names the missing privilege (CAP_NET_ADMIN / IP_TRANSPARENT)"
		else
			fail "6e the refusal should name the missing privilege (CAP_NET_ADMIN for IP_TRANSPARENT)" \
				"the error says: $msg"
		fi
	else
		fail "6d (negative control) without CAP_NET_ADMIN: egressd should refuse with a clear message or UDP should fail" \
			"exit $nrc; log: $(tail -n 3 "$EGRESSD_LOG" | oneline 300)"
		skip_check "6e the refusal names the missing privilege" "no refusal to read (see 6d)"
	fi
	egressd_stop
fi

log "ops.sh took $(($(date +%s) - T0)) s"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
summary
