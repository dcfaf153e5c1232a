#!/usr/bin/env bash
# Build the Debian package(s) with cargo-deb and check them with lintian.
# Usage: packaging/build-deb.sh [TARGET...]   (no TARGET: the host; e.g. armv7-unknown-linux-gnueabihf)
# For a TARGET the binary must already be built (packaging/build-arm.sh does that).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked
command -v lintian >/dev/null || { echo "lintian missing: apt-get install lintian" >&2; exit 1; }

mkdir -p target/packaging
gzip -9nc packaging/battery-hawk.1 > target/packaging/battery-hawk.1.gz

debs=()
if [ $# -eq 0 ]; then
  cargo build --release --locked
  debs+=("$(cargo deb --no-build --locked | tail -n 1)")
else
  for t in "$@"; do
    debs+=("$(cargo deb --no-build --locked --target "$t" | tail -n 1)")
  done
fi
for deb in "${debs[@]}"; do
  echo "== $deb"
  dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
  dpkg-deb --contents "$deb"
  # Warnings we accept are overridden, each with its reason, in packaging/debian/lintian-overrides.
  lintian --fail-on error,warning "$deb"
done
