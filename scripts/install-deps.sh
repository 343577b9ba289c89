#!/usr/bin/env bash
# Installs, idempotently, the Debian packages the demo and the tests use:
# the netfilter tools, real SOCKS/HTTP servers for the exits (microsocks,
# danted, v2ray, tinyproxy), WireGuard in user space (wireguard-go, wg),
# Prometheus and promtool, Debian's dockerd (docker.io) with busybox-static
# (the Docker suites' image and the release test's minimal root), and the
# clients (curl, dig, ping, python3, iperf3, tmux for `egressd top`), and the C
# toolchain cargo links with and the fuzz targets compile libFuzzer with (gcc,
# g++, libc6-dev).
# Services these packages would start are not needed: egressd's scripts run
# their own copies inside network namespaces.
set -euo pipefail
pkgs=(iptables nftables iproute2 dante-server microsocks iperf3 dnsutils socat curl
      python3 tcpdump procps netcat-openbsd binutils libcap2-bin v2ray tinyproxy util-linux conntrack
      docker.io busybox-static wireguard-go wireguard-tools prometheus tmux
      iputils-ping gcc g++ libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages (${missing[*]}) and not root: install them first" >&2
    exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages such as docker.io, danted or tinyproxy would start their services in
# the host's own namespaces on a machine with an init system; the tests run
# their own copies inside network namespaces. policy-rc.d (101: "not allowed")
# stops invoke-rc.d from starting anything during this install only.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && made_policy=1
fi
trap 'if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
