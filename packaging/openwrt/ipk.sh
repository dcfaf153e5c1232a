#!/usr/bin/env bash
# Package the OpenWrt binary (packaging/openwrt/build.sh) as an .ipk for opkg (OpenWrt ≤ 24.10).
# Usage: packaging/openwrt/ipk.sh [OPKG_ARCH]   (default arm_cortex-a7_neon-vfpv4; `opkg print-architecture`
# on the router names its own, e.g. arm_cortex-a9_vfpv3-d16 — the binary runs on any ARMv7 with VFP)
# Layout as OpenWrt's ipkg-build makes it: a gzipped tar of debian-binary, control.tar.gz, data.tar.gz.
# The service is enabled on install but not started: the configuration must be edited first.
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-arm_cortex-a7_neon-vfpv4}
bin=target/openwrt/battery-hawk-armv7-musl
[ -x "$bin" ] || { echo "$bin missing: run packaging/openwrt/build.sh first" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
data=$work/data control=$work/control
install -D -m 0755 "$bin" "$data/usr/bin/battery-hawk"
install -D -m 0755 packaging/openwrt/battery-hawk.init "$data/etc/init.d/battery-hawk"
install -D -m 0600 etc/battery-hawk/config.toml "$data/etc/battery-hawk/config.toml"
mkdir -p "$control"
cat >"$control/control" <<EOF
Package: battery-hawk
Version: $version-1
Depends: libc, bluez-daemon, dbus
Source: https://github.com/battery-hawk/battery-hawk
SourceName: battery-hawk
License: MIT
Section: utils
Architecture: $arch
Installed-Size: $(du -sb "$data" | cut -f1)
Maintainer: Battery Hawk developers <battery-hawk@users.noreply.github.com>
Description: Bluetooth LE 12 V battery monitors (BM2, BM6, BM7) to MQTT gateway
EOF
echo /etc/battery-hawk/config.toml >"$control/conffiles"
cat >"$control/postinst" <<'EOF'
#!/bin/sh
[ -n "$IPKG_INSTROOT" ] && exit 0
/etc/init.d/battery-hawk enable
echo "battery-hawk: edit /etc/battery-hawk/config.toml, then /etc/init.d/battery-hawk start"
exit 0
EOF
cat >"$control/prerm" <<'EOF'
#!/bin/sh
[ -n "$IPKG_INSTROOT" ] && exit 0
/etc/init.d/battery-hawk stop
/etc/init.d/battery-hawk disable
exit 0
EOF
chmod 0755 "$control/postinst" "$control/prerm"
echo "2.0" >"$work/debian-binary"
tar_opts=(--numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -cz)
tar "${tar_opts[@]}" -f "$work/data.tar.gz" -C "$data" .
tar "${tar_opts[@]}" -f "$work/control.tar.gz" -C "$control" .
ipk=target/openwrt/battery-hawk_${version}-1_${arch}.ipk
tar "${tar_opts[@]}" -f "$ipk" -C "$work" ./debian-binary ./control.tar.gz ./data.tar.gz
tar -xzOf "$ipk" ./data.tar.gz | tar -tz | grep -qx ./usr/bin/battery-hawk \
  || { echo "$ipk: no /usr/bin/battery-hawk" >&2; exit 1; }
echo "OpenWrt package: $ipk ($(stat -c %s "$ipk") bytes)"
