#!/usr/bin/env bash
# scripts/bench/scale.sh — egressd with a thousand tunnels (issue 25): what
# configured but idle tunnels cost, what a container waits for its first byte
# when its tunnel is one of many, what `top` and a scrape cost with a thousand
# sources, and whether sources that came once are forgotten. Runs alone, in
# network namespaces of its own; scripts/bench.sh runs it at its end with SCALE=1.
#
#   sudo scripts/bench/scale.sh             N=1 and N=1000, 3 repetitions (~11 min)
#   sudo QUICK=1 scripts/bench/scale.sh     1 repetition, shorter windows (~3 min)
#
# Knobs (environment): SCALE_N=1000 (the large N; the run compares N=1 with
# it; SCALE_NS="1 1000" sets the whole list), SCALE_WARM=n (each tunnel's
# `warm`; default: egressd's own default), SCALE_WARM_IDLE=s (each tunnel's
# `warm_idle_secs`; when set, the at-rest windows start once that long has
# passed after the warm-up, i.e. with the pools gone cold), SCALE_EXITS=4 (SOCKS5 exits, ports
# 1080.., tunnels spread over them), REPS=3 (at-rest windows), REST_S=30
# (seconds per window), PERF_S=10 (seconds of system-call counting after each
# window), RTT=50 (ms, the far exit of the latency part), LAT_REPS=2, LAT_N=30
# (single probes per repetition), LAT_BURST=64, LAT_LATER=3 (later bursts),
# LAT_GAP=2 (RTTs between single probes), SCALE_SOURCES=1000 (sources of the
# top/scrape part), SCALE_10K=10000 (sources of the forgetting part),
# SCALE_10K_FLOWS=1 (0: routes only, no flows from those addresses),
# SCALE_FORGET=30 (egressd's control.forget_sources_secs), SCALE_IDLE
# (seconds idle before the last RSS; default SCALE_FORGET + 30: past the
# forget interval and two sweep rounds over 10 000 sources), SCALE_DOCKER=1 (Docker
# churn: a hook, see docker_part), OUT=dir (default bench-out/scale),
# EGRESSD=path (default target/release/egressd, or $CARGO_TARGET_DIR's; built
# if missing), RUST_LOG (egressd's; warn).
#
# Topology (namespaces egs<pid>-*, none linked to the root namespace; SPEC §5
# addresses):
#
#   cli  eth0 10.8.0.10/24, default via 10.8.0.1; the sources as /32s on eth0:
#        10.8.1.1 .. 10.8.4.250  (source i = 10.8.(1 + i/250).(1 + i%250):
#                                 tunnel i's route, and the 1000 of `top`)
#        10.8.41.1 .. 10.8.80.250 (the 10 000 of the forgetting part)
#          │ veth
#   gw   br0 10.8.0.1/24 (bridge-nf-call-iptables=0); 10.8.0.0/16 via 10.8.0.10:
#        the sources sit behind one neighbour entry (the kernel's ARP table is
#        one for all namespaces: 11 000 entries would overflow the host's)
#        egressd: `egressd rules | sh -e`, listens on 10.8.0.1:10900, metrics
#        on 127.0.0.1:9900, control socket in the temp dir
#          ├─ exit0 100.64.0.1/24 ── gw 100.64.0.2/24  exit: SCALE_EXITS SOCKS5
#          │      (latency part: the      servers (scaletool.py exit, i.e.
#          │       delay line of           netns-tests/tools/socks_server.py)
#          │       latency.sh, RTT/2       on :1080.., one user:pass per
#          │       each way)               tunnel; egress 198.51.100.1/24
#          └─ uplink 198.51.100.200/24 (MASQUERADE: the leak path, counted in inet)
#   inet br-inet 198.51.100.254/24 joins gw's uplink and the exit's egress;
#        lo 203.0.113.10: who-am-i HTTP on :80 (answers the peer's address)
#
# Per N, in this order (egressd started afresh; tunnel i = "tNNNN" with user
# uNNNN on exit port 1080 + i % SCALE_EXITS, `udp: false`: the exits have no
# UDP ASSOCIATE; route source i/32 -> tunnel i for i < N, no default: Reject):
#   warm-up   until the exits' count of ESTABLISHED connections holds still
#             (or reaches N x warm), then 5 s;
#   at rest   REPS windows of REST_S s, nothing flowing: egressd's CPU (% of
#             one core, /proc/PID/stat utime+stime), voluntary context
#             switches/s, VmRSS, open fds, the ESTABLISHED TCP connections at
#             the exits' ports (ss); then PERF_S s of system calls/s (perf
#             stat raw_syscalls:sys_enter, with syscalls:sys_enter_* for the
#             largest kinds; strace -c -f if perf fails);
#   routes    sources N .. SCALE_SOURCES-1 get a /32 route to tunnel i % N
#             (`egressd route set`), so every N has as many sources;
#   latency   the exit link through latency.sh's delay line (RTT ms):
#             connect() to first byte of GET /whoami, fresh connections:
#             (a) one at a time from source 0 (its tunnel used just before),
#             (b) a new container (source 10 + rep; for N > 12 its own tunnel,
#             idle since the start): a burst of LAT_BURST, then LAT_LATER
#             bursts 10 RTT apart; p50/p90 per repetition, in ms and RTTs;
#             and the delay line's own lateness (p99: the instrument's error);
#   sources   one flow from each of SCALE_SOURCES sources, then `egressd top
#             --once` (its one-second rate sample included), `egressd stats`
#             and curl of /metrics, 5 times each (ms), and the gauge
#             egressd_worker_turn_max_seconds (in us) right after the flows,
#             and again after 21 s (the gauge's window) and the reads done
#             under a light load (a new flow every 100 ms);
#   10k       RSS; `egressd route set` for SCALE_10K /32 sources (two CLIs at
#             once); RSS; one flow from each (SCALE_10K_FLOWS=1); RSS; idle
#             SCALE_IDLE s; RSS and the source series left in /metrics: what
#             egressd keeps of sources that came once; then `route del` of
#             them all and RSS once more;
#   docker    SCALE_DOCKER=1 only: a hook for fake_docker.py's load generator.
# Every flow's answer is checked (the target saw the exit's egress address);
# packets through gw's uplink are counted (leak_pkts, must be 0).
#
# Output in OUT: samples.tsv (n, metric, rep, value, unit, note; a failed or
# impossible measurement is n/a with its reason), table.txt and summary.tsv
# (medians, min..max, the ratio large N / N=1), env.txt, logs/. Every wait
# and load is bounded in count and time; namespaces are removed by name and
# processes stopped by PID at exit (trap).

set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR="$REPO/scripts/bench"
EG_ID=${SCALE_EG_ID:-egs$$}
# shellcheck source=../../netns-tests/lib.sh
. "$REPO/netns-tests/lib.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	REPS=${REPS:-1}; REST_S=${REST_S:-10}; LAT_REPS=${LAT_REPS:-1}; LAT_N=${LAT_N:-15}
	SCALE_10K=${SCALE_10K:-2000}; SCALE_FORGET=${SCALE_FORGET:-10}
fi
SCALE_N=${SCALE_N:-1000}
SCALE_NS=${SCALE_NS:-"1 $SCALE_N"}
SCALE_WARM=${SCALE_WARM:-}
SCALE_EXITS=${SCALE_EXITS:-4}
REPS=${REPS:-3}
REST_S=${REST_S:-30}
PERF_S=${PERF_S:-10}
RTT=${RTT:-50}
LAT_REPS=${LAT_REPS:-2}
LAT_N=${LAT_N:-30}
LAT_BURST=${LAT_BURST:-64}
LAT_LATER=${LAT_LATER:-3}
LAT_GAP=${LAT_GAP:-2}
SCALE_SOURCES=${SCALE_SOURCES:-1000}
SCALE_10K=${SCALE_10K:-10000}
SCALE_10K_FLOWS=${SCALE_10K_FLOWS:-1}
SCALE_FORGET=${SCALE_FORGET:-30}
SCALE_IDLE=${SCALE_IDLE:-$((SCALE_FORGET + 30))}
SCALE_DOCKER=${SCALE_DOCKER:-0}
OUT=${OUT:-$REPO/bench-out/scale}
for v in SCALE_N SCALE_EXITS REPS REST_S PERF_S RTT LAT_REPS LAT_N LAT_BURST LAT_LATER LAT_GAP SCALE_SOURCES SCALE_10K SCALE_FORGET SCALE_IDLE; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "scale.sh: $v must be a whole number > 0 (got '${!v}')" >&2; exit 2; }
done
for n in $SCALE_NS; do
	# Source i is 10.8.(1 + i/250).x: tunnels' sources stay below the 10k part's 10.8.41.0.
	if ! [[ "$n" =~ ^[1-9][0-9]*$ ]] || [ "$n" -gt 10000 ]; then
		echo "scale.sh: each N in SCALE_NS must be 1..10000 (got '$n')" >&2
		exit 2
	fi
done
if [ "$SCALE_SOURCES" -gt 10000 ] || [ "$SCALE_10K" -gt 40000 ]; then
	echo "scale.sh: SCALE_SOURCES <= 10000 and SCALE_10K <= 40000 (the address plan)" >&2
	exit 2
fi
[ -z "$SCALE_WARM" ] || [[ "$SCALE_WARM" =~ ^[0-9]+$ ]] || { echo "scale.sh: SCALE_WARM must be a number" >&2; exit 2; }

C_ADDR=10.8.0.10
GW_ADDR=10.8.0.1
EXIT_ADDR=100.64.0.2
EXIT_EGRESS=198.51.100.1
GW_UPLINK=198.51.100.200
TARGET=203.0.113.10
PORT=10900
MARK=10900
TABLE=10900
EXIT_PORT0=1080
METRICS_ADDR=127.0.0.1:9900
SRC_BASE=1    # source i of the tunnels and of `top`: 10.8.(SRC_BASE + i/250).(1 + i%250)
TENK_BASE=41  # source j of the 10k part: 10.8.(TENK_BASE + j/250).(1 + j%250)

T0=$(date +%s)
say() { printf '%s\n' "$*"; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# tmo SECS NS CMD... — a bounded command inside NS, fd limit raised.
tmo() {
	local secs=$1 ns=$2; shift 2
	(
		ulimit -n 65536 2>/dev/null || true
		exec timeout -k 3 "$secs" ip netns exec "$ns" "$@"
	)
}
calc() { awk "BEGIN { printf \"%.6g\", ($1) }"; }
kv() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; } # KEY LINE
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }
PY=""

# src_addrs BASE FIRST COUNT — the addresses 10.8.(BASE + i/250).(1 + i%250), one a line.
src_addrs() {
	awk -v b="$1" -v f="$2" -v n="$3" 'BEGIN { for (i = f; i < f + n; i++) printf "10.8.%d.%d\n", b + int(i / 250), 1 + i % 250 }'
}
src_addr() { src_addrs "$SRC_BASE" "$1" 1; }

# ---------------------------------------------------------------- samples

SAMPLES=""
CUR_N=""
# sample METRIC REP VALUE UNIT [NOTE] — one row for the current N.
sample() {
	local metric=$1 rep=$2 value=$3 unit=$4 note=${5:-}
	if [ "$value" != n/a ] && ! [[ "$value" =~ ^-?[0-9.]+([eE][-+]?[0-9]+)?$ ]]; then
		note="no number parsed (got '$value')${note:+; $note}"
		value=n/a
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$CUR_N" "$metric" "$rep" "$value" "$unit" "$note" >>"$SAMPLES"
	if [ "$value" = n/a ]; then
		say "    $metric: n/a ($note)"
	else
		say "    $metric: $value $unit${note:+ ($note)}"
	fi
}
na() { sample "$1" "$2" n/a "$3" "$4"; } # METRIC REP UNIT WHY

# ---------------------------------------------------------------- topology

NS_C=""; NS_GW=""; NS_EXIT=""; NS_INET=""

topo_up() {
	NS_C=$(ns_name cli); NS_GW=$(ns_name gw); NS_EXIT=$(ns_name exit0); NS_INET=$(ns_name inet)
	local ns
	for ns in "$NS_INET" "$NS_GW" "$NS_EXIT" "$NS_C"; do
		ns_add "$ns"
		# Namespace-local: thousands of short connections need ports and reuse.
		nsx "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 >/dev/null
	done
	# inet: the targets, and the bridge that joins gw's uplink and the exit's egress
	ip -n "$NS_INET" link add br-inet type bridge forward_delay 0
	ip -n "$NS_INET" addr add 198.51.100.254/24 dev br-inet
	ip -n "$NS_INET" link set br-inet up
	ip -n "$NS_INET" addr add "$TARGET/32" dev lo
	# gw, the 'Docker host'
	nsx "$NS_GW" sysctl -qw net.ipv4.ip_forward=1 >/dev/null
	ip -n "$NS_GW" link add br0 type bridge forward_delay 0
	if nsx "$NS_GW" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
		nsx "$NS_GW" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 >/dev/null
	fi
	ip -n "$NS_GW" addr add "$GW_ADDR/24" dev br0
	ip -n "$NS_GW" link set br0 up
	ip -n "$NS_GW" link add uplink type veth peer name to-gw netns "$NS_INET"
	ip -n "$NS_INET" link set to-gw master br-inet up
	ip -n "$NS_GW" addr add "$GW_UPLINK/24" dev uplink
	ip -n "$NS_GW" link set uplink up
	ip -n "$NS_GW" route add default via 198.51.100.254
	nsx "$NS_GW" iptables -w -t nat -A POSTROUTING -o uplink -j MASQUERADE
	# the exit; its side of the link is named gw: latency.sh's delay rules say `iif gw`
	ip -n "$NS_GW" link add exit0 type veth peer name gw netns "$NS_EXIT"
	ip -n "$NS_GW" addr add 100.64.0.1/24 dev exit0
	ip -n "$NS_GW" link set exit0 up
	ip -n "$NS_EXIT" addr add "$EXIT_ADDR/24" dev gw
	ip -n "$NS_EXIT" link set gw up
	ip -n "$NS_EXIT" link add egress type veth peer name to-exit0 netns "$NS_INET"
	ip -n "$NS_INET" link set to-exit0 master br-inet up
	ip -n "$NS_EXIT" addr add "$EXIT_EGRESS/24" dev egress
	ip -n "$NS_EXIT" link set egress up
	ip -n "$NS_EXIT" route add default via 198.51.100.254
	# The delay line's packets are forwarded (gw -> TUN, TUN -> gw), as in bench.sh.
	nsx "$NS_EXIT" sysctl -qw net.ipv4.ip_forward=1 >/dev/null
	# inet: what arrives from gw's own uplink went around egressd.
	nsx "$NS_INET" nft -f - <<-'EOF' || die "nft (leak counter) failed"
	table inet scaleleak {
		counter leak { }
		chain pre {
			type filter hook prerouting priority -300; policy accept;
			ip saddr 198.51.100.200 counter name leak
		}
	}
	EOF
	# the containers: one namespace, many source addresses behind 10.8.0.10
	ip -n "$NS_GW" link add veth-c0 type veth peer name eth0 netns "$NS_C"
	ip -n "$NS_GW" link set veth-c0 master br0 up
	ip -n "$NS_C" addr add "$C_ADDR/24" dev eth0
	ip -n "$NS_C" link set eth0 up
	ip -n "$NS_C" route add default via "$GW_ADDR"
	ip -n "$NS_GW" route add 10.8.0.0/16 via "$C_ADDR" dev br0
}

# add_sources BASE COUNT — put sources 0..COUNT-1 of BASE on the client's eth0 (/32s).
add_sources() {
	src_addrs "$1" 0 "$2" | awk '{ print "address add " $1 "/32 dev eth0" }' >"$EG_TMP/addrs-$1.batch"
	ip -n "$NS_C" -b "$EG_TMP/addrs-$1.batch" >>"$EG_TMP/addrs.log" 2>&1
}

leak_count() {
	local n
	n=$(nsx "$NS_INET" nft list counter inet scaleleak leak 2>/dev/null | sed -n 's/.*packets \([0-9]*\).*/\1/p' | head -n1)
	printf '%s\n' "${n:-0}"
}

# ---------------------------------------------------------------- exits, target

EXIT_PIDS=()
exit_ports() { local e=$1; seq "$EXIT_PORT0" $((EXIT_PORT0 + e - 1)); }
# exits_up N E — E SOCKS5 exits; tunnel i's user is on port 1080 + i % E.
exits_up() {
	local n=$1 e=$2 k p
	for k in $(seq 0 $((e - 1))); do
		p=$((EXIT_PORT0 + k))
		awk -v n="$n" -v e="$e" -v k="$k" -v w="$NAME_W" 'BEGIN {
			for (i = k; i < n; i += e) printf "u%0*d:p%0*d\n", w, i + 1, w, i + 1 }' >"$EG_TMP/users-$p"
		rm -f "$EG_TMP/exit-$p.ready"
		eg_spawn "$NS_EXIT" "$EG_TMP/exit-$p.log" "$PY" "$BENCH_DIR/scaletool.py" exit "$EXIT_ADDR" "$p" \
			--users "$EG_TMP/users-$p" --ready "$EG_TMP/exit-$p.ready"
		EXIT_PIDS+=("$EG_LAST_PID")
	done
	for p in $(exit_ports "$e"); do
		wait_until 15 test -e "$EG_TMP/exit-$p.ready" || { log "exit :$p did not start: $(tail -n 3 "$EG_TMP/exit-$p.log")"; return 1; }
	done
}
exits_down() {
	local pid
	for pid in "${EXIT_PIDS[@]}"; do stop_pid "$pid" TERM; done
	EXIT_PIDS=()
}
# exit_conns E — ESTABLISHED TCP connections at the exits' ports.
exit_conns() {
	nsx "$NS_EXIT" ss -Htn state established "( sport >= :$EXIT_PORT0 and sport <= :$((EXIT_PORT0 + $1 - 1)) )" 2>/dev/null | wc -l
}

target_up() {
	rm -f "$EG_TMP/target.ready"
	eg_spawn "$NS_INET" "$EG_TMP/target.log" "$PY" "$BENCH_DIR/scaletool.py" serve "$TARGET:80" \
		--ready "$EG_TMP/target.ready" --max-secs 7200
	wait_until 15 test -e "$EG_TMP/target.ready" || die "who-am-i target did not start: $(tail -n 3 "$EG_TMP/target.log")"
}

# ---------------------------------------------------------------- egressd

EGRESSD_BIN=""
EG_PID=""
EG_CONF=""
SOCK=""
NAME_W=4

# egressd_conf N E — tunnels t0001..tN, routes source i -> tunnel i.
egressd_conf() {
	local n=$1 e=$2
	EG_CONF="$EG_TMP/egressd-$n.ron"
	SOCK="$EG_TMP/egressd.sock"
	{
		printf '(\n    listen: ["%s:%s"],\n    tunnels: {\n' "$GW_ADDR" "$PORT"
		awk -v n="$n" -v e="$e" -v w="$NAME_W" -v a="$EXIT_ADDR" -v p0="$EXIT_PORT0" -v warm="$SCALE_WARM" -v wi="${SCALE_WARM_IDLE:-}" 'BEGIN {
			for (i = 0; i < n; i++)
				printf "        \"t%0*d\": Socks5(server: \"%s:%d\", username: \"u%0*d\", password: \"p%0*d\", udp: false%s%s),\n",
					w, i + 1, a, p0 + i % e, w, i + 1, w, i + 1, (warm == "" ? "" : ", warm: " warm),
					(wi == "" ? "" : ", warm_idle_secs: " wi) }'
		printf '    },\n    routes: [\n'
		src_addrs "$SRC_BASE" 0 "$n" | awk -v w="$NAME_W" '{ printf "        (source: \"%s\", tunnel: \"t%0*d\"),\n", $1, w, NR }'
		printf '    ],\n'
		printf '    intercept: (sources: ["10.8.0.0/16"], mark: %s, table: %s),\n' "$MARK" "$TABLE"
		printf '    control: (socket: "%s", metrics_listen: "%s", forget_sources_secs: %s),\n)\n' \
			"$SOCK" "$METRICS_ADDR" "$SCALE_FORGET"
	} >"$EG_CONF"
	chmod 600 "$EG_CONF"
}

# egressd_up N E — config, `egressd rules | sh -e` in gw, `egressd run`.
SETUP_ERR=""
egressd_up() {
	local n=$1 e=$2
	egressd_conf "$n" "$e"
	"$EGRESSD_BIN" check --config "$EG_CONF" >"$EG_TMP/check-$n.log" 2>&1 ||
		{ SETUP_ERR="egressd check failed: $(tail -n 3 "$EG_TMP/check-$n.log" | tr '\n' ' ')"; return 1; }
	if ! { nsx "$NS_GW" "$EGRESSD_BIN" rules --config "$EG_CONF" >"$EG_TMP/rules-$n.sh" 2>>"$EG_TMP/rules.log" &&
		nsx "$NS_GW" sh -e "$EG_TMP/rules-$n.sh" >>"$EG_TMP/rules.log" 2>&1; }; then
		SETUP_ERR="egressd rules | sh -e failed: $(tail -n 3 "$EG_TMP/rules.log" | tr '\n' ' ')"
		return 1
	fi
	eg_spawn "$NS_GW" "$EG_TMP/egressd-$n.log" env RUST_LOG="${RUST_LOG:-warn}" "$EGRESSD_BIN" run --config "$EG_CONF"
	EG_PID=$EG_LAST_PID
	if ! wait_until 60 egressd_up_or_dead || ! pid_alive "$EG_PID"; then
		SETUP_ERR="egressd did not start: $(tail -n 3 "$EG_TMP/egressd-$n.log" | tr '\n' ' ')"
		return 1
	fi
}
egressd_up_or_dead() { tcp_listening "$NS_GW" "$PORT" "$GW_ADDR" || ! pid_alive "$EG_PID"; }

egressd_down() {
	[ -n "$EG_PID" ] && stop_pid "$EG_PID" TERM
	EG_PID=""
	if [ -n "$EG_CONF" ] && [ -e "$EG_CONF" ]; then
		"$EGRESSD_BIN" rules --config "$EG_CONF" --delete >"$EG_TMP/unrules.sh" 2>>"$EG_TMP/rules.log" &&
			nsx "$NS_GW" sh -e "$EG_TMP/unrules.sh" >>"$EG_TMP/rules.log" 2>&1
	fi
	return 0
}

proc_line() { tmo 10 "$NS_GW" "$PY" "$BENCH_DIR/scaletool.py" proc "$EG_PID" 2>/dev/null; }
rss_mib() { local k; k=$(kv rss_kib "$(proc_line)"); [ -n "$k" ] && calc "$k / 1024"; }
egressd_alive() { [ -n "$EG_PID" ] && pid_alive "$EG_PID"; }

# ---------------------------------------------------------------- parts

# warmup N E — wait (at most 120 s) until the exits hold N x warm connections,
# or a count that has not moved for 5 s after at least 10 s; then 5 s more.
warmup() {
	local n=$1 e=$2 want c last=-1 same=0 t0 waited
	want=$((n * WARM))
	t0=$(date +%s%N)
	while :; do
		c=$(exit_conns "$e")
		waited=$(( ($(date +%s%N) - t0) / 1000000000 ))
		[ "$c" -ge "$want" ] && break
		if [ "$c" = "$last" ]; then same=$((same + 1)); else same=0; fi
		last=$c
		[ "$same" -ge 5 ] && [ "$waited" -ge 10 ] && break
		[ "$waited" -ge 120 ] && break
		egressd_alive || break
		sleep 1
	done
	sample warmup_s 1 "$(calc "($(date +%s%N) - $t0) / 1e9")" s "exits held $c connections (N x warm = $want); polled once a second"
	sleep 5
}

# perf_rate FILE EVENT — from `perf stat -x, -I` output: the count per second
# of EVENT (exact name; or a name part: then "rate name" lines, largest first)
# over the intervals after the first.
perf_rate() {
	awk -F, -v ev="$2" '$2 ~ /^[0-9]+$/ && index($4, ev) {
			if (t0 == "") t0 = $1
			if ($1 > t0) { e = $4; sub(/.*sys_enter_/, "", e); c[e] += $2; last = $1 }
		}
		END {
			if (last <= t0) exit
			if (ev ~ /_$/) { for (k in c) if (c[k] > 0) printf "%.1f %s\n", c[k] / (last - t0), k }
			else for (k in c) printf "%.1f\n", c[k] / (last - t0)
		}' "$1" | sort -rn
}

# rest_window REP E — one window of REST_S seconds with nothing flowing
# (CPU, wake-ups, RSS, fds, connections at the exits), then PERF_S seconds
# of system calls: perf counts in the kernel, little but not nothing per
# call, so not during the CPU window (strace, the fallback, stops egressd
# at every call). Attaching ~360 tracepoints to every thread takes perf
# seconds: its count starts with its first one-second interval line.
rest_window() {
	local rep=$1 e=$2 p0 p1 t0 t1 dt sc="" how="" ppid m
	local pf="$EG_TMP/perf-$CUR_N-$rep.txt"
	p0=$(proc_line); t0=$(date +%s%N)
	sleep "$REST_S"
	p1=$(proc_line); t1=$(date +%s%N)
	dt=$(calc "($t1 - $t0) / 1e9")
	if [ -n "$p0" ] && [ -n "$p1" ]; then
		sample rest_cpu_pct "$rep" "$(calc "($(kv cpu_s "$p1") - $(kv cpu_s "$p0")) * 100 / $dt")" % "over $dt s"
		sample rest_wakeups_s "$rep" "$(calc "($(kv vcs "$p1") - $(kv vcs "$p0")) / $dt")" /s
		sample rest_rss_mib "$rep" "$(calc "$(kv rss_kib "$p1") / 1024")" MiB
		sample rest_fds "$rep" "$(kv fds "$p1")" "" "$(kv threads "$p1") threads"
	else
		for m in rest_cpu_pct:% rest_wakeups_s:/s rest_rss_mib:MiB rest_fds:; do
			na "${m%%:*}" "$rep" "${m#*:}" "/proc/$EG_PID unreadable (egressd gone?)"
		done
	fi
	sample rest_exit_conns "$rep" "$(exit_conns "$e")" "" "N x warm = $((CUR_N * WARM))"
	rm -f "$pf"
	eg_spawn "$NS_GW" "$EG_TMP/perf.err" perf stat -e 'raw_syscalls:sys_enter,syscalls:sys_enter_*' -x, -I 1000 \
		-o "$pf" -p "$EG_PID"
	ppid=$EG_LAST_PID
	if wait_until 60 grep -q 'raw_syscalls:sys_enter' "$pf"; then
		sleep "$PERF_S"
		stop_pid "$ppid" INT
		sc=$(perf_rate "$pf" raw_syscalls:sys_enter)
		how="perf stat over ${PERF_S} s; most, per s: $(perf_rate "$pf" sys_enter_ | head -n 4 |
			awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }')"
	else
		stop_pid "$ppid" INT
		how="perf failed: $(tail -n 1 "$EG_TMP/perf.err")"
		if command -v strace >/dev/null 2>&1; then
			tmo $((PERF_S + 30)) "$NS_GW" timeout -s INT "$PERF_S" strace -c -f -p "$EG_PID" -o "$pf" >/dev/null 2>&1
			sc=$(awk -v s="$PERF_S" '$NF == "total" { printf "%.2f\n", $4 / s }' "$pf")
			how="strace -c -f over ${PERF_S} s ($how)"
		fi
	fi
	if [ -n "$sc" ]; then
		sample rest_syscalls_s "$rep" "$sc" /s "$how"
	else
		na rest_syscalls_s "$rep" /s "neither perf nor strace counted: $how"
	fi
}

# route_rest — after the at-rest windows: routes for the sources beyond N
# (the latency part's and the SCALE_SOURCES of `top`), `egressd route set`
# to tunnel i % N, so that every column has as many /32 sources.
route_rest() {
	local need=$SCALE_SOURCES ok
	[ "$need" -lt $((12 + LAT_REPS)) ] && need=$((12 + LAT_REPS))
	[ "$need" -gt "$CUR_N" ] || return 0
	src_addrs "$SRC_BASE" "$CUR_N" $((need - CUR_N)) | awk -v w="$NAME_W" -v n="$CUR_N" -v f="$CUR_N" \
		'{ printf "--source %s --tunnel t%0*d\n", $1, w, (f + NR - 1) % n + 1 }' >"$EG_TMP/route-rest.txt"
	tmo 600 "$NS_GW" xargs -P 2 -L 1 "$EGRESSD_BIN" route set --socket "$SOCK" <"$EG_TMP/route-rest.txt" \
		>"$EG_TMP/route-rest.log" 2>&1
	ok=$(tmo 30 "$NS_GW" "$EGRESSD_BIN" route list --socket "$SOCK" 2>/dev/null | grep -c '(route set)')
	say "  sources $CUR_N..$((need - 1)) routed by \`egressd route set\` ($ok set)"
}

LAT_ROWS="lat_warm_p50 lat_warm_p90 lat_burst1_p50 lat_burst1_p90 lat_later_p50 lat_later_p90"
# lat_probe METRIC REP SRC ARGS... — scaletool probe; p50/p90 into samples as METRIC_p50/_p90.
lat_probe() {
	local metric=$1 rep=$2 src=$3 out; shift 3
	out=$(tmo 300 "$NS_C" "$PY" "$BENCH_DIR/scaletool.py" probe --src "$src" --target "$TARGET:80" \
		--expect "$EXIT_EGRESS" --append "$OUT/latency-samples.tsv" --n "$CUR_N" --metric "$metric" \
		--rep "$rep" --rtt-ms "$RTT" --max-secs 200 "$@" 2>&1 | tail -n 1)
	say "    $metric from $src: $out"
	local p50 p90 note
	p50=$(kv p50 "$out"); p90=$(kv p90 "$out")
	note="$(kv ok "$out") ok, $(kv failed "$out") failed"
	case $out in *first-error:*) note="$note; first error: ${out#*first-error: }" ;; esac
	if [ -n "$p50" ]; then
		sample "${metric}_p50" "$rep" "$p50" ms "$note"
		sample "${metric}_p90" "$rep" "$p90" ms "$note"
	else
		na "${metric}_p50" "$rep" ms "no answer: $out"
		na "${metric}_p90" "$rep" ms "no answer: $out"
	fi
}

far_exit_part() {
	local rep m c50 rtt2 late
	rtt2=$(calc "$RTT / 2")
	LAT_EXIT_PORT=$EXIT_PORT0 # what delay_verify connects to
	if ! delay_up "$rtt2"; then
		for m in $LAT_ROWS; do na "$m" 1 ms "delay line setup failed: $(tail -n 2 "$EG_TMP/delay-rules.log" "$EG_TMP/delayline.log" 2>/dev/null | tr '\n' ' ')"; done
		delay_down
		return
	fi
	delay_verify
	say "  delay line check from gw: $DELAY_SEEN"
	c50=$(printf '%s\n' "$DELAY_SEEN" | sed -n 's/.*tcp_connect_ms(.* p50=\([0-9.]*\) .*/\1/p')
	if [ -z "$c50" ] || [ "$(calc "$c50 >= 0.9 * $RTT && $c50 <= 2 * $RTT")" != 1 ]; then
		for m in $LAT_ROWS; do na "$m" 1 ms "delay line check failed: TCP connect p50 '${c50:-none}' ms for RTT $RTT ms"; done
		delay_down
		return
	fi
	for rep in $(seq 1 "$LAT_REPS"); do
		say "  latency repetition $rep/$LAT_REPS ($(elapsed))"
		# (a) source 0's tunnel, used just before: 3 unrecorded probes, then LAT_N.
		tmo 60 "$NS_C" "$PY" "$BENCH_DIR/scaletool.py" probe --src "$(src_addr 0)" --target "$TARGET:80" \
			--expect "$EXIT_EGRESS" --append "$EG_TMP/lat-warmup.tsv" --n "$CUR_N" --metric warmup --rep "$rep" \
			--count 3 --gap-ms "$(calc "$LAT_GAP * $RTT")" --max-secs 50 >/dev/null 2>&1
		lat_probe lat_warm "$rep" "$(src_addr 0)" --count "$LAT_N" --gap-ms "$(calc "$LAT_GAP * $RTT")"
		# (b) a container not seen before: its first burst, then later ones.
		lat_probe lat_burst1 "$rep" "$(src_addr $((10 + rep)))" --count "$LAT_BURST" --burst "$LAT_BURST"
		sleep "$(calc "10 * $RTT / 1000")"
		lat_probe lat_later "$rep" "$(src_addr $((10 + rep)))" --count $((LAT_LATER * LAT_BURST)) \
			--burst "$LAT_BURST" --gap-ms $((10 * RTT))
	done
	delay_verify
	say "  delay line check from gw (after): $DELAY_SEEN"
	delay_down
	say "  delay line: $(cat "$EG_TMP/delay.stats" 2>/dev/null || echo 'no stats')"
	late=$(kv late_p99_ms "$(cat "$EG_TMP/delay.stats" 2>/dev/null)")
	if [ -n "$late" ]; then
		sample delayline_late_p99 1 "$late" ms "the delay line's own lateness (p99): the instrument's error"
	else
		na delayline_late_p99 1 ms "no delay line stats"
	fi
	echo "N=$CUR_N delay line: $DELAY_SEEN; $(cat "$EG_TMP/delay.stats" 2>/dev/null)" >>"$OUT/env.txt"
}

# sources_part — one flow from each of SCALE_SOURCES sources; then top,
# stats and /metrics timed with that many sources known.
sources_part() {
	local out i line code secs size body="$EG_TMP/metrics-$CUR_N.txt" w
	src_addrs "$SRC_BASE" 0 "$SCALE_SOURCES" >"$EG_TMP/srcs.txt"
	out=$(tmo 200 "$NS_C" "$PY" "$BENCH_DIR/scaletool.py" flows --srcs "$EG_TMP/srcs.txt" --target "$TARGET:80" \
		--expect "$EXIT_EGRESS" --conc 50 --timeout-s 10 --max-secs 150 2>&1 | tail -n 1)
	sample flows_1000_ok 1 "$(kv ok "$out")" "" "of $SCALE_SOURCES: $out"
	w=$(turn_max_us)
	if [ -n "$w" ]; then
		sample turn_flows_us 1 "$w" us "during the $SCALE_SOURCES new flows, 50 at once: wall clock, on 2 cores shared with the Python client, exits and target"
	else
		na turn_flows_us 1 us "no egressd_worker_turn_max_seconds in /metrics"
	fi
	# The gauge keeps the longest turn of the last 10-20 s: let the flows'
	# turns age out, then read stats under a light load (a new flow every
	# 100 ms from the same sources, each registering its source again after
	# the pools went cold), which is what a reader could hold up.
	sleep 21
	src_addrs "$SRC_BASE" 0 "$SCALE_SOURCES" >"$EG_TMP/srcs-light.txt"
	eg_spawn "$NS_C" "$EG_TMP/light.log" "$PY" "$BENCH_DIR/scaletool.py" flows --srcs "$EG_TMP/srcs-light.txt" \
		--target "$TARGET:80" --expect "$EXIT_EGRESS" --conc 1 --gap-ms 100 --timeout-s 10 --max-secs 90
	light=$EG_LAST_PID
	out=$(tmo 120 "$NS_GW" "$PY" "$BENCH_DIR/scaletool.py" timeit --reps 5 --timeout-s 20 -- \
		"$EGRESSD_BIN" top --once --socket "$SOCK" 2>&1 | tail -n 1)
	top_stats_rows top_once_ms "$out" "includes top's one-second rate sample"
	out=$(tmo 120 "$NS_GW" "$PY" "$BENCH_DIR/scaletool.py" timeit --reps 5 --timeout-s 20 -- \
		"$EGRESSD_BIN" stats --socket "$SOCK" 2>&1 | tail -n 1)
	top_stats_rows stats_ms "$out" ""
	nsx "$NS_GW" "$EGRESSD_BIN" top --once --socket "$SOCK" >"$OUT/logs/top-$CUR_N.txt" 2>&1
	for i in 1 2 3 4 5; do
		line=$(tmo 20 "$NS_GW" curl -sS --max-time 10 -o "$body" -w '%{http_code} %{time_total} %{size_download}\n' \
			"http://$METRICS_ADDR/metrics" 2>&1 | tail -n 1)
		read -r code secs size <<<"$line"
		if [ "${code:-}" = 200 ]; then
			sample scrape_ms "$i" "$(calc "$secs * 1000")" ms
			[ "$i" = 1 ] && sample scrape_kib 1 "$(calc "$size / 1024")" KiB "$(grep -c '^egressd' "$body") series"
		else
			na scrape_ms "$i" ms "curl: $line"
		fi
	done
	w=$(turn_max_us)
	stop_pid "$light" TERM
	if [ -n "$w" ]; then
		sample worker_turn_max_us 1 "$w" us "during top, stats and the scrapes with a new flow every 100 ms: largest egressd_worker_turn_max_seconds series (wall clock)"
	else
		na worker_turn_max_us 1 us "no egressd_worker_turn_max_seconds in /metrics (not in this build)"
	fi
}
# turn_max_us — the largest egressd_worker_turn_max_seconds series now, in us.
turn_max_us() {
	tmo 20 "$NS_GW" curl -sS --max-time 10 "http://$METRICS_ADDR/metrics" 2>/dev/null |
		awk '/^egressd_worker_turn_max_seconds/ { v = $NF * 1e6; if (v > m) m = v; f = 1 } END { if (f) print m }'
}
top_stats_rows() { # METRIC TIMEIT_LINE NOTE
	local ms rc k=0 v
	ms=$(kv ms "$2"); rc=$(kv rc "$2")
	if [ -z "$ms" ]; then na "$1" 1 ms "timeit: $2"; return; fi
	for v in ${ms//,/ }; do
		k=$((k + 1))
		sample "$1" "$k" "$v" ms "$3${3:+; }exit codes $rc"
	done
}

TENK_ADDED=0
# tenk_part — RSS around SCALE_10K sources routed once (and one flow each).
tenk_part() {
	local out t0 t1 ok before
	sample rss_10k_before_mib 1 "$(rss_mib)" MiB
	src_addrs "$TENK_BASE" 0 "$SCALE_10K" | awk -v w="$NAME_W" -v n="$CUR_N" \
		'{ printf "--source %s --tunnel t%0*d\n", $1, w, (NR - 1) % n + 1 }' >"$EG_TMP/route-set.txt"
	before=$(tmo 30 "$NS_GW" "$EGRESSD_BIN" route list --socket "$SOCK" 2>/dev/null | grep -c '(route set)')
	t0=$(date +%s%N)
	tmo 900 "$NS_GW" xargs -P 2 -L 1 "$EGRESSD_BIN" route set --socket "$SOCK" <"$EG_TMP/route-set.txt" \
		>"$EG_TMP/route-set.log" 2>&1
	t1=$(date +%s%N)
	ok=$(( $(tmo 30 "$NS_GW" "$EGRESSD_BIN" route list --socket "$SOCK" 2>/dev/null | grep -c '(route set)') - before ))
	if [ "$ok" -gt 0 ]; then
		sample route_set_10k_s 1 "$(calc "($t1 - $t0) / 1e9")" s "$ok of $SCALE_10K set (route list), 2 CLIs at once"
	else
		na route_set_10k_s 1 s "no route set took: $(tail -n 2 "$EG_TMP/route-set.log" | tr '\n' ' ')"
	fi
	sample rss_10k_set_mib 1 "$(rss_mib)" MiB
	if [ "$SCALE_10K_FLOWS" = 1 ]; then
		if [ "$TENK_ADDED" = 0 ]; then
			add_sources "$TENK_BASE" "$SCALE_10K" || log "adding the 10k addresses failed: $(tail -n 2 "$EG_TMP/addrs.log")"
			TENK_ADDED=1
		fi
		src_addrs "$TENK_BASE" 0 "$SCALE_10K" >"$EG_TMP/srcs10k.txt"
		out=$(tmo 400 "$NS_C" "$PY" "$BENCH_DIR/scaletool.py" flows --srcs "$EG_TMP/srcs10k.txt" --target "$TARGET:80" \
			--expect "$EXIT_EGRESS" --conc 64 --timeout-s 10 --max-secs 300 2>&1 | tail -n 1)
		sample flows_10k_ok 1 "$(kv ok "$out")" "" "of $SCALE_10K: $out"
		sample rss_10k_flows_mib 1 "$(rss_mib)" MiB
	else
		na flows_10k_ok 1 "" "SCALE_10K_FLOWS=0"
		na rss_10k_flows_mib 1 MiB "SCALE_10K_FLOWS=0"
	fi
	say "  idle ${SCALE_IDLE} s"
	sleep "$SCALE_IDLE"
	sample rss_10k_idle_mib 1 "$(rss_mib)" MiB "after ${SCALE_IDLE} s idle (forget_sources_secs $SCALE_FORGET); $(proc_line)"
	tmo 20 "$NS_GW" curl -sS --max-time 10 -o "$EG_TMP/metrics-idle.txt" "http://$METRICS_ADDR/metrics" >/dev/null 2>&1
	sample source_series_idle 1 "$(grep -c 'source="' "$EG_TMP/metrics-idle.txt" 2>/dev/null)" "" \
		"series with a source label in /metrics after the idle wait (the 1 000 of the sources part included)"
	sed -n 's/^--source \([^ ]*\) .*/--source \1/p' "$EG_TMP/route-set.txt" >"$EG_TMP/route-del.txt"
	tmo 900 "$NS_GW" xargs -P 2 -L 1 "$EGRESSD_BIN" route del --socket "$SOCK" <"$EG_TMP/route-del.txt" \
		>"$EG_TMP/route-del.log" 2>&1
	sample rss_10k_unrouted_mib 1 "$(rss_mib)" MiB "after route del of the $SCALE_10K"
}

# docker_part — HOOK (issue 25): Docker churn. netns-tests/tools/fake_docker.py
# is being made into a load generator (1000 containers, churn, a request
# counter) by another change. When its interface exists, start it here with
# egressd's `docker: (socket: ...)` pointed at it and record: requests/s it
# served, egressd's CPU and RSS under churn, route changes applied per second.
docker_part() {
	if timeout 10 "$PY" "$REPO/netns-tests/tools/fake_docker.py" --help 2>&1 | grep -qi 'churn'; then
		na docker_churn 1 "" "fake_docker.py has a load interface now, but this hook is not written yet (docker_part)"
	else
		na docker_churn 1 "" "fake_docker.py has no load-generator interface yet (docker_part is a hook)"
	fi
}

# run_n N — everything for one N, egressd started afresh.
run_n() {
	local n=$1 e rep leak0 m
	CUR_N=$n
	e=$SCALE_EXITS; [ "$n" -lt "$e" ] && e=$n
	say ""
	say "== N=$n tunnels over $e exit(s) ($(elapsed), load average $(cut -d' ' -f1-3 /proc/loadavg))"
	echo "N=$n: start at $(elapsed), load average $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
	if ! exits_up "$n" "$e"; then
		for m in warmup_s rest_cpu_pct $LAT_ROWS flows_1000_ok top_once_ms rss_10k_idle_mib; do na "$m" 1 "" "the exits did not start"; done
		exits_down
		return
	fi
	leak0=$(leak_count)
	SETUP_ERR=""
	if ! egressd_up "$n" "$e"; then
		say "  setup failed: $SETUP_ERR"
		for m in warmup_s rest_cpu_pct $LAT_ROWS flows_1000_ok top_once_ms rss_10k_idle_mib; do na "$m" 1 "" "setup failed: $SETUP_ERR"; done
		egressd_down; exits_down
		return
	fi
	WARM=$(sed -n 's/.* warm \([0-9]*\),.*/\1/p' "$EG_TMP/check-$n.log" | head -n 1)
	WARM=${WARM:-0}
	say "  egressd up (PID $EG_PID, warm $WARM per tunnel); warm-up"
	warmup "$n" "$e"
	if [ -n "${SCALE_WARM_IDLE:-}" ]; then
		say "  pools go cold after ${SCALE_WARM_IDLE} s without a flow: waiting $((SCALE_WARM_IDLE + 3)) s"
		sleep $((SCALE_WARM_IDLE + 3))
	fi
	for rep in $(seq 1 "$REPS"); do
		say "  at rest, window $rep/$REPS (${REST_S} s, $(elapsed))"
		egressd_alive || break
		rest_window "$rep" "$e"
	done
	egressd_alive && route_rest
	say "  latency part: RTT ${RTT} ms ($(elapsed))"
	egressd_alive && far_exit_part
	say "  $SCALE_SOURCES sources ($(elapsed))"
	egressd_alive && sources_part
	say "  $SCALE_10K sources routed once ($(elapsed))"
	egressd_alive && tenk_part
	[ "$SCALE_DOCKER" = 1 ] && docker_part
	sample leak_pkts 1 $(( $(leak_count) - leak0 )) "" "gw's uplink, counted in inet"
	if ! egressd_alive; then
		say "  WARNING: egressd exited during the run: $(tail -n 3 "$EG_TMP/egressd-$n.log" | tr '\n' ' ')"
		na egressd_exited 1 "" "egressd exited during N=$n: $(tail -n 1 "$EG_TMP/egressd-$n.log")"
	fi
	egressd_down
	exits_down
}

# ---------------------------------------------------------------- main

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench/scale.sh needs root (network namespaces)" >&2; exit 1; }

eg_cleanup_hook() {
	if [ -n "${OUT:-}" ] && [ -d "$OUT/logs" ] && [ -n "$EG_TMP" ]; then
		cp "$EG_TMP"/*.log "$EG_TMP"/check-*.log "$EG_TMP"/rules-*.sh "$EG_TMP"/perf-*.txt "$OUT/logs/" 2>/dev/null
		# The configs hold the (bench-only) tunnel passwords: kept, root-only.
		cp "$EG_TMP"/egressd-*.ron "$OUT/logs/" 2>/dev/null && chmod 600 "$OUT"/logs/egressd-*.ron
	fi
	return 0
}
eg_init
PY=$(python_bin)
require_root_and_tools nft iptables ss curl
kmaj=$(uname -r | cut -d. -f1); kmin=$(uname -r | cut -d. -f2)
if [ -e /proc/sys/net/bridge ] && { [ "$kmaj" -lt 5 ] || { [ "$kmaj" -eq 5 ] && [ "$kmin" -lt 3 ]; }; }; then
	die "kernel $(uname -r) < 5.3: bridge sysctls are not per-namespace, refusing to touch them"
fi
# shellcheck source=latency.sh
. "$BENCH_DIR/latency.sh" # delay_up, delay_down, delay_verify: the far exit

EGRESSD_BIN=${EGRESSD:-${CARGO_TARGET_DIR:-$REPO/target}/release/egressd}
if [ -z "${EGRESSD:-}" ] && [ ! -x "$EGRESSD_BIN" ]; then
	log "building egressd (cargo build --release)"
	(cd "$REPO" && cargo build --release --quiet) >&2 || die "cargo build --release failed"
fi
[ -x "$EGRESSD_BIN" ] || die "no egressd binary at $EGRESSD_BIN"
# One binary for the whole run, even if target/ is rebuilt meanwhile.
cp -p "$EGRESSD_BIN" "$EG_TMP/egressd.bin"
EGRESSD_SRC=$EGRESSD_BIN
EGRESSD_BIN="$EG_TMP/egressd.bin"
maxn=$(printf '%s\n' "$SCALE_NS" | tr ' ' '\n' | sort -n | tail -n 1)
[ "${#maxn}" -gt 4 ] && NAME_W=${#maxn}
WARM=0

mkdir -p "$OUT/logs"
rm -f "$OUT"/logs/*
SAMPLES="$OUT/samples.tsv"
printf 'n\tmetric\trep\tvalue\tunit\tnote\n' >"$SAMPLES"
printf 'n\tmetric\trep\tms\tnote\n' >"$OUT/latency-samples.tsv"
{
	echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "command: QUICK=$QUICK SCALE_NS=\"$SCALE_NS\" SCALE_WARM=$SCALE_WARM SCALE_EXITS=$SCALE_EXITS REPS=$REPS REST_S=$REST_S RTT=$RTT LAT_REPS=$LAT_REPS LAT_N=$LAT_N LAT_BURST=$LAT_BURST LAT_LATER=$LAT_LATER LAT_GAP=$LAT_GAP SCALE_SOURCES=$SCALE_SOURCES SCALE_10K=$SCALE_10K SCALE_10K_FLOWS=$SCALE_10K_FLOWS SCALE_FORGET=$SCALE_FORGET SCALE_IDLE=$SCALE_IDLE SCALE_DOCKER=$SCALE_DOCKER scripts/bench/scale.sh"
	echo "host: $(uname -srm), $(nproc) CPUs, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//')"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "egressd: $EGRESSD_SRC ($("$EGRESSD_BIN" --version 2>/dev/null), sha256 $(sha256sum "$EGRESSD_BIN" | cut -c1-12)), tree at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet -- src 2>/dev/null || echo ' (src/ changed)')"
	echo "perf: $(perf --version 2>/dev/null); python: $("$PY" --version 2>&1)"
} >"$OUT/env.txt"
cat "$OUT/env.txt"

log "building the topology (namespaces ${EG_ID}-*)"
topo_up
need=$SCALE_SOURCES
[ "$maxn" -gt "$need" ] && need=$maxn
add_sources "$SRC_BASE" "$need" || die "adding $need source addresses failed: $(tail -n 3 "$EG_TMP/addrs.log")"
target_up

for n in $SCALE_NS; do
	run_n "$n"
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); elapsed $(elapsed)" >>"$OUT/env.txt"
say ""
"$PY" "$BENCH_DIR/scaletool.py" report --samples "$SAMPLES" --out "$OUT" --ns "$SCALE_NS" --rtt-ms "$RTT" \
	--sources "$SCALE_SOURCES" --tenk "$SCALE_10K" \
	--title "egressd scale bench $(date -u '+%Y-%m-%d %H:%M UTC'), N = $SCALE_NS, $REPS x ${REST_S} s at rest, RTT $RTT ms, $(nproc) CPUs" ||
	log "report failed"
say "samples: $SAMPLES; table: $OUT/table.txt; elapsed $(elapsed)"
