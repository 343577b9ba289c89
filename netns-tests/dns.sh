#!/usr/bin/env bash
# netns-tests/dns.sh — container DNS never leaves outside a tunnel.
#
# Topology: netns-tests/topology.sh (c0 → exit0 microsocks, udp: false, DNS
# over TCP; c1 → exit1 danted, UDP ASSOCIATE; c3 no route), egressd with the
# minimal config plus `dns: (upstream: "192.0.2.53:53")`. The 'public DNS'
# 192.0.2.53 answers whoami.test TXT with the address that asked, so an
# answer names the exit the query went through. 10.9.9.9, fd00::53 and gw's
# own 10.8.0.1 are resolvers no exit can reach (nothing listens there: Docker's
# embedded DNS forwards to such private resolvers).
#
#   0  control: without egressd, c1's query to 10.9.9.9:53 goes out of gw's
#      uplink (the leak detector counts it) and gets no answer
#   1  c1: a query to a private resolver (10.9.9.9) over UDP is answered by
#      dns.upstream through exit1 — and the answer comes from 10.9.9.9 (dig
#      ignores replies from another address)
#   2  c1: the same to a private IPv6 resolver (fd00::53)
#   3  c1: the same over TCP (REDIRECT of port 53)
#   4  c1: to gw's own address (10.8.0.1:53, a local destination)
#   5  c0: to 10.9.9.9 through a tunnel without UDP (DNS over TCP via exit0)
#   6  c1: a public resolver is asked as it is (192.0.2.53 directly, via exit1)
#   7  c3 (no route): no answer from any resolver, private or public
#   8  nothing reached the leak detector after egressd's rules went in
#
# 10 check lines on every path (plan_checks); egressd starting and its rules
# applying are preconditions (the suite stops), not checks.
#
# Usage: sudo netns-tests/dns.sh (EGRESSD=path to use another binary).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"

plan_checks 10 # before the root check: a skip counts all 10
require_root_and_tools nft iptables ip6tables microsocks danted python3 ss timeout dig
eg_init

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"

topo_up
topo_start_services
CONF=$EG_TMP/egressd.ron
topo_write_config "$CONF" "$EG_TMP/egressd.sock"
grep -q 'upstream: "192.0.2.53:53"' "$CONF" || die "topology config lacks dns.upstream"

# dig_txt NS SERVER [ARGS...] — the whoami.test TXT answer (quotes
# stripped), or "" when there is none.
dig_txt() {
	local ns=$1 server=$2; shift 2
	nsx "$ns" timeout 12 dig +short +tries=1 +time=4 "$@" TXT whoami.test @"$server" 2>&1 |
		grep -v '^;;' | tr -d '"' | tail -n 1
}

# ------------------------------------------------------------------ 0 control
leak0=$(leak_count)
ans=$(dig_txt "${NS_C[1]}" 10.9.9.9)
leak1=$(leak_count)
if [ "$leak1" -gt "$leak0" ] && [ -z "$ans" ]; then
	pass "0 control: without egressd c1's query to 10.9.9.9 leaves by gw's uplink ($((leak1 - leak0)) packets at the leak detector), unanswered"
else
	fail "0 control: without egressd the query should leak, unanswered" "detector +$((leak1 - leak0)), answer '$ans'"
fi

egressd_up_or_exit "$CONF"
leak_base=$(leak_count)
EXIT1=$(exit_egress4 1)
EXIT0=$(exit_egress4 0)

# expect_answer NAME WANT NS SERVER [DIG ARGS...]
expect_answer() {
	local name=$1 want=$2 ns=$3 server=$4; shift 4
	local got
	got=$(dig_txt "$ns" "$server" "$@")
	if [ "$got" = "$want" ]; then
		pass "$name (answer $got)"
	else
		fail "$name" "want $want, got '$got'"
	fi
}

expect_answer "1 c1 UDP query to private 10.9.9.9: answered by dns.upstream via exit1, from 10.9.9.9" \
	"$EXIT1" "${NS_C[1]}" 10.9.9.9
expect_answer "2 c1 UDP query to private fd00::53: answered via exit1, from fd00::53" \
	"$EXIT1" "${NS_C[1]}" fd00::53
expect_answer "3 c1 TCP query to private 10.9.9.9: answered via exit1" \
	"$EXIT1" "${NS_C[1]}" 10.9.9.9 +tcp
expect_answer "4 c1 query to gw's own 10.8.0.1:53: intercepted, answered via exit1" \
	"$EXIT1" "${NS_C[1]}" 10.8.0.1
expect_answer "5 c0 query to private 10.9.9.9 through a tunnel without UDP: DNS over TCP via exit0" \
	"$EXIT0" "${NS_C[0]}" 10.9.9.9
expect_answer "6 c1 query to public 192.0.2.53: asked as it is, via exit1" \
	"$EXIT1" "${NS_C[1]}" "$PUBDNS4"

# ------------------------------------------------------------------ 7 no route
got=""
for server in 10.9.9.9 "$PUBDNS4" fd00::53; do
	got="$got$(dig_txt "${NS_C[3]}" "$server")"
done
got="$got$(dig_txt "${NS_C[3]}" 10.9.9.9 +tcp)"
if [ -z "$got" ]; then
	pass "7 c3 (no route): no answer from private, public or IPv6 resolvers, over UDP or TCP"
else
	fail "7 c3 (no route) must get no DNS answer" "got '$got'"
fi
dropped=$(nsx "$NS_GW" "$(egressd_bin)" stats --socket "$EG_TMP/egressd.sock" 2>/dev/null |
	awk '$1 == "udp_drop_no_route" { print $2; exit }')
if [ "${dropped:-0}" -gt 0 ]; then
	pass "7 egressd counted c3's UDP queries as unrouted (udp_drop_no_route $dropped)"
else
	fail "7 egressd should count c3's queries as unrouted" "stats: $(nsx "$NS_GW" "$(egressd_bin)" stats --socket "$EG_TMP/egressd.sock" 2>&1 | grep -i route | head -n 3 | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 8 leaks
leak_end=$(leak_count)
if [ "$leak_end" -eq "$leak_base" ]; then
	pass "8 nothing reached the leak detector while egressd's rules were in (0 packets)"
else
	fail "8 DNS leaked around egressd" "$((leak_end - leak_base)) packets at the leak detector"
fi

summary
