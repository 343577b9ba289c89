#!/usr/bin/env bash
# netns-tests/top.sh — `egressd top` in a real terminal (tmux, 80x24) while
# traffic flows, on the standard topology (topology.sh).
#
# Traffic: c0 (10.8.0.10, exit0) downloads 4 MB first and then idles, so it
# has the larger total; c1 (10.8.0.11, exit1) reads the trickle service
# (1 KiB every 20 ms, ~51 KB/s) throughout, so it has the larger rate (a
# second trickle before checks 9-11: the service ends each after 60 s).
# Every wait on the screen is for a condition (10 s at most), not a sleep.
#
# Checks (one PASS/FAIL line each; 11 on every path, plan_checks):
#   1  `egressd top` with stdout not a terminal prints one plain snapshot
#      (no escape sequences): c1's row first, tunnel exit1, a non-zero down
#      rate; c0's row below it with exit0 and its 4 MB total; exit 0
#   2  in tmux: the alternate screen is on and the cursor hidden while it runs
#   3  in tmux: the first row is c1 with exit1 and a non-zero down rate
#      (waited for: rates need a second sample); c0 below; every line
#      within 80 columns
#   4  in tmux: it refreshes (c1's total on screen changes within 10 s)
#   5  C-c: top exits 0 within 3 s
#   6  C-c: the terminal is restored: alternate screen off, cursor visible,
#      the normal screen shows none of top's rows (control: check 2)
#   7  SIGTERM (to top's PID): exits 0, alternate screen off, cursor visible
#   8  a wrong --socket: exits 1 with the socket's path in the error, and the
#      terminal is restored all the same
#   9  the pane widened to 120 columns: top redraws for it (waited for: the
#      header row 120 wide, as top draws it at 120; no line wider), c1 still
#      first (it read TIOCGWINSZ again)
#  10  the pane narrowed to 60x20: top redraws for it (waited for: the
#      header cut to 60 with "~", which only top's redraw at 60 gives), every
#      line within 60 columns, the source rows still there with c1 first
#  11  `q` quits: top exits 0 within 3 s; while it ran the tty was in key
#      mode (-icanon -echo: the control), after it the tty is back to
#      icanon echo, the alternate screen off and the cursor visible
#
# Usage: sudo netns-tests/top.sh   (EGRESSD=path to use another binary,
#        EG_KEEP_TMP=1 to keep logs). Needs root and tmux; skips otherwise.

set -u
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$HERE/lib.sh"
plan_checks 11
# shellcheck source=topology.sh
. "$HERE/topology.sh"

require_root_and_tools nft iptables ip6tables microsocks danted python3 tmux timeout
eg_init
T0=$(date +%s)

TMUX_SOCK=$EG_TMP/tmux.sock
# tm ARGS... — tmux on this run's own server (never the user's, never by name).
tm() { tmux -S "$TMUX_SOCK" "$@"; }
eg_cleanup_hook() { [ -S "$TMUX_SOCK" ] && tm kill-server 2>/dev/null; return 0; }

# top_session NAME ARGS... — `egressd top ARGS...` in gw, in a new 80x24
# session NAME (a stdin that is the pane's terminal: `q` reaches it). A shell around it (trapping INT, so that C-c reaches top and
# the shell stays) prints "top exited N" and keeps the pane, so the terminal
# state top left behind can be read.
top_session() {
	local name=$1; shift
	tm -f /dev/null new-session -d -s "$name" -x 80 -y 24 \
		"trap : INT; ip netns exec $NS_GW $(egressd_bin) top $*; echo \"top exited \$?\"; exec sleep 120"
}
pane() { tm display-message -p -t "$1" "$2"; }
screen() { tm capture-pane -p -J -t "$1"; }
top_exited() { screen "$1" | sed -n 's/^top exited \([0-9]*\)$/\1/p' | grep .; }
# top_pid NAME — top's PID: the pane's shell's child (ip netns exec execs it).
top_pid() { ps -o pid= --ppid "$(pane "$1" '#{pane_pid}')" | tr -d ' '; }
# rows NAME — the screen's source rows (after the header line).
rows() { tm capture-pane -p -t "$1" | sed -n '/^SOURCE/,$p' | sed 1d | grep -v '^$'; }
# tty_mode NAME — "icanon echo" / "-icanon -echo" ...: the pane terminal's
# line discipline flags (stty from outside).
tty_mode() { stty -F "$(pane "$1" '#{pane_tty}')" -a | tr ' ' '\n' | grep -xE -- '-?(icanon|echo)' | tr '\n' ' '; }
# longest NAME — the length of the screen's longest line.
longest() { screen "$1" | awk '{ if (length($0) > m) m = length($0) } END { print m + 0 }'; }
# field ROW N — the Nth whitespace-separated field of a row.
field() { printf '%s\n' "$1" | awk -v n="$2" '{ print $n }'; }
# nonzero_rate STR — a rate as top prints it, greater than zero ("51.2K", "900B").
nonzero_rate() { [[ $1 =~ ^[0-9.]+[BKMGT]$ ]] && [[ ! $1 =~ ^0(\.0)?B$ ]]; }
# c1_leads NAME — the screen's first source row is c1's, with exit1 and a
# non-zero down rate (top has sampled twice since the trickle flows).
c1_leads() {
	local r
	r=$(rows "$1" | head -n 1)
	[ "$(field "$r" 1)" = 10.8.0.11/32 ] && [ "$(field "$r" 2)" = exit1 ] && nonzero_rate "$(field "$r" 6)"
}
# c1_total_not NAME TOTAL — c1 leads and its total is no longer TOTAL.
c1_total_not() {
	local r
	r=$(rows "$1" | head -n 1)
	[ "$(field "$r" 1)" = 10.8.0.11/32 ] && [ -n "$(field "$r" 7)" ] && [ "$(field "$r" 7)" != "$2" ]
}
# header NAME — the screen's header row (SOURCE ...).
header() { screen "$1" | grep '^SOURCE'; }
# drawn_for NAME WIDTH — the screen was redrawn for WIDTH columns: its
# header is what top draws at that width (the full header is 80 columns at
# 80 and grows with the width; narrower, it is cut to WIDTH, its last
# character "~"), and c1's row is there.
drawn_for() {
	local h
	h=$(header "$1")
	[ "${#h}" -eq "$2" ] || return 1
	[ "$2" -ge 80 ] || [ "${h: -1}" = "~" ] || return 1
	rows "$1" | grep -q '^10\.8\.0\.11/32 '
}

ensure_egressd || die "egressd binary $(egressd_bin) missing and cargo build --release failed"
topo_up
topo_start_services
SOCK=$EG_TMP/egressd.sock
topo_write_config "$EG_TMP/egressd.ron" "$SOCK"
egressd_up_or_exit "$EG_TMP/egressd.ron"

# c0: a bulk download, then idle. c1: the trickle, throughout.
dl=$(egtool "${NS_C[0]}" download "$TARGET4" 9002 4000000) || die "c0's download failed: $dl"
# trickle K — c1 reads the trickle service (60 s at most, its server's
# bound) on a new connection; returns once bytes flow.
trickle() {
	egtool_bg "${NS_C[1]}" "$EG_TMP/trickle$1.out" trickle "$TARGET4" 9005 "$EG_TMP/trickle$1.ready"
	wait_until 10 test -e "$EG_TMP/trickle$1.ready" || die "c1's trickle $1 did not start: $(cat "$EG_TMP/trickle$1.out")"
}
trickle 1

# 1: not a terminal -> one plain snapshot.
once=$(nsx "$NS_GW" timeout 10 "$(egressd_bin)" top --socket "$SOCK" </dev/null 2>&1)
rc=$?
first=$(printf '%s\n' "$once" | sed -n '/^SOURCE/,$p' | sed -n 2p)
c0row=$(printf '%s\n' "$once" | grep '^10\.8\.0\.10/32 ')
if [ $rc -ne 0 ]; then
	fail "1 top with no terminal" "exit $rc: $once"
elif printf '%s' "$once" | grep -q $'\x1b'; then
	fail "1 top with no terminal prints plain text" "escape sequences in: $(printf '%s' "$once" | od -c | head -n 3)"
elif [ "$(field "$first" 1)" = 10.8.0.11/32 ] && [ "$(field "$first" 2)" = exit1 ] &&
	nonzero_rate "$(field "$first" 6)" && [ "$(field "$c0row" 2)" = exit0 ] && [ "$(field "$c0row" 7)" = 4.0M ]; then
	pass "1 top with no terminal: one plain snapshot, c1 first (exit1, down $(field "$first" 6)/s), c0 below (exit0, 4.0M total)"
else
	fail "1 top with no terminal: c1 first with exit1 and a down rate, c0 with exit0 and 4.0M" "got:"$'\n'"$once"
fi

# 2-6: live in tmux, then C-c.
top_session live --socket "$SOCK"
wait_until 10 sh -c "tmux -S '$TMUX_SOCK' capture-pane -p -t live | grep -q '^10\.8\.0\.11/32 '" || true
if [ "$(pane live '#{alternate_on}')" = 1 ] && [ "$(pane live '#{cursor_flag}')" = 0 ]; then
	pass "2 top in tmux: alternate screen on, cursor hidden"
else
	fail "2 top in tmux: alternate screen on, cursor hidden" \
		"alternate_on=$(pane live '#{alternate_on}') cursor_flag=$(pane live '#{cursor_flag}') dead=$(pane live '#{pane_dead}')"
fi
# (rates need two samples: wait for the screen that has them, 10 s at most)
wait_until 10 c1_leads live
screen1=$(tm capture-pane -p -t live)
r1=$(rows live)
first=$(printf '%s\n' "$r1" | head -n 1)
c0row=$(printf '%s\n' "$r1" | grep '^10\.8\.0\.10/32 ')
wide=$(printf '%s\n' "$screen1" | awk 'length($0) > 80' | wc -l)
if [ "$(field "$first" 1)" = 10.8.0.11/32 ] && [ "$(field "$first" 2)" = exit1 ] &&
	nonzero_rate "$(field "$first" 6)" && [ "$(field "$c0row" 2)" = exit0 ] && [ "$wide" -eq 0 ]; then
	pass "3 top in tmux: c1 on top (exit1, down $(field "$first" 6)/s), c0 below (exit0), 80 columns"
else
	fail "3 top in tmux: c1 on top with exit1 and a down rate, c0 below" "$wide lines over 80; screen:"$'\n'"$screen1"
fi
tot1=$(field "$first" 7)
t4=$(now_ns)
wait_until 10 c1_total_not live "$tot1"
dt4=$(( ($(now_ns) - t4) / 1000000 ))
first2=$(rows live | head -n 1)
tot2=$(field "$first2" 7)
if [ "$(field "$first2" 1)" = 10.8.0.11/32 ] && [ -n "$tot1" ] && [ -n "$tot2" ] && [ "$tot1" != "$tot2" ]; then
	pass "4 top refreshes: c1's total $tot1 -> $tot2 (seen after $dt4 ms)"
else
	fail "4 top refreshes: c1's total must change on screen within 10 s" "first row then: '$first' after $dt4 ms: '$first2'"
fi
tm send-keys -t live C-c
if wait_until 3 top_exited live; then
	st=$(top_exited live)
	if [ "$st" = 0 ]; then pass "5 C-c: top exited 0"; else fail "5 C-c: top must exit 0" "exit status $st"; fi
else
	fail "5 C-c: top must exit within 3 s" "still running"
fi
after=$(screen live)
if [ "$(pane live '#{alternate_on}')" = 0 ] && [ "$(pane live '#{cursor_flag}')" = 1 ] &&
	! printf '%s\n' "$after" | grep -qE '^SOURCE|egressd top -'; then
	pass "6 C-c: terminal restored (alternate screen off, cursor visible, normal screen)"
else
	fail "6 C-c: terminal restored" \
		"alternate_on=$(pane live '#{alternate_on}') cursor_flag=$(pane live '#{cursor_flag}'); screen:"$'\n'"$after"
fi

# 7: SIGTERM to top's own PID (ip netns exec execs it: the pane's PID).
top_session term --socket "$SOCK"
wait_until 10 sh -c "tmux -S '$TMUX_SOCK' capture-pane -p -t term | grep -q '^SOURCE'" || true
pid=$(top_pid term)
if [ "$(pane term '#{alternate_on}')" = 1 ] && [ -n "$pid" ] && kill -TERM "$pid" && wait_until 3 top_exited term &&
	[ "$(top_exited term)" = 0 ] && [ "$(pane term '#{alternate_on}')" = 0 ] &&
	[ "$(pane term '#{cursor_flag}')" = 1 ]; then
	pass "7 SIGTERM: top exited 0, terminal restored"
else
	fail "7 SIGTERM: top must exit 0 and restore the terminal" \
		"pid=$pid status=$(top_exited term) alternate_on=$(pane term '#{alternate_on}') cursor_flag=$(pane term '#{cursor_flag}')"
fi

# 8: a socket nobody serves.
top_session bad --socket "$EG_TMP/nobody.sock"
wait_until 5 top_exited bad || true
bad=$(screen bad)
if [ "$(top_exited bad)" = 1 ] && printf '%s\n' "$bad" | grep -q "nobody.sock" &&
	[ "$(pane bad '#{alternate_on}')" = 0 ] && [ "$(pane bad '#{cursor_flag}')" = 1 ]; then
	pass "8 wrong --socket: exit 1, the error names it, terminal restored"
else
	fail "8 wrong --socket: exit 1 naming it, terminal restored" \
		"status=$(top_exited bad) alternate_on=$(pane bad '#{alternate_on}'); screen:"$'\n'"$bad"
fi

# 9-11: one more session: resized wider, then narrower, then `q`. A fresh
# trickle keeps c1 on top however long the checks above took.
trickle 2
top_session keys --socket "$SOCK"
wait_until 10 sh -c "tmux -S '$TMUX_SOCK' capture-pane -p -t keys | grep -q '^10\.8\.0\.11/32 '" || true
mode_live=$(tty_mode keys)
tm resize-window -t keys -x 120 -y 30
# top reads the size again at its next refresh (1 s): wait for that screen
wait_until 10 drawn_for keys 120
hdr=$(header keys)
first=$(rows keys | head -n 1)
if [ "${#hdr}" -eq 120 ] && [ "$(longest keys)" -le 120 ] && [ "$(field "$first" 1)" = 10.8.0.11/32 ]; then
	pass "9 a 120-column pane: top draws 120-column rows (header ${#hdr} wide), c1 first"
else
	fail "9 a 120-column pane: 120-column rows" \
		"header ${#hdr} wide, longest line $(longest keys), pane $(pane keys '#{pane_width}x#{pane_height}'); screen:"$'\n'"$(screen keys)"
fi
tm resize-window -t keys -x 60 -y 20
wait_until 10 drawn_for keys 60
hdr=$(header keys)
narrow=$(screen keys)
first=$(rows keys | head -n 1)
# (tmux itself cuts the old 120-column screen to 60 when the pane shrinks:
# only top's own redraw ends the header with its "~")
if [ "${#hdr}" -eq 60 ] && [ "${hdr: -1}" = "~" ] && [ "$(longest keys)" -le 60 ] &&
	printf '%s\n' "$narrow" | grep -q '^SOURCE' &&
	[ "$(field "$first" 1)" = 10.8.0.11/32 ] && [ "$(printf '%s\n' "$narrow" | wc -l)" -le 20 ]; then
	pass "10 a 60x20 pane: redrawn for 60 columns (header cut to ${#hdr}), every line within 60 (longest $(longest keys)), c1 first"
else
	fail "10 a 60x20 pane: redrawn for 60 columns, every line within 60, rows still there" \
		"header ${#hdr} wide, ending '${hdr: -1}' (want 60, cut by top: '~'), longest $(longest keys), pane $(pane keys '#{pane_width}x#{pane_height}'); screen:"$'\n'"$narrow"
fi
tm send-keys -t keys q
if wait_until 3 top_exited keys && [ "$(top_exited keys)" = 0 ] && [ "$mode_live" = "-icanon -echo " ] &&
	[ "$(tty_mode keys)" = "icanon echo " ] && [ "$(pane keys '#{alternate_on}')" = 0 ] &&
	[ "$(pane keys '#{cursor_flag}')" = 1 ]; then
	pass "11 q: top exited 0; tty in key mode while it ran ($mode_live), restored after ($(tty_mode keys))"
else
	fail "11 q: top must exit 0 and restore the terminal" \
		"status=$(top_exited keys) tty while running '$mode_live', after '$(tty_mode keys)' alternate_on=$(pane keys '#{alternate_on}') cursor_flag=$(pane keys '#{cursor_flag}')"
fi

printf '%s\n' "$screen1" >"$EG_TMP/top-screen.txt"
log "captured screen (also in $EG_TMP/top-screen.txt):"
printf '%s\n' "$screen1" | sed 's/^/#   /' >&2
tm kill-server 2>/dev/null
log "top.sh took $(($(date +%s) - T0)) s"
[ "$EG_FAILED" -gt 0 ] && show_egressd_log 40
summary
