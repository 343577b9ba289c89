# scripts/bench/latency.sh — the latency part of scripts/bench.sh (issue 13),
# sourced by it (uses its topology, helpers and impl_up_X/impl_down_X).
#
# A far exit: scripts/bench/delayline.py holds every IP packet between gw and
# exit0 for RTT/2 in each direction (TCP handshakes included), through a TUN
# device in exit0's namespace and policy routing there:
#   exit0 -> gw (from this host, `iif lo`, to 100.64.0.1) : into the TUN;
#   gw -> exit0 (`iif gw`, from 100.64.0.1)               : into the TUN, the
#       `local` rule moved behind these so such packets are forwarded, not
#       delivered; what the delay line writes back comes in on the TUN and is
#       then delivered (or forwarded to gw) normally.
# Rules match ipproto tcp/udp/icmp only (ARP and the neighbour entries stay on
# the veth); the TUN has accept_local=1 (packets from exit0's own address come
# back in) and rp_filter=0; tcp_early_demux=0 and udp_early_demux=0 in exit0,
# or established sockets would take the cached input route and skip the rules.
#
# The exit is danted on $EXIT_ADDR:$LAT_EXIT_PORT (negotiate timeout 30 s by
# default). Metrics per implementation (client: scripts/bench/latency.py):
#   tcp_ttfb   connect() to the first byte of the answer to GET /whoami, a
#              fresh connection each time, one at a time, LAT_GAP RTTs apart
#              (time for a warm pool to refill);
#   dns_first  a DNS query from a fresh UDP socket (new source port = new UDP
#              session at the proxy) to its answer, one at a time likewise;
#   *_burst    the same, LAT_BURST (64) at once: more than a pool would hold.
# Every answer is checked (the HTTP body names the exit's egress address, the
# DNS answer is the zone's A record), failures are counted and shown.

LAT_EXIT_PORT=${LAT_EXIT_PORT:-1081}
LAT_TABLE=4242
LAT_DEV=dly0
DELAY_PID=""

latency_exit_up() { # danted in exit0, on its own port (V2Ray keeps :1080)
	cat >"$EG_TMP/danted-lat.conf" <<-EOF
	logoutput: stderr
	internal: $EXIT_ADDR port = $LAT_EXIT_PORT
	external: egress
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
	    log: ${LAT_DANTED_LOG:-error}
	}
	EOF
	eg_spawn "$NS_EXIT" "$EG_TMP/danted-lat.log" danted -f "$EG_TMP/danted-lat.conf" -p "$EG_TMP/danted-lat.pid"
	DANTED_PID=$EG_LAST_PID
	wait_tcp_listen "$NS_EXIT" "$LAT_EXIT_PORT" "$EXIT_ADDR" 15
}

# delay_up ONE_WAY_MS — start the delay line and route gw<->exit0 through it.
delay_up() {
	local ms=$1 p
	rm -f "$EG_TMP/delay.ready" "$EG_TMP/delay.stats"
	# Real-time priority (if allowed): on a loaded machine a normal process
	# can wait tens of ms for a CPU, and that would be added to the delay.
	local rt=()
	chrt -f 10 true 2>/dev/null && rt=(chrt -f 10)
	eg_spawn "$NS_EXIT" "$EG_TMP/delayline.log" "${rt[@]}" "$PY" "$BENCH_DIR/delayline.py" --dev "$LAT_DEV" \
		--delay-ms "$ms" --max-queue 20000 --max-secs 3600 --stats "$EG_TMP/delay.stats" --ready "$EG_TMP/delay.ready"
	DELAY_PID=$EG_LAST_PID
	wait_until 10 test -e "$EG_TMP/delay.ready" || { log "delay line did not start: $(tail -n 3 "$EG_TMP/delayline.log")"; return 1; }
	{
		ip -n "$NS_EXIT" link set "$LAT_DEV" up &&
			nsx "$NS_EXIT" sysctl -qw "net.ipv4.conf.$LAT_DEV.accept_local=1" "net.ipv4.conf.$LAT_DEV.rp_filter=0" \
				net.ipv4.conf.all.rp_filter=0 net.ipv4.tcp_early_demux=0 net.ipv4.udp_early_demux=0 >/dev/null &&
			ip -n "$NS_EXIT" route add default dev "$LAT_DEV" table "$LAT_TABLE" &&
			for p in tcp udp icmp; do
				ip -n "$NS_EXIT" rule add pref 100 iif lo to 100.64.0.1 ipproto "$p" lookup "$LAT_TABLE" &&
					ip -n "$NS_EXIT" rule add pref 101 iif gw from 100.64.0.1 ipproto "$p" lookup "$LAT_TABLE" || return 1
			done &&
			ip -n "$NS_EXIT" rule add pref 200 lookup local &&
			ip -n "$NS_EXIT" rule del pref 0 lookup local
	} >>"$EG_TMP/delay-rules.log" 2>&1
}

delay_down() {
	{
		ip -n "$NS_EXIT" rule add pref 0 lookup local
		ip -n "$NS_EXIT" rule del pref 200 lookup local
		while ip -n "$NS_EXIT" rule del pref 100 2>/dev/null; do :; done
		while ip -n "$NS_EXIT" rule del pref 101 2>/dev/null; do :; done
		ip -n "$NS_EXIT" route flush table "$LAT_TABLE"
		nsx "$NS_EXIT" sysctl -qw net.ipv4.tcp_early_demux=1 net.ipv4.udp_early_demux=1
	} >>"$EG_TMP/delay-rules.log" 2>&1
	[ -n "$DELAY_PID" ] && stop_pid "$DELAY_PID" TERM
	DELAY_PID=""
	return 0
}

# delay_verify — the RTT as gw sees it: ping (ICMP) and TCP connect() times to
# the exit's SOCKS port. Leaves "ping_ms=... tcp_connect_ms=..." in DELAY_SEEN.
DELAY_SEEN=""
delay_verify() {
	local pingv tcpv
	pingv=$(tmo 20 "$NS_GW" ping -n -q -c 10 -i 0.2 "$EXIT_ADDR" 2>&1 |
		sed -n 's|.*= \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\)/.*|min=\1 avg=\2 max=\3|p')
	tcpv=$(tmo 30 "$NS_GW" "$PY" "$BENCH_DIR/latency.py" connect "$EXIT_ADDR:$LAT_EXIT_PORT" --count 20 2>&1 | tail -n1)
	DELAY_SEEN="ping_ms(${pingv:-failed}) tcp_connect_ms(${tcpv:-failed})"
}

# lat_round IMPL REP — one implementation's latency samples for one repetition.
lat_round() {
	local impl=$1 rep=$2 m out
	say "== latency: $impl, repetition $rep/$LAT_REPS ($(( $(date +%s) - T0 )) s)"
	SETUP_ERR=""
	EXIT_PORT=$LAT_EXIT_PORT
	if ! "impl_up_$impl"; then
		say "  setup failed: $SETUP_ERR"
		for m in tcp_ttfb dns_first tcp_ttfb_burst dns_first_burst; do
			lsample "$impl" "$m" "$rep" "setup failed: $SETUP_ERR"
		done
		"impl_down_$impl"
		EXIT_PORT=1080
		return
	fi
	local leak0 leak
	leak0=$(nft_count "$NS_INET" benchleak leak)
	local per=$(( (LAT_N + LAT_REPS - 1) / LAT_REPS ))
	local bursts=$(( (per + LAT_BURST - 1) / LAT_BURST ))
	local gap
	gap=$(calc "$LAT_GAP * $RTT")
	lat_run "$impl" "$rep" tcp_ttfb tcp --count "$per" --gap-ms "$gap"
	lat_run "$impl" "$rep" dns_first dns --count "$per" --gap-ms "$gap" --timeout-s 5
	lat_run "$impl" "$rep" tcp_ttfb_burst tcp --count $((bursts * LAT_BURST)) --burst "$LAT_BURST" --gap-ms $((RTT * 10))
	lat_run "$impl" "$rep" dns_first_burst dns --count $((bursts * LAT_BURST)) --burst "$LAT_BURST" --gap-ms $((RTT * 10)) --timeout-s 5
	if [ -n "$PROXY_PID" ] && ! pid_alive "$PROXY_PID"; then
		say "  WARNING: $impl exited during the round; its log: $(tail -n 3 "$EG_TMP/$impl.log" 2>/dev/null | tr '\n' ' ')"
	fi
	# The HTTP body names the exit (or the probe failed); DNS answers look the
	# same either way, so: nothing may have gone out through gw's uplink.
	leak=$(( $(nft_count "$NS_INET" benchleak leak) - leak0 ))
	if [ "$leak" -ne 0 ]; then
		say "  WARNING: $leak packets left through gw's uplink during $impl's round (not via the exit)"
		for m in tcp_ttfb dns_first tcp_ttfb_burst dns_first_burst; do
			lsample "$impl" "$m" "$rep" "round invalid: $leak packets leaked via gw's uplink"
		done
	fi
	"impl_down_$impl"
	EXIT_PORT=1080
}

# lsample IMPL METRIC REP WHY — a failed latency measurement.
lsample() { printf '%s\t%s\t%s\tn/a\t%s\n' "$1" "$2" "$3" "$4" >>"$LAT_SAMPLES"; }

# lat_run IMPL REP METRIC KIND ARGS... — run the client in the container; it
# appends the raw per-probe times (ms) to LAT_SAMPLES and prints a summary.
lat_run() {
	local impl=$1 rep=$2 metric=$3 kind=$4; shift 4
	local out
	out=$(tmo 600 "$NS_C" "$PY" "$BENCH_DIR/latency.py" probe "$kind" --impl "$impl" --rep "$rep" --metric "$metric" \
		--tcp "$TARGET:80" --expect-ip "$EXIT_EGRESS" --dns "$DNS_ADDR" --dns-name www.bench.test --dns-answer "$TARGET" \
		--rtt-ms "$RTT" --append "$LAT_SAMPLES" "$@" 2>&1)
	say "    $metric: $(printf '%s\n' "$out" | tail -n1)"
}

latency_part() {
	LAT_SAMPLES="$OUT/latency-samples.tsv"
	printf 'impl\tmetric\trep\tms\tnote\n' >"$LAT_SAMPLES"
	say ""
	say "== latency part: RTT ${RTT} ms (delay line: $(calc "$RTT / 2") ms each way), exit danted :$LAT_EXIT_PORT"
	latency_exit_up || { log "danted did not start: $(tail -n 3 "$EG_TMP/danted-lat.log")"; return 1; }
	delay_up "$(calc "$RTT / 2")" || { log "delay line setup failed: $(tail -n 3 "$EG_TMP/delay-rules.log")"; delay_down; return 1; }
	delay_verify
	say "  delay line check from gw: $DELAY_SEEN"
	# The TCP handshake gw -> exit must take one RTT (0.9..2 RTT), or the
	# delay line is not in the path (or not alone on it): no point measuring.
	local c50
	c50=$(printf '%s\n' "$DELAY_SEEN" | sed -n 's/.*tcp_connect_ms(.* p50=\([0-9.]*\) .*/\1/p')
	if [ -z "$c50" ] || [ "$(calc "$c50 >= 0.9 * $RTT && $c50 <= 2 * $RTT")" != 1 ]; then
		log "delay line check failed: TCP connect p50 '${c50:-none}' ms for RTT $RTT ms; not measuring"
		delay_down
		stop_pid "$DANTED_PID" TERM
		return 1
	fi
	local rep impl
	for rep in $(seq 1 "$LAT_REPS"); do
		for impl in $LAT_IMPLS; do
			lat_round "$impl" "$rep"
		done
	done
	delay_verify
	say "  delay line check from gw (after): $DELAY_SEEN"
	delay_down
	say "  delay line: $(cat "$EG_TMP/delay.stats" 2>/dev/null || echo 'no stats')"
	{
		echo "latency: RTT ${RTT} ms, LAT_N=$LAT_N LAT_REPS=$LAT_REPS LAT_BURST=$LAT_BURST LAT_GAP=$LAT_GAP, impls: $LAT_IMPLS"
		echo "latency delay line check: $DELAY_SEEN"
		echo "latency delay line stats: $(cat "$EG_TMP/delay.stats" 2>/dev/null)"
	} >>"$OUT/env.txt"
	stop_pid "$DANTED_PID" TERM # its forked helpers go with it (and with the namespace at exit)
	say ""
	"$PY" "$BENCH_DIR/latency.py" report --samples "$LAT_SAMPLES" --out "$OUT" --impls "$LAT_IMPLS" --rtt-ms "$RTT" \
		--title "egressd latency bench $(date -u '+%Y-%m-%d %H:%M UTC'), RTT ${RTT} ms, exit danted" \
		--delay "$DELAY_SEEN" >"$EG_TMP/latency-report.out" || log "latency report failed"
	# A full run prints it at the end, next to the other table.
	[ "$LAT_ONLY" = 1 ] && cat "$EG_TMP/latency-report.out"
	return 0
}
