#!/usr/bin/env bash
# All the benchmarks of BENCHMARKS.md, one after the other (about 15 minutes plus builds):
# micro-benchmarks, throughput side by side, latency, footprint and idle CPU, CPU per reading beside the
# Python reference gateway, the busy neighbourhood, stripped binary sizes (the OpenWrt one as last built).
# Usage: bench/run.sh   (needs mosquitto and mosquitto-clients: scripts/test.sh installs them)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)," \
  "$(/usr/sbin/mosquitto -h 2>/dev/null | head -n 1 || true)"
echo "== micro-benchmarks (cargo bench --bench micro)"
cargo bench --locked --quiet --bench micro 2>/dev/null
echo "== throughput (bench/compare.sh 3)"
bench/compare.sh 3 | tail -n 5
echo "== latency (bench/latency.sh 200 30)"
bench/latency.sh 200 30
echo "== footprint (bench/footprint.sh 20 60)"
bench/footprint.sh 20 60
echo "== CPU per reading at 2000 readings/s, beside the Python reference (bench/cpu_per_reading.sh 2000 20 3)"
bench/cpu_per_reading.sh 2000 20 3
echo "== busy neighbourhood (bench/neighbourhood.sh 200 60)"
bench/neighbourhood.sh 200 60
echo "== stripped binaries"
if command -v arm-linux-gnueabihf-gcc >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null; then
  cargo build --release --locked --quiet --target armv7-unknown-linux-gnueabihf --target aarch64-unknown-linux-gnu
else
  packaging/build-arm.sh >/dev/null   # installs the cross compilers first
fi
# The OpenWrt musl binary (no demo broker) is listed as packaging/openwrt/build.sh last built it (~4 min).
for bin in target/release/battery-hawk target/armv7-unknown-linux-gnueabihf/release/battery-hawk \
           target/aarch64-unknown-linux-gnu/release/battery-hawk target/openwrt/battery-hawk-armv7-musl; do
  [ -e "$bin" ] || continue
  stat -c '%s %n' "$bin" | awk '{printf "%-60s %9d bytes (%.2f MiB)\n", $2, $1, $1 / 1048576}'
done
