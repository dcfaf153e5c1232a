#!/usr/bin/env bash
# A self-contained armv7 binary for OpenWrt routers (and any armv7 Linux): glibc and libdbus linked
# statically, so it runs on OpenWrt's musl system without any library from the router.
# Rust's armv7-unknown-linux-musleabihf standard library cannot be installed here (rustup has no
# download for it), so this links glibc statically instead; see README "OpenWrt" for the one caveat
# (broker given as an IP address or an /etc/hosts name).
# Output: target/openwrt/battery-hawk-armv7 (checked under qemu-arm with no ARM libraries at all).
set -euo pipefail
cd "$(dirname "$0")/../.."
t=armv7-unknown-linux-gnueabihf
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
dpkg -s gcc-arm-linux-gnueabihf >/dev/null 2>&1 || {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gcc-arm-linux-gnueabihf qemu-user >/dev/null
}
rustup target add "$t" >/dev/null
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$t" --target-dir target/static
mkdir -p target/openwrt
cp "target/static/$t/release/battery-hawk" target/openwrt/battery-hawk-armv7
bin=target/openwrt/battery-hawk-armv7
file "$bin" | grep -q "statically linked" || { echo "$bin is not static" >&2; exit 1; }
qemu-arm "$bin" --version
qemu-arm "$bin" check-config --config etc/battery-hawk/config.toml >/dev/null
qemu-arm "$bin" decode --type bm6 71543b749f6f614dd6333f21546f681d | grep -q '"voltage":12.7'
echo "OpenWrt binary: $bin, $(stat -c %s "$bin") bytes, starts and decodes under qemu-arm"
