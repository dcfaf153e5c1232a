#!/bin/sh
# PID 1 in the qemu guest (this machine's root read-only + tmpfs overlay, see mkinitramfs.sh): loads the
# Bluetooth modules, starts the system D-Bus, bluetoothd, the HCI relay to the host's emulated monitors and
# a mosquitto on loopback, runs scenarios.py, and powers off. Everything it writes for the host goes to the
# writable 9p share mounted on /mnt/out.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
W=${RB_DIR:?}
MP="modprobe -d $RB_KROOT"
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "[guest $(up)s] $*"; }
finish() {
  [ -n "$1" ] && { say "setup failed: $1"; echo "$1" > /mnt/out/setup-failed; }
  dmesg > /mnt/out/dmesg.txt; sync
  echo 1 > /proc/sys/kernel/sysrq; echo o > /proc/sysrq-trigger; sleep 30
}
mount -t tmpfs tmpfs /run
mkdir -p /mnt/out && mount -t 9p -o trans=virtio,version=9p2000.L out /mnt/out
ip link set lo up || finish "loopback"
say "kernel $(uname -r)"
$MP bluetooth && $MP hci_vhci && $MP virtio_console || finish "modprobe"
port() { for d in /sys/class/virtio-ports/*; do [ "$(cat $d/name 2>/dev/null)" = "$1" ] && echo /dev/${d##*/}; done; }
i=0; while [ -z "$(port hci)" ] || [ -z "$(port ctl)" ]; do
  i=$((i+1)); [ $i -gt 300 ] && finish "virtio-serial ports hci/ctl not found"; sleep 0.1; done
mkdir -p /run/dbus
dbus-daemon --system --fork --nopidfile || finish "dbus-daemon"
/usr/libexec/bluetooth/bluetoothd -n $RB_BTD_ARGS >> /mnt/out/bluetoothd.log 2>&1 &
echo $! > /run/bluetoothd.pid
/usr/bin/python3 $W/relay.py "$(port hci)" > /mnt/out/relay.log 2>&1 &
i=0; until bluetoothctl list 2>/dev/null | grep -q Controller; do
  i=$((i+1)); [ $i -gt 300 ] && finish "no controller in bluetoothctl list after 60 s"; sleep 0.2; done
say "bluetoothd $(bluetoothd -v) has $(bluetoothctl list)"
cat > /run/mosquitto.conf <<CONF
listener 1883 127.0.0.1
allow_anonymous true
user root
persistence false
CONF
mosquitto -c /run/mosquitto.conf > /mnt/out/mosquitto.log 2>&1 &
RB_CTL=$(port ctl) /usr/bin/python3 $W/scenarios.py $(cat /mnt/out/scenarios) 2>&1 | tee /mnt/out/scenarios.log
finish ""
