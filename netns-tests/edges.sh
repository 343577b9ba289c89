#!/usr/bin/env bash
# netns-tests/edges.sh — issue 14's correctness edges, end to end in network
# namespaces.
#
#  c0 10.8.0.10 ─┐                      ┌─ exit0 (microsocks, TCP only) ─┐ 198.51.100.1
#  c1 10.8.0.11 ─┤  gw: br0 10.8.0.1    ├─ exit1 (danted)               ─┤ 198.51.100.2
#  c2 10.8.0.12 ─┼─ egressd :10900 ─────┴─ exit2 (danted)               ─┤ 198.51.100.3
#  c3 10.8.0.13 ─┘  (c3: no route)                                        ├─ inet: 203.0.113.10
#                   uplink 198.51.100.200 (MASQUERADE) ───────────────────┘  (+ tools/edges_tool.py
#                                                                              serve: 9101..9103)
#
# egressd runs with tcp.idle_timeout_secs 60, tcp.half_close_timeout_secs 3
# and control.metrics_listen 127.0.0.1:9180 (in gw).
#
# Checks (one PASS/FAIL line each; 13 on every path, plan_checks):
#   1  urgent data: c1 -> danted -> 203.0.113.10:9101 sends 64 KiB, one
#      MSG_OOB byte, 64 KiB and gets the same back the other way: every byte
#      arrives in order both ways (splice stops at the urgent mark; before,
#      that was taken for EOF and the rest was lost)
#   2  the same after a SIGHUP that sets tcp.splice false (the copy pump);
#      the reload log line names what needs a restart
#   3  half-close: c1 shuts its write side and the server holds the other
#      open, silent: the flow ends after 3 s (half_close_timeout_secs), not
#      the 60 s idle timeout; control: a flow that is open both ways and
#      silent is still open after 6 s; a half-closed flow that keeps
#      receiving (1 byte/s for 6 s) gets every byte and a clean end
#   4a metrics: 3 clients connect to the metrics port and stay silent; a
#      scrape on a 4th connection right after is answered (HTTP 200 with
#      egressd_tcp_flows_total) while the 3 are still open (one process
#      does both: fails when a silent client could not connect or was closed
#      before the answer was in). egressd closes a metrics connection 2 s
#      after accepting it, so a server that waited on a silent client would
#      answer only after they were closed; an attempt slower than those 2 s
#      is void and made again (5 at most), a faster one decides
#   4b `egressd check` warns for metrics_listen on the bridge (10.8.0.1)
#      and on 0.0.0.0, not for 127.0.0.1 (control)
#   5  `route set` for a source outside intercept.sources warns; inside it
#      does not (control); `--reset-flows` answers that flows were reset and
#      c1's open flow is reset
#   6  control.socket pointing at an existing regular file (a config): egressd
#      refuses it, names the path, and the file is unchanged
#   7  EMFILE: egressd under prlimit --nofile=64:64 while 300 connects are
#      held (accept_paused grows during the window): c1's existing UDP
#      session gets every answer (10 of 10, each within 1 s); before, the
#      front loop skipped UDP events while accepts were paused
#   8  DNS over TCP (c0 -> exit0, microsocks, `udp: false`): 200 lookups, each
#      from a new port and all with the same ID, 20 at a time: every answer
#      reaches its own socket (ID and question), over at most 5 connections
#      to the SOCKS server (SYNs counted at exit0; before: one per lookup)
#   9  a silent resolver (203.0.113.11:53, TCP: silent on its first
#      connection only): 5 lookups get nothing (control); after
#      udp.dns_answer_timeout_secs 2 the connection is replaced
#      (dns_tcp_timeouts grows) and 20 later lookups are all answered
#
# Usage: sudo netns-tests/edges.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 13
# shellcheck source=topology.sh
. "$HERE/topology.sh"

require_root_and_tools nft iptables ip6tables curl microsocks danted python3 ss timeout prlimit
eg_init
# Connections to the exits are counted here: no warm pools (pools.sh tests them).
SOCKS_OPTS="warm: 0, warm_udp: 0, "
T0=$(date +%s)

# edges NS ARGS... / edges_bg NS OUTFILE ARGS... — tools/edges_tool.py in NS
# (pytool, topology.sh), bounded to 60 s.
edges() { EG_TOOL_TIMEOUT=60 pytool edges_tool "$@"; }
edges_bg() { EG_TOOL_TIMEOUT=60 pytool_bg edges_tool "$@"; }
oneline() { tr '\n' ' ' | cut -c1-300; }

SOCK=$EG_TMP/egressd.sock
ctl() { nsx "$NS_GW" timeout 10 "$(egressd_bin)" "$@" --socket "$SOCK"; }
stat_now() {
	ctl stats --prometheus 2>/dev/null |
		awk -v a="egressd_$1" -v b="egressd_$1_total" '$1 == a || $1 == b { print $2; f = 1; exit } END { if (!f) print 0 }'
}
METRICS=127.0.0.1:9180

topo_up
topo_start_services
rm -f "$EG_TMP/edges.ready"
eg_spawn "$NS_INET" "$EG_TMP/edges-svc.log" "$(python_bin)" -u "$EG_TOOLS/edges_tool.py" serve "$TARGET4" --ready "$EG_TMP/edges.ready"
wait_until 15 test -e "$EG_TMP/edges.ready" || die "edges_tool serve did not start: $(tail -n 5 "$EG_TMP/edges-svc.log")"
eg_spawn "$NS_INET" "$EG_TMP/silentdns.log" "$(python_bin)" -u "$EG_TOOLS/edges_tool.py" dns-silent-first "$TARGET4B" 53 --ready "$EG_TMP/silentdns.ready"
wait_until 15 test -e "$EG_TMP/silentdns.ready" || die "dns-silent-first did not start: $(tail -n 5 "$EG_TMP/silentdns.log")"

CONF=$EG_TMP/egressd.ron
write_conf() {
	topo_write_config "$CONF" "" "tcp: (idle_timeout_secs: 60, half_close_timeout_secs: 3, splice: $1),
    udp: (dns_answer_timeout_secs: 2),
    control: (socket: \"$SOCK\", metrics_listen: \"$METRICS\"),"
	# intercept.sources narrowed to the containers' ranges, for check 5.
	sed -i 's|intercept: (tcp: Redirect),|intercept: (tcp: Redirect, sources: ["10.8.0.0/24", "fd08::/64"]),|' "$CONF"
	grep -q 'sources: \["10.8.0.0/24"' "$CONF" || die "could not set intercept.sources in $CONF"
}
write_conf true
egressd_up_or_exit "$CONF"

# ------------------------------------------------------------------ 1, 2 urgent data
name="1 urgent data mid-stream, both ways, through danted (splice)"
out=$(edges "${NS_C[1]}" oob "$TARGET4" 9101 2>&1)
case $out in ok*) pass "$name: $out" ;; *) fail "$name" "$out" ;; esac

name="2 urgent data after SIGHUP to tcp.splice false (copy)"
write_conf false
mark=$(wc -l <"$EGRESSD_LOG")
kill -HUP "$EGRESSD_PID"
reloaded() { tail -n +"$((mark + 1))" "$EGRESSD_LOG" | grep -q 'reloaded:'; }
wait_until 5 reloaded
line=$(tail -n +"$((mark + 1))" "$EGRESSD_LOG" | grep 'reloaded:' | head -n1)
out=$(edges "${NS_C[1]}" oob "$TARGET4" 9101 2>&1)
why=""
case $out in ok*) ;; *) why="$why; $out" ;; esac
case $line in *listen*threads*"only on restart"*) ;; *) why="$why; reload log line does not name what needs a restart: '$line'" ;; esac
if [ -z "$why" ]; then pass "$name: $out; log: ${line##*apply now; }"; else fail "$name" "${why#; }"; fi
write_conf true
kill -HUP "$EGRESSD_PID"

# ------------------------------------------------------------------ 3 half-close
name="3a half-closed and silent: ends by half_close_timeout_secs 3, not idle 60"
out=$(edges "${NS_C[1]}" halfclose "$TARGET4" 9102 20 2>&1)
secs=$(printf '%s' "$out" | sed -n 's/.*after \([0-9]*\)\..*/\1/p')
if [ -n "$secs" ] && [ "$secs" -ge 2 ] && [ "$secs" -le 8 ]; then pass "$name: $out"; else fail "$name" "$out"; fi

name="3b control: open both ways and silent, still open after 6 s"
out=$(edges "${NS_C[1]}" idle "$TARGET4" 9102 6 2>&1)
case $out in open*) pass "$name: $out" ;; *) fail "$name" "$out" ;; esac

name="3c half-closed but receiving (1 byte/s for 6 s): every byte, clean end"
out=$(edges "${NS_C[1]}" halfclose "$TARGET4" 9103 20 2>&1)
case $out in "ended eof"*"got 6 bytes") pass "$name: $out" ;; *) fail "$name" "$out" ;; esac

# ------------------------------------------------------------------ 4 metrics
name="4a metrics: a scrape is answered while 3 silent clients stay connected"
# One process holds the 3 silent connections and scrapes right after they
# are all connected; they must still be open (no EOF) once the answer is
# in: egressd had accepted them (the scrape came behind them in the listen
# queue) and kept them while it answered. A server that waits on a silent
# client answers only after their 2 s deadline, when they are closed. An
# attempt that took longer than that deadline on this machine proves
# nothing and is made again (5 at most, in the tool).
out=$(edges "$NS_GW" silent-scrape "${METRICS%:*}" "${METRICS##*:}" 3 5 2>&1)
case $out in
"ok "*"silent 3 connected, 3 open after the scrape; scrape HTTP 200 in "*"flows_total yes"*) pass "$name: ${out#ok }" ;;
*) fail "$name" "want 3 silent connected and still open after an HTTP 200 scrape with egressd_tcp_flows_total: $out" ;;
esac

name="4b check warns for metrics on the bridge and on 0.0.0.0, not on 127.0.0.1"
why=""
for a in 10.8.0.1:9180 0.0.0.0:9180 127.0.0.1:9180; do
	topo_write_config "$EG_TMP/m.ron" "" "control: (socket: \"$EG_TMP/m.sock\", metrics_listen: \"$a\"),"
	w=$("$(egressd_bin)" check --config "$EG_TMP/m.ron" 2>&1 | grep -c 'warning: control.metrics_listen')
	case $a in 127.*) [ "$w" = 0 ] || why="$why; $a warned" ;; *) [ "$w" = 1 ] || why="$why; $a did not warn" ;; esac
done
if [ -z "$why" ]; then pass "$name"; else fail "$name" "${why#; }"; fi

# ------------------------------------------------------------------ 5 route set
name="5a route set outside intercept.sources warns; inside does not (control)"
o1=$(ctl route set --source 10.9.0.5 --tunnel exit1 2>&1)
o2=$(ctl route set --source 10.8.0.13 --tunnel exit1 2>&1)
ctl route del --source 10.8.0.13 >/dev/null 2>&1
case "$o1|$o2" in
	*"warning: 10.9.0.5/32 is not within intercept.sources"*"|"*warning*) fail "$name" "inside warned too: $o2" ;;
	*"warning: 10.9.0.5/32 is not within intercept.sources"*) pass "$name" ;;
	*) fail "$name" "outside: $o1" ;;
esac

name="5b route set --reset-flows resets c1's open flow and says so"
edges_bg "${NS_C[1]}" "$EG_TMP/held.out" idle "$TARGET4" 9102 15
held=$EG_LAST_PID
c1_flow_up() { nsx "${NS_C[1]}" ss -tnH state established "dst $TARGET4:9102" | grep -q .; }
wait_until 10 c1_flow_up
o=$(ctl route set --source 10.8.0.11 --tunnel exit2 --reset-flows 2>&1)
# (edges_bg disowns the client: `wait` alone would not wait for its line)
wait_until 30 pid_gone "$held"
wait "$held" 2>/dev/null
h=$(cat "$EG_TMP/held.out")
case "$o|$h" in *"flows were reset"*"|ended"*) pass "$name: $o; client: $h" ;; *) fail "$name" "answer: $o; client: $h" ;; esac
ctl route set --source 10.8.0.11 --tunnel exit1 >/dev/null 2>&1

# ------------------------------------------------------------------ 8, 9 DNS over TCP
name="8 DNS over TCP: 200 lookups from new ports, one ID, through exit0 (udp: false)"
syn0=$(socks_syn_count 0)
c0=$(stat_now dns_tcp_connections)
out=$(edges "${NS_C[0]}" dns-many "$PUBDNS4" 200 20 5 2>&1)
syns=$(($(socks_syn_count 0) - syn0))
conns=$(($(stat_now dns_tcp_connections) - c0))
why=""
case $out in "answered 200/200 wrong 0"*) ;; *) why="$why; $out" ;; esac
[ "$syns" -ge 1 ] && [ "$syns" -le 5 ] || why="$why; $syns connections to the SOCKS server (want 1..5)"
if [ -z "$why" ]; then pass "$name: $out; $syns SOCKS connections ($conns counted)"; else fail "$name" "${why#; }"; fi

name="9 a silent resolver is replaced after dns_answer_timeout_secs; later lookups answer"
t0=$(stat_now dns_tcp_timeouts)
o1=$(edges "${NS_C[0]}" dns-many "$TARGET4B" 5 5 1.5 s 2>&1)
timed_out() { [ "$(stat_now dns_tcp_timeouts)" -gt "$t0" ]; }
wait_until 10 timed_out
t1=$(stat_now dns_tcp_timeouts)
o2=$(edges "${NS_C[0]}" dns-many "$TARGET4B" 20 5 3 a 2>&1)
why=""
case $o1 in "answered 0/5"*) ;; *) why="$why; control: the silent resolver answered: $o1" ;; esac
[ "$t1" -gt "$t0" ] || why="$why; dns_tcp_timeouts did not grow ($t0 -> $t1)"
case $o2 in "answered 20/20 wrong 0"*) ;; *) why="$why; after: $o2" ;; esac
if [ -z "$why" ]; then pass "$name: silent: $o1; dns_tcp_timeouts $t0 -> $t1; then $o2"; else fail "$name" "${why#; }"; fi

egressd_stop
# ------------------------------------------------------------------ 6 control socket on a file
name="6 control.socket naming a regular file: refused, named, file unchanged"
cp "$CONF" "$EG_TMP/victim.ron"
sum0=$(sha256sum <"$EG_TMP/victim.ron")
topo_write_config "$EG_TMP/c6.ron" "" "control: (socket: \"$EG_TMP/victim.ron\"),"
# (egressd stopped: this short run may take the listeners.)
out=$(nsx "$NS_GW" timeout 5 "$(egressd_bin)" run --config "$EG_TMP/c6.ron" 2>&1 | grep -i 'control socket' | head -n1)
sum1=$(sha256sum <"$EG_TMP/victim.ron" 2>/dev/null)
if [ "$sum0" = "$sum1" ] && case $out in *"$EG_TMP/victim.ron"*"not a socket"*) true ;; *) false ;; esac; then
	pass "$name: $out"
else
	fail "$name" "file $([ "$sum0" = "$sum1" ] && echo unchanged || echo CHANGED); log: $out"
fi

# ------------------------------------------------------------------ 7 EMFILE and UDP
name="7 EMFILE: an existing UDP session keeps its answers while accepts pause"
LOWLOG=$EG_TMP/egressd-lowfd.log
# The descriptor share (issue 23) would refuse c0's flows long before the
# process runs out: off here, this check is about the accept pause behind it.
sed -i 's/tcp: (idle_timeout_secs: 60,/tcp: (fd_share: false, idle_timeout_secs: 60,/' "$CONF"
grep -q 'fd_share: false' "$CONF" || die "edges 7: could not turn tcp.fd_share off in $CONF"
eg_spawn "$NS_GW" "$LOWLOG" prlimit --nofile=64:64 env RUST_LOG=info "$(egressd_bin)" run --config "$CONF"
EGRESSD_PID=$EG_LAST_PID
EGRESSD_LOG=$LOWLOG
if ! wait_until 15 egressd_up_or_dead || ! egressd_listening; then
	fail "$name" "egressd did not start under the low limit: $(tail -n 3 "$LOWLOG" | oneline)"
else
	warm=$(edges "${NS_C[1]}" udp-steady "$TARGET4" "$UDP_WHO_PORT" 40001 2 0.1 2 2>&1)
	nsx "${NS_C[0]}" timeout -k 5 60 "$(python_bin)" "$EG_TOOLS/fault_server.py" flood "$TARGET4" 9004 300 10 \
		>"$EG_TMP/flood.out" 2>&1 </dev/null &
	fl=$!
	EG_PIDS+=("$fl")
	fd_count() { find "/proc/$EGRESSD_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
	at_limit() { [ "$(fd_count)" -ge 60 ]; }
	wait_until 10 at_limit
	p0=$(stat_now accept_paused)
	out=$(edges "${NS_C[1]}" udp-steady "$TARGET4" "$UDP_WHO_PORT" 40001 10 0.3 1 2>&1)
	fds=$(fd_count)
	wait "$fl" 2>/dev/null
	# (the control socket cannot accept either while the limit is reached)
	wait_until 10 test "$(stat_now accept_paused)" -gt "$p0"
	p1=$(stat_now accept_paused)
	why=""
	case $warm in "answered 2/2"*) ;; *) why="$why; warm-up: $warm" ;; esac
	case $out in "answered 10/10"*) ;; *) why="$why; during the pause: $out" ;; esac
	[ "$p1" -gt "$p0" ] || why="$why; accept_paused did not grow in the window ($p0 -> $p1): no pause to test"
	if [ -z "$why" ]; then
		pass "$name: $out; accept_paused $p0 -> $p1, $fds fds"
	else
		fail "$name" "${why#; }"
	fi
fi
egressd_stop

log "edges.sh took $(($(date +%s) - T0)) s"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
summary
