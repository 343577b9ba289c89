#!/usr/bin/env bash
# scripts/demo.sh — see egressd work, in network namespaces, in one command.
#
#   sudo scripts/demo.sh                 build, run, show, stay up until Ctrl-C
#   sudo DEMO_ONESHOT=1 scripts/demo.sh  ... exit after showing
#
# Builds egressd (cargo build --release), builds the test topology of
# netns-tests/topology.sh (four 'containers' on a bridge in a 'gw' host
# namespace, three exit namespaces running SOCKS5 servers, an 'inet'
# namespace with a who-am-i service on 203.0.113.10 and 2001:db8:203::10),
# runs `egressd run` in gw with its embedded default config (which is this
# topology's; set EGRESSD_CONFIG=FILE to use another), applies
# `egressd rules | sh` in gw, and shows from each container which address
# its traffic leaves from. Everything lives in namespaces named
# eg<pid>-*, none linked to the root namespace; all of it is removed on exit.
#
# Other knobs: EGRESSD=path (use that binary, skip the build), RUST_LOG.

set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../netns-tests/lib.sh
. "$REPO/netns-tests/lib.sh"
# shellcheck source=../netns-tests/topology.sh
. "$REPO/netns-tests/topology.sh"

if [ "$(id -u)" -eq 0 ]; then
	bash "$REPO/scripts/install-deps.sh" || die "could not install the packages the demo needs"
fi
require_root_and_tools nft iptables ip6tables curl microsocks danted python3 ss
eg_init

if [ -z "${EGRESSD:-}" ]; then
	log "building egressd (cargo build --release)"
	(cd "$REPO" && cargo build --release) || die "cargo build --release failed"
fi

log "building the topology (namespaces ${EG_ID}-*)"
topo_up
topo_start_services

cfg=()
[ -n "${EGRESSD_CONFIG:-}" ] && cfg=(--config "$EGRESSD_CONFIG")

EGRESSD_LOG=$EG_TMP/egressd.log
if ! RUST_LOG=${RUST_LOG:-info} egressd_start "${cfg[@]}"; then
	die "egressd did not start (log above)"
fi
if ! egressd_rules_apply "${cfg[@]}"; then
	die "applying 'egressd rules' in gw failed (script: $EG_TMP/rules.sh)"
fi
log "egressd is running in ${NS_GW} (pid $EGRESSD_PID); rules applied"

echo
echo "What the who-am-i service on 203.0.113.10 / [2001:db8:203::10] sees:"
echo "(without egressd every container would show the host's 198.51.100.200)"
echo
# short: the address the service saw, or what curl got instead
short() {
	local code
	case $1 in
	curl:*)
		code=$(printf '%s' "$1" | sed -E 's/^curl: \(([0-9]+)\).*/\1/')
		case $code in
		7) echo "(refused)" ;;
		56) echo "(reset)" ;;
		52) echo "(closed, no reply)" ;;
		28) echo "(TIMEOUT)" ;;
		*) echo "(curl error $code)" ;;
		esac
		;;
	*) printf '%s\n' "$1" ;;
	esac
}
for i in 0 1 2 3; do
	v4=$(short "$(curl_whoami "${NS_C[i]}")")
	v6=$(short "$(curl_whoami "${NS_C[i]}" -6)")
	if [ "$i" -lt 3 ]; then
		route="exit$i"
	else
		route="no route"
	fi
	printf '  c%d  %-10s %-10s → %-16s  %-8s → %s\n' "$i" "$(cont_addr4 "$i")" "($route)" \
		"$v4" "$(cont_addr6 "$i")" "$v6"
done
echo

if [ "${DEMO_ONESHOT:-0}" = 1 ]; then
	exit 0
fi

cat <<EOF
Try it yourself (in another shell, as root):
  ip netns exec ${NS_C[0]} curl http://203.0.113.10/
  ip netns exec ${NS_C[2]} curl 'http://[2001:db8:203::10]/'
  ip netns exec ${NS_GW} iptables -t nat -S
  tail -f $EGRESSD_LOG
Ctrl-C stops egressd and removes everything.
EOF

# Stay up until Ctrl-C (the trap tears down) or until egressd exits.
while pid_alive "$EGRESSD_PID"; do
	sleep 0.5
done
log "egressd exited on its own; the end of its log:"
tail -n 20 "$EGRESSD_LOG" >&2
exit 1
