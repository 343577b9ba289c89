#!/usr/bin/env bash
# netns-tests/dockerclass.sh — a bandwidth class chosen by Docker label
# (issue 26: "a label class follows the container across re-creation") and a
# quota class whose allowance follows the container's name (issue 27), with
# a real dockerd (Debian's docker.io) and real containers, iperf3 through a
# real SOCKS5 exit (danted).
#
#  Docker network egress: br-egress 10.8.0.1/24 fd08::1/80
#    w1    --label egressd.tunnel=exit1 --label egressd.class=slow  (20mbit)
#          10.8.0.20, re-created as 10.8.0.21 (same name and labels),
#          then re-created at 10.8.0.21 with egressd.class=fast (200mbit)
#    open  --label egressd.tunnel=exit1, no class label        10.8.0.30
#    gold  --label egressd.tunnel=exit1 --label egressd.class=gold (no such class)
#    qm1   --label egressd.tunnel=exit1 --label egressd.class=metered
#          10.8.0.50, re-created as 10.8.0.51 (same name and labels)
#    qm2   the same labels, at qm1's old address 10.8.0.50
#  egressd in gw: routes: [] (every route comes from a label),
#    docker: (socket: dockerd's, label: "egressd.tunnel", class_label: "egressd.class"),
#    classes: { "slow": (rate: "20mbit"), "fast": (rate: "200mbit"),
#               "metered": (quota: (bytes: "2MB", every_days: 1)) }  (on_quota: Reject)
#    state_dir: $EG_TMP/state
#  exit1: danted; inet: iperf3 servers on 203.0.113.10:5201 and :5202, and
#  egtool's services (9002: sends N bytes asked for with "N\n"; 80: who-am-i).
#
# The lower bound (18) needs a machine that is not saturated by other work:
# while an unrelated benchmark pushed Gbit/s through namespaces of its own
# on the same 2 cores (load 8-9), the slow runs here measured 16.8 .. 18.7
# Mbit/s (1 s intervals down to 12), with egressd at nice -10 or a 2 MB
# receive window alike, and classes.sh's figures fell too; once it ended,
# 19.99 .. 20.00. A FAIL line gives the 1 s intervals and the load average.
#
# iperf3 runs inside the containers (the host's /usr read-only; the image's
# /lib and /lib64 point into it). Rates are iperf3's receiver figures
# (Mbit/s, 10^6) over -t 5 less the first second (-O 1: slow start and the
# bucket's first burst left out). egressd's own counters come from its
# control socket (`stats --prometheus`), which dies (the suite fails) when it
# does not answer: an unreadable counter never reads as 0.
#
# Checks (one PASS/FAIL line each; 13 on every path):
#   1  w1 (exit1, class slow, 10.8.0.20): `egressd route list` shows its
#      label route "-> exit1, class slow"
#   2  w1's download (-R) 18..21 Mbit/s
#   3  egressd's tcp_bytes_down for 10.8.0.20 over that run <= rate x wall
#      time + burst (50 kB) + 64 kB, as classes.sh check 1
#   4  control: `open` (same exit, no class label: its route shows no class)
#      during a second run of w1's: > 30 Mbit/s while w1 stays <= 21 (and
#      within egressd's bytes bound), so
#      the 20 is w1's class, not the path (w1's 18..21 is measured alone in
#      check 2: the control's flood costs it CPU on a 2-core machine)
#   5  `docker rm -f w1`, `docker run` again with the same name and labels at
#      another address (--ip 10.8.0.21): the route for 10.8.0.21 says class
#      slow, 10.8.0.20's route is gone
#   6  the re-created w1's download 18..21 Mbit/s, and egressd's bytes down
#      bound holds for 10.8.0.21
#   7  w1 re-created once more at 10.8.0.21 with egressd.class=fast: the
#      route says class fast, the download is > 30 Mbit/s (the address
#      carries no cap of its own: check 6 did not pass vacuously)
#   8  gold (egressd.class=gold, a class the config lacks): the route list
#      says 'reject (class label names unknown class "gold")', a TCP connect
#      through is reset, nothing reaches the leak detector
#   9  logged once and counted once: docker_unknown_class 0 -> 1 in
#      `egressd stats`
#  10  qm1 (class metered: 2 MB a day, Reject) asks egtool's source for 5 MB:
#      the transfer is cut short, and `egressd quota list` has a row for the
#      identity qm1 (the container's name) with USED exactly 2000000 (a lone
#      source stops at its quota: request and payload, both ways) and STATE
#      spent
#  11  a new TCP connect from qm1 is reset (or refused) in under 1 s, and
#      `egressd stats`' drop_quota moved
#  12  `docker rm -f qm1`, `docker run` again with the same name and labels
#      at 10.8.0.51: its connect is still reset, quota list still says qm1
#      spent with the same USED (the allowance follows the name, not the
#      address); qm2 (same class) at qm1's old 10.8.0.50 has its own: a
#      100 kB download works, its row shows 0 < USED < 2000000
#  13  `egressd quota reset qm1` exits 0; qm1's USED reads 0, a 100 kB
#      download works again and USED is then that download's bytes
#      (100000 .. 200000)
#
# egressd starting and its rules applying are preconditions (die), not checks.
#
# Usage: sudo netns-tests/dockerclass.sh (EGRESSD=binary, EG_KEEP_TMP=1 keeps
# logs, CLASS_SECS=5 the iperf3 run length).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 13
# shellcheck source=topology.sh
. "$HERE/topology.sh"
# shellcheck source=tools/docker_lib.sh
. "$HERE/tools/docker_lib.sh"
# exit0 (microsocks) and exit1 (danted): only exit1 is used.
NEXITS=2

require_root_and_tools nft iptables ip6tables microsocks danted python3 iperf3 ss timeout ps nsenter tar awk
for t in "$DOCKERD_BIN" "$DOCKER_CLI" /bin/busybox /usr/bin/python3 /usr/bin/iperf3; do
	[ -x "$t" ] || skip_all "missing $t (scripts/install-deps.sh: docker.io busybox-static iperf3)"
done
eg_init
eg_cleanup_hook() { dk_cleanup_hook; }
T0=$(date +%s)

# shellcheck source=tools/docker_checks.sh
. "$HERE/tools/docker_checks.sh"

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
SECS=${CLASS_SECS:-5}
RATE_SLOW=2500000 # 20mbit in bytes/s
BURST=50000       # 20 ms of it

dk_host_up
dk_vars
# shellcheck disable=SC2119  # no extra dockerd arguments
dockerd_start || die "dockerd did not start (log: $DK_LOG)"
dk_image || die "image import failed"
dk network create --ipv6 --subnet 10.8.0.0/24 --gateway 10.8.0.1 --subnet fd08::/80 --gateway fd08::1 \
	-o com.docker.network.bridge.name=br-egress egress >/dev/null || die "network egress"

CONF=$EG_TMP/egressd.ron
SOCK=$EG_TMP/egressd.sock
EGRESSD_LOG=$EG_TMP/egressd.log
cat >"$CONF" <<EOF
(
    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
    tunnels: {
        "exit1": Socks5(warm: 0, warm_udp: 0, server: "100.64.1.2:1080"),
    },
    classes: {
        "slow": (rate: "20mbit"),
        "fast": (rate: "200mbit"),
        "metered": (quota: (bytes: "2MB", every_days: 1)),
    },
    routes: [],
    intercept: (interfaces: ["br-egress"]),
    dns: (upstream: "192.0.2.53:53"),
    control: (socket: "$SOCK"),
    docker: (socket: "$DK_SOCK", label: "egressd.tunnel", class_label: "egressd.class"),
    state_dir: "$EG_TMP/state",
)
EOF
mkdir -p "$EG_TMP/state"

eg_spawn "$NS_GW" "$EGRESSD_LOG" env RUST_LOG=info "$(egressd_bin)" run --config "$CONF"
EGRESSD_PID=$EG_LAST_PID
wait_until 15 tcp_listening "$NS_GW" "$LISTEN_PORT" || die "egressd did not listen: $(tail -n 5 "$EGRESSD_LOG")"
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1 ||
	die "egressd rules failed: $(tail -n 3 "$EG_TMP/rules.out" | tr '\n' ' ')"

for p in 5201 5202; do
	eg_spawn "$NS_INET" "$EG_TMP/iperf-$p.log" iperf3 -s -B "$TARGET4" -p "$p"
done
for p in 5201 5202; do
	wait_tcp_listen "$NS_INET" "$p" "$TARGET4" 10 || die "iperf3 server on :$p did not listen"
done

# ---- helpers (the route list and counters as labels.sh reads them)
# ctl_out ARGS... — egressd's control client in gw; dies when it does not answer.
ctl_out() {
	local out
	out=$(nsx "$NS_GW" timeout -k 2 20 "$(egressd_bin)" "$@" --socket "$SOCK" 2>&1) ||
		die "egressd $* on the control socket failed: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"
	printf '%s\n' "$out"
}
# routes — `egressd route list`; it always ends with "(default) -> ...".
routes() {
	local out
	out=$(ctl_out route list) || return 1
	case $out in *"(default) -> "*) ;; *) die "egressd route list: not a route list: $(printf '%s' "$out" | head -n 3 | tr '\n' ' ')" ;; esac
	printf '%s\n' "$out"
}
# route_of ADDR — ADDR's label route ("10.8.0.20/32 -> exit1, class slow  (docker: w1 ...)"), or "".
route_of() { routes | awk -v a="$1/" 'index($1, a) == 1 && /\(docker: / { print; exit }'; }
# route_is ADDR TEXT — ADDR's label route, up to "  (docker:", is "ADDR/32 -> TEXT".
route_is() {
	local r
	r=$(route_of "$1")
	[ "${r%%  (docker:*}" = "$1/32 -> $2" ]
}
no_route() { [ -z "$(route_of "$1")" ]; }
# stat_total NAME — a counter from `egressd stats`' totals; dies when absent.
stat_total() {
	local out v
	out=$(ctl_out stats) || return 1
	v=$(printf '%s\n' "$out" | awk -v k="$1" '$1 == k { print $2; exit }')
	case $v in '' | *[!0-9]*) die "egressd stats: no counter $1 (got '$v')" ;; esac
	printf '%s\n' "$v"
}
# src_metric PROM NAME SOURCE — the sum of NAME's series of one source.
src_metric() {
	printf '%s\n' "$1" | awk -v m="$2" -v l="source=\"$3/32\"" '
		{ split($1, a, "{") } a[1] == m && index($1, l) { v += $2 } END { print v + 0 }'
}
# run_w NAME IP [DOCKER-RUN-ARGS...] — a sleeping container on `egress` at IP.
run_w() {
	local name=$1 ip=$2; shift 2
	dk run -d --name "$name" --network egress --ip "$ip" --stop-signal KILL \
		-v /usr:/usr:ro -v "$EG_TOOLS:/tools:ro" "$@" "$DK_IMAGE" /bin/sleep 100000 >/dev/null
}
# ipf NAME PORT OUT [ARGS...] — an iperf3 download (-R) inside container
# NAME from the server at :PORT; its JSON in OUT.
ipf() {
	local name=$1 port=$2 out=$3
	shift 3
	DX_TIMEOUT=$((SECS + 25)) dx "$name" /usr/bin/iperf3 -c "$TARGET4" -p "$port" -J -t "$SECS" -O 1 -R "$@" >"$out" 2>&1
}
# mbps OUT — the receiver's Mbit/s of a run, or "none".
mbps() {
	python3 - "$1" <<-'EOF'
	import json, sys
	try:
	    e = json.load(open(sys.argv[1]))["end"]
	    print("%.2f" % (e["sum_received"]["bits_per_second"] / 1e6))
	except Exception:
	    print("none")
	EOF
}
# ivals OUT — the run's 1 s intervals in Mbit/s ("[omitted] a b c ..."),
# for the log and a failure's details: a shaper that loses time shows
# as low seconds, a late reader as a low second followed by a high one.
ivals() {
	python3 - "$1" <<-'EOF'
	import json, sys
	try:
	    iv = json.load(open(sys.argv[1]))["intervals"]
	    print(" ".join(("[%.1f]" if i["sum"]["omitted"] else "%.1f") % (i["sum"]["bits_per_second"] / 1e6) for i in iv))
	except Exception:
	    print("none")
	EOF
}
# within X LO HI — LO <= X <= HI (X may be "none": false).
within() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x != "none" && x + 0 >= lo && x + 0 <= hi) }'; }
# shaped_run NAME ADDR TAG — ipf NAME into $EG_TMP/TAG.json; sets RATE (Mbit/s),
# BYTES (egressd's tcp_bytes_down for ADDR over the run), BOUND and MS.
shaped_run() {
	local p0 p1 t0 t1
	p0=$(prom_or_die)
	t0=$(now_ns)
	ipf "$1" 5201 "$EG_TMP/$3.json"
	t1=$(now_ns)
	p1=$(prom_or_die)
	RATE=$(mbps "$EG_TMP/$3.json")
	BYTES=$(($(src_metric "$p1" egressd_tcp_bytes_down_total "$2") - $(src_metric "$p0" egressd_tcp_bytes_down_total "$2")))
	BOUND=$(((t1 - t0) * RATE_SLOW / 1000000000 + BURST + 65536))
	MS=$(((t1 - t0) / 1000000))
	log "$3: $RATE Mbit/s, 1 s intervals $(ivals "$EG_TMP/$3.json"); egressd's bytes down $BYTES in $MS ms (bound $BOUND); load $(cut -d' ' -f1-3 /proc/loadavg)"
}
# run_detail TAG — the end of an iperf3 run's output, for a failure line.
run_detail() { tail -c 300 "$EG_TMP/$1.json" | tr '\n' ' '; }
# qrow NAME — NAME's row of `egressd quota list` less the name ("USED LIMIT
# LEFT PERIOD_END STATE"), or "" when it has none; dies when the answer
# lacks the header.
qrow() {
	local out
	out=$(ctl_out quota list) || return 1
	printf '%s\n' "$out" | grep -qx 'IDENTITY USED LIMIT LEFT PERIOD_END STATE' ||
		die "egressd quota list: no header: $(printf '%s' "$out" | head -n 3 | tr '\n' ' ')"
	printf '%s\n' "$out" | awk -v n="$1" '$1 == n { $1 = ""; sub(/^ /, ""); print; exit }'
}
# qused NAME / qstate NAME — one field of NAME's row ("" without a row).
qused() { qrow "$1" | awk '{ print $1 }'; }
qstate() { qrow "$1" | awk '{ print $5 }'; }
# fetch NAME BYTES — egtool's download of BYTES from inet's source (9002)
# inside container NAME; its one line (ok received ... | error: ...).
fetch() { py "$1" /tools/egtool.py download "$TARGET4" 9002 "$2" 2>&1 | tail -n 1; }
# quick S — what p_reset printed took under 1 s ("reset 0.01s").
quick() { awk -v t="${1##* }" 'BEGIN { sub(/s$/, "", t); exit !(t != "" && t + 0 < 1) }'; }

A1=10.8.0.20
A2=10.8.0.21
AO=10.8.0.30
AG=10.8.0.40
log "dockerd, image, network, egressd up after $(($(date +%s) - T0)) s"

# ------------------------------------------------------------------ 1-4 w1 in class slow
run_w w1 "$A1" --label egressd.tunnel=exit1 --label egressd.class=slow || die "container w1"
run_w open "$AO" --label egressd.tunnel=exit1 || die "container open"
wait_until 15 route_is "$A1" "exit1, class slow"
wait_until 15 route_is "$AO" exit1
r=$(route_of "$A1")
route_is "$A1" "exit1, class slow"
verdict $? "1 w1 (labels exit1, slow; $A1): route list shows $r" "route '$r'"

shaped_run w1 "$A1" w1-slow
within "$RATE" 18 21
verdict $? "2 w1's download at class slow (20mbit): iperf3 receiver $RATE Mbit/s" "got $RATE, want 18..21 (intervals $(ivals "$EG_TMP/w1-slow.json"); load $(cut -d' ' -f1-3 /proc/loadavg); $(run_detail w1-slow))"
[ "$BYTES" -gt 0 ] && [ "$BYTES" -le "$BOUND" ]
verdict $? "3 egressd moved $BYTES bytes down for w1 ($A1) in $MS ms <= rate x time + burst ($BOUND)" \
	"$BYTES bytes, bound $BOUND"
# The control runs beside a second run of w1's, not beside the measured
# one: its flood (Gbit/s through the same egressd on 2 cores) costs w1
# CPU, and only w1's cap (<= 21) is asked for while it runs.
ipf open 5202 "$EG_TMP/open.json" &
open_pid=$!
shaped_run w1 "$A1" w1-beside
wait "$open_pid"
ro=$(mbps "$EG_TMP/open.json")
within "$ro" 30 100000 && within "$RATE" 1 21 && [ "$BYTES" -le "$BOUND" ] && route_is "$AO" exit1
verdict $? "4 control: open (same exit, no class label: $(route_of "$AO" | cut -d' ' -f1-3)) got $ro Mbit/s while w1 beside it stayed at $RATE ($BYTES bytes <= $BOUND)" \
	"open $ro Mbit/s ($(run_detail open)), w1 $RATE ($BYTES bytes, bound $BOUND), route '$(route_of "$AO")'"
dk rm -f open >/dev/null

# ------------------------------------------------------------------ 5-6 re-created, another address
dk rm -f w1 >/dev/null || die "docker rm w1"
run_w w1 "$A2" --label egressd.tunnel=exit1 --label egressd.class=slow || die "container w1 (re-created)"
wait_until 15 route_is "$A2" "exit1, class slow"
wait_until 15 no_route "$A1"
r=$(route_of "$A2")
old=$(route_of "$A1")
route_is "$A2" "exit1, class slow" && [ -z "$old" ]
verdict $? "5 w1 re-created (same name and labels) at $A2: $r; $A1's route gone" "new '$r', old '$old'"
shaped_run w1 "$A2" w1-again
within "$RATE" 18 21 && [ "$BYTES" -gt 0 ] && [ "$BYTES" -le "$BOUND" ]
verdict $? "6 the re-created w1's download at class slow: $RATE Mbit/s; egressd moved $BYTES bytes in $MS ms <= $BOUND" \
	"got $RATE Mbit/s, want 18..21 (intervals $(ivals "$EG_TMP/w1-again.json"); load $(cut -d' ' -f1-3 /proc/loadavg)), $BYTES bytes (bound $BOUND) ($(run_detail w1-again))"

# ------------------------------------------------------------------ 7 re-created in class fast
dk rm -f w1 >/dev/null || die "docker rm w1"
run_w w1 "$A2" --label egressd.tunnel=exit1 --label egressd.class=fast || die "container w1 (fast)"
wait_until 15 route_is "$A2" "exit1, class fast"
r=$(route_of "$A2")
ipf w1 5201 "$EG_TMP/w1-fast.json"
rf=$(mbps "$EG_TMP/w1-fast.json")
route_is "$A2" "exit1, class fast" && within "$rf" 30 100000
verdict $? "7 w1 re-created at $A2 with class fast: $r; download $rf Mbit/s (> 30)" \
	"route '$r', got $rf ($(run_detail w1-fast))"

# ------------------------------------------------------------------ 8-9 a class the config lacks
u0=$(stat_total docker_unknown_class)
run_w gold "$AG" --label egressd.tunnel=exit1 --label egressd.class=gold || die "container gold"
want='reject (class label names unknown class "gold")'
wait_until 15 route_is "$AG" "$want"
leak0=$(leak_count)
r=$(p_reset gold "$TARGET4")
leak1=$(leak_count)
rt=$(route_of "$AG")
is_reset "$r" && route_is "$AG" "$want" && [ "$leak1" -eq "$leak0" ]
verdict $? "8 gold (class gold, not in the config) is rejected (TCP $r), nothing leaked: $rt" \
	"tcp '$r' (want a reset), route '$rt', detector +$((leak1 - leak0))"
u1=$(stat_total docker_unknown_class)
n=$(grep -c 'label egressd.class="gold" names no class' "$EGRESSD_LOG")
[ "$u0" = 0 ] && [ "$u1" = 1 ] && [ "$n" = 1 ]
verdict $? "9 logged once and counted once: docker_unknown_class $u0 -> $u1" "counter $u0 -> $u1, log lines $n"
dk rm -f gold >/dev/null

# ------------------------------------------------------------------ 10-13 quota by container name
Q1=10.8.0.50
Q2=10.8.0.51
QUOTA=2000000
t10=$(date +%s)
run_w qm1 "$Q1" --label egressd.tunnel=exit1 --label egressd.class=metered || die "container qm1"
wait_until 15 route_is "$Q1" "exit1, class metered"
d=$(fetch qm1 5000000)
u=$(qused qm1)
st=$(qstate qm1)
log "qm1's 5 MB download: $d; quota row '$(qrow qm1)'"
case $d in "ok received 5000000 "*) cut=no ;; *) cut=yes ;; esac
[ "$cut" = yes ] && [ "$u" = "$QUOTA" ] && [ "$st" = spent ]
verdict $? "10 qm1 (class metered, 2MB) asked for 5 MB: cut short ($d); quota list: qm1 used $u, $st" \
	"download '$d', row qm1 '$(qrow qm1)' (want used $QUOTA, spent)"

q0=$(stat_total drop_quota)
r=$(p_reset qm1 "$TARGET4")
q1=$(stat_total drop_quota)
is_reset "$r" && quick "$r" && [ "$q1" -gt "$q0" ]
verdict $? "11 qm1's new connect: $r; drop_quota $q0 -> $q1" "tcp '$r' (want a reset in < 1 s), drop_quota $q0 -> $q1"

dk rm -f qm1 >/dev/null || die "docker rm qm1"
run_w qm1 "$Q2" --label egressd.tunnel=exit1 --label egressd.class=metered || die "container qm1 (re-created)"
wait_until 15 route_is "$Q2" "exit1, class metered"
wait_until 15 no_route "$Q1"
r=$(p_reset qm1 "$TARGET4")
u2=$(qused qm1)
st2=$(qstate qm1)
run_w qm2 "$Q1" --label egressd.tunnel=exit1 --label egressd.class=metered || die "container qm2"
wait_until 15 route_is "$Q1" "exit1, class metered"
d2=$(fetch qm2 100000)
v=$(qused qm2)
log "re-created qm1 at $Q2: $r, row '$(qrow qm1)'; qm2 at $Q1: $d2, row '$(qrow qm2)'"
is_reset "$r" && [ "$u2" = "$u" ] && [ "$st2" = spent ] &&
	case $d2 in "ok received 100000 "*) true ;; *) false ;; esac &&
	[ -n "$v" ] && [ "$v" -gt 0 ] && [ "$v" -lt "$QUOTA" ]
verdict $? "12 qm1 re-created at $Q2 still refused ($r), quota list qm1 used $u2, $st2; qm2 at $Q1 has its own: 100 kB download ok, used $v" \
	"qm1 tcp '$r', row '$(qrow qm1)' (want used $u, spent); qm2 download '$d2', row '$(qrow qm2)'"

out=$(nsx "$NS_GW" timeout -k 2 20 "$(egressd_bin)" quota reset qm1 --socket "$SOCK" 2>&1)
rc=$?
u3=$(qused qm1)
d3=$(fetch qm1 100000)
u4=$(qused qm1)
st4=$(qstate qm1)
log "quota reset qm1: rc $rc '$out'; used $u3, after a 100 kB download: $d3, row '$(qrow qm1)'"
[ "$rc" = 0 ] && [ "$u3" = 0 ] && case $d3 in "ok received 100000 "*) true ;; *) false ;; esac &&
	[ -n "$u4" ] && [ "$u4" -ge 100000 ] && [ "$u4" -le 200000 ] && [ "$st4" = ok ]
verdict $? "13 quota reset qm1: exit 0, used $u3; a 100 kB download works again, used $u4, $st4" \
	"reset rc $rc '$out', used after it '$u3', download '$d3', row '$(qrow qm1)'"
log "checks 10-13 took $(($(date +%s) - t10)) s"

finish_suite dockerclass.sh
