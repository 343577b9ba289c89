#!/usr/bin/env bash
# netns-tests/tunnels.sh — every tunnel kind against a real server from Debian,
# end to end, in network namespaces: SOCKS5 with username/password (v2ray),
# HTTP CONNECT (tinyproxy, with and without Basic auth), and Direct sockets
# (by interface, by fwmark + policy routing, by source address).
#
#  c0 10.8.0.10 fd08::10 ─┐  gw: br0 10.8.0.1 fd08::1, egressd :10900
#  c1 10.8.0.11 fd08::11 ─┤   │ v2ray 100.64.4.1 ── 100.64.4.2 xv2ray: v2ray socks (password) ─ 198.51.100.10 2001:db8:100::10
#  c2 10.8.0.12 fd08::12 ─┤   │ tp0   100.64.5.1 ── 100.64.5.2 xtp0: tinyproxy :8888 (no auth) ─ 198.51.100.11 2001:db8:100::11
#  c3 10.8.0.13 fd08::13 ─┤   │ tp1   100.64.6.1 ── 100.64.6.2 xtp1: tinyproxy :8888 BasicAuth ─ 198.51.100.12 2001:db8:100::12
#  t0 10.8.0.20 fd08::20 ─┤   │ wg0   100.64.10.1 fd64:10::1 ── .2 / ::2 xwg0: forwards, NAT ─── 198.51.100.50 2001:db8:100::50
#  t1 10.8.0.21 fd08::21 ─┼───┤       (no route in gw over wg0; v6: `ip -6 rule oif wg0 lookup 50`)
#  t2 10.8.0.22 fd08::22 ─┤   │ wg1   100.64.11.1 fd64:11::1 ── .2 / ::2 xwg1: forwards, NAT ─── 198.51.100.51 2001:db8:100::51
#  t3 10.8.0.23 fd08::23 ─┤   │       (`ip rule fwmark 0x51 lookup 51`, `ip rule from 100.64.11.1 / fd64:11::1 lookup 51`)
#  t4 10.8.0.24 (v4 only)─┤   │ uplink 198.51.100.200 (MASQUERADE: a leak shows up as .200)
#  t5 fd08::25 (v6 only) ─┘   ▼
#                            inet: who-am-i TCP 203.0.113.10:80 [2001:db8:203::10]:80, UDP :5000,
#                                  DNS 192.0.2.53 [2001:db8:203::53] (TXT whoami.test), leak detector
#
# egressd routes (its own config, written here):
#   c0 -> "v2ray"    Socks5, right password       c1 -> "v2bad"   Socks5, wrong password
#   c2 -> "http"     HttpConnect, no auth         c3 -> "httpauth" HttpConnect, Basic auth
#   t0 -> "httpbad"  HttpConnect, wrong password  t1 -> "wg0"     Direct(interface: "wg0")
#   t2 -> "mark"     Direct(mark: 81)             t3 -> "bind4" / "bind6" Direct(bind: ...)
#   t4, t5 -> "v2ray" (a v4-only and a v6-only container sharing c0's tunnel)
#
# Checks (one PASS/FAIL line each; 46 on every path, plan_checks):
#   0  control: before egressd's rules, c0 leaks out of gw's uplink (the
#      target sees .200) and the leak detector counts it; `egressd check`
#      accepts the config
#   1  SOCKS5 + password (v2ray): c0 TCP v4/v6, UDP v4/v6, DNS -> .10 / ::10;
#      wrong password (c1): 5 flows -> exactly 1 WARN line
#      naming the rejected authentication, TCP v4/v6 reset promptly, UDP dropped, nothing leaks;
#      no password in egressd's log nor in `egressd check`
#   2  HttpConnect (tinyproxy): c2 (no auth) and c3 (Basic auth) TCP v4 and v6
#      (v6 target through a v4 proxy); DNS over TCP (dig, v4 and v6 server)
#      answers the exit's address and the DNS server saw a TCP query; UDP
#      (not DNS) is dropped, not leaked; wrong password (t0): 5 flows -> 1 WARN, reset
#   3  Direct(interface: "wg0"): t1 TCP/UDP v4 and v6 -> .50; control: wg0
#      down -> reset, nothing leaks
#   4  Direct(mark: 81) + ip rule fwmark 0x51: t2 TCP/UDP v4/v6 -> .51;
#      control: without the ip rule the flow leaks out of the uplink (the
#      target sees .200, the leak detector counts it)
#   5  Direct(bind: ...) + ip rule from ADDR: t3 TCP/UDP v4/v6 -> .51
#   6  a v4-only (t4) and a v6-only (t5) container share the v2ray tunnel,
#      concurrently
#   7  nothing leaked out of gw's uplink during the run (control window of 4
#      excluded); egressd still running (a precondition, not a check)
#
# Usage: sudo netns-tests/tunnels.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
# This script brings its own exits; topology.sh's SOCKS exits are not needed.
NEXITS=0
plan_checks 46

require_root_and_tools nft iptables ip6tables curl python3 ss timeout ps dig awk v2ray tinyproxy
eg_init
T0=$(date +%s)

V2_USER=eguser
V2_PASS=v2-S3cret-9f2c41
V2_BAD=wrong-Pa55-77aa
TP_USER=tpuser
TP_PASS=tp-S3cret-0b7e55
TP_BAD=tp-wrong-Pa55-31
UDP_WHO_PORT=${UDP_WHO_PORT:-5000}

b64() { printf '%s' "$1" | base64 -w0; }

# ---------------------------------------------------------------- topology additions

# tun_link ROLE GWIF N EG4 EG6 — an exit namespace $(ns_name ROLE) linked to
# gw by GWIF (gw 100.64.N.1/24, exit 100.64.N.2/24) and to inet's bridge by
# its egress EG4/EG6; default routes into inet. Name in TUN_NS.
tun_link() {
	local role=$1 gwif=$2 n=$3 eg4=$4 eg6=$5 ns
	ns=$(ns_name "$role")
	ns_add "$ns"
	exit_links "$ns" "$gwif" "100.64.$n" 24 "to-$role" "$eg4" "$eg6"
	TUN_NS=$ns
}

# tun_router ROLE GWIF N EG4 EG6 — like tun_link, plus IPv6 on the link
# (fd64:N::1/64 in gw, ::2 here), forwarding and SNAT (MASQUERADE) to EG4/EG6
# — a stand-in for the far end of a WireGuard link. proxy_arp: a socket bound
# to GWIF in gw with no route over it ARPs for the destination itself (the
# kernel's on-link assumption; a real wg device has no ARP at all).
tun_router() {
	local n=$3
	tun_link "$@"
	ip -n "$NS_GW" addr add "fd64:$n::1/64" dev "$2" nodad
	ip -n "$TUN_NS" addr add "fd64:$n::2/64" dev gw nodad
	nsx "$TUN_NS" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
		net.ipv4.conf.gw.proxy_arp=1 >/dev/null
	nsx "$TUN_NS" iptables -w -t nat -A POSTROUTING -o egress -j MASQUERADE
	nsx "$TUN_NS" ip6tables -w -t nat -A POSTROUTING -o egress -j MASQUERADE
	# Replies come back on this link while gw's main table points at the
	# uplink: loose reverse-path filtering at most.
	nsx "$NS_GW" sysctl -qw "net.ipv4.conf.$2.rp_filter=2" >/dev/null
}

# tun_container ROLE V4 V6 — a container on br0 (either address may be empty).
tun_container() {
	local role=$1 a4=$2 a6=$3 ns
	ns=$(ns_name "$role")
	ns_add "$ns"
	ip -n "$NS_GW" link add "veth-$role" type veth peer name eth0 netns "$ns"
	ip -n "$NS_GW" link set "veth-$role" master br0 up
	ip -n "$ns" link set eth0 up
	if [ -n "$a4" ]; then
		ip -n "$ns" addr add "$a4/24" dev eth0
		ip -n "$ns" route add default via 10.8.0.1
	fi
	if [ -n "$a6" ]; then
		ip -n "$ns" addr add "$a6/64" dev eth0 nodad
		ip -n "$ns" -6 route add default via fd08::1
	fi
	TUN_NS=$ns
}

v2ray_conf() {
	cat <<-EOF
	{
	  "log": { "loglevel": "info" },
	  "inbounds": [{
	    "listen": "100.64.4.2", "port": 1080, "protocol": "socks",
	    "settings": {
	      "auth": "password",
	      "accounts": [ { "user": "$V2_USER", "pass": "$V2_PASS" } ],
	      "udp": true
	    }
	  }],
	  "outbounds": [{ "protocol": "freedom", "settings": {} }]
	}
	EOF
}

# tinyproxy_conf N [USER PASS]
tinyproxy_conf() {
	cat <<-EOF
	User nobody
	Group nogroup
	Port 8888
	Listen 100.64.$1.2
	Timeout 60
	MaxClients 200
	LogLevel Info
	Allow 100.64.$1.1
	ConnectPort 80
	ConnectPort 53
	ConnectPort $UDP_WHO_PORT
	DisableViaHeader Yes
	EOF
	[ $# -ge 3 ] && printf 'BasicAuth %s %s\n' "$2" "$3"
}

# ---------------------------------------------------------------- check helpers

# dig_is_or_skip NAME NS WANT — check: NS's dig TXT whoami.test @$PUBDNS4
# answers WANT (skipped when inet has no DNS server).
dig_is_or_skip() {
	if [ "$HAVE_DNS" = 1 ]; then
		dns_is "$1 dig TXT whoami.test @$PUBDNS4" "$2" "$PUBDNS4" "$3"
	else
		skip_check "$1 dig TXT whoami.test" "no DNS server on $PUBDNS4:53 in inet (topology.sh)"
	fi
}

# wrong_password NAME NS TAG RE — check: five flows from NS through tunnel
# TAG (a wrong password) are all reset, with exactly one WARN line (it is
# rate-limited per tunnel; the flows of one source share a worker), which
# matches RE (grep -iE).
wrong_password() {
	local name=$1 ns=$2 tag=$3 re=$4 nres nwarn
	: >"$EG_TMP/five.out"
	five_flows "$ns" "$TARGET4"
	nres=$(grep -cE '^(reset|refused)' "$EG_TMP/five.out" || true)
	nwarn=$(warn_count "$tag")
	if [ "$nwarn" -eq 1 ] && warn_lines "$tag" | grep -qiE "$re" && [ "$nres" -eq 5 ]; then
		pass "$name: 5 flows reset, exactly 1 WARN line: $(warn_lines "$tag" | sed 's/^.*\] //')"
	else
		fail "$name: 5 flows -> one WARN line ($re)" \
			"$nwarn WARN lines ($(warn_lines "$tag" | head -n 2 | tr '\n' ' ')); $nres/5 flows reset: $(sort "$EG_TMP/five.out" | uniq -c | tr '\n' ' ')"
	fi
}

dns_log_count() { grep -c "^dns $1 $2 " "$EG_TMP/udpsvc.log" 2>/dev/null || true; }

# dns_tcp_is CI SERVER WANT — c<CI> (an HttpConnect tunnel: no UDP) digs
# whoami.test at SERVER over UDP; egressd carries it over the tunnel's TCP:
# the answer is WANT and the DNS server saw a TCP query from WANT.
dns_tcp_is() {
	local ci=$1 srv=$2 want=$3 n0 n1 got
	n0=$(dns_log_count tcp "$want")
	got=$(dig_txt "${NS_C[ci]}" "$srv")
	n1=$(dns_log_count tcp "$want")
	if [ "$got" = "$want" ] && [ "$n1" -gt "$n0" ]; then
		pass "2 DNS over TCP through HttpConnect: c$ci dig TXT whoami.test @$srv answers $got (a TCP query from $want)"
	else
		fail "2 DNS over TCP through HttpConnect: c$ci dig @$srv" \
			"dig said '$got' (want $want); TCP queries from $want seen: $((n1 - n0))"
	fi
}

# expect_reset NAME NS HOST PORT — the client's connection is reset within 2 s.
expect_reset() {
	local name=$1 ns=$2 out t
	out=$(egtool "$ns" expect-reset "$3" "$4" 2>&1)
	case $out in
	reset* | refused*)
		t=${out##* }
		t=${t%s}
		if awk -v t="$t" 'BEGIN { exit !(t < 2.0) }'; then
			pass "$name ($out)"
		else
			fail "$name" "reset, but only after $t s"
		fi
		;;
	*) fail "$name" "got: $out" ;;
	esac
}

# warn_lines TUNNEL — WARN lines of egressd's log about TUNNEL.
warn_lines() { grep -E ' WARN ' "$EGRESSD_LOG" | grep -F "via $1:" || true; }
warn_count() { warn_lines "$1" | grep -c . || true; }

# five_flows NS HOST — 5 connections (sequential, each bounded).
five_flows() {
	local i
	for i in 1 2 3 4 5; do egtool "$1" expect-reset "$2" 80 >>"$EG_TMP/five.out" 2>&1; done
}

# ---------------------------------------------------------------- build, topology

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"

topo_up
tun_link xv2ray v2ray 4 198.51.100.10 2001:db8:100::10
NS_V2=$TUN_NS
tun_link xtp0 tp0 5 198.51.100.11 2001:db8:100::11
NS_TP0=$TUN_NS
tun_link xtp1 tp1 6 198.51.100.12 2001:db8:100::12
NS_TP1=$TUN_NS
tun_router xwg0 wg0 10 198.51.100.50 2001:db8:100::50
tun_router xwg1 wg1 11 198.51.100.51 2001:db8:100::51
# wg0: no route in gw over it for IPv4 (the socket's SO_BINDTODEVICE picks
# it); IPv6 has no on-link fallback for a bound socket (ENETUNREACH), so
# only sockets bound to wg0 get a table with a route over it.
nsx "$NS_GW" ip -6 rule add oif wg0 lookup 50 priority 150
nsx "$NS_GW" ip -6 route add default via fd64:10::2 dev wg0 table 50
# wg1: policy routing by mark 0x51 (Direct(mark: 81)) and by source address
# (Direct(bind: ...)).
nsx "$NS_GW" ip route add default via 100.64.11.2 dev wg1 table 51
nsx "$NS_GW" ip -6 route add default via fd64:11::2 dev wg1 table 51
nsx "$NS_GW" ip rule add fwmark 0x51 lookup 51 priority 151
nsx "$NS_GW" ip -6 rule add fwmark 0x51 lookup 51 priority 151
nsx "$NS_GW" ip rule add from 100.64.11.1 lookup 51 priority 152
nsx "$NS_GW" ip -6 rule add from fd64:11::1 lookup 51 priority 152

for i in 0 1 2 3 4 5; do
	case $i in
	4) tun_container "t$i" "10.8.0.2$i" "" ;;
	5) tun_container "t$i" "" "fd08::2$i" ;;
	*) tun_container "t$i" "10.8.0.2$i" "fd08::2$i" ;;
	esac
	NS_T[i]=$TUN_NS
done

topo_start_services
HAVE_DNS=1
wait_tcp_listen "$NS_INET" 53 "$PUBDNS4" 5 || HAVE_DNS=0

# ---- the servers
v2ray_conf >"$EG_TMP/v2ray.json"
# v2ray 4.x (Debian 12): `v2ray -config FILE`; 5.x: `v2ray run -c FILE`
# (which still reads this v4-style JSON).
if timeout 5 v2ray -version </dev/null 2>&1 | grep -q 'V2Ray 4\.'; then
	eg_spawn "$NS_V2" "$EG_TMP/v2ray.log" v2ray -config "$EG_TMP/v2ray.json"
else
	eg_spawn "$NS_V2" "$EG_TMP/v2ray.log" v2ray run -c "$EG_TMP/v2ray.json"
fi
wait_tcp_listen "$NS_V2" 1080 100.64.4.2 15 || die "v2ray did not start: $(tail -n 5 "$EG_TMP/v2ray.log")"
tinyproxy_conf 5 >"$EG_TMP/tinyproxy0.conf"
tinyproxy_conf 6 "$TP_USER" "$TP_PASS" >"$EG_TMP/tinyproxy1.conf"
chmod 644 "$EG_TMP"/tinyproxy*.conf
eg_spawn "$NS_TP0" "$EG_TMP/tinyproxy0.log" tinyproxy -d -c "$EG_TMP/tinyproxy0.conf"
eg_spawn "$NS_TP1" "$EG_TMP/tinyproxy1.log" tinyproxy -d -c "$EG_TMP/tinyproxy1.conf"
wait_tcp_listen "$NS_TP0" 8888 100.64.5.2 15 || die "tinyproxy in xtp0 did not start: $(tail -n 5 "$EG_TMP/tinyproxy0.log")"
wait_tcp_listen "$NS_TP1" 8888 100.64.6.2 15 || die "tinyproxy in xtp1 did not start: $(tail -n 5 "$EG_TMP/tinyproxy1.log")"

# ---- egressd
CONF=$EG_TMP/egressd.ron
cat >"$CONF" <<EOF
(
    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
    tunnels: {
        "v2ray": Socks5(server: "100.64.4.2:1080", username: "$V2_USER", password: "$V2_PASS"),
        "v2bad": Socks5(server: "100.64.4.2:1080", username: "$V2_USER", password: "$V2_BAD"),
        "http": HttpConnect(server: "100.64.5.2:8888"),
        "httpauth": HttpConnect(server: "100.64.6.2:8888", username: "$TP_USER", password: "$TP_PASS"),
        "httpbad": HttpConnect(server: "100.64.6.2:8888", username: "$TP_USER", password: "$TP_BAD"),
        "wg0": Direct(interface: "wg0"),
        "mark": Direct(mark: 81),
        "bind4": Direct(bind: "100.64.11.1"),
        "bind6": Direct(bind: "fd64:11::1"),
    },
    routes: [
        (source: "10.8.0.10", tunnel: "v2ray"), (source: "fd08::10", tunnel: "v2ray"),
        (source: "10.8.0.11", tunnel: "v2bad"), (source: "fd08::11", tunnel: "v2bad"),
        (source: "10.8.0.12", tunnel: "http"), (source: "fd08::12", tunnel: "http"),
        (source: "10.8.0.13", tunnel: "httpauth"), (source: "fd08::13", tunnel: "httpauth"),
        (source: "10.8.0.20", tunnel: "httpbad"), (source: "fd08::20", tunnel: "httpbad"),
        (source: "10.8.0.21", tunnel: "wg0"), (source: "fd08::21", tunnel: "wg0"),
        (source: "10.8.0.22", tunnel: "mark"), (source: "fd08::22", tunnel: "mark"),
        (source: "10.8.0.23", tunnel: "bind4"), (source: "fd08::23", tunnel: "bind6"),
        (source: "10.8.0.24", tunnel: "v2ray"), (source: "fd08::25", tunnel: "v2ray"),
    ],
    intercept: (sources: ["10.8.0.0/24", "fd08::/64"]),
    control: (socket: "$EG_TMP/egressd.sock"),
)
EOF

# ------------------------------------------------------------------ 0 controls
# Before egressd's rules, c0 goes out of gw's uplink: the target sees .200
# and the leak detector counts it (so every "nothing leaked" below can fail).
leak0=$(leak_count)
seen=$(curl_whoami "${NS_C[0]}")
leak1=$(leak_count)
if [ "$seen" = "$GW_UPLINK4" ] && [ "$leak1" -gt "$leak0" ]; then
	pass "0 control: without egressd c0 leaks as $seen and the leak detector counts it ($((leak1 - leak0)) packets)"
else
	fail "0 control: without egressd c0 should leak via the uplink" "target saw '$seen', detector delta $((leak1 - leak0))"
fi

"$(egressd_bin)" check --config "$CONF" >"$EG_TMP/check.out" 2>&1
check_rc=$?
if [ "$check_rc" -eq 0 ]; then
	pass "0 egressd check accepts the config (9 tunnels: Socks5, HttpConnect, Direct)"
else
	fail "0 egressd check" "exit $check_rc: $(tail -n 3 "$EG_TMP/check.out" | tr '\n' ' ')"
fi
EGRESSD_LOG=$EG_TMP/egressd.log
egressd_up_or_exit "$CONF"
LEAK_START=$(leak_count)

E_V2=198.51.100.10
E_V26=2001:db8:100::10
E_TP0=198.51.100.11
E_TP06=2001:db8:100::11
E_TP1=198.51.100.12
E_TP16=2001:db8:100::12
E_WG0=198.51.100.50
E_WG06=2001:db8:100::50
E_WG1=198.51.100.51
E_WG16=2001:db8:100::51

# ------------------------------------------------------------------ 1 SOCKS5 + password (v2ray)
tcp_udp_are "1 v2ray (SOCKS5, password): c0" "${NS_C[0]}" "$E_V2" "$E_V26"
dig_is_or_skip "1 v2ray: c0" "${NS_C[0]}" "$E_V2"

# wrong password: 5 flows from one container -> exactly one WARN line naming
# the rejected authentication, each flow reset promptly, nothing leaks.
leak0=$(leak_count)
wrong_password "1 v2ray wrong password" "${NS_C[1]}" v2bad 'auth'
expect_reset "1 v2ray wrong password: c1 TCP v4 is reset promptly" "${NS_C[1]}" "$TARGET4" 80
expect_reset "1 v2ray wrong password: c1 TCP v6 is reset promptly" "${NS_C[1]}" "$TARGET6" 80
out=$(udptool "${NS_C[1]}" none "$TARGET4" "$UDP_WHO_PORT" 2 2>&1)
leak1=$(leak_count)
if [ "$out" = "no reply" ] && [ "$leak1" -eq "$leak0" ]; then
	pass "1 v2ray wrong password: c1 UDP gets no reply, nothing reaches inet from gw's uplink"
else
	fail "1 v2ray wrong password: fails closed" "UDP: '$out'; leak detector counted $((leak1 - leak0)) packets"
fi

# ------------------------------------------------------------------ 2 HttpConnect (tinyproxy)
tcp_is "2 tinyproxy (HTTP CONNECT, no auth): c2 TCP v4" "${NS_C[2]}" "$E_TP0"
tcp_is "2 tinyproxy (HTTP CONNECT, no auth): c2 TCP v6 via the v4 proxy" "${NS_C[2]}" -6 "$E_TP06"
tcp_is "2 tinyproxy (HTTP CONNECT, Basic auth): c3 TCP v4" "${NS_C[3]}" "$E_TP1"
tcp_is "2 tinyproxy (HTTP CONNECT, Basic auth): c3 TCP v6 via the v4 proxy" "${NS_C[3]}" -6 "$E_TP16"
if [ "$HAVE_DNS" = 1 ]; then
	dns_tcp_is 2 "$PUBDNS4" "$E_TP0"
	dns_tcp_is 3 "$PUBDNS4" "$E_TP1"
	dns_tcp_is 2 "$PUBDNS6" "$E_TP06"
else
	skip_n 3 "2 DNS over TCP through HttpConnect" "no DNS server on $PUBDNS4:53 in inet (topology.sh)"
fi
leak0=$(leak_count)
out=$(udptool "${NS_C[2]}" none "$TARGET4" "$UDP_WHO_PORT" 2 2>&1)
if [ "$out" = "no reply" ]; then
	pass "2 HttpConnect has no UDP: c2's UDP (not DNS) to $TARGET4:$UDP_WHO_PORT gets no reply"
else
	fail "2 HttpConnect: UDP (not DNS) must be dropped" "got '$out'"
fi
# wrong password: tinyproxy answers 401 (not 407); same expectations as for v2ray
wrong_password "2 tinyproxy wrong password" "${NS_T[0]}" httpbad '40[17]|auth'
expect_reset "2 tinyproxy wrong password: t0 TCP v4 is reset promptly" "${NS_T[0]}" "$TARGET4" 80
expect_reset "2 tinyproxy wrong password: t0 TCP v6 is reset promptly" "${NS_T[0]}" "$TARGET6" 80
leak1=$(leak_count)
if [ "$leak1" -eq "$leak0" ]; then
	pass "2 HttpConnect: no UDP and wrong password fail closed, nothing reaches inet from gw's uplink"
else
	fail "2 HttpConnect: fail closed" "the leak detector counted $((leak1 - leak0)) packets"
fi

# ------------------------------------------------------------------ 3 Direct(interface)
tcp_udp_are "3 Direct(interface: wg0): t1" "${NS_T[1]}" "$E_WG0" "$E_WG06"
dig_is_or_skip "3 Direct(interface: wg0): t1" "${NS_T[1]}" "$E_WG0"
# control: the link down -> the flow fails closed (never out of the uplink)
leak0=$(leak_count)
ip -n "$NS_GW" link set wg0 down
expect_reset "3 Direct(interface: wg0) control: wg0 down, t1 TCP v4 is reset" "${NS_T[1]}" "$TARGET4" 80
out=$(udptool "${NS_T[1]}" none "$TARGET4" "$UDP_WHO_PORT" 2 2>&1)
leak1=$(leak_count)
ip -n "$NS_GW" link set wg0 up
# (link down flushed wg0's IPv6 address and the routes over it)
ip -n "$NS_GW" addr replace fd64:10::1/64 dev wg0 nodad
nsx "$NS_GW" ip -6 route replace default via fd64:10::2 dev wg0 table 50
if [ "$out" = "no reply" ] && [ "$leak1" -eq "$leak0" ]; then
	pass "3 Direct(interface: wg0) control: wg0 down, UDP gets no reply, nothing reaches inet"
else
	fail "3 Direct(interface: wg0) control: wg0 down must fail closed" "UDP '$out'; leak detector counted $((leak1 - leak0)) packets"
fi
wg0_works() { [ "$(curl_whoami "${NS_T[1]}")" = "$E_WG0" ]; }
wait_until 5 wg0_works || true
tcp_is "3 Direct(interface: wg0): t1 TCP v4 again after wg0 is back up" "${NS_T[1]}" "$E_WG0"

# ------------------------------------------------------------------ 4 Direct(mark) + policy routing
tcp_udp_are "4 Direct(mark: 81) + ip rule fwmark 0x51: t2" "${NS_T[2]}" "$E_WG1" "$E_WG16"
# control: without the ip rule, the marked socket follows gw's main table
# (the uplink, as .200): egressd's mark alone does not pick wg1. This window
# should leak: the target must see the uplink's address and the leak
# detector must count it (a curl error is not "another exit").
LEAK_CTL0=$(leak_count)
nsx "$NS_GW" ip rule del fwmark 0x51 lookup 51 priority 151
seen=$(curl_whoami "${NS_T[2]}")
nsx "$NS_GW" ip rule add fwmark 0x51 lookup 51 priority 151
LEAK_CTL1=$(leak_count)
if [ "$seen" = "$GW_UPLINK4" ] && [ "$LEAK_CTL1" -gt "$LEAK_CTL0" ]; then
	pass "4 Direct(mark: 81) control: without the ip rule the flow leaves by the uplink (target sees $seen, the leak detector counts $((LEAK_CTL1 - LEAK_CTL0)) packets)"
else
	fail "4 Direct(mark: 81) control: without the ip rule the flow should leave by the uplink" \
		"target saw '$seen' (want $GW_UPLINK4), leak detector +$((LEAK_CTL1 - LEAK_CTL0))"
fi
tcp_is "4 Direct(mark: 81): t2 TCP v4 again with the ip rule back" "${NS_T[2]}" "$E_WG1"

# ------------------------------------------------------------------ 5 Direct(bind)
tcp_is "5 Direct(bind: 100.64.11.1) + ip rule from: t3 TCP v4" "${NS_T[3]}" "$E_WG1"
tcp_is "5 Direct(bind: fd64:11::1) + ip rule from: t3 TCP v6" "${NS_T[3]}" -6 "$E_WG16"
udp_is "5 Direct(bind: 100.64.11.1): t3 UDP v4" "${NS_T[3]}" "$TARGET4" "$E_WG1"
udp_is "5 Direct(bind: fd64:11::1): t3 UDP v6" "${NS_T[3]}" "$TARGET6" "$E_WG16"

# ------------------------------------------------------------------ 6 v4-only + v6-only containers, one tunnel
curl_whoami "${NS_T[4]}" >"$EG_TMP/t4.out" 2>&1 &
p4=$!
curl_whoami "${NS_T[5]}" -6 >"$EG_TMP/t5.out" 2>&1 &
p5=$!
wait "$p4" "$p5"
s4=$(cat "$EG_TMP/t4.out")
s6=$(cat "$EG_TMP/t5.out")
if [ "$s4" = "$E_V2" ] && [ "$s6" = "$E_V26" ]; then
	pass "6 v4-only t4 and v6-only t5 share the v2ray tunnel at once (target sees $s4 and $s6)"
else
	fail "6 v4-only t4 and v6-only t5 sharing the v2ray tunnel" "saw '$s4' / '$s6', want $E_V2 / $E_V26"
fi
udp_is "6 v4-only t4 UDP through the shared v2ray tunnel" "${NS_T[4]}" "$TARGET4" "$E_V2"
udp_is "6 v6-only t5 UDP through the shared v2ray tunnel" "${NS_T[5]}" "$TARGET6" "$E_V26"

# ------------------------------------------------------------------ 7 credentials, leaks, liveness
secrets_found=""
for s in "$V2_PASS" "$V2_BAD" "$TP_PASS" "$TP_BAD" "$(b64 "$TP_USER:$TP_PASS")" "$(b64 "$TP_USER:$TP_BAD")"; do
	grep -qF -- "$s" "$EGRESSD_LOG" && secrets_found="$secrets_found log:$s"
	grep -qF -- "$s" "$EG_TMP/check.out" && secrets_found="$secrets_found check:$s"
done
if [ -z "$secrets_found" ] && [ -s "$EGRESSD_LOG" ] && [ -s "$EG_TMP/check.out" ]; then
	pass "7 no password (nor Basic token) in egressd's debug log ($(wc -l <"$EGRESSD_LOG") lines) nor in egressd check's output"
else
	fail "7 credentials must never be printed" "found:$secrets_found"
fi
LEAK_END=$(leak_count)
leaked=$((LEAK_END - LEAK_START - (LEAK_CTL1 - LEAK_CTL0)))
if [ "$leaked" -eq 0 ]; then
	pass "7 nothing left gw by its uplink during the run (the mark control's $((LEAK_CTL1 - LEAK_CTL0)) packets aside)"
else
	fail "7 leaks during the run" "the leak detector counted $leaked packets outside the mark control"
fi
if pid_gone "$EGRESSD_PID"; then
	fail_unplanned "egressd still running at the end" "it exited: $(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
fi
log "tunnels.sh took $(($(date +%s) - T0)) s"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
summary
