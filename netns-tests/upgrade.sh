#!/usr/bin/env bash
# netns-tests/upgrade.sh — zero-downtime upgrades (issue 28), end to end in
# network namespaces: `egressd upgrade` hands the listeners, the live routes
# and the quota counters to a new process while traffic runs, and a plain
# restart (SIGTERM, start again) is measured against it.
#
#  c0 10.8.0.10 (class "qc": quota 1GB) ─┐                      ┌─ exit0 (microsocks) ─┐ 198.51.100.1
#  c1 10.8.0.11 ─────────────────────────┤  gw: br0 10.8.0.1    ├─ exit1 (danted)     ─┤ 198.51.100.2
#  c2 10.8.0.12 ─────────────────────────┼─ egressd :10900 ─────┴─ exit2 (danted)     ─┤ 198.51.100.3
#  c3 10.8.0.13 (no config route:       ─┤  control socket                             │
#               `route set` -> exit2)    ─┤  $EG_TMP/egressd.sock, state_dir $EG_TMP/state │
#  c4 10.8.0.14 (no config route: a     ─┘  tools/fake_docker.py (Engine API) on        │
#               label, egressd.tunnel=exit1) $EG_TMP/docker.sock                         │
#                                           uplink 198.51.100.200 (MASQUERADE) ───────┴─ inet:
#      who-am-i TCP 203.0.113.10:80, source :9002, UDP who-am-i :5000 (echoes
#      "<peer> <datagram>"), DNS 192.0.2.53 (TXT whoami.test = the asker),
#      tools/upgrade_tool.py slowsrc on 203.0.113.10:9010 (N bytes at a set rate)
#
# egressd runs from a copy in a root-owned 0700 directory ($EG_TMP/bin: an
# upgrade only starts a binary owned by root and writable by nobody else),
# next to two stand-ins: `exit1` (a script that exits 1) and `v99` (egressd
# with EGRESSD_HANDOVER_VERSION=99, the test-only override).
#
# Traffic generators (tools/upgrade_tool.py), run across each event:
#   c0: a slow download (slowget, 2.4 MB at 40 kB/s, sha256 checked, the
#       rest at full speed once the upgrades are done; c0 is
#       metered, so its bytes count towards the quota of check 8); c1: a
#       UDP stream (udpseq, "seq N" every 200 ms; the service's answer names
#       the exit port it saw); c2: a connection loop (connloop, a new HTTP
#       connection every 50 ms) and a dig loop (digloop, `dig +tries=1
#       +time=4` every 200 ms).
#
# Measured, not checked (`# measured:` lines, for the README): a plain
# restart (SIGTERM, `egressd run` again) under the same generators — failed
# connects, lost datagrams and lookups, the longest gap between two
# successes — 3 restarts with only short flows open ("restart") and one with
# the slow download open too ("restart-dl": egressd drains it for up to 5 s
# before it exits); and the same figures for the 3 upgrades ("upgrade").
#
# Checks (one PASS/FAIL line each; 19 on every path, plan_checks):
#   0a three `egressd upgrade --no-wait` while the traffic runs: each exits
#      0, prints `handed over:` and a new process PID that is alive in gw
#   0b after the 3 upgrades the process that accepted the download is still
#      there, draining it; the old processes exit once it has ended (the
#      download is paced until then); the newest one keeps serving
#   1  the slow download started before the first upgrade, still running
#      after the third, completes intact (byte count and sha256)
#   2  the connection loop saw 0 failures across the 3 upgrades
#   3  the UDP stream: every sequence number answered, and the service saw
#      one exit port throughout (the UDP session was handed over)
#   4  the dig loop: every lookup answered
#   5  `upgrade --binary exit1` (a binary that exits 1): non-zero exit,
#      `upgrade failed:`/`upgrade refused:` with the reason; the old process
#      still serves (c1 reaches the who-am-i service through exit1) and no
#      other egressd is left in gw
#   6  `upgrade --binary v99` (handover version 99): refused, naming the
#      version; the old process still serves, no other egressd left
#   5b the config file broken (an unknown key) before `upgrade`: refused
#      with the new process's config error; the old process still serves
#   7  a `route set` route (c3 -> exit2, c3 has no config route) made before
#      the upgrades still routes c3 through exit2 after them
#   8  quota (`egressd quota list`, c0's USED): c0 downloads 2 MB before
#      the upgrades, then the slow download (drained by the old process),
#      then 2 MB more from the newest process:
#      8a the counter carried over the upgrades and the newest process
#         counts on top of it;
#      8b the bytes the old process relayed while draining reach the
#         serving process's counter (also when the process it handed over
#         to has itself been upgraded meanwhile)
#  12  stats counters (`stats --prometheus`) go on: c0's per-source
#      tcp_bytes_down after the drain ended is at least its value before
#      the upgrades plus the slow download (relayed by the old process,
#      counted there, handed on at its end); tcp_flows_total and c1's
#      udp_dgrams_up are higher than before (no counter reset)
#   9  label routes with a Docker API running (tools/fake_docker.py, as in
#      hostile.sh; a real dockerd is labels.sh's): c4's label route (exit1)
#      routes it after the upgrades too, and the new process follows the
#      events: c4 re-created with the label exit2 (a new container, a new
#      ID, the same address) then leaves by exit2
#  0c  `egressd upgrade` (waiting, no flow open): exit 0, `handed over:`,
#      then `old process PID ended after ...`, and that PID is gone
#  13  per-source limiter state goes over: c3 spends its new-flow bucket
#      (tcp.new_flows_per_source_per_sec 30, burst 60; the old process
#      refuses some), then asks for 60 connections at once right after an
#      upgrade: at least 20 are refused (the handed-over bucket holds only
#      what refilled meanwhile; a fresh one would take all 60)
#  14  one class rate over both processes: c1 (class rc, 16mbit) downloads
#      16 MB; an upgrade 1 s in; c1 downloads 16 MB more through the new
#      process while the old one drains the first: the two take at least
#      80% of the 16 s they need at one shared 2 MB/s (each process holding
#      its own flows alone would finish in ~9 s); both intact
#  11  the metrics listener (control.metrics_listen 127.0.0.1:9190 in gw)
#      answers a scrape after the upgrades
#  10  SIGUSR2 to the serving process upgrades it as `egressd upgrade` does:
#      it exits, one new egressd serves c1 and c3 (the route set route too)
#
# egressd starting and its rules applying are preconditions (die), not checks.
#
# Usage: sudo netns-tests/upgrade.sh (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
plan_checks 19
# c4, routed by a Docker label only (with NEXITS=3 it has no config route).
NCONT=5

require_root_and_tools nft iptables ip6tables microsocks danted python3 ss timeout ps dig awk curl install stat
eg_init
ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
T0=$(date +%s)

SLOW_PORT=9010
DL_RATE=40000          # bytes/s of the slow download
DL_BYTES=2400000       # 60 s at DL_RATE; the rest goes at full speed once
DL_FINISH=$EG_TMP/slow.finish # exists (after the 3 upgrades)
QX=2000000             # c0's download before the upgrades (quota check)
ID0=10.8.0.10/32
SOCK=$EG_TMP/egressd.sock
FLOW_RATE=30  # new TCP flows per source and second (the connection loop makes 20)
FLOW_BURST=60 # ... and the burst (check 13)
EXIT1=$(exit_egress4 1)
EXIT2=$(exit_egress4 2)

# ------------------------------------------------------------------ binaries
# An upgrade starts only a root-owned binary nobody else may write: run
# egressd from a copy in a root-owned 0700 directory.
[ "$(stat -c '%u %a' "$EG_TMP")" = "0 700" ] || die "$EG_TMP is not root-owned 0700: $(stat -c '%U %a' "$EG_TMP")"
BIN=$EG_TMP/bin
install -d -m 0700 -o root -g root "$BIN" || die "cannot create $BIN"
install -m 0755 -o root -g root "$(egressd_bin)" "$BIN/egressd" || die "cannot copy $(egressd_bin) to $BIN"
EGRESSD=$BIN/egressd
printf '#!/bin/sh\nexit 1\n' >"$BIN/exit1"
printf '#!/bin/sh\nEGRESSD_HANDOVER_VERSION=99 exec %s "$@"\n' "$EGRESSD" >"$BIN/v99"
chmod 0755 "$BIN/exit1" "$BIN/v99"

# ------------------------------------------------------------------ topology
topo_up
topo_start_services
eg_spawn "$NS_INET" "$EG_TMP/slowsrc.log" "$(python_bin)" -u "$EG_TOOLS/upgrade_tool.py" slowsrc \
	"$TARGET4" "$SLOW_PORT" --ready "$EG_TMP/slowsrc.ready" --finish "$DL_FINISH"
wait_until 15 test -e "$EG_TMP/slowsrc.ready" || die "slowsrc did not start: $(tail -n 5 "$EG_TMP/slowsrc.log")"
DSOCK=$EG_TMP/docker.sock
DSTATE=$EG_TMP/docker.state
echo "lab4 10.8.0.14 - egressd.tunnel=exit1" >"$DSTATE"
eg_spawn "$NS_GW" "$EG_TMP/docker.log" "$(python_bin)" -u "$EG_TOOLS/fake_docker.py" serve \
	"$DSOCK" "$DSTATE" --ready "$EG_TMP/docker.ready"
wait_until 15 test -e "$EG_TMP/docker.ready" || die "fake_docker.py did not start: $(tail -n 5 "$EG_TMP/docker.log")"

CONF=$EG_TMP/upgrade.ron
mkdir -p "$EG_TMP/state"
topo_write_config "$CONF" "$SOCK" \
	"classes: { \"qc\": (quota: (bytes: \"1GB\", every_days: 30)), \"rc\": (rate: \"16mbit\") }, state_dir: \"$EG_TMP/state\", docker: (socket: \"$DSOCK\"), tcp: (new_flows_per_source_per_sec: $FLOW_RATE, new_flows_per_source_burst: $FLOW_BURST),"
sed -i 's/(source: "10.8.0.10", tunnel: "exit0")/(source: "10.8.0.10", tunnel: "exit0", class: "qc")/' "$CONF"
sed -i 's/(source: "10.8.0.11", tunnel: "exit1")/(source: "10.8.0.11", tunnel: "exit1", class: "rc")/' "$CONF"
grep -q 'class: "rc"' "$CONF" || die "could not give c1 the rate class in $CONF"
METRICS=127.0.0.1:9190
sed -i "s|control: (socket: \"$SOCK\")|control: (socket: \"$SOCK\", metrics_listen: \"$METRICS\")|" "$CONF"
grep -q 'class: "qc"' "$CONF" || die "could not give c0 the quota class in $CONF"
grep -q "metrics_listen: \"$METRICS\"" "$CONF" || die "could not set control.metrics_listen in $CONF"
EGRESSD_LOG=$EG_TMP/egressd.log
egressd_up_or_exit "$CONF"
CUR_PID=$EGRESSD_PID # the process serving now (after an upgrade: not our child)
OLD_PIDS=()

# ------------------------------------------------------------------ helpers
ctl() { nsx "$NS_GW" timeout 60 "$(egressd_bin)" "$@" --socket "$SOCK" </dev/null 2>&1; }
oneline() { printf '%s' "$1" | tr '\n' '|'; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }

# gw_alive PID — a live (not zombie) process in gw; gw_egressd — the
# egressd processes in gw (by PID, as ip netns pids lists them).
gw_alive() {
	kill -0 "$1" 2>/dev/null && [ "$(ip netns identify "$1" 2>/dev/null)" = "$NS_GW" ] &&
		[ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}
gw_gone() { ! gw_alive "$1"; }
gw_egressd() {
	local p
	for p in $(ns_pids "$NS_GW"); do
		[ "$(ps -o comm= -p "$p" 2>/dev/null)" = egressd ] && gw_alive "$p" && echo "$p"
	done
}
# only_egressd PID — PID is the one egressd in gw.
only_egressd() { [ "$(gw_egressd | tr '\n' ' ')" = "$1 " ]; }
all_gone() { local p; for p in "$@"; do gw_alive "$p" && return 1; done; return 0; }
# stop_gw PID — TERM a process in gw that is not our child, KILL after 10 s.
stop_gw() {
	gw_alive "$1" || return 0
	kill -s TERM "$1" 2>/dev/null
	wait_until 10 gw_gone "$1" || kill -s KILL "$1" 2>/dev/null
}
eg_cleanup_hook() {
	local p
	for p in $(gw_egressd); do stop_gw "$p"; done
}

# do_upgrade ARGS... — `egressd upgrade ARGS`: UP_OUT, UP_RC, UP_MS (its
# duration), UP_NEW (the new process's PID, when it says one); on success
# (exit 0, a live new PID) CUR_PID moves on and the old one is remembered.
do_upgrade() {
	local t
	t=$(now_ns)
	UP_OUT=$(ctl upgrade "$@")
	UP_RC=$?
	UP_MS=$(ms_since "$t")
	UP_NEW=$(printf '%s\n' "$UP_OUT" | sed -n 's/.*new process \([0-9][0-9]*\).*/\1/p' | head -n 1)
	if [ "$UP_RC" -eq 0 ] && [ -n "$UP_NEW" ] && [ "$UP_NEW" != "$CUR_PID" ] && gw_alive "$UP_NEW"; then
		OLD_PIDS+=("$CUR_PID")
		CUR_PID=$UP_NEW
		return 0
	fi
	# A failed upgrade may still have moved on (the old process gone, a new one serving).
	gw_alive "$CUR_PID" || CUR_PID=$(gw_egressd | head -n 1)
	return 1
}

# gen_bg TAG KIND NS ARGS... — one of upgrade_tool.py's clients in the
# background: output $EG_TMP/TAG-KIND.out, "ready" in $EG_TMP/TAG-KIND.ready
# once it is under way; its PID is added to GEN_PIDS.
gen_bg() {
	local tag=$1 kind=$2 ns=$3; shift 3
	pytool_bg upgrade_tool "$ns" "$EG_TMP/$tag-$kind.out" "$@" --ready "$EG_TMP/$tag-$kind.ready"
	GEN_PIDS+=("$EG_LAST_PID")
	GEN_READY+=("$EG_TMP/$tag-$kind.ready")
}
# gens_start TAG [DL] — the generators (connloop, udpseq, digloop) until
# $EG_TMP/TAG.stop exists (60 s at most), and with DL the slow download
# (its PID in DL_PID); then waits (bounded) until each is under way.
gens_start() {
	local tag=$1 f
	GEN_STOP=$EG_TMP/$tag.stop
	GEN_PIDS=()
	GEN_READY=()
	rm -f "$GEN_STOP"
	gen_bg "$tag" conn "${NS_C[2]}" connloop "$TARGET4" 80 "$EXIT2" "$GEN_STOP" 60 2000 50
	gen_bg "$tag" udp "${NS_C[1]}" udpseq "$TARGET4" "$UDP_WHO_PORT" "$GEN_STOP" 60 200
	gen_bg "$tag" dig "${NS_C[2]}" digloop "$PUBDNS4" "$EXIT2" "$GEN_STOP" 60 400 200
	DL_PID=""
	if [ -n "${2:-}" ]; then
		gen_bg "$tag" dl "${NS_C[0]}" slowget "$TARGET4" "$SLOW_PORT" "$DL_BYTES" "$DL_RATE"
		DL_PID=$EG_LAST_PID
	fi
	for f in "${GEN_READY[@]}"; do
		wait_until 30 test -e "$f" || log "$(basename "$f" .ready) not under way after 30 s"
	done
	sleep 1 # a second of steady traffic before the event
}
gens_stop() {
	local p
	touch "$GEN_STOP"
	for p in "${GEN_PIDS[@]}"; do
		[ "$p" = "$DL_PID" ] && continue
		wait_until 20 pid_gone "$p"
		stop_pid "$p"
	done
}
# gen_out TAG KIND — a generator's result line ("none" if it printed nothing).
gen_out() { tail -n 1 "$EG_TMP/$1-$2.out" 2>/dev/null | grep . || echo none; }
gen_ok() { case $1 in "tries "*" failed 0 "*) return 0 ;; *) return 1 ;; esac; }
# measured WHAT TAG — the generators' figures as `# measured:` lines.
measured() {
	local k
	for k in conn udp dig; do
		log "measured: $1: $k: $(gen_out "$2" "$k")"
	done
}
# peers_of UDPSEQ_LINE — the exit addresses the service saw ("ip:port" list).
peers_of() { printf '%s\n' "$1" | sed -n 's/.* peers=\([^ ]*\).*/\1/p'; }
# used_of IDENTITY — USED in `quota list` (-1 when there is no such row).
used_of() {
	local u
	u=$(ctl quota list | awk -v id="$1" '$1 == id { print $2; exit }')
	case $u in '' | *[!0-9]*) echo -1 ;; *) echo "$u" ;; esac
}

# Does this egressd have the upgrade command at all?
if "$EGRESSD" upgrade --help >/dev/null 2>&1; then HAVE_UPGRADE=1; else HAVE_UPGRADE=0; fi
log "egressd $("$EGRESSD" --version 2>&1 | head -n 1); upgrade command: $([ "$HAVE_UPGRADE" = 1 ] && echo yes || echo no)"

# ================================================================== plain restart (measured)
# measure_restart TAG N [DL] — N times, 1 s apart: SIGTERM egressd while the
# generators run (and, with DL, the slow download), wait for it to exit (it
# drains its flows for up to 5 s), start it again; the figures as
# `# measured:` lines.
measure_restart() {
	local tag=$1 n=$2 k t term="" down=""
	gens_start "$tag" "${3:-}"
	for k in $(seq 1 "$n"); do
		t=$(now_ns)
		kill -s TERM "$EGRESSD_PID"
		wait_until 20 pid_gone "$EGRESSD_PID"
		term="$term $(ms_since "$t")"
		stop_pid "$EGRESSD_PID"
		egressd_start --config "$CONF" || die "egressd did not come back after SIGTERM"
		down="$down $(ms_since "$t")"
		sleep 1
	done
	CUR_PID=$EGRESSD_PID
	sleep 5 # longer than a dig's wait: every generator succeeds again after the last restart
	gens_stop
	log "measured: $tag: $n x SIGTERM to exit (ms):$term; SIGTERM to listening again (ms):$down"
	measured "$tag" "$tag"
	if [ -n "${3:-}" ]; then
		stop_pid "$DL_PID"
		log "measured: $tag: a download running across it: $(gen_out "$tag" dl)"
	fi
}
measure_restart restart 3
measure_restart restart-dl 1 dl

# ================================================================== 7, 8 before the upgrades
ctl route set --source 10.8.0.13 --tunnel exit2 >"$EG_TMP/routeset.out"
RS_RC=$?
RS_BEFORE=$(curl_whoami "${NS_C[3]}")
dl=$(egtool "${NS_C[0]}" download "$TARGET4" 9002 "$QX")
c4_is() { [ "$(curl_whoami "${NS_C[4]}")" = "$1" ]; }
wait_until 15 c4_is "$EXIT1"
LB_BEFORE=$(curl_whoami "${NS_C[4]}")
U0=$(used_of "$ID0")
P0=$(prom_or_die)

# ================================================================== 3 upgrades under traffic
gens_start up dl
UPS_OK=0
UPS_WHY=""
UP_FIRST=""
UP_TIMES=""
for k in 1 2 3; do
	if do_upgrade --no-wait; then
		UPS_OK=$((UPS_OK + 1))
		[ -n "$UP_FIRST" ] || UP_FIRST=$(printf '%s\n' "$UP_OUT" | grep -m1 '^handed over:')
		case $UP_OUT in *"handed over:"*) ;; *) UPS_WHY="$UPS_WHY #$k: no 'handed over:' line;" ;; esac
	else
		UPS_WHY="$UPS_WHY #$k: exit $UP_RC, new PID '${UP_NEW}': $(oneline "$UP_OUT" | cut -c1-200);"
	fi
	UP_TIMES="$UP_TIMES ${UP_MS}ms"
	sleep 2
done
# The download is still running (paced, it takes 60 s): the process that
# accepted it must still be there, draining it. Then it may end.
if pid_gone "$DL_PID"; then DL_SPANNED=0; else DL_SPANNED=1; fi
DRAINER=${OLD_PIDS[0]:-none}
if [ "$DRAINER" != none ] && gw_alive "$DRAINER"; then DRAINING=1; else DRAINING=0; fi
touch "$DL_FINISH"
wait_until $((DL_BYTES / DL_RATE + 30)) pid_gone "$DL_PID"
stop_pid "$DL_PID"
DL_OUT=$(gen_out up dl)
# The old processes may now exit (their last flow has ended); the
# generators keep running meanwhile.
wait_until 20 all_gone "${OLD_PIDS[@]}"
OLD_LEFT=""
for p in "${OLD_PIDS[@]}"; do gw_alive "$p" && OLD_LEFT="$OLD_LEFT $p"; done
sleep 1
gens_stop
log "measured: upgrade: 3 x \`egressd upgrade --no-wait\` took$UP_TIMES"
measured upgrade up
log "measured: upgrade: download running across them: $DL_OUT"

# ------------------------------------------------------------------ 0a, 0b
if [ "$UPS_OK" -eq 3 ] && [ -z "$UPS_WHY" ]; then
	pass "0a three upgrades under traffic: each exited 0 and named a live new process (${OLD_PIDS[*]} -> $CUR_PID); first said '$UP_FIRST'"
else
	fail "0a three upgrades under traffic" "$UPS_OK of 3 succeeded:$UPS_WHY"
fi
if [ "$UPS_OK" -ge 1 ] && [ "$DL_SPANNED" -eq 1 ] && [ "$DRAINING" -eq 1 ] && [ -z "$OLD_LEFT" ] && gw_alive "$CUR_PID"; then
	pass "0b $DRAINER drained the download after the 3 upgrades, and the old processes (${OLD_PIDS[*]}) exited once it ended; $CUR_PID serves"
else
	fail "0b the old process must drain its flows, then exit; the newest keep serving" \
		"upgrades done: $UPS_OK; download still running after them: $DL_SPANNED, its process $DRAINER alive then: $DRAINING; still alive 20 s after the download:${OLD_LEFT:- none}; serving $CUR_PID alive: $(gw_alive "$CUR_PID" && echo yes || echo no)"
fi

# ------------------------------------------------------------------ 1-4 the traffic across the upgrades
# upgrades_note — why a clean generator proves nothing (no upgrade happened).
upgrades_note() { [ "$UPS_OK" -eq 3 ] || printf 'only %d of 3 upgrades happened (%s); ' "$UPS_OK" "$([ "$HAVE_UPGRADE" = 1 ] && echo "see 0a" || echo "this egressd has no upgrade command")"; }
case $DL_OUT in
"ok "*)
	if [ "$UPS_OK" -eq 3 ] && [ "$DL_SPANNED" -eq 1 ]; then
		pass "1 the slow download across the 3 upgrades is intact: $DL_OUT"
	else
		fail "1 a download spanning the 3 upgrades must complete intact" "$(upgrades_note)still running after the third: $DL_SPANNED; $DL_OUT"
	fi
	;;
*) fail "1 a download spanning the 3 upgrades must complete intact" "$(upgrades_note)$DL_OUT" ;;
esac
out=$(gen_out up conn)
if gen_ok "$out" && [ "$UPS_OK" -eq 3 ]; then
	pass "2 connection loop across the 3 upgrades: 0 failures ($out)"
else
	fail "2 the connection loop must see 0 failures across the 3 upgrades" "$(upgrades_note)$out"
fi
out=$(gen_out up udp)
peers=$(peers_of "$out")
case $peers in
"$EXIT1:"*x*) one_peer=1 ;;
*) one_peer=0 ;;
esac
case $peers in *,*) one_peer=0 ;; esac
if gen_ok "$out" && [ "$one_peer" -eq 1 ] && [ "$UPS_OK" -eq 3 ]; then
	pass "3 UDP stream across the 3 upgrades: no sequence number lost, one exit port throughout ($out)"
else
	fail "3 the UDP stream must lose nothing and keep its exit port across the 3 upgrades" "$(upgrades_note)$out"
fi
out=$(gen_out up dig)
if gen_ok "$out" && [ "$UPS_OK" -eq 3 ]; then
	pass "4 dig loop across the 3 upgrades: every lookup answered ($out)"
else
	fail "4 the dig loop must lose no lookup across the 3 upgrades" "$(upgrades_note)$out"
fi

# ------------------------------------------------------------------ 7 route set survives
after=$(curl_whoami "${NS_C[3]}")
if [ "$RS_RC" -eq 0 ] && [ "$RS_BEFORE" = "$EXIT2" ] && [ "$after" = "$EXIT2" ] && [ "$UPS_OK" -ge 1 ]; then
	pass "7 the route set route c3 -> exit2 still routes c3 after $UPS_OK upgrades (target sees $after)"
else
	fail "7 a route set route must survive the upgrades" \
		"$(upgrades_note)route set exit $RS_RC ($(oneline "$(cat "$EG_TMP/routeset.out")")); before: target saw '$RS_BEFORE', after: '$after' (want $EXIT2)"
fi

# ------------------------------------------------------------------ 8 quota counter
U1=$(used_of "$ID0")
P1=$(prom_or_die) # for 12, before c0's next download
dl2=$(egtool "${NS_C[0]}" download "$TARGET4" 9002 "$QX")
U2=$(used_of "$ID0")
case "$dl $dl2" in "ok"*" ok"*) dl_ok=1 ;; *) dl_ok=0 ;; esac
if [ "$dl_ok" -eq 1 ] && [ "$U0" -ge "$QX" ] && [ "$U1" -ge "$U0" ] && [ "$U2" -ge $((U1 + QX)) ] && [ "$UPS_OK" -ge 1 ]; then
	pass "8a c0's quota counter carried over: $U0 bytes used before the upgrades, $U1 after them, $U2 after 2 MB more"
else
	fail "8a c0's quota counter must carry over the upgrades, the newest process counting on top" \
		"$(upgrades_note)USED before $U0 (want >= $QX), after $U1 (want >= $U0), after 2 MB more $U2 (want >= $((U1 + QX))); downloads: '$dl', '$dl2'"
fi
case $DL_OUT in
"ok "*)
	if [ "$U1" -ge $((U0 + DL_BYTES)) ] && [ "$UPS_OK" -eq 3 ]; then
		pass "8b the slow download's $DL_BYTES bytes, drained by $DRAINER, count in c0's quota: USED $U0 -> $U1"
	else
		fail "8b the bytes an old process drains must reach the serving process's quota counter" \
			"$(upgrades_note)USED $U0 before, $U1 after the drain: +$((U1 - U0)) of the download's $DL_BYTES ($(grep -m1 'draining flows counted' "$EGRESSD_LOG" | cut -c1-200))"
	fi
	;;
*) fail "8b the bytes an old process drains must reach the serving process's quota counter" "$(upgrades_note)the download did not complete: $DL_OUT" ;;
esac

# ------------------------------------------------------------------ 12 stats counters
C0='source="10.8.0.10/32"'
C1='source="10.8.0.11/32"'
S0=$(metric "$P0" egressd_tcp_bytes_down_total "$C0") S1=$(metric "$P1" egressd_tcp_bytes_down_total "$C0")
F0=$(metric "$P0" egressd_tcp_flows_total) F1=$(metric "$P1" egressd_tcp_flows_total)
G0=$(metric "$P0" egressd_udp_dgrams_up_total "$C1") G1=$(metric "$P1" egressd_udp_dgrams_up_total "$C1")
if [ "$S0" -ge "$QX" ] && [ "$S1" -ge $((S0 + DL_BYTES)) ] && [ "$F1" -gt "$F0" ] && [ "$G1" -gt "$G0" ] &&
	[ "$UPS_OK" -eq 3 ] && [ "$DL_SPANNED" -eq 1 ]; then
	pass "12 the counters went on across the upgrades: c0's tcp_bytes_down $S0 -> $S1 (the drained download's $DL_BYTES included), tcp_flows_total $F0 -> $F1, c1's udp_dgrams_up $G0 -> $G1"
else
	fail "12 stats counters must go on across the upgrades (carried over, the drain's added at its end)" \
		"$(upgrades_note)c0's tcp_bytes_down $S0 -> $S1 (want >= $QX, then >= +$DL_BYTES), tcp_flows_total $F0 -> $F1, c1's udp_dgrams_up $G0 -> $G1 (want both up)"
fi

# ------------------------------------------------------------------ 9 label routes
lb_after=$(curl_whoami "${NS_C[4]}")
# Relabelling is re-creating: a new container (a new ID) on the same address.
echo "lab4b 10.8.0.14 - egressd.tunnel=exit2" >"$DSTATE.new"
mv "$DSTATE.new" "$DSTATE"
wait_until 15 c4_is "$EXIT2"
lb_relabel=$(curl_whoami "${NS_C[4]}")
if [ "$LB_BEFORE" = "$EXIT1" ] && [ "$lb_after" = "$EXIT1" ] && [ "$lb_relabel" = "$EXIT2" ] && [ "$UPS_OK" -ge 1 ]; then
	pass "9 c4's label route (exit1) still routes it after $UPS_OK upgrades, and relabelled to exit2 it leaves by exit2"
else
	fail "9 label routes must survive the upgrades and follow Docker's events after them" \
		"$(upgrades_note)c4 seen as: before '$LB_BEFORE' (want $EXIT1), after '$lb_after' (want $EXIT1), relabelled '$lb_relabel' (want $EXIT2)"
fi

# ------------------------------------------------------------------ 5, 6 refused upgrades
# refused NAME BINARY WANT_RE — an upgrade to BINARY fails, its output
# matches WANT_RE, the serving process stays and serves, nothing else left.
refused() {
	local name=$1 bin=$2 re=$3 before=$CUR_PID seen left
	do_upgrade --binary "$bin"
	wait_until 10 only_egressd "$before"
	left=$(gw_egressd | grep -vx "$before" | tr '\n' ' ')
	seen=$(curl_whoami "${NS_C[1]}")
	if [ "$UP_RC" -ne 0 ] && printf '%s\n' "$UP_OUT" | grep -Eq "$re" && [ "$CUR_PID" = "$before" ] &&
		gw_alive "$before" && [ "$seen" = "$EXIT1" ] && [ -z "$left" ]; then
		pass "$name: exit $UP_RC, '$(printf '%s\n' "$UP_OUT" | grep -Em1 'upgrade (failed|refused):')'; $before still serves (c1 -> $seen)"
	else
		fail "$name" "exit $UP_RC, output '$(oneline "$UP_OUT" | cut -c1-300)' (want non-zero and /$re/); $before alive: $(gw_alive "$before" && echo yes || echo no); c1 saw '$seen' (want $EXIT1); other egressd left in gw: '${left:-none}'"
		# A wrong upgrade that did go through: carry on with what serves.
		gw_alive "$CUR_PID" || CUR_PID=$(gw_egressd | head -n 1)
	fi
}
refused "5 upgrade to a binary that exits 1 fails and says why" "$BIN/exit1" 'upgrade (failed|refused): .*(exit|status)'
refused "6 upgrade to a binary speaking handover version 99 is refused" "$BIN/v99" 'upgrade (failed|refused): .*99'
# The config the new process would load is broken: its error is the reason.
cp "$CONF" "$CONF.good"
printf '(listen: ["10.8.0.1:10900"], typo_key: 1)\n' >"$CONF"
refused "5b upgrade whose new process fails its config check is refused with the config error" "$EGRESSD" \
	'upgrade failed: the new process refused: config error: .*typo_key'
mv "$CONF.good" "$CONF"

# ------------------------------------------------------------------ 13 new-flow buckets
# c3 spends its new-flow bucket (the old process refuses some: proof it is
# empty), then right after an upgrade asks for $FLOW_BURST more at once.
# Handed over, the bucket holds what refilled meanwhile (30/s); a fresh one
# would take all of them.
burst13() { pytool upgrade_tool "${NS_C[3]}" burst "$TARGET4" 80 "$1" 2>&1 | tail -n 1; }
drops13() { metric "$(prom_or_die)" egressd_tcp_drop_source_rate_total; }
R0=$(drops13)
b1=$(burst13 $((FLOW_BURST + 10)))
wait_until 5 eval '[ "$(drops13)" -gt "$R0" ]'
R1=$(drops13)
t13=$(now_ns)
if do_upgrade --no-wait; then up13=1; else up13=0; fi
b2=$(burst13 "$FLOW_BURST")
gap13=$(ms_since "$t13")
wait_until 5 eval '[ "$(drops13)" -ge $((R1 + FLOW_BURST / 3)) ]'
R2=$(drops13)
if [ "$up13" -eq 1 ] && [ "$R1" -gt "$R0" ] && [ $((R2 - R1)) -ge $((FLOW_BURST / 3)) ]; then
	pass "13 no fresh burst from an upgrade: c3 spent its new-flow bucket ($b1; $((R1 - R0)) refused), then $FLOW_BURST connects right after the upgrade: $((R2 - R1)) refused ($b2, ${gap13} ms after the upgrade began)"
else
	fail "13 the new process must keep a source's spent new-flow bucket (want >= $((FLOW_BURST / 3)) of $FLOW_BURST refused)" \
		"upgrade ok: $up13; before: $b1, refused $((R1 - R0)); after the upgrade: $b2, refused $((R2 - R1)) (${gap13} ms)"
fi
sleep 3 # c3's bucket refills for check 10

# ------------------------------------------------------------------ 14 one class rate over both processes
# c1 (class rc, 16mbit = 2 MB/s) downloads 16 MB; 1 s in, an upgrade, and
# c1 downloads 16 MB more through the new process while the old one still
# relays the first. Held to one rate between them, the 32 MB take about
# 16 s; each process on its own would let both run at 2 MB/s (done in ~9 s).
RATE14=2000000
N14=16000000
t14=$(now_ns)
egtool_bg "${NS_C[1]}" "$EG_TMP/d14a.out" download "$TARGET4" 9002 "$N14"
pa=$EG_LAST_PID
sleep 1
if do_upgrade --no-wait; then up14=1; else up14=0; fi
egtool_bg "${NS_C[1]}" "$EG_TMP/d14b.out" download "$TARGET4" 9002 "$N14"
pb=$EG_LAST_PID
wait_until 60 pid_gone "$pa"
wait_until 60 pid_gone "$pb"
el14=$(ms_since "$t14")
stop_pid "$pa"
stop_pid "$pb"
d14a=$(tail -n 1 "$EG_TMP/d14a.out" 2>/dev/null)
d14b=$(tail -n 1 "$EG_TMP/d14b.out" 2>/dev/null)
min14=$((2 * N14 * 1000 / RATE14 * 8 / 10)) # ms: 80% of the shared time
case "$d14a $d14b" in
"ok "*" ok "*)
	if [ "$up14" -eq 1 ] && [ "$el14" -ge "$min14" ]; then
		pass "14 one class rate over both processes while the old one drains: 2 x $N14 bytes at 16mbit took ${el14} ms (>= $min14; each process alone: ~9000)"
	else
		fail "14 c1's class rate must hold over the old and the new process together" \
			"upgrade ok: $up14; 2 x $N14 bytes took ${el14} ms, want >= $min14 (at 2 MB/s shared: ~16000)"
	fi
	;;
*) fail "14 c1's class rate must hold over the old and the new process together" "upgrade ok: $up14; downloads: '$d14a' '$d14b'" ;;
esac
wait_until 20 all_gone "${OLD_PIDS[@]}"

# ------------------------------------------------------------------ 0c a waiting upgrade
before=$CUR_PID
if do_upgrade; then
	case $UP_OUT in
	*"handed over:"*"old process $before ended after"*)
		if gw_gone "$before"; then
			pass "0c \`egressd upgrade\` waited for $before: '$(printf '%s\n' "$UP_OUT" | grep -m1 "old process $before ended after")'"
		else
			fail "0c \`egressd upgrade\` said $before ended" "it is still alive"
		fi
		;;
	*) fail "0c \`egressd upgrade\` must say 'handed over:' then 'old process $before ended after'" "$(oneline "$UP_OUT")" ;;
	esac
else
	fail "0c \`egressd upgrade\` (waiting)" "exit $UP_RC, new PID '$UP_NEW': $(oneline "$UP_OUT" | cut -c1-600)"
fi

# ------------------------------------------------------------------ 11 metrics
scrape=$(nsx "$NS_GW" curl -sS --max-time 5 "http://$METRICS/metrics" 2>&1)
case $scrape in
*"egressd_tcp_flows_total "*)
	if [ "$UPS_OK" -ge 1 ]; then
		pass "11 the metrics listener $METRICS answers after the upgrades (egressd_tcp_flows_total $(metric "$scrape" egressd_tcp_flows_total))"
	else
		fail "11 the metrics listener must answer after the upgrades" "$(upgrades_note)it answers"
	fi
	;;
*) fail "11 the metrics listener must answer after the upgrades" "$(upgrades_note)curl http://$METRICS/metrics: $(printf '%s' "$scrape" | head -n 3 | oneline)" ;;
esac

# ------------------------------------------------------------------ 10 SIGUSR2
before=$CUR_PID
new=""
if [ -n "$before" ] && gw_alive "$before" && kill -s USR2 "$before" 2>/dev/null && wait_until 20 gw_gone "$before"; then
	wait_until 10 test -n "$(gw_egressd)"
	new=$(gw_egressd | tr '\n' ' ')
	new=${new% }
fi
seen1=$(curl_whoami "${NS_C[1]}")
seen3=$(curl_whoami "${NS_C[3]}")
if [ -n "$new" ] && [ "${new#* }" = "$new" ] && [ "$new" != "$before" ] && [ "$seen1" = "$EXIT1" ] && [ "$seen3" = "$EXIT2" ]; then
	pass "10 SIGUSR2: $before handed over to $new and exited; c1 -> $seen1, c3 (route set) -> $seen3"
	CUR_PID=$new
else
	fail "10 SIGUSR2 must upgrade like \`egressd upgrade\`" \
		"signalled '$before'; gone: $(gw_gone "$before" && echo yes || echo no); egressd in gw now: '${new:-$(gw_egressd | tr '\n' ' ')}'; c1 saw '$seen1' (want $EXIT1), c3 '$seen3' (want $EXIT2)"
	gw_alive "$CUR_PID" || CUR_PID=$(gw_egressd | head -n 1)
fi

# ------------------------------------------------------------------ end
if [ -z "$CUR_PID" ] || ! gw_alive "$CUR_PID"; then
	fail_unplanned "egressd still running at the end" "no egressd serves in gw: $(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
fi
log "upgrade.sh took $(($(date +%s) - T0)) s (logs in $EG_TMP)"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
summary
