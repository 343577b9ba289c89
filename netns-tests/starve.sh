#!/usr/bin/env bash
# netns-tests/starve.sh — one container cannot starve the others of TCP
# service, file descriptors or early-byte memory, nor buy more by spraying
# source addresses (issue 23, items 2 and 4), end to end, in namespaces.
#
#  c0 10.8.0.10 ─┐  gw: br0 10.8.0.1       ┌─ exit0 microsocks (healthy, TCP)
#  c1 10.8.0.11 ─┼─ egressd :10900 ────────┼─ exit1 danted (healthy, TCP + UDP)
#  c2 10.8.0.12 ─┘  threads: 1, under      └─ exit2: :1080 BLACKHOLED (nft drops every SYN);
#   (+ .100-.159     prlimit --nofile=N:N        :8080 a silent HTTP proxy (starve_tool silent)
#    in (c))                                  inet: hold service 203.0.113.10:9004, who-am-i :5000
#
# One worker and one front loop (threads: 1): the flooder and its neighbour
# share everything. egressd runs under `prlimit --nofile=N:N` (2 000 in a
# and b, 1 000 in c; soft = hard, egressd raises its soft limit to the hard
# one as it does at every start) so that a flood of a few hundred flows
# meets the descriptor limit quickly; the hard limit of this machine and CI
# is 20 000, where the same takes ten times as many flows (issue 23 measured
# it there: 10 200 held connections, the neighbour 0 of 20). With a limit N,
# TCP flows may hold N - max(256, N/8) descriptors (the reserve), 2 a flow;
# one source at most half of what the others leave free.
#
# Every scenario runs twice on a fresh egressd: "limited" (the limit under
# test on) and "control" (the same flood, the limit off: shows the harm the
# limit prevents, so the limited check can fail). STARVE_BASELINE=1 runs a
# binary that predates these limits (e.g. one built before issue 23): its configs
# carry none of the new keys, the control checks run on it (the harm with
# the current build), the limited ones are skipped; the figures are logged.
#
#  (a) c0 holds more idle connections through a healthy exit (exit0) than
#      the descriptors allow (1 100 flows, 2 200 fds > 2 000); then c1 makes
#      20 through exit1. limited: the defaults (tcp.fd_share on); control:
#      tcp: (fd_share: false, max_flows_per_source: 10^6).
#  (b) the dead-exit retry storm: c0 keeps 1 200 connection attempts in
#      flight (up to 1 000 new a second, 10 s) through exit2, whose SYNs
#      vanish (each waits connect_timeout 10 s); c1 makes 20 through exit1
#      meanwhile. limited: max_flows_per_source 200, 50 new/s, burst 100;
#      control: the three at 10^6, fd_share off.
#  (c) address spraying: c2 adds 10.8.0.100-159 to its eth0 (as a container
#      with CAP_NET_RAW can use unused addresses of its subnet) and from
#      each opens one UDP session and 8 TCP flows; one route
#      10.8.0.0/24 -> exit1 serves c1 and c2; udp.max_sessions 48, fd
#      limit 1 000. c1 first holds one TCP
#      flow and two idle UDP sessions, then makes 20 new flows
#      (tcp.max_flows_per_source 24). limited: max_sources_per_route 8;
#      control: 10^6.
#  (d) early bytes: c0 makes 400 connections through an HTTP CONNECT tunnel
#      with pipeline: true to a proxy that never answers, each writing 16 KiB
#      at once (egressd holds what it reads until the answer); c1 makes 5
#      flows through exit1 (danted, pipelined: its flows read early bytes
#      too). limited: tcp.early_bytes_per_worker 256 KiB; control: 1 GiB.
#
# Checks (one PASS/FAIL line each):
#   1  (a) limited: c1's 20 flows all answered (through exit1) while c0 held
#      its flows; c0 held at most its share (2 000 - 256 = 1 744 for TCP, a
#      half: 872 fds, 436 flows); egressd's peak fds < 2 000
#   2  (a) limited: c0's refusals counted for c0's source only: its
#      tcp_drop_fd_share equals the resets c0 saw, c1's tcp_drop_* are 0;
#      `egressd stats` lists them under c0 and `egressd top` shows them in
#      c0's DROPS
#   3  (a) control: with the share off, the same flood leaves c1 fewer than
#      20 (c0 takes every descriptor: egressd at its limit)
#   4  (b) precondition: exit2 is a black hole: SYNs to its SOCKS port
#      counted and dropped, nothing left that port
#   5  (b) limited: c1's 20 flows all answered during the storm; c0's
#      refusals counted (tcp_drop_source_rate and tcp_drop_source_flows of
#      c0's source > 0, c1's 0); egressd opened (let through) at most burst
#      + rate x (10 s + 1) = 650 of c0's attempts
#   6  (b) control: limits off: c1 fewer than 20; egressd let through more
#      than 650 of c0's
#   7  (c) limited, TCP: c1's held flow still answers after the spray, its
#      20 new flows all answered; c2's flows came from at most 7 of its 60
#      addresses (8 sources for the route, c1 among them); the rest counted
#      (tcp_drop_source_cap of 10.8.0.0/24 > 0)
#   8  (c) limited, UDP: c1's two idle sessions kept their associations
#      (same exit port before and after); c2's datagrams answered for at
#      most 7 of its addresses; the rest counted (udp_drop_source_cap > 0)
#   9  (c) control: without the cap the spray costs c1 (new flows fewer than
#      20, or an idle session evicted: with one session per sprayed address
#      c1's two make it the heaviest source of a full table)
#  10  (d) limited: early bytes held <= 256 KiB (tcp_early_bytes) while c0's
#      400 flows stay open (none reset, tcp_flows_active >= 400), the rest
#      waited (tcp_early_waits > 0); c1's 5 flows answered; egressd's peak
#      RSS <= idle + 256 KiB + 4 MiB
#  11  (d) control: with 1 GiB the same holds >= 5 MiB of early bytes and the
#      peak RSS passes that bound
#  12  nothing left gw's uplink around egressd during the run
#
# Usage: sudo netns-tests/starve.sh   (EGRESSD=path to use another binary,
#        STARVE_BASELINE=1 for a binary without the limits, EG_KEEP_TMP=1 to
#        keep logs). Needs root; skips (exit 0) otherwise. About 90 s.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 12
# shellcheck source=topology.sh
. "$HERE/topology.sh"

require_root_and_tools nft iptables ip6tables microsocks danted python3 ss timeout awk prlimit
eg_init
ensure_egressd || die "cannot build egressd"
T0=$(date +%s)

BASELINE=${STARVE_BASELINE:-0}
HOLD_PORT=9004
SOCK=$EG_TMP/egressd.sock
CONF=$EG_TMP/egressd.ron
C0_SRC='source="10.8.0.10/32"'
C1_SRC='source="10.8.0.11/32"'
NET_SRC='source="10.8.0.0/24"'
HUGE=1000000

# st CMD TIME_BOUND NS ARGS... — starve_tool CMD in NS, killed after TIME_BOUND s.
st() {
	local cmd=$1 bound=$2 ns=$3
	shift 3
	EG_TOOL_TIMEOUT=$bound pytool starve_tool "$ns" "$cmd" "$@"
}
ctl() { nsx "$NS_GW" timeout 10 "$(egressd_bin)" "$@" --socket "$SOCK" </dev/null; }
tcp_drops_of() { drops_matching "$1" "$2" '^egressd_tcp_drop_'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
# ok_of "ok K/N ..." -> K
ok_of() { field ok "$1" | cut -d/ -f1; }

# write_conf ROUTES EXTRA — the config of a round (control socket $SOCK): four tunnels (exit0..2
# without warm pools: a pool would connect to the black hole on its own;
# "silent", the HTTP proxy that never answers), ROUTES, EXTRA top-level keys.
write_conf() {
	cat >"$CONF" <<-EOF
	(
	    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
	    tunnels: {
	        "exit0": Socks5(server: "100.64.0.2:1080", udp: false, warm: 0, warm_udp: 0),
	        "exit1": Socks5(server: "100.64.1.2:1080", warm: 0, warm_udp: 0),
	        "exit2": Socks5(server: "100.64.2.2:1080", warm: 0, warm_udp: 0),
	        "silent": HttpConnect(server: "100.64.2.2:8080", pipeline: true),
	    },
	    routes: [ $1 ],
	    intercept: (tcp: Redirect),
	    dns: (upstream: "192.0.2.53:53"),
	    control: (socket: "$SOCK"),
	    threads: 1,
	    $2
	)
	EOF
}

RULES_DONE=0
# eg_fresh TAG NOFILE — a fresh egressd with $CONF, under an open-file
# limit of NOFILE (soft = hard; empty: this shell's). Sets IDLE_KIB. Each
# round has a control socket of its own: a stopped egressd that still
# drains (or is being killed) keeps answering on the old one a moment.
eg_fresh() {
	local tag=$1 nofile=$2 lim
	egressd_stop
	EGRESSD_LOG=$EG_TMP/egressd.$tag.log
	if [ -n "$nofile" ]; then
		eg_spawn "$NS_GW" "$EGRESSD_LOG" prlimit --nofile="$nofile:$nofile" \
			env RUST_LOG=info "$(egressd_bin)" run --config "$CONF"
	else
		eg_spawn "$NS_GW" "$EGRESSD_LOG" env RUST_LOG=info "$(egressd_bin)" run --config "$CONF"
	fi
	EGRESSD_PID=$EG_LAST_PID
	if ! wait_until 15 egressd_up_or_dead || ! egressd_listening; then
		show_egressd_log
		die "egressd ($tag) did not start listening"
	fi
	if [ "$RULES_DONE" -eq 0 ]; then
		egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1 ||
			die "egressd rules | sh: $(tail -n 3 "$EG_TMP/rules.out" | tr '\n' ' ')"
		RULES_DONE=1
	fi
	wait_until 5 test -S "$SOCK" || die "no control socket ($tag)"
	if [ -n "$nofile" ]; then
		lim=$(awk '/Max open files/ { print $4 "/" $5 }' "/proc/$EGRESSD_PID/limits")
		[ "$lim" = "$nofile/$nofile" ] || die "egressd ($tag) runs with an open-file limit of $lim, not $nofile"
	fi
	IDLE_KIB=$(rss_kib "$EGRESSD_PID")
	[ -n "$IDLE_KIB" ] || die "cannot read egressd's RSS ($tag)"
}

# sampler_start TAG / sampler_stop TAG — egressd's peak RSS and fds, into S_* [TAG].
declare -A S_PEAK_RSS S_PEAK_FDS S_IDLE
sampler_start() {
	rm -f "$EG_TMP/$1.sample" "$EG_TMP/$1.sstop"
	eg_spawn "$NS_GW" "$EG_TMP/$1.samplelog" "$(python_bin)" "$EG_TOOLS/starve_tool.py" sample \
		"$EGRESSD_PID" "$EG_TMP/$1.sample" "$EG_TMP/$1.sstop"
	SAMPLER_PID=$EG_LAST_PID
	S_IDLE[$1]=$IDLE_KIB
}
sampler_stop() {
	: >"$EG_TMP/$1.sstop"
	wait_until 5 test -s "$EG_TMP/$1.sample"
	stop_pid "$SAMPLER_PID"
	S_PEAK_RSS[$1]=$(field peak_rss_kib "$(cat "$EG_TMP/$1.sample" 2>/dev/null)")
	S_PEAK_FDS[$1]=$(field peak_fds "$(cat "$EG_TMP/$1.sample" 2>/dev/null)")
}

# mode_keys SCENARIO MODE — the config keys of a round (none of the new
# ones in a baseline run).
mode_keys() {
	case $BASELINE:$1:$2 in
	0:a:limited) printf '' ;;
	0:a:control) printf 'tcp: (fd_share: false, max_flows_per_source: %s),' "$HUGE" ;;
	*:a:*) printf '' ;;
	0:b:limited) printf 'tcp: (max_flows_per_source: 200, new_flows_per_source_per_sec: 50, new_flows_per_source_burst: 100),' ;;
	0:b:control) printf 'tcp: (fd_share: false, max_flows_per_source: %s, new_flows_per_source_per_sec: %s, new_flows_per_source_burst: %s),' "$HUGE" "$HUGE" "$HUGE" ;;
	*:b:*) printf '' ;;
	0:c:limited) printf 'max_sources_per_route: 8, tcp: (max_flows_per_source: 24), udp: (max_sessions: 48),' ;;
	0:c:control) printf 'max_sources_per_route: %s, tcp: (max_flows_per_source: 24), udp: (max_sessions: 48),' "$HUGE" ;;
	*:c:*) printf 'udp: (max_sessions: 48),' ;;
	0:d:limited) printf 'tcp: (connect_timeout_secs: 30, early_bytes_per_worker: 262144),' ;;
	0:d:control) printf 'tcp: (connect_timeout_secs: 30, early_bytes_per_worker: 1073741824),' ;;
	*:d:*) printf 'tcp: (connect_timeout_secs: 30),' ;;
	esac
}
# modes — the rounds this run makes: both, or the control only (baseline).
modes() { if [ "$BASELINE" = 1 ]; then echo control; else echo "limited control"; fi; }

topo_up
topo_start_services
# exit2's SOCKS port is a black hole (b): SYNs counted and dropped, and
# anything leaving that port (a connection coming up) counted.
blackhole_socks "${NS_EXIT[2]}"
LEAK0=$(leak_count)
EG1=$(exit_egress4 1)

# ================================================================== (a) descriptors
ROUTES_A='(source: "10.8.0.10", tunnel: "exit0"), (source: "10.8.0.11", tunnel: "exit1")'
declare -A A_C0 A_C1 A_PROM A_STATS A_TOP A_FDS
round_a() {
	local mode=$1 tag=a-$1 hold_pid
	SOCK=$EG_TMP/$tag.sock
	write_conf "$ROUTES_A" "$(mode_keys a "$mode")"
	eg_fresh "$tag" 2000
	sampler_start "$tag"
	rm -f "$EG_TMP/$tag.ready" "$EG_TMP/$tag.stop"
	pytool_bg starve_tool "${NS_C[0]}" "$EG_TMP/$tag.c0" hold "$TARGET4" "$HOLD_PORT" 1100 \
		"$EG_TMP/$tag.ready" "$EG_TMP/$tag.stop" 90 --timeout 8 --window 200
	hold_pid=$EG_LAST_PID
	wait_until 60 test -s "$EG_TMP/$tag.ready" || die "(a $mode) c0's flows did not settle: $(cat "$EG_TMP/$tag.c0")"
	A_FDS[$mode]=$(find "/proc/$EGRESSD_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
	A_C1[$mode]=$(st try 30 "${NS_C[1]}" "$TARGET4" "$HOLD_PORT" 20 5 --expect "$EG1")
	A_PROM[$mode]=$(prom_or_die)
	A_STATS[$mode]=$(ctl stats 2>&1)
	A_TOP[$mode]=$(ctl top --once 2>&1)
	: >"$EG_TMP/$tag.stop"
	wait_until 20 pid_gone "$hold_pid"
	A_C0[$mode]=$(cat "$EG_TMP/$tag.c0")
	sampler_stop "$tag"
	log "(a $mode) c0: ${A_C0[$mode]}; c1: ${A_C1[$mode]}; egressd fds ${A_FDS[$mode]} (peak ${S_PEAK_FDS[$tag]}), peak RSS ${S_PEAK_RSS[$tag]} KiB (idle ${S_IDLE[$tag]}); c0's drops: $(tcp_drops_of "${A_PROM[$mode]}" "$C0_SRC")"
}
for m in $(modes); do round_a "$m"; done

if [ "$BASELINE" = 1 ]; then
	skip_check "1 (a) limited" "baseline run: the binary has no descriptor share"
	skip_check "2 (a) limited: refusals counted" "baseline run"
else
	P=${A_PROM[limited]} c0=${A_C0[limited]} c1=${A_C1[limited]}
	ready=$(field ready "$c0") refused=$(field refused "$c0")
	if [ "$(ok_of "$c1")" = 20 ] && [ "${ready:-0}" -le 436 ] && [ "${ready:-0}" -ge 300 ] &&
		[ "${S_PEAK_FDS[a-limited]:-2000}" -lt 2000 ]; then
		pass "1 (a) c1's 20 flows all answered while c0 held $ready flows (its share: <= 436); egressd's peak fds ${S_PEAK_FDS[a-limited]} of 2000 (c1: $c1; c0: $c0)"
	else
		fail "1 (a) c1's flows must all be answered while c0 holds at most its share (<= 436 flows) and egressd stays below 2000 fds" \
			"c1: $c1; c0: $c0; peak fds ${S_PEAK_FDS[a-limited]:-?}"
	fi
	fd0=$(metric "$P" egressd_tcp_drop_fd_share_total "$C0_SRC")
	c1d=$(tcp_drops_of "$P" "$C1_SRC")
	srow=$(printf '%s\n' "${A_STATS[limited]}" | awk '/^refused or dropped, per route source:/ { on = 1; next } on && $1 == "10.8.0.10/32"')
	tdrops=$(printf '%s\n' "${A_TOP[limited]}" | awk '$1 == "10.8.0.10/32" { print $NF }')
	if [ "${refused:-0}" -gt 0 ] && [ "$fd0" = "$refused" ] && [ -z "$c1d" ] &&
		printf '%s' "$srow" | grep -q "tcp_drop_fd_share $fd0" && [ "${tdrops:-0}" -ge "$fd0" ]; then
		pass "2 (a) c0's $refused resets counted for its source only (tcp_drop_fd_share $fd0; c1's tcp_drop_* 0); stats: '$(printf '%s' "$srow" | tr -s ' ')'; top DROPS $tdrops"
	else
		fail "2 (a) c0's resets must be counted as tcp_drop_fd_share of c0's source, shown by stats and top" \
			"c0 saw $refused resets; tcp_drop_fd_share $fd0; c1's '$c1d'; stats row '$srow'; top DROPS '${tdrops:-none}'"
	fi
fi
c1=${A_C1[control]} c0=${A_C0[control]}
if [ "$(ok_of "$c1")" -lt 20 ] 2>/dev/null && [ -n "$(ok_of "$c1")" ]; then
	pass "3 (a) control: with the share off c0 held $(field ready "$c0") flows (egressd at ${S_PEAK_FDS[a-control]} fds, limit 2000) and c1 got $(ok_of "$c1") of 20 (${c1})"
else
	fail "3 (a) control: the same flood with the share off should leave c1 fewer than 20 (else 1 proves nothing)" \
		"c1: $c1; c0: $c0; peak fds ${S_PEAK_FDS[a-control]:-?}"
fi

# ================================================================== (b) dead-exit retry storm
SYN0=$(nft_counter "${NS_EXIT[2]}" eghole syn)
OUT0=$(nft_counter "${NS_EXIT[2]}" eghole out)
ROUTES_B='(source: "10.8.0.10", tunnel: "exit2"), (source: "10.8.0.11", tunnel: "exit1")'
declare -A B_C0 B_C1 B_PROM
round_b() {
	local mode=$1 tag=b-$1 storm_pid
	SOCK=$EG_TMP/$tag.sock
	write_conf "$ROUTES_B" "$(mode_keys b "$mode")"
	eg_fresh "$tag" 2000
	sampler_start "$tag"
	pytool_bg starve_tool "${NS_C[0]}" "$EG_TMP/$tag.c0" storm "$TARGET4" "$HOLD_PORT" 10 1200 --timeout 30 --rate 1000
	storm_pid=$EG_LAST_PID
	# c1 comes when c0 has been storming for a while (900 flows handed over).
	wait_until 15 flows_total_at_least 900 || log "(b $mode) the storm handed over fewer than 900 flows in 15 s"
	B_C1[$mode]=$(st try 30 "${NS_C[1]}" "$TARGET4" "$HOLD_PORT" 20 5 --expect "$EG1")
	wait_until 40 pid_gone "$storm_pid"
	B_C0[$mode]=$(cat "$EG_TMP/$tag.c0")
	B_PROM[$mode]=$(prom_or_die)
	sampler_stop "$tag"
	log "(b $mode) c0's storm: ${B_C0[$mode]}; c1: ${B_C1[$mode]}; egressd peak fds ${S_PEAK_FDS[$tag]}; c0's drops: $(tcp_drops_of "${B_PROM[$mode]}" "$C0_SRC"); c0's flows handed over $(metric "${B_PROM[$mode]}" egressd_tcp_flows_total "$C0_SRC")"
}
flows_total_at_least() {
	local v
	v=$(ctl stats --prometheus 2>/dev/null | awk '$1 == "egressd_tcp_flows_total" { print $2 }')
	[ "${v:-0}" -ge "$1" ]
}
# let_through PROM — c0's flows that egressd let through (handed over, not refused by a limit).
let_through() {
	local t d
	t=$(metric "$1" egressd_tcp_flows_total "$C0_SRC")
	d=0
	for n in source_flows source_rate fd_share source_cap; do
		d=$((d + $(metric "$1" "egressd_tcp_drop_${n}_total" "$C0_SRC")))
	done
	echo $((t - d))
}
for m in $(modes); do round_b "$m"; done

syn=$(($(nft_counter "${NS_EXIT[2]}" eghole syn) - SYN0))
out=$(($(nft_counter "${NS_EXIT[2]}" eghole out) - OUT0))
if [ "$syn" -ge 100 ] && [ "$out" -eq 0 ]; then
	pass "4 (b) exit2 is a black hole: $syn SYNs to its SOCKS port counted and dropped, 0 packets left that port"
else
	fail "4 (b) exit2 must be a black hole (5 and 6 depend on it)" "SYNs dropped $syn (want >= 100), packets from its SOCKS port $out (want 0)"
fi
if [ "$BASELINE" = 1 ]; then
	skip_check "5 (b) limited" "baseline run: the binary has no per-source TCP limits"
else
	P=${B_PROM[limited]} c1=${B_C1[limited]}
	rate0=$(metric "$P" egressd_tcp_drop_source_rate_total "$C0_SRC")
	flows0=$(metric "$P" egressd_tcp_drop_source_flows_total "$C0_SRC")
	c1d=$(tcp_drops_of "$P" "$C1_SRC")
	through=$(let_through "$P")
	if [ "$(ok_of "$c1")" = 20 ] && [ "$rate0" -gt 0 ] && [ "$flows0" -gt 0 ] && [ -z "$c1d" ] && [ "$through" -le 650 ]; then
		pass "5 (b) c1's 20 flows all answered during c0's storm ($c1); c0 refused: rate $rate0, flows $flows0 (c1's 0); $through of c0's attempts let through (<= 650); storm: ${B_C0[limited]}"
	else
		fail "5 (b) c1's flows must all be answered, c0's storm refused and counted (rate and flows), <= 650 let through" \
			"c1: $c1; c0: rate $rate0 flows $flows0, let through $through; c1's drops '$c1d'; storm: ${B_C0[limited]}"
	fi
fi
c1=${B_C1[control]}
through=$(let_through "${B_PROM[control]}")
if [ -n "$(ok_of "$c1")" ] && [ "$(ok_of "$c1")" -lt 20 ] && [ "$through" -gt 650 ]; then
	pass "6 (b) control: limits off, egressd let $through of c0's attempts through (peak fds ${S_PEAK_FDS[b-control]}) and c1 got $(ok_of "$c1") of 20 ($c1)"
else
	fail "6 (b) control: with the limits off the storm should cost c1 (else 5 proves nothing)" \
		"c1: $c1; let through $through; storm: ${B_C0[control]}; peak fds ${S_PEAK_FDS[b-control]:-?}"
fi

# ================================================================== (c) address spraying
SPRAY=10.8.0.100-10.8.0.159
for i in $(seq 100 159); do
	ip -n "${NS_C[2]}" addr add "10.8.0.$i/24" dev eth0 || die "cannot add 10.8.0.$i to c2"
done
ROUTES_C='(source: "10.8.0.0/24", tunnel: "exit1"), (source: "fd08::/64", tunnel: "exit1")'
declare -A C_HELD C_UDP C_TRY C_SPRAY C_PROM
round_c() {
	local mode=$1 tag=c-$1 held_pid udp_pid spray_pid
	SOCK=$EG_TMP/$tag.sock
	write_conf "$ROUTES_C" "$(mode_keys c "$mode")"
	eg_fresh "$tag" 1000
	rm -f "$EG_TMP/$tag".{hready,hstop,uready,ustop,sready,sstop}
	# c1 first: one TCP flow and two UDP sessions, held idle.
	pytool_bg starve_tool "${NS_C[1]}" "$EG_TMP/$tag.held" hold "$TARGET4" "$HOLD_PORT" 1 \
		"$EG_TMP/$tag.hready" "$EG_TMP/$tag.hstop" 90
	held_pid=$EG_LAST_PID
	pytool_bg starve_tool "${NS_C[1]}" "$EG_TMP/$tag.udp" udpheld "$TARGET4" "$UDP_WHO_PORT" 2 \
		"$EG_TMP/$tag.uready" "$EG_TMP/$tag.ustop" 90
	udp_pid=$EG_LAST_PID
	wait_until 15 test -s "$EG_TMP/$tag.hready" || die "(c $mode) c1's held flow did not settle"
	wait_until 15 test -s "$EG_TMP/$tag.uready" || die "(c $mode) c1's UDP sessions got no first answer"
	# c2 sprays.
	pytool_bg starve_tool "${NS_C[2]}" "$EG_TMP/$tag.spray" spray "$TARGET4" "$HOLD_PORT" "$UDP_WHO_PORT" \
		"$SPRAY" 8 "$EG_TMP/$tag.sready" "$EG_TMP/$tag.sstop" 90
	spray_pid=$EG_LAST_PID
	wait_until 60 test -s "$EG_TMP/$tag.sready" || die "(c $mode) c2's spray did not settle: $(cat "$EG_TMP/$tag.spray")"
	C_TRY[$mode]=$(st try 30 "${NS_C[1]}" "$TARGET4" "$HOLD_PORT" 20 5 --expect "$EG1")
	C_PROM[$mode]=$(prom_or_die)
	: >"$EG_TMP/$tag.hstop"
	: >"$EG_TMP/$tag.ustop"
	: >"$EG_TMP/$tag.sstop"
	wait_until 20 pid_gone "$held_pid"
	wait_until 20 pid_gone "$udp_pid"
	wait_until 20 pid_gone "$spray_pid"
	C_HELD[$mode]=$(cat "$EG_TMP/$tag.held")
	C_UDP[$mode]=$(cat "$EG_TMP/$tag.udp")
	C_SPRAY[$mode]=$(cat "$EG_TMP/$tag.spray")
	log "(c $mode) c2's spray: ${C_SPRAY[$mode]}; c1: held ${C_HELD[$mode]}; new ${C_TRY[$mode]}; udp ${C_UDP[$mode]}; cap drops tcp $(metric "${C_PROM[$mode]}" egressd_tcp_drop_source_cap_total "$NET_SRC") udp $(metric "${C_PROM[$mode]}" egressd_udp_drop_source_cap_total "$NET_SRC"); evicted $(metric "${C_PROM[$mode]}" egressd_udp_sessions_evicted_total)"
}
for m in $(modes); do round_c "$m"; done

if [ "$BASELINE" = 1 ]; then
	skip_check "7 (c) limited, TCP" "baseline run: the binary has no source cap"
	skip_check "8 (c) limited, UDP" "baseline run: the binary has no source cap"
else
	P=${C_PROM[limited]} S=${C_SPRAY[limited]}
	capt=$(metric "$P" egressd_tcp_drop_source_cap_total "$NET_SRC")
	capu=$(metric "$P" egressd_udp_drop_source_cap_total "$NET_SRC")
	if [ "$(field alive "${C_HELD[limited]}")" = 1 ] && [ "$(ok_of "${C_TRY[limited]}")" = 20 ] &&
		[ "$(field tcp_srcs "$S")" -le 7 ] && [ "$capt" -gt 0 ]; then
		pass "7 (c) c1's held flow kept, its 20 new flows answered; c2's flows from $(field tcp_srcs "$S") of its 60 addresses (cap 8), tcp_drop_source_cap $capt (spray: $S)"
	else
		fail "7 (c) with the cap c1's TCP must be unharmed and c2 held to <= 7 sources, counted" \
			"c1 held: ${C_HELD[limited]}; new: ${C_TRY[limited]}; spray: $S; tcp_drop_source_cap $capt"
	fi
	if [ "$(field kept "${C_UDP[limited]}")" = 2/2 ] && [ "$(field udp_srcs "$S")" -le 7 ] && [ "$capu" -gt 0 ]; then
		pass "8 (c) c1's two idle UDP sessions kept their associations (${C_UDP[limited]}); c2 answered from $(field udp_srcs "$S") addresses, udp_drop_source_cap $capu"
	else
		fail "8 (c) with the cap c1's idle sessions must be kept and c2's UDP held to <= 7 sources, counted" \
			"c1: ${C_UDP[limited]}; spray: $S; udp_drop_source_cap $capu; evicted $(metric "$P" egressd_udp_sessions_evicted_total)"
	fi
fi
kept=$(field kept "${C_UDP[control]}")
newc=$(ok_of "${C_TRY[control]}")
if [ -n "$newc" ] && { [ "$newc" -lt 20 ] || [ "$kept" != 2/2 ]; }; then
	pass "9 (c) control: without the cap c2's 60 addresses cost c1: $newc of 20 new flows, sessions kept $kept (spray: ${C_SPRAY[control]})"
else
	fail "9 (c) control: without the cap the spray should cost c1 (else 7 and 8 prove nothing)" \
		"c1 new: ${C_TRY[control]}; udp: ${C_UDP[control]}; spray: ${C_SPRAY[control]}"
fi

# ================================================================== (d) early bytes
rm -f "$EG_TMP/silent.ready"
eg_spawn "${NS_EXIT[2]}" "$EG_TMP/silent.log" "$(python_bin)" -u "$EG_TOOLS/starve_tool.py" silent \
	100.64.2.2 8080 "$EG_TMP/silent.ready" 600
wait_until 15 test -e "$EG_TMP/silent.ready" || die "the silent proxy in exit2 did not start"
ROUTES_D='(source: "10.8.0.10", tunnel: "silent"), (source: "10.8.0.11", tunnel: "exit1")'
declare -A D_C0 D_C1 D_PROM
round_d() {
	local mode=$1 tag=d-$1 early_pid
	SOCK=$EG_TMP/$tag.sock
	write_conf "$ROUTES_D" "$(mode_keys d "$mode")"
	eg_fresh "$tag" ""
	sampler_start "$tag"
	rm -f "$EG_TMP/$tag.ready" "$EG_TMP/$tag.stop"
	pytool_bg starve_tool "${NS_C[0]}" "$EG_TMP/$tag.c0" early "$TARGET4" "$HOLD_PORT" 400 16384 \
		"$EG_TMP/$tag.ready" "$EG_TMP/$tag.stop" 90
	early_pid=$EG_LAST_PID
	wait_until 30 test -s "$EG_TMP/$tag.ready" || die "(d $mode) c0's writes did not settle"
	# egressd has read what it will: the gauge stops moving.
	wait_until 10 early_settled
	D_C1[$mode]=$(st try 30 "${NS_C[1]}" "$TARGET4" "$HOLD_PORT" 5 10 --expect "$EG1")
	D_PROM[$mode]=$(prom_or_die)
	: >"$EG_TMP/$tag.stop"
	wait_until 20 pid_gone "$early_pid"
	D_C0[$mode]=$(cat "$EG_TMP/$tag.c0")
	sampler_stop "$tag"
	log "(d $mode) c0: ${D_C0[$mode]}; c1: ${D_C1[$mode]}; early bytes $(metric "${D_PROM[$mode]}" egressd_tcp_early_bytes) waits $(metric "${D_PROM[$mode]}" egressd_tcp_early_waits_total) flows open $(metric "${D_PROM[$mode]}" egressd_tcp_flows_active); peak RSS ${S_PEAK_RSS[$tag]} KiB (idle ${S_IDLE[$tag]})"
}
EARLY_LAST=-1
early_settled() {
	local v
	v=$(ctl stats --prometheus 2>/dev/null | awk '$1 == "egressd_tcp_flows_active" { f = $2 } $1 == "egressd_tcp_early_bytes" { e = $2 } END { print f + 0 "/" e + 0 }')
	if [ "$v" = "$EARLY_LAST" ] && [ "${v%/*}" -ge 400 ]; then return 0; fi
	EARLY_LAST=$v
	sleep 0.5
	return 1
}
for m in $(modes); do round_d "$m"; done

BOUND_KIB=$((256 + 4096))
if [ "$BASELINE" = 1 ]; then
	skip_check "10 (d) limited" "baseline run: the binary has no early-byte budget"
else
	P=${D_PROM[limited]} c0=${D_C0[limited]}
	eb=$(metric "$P" egressd_tcp_early_bytes) ew=$(metric "$P" egressd_tcp_early_waits_total)
	act=$(metric "$P" egressd_tcp_flows_active)
	grow=$((S_PEAK_RSS[d-limited] - S_IDLE[d-limited]))
	if [ "$eb" -le 262144 ] && [ "$ew" -gt 0 ] && [ "$act" -ge 400 ] && [ "$(field connected "$c0")" = 400 ] &&
		[ "$(field reset "$c0")" = 0 ] && [ "$(field closed "$c0")" = 0 ] && [ "$(ok_of "${D_C1[limited]}")" = 5 ] &&
		[ "$grow" -le "$BOUND_KIB" ]; then
		pass "10 (d) early bytes held $eb (<= 262144) for 400 open flows, $ew waited, none dropped ($c0); c1 ${D_C1[limited]}; peak RSS idle + $grow KiB (<= $BOUND_KIB)"
	else
		fail "10 (d) early bytes must stay within the budget, the flows waiting (not dropped), c1 served, RSS within idle + $BOUND_KIB KiB" \
			"early bytes $eb, waits $ew, flows open $act; c0: $c0; c1: ${D_C1[limited]}; RSS growth $grow KiB"
	fi
fi
P=${D_PROM[control]}
eb=$(metric "$P" egressd_tcp_early_bytes)
grow=$((S_PEAK_RSS[d-control] - S_IDLE[d-control]))
if [ "$grow" -gt "$BOUND_KIB" ] && { [ "$BASELINE" = 1 ] || [ "$eb" -ge $((5 << 20)) ]; }; then
	pass "11 (d) control: a budget of 1 GiB holds $eb early bytes and egressd's RSS grows $grow KiB (> $BOUND_KIB); c0: ${D_C0[control]}"
else
	fail "11 (d) control: without the budget the same should hold >= 5 MiB and pass the RSS bound (else 10 proves nothing)" \
		"early bytes $eb; RSS growth $grow KiB; c0: ${D_C0[control]}"
fi
egressd_stop

no_leak_since "$LEAK0" 12
log "starve.sh took $(($(date +%s) - T0)) s (logs in $EG_TMP)"
summary
