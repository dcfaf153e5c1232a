#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with only Rust installed:
# installs what the tests need when it is missing (needs root or sudo for apt-get), then runs
# formatting, lint and every test against real processes (mosquitto on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mosquitto ] || [ -x /usr/bin/mosquitto ] || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# mosquitto's package may start a system broker on 1883; the tests use their own ports.

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
