#!/usr/bin/env bash
# Builds egressd as one static x86_64 musl binary, prints its size and
# proves it is static (no program interpreter, no shared libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
cargo build --release --locked --target "$target"
bin="target/$target/release/egressd"
size=$(stat -c %s "$bin")
echo "binary: $bin"
echo "size: $size bytes ($(( (size + 1023) / 1024 )) KiB)"
if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
    echo "NOT static: it asks for a program interpreter" >&2
    exit 1
fi
if readelf -dW "$bin" | grep -q '(NEEDED)'; then
    echo "NOT static: it needs shared libraries:" >&2
    readelf -dW "$bin" | grep '(NEEDED)' >&2
    exit 1
fi
echo "static: yes (no interpreter, no NEEDED entries)"
"$bin" check >/dev/null && echo "runs: yes (egressd check on the embedded config)"
