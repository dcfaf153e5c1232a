#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with only Rust installed:
# installs what the tests need when it is missing (needs root or sudo for apt-get), then runs
# formatting, lint and every test against real processes (mosquitto on loopback; a private D-Bus
# with python-dbusmock playing BlueZ and the monitors).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mosquitto ] || [ -x /usr/bin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v dbus-daemon >/dev/null && command -v dbus-send >/dev/null || need+=(dbus)
/usr/bin/python3 -c 'import dbusmock' 2>/dev/null || need+=(python3-dbusmock)
pkg-config --exists dbus-1 2>/dev/null || need+=(libdbus-1-dev pkg-config)
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
echo "== real BlueZ in a VM (tests/realbluez: Debian kernel, bluetoothd, emulated monitors)"
tests/realbluez/run.sh
echo "== packaging (deb, install/purge, ARM under qemu)"
packaging/check.sh
