#!/usr/bin/env bash
# Cross-build for the Raspberry Pi (armv7 and arm64) with Debian's cross gcc, prove the binaries run under
# qemu-user and decode like the host build, and package them with cargo-deb.
# Usage: packaging/build-arm.sh   (installs its tools with apt-get/rustup when missing; apt needs root)
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A GCC=([armv7-unknown-linux-gnueabihf]=gcc-arm-linux-gnueabihf
                [aarch64-unknown-linux-gnu]=gcc-aarch64-linux-gnu)
declare -A QEMU=([armv7-unknown-linux-gnueabihf]="qemu-arm -L /usr/arm-linux-gnueabihf"
                 [aarch64-unknown-linux-gnu]="qemu-aarch64 -L /usr/aarch64-linux-gnu")

need=()
for t in "${!GCC[@]}"; do dpkg -s "${GCC[$t]}" >/dev/null 2>&1 || need+=("${GCC[$t]}"); done
command -v qemu-arm >/dev/null || need+=(qemu-user)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target add "${!GCC[@]}" >/dev/null

host=target/release/battery-hawk
[ -x "$host" ] || cargo build --release --locked
vector=71543b749f6f614dd6333f21546f681d
strip_time() { sed -E 's/"timestamp":"[^"]*"//'; }
expected=$("$host" decode --type bm6 "$vector" | strip_time)

for t in "${!GCC[@]}"; do
  echo "== $t"
  start=$(date +%s)
  cargo build --release --locked --target "$t"
  bin="target/$t/release/battery-hawk"
  echo "built in $(( $(date +%s) - start )) s; stripped size $(stat -c %s "$bin") bytes"
  run=(${QEMU[$t]} "$bin")
  [ "$("${run[@]}" --version)" = "$("$host" --version)" ] || { echo "--version differs" >&2; exit 1; }
  "${run[@]}" check-config --config etc/battery-hawk/config.toml >/dev/null
  got=$("${run[@]}" decode --type bm6 "$vector" | strip_time)
  if [ "$got" != "$expected" ]; then
    echo "decode under qemu differs from the host build:" >&2
    echo "  host: $expected" >&2
    echo "  $t: $got" >&2
    exit 1
  fi
  echo "runs under qemu: --version, check-config and decode match the host build"
done
packaging/build-deb.sh "${!GCC[@]}"
