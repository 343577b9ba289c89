#!/usr/bin/env bash
# netns-tests/labels.sh — containers choose their exit by Docker label
# (`docker run --label egressd.tunnel=exit1`), followed live from a real
# dockerd (Debian's docker.io) on the Engine API.
#
#  Docker network egress: br-egress 10.8.0.1/24 fd08::1/80 (no --ip needed)
#  egressd in gw: routes: [] — every route comes from a label;
#  docker: (socket: $EG_TMP/docker-link.sock), a symlink made only after
#  egressd started, so it first runs with Docker unreachable.
#  exits: exit0 microsocks (TCP only), exit1/exit2 danted (TCP+UDP).
#
#   S  Docker unreachable at start: egressd runs and says so; a labelled
#      container is rejected (TCP reset, nothing leaks) until the route is live
#   L  with the socket there: labelled containers leave by their own exit for
#      TCP v4/v6, UDP and DNS via Docker's embedded DNS; time from `docker run`
#      returning to the route being live is measured; `egressd stats` and
#      `egressd top` name the container on its source's row
#   U  an unlabelled container is rejected, nothing leaks
#   T  a label naming an unknown tunnel: rejected, counted once, doctor FAILs
#   R  relabel by re-creating: the new exit; restart keeps the exit
#   I  IP reuse: a labelled container's open flow is reset when it stops (a
#      neighbour's is not), and an unlabelled container that gets its address
#      is rejected, never sent through the old exit
#   D  dockerd restarted (a container without restart policy is gone, one is
#      added after): the label routes match `docker ps` again
#   M  100 labelled containers started and removed: no route, session or fd left
#
# Usage: sudo netns-tests/labels.sh (EGRESSD=binary, EG_KEEP_TMP=1 keeps logs).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 23
# shellcheck source=topology.sh
. "$HERE/topology.sh"
# shellcheck source=tools/docker_lib.sh
. "${DOCKER_LIB:-$HERE/tools/docker_lib.sh}"

require_root_and_tools nft iptables ip6tables microsocks danted python3 ss timeout ps nsenter tar
for t in "$DOCKERD_BIN" "$DOCKER_CLI" /bin/busybox; do
	[ -x "$t" ] || skip_all "missing $t (scripts/install-deps.sh: docker.io busybox-static)"
done
eg_init
eg_cleanup_hook() { dk_cleanup_hook; }
T0=$(date +%s)

if ! ensure_egressd; then
	fail "build" "egressd binary $(egressd_bin) missing and cargo build --release failed"
	summary
	exit 1
fi

dk_host_up
dk_vars
dockerd_start || die "dockerd did not start (log: $DK_LOG)"
dk_image || die "image import failed"
dk network create --ipv6 --subnet 10.8.0.0/24 --gateway 10.8.0.1 --subnet fd08::/80 --gateway fd08::1 \
	-o com.docker.network.bridge.name=br-egress egress >/dev/null || die "network egress"

CONF=$EG_TMP/egressd.ron
SOCK=$EG_TMP/egressd.sock
LINK=$EG_TMP/docker-link.sock
cat >"$CONF" <<EOF
(
    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
    tunnels: {
        "exit0": Socks5(server: "100.64.0.2:1080", udp: false),
        "exit1": Socks5(server: "100.64.1.2:1080"),
        "exit2": Socks5(server: "100.64.2.2:1080"),
    },
    routes: [],
    intercept: (interfaces: ["br-egress"]),
    dns: (upstream: "192.0.2.53:53"),
    control: (socket: "$SOCK"),
    docker: (socket: "$LINK"),
)
EOF
E0=$(exit_egress4 0)
E1=$(exit_egress4 1)
E2=$(exit_egress4 2)

ctl() { nsx "$NS_GW" "$(egressd_bin)" "$@" --socket "$SOCK"; }
label_routes() { ctl route list 2>/dev/null | grep -c '(docker: '; }
route_of() { ctl route list 2>/dev/null | grep -F "$1/" | grep '(docker: ' | head -n 1; }
# has_route ADDR [TUNNEL] — a label route for ADDR (to TUNNEL) is live.
has_route() { route_of "$1" | grep -q " -> ${2:-}"; }
# stat_total NAME — a counter from the totals.
stat_total() { ctl stats 2>/dev/null | awk -v k="$1" '$1 == k { print $2; exit }'; }
# src_tcp_active ADDR — open TCP flows of one route source (columns counted
# from the end: the name may carry the container's name).
src_tcp_active() { ctl stats 2>/dev/null | awk -v a="$1/" 'index($1, a) == 1 { print $(NF-7); exit }'; }
egressd_fds() { ls "/proc/$EGRESSD_PID/fd" 2>/dev/null | wc -l; }

# run_lab NAME [DOCKER-RUN-ARGS...] — a sleeping container on `egress`.
run_lab() {
	local name=$1; shift
	dk run -d --name "$name" --network egress --stop-signal KILL "$@" "$DK_IMAGE" /bin/sleep 100000 >/dev/null
}
addr4() { dk inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
addr6() { dk inspect -f '{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}' "$1"; }
# whoami NAME [TARGET] — the address the target saw, or "" (reset, timeout).
whoami() {
	DK_TIMEOUT=10 dk exec "$1" /bin/nc -w 3 "${2:-$TARGET4}" 80 </dev/null 2>/dev/null | tr -d '\r' | tail -n 1
}
# dns_txt NAME SERVER — whoami.test TXT as answered (UDP), or "".
dns_txt() {
	DK_TIMEOUT=12 dk exec "$1" /bin/nslookup -type=TXT whoami.test "$2" 2>/dev/null |
		sed -n 's/.*text = "\(.*\)".*/\1/p' | head -n 1
}

# ------------------------------------------------------------------ S Docker unreachable at start
eg_spawn "$NS_GW" "$EG_TMP/egressd.log" env RUST_LOG=info "$(egressd_bin)" run --config "$CONF"
EGRESSD_PID=$EG_LAST_PID
wait_until 10 tcp_listening "$NS_GW" "$LISTEN_PORT" || die "egressd did not listen: $(tail -n 5 "$EG_TMP/egressd.log")"
nsx "$NS_GW" "$(egressd_bin)" rules --config "$CONF" >"$EG_TMP/rules.sh" && nsx "$NS_GW" sh -e "$EG_TMP/rules.sh" ||
	die "egressd rules failed"
if wait_until 5 grep -q "running with the config routes only" "$EG_TMP/egressd.log" && pid_alive "$EGRESSD_PID"; then
	pass "S1 Docker unreachable at start: egressd runs and says so ($(grep -o 'docker: cannot connect[^;]*' "$EG_TMP/egressd.log" | head -n 1 | cut -c1-60)...)"
else
	fail "S1 egressd should run without Docker and say so" "$(tail -n 3 "$EG_TMP/egressd.log" | tr '\n' ' ')"
fi
run_lab early --label egressd.tunnel=exit1 || die "container early"
leak0=$(leak_count)
seen=$(whoami early)
leak1=$(leak_count)
if [ -z "$seen" ] && [ "$leak1" -eq "$leak0" ] && [ "$(label_routes)" = 0 ]; then
	pass "S2 a labelled container whose route is not live yet is rejected (no answer, nothing leaked)"
else
	fail "S2 before its route is live a labelled container must be rejected" "saw '$seen', leak +$((leak1 - leak0))"
fi

ln -s "$DK_SOCK" "$LINK"
A_EARLY=$(addr4 early)
if wait_until 10 has_route "$A_EARLY" && [ "$(whoami early)" = "$E1" ]; then
	pass "S3 once Docker answers, the route is live: early ($A_EARLY) leaves via exit1"
else
	fail "S3 after Docker became reachable early should leave via exit1" "route '$(route_of "$A_EARLY")'"
fi

# ------------------------------------------------------------------ L label routes
t0=$(now_ns)
run_lab w1 --label egressd.tunnel=exit1 || die "container w1"
t_run=$(now_ns)
A1=$(addr4 w1)
wait_until 5 has_route "$A1"
t_live=$(now_ns)
ms_run=$(((t_run - t0) / 1000000))
ms_live=$(((t_live - t_run) / 1000000))
if [ -n "$(route_of "$A1")" ] && [ "$ms_live" -lt 1000 ]; then
	pass "L1 w1's route is live $ms_live ms after \`docker run -d\` returned (the run took $ms_run ms): $(route_of "$A1")"
else
	fail "L1 w1's route should be live within 1 s of docker run" "after $ms_live ms: '$(route_of "$A1")'"
fi
run_lab w2 --label egressd.tunnel=exit2 || die "container w2"
A2=$(addr4 w2)
wait_until 5 has_route "$A2"
s1=$(whoami w1)
s2=$(whoami w2)
if [ "$s1" = "$E1" ] && [ "$s2" = "$E2" ]; then
	pass "L2 w1 and w2 (no --ip, no config route) leave by their labels' exits: $s1, $s2"
else
	fail "L2 labelled containers should leave by their exits" "w1 '$s1' (want $E1), w2 '$s2' (want $E2)"
fi
s6=$(whoami w1 "$TARGET6")
if [ "$s6" = "$(exit_egress6 1)" ] && [ -n "$(route_of "$(addr6 w1)")" ]; then
	pass "L3 w1 over IPv6 ($(addr6 w1)) leaves via exit1 as $s6"
else
	fail "L3 w1 over IPv6 should leave via exit1" "saw '$s6', route '$(route_of "$(addr6 w1)")'"
fi
d1=$(dns_txt w1 "$PUBDNS4")
d2=$(dns_txt w2 127.0.0.11)
if [ "$d1" = "$E1" ] && [ "$d2" = "$E2" ]; then
	pass "L4 UDP DNS through the label's tunnel: w1 asks $PUBDNS4 ($d1), w2 asks Docker's embedded DNS ($d2)"
else
	fail "L4 labelled containers' DNS should leave by their exits" "w1 '$d1', w2 via 127.0.0.11 '$d2'"
fi

d6=$(dns_txt w1 "$PUBDNS6")
if [ "$d6" = "$(exit_egress6 1)" ]; then
	pass "L5 w1's UDP over IPv6 (DNS to $PUBDNS6) leaves via exit1 as $d6"
else
	fail "L5 w1's IPv6 UDP should leave via exit1" "answer '$d6', want $(exit_egress6 1)"
fi
row=$(ctl stats 2>/dev/null | grep -F "$A2/32 (w2)")
if [ -n "$row" ]; then
	pass "L6 stats name a label-routed source by its container: $(printf '%s' "$row" | awk '{ print $1, $2 }')"
else
	fail "L6 stats should name w2's source by its container" "$(ctl stats 2>&1 | grep -F "$A2" | head -n 2 | tr '\n' ' ')"
fi
# `egressd top` (plain snapshot: stdout is not a terminal) names it too.
trow=$(ctl top --once 2>/dev/null | grep -F "$A2/32 (w2)")
if [ -n "$trow" ]; then
	pass "L7 egressd top names the container on its source's row: $(printf '%s' "$trow" | awk '{ print $1, $2, $3 }')"
else
	fail "L7 egressd top should name w2 on its row" "$(ctl top --once 2>&1 | head -n 6 | tr '\n' '|')"
fi

# ------------------------------------------------------------------ U unlabelled
run_lab u1 || die "container u1"
leak0=$(leak_count)
su=$(whoami u1)
du=$(dns_txt u1 "$PUBDNS4")
leak1=$(leak_count)
if [ -z "$su$du" ] && [ "$leak1" -eq "$leak0" ] && [ -z "$(route_of "$(addr4 u1)")" ]; then
	pass "U1 an unlabelled container is rejected (TCP, DNS), nothing leaks"
else
	fail "U1 an unlabelled container must be rejected" "tcp '$su', dns '$du', leak +$((leak1 - leak0))"
fi

# ------------------------------------------------------------------ T unknown tunnel
run_lab typo --label egressd.tunnel=exitX || die "container typo"
AT=$(addr4 typo)
wait_until 5 has_route "$AT"
leak0=$(leak_count)
st=$(whoami typo)
leak1=$(leak_count)
if [ -z "$st" ] && [ "$leak1" -eq "$leak0" ] && route_of "$AT" | grep -q 'reject (label names unknown tunnel "exitX")'; then
	pass "T1 label exitX (no such tunnel) is rejected, never sent through another tunnel: $(route_of "$AT")"
else
	fail "T1 a label naming an unknown tunnel must reject" "saw '$st', route '$(route_of "$AT")'"
fi
dk restart typo >/dev/null 2>&1
sleep 0.5
n=$(grep -c 'label egressd.tunnel="exitX" names no tunnel' "$EG_TMP/egressd.log")
c=$(stat_total docker_unknown_tunnel)
if [ "$n" = 1 ] && [ "${c:-0}" = 1 ]; then
	pass "T2 logged once and counted once (docker_unknown_tunnel $c), also across a restart of the container"
else
	fail "T2 the unknown tunnel should be logged and counted once" "log lines $n, counter '$c'"
fi
doc=$(nsx "$NS_GW" "$(egressd_bin)" doctor --config "$CONF" 2>&1)
if printf '%s\n' "$doc" | grep -q '^FAIL container typo .*"exitX"'; then
	pass "T3 doctor FAILs the container: $(printf '%s\n' "$doc" | grep '^FAIL container typo' | cut -c1-110)"
else
	fail "T3 doctor should FAIL the container with the unknown tunnel" "$(printf '%s\n' "$doc" | grep -i 'docker\|container' | head -n 3 | tr '\n' ' ')"
fi
dk rm -f typo >/dev/null

# ------------------------------------------------------------------ R relabel, restart
dk rm -f w1 >/dev/null
run_lab w1 --label egressd.tunnel=exit2 --ip "$A1" || die "container w1 (relabelled)"
wait_until 5 has_route "$A1" exit2
s=$(whoami w1)
if [ "$s" = "$E2" ]; then
	pass "R1 w1 re-created with label exit2 (same address $A1) now leaves via exit2"
else
	fail "R1 a relabelled container should move to its new exit" "saw '$s', route '$(route_of "$A1")'"
fi
dk restart w2 >/dev/null
wait_until 5 has_route "$(addr4 w2)"
s=$(whoami w2)
if [ "$s" = "$E2" ]; then
	pass "R2 w2 restarted ($(addr4 w2)) keeps its exit: $s"
else
	fail "R2 a restarted container should keep its exit" "saw '$s'"
fi

# ------------------------------------------------------------------ I IP reuse, flows reset
R_IP=10.8.0.40
run_lab r1 --label egressd.tunnel=exit1 --ip "$R_IP" -v "$EG_TOOLS:/tools:ro" || die "container r1"
run_lab r2 --label egressd.tunnel=exit1 --ip 10.8.0.41 || die "container r2"
wait_until 5 has_route 10.8.0.41
wait_until 5 has_route "$R_IP"
for c in r1 r2; do
	dk exec -d "$c" /bin/sh -c "sleep 1000 | /bin/nc $TARGET4 9004" >/dev/null
done
active_is() { [ "$(src_tcp_active "$1")" = "$2" ]; }
wait_until 5 active_is "$R_IP" 1
wait_until 5 active_is 10.8.0.41 1
before="$(src_tcp_active "$R_IP")/$(src_tcp_active 10.8.0.41)"
dk rm -f r1 >/dev/null
if wait_until 3 active_is "$R_IP" 0 && [ "$(src_tcp_active 10.8.0.41)" = 1 ] && [ "$before" = 1/1 ]; then
	pass "I1 r1 removed: its open flow via exit1 was reset at once; r2's flow (control) still open"
else
	fail "I1 a removed container's flows must be reset" "open before $before, after: r1 '$(src_tcp_active "$R_IP")' r2 '$(src_tcp_active 10.8.0.41)'"
fi
run_lab reuse --ip "$R_IP" || die "container reuse"
leak0=$(leak_count)
s=$(whoami reuse)
leak1=$(leak_count)
if [ -z "$s" ] && [ "$leak1" -eq "$leak0" ] && [ -z "$(route_of "$R_IP")" ]; then
	pass "I2 an unlabelled container on r1's old address $R_IP is rejected, not sent via exit1"
else
	fail "I2 an address's new owner must not inherit the old exit" "saw '$s', route '$(route_of "$R_IP")', leak +$((leak1 - leak0))"
fi
dk rm -f reuse r2 u1 >/dev/null

# ------------------------------------------------------------------ D dockerd restart
run_lab gone --label egressd.tunnel=exit0 || die "container gone"   # no restart policy
run_lab stays --label egressd.tunnel=exit0 --restart always || die "container stays"
wait_until 5 has_route "$(addr4 gone)"
n_before=$(label_routes)
dockerd_stop
sleep 1
n_down=$(label_routes)
if [ "$n_down" = "$n_before" ] && [ "$n_down" -gt 0 ]; then
	pass "D1 dockerd stopped: egressd keeps its $n_down label routes meanwhile"
else
	fail "D1 label routes should stay while dockerd is down" "before $n_before, while down $n_down"
fi
dockerd_start || die "dockerd did not restart"
run_lab after --label egressd.tunnel=exit1 || die "container after"
# shellcheck disable=SC2016
want=$(dk ps --filter label=egressd.tunnel --format '{{.ID}}' | while read -r id; do
	dk inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}} {{end}}' "$id"
done | tr ' ' '\n' | grep . | sort)
routes_now() { ctl route list 2>/dev/null | grep '(docker: ' | awk '{ sub("/.*", "", $1); print $1 }' | sort; }
routes_match() { [ "$(routes_now)" = "$want" ]; }
if wait_until 15 routes_match && [ -n "$want" ]; then
	pass "D2 after dockerd's restart the label routes match docker ps ($(printf '%s\n' "$want" | wc -l) addresses; 'gone' removed, 'after' added)"
else
	fail "D2 label routes should match docker ps after a dockerd restart" "want [$(printf '%s' "$want" | tr '\n' ' ')] have [$(routes_now | tr '\n' ' ')]"
fi
s=$(whoami after)
if [ "$s" = "$E1" ]; then
	pass "D3 a container started after the reconnect leaves via its exit ($s)"
else
	fail "D3 a container started after the reconnect should work" "saw '$s'"
fi

# ------------------------------------------------------------------ M many containers
dk rm -f early w1 w2 stays after gone >/dev/null 2>&1
routes_are() { [ "$(label_routes)" = "$1" ]; }
at_least_routes() { [ "$(label_routes)" -ge "$1" ]; }
sessions_are() { [ "$(stat_total udp_sessions_active)" = "$1" ]; }
wait_until 10 routes_are 0
fd0=$(egressd_fds)
s0=$(stat_total udp_sessions_active)
t0=$(date +%s)
seq 1 100 | xargs -P 6 -I{} timeout 60 "$DOCKER_CLI" -H "unix://$DK_SOCK" run -d --name "m{}" --network egress \
	--stop-signal KILL --label egressd.tunnel=exit1 "$DK_IMAGE" \
	/bin/sh -c "/bin/nslookup -type=TXT whoami.test $PUBDNS4 >/dev/null 2>&1; exec /bin/sleep 100000" >/dev/null 2>&1
started=$(dk ps -q --filter name=m | wc -l)
wait_until 10 at_least_routes $((started * 2))
peak=$(label_routes)
sess=$(stat_total udp_sessions_total)
# shellcheck disable=SC2046
dk rm -f $(dk ps -aq --filter name=m) >/dev/null 2>&1
t1=$(date +%s)
wait_until 10 routes_are 0
wait_until 10 sessions_are "$s0"
fd1=$(egressd_fds)
if [ "$started" -eq 100 ] && [ "$peak" -ge 200 ] && [ "$(label_routes)" = 0 ] &&
	[ "$(stat_total udp_sessions_active)" = "$s0" ] && [ "$fd1" -le $((fd0 + 2)) ]; then
	pass "M1 100 labelled containers started and removed in $((t1 - t0)) s: peak $peak label routes, then 0; UDP sessions back to $s0 (total $sess); fds $fd0 -> $fd1"
else
	fail "M1 100 containers must leave no route, session or fd behind" \
		"started $started, peak routes $peak, routes now $(label_routes), sessions active $(stat_total udp_sessions_active) (was $s0), fds $fd0 -> $fd1"
fi
if pid_alive "$EGRESSD_PID"; then
	pass "M2 egressd still running after all of it"
else
	fail "M2 egressd should still run" "$(tail -n 5 "$EG_TMP/egressd.log" | tr '\n' ' ')"
fi

log "labels.sh took $(($(date +%s) - T0)) s"
summary
