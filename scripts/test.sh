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
# libfaketime: the field tests start the gateway with a wall clock in 1970 (tests/field_clock.rs).
ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "== installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# mosquitto's package may start a system broker on 1883; the tests use their own ports.

# Every step runs even when an earlier one failed, so one run shows everything that is wrong; the script
# fails if any step did.
failed=()
step() {
  local name=$1
  shift
  echo "== $name"
  local t0=$SECONDS
  if "$@"; then
    echo "== $name: ok ($((SECONDS - t0)) s)"
  else
    echo "== $name: FAILED ($((SECONDS - t0)) s)"
    failed+=("$name")
  fi
}
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --locked --all-targets -- -D warnings
step "cargo test" cargo test --locked
# A real Home Assistant against the gateway (cached in /var/cache/battery-hawk-test/ha).
step "Home Assistant (tests/ha-real)" tests/ha-real/run.sh
# Real BlueZ in a VM: Debian's kernel, bluetoothd, Bumble-emulated monitors (cached likewise).
step "real BlueZ in a VM (tests/realbluez)" tests/realbluez/run.sh
step "packaging (deb, install/purge, ARM under qemu)" packaging/check.sh
if [ ${#failed[@]} -gt 0 ]; then
  echo "== failed steps: ${failed[*]}"
  exit 1
fi
echo "== every step passed"
