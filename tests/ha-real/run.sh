#!/usr/bin/env bash
# The real Home Assistant check (issue 14): a current Home Assistant from PyPI, in a Debian chroot whose
# Python it supports, runs on loopback against a test mosquitto and the gateway (`battery-hawk run`,
# simulated Bluetooth, built from this tree); check.py then reads Home Assistant's own records (world.py
# runs the processes and reads the records, check.py holds the checks).
#
# Cached between runs on one machine (outside the repository, so a fresh CI clone finds it warm):
#   $BH_HA_CACHE (default /var/cache/battery-hawk-test/ha)/rootfs-<suite>        debootstrap of <suite>
#                                                  …/rootfs-<suite>/opt/ha-<version>  venv with Home Assistant
# Moving the pinned version: set HA_VERSION below (or BH_HA_VERSION for one run), run this script, and
# fix what check.py reports; a new venv is built next to the old one (delete old ones by hand). When a
# Home Assistant release needs a newer Python than the suite's, change SUITE (and the debootstrap script
# name if the host's debootstrap does not know the suite yet).
# Needs root (debootstrap, chroot, mount namespaces) and network access to Debian's archive and PyPI on a
# cold cache only. Prints one line per check and `N passed, M failed`; exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

HA_VERSION=${BH_HA_VERSION:-2026.11.0}
SUITE=forky                       # Python 3.14; Home Assistant 2026.11 needs Python >= 3.14.2
CACHE=${BH_HA_CACHE:-/var/cache/battery-hawk-test/ha}
ROOT=$CACHE/rootfs-$SUITE
VENV=/opt/ha-$HA_VERSION
# Debian's archive as this machine's apt uses it (the first main archive of its sources), unless given.
host_mirror() {
  { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' || true
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' || true
  } | { grep -v -e security -e updates || true; } | sed -n 1p
}
MIRROR=${BH_DEBIAN_MIRROR:-$(host_mirror)}
[ -n "$MIRROR" ] || { echo "ha-real: no Debian archive in this machine's apt sources; set BH_DEBIAN_MIRROR" >&2; exit 1; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ -n "$sudo" ]; then
  exec sudo -E "$0" "$@"
fi

start=$(date +%s)
phase() { echo "== ha-real: $* ($(( $(date +%s) - start )) s)"; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null || need+=(mosquitto-clients)
command -v unshare >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  phase "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one run at a time per cache

if [ ! -e "$ROOT/.bh-debootstrap-ok" ]; then
  phase "debootstrap $SUITE into $ROOT"
  rm -rf "$ROOT.tmp"
  script=/usr/share/debootstrap/scripts/$SUITE
  [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid   # testing suites use sid's script
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOT.tmp" "$MIRROR" "$script" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
  touch "$ROOT.tmp/.bh-debootstrap-ok"
  mv "$ROOT.tmp" "$ROOT"
fi

# The host's CA certificates (a TLS-intercepting proxy's CA among them) for pip and for Home Assistant's
# own runtime installs; DNS as the host has it.
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"

in_root() {
  chroot "$ROOT" env -i HOME=/root PATH="$VENV/bin:/usr/bin:/bin" LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

if [ ! -e "$ROOT$VENV/.bh-ok" ]; then
  phase "pip install homeassistant==$HA_VERSION into $VENV"
  rm -rf "$ROOT$VENV"
  in_root python3 -m venv "$VENV"
  in_root pip install -q "homeassistant==$HA_VERSION" >"$CACHE/pip.log" 2>&1 \
    || { tail -20 "$CACHE/pip.log"; exit 1; }
  # What the integrations the check loads would otherwise install at their first start.
  reqs=$(in_root python3 -c '
import json, pathlib, homeassistant
base = pathlib.Path(homeassistant.__file__).parent / "components"
for d in ("mqtt", "recorder", "http", "file_upload"):
    m = base / d / "manifest.json"
    if m.exists():
        print(" ".join(json.loads(m.read_text()).get("requirements", [])))
')
  # shellcheck disable=SC2086
  in_root pip install -q $reqs >>"$CACHE/pip.log" 2>&1 || { tail -20 "$CACHE/pip.log"; exit 1; }
  touch "$ROOT$VENV/.bh-ok"
fi
phase "Home Assistant $HA_VERSION ready in $ROOT"

cargo build --locked --quiet --bin battery-hawk
phase "gateway built"
rc=0
PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 tests/ha-real/check.py --root "$ROOT" --venv "$VENV" \
  --gateway "$PWD/target/debug/battery-hawk" "$@" || rc=$?
phase "done"
exit $rc
