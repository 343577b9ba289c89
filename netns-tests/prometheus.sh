#!/usr/bin/env bash
# netns-tests/prometheus.sh — egressd's metrics as Prometheus sees them: a real
# Prometheus server (Debian's `prometheus`, started here in gw, never as a
# service) scrapes egressd's control.metrics_listen every second; promtool
# checks the exposition; PromQL answers match what the test sent; every
# expression of contrib/grafana-dashboard.json returns data.
#
#  c0 10.8.0.10 ─┐  gw: br0, egressd :10900, metrics on 127.0.0.1:9109
#  c1 10.8.0.11 ─┤      prometheus on 127.0.0.1:9090 (TSDB under $EG_TMP),
#  c2 10.8.0.12 ─┤      scrape_interval 1s
#  c3 10.8.0.13 ─┘  exit0 microsocks, exit1 danted, exit2: a fake SOCKS server
#                   (socat answering garbage: a failed handshake); inet targets
#
# Checks (one PASS/FAIL line each; 10 on every path, plan_checks):
#   1  promtool check metrics passes (exit 0, nothing said) on GET /metrics
#      (after traffic: tunnel and source series present)
#   2  control: promtool rejects the same text without its HELP lines, for
#      that reason only: exit 3 (lint problems; 1 would be "could not run or
#      parse"), and its complaints are exactly "NAME no help text" for each
#      metric whose HELP line was removed
#   3  Prometheus scrapes egressd: up{job="egressd"} == 1
#   4-5 PromQL egressd_tcp_bytes_{up,down}_total{tunnel="exit1"} = what c1
#      sent and received (within 2 %)
#   6  PromQL egressd_udp_bytes_up_total{tunnel="exit1"} = c1's UDP payload (within 2 %)
#   7  PromQL per source: egressd_tcp_bytes_up_total{source=~"10.8.0.11.*"}
#      = c1's TCP bytes up (within 2 %)
#   8  failures show: tcp_handshake_failed{tunnel="exit2"} >= 3 and
#      drop_no_route (c3) >= 3
#   9  every expression of contrib/grafana-dashboard.json returns data
#   10 control: an expression naming a metric egressd does not export
#      returns no data (so 9 can fail): Prometheus answers it with success
#      and 0 series, while the same expression over a metric egressd does
#      export, asked just before and after, returns series (an unreachable
#      Prometheus or a failed query fails the check)
#
# Usage: sudo netns-tests/prometheus.sh (EGRESSD=path, EG_KEEP_TMP=1 keeps logs).

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 10
# shellcheck source=topology.sh
. "$HERE/topology.sh"

require_root_and_tools nft iptables ip6tables curl python3 ss timeout ps awk prometheus promtool socat microsocks danted
eg_init
T0=$(date +%s)
METRICS=127.0.0.1:9109
PROM=127.0.0.1:9090
DASH=$EG_REPO/contrib/grafana-dashboard.json
[ -f "$DASH" ] || die "$DASH missing"

# promql EXPR — the /api/v1/query answer (JSON) for EXPR, now.
promql() {
	nsx "$NS_GW" curl -sS --max-time 5 "http://$PROM/api/v1/query" --data-urlencode "query=$1" 2>&1
}
# promval EXPR — the first sample's value (integer part), or "none".
promval() {
	promql "$1" | python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)["data"]["result"]
    print(int(float(r[0]["value"][1])) if r else "none")
except Exception as e:
    print("none")'
}
# ops_tool NS ARGS... — tools/ops_tool.py inside NS, time-bounded.
ops_tool() { EG_TOOL_TIMEOUT=60 pytool ops_tool "$@"; }
# ge EXPR N — the query answers at least N.
ge() { local v; v=$(promval "$1"); [ "$v" != none ] && [ "$v" -ge "$2" ]; }
# near GOT WANT — within 2 %.
near() { [ "$1" != none ] && awk -v g="$1" -v w="$2" 'BEGIN { d = g - w; if (d < 0) d = -d; exit !(d <= w * 0.02) }'; }

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
topo_up
topo_start_services
# exit2: a fake SOCKS server that answers the greeting with garbage.
socks_stop 2
eg_spawn "${NS_EXIT[2]}" "$EG_TMP/fake2.log" socat TCP-LISTEN:1080,bind=100.64.2.2,reuseaddr,fork SYSTEM:'printf HTTP/1.0'
wait_tcp_listen "${NS_EXIT[2]}" 1080 100.64.2.2 10 || die "socat in exit2 did not listen"

CONF=$EG_TMP/egressd.ron
topo_write_config "$CONF" "" "control: (socket: \"$EG_TMP/egressd.sock\", metrics_listen: \"$METRICS\"),"
EGRESSD_LOG=$EG_TMP/egressd.log
egressd_up_or_exit "$CONF"

# ---- Prometheus, its own TSDB, scraping every second
mkdir -p "$EG_TMP/tsdb"
cat >"$EG_TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: egressd
    static_configs:
      - targets: ["$METRICS"]
EOF
promtool check config "$EG_TMP/prometheus.yml" >"$EG_TMP/promtool-config.out" 2>&1 ||
	die "promtool check config: $(tail -n 3 "$EG_TMP/promtool-config.out" | tr '\n' ' ')"
eg_spawn "$NS_GW" "$EG_TMP/prometheus.log" prometheus --config.file="$EG_TMP/prometheus.yml" \
	--storage.tsdb.path="$EG_TMP/tsdb" --web.listen-address="$PROM" --log.level=warn
PROM_PID=$EG_LAST_PID
prom_ready() { nsx "$NS_GW" curl -sf --max-time 2 "http://$PROM/-/ready" >/dev/null; }
wait_until 30 prom_ready || die "prometheus did not become ready: $(tail -n 5 "$EG_TMP/prometheus.log" | tr '\n' ' ')"

# ---- traffic: c1 through exit1 (danted) TCP both ways and UDP; c0 through
# exit0; c2 to exit2's fake server (handshake failures); c3 unrouted (drops).
UP=5000000
DOWN=10000000
UDP_N=100
UDP_SIZE=500
up_out=$(egtool "${NS_C[1]}" upload "$TARGET4" 9006 "$UP" 2>&1)
down_out=$(egtool "${NS_C[1]}" download "$TARGET4" 9002 "$DOWN" 2>&1)
udp_out=$(ops_tool "${NS_C[1]}" udp-burst "$TARGET4" "$UDP_WHO_PORT" "$UDP_N" "$UDP_SIZE" 2>&1)
c0_seen=$(curl_whoami "${NS_C[0]}")
for _ in 1 2 3; do
	egtool "${NS_C[2]}" expect-reset "$TARGET4" 80 >>"$EG_TMP/c2.out" 2>&1
	egtool "${NS_C[3]}" expect-reset "$TARGET4" 80 >>"$EG_TMP/c3.out" 2>&1
done
case $up_out$down_out in ok*ok*) ;; *) log "transfers: $up_out / $down_out" ;; esac
log "udp-burst: $udp_out; c0 seen as $c0_seen"
# what crossed egressd for exit1 (payload): upload "5000000\n" + 5 MB and the
# download's request line "10000000\n"; down: the sink's "<sha256> 5000000\n"
# (73 bytes) and 10 MB.
WANT_UP=$((UP + 8 + 9))
WANT_DOWN=$((DOWN + 73))
udp_sent=$(printf '%s\n' "$udp_out" | awk '{ for (i = 1; i < NF; i++) if ($i == "bytes") { print $(i + 1); exit } }')
WANT_UDP=${udp_sent:-$((UDP_N * UDP_SIZE))}
# until Prometheus has scraped the settled counters
wait_until 15 ge 'egressd_tcp_bytes_down_total{tunnel="exit1"}' $((WANT_DOWN * 98 / 100))
sleep 2.5 # a few more scrapes, so rate() over the dashboard's window has samples

# ------------------------------------------------------------------ 1-2 promtool
nsx "$NS_GW" curl -sS --max-time 5 "http://$METRICS/metrics" >"$EG_TMP/metrics.txt" 2>&1
nseries=$(grep -c '^egressd_' "$EG_TMP/metrics.txt")
nlab=$(grep -cE '^egressd_[a-z_]+\{(tunnel|source)=' "$EG_TMP/metrics.txt")
nhelp=$(grep -c '^# HELP' "$EG_TMP/metrics.txt")
out=$(promtool check metrics <"$EG_TMP/metrics.txt" 2>&1)
rc=$?
if [ "$rc" -eq 0 ] && [ -z "$out" ] && [ "$nlab" -gt 0 ] && [ "$nhelp" -gt 0 ]; then
	pass "1 promtool check metrics: clean on GET /metrics ($nseries series, $nlab with tunnel/source labels, $nhelp HELP lines)"
else
	fail "1 promtool check metrics" "exit $rc: $(printf '%s' "$out" | head -n 5 | tr '\n' ' ') ($nlab labelled series, $nhelp HELP lines)"
fi
# promtool's exit codes: 0 clean, 3 lint problems found, 1 failure (could
# not read or parse the text). The control wants 3, and a "no help text"
# complaint for each metric whose HELP went, nothing else.
grep -v '^# HELP' "$EG_TMP/metrics.txt" >"$EG_TMP/metrics-nohelp.txt"
out=$(promtool check metrics <"$EG_TMP/metrics-nohelp.txt" 2>&1)
rc=$?
awk '$1 == "#" && $2 == "HELP" { print $3 }' "$EG_TMP/metrics.txt" | sort -u >"$EG_TMP/help-names.txt"
printf '%s\n' "$out" | sed -n 's/^\([a-zA-Z_:][a-zA-Z0-9_:]*\) no help text$/\1/p' | sort -u >"$EG_TMP/nohelp-names.txt"
nother=$(printf '%s' "$out" | grep -vc ' no help text$')
ncompl=$(wc -l <"$EG_TMP/nohelp-names.txt")
if [ "$rc" -eq 3 ] && [ "$ncompl" -gt 0 ] && [ "$nother" -eq 0 ] &&
	cmp -s "$EG_TMP/help-names.txt" "$EG_TMP/nohelp-names.txt"; then
	pass "2 control: promtool rejects the same text without HELP: exit 3 (lint problems), 'no help text' for each of the $ncompl metrics, nothing else"
else
	fail "2 control: promtool must reject the text without HELP lines, for that only" \
		"exit $rc (want 3), $ncompl 'no help text' complaints for $(wc -l <"$EG_TMP/help-names.txt") metrics with HELP, $nother other lines: $(printf '%s' "$out" | grep -v ' no help text$' | head -n 3 | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 3 scraped
upv=$(promval 'up{job="egressd"}')
samples=$(promval 'scrape_samples_scraped{job="egressd"}')
if [ "$upv" = 1 ] && [ "$samples" != none ] && [ "$samples" -ge "$nseries" ]; then
	pass "3 Prometheus scrapes egressd every second: up == 1, $samples samples per scrape"
else
	fail "3 Prometheus scrapes egressd" "up=$upv samples=$samples (/metrics has $nseries); $(tail -n 3 "$EG_TMP/prometheus.log" | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 4-7 PromQL = what was sent
q_is() { # N NAME EXPR WANT
	local got
	got=$(promval "$3")
	if near "$got" "$4"; then pass "$1 PromQL $3 = $got (sent $4)"; else fail "$1 PromQL $3" "answered $got, want $4 (within 2 %); transfers: $up_out / $down_out"; fi
}
q_is 4 up 'egressd_tcp_bytes_up_total{tunnel="exit1"}' "$WANT_UP"
q_is 5 down 'egressd_tcp_bytes_down_total{tunnel="exit1"}' "$WANT_DOWN"
q_is 6 udp 'egressd_udp_bytes_up_total{tunnel="exit1"}' "$WANT_UDP"
q_is 7 source 'sum(egressd_tcp_bytes_up_total{source=~"10\\.8\\.0\\.11.*"})' "$WANT_UP"

# ------------------------------------------------------------------ 8 failures
hs=$(promval 'egressd_tcp_handshake_failed_total{tunnel="exit2"}')
nr=$(promval 'egressd_drop_no_route_total{tunnel="",source=""}')
if [ "$hs" != none ] && [ "$hs" -ge 3 ] && [ "$nr" != none ] && [ "$nr" -ge 3 ]; then
	pass "8 failures in Prometheus: tcp_handshake_failed{tunnel=\"exit2\"} = $hs, drop_no_route = $nr (3 flows each)"
else
	fail "8 failures in Prometheus" "handshake_failed(exit2)=$hs drop_no_route=$nr; c2: $(sort "$EG_TMP/c2.out" | uniq -c | tr '\n' ' ')"
fi

# ------------------------------------------------------------------ 9-10 the dashboard
python3 - "$DASH" >"$EG_TMP/exprs.txt" 2>"$EG_TMP/exprs.err" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
n = 0
for p in d["panels"]:
    for t in p.get("targets", []):
        print(p["title"] + "\t" + t["expr"].replace("$__rate_interval", "30s"))
        n += 1
if n == 0:
    sys.exit("no expressions")
EOF
[ -s "$EG_TMP/exprs.txt" ] || die "no expressions extracted from $DASH: $(cat "$EG_TMP/exprs.err")"
# nseries EXPR — how many series a successful answer holds, or "error: ..."
# (Prometheus unreachable, a failed query, an answer that is not JSON).
nseries() {
	promql "$1" | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    r = json.loads(text)
    if r.get("status") != "success":
        raise ValueError(r.get("error") or r.get("status"))
    print(len(r["data"]["result"]))
except Exception as e:
    print("error:", type(e).__name__, str(e)[:80], "|", " ".join(text.split())[:120])'
}
# nonempty EXPR — the answer is a success with at least one series.
nonempty() {
	local n
	n=$(nseries "$1")
	case $n in '' | *[!0-9]*) return 1 ;; esac
	[ "$n" -gt 0 ]
}
total=0
bad=""
nonzero=0
while IFS=$'\t' read -r title expr; do
	total=$((total + 1))
	if nonempty "$expr"; then
		promql "$expr" | python3 -c '
import json, sys
r = json.load(sys.stdin)["data"]["result"]
sys.exit(0 if any(float(s["value"][1]) > 0 for s in r) else 1)' 2>/dev/null && nonzero=$((nonzero + 1))
	else
		bad="$bad [$title] $expr;"
	fi
done <"$EG_TMP/exprs.txt"
npanels=$(cut -f1 "$EG_TMP/exprs.txt" | sort -u | wc -l)
if [ -z "$bad" ] && [ "$total" -gt 0 ]; then
	pass "9 contrib/grafana-dashboard.json: all $total expressions of $npanels panels return data ($nonzero with a series > 0 now)"
else
	fail "9 dashboard expressions without data" "$(printf '%s' "$bad" | cut -c1-600)"
fi
# The same expression over a metric egressd exports (before and after) must
# return series: the query shape works and Prometheus answers.
ctl_expr() { printf 'sum by (tunnel) (rate(%s{tunnel!=""}[30s]))' "$1"; }
real_before=$(nseries "$(ctl_expr egressd_tcp_bytes_up_total)")
absent=$(nseries "$(ctl_expr egressd_no_such_metric_total)")
real_after=$(nseries "$(ctl_expr egressd_tcp_bytes_up_total)")
is_count() { case $1 in '' | *[!0-9]*) return 1 ;; esac; }
if is_count "$real_before" && is_count "$absent" && is_count "$real_after" &&
	[ "$absent" -eq 0 ] && [ "$real_before" -gt 0 ] && [ "$real_after" -gt 0 ]; then
	pass "10 control: an expression for a metric egressd does not export returns no data (success, 0 series; the same over egressd_tcp_bytes_up_total: $real_before series)"
else
	fail "10 control: an expression for a metric egressd does not export must return nothing" \
		"absent metric: '$absent' (want 0 series); egressd_tcp_bytes_up_total before/after: '$real_before' / '$real_after' (want series)"
fi

for p in "$EGRESSD_PID" "$PROM_PID"; do
	pid_gone "$p" && fail_unplanned "egressd and prometheus still running at the end" "PID $p exited"
done
log "prometheus.sh took $(($(date +%s) - T0)) s"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 30
summary
