#!/usr/bin/env bash
# netns-tests/classes.sh — bandwidth classes (issue 26) end to end: rate
# caps per container, a tunnel's rate shared by weight, a reload applied to
# an open flow, UDP policed; iperf3 through real SOCKS5 exits (danted).
#
#  c0 10.8.0.10 (class "c20": 20mbit) ─┐                   ┌─ exit1 danted (no rate)
#  c1 10.8.0.11 (no class)            ─┤  gw: egressd      │
#  c2 10.8.0.12 (class "w1": weight 1)─┼─ :10900 ──────────┤
#  c3 10.8.0.13 (class "w3": weight 3)─┘                   └─ exit2 danted, tunnel rate 40mbit
#  inet: iperf3 servers on 203.0.113.10:5201..5203
#
# c0 and c1 go by exit1, c2 and c3 by exit2. Rates are iperf3's receiver
# figures (Mbit/s, 10^6), over the run less its first second (-O 1: TCP's
# slow start and the bucket's first burst left out).
#
# Checks (one PASS/FAIL line each; 13 on every path):
#   1  (a) c0 down (-R): egressd's tcp_bytes_down for 10.8.0.10 over the
#      run <= rate x wall time + burst (50 kB) + 64 kB, deterministic
#   2  (a) c0 down: iperf3 receiver 18..21 Mbit/s
#   3  (a) c0 up: iperf3 receiver 18..21 Mbit/s, and egressd's counter bound
#   4  (b) c1 (no class, same exit) at the same time as c0: > 40 Mbit/s,
#      while c0 stays <= 21 (tcp_shaped_waits moved for c0 only)
#   5  `egressd stats` names c0's class on its source row and lists it among
#      the sources held to their rate (tcp_shaped_waits > 0); c1 in neither
#   6  (c) c2 (weight 1) and c3 (weight 3) at once on exit2's 40mbit:
#      10 and 30 Mbit/s +-10 %
#   7  (c) c2 alone on exit2: 36..42 Mbit/s
#   8  (d) SIGHUP c20 20mbit -> 10mbit during a 9 s flow of c0: its 1 s
#      intervals before 18..21, after the reload (+1 s) 9..10.5 Mbit/s
#   9  (e) UDP: c0 sends 50 Mbit/s (iperf3 -u): received <= 21 Mbit/s and
#      udp_drop_shaped for 10.8.0.10 > 0
#  10  (f) control: a reload without classes; c0 (same path) > 30 Mbit/s,
#      so (a) cannot pass vacuously
#  11  no busy loop: while c0 was held to 20mbit (check 1's run) egressd
#      used < 25 % of one core (a starved direction waits on a timer)
#  13  flows of one shaped source take turns: while c0's bulk download
#      holds it at 20mbit, 6 small HTTP requests from c0 (0.3 s apart)
#      each finish within 2 s (the flow whose timer sorted first used to
#      take every chunk: the others waited for the bulk flow to end)
#  12  visible during (b): the metrics say c0 is held to 2500000 bytes/s
#      down (shape_rate_down) with bytes held back (tcp_held_bytes > 0 in
#      one of 3 samples) and c1 to nothing; `egressd top --once` shows c0's
#      CAP/s 2.5M beside its DOWN/s, c1's CAP/s `-`
#
# Usage: sudo netns-tests/classes.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root; skips (exit 0) otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=topology.sh
. "$HERE/topology.sh"
plan_checks 13

require_root_and_tools nft iptables ip6tables microsocks danted python3 iperf3 timeout awk
eg_init
ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
T0=$(date +%s)
SECS=${CLASS_SECS:-6}
RATE20=2500000 # 20mbit in bytes/s
BURST=50000    # 20 ms of it

topo_up
topo_start_services
SOCK=$EG_TMP/egressd.sock
CONF=$EG_TMP/classes.ron

# write_conf C0_CLASS_RATE [NO_CLASSES] — egressd's config for this suite.
write_conf() {
	local classes routes
	classes="classes: { \"c20\": (rate: \"$1\"), \"w1\": (weight: 1), \"w3\": (weight: 3) },"
	routes='(source: "10.8.0.10", tunnel: "exit1", class: "c20"), (source: "10.8.0.11", tunnel: "exit1"),
        (source: "10.8.0.12", tunnel: "exit2", class: "w1"), (source: "10.8.0.13", tunnel: "exit2", class: "w3"),'
	if [ -n "${2:-}" ]; then
		classes=""
		routes='(source: "10.8.0.10", tunnel: "exit1"), (source: "10.8.0.11", tunnel: "exit1"),'
	fi
	cat >"$CONF" <<-EOF
	(
	    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
	    tunnels: {
	        "exit1": Socks5(warm: 0, warm_udp: 0, server: "100.64.1.2:1080"),
	        "exit2": Socks5(warm: 0, warm_udp: 0, server: "100.64.2.2:1080", rate: "40mbit"),
	    },
	    $classes
	    routes: [ $routes ],
	    intercept: (tcp: Redirect),
	    dns: (upstream: "192.0.2.53:53"),
	    control: (socket: "$SOCK"),
	)
	EOF
}
write_conf 20mbit
egressd_up_or_exit "$CONF"

for p in 5201 5202 5203; do
	eg_spawn "$NS_INET" "$EG_TMP/iperf-$p.log" iperf3 -s -B "$TARGET4" -p "$p"
done
for p in 5201 5202 5203; do
	wait_tcp_listen "$NS_INET" "$p" "$TARGET4" 10 || die "iperf3 server on :$p did not listen"
done

# ipf NS PORT OUT ARGS... — one iperf3 client run (bounded), its JSON in OUT.
ipf() {
	local ns=$1 port=$2 out=$3
	shift 3
	nsx "$ns" timeout $((SECS + 20)) iperf3 -c "$TARGET4" -p "$port" -J "$@" >"$out" 2>&1
}
# mbps OUT — the receiver's Mbit/s of a run (TCP or UDP), or "none".
mbps() {
	python3 - "$1" <<-'EOF'
	import json, sys
	try:
	    e = json.load(open(sys.argv[1]))["end"]
	    s = e.get("sum_received") or e["sum"]
	    print("%.2f" % (s["bits_per_second"] / 1e6))
	except Exception:
	    print("none")
	EOF
}
# intervals OUT FROM TO — mean Mbit/s of the 1 s intervals FROM..TO-1.
intervals() {
	python3 - "$1" "$2" "$3" <<-'EOF'
	import json, sys
	try:
	    iv = json.load(open(sys.argv[1]))["intervals"][int(sys.argv[2]):int(sys.argv[3])]
	    print("%.2f" % (sum(i["sum"]["bits_per_second"] for i in iv) / len(iv) / 1e6))
	except Exception:
	    print("none")
	EOF
}
# within X LO HI — LO <= X <= HI (X may be "none": false).
within() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x != "none" && x + 0 >= lo && x + 0 <= hi) }'; }
# src_metric PROM NAME SOURCE — the sum of NAME's series of one source.
src_metric() {
	printf '%s\n' "$1" | awk -v m="$2" -v l="source=\"$3/32\"" '
		{ split($1, a, "{") } a[1] == m && index($1, l) { v += $2 } END { print v + 0 }'
}

# ---- (a) c0's class, down then up
# cpu_ticks — egressd's user + system time so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$EGRESSD_PID/stat"; }
P0=$(prom_or_die)
t0=$(now_ns)
k0=$(cpu_ticks)
ipf "${NS_C[0]}" 5201 "$EG_TMP/a-down.json" -t "$SECS" -O 1 -R
k1=$(cpu_ticks)
t1=$(now_ns)
cpu_pct=$(((k1 - k0) * 100000000000 / $(getconf CLK_TCK) / (t1 - t0)))
P1=$(prom_or_die)
down=$(mbps "$EG_TMP/a-down.json")
bytes=$(($(src_metric "$P1" egressd_tcp_bytes_down_total 10.8.0.10) - $(src_metric "$P0" egressd_tcp_bytes_down_total 10.8.0.10)))
bound=$(((t1 - t0) * RATE20 / 1000000000 + BURST + 65536))
if [ "$bytes" -gt 0 ] && [ "$bytes" -le "$bound" ]; then
	pass "1 (a) egressd moved $bytes bytes down for c0 in $(((t1 - t0) / 1000000)) ms <= rate x time + burst ($bound)"
else
	fail "1 (a) egressd's bytes down for c0 within rate x time + burst" "$bytes bytes, bound $bound"
fi
if within "$down" 18 21; then pass "2 (a) c0 down at 20mbit: iperf3 receiver $down Mbit/s"; else fail "2 (a) c0 down 18..21 Mbit/s" "got $down"; fi
P0=$(prom_or_die)
t0=$(now_ns)
ipf "${NS_C[0]}" 5201 "$EG_TMP/a-up.json" -t "$SECS" -O 1
t1=$(now_ns)
P1=$(prom_or_die)
up=$(mbps "$EG_TMP/a-up.json")
bytes=$(($(src_metric "$P1" egressd_tcp_bytes_up_total 10.8.0.10) - $(src_metric "$P0" egressd_tcp_bytes_up_total 10.8.0.10)))
bound=$(((t1 - t0) * RATE20 / 1000000000 + BURST + 65536))
if within "$up" 18 21 && [ "$bytes" -le "$bound" ]; then
	pass "3 (a) c0 up at 20mbit: iperf3 receiver $up Mbit/s; egressd moved $bytes bytes <= $bound"
else
	fail "3 (a) c0 up 18..21 Mbit/s within rate x time + burst" "got $up Mbit/s, $bytes bytes (bound $bound)"
fi

# ---- (b) an unlimited neighbour on the same exit
P0=$(prom_or_die)
ipf "${NS_C[0]}" 5201 "$EG_TMP/b-c0.json" -t "$SECS" -O 1 -R &
b0=$!
ipf "${NS_C[1]}" 5202 "$EG_TMP/b-c1.json" -t "$SECS" -O 1 -R &
b1=$!
# Mid-run: what the metrics and top show of c0 and c1 (check 12).
sleep $((SECS / 2))
held_max=0
for _ in 1 2 3; do
	PM=$(prom_or_die)
	h=$(src_metric "$PM" egressd_tcp_held_bytes 10.8.0.10)
	[ "$h" -gt "$held_max" ] && held_max=$h
	sleep 0.5
done
cap0=$(src_metric "$PM" egressd_shape_rate_down 10.8.0.10)
cap1=$(src_metric "$PM" egressd_shape_rate_down 10.8.0.11)
TOP=$(nsx "$NS_GW" timeout 10 "$(egressd_bin)" top --once --socket "$SOCK" 2>&1)
wait "$b0" "$b1"
P1=$(prom_or_die)
r0=$(mbps "$EG_TMP/b-c0.json")
r1=$(mbps "$EG_TMP/b-c1.json")
w0=$(($(src_metric "$P1" egressd_tcp_shaped_waits_total 10.8.0.10) - $(src_metric "$P0" egressd_tcp_shaped_waits_total 10.8.0.10)))
w1=$(($(src_metric "$P1" egressd_tcp_shaped_waits_total 10.8.0.11) - $(src_metric "$P0" egressd_tcp_shaped_waits_total 10.8.0.11)))
if within "$r1" 40 100000 && within "$r0" 0 21 && [ "$w0" -gt 0 ] && [ "$w1" -eq 0 ]; then
	pass "4 (b) c1 (no class, same exit) $r1 Mbit/s beside c0 $r0; shaped waits c0 $w0, c1 $w1"
else
	fail "4 (b) c1 unaffected by c0's class" "c1 $r1 Mbit/s, c0 $r0; shaped waits c0 $w0, c1 $w1"
fi

top0=$(printf '%s\n' "$TOP" | awk '$1 ~ /^10\.8\.0\.10\// { print $(NF - 4), $(NF - 1) }')
top1=$(printf '%s\n' "$TOP" | awk '$1 ~ /^10\.8\.0\.11\// { print $(NF - 1) }')
case $top0 in 2.[0-9]M\ 2.5M) top_ok=1 ;; *) top_ok=0 ;; esac
if [ "$cap0" -eq "$RATE20" ] && [ "$cap1" -eq 0 ] && [ "$held_max" -gt 0 ] && [ "$top_ok" = 1 ] && [ "$top1" = "-" ]; then
	pass "12 visible: c0 held to $cap0 B/s down, $held_max bytes held back; top: c0 DOWN/s and CAP/s '$top0', c1 CAP/s '$top1'"
else
	fail "12 metrics and top show c0's cap and bytes held back" \
		"shape_rate_down c0 $cap0 c1 $cap1, held $held_max; top c0 '$top0' c1 '$top1': $(printf '%s\n' "$TOP" | tr '\n' '|')"
fi

ST=$(nsx "$NS_GW" timeout 10 "$(egressd_bin)" stats --socket "$SOCK" 2>&1)
held=$(printf '%s\n' "$ST" | awk '/^held to their rate/ { on = 1; next } on && /^$/ { exit } on && /^  / { print $1 }' | tr '\n' ' ')
if printf '%s\n' "$ST" | grep -q '^10\.8\.0\.10/32 \[class c20\]' && [ "$held" = "10.8.0.10/32 " ] &&
	! printf '%s\n' "$ST" | grep -q '^10\.8\.0\.11/32 \[class'; then
	pass "5 egressd stats: c0's row names class c20; held to their rate: $held"
else
	fail "5 egressd stats shows c0's class and its waits" "$(printf '%s\n' "$ST" | grep -E '^10\.8|^held|^  10' | tr '\n' '|')"
fi

# ---- flows of one shaped source take turns (13)
ipf "${NS_C[0]}" 5201 "$EG_TMP/t-bulk.json" -t "$SECS" -R &
tb=$!
sleep 1
slow=""
for i in 1 2 3 4 5 6; do
	t0=$(now_ns)
	got=$(nsx "${NS_C[0]}" curl -sS --max-time 4 "http://$TARGET4/" 2>&1 | tr -d '\r' | tail -n 1)
	ms=$((($(now_ns) - t0) / 1000000))
	case $got in 198.51.100.*) [ "$ms" -le 2000 ] || slow="$slow #$i ${ms}ms" ;; *) slow="$slow #$i '$got' ${ms}ms" ;; esac
	turns="${turns:-}$ms "
	sleep 0.3
done
wait "$tb"
if [ -z "$slow" ]; then
	pass "13 c0's small requests beside its own 20mbit bulk flow: each done in ms: ${turns}"
else
	fail "13 c0's small requests within 2 s beside its bulk flow" "slow or failed:$slow (all: ${turns})"
fi

# ---- (c) weights 1 and 3 on a 40mbit tunnel, then one alone
ipf "${NS_C[2]}" 5202 "$EG_TMP/c-w1.json" -t "$SECS" -O 1 -R &
c0=$!
ipf "${NS_C[3]}" 5203 "$EG_TMP/c-w3.json" -t "$SECS" -O 1 -R
wait "$c0"
r1=$(mbps "$EG_TMP/c-w1.json")
r3=$(mbps "$EG_TMP/c-w3.json")
if within "$r1" 9 11 && within "$r3" 27 33; then
	pass "6 (c) weights 1:3 on 40mbit: $r1 and $r3 Mbit/s"
else
	fail "6 (c) weights 1:3 on 40mbit: 10 and 30 +-10 %" "got $r1 and $r3"
fi
ipf "${NS_C[2]}" 5202 "$EG_TMP/c-alone.json" -t "$SECS" -O 1 -R
ra=$(mbps "$EG_TMP/c-alone.json")
if within "$ra" 36 42; then pass "7 (c) weight 1 alone on 40mbit: $ra Mbit/s"; else fail "7 (c) alone on 40mbit 36..42" "got $ra"; fi

# ---- (d) SIGHUP lowers c0's class during an open flow
write_conf 20mbit
nsx "${NS_C[0]}" timeout 30 iperf3 -c "$TARGET4" -p 5201 -J -t 9 -R >"$EG_TMP/d.json" 2>&1 &
d0=$!
sleep 4.5
write_conf 10mbit
kill -HUP "$EGRESSD_PID"
wait "$d0"
before=$(intervals "$EG_TMP/d.json" 1 4)
after=$(intervals "$EG_TMP/d.json" 6 9)
if within "$before" 18 21 && within "$after" 9 10.5; then
	pass "8 (d) SIGHUP 20mbit -> 10mbit on an open flow: $before Mbit/s before, $after after"
else
	fail "8 (d) SIGHUP applies the new rate to an open flow" "before $before (18..21), after $after (9..10.5)"
fi
write_conf 20mbit
kill -HUP "$EGRESSD_PID"
sleep 1

# ---- (e) UDP policed
P0=$(prom_or_die)
ipf "${NS_C[0]}" 5201 "$EG_TMP/e.json" -u -b 50M -l 1200 -t "$SECS"
P1=$(prom_or_die)
ru=$(mbps "$EG_TMP/e.json")
drops=$(($(src_metric "$P1" egressd_udp_drop_shaped_total 10.8.0.10) - $(src_metric "$P0" egressd_udp_drop_shaped_total 10.8.0.10)))
if within "$ru" 1 21 && [ "$drops" -gt 0 ]; then
	pass "9 (e) UDP 50 Mbit/s through 20mbit: $ru Mbit/s received, udp_drop_shaped $drops"
else
	fail "9 (e) UDP held to 20mbit, drops counted" "received $ru Mbit/s, udp_drop_shaped $drops"
fi

# ---- (f) control: the same path without a class
write_conf 20mbit none
kill -HUP "$EGRESSD_PID"
sleep 1
ipf "${NS_C[0]}" 5201 "$EG_TMP/f.json" -t "$SECS" -O 1 -R
rf=$(mbps "$EG_TMP/f.json")
if within "$rf" 30 100000; then
	pass "10 (f) control: c0 without a class $rf Mbit/s (> 30)"
else
	fail "10 (f) control: c0 without a class exceeds 20mbit" "got $rf"
fi

if [ "$cpu_pct" -lt 25 ]; then
	pass "11 no busy loop: egressd used $cpu_pct % of a core while c0 was held to 20mbit"
else
	fail "11 no busy loop while shaped" "egressd used $cpu_pct % of a core during c0's 20mbit run"
fi

finish_suite classes.sh
