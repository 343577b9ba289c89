# shellcheck shell=bash
# netns-tests/topology.sh — build and tear down the egressd test topology
# (SPEC §1/§5). Sourced after lib.sh. Every name below is a namespace of this
# run ("${EG_ID}-<role>"); none is linked to the root namespace.
#
#  c0 10.8.0.10 fd08::10 ─┐
#  c1 10.8.0.11 fd08::11 ─┤  gw: br0 10.8.0.1/24 fd08::1/64
#  c2 10.8.0.12 fd08::12 ─┼─ egressd on 10.8.0.1:10900, [fd08::1]:10900
#  c3 10.8.0.13 fd08::13 ─┤  (c3: no route in egressd's config)
#  c4 10.8.0.14 fd08::14 ─┘  (only with NCONT=5: routed to exit3)
#                             │ exit0..2: 100.64.N.1/24 ── 100.64.N.2/24 exitN
#                             │                          (SOCKS5 on 100.64.N.2:1080:
#                             │                           exit0 microsocks (TCP only,
#                             │                           `udp: false`), exit1/2 danted;
#                             │                           exit3, only with NEXITS=4:
#                             │                           tools/udptool.py socks5, a
#                             │                           full-cone UDP relay)
#                             │ uplink 198.51.100.200/24 2001:db8:100::c8/64
#                             │ (MASQUERADE v4+v6, "as a Docker host has")
#                             ▼
#  inet: bridge 198.51.100.254/24 2001:db8:100::fe/64 joining gw's uplink and
#        exitN's egress 198.51.100.(N+1)/24 2001:db8:100::(N+1)/64;
#        services (tools/egtool.py serve) on 203.0.113.10 and 2001:db8:203::10 (on lo);
#        UDP services (tools/udptool.py serve): who-am-i on 203.0.113.10:5000
#        and [2001:db8:203::10]:5000 (and :5003), full-cone probe A 203.0.113.10:5002 /
#        B 203.0.113.11:5001, the 'public DNS' (whoami.test TXT, UDP+TCP) on
#        192.0.2.53:53 and [2001:db8:203::53]:53; an nft counter of whatever
#        arrives from gw's uplink (the leak detector).
#
# A script may set NEXITS=4 NCONT=5 after sourcing this file (before topo_up)
# for the extra full-cone exit and its container.
#
# Functions:
#   topo_up                build namespaces, links, addresses, routes, NAT
#   topo_start_services    target services in inet + SOCKS servers in exits
#   socks_start N / socks_stop N / socks_kill N
#   topo_write_config FILE [CONTROL_SOCKET] [EXTRA_RON]   egressd config for this topology
#   egressd_start CONFIG LOG / egressd_stop / egressd_rules_apply CONFIG
#   leak_count             packets seen in inet from gw's uplink (v4+v6, no ND)
#   socks_syn_count N      connections opened to exit N's SOCKS port so far
#   curl_whoami NS [-6]    who-am-i as seen by the target, from namespace NS
#   show_egressd_log [N]   the last lines of $EGRESSD_LOG, for a failure's details
#   ping_result NS HOST [N] reply | timeout (sent, unanswered) | error: ...
#   topo_down              stop everything, delete the namespaces

TARGET4=203.0.113.10
TARGET6=2001:db8:203::10
TARGET4B=203.0.113.11
PUBDNS4=192.0.2.53
PUBDNS6=2001:db8:203::53
# shellcheck disable=SC2034  # UDP service ports, for the test scripts
{
	UDP_WHO_PORT=5000
	UDP_WHO_PORT2=5003
	CONE_A_PORT=5002
	CONE_B_PORT=5001
}
GW_UPLINK4=198.51.100.200
GW_UPLINK6=2001:db8:100::c8
LISTEN_PORT=10900
NEXITS=3
NCONT=4

topo_names() {
	NS_INET=$(ns_name inet)
	NS_GW=$(ns_name gw)
	NS_EXIT=()
	NS_C=()
	local i
	for i in $(seq 0 $((NEXITS - 1))); do NS_EXIT[i]=$(ns_name "exit$i"); done
	for i in $(seq 0 $((NCONT - 1))); do NS_C[i]=$(ns_name "c$i"); done
}

# exit_egress4 N / exit_egress6 N — the address exit N's traffic leaves from.
exit_egress4() { printf '198.51.100.%d\n' $(($1 + 1)); }
exit_egress6() { printf '2001:db8:100::%x\n' $(($1 + 1)); }
cont_addr4() { printf '10.8.0.%d\n' $((10 + $1)); }
cont_addr6() { printf 'fd08::%d\n' $((10 + $1)); }

nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# exit_links NS GWIF NET PLEN INETIF EG4 EG6 — the two links of an exit-like
# namespace NS: veth GWIF in gw (NET.1/PLEN) to "gw" in NS (NET.2/PLEN), and
# "egress" in NS (EG4/24, EG6/64) on inet's bridge as INETIF, with NS's
# default routes into inet.
exit_links() {
	local ns=$1 gwif=$2 net=$3 plen=$4 inetif=$5 eg4=$6 eg6=$7
	ip -n "$NS_GW" link add "$gwif" type veth peer name gw netns "$ns"
	ip -n "$NS_GW" addr add "$net.1/$plen" dev "$gwif"
	ip -n "$NS_GW" link set "$gwif" up
	ip -n "$ns" addr add "$net.2/$plen" dev gw
	ip -n "$ns" link set gw up
	ip -n "$ns" link add egress type veth peer name "$inetif" netns "$NS_INET"
	ip -n "$NS_INET" link set "$inetif" master br-inet up
	ip -n "$ns" addr add "$eg4/24" dev egress
	ip -n "$ns" addr add "$eg6/64" dev egress nodad
	ip -n "$ns" link set egress up
	ip -n "$ns" route add default via 198.51.100.254
	ip -n "$ns" -6 route add default via 2001:db8:100::fe
}

topo_up() {
	topo_names
	local i ns
	ns_add "$NS_INET"
	ns_add "$NS_GW"
	for ns in "${NS_EXIT[@]}" "${NS_C[@]}"; do ns_add "$ns"; done

	# ---- inet: a bridge for the 'internet' side, services on a dummy.
	ip -n "$NS_INET" link add br-inet type bridge forward_delay 0
	ip -n "$NS_INET" addr add 198.51.100.254/24 dev br-inet
	ip -n "$NS_INET" addr add 2001:db8:100::fe/64 dev br-inet nodad
	ip -n "$NS_INET" link set br-inet up
	# Service addresses on lo (a dummy device needs a module not every
	# kernel has).
	ip -n "$NS_INET" addr add "$TARGET4/32" dev lo
	ip -n "$NS_INET" addr add "$PUBDNS4/32" dev lo
	ip -n "$NS_INET" addr add "$TARGET4B/32" dev lo
	ip -n "$NS_INET" addr add "$TARGET6/128" dev lo nodad
	ip -n "$NS_INET" addr add "$PUBDNS6/128" dev lo nodad

	# ---- gw: the 'Docker host'.
	nsx "$NS_GW" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 >/dev/null
	ip -n "$NS_GW" link add br0 type bridge forward_delay 0
	# The article's lesson: bridge netfilter would clear TPROXY's skb->sk.
	if nsx "$NS_GW" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
		nsx "$NS_GW" sysctl -qw net.bridge.bridge-nf-call-iptables=0 \
			net.bridge.bridge-nf-call-ip6tables=0 >/dev/null
	fi
	ip -n "$NS_GW" addr add 10.8.0.1/24 dev br0
	ip -n "$NS_GW" addr add fd08::1/64 dev br0 nodad
	ip -n "$NS_GW" link set br0 up
	# uplink gw <-> inet
	ip -n "$NS_GW" link add uplink type veth peer name to-gw netns "$NS_INET"
	ip -n "$NS_INET" link set to-gw master br-inet up
	ip -n "$NS_GW" addr add "$GW_UPLINK4/24" dev uplink
	ip -n "$NS_GW" addr add "$GW_UPLINK6/64" dev uplink nodad
	ip -n "$NS_GW" link set uplink up
	ip -n "$NS_GW" route add default via 198.51.100.254
	ip -n "$NS_GW" -6 route add default via 2001:db8:100::fe
	nsx "$NS_GW" iptables -w -t nat -A POSTROUTING -o uplink -j MASQUERADE
	nsx "$NS_GW" ip6tables -w -t nat -A POSTROUTING -o uplink -j MASQUERADE

	# ---- exits
	for i in $(seq 0 $((NEXITS - 1))); do
		ns=${NS_EXIT[i]}
		exit_links "$ns" "exit$i" "100.64.$i" 24 "to-exit$i" "$(exit_egress4 "$i")" "$(exit_egress6 "$i")"
		# Count connections opened to this exit's SOCKS server, so a test
		# can tell whether egressd went upstream at all.
		nsx "$ns" nft -f - <<-'EOF' || die "exit$i: nft -f could not create the SYN counter (table inet egsocks)"
		table inet egsocks {
			counter syn { }
			chain in {
				type filter hook input priority 0; policy accept;
				tcp dport 1080 tcp flags & (syn | ack) == syn counter name syn
			}
		}
		EOF
		socks_syn_count "$i" >/dev/null
	done

	# ---- containers: plain namespaces with a veth into br0, as Docker builds.
	for i in $(seq 0 $((NCONT - 1))); do
		ns=${NS_C[i]}
		ip -n "$NS_GW" link add "veth-c$i" type veth peer name eth0 netns "$ns"
		ip -n "$NS_GW" link set "veth-c$i" master br0 up
		ip -n "$ns" addr add "$(cont_addr4 "$i")/24" dev eth0
		ip -n "$ns" addr add "$(cont_addr6 "$i")/64" dev eth0 nodad
		ip -n "$ns" link set eth0 up
		ip -n "$ns" route add default via 10.8.0.1
		ip -n "$ns" -6 route add default via fd08::1
	done

	# ---- the leak detector: count what arrives in inet from gw's own uplink
	# (i.e. traffic that went around egressd and got MASQUERADEd), and
	# anything carrying a container source address. Neighbour discovery is
	# the only traffic gw's uplink may legitimately send on its own.
	nsx "$NS_INET" nft -f - <<-'EOF' || die "inet: nft -f could not create the leak detector (table inet egleak)"
	table inet egleak {
		counter leak4 { }
		counter leak6 { }
		counter leakc { }
		chain pre {
			type filter hook prerouting priority -300; policy accept;
			ip saddr 198.51.100.200 counter name leak4
			ip6 saddr 2001:db8:100::c8 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, nd-redirect } return
			ip6 saddr 2001:db8:100::c8 counter name leak6
			ip saddr 10.8.0.0/24 counter name leakc
			ip6 saddr fd08::/64 counter name leakc
		}
	}
	EOF
	leak_count >/dev/null
}

# nft_counter NS TABLE NAME — the packets of an nft counter; dies (the whole
# suite, also from inside $(...)) when it cannot be read: an unreadable
# counter must never read as "0 packets".
nft_counter() {
	local out n
	out=$(nsx "$1" nft list counter inet "$2" "$3" 2>&1) ||
		die "cannot read nft counter inet $2 $3 in $1: $(printf '%s' "$out" | tr '\n' ' ')"
	n=$(printf '%s\n' "$out" | sed -n 's/.*packets \([0-9][0-9]*\).*/\1/p' | head -n1)
	[ -n "$n" ] || die "nft counter inet $2 $3 in $1 has no packet count: $(printf '%s' "$out" | tr '\n' ' ')"
	printf '%s\n' "$n"
}

# leak_count — total packets counted by the leak detector so far.
leak_count() {
	local c total=0 n
	for c in leak4 leak6 leakc; do
		n=$(nft_counter "$NS_INET" egleak "$c") || die "leak detector unreadable"
		total=$((total + n))
	done
	printf '%s\n' "$total"
}

# socks_syn_count N — connections opened so far to exit N's SOCKS port.
socks_syn_count() {
	local n
	n=$(nft_counter "${NS_EXIT[$1]}" egsocks syn) || die "SYN counter of exit$1 unreadable"
	printf '%s\n' "$n"
}

# ---------------------------------------------------------------- services

topo_start_services() {
	local py i
	py=$(python_bin)
	rm -f "$EG_TMP/inet.ready"
	eg_spawn "$NS_INET" "$EG_TMP/inet.log" "$py" "$EG_TOOLS/egtool.py" serve \
		"$TARGET4" "$TARGET6" --ready "$EG_TMP/inet.ready"
	# shellcheck disable=SC2034  # for scripts that want to stop the services
	INET_PID=$EG_LAST_PID
	wait_until 15 test -e "$EG_TMP/inet.ready" || die "inet services did not start: $(tail -n 5 "$EG_TMP/inet.log")"
	# UDP services and the DNS server (each bound to its own address: a
	# reply must leave from the address that was asked).
	rm -f "$EG_TMP/udpsvc.ready"
	eg_spawn "$NS_INET" "$EG_TMP/udpsvc.log" "$py" -u "$EG_TOOLS/udptool.py" serve \
		--udp "$TARGET4" --udp "$TARGET6" --dns "$PUBDNS4" --dns "$PUBDNS6" \
		--cone "$TARGET4" "$TARGET4B" --ready "$EG_TMP/udpsvc.ready"
	# shellcheck disable=SC2034
	UDPSVC_PID=$EG_LAST_PID
	wait_until 15 test -e "$EG_TMP/udpsvc.ready" || die "inet UDP services did not start: $(tail -n 5 "$EG_TMP/udpsvc.log")"
	for i in $(seq 0 $((NEXITS - 1))); do
		socks_start "$i"
	done
}

# danted config for exit N: no auth, CONNECT and UDP ASSOCIATE, v4 and v6.
danted_conf() {
	local i=$1
	cat <<-EOF
	logoutput: stderr
	internal: 100.64.$i.2 port = 1080
	external: egress
	external.rotation: route
	socksmethod: none
	clientmethod: none
	user.privileged: root
	user.unprivileged: nobody
	client pass {
	    from: 0/0 to: 0/0
	    log: error
	}
	socks pass {
	    from: 0/0 to: 0/0
	    command: connect udpassociate bindreply udpreply
	    log: error
	}
	EOF
}

# socks_start N — start exit N's SOCKS server (exit0: microsocks, exit3:
# udptool.py socks5 (full cone; status in $EG_TMP/socks3.status), others:
# danted), wait until it listens. PID in SOCKS_PID[N].
socks_start() {
	local i=$1 ns=${NS_EXIT[$1]}
	if [ "$i" -eq 0 ]; then
		eg_spawn "$ns" "$EG_TMP/socks$i.log" microsocks -i "100.64.$i.2" -p 1080
	elif [ "$i" -eq 3 ]; then
		eg_spawn "$ns" "$EG_TMP/socks$i.log" "$(python_bin)" -u "$EG_TOOLS/udptool.py" socks5 \
			"100.64.$i.2" 1080 --status "$EG_TMP/socks$i.status"
	else
		danted_conf "$i" >"$EG_TMP/danted$i.conf"
		eg_spawn "$ns" "$EG_TMP/socks$i.log" danted -f "$EG_TMP/danted$i.conf" -p "$EG_TMP/danted$i.pid"
	fi
	SOCKS_PID[i]=$EG_LAST_PID
	wait_tcp_listen "$ns" 1080 "100.64.$i.2" 15 || die "SOCKS server in exit$i did not start: $(tail -n 5 "$EG_TMP/socks$i.log")"
}

# socks_kill N — crash exit N's SOCKS server: SIGKILL every process of it,
# by PID (danted forks helpers: take them from `ip netns pids`; the exit
# namespace holds nothing else of ours).
socks_kill() {
	local i=$1 ns=${NS_EXIT[$1]}
	pid_alive "${SOCKS_PID[i]}" && kill -s KILL "${SOCKS_PID[i]}" 2>/dev/null
	kill_ns_pids "$ns" KILL
	wait "${SOCKS_PID[i]}" 2>/dev/null
	wait_until 5 ns_empty "$ns"
}

socks_stop() {
	local i=$1 ns=${NS_EXIT[$1]}
	stop_pid "${SOCKS_PID[i]}" TERM
	kill_ns_pids "$ns" KILL
	wait_until 5 ns_empty "$ns"
}

# ---------------------------------------------------------------- egressd

# topo_write_config FILE [CONTROL_SOCKET] [EXTRA_RON] — the tests' egressd
# config. exit0 (microsocks) has no UDP ASSOCIATE: `udp: false`. SOCKS_OPTS
# (e.g. "warm: 0, warm_udp: 0, ") goes into every Socks5(...): suites that
# count connections to the exits turn the warm pools off, since a pool opens
# connections of its own. With
# NEXITS=4 NCONT=5, exit3 and the route c4 -> exit3 are added. EXTRA_RON is
# copied in as top-level fields, e.g. 'udp: (max_sessions: 100),'.
topo_write_config() {
	local f=$1 sock=${2:-} extra=${3:-}
	{
		cat <<-'EOF'
		(
		    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
		    tunnels: {
		EOF
		printf '        "exit0": Socks5(%sserver: "100.64.0.2:1080", udp: false),\n' "${SOCKS_OPTS:-}"
		printf '        "exit1": Socks5(%sserver: "100.64.1.2:1080"),\n' "${SOCKS_OPTS:-}"
		printf '        "exit2": Socks5(%sserver: "100.64.2.2:1080"),\n' "${SOCKS_OPTS:-}"
		[ "$NEXITS" -gt 3 ] && printf '        "exit3": Socks5(%sserver: "100.64.3.2:1080"),\n' "${SOCKS_OPTS:-}"
		cat <<-'EOF'
		    },
		    routes: [
		        (source: "10.8.0.10", tunnel: "exit0"), (source: "fd08::10", tunnel: "exit0"),
		        (source: "10.8.0.11", tunnel: "exit1"), (source: "fd08::11", tunnel: "exit1"),
		        (source: "10.8.0.12", tunnel: "exit2"), (source: "fd08::12", tunnel: "exit2"),
		EOF
		[ "$NEXITS" -gt 3 ] && [ "$NCONT" -gt 4 ] &&
			printf '        (source: "10.8.0.14", tunnel: "exit3"), (source: "fd08::14", tunnel: "exit3"),\n'
		cat <<-'EOF'
		    ],
		    // Every container on br0 is intercepted (no intercept.sources): c3
		    // has no route and meets `default: Reject`.
		    intercept: (tcp: Redirect),
		    dns: (upstream: "192.0.2.53:53"),
		EOF
		[ -n "$sock" ] && printf '    control: (socket: "%s"),\n' "$sock"
		[ -n "$extra" ] && printf '    %s\n' "$extra"
		printf ')\n'
	} >"$f"
}

egressd_bin() { printf '%s\n' "${EGRESSD:-$EG_REPO/target/release/egressd}"; }

# blackhole_socks NS — the SOCKS port 1080 in namespace NS becomes a black
# hole: SYNs counted (nft counter eghole syn) and dropped, and anything
# leaving that port (a connection coming up) counted (eghole out). Dies if
# nft cannot load it (a flood against a live exit would prove nothing).
blackhole_socks() {
	nsx "$1" nft -f - <<-'EOF' || die "$1: nft -f could not load the black hole (table inet eghole)"
	table inet eghole {
		counter syn { }
		counter out { }
		chain in {
			type filter hook input priority -10; policy accept;
			tcp dport 1080 tcp flags & (syn | ack) == syn counter name syn drop
			tcp dport 1080 drop
		}
		chain out {
			type filter hook output priority -10; policy accept;
			tcp sport 1080 counter name out
		}
	}
	EOF
}
# prom_or_die — egressd's counters now (`stats --prometheus` on $SOCK, in
# gw); an unreadable control socket must never read as "all counters 0".
prom_or_die() {
	local p
	p=$(nsx "$NS_GW" timeout 10 "$(egressd_bin)" stats --prometheus --socket "$SOCK" </dev/null 2>&1)
	case $p in
	*"egressd_tcp_flows_total "*"egressd_udp_sessions_total "*) printf '%s\n' "$p" ;;
	*) die "egressd stats --prometheus failed: $(printf '%s' "$p" | tail -n 3 | tr '\n' ' ')" ;;
	esac
}
# metric PROM NAME [LABEL] — one value of prom_or_die's text, 0 if absent.
metric() {
	printf '%s\n' "$1" | awk -v m="$2" -v l="${3:-}" '
		{ k = $1 } l == "" && k == m { v = $2 } l != "" && k == m "{" l "}" { v = $2 }
		END { print (v == "" ? 0 : v) }'
}
# drops_matching PROM LABEL REGEX — the counters of one source (LABEL, e.g.
# source="10.8.0.11/32") whose names match REGEX and are not 0: "name=N ...".
drops_matching() {
	printf '%s\n' "$1" | awk -v l="{$2}" -v re="$3" '
		$1 ~ re && substr($1, length($1) - length(l) + 1) == l && $2 != 0 {
			n = $1; sub(/^egressd_/, "", n); sub(/_total\{.*/, "", n); printf "%s%s=%s", sep, n, $2; sep = " " }'
}
# field KEY TEXT — the word after KEY in TEXT ("ok 5/5 ..." -> 5/5).
field() { printf '%s\n' "$2" | awk -v k="$1" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }'; }

# ensure_egressd — build the release binary if it is missing.
ensure_egressd() {
	local bin
	bin=$(egressd_bin)
	if [ ! -x "$bin" ]; then
		log "building egressd (cargo build --release)"
		(cd "$EG_REPO" && cargo build --release --quiet) >&2 || return 1
	fi
	[ -x "$bin" ]
}

egressd_listening() {
	tcp_listening "$NS_GW" "$LISTEN_PORT" 10.8.0.1 && tcp_listening "$NS_GW" "$LISTEN_PORT" '[fd08::1]'
}

egressd_up_or_dead() { egressd_listening || ! pid_alive "$EGRESSD_PID"; }

# egressd_start [ARGS...] — run `egressd run ARGS` in gw (log: $EGRESSD_LOG),
# wait for both listeners. PID in EGRESSD_PID.
egressd_start() {
	EGRESSD_LOG=${EGRESSD_LOG:-$EG_TMP/egressd.log}
	eg_spawn "$NS_GW" "$EGRESSD_LOG" env RUST_LOG="${RUST_LOG:-debug}" \
		"$(egressd_bin)" run "$@"
	EGRESSD_PID=$EG_LAST_PID
	if ! wait_until 15 egressd_up_or_dead || ! egressd_listening; then
		log "egressd did not start listening; its log:"
		tail -n 20 "$EGRESSD_LOG" >&2
		return 1
	fi
}

egressd_stop() {
	[ -n "${EGRESSD_PID:-}" ] && stop_pid "$EGRESSD_PID" TERM
	EGRESSD_PID=""
}

# egressd_rules_apply [ARGS...] — `egressd rules ARGS | sh -e` inside gw.
egressd_rules_apply() {
	nsx "$NS_GW" "$(egressd_bin)" rules "$@" >"$EG_TMP/rules.sh" || return 1
	nsx "$NS_GW" sh -e "$EG_TMP/rules.sh"
}

# egressd_up_or_exit CONFIG — egressd_start + egressd_rules_apply with CONFIG;
# on failure die: a precondition, not a check (FAIL, the summary with the
# checks that did not run, exit 1).
egressd_up_or_exit() {
	if ! egressd_start --config "$1"; then
		declare -F show_egressd_log >/dev/null && show_egressd_log
		die "egressd run: did not listen within 15 s"
	fi
	if ! egressd_rules_apply --config "$1" >"$EG_TMP/rules.out" 2>&1; then
		die "egressd rules | sh: $(tail -n 3 "$EG_TMP/rules.out" | tr '\n' ' ')"
	fi
}

# show_egressd_log [N] — the last N (30) lines of egressd's log ($EGRESSD_LOG), to stderr.
# no_leak_since START ID — check ID: nothing left gw's uplink since the
# leak detector read START (leak_count).
no_leak_since() {
	local n=$(($(leak_count) - $1))
	if [ "$n" -eq 0 ]; then
		pass "$2 nothing left gw's uplink around egressd during the run (leak detector: 0 packets)"
	else
		fail "$2 nothing may leak around egressd" "the leak detector counted $n packets"
	fi
}

# finish_suite NAME — a suite's last lines: egressd must still run, the
# time taken, egressd's log on failure, the summary.
finish_suite() {
	if pid_gone "$EGRESSD_PID"; then
		fail_unplanned "egressd still running at the end" "it exited: $(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
	fi
	log "$1 took $(($(date +%s) - T0)) s (logs in $EG_TMP)"
	[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
	summary
}

show_egressd_log() {
	[ -n "${EGRESSD_LOG:-}" ] && [ -f "$EGRESSD_LOG" ] || return 0
	log "---- last lines of egressd's log ($EGRESSD_LOG)"
	tail -n "${1:-30}" "$EGRESSD_LOG" | sed 's/^/#   /' >&2
}

# curl_whoami NS [-6] — what the who-am-i service saw as our address.
curl_whoami() {
	local ns=$1 url="http://$TARGET4/"
	[ "${2:-}" = -6 ] && url="http://[$TARGET6]/"
	nsx "$ns" curl -sS --max-time 5 "$url" 2>&1 | tr -d '\r' | tail -n 1
}

# ip_of "1.2.3.4:5" / "[::1]:5" -> 1.2.3.4 / ::1
ip_of() { local a=${1%:*}; a=${a#[}; printf '%s\n' "${a%]}"; }

# tcp_is NAME NS [-6] WANT — check: the who-am-i service sees WANT.
tcp_is() {
	local name=$1 ns=$2 fam="" want seen
	if [ "$3" = -6 ]; then fam=-6; want=$4; else want=$3; fi
	seen=$(curl_whoami "$ns" $fam)
	if [ "$seen" = "$want" ]; then pass "$name (target sees $seen)"; else fail "$name" "target saw '$seen', want $want"; fi
}

# udp_is NAME NS HOST WANT — check: the UDP who-am-i at HOST:$UDP_WHO_PORT
# (5000) sees WANT and its reply comes from HOST.
udp_is() {
	local name=$1 ns=$2 host=$3 want=$4 out from seen
	out=$(udptool "$ns" ask "$host" "${UDP_WHO_PORT:-5000}" 2 2 2>&1)
	case $out in
	"reply from "*)
		from=$(printf '%s\n' "$out" | awk '{ print $3 }')
		seen=$(ip_of "$(printf '%s\n' "$out" | awk '{ print $4 }')")
		if [ "$seen" = "$want" ] && [ "$(ip_of "$from")" = "$host" ]; then
			pass "$name (service sees $seen, reply from $from)"
		else
			fail "$name" "service saw '$seen' (want $want), reply from $from"
		fi
		;;
	*) fail "$name" "$out" ;;
	esac
}

# tcp_udp_are NAME NS WANT4 WANT6 — four checks: NS's TCP and UDP, v4 and
# v6, reach the who-am-i services as WANT4 / WANT6.
tcp_udp_are() {
	tcp_is "$1 TCP v4" "$2" "$3"
	tcp_is "$1 TCP v6" "$2" -6 "$4"
	udp_is "$1 UDP v4" "$2" "$TARGET4" "$3"
	udp_is "$1 UDP v6" "$2" "$TARGET6" "$4"
}

# dig_txt NS SERVER — the whoami.test TXT answer (quotes stripped), or "".
dig_txt() {
	nsx "$1" timeout 15 dig +short +tries=2 +time=3 TXT whoami.test @"$2" 2>&1 | tr -d '"' | tail -n 1
}

# dns_is NAME NS SERVER WANT — check: dig TXT whoami.test @SERVER answers WANT.
dns_is() {
	local name=$1 ns=$2 srv=$3 want=$4 got
	got=$(dig_txt "$ns" "$srv")
	if [ "$got" = "$want" ]; then pass "$name (answer $got)"; else fail "$name" "dig said '$got', want $want"; fi
}

# pytool_exec TOOL NS ARGS... — (in a subshell) becomes tools/TOOL.py inside
# NS, fd limit raised, under a hard time bound (EG_TOOL_TIMEOUT, 180 s) on
# top of the tool's own timeouts.
pytool_exec() {
	local tool=$1 ns=$2; shift 2
	ulimit -n 65536 2>/dev/null || true
	exec timeout -k 5 "${EG_TOOL_TIMEOUT:-180}" ip netns exec "$ns" "$(python_bin)" "$EG_TOOLS/$tool.py" "$@"
}
# pytool TOOL NS ARGS... — run it; pytool_bg TOOL NS OUTFILE ARGS... — in the
# background, tracked by PID (EG_LAST_PID is `timeout`, which passes a TERM
# on to the tool).
pytool() { (pytool_exec "$@"); }
pytool_bg() {
	local tool=$1 ns=$2 outf=$3; shift 3
	(pytool_exec "$tool" "$ns" "$@") >"$outf" 2>&1 </dev/null &
	EG_LAST_PID=$!
	EG_PIDS+=("$EG_LAST_PID")
	disown "$EG_LAST_PID" 2>/dev/null || true
}

# egtool NS ARGS... / egtool_bg NS OUTFILE ARGS... — the TCP test client
# (tools/egtool.py); udptool / udptool_bg — the UDP one (tools/udptool.py).
egtool() { pytool egtool "$@"; }
egtool_bg() { pytool_bg egtool "$@"; }
udptool() { pytool udptool "$@"; }
udptool_bg() { pytool_bg udptool "$@"; }

# ping_result NS HOST [COUNT] — ICMP echo from NS: prints "reply", "timeout"
# (every request sent, none answered: the only "dropped") or "error: ..."
# (could not send, killed by the time bound, anything else).
ping_result() {
	local out rc
	out=$(EG_TOOL_TIMEOUT=30 egtool "$1" ping "$2" "${3:-2}" 2>&1)
	rc=$?
	case "$rc:$out" in
	"0:reply from "*) echo reply ;;
	"1:timeout: "*) echo timeout ;;
	*) printf 'error: exit %s: %s\n' "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)" ;;
	esac
}

# udp_noports NS [6] — the UDP (or UDP6) NoPorts counter in NS.
udp_noports() {
	# shellcheck disable=SC2016  # awk's own $ fields
	if [ "${2:-}" = 6 ]; then
		nsx "$1" awk '$1 == "Udp6NoPorts" { print $2 }' /proc/net/snmp6
	else
		nsx "$1" awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "NoPorts") c = i; h = 1 } else print $c }' /proc/net/snmp
	fi
}

topo_down() {
	local pid ns
	for pid in "${EG_PIDS[@]}"; do stop_pid "$pid" TERM; done
	EG_PIDS=()
	for ns in "${EG_NETNS[@]}"; do kill_ns_pids "$ns" KILL; done
	for ns in "${EG_NETNS[@]}"; do
		wait_until 3 ns_empty "$ns"
		ip netns del "$ns" 2>/dev/null || true
	done
	EG_NETNS=()
}
