#!/usr/bin/env bash
# netns-tests/quotas.sh — per-container quotas (issue 27) end to end: a quota
# that runs out mid-transfer and fails closed, survives SIGHUP, kill -9 and
# SIGTERM, renews with its period, fails closed on a corrupt state file until
# reset, and throttles instead of refusing when its class says so.
#
#  c0 10.8.0.10 (class "q3": 3MB / 30 days, Reject) ─┐                ┌─ exit1 danted
#  c1 10.8.0.11 (no class: unmetered)               ─┤  gw: egressd   │
#  c2 10.8.0.12 (class "qp": 1MB / 0.0002 days, Reject) ┼─ :10900 ───────┤
#  c3 10.8.0.13 (class "qt": 300kB / 30 days,       ─┘  state_dir     └─ exit2 danted
#                Throttle("1mbit"))                     $EG_TMP/state
#  inet: egtool services on 203.0.113.10 (who-am-i :80, source :9002),
#        UDP who-am-i :5000, DNS 192.0.2.53
#
# c0 and c1 leave by exit1, c2 and c3 by exit2. A config route's quota
# belongs to its prefix: c0's identity is "10.8.0.10/32". Figures come from
# `egressd quota list` (USED/LIMIT/LEFT/PERIOD_END/STATE), `egressd stats`,
# egressd's counters (`stats --prometheus`, which dies when the control
# socket does not answer: an unreadable counter never reads as 0) and its
# metrics endpoint (control.metrics_listen 127.0.0.1:9190 in gw).
#
# Checks (one PASS/FAIL line each; 9 on every path):
#   1  c0 downloads 20 MB with a 3 MB quota: the transfer ends early, within
#      4 s of its start (not by the client's own 5 s timeout: egressd ends a
#      spent flow within about 1 s), with the client holding < 20 MB and at
#      least half the quota (a reset may discard what sat in egressd's send
#      buffer), egressd's USED for c0 <= quota + 256 KiB, tcp_quota_ended moved
#   2  then: a new TCP connect from c0 is reset within 1 s (drop_quota
#      moved); a UDP datagram and a DNS lookup from c0 get no answer
#      (udp_drop_quota moved); c1 (unmetered, same exit) downloads 5 MB
#      intact; nothing reached the leak detector
#   3  `quota list` (header as documented, c0: used >= limit, left 0, state
#      spent, an RFC 3339 period end; c1 not listed), `stats` (a `quotas:`
#      section with c0 spent) and the metrics (egressd_quota_used_bytes for
#      c0 >= egressd_quota_limit_bytes = 3000000) agree
#   4  SIGHUP with the same config: c0's USED unchanged, c0 still reset
#   5  kill -9 once the state file holds c0's count, start again: c0 still
#      reset, USED >= the saved count; SIGTERM and start again: USED exactly
#      what it was before the SIGTERM, c0 still reset
#   6  a new period restores service: c2 (1 MB every 17.28 s, counted from
#      egressd's start) spends its quota (not within 6 s of a period's end:
#      else the next period is waited for first), is reset; once past the
#      PERIOD_END `quota list` showed (bounded wait: egressd renews periods
#      at its 5 s tick) its state is ok with USED near 0, and a 200 kB
#      download works
#   7  corrupt state file (SIGTERM, garbage written, start): the file is kept
#      aside as quota.state.corrupt-<secs> and the log says so, c0 (metered)
#      is reset, c1 (unmetered) downloads fine, `egressd doctor` names the
#      kept-aside file on its "quota state" line
#   8  `egressd quota reset 10.8.0.10/32` exits 0 and c0 works again (the
#      who-am-i target sees exit1; `quota list` says ok); an unknown NAME
#      exits 1; `quota reset --all` exits 0 (c2 and c3 open again for 9)
#   9  Throttle("1mbit"): c3 spends its 300 kB in a 400 kB download that
#      still completes (not refused), and is then held to about 1 Mbit/s: a
#      500 kB download completes at 0.7..1.1 Mbit/s as the receiver counts
#      it after its first second (as iperf3 -O 1 would), drop_quota for c3
#      unchanged. iperf3 itself is not used: at 1 Mbit/s the results on its
#      control connection waited over 25 s behind the data connection, as
#      a held source's flows are not served fairly among themselves (a
#      short reply of a second flow may wait until a bulk flow of the same
#      source ends; a class `rate: "1mbit"` does the same)
#
# egressd starting (each restart included) and its rules applying are
# preconditions (die), not checks.
#
# Usage: sudo netns-tests/quotas.sh (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
plan_checks 9

require_root_and_tools nft iptables ip6tables microsocks danted python3 dig curl timeout awk date
eg_init
ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
T0=$(date +%s)

Q0=3000000     # c0's quota (3MB)
QP=1000000     # c2's quota (1MB), period 0.0002 days = 17.28 s
SLACK=262144   # one read's slack per direction
ID0=10.8.0.10/32
ID1=10.8.0.11/32
ID2=10.8.0.12/32
ID3=10.8.0.13/32
METRICS=127.0.0.1:9190

topo_up
topo_start_services
SOCK=$EG_TMP/egressd.sock
CONF=$EG_TMP/quotas.ron
STATE=$EG_TMP/state
mkdir -p "$STATE"
cat >"$CONF" <<EOF
(
    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
    tunnels: {
        "exit1": Socks5(warm: 0, warm_udp: 0, server: "100.64.1.2:1080"),
        "exit2": Socks5(warm: 0, warm_udp: 0, server: "100.64.2.2:1080"),
    },
    classes: {
        "q3": (quota: (bytes: "3MB", every_days: 30)),
        "qp": (quota: (bytes: "1MB", every_days: 0.0002)),
        "qt": (quota: (bytes: "300kB", every_days: 30), on_quota: Throttle("1mbit")),
    },
    routes: [
        (source: "10.8.0.10", tunnel: "exit1", class: "q3"),
        (source: "10.8.0.11", tunnel: "exit1"),
        (source: "10.8.0.12", tunnel: "exit2", class: "qp"),
        (source: "10.8.0.13", tunnel: "exit2", class: "qt"),
    ],
    state_dir: "$STATE",
    intercept: (tcp: Redirect),
    dns: (upstream: "192.0.2.53:53"),
    control: (socket: "$SOCK", metrics_listen: "$METRICS"),
)
EOF
LEAK0=$(leak_count)
egressd_up_or_exit "$CONF"

# A download client that says how it ended (egtool's download only says
# whether all came): "got N end eof|reset|timeout|error:E in S s rate R",
# R the Mbit/s (10^6) received after the first second from the first byte
# (-1: the download was shorter).
FETCH=$EG_TMP/fetch.py
cat >"$FETCH" <<'EOF'
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
got, end, first, mark, last = 0, "eof", None, None, None
try:
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(5)
    s.sendall(b"%d\n" % n)
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
        last = time.monotonic()
        first = first or last
        if mark is None and last - first >= 1:
            mark = (last, got)
except (ConnectionResetError, BrokenPipeError):
    end = "reset"
except socket.timeout:
    end = "timeout"
except OSError as e:
    end = "error:%s" % e.errno
rate = (got - mark[1]) * 8 / (last - mark[0]) / 1e6 if mark and last > mark[0] else -1
print("got %d end %s in %.2f s rate %.3f" % (got, end, time.monotonic() - t0, rate))
EOF
# fetch NS BYTES — BYTES from the source service (:9002) at $TARGET4.
fetch() { nsx "$1" timeout 40 "$(python_bin)" "$FETCH" "$TARGET4" 9002 "$2" 2>&1 | tail -n 1; }
# probe NS — a new TCP connect to who-am-i: "reset 0.01s", "data:...", ...
probe() { egtool "$1" expect-reset "$TARGET4" 80 2>&1 | tail -n 1; }
# is_fast_reset PROBE_OUTPUT — "reset S" with S < 1.
is_fast_reset() { case $1 in "reset "*) awk -v s="${1#reset }" 'BEGIN { exit !(s + 0 < 1) }' ;; *) return 1 ;; esac; }

egressd_cmd() { nsx "$NS_GW" timeout 20 "$(egressd_bin)" "$@" </dev/null 2>&1; }
# oneline TEXT — TEXT on one line (for a PASS/FAIL line), lines joined by |.
oneline() { printf '%s' "$1" | tr '\n' '|'; }
# qlist — `egressd quota list` (its text, whatever it says).
qlist() { egressd_cmd quota list --socket "$SOCK"; }
# qcol TEXT IDENTITY COL — one column of IDENTITY's row (2 used, 3 limit,
# 4 left, 5 period end, 6 state); empty if there is no such row.
qcol() { printf '%s\n' "$1" | awk -v id="$2" -v c="$3" '$1 == id { print $c; exit }'; }
# num X — X if it is a plain integer, else -1 (so a missing figure fails).
num() { case $1 in '' | *[!0-9]*) echo -1 ;; *) echo "$1" ;; esac; }
used_of() { num "$(qcol "$(qlist)" "$1" 2)"; }
# total PROM NAME — a counter's unlabelled series, or the sum of its labelled ones.
total() {
	printf '%s\n' "$1" | awk -v m="$2" '
		{ k = $1; split(k, a, "{") } k == m { g = $2 } a[1] == m && k != m { s += $2 }
		END { print (g != "" ? g : s + 0) }'
}
# src_total PROM NAME SOURCE — the sum of NAME's series of one source.
src_total() {
	printf '%s\n' "$1" | awk -v m="$2" -v l="source=\"$3\"" '
		{ split($1, a, "{") } a[1] == m && index($1, l) { v += $2 } END { print v + 0 }'
}
# state_used IDENTITY — bytes used as the state file on disk has them (-1: none).
state_used() { num "$(awk -F '\t' -v id="$1" '$1 == id { print $4; exit }' "$STATE/quota.state" 2>/dev/null)"; }
# state_has IDENTITY BYTES — the state file on disk says BYTES used.
state_has() { [ "$(state_used "$1")" = "$2" ]; }
# state_is IDENTITY STATE — `quota list` shows IDENTITY in STATE.
state_is() { [ "$(qcol "$(qlist)" "$1" 6)" = "$2" ]; }
reloads() { grep -c 'reloaded:' "$EGRESSD_LOG"; }
reloaded_past() { [ "$(reloads)" -gt "$1" ]; }
# secs_of RFC3339 — unix seconds (0 if unparsable); end_of IDENTITY — its
# PERIOD_END in unix seconds; end_after IDENTITY SECS — it is past SECS.
secs_of() { date -u -d "$1" +%s 2>/dev/null || echo 0; }
end_of() { secs_of "$(qcol "$(qlist)" "$1" 5)"; }
end_after() { [ "$(end_of "$1")" -gt "$2" ]; }
# restart HOW — stop egressd by PID (KILL or TERM), start it again (same
# config; the host rules stay), or die.
restart() {
	stop_pid "$EGRESSD_PID" "$1"
	egressd_start --config "$CONF" || die "egressd did not come back after $1"
}

# ---- 1: c0's 3 MB quota runs out during a 20 MB download
P0=$(prom_or_die)
F1=$(fetch "${NS_C[0]}" 20000000)
P1=$(prom_or_die)
QL=$(qlist)
got=$(num "$(printf '%s\n' "$F1" | awk '$1 == "got" { print $2 }')")
end=$(printf '%s\n' "$F1" | awk '$1 == "got" { print $4 }')
secs=$(printf '%s\n' "$F1" | awk '$1 == "got" { print $6 }')
used1=$(num "$(qcol "$QL" "$ID0" 2)")
ended=$(($(total "$P1" egressd_tcp_quota_ended_total) - $(total "$P0" egressd_tcp_quota_ended_total)))
if [ "$got" -ge $((Q0 / 2)) ] && [ "$got" -lt 20000000 ] && { [ "$end" = eof ] || [ "$end" = reset ]; } && awk -v s="$secs" 'BEGIN { exit !(s != "" && s + 0 < 4) }' &&
	[ "$used1" -ge "$got" ] && [ "$used1" -le $((Q0 + SLACK)) ] && [ "$ended" -gt 0 ]; then
	pass "1 c0's 3 MB quota ran out mid-transfer: client $F1; egressd counted $used1 <= $((Q0 + SLACK)); tcp_quota_ended +$ended"
else
	fail "1 c0's quota ends a 20 MB download early" \
		"client '$F1' (want $((Q0 / 2))..20000000 bytes, eof or reset, < 4 s); USED $used1 (want $got..$((Q0 + SLACK))); tcp_quota_ended +$ended"
fi

# ---- 2: spent: new TCP reset, UDP and DNS dropped, the neighbour unaffected
P0=$(prom_or_die)
r_tcp=$(probe "${NS_C[0]}")
r_udp=$(udptool "${NS_C[0]}" none "$TARGET4" "$UDP_WHO_PORT" 2 2>&1 | tail -n 1)
r_dns=$(nsx "${NS_C[0]}" timeout 10 dig +short +tries=1 +time=2 TXT whoami.test @"$PUBDNS4" 2>&1 | grep -v '^;' | tr -d '"' | tail -n 1)
P1=$(prom_or_die)
r_c1=$(egtool "${NS_C[1]}" download "$TARGET4" 9002 5000000 2>&1 | tail -n 1)
dq=$(($(total "$P1" egressd_drop_quota_total) - $(total "$P0" egressd_drop_quota_total)))
uq=$(($(total "$P1" egressd_udp_drop_quota_total) - $(total "$P0" egressd_udp_drop_quota_total)))
leaked=$(($(leak_count) - LEAK0))
if is_fast_reset "$r_tcp" && [ "$dq" -gt 0 ] && [ "$r_udp" = "no reply" ] && [ -z "$r_dns" ] && [ "$uq" -gt 0 ] &&
	[ "${r_c1%% *}" = ok ] && [ "$leaked" -eq 0 ]; then
	pass "2 c0 spent: TCP '$r_tcp' (drop_quota +$dq), UDP '$r_udp', DNS no answer (udp_drop_quota +$uq); c1: $r_c1; leak detector 0"
else
	fail "2 a spent c0 is refused, its neighbour served, nothing leaks" \
		"c0 TCP '$r_tcp' (want reset < 1 s), drop_quota +$dq; UDP '$r_udp'; DNS '$r_dns' (want none); udp_drop_quota +$uq; c1 '$r_c1'; leaked $leaked"
fi

# ---- 3: quota list, stats and metrics agree
QL=$(qlist)
hdr=$(printf '%s\n' "$QL" | head -n 1 | awk '{ $1 = $1; print }')
u=$(num "$(qcol "$QL" "$ID0" 2)")
l=$(num "$(qcol "$QL" "$ID0" 3)")
left=$(qcol "$QL" "$ID0" 4)
pend=$(qcol "$QL" "$ID0" 5)
st=$(qcol "$QL" "$ID0" 6)
c1row=$(qcol "$QL" "$ID1" 1)
ST=$(egressd_cmd stats --socket "$SOCK")
stq=$(printf '%s\n' "$ST" | awk '/^quotas:/ { on = 1; next } on && /^[[:space:]]*$/ { exit } on' | grep -F "$ID0" | head -n 1)
MX=$(nsx "$NS_GW" curl -sS --max-time 5 "http://$METRICS/metrics" 2>&1)
mu=$(printf '%s\n' "$MX" | awk -v id="identity=\"$ID0\"" '$1 ~ /^egressd_quota_used_bytes\{/ && index($1, id) { print $2; exit }')
ml=$(printf '%s\n' "$MX" | awk -v id="identity=\"$ID0\"" '$1 ~ /^egressd_quota_limit_bytes\{/ && index($1, id) { print $2; exit }')
me=$(printf '%s\n' "$MX" | awk -v id="identity=\"$ID0\"" '$1 ~ /^egressd_quota_period_end_seconds\{/ && index($1, id) { print $2; exit }')
if [ "$hdr" = "IDENTITY USED LIMIT LEFT PERIOD_END STATE" ] && [ "$l" -eq "$Q0" ] && [ "$u" -ge "$l" ] &&
	[ "$left" = 0 ] && [ "$st" = spent ] && [[ $pend =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] &&
	[ -z "$c1row" ] && printf '%s\n' "$stq" | grep -qw spent &&
	awk -v u="$mu" -v l="$ml" -v q="$Q0" -v e="$me" 'BEGIN { exit !(u != "" && l + 0 == q && u + 0 >= l + 0 && e + 0 > 0) }'; then
	pass "3 c0 spent everywhere: quota list '$(qcol "$QL" "$ID0" 0)'; stats '$(printf '%s' "$stq" | awk '{ $1 = $1; print }')'; metrics used $mu limit $ml"
else
	fail "3 quota list, stats and metrics show c0 spent" \
		"quota list: $(oneline "$QL"); stats quotas row '$stq'; metrics used '$mu' limit '$ml' period_end '$me'"
fi

# ---- 4: SIGHUP keeps the counter
before=$(used_of "$ID0")
nre=$(reloads)
kill -s HUP "$EGRESSD_PID"
wait_until 5 reloaded_past "$nre" || log "no 'reloaded:' line within 5 s of SIGHUP"
r4=$(probe "${NS_C[0]}")
after=$(used_of "$ID0")
if [ "$before" -ge "$Q0" ] && [ "$after" -eq "$before" ] && is_fast_reset "$r4"; then
	pass "4 SIGHUP: c0's USED $before before, $after after; c0 still refused ($r4)"
else
	fail "4 SIGHUP keeps c0's counter and refusal" "USED $before -> $after; c0 TCP '$r4'"
fi

# ---- 5: kill -9 and SIGTERM
cur=$(used_of "$ID0")
if wait_until 12 state_has "$ID0" "$cur"; then
	saved=$(state_used "$ID0")
else
	saved=-1
fi
restart KILL
r5a=$(probe "${NS_C[0]}")
u5a=$(used_of "$ID0")
before=$u5a
restart TERM
r5b=$(probe "${NS_C[0]}")
u5b=$(used_of "$ID0")
if [ "$saved" -ge "$Q0" ] && [ "$u5a" -ge "$saved" ] && is_fast_reset "$r5a" && [ "$u5b" -eq "$before" ] && is_fast_reset "$r5b"; then
	pass "5 restarts: state file held $saved; after kill -9 USED $u5a ($r5a); after SIGTERM $u5b, exactly as before ($r5b)"
else
	fail "5 c0's counter survives kill -9 and SIGTERM" \
		"state file had $saved (running: $cur); after kill -9 USED $u5a, c0 '$r5a'; SIGTERM: $before -> $u5b, c0 '$r5b'"
fi

# ---- 6: a new period restores service (c2: 1 MB every 17.28 s)
# c2's periods run from egressd's start: spend at least 6 s before one ends.
end0=$(end_of "$ID2")
if [ $((end0 - $(date +%s))) -lt 6 ]; then
	wait_until 15 end_after "$ID2" "$end0" || log "c2's period did not move past $end0 within 15 s"
fi
F6=$(fetch "${NS_C[2]}" 5000000)
r6=$(probe "${NS_C[2]}")
QL=$(qlist)
st6=$(qcol "$QL" "$ID2" 6)
lim6=$(num "$(qcol "$QL" "$ID2" 3)")
spent6=$(num "$(qcol "$QL" "$ID2" 2)")
pend=$(qcol "$QL" "$ID2" 5)
endsec=$(secs_of "$pend")
wait_s=$((endsec - $(date +%s)))
ok6=""
used6=-1
r6b=""
if [ "$wait_s" -ge 0 ] && [ "$wait_s" -le 20 ]; then
	# The period ends at endsec; egressd renews counters on its next tick.
	if wait_until $((wait_s + 10)) state_is "$ID2" ok; then
		ok6=$(date +%s)
		used6=$(used_of "$ID2")
		r6b=$(egtool "${NS_C[2]}" download "$TARGET4" 9002 200000 2>&1 | tail -n 1)
	fi
fi
# (PERIOD_END is rounded up to the second, `date +%s` down.)
if [ "$st6" = spent ] && [ "$lim6" -eq "$QP" ] && [ "$spent6" -ge "$QP" ] && [ "$spent6" -le $((QP + SLACK)) ] && is_fast_reset "$r6" &&
	[ -n "$ok6" ] && [ $((ok6 + 1)) -ge "$endsec" ] &&
	[ "$used6" -ge 0 ] && [ "$used6" -le 65536 ] && [ "${r6b%% *}" = ok ]; then
	pass "6 new period: c2 spent $spent6 of $lim6 ($F6; then $r6), period end $pend; ok again at PERIOD_END + $((ok6 - endsec)) s (to the second) with USED $used6; $r6b"
else
	fail "6 a new period restores c2" \
		"c2 '$F6', then '$r6', state '$st6', USED $spent6 of $lim6 (want $QP..$((QP + SLACK))), period end '$pend' ($wait_s s away); ok at '${ok6:-never}', USED $used6; download '$r6b'"
fi

# ---- 7: a corrupt state file: kept aside, metered refused, unmetered fine
stop_pid "$EGRESSD_PID" TERM
printf 'garbage\x01\x02 not a quota state\n' >"$STATE/quota.state"
nlog=$(wc -l <"$EGRESSD_LOG")
egressd_start --config "$CONF" || die "egressd did not start over a corrupt state file"
kept=$(find "$STATE" -maxdepth 1 -name 'quota.state.corrupt-*' | head -n 1)
logsaid=$(tail -n +"$((nlog + 1))" "$EGRESSD_LOG" | grep -i 'corrupt' | head -n 1)
r7=$(probe "${NS_C[0]}")
r7c1=$(egtool "${NS_C[1]}" download "$TARGET4" 9002 2000000 2>&1 | tail -n 1)
DR=$(egressd_cmd doctor --config "$CONF")
drl=$(printf '%s\n' "$DR" | grep 'quota state' | head -n 1)
if [ -n "$kept" ] && grep -q 'garbage' "$kept" && [ -n "$logsaid" ] && printf '%s\n' "$logsaid" | grep -qF "$(basename "$kept")" &&
	is_fast_reset "$r7" && [ "${r7c1%% *}" = ok ] && printf '%s\n' "$drl" | grep -qF "$kept"; then
	pass "7 corrupt state: kept aside as $(basename "$kept"), logged; c0 refused ($r7); c1 $r7c1; doctor: $(printf '%s' "$drl" | cut -c1-140)"
else
	fail "7 a corrupt state file fails metered classes closed" \
		"kept aside '$kept'; log '$logsaid'; c0 '$r7'; c1 '$r7c1'; doctor '$drl'"
fi

# ---- 8: quota reset
out8=$(egressd_cmd quota reset "$ID0" --socket "$SOCK")
rc8=$?
seen8=$(curl_whoami "${NS_C[0]}")
st8=$(qcol "$(qlist)" "$ID0" 6)
out8u=$(egressd_cmd quota reset no-such-identity --socket "$SOCK")
rc8u=$?
out8a=$(egressd_cmd quota reset --all --socket "$SOCK")
rc8a=$?
if [ "$rc8" -eq 0 ] && [ "$seen8" = "$(exit_egress4 1)" ] && [ "$st8" = ok ] && [ "$rc8u" -eq 1 ] && [ "$rc8a" -eq 0 ]; then
	pass "8 quota reset $ID0: '$(oneline "$out8")'; c0 reaches the target as $seen8, state $st8; unknown name exits 1 ('$(oneline "$out8u")'); --all: '$(oneline "$out8a")'"
else
	fail "8 quota reset restores c0" \
		"reset $ID0 exit $rc8 '$(oneline "$out8")'; c0 seen as '$seen8' (want $(exit_egress4 1)), state '$st8' (want ok); unknown: exit $rc8u '$(oneline "$out8u")'; --all: exit $rc8a '$(oneline "$out8a")'"
fi

# ---- 9: Throttle("1mbit") once c3's 300 kB are spent
F9=$(fetch "${NS_C[3]}" 400000)
st9=$(qcol "$(qlist)" "$ID3" 6)
P0=$(prom_or_die)
R9=$(fetch "${NS_C[3]}" 500000)
P1=$(prom_or_die)
f9=$(printf '%s\n' "$F9" | awk '$1 == "got" && $2 == 400000 && $4 == "eof" { print "whole" }')
r9=$(printf '%s\n' "$R9" | awk '$1 == "got" && $2 == 500000 && $4 == "eof" { print $9 }')
d9=$(($(src_total "$P1" egressd_drop_quota_total "$ID3") - $(src_total "$P0" egressd_drop_quota_total "$ID3")))
if [ "$f9" = whole ] && [ "$st9" = spent ] && awk -v x="$r9" 'BEGIN { exit !(x != "" && x + 0 >= 0.7 && x + 0 <= 1.1) }' && [ "$d9" -eq 0 ]; then
	pass "9 Throttle(1mbit): c3 spent ($F9), then held to $r9 Mbit/s after the first second ($R9), not refused"
else
	fail "9 a spent Throttle quota holds c3 to 1 Mbit/s" \
		"spending: '$F9', state '$st9'; then '$R9' (want 500000 bytes, eof, rate 0.7..1.1); drop_quota for c3 +$d9"
fi

finish_suite quotas.sh
