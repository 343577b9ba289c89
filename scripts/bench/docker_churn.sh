#!/usr/bin/env bash
# Docker at scale: how fast a started container's label route goes live,
# and how many Engine API calls egressd makes per Docker event, with many
# containers known and a steady churn of starts and stops (issue 25).
#
#   ┌─ namespace <id>-gw ─────────────────────────────────────────────────┐
#   │ veth eg0 10.8.0.1/16                                                │
#   │ netns-tests/tools/fake_docker.py --generate N   (docker.sock)       │
#   │      ▲ GET /containers/json, /containers/ID/json, /events           │
#   │ egressd (docker: label egressd.tunnel; exits exit0, exit1: Direct)  │
#   └─────────────────────────────────────────────────────────────────────┘
#
# The fake starts with N labelled containers; once egressd has all their
# routes, the counters are zeroed and the fake churns RATE operations a
# second (a stop: die + destroy; a start: start) for SECS seconds. Then:
#   route-live latency of each start: egressd's log line "route IP -> T
#     (container NAME, ...)" (ms timestamps) - the event's emit time (the
#     fake's --emit-log); p50, p99, max, and starts never seen live;
#   Engine API calls per event: (lists + inspects) / events sent;
#   egressd's CPU seconds during the churn.
#
#   sudo scripts/bench/docker_churn.sh [EGRESSD]    (default target/release/egressd)
#   CONTAINERS=1000 RATE=10 SECS=20 (defaults); OUT=FILE appends the result
#   line (key=value) to FILE.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../netns-tests/lib.sh
. "$REPO/netns-tests/lib.sh"
EGRESSD=${1:-${EGRESSD:-$EG_REPO/target/release/egressd}}
CONTAINERS=${CONTAINERS:-1000}
RATE=${RATE:-10}
SECS=${SECS:-20}

[ "$(id -u)" = 0 ] || skip_all "needs root (network namespaces)"
[ -x "$EGRESSD" ] || die "no egressd binary at $EGRESSD"
eg_init
NS=$(ns_name gw)
ns_add "$NS"
ip -n "$NS" link add eg0 type veth peer name eg1
ip -n "$NS" addr add 10.8.0.1/16 dev eg0
ip -n "$NS" link set eg0 up
ip -n "$NS" link set eg1 up

PY=$(python_bin)
DSOCK=$EG_TMP/docker.sock
EMIT=$EG_TMP/emit.log
LOG=$EG_TMP/egressd.log
eg_spawn "$NS" "$EG_TMP/docker.log" "$PY" -u "$EG_TOOLS/fake_docker.py" serve "$DSOCK" - \
	--generate "$CONTAINERS" --gen-label egressd.tunnel=exit0,exit1 --emit-log "$EMIT" \
	--ready "$EG_TMP/docker.ready"
wait_until 30 test -e "$EG_TMP/docker.ready" || die "fake_docker did not start: $(tail -n 3 "$EG_TMP/docker.log")"

# get PATH — the fake's answer body (control requests: not counted).
get() {
	"$PY" - "$DSOCK" "$1" <<-'EOF'
	import socket, sys
	s = socket.socket(socket.AF_UNIX)
	s.settimeout(10)
	s.connect(sys.argv[1])
	s.sendall(f"GET {sys.argv[2]} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n".encode())
	b = b""
	while (x := s.recv(65536)):
	    b += x
	print(b.split(b"\r\n\r\n", 1)[1].decode())
	EOF
}

cat >"$EG_TMP/egressd.ron" <<EOF
(
    listen: ["10.8.0.1:10900"],
    tunnels: { "exit0": Direct(), "exit1": Direct() },
    routes: [],
    docker: (socket: "$DSOCK", label: "egressd.tunnel"),
    control: (socket: "$EG_TMP/ctl.sock"),
)
EOF
RUST_LOG=info eg_spawn "$NS" "$LOG" "$EGRESSD" run --config "$EG_TMP/egressd.ron"
EGRESSD_PID=$EG_LAST_PID
routes_in_log() { [ "$(grep -c ' -> exit[01] (container g' "$LOG")" -ge "$CONTAINERS" ]; }
wait_until 60 routes_in_log || die "egressd has not logged the $CONTAINERS routes within 60 s: $(tail -n 3 "$LOG")"

cpu() { awk '{ print $14 + $15 }' "/proc/$EGRESSD_PID/stat"; }
get '/_stats?reset=1' >/dev/null
: >"$EMIT"
cpu0=$(cpu)
get "/_churn?rate=$RATE&seconds=$SECS" >/dev/null
churned() { get /_stats | grep -q '"running": false'; }
wait_until $((SECS + 30)) churned || die "the churn has not ended within $((SECS + 30)) s"
sleep 2 # the last events' requests
cpu1=$(cpu)
stats=$(get /_stats)
pid_alive "$EGRESSD_PID" || die "egressd exited: $(tail -n 5 "$LOG")"

"$PY" - "$EMIT" "$LOG" "$stats" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$CONTAINERS" "$RATE" "$SECS" "$EGRESSD" <<'EOF' | tee -a "${OUT:-/dev/null}"
import datetime, json, re, sys
emit, log, stats, ticks, hz, n, rate, secs, binary = sys.argv[1:]
stats = json.loads(stats)
starts = {}
for line in open(emit):
    t, action, name, *_ = line.split()
    if action == "start":
        starts[name] = float(t)
live = {}
pat = re.compile(r"^\[(\S+) +INFO +egressd::docker\] route \S+ -> \S+ \(container (\S+),")
for line in open(log):
    m = pat.match(line)
    if m and m.group(2) in starts and m.group(2) not in live:
        ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
        live[m.group(2)] = ts.replace(tzinfo=datetime.timezone.utc).timestamp()
lat = sorted((live[k] - starts[k]) * 1000 for k in live)
def pct(p):
    return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")
req = stats["requests"]
events = stats["events_total"]
calls = req.get("list", 0) + req.get("inspect", 0)
print(
    f"containers={n} rate={rate}/s secs={secs} events={events} starts={len(starts)} live={len(live)} "
    f"missing={len(starts) - len(live)} p50_ms={pct(50):.0f} p99_ms={pct(99):.0f} max_ms={pct(100):.0f} "
    f"lists={req.get('list', 0)} inspects={req.get('inspect', 0)} "
    f"calls_per_event={calls / events if events else float('nan'):.2f} "
    f"egressd_cpu_s={int(ticks) / int(hz):.2f} binary={binary}"
)
EOF
