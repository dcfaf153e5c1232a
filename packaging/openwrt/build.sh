#!/usr/bin/env bash
# The OpenWrt binary: a static musl build for armv7-unknown-linux-musleabihf (libdbus vendored, musl
# linked in), which runs on OpenWrt's own libc with no library from the router.
#
# How: rustup has no prebuilt standard library for this target (its rust-std download is a 404), so the
# standard library is built from source (`-Zbuild-std`, with the `rust-src` component of the same stable
# toolchain; RUSTC_BOOTSTRAP=1 lets stable cargo take that one unstable flag), and zig (PyPI `ziglang`)
# is the C compiler and linker with its own musl, driven by cargo-zigbuild (PyPI `cargo-zigbuild`). Both
# go into a virtualenv under target/, nothing system-wide.
# Built without the `demo` feature: a router never runs the demo's in-process broker (rumqttd, ~1 MB).
# Output: target/openwrt/battery-hawk-armv7-musl, checked under qemu-arm with no ARM libraries at all:
# --version, check-config on the shipped config, decode of a spec vector, and a few seconds of `run` (the
# whole pipeline, simulated monitors) publishing into a mosquitto on this machine's loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
t=armv7-unknown-linux-musleabihf
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
command -v qemu-arm >/dev/null || {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user >/dev/null
}
venv=target/zig-venv
if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
  python3 -m venv "$venv" 2>/dev/null || {
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q ziglang==0.17.1 cargo-zigbuild==0.24.1
fi
rustup component add rust-src >/dev/null
start=$(date +%s)
PATH="$PWD/$venv/bin:$PATH" RUSTC_BOOTSTRAP=1 RUSTFLAGS="-C link-self-contained=no" CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
  cargo zigbuild -Zbuild-std=std,panic_abort --release --locked --no-default-features \
  --target "$t" --target-dir target/musl
mkdir -p target/openwrt
bin=target/openwrt/battery-hawk-armv7-musl
cp "target/musl/$t/release/battery-hawk" "$bin"
file "$bin" | grep -q "statically linked" || { echo "$bin is not static" >&2; exit 1; }
qemu-arm "$bin" --version
qemu-arm "$bin" check-config --config etc/battery-hawk/config.toml >/dev/null
qemu-arm "$bin" decode --type bm6 71543b749f6f614dd6333f21546f681d | grep -q '"voltage":12.7'
if qemu-arm "$bin" demo --help >/dev/null 2>&1; then
  echo "$bin still has the demo command" >&2; exit 1
fi
command -v mosquitto_sub >/dev/null || {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$work/m.conf"
mosquitto -c "$work/m.conf" 2>/dev/null &
printf '[gateway]\nid = "openwrt-check"\nstate_dir = "%s/state"\n[logging]\ntarget = "stderr"\n' "$work" > "$work/c.toml"
printf '[mqtt]\nbroker = "127.0.0.1"\nport = %s\n[bluetooth]\nbackend = "simulated"\n[defaults]\npoll_interval = 1\n' \
  "$port" >> "$work/c.toml"
printf '[[device]]\nmac = "AA:BB:CC:00:00:01"\ntype = "BM6"\n[[device]]\nmac = "AA:BB:CC:00:00:02"\ntype = "BM2"\nmode = "passive"\n' \
  >> "$work/c.toml"
sleep 0.5
timeout 12 mosquitto_sub -p "$port" -t 'battery_hawk/device/+/reading' > "$work/readings" 2>/dev/null &
timeout -s TERM 8 qemu-arm "$bin" run --config "$work/c.toml" 2>"$work/gw.log" || true
sleep 1
readings=$(wc -l < "$work/readings")
[ "$readings" -gt 0 ] || { echo "$bin: under qemu-arm, run published no reading:" >&2; tail "$work/gw.log" >&2; exit 1; }
echo "OpenWrt binary: $bin, $(stat -c %s "$bin") bytes, built in $(( $(date +%s) - start )) s;" \
  "under qemu-arm it starts, decodes and ran the gateway into mosquitto ($readings readings in 8 s)"
packaging/openwrt/ipk.sh
