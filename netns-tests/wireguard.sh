#!/usr/bin/env bash
# netns-tests/wireguard.sh — Direct(interface) over a real WireGuard tunnel
# (wireguard-go in user space: this kernel has no WireGuard module, /dev/net/tun
# works), end to end, in network namespaces.
#
#  c0 10.8.0.10 fd08::10 ─┐  gw: br0 10.8.0.1 fd08::1, egressd :10900
#                         ├─ c0 -> "wg": Direct(interface: "<EG_ID>w")
#                         │
#                         │  <EG_ID>w (wireguard-go, MTU 1420) 100.64.20.1/30 fd64:20::1/64
#                         │     peer: the exit, allowed-ips 0.0.0.0/0 ::/0, endpoint 100.64.21.2:51820
#                         │     v4: no route over it (SO_BINDTODEVICE picks it, on link);
#                         │     v6: `ip -6 rule add oif <if> lookup 20` + `default dev <if> table 20`
#                         │  wgul 100.64.21.1/30 ── 100.64.21.2/30 (the underlay: UDP 51820)
#                         │                         xwg: <EG_ID>x 100.64.20.2/30 fd64:20::2/64
#                         │                              peer: gw, allowed-ips 100.64.20.1/32 fd64:20::1/128
#                         │                              forwards, MASQUERADE out of egress
#                         │                              198.51.100.60 2001:db8:100::60
#                         │ uplink 198.51.100.200 (MASQUERADE: a leak shows up as .200)
#                         ▼
#  inet: who-am-i TCP 203.0.113.10:80 [2001:db8:203::10]:80, UDP :5000, DNS 192.0.2.53
#        [2001:db8:203::53] (TXT whoami.test), the leak detector
#
# wireguard-go's control sockets live in /var/run/wireguard/ (shared by all
# namespaces): both interfaces are named after this run's EG_ID; wireguard-go
# runs in the foreground (-f), tracked and stopped by PID, and removes its
# socket when it exits (the cleanup hook removes our two if it did not).
#
# Checks (one PASS/FAIL line each; 16 on every path, plan_checks):
#   1  control: before egressd's rules c0 leaks as .200 and the leak detector counts it
#   2  the tunnel is real: gw pings the exit over it, both ends show a handshake
#   3-8 c0 TCP v4/v6, UDP v4/v6, DNS v4/v6 (dig TXT whoami.test) -> the exit's address
#   9  20 MB down + 5 MB up (sha256) through the tunnel (MTU 1420), and gw's
#      WireGuard transfer counters grew by at least that much
#   10 full-size UDP datagrams (1472 bytes v4, 1452 v6: larger than the
#      tunnel's MTU) arrive, fragmented by gw's own stack
#   11 rp_filter=1 (strict) on the WireGuard interface drops the replies (their
#      source is routed via the uplink), shown by what failed and by the
#      kernel's counter: c0's curl connects (to egressd's listener) and then
#      times out with 0 bytes (exit 28), the replies did arrive on the
#      interface (its rx_packets grew) and gw's IPReversePathFilter counter
#      (/proc/net/netstat) grew, nothing leaks; positive control: rp_filter
#      back to 2 (loose), the same curl gets the exit's address and the
#      counter does not move
#   12 IPv6 without the `oif` rule: the flow is reset (ENETUNREACH), nothing leaks
#   13-15 the WireGuard interface down: TCP v4 and v6 reset, UDP and DNS get
#      nothing, nothing leaks
#   16 up again: TCP v4 and v6 work; nothing left gw by its uplink during the
#      run (control 1 excepted)
#
# Usage: sudo netns-tests/wireguard.sh (EGRESSD=path, EG_KEEP_TMP=1 keeps logs).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 16
# shellcheck source=topology.sh
. "$HERE/topology.sh"
NEXITS=0
NCONT=1

require_root_and_tools nft iptables ip6tables curl python3 ss timeout ps dig awk wg wireguard-go
eg_init
T0=$(date +%s)

# Interface names unique to this run (IFNAMSIZ: at most 15 characters).
WG_GW=$(printf '%.14s' "$EG_ID")w
WG_EX=$(printf '%.14s' "$EG_ID")x
WG_PORT=51820
E4=198.51.100.60
E6=2001:db8:100::60
V6_TABLE=20

eg_cleanup_hook() {
	local n
	for n in "$WG_GW" "$WG_EX"; do rm -f "/var/run/wireguard/$n.sock"; done
}

# ---------------------------------------------------------------- check helpers
# (tcp_is, udp_is, dns_is, ip_of: topology.sh)

# reset_within NS HOST PORT — "ok (...)" when the connection is reset or
# refused within 2 s, else what happened.
reset_within() {
	local out t
	out=$(egtool "$1" expect-reset "$2" "$3" 2>&1)
	case $out in
	reset* | refused*)
		t=${out##* }
		t=${t%s}
		if awk -v t="$t" 'BEGIN { exit !(t < 2.0) }'; then echo "ok ($out)"; else echo "reset after $t s"; fi
		;;
	*) echo "got: $out" ;;
	esac
}

# wg_bytes NS IF — rx+tx bytes of the interface's peers.
wg_bytes() {
	nsx "$1" wg show "$2" transfer | awk '{ s += $2 + $3 } END { print s + 0 }'
}
# rpf_drops — packets gw's kernel dropped by reverse-path filtering
# (TcpExt IPReversePathFilter); dies when it cannot be read (never "0").
rpf_drops() {
	local n
	# shellcheck disable=SC2016  # awk's own $ fields
	n=$(nsx "$NS_GW" awk '$1 == "TcpExt:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "IPReversePathFilter") c = i; h = 1 } else if (c) { print $c; exit } }' /proc/net/netstat)
	case $n in '' | *[!0-9]*) die "cannot read IPReversePathFilter from gw's /proc/net/netstat: '$n'" ;; esac
	printf '%s\n' "$n"
}
# wg_rx_packets — packets received on gw's WireGuard interface.
wg_rx_packets() {
	local n
	n=$(nsx "$NS_GW" cat "/sys/class/net/$WG_GW/statistics/rx_packets" 2>&1)
	case $n in '' | *[!0-9]*) die "cannot read rx_packets of $WG_GW: '$n'" ;; esac
	printf '%s\n' "$n"
}
# rp_curl — c0's HTTP GET of the v4 who-am-i: "RC CONNECT_S BYTES BODY" (curl's
# exit code, the time its TCP connect took, 0 if it never connected, the
# bytes received and the body), then curl's error if any.
rp_curl() {
	local w rc
	# curl creates the body file only when bytes came
	: >"$EG_TMP/rp.body"
	w=$(nsx "${NS_C[0]}" curl -sS --max-time 5 -o "$EG_TMP/rp.body" -w '%{time_connect} %{size_download}' \
		"http://$TARGET4/" 2>"$EG_TMP/rp.err")
	rc=$?
	printf '%s %s %s %s\n' "$rc" "${w:-? ?}" "$(tr -d '\r\n' <"$EG_TMP/rp.body")" "$(tr '\n' ' ' <"$EG_TMP/rp.err")"
	rm -f "$EG_TMP/rp.body" "$EG_TMP/rp.err"
}
# wg_handshake NS IF — seconds since the epoch of the latest handshake (0: none).
wg_handshake() {
	nsx "$1" wg show "$2" latest-handshakes | awk '{ print $2 + 0; exit }'
}

# ---------------------------------------------------------------- topology

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
topo_up
NS_X=$(ns_name xwg)
ns_add "$NS_X"
# the underlay gw <-> xwg (carries WireGuard's UDP) and the exit's egress into inet
exit_links "$NS_X" wgul 100.64.21 30 to-xwg "$E4" "$E6"
nsx "$NS_X" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null
nsx "$NS_X" iptables -w -t nat -A POSTROUTING -o egress -j MASQUERADE
nsx "$NS_X" ip6tables -w -t nat -A POSTROUTING -o egress -j MASQUERADE

# ---- WireGuard: keys, wireguard-go in each namespace, wg set
(
	umask 077
	wg genkey >"$EG_TMP/gw.key" && wg genkey >"$EG_TMP/x.key" &&
		wg pubkey <"$EG_TMP/gw.key" >"$EG_TMP/gw.pub" && wg pubkey <"$EG_TMP/x.key" >"$EG_TMP/x.pub"
) || die "wg genkey/pubkey failed"
for n in "$WG_GW" "$WG_EX"; do
	[ -e "/var/run/wireguard/$n.sock" ] && die "/var/run/wireguard/$n.sock exists: another run uses the name $n"
done
wg_up_dev() { # NS IF
	nsx "$1" ip link show "$2" >/dev/null 2>&1 && [ -S "/var/run/wireguard/$2.sock" ]
}
eg_spawn "$NS_GW" "$EG_TMP/wg-gw.log" wireguard-go -f "$WG_GW"
WGGO_GW=$EG_LAST_PID
eg_spawn "$NS_X" "$EG_TMP/wg-x.log" wireguard-go -f "$WG_EX"
WGGO_X=$EG_LAST_PID
wait_until 10 wg_up_dev "$NS_GW" "$WG_GW" || die "wireguard-go did not create $WG_GW in gw: $(tail -n 3 "$EG_TMP/wg-gw.log")"
wait_until 10 wg_up_dev "$NS_X" "$WG_EX" || die "wireguard-go did not create $WG_EX in xwg: $(tail -n 3 "$EG_TMP/wg-x.log")"
nsx "$NS_GW" wg set "$WG_GW" private-key "$EG_TMP/gw.key" listen-port "$WG_PORT" \
	peer "$(cat "$EG_TMP/x.pub")" allowed-ips 0.0.0.0/0,::/0 endpoint "100.64.21.2:$WG_PORT" ||
	die "wg set $WG_GW failed"
nsx "$NS_X" wg set "$WG_EX" private-key "$EG_TMP/x.key" listen-port "$WG_PORT" \
	peer "$(cat "$EG_TMP/gw.pub")" allowed-ips 100.64.20.1/32,fd64:20::1/128 ||
	die "wg set $WG_EX failed"
# wg_addr_gw — the gw side's addresses and IPv6 route (again after a link down,
# which flushes IPv6 addresses and every route over the link).
wg_addr_gw() {
	ip -n "$NS_GW" addr replace 100.64.20.1/30 dev "$WG_GW"
	ip -n "$NS_GW" link set "$WG_GW" up
	ip -n "$NS_GW" addr replace fd64:20::1/64 dev "$WG_GW" nodad
	nsx "$NS_GW" ip -6 route replace default dev "$WG_GW" table "$V6_TABLE"
}
wg_addr_gw
ip -n "$NS_X" addr add 100.64.20.2/30 dev "$WG_EX"
ip -n "$NS_X" addr add fd64:20::2/64 dev "$WG_EX" nodad
ip -n "$NS_X" link set "$WG_EX" up
# IPv6 has no on-link fallback for a socket bound to a device without a
# route over it (ENETUNREACH): give sockets bound to the interface a table.
nsx "$NS_GW" ip -6 rule add oif "$WG_GW" lookup "$V6_TABLE" priority 150
# Replies arrive on the WireGuard interface from addresses gw's main table
# routes via the uplink: reverse-path filtering must be loose there.
nsx "$NS_GW" sysctl -qw "net.ipv4.conf.$WG_GW.rp_filter=2" >/dev/null

topo_start_services

CONF=$EG_TMP/egressd.ron
cat >"$CONF" <<EOF
(
    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
    tunnels: {
        "wg": Direct(interface: "$WG_GW"),
    },
    routes: [
        (source: "10.8.0.10", tunnel: "wg"), (source: "fd08::10", tunnel: "wg"),
    ],
    dns: (upstream: "192.0.2.53:53"),
    control: (socket: "$EG_TMP/egressd.sock"),
)
EOF

# ------------------------------------------------------------------ 1 control
leak0=$(leak_count)
seen=$(curl_whoami "${NS_C[0]}")
leak1=$(leak_count)
LEAK_CTL=$((leak1 - leak0))
if [ "$seen" = "$GW_UPLINK4" ] && [ "$LEAK_CTL" -gt 0 ]; then
	pass "1 control: without egressd c0 leaks as $seen and the leak detector counts it ($LEAK_CTL packets)"
else
	fail "1 control: without egressd c0 should leak via the uplink" "target saw '$seen', detector delta $LEAK_CTL"
fi

# ------------------------------------------------------------------ 2 the tunnel is real
out=$(ping_result "$NS_GW" 100.64.20.2 2)
h_gw=$(wg_handshake "$NS_GW" "$WG_GW")
h_x=$(wg_handshake "$NS_X" "$WG_EX")
if [ "$out" = reply ] && [ "$h_gw" -gt 0 ] && [ "$h_x" -gt 0 ]; then
	pass "2 real WireGuard: gw pings the exit over $WG_GW (MTU $(nsx "$NS_GW" cat "/sys/class/net/$WG_GW/mtu")), both ends report a handshake"
else
	fail "2 real WireGuard handshake" "ping: $out; handshakes gw=$h_gw exit=$h_x"
fi

EGRESSD_LOG=$EG_TMP/egressd.log
egressd_up_or_exit "$CONF"
LEAK_START=$(leak_count)

# ------------------------------------------------------------------ 3-8 identity
tcp_is "3 Direct(interface: WireGuard): c0 TCP v4" "${NS_C[0]}" "$E4"
tcp_is "4 Direct(interface: WireGuard): c0 TCP v6" "${NS_C[0]}" -6 "$E6"
udp_is "5 Direct(interface: WireGuard): c0 UDP v4" "${NS_C[0]}" "$TARGET4" "$E4"
udp_is "6 Direct(interface: WireGuard): c0 UDP v6" "${NS_C[0]}" "$TARGET6" "$E6"
dns_is "7 Direct(interface: WireGuard): c0 DNS v4 (dig TXT whoami.test @$PUBDNS4)" "${NS_C[0]}" "$PUBDNS4" "$E4"
dns_is "8 Direct(interface: WireGuard): c0 DNS v6 (dig TXT whoami.test @$PUBDNS6)" "${NS_C[0]}" "$PUBDNS6" "$E6"

# ------------------------------------------------------------------ 9 bulk through the tunnel
b0=$(wg_bytes "$NS_GW" "$WG_GW")
down=$(egtool "${NS_C[0]}" download "$TARGET4" 9002 20000000 2>&1)
up=$(egtool "${NS_C[0]}" upload "$TARGET6" 9006 5000000 2>&1)
b1=$(wg_bytes "$NS_GW" "$WG_GW")
if [ "${down%% *}" = ok ] && [ "${up%% *}" = ok ] && [ $((b1 - b0)) -ge 25000000 ]; then
	pass "9 20 MB down (v4) + 5 MB up (v6) intact through WireGuard; $WG_GW carried $((b1 - b0)) bytes"
else
	fail "9 bulk through WireGuard" "download: $down; upload: $up; $WG_GW carried $((b1 - b0)) bytes"
fi

# ------------------------------------------------------------------ 10 UDP larger than the tunnel's MTU
# The container's link has MTU 1500, the WireGuard interface 1420: full-size
# datagrams (1472 bytes v4, 1452 v6) leave egressd's socket on the tunnel
# fragmented by gw's own stack, and arrive whole.
ops_tool() { EG_TOOL_TIMEOUT=60 pytool ops_tool "$@"; }
big4=$(ops_tool "${NS_C[0]}" udp-burst "$TARGET4" "$UDP_WHO_PORT" 5 1472 2>&1)
big6=$(ops_tool "${NS_C[0]}" udp-burst "$TARGET6" "$UDP_WHO_PORT" 5 1452 2>&1)
case "$big4|$big6" in
"sent 5 bytes 7360 recv 5 "*" peers $E4|sent 5 bytes 7260 recv 5 "*" peers $E6")
	pass "10 UDP larger than $WG_GW's MTU: 5 x 1472 bytes (v4) and 5 x 1452 (v6) reach the target as $E4 / $E6"
	;;
*) fail "10 UDP datagrams larger than the WireGuard MTU" "v4: $big4; v6: $big6" ;;
esac

# ------------------------------------------------------------------ 11 strict reverse-path filtering
# Replies arrive on the WireGuard interface from addresses that gw's main
# table routes via the uplink: with rp_filter=1 (strict; RHEL's default) the
# kernel drops them (counting each in IPReversePathFilter), so egressd's
# connect over the tunnel never completes and c0's curl, connected to
# egressd, times out with nothing; 2 (loose) lets them in.
leak0=$(leak_count)
nsx "$NS_GW" sysctl -qw "net.ipv4.conf.$WG_GW.rp_filter=1" >/dev/null
rp_mode=$(nsx "$NS_GW" sysctl -n "net.ipv4.conf.$WG_GW.rp_filter" 2>&1)
rpf0=$(rpf_drops)
rx0=$(wg_rx_packets)
strict=$(rp_curl)
rpf1=$(rpf_drops)
rx1=$(wg_rx_packets)
nsx "$NS_GW" sysctl -qw "net.ipv4.conf.$WG_GW.rp_filter=2" >/dev/null
leak1=$(leak_count)
# positive control: loose again, the same request works and nothing is dropped
rpf2=$(rpf_drops)
loose=$(rp_curl)
rpf3=$(rpf_drops)
read -r s_rc s_conn s_bytes _ <<<"$strict"
read -r l_rc _ _ l_body _ <<<"$loose"
why=""
[ "$rp_mode" = 1 ] || why="$why rp_filter read back '$rp_mode', not 1;"
[ "$s_rc" = 28 ] && [ "$s_bytes" = 0 ] || why="$why strict: curl did not time out with 0 bytes;"
awk -v t="$s_conn" 'BEGIN { exit !(t + 0 > 0) }' || why="$why strict: curl never connected to egressd;"
[ "$rpf1" -gt "$rpf0" ] || why="$why IPReversePathFilter did not grow;"
[ "$rx1" -gt "$rx0" ] || why="$why no packet arrived on $WG_GW;"
[ "$leak1" -eq "$leak0" ] || why="$why the leak detector counted $((leak1 - leak0));"
[ "$l_rc" = 0 ] && [ "$l_body" = "$E4" ] || why="$why control (loose): curl did not get $E4;"
[ "$rpf3" -eq "$rpf2" ] || why="$why control (loose): IPReversePathFilter grew by $((rpf3 - rpf2));"
if [ -z "$why" ]; then
	pass "11 rp_filter=1 (strict) on $WG_GW drops the replies: c0's curl connected and timed out with 0 bytes (exit 28), $((rx1 - rx0)) packets arrived on $WG_GW, IPReversePathFilter +$((rpf1 - rpf0)), nothing leaks; control: rp_filter=2, curl gets $l_body, counter +0"
else
	fail "11 rp_filter=1 on $WG_GW must drop the replies (and only then)" \
		"${why# } strict curl: [rc conn bytes body err] $strict; loose curl: $loose; IPReversePathFilter +$((rpf1 - rpf0)) / +$((rpf3 - rpf2)), rx +$((rx1 - rx0))"
fi

# ------------------------------------------------------------------ 12 IPv6 without the oif rule
leak0=$(leak_count)
nsx "$NS_GW" ip -6 rule del oif "$WG_GW" lookup "$V6_TABLE" priority 150
r6=$(reset_within "${NS_C[0]}" "$TARGET6" 80)
nsx "$NS_GW" ip -6 rule add oif "$WG_GW" lookup "$V6_TABLE" priority 150
leak1=$(leak_count)
if [ "${r6%% *}" = ok ] && [ "$leak1" -eq "$leak0" ]; then
	pass "12 IPv6 without 'ip -6 rule add oif $WG_GW lookup $V6_TABLE': c0 TCP v6 is reset $r6, nothing leaks"
else
	fail "12 IPv6 without the oif rule must fail closed" "$r6; leak detector counted $((leak1 - leak0))"
fi

# ------------------------------------------------------------------ 13-15 the interface down
leak0=$(leak_count)
ip -n "$NS_GW" link set "$WG_GW" down
r4=$(reset_within "${NS_C[0]}" "$TARGET4" 80)
r6=$(reset_within "${NS_C[0]}" "$TARGET6" 80)
u4=$(udptool "${NS_C[0]}" none "$TARGET4" "$UDP_WHO_PORT" 2 2>&1)
u6=$(udptool "${NS_C[0]}" none "$TARGET6" "$UDP_WHO_PORT" 2 2>&1)
d4=$(nsx "${NS_C[0]}" timeout 10 dig +short +tries=1 +time=2 TXT whoami.test @"$PUBDNS4" 2>&1 | tr -d '"' | tail -n 1)
leak1=$(leak_count)
wg_addr_gw
if [ "${r4%% *}" = ok ]; then pass "13 $WG_GW down: c0 TCP v4 is reset $r4"; else fail "13 $WG_GW down: c0 TCP v4 must be reset" "$r4"; fi
if [ "${r6%% *}" = ok ]; then pass "14 $WG_GW down: c0 TCP v6 is reset $r6"; else fail "14 $WG_GW down: c0 TCP v6 must be reset" "$r6"; fi
case $d4 in *"$E4"* | *"$GW_UPLINK4"*) dns_ok=0 ;; *) dns_ok=1 ;; esac
if [ "$u4" = "no reply" ] && [ "$u6" = "no reply" ] && [ "$dns_ok" = 1 ] && [ "$leak1" -eq "$leak0" ]; then
	pass "15 $WG_GW down: UDP v4/v6 and DNS get no answer (dig: '$d4'), nothing reaches inet from gw's uplink"
else
	fail "15 $WG_GW down must fail closed" "UDP v4 '$u4', v6 '$u6', dig '$d4'; leak detector counted $((leak1 - leak0))"
fi

# ------------------------------------------------------------------ 16 up again, nothing leaked
wg_works() { [ "$(curl_whoami "${NS_C[0]}")" = "$E4" ]; }
wait_until 10 wg_works || true
seen=$(curl_whoami "${NS_C[0]}")
seen6=$(curl_whoami "${NS_C[0]}" -6)
LEAK_END=$(leak_count)
if [ "$seen" = "$E4" ] && [ "$seen6" = "$E6" ] && [ "$LEAK_END" -eq "$LEAK_START" ]; then
	pass "16 $WG_GW up again: c0 leaves as $seen / $seen6; nothing left gw by its uplink since egressd's rules (control 1 counted $LEAK_CTL)"
else
	fail "16 $WG_GW up again, no leak" "target saw '$seen' / '$seen6'; leak detector counted $((LEAK_END - LEAK_START)) since egressd's rules"
fi

if pid_gone "$EGRESSD_PID"; then
	fail_unplanned "egressd still running at the end" "it exited: $(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
fi
for p in "$WGGO_GW" "$WGGO_X"; do
	pid_gone "$p" && fail_unplanned "wireguard-go still running at the end" "PID $p exited: $(tail -n 3 "$EG_TMP"/wg-*.log | tr '\n' ' ')"
done
log "wireguard.sh took $(($(date +%s) - T0)) s"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
summary
