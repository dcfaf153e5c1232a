#!/usr/bin/env bash
# Packaging proof, run by scripts/test.sh: build the host .deb (lintian-clean), install it for real
# (user, group, conffile permissions, systemd unit verified), purge it, then cross-build armv7/arm64 and
# run them under qemu (packaging/build-arm.sh). Uses sudo for apt-get/dpkg when not run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

need=()
command -v lintian >/dev/null || need+=(lintian)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

packaging/build-deb.sh
deb=$(ls -t target/debian/battery-hawk_*_"$(dpkg --print-architecture)".deb | head -n 1)

fail() { echo "packaging check failed: $*" >&2; exit 1; }
echo "== install $deb"
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "./$deb" >/dev/null
id -nG battery-hawk | grep -qw bluetooth || fail "battery-hawk is not in group bluetooth"
[ "$(stat -c '%a %U %G' /etc/battery-hawk/config.toml)" = "640 root battery-hawk" ] \
  || fail "config.toml is $(stat -c '%a %U %G' /etc/battery-hawk/config.toml)"
grep -qx /etc/battery-hawk/config.toml /var/lib/dpkg/info/battery-hawk.conffiles || fail "config is no conffile"
unit=$(dpkg -L battery-hawk | grep '/systemd/system/battery-hawk.service$')
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
[ -L /etc/systemd/system/multi-user.target.wants/battery-hawk.service ] || fail "unit not enabled"
$sudo runuser -u battery-hawk -- battery-hawk check-config --config /etc/battery-hawk/config.toml >/dev/null \
  || fail "the service user cannot read its configuration"
echo "installed: user in bluetooth, config 0640 root:battery-hawk (conffile), unit enabled and verified"
DEBIAN_FRONTEND=noninteractive $sudo apt-get purge -y -qq battery-hawk >/dev/null
! id battery-hawk 2>/dev/null || fail "purge left the battery-hawk user"
[ ! -e /etc/battery-hawk/config.toml ] || fail "purge left the configuration"
echo "purged: user, group and configuration removed"

packaging/build-arm.sh
packaging/openwrt/build.sh
