# shellcheck shell=bash
# netns-tests/tools/docker_checks.sh — probes and check groups of
# netns-tests/docker.sh (its probes also serve netns-tests/labels.sh; sourced
# after docker_lib.sh). Every probe runs inside a real container by `docker
# exec`; every check group prints its PASS/FAIL lines through `verdict`.
# A probe reports what happened, never "nothing" on its own failure: a
# rejection is a reset (p_reset), "no answer" is a timeout or an answer-less
# status (p_dns, p_ping), "no reply" is the UDP client's own verdict
# (p_udp_none); a failing `docker exec` or tool reads as none of these.
# Probes that expect an answer retry within one flow (dig 3 tries, UDP 3
# sends): groups run up to ten `docker exec`s at once on a 2-core machine.

# verdict RC NAME DETAIL — PASS when RC is 0, else FAIL with DETAIL. Use right
# after the condition: `[ ... ] && [ ... ]; verdict $? "name" "detail"`.
verdict() {
	if [ "$1" -eq 0 ]; then pass "$2"; else fail "$2" "$3"; fi
}

# precondition RC NAME DETAIL — not a check: nothing printed when RC is 0
# (a log line), one unplanned FAIL otherwise; the suite goes on.
precondition() {
	if [ "$1" -eq 0 ]; then log "ok: $2"; else fail_unplanned "$2" "$3"; fi
}

# is_addr S — S looks like one IPv4 or IPv6 address.
is_addr() {
	case $1 in
	*[!0-9a-fA-F:.]* | "") return 1 ;;
	*.* | *:*) return 0 ;;
	esac
	return 1
}

# ---------------------------------------------------------------- leak detector
# topology.sh counts packets from gw's uplink address and from container
# addresses. A forged source leaving un-NATed would carry neither: count
# whatever else arrives from the uplink's MAC too, except link-local v6 and
# inet's own addresses (inet's replies to a forged source that was NATed
# come back through gw, de-NATed, and must not read as a new leak later).
leak_detector_extend() {
	local mac
	mac=$(ip -n "$NS_GW" -o link show uplink | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
	[ -n "$mac" ] || die "no MAC address on gw's uplink"
	nsx "$NS_INET" nft -f - <<-EOF || die "inet: nft -f could not create the leak detector (table inet egleakmac)"
	table inet egleakmac {
		counter other4 { }
		counter other6 { }
		chain pre {
			type filter hook prerouting priority -300; policy accept;
			ether saddr $mac ip saddr != { $GW_UPLINK4, 203.0.113.0/24, $PUBDNS4, $PRIV_DNS } counter name other4
			ether saddr $mac ip6 saddr != { $GW_UPLINK6, fe80::/10, 2001:db8:203::/48 } counter name other6
		}
	}
	EOF
	leak_total >/dev/null
	# EG_DOCKER_PCAP=1: what arrives from gw's uplink, to a pcap (with EG_KEEP_TMP=1).
	if [ "${EG_DOCKER_PCAP:-0}" = 1 ]; then
		eg_spawn "$NS_INET" "$EG_TMP/tcpdump.log" tcpdump -i br-inet -U -w "$EG_TMP/leak.pcap" \
			"ether src $mac and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137)"
		wait_until 5 grep -q listening "$EG_TMP/tcpdump.log"
	fi
}

leak_total() {
	local a b c
	a=$(leak_count) || die "leak detector unreadable"
	b=$(nft_counter "$NS_INET" egleakmac other4) || die "leak detector (other4) unreadable"
	c=$(nft_counter "$NS_INET" egleakmac other6) || die "leak detector (other6) unreadable"
	printf '%s\n' $((a + b + c))
}

# leak_above N — the leak detector has counted more than N (a control waits
# for its packets to arrive, bounded, instead of a fixed sleep).
leak_above() { [ "$(leak_total)" -gt "$1" ]; }

# ---------------------------------------------------------------- probes (in containers)
py() { local n=$1; shift; dx "$n" env PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 "$@"; }

# p_whoami NAME [-6] — the address the who-am-i target sees.
p_whoami() {
	local url="http://$TARGET4/"
	[ "${2:-}" = -6 ] && url="http://[$TARGET6]/"
	dx "$1" /usr/bin/curl -sS --max-time 5 "$url" 2>&1 | tr -d '\r' | tail -n 1
}

# p_udp NAME HOST [PORT] — the address the UDP who-am-i at HOST:PORT (5000)
# sees. Up to 3 sends, 2 s apart, on one socket (one flow): a reply delayed by
# a burst of parallel `docker exec`s on a busy machine is still counted, and
# any reply must still come through the container's own exit.
p_udp() {
	local r
	r=$(py "$1" /tools/udptool.py ask "$2" "${3:-5000}" 2 3 2>&1)
	case $r in
	"reply from "*) r=$(printf '%s\n' "$r" | awk '{ print $4 }'); r=${r%:*}; r=${r#[}; printf '%s\n' "${r%]}" ;;
	*) printf '%s\n' "$r" | tail -n 1 ;;
	esac
}

# p_udp_none NAME HOST [PORT] — exit 0 when nothing came back to 3
# datagrams within 2 s (any failure of the probe itself: non-zero).
p_udp_none() { py "$1" /tools/udptool.py none "$2" "${3:-5000}" 2; }

# p_dns NAME [SERVER] — the TXT of whoami.test (the resolver's view of the
# asker), through /etc/resolv.conf (Docker's 127.0.0.11) or from SERVER.
# Without an answer: "timeout" (dig got no reply), "status: X" (a reply
# without an answer, e.g. the embedded DNS's SERVFAIL) or "error: ...".
# dig tries 3 times, 2 s each (DNS_TRIES, DNS_TIME): probes run in bursts of
# parallel `docker exec`s, and on a busy 2-core machine one lost or late
# answer must not read as "no answer" — nor does an answer that comes on a
# retry prove less (it still names the exit it came through). A check that
# expects no answer then waits 6 s for one that must never come.
p_dns() {
	local at=() out rc
	[ -n "${2:-}" ] && at=("@$2")
	out=$(dx "$1" /usr/bin/dig +time="${DNS_TIME:-2}" +tries="${DNS_TRIES:-3}" "${at[@]}" TXT whoami.test 2>&1)
	rc=$?
	if [ "$rc" = 0 ] && printf '%s\n' "$out" | grep -q 'status: NOERROR'; then
		printf '%s\n' "$out" | awk '$4 == "TXT" { gsub(/"/, "", $5); print $5; exit }'
	elif [ "$rc" = 0 ]; then
		printf 'status: %s\n' "$(printf '%s\n' "$out" | sed -n 's/.*status: \([A-Z]*\).*/\1/p' | head -n 1)"
	elif [ "$rc" = 9 ]; then
		echo timeout
	else
		printf 'error: exit %s: %s\n' "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-160)"
	fi
}

# no_dns_answer S — what p_dns printed is a reply-less or answer-less outcome
# (never an error of the probe itself).
no_dns_answer() {
	case $1 in timeout | "status: SERVFAIL" | "status: REFUSED" | "status: NXDOMAIN") return 0 ;; esac
	return 1
}

# p_ping NAME HOST — "reply", "timeout" (sent, unanswered: the only
# "dropped") or "error: ..." (ICMP echo by tools/egtool.py, raw socket).
p_ping() {
	local out rc
	out=$(py "$1" /tools/egtool.py ping "$2" 1 2>&1)
	rc=$?
	case "$rc:$out" in
	"0:reply from "*) echo reply ;;
	"1:timeout: "*) echo timeout ;;
	*) printf 'error: exit %s: %s\n' "$rc" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-160)" ;;
	esac
}

# p_reset NAME HOST — TCP to HOST:80: reset, refused, eof-nodata, data:...,
# timeout or error:... (tools/egtool.py expect-reset).
p_reset() { py "$1" /tools/egtool.py expect-reset "$2" 80 2>&1 | tail -n 1; }

# no_tcp_data S — what p_reset printed shows the connection got nothing.
no_tcp_data() { case $1 in reset* | refused* | timeout* | eof-nodata*) return 0 ;; esac; return 1; }
is_reset() { case $1 in reset* | refused*) return 0 ;; esac; return 1; }

# forge NAME — forged-source UDP datagrams and TCP SYNs (from 100.64.99.77,
# an address of no bridge) to the target (the SYNs to a closed port: a reset
# at once, no half-open connection retransmitting its SYN-ACK for a minute).
FORGED_SRC=100.64.99.77
forge() {
	local a b
	a=$(py "$1" /tools/forge.py udp "$FORGED_SRC" "$TARGET4" 5000 3 2>&1 | tail -n 1)
	b=$(py "$1" /tools/forge.py syn "$FORGED_SRC" "$TARGET4" 9 3 2>&1 | tail -n 1)
	printf '%s; %s\n' "$a" "$b"
}

# log_brnf WHEN — bridge netfilter in gw (1 would hand bridged frames to
# iptables, and TPROXY's socket lookup would be undone).
log_brnf() {
	log "bridge-nf-call-iptables/ip6tables in gw $1: $(nsx "$NS_GW" cat /proc/sys/net/bridge/bridge-nf-call-iptables \
		/proc/sys/net/bridge/bridge-nf-call-ip6tables 2>/dev/null | tr '\n' ' ')"
}

# dump_fw NAME — gw's iptables-save and ip6tables-save into $EG_TMP/fw.NAME
# (kept with EG_KEEP_TMP=1: what dockerd and egressd made of the host).
dump_fw() {
	{ nsx "$NS_GW" iptables-save; nsx "$NS_GW" ip6tables-save; } 2>&1 | grep -v '^#' >"$EG_TMP/fw.$1"
}

p0_ready() { dx p0 /bin/busybox test -e /tmp/udp.ready -a -e /tmp/tcp.ready; }

# ---------------------------------------------------------------- parallel probes
# par KEY FUNC ARGS... — run a probe in the background (output and exit code
# kept under KEY); par_wait waits for all; po KEY / prc KEY read them.
PAR_PIDS=()
par() {
	local key=$1; shift
	("$@" >"$EG_TMP/par.$key" 2>&1; echo $? >"$EG_TMP/par.$key.rc") &
	PAR_PIDS+=($!)
}
par_wait() {
	local p
	for p in "${PAR_PIDS[@]}"; do wait "$p" 2>/dev/null; done
	PAR_PIDS=()
}
po() { tail -n 1 "$EG_TMP/par.$1" 2>/dev/null; }
prc() { cat "$EG_TMP/par.$1.rc" 2>/dev/null || echo 255; }

# ---------------------------------------------------------------- egressd
# dk_write_config FILE full|v4 — full: listeners on both networks' gateways,
# v4+v6, `interfaces: ["br-+"]`; v4: v4 listeners and routes only, no
# `interfaces` (egressd finds the bridges holding the listen addresses).
dk_write_config() {
	local f=$1 mode=$2
	{
		printf '(\n'
		if [ "$mode" = full ]; then
			printf '    listen: ["10.8.0.1:10900", "[fd08::1]:10900", "10.8.0.65:10900", "[fd08::1:0:0:1]:10900"],\n'
		else
			printf '    listen: ["10.8.0.1:10900", "10.8.0.65:10900"],\n'
		fi
		cat <<-'EOF'
		    tunnels: {
		        "exit0": Socks5(server: "100.64.0.2:1080", udp: false),
		        "exit1": Socks5(server: "100.64.1.2:1080"),
		        "exit2": Socks5(server: "100.64.2.2:1080"),
		    },
		    routes: [
		        (source: "10.8.0.20", tunnel: "exit0"),
		        (source: "10.8.0.11", tunnel: "exit1"),
		        (source: "10.8.0.72", tunnel: "exit2"),
		EOF
		[ "$mode" = full ] && cat <<-'EOF'
		        (source: "fd08::20", tunnel: "exit0"),
		        (source: "fd08::11", tunnel: "exit1"),
		        (source: "fd08::1:0:0:72", tunnel: "exit2"),
		EOF
		printf '    ],\n    default: Reject,\n'
		if [ "${EG_DOCKER_LEGACY:-0}" = 1 ]; then
			if [ "$mode" = full ]; then
				printf '    intercept: (sources: ["10.8.0.0/24", "fd08::/64"]),\n'
			else
				printf '    intercept: (sources: ["10.8.0.0/24"]),\n'
			fi
		else
			[ "$mode" = full ] && printf '    intercept: (interfaces: ["br-+"]),\n'
			printf '    dns: (upstream: "%s:53"),\n' "$PUBDNS4"
		fi
		printf '    control: (socket: "%s"),\n)\n' "$EG_TMP/egressd.sock"
	} >"$f"
}

dk_listening_all() {
	local a
	for a in "$@"; do tcp_listening "$NS_GW" "$LISTEN_PORT" "$a" || return 1; done
}
dk_up_or_dead() { dk_listening_all "$@" || ! pid_alive "$EGRESSD_PID"; }

# dk_egressd_start CONFIG ADDR... — `egressd run` in gw; wait for a listener
# on each ADDR (as ss prints it: 10.8.0.1, [fd08::1]).
dk_egressd_start() {
	local conf=$1; shift
	EGRESSD_LOG=$EG_TMP/egressd.$(date +%s%N).log
	eg_spawn "$NS_GW" "$EGRESSD_LOG" env RUST_LOG="${RUST_LOG:-info}" "$(egressd_bin)" run --config "$conf"
	EGRESSD_PID=$EG_LAST_PID
	wait_until 15 dk_up_or_dead "$@" && dk_listening_all "$@"
}

# ---------------------------------------------------------------- check groups
# routed_checks NAME N LABEL — 5 checks: NAME's TCP, UDP, DNS leave by exit N;
# ICMP dropped; nothing reaches the leak detector.
routed_checks() {
	local n=$1 e4 e6 l0 l1
	e4=$(exit_egress4 "$2")
	e6=$(exit_egress6 "$2")
	l0=$(leak_total)
	par t4 p_whoami "$n"
	par t6 p_whoami "$n" -6
	par u4 p_udp "$n" "$TARGET4"
	par u6 p_udp "$n" "$TARGET6"
	par de p_dns "$n"
	par dp p_dns "$n" "$PRIV_DNS"
	par d4 p_dns "$n" "$PUBDNS4"
	par d6 p_dns "$n" "$PUBDNS6"
	par i4 p_ping "$n" "$TARGET4"
	par i6 p_ping "$n" "$TARGET6"
	par_wait
	l1=$(leak_total)
	[ "$(po t4)" = "$e4" ] && [ "$(po t6)" = "$e6" ]
	verdict $? "$3: TCP v4+v6 leaves via exit$2" "target saw v4 '$(po t4)' v6 '$(po t6)', want $e4 / $e6"
	[ "$(po u4)" = "$e4" ] && [ "$(po u6)" = "$e6" ]
	verdict $? "$3: UDP v4+v6 leaves via exit$2" "target saw v4 '$(po u4)' v6 '$(po u6)', want $e4 / $e6"
	[ "$(po de)" = "$e4" ]
	verdict $? "$3: DNS through Docker's embedded DNS (forwarded to the private $PRIV_DNS) is answered via exit$2" \
		"answer '$(po de)', want $e4"
	[ "$(po dp)" = "$e4" ] && [ "$(po d4)" = "$e4" ] && [ "$(po d6)" = "$e6" ]
	verdict $? "$3: DNS asked of $PRIV_DNS, $PUBDNS4 and $PUBDNS6 is answered via exit$2, from the address asked" \
		"answers '$(po dp)' / '$(po d4)' / '$(po d6)', want $e4 / $e4 / $e6"
	[ "$(po i4)" = timeout ] && [ "$(po i6)" = timeout ] && [ "$l1" -eq "$l0" ]
	verdict $? "$3: ICMP v4+v6 dropped; none of this reached the leak detector" \
		"ping v4 '$(po i4)' v6 '$(po i6)'; detector +$((l1 - l0))"
}

# unrouted_checks NAME LABEL — 5 checks: TCP reset, UDP / DNS / ICMP nothing,
# v4+v6, and nothing reaches the leak detector.
unrouted_checks() {
	local n=$1 l0 l1 k bad=""
	l0=$(leak_total)
	par r4 p_reset "$n" "$TARGET4"
	par r6 p_reset "$n" "$TARGET6"
	par n4 p_udp_none "$n" "$TARGET4"
	par n6 p_udp_none "$n" "$TARGET6"
	par de p_dns "$n"
	par dp p_dns "$n" "$PRIV_DNS"
	par d4 p_dns "$n" "$PUBDNS4"
	par d6 p_dns "$n" "$PUBDNS6"
	par i4 p_ping "$n" "$TARGET4"
	par i6 p_ping "$n" "$TARGET6"
	par_wait
	l1=$(leak_total)
	is_reset "$(po r4)" && is_reset "$(po r6)"
	verdict $? "$2: TCP v4+v6 rejected with a reset" "got v4 '$(po r4)' v6 '$(po r6)'"
	[ "$(prc n4)" = 0 ] && [ "$(prc n6)" = 0 ]
	verdict $? "$2: UDP v4+v6 gets no reply" "v4 '$(po n4)' v6 '$(po n6)'"
	for k in de dp d4 d6; do no_dns_answer "$(po $k)" || bad="$bad $k='$(po $k)'"; done
	[ -z "$bad" ]
	verdict $? "$2: DNS (embedded, private, public v4+v6) gets no answer" "got:$bad"
	[ "$(po i4)" = timeout ] && [ "$(po i6)" = timeout ]
	verdict $? "$2: ICMP v4+v6 gets no reply" "ping v4 '$(po i4)' v6 '$(po i6)'"
	[ "$l1" -eq "$l0" ]
	verdict $? "$2: nothing reached the leak detector (TCP, UDP, DNS, ICMP; v4+v6)" "detector +$((l1 - l0))"
}

# published_check LABEL — 2 checks: p0's -p 8080:80/tcp and -p 5300:5000/udp
# answer a client in inet at gw's uplink addresses (v4 and v6).
published_check() {
	local t4 t6 u4 u6
	t4=$(nsx "$NS_INET" curl -sS --max-time 5 "http://$GW_UPLINK4:8080/" 2>&1 | tr -d '\r' | tail -n 1)
	t6=$(nsx "$NS_INET" curl -sS --max-time 5 "http://[$GW_UPLINK6]:8080/" 2>&1 | tr -d '\r' | tail -n 1)
	is_addr "$t4" && is_addr "$t6"
	verdict $? "$1: published TCP port 8080 answers from inet (v4+v6; p0 saw $t4 / $t6)" "v4 '$t4' v6 '$t6'"
	u4=$(udptool "$NS_INET" ask "$GW_UPLINK4" 5300 2 2 2>&1 | tail -n 1)
	u6=$(udptool "$NS_INET" ask "$GW_UPLINK6" 5300 2 2 2>&1 | tail -n 1)
	case "$u4|$u6" in
	"reply from $GW_UPLINK4:5300 "*"|reply from [$GW_UPLINK6]:5300 "*) true ;;
	*) false ;;
	esac
	verdict $? "$1: published UDP port 5300 answers from inet (v4+v6)" "v4 '$u4' v6 '$u6'"
}

# forged_check LABEL — 1 check: a3's forged-source packets reach nothing.
forged_check() {
	local l0 l1 out
	l0=$(leak_total)
	out=$(forge a3)
	sleep 0.5
	l1=$(leak_total)
	case $out in "sent 3 udp"*"sent 3 syn"*) true ;; *) false ;; esac && [ "$l1" -eq "$l0" ]
	verdict $? "$1: a forged source from a3 (raw socket: UDP and TCP SYN from $FORGED_SRC) does not leave" \
		"'$out'; detector +$((l1 - l0))"
}

# killswitch_check LABEL — 2 checks: routed a1 still leaves by exit1 and its
# ICMP is dropped; unrouted a3 gets a reset and nothing else; no leak.
killswitch_check() {
	local l0 l1
	l0=$(leak_total)
	par t4 p_whoami a1
	par i4 p_ping a1 "$TARGET4"
	par i6 p_ping a1 "$TARGET6"
	par r4 p_reset a3 "$TARGET4"
	par n4 p_udp_none a3 "$TARGET4"
	par d4 p_dns a3 "$PUBDNS4"
	par j4 p_ping a3 "$TARGET4"
	par j6 p_ping a3 "$TARGET6"
	par_wait
	l1=$(leak_total)
	[ "$(po t4)" = "$(exit_egress4 1)" ] && [ "$(po i4)" = timeout ] && [ "$(po i6)" = timeout ]
	verdict $? "$1: a1 (routed) leaves via exit1; its ICMP v4+v6 is dropped" \
		"target saw '$(po t4)'; ping v4 '$(po i4)' v6 '$(po i6)'"
	is_reset "$(po r4)" && [ "$(prc n4)" = 0 ] && no_dns_answer "$(po d4)" &&
		[ "$(po j4)" = timeout ] && [ "$(po j6)" = timeout ] && [ "$l1" -eq "$l0" ]
	verdict $? "$1: a3 (no route) gets a TCP reset and no UDP/DNS/ICMP answer; nothing reached the leak detector" \
		"tcp '$(po r4)', udp rc=$(prc n4), dns '$(po d4)', ping '$(po j4)' / '$(po j6)'; detector +$((l1 - l0))"
}

# late_checks LABEL — 1 check: l0 on the network made after `rules`.
late_checks() {
	local l0 l1
	l0=$(leak_total)
	par r4 p_reset l0 "$TARGET4"
	par r6 p_reset l0 "$TARGET6"
	par n4 p_udp_none l0 "$TARGET4"
	par de p_dns l0
	par i4 p_ping l0 "$TARGET4"
	par i6 p_ping l0 "$TARGET6"
	par_wait
	l1=$(leak_total)
	no_tcp_data "$(po r4)" && no_tcp_data "$(po r6)" && [ "$(prc n4)" = 0 ] && no_dns_answer "$(po de)" &&
		[ "$(po i4)" = timeout ] && [ "$(po i6)" = timeout ] && [ "$l1" -eq "$l0" ]
	verdict $? "$1: TCP v4+v6, UDP, DNS, ICMP v4+v6 get nothing; nothing reached the leak detector" \
		"tcp '$(po r4)' / '$(po r6)', udp rc=$(prc n4), dns '$(po de)', ping '$(po i4)' / '$(po i6)'; detector +$((l1 - l0))"
}

# nft_round — 11 checks: the same host with `--backend nft`, a v4-only
# config without `interfaces` (the bridges holding 10.8.0.1 and 10.8.0.65).
nft_round() {
	local conf=$EG_TMP/egressd-v4.ron up=0 rules=0 del=0 l0 l1 bad k
	egressd_stop
	dk_write_config "$conf" v4
	dk_snap >"$EG_TMP/snapn.0"
	dk_egressd_start "$conf" 10.8.0.1 10.8.0.65 && up=1
	egressd_rules_apply --config "$conf" --backend nft >"$EG_TMP/rulesn.out" 2>&1 && rules=1
	dk_snap >"$EG_TMP/snapn.1"
	nsx "$NS_GW" nft list ruleset >"$EG_TMP/nft.egressd" 2>&1
	[ "$up" = 1 ] && [ "$rules" = 1 ]
	precondition $? "T egressd (v4 listeners, no \`interfaces\`) runs and \`rules --backend nft\` applies" \
		"run ok=$up: $(tail -n 2 "$EGRESSD_LOG" | tr '\n' ' ' | cut -c1-200); rules ok=$rules: $(tail -n 2 "$EG_TMP/rulesn.out" | tr '\n' ' ' | cut -c1-200)"
	diff -q "$EG_TMP/snapn.0" "$EG_TMP/snapn.1" >/dev/null
	verdict $? "T nft: applying leaves every iptables line (Docker's) as it was" \
		"$(diff "$EG_TMP/snapn.0" "$EG_TMP/snapn.1" | grep '^[<>]' | head -n 4 | tr '\n' ';')"

	l0=$(leak_total)
	par t4 p_whoami a1
	par u4 p_udp a1 "$TARGET4"
	par de p_dns a1
	par s4 p_whoami b2
	par se p_dns b2
	par_wait
	l1=$(leak_total)
	[ "$(po t4)" = "$(exit_egress4 1)" ] && [ "$(po u4)" = "$(exit_egress4 1)" ] && [ "$(po de)" = "$(exit_egress4 1)" ] &&
		[ "$l1" -eq "$l0" ]
	verdict $? "T nft: a1 TCP, UDP and DNS (embedded) leave via exit1; nothing leaks" \
		"tcp '$(po t4)' udp '$(po u4)' dns '$(po de)'; detector +$((l1 - l0))"
	[ "$(po s4)" = "$(exit_egress4 2)" ] && [ "$(po se)" = "$(exit_egress4 2)" ]
	verdict $? "T nft: b2 (--internal) TCP and DNS (embedded) leave via exit2" "tcp '$(po s4)' dns '$(po se)'"

	l0=$(leak_total)
	par r4 p_reset a3 "$TARGET4"
	par n4 p_udp_none a3 "$TARGET4"
	par de p_dns a3
	par dp p_dns a3 "$PRIV_DNS"
	par d4 p_dns a3 "$PUBDNS4"
	par i4 p_ping a3 "$TARGET4"
	par_wait
	l1=$(leak_total)
	bad=""
	for k in de dp d4; do no_dns_answer "$(po $k)" || bad="$bad $k='$(po $k)'"; done
	is_reset "$(po r4)" && [ "$(prc n4)" = 0 ] && [ -z "$bad" ] && [ "$(po i4)" = timeout ] && [ "$l1" -eq "$l0" ]
	verdict $? "T nft: a3 (no route) gets a TCP reset, no UDP/DNS/ICMP answer; nothing leaks" \
		"tcp '$(po r4)' udp rc=$(prc n4) dns:$bad ping '$(po i4)'; detector +$((l1 - l0))"

	l0=$(leak_total)
	par t6 p_reset a1 "$TARGET6"
	par u6 p_udp_none a1 "$TARGET6"
	par d6 p_dns a1 "$PUBDNS6"
	par i6 p_ping a1 "$TARGET6"
	par r6 p_reset a3 "$TARGET6"
	par j6 p_ping b2 "$TARGET6"
	par_wait
	l1=$(leak_total)
	no_tcp_data "$(po t6)" && no_tcp_data "$(po r6)" && [ "$(prc u6)" = 0 ] && no_dns_answer "$(po d6)" &&
		[ "$(po i6)" = timeout ] && [ "$(po j6)" = timeout ] && [ "$l1" -eq "$l0" ]
	verdict $? "T nft: IPv6 without a v6 listener (a1, a3, b2: TCP, UDP, DNS, ICMP) gets nothing; nothing leaks" \
		"a1 tcp '$(po t6)' udp rc=$(prc u6) dns '$(po d6)' ping '$(po i6)'; a3 tcp '$(po r6)'; b2 ping '$(po j6)'; detector +$((l1 - l0))"

	published_check "T nft"
	forged_check "T nft"

	dk network create --subnet 10.8.0.192/27 late2 >/dev/null || log "network late2 failed"
	dockerd_stop
	dockerd_start && wait_until 120 dk_running 6 && wait_until 60 p0_ready || log "dockerd restart (nft round) incomplete"
	killswitch_check "T nft: after a new network and a dockerd restart"

	dk_snap >"$EG_TMP/snapn.2"
	egressd_rules_apply --config "$conf" --backend nft --delete >"$EG_TMP/deleten.out" 2>&1 && del=1
	dk_snap >"$EG_TMP/snapn.3"
	[ "$del" = 1 ] && diff -q "$EG_TMP/snapn.2" "$EG_TMP/snapn.3" >/dev/null &&
		! nsx "$NS_GW" nft list tables 2>/dev/null | grep -qi egressd
	verdict $? "T nft: \`rules --delete\` removes egressd's table and leaves every iptables line as it was" \
		"delete ok=$del; tables: $(nsx "$NS_GW" nft list tables 2>&1 | tr '\n' ' '); $(diff "$EG_TMP/snapn.2" "$EG_TMP/snapn.3" | grep '^[<>]' | head -n 3 | tr '\n' ';')"
}

# ---------------------------------------------------------------- the bridge trap
# dk_doctor CONFIG — `egressd doctor` in gw (bounded in time); its output in
# $DOC, its exit code in $DOC_RC.
dk_doctor() {
	DOC=$EG_TMP/doctor.$(date +%s%N).out
	timeout -k 5 90 ip netns exec "$NS_GW" "$(egressd_bin)" doctor --config "$1" >"$DOC" 2>&1
	DOC_RC=$?
}
# doc_line NAME — doctor's line for check NAME ("ok   NAME ..." / "FAIL NAME ..."), one line.
doc_line() { grep -E "^[A-Za-z]+ +$1 " "$DOC" | head -n 1; }

# brnf_in NS — "iptables/ip6tables" as bridge-nf-call-ip(6)tables read in NS.
brnf_in() {
	printf '%s/%s\n' "$(nsx "$1" cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" \
		"$(nsx "$1" cat /proc/sys/net/bridge/bridge-nf-call-ip6tables 2>/dev/null)"
}
# brnf_set V — both sysctls to V, in gw only (never outside the test namespaces).
brnf_set() {
	nsx "$NS_GW" sysctl -qw "net.bridge.bridge-nf-call-iptables=$1" "net.bridge.bridge-nf-call-ip6tables=$1" >/dev/null ||
		die "could not set bridge-nf-call-ip(6)tables=$1 in gw"
	[ "$(brnf_in "$NS_GW")" = "$1/$1" ] || die "bridge-nf-call-ip(6)tables in gw read $(brnf_in "$NS_GW") after setting $1"
}
# noports NS [6] — gw's Udp(6)NoPorts; dies when unreadable (never "0").
noports() {
	local v
	v=$(udp_noports "$@")
	case $v in '' | *[!0-9]*) die "cannot read Udp${2:-}NoPorts in $1 (got '$v')" ;; esac
	printf '%s\n' "$v"
}

# bridge_trap_checks NAME N CONFIG — 5 checks, the article's trap on a real
# Docker host: br_netfilter is there because dockerd loaded it (the suite
# never loads a module), gw's bridge-nf-call-ip(6)tables are 0 (egressd's
# rules set them). Set to 1 in gw only: NAME's (a routed container's) UDP to a
# port egressd has never answered from ($UDP_WHO_PORT2: no reply socket bound
# there would take the datagram) gets no reply and gw's Udp(6)NoPorts grows,
# nothing leaks; doctor exits 1 and FAILs both sysctls with their fix. Back
# to 0: the same UDP is answered via NAME's exit N (NoPorts still),
# and doctor's two lines are ok.
# brnf_metrics — egressd's view of the two bridge sysctls, "IPT IP6T".
brnf_metrics() {
	local t
	t=$(nsx "$NS_GW" timeout 10 "$(egressd_bin)" stats --socket "$EG_TMP/egressd.sock" --prometheus 2>/dev/null) || { echo "no answer"; return; }
	printf '%s\n' "$t" | awk '$1 == "egressd_bridge_nf_call_iptables" { a = $2 } $1 == "egressd_bridge_nf_call_ip6tables" { b = $2 }
		END { print (a == "" ? "none" : a), (b == "" ? "none" : b) }'
}
brnf_metrics_are() { [ "$(brnf_metrics)" = "$1" ]; }

bridge_trap_checks() {
	local n=$1 x=$2 conf=$3 e4 e6 g i np4 np6 np4b np6b np4c np6c l0 l1 bad o4 o6 t v
	e4=$(exit_egress4 "$x")
	e6=$(exit_egress6 "$x")
	if ! nsx "$NS_GW" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
		fail_n 7 "BR bridge trap" "no /proc/sys/net/bridge in gw although dockerd has started (dockerd loads br_netfilter)"
		return
	fi
	g=$(brnf_in "$NS_GW")
	i=$(brnf_in "$NS_INET")
	if [ "$g" != 0/0 ]; then
		fail_n 7 "BR bridge trap" "gw's bridge-nf-call-ip(6)tables read $g, not 0/0 as egressd's rules set them"
		return
	fi
	if [ "$i" = "$g" ]; then
		# inet keeps the kernel's default (1): reading the same as gw, the
		# sysctl may not be per network namespace here, and writing it in gw
		# would change the host's. Not touched.
		fail_n 7 "BR bridge trap" "inet reads $i as gw does: cannot show the sysctl is per network namespace on this kernel, not touching it"
		return
	fi
	np4=$(noports "$NS_GW")
	np6=$(noports "$NS_GW" 6)
	l0=$(leak_total)
	local m0 w0 t1 w1 ms1 ms0 logged
	m0=$(brnf_metrics)
	w0=$(grep -c 'bridge-nf-call-iptables is 1' "$EGRESSD_LOG")
	brnf_set 1
	t1=$(date +%s%N)
	# egressd, running, says so by itself (hostwatch reads every 5 s).
	wait_until 10 brnf_metrics_are "1 1"
	ms1=$(( ($(date +%s%N) - t1) / 1000000 ))
	w1=$(brnf_metrics)
	logged=$(grep -c 'bridge-nf-call-iptables is 1' "$EGRESSD_LOG")
	par n4 p_udp_none "$n" "$TARGET4" "$UDP_WHO_PORT2"
	par n6 p_udp_none "$n" "$TARGET6" "$UDP_WHO_PORT2"
	par_wait
	np4b=$(noports "$NS_GW")
	np6b=$(noports "$NS_GW" 6)
	l1=$(leak_total)
	dk_doctor "$conf"
	cp "$DOC" "$EG_TMP/doctor.trap"
	brnf_set 0
	t1=$(date +%s%N)
	wait_until 10 brnf_metrics_are "0 0"
	ms0=$(( ($(date +%s%N) - t1) / 1000000 ))
	[ "$m0" = "0 0" ] && [ "$w1" = "1 1" ] && [ "$logged" -gt "$w0" ] &&
		grep 'bridge-nf-call-iptables is 1' "$EGRESSD_LOG" | tail -n 1 | grep -q 'ERROR.*Fix: sysctl -w net.bridge.bridge-nf-call-iptables=0'
	verdict $? "BR6 the running egressd says it within 10 s: egressd_bridge_nf_call_iptables/_ip6tables 0 0 -> 1 1 ($ms1 ms) and an ERROR naming the fix" \
		"metrics before '$m0' (want 0 0), at 1 after ${ms1} ms '$w1' (want 1 1); ERROR lines $w0 -> $logged: '$(grep 'bridge-nf-call' "$EGRESSD_LOG" | tail -n 1 | cut -c1-200)'"
	m0=$(brnf_metrics)
	[ "$m0" = "0 0" ]
	verdict $? "BR7 control: back to 0, the metrics read 0 0 again within 10 s ($ms0 ms)" "metrics '$m0' after ${ms0} ms"
	[ "$(prc n4)" = 0 ] && [ "$np4b" -gt "$np4" ] && [ "$l1" -eq "$l0" ]
	verdict $? "BR1 bridge-nf-call-iptables=1 in gw: $n's UDP (routed) to $TARGET4:$UDP_WHO_PORT2 gets no reply, gw's UdpNoPorts grows by $((np4b - np4)), nothing leaks (the article's trap)" \
		"client rc=$(prc n4) '$(po n4)'; UdpNoPorts +$((np4b - np4)); detector +$((l1 - l0))"
	[ "$(prc n6)" = 0 ] && [ "$np6b" -gt "$np6" ] && [ "$l1" -eq "$l0" ]
	verdict $? "BR2 bridge-nf-call-ip6tables=1 in gw: $n's UDP (routed) to [$TARGET6]:$UDP_WHO_PORT2 gets no reply, gw's Udp6NoPorts grows by $((np6b - np6)), nothing leaks" \
		"client rc=$(prc n6) '$(po n6)'; Udp6NoPorts +$((np6b - np6)); detector +$((l1 - l0))"
	bad=""
	for t in iptables ip6tables; do
		v=$(doc_line "bridge-nf-call-$t")
		case $v in
		"FAIL bridge-nf-call-$t "*"net.bridge.bridge-nf-call-$t = 1 and "*" is on bridge br-egress"*UdpNoPorts*"; fix: sysctl -w net.bridge.bridge-nf-call-$t=0"*) ;;
		*) bad="$bad $t: '$(printf '%s' "$v" | cut -c1-200)';" ;;
		esac
	done
	[ "$DOC_RC" = 1 ] && [ -z "$bad" ]
	verdict $? "BR3 with both at 1 doctor exits 1 and FAILs bridge-nf-call-iptables and bridge-nf-call-ip6tables (on br-egress), fix 'sysctl -w net.bridge.bridge-nf-call-ip(6)tables=0'" \
		"doctor exit $DOC_RC;$bad"
	np4b=$(noports "$NS_GW")
	np6b=$(noports "$NS_GW" 6)
	par u4 p_udp "$n" "$TARGET4" "$UDP_WHO_PORT2"
	par u6 p_udp "$n" "$TARGET6" "$UDP_WHO_PORT2"
	par_wait
	o4=$(po u4)
	o6=$(po u6)
	np4c=$(noports "$NS_GW")
	np6c=$(noports "$NS_GW" 6)
	[ "$o4" = "$e4" ] && [ "$o6" = "$e6" ] && [ "$np4c" -eq "$np4b" ] && [ "$np6c" -eq "$np6b" ]
	verdict $? "BR4 control: back to 0, $n's UDP to the same destinations is answered via exit$x (v4 $o4, v6 $o6); Udp(6)NoPorts still" \
		"v4 '$o4' v6 '$o6' (want $e4 / $e6); UdpNoPorts +$((np4c - np4b)), Udp6NoPorts +$((np6c - np6b))"
	dk_doctor "$conf"
	cp "$DOC" "$EG_TMP/doctor.control"
	bad=""
	for t in iptables ip6tables; do
		v=$(doc_line "bridge-nf-call-$t")
		case $v in
		"ok "*"bridge-nf-call-$t "*"net.bridge.bridge-nf-call-$t = 0 ("*" is on bridge br-egress)") ;;
		*) bad="$bad $t: '$(printf '%s' "$v" | cut -c1-200)';" ;;
		esac
	done
	[ -z "$bad" ]
	verdict $? "BR5 control: back to 0, doctor's bridge-nf-call-iptables and bridge-nf-call-ip6tables lines are ok (= 0, the listeners on br-egress; doctor exit $DOC_RC)" \
		"$bad FAILs: $(grep '^FAIL' "$DOC" | cut -c1-120 | tr '\n' '|')"
}
