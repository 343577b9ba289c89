#!/usr/bin/env bash
# netns-tests/pools.sh — warm SOCKS5 pools and pipelining (issue 13), end to
# end in network namespaces, against exits that show what arrives on each
# connection (tools/socks_server.py) and against microsocks.
#
#  c0 10.8.0.10 ─┐                        ┌─ exit0 100.64.0.2:1080 microsocks (drops pipelined bytes)
#  c1 10.8.0.11 ─┤                        ├─ exit1 100.64.1.2 socks_server.py:
#  c2 10.8.0.12 ─┤  gw: br0 10.8.0.1      │     :1080 "good"  (warm 2)
#  c3 10.8.0.13 ─┼─ egressd :10900 ───────┤     :1081 "auth"  RFC 1929: usera old|new, userb
#  c4 10.8.0.14 ─┤  control socket,       │     :1082 "idle"  closes idle greeted conns after 4 s
#  c5 10.8.0.15 ─┤  stats --prometheus    │     :1083 "short" closes them after 1.5 s
#  c6 10.8.0.16 ─┤                        │     :1084 "burst" (warm 4)
#  c7 10.8.0.17 ─┤                        │     :1085 "flaky" drops the first 3 requests on pooled conns
#  c8 10.8.0.18 ─┤                        │     :1086 "fair"  (warm 4; greetings slowed on demand)
#  c9 10.8.0.19 ─┤                        └─ exit2 100.64.2.2:1080 socks_server.py "cold" (warm 0)
#  c10 10.8.0.20 ┤                                     :1081 socks_server.py "late" (warm 0)
#  c11 10.8.0.21 ┘
#                                             every exit -> inet 203.0.113.10 (who-am-i :80)
#
# Routes: c0 -> micro (exit0, warm default, pipeline default), c1 -> good,
# c2 -> authA (usera), c3 -> authB (userb), c4 -> idle, c5 -> short,
# c6 -> cold (warm: 0, pipeline: false), c7 -> burst (warm: 4, learning
# bursts up to the default warm_max 64), c8 -> flaky,
# c9 and c10 -> fair (warm: 4), c11 -> late (warm: 0, pipelining probed).
# good and idle have fixed pools (warm_max: 2): 1 and 3 count their
# refills and refreshes one by one, which a pool grown by a burst of the
# checks' own curls would blur; burst shows the learning (5).
#
# Checks (one PASS/FAIL line each; 27 on every path, plan_checks), in the
# order they run (0 before egressd; 6 first after it: it needs egressd's
# first seconds; 3a's flows run in the background from the start). Against
# an egressd without pools most of them fail, and each of 3c, 3e, 4c, 5c
# and 8 was seen to fail against a build with the matching fault (idle
# limit never learned, no retry, every pool drained on reload, refills not
# counting pending ones, no fair share).
# Nothing here waits a fixed time for something to happen: each wait is
# for a condition (the exits' logs, egressd's counters, nft counters),
# bounded, so a busy machine only makes the suite slower. egressd
# refreshes a pooled connection at 19.5-25 s of age while it knows no idle
# limit for the server: 3e, 4 and 8, which must not meet such a refresh,
# first wait (30 s at most) until the pool's connections are < 14 s old.
#   0  control of 7: before egressd and its rules, c3's curls (v4, v6)
#      leave by gw's uplink (the target sees .200 / ::c8) and the leak
#      detector counts them
#   6a warm: 0 opens nothing before a container connects: exit2's SYN
#      counter and its server's accept count stay 0 for >= 3 s after start,
#      while the same egressd has warmed "good" (control)
#   6b the first flow of c6 works, on a connection accepted after it
#      started (SYN counter 1), and is no pool hit
#   1a after start "good" has 2 greeted idle connections at the exit,
#      pool_ready{good} = 2, and `egressd stats` has the line
#      "  good ready 2/2 hits .. pipelining .."
#   1b three curls from c1, one at a time (pool refilled in between): each
#      gets the exit's bytes, and its CONNECT arrives on a connection the
#      exit accepted (and greeted) before the curl started; pool_hits +3
#   1c each hit is refilled: the exit is back to 2 idle connections,
#      pool_refills grew by >= 3
#   1d stats say "pipelining yes" for the server that takes pipelined bytes
#      (the control of 2b)
#   2a microsocks with pipeline: true (default): 5 curls from c0 all right
#   2b stats say "pipelining no" for microsocks
#   2c the pool still serves microsocks: pool_hits{micro} grew
#   3a a server closing idle greeted connections after 4 s: 20 flows from
#      c4 at spread-out times from egressd's start on, before and after it
#      learns the limit (gaps of 0.1-0.6 s and, every 6th, 3.7-4.6 s, about
#      18 s in all) all get the right bytes
#   3b the server did close idle pooled connections (idle_closed >= 1) and
#      egressd discarded them: pool_discards{idle} >= 1
#   3c egressd learned the lifetime: from then on it replaces every pooled
#      connection before the server's 4 s. Read from the exit's log, over
#      a window of events (not a duration): every connection pooled at its
#      start and >= 4 in all are closed by egressd (EOF while idle; their
#      idle ages are reported) and the server closes none (the window ends
#      at the first it closes: 40 s bound); pool_disabled{idle} = 0 (4 s is
#      long enough to pool), and the pool is back to ready 2
#   3d a server closing them after 1.5 s (3 short lives in a row):
#      pool_disabled{short} >= 1, then no idle connection is held at it
#      (15 samples over 3 s), and 5 flows from c5 work
#   3e a pooled connection that dies with the request on its way (the
#      server closes unanswered a request on a connection greeted >= 0.5 s
#      before, 3 times; the check waits until both pooled ones are): each
#      of 3 curls from c8 still gets the right bytes, retried on a
#      connection opened after it started
#   4a SIGHUP with authA's password changed: the pooled connections greeted
#      with the old password are closed by egressd within 5 s (none was due
#      for a refresh)
#   4b new pooled connections use the new password, and c2's new flow works,
#      its CONNECT on a connection authenticated with the new password
#   4c control: authB (same server, unchanged) keeps its pooled connections
#      across the reload (still open once authA's are closed: the reload
#      has reached every pool by then)
#   5a a burst of 2000 connections from c7 (at most 200 at once, 90 s
#      bound) through "burst" (warm 4): every one gets the right bytes
#   5b pool_ready{burst} sampled (>= 5 samples) during the burst never
#      exceeds warm_max (64), exceeds warm (4) at some sample (the pool
#      learned the burst), and the burst did use and exhaust the pool (hits
#      and misses grew)
#   5c at the exit, greeted-but-idle connections never exceeded 64 (the
#      server's own 50 ms sampling; bytes waiting in the kernel count as
#      a request under way, not idle). With the pool empty egressd sends
#      greeting and CONNECT in one flight to a server that takes it, so a
#      miss never waits greeted: every greeted-and-waiting connection is a
#      pooled one. (Without pools, unpipelined handshakes under this burst
#      showed up to 84 at once; with refills not counting pending ones, 553:
#      pool_ready stays in bounds then, only the exit sees it.)
#   5d after the burst the pool holds what it learned: pool_ready 64, 64
#      idle at the exit (exactly: nothing more is held), and `egressd
#      stats` says "ready 64/64" and "grown to a burst of 64 (warm 4)"
#   5e a later burst of 64 connections at once from c7 finds them ready:
#      pool_hits +56 or more of 64 (c7's share is 62: ceil(4/2) and the 60
#      the burst taught; 56 leaves room for a pooled connection or two
#      refreshed meanwhile), all 64 right (a fixed pool of 4 gives <= 4)
#   8  fair share: with greetings slowed to 5 s at the exit (no refill or
#      fresh connection is ready before all 5 flows are placed), 4 curls
#      at once from c9 take 2 of fair's 4 pooled connections (ceil(4/2))
#      and make 2 fresh ones; once egressd has placed all 4 (pool hits +
#      misses +4, c9's pooled requests at the exit), c10 still gets a pooled
#      one (accepted before c9 started); all 5 right, pool_hits +3
#   10 a container's first bytes that come while the connect to the exit
#      is still under way (its first SYN dropped at the exit, counted: the
#      drop stays until it took one, and the connect takes a retransmit,
#      >= 1 s) leave with the greeting and CONNECT in one
#      flight: the exit holds the HTTP request when it answers the CONNECT
#      ("first=N" > 0) and curl gets the right bytes (a build that spent
#      the client's readiness while connecting sent them a round trip
#      later, after the answer)
#   9  `egressd stats` has a "warm pools:" line per Socks5 tunnel (11), each
#      in the format above; the warm: 0, pipeline: false tunnel says
#      "ready 0/0" and "pipelining off"
#   7  nothing left gw by its uplink (leak detector) since egressd's rules
#      went in (its control: 0)
#   egressd starting, its rules, and its being alive at the end are
#   preconditions (fail_unplanned), not checks.
#
# Usage: sudo netns-tests/pools.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 27
# shellcheck source=topology.sh
. "$HERE/topology.sh"

require_root_and_tools nft iptables ip6tables curl microsocks danted python3 ss timeout ps awk
eg_init
T0=$(date +%s)

NCONT=12
EX0=$(exit_egress4 0)
EX1=$(exit_egress4 1)
EX2=$(exit_egress4 2)
PA_OLD=pool-Old-4f1c9a
PA_NEW=pool-New-a83e07
PB=pool-B-77c0d2
SOCK=$EG_TMP/egressd.sock
CONF=$EG_TMP/egressd.ron

oneline() { tr '\n' ' ' | cut -c1-"${1:-300}"; }

# ---------------------------------------------------------------- helpers

# srv_start NAME NS ADDR PORT ARGS... — tools/socks_server.py serve in NS;
# log $EG_TMP/NAME.log, status $EG_TMP/NAME.st.
srv_start() {
	local name=$1 ns=$2 addr=$3 port=$4; shift 4
	eg_spawn "$ns" "$EG_TMP/$name.out" "$(python_bin)" -u "$EG_TOOLS/socks_server.py" serve \
		"$addr" "$port" --log "$EG_TMP/$name.log" --status "$EG_TMP/$name.st" \
		--ready "$EG_TMP/$name.ready" "$@"
	wait_until 15 test -e "$EG_TMP/$name.ready" ||
		die "socks_server $name did not start: $(tail -n 5 "$EG_TMP/$name.out" | oneline)"
	wait_until 5 test -s "$EG_TMP/$name.st" || die "socks_server $name writes no status"
}

# st NAME KEY — a field of server NAME's status line (open idle max_idle
# accepted reqs idle_closed idle_eof idle_creds).
st() {
	local v
	v=$(tr ' ' '\n' <"$EG_TMP/$1.st" 2>/dev/null | sed -n "s/^$2=//p" | head -n 1)
	[ -n "$v" ] || die "status of $1 has no $2: $(oneline <"$EG_TMP/$1.st")"
	printf '%s\n' "$v"
}
st_is() { [ "$(st "$1" "$2")" = "$3" ]; }
# idle_cred NAME K — idle connections at server NAME that used cred K.
idle_cred() {
	st "$1" idle_creds | tr ',' '\n' | awk -F: -v k="$2" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }'
}
idle_cred_is() { [ "$(idle_cred "$1" "$2")" = "$3" ]; }

ctl_stats() { nsx "$NS_GW" timeout 10 "$(egressd_bin)" stats --socket "$SOCK" "$@"; }

# pm FILE METRIC TUNNEL — a sample's value from Prometheus text
# (egressd_METRIC{...tunnel="TUNNEL"...}), "absent" when there is none.
pm() {
	awk -v m="egressd_$2" -v t="tunnel=\"$3\"" '
		index($1, m "{") == 1 && index($1, t) > 0 { print $2; f = 1; exit }
		END { if (!f) print "absent" }' "$1"
}
# pnow METRIC TUNNEL — the same, from a fresh `stats --prometheus`.
pnow() {
	ctl_stats --prometheus >"$EG_TMP/prom.now" 2>&1 || { echo "absent"; return; }
	pm "$EG_TMP/prom.now" "$1" "$2"
}
pnow_is() { local v; v=$(pnow "$1" "$2"); [ "$v" != absent ] && [ "$(num "$v")" -eq "$3" ]; }
pnow_ge() { local v; v=$(pnow "$1" "$2"); [ "$v" != absent ] && [ "${v%.*}" -ge "$3" ]; }
num() { case $1 in '' | absent) echo 0 ;; *) echo "${1%.*}" ;; esac; }

# pool_line TUNNEL — TUNNEL's line in the "warm pools:" section of
# `egressd stats`, or "".
pool_line() {
	ctl_stats >"$EG_TMP/stats.now" 2>&1 || return 0
	awk -v t="$1" '/^warm pools:/ { s = 1; next } s && /^[^ ]/ { s = 0 } s && $1 == t { print; exit }' "$EG_TMP/stats.now"
}
# pool_field TUNNEL WORD — the word after WORD in TUNNEL's pool line.
pool_field() { pool_line "$1" | awk -v k="$2" '{ for (i = 1; i < NF; i++) if ($i == k) { print $(i + 1); exit } }'; }
pool_field_is() { [ "$(pool_field "$1" "$2")" = "$3" ]; }
pool_field_not() { local v; v=$(pool_field "$1" "$2"); [ -n "$v" ] && [ "$v" != "$3" ]; }
# A pool's line: the brief's fields in order; a note in parentheses (the
# server's idle limit, "disabled: ...") may follow the discards, and more
# (the UDP pool) may follow the pipelining word.
POOL_RE='^  [A-Za-z0-9_-]+ ready [0-9]+/[0-9]+ hits [0-9]+ misses [0-9]+ refills [0-9]+ discards [0-9]+( \([^)]*\))? pipelining (yes|no|unknown|off)( .*)?$'

# whoami NS [SECS] — the who-am-i body (last line) from NS, or curl's
# error; curl's time bound SECS (8).
whoami() { nsx "$1" curl -sS --max-time "${2:-8}" "http://$TARGET4/" 2>&1 | tr -d '\r' | tail -n 1; }
# early_whoami NS MARKER — what curl does (connect, then the request at once),
# touching MARKER once the request is written, so a check can know the
# container's first bytes were sent; prints the answer's last line.
early_whoami() {
	nsx "$1" timeout 20 "$(python_bin)" -c '
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=15)
s.sendall(b"GET / HTTP/1.0\r\nHost: " + sys.argv[1].encode() + b"\r\n\r\n")
open(sys.argv[2], "w").close()
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
print(data.decode(errors="replace").replace("\r", "").rstrip("\n").split("\n")[-1])
' "$TARGET4" "$2" 2>&1 | tail -n 1
}

# reqs_after NAME T — server NAME's request lines for the who-am-i target
# that arrived after T (ns).
reqs_after() {
	awk -v t0="$2" -v d="dst=$TARGET4:80" '
		$1 == "req" && $3 == d { t = $NF; sub(/^t=/, "", t); if (t + 0 > t0 + 0) print }' "$EG_TMP/$1.log"
}
# pooled_reqs NAME T [T2] — server NAME's who-am-i requests after T2 (T)
# on connections it accepted before T (pooled when T came).
pooled_reqs() {
	reqs_after "$1" "${3:-$2}" | awk -v t0="$2" '
		{ for (i = 1; i <= NF; i++) if ($i ~ /^accept_t=/) { a = $i; sub(/^accept_t=/, "", a); if (a + 0 < t0 + 0) print } }'
}
# kvf KEY LINE — KEY=value in LINE.
kvf() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1; }

# open_idle_ids NAME CRED — ids of connections at server NAME greeted with
# CRED that have neither sent a request nor closed.
open_idle_ids() {
	awk -v c="cred=$2" '
		$1 == "greeted" && $3 == c { id[$2] = 1 }
		$1 == "req" || $1 == "close" { delete id[$2] }
		END { for (i in id) { sub(/^id=/, "", i); print i } }' "$EG_TMP/$1.log" | sort -n | tr '\n' ' '
}
# greeted_t NAME ID — when server NAME answered connection ID's greeting (ns).
greeted_t() { awk -v i="id=$2" '$1 == "greeted" && $2 == i { t = $NF; sub(/^t=/, "", t); print t; exit }' "$EG_TMP/$1.log"; }
# idle_aged NAME CRED N MIN_MS MAX_MS — server NAME holds exactly N idle
# connections greeted with CRED, each greeted between MIN_MS and MAX_MS
# ago. egressd refreshes a pooled connection at 19.5-25 s of age until it
# learns a server's idle limit (REFRESH_DEFAULT 25 s, staggered by up to
# 7/32 of it): a check that must not meet a refresh waits until the pool's
# connections are young (MAX_MS 14000), whatever time the suite has taken
# to get there.
idle_aged() {
	local ids id g age now
	read -r -a ids <<<"$(open_idle_ids "$1" "$2")"
	[ "${#ids[@]}" -eq "$3" ] || return 1
	now=$(now_ns)
	for id in "${ids[@]}"; do
		g=$(greeted_t "$1" "$id")
		[ -n "$g" ] || return 1
		age=$(( (now - g) / 1000000 ))
		[ "$age" -ge "$4" ] && [ "$age" -le "$5" ] || return 1
	done
}
# closed_as NAME ID — "state why" of connection ID's close line, or "".
closed_as() {
	awk -v i="id=$2" '$1 == "close" && $2 == i { s = $3; w = $4; sub(/^state=/, "", s); sub(/^why=/, "", w); print s, w }' "$EG_TMP/$1.log"
}
# idle_closes_after NAME T WHY — how many idle greeted connections at
# server NAME closed after T (ns) for WHY (eof: by the client, egressd;
# idle-close: by the server's idle timer).
idle_closes_after() {
	awk -v t0="$2" -v w="why=$3" '
		$1 == "close" && $3 == "state=idle" && $4 == w { t = $NF; sub(/^t=/, "", t); if (t + 0 > t0 + 0) n++ }
		END { print n + 0 }' "$EG_TMP/$1.log"
}
# idle_eof_ages NAME T — for those closed by the client (eof) after T: how
# long each had been idle (greeted to close, ms), comma-separated.
idle_eof_ages() {
	awk -v t0="$2" '
		{ t = $NF; sub(/^t=/, "", t) }
		$1 == "greeted" { g[$2] = t }
		$1 == "close" && $3 == "state=idle" && $4 == "why=eof" && t + 0 > t0 + 0 && ($2 in g) {
			printf "%s%d", sep, (t - g[$2]) / 1000000; sep = ","
		}' "$EG_TMP/$1.log"
}
all_closed() {
	local n=$1 id; shift
	for id in "$@"; do [ -n "$(closed_as "$n" "$id")" ] || return 1; done
}

# ---------------------------------------------------------------- topology, servers

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
topo_up
topo_start_services
# topology.sh started danted in exit1 and exit2: this suite's exits are
# socks_server.py there (exit0 keeps microsocks).
socks_stop 1
socks_stop 2
E1=${NS_EXIT[1]}
E2=${NS_EXIT[2]}
srv_start good "$E1" 100.64.1.2 1080
srv_start auth "$E1" 100.64.1.2 1081 --auth "usera:$PA_OLD" --auth "usera:$PA_NEW" --auth "userb:$PB"
srv_start idle "$E1" 100.64.1.2 1082 --idle-close 4
srv_start short "$E1" 100.64.1.2 1083 --idle-close 1.5
srv_start burst "$E1" 100.64.1.2 1084
srv_start flaky "$E1" 100.64.1.2 1085 --drop-pooled 3
srv_start fair "$E1" 100.64.1.2 1086 --delay-file "$EG_TMP/fair.delay"
srv_start cold "$E2" 100.64.2.2 1080
srv_start late "$E2" 100.64.2.2 1081
SYN_COLD0=$(socks_syn_count 2)

# write_conf PASSWORD_A — egressd's config; authA logs in with PASSWORD_A.
write_conf() {
	cat >"$CONF.tmp" <<-EOF
	(
	    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
	    tunnels: {
	        "micro": Socks5(server: "100.64.0.2:1080", udp: false),
	        "good": Socks5(server: "100.64.1.2:1080", udp: false, warm: 2, warm_max: 2),
	        "authA": Socks5(server: "100.64.1.2:1081", username: "usera", password: "$1", udp: false, warm: 2),
	        "authB": Socks5(server: "100.64.1.2:1081", username: "userb", password: "$PB", udp: false, warm: 2),
	        "idle": Socks5(server: "100.64.1.2:1082", udp: false, warm: 2, warm_max: 2, pipeline: true),
	        "short": Socks5(server: "100.64.1.2:1083", udp: false, warm: 2),
	        "burst": Socks5(server: "100.64.1.2:1084", udp: false, warm: 4),
	        "cold": Socks5(server: "100.64.2.2:1080", udp: false, warm: 0, pipeline: false),
	        "flaky": Socks5(server: "100.64.1.2:1085", udp: false, warm: 2),
	        "fair": Socks5(server: "100.64.1.2:1086", udp: false, warm: 4),
	        "late": Socks5(server: "100.64.2.2:1081", udp: false, warm: 0),
	    },
	    routes: [
	        (source: "10.8.0.10", tunnel: "micro"),
	        (source: "10.8.0.11", tunnel: "good"),
	        (source: "10.8.0.12", tunnel: "authA"),
	        (source: "10.8.0.13", tunnel: "authB"),
	        (source: "10.8.0.14", tunnel: "idle"),
	        (source: "10.8.0.15", tunnel: "short"),
	        (source: "10.8.0.16", tunnel: "cold"),
	        (source: "10.8.0.17", tunnel: "burst"),
	        (source: "10.8.0.18", tunnel: "flaky"),
	        (source: "10.8.0.19", tunnel: "fair"),
	        (source: "10.8.0.20", tunnel: "fair"),
	        (source: "10.8.0.21", tunnel: "late"),
	    ],
	    intercept: (tcp: Redirect),
	    control: (socket: "$SOCK"),
	)
	EOF
	mv "$CONF.tmp" "$CONF"
}
write_conf "$PA_OLD"
if ! "$(egressd_bin)" check --config "$CONF" >"$EG_TMP/check.out" 2>&1; then
	die "egressd check rejects the pool config (warm/pipeline): $(tail -n 3 "$EG_TMP/check.out" | oneline)"
fi
# ================================================================== 0 control of 7's detector
# Before egressd and its rules, c3's traffic leaves by gw's uplink
# (MASQUERADE): the leak detector that check 7 reads must count it.
leak0=$(leak_count)
seen4=$(curl_whoami "${NS_C[3]}")
seen6=$(curl_whoami "${NS_C[3]}" -6)
leak1=$(leak_count)
if [ "$seen4" = "$GW_UPLINK4" ] && [ "$seen6" = "$GW_UPLINK6" ] && [ "$leak1" -gt "$leak0" ]; then
	pass "0 control: without egressd c3 leaves by gw's uplink as $seen4 / $seen6 and the leak detector counts it ($((leak1 - leak0)) packets)"
else
	fail "0 control: without egressd c3 should leak via the uplink and the leak detector count it" \
		"target saw v4 '$seen4' v6 '$seen6' (want $GW_UPLINK4 / $GW_UPLINK6), detector +$((leak1 - leak0)) (want > 0)"
fi

START_NS=$(now_ns)
egressd_up_or_exit "$CONF"
wait_until 5 test -S "$SOCK" || die "egressd's control socket $SOCK did not appear"
LEAK_START=$(leak_count)
# 3a runs in the background from the start: its first flows meet the pool
# before egressd has seen the server close an idle connection.
(
	exec timeout -k 5 90 ip netns exec "${NS_C[4]}" "$(python_bin)" "$EG_TOOLS/socks_server.py" spread \
		"$TARGET4" 80 20 "$EX1" 13 0.1 0.6 6 3.7 4.6
) >"$EG_TMP/spread.res" 2>&1 </dev/null &
SPID=$!
EG_PIDS+=("$SPID")

# ================================================================== 6a warm: 0 (and start)
wait_until 10 st_is good idle 2
while [ $(( $(now_ns) - START_NS )) -lt 3000000000 ]; do sleep 0.1; done
syn_cold=$(( $(socks_syn_count 2) - SYN_COLD0 ))
acc_cold=$(st cold accepted)
good_idle=$(st good idle)
if [ "$syn_cold" -eq 0 ] && [ "$acc_cold" -eq 0 ] && [ "$good_idle" -eq 2 ]; then
	pass "6a warm: 0 opens no connection before a container connects (exit2: 0 SYNs, 0 accepted in $(( ($(now_ns) - START_NS) / 1000000 )) ms; control: good has $good_idle idle at its exit)"
else
	fail "6a warm: 0 must open nothing before a container connects" \
		"exit2 saw $syn_cold SYNs, its server accepted $acc_cold; good's exit holds $good_idle idle (want 2)"
fi

# ================================================================== 6b warm: 0, first flow
t6=$(now_ns)
got=$(whoami "${NS_C[6]}")
r6=$(reqs_after cold "$t6")
acc6=$(kvf accept_t "$r6")
syn_cold=$(( $(socks_syn_count 2) - SYN_COLD0 ))
hits_cold=$(num "$(pnow pool_hits_total cold)")
if [ "$got" = "$EX2" ] && [ "$(printf '%s\n' "$r6" | grep -c .)" -eq 1 ] && [ "${acc6:-0}" -gt "$t6" ] &&
	[ "$syn_cold" -eq 1 ] && [ "$hits_cold" -eq 0 ]; then
	pass "6b warm: 0: c6's flow works ($got) on a connection accepted $(( (acc6 - t6) / 1000000 )) ms after it started, 1 SYN, no pool hit"
else
	fail "6b warm: 0: c6's flow on a fresh connection" \
		"got '$got' (want $EX2); requests: '$(printf '%s' "$r6" | oneline 200)'; t0=$t6; SYNs $syn_cold; pool_hits $hits_cold"
fi

# ================================================================== 1 a pooled connection is used
wait_until 5 pnow_is pool_ready good 2
ready_good=$(pnow pool_ready good)
line=$(pool_line good)
idle_good=$(st good idle)
if [ "$idle_good" -eq 2 ] && [ "$(num "$ready_good")" -eq 2 ] && [ "$ready_good" != absent ] &&
	printf '%s\n' "$line" | grep -qE "$POOL_RE" && printf '%s\n' "$line" | grep -q ' ready 2/2 '; then
	pass "1a good is warm: 2 greeted idle connections at the exit, pool_ready 2, stats: '$line'"
else
	fail "1a good warm after start" \
		"exit idle $idle_good (want 2), pool_ready '$ready_good', stats line '$line' ($(grep -A9 '^warm pools:' "$EG_TMP/stats.now" | oneline 200))"
fi

hits0=$(num "$(pnow pool_hits_total good)")
refills0=$(num "$(pnow pool_refills_total good)")
ok1=0
bad1=""
refilled=0
for k in 1 2 3; do
	wait_until 5 st_is good idle 2 && wait_until 3 pnow_is pool_ready good 2
	t1=$(now_ns)
	got=$(whoami "${NS_C[1]}")
	r=$(reqs_after good "$t1")
	acc=$(kvf accept_t "$r")
	grt=$(kvf greeted_t "$r")
	if [ "$got" = "$EX1" ] && [ "$(printf '%s\n' "$r" | grep -c .)" -eq 1 ] &&
		[ "${acc:-$t1}" -lt "$t1" ] && [ "${grt:-$t1}" -lt "$t1" ]; then
		ok1=$((ok1 + 1))
		bad1="$bad1 #$k: accepted $(( (t1 - acc) / 1000000 )) ms before the curl, idle $(kvf idle_ms "$r") ms;"
	else
		bad1="$bad1 #$k: got '$got', t0=$t1, req '$(printf '%s' "$r" | oneline 160)';"
	fi
	wait_until 5 st_is good idle 2 && refilled=$((refilled + 1))
done
hits1=$(num "$(pnow pool_hits_total good)")
refills1=$(num "$(pnow pool_refills_total good)")
if [ "$ok1" -eq 3 ] && [ $((hits1 - hits0)) -eq 3 ]; then
	pass "1b 3 curls from c1 got $EX1, each CONNECT on a connection the exit had accepted before the curl (no new handshake):$bad1 pool_hits +3"
else
	fail "1b pooled connection used" "$ok1/3 on pre-accepted connections:$bad1 pool_hits +$((hits1 - hits0)) (want 3)"
fi
if [ "$refilled" -eq 3 ] && [ $((refills1 - refills0)) -ge 3 ]; then
	pass "1c every hit refilled: the exit was back to 2 idle connections each time, pool_refills +$((refills1 - refills0))"
else
	fail "1c refill after a hit" "back to 2 idle $refilled/3 times; pool_refills +$((refills1 - refills0)) (want >= 3); status: $(oneline <"$EG_TMP/good.st")"
fi
wait_until 5 pool_field_not good pipelining unknown
pl=$(pool_field good pipelining)
if [ "$pl" = yes ]; then
	pass "1d stats: good (a server that takes pipelined bytes) pipelining yes"
else
	fail "1d stats: good should say pipelining yes" "pipelining '$pl': $(pool_line good)"
fi

# ================================================================== 2 microsocks
wait_until 5 pool_field_not micro pipelining unknown
hm0=$(num "$(pnow pool_hits_total micro)")
ok2=0
res2=""
for k in 1 2 3 4 5; do
	got=$(whoami "${NS_C[0]}")
	[ "$got" = "$EX0" ] && ok2=$((ok2 + 1))
	res2="$res2 $got"
	sleep 0.3
done
hm1=$(num "$(pnow pool_hits_total micro)")
if [ "$ok2" -eq 5 ]; then
	pass "2a microsocks (pipeline: true by default): 5/5 curls from c0 got $EX0"
else
	fail "2a microsocks: 5 curls from c0" "$ok2/5 right:$res2"
fi
pl=$(pool_field micro pipelining)
if [ "$pl" = no ]; then
	pass "2b stats: micro (microsocks drops pipelined bytes) pipelining no: $(pool_line micro)"
else
	fail "2b stats: microsocks should say pipelining no" "pipelining '$pl': $(pool_line micro)"
fi
if [ $((hm1 - hm0)) -ge 1 ]; then
	pass "2c the pool serves microsocks too: pool_hits{micro} +$((hm1 - hm0)) over 5 flows"
else
	fail "2c the pool should serve microsocks (greeting done, request later)" "pool_hits{micro} +$((hm1 - hm0)): $(pool_line micro)"
fi

# ================================================================== 3d a server closing idle ones after 1.5 s
wait_until 12 pnow_ge pool_disabled_total short 1
dis_short=$(pnow pool_disabled_total short)
# (the pooled connections closed and a refill under way handed back)
wait_until 5 st_is short idle 0
idle_max=0
for k in $(seq 1 15); do
	v=$(st short idle)
	[ "$v" -gt "$idle_max" ] && idle_max=$v
	sleep 0.2
done
ok3d=0
for k in 1 2 3 4 5; do [ "$(whoami "${NS_C[5]}")" = "$EX1" ] && ok3d=$((ok3d + 1)); done
if [ "$(num "$dis_short")" -ge 1 ] && [ "$idle_max" -eq 0 ] && [ "$ok3d" -eq 5 ]; then
	pass "3d idle timeout 1.5 s: pool_disabled{short} $dis_short, no idle connection held at the exit over 3 s, 5/5 flows from c5 right"
else
	fail "3d a server closing idle connections after 1.5 s: pooling stops" \
		"pool_disabled '$dis_short' (want >= 1), up to $idle_max idle at the exit (want 0), $ok3d/5 flows right; $(pool_line short)"
fi

# ================================================================== 3e a pooled connection dies under a request
# flaky's server closes, unanswered, a request that arrives on a connection
# greeted >= 0.5 s before (3 times): egressd must retry on a fresh one.
ok3e=0
det3e=""
for k in 1 2 3; do
	# both pooled connections greeted >= 0.6 s ago (the server drops what
	# comes on those) and not due for a refresh during the curl
	wait_until 30 idle_aged flaky - 2 600 14000 ||
		log "3e #$k: flaky's pool is not 2 idle connections 0.6-14 s old: $(open_idle_ids flaky -)"
	t3=$(now_ns)
	got=$(whoami "${NS_C[8]}")
	dropped=0
	fresh=0
	while read -r line; do
		[ -n "$line" ] || continue
		id=$(kvf id "$line")
		acc=$(kvf accept_t "$line")
		if grep -q "^drop id=$id " "$EG_TMP/flaky.log"; then
			[ "$acc" -lt "$t3" ] && dropped=$((dropped + 1))
		elif [ "$acc" -gt "$t3" ] && grep -q "^reply id=$id rep=0 " "$EG_TMP/flaky.log"; then
			fresh=$((fresh + 1))
		fi
	done <<<"$(reqs_after flaky "$t3")"
	det3e="$det3e #$k: '$got', $dropped dropped on a pooled connection, $fresh answered on a fresh one;"
	[ "$got" = "$EX1" ] && [ "$dropped" -eq 1 ] && [ "$fresh" -eq 1 ] && ok3e=$((ok3e + 1))
done
if [ "$ok3e" -eq 3 ]; then
	pass "3e a pooled connection closed with the request on its way costs no flow:$det3e"
else
	fail "3e a pooled connection that dies unanswered: retry on a fresh one" "$ok3e/3 right:$det3e"
fi

# ================================================================== 3 a server closing idle ones after 4 s
wait_until 90 pid_gone "$SPID"
wait "$SPID" 2>/dev/null
out3=$(cat "$EG_TMP/spread.res")
case $out3 in
"ok good 20/20 "*) pass "3a idle timeout 4 s: 20 flows from c4 at spread-out times all right: $(printf '%s' "$out3" | oneline 200)" ;;
*) fail "3a idle timeout 4 s: 20 spread-out flows from c4" "$(printf '%s' "$out3" | oneline)" ;;
esac
ic=$(st idle idle_closed)
disc1=$(num "$(pnow pool_discards_total idle)")
if [ "$ic" -ge 1 ] && [ "$disc1" -ge 1 ]; then
	pass "3b the server closed $ic idle pooled connections and egressd discarded them: pool_discards{idle} $disc1"
else
	fail "3b idle pooled connections closed by the server are discarded" "server idle_closed $ic, pool_discards{idle} $disc1"
fi
# 3c: from now on (the limit learned during 3a) the server must close no
# pooled connection: egressd replaces each before its 4 s. The window is
# events, not a duration: it ends when every connection pooled at its start
# and >= 4 in all were closed by egressd (EOF while idle at the exit), or at
# the first idle connection the server closes (the failure), 40 s at most.
wait_until 5 idle_aged idle - 2 0 4000 || wait_until 5 idle_aged idle - 1 0 4000
t3c=$(now_ns)
read -r -a IDLE0 <<<"$(open_idle_ids idle -)"
idle_done() {
	[ "$(idle_closes_after idle "$t3c" idle-close)" -ge 1 ] && return 0
	[ "$(idle_closes_after idle "$t3c" eof)" -ge 4 ] && all_closed idle "${IDLE0[@]}"
}
wait_until 40 idle_done
dt3c=$(( ($(now_ns) - t3c) / 1000000 ))
srv3c=$(idle_closes_after idle "$t3c" idle-close)
eof3c=$(idle_closes_after idle "$t3c" eof)
ages3c=$(idle_eof_ages idle "$t3c")
dis_idle=$(num "$(pnow pool_disabled_total idle)")
wait_until 5 pnow_is pool_ready idle 2
ready_idle=$(pnow pool_ready idle)
open3c=""
for id in "${IDLE0[@]}"; do [ "$(closed_as idle "$id")" = "idle eof" ] || open3c="$open3c $id:$(closed_as idle "$id")"; done
if [ "${#IDLE0[@]}" -ge 1 ] && [ -z "$open3c" ] && [ "$srv3c" -eq 0 ] && [ "$eof3c" -ge 4 ] &&
	[ "$dis_idle" -eq 0 ] && [ "$(num "$ready_idle")" -eq 2 ]; then
	pass "3c lifetime learned: in ${dt3c} ms egressd replaced the ${#IDLE0[@]} pooled connections and $((eof3c - ${#IDLE0[@]})) more itself (idle ages at its close, ms: $ages3c; the server's limit 4000), the server closed none, pool_disabled{idle} 0, ready 2"
else
	fail "3c egressd should refresh pooled connections before the server's 4 s" \
		"in ${dt3c} ms the server closed $srv3c idle (want 0), egressd closed $eof3c (want >= 4; ages ms: $ages3c), pooled at the start: ${#IDLE0[@]} (ids ${IDLE0[*]}; not closed by egressd:${open3c:- none}), pool_disabled $dis_idle (want 0), ready '$ready_idle' (want 2)"
fi

# ================================================================== 4 SIGHUP with a changed password
wait_until 8 idle_cred_is auth 1 2
wait_until 8 idle_cred_is auth 3 2
# no refresh may close one of them in the check's window: all 4 young
young4=yes
{ wait_until 30 idle_aged auth 1 2 0 14000 && wait_until 30 idle_aged auth 3 2 0 14000; } || young4=no
read -r -a OLD_A <<<"$(open_idle_ids auth 1)"
read -r -a OLD_B <<<"$(open_idle_ids auth 3)"
write_conf "$PA_NEW"
thup=$(now_ns)
kill -HUP "$EGRESSD_PID"
if [ "${#OLD_A[@]}" -ge 1 ]; then
	wait_until 5 all_closed auth "${OLD_A[@]}"
fi
dt4=$(( ($(now_ns) - thup) / 1000000 ))
# 4c's evidence is taken now: the reload has been applied to every pool at
# once (authA's drained), before anything else could close authB's.
still=0
how4c=""
for id in "${OLD_B[@]}"; do
	c=$(closed_as auth "$id")
	[ -z "$c" ] && still=$((still + 1))
	how4c="$how4c $id:${c:-open}"
done
how=""
nok=0
for id in "${OLD_A[@]}"; do
	c=$(closed_as auth "$id")
	how="$how $id:${c:-open}"
	[ "$c" = "idle eof" ] && nok=$((nok + 1))
done
if [ "${#OLD_A[@]}" -eq 2 ] && [ "$nok" -eq 2 ] && [ "$young4" = yes ]; then
	pass "4a SIGHUP with authA's password changed: its 2 pooled connections (old password) closed by egressd within ${dt4} ms:$how"
else
	fail "4a SIGHUP with a changed password should drain authA's pool" \
		"${#OLD_A[@]} pooled with the old password before (want 2); after ${dt4} ms:$how (state why); pooled connections < 14 s old at the reload (so no refresh closed them instead): $young4"
fi
wait_until 5 idle_cred_is auth 2 2
new_idle=$(idle_cred auth 2)
old_idle=$(idle_cred auth 1)
t4=$(now_ns)
got=$(whoami "${NS_C[2]}")
r4=$(reqs_after auth "$t4")
cred4=$(kvf cred "$r4")
if [ "$new_idle" -ge 1 ] && [ "$old_idle" -eq 0 ] && [ "$got" = "$EX1" ] && [ "$cred4" = 2 ] &&
	[ "$(printf '%s\n' "$r4" | grep -c .)" -eq 1 ]; then
	pass "4b after the reload authA pools with the new password ($new_idle idle, 0 with the old) and c2's flow works ($got) on a new-password connection"
else
	fail "4b new flows use the new password" \
		"idle with new $new_idle, with old $old_idle (want >=1 / 0); c2 got '$got'; request: '$(printf '%s' "$r4" | oneline 200)' (want cred=2)"
fi
if [ "${#OLD_B[@]}" -eq 2 ] && [ "$still" -eq 2 ] && [ "$young4" = yes ]; then
	pass "4c control: authB (unchanged, same server) kept its 2 pooled connections across the reload (ids ${OLD_B[*]}, open when authA's were drained)"
else
	fail "4c control: an unchanged tunnel keeps its pool across SIGHUP" \
		"${#OLD_B[@]} pooled before (want 2), $still still open when authA's were drained:$how4c; pooled connections < 14 s old at the reload (none due for a refresh): $young4"
fi

# ================================================================== 5 a burst of 2000 connections
wait_until 8 st_is burst idle 4
wait_until 5 pnow_is pool_ready burst 4
hb0=$(num "$(pnow pool_hits_total burst)")
mb0=$(num "$(pnow pool_misses_total burst)")
rm -f "$EG_TMP/burst.res"
(
	ulimit -n 65536 2>/dev/null || true
	exec timeout -k 5 100 ip netns exec "${NS_C[7]}" "$(python_bin)" "$EG_TOOLS/socks_server.py" burst \
		"$TARGET4" 80 2000 200 90 "$EX1"
) >"$EG_TMP/burst.res" 2>&1 </dev/null &
BPID=$!
EG_PIDS+=("$BPID")
samples=0
rmax=-1
rvals=""
bad_sample=""
tb=$(now_ns)
while pid_alive "$BPID" && [ $(( $(now_ns) - tb )) -lt 110000000000 ]; do
	v=$(pnow pool_ready burst)
	case $v in
	absent) bad_sample="absent" ;;
	*)
		v=${v%.*}
		samples=$((samples + 1))
		[ "$v" -gt "$rmax" ] && rmax=$v
		[ "$samples" -le 40 ] && rvals="$rvals$v,"
		;;
	esac
	sleep 0.1
done
wait "$BPID" 2>/dev/null
bres=$(cat "$EG_TMP/burst.res")
case $bres in
"ok good 2000/2000 "*) pass "5a burst of 2000 connections from c7 through burst (warm 4): $(printf '%s' "$bres" | oneline 160)" ;;
*) fail "5a burst of 2000 connections" "$(printf '%s' "$bres" | oneline)" ;;
esac
hb1=$(num "$(pnow pool_hits_total burst)")
mb1=$(num "$(pnow pool_misses_total burst)")
if [ "$samples" -ge 5 ] && [ -z "$bad_sample" ] && [ "$rmax" -le 64 ] && [ "$rmax" -gt 4 ] && [ $((hb1 - hb0)) -ge 1 ] && [ $((mb1 - mb0)) -ge 1 ]; then
	pass "5b pool_ready{burst} <= 64 (warm_max) in all $samples samples and above warm 4 in some (max $rmax: ${rvals%,}...): the pool learned the burst, which used and exhausted it (hits +$((hb1 - hb0)), misses +$((mb1 - mb0)))"
else
	fail "5b pool_ready between warm and warm_max during the burst" \
		"$samples samples${bad_sample:+ (some absent)}, max $rmax (want 5..64): ${rvals%,}; hits +$((hb1 - hb0)), misses +$((mb1 - mb0)) (want both >= 1)"
fi
mi=$(st burst max_idle)
npipe=$(grep -c '^req .* pipelined=1 ' "$EG_TMP/burst.log")
nreq=$(grep -c '^req ' "$EG_TMP/burst.log")
if [ "$mi" -le 64 ] && [ "$(st burst accepted)" -ge 5 ]; then
	pass "5c at the exit no more than $mi (<= 64, warm_max) greeted idle connections at any 50 ms sample since start, burst included ($(st burst accepted) accepted; $npipe/$nreq requests came pipelined with their greeting)"
else
	fail "5c greeted idle connections at the exit must stay <= warm_max 64" \
		"max_idle $mi, idle for >= 1 s at most $(st burst max_held); $npipe/$nreq requests pipelined (a miss sent unpipelined waits idle for a round trip); $(oneline <"$EG_TMP/burst.st")"
fi
wait_until 10 st_is burst idle 64
wait_until 5 pnow_is pool_ready burst 64
rb=$(pnow pool_ready burst)
ib=$(st burst idle)
lb=$(pool_line burst)
if [ "$rb" != absent ] && [ "$(num "$rb")" -eq 64 ] && [ "$ib" -eq 64 ] &&
	printf '%s\n' "$lb" | grep -q ' ready 64/64 ' && printf '%s\n' "$lb" | grep -q 'grown to a burst of 64 (warm 4)'; then
	pass "5d after the burst the pool holds what it learned: pool_ready 64, 64 idle at the exit; stats: $(printf '%s' "$lb" | oneline 160)"
else
	fail "5d pool refilled to the learned burst" "pool_ready '$rb', idle at the exit $ib (want 64 / 64); stats line: '$(printf '%s' "$lb" | oneline 200)'"
fi
hb2=$(num "$(pnow pool_hits_total burst)")
b2=$(timeout -k 5 40 ip netns exec "${NS_C[7]}" "$(python_bin)" "$EG_TOOLS/socks_server.py" burst \
	"$TARGET4" 80 64 64 30 "$EX1" 2>&1 </dev/null)
hb3=$(num "$(pnow pool_hits_total burst)")
case $b2 in
"ok good 64/64 "*)
	if [ $((hb3 - hb2)) -ge 56 ]; then
		pass "5e a later burst of 64 at once finds the learned pool: pool_hits +$((hb3 - hb2)) (>= 56, c7's share 62; fixed warm 4 would give <= 4); $(printf '%s' "$b2" | oneline 100)"
	else
		fail "5e a later burst is served from the learned pool" "pool_hits +$((hb3 - hb2)) (want >= 56 of 64); $(printf '%s' "$b2" | oneline 160)"
	fi
	;;
*) fail "5e a later burst of 64 connections" "$(printf '%s' "$b2" | oneline)" ;;
esac

# ================================================================== 8 fair share
# fair's exit answers greetings only after 5 s for the check's length, so
# no refill (nor fresh connection) is ready before c9's 4 flows are placed:
# whatever the machine's speed, the pool holds exactly the 4 connections it
# had when c9 started. c10 starts once egressd has decided all 4 of c9's
# flows (pool hits + misses +4) and the exit has logged c9's pooled
# requests, so a request on a pre-t8 connection logged after that is c10's.
wait_until 8 st_is fair idle 4
# (none of the 4 due for a refresh while the check runs)
young8=yes
wait_until 30 idle_aged fair - 4 0 14000 || young8=no
wait_until 3 pnow_is pool_ready fair 4
hf0=$(num "$(pnow pool_hits_total fair)")
mf0=$(num "$(pnow pool_misses_total fair)")
echo 5 >"$EG_TMP/fair.delay"
t8=$(now_ns)
fpids=()
for k in 1 2 3 4; do
	whoami "${NS_C[9]}" 20 >"$EG_TMP/fair.c9.$k" 2>&1 &
	fpids+=("$!")
done
c9_placed() {
	local h m
	ctl_stats --prometheus >"$EG_TMP/prom.fair" 2>&1 || return 1
	h=$(( $(num "$(pm "$EG_TMP/prom.fair" pool_hits_total fair)") - hf0 ))
	m=$(( $(num "$(pm "$EG_TMP/prom.fair" pool_misses_total fair)") - mf0 ))
	[ $((h + m)) -ge 4 ] && [ "$(pooled_reqs fair "$t8" | grep -c .)" -ge "$h" ]
}
placed8=yes
wait_until 15 c9_placed || placed8="no (hits/misses +$(( $(num "$(pnow pool_hits_total fair)") - hf0 ))/+$(( $(num "$(pnow pool_misses_total fair)") - mf0 )) after 15 s)"
t8b=$(now_ns)
got10=$(whoami "${NS_C[10]}" 20)
wait "${fpids[@]}"
rm -f "$EG_TMP/fair.delay"
ok9=0
for k in 1 2 3 4; do [ "$(cat "$EG_TMP/fair.c9.$k")" = "$EX1" ] && ok9=$((ok9 + 1)); done
pooled_n=0
fresh_n=0
while read -r line; do
	[ -n "$line" ] || continue
	if [ "$(kvf accept_t "$line")" -lt "$t8" ]; then pooled_n=$((pooled_n + 1)); else fresh_n=$((fresh_n + 1)); fi
done <<<"$(reqs_after fair "$t8")"
r10=$(pooled_reqs fair "$t8" "$t8b")
hf1=$(num "$(pnow pool_hits_total fair)")
# The first greeting answered after t8 (a refill's or a fresh connection's):
# no pooled connection could be added before it.
g8=$(awk -v t0="$t8" '$1 == "greeted" { t = $NF; sub(/^t=/, "", t); if (t + 0 > t0 + 0) { print t; exit } }' "$EG_TMP/fair.log")
if [ "$placed8" = yes ] && [ "$ok9" -eq 4 ] && [ "$got10" = "$EX1" ] && [ "$(printf '%s\n' "$r10" | grep -c .)" -eq 1 ] &&
	[ $((hf1 - hf0)) -eq 3 ] && [ "$pooled_n" -eq 3 ] && [ "$fresh_n" -eq 2 ]; then
	pass "8 fair share: 4 curls at once from c9 took 2 of 4 pooled connections (2 fresh), c10 after them still got a pooled one ($(( (t8b - t8) / 1000000 )) ms after c9 started); all right, pool_hits +3"
else
	fail "8 fair share: one source takes at most ceil(4/2) pooled connections" \
		"pool 4 connections < 14 s old at the start: $young8; c9's 4 flows placed before c10: $placed8; c9 $ok9/4 right, c10 '$got10'; requests after c9 started: $pooled_n on pooled connections (want 3: 2 of c9's + c10's), $fresh_n fresh (want 2); c10's (pooled, after c9's were placed): '$(printf '%s' "$r10" | oneline 160)'; pool_hits +$((hf1 - hf0)) (want 3); c10 started $(( (t8b - t8) / 1000000 )) ms and the first greeting after t8 was answered $(( (${g8:-$t8} - t8) / 1000000 )) ms after c9 started (a refill back before c10 would void the count)"
fi

# ================================================================== 10 first bytes during a slow connect
wait_until 10 pool_field_not late pipelining unknown
pl10=$(pool_field late pipelining)
nsx "$E2" nft -f - <<-'EOF' || die "exit2: nft could not add the SYN drop (table inet eglate)"
	table inet eglate {
		counter dropped { }
		chain in {
			type filter hook input priority -10;
			tcp dport 1081 tcp flags & (syn | ack) == syn counter name dropped drop
		}
	}
	EOF
t10=$(now_ns)
early_whoami "${NS_C[11]}" "$EG_TMP/late.sent" >"$EG_TMP/late.c11" 2>&1 &
lpid=$!
# The drop stays until it has taken egressd's first SYN (the connect then
# waits for the retransmit, >= 1 s after it) and the container has written
# its request, however long the client and egressd take to get there on a
# busy machine: the request is then in egressd's hands while it connects.
syn_dropped() { [ "$(nft_counter "$E2" eglate dropped)" -ge 1 ] && [ -e "$EG_TMP/late.sent" ]; }
wait_until 10 syn_dropped
drop10=$(nft_counter "$E2" eglate dropped)
nsx "$E2" nft delete table inet eglate || die "exit2: nft could not remove the SYN drop (table inet eglate)"
wait "$lpid"
got11=$(cat "$EG_TMP/late.c11")
r11=$(reqs_after late "$t10")
id11=$(kvf id "$r11")
rep11=$(awk -v i="id=$id11" '$1 == "reply" && $2 == i' "$EG_TMP/late.log")
first11=$(kvf first "$rep11")
acc11=$(kvf accept_t "$r11")
if [ "$pl10" = yes ] && [ "$drop10" -ge 1 ] && [ "$got11" = "$EX2" ] && [ "$(printf '%s\n' "$r11" | grep -c .)" -eq 1 ] &&
	[ "${first11:-0}" -gt 0 ] && [ $(( ${acc11:-$t10} - t10 )) -ge 800000000 ]; then
	pass "10 first bytes sent during a slow connect ($drop10 SYN dropped, accepted $(( (acc11 - t10) / 1000000 )) ms after the client started, its request written before) went with the CONNECT: the exit held $first11 bytes when it answered; answer right"
else
	fail "10 a container's first bytes must go with the request after a slow connect" \
		"pipelining '$pl10' (want yes), SYNs dropped $drop10 (want >= 1), request written: $([ -e "$EG_TMP/late.sent" ] && echo yes || echo no), client '$got11' (want $EX2), requests '$(printf '%s' "$r11" | oneline 160)', answer '$rep11' (want first > 0), accepted ${acc11:-?} vs start $t10 (want >= 0.8 s later: the first SYN dropped)"
fi

# ================================================================== 9 the stats section
ctl_stats >"$EG_TMP/stats.end" 2>&1
awk '/^warm pools:/ { s = 1; next } s && /^[^ ]/ { s = 0 } s && NF' "$EG_TMP/stats.end" >"$EG_TMP/pools.end"
npl=$(grep -c . "$EG_TMP/pools.end")
badl=$(grep -vE "$POOL_RE" "$EG_TMP/pools.end" | oneline 300)
coldl=$(grep -E '^  cold ' "$EG_TMP/pools.end")
if [ "$npl" -eq 11 ] && [ -z "$badl" ] && printf '%s\n' "$coldl" | grep -q ' ready 0/0 .* pipelining off'; then
	pass "9 egressd stats: 11 lines under 'warm pools:', all in the format; cold: '$coldl'"
else
	fail "9 egressd stats' warm pools section" "$npl lines (want 11); not in the format: '$badl'; cold: '$coldl'"
fi

# ================================================================== 7 leaks, liveness
no_leak_since "$LEAK_START" 7
finish_suite pools.sh
