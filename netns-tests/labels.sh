#!/usr/bin/env bash
# netns-tests/labels.sh — containers choose their exit by Docker label
# (`docker run --label egressd.tunnel=exit1`), followed live from a real
# dockerd (Debian's docker.io) on the Engine API.
#
#  Docker network egress: br-egress 10.8.0.1/24 fd08::1/80 (no --ip needed)
#  egressd in gw: routes: [] — every route comes from a label;
#  docker: (socket: $EG_TMP/docker-link.sock), a symlink made only after
#  egressd started, so it first runs with Docker unreachable;
#  udp.dns_idle_timeout_secs 600, so that M's DNS sessions are still open
#  when their containers go (their end is then the removal's doing).
#  exits: exit0 microsocks (TCP only), exit1/exit2 danted (TCP+UDP).
#
# Probes run inside the containers (the host's /usr and netns-tests/tools
# mounted read-only) with tools/docker_checks.sh's helpers: a rejection is a
# TCP reset seen by tools/egtool.py expect-reset (a timeout, an error or a
# failing `docker exec` is not one), "no DNS answer" is dig's timeout or an
# answer-less status (never an error of dig itself), and the route list and
# counters come from egressd's control socket, which dies (the whole suite
# fails) when it does not answer: a broken probe never reads as "rejected",
# "no route" or "0". The leak detector is topology.sh's (whatever arrives in
# inet from gw's MASQUERADEd uplink or with a container source).
#
#   C1 control: before egressd and its rules, a labelled container's TCP and
#      DNS leave natively as gw's uplink address and the leak detector counts
#      them — the detector that S2, U1, T1 and I2 read as "nothing leaked"
#   S  Docker unreachable at start: egressd runs and says so; a labelled
#      container is rejected (TCP reset, no label route, nothing leaks) until
#      the route is live, then leaves by its exit
#   L  with the socket there: labelled containers leave by their own exit for
#      TCP v4/v6, UDP and DNS via Docker's embedded DNS; L1: the route comes
#      from the event stream: live in egressd within L1_MAX_MS (3 s) of the
#      container's start, measured by egressd's own log timestamp against
#      Docker's State.StartedAt, not by our polling (typically a few ms; up to
#      ~0.5 s seen with load 69 on 2 cores, where dockerd itself answers
#      slowly); the figure, and when `route list` first showed the route, are
#      printed; `egressd stats` and `egressd top` name the container on its
#      source's row
#   U  an unlabelled container is rejected (TCP reset, no DNS answer, no
#      route), nothing leaks
#   T  a label naming an unknown tunnel: rejected (reset, a reject route),
#      nothing leaks; logged and counted once, also across a restart that
#      really happened (new StartedAt and PID, and egressd has handled the
#      events after it); doctor FAILs the container
#   R  relabel by re-creating: the new exit; a verified restart keeps the exit
#   I  IP reuse: a labelled container's open flow is reset when it stops (a
#      neighbour's is not), and an unlabelled container that gets its address
#      is rejected (reset, no route, no leak), never sent through the old exit
#   D  dockerd stopped: egressd notices (its log) and keeps its label routes;
#      restarted (a container without restart policy is gone, one is added
#      after): the label routes match `docker ps` again
#   UP `egressd upgrade` with dockerd running: the new process serves the
#      label routes it took over (they match `docker ps`, a labelled
#      container leaves by its exit, the old process ended) and follows the
#      events (a container started after leaves by its exit)
#   M  100 labelled containers started (at least 90 must really run: a
#      `docker run` failing on a loaded machine is Docker's, and is reported),
#      each opening a DNS session through exit1; every running container's
#      routes (v4+v6) and session are seen open, then all are removed: no
#      route, session or fd left (fds less those the warm pools hold ready:
#      the 100 lookups are a burst a UDP pool learns, up to warm_max)
#
# "egressd has handled Docker's events up to now" is shown by a barrier: a
# fresh labelled container whose route must appear (and go again when it is
# removed); egressd handles the event stream in order, each resync listing
# the containers as they are then.
#
# Usage: sudo netns-tests/labels.sh (EGRESSD=binary, EG_KEEP_TMP=1 keeps logs).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 26
# shellcheck source=topology.sh
. "$HERE/topology.sh"
# shellcheck source=tools/docker_lib.sh
. "${DOCKER_LIB:-$HERE/tools/docker_lib.sh}"

require_root_and_tools nft iptables ip6tables microsocks danted python3 ss timeout ps nsenter tar curl dig
for t in "$DOCKERD_BIN" "$DOCKER_CLI" /bin/busybox /usr/bin/python3 /usr/bin/curl /usr/bin/dig; do
	[ -x "$t" ] || skip_all "missing $t (scripts/install-deps.sh: docker.io busybox-static)"
done
eg_init
eg_cleanup_hook() { dk_cleanup_hook; }
T0=$(date +%s)

# shellcheck source=tools/docker_checks.sh
. "$HERE/tools/docker_checks.sh"

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
EGRESSD_LOG=$EG_TMP/egressd.log
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
    udp: (dns_idle_timeout_secs: 600),
    control: (socket: "$SOCK"),
    docker: (socket: "$LINK"),
)
EOF
E1=$(exit_egress4 1)
E2=$(exit_egress4 2)

# ctl ARGS... — egressd's control client in gw, bounded in time.
ctl() { nsx "$NS_GW" timeout -k 2 20 "$(egressd_bin)" "$@" --socket "$SOCK"; }
# ctl_out ARGS... — its output; dies when the control socket does not answer
# (an unreadable route list or counter never reads as "no route" or "0").
ctl_out() {
	local out
	out=$(ctl "$@" 2>&1) || die "egressd $* on the control socket failed: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"
	printf '%s\n' "$out"
}
# routes — `egressd route list`; it always ends with the "(default) -> ..."
# line: without it the answer is not a route list.
routes() {
	local out
	out=$(ctl_out route list) || return 1
	case $out in *"(default) -> "*) ;; *) die "egressd route list: not a route list: $(printf '%s' "$out" | head -n 3 | tr '\n' ' ')" ;; esac
	printf '%s\n' "$out"
}
label_routes() { routes | grep -c '(docker: '; }
# route_of ADDR — ADDR's label route ("10.8.0.3/32 -> exit1  (docker: w1 ...)"), or "".
route_of() { routes | awk -v a="$1/" 'index($1, a) == 1 && /\(docker: / { print; exit }'; }
# has_route ADDR [TUNNEL] — a label route for ADDR (to TUNNEL) is live.
has_route() { route_of "$1" | grep -q " -> ${2:-}"; }
no_route() { [ -z "$(route_of "$1")" ]; }
# stat_total NAME — a counter from the totals; dies when it is not there.
stat_total() {
	local out v
	out=$(ctl_out stats) || return 1
	v=$(printf '%s\n' "$out" | awk -v k="$1" '$1 == k { print $2; exit }')
	case $v in '' | *[!0-9]*) die "egressd stats: no counter $1 (got '$v')" ;; esac
	printf '%s\n' "$v"
}
# src_tcp_active ADDR — open TCP flows of one route source (columns counted
# from the end: the name may carry the container's name).
src_tcp_active() { ctl_out stats | awk -v a="$1/" 'index($1, a) == 1 { print $(NF-7); exit }'; }
egressd_fds() {
	local n
	n=$(find "/proc/$EGRESSD_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
	[ "$n" -gt 0 ] || die "cannot count egressd's fds (pid $EGRESSD_PID)"
	printf '%s\n' "$n"
}
# egressd_fds_unpooled — egressd's fds less those its warm pools hold ready
# (a greeted connection: 1; a UDP association: its control connection and
# relay socket, 2): pools grow to the bursts they see (warm_max), so what
# they hold after a burst is not a leak. Pools counted as they are read.
egressd_fds_unpooled() {
	local n p u
	n=$(egressd_fds)
	p=$(stat_total pool_ready)
	u=$(stat_total pool_udp_ready)
	printf '%s\n' $((n - p - 2 * u))
}
fds_unpooled_le() { [ "$(egressd_fds_unpooled)" -le "$1" ]; }

# run_lab NAME [DOCKER-RUN-ARGS...] — a sleeping container on `egress`, with
# the host's /usr and the test tools read-only (for the probes).
run_lab() {
	local name=$1; shift
	dk run -d --name "$name" --network egress --stop-signal KILL \
		-v /usr:/usr:ro -v "$EG_TOOLS:/tools:ro" "$@" "$DK_IMAGE" /bin/sleep 100000 >/dev/null
}
addr4() { dk inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
addr6() { dk inspect -f '{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}' "$1"; }
# started_pid NAME — "StartedAt Pid Running" of a container (a restart
# changes the first two).
started_pid() { dk inspect -f '{{.State.StartedAt}} {{.State.Pid}} {{.State.Running}}' "$1"; }
# pid_of STARTED_PID — the PID of a started_pid line.
pid_of() { printf '%s\n' "$1" | awk '{ print $2 }'; }
# restarted BEFORE AFTER — AFTER (started_pid) is a new start of a running
# container: another StartedAt and another PID.
restarted() {
	local b0 b1 a0 a1 ar
	read -r b0 b1 _ <<<"$1"
	read -r a0 a1 ar <<<"$2"
	[ -n "$b0" ] && [ -n "$a0" ] && [ "$a0" != "$b0" ] && [ "$a1" != "$b1" ] && [ "$a1" != 0 ] && [ "$ar" = true ]
}
# events_barrier — egressd has handled Docker's events up to now: a fresh
# labelled container's route appears, then goes when it is removed.
BARRIER_N=0
events_barrier() {
	local name a
	BARRIER_N=$((BARRIER_N + 1))
	name=barrier$BARRIER_N
	run_lab "$name" --label egressd.tunnel=exit0 || die "container $name"
	a=$(addr4 "$name")
	wait_until 15 has_route "$a" exit0 || die "the barrier $name's route ($a) did not come: egressd is not following Docker"
	dk rm -f "$name" >/dev/null || die "docker rm $name"
	wait_until 15 no_route "$a" || die "the barrier $name's route ($a) did not go after its removal"
}
# ts_ns RFC3339 — nanoseconds since the epoch (Docker's and egressd's log timestamps).
ts_ns() { date -d "$1" +%s%N; }

# ------------------------------------------------------------------ C1 control: natively, before egressd
run_lab early --label egressd.tunnel=exit1 || die "container early"
leak0=$(leak_count)
c_tcp=$(p_whoami early)
c_dns=$(p_dns early "$PUBDNS4")
leak1=$(leak_count)
[ "$c_tcp" = "$GW_UPLINK4" ] && [ "$c_dns" = "$GW_UPLINK4" ] && [ "$leak1" -gt "$leak0" ]
verdict $? "C1 control: before egressd's rules early's TCP and DNS leave natively as $GW_UPLINK4 and the leak detector counts them (+$((leak1 - leak0)))" \
	"target saw '$c_tcp', DNS answer '$c_dns', detector +$((leak1 - leak0))"

# ------------------------------------------------------------------ S Docker unreachable at start
eg_spawn "$NS_GW" "$EGRESSD_LOG" env RUST_LOG=info "$(egressd_bin)" run --config "$CONF"
EGRESSD_PID=$EG_LAST_PID
wait_until 10 tcp_listening "$NS_GW" "$LISTEN_PORT" || die "egressd did not listen: $(tail -n 5 "$EGRESSD_LOG")"
nsx "$NS_GW" "$(egressd_bin)" rules --config "$CONF" >"$EG_TMP/rules.sh" && nsx "$NS_GW" sh -e "$EG_TMP/rules.sh" ||
	die "egressd rules failed"
if wait_until 5 grep -q "running with the config routes only" "$EGRESSD_LOG" && pid_alive "$EGRESSD_PID"; then
	pass "S1 Docker unreachable at start: egressd runs and says so ($(grep -o 'docker: cannot connect[^;]*' "$EGRESSD_LOG" | head -n 1 | cut -c1-60)...)"
else
	fail "S1 egressd should run without Docker and say so" "$(tail -n 3 "$EGRESSD_LOG" | tr '\n' ' ')"
fi
leak0=$(leak_count)
r=$(p_reset early "$TARGET4")
leak1=$(leak_count)
n=$(label_routes)
is_reset "$r" && [ "$leak1" -eq "$leak0" ] && [ "$n" = 0 ]
verdict $? "S2 a labelled container whose route is not live yet is rejected (TCP $r, no label route, nothing leaked)" \
	"tcp '$r' (want a reset), label routes $n, detector +$((leak1 - leak0))"

ln -s "$DK_SOCK" "$LINK"
A_EARLY=$(addr4 early)
s=""
wait_until 15 has_route "$A_EARLY" exit1 && s=$(p_whoami early)
[ "$s" = "$E1" ]
verdict $? "S3 once Docker answers, the route is live: early ($A_EARLY) leaves via exit1" \
	"route '$(route_of "$A_EARLY")', target saw '$s'"

# ------------------------------------------------------------------ L label routes
t_call=$(now_ns)
run_lab w1 --label egressd.tunnel=exit1 || die "container w1"
t_run=$(now_ns)
A1=$(addr4 w1)
live=0
wait_until 10 has_route "$A1" exit1 && live=1
t_live=$(now_ns)
ms_run=$(((t_run - t_call) / 1000000))
ms_poll=$(((t_live - t_run) / 1000000))
started=$(dk inspect -f '{{.State.StartedAt}}' w1)
logts=$(grep -F "route $A1 -> exit1 (container w1," "$EGRESSD_LOG" | head -n 1 | sed -n 's/^\[\([^ ]*\) .*/\1/p')
ms_eg=""
if [ -n "$started" ] && [ -n "$logts" ]; then
	ms_eg=$((($(ts_ns "$logts") - $(ts_ns "$started")) / 1000000))
fi
L1_MAX_MS=3000
[ "$live" = 1 ] && [ -n "$ms_eg" ] && [ "$ms_eg" -gt -2 ] && [ "$ms_eg" -lt "$L1_MAX_MS" ]
verdict $? "L1 w1's route is live in egressd $ms_eg ms after its container started (egressd's log vs Docker's StartedAt; bound $L1_MAX_MS ms); \`route list\` showed it $ms_poll ms after \`docker run -d\` returned (the run took $ms_run ms): $(route_of "$A1")" \
	"live=$live after $ms_poll ms of polling; StartedAt '$started', egressd's route line at '$logts' (${ms_eg:-?} ms)"
run_lab w2 --label egressd.tunnel=exit2 || die "container w2"
A2=$(addr4 w2)
wait_until 10 has_route "$A2" exit2
par s1 p_whoami w1
par s2 p_whoami w2
par s6 p_whoami w1 -6
par d1 p_dns w1 "$PUBDNS4"
par d2 p_dns w2
par d6 p_dns w1 "$PUBDNS6"
par_wait
[ "$(po s1)" = "$E1" ] && [ "$(po s2)" = "$E2" ]
verdict $? "L2 w1 and w2 (no --ip, no config route) leave by their labels' exits: $(po s1), $(po s2)" \
	"w1 '$(po s1)' (want $E1), w2 '$(po s2)' (want $E2)"
A1_6=$(addr6 w1)
[ "$(po s6)" = "$(exit_egress6 1)" ] && [ -n "$(route_of "$A1_6")" ]
verdict $? "L3 w1 over IPv6 ($A1_6) leaves via exit1 as $(po s6)" "saw '$(po s6)', route '$(route_of "$A1_6")'"
[ "$(po d1)" = "$E1" ] && [ "$(po d2)" = "$E2" ]
verdict $? "L4 UDP DNS through the label's tunnel: w1 asks $PUBDNS4 ($(po d1)), w2 asks Docker's embedded DNS ($(po d2))" \
	"w1 '$(po d1)', w2 via 127.0.0.11 '$(po d2)'"
[ "$(po d6)" = "$(exit_egress6 1)" ]
verdict $? "L5 w1's UDP over IPv6 (DNS to $PUBDNS6) leaves via exit1 as $(po d6)" "answer '$(po d6)', want $(exit_egress6 1)"
row=$(ctl_out stats | grep -F "$A2/32 (w2)")
[ -n "$row" ]
verdict $? "L6 stats name a label-routed source by its container: $(printf '%s' "$row" | awk '{ print $1, $2 }')" \
	"$(ctl_out stats | grep -F "$A2" | head -n 2 | tr '\n' ' ')"
# `egressd top` (plain snapshot: stdout is not a terminal) names it too.
trow=$(ctl top --once 2>&1)
top_rc=$?
[ "$top_rc" = 0 ] && printf '%s\n' "$trow" | grep -qF "$A2/32 (w2)"
verdict $? "L7 egressd top names the container on its source's row: $(printf '%s\n' "$trow" | grep -F "$A2/32 (w2)" | awk '{ print $1, $2, $3 }')" \
	"exit $top_rc: $(printf '%s\n' "$trow" | head -n 6 | tr '\n' '|')"

# ------------------------------------------------------------------ U unlabelled
run_lab u1 || die "container u1"
AU=$(addr4 u1)
leak0=$(leak_count)
par r p_reset u1 "$TARGET4"
par d p_dns u1 "$PUBDNS4"
par_wait
leak1=$(leak_count)
is_reset "$(po r)" && no_dns_answer "$(po d)" && [ "$leak1" -eq "$leak0" ] && no_route "$AU"
verdict $? "U1 an unlabelled container is rejected (TCP $(po r | cut -d' ' -f1), DNS $(po d)), has no route, nothing leaks" \
	"tcp '$(po r)', dns '$(po d)', route '$(route_of "$AU")', detector +$((leak1 - leak0))"

# ------------------------------------------------------------------ T unknown tunnel
run_lab typo --label egressd.tunnel=exitX || die "container typo"
AT=$(addr4 typo)
wait_until 10 has_route "$AT"
leak0=$(leak_count)
r=$(p_reset typo "$TARGET4")
leak1=$(leak_count)
rt=$(route_of "$AT")
is_reset "$r" && [ "$leak1" -eq "$leak0" ] && case $rt in *'reject (label names unknown tunnel "exitX")'*) true ;; *) false ;; esac
verdict $? "T1 label exitX (no such tunnel) is rejected (TCP $r), never sent through another tunnel: $rt" \
	"tcp '$r' (want a reset), route '$rt', detector +$((leak1 - leak0))"
st0=$(started_pid typo)
dk restart typo >/dev/null 2>&1
st1=$(started_pid typo)
events_barrier
n=$(grep -c 'label egressd.tunnel="exitX" names no tunnel' "$EGRESSD_LOG")
c=$(stat_total docker_unknown_tunnel)
restarted "$st0" "$st1" && [ "$n" = 1 ] && [ "$c" = 1 ]
verdict $? "T2 logged once and counted once (docker_unknown_tunnel $c), also across a restart of the container (pid $(pid_of "$st0") -> $(pid_of "$st1"))" \
	"restart: '$st0' -> '$st1'; log lines $n, counter $c"
doc=$(nsx "$NS_GW" timeout -k 5 90 "$(egressd_bin)" doctor --config "$CONF" 2>&1)
printf '%s\n' "$doc" | grep -q '^FAIL container typo .*"exitX"'
verdict $? "T3 doctor FAILs the container: $(printf '%s\n' "$doc" | grep '^FAIL container typo' | cut -c1-110)" \
	"$(printf '%s\n' "$doc" | grep -i 'docker\|container' | head -n 3 | tr '\n' ' ')"
dk rm -f typo >/dev/null

# ------------------------------------------------------------------ R relabel, restart
dk rm -f w1 >/dev/null
run_lab w1 --label egressd.tunnel=exit2 --ip "$A1" || die "container w1 (relabelled)"
s=""
wait_until 10 has_route "$A1" exit2 && s=$(p_whoami w1)
[ "$s" = "$E2" ]
verdict $? "R1 w1 re-created with label exit2 (same address $A1) now leaves via exit2" "saw '$s', route '$(route_of "$A1")'"
st0=$(started_pid w2)
dk restart w2 >/dev/null
st1=$(started_pid w2)
events_barrier
A2=$(addr4 w2)
s=""
wait_until 10 has_route "$A2" exit2 && s=$(p_whoami w2)
restarted "$st0" "$st1" && [ "$s" = "$E2" ]
verdict $? "R2 w2 restarted ($A2, pid $(pid_of "$st0") -> $(pid_of "$st1")) keeps its exit: $s" "restart: '$st0' -> '$st1'; saw '$s'"

# ------------------------------------------------------------------ I IP reuse, flows reset
R_IP=10.8.0.40
run_lab r1 --label egressd.tunnel=exit1 --ip "$R_IP" || die "container r1"
run_lab r2 --label egressd.tunnel=exit1 --ip 10.8.0.41 || die "container r2"
wait_until 10 has_route 10.8.0.41
wait_until 10 has_route "$R_IP"
for c in r1 r2; do
	dk exec -d "$c" /bin/sh -c "sleep 1000 | /bin/nc $TARGET4 9004" >/dev/null
done
active_is() { [ "$(src_tcp_active "$1")" = "$2" ]; }
wait_until 10 active_is "$R_IP" 1
wait_until 10 active_is 10.8.0.41 1
before="$(src_tcp_active "$R_IP")/$(src_tcp_active 10.8.0.41)"
dk rm -f r1 >/dev/null
if wait_until 5 active_is "$R_IP" 0 && [ "$(src_tcp_active 10.8.0.41)" = 1 ] && [ "$before" = 1/1 ]; then
	pass "I1 r1 removed: its open flow via exit1 was reset at once; r2's flow (control) still open"
else
	fail "I1 a removed container's flows must be reset" "open before $before, after: r1 '$(src_tcp_active "$R_IP")' r2 '$(src_tcp_active 10.8.0.41)'"
fi
run_lab reuse --ip "$R_IP" || die "container reuse"
leak0=$(leak_count)
r=$(p_reset reuse "$TARGET4")
leak1=$(leak_count)
is_reset "$r" && [ "$leak1" -eq "$leak0" ] && no_route "$R_IP"
verdict $? "I2 an unlabelled container on r1's old address $R_IP is rejected (TCP $r), not sent via exit1, nothing leaks" \
	"tcp '$r' (want a reset), route '$(route_of "$R_IP")', detector +$((leak1 - leak0))"
dk rm -f reuse r2 u1 >/dev/null

# ------------------------------------------------------------------ D dockerd restart
run_lab gone --label egressd.tunnel=exit0 || die "container gone" # no restart policy
run_lab stays --label egressd.tunnel=exit0 --restart always || die "container stays"
wait_until 10 has_route "$(addr4 gone)"
wait_until 10 has_route "$(addr4 stays)"
n_before=$(label_routes)
k0=$(grep -c 'label routes, reconnecting' "$EGRESSD_LOG")
dockerd_stop
noticed() { [ "$(grep -c 'label routes, reconnecting' "$EGRESSD_LOG")" -gt "$k0" ]; }
saw=0
wait_until 15 noticed && saw=1
n_down=$(label_routes)
said=$(grep 'label routes, reconnecting' "$EGRESSD_LOG" | tail -n 1 | sed -n 's/.*keeping the \([0-9]*\) label routes.*/\1/p')
[ "$saw" = 1 ] && [ "$n_down" = "$n_before" ] && [ "$n_down" -gt 0 ] && [ "$said" = "$n_before" ]
verdict $? "D1 dockerd stopped: egressd noticed (\"keeping the $said label routes, reconnecting\") and keeps its $n_down label routes meanwhile" \
	"noticed=$saw; before $n_before, while down $n_down, egressd said '$said'"
dockerd_start || die "dockerd did not restart"
run_lab after --label egressd.tunnel=exit1 || die "container after"
# shellcheck disable=SC2016
want=$(dk ps --filter label=egressd.tunnel --format '{{.ID}}' | while read -r id; do
	dk inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}} {{end}}' "$id"
done | tr ' ' '\n' | grep . | sort)
routes_now() { routes | grep '(docker: ' | awk '{ sub("/.*", "", $1); print $1 }' | sort; }
routes_match() { [ "$(routes_now)" = "$want" ]; }
if wait_until 15 routes_match && [ -n "$want" ]; then
	pass "D2 after dockerd's restart the label routes match docker ps ($(printf '%s\n' "$want" | wc -l) addresses; 'gone' removed, 'after' added)"
else
	fail "D2 label routes should match docker ps after a dockerd restart" "want [$(printf '%s' "$want" | tr '\n' ' ')] have [$(routes_now | tr '\n' ' ')]"
fi
s=""
wait_until 10 has_route "$(addr4 after)" exit1 && s=$(p_whoami after)
[ "$s" = "$E1" ]
verdict $? "D3 a container started after the reconnect leaves via its exit ($s)" "saw '$s'"

# ------------------------------------------------------------------ UP an upgrade with dockerd running
# `egressd upgrade` (waiting for the old process's end): the new process
# takes the label routes over as they are and keeps following the events.
up_out=$(nsx "$NS_GW" timeout -k 2 60 "$(egressd_bin)" upgrade --binary "$(egressd_bin)" --socket "$SOCK" 2>&1)
up_rc=$?
new_pid=$(printf '%s\n' "$up_out" | sed -n 's/.*to new process \([0-9]*\).*/\1/p' | head -n 1)
s=""
# The new process is the old one's child, not ours: kill -0, not pid_alive.
[ "$up_rc" = 0 ] && [ -n "$new_pid" ] && kill -0 "$new_pid" 2>/dev/null && s=$(p_whoami after)
old_gone=0
wait_until 5 pid_gone "$EGRESSD_PID" && old_gone=1
[ "$s" = "$E1" ] && routes_match && [ "$old_gone" = 1 ]
verdict $? "UP1 egressd upgrade with dockerd running: $EGRESSD_PID -> ${new_pid:-?}, the label routes match docker ps and 'after' leaves via exit1 ($s)" \
	"rc=$up_rc old gone=$old_gone new=${new_pid:-none} saw '$s'; want [$(printf '%s' "$want" | tr '\n' ' ')] have [$(routes_now | tr '\n' ' ')]; $(printf '%s' "$up_out" | tr '\n' ' ' | cut -c1-400)"
[ -n "$new_pid" ] && EGRESSD_PID=$new_pid
run_lab post --label egressd.tunnel=exit2 || die "container post"
s=""
wait_until 10 has_route "$(addr4 post)" exit2 && s=$(p_whoami post)
[ "$s" = "$E2" ]
verdict $? "UP2 after the upgrade the new process follows Docker: a container started now leaves via its exit2 ($s)" "saw '$s'"

# ------------------------------------------------------------------ M many containers
M_N=100  # containers asked for
M_MIN=90 # of which at least this many must really run
dk rm -f early w1 w2 stays after gone post >/dev/null 2>&1
routes_are() { [ "$(label_routes)" = "$1" ]; }
at_least_routes() { [ "$(label_routes)" -ge "$1" ]; }
sessions_are() { [ "$(stat_total udp_sessions_active)" = "$1" ]; }
sessions_at_least() { [ "$(stat_total udp_sessions_active)" -ge "$1" ]; }
wait_until 15 routes_are 0 || die "label routes left before M: $(routes | grep '(docker: ' | tr '\n' ' ')"
wait_until 15 sessions_are 0
fd0=$(egressd_fds_unpooled)
fd0_raw=$(egressd_fds)
s0=$(stat_total udp_sessions_active)
tot0=$(stat_total udp_sessions_total)
t0=$(date +%s)
# Each container asks exit1's resolver once, retrying until it is answered
# (the first query may come before its route is live): one DNS session each.
seq 1 "$M_N" | xargs -P 6 -I{} timeout 120 "$DOCKER_CLI" -H "unix://$DK_SOCK" run -d --name "m{}" --network egress \
	--stop-signal KILL --label egressd.tunnel=exit1 --label "egm=$EG_ID" "$DK_IMAGE" \
	/bin/sh -c "i=0; until /bin/nslookup -type=TXT whoami.test $PUBDNS4 >/dev/null 2>&1; do i=\$((i + 1)); [ \$i -ge 20 ] && break; sleep 1; done; exec /bin/sleep 100000" \
	>/dev/null 2>"$EG_TMP/m.runs.err"
t1=$(date +%s)
started=$(dk ps -q --filter "label=egm=$EG_ID" | wc -l)
[ "$started" -lt "$M_N" ] && log "M: $((M_N - started)) of $M_N docker runs did not leave a running container: $(sort -u "$EG_TMP/m.runs.err" | head -n 3 | tr '\n' ' ')"
wait_until 30 at_least_routes $((started * 2))
peak=$(label_routes)
log "M: $started running after $((t1 - t0)) s, $peak label routes after $(($(date +%s) - t0)) s"
wait_until 90 sessions_at_least $((s0 + started))
sess=$(($(stat_total udp_sessions_active) - s0))
tot=$(($(stat_total udp_sessions_total) - tot0))
log "M: $sess sessions open after $(($(date +%s) - t0)) s"
# shellcheck disable=SC2046
DK_TIMEOUT=120 dk rm -f $(dk ps -aq --filter "label=egm=$EG_ID") >/dev/null 2>&1
t2=$(date +%s)
wait_until 20 routes_are 0
wait_until 20 sessions_are "$s0"
log "M: removed after $((t2 - t0)) s, routes $(label_routes) and sessions $(stat_total udp_sessions_active) after $(($(date +%s) - t0)) s"
wait_until 10 fds_unpooled_le $((fd0 + 2))
fd1=$(egressd_fds_unpooled)
fd1_raw=$(egressd_fds)
left_routes=$(label_routes)
left_sess=$(stat_total udp_sessions_active)
[ "$started" -ge "$M_MIN" ] && [ "$peak" -ge $((started * 2)) ] && [ "$sess" -ge "$started" ] &&
	[ "$left_routes" = 0 ] && [ "$left_sess" = "$s0" ] && [ "$fd1" -le $((fd0 + 2)) ]
verdict $? "M1 $started of $M_N labelled containers ran (at least $M_MIN must; started in $((t1 - t0)) s, removed after $((t2 - t0)) s): peak $peak label routes and $sess UDP (DNS) sessions open ($tot made), then 0 routes, sessions back to $s0; fds less the pools' $fd0 -> $fd1 (all: $fd0_raw -> $fd1_raw)" \
	"ran $started (min $M_MIN), peak routes $peak (want $((started * 2))), sessions open $sess (want >= $started, made $tot), routes now $left_routes, sessions now $left_sess (was $s0), fds less the pools' $fd0 -> $fd1 (want <= +2; all: $fd0_raw -> $fd1_raw)"
if kill -0 "$EGRESSD_PID" 2>/dev/null; then
	pass "M2 egressd (the process the upgrade started) still running after all of it"
else
	fail "M2 egressd should still run" "$(tail -n 5 "$EGRESSD_LOG" | tr '\n' ' ')"
fi

log "labels.sh took $(($(date +%s) - T0)) s"
summary
