#!/usr/bin/env bash
# scripts/bench.sh — egressd side by side with direct forwarding, redsocks and
# V2Ray, in one run, in network namespaces (issue 5).
#
#   sudo scripts/bench.sh              full run: 3 repetitions, 4 s per test (< 10 min)
#   sudo QUICK=1 scripts/bench.sh      short run: 1 repetition, 3 s per test (~2 min)
#   sudo LAT_ONLY=1 scripts/bench.sh   only the latency part (far exit, ~7 min)
#   sudo scripts/bench/scale.sh        only the scale part (N=1 vs N=1000 tunnels, ~11 min)
#
# Knobs (environment): OUT=dir (default bench-out/), REPS=n, DUR=seconds,
# IMPLS="direct egressd redsocks v2ray" (any subset, in the order to interleave),
# EGRESSD=path (default: the static build of scripts/build-static.sh if there
# is one, else target/release/egressd, built if missing), NO_INSTALL=1,
# IPT2SOCKS=path (an ipt2socks binary built by hand; adds it to both parts),
# EGRESSD_BASE=path (adds egressd_base: that binary, same config and topology,
# interleaved with egressd in the opposite order every other repetition; the
# table gets egressd/egressd_base per metric with the reps' spread), EGRESSD_THREADS=n (egressd's `threads`; default 0, one
# front loop and one worker per core; EGRESSD_BASE_THREADS for egressd_base), PROBE=perf|record|strace|callgrind and PROXY_WRAP
# (see perop_begin),
# MEASURE="rss tcp wrk dns udp" (any subset: the other metrics are n/a,
# "not measured"; rss is both RSS figures, tcp the bulk runs and CPU per GB).
# Latency part (scripts/bench/latency.sh; runs after the others unless
# LATENCY=0): RTT=ms (50), LAT_N=probes per metric (200), LAT_REPS=n (2,
# interleaved), LAT_BURST=n (64), LAT_GAP=RTTs between single probes (2),
# LAT_IMPLS (default: IMPLS without direct).
# Scale part (scripts/bench/scale.sh, issue 25; its own namespaces, exits and
# table in OUT/scale/; runs alone too, its header lists its knobs): off unless
# SCALE=1, then it runs last, with this run's egressd binary.
#
# Topology (namespaces egb<pid>-*, none linked to the root namespace; SPEC §5 addresses):
#
#   c0 10.8.0.10 ──veth── gw: br0 10.8.0.1/24 (bridge-nf-call-iptables=0)
#                          │  the proxy under test listens on 10.8.0.1:10900
#                          │  (TCP by nat REDIRECT, UDP by mangle TPROXY + fwmark
#                          │  10900 -> local route table 10900)
#                          ├─ exit0 100.64.0.1/24 ── 100.64.0.2/24 exit0: V2Ray SOCKS
#                          │                          inbound (udp: true) on :1080,
#                          │                          freedom out; forwards + MASQUERADEs
#                          │                          the container for `direct`
#                          └─ uplink 198.51.100.200 (MASQUERADE: the leak path)
#   inet: br-inet 198.51.100.254/24 joins gw's uplink and exit0's egress 198.51.100.1;
#         on lo: 203.0.113.10 (nginx :80 "/" and "/whoami"; iperf3 :5201;
#         TCP holder :7000; UDP who-am-i :5000) and 203.0.113.53 (nsd, port 53).
#
# Implementations, interleaved A B C D A B C D ... (egressd and egressd_base
# change places on even repetitions):
#   direct    kernel forwarding, policy routing by source in gw (from 10.8.0.10 ->
#             table 200 -> via exit0), the exit NATs: the topology's limit;
#   egressd   `egressd rules | sh -e` and `egressd run`, Socks5 tunnel to exit0;
#   redsocks  Debian's redsocks: `redsocks` (TCP, REDIRECT) + `redudp` (UDP, TPROXY);
#   v2ray     Debian's V2Ray: dokodemo-door, followRedirect, tcp+udp (the article),
#             sockopt tproxy "redirect", outbound SOCKS to exit0.
#
# Metrics (each implementation, each repetition): iperf3 TCP 1 and 4 streams
# (container -> inet) and 1 stream the other way (-R: inet -> container), wrk
# connections/s with `Connection: close` against nginx, dnsperf q/s and loss,
# iperf3 UDP at 200 Mbit/s (received rate and loss), the proxy's user+sys CPU
# seconds per GB over the three TCP bulk runs, the proxy's VmRSS with no flows
# and with 1000 idle TCP connections. Before measuring an implementation its
# path is checked (and printed): who the target sees for TCP and UDP, the DNS
# answer, connections opened at the exit's SOCKS port, packets the exit
# forwarded, and nothing leaked through gw's uplink.
#
# Output in OUT: samples.tsv (impl, metric, repetition, value, unit, note; a
# failed measurement is "n/a" with its reason), table.txt (medians, min..max,
# ratios, issue 5's targets), summary.tsv, ratios.png (gnuplot), env.txt,
# perop.txt (the proxy's CPU µs and wake-ups per connection and per query),
# logs/ (the daemons' logs). The root namespace is never configured; processes
# are stopped by PID; every load is bounded in count and time.

set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR="$REPO/scripts/bench"
EG_ID=${EG_ID:-egb$$}
# shellcheck source=../netns-tests/lib.sh
. "$REPO/netns-tests/lib.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	REPS=${REPS:-1}
	DUR=${DUR:-3}
else
	REPS=${REPS:-3}
	DUR=${DUR:-4}
fi
IMPLS=${IMPLS:-"direct egressd${EGRESSD_BASE:+ egressd_base} redsocks v2ray${IPT2SOCKS:+ ipt2socks}"}
MEASURE=${MEASURE:-"rss tcp wrk dns udp"}
LAT_ONLY=${LAT_ONLY:-0}
LATENCY=${LATENCY:-1}
[ "$LAT_ONLY" = 1 ] && LATENCY=1
RTT=${RTT:-50}
LAT_N=${LAT_N:-200}
LAT_REPS=${LAT_REPS:-2}
LAT_BURST=${LAT_BURST:-64}
LAT_GAP=${LAT_GAP:-2}
LAT_IMPLS=${LAT_IMPLS:-$(printf '%s\n' $IMPLS | grep -vx direct | tr '\n' ' ' | sed 's/ $//')}
for v in RTT LAT_N LAT_REPS LAT_BURST LAT_GAP; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "scripts/bench.sh: $v must be a whole number > 0 (got '${!v}')" >&2; exit 2; }
done
EXIT_PORT=1080 # the SOCKS exit the implementations use (latency part: danted's port)
OUT=${OUT:-$REPO/bench-out}
HOLD_N=${HOLD_N:-1000}
UDP_RATE=${UDP_RATE:-200M}

C_ADDR=10.8.0.10
GW_ADDR=10.8.0.1
EXIT_ADDR=100.64.0.2
EXIT_EGRESS=198.51.100.1
GW_UPLINK=198.51.100.200
TARGET=203.0.113.10
DNS_ADDR=203.0.113.53
PORT=10900
MARK=10900
TABLE=10900
BOGONS="0.0.0.0/8 10.0.0.0/8 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.168.0.0/16 224.0.0.0/4 240.0.0.0/4"

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
PY=""
btool() { "$PY" "$BENCH_DIR/benchtool.py" "$@"; }

# ---------------------------------------------------------------- install

APT_PKGS=(iproute2 iptables nftables procps curl dnsutils python3 iperf3 nginx-light wrk dnsperf
          nsd redsocks v2ray gnuplot-nox dante-server iputils-ping)
install_deps() {
	local p missing=() made_policy=0
	for p in "${APT_PKGS[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	# nginx is also fine as nginx-full/-core/nginx.
	if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v nginx >/dev/null 2>&1; then
		missing=("${missing[@]/nginx-light/}")
	fi
	[ -n "${missing[*]// /}" ] || return 0
	[ "${NO_INSTALL:-0}" = 1 ] && { log "missing packages (NO_INSTALL=1): ${missing[*]}"; return 0; }
	log "installing: ${missing[*]}"
	# nginx, nsd and redsocks ship services that their postinst would start in
	# the root namespace: forbid that for this install (policy-rc.d exit 101),
	# unless the machine already has a policy.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\n# scripts/bench.sh: no service starts during this install\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	export DEBIAN_FRONTEND=noninteractive
	# shellcheck disable=SC2068
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends ${missing[@]}; } >"$EG_TMP/apt.log" 2>&1 ||
		log "apt-get failed (see below); implementations without their tools will be n/a: $(tail -n 3 "$EG_TMP/apt.log")"
	[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
	return 0
}

# ---------------------------------------------------------------- topology

NS_C=""; NS_GW=""; NS_EXIT=""; NS_INET=""

topo_up() {
	NS_C=$(ns_name c0); NS_GW=$(ns_name gw); NS_EXIT=$(ns_name exit0); NS_INET=$(ns_name inet)
	local ns
	for ns in "$NS_INET" "$NS_GW" "$NS_EXIT" "$NS_C"; do
		ns_add "$ns"
		# Namespace-local: many short connections (wrk) need ports and reuse.
		nsx "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1 >/dev/null
	done
	# inet
	ip -n "$NS_INET" link add br-inet type bridge forward_delay 0
	ip -n "$NS_INET" addr add 198.51.100.254/24 dev br-inet
	ip -n "$NS_INET" link set br-inet up
	ip -n "$NS_INET" addr add "$TARGET/32" dev lo
	ip -n "$NS_INET" addr add "$DNS_ADDR/32" dev lo
	# gw, the 'Docker host'
	nsx "$NS_GW" sysctl -qw net.ipv4.ip_forward=1 >/dev/null
	ip -n "$NS_GW" link add br0 type bridge forward_delay 0
	if nsx "$NS_GW" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
		nsx "$NS_GW" sysctl -qw net.bridge.bridge-nf-call-iptables=0 >/dev/null
	fi
	ip -n "$NS_GW" addr add "$GW_ADDR/24" dev br0
	ip -n "$NS_GW" link set br0 up
	ip -n "$NS_GW" link add uplink type veth peer name to-gw netns "$NS_INET"
	ip -n "$NS_INET" link set to-gw master br-inet up
	ip -n "$NS_GW" addr add "$GW_UPLINK/24" dev uplink
	ip -n "$NS_GW" link set uplink up
	ip -n "$NS_GW" route add default via 198.51.100.254
	nsx "$NS_GW" iptables -w -t nat -A POSTROUTING -o uplink -j MASQUERADE
	# exit0
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
	# For `direct`: the exit forwards the container's packets and NATs them
	# to its egress address, as a router at the exit would.
	nsx "$NS_EXIT" sysctl -qw net.ipv4.ip_forward=1 >/dev/null
	ip -n "$NS_EXIT" route add 10.8.0.0/24 via 100.64.0.1
	nsx "$NS_EXIT" iptables -w -t nat -A POSTROUTING -s 10.8.0.0/24 -o egress -j MASQUERADE
	# Counters for the path check: connections to and UDP to the SOCKS port,
	# container packets forwarded by the exit.
	nsx "$NS_EXIT" nft -f - <<-'EOF' || die "nft (exit counters) failed"
	table inet benchpath {
		counter socks_syn { }
		counter socks_udp { }
		counter fwd_c { }
		chain in {
			type filter hook input priority 0; policy accept;
			tcp dport 1080 tcp flags & (syn | ack) == syn counter name socks_syn
			udp dport 1080 counter name socks_udp
		}
		chain fw {
			type filter hook forward priority 0; policy accept;
			ip saddr 10.8.0.0/24 counter name fwd_c
		}
	}
	EOF
	# inet: what arrives from gw's own uplink went around the proxy.
	nsx "$NS_INET" nft -f - <<-'EOF' || die "nft (leak counter) failed"
	table inet benchleak {
		counter leak { }
		chain pre {
			type filter hook prerouting priority -300; policy accept;
			ip saddr 198.51.100.200 counter name leak
		}
	}
	EOF
	# the container
	ip -n "$NS_GW" link add veth-c0 type veth peer name eth0 netns "$NS_C"
	ip -n "$NS_GW" link set veth-c0 master br0 up
	ip -n "$NS_C" addr add "$C_ADDR/24" dev eth0
	ip -n "$NS_C" link set eth0 up
	ip -n "$NS_C" route add default via "$GW_ADDR"
}

nft_count() { # NS TABLE COUNTER
	local n
	n=$(nsx "$1" nft list counter inet "$2" "$3" 2>/dev/null | sed -n 's/.*packets \([0-9]*\).*/\1/p' | head -n1)
	printf '%s\n' "${n:-0}"
}

# ---------------------------------------------------------------- services

start_services() {
	local w="$EG_TMP/www"
	mkdir -p "$w" "$EG_TMP/nginx"
	cat >"$EG_TMP/nginx.conf" <<-EOF
	worker_processes 2;
	daemon off;
	master_process on;
	user root;
	pid $EG_TMP/nginx/nginx.pid;
	error_log $EG_TMP/nginx/error.log warn;
	worker_rlimit_nofile 65536;
	events { worker_connections 16384; multi_accept on; }
	http {
	    access_log off;
	    client_body_temp_path $EG_TMP/nginx/body;
	    proxy_temp_path $EG_TMP/nginx/proxy;
	    fastcgi_temp_path $EG_TMP/nginx/fastcgi;
	    uwsgi_temp_path $EG_TMP/nginx/uwsgi;
	    scgi_temp_path $EG_TMP/nginx/scgi;
	    default_type application/octet-stream;
	    sendfile on;
	    tcp_nopush on;
	    keepalive_requests 100000;
	    server {
	        listen $TARGET:80 backlog=4096 reuseport;
	        root $w;
	        location = / { return 200 "ok\n"; }
	        location = /whoami { return 200 "\$remote_addr\n"; }
	    }
	}
	EOF
	eg_spawn "$NS_INET" "$EG_TMP/nginx.log" nginx -e "$EG_TMP/nginx/error.log" -c "$EG_TMP/nginx.conf"

	# nsd: authoritative only, answers precompiled, one server process,
	# response rate limiting off (its default would cap a benchmark at ~200 q/s).
	mkdir -p "$EG_TMP/nsd"
	cat >"$EG_TMP/nsd/bench.test.zone" <<-'EOF'
	$TTL 300
	bench.test.     IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 300
	bench.test.     IN NS  ns.bench.test.
	ns.bench.test.  IN A   203.0.113.53
	www.bench.test. IN A   203.0.113.10
	EOF
	cat >"$EG_TMP/nsd/nsd.conf" <<-EOF
	server:
	    ip-address: $DNS_ADDR
	    port: 53
	    username: ""
	    chroot: ""
	    database: ""
	    zonelistfile: "$EG_TMP/nsd/zone.list"
	    xfrdfile: "$EG_TMP/nsd/xfrd.state"
	    pidfile: "$EG_TMP/nsd/nsd.pid"
	    logfile: "$EG_TMP/nsd/nsd.log"
	    server-count: 1
	    verbosity: 0
	    rrl-ratelimit: 0
	    rrl-whitelist-ratelimit: 0
	remote-control:
	    control-enable: no
	zone:
	    name: bench.test
	    zonefile: "$EG_TMP/nsd/bench.test.zone"
	EOF
	eg_spawn "$NS_INET" "$EG_TMP/nsd.log" nsd -d -c "$EG_TMP/nsd/nsd.conf"
	printf 'www.bench.test A\n' >"$EG_TMP/dnsperf.q"

	rm -f "$EG_TMP/serve.ready"
	eg_spawn "$NS_INET" "$EG_TMP/benchtool-serve.log" "$PY" "$BENCH_DIR/benchtool.py" serve \
		--hold "$TARGET:7000" --udpwho "$TARGET:5000" --status "$EG_TMP/held" --ready "$EG_TMP/serve.ready"

	# The exit: V2Ray's SOCKS inbound with UDP; `ip` is the relay address its
	# UDP ASSOCIATE replies announce (its default, 127.0.0.1, is unreachable).
	cat >"$EG_TMP/v2ray-exit.json" <<-EOF
	{
	  "log": {"loglevel": "none", "access": "none"},
	  "inbounds": [{
	    "listen": "$EXIT_ADDR", "port": 1080, "protocol": "socks",
	    "settings": {"auth": "noauth", "udp": true, "ip": "$EXIT_ADDR"}
	  }],
	  "outbounds": [{"protocol": "freedom", "settings": {}}]
	}
	EOF
	eg_spawn "$NS_EXIT" "$EG_TMP/v2ray-exit.log" v2ray -config "$EG_TMP/v2ray-exit.json"

	wait_tcp_listen "$NS_INET" 80 "$TARGET" 15 || die "nginx did not start: $(tail -n 5 "$EG_TMP/nginx.log" "$EG_TMP/nginx/error.log" 2>/dev/null)"
	wait_until 15 test -e "$EG_TMP/serve.ready" || die "benchtool serve did not start: $(tail -n 5 "$EG_TMP/benchtool-serve.log")"
	wait_tcp_listen "$NS_EXIT" 1080 "$EXIT_ADDR" 15 || die "V2Ray SOCKS exit did not start: $(tail -n 5 "$EG_TMP/v2ray-exit.log")"
	wait_until 15 dns_answers "$NS_INET" || die "nsd did not answer: $(tail -n 5 "$EG_TMP/nsd.log" "$EG_TMP/nsd/nsd.log" 2>/dev/null)"
}

dns_answers() { # NS — does the DNS target answer www.bench.test from NS?
	[ "$(tmo 5 "$1" dig +short +time=1 +tries=1 @"$DNS_ADDR" www.bench.test A 2>/dev/null | head -n1)" = "$TARGET" ]
}

# ---------------------------------------------------------------- implementations
# impl_up_X: set up X (rules + daemon); PROXY_PID is its process ('' for
# direct). Returns non-zero with SETUP_ERR set on failure. impl_down_X undoes it.

PROXY_PID=""
SETUP_ERR=""

# The article's rules, for the peers: TCP REDIRECT, UDP TPROXY + mark + local table.
manual_rules_up() {
	local b
	{
		echo "iptables -w -t nat -N BENCH_TCP"
		for b in $BOGONS; do echo "iptables -w -t nat -A BENCH_TCP -d $b -j RETURN"; done
		echo "iptables -w -t nat -A BENCH_TCP -p tcp -j REDIRECT --to-ports $PORT"
		echo "iptables -w -t nat -A PREROUTING -s $C_ADDR/32 -p tcp -j BENCH_TCP"
		echo "iptables -w -t mangle -N BENCH_UDP"
		for b in $BOGONS; do echo "iptables -w -t mangle -A BENCH_UDP -d $b -j RETURN"; done
		echo "iptables -w -t mangle -A BENCH_UDP -p udp -j TPROXY --on-ip $GW_ADDR --on-port $PORT --tproxy-mark $MARK/$MARK"
		echo "iptables -w -t mangle -A PREROUTING -s $C_ADDR/32 -p udp -j BENCH_UDP"
		echo "ip rule add fwmark $MARK/$MARK lookup $TABLE"
		echo "ip route add local default dev lo table $TABLE"
	} >"$EG_TMP/manual-rules.sh"
	nsx "$NS_GW" sh -e "$EG_TMP/manual-rules.sh" >>"$EG_TMP/rules.log" 2>&1
}

manual_rules_down() {
	{
		nsx "$NS_GW" iptables -w -t nat -D PREROUTING -s "$C_ADDR/32" -p tcp -j BENCH_TCP
		nsx "$NS_GW" iptables -w -t nat -F BENCH_TCP
		nsx "$NS_GW" iptables -w -t nat -X BENCH_TCP
		nsx "$NS_GW" iptables -w -t mangle -D PREROUTING -s "$C_ADDR/32" -p udp -j BENCH_UDP
		nsx "$NS_GW" iptables -w -t mangle -F BENCH_UDP
		nsx "$NS_GW" iptables -w -t mangle -X BENCH_UDP
		ip -n "$NS_GW" rule del fwmark "$MARK/$MARK" lookup "$TABLE"
		ip -n "$NS_GW" route flush table "$TABLE"
	} >>"$EG_TMP/rules.log" 2>&1
	return 0
}

# proxy_start NAME LOG CMD... — run a proxy in gw, wait for its TCP listener.
proxy_start() {
	local name=$1 logf=$2; shift 2
	# shellcheck disable=SC2086 # PROXY_WRAP is words (e.g. valgrind and its options)
	eg_spawn "$NS_GW" "$logf" ${PROXY_WRAP:-} "$@"
	PROXY_PID=$EG_LAST_PID
	if ! wait_until 15 proxy_up_or_dead || ! pid_alive "$PROXY_PID"; then
		SETUP_ERR="$name did not start: $(tail -n 3 "$logf" | tr '\n' ' ')"
		return 1
	fi
	# UDP listener too (TPROXY needs it bound before the first datagram).
	wait_until 5 udp_bound || { SETUP_ERR="$name has no UDP socket on $GW_ADDR:$PORT"; return 1; }
}
proxy_up_or_dead() { tcp_listening "$NS_GW" "$PORT" "$GW_ADDR" || ! pid_alive "$PROXY_PID"; }
udp_bound() { nsx "$NS_GW" ss -lunH "sport = :$PORT" | grep -qF "$GW_ADDR:$PORT"; }

proxy_stop() {
	[ -n "$PROXY_PID" ] && stop_pid "$PROXY_PID" TERM
	PROXY_PID=""
}

impl_up_direct() {
	PROXY_PID=""
	if ! { ip -n "$NS_GW" rule add from "$C_ADDR" iif br0 lookup 200 priority 200 &&
		ip -n "$NS_GW" route add default via "$EXIT_ADDR" dev exit0 table 200; }; then
		SETUP_ERR="policy routing setup failed"
		return 1
	fi
}
impl_down_direct() {
	ip -n "$NS_GW" rule del from "$C_ADDR" iif br0 lookup 200 priority 200 2>/dev/null
	ip -n "$NS_GW" route flush table 200 2>/dev/null
	return 0
}

# The static musl build is what users run (scripts/build-static.sh): taken
# when it exists, else the glibc release build.
EGRESSD_MUSL=$REPO/target/x86_64-unknown-linux-musl/release/egressd
if [ -z "${EGRESSD:-}" ] && [ -x "$EGRESSD_MUSL" ]; then
	EGRESSD_BIN=$EGRESSD_MUSL
else
	EGRESSD_BIN=${EGRESSD:-$REPO/target/release/egressd}
fi
impl_up_egressd() {
	[ -x "$EGRESSD_BIN" ] || { SETUP_ERR="no egressd binary at $EGRESSD_BIN"; return 1; }
	cat >"$EG_TMP/egressd.ron" <<-EOF
	(
	    listen: ["$GW_ADDR:$PORT"],
	    tunnels: { "exit0": Socks5(server: "$EXIT_ADDR:$EXIT_PORT") },
	    routes: [ (source: "$C_ADDR", tunnel: "exit0") ],
	    intercept: (sources: ["10.8.0.0/24"], mark: $MARK, table: $TABLE),
	    control: (socket: "$EG_TMP/egressd.sock"),${EGRESSD_THREADS:+
	    threads: $EGRESSD_THREADS,}
	)
	EOF
	"$EGRESSD_BIN" check --config "$EG_TMP/egressd.ron" >"$EG_TMP/egressd-check.log" 2>&1 ||
		{ SETUP_ERR="egressd check failed: $(tail -n 3 "$EG_TMP/egressd-check.log" | tr '\n' ' ')"; return 1; }
	if ! { nsx "$NS_GW" "$EGRESSD_BIN" rules --config "$EG_TMP/egressd.ron" >"$EG_TMP/egressd-rules.sh" 2>>"$EG_TMP/rules.log" &&
		nsx "$NS_GW" sh -e "$EG_TMP/egressd-rules.sh" >>"$EG_TMP/rules.log" 2>&1; }; then
		SETUP_ERR="egressd rules | sh -e failed: $(tail -n 3 "$EG_TMP/rules.log" | tr '\n' ' ')"
		return 1
	fi
	proxy_start egressd "$EG_TMP/egressd.log" env RUST_LOG="${RUST_LOG:-warn}" \
		"$EGRESSD_BIN" run --config "$EG_TMP/egressd.ron"
}
impl_down_egressd() {
	proxy_stop
	if [ -x "$EGRESSD_BIN" ] && [ -e "$EG_TMP/egressd.ron" ]; then
		"$EGRESSD_BIN" rules --config "$EG_TMP/egressd.ron" --delete >"$EG_TMP/egressd-unrules.sh" 2>>"$EG_TMP/rules.log" &&
			nsx "$NS_GW" sh -e "$EG_TMP/egressd-unrules.sh" >>"$EG_TMP/rules.log" 2>&1
	fi
	return 0
}

# egressd_base: egressd from EGRESSD_BASE=path (a build before a change), in
# the same run as egressd, so that before and after are interleaved.
impl_up_egressd_base() {
	[ -x "${EGRESSD_BASE_BIN:-}" ] || { SETUP_ERR="no binary at EGRESSD_BASE=${EGRESSD_BASE:-}"; return 1; }
	local EGRESSD_BIN=$EGRESSD_BASE_BIN EGRESSD_THREADS=${EGRESSD_BASE_THREADS:-${EGRESSD_THREADS:-}}
	impl_up_egressd
}
impl_down_egressd_base() {
	local EGRESSD_BIN=$EGRESSD_BASE_BIN
	impl_down_egressd
}

impl_up_redsocks() {
	command -v redsocks >/dev/null || { SETUP_ERR="redsocks not installed"; return 1; }
	# redsocks' defaults otherwise: splice on (kernel >= 2.6.27), conn_max from
	# RLIMIT_NOFILE (raised to 65536 by eg_spawn). redudp without dest_ip means
	# TPROXY mode (IP_TRANSPARENT + IP_RECVORIGDSTADDR).
	cat >"$EG_TMP/redsocks.conf" <<-EOF
	base {
	    log_debug = off;
	    log_info = off;
	    log = stderr;
	    daemon = off;
	    redirector = iptables;
	}
	redsocks {
	    local_ip = $GW_ADDR;
	    local_port = $PORT;
	    ip = $EXIT_ADDR;
	    port = $EXIT_PORT;
	    type = socks5;
	}
	redudp {
	    local_ip = $GW_ADDR;
	    local_port = $PORT;
	    ip = $EXIT_ADDR;
	    port = $EXIT_PORT;
	    udp_timeout = 30;
	    udp_timeout_stream = 180;
	}
	EOF
	manual_rules_up || { SETUP_ERR="iptables rules failed: $(tail -n 3 "$EG_TMP/rules.log" | tr '\n' ' ')"; return 1; }
	proxy_start redsocks "$EG_TMP/redsocks.log" redsocks -c "$EG_TMP/redsocks.conf"
}
impl_down_redsocks() { proxy_stop; manual_rules_down; }

impl_up_v2ray() {
	command -v v2ray >/dev/null || { SETUP_ERR="v2ray not installed"; return 1; }
	# The article's dokodemo-door; V2Ray reads the original destination only
	# when sockopt.tproxy is set: "redirect" = SO_ORIGINAL_DST for TCP, and
	# IP_TRANSPARENT + IP_RECVORIGDSTADDR for the TPROXY'd UDP.
	cat >"$EG_TMP/v2ray-gw.json" <<-EOF
	{
	  "log": {"loglevel": "none", "access": "none"},
	  "inbounds": [{
	    "listen": "$GW_ADDR", "port": $PORT, "protocol": "dokodemo-door",
	    "settings": {"network": "tcp,udp", "followRedirect": true},
	    "streamSettings": {"sockopt": {"tproxy": "redirect"}}
	  }],
	  "outbounds": [{
	    "tag": "exit0", "protocol": "socks",
	    "settings": {"servers": [{"address": "$EXIT_ADDR", "port": $EXIT_PORT}]}
	  }],
	  "routing": {"rules": [{"type": "field", "outboundTag": "exit0", "source": ["$C_ADDR"]}]}
	}
	EOF
	manual_rules_up || { SETUP_ERR="iptables rules failed: $(tail -n 3 "$EG_TMP/rules.log" | tr '\n' ' ')"; return 1; }
	proxy_start v2ray "$EG_TMP/v2ray-gw.log" v2ray -config "$EG_TMP/v2ray-gw.json"
}
impl_down_v2ray() { proxy_stop; manual_rules_down; }

# ipt2socks (C, libev; not packaged): only with IPT2SOCKS=path, built by hand
# outside the repo. One thread, REDIRECT for TCP (-R), TPROXY for UDP. -R
# comes first: it sets the listen addresses to the wildcard, and a -b before
# it would be lost (ipt2socks then listened on 0.0.0.0 and the bench, waiting
# for $GW_ADDR:$PORT, said it "did not start").
impl_up_ipt2socks() {
	[ -x "${IPT2SOCKS:-}" ] || { SETUP_ERR="no ipt2socks binary (IPT2SOCKS=path)"; return 1; }
	manual_rules_up || { SETUP_ERR="iptables rules failed: $(tail -n 3 "$EG_TMP/rules.log" | tr '\n' ' ')"; return 1; }
	proxy_start ipt2socks "$EG_TMP/ipt2socks.log" "$IPT2SOCKS" -R -4 -j 1 -s "$EXIT_ADDR" -p "$EXIT_PORT" \
		-b "$GW_ADDR" -l "$PORT"
}
impl_down_ipt2socks() { proxy_stop; manual_rules_down; }

# shellcheck source=bench/latency.sh
. "$BENCH_DIR/latency.sh"

# ---------------------------------------------------------------- samples

SAMPLES=""
# sample IMPL METRIC REP VALUE UNIT [NOTE]
sample() {
	local impl=$1 metric=$2 rep=$3 value=$4 unit=$5 note=${6:-}
	if [ "$value" != n/a ] && ! [[ "$value" =~ ^-?[0-9.]+([eE][-+]?[0-9]+)?$ ]]; then
		note="no number parsed from the tool's output (got '$value')${note:+; $note}"
		value=n/a
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$impl" "$metric" "$rep" "$value" "$unit" "$note" >>"$SAMPLES"
	if [ "$value" = n/a ]; then
		say "    $metric: n/a ($note)"
	else
		say "    $metric: $value $unit${note:+ ($note)}"
	fi
}
na() { sample "$1" "$2" "$3" n/a "$4" "$5"; } # IMPL METRIC REP UNIT WHY

ALL_METRICS="rss_idle:MiB rss_1000:MiB rss_after:MiB tcp_1stream:Gbit/s tcp_4streams:Gbit/s tcp_download:Gbit/s cpu_per_gb:s/GB tcp_conn_rate:conn/s dns_qps:q/s dns_loss:% udp_rate:Mbit/s udp_loss:%"
all_na() { # IMPL REP WHY
	local m
	for m in $ALL_METRICS; do na "$1" "${m%%:*}" "$2" "${m#*:}" "$3"; done
}

kv() { # KEY LINE — value of KEY=... in a line of key=value words
	printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1
}
calc() { awk "BEGIN { printf \"%.6g\", ($1) }"; }

proc_cpu() { btool cpu "$1" 2>/dev/null || echo ""; }
# Context switches of all of PID's threads (voluntary = a thread slept and
# was woken: the wake-ups a hand-off between threads costs).
proc_ctxsw() { # PID -> "voluntary nonvoluntary"
	cat /proc/"$1"/task/*/status 2>/dev/null |
		awk '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {n += $2} END {print v + 0, n + 0}'
}
# perop_begin PREFIX REP / perop_end IMPL REP PREFIX COUNT — the proxy's CPU time and
# context switches per operation (connection, query) over one load run:
# PREFIX_cpu_us (user+sys, µs), PREFIX_machine_us (all CPUs' busy time, µs)
# and PREFIX_wakeups (voluntary switches).
# PROBE=perf: `perf stat` of syscall and scheduler tracepoints (PERF_EVENTS)
# on the proxy during each run (OUT/probe/IMPL-conn|dns-REP.perf; little overhead).
# PROBE=record: `perf record -g` on the proxy during each run
# (OUT/probe/IMPL-conn|dns-REP-nOPS.data, for `perf report`: where the CPU goes).
# PROBE=strace: `strace -c -f` on the proxy during each wrk and dnsperf run
# (counts per syscall in OUT/probe/IMPL-conn|dns-REP.strace; the timing
# figures of such a run are strace's, not the proxy's). PROBE=callgrind, with
# PROXY_WRAP="valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=OUT/probe/cg.%p"
# (--trace-children: the proxy is started through `env`, which valgrind would
# profile instead):
# counters zeroed before and dumped after each run (callgrind_control).
# Voluntary context switches per thread name ("name=n ..."), for the note.
proc_ctxsw_threads() {
	local t
	for t in /proc/"$1"/task/*; do
		printf '%s=%s\n' "$(cat "$t/comm" 2>/dev/null)" "$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status" 2>/dev/null)"
	done | awk -F= '{v[$1] += $2} END {for (k in v) printf "%s=%d ", k, v[k]}'
}
PEROP0=""; PROBE_PID=""; PEROP_T0=""
perop_begin() {
	PEROP0=""
	[ -n "$PROXY_PID" ] || return 0
	case ${PROBE:-} in
	strace)
		mkdir -p "$OUT/probe"
		strace -f -c -o "$OUT/probe/$1-$2.strace.tmp" -p "$PROXY_PID" 2>/dev/null &
		PROBE_PID=$!
		sleep 1 ;;
	callgrind) callgrind_control -z "$PROXY_PID" >/dev/null 2>&1 ;;
	record)
		mkdir -p "$OUT/probe"
		perf record -q -g -o "$OUT/probe/$1-$2.record.tmp" -p "$PROXY_PID" >/dev/null 2>&1 &
		PROBE_PID=$!
		sleep 0.5 ;;
	perf)
		mkdir -p "$OUT/probe"
		perf stat -e "${PERF_EVENTS:-raw_syscalls:sys_enter,syscalls:sys_enter_write,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_splice,syscalls:sys_enter_recvfrom,sched:sched_wakeup,context-switches}" \
			-o "$OUT/probe/$1-$2.perf.tmp" -p "$PROXY_PID" 2>/dev/null &
		PROBE_PID=$!
		sleep 0.5 ;;
	esac
	PEROP0="$(proc_cpu "$PROXY_PID") $(proc_ctxsw "$PROXY_PID") $(machine_busy_s)"
	PEROP_T0=$(proc_ctxsw_threads "$PROXY_PID")
}
perop_end() {
	local impl=$1 rep=$2 pfx=$3 n=$4 c0 v0 n0 m0 c1 v1 n1 m1
	[ -n "$PROXY_PID" ] && [ -n "$PEROP0" ] || return 0
	case ${PROBE:-} in
	strace | perf)
		kill -INT "$PROBE_PID" 2>/dev/null
		wait "$PROBE_PID" 2>/dev/null
		PROBE_PID=""
		{ echo "# $impl $pfx rep $rep: $n operations"; cat "$OUT/probe/$pfx-$rep.$PROBE.tmp"; } >"$OUT/probe/$impl-$pfx-$rep.$PROBE"
		rm -f "$OUT/probe/$pfx-$rep.$PROBE.tmp" ;;
	record)
		kill -INT "$PROBE_PID" 2>/dev/null
		wait "$PROBE_PID" 2>/dev/null
		PROBE_PID=""
		mv "$OUT/probe/$pfx-$rep.record.tmp" "$OUT/probe/$impl-$pfx-$rep-n$n.data" ;;
	callgrind)
		callgrind_control -d "$impl-$pfx-$rep-n$n" "$PROXY_PID" >/dev/null 2>&1 ;;
	esac
	read -r c0 v0 n0 m0 <<<"$PEROP0"
	read -r c1 v1 n1 m1 <<<"$(proc_cpu "$PROXY_PID") $(proc_ctxsw "$PROXY_PID") $(machine_busy_s)"
	local per_thread
	per_thread=$(printf '%s\n%s\n' "$PEROP_T0" "$(proc_ctxsw_threads "$PROXY_PID")" | tr ' ' '\n' | grep = |
		awk -F= -v n="${n:-0}" '{ if (seen[$1]++) d[$1] = $2 - first[$1]; else first[$1] = $2 }
			END { if (n > 0) for (k in d) if (d[k] > 0) printf "%s %.3f/op, ", k, d[k] / n }' | sed 's/, $//')
	if [ -z "$c1" ] || ! [ "${n:-0}" -gt 0 ] 2>/dev/null; then
		na "$impl" "${pfx}_cpu_us" "$rep" us "no count or /proc unreadable"
		return 0
	fi
	sample "$impl" "${pfx}_cpu_us" "$rep" "$(calc "($c1 - $c0) * 1e6 / $n")" us "$(calc "$c1 - $c0") s CPU over $n"
	# Everything the machine ran for it (client, target, exit, proxy, the
	# bench itself): the proxy's share of this bounds what a cheaper proxy
	# can gain in operations per second when the CPUs are saturated.
	[ -n "$m0" ] && [ -n "$m1" ] &&
		sample "$impl" "${pfx}_machine_us" "$rep" "$(calc "($m1 - $m0) * 1e6 / $n")" us "$(calc "$m1 - $m0") s busy CPU (all CPUs, /proc/stat) over $n"
	sample "$impl" "${pfx}_wakeups" "$rep" "$(calc "($v1 - $v0) / $n")" "/op" "$((v1 - v0)) voluntary, $((n1 - n0)) involuntary switches over $n${per_thread:+; by thread: $per_thread}"
}
proc_rss_mib() { local k; k=$(btool rss "$1" 2>/dev/null) && calc "$k / 1024"; }
# The whole machine's busy CPU time so far, in seconds (every CPU: user,
# nice, system, irq, softirq of /proc/stat's "cpu" line).
machine_busy_s() {
	awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" { printf "%.6f\n", ($2 + $3 + $4 + $7 + $8) / hz; exit }' /proc/stat
}

# ---------------------------------------------------------------- path check

PATH_NOTE=""
# path_check IMPL — is IMPL really the path? Prints what was seen.
path_check() {
	local impl=$1 syn0 udp0 fwd0 leak0 who uwho dns dsyn dudp dfwd dleak ok=1 why=""
	syn0=$(nft_count "$NS_EXIT" benchpath socks_syn); udp0=$(nft_count "$NS_EXIT" benchpath socks_udp)
	fwd0=$(nft_count "$NS_EXIT" benchpath fwd_c); leak0=$(nft_count "$NS_INET" benchleak leak)
	who=$(tmo 10 "$NS_C" curl -sS --max-time 5 "http://$TARGET/whoami" 2>&1 | tr -d '\r' | tail -n1)
	uwho=$(tmo 10 "$NS_C" "$PY" "$BENCH_DIR/benchtool.py" udpwho "$TARGET:5000" 2>&1 | tail -n1)
	dns=$(tmo 10 "$NS_C" dig +short +time=2 +tries=2 @"$DNS_ADDR" www.bench.test A 2>&1 | head -n1)
	dsyn=$(( $(nft_count "$NS_EXIT" benchpath socks_syn) - syn0 ))
	dudp=$(( $(nft_count "$NS_EXIT" benchpath socks_udp) - udp0 ))
	dfwd=$(( $(nft_count "$NS_EXIT" benchpath fwd_c) - fwd0 ))
	dleak=$(( $(nft_count "$NS_INET" benchleak leak) - leak0 ))
	[ "$who" = "$EXIT_EGRESS" ] || { ok=0; why="$why TCP target saw '$who' (want $EXIT_EGRESS);"; }
	case "$uwho" in
	"seen=$EXIT_EGRESS:"*" from=$TARGET:5000") ;;
	*) ok=0; why="$why UDP: '$uwho' (want seen=$EXIT_EGRESS:* from=$TARGET:5000);" ;;
	esac
	[ "$dns" = "$TARGET" ] || { ok=0; why="$why DNS answer '$dns';"; }
	[ "$dleak" -eq 0 ] || { ok=0; why="$why $dleak packets leaked via gw's uplink;"; }
	if [ "$impl" = direct ]; then
		[ $((dsyn + dudp)) -eq 0 ] || { ok=0; why="$why direct used the SOCKS exit ($dsyn conns, $dudp UDP);"; }
		[ "$dfwd" -gt 0 ] || { ok=0; why="$why exit forwarded no container packet;"; }
	else
		[ "$dsyn" -gt 0 ] || { ok=0; why="$why no connection reached the exit's SOCKS port;"; }
		[ "$dudp" -gt 0 ] || { ok=0; why="$why no UDP reached the exit's SOCKS relay;"; }
		[ "$dfwd" -eq 0 ] || { ok=0; why="$why $dfwd container packets were forwarded (kernel path, not the proxy);"; }
	fi
	say "  path $impl: TCP target saw $who; UDP $uwho; DNS $dns; at the exit: +$dsyn SOCKS conns, +$dudp SOCKS UDP pkts, +$dfwd forwarded container pkts; gw uplink leak +$dleak -> $([ $ok = 1 ] && echo OK || echo FAILED)"
	PATH_NOTE=$why
	[ $ok = 1 ]
}

# ---------------------------------------------------------------- measurements

# iperf_run REP TAG ARGS... — one iperf3 client run against a one-off server;
# the parsed key=value line is left in IPERF_KV (or IPERF_ERR).
IPERF_KV=""; IPERF_ERR=""
iperf_run() {
	local tag=$1; shift
	local js="$EG_TMP/iperf-$tag.json" spid
	IPERF_KV=""; IPERF_ERR=""
	eg_spawn "$NS_INET" "$EG_TMP/iperf-server.log" iperf3 -s -1 -B "$TARGET" -p 5201
	spid=$EG_LAST_PID
	if ! wait_tcp_listen "$NS_INET" 5201 "$TARGET" 10; then
		IPERF_ERR="iperf3 server did not start"
		stop_pid "$spid" KILL
		return 1
	fi
	tmo $((DUR + 20)) "$NS_C" iperf3 -c "$TARGET" -p 5201 -J --connect-timeout 5000 "$@" -t "$DUR" >"$js" 2>&1
	IPERF_KV=$(btool iperf "$js")
	local rc=$?
	wait_until 3 pid_gone "$spid"
	stop_pid "$spid" KILL
	if [ $rc -ne 0 ]; then
		IPERF_ERR=$(kv error "$IPERF_KV")
		[ -n "$IPERF_ERR" ] || IPERF_ERR=${IPERF_KV#error=}
		return 1
	fi
}

measure_rss_idle() { # IMPL REP
	local v
	if [ -z "$PROXY_PID" ]; then na "$1" rss_idle "$2" MiB "no proxy process (kernel forwarding)"; return; fi
	sleep 0.5
	if v=$(proc_rss_mib "$PROXY_PID") && [ -n "$v" ]; then
		sample "$1" rss_idle "$2" "$v" MiB
	else
		na "$1" rss_idle "$2" MiB "could not read /proc/$PROXY_PID/status"
	fi
}

held_count() { sed -n 's/^held //p' "$EG_TMP/held" 2>/dev/null; }
held_at_least() { [ "$(held_count)" -ge "$1" ] 2>/dev/null; }
held_at_most() { [ "$(held_count)" -le "$1" ] 2>/dev/null; }
hold_status_ready() { test -s "$EG_TMP/hold.status"; }

measure_rss_1000() { # IMPL REP [METRIC]
	local impl=$1 rep=$2 metric=${3:-rss_1000} hpid st v h
	if [ -z "$PROXY_PID" ]; then na "$impl" "$metric" "$rep" MiB "no proxy process (kernel forwarding)"; return; fi
	rm -f "$EG_TMP/hold.status" "$EG_TMP/hold.status.stop"
	wait_until 10 held_at_most 0
	eg_spawn "$NS_C" "$EG_TMP/hold.log" "$PY" "$BENCH_DIR/benchtool.py" hold "$TARGET:7000" \
		--count "$HOLD_N" --status "$EG_TMP/hold.status" --connect-secs 30 --max-secs 60
	hpid=$EG_LAST_PID
	# Accepted: all N held at the target, or at least 99% once the client has
	# given up on the rest (then the count is in the note).
	wait_until 40 hold_status_ready
	wait_until 10 held_at_least "$HOLD_N"
	st=$(cat "$EG_TMP/hold.status" 2>/dev/null)
	h=$(held_count)
	if [ "${h:-0}" -ge $((HOLD_N * 99 / 100)) ] 2>/dev/null; then
		sleep 1 # let the proxy settle (buffers freed after the first byte)
		v=$(proc_rss_mib "$PROXY_PID")
		h=$(held_count)
		if [ -z "$v" ]; then
			na "$impl" "$metric" "$rep" MiB "could not read /proc/$PROXY_PID/status"
		elif [ "$h" -ge "$HOLD_N" ]; then
			sample "$impl" "$metric" "$rep" "$v" MiB
		else
			sample "$impl" "$metric" "$rep" "$v" MiB "with $h of $HOLD_N held (client: $st)"
		fi
	else
		na "$impl" "$metric" "$rep" MiB "only ${h:-0} of $HOLD_N connections reached the target (client: ${st:-no status})"
	fi
	touch "$EG_TMP/hold.status.stop"
	wait_until 10 pid_gone "$hpid"
	stop_pid "$hpid" TERM
	wait_until 10 held_at_most 0
}

measure_tcp() { # IMPL REP
	local impl=$1 rep=$2 c0="" c1 bytes=0 bps b
	[ -n "$PROXY_PID" ] && c0=$(proc_cpu "$PROXY_PID")
	if iperf_run "tcp1-$impl-$rep" -P 1; then
		bps=$(kv bps "$IPERF_KV"); b=$(kv bytes "$IPERF_KV")
		sample "$impl" tcp_1stream "$rep" "$(calc "$bps / 1e9")" Gbit/s
		bytes=$(calc "$bytes + $b")
	else
		na "$impl" tcp_1stream "$rep" Gbit/s "iperf3: $IPERF_ERR"
	fi
	if iperf_run "tcp4-$impl-$rep" -P 4; then
		bps=$(kv bps "$IPERF_KV"); b=$(kv bytes "$IPERF_KV")
		sample "$impl" tcp_4streams "$rep" "$(calc "$bps / 1e9")" Gbit/s
		bytes=$(calc "$bytes + $b")
	else
		na "$impl" tcp_4streams "$rep" Gbit/s "iperf3: $IPERF_ERR"
	fi
	if iperf_run "tcpR-$impl-$rep" -P 1 -R; then
		bps=$(kv bps "$IPERF_KV"); b=$(kv bytes "$IPERF_KV")
		sample "$impl" tcp_download "$rep" "$(calc "$bps / 1e9")" Gbit/s
		bytes=$(calc "$bytes + $b")
	else
		na "$impl" tcp_download "$rep" Gbit/s "iperf3 -R: $IPERF_ERR"
	fi
	if [ -z "$PROXY_PID" ]; then
		na "$impl" cpu_per_gb "$rep" s/GB "no proxy process (kernel forwarding)"
		return
	fi
	c1=$(proc_cpu "$PROXY_PID")
	if [ -n "$c0" ] && [ -n "$c1" ] && [ "$(calc "$bytes > 0")" = 1 ]; then
		sample "$impl" cpu_per_gb "$rep" "$(calc "($c1 - $c0) / ($bytes / 1e9)")" s/GB \
			"$(calc "$c1 - $c0") s over $(calc "$bytes / 1e9") GB"
	else
		na "$impl" cpu_per_gb "$rep" s/GB "no bytes moved or /proc/$PROXY_PID/stat unreadable"
	fi
}

measure_wrk() { # IMPL REP
	local impl=$1 rep=$2 out rps err
	perop_begin conn "$rep"
	out=$(tmo $((DUR + 15)) "$NS_C" wrk -t1 -c32 -d"${DUR}s" --timeout 2s -H 'Connection: close' "http://$TARGET/" 2>&1)
	perop_end "$impl" "$rep" conn "$(printf '%s\n' "$out" | awk '/ requests in / {print $1}')"
	rps=$(printf '%s\n' "$out" | awk '/^Requests\/sec:/ {print $2}')
	err=$(printf '%s\n' "$out" | grep -E 'Socket errors|Non-2xx' | tr -s ' ' | tr '\n' ';' | sed 's/;$//')
	if [ -n "$rps" ]; then
		sample "$impl" tcp_conn_rate "$rep" "$rps" conn/s "$err"
	else
		na "$impl" tcp_conn_rate "$rep" conn/s "wrk: $(printf '%s' "$out" | tail -n 2 | tr '\n' ' ')"
	fi
}

measure_dns() { # IMPL REP
	local impl=$1 rep=$2 out qps lost
	perop_begin dns "$rep"
	out=$(tmo $((DUR + 15)) "$NS_C" dnsperf -s "$DNS_ADDR" -d "$EG_TMP/dnsperf.q" -l "$DUR" -c 4 -q 200 -t 2 2>&1)
	perop_end "$impl" "$rep" dns "$(printf '%s\n' "$out" | awk '/Queries completed:/ {print $3}')"
	qps=$(printf '%s\n' "$out" | awk '/Queries per second:/ {print $4}')
	lost=$(printf '%s\n' "$out" | sed -n 's/.*Queries lost: *[0-9]* (\([0-9.]*\)%).*/\1/p')
	if [ -n "$qps" ] && [ -n "$lost" ]; then
		sample "$impl" dns_qps "$rep" "$qps" q/s
		sample "$impl" dns_loss "$rep" "$lost" %
	else
		local why
		why="dnsperf: $(printf '%s' "$out" | tail -n 2 | tr '\n' ' ')"
		na "$impl" dns_qps "$rep" q/s "$why"
		na "$impl" dns_loss "$rep" % "$why"
	fi
}

measure_udp() { # IMPL REP
	local impl=$1 rep=$2
	if iperf_run "udp-$impl-$rep" -u -b "$UDP_RATE" -l 1400; then
		sample "$impl" udp_rate "$rep" "$(calc "$(kv bps "$IPERF_KV") / 1e6")" Mbit/s
		sample "$impl" udp_loss "$rep" "$(kv lost_percent "$IPERF_KV")" % \
			"$(kv lost_packets "$IPERF_KV") of $(kv packets "$IPERF_KV") datagrams"
	else
		na "$impl" udp_rate "$rep" Mbit/s "iperf3 -u: $IPERF_ERR"
		na "$impl" udp_loss "$rep" % "iperf3 -u: $IPERF_ERR"
	fi
}

not_measured() { # IMPL REP PART — the PART's metrics as n/a (MEASURE left it out)
	local m
	case $3 in
	rss) m="rss_1000:MiB rss_after:MiB" ;;
	tcp) m="tcp_1stream:Gbit/s tcp_4streams:Gbit/s tcp_download:Gbit/s cpu_per_gb:s/GB" ;;
	wrk) m="tcp_conn_rate:conn/s" ;;
	dns) m="dns_qps:q/s dns_loss:%" ;;
	udp) m="udp_rate:Mbit/s udp_loss:%" ;;
	esac
	for m in $m; do na "$1" "${m%%:*}" "$2" "${m#*:}" "not measured (MEASURE=$MEASURE)"; done
}

run_round() { # IMPL REP
	local impl=$1 rep=$2
	say "== $impl, repetition $rep/$REPS ($(( $(date +%s) - T0 )) s)"
	SETUP_ERR=""
	if ! "impl_up_$impl"; then
		say "  setup failed: $SETUP_ERR"
		all_na "$impl" "$rep" "setup failed: $SETUP_ERR"
		"impl_down_$impl"
		return
	fi
	measure_rss_idle "$impl" "$rep"
	if ! path_check "$impl"; then
		local m
		for m in $ALL_METRICS; do
			[ "${m%%:*}" = rss_idle ] && continue
			na "$impl" "${m%%:*}" "$rep" "${m#*:}" "path check failed:$PATH_NOTE"
		done
		"impl_down_$impl"
		return
	fi
	local part
	for part in rss tcp wrk dns udp; do
		if [[ " $MEASURE " == *" $part "* ]]; then
			case $part in
			rss) measure_rss_1000 "$impl" "$rep" ;;
			*) "measure_$part" "$impl" "$rep" ;;
			esac
		else
			not_measured "$impl" "$rep" "$part"
		fi
	done
	# Once more after the load (throughput, connections, DNS, UDP): what a
	# burst made the proxy keep (issue 25).
	if [[ " $MEASURE " == *" rss "* ]]; then
		measure_rss_1000 "$impl" "$rep" rss_after
	fi
	if [ -n "$PROXY_PID" ] && ! pid_alive "$PROXY_PID"; then
		say "  WARNING: $impl exited during the round; its log: $(tail -n 3 "$EG_TMP/$impl.log" 2>/dev/null | tr '\n' ' ')"
	fi
	"impl_down_$impl"
}

# ---------------------------------------------------------------- main

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "scripts/bench.sh needs root (network namespaces)" >&2; exit 1; }

eg_cleanup_hook() {
	# Keep the daemons' logs and configs next to the results.
	if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ -n "$EG_TMP" ]; then
		mkdir -p "$OUT/logs"
		cp "$EG_TMP"/*.log "$EG_TMP"/*.conf "$EG_TMP"/*.json "$EG_TMP"/*.ron "$EG_TMP"/*rules*.sh \
			"$OUT/logs/" 2>/dev/null
		rm -f "$OUT"/logs/iperf-*.json
	fi
	return 0
}
eg_init
install_deps

PY=$(python_bin)
missing=""
tools="ip iptables nft curl dig nginx nsd $PY"
[ "$LAT_ONLY" = 1 ] || tools="$tools iperf3 wrk dnsperf gnuplot"
[ "$LATENCY" = 1 ] && tools="$tools danted ping"
for t in $tools; do
	command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
done
[ -z "$missing" ] || die "missing tools:$missing"
# The bridge sysctls are per network namespace since Linux 5.3; before that
# writing them in gw would change the host's.
kmaj=$(uname -r | cut -d. -f1); kmin=$(uname -r | cut -d. -f2)
if [ -e /proc/sys/net/bridge ] && { [ "$kmaj" -lt 5 ] || { [ "$kmaj" -eq 5 ] && [ "$kmin" -lt 3 ]; }; }; then
	die "kernel $(uname -r) < 5.3: bridge sysctls are not per-namespace, refusing to touch them"
fi
require_root_and_tools nft iptables
if [[ " $IMPLS " == *" egressd "* ]] && [ -z "${EGRESSD:-}" ] && [ ! -x "$EGRESSD_BIN" ]; then
	log "building egressd (cargo build --release)"
	(cd "$REPO" && cargo build --release --quiet) >&2 || log "cargo build --release failed: egressd will be n/a"
fi

if [ -x "$EGRESSD_BIN" ] && [ -n "$(find "$REPO/src" "$REPO/Cargo.toml" -newer "$EGRESSD_BIN" -print -quit 2>/dev/null)" ]; then
	log "note: $EGRESSD_BIN is older than src/ (run cargo build --release to bench the current code)"
fi

# One binary for the whole run, even if target/ is rebuilt meanwhile.
if [ -x "$EGRESSD_BIN" ]; then
	cp -p "$EGRESSD_BIN" "$EG_TMP/egressd.bin"
	EGRESSD_SRC=$EGRESSD_BIN
	EGRESSD_BIN="$EG_TMP/egressd.bin"
fi
EGRESSD_BASE_BIN=""
if [ -n "${EGRESSD_BASE:-}" ] && [ -x "$EGRESSD_BASE" ]; then
	cp -p "$EGRESSD_BASE" "$EG_TMP/egressd-base.bin"
	EGRESSD_BASE_BIN="$EG_TMP/egressd-base.bin"
fi

mkdir -p "$OUT"
rm -rf "$OUT/logs"
SAMPLES="$OUT/samples.tsv"
printf 'impl\tmetric\trep\tvalue\tunit\tnote\n' >"$SAMPLES"
{
	echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "command: QUICK=$QUICK REPS=$REPS DUR=$DUR IMPLS=\"$IMPLS\" MEASURE=\"$MEASURE\" LAT_ONLY=$LAT_ONLY LATENCY=$LATENCY RTT=$RTT LAT_N=$LAT_N LAT_REPS=$LAT_REPS LAT_BURST=$LAT_BURST LAT_GAP=$LAT_GAP scripts/bench.sh"
	echo "host: $(uname -srm), $(nproc) CPUs, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ *//')"
	echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	[ -n "$EGRESSD_BASE_BIN" ] && echo "egressd_base: $EGRESSD_BASE (sha256 $(sha256sum "$EGRESSD_BASE_BIN" | cut -c1-12))"
	echo "egressd: ${EGRESSD_SRC:-$EGRESSD_BIN} (sha256 $(sha256sum "$EGRESSD_BIN" 2>/dev/null | cut -c1-12)), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (dirty tree)'), built $(date -u -r "$EGRESSD_BIN" '+%Y-%m-%d %H:%M' 2>/dev/null)"
	for p in v2ray redsocks iperf3 nginx-light wrk dnsperf nsd; do
		echo "$p: $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo '?')"
	done
	echo "exit: V2Ray SOCKS inbound (udp) + freedom; DNS target: nsd; per-test duration ${DUR}s; $REPS repetition(s)"
} >"$OUT/env.txt"
cat "$OUT/env.txt"

log "building the topology (namespaces ${EG_ID}-*)"
topo_up
start_services

# rep_order REP — IMPLS, with egressd and egressd_base swapped on even
# repetitions, so that neither always runs first (a drift favours neither).
rep_order() {
	local i swap=0
	[ $(($1 % 2)) = 0 ] && [[ " $IMPLS " == *" egressd "* && " $IMPLS " == *" egressd_base "* ]] && swap=1
	for i in $IMPLS; do
		if [ $swap = 1 ]; then
			case $i in egressd) i=egressd_base ;; egressd_base) i=egressd ;; esac
		fi
		echo "$i"
	done
}
if [ "$LAT_ONLY" != 1 ]; then
	for rep in $(seq 1 "$REPS"); do
		for impl in $(rep_order "$rep"); do
			run_round "$impl" "$rep"
		done
	done
fi
rm -f "$OUT/latency.txt"
if [ "$LATENCY" = 1 ] && [ -n "$LAT_IMPLS" ]; then
	latency_part || log "latency part failed"
fi

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg); elapsed $(( $(date +%s) - T0 )) s" >>"$OUT/env.txt"
say ""
if [ "$LAT_ONLY" != 1 ]; then
	title="egressd bench $(date -u '+%Y-%m-%d %H:%M UTC'), $REPS rep(s) x ${DUR}s, $(nproc) CPUs"
	btool report --samples "$SAMPLES" --out "$OUT" --impls "$IMPLS" --title "$title" ||
		log "report failed"
	if [ -s "$OUT/chart.gp" ] && ! grep -q '^# not enough' "$OUT/chart.gp"; then
		if gnuplot "$OUT/chart.gp" 2>"$EG_TMP/gnuplot.log"; then
			say "chart: $OUT/ratios.png"
		else
			log "gnuplot failed: $(tail -n 3 "$EG_TMP/gnuplot.log")"
		fi
	fi
	# Per-operation costs (not in benchtool's table): medians per implementation.
	awk -F'\t' 'NR > 1 && $2 ~ /_(cpu_us|machine_us|wakeups)$/ && $4 != "n/a" { print $2, $1, $4, $5 }' "$SAMPLES" |
		sort -k1,1 -k2,2 -k3,3g |
		awk 'function out() { if (n) printf "%-16s %-10s %10.4g %-4s (median of %d:%s)\n", km, ki, (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2, ku, n, all }
			$1 != km || $2 != ki { out(); km = $1; ki = $2; ku = $4; n = 0; all = "" }
			{ a[++n] = $3; all = all " " $3 }
			END { out() }' >"$OUT/perop.txt"
	if [ -s "$OUT/perop.txt" ]; then
		{ echo "proxy CPU (user+sys), the whole machine's busy CPU (machine_us) and the proxy's voluntary context switches per connection (wrk) and per query (dnsperf):"; cat "$OUT/perop.txt"; } >"$OUT/perop.tmp" && mv "$OUT/perop.tmp" "$OUT/perop.txt"
		say ""; cat "$OUT/perop.txt"
	fi
	# PROBE=perf: each counted event per operation, medians over the repetitions.
	if ls "$OUT"/probe/*.perf >/dev/null 2>&1; then
		for f in "$OUT"/probe/*.perf; do
			b=${f##*/}; b=${b%.perf}
			awk -v k="${b%-*}" 'NR == 1 { n = $(NF - 1) } $2 ~ /:|context-switches/ && $1 ~ /^[0-9,]+$/ {
				gsub(",", "", $1); e = $2; sub(/.*:(sys_enter_)?/, "", e); if (n > 0) print k, e, $1 / n }' "$f"
		done | sort -k1,1 -k2,2 -k3,3g |
			awk 'function out() { if (c) printf "%-22s %-18s %8.3f (median of %d)\n", kk, ke, (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2, c }
				$1 != kk || $2 != ke { out(); kk = $1; ke = $2; c = 0 } { a[++c] = $3 } END { out() }' >"$OUT/probe.txt"
		{ echo "per operation (perf stat on the proxy; sys_enter = all syscalls):"; cat "$OUT/probe.txt"; } >"$OUT/probe.tmp" && mv "$OUT/probe.tmp" "$OUT/probe.txt"
		say ""; cat "$OUT/probe.txt"
	fi
	[ -s "$OUT/latency.txt" ] && { say ""; cat "$OUT/latency.txt"; }
fi
if [ "${SCALE:-0}" = 1 ]; then
	say ""
	OUT="$OUT/scale" EGRESSD="$EGRESSD_BIN" QUICK="$QUICK" "$BENCH_DIR/scale.sh" || log "scale part failed"
fi
say "samples: $SAMPLES${LAT_SAMPLES:+, $LAT_SAMPLES}; tables: $([ "$LAT_ONLY" != 1 ] && echo "$OUT/table.txt ")$([ -s "$OUT/latency.txt" ] && echo "$OUT/latency.txt"); elapsed $(( $(date +%s) - T0 )) s"
