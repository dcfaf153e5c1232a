#!/usr/bin/env bash
# The gateway against the real BlueZ stack: Debian's kernel under qemu, real bluetoothd on a real system
# D-Bus, and emulated Leagend monitors (Bumble, on this host) behind the guest's virtual HCI.
#
#   tests/realbluez/run.sh                     # every scenario, one boot
#   tests/realbluez/run.sh poll_after_forget   # only the named ones (run.sh --list names them)
#
# Prints one line per scenario (PASS/FAIL and why) and "N passed, M failed"; exit status 1 on any failure.
# Needs root for apt-get (it installs what is missing). Downloads are cached in $RB_CACHE (default
# /var/cache/battery-hawk-test/realbluez): the kernel package unpacked, the Bumble venv, the initramfs.
# Env: RB_CACHE, ACCEL=tcg|kvm, VM_TIMEOUT (s, default 900), RB_BTD_DEBUG=1 (bluetoothd -d),
#      BUMBLE_LOGLEVEL=DEBUG. Logs of the last run: $RB_CACHE/out/ (gateway, bluetoothd, monitors, dmesg).
set -euo pipefail
W=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$W/../.." && pwd)
CACHE=${RB_CACHE:-/var/cache/battery-hawk-test/realbluez}
T0=$(date +%s)
say() { echo "[realbluez +$(( $(date +%s) - T0 ))s] $*" >&2; }

if [ "${1:-}" = "--list" ]; then
  /usr/bin/python3 "$W/scenarios.py" --list; exit 0
fi
ALL=$(/usr/bin/python3 "$W/scenarios.py" --list)
for s in "$@"; do
  grep -qx "$s" <<<"$ALL" || { echo "unknown scenario: $s (run.sh --list)" >&2; exit 2; }
done

# 1. Debian packages
PKGS="qemu-system-x86 bluez busybox-static dbus kmod cpio python3-venv mosquitto mosquitto-clients xz-utils zstd iproute2"
missing=$(for p in $PKGS; do dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
  say "apt-get install" $missing
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends $missing >/dev/null
fi
mkdir -p "$CACHE"
# One run at a time per cache (CI and a developer on one machine): the others wait here.
exec 9>"$CACHE/lock"
flock 9

# 2. Debian's kernel, unpacked into the cache (no /boot changes, no initramfs-tools)
if [ ! -f "$CACHE/kernel/.ok" ]; then
  say "downloading Debian's kernel package"
  [ -n "$(find /var/lib/apt/lists -name '*Packages*' 2>/dev/null | head -1)" ] || apt-get update -qq
  KPKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  rm -rf "$CACHE/kernel" "$CACHE/kdl" && mkdir -p "$CACHE/kernel" "$CACHE/kdl"
  chmod 777 "$CACHE/kdl"; (cd "$CACHE/kdl" && apt-get download -qq "$KPKG")
  dpkg-deb -x "$CACHE"/kdl/*.deb "$CACHE/kernel"
  depmod -b "$CACHE/kernel" "$(ls "$CACHE/kernel/lib/modules" | head -1)"
  rm -rf "$CACHE/kdl"; touch "$CACHE/kernel/.ok"
fi
KV=$(ls "$CACHE/kernel/lib/modules" | head -1)

# 3. Bumble + cryptography in a venv (host side: runs natively, not under emulation)
VENV=$CACHE/venv
if ! "$VENV/bin/python" -c "import bumble, cryptography" 2>/dev/null; then
  say "pip install bumble cryptography"
  rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "bumble==${BUMBLE_VERSION:-0.0.236}" "cryptography>=41"
fi

# 4. initramfs: busybox + virtio/9p/overlay modules
if [ ! -f "$CACHE/initramfs.cpio" ] || [ "$W/mkinitramfs.sh" -nt "$CACHE/initramfs.cpio" ]; then
  "$W/mkinitramfs.sh" "$CACHE/kernel" "$KV" "$CACHE/initramfs.cpio" >/dev/null
fi

# 5. the emulated monitors' frames against SPEC §5.6
(cd "$W" && "$VENV/bin/python" check_frames.py >&2) || { echo "FAIL frames: the encoder does not match SPEC §5.6"; echo "0 passed, 1 failed"; exit 1; }

# 6. the gateway
say "cargo build"
(cd "$REPO" && cargo build --quiet --bin battery-hawk)
GW=$REPO/target/debug/battery-hawk

# 7. the monitors on this host, then the VM
OUT=$CACHE/out SOCK=$CACHE/sock
rm -rf "$OUT" "$SOCK" && mkdir -p "$OUT" "$SOCK"
echo "$*" > "$OUT/scenarios"
(cd "$W" && exec "$VENV/bin/python" monitors.py "$SOCK/hci" "$SOCK/ctl" "$SOCK/ready") > "$OUT/monitors.log" 2>&1 &
MON=$!
QEMU=""
cleanup() { [ -n "$QEMU" ] && kill "$QEMU" 2>/dev/null; kill "$MON" 2>/dev/null; wait 2>/dev/null; true; }
trap cleanup EXIT
for _ in $(seq 300); do [ -f "$SOCK/ready" ] && break; kill -0 $MON 2>/dev/null || break; sleep 0.1; done
[ -f "$SOCK/ready" ] || { cat "$OUT/monitors.log" >&2; echo "FAIL setup: the emulated monitors did not start"; echo "0 passed, 1 failed"; exit 1; }

if [ -z "${ACCEL:-}" ]; then
  if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then ACCEL=kvm; else ACCEL=tcg; fi
fi
CPU=max; [ "$ACCEL" = kvm ] && CPU=host
BTD_ARGS=""; [ -n "${RB_BTD_DEBUG:-}" ] && BTD_ARGS="-d"
say "booting $KV under qemu ($ACCEL)"
KARGS="console=ttyS0 quiet loglevel=4 panic=-1 guest_init=$W/guest-init.sh RB_DIR=$W RB_KROOT=$CACHE/kernel RB_GATEWAY=$GW RB_BTD_ARGS=$BTD_ARGS"
timeout "${VM_TIMEOUT:-900}" qemu-system-x86_64 -machine q35,accel=$ACCEL -cpu $CPU -smp 1 -m 1536 \
  -nodefaults -no-user-config -display none -serial file:"$OUT/console.log" -no-reboot \
  -kernel "$CACHE/kernel/boot/vmlinuz-$KV" -initrd "$CACHE/initramfs.cpio" -append "$KARGS" \
  -fsdev local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hr,mount_tag=hostroot \
  -fsdev local,id=out,path="$OUT",security_model=none \
  -device virtio-9p-pci,fsdev=out,mount_tag=out \
  -device virtio-serial-pci \
  -chardev socket,id=hci,path="$SOCK/hci" -device virtserialport,chardev=hci,name=hci \
  -chardev socket,id=ctl,path="$SOCK/ctl" -device virtserialport,chardev=ctl,name=ctl &
QEMU=$!
tail -n +1 -F "$OUT/console.log" 2>/dev/null | grep --line-buffered '^\[guest\|^\[scenario' >&2 &
TAIL=$!
wait $QEMU || true
QEMU=""
kill $TAIL 2>/dev/null || true

# 8. results (results.jsonl: one {"name", "ok", "why"} per scenario that finished)
say "VM finished; logs in $OUT"
/usr/bin/python3 "$W/scenarios.py" --report "$OUT" "$@"
