#!/usr/bin/env bash
# netns-tests/follower.sh — the Docker follower when the Engine API's event
# stream is cut or hangs, and `docker:` changed by SIGHUP. A real dockerd
# (Debian's docker.io) in gw; egressd reads it through a Unix-socket proxy
# the test controls (tools/sockproxy.py: killed = cut; "hold" = event
# streams open but silent, lists still answered, as from a dockerd that
# hangs). `ss -K` cannot close Unix sockets, hence the proxy.
#
#   egressd ──► $EG_TMP/proxy.sock ── sockproxy.py ──► dockerd.sock (dockerd in gw)
#   Docker network egress: br-egress 10.8.0.1/24 fd08::1/80; routes: [] —
#   every route comes from a label; exits exit1/exit2 (danted).
#
#   P  through the proxy, a removal reaches egressd by its event (control
#      for C and H: the event path works)
#   C  cut: proxy killed, a labelled container removed — its route stays
#      while Docker is unreachable (control); proxy back — gone, timed
#   H  hold: event streams silent, a labelled container removed and an
#      unlabelled one started on its address — the new owner is routed by
#      the old label meanwhile (the window, timed) until the periodic
#      resync (30 s) removes it; then it is rejected; released — events
#      flow again
#   S  SIGHUP: the same config restarts nothing; a new label key, a new
#      socket and no `docker:` apply live
#
# Usage: sudo netns-tests/follower.sh (EGRESSD=binary, EG_KEEP_TMP=1 keeps logs).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 10
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
	fail_unplanned "build" "egressd binary $(egressd_bin) missing and cargo build --release failed"
	summary
	exit 1
fi

# The follower's resync period (docker/client.rs TIMING) and the deadline
# of one list: the longest a route may lag Docker once lists answer.
RESYNC=30
LIST_DEADLINE=10

dk_host_up
dk_vars
dockerd_start || die "dockerd did not start (log: $DK_LOG)"
dk_image || die "image import failed"
dk network create --ipv6 --subnet 10.8.0.0/24 --gateway 10.8.0.1 --subnet fd08::/80 --gateway fd08::1 \
	-o com.docker.network.bridge.name=br-egress egress >/dev/null || die "network egress"

CONF=$EG_TMP/egressd.ron
SOCK=$EG_TMP/egressd.sock
PROXY=$EG_TMP/proxy.sock
PROXY_LOG=$EG_TMP/proxy.log
EGRESSD_LOG=$EG_TMP/egressd.log
# write_conf DOCKER-RON — the config with this `docker:` value ("" for none).
write_conf() {
	local docker=""
	[ -n "$1" ] && docker="docker: $1,"
	cat >"$CONF" <<-EOF
	(
	    listen: ["10.8.0.1:10900", "[fd08::1]:10900"],
	    tunnels: {
	        "exit1": Socks5(server: "100.64.1.2:1080"),
	        "exit2": Socks5(server: "100.64.2.2:1080"),
	    },
	    routes: [(source: "10.8.0.250/32", tunnel: "exit1")],
	    intercept: (interfaces: ["br-egress"]),
	    dns: (upstream: "192.0.2.53:53"),
	    control: (socket: "$SOCK"),
	    $docker
	)
	EOF
}
E1=$(exit_egress4 1)

ctl() { nsx "$NS_GW" "$(egressd_bin)" "$@" --socket "$SOCK"; }
label_routes() { ctl route list 2>/dev/null | grep -c '(docker: '; }
route_of() { ctl route list 2>/dev/null | grep -F "$1/" | grep '(docker: ' | head -n 1; }
has_route() { route_of "$1" | grep -q " -> ${2:-}"; }
no_route() { [ -z "$(route_of "$1")" ]; }
run_lab() {
	local name=$1; shift
	dk run -d --name "$name" --network egress --stop-signal KILL "$@" "$DK_IMAGE" /bin/sleep 100000 >/dev/null
}
addr4() { dk inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
whoami() {
	DK_TIMEOUT=10 dk exec "$1" /bin/nc -w 3 "$TARGET4" 80 </dev/null 2>/dev/null | tr -d '\r' | tail -n 1
}
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }
log_has() { grep -q -- "$1" "$EGRESSD_LOG"; }
log_count() { grep -c -- "$1" "$EGRESSD_LOG"; }
hup() { kill -s HUP "$EGRESSD_PID"; }
reloads() { log_count 'reloaded:'; }
reloads_are() { [ "$(reloads)" = "$1" ]; }

# The proxy: started, killed (cut), hold/pass.
proxy_start() {
	eg_spawn "$NS_GW" "$PROXY_LOG" "$(python_bin)" -u "$EG_TOOLS/sockproxy.py" "$PROXY" "$DK_SOCK"
	PROXY_PID=$EG_LAST_PID
	wait_until 10 grep -qx pass "$PROXY.state" || die "sockproxy did not start: $(tail -n 3 "$PROXY_LOG")"
}
proxy_kill() { stop_pid "$PROXY_PID" KILL; }
proxy_mode() {
	local sig=USR1
	[ "$1" = pass ] && sig=USR2
	kill -s "$sig" "$PROXY_PID" && wait_until 5 grep -qx "$1" "$PROXY.state"
}
event_streams() { grep -c ' events$' "$PROXY_LOG"; }

rm -f "$PROXY.state"
proxy_start
write_conf "(socket: \"$PROXY\")"
eg_spawn "$NS_GW" "$EGRESSD_LOG" env RUST_LOG=info,egressd::docker=debug "$(egressd_bin)" run --config "$CONF"
EGRESSD_PID=$EG_LAST_PID
wait_until 10 tcp_listening "$NS_GW" "$LISTEN_PORT" || die "egressd did not listen: $(tail -n 5 "$EGRESSD_LOG")"
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1 ||
	die "egressd rules | sh: $(tail -n 3 "$EG_TMP/rules.out" | tr '\n' ' ')"
wait_until 10 log_has "docker: following" || die "egressd does not follow Docker: $(tail -n 3 "$EGRESSD_LOG")"

# ------------------------------------------------------------------ P event path
run_lab p1 --label egressd.tunnel=exit1 || die "container p1"
A=$(addr4 p1)
wait_until 5 has_route "$A" exit1 || die "p1's route did not come: $(route_of "$A")"
t=$(now_ns)
dk rm -f p1 >/dev/null
if wait_until 5 no_route "$A"; then
	pass "P1 through the proxy a removal arrives by its event: p1's route ($A) gone $(ms_since "$t") ms after docker rm"
else
	fail "P1 a removal should reach egressd through the proxy" "route '$(route_of "$A")'"
fi

# ------------------------------------------------------------------ C cut
run_lab c2 --label egressd.tunnel=exit1 || die "container c2"
A=$(addr4 c2)
wait_until 5 has_route "$A" || die "c2's route did not come"
proxy_kill
dk rm -f c2 >/dev/null
sleep 2
if has_route "$A"; then
	pass "C1 stream cut (proxy killed): 2 s after c2 was removed its route ($A) is still there (egressd cannot know)"
else
	fail "C1 with the proxy dead egressd cannot see the removal (the control is void)" "route already gone"
fi
t=$(now_ns)
proxy_start
if wait_until $((RESYNC + LIST_DEADLINE)) no_route "$A"; then
	pass "C2 proxy back: c2's route gone $(ms_since "$t") ms later (reconnect lists at once; bound ${RESYNC} s)"
else
	fail "C2 after the cut c2's route must go within the resync period" "still '$(route_of "$A")' after $(ms_since "$t") ms"
fi

# ------------------------------------------------------------------ H hold
R_IP=10.8.0.50
run_lab rr --label egressd.tunnel=exit1 --ip "$R_IP" || die "container rr"
# Arm the follower's timer now (an event-driven list), so that its next
# periodic list is ~30 s away when the hold starts.
run_lab tick --label egressd.tunnel=exit2 || die "container tick"
wait_until 5 has_route "$(addr4 tick)" || die "tick's route did not come"
wait_until 5 has_route "$R_IP" || die "rr's route did not come"
streams0=$(event_streams)
proxy_mode hold || die "sockproxy did not hold"
t=$(now_ns)
dk rm -f rr >/dev/null
run_lab reuse --ip "$R_IP" || die "container reuse"
sleep 1
route_h=$(route_of "$R_IP")
seen=$(whoami reuse)
if printf '%s' "$route_h" | grep -q '(docker: rr ' && [ "$seen" = "$E1" ]; then
	pass "H1 events held: $(ms_since "$t") ms after rr was removed, the unlabelled 'reuse' on its address leaves by rr's label (the window): $route_h; the exit saw $seen"
else
	fail "H1 with events held the removal cannot arrive by event (the control is void)" "route '$route_h', reuse seen as '$seen'"
fi
if wait_until $((RESYNC + LIST_DEADLINE)) no_route "$R_IP"; then
	took=$(ms_since "$t")
	leak0=$(leak_count)
	seen=$(whoami reuse)
	leak1=$(leak_count)
	if [ -z "$seen" ] && [ "$leak1" -eq "$leak0" ] && log_has 'found a change no event announced'; then
		pass "H2 the periodic resync removed rr's route $took ms after the removal (bound $((RESYNC + LIST_DEADLINE)) s) with the stream silent; 'reuse' is rejected now, nothing leaked"
	else
		fail "H2 after the resync 'reuse' must be rejected" "seen '$seen', leak +$((leak1 - leak0)), log: $(grep -c 'no event announced' "$EGRESSD_LOG")"
	fi
else
	fail "H2 with the event stream silent the resync must remove rr's route" "still '$(route_of "$R_IP")' after $(ms_since "$t") ms"
fi
proxy_mode pass || die "sockproxy did not release"
run_lab h3 --label egressd.tunnel=exit1 || die "container h3"
A=$(addr4 h3)
if wait_until 15 has_route "$A"; then
	t=$(now_ns)
	dk rm -f h3 >/dev/null
	if wait_until 5 no_route "$A"; then
		pass "H3 released: events flow again (h3's route came, and went $(ms_since "$t") ms after docker rm); event streams opened during the hold: $(($(event_streams) - streams0))"
	else
		fail "H3 after the release a removal should arrive by event" "route '$(route_of "$A")'"
	fi
else
	fail "H3 after the release a new container should get its route" "route '$(route_of "$A")'"
fi
dk rm -f reuse tick >/dev/null

# ------------------------------------------------------------------ S SIGHUP
run_lab ca --label egressd.tunnel=exit1 || die "container ca"
run_lab cb --label egressd.exit=exit2 || die "container cb"
AA=$(addr4 ca)
AB=$(addr4 cb)
wait_until 5 has_route "$AA" || die "a's route did not come"
n=$(reloads)
s0=$(event_streams)
hup
wait_until 10 reloads_are $((n + 1))
sleep 0.5
if [ "$(reloads)" = $((n + 1)) ] && ! log_has 'reload: docker' && [ "$(event_streams)" = "$s0" ] &&
	has_route "$AA" exit1 && no_route "$AB"; then
	pass "S0 SIGHUP with the same config: the follower keeps its stream (no new event stream), ca keeps exit1"
else
	fail "S0 an unchanged docker: must restart nothing" "reloads $(reloads) (want $((n + 1))), docker lines $(log_count 'reload: docker'), streams $s0 -> $(event_streams)"
fi
write_conf "(socket: \"$PROXY\", label: \"egressd.exit\")"
hup
if wait_until 10 has_route "$AB" exit2 && no_route "$AA"; then
	pass "S1 SIGHUP with label egressd.exit: cb's route live, ca's gone ($(grep -o 'reload: docker: [^;]*; the [0-9]* routes of label [^ ]* removed' "$EGRESSD_LOG" | tail -n 1))"
else
	fail "S1 a new label key must apply on SIGHUP" "cb '$(route_of "$AB")', ca '$(route_of "$AA")'"
fi
write_conf "(socket: \"$DK_SOCK\", label: \"egressd.exit\")"
hup
wait_until 10 log_has "docker: following $DK_SOCK"
proxy_kill
run_lab b2 --label egressd.exit=exit1 || die "container b2"
A2=$(addr4 b2)
t=$(now_ns)
dk rm -f cb >/dev/null
if wait_until 3 no_route "$AB" && wait_until 3 has_route "$A2" exit1; then
	pass "S2 SIGHUP with dockerd's own socket, then the proxy killed: cb's removal seen in $(ms_since "$t") ms, b2's route live (C1 is the control: through the dead proxy nothing is seen)"
else
	fail "S2 a new docker.socket must apply on SIGHUP" "cb '$(route_of "$AB")', b2 '$(route_of "$A2")'"
fi
write_conf ""
hup
routes_are() { [ "$(label_routes)" = "$1" ]; }
if wait_until 10 routes_are 0 && log_has 'docker: no longer followed'; then
	pass "S3 SIGHUP without docker: the label routes are gone ($(grep -o 'docker: no longer followed[^;]*; its [0-9]* label routes removed' "$EGRESSD_LOG" | tail -n 1))"
else
	fail "S3 removing docker: must remove the label routes" "$(label_routes) left"
fi

if ! pid_alive "$EGRESSD_PID"; then
	fail_unplanned "egressd still running at the end" "$(tail -n 5 "$EGRESSD_LOG" | tr '\n' ' ')"
fi
log "follower.sh took $(($(date +%s) - T0)) s"
summary
