#!/usr/bin/env bash
# Builds a release a user can install on any x86_64 Linux host: the static
# musl binary (scripts/build-static.sh) in
#   dist/egressd-VERSION-x86_64-linux-musl.tar.gz
# with contrib/egressd.service, an example config (contrib/egressd.example.ron),
# the Grafana dashboard, the sysctl.d snippet (contrib/99-egressd-bridge.conf),
# README.md and SHA256SUMS (of the files inside), plus
# dist/egressd-VERSION-x86_64-linux-musl.tar.gz.sha256 next to it. Prints the
# tarball's size and sha256. OUT=dir changes dist/.
#
# Install from it:
#   tar xzf egressd-VERSION-x86_64-linux-musl.tar.gz && cd egressd-VERSION-x86_64-linux-musl
#   sha256sum -c SHA256SUMS && install -m 0755 egressd /usr/local/bin/egressd
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "no version in Cargo.toml" >&2; exit 1; }
name="egressd-$version-x86_64-linux-musl"
out=${OUT:-dist}

scripts/build-static.sh
bin="target/$target/release/egressd"
"$bin" --version

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir "$stage/$name"
install -m 0755 "$bin" "$stage/$name/egressd"
install -m 0644 contrib/egressd.service "$stage/$name/egressd.service"
install -m 0644 contrib/egressd.example.ron "$stage/$name/egressd.example.ron"
install -m 0644 contrib/grafana-dashboard.json "$stage/$name/grafana-dashboard.json"
install -m 0644 contrib/99-egressd-bridge.conf "$stage/$name/99-egressd-bridge.conf"
install -m 0644 README.md "$stage/$name/README.md"
(cd "$stage/$name" && sha256sum egressd egressd.service egressd.example.ron grafana-dashboard.json 99-egressd-bridge.conf README.md >SHA256SUMS)
# The example must pass the binary's own check.
"$stage/$name/egressd" check --config "$stage/$name/egressd.example.ron" >/dev/null

mkdir -p "$out"
tarball="$out/$name.tar.gz"
# Reproducible for a given commit: fixed owner, order and mtime (the commit's).
mtime=$(git log -1 --format=%ct 2>/dev/null || date +%s)
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" \
    -C "$stage" -cf - "$name" | gzip -9n >"$tarball"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
size=$(stat -c %s "$tarball")
echo "tarball: $tarball"
echo "size: $size bytes ($(( (size + 1023) / 1024 )) KiB)"
echo "sha256: $(cut -d' ' -f1 "$out/$name.tar.gz.sha256")"
