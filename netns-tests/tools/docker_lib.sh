# shellcheck shell=bash
# netns-tests/tools/docker_lib.sh — a real dockerd (Debian's docker.io 20.10)
# inside the test topology's `gw` namespace, for netns-tests/docker.sh.
# Sourced after lib.sh and topology.sh (needs NS_GW, EG_TMP, EG_ID).
#
# dockerd runs with its network namespace set to gw by `nsenter --net` (not
# `ip netns exec`: that remounts /sys and hides the cgroup mounts, and dockerd
# then fails with "Devices cgroup isn't mounted"), with its data and exec
# roots under $EG_TMP, its own socket, `--bridge none` (no docker0: its
# 172.17/16 is outside the test address plan), vfs storage, and its
# containers under a cgroup parent of this run ($EG_ID-docker), so whatever
# survives dockerd is found by PID in that cgroup. Its iptables rules stay in
# gw. No registry: the image is Debian's busybox-static imported from a tar;
# richer clients (curl, dig, python3 and the tools of netns-tests/tools/) come
# from the host's /usr, bind-mounted read-only into each container.
#
# Functions:
#   dk_host_up                 the topology with gw as the Docker host (no br0: Docker makes the bridges)
#   dk ARGS...                 Debian's docker client (/usr/bin/docker) on our socket
#   dockerd_start / dockerd_stop
#   dk_image                   build and import the image "egbb"
#   dk_ctr NAME NET IP4 IP6 [DOCKER-RUN-ARGS...] [-- CMD...]
#   dx NAME CMD...             docker exec, bounded in time
#   dk_running N               are N containers running?
#   dk_cleanup_hook            containers, dockerd, leftovers by PID, mounts, cgroups
#   dk_snap FILE               Docker's (and anyone's) iptables lines in gw, normalised
#
# Time bounds are generous on purpose: on a busy 2-core machine (other suites
# at once and a CPU hog, load average ~70) a `docker network create` has been
# seen to take over a minute. A bound only stops a hang; it is never what a
# check measures. DK_TIMEOUT (120 s) bounds every docker client call,
# DX_TIMEOUT (60 s) a `docker exec` (the probes inside have their own, shorter
# timeouts), DK_START_WAIT (120 s) dockerd's start.

DOCKER_CLI=/usr/bin/docker
DOCKERD_BIN=/usr/sbin/dockerd
DK_IMAGE=egbb

dk_vars() {
	DK_ROOT=$EG_TMP/docker
	DK_SOCK=$DK_ROOT/dockerd.sock
	DK_PIDFILE=$DK_ROOT/dockerd.pid
	DK_LOG=$EG_TMP/dockerd.log
	DK_CGROUP=$EG_ID-docker
	DOCKERD_PID=""
	# containerd's shims put their sockets under /run/containerd/s whatever
	# the roots; remove those directories at the end if this run made them.
	DK_RUN_CONTAINERD_NEW=0
	[ -e /run/containerd ] || DK_RUN_CONTAINERD_NEW=1
	mkdir -p "$DK_ROOT/data" "$DK_ROOT/exec" "$DK_ROOT/cli"
	[ -f "$DK_ROOT/daemon.json" ] ||
		printf '{ "deprecated-key-path": "%s" }\n' "$DK_ROOT/key.json" >"$DK_ROOT/daemon.json"
}

dk_host_up() {
	# shellcheck disable=SC2034  # topology.sh's: no plain-namespace containers here
	NCONT=0
	topo_up
	# topo_up's br0 is for plain-namespace containers; here Docker makes the bridges.
	ip -n "$NS_GW" link del br0
	topo_start_services
}

dk() {
	DOCKER_CONFIG=$DK_ROOT/cli timeout -k 5 "${DK_TIMEOUT:-120}" \
		"$DOCKER_CLI" -H "unix://$DK_SOCK" "$@"
}

# dx NAME CMD... — run CMD in container NAME (PATH has the host's /usr first).
dx() {
	local name=$1; shift
	DK_TIMEOUT=${DX_TIMEOUT:-60} dk exec "$name" "$@"
}

dockerd_ready() { DK_TIMEOUT=10 dk info >/dev/null 2>&1; }

# dockerd_start [EXTRA-ARGS...] — start dockerd in gw; PID in DOCKERD_PID.
# --dns is the private resolver the embedded DNS forwards to (DK_DNS).
dockerd_start() {
	[ -n "${DK_ROOT:-}" ] || dk_vars
	(
		ulimit -n 65536 2>/dev/null || true
		exec nsenter --net="/run/netns/$NS_GW" "$DOCKERD_BIN" \
			--config-file "$DK_ROOT/daemon.json" \
			--data-root "$DK_ROOT/data" --exec-root "$DK_ROOT/exec" \
			-H "unix://$DK_SOCK" --pidfile "$DK_PIDFILE" \
			--storage-driver vfs --bridge none --cgroup-parent "/$DK_CGROUP" \
			--dns "${DK_DNS:-192.0.2.53}" --experimental --ip6tables \
			--log-level warn "$@"
	) >>"$DK_LOG" 2>&1 </dev/null &
	DOCKERD_PID=$!
	EG_PIDS+=("$DOCKERD_PID")
	disown "$DOCKERD_PID" 2>/dev/null || true
	local t0
	t0=$(date +%s)
	if ! wait_until "${DK_START_WAIT:-120}" dockerd_ready; then
		log "dockerd did not answer within ${DK_START_WAIT:-120} s; its log:"
		tail -n 15 "$DK_LOG" | sed 's/^/#   /' >&2
		return 1
	fi
	log "dockerd answers after $(($(date +%s) - t0)) s"
}

# dockerd_stop — SIGTERM dockerd by PID (it stops its containers; ours run
# with --stop-signal KILL, so that is quick), wait up to 30 s, then SIGKILL.
dockerd_stop() {
	local pid=${DOCKERD_PID:-}
	[ -n "$pid" ] || return 0
	if pid_alive "$pid"; then
		kill -s TERM "$pid" 2>/dev/null
		wait_until 30 pid_gone "$pid"
		pid_alive "$pid" && kill -s KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	DOCKERD_PID=""
}

# dk_running N — exactly N containers are running.
dk_running() { [ "$(dk ps -q | wc -l)" -eq "$1" ]; }

# dk_image — /bin/busybox and its applet links in an empty root; /lib and
# /lib64 point into /usr (the host's, mounted read-only at run time).
dk_image() {
	local root=$EG_TMP/image a
	mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/usr" "$root/tools" "$root/proc" "$root/sys" "$root/dev"
	cp /bin/busybox "$root/bin/busybox"
	for a in sh ash nc ping ping6 nslookup sleep wget ip cat echo ls timeout grep trap; do
		ln -sf busybox "$root/bin/$a"
	done
	ln -sfn usr/lib "$root/lib"
	ln -sfn usr/lib64 "$root/lib64"
	chmod 1777 "$root/tmp"
	tar -C "$root" -c . | dk import - "$DK_IMAGE" >/dev/null
}

# dk_ctr NAME NET IP4 IP6 [DOCKER-RUN-ARGS...] [-- CMD...] — a container that
# comes back after a dockerd restart, dies at once on stop, and has the host's
# /usr and the test tools read-only. Default command: sleep.
dk_ctr() {
	local name=$1 net=$2 ip4=$3 ip6=$4; shift 4
	local args=() cmd=()
	while [ $# -gt 0 ]; do
		if [ "$1" = -- ]; then shift; cmd=("$@"); break; fi
		args+=("$1"); shift
	done
	[ ${#cmd[@]} -gt 0 ] || cmd=(/bin/sleep 1000000)
	dk run -d --name "$name" --hostname "$name" --network "$net" --ip "$ip4" --ip6 "$ip6" \
		--restart always --stop-signal KILL \
		-v /usr:/usr:ro -v "$EG_TOOLS:/tools:ro" \
		"${args[@]}" "$DK_IMAGE" "${cmd[@]}" >/dev/null
}

# dk_leftover_pids — processes still in this run's container cgroups.
dk_leftover_pids() {
	local d
	for d in /sys/fs/cgroup/pids/"$DK_CGROUP" /sys/fs/cgroup/unified/"$DK_CGROUP" /sys/fs/cgroup/"$DK_CGROUP"; do
		[ -d "$d" ] || continue
		find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
	done | sort -u
}

# dk_run_containerd_s_gone — /run/containerd/s is not there (removed when empty).
dk_run_containerd_s_gone() { [ ! -d /run/containerd/s ] || rmdir /run/containerd/s 2>/dev/null; }

# dk_cleanup_hook — called first by lib.sh's cleanup: remove the containers,
# stop dockerd, kill (by PID) whatever of it survived, unmount what it left
# under $EG_TMP, remove its cgroups.
dk_cleanup_hook() {
	local p m d
	[ -n "${DK_ROOT:-}" ] || return 0
	if [ -n "${DOCKERD_PID:-}" ] && pid_alive "$DOCKERD_PID"; then
		# shellcheck disable=SC2046
		DK_TIMEOUT=30 dk rm -f $(DK_TIMEOUT=10 dk ps -aq 2>/dev/null) >/dev/null 2>&1
		dockerd_stop
	fi
	for p in $(dk_leftover_pids); do kill -s KILL "$p" 2>/dev/null; done
	# containerd, its shims and docker-proxy live in gw: lib.sh's cleanup
	# kills what is left there by PID. Mounts (netns files, shm) first:
	wait_until 5 test -z "$(dk_leftover_pids)"
	for m in $(awk -v r="$EG_TMP/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
		umount -l "$m" 2>/dev/null
	done
	if awk -v r="$EG_TMP/" 'index($5, r) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
		log "mounts left under $EG_TMP: keeping it"
		# shellcheck disable=SC2034  # read by lib.sh's cleanup, after this hook
		EG_KEEP_TMP=1
	fi
	for d in /sys/fs/cgroup/*/"$DK_CGROUP" /sys/fs/cgroup/"$DK_CGROUP"; do
		[ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	if [ "$DK_RUN_CONTAINERD_NEW" = 1 ]; then
		# The shims' sockets may outlive dockerd for a moment.
		wait_until 10 dk_run_containerd_s_gone
		rmdir /run/containerd 2>/dev/null
	fi
	return 0
}

# dk_snap FILE — every iptables/ip6tables line in gw as "fam table ..."
# (policies and user chains without counters, and rules), sorted. Tables
# that hold nothing but empty built-in chains are left out (iptables-nft
# leaves them behind after a delete).
dk_snap() {
	local t
	for t in iptables-save ip6tables-save; do
		nsx "$NS_GW" "$t" 2>/dev/null | awk -v fam="${t%-save}" '
			/^\*/ { table = substr($0, 2); next }
			/^:/ { split($0, f, " "); name = substr(f[1], 2)
			       if (name ~ /^(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING)$/) {
			           if (f[2] != "ACCEPT") print fam, table, "policy", name, f[2]
			       } else print fam, table, "chain", name
			       next }
			/^-A/ { print fam, table, $0 }'
	done | sort
}
