#!/usr/bin/env bash
# netns-tests/docker.sh — egressd on a real Docker host: Debian's dockerd 20.10
# runs in the `gw` namespace, real containers (busybox-static image, the host's
# /usr read-only for curl/dig/python3) on its networks, egressd beside it.
#
#  egress (ordinary, MASQUERADEd by Docker)  br-egress 10.8.0.1/26  fd08::1/80
#     a1 10.8.0.11 fd08::11        -> exit1 (danted)
#     a3 10.8.0.13 fd08::13           no route: default Reject
#     p0 10.8.0.20 fd08::20        -> exit0 (microsocks, TCP only); publishes
#                                     -p 8080:80/tcp and -p 5300:5000/udp
#                                     (not 5000: docker-proxy would hold
#                                     *:5000 in gw, where egressd must bind
#                                     the target's 203.0.113.10:5000 to reply)
#  egint (--internal)                br-egint 10.8.0.65/26 fd08::1:0:0:1/80
#     b2 10.8.0.72 fd08::1:0:0:72  -> exit2 (danted)
#     b3 10.8.0.73 fd08::1:0:0:73     no route
#  late (made after `rules`; Docker names its bridge br-<id>) 10.8.0.128/26
#     l0 10.8.0.130 fd08::2:0:0:130   no route
#  gw: uplink 198.51.100.200 (MASQUERADE), route to a private resolver
#      10.8.0.253 in inet (dockerd --dns 10.8.0.253: Docker's embedded DNS
#      at 127.0.0.11 forwards there, from the container's own namespace);
#      the leak detector in inet counts whatever comes from gw's uplink.
#
# egressd: `intercept: (interfaces: ["br-+"])`, `dns: (upstream:
# "192.0.2.53:53")`, listeners on both networks' gateways (v4+v6). Checks:
#   C  controls before egressd's rules: a3 leaks TCP natively; the embedded
#      DNS reaches the private resolver natively; a forged source leaves;
#      the published ports answer — each seen by the leak detector/target
#   R  routed a1 (ordinary) and b2 (internal): TCP, UDP v4+v6 and DNS (the
#      embedded DNS, the private and the public resolver) leave by their own
#      exit; ICMP is dropped; nothing reaches the leak detector
#   U  unrouted a3, b3: TCP reset, UDP/DNS/ICMP no answer, v4+v6, nothing leaks
#   P  published TCP and UDP ports answer from inet (v4+v6); p0's own TCP
#      leaves by exit0
#   F  a forged source (raw socket, CAP_NET_RAW) does not leave
#   BR the article's trap on the Docker host: br_netfilter is loaded by
#      dockerd itself (no /proc/sys/net/bridge in gw after dockerd started is
#      a FAIL; the suite never loads a module), so the outcome does not depend
#      on what ran before. bridge-nf-call-ip(6)tables=1 in gw only (after
#      showing the sysctl is per namespace: inet reads its own default):
#      routed a1's UDP v4/v6 gets no reply, gw's Udp(6)NoPorts grows, nothing
#      leaks; doctor exits 1 and FAILs both sysctls with the fix. Controls,
#      back to 0: the same UDP is answered via exit1, doctor's lines are ok
#      BR6: the running egressd says it by itself within 10 s (hostwatch):
#      egressd_bridge_nf_call_iptables/_ip6tables go 0 0 -> 1 1 and an ERROR
#      names the fix; BR7 (control): back to 0, the metrics read 0 0 again
#   N  after a new Docker network: kill switch holds (a1 ICMP, a3), and l0 on
#      the new br-<id> bridge is covered by "br-+"
#   D  after a dockerd restart: containers back, routes work, nothing leaks,
#      published ports answer
#   B  boot order: netfilter emptied (a reboot), `rules` first, dockerd after
#      (Docker's FORWARD rules then sit above everything): the same holds
#   X  `rules` and `rules --delete` leave Docker's own iptables lines alone
#   T  the same with `--backend nft`, v4 listeners only and no `interfaces`
#      (found from the listen addresses): v6 without a listener is dropped
#
# Probes (tools/docker_checks.sh) run in bursts of parallel `docker exec`s;
# those expecting an answer retry within the same flow (dig: 3 tries of 2 s;
# UDP: 3 sends), so a busy machine does not read as "no answer", and an
# answer still has to name the right exit.
#
# egressd starting, its rules applying and dockerd coming back are
# preconditions, not checks: a failure is one unplanned FAIL and the suite
# goes on (every check after it then fails on its own account).
#
# Usage: sudo netns-tests/docker.sh   (EGRESSD=binary, EG_KEEP_TMP=1 keeps
# logs and gw's iptables-save at each stage (fw.*), EG_DOCKER_PCAP=1 also a
# pcap of what arrives from gw's uplink, EG_DOCKER_LEGACY=1 writes the old
# `intercept: (sources: ...)` config without `dns`, to see what the old
# design lets through).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 63
# shellcheck source=topology.sh
. "$HERE/topology.sh"
# shellcheck source=tools/docker_lib.sh
. "$HERE/tools/docker_lib.sh"

require_root_and_tools nft iptables ip6tables iptables-save curl dig microsocks danted python3 ss timeout ps nsenter tar
for t in "$DOCKERD_BIN" "$DOCKER_CLI" /bin/busybox /usr/bin/python3; do
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

# ------------------------------------------------------------------ topology
dk_host_up
PRIV_DNS=10.8.0.253
ip -n "$NS_INET" addr add "$PRIV_DNS/32" dev lo
ip -n "$NS_GW" route add "$PRIV_DNS/32" via 198.51.100.254
rm -f "$EG_TMP/privdns.ready"
eg_spawn "$NS_INET" "$EG_TMP/privdns.log" "$(python_bin)" -u "$EG_TOOLS/udptool.py" serve \
	--dns "$PRIV_DNS" --ready "$EG_TMP/privdns.ready"
wait_until 15 test -e "$EG_TMP/privdns.ready" || die "private resolver did not start"
leak_detector_extend

# ------------------------------------------------------------------ dockerd, image, networks
# shellcheck disable=SC2034  # read by docker_lib.sh's dockerd_start
DK_DNS=$PRIV_DNS
dk_vars
dockerd_start || die "dockerd did not start (log: $DK_LOG)"
dk_image || die "image import failed"
dk network create --ipv6 --subnet 10.8.0.0/26 --gateway 10.8.0.1 --subnet fd08::/80 --gateway fd08::1 \
	-o com.docker.network.bridge.name=br-egress egress >/dev/null || die "network egress"
dk network create --internal --ipv6 --subnet 10.8.0.64/26 --gateway 10.8.0.65 \
	--subnet fd08:0:0:0:1::/80 --gateway fd08::1:0:0:1 \
	-o com.docker.network.bridge.name=br-egint egint >/dev/null || die "network egint"
dk_ctr a1 egress 10.8.0.11 fd08::11 || die "container a1"
dk_ctr a3 egress 10.8.0.13 fd08::13 || die "container a3"
dk_ctr p0 egress 10.8.0.20 fd08::20 -p 8080:80/tcp -p 5300:5000/udp -e PYTHONDONTWRITEBYTECODE=1 -- \
	/bin/sh -c '/usr/bin/python3 /tools/udptool.py serve --udp 10.8.0.20 --udp fd08::20 --ready /tmp/udp.ready &
		exec /usr/bin/python3 /tools/egtool.py serve 10.8.0.20 fd08::20 --ready /tmp/tcp.ready' || die "container p0"
dk_ctr b2 egint 10.8.0.72 fd08::1:0:0:72 || die "container b2"
dk_ctr b3 egint 10.8.0.73 fd08::1:0:0:73 || die "container b3"
wait_until 60 p0_ready || die "p0's services did not start"
dump_fw docker
log "dockerd, image, 2 networks, 5 containers up after $(($(date +%s) - T0)) s"

# ------------------------------------------------------------------ C controls
log "phase C at +$(($(date +%s) - T0)) s"
leak0=$(leak_total)
seen=$(p_whoami a3)
leak1=$(leak_total)
[ "$seen" = "$GW_UPLINK4" ] && [ "$leak1" -gt "$leak0" ]
verdict $? "C1 control: without egressd's rules a3 leaves natively as $GW_UPLINK4 and the leak detector counts it" \
	"target saw '$seen', detector +$((leak1 - leak0))"
leak0=$(leak_total)
ans=$(p_dns a3)
leak1=$(leak_total)
[ "$ans" = "$GW_UPLINK4" ] && [ "$leak1" -gt "$leak0" ]
verdict $? "C2 control: Docker's embedded DNS forwards a3's query to the private resolver natively (it sees $GW_UPLINK4)" \
	"answer '$ans', detector +$((leak1 - leak0))"
leak0=$(leak_total)
out=$(forge a3)
wait_until 15 leak_above "$leak0"
leak1=$(leak_total)
[ "$leak1" -gt "$leak0" ]
verdict $? "C3 control: a forged source from a3 (raw socket) leaves natively ($out)" "detector +$((leak1 - leak0)) ($out)"
published_check "C4 control: before egressd's rules"

# ------------------------------------------------------------------ egressd up
log "phase egressd at +$(($(date +%s) - T0)) s"
CONF=$EG_TMP/egressd.ron
dk_write_config "$CONF" full
dk_snap >"$EG_TMP/snap.0"
up_ok=0
dk_egressd_start "$CONF" 10.8.0.1 '[fd08::1]' 10.8.0.65 '[fd08::1:0:0:1]' && up_ok=1
rules_ok=0
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.out" 2>&1 && rules_ok=1
dk_snap >"$EG_TMP/snap.1"
dump_fw egressd
[ "$up_ok" = 1 ] && [ "$rules_ok" = 1 ]
precondition $? "egressd runs in gw and \`egressd rules\` (run in gw) applies" \
	"run ok=$up_ok: $(tail -n 2 "$EGRESSD_LOG" | tr '\n' ' ' | cut -c1-200); rules ok=$rules_ok: $(tail -n 2 "$EG_TMP/rules.out" | tr '\n' ' ' | cut -c1-200)"
log_brnf "after egressd's rules"
comm -13 "$EG_TMP/snap.0" "$EG_TMP/snap.1" >"$EG_TMP/snap.added"
comm -23 "$EG_TMP/snap.0" "$EG_TMP/snap.1" >"$EG_TMP/snap.removed"
[ ! -s "$EG_TMP/snap.removed" ] && [ -s "$EG_TMP/snap.added" ]
verdict $? "X1 \`rules\` added $(wc -l <"$EG_TMP/snap.added") iptables lines and left every one of Docker's as it was" \
	"removed or changed: $(head -n 3 "$EG_TMP/snap.removed" | tr '\n' ';')"

# ------------------------------------------------------------------ R routed, U unrouted
log "phase R at +$(($(date +%s) - T0)) s"
routed_checks a1 1 "R a1 (ordinary network)"
routed_checks b2 2 "R b2 (--internal network)"
unrouted_checks a3 "U a3 (ordinary network, no route)"
unrouted_checks b3 "U b3 (--internal network, no route)"

# ------------------------------------------------------------------ P published ports, F forged source
log "phase P at +$(($(date +%s) - T0)) s"
published_check "P with egressd's rules"
seen=$(p_whoami p0)
[ "$seen" = "$(exit_egress4 0)" ]
verdict $? "P p0 (publishing ports, routed to exit0) opens its own TCP via exit0" "target saw '$seen'"
forged_check "F with egressd's rules"

# ------------------------------------------------------------------ BR the bridge trap (br_netfilter loaded by dockerd)
log "phase BR at +$(($(date +%s) - T0)) s"
log_brnf "before the bridge trap"
bridge_trap_checks a1 1 "$CONF"
log_brnf "after the bridge trap"

# ------------------------------------------------------------------ N a network created after `rules`
log "phase N at +$(($(date +%s) - T0)) s"
dk network create --ipv6 --subnet 10.8.0.128/26 --subnet fd08:0:0:0:2::/80 late >/dev/null &&
	dk_ctr l0 late 10.8.0.130 fd08::2:0:0:130 || log "network late / container l0 failed"
LATE_BR=$(nsx "$NS_GW" ip -o link show type bridge | awk -F': ' '$2 ~ /^br-[0-9a-f]+$/ { print $2 }' | head -n 1)
log "the new network's bridge: ${LATE_BR:-none}; FORWARD now starts: $(nsx "$NS_GW" iptables -S FORWARD | sed -n 2,4p | tr '\n' ';')"
log_brnf "after a new network"
dump_fw late
killswitch_check "N after a new Docker network"
late_checks "N l0 on the new network (${LATE_BR:-?}, matched by br-+)"

# ------------------------------------------------------------------ D dockerd restarts
log "phase D at +$(($(date +%s) - T0)) s"
dockerd_stop
restart_ok=0
dockerd_start && wait_until 120 dk_running 6 && wait_until 60 p0_ready && restart_ok=1
[ "$restart_ok" = 1 ]
precondition $? "D dockerd restarted; its 6 containers are back (restart policy)" \
	"running: $(dk ps --format '{{.Names}}' 2>/dev/null | tr '\n' ' ')"
seen1=$(p_whoami a1)
seen2=$(p_whoami b2)
[ "$seen1" = "$(exit_egress4 1)" ] && [ "$seen2" = "$(exit_egress4 2)" ]
verdict $? "D after the restart a1 and b2 leave via exit1 / exit2" "a1 '$seen1', b2 '$seen2'"
log_brnf "after a dockerd restart"
dump_fw restart
killswitch_check "D after a dockerd restart"
published_check "D after a dockerd restart"

# ------------------------------------------------------------------ B boot order: rules first, then dockerd
log "phase B at +$(($(date +%s) - T0)) s"
# A reboot empties netfilter; a unit ordering may run `egressd rules` before
# dockerd, which then inserts its FORWARD rules on top of everything.
dockerd_stop
for t in iptables ip6tables; do
	for tb in filter nat mangle raw; do
		nsx "$NS_GW" "$t" -w -t "$tb" -F
		nsx "$NS_GW" "$t" -w -t "$tb" -X
	done
	nsx "$NS_GW" "$t" -w -P FORWARD ACCEPT
	nsx "$NS_GW" "$t" -w -t nat -A POSTROUTING -o uplink -j MASQUERADE
done
boot_ok=0
egressd_rules_apply --config "$CONF" >"$EG_TMP/rules.boot" 2>&1 && dockerd_start &&
	wait_until 120 dk_running 6 && wait_until 60 p0_ready && boot_ok=1
[ "$boot_ok" = 1 ]
precondition $? "B netfilter emptied (a reboot), egressd's rules applied, then dockerd started: its 6 containers are back" \
	"$(tail -n 2 "$EG_TMP/rules.boot" | tr '\n' ' '); running: $(dk ps --format '{{.Names}}' 2>/dev/null | tr '\n' ' ')"
dump_fw boot
log "FORWARD after the boot-order start: $(nsx "$NS_GW" iptables -S FORWARD | sed -n 2,5p | tr '\n' ';')"
killswitch_check "B dockerd started after egressd's rules"
late_checks "B dockerd started after egressd's rules: l0 on ${LATE_BR:-?}"
published_check "B dockerd started after egressd's rules"

# ------------------------------------------------------------------ X rules --delete
log "phase X at +$(($(date +%s) - T0)) s"
dk_snap >"$EG_TMP/snap.2"
del_ok=0
egressd_rules_apply --config "$CONF" --delete >"$EG_TMP/delete.out" 2>&1 && del_ok=1
dk_snap >"$EG_TMP/snap.3"
comm -23 "$EG_TMP/snap.2" "$EG_TMP/snap.added" >"$EG_TMP/snap.want"
[ "$del_ok" = 1 ] && diff -q "$EG_TMP/snap.want" "$EG_TMP/snap.3" >/dev/null
verdict $? "X2 \`rules --delete\` removes exactly egressd's lines; Docker's own (as a new network and a restart left them) stay" \
	"delete ok=$del_ok; $(diff "$EG_TMP/snap.want" "$EG_TMP/snap.3" | grep '^[<>]' | head -n 4 | tr '\n' ';')"
leak0=$(leak_total)
seen=$(p_whoami a3)
leak1=$(leak_total)
[ "$seen" = "$GW_UPLINK4" ] && [ "$leak1" -gt "$leak0" ]
verdict $? "X3 control: after --delete a3 leaves natively again" "target saw '$seen', detector +$((leak1 - leak0))"

# ------------------------------------------------------------------ T nftables backend
log "phase T at +$(($(date +%s) - T0)) s"
nft_round

log "docker.sh took $(($(date +%s) - T0)) s"
summary
