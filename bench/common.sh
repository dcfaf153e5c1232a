# Sourced by the bench scripts: a release build, a work directory, a local mosquitto on a free port, and
# a gateway configuration for N simulated BM6 monitors. They are read passively through the real scheduler
# on the simulated air: each advertises every INTERVAL_MS and gives at most one reading per second
# (poll_interval = 1), so the offered load is N readings/s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-target/release/battery-hawk}
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n' "$port" > "$work/m.conf"
/usr/sbin/mosquitto -c "$work/m.conf" 2>/dev/null & sleep 0.5

# gateway_config N INTERVAL_MS STATUS_INTERVAL [EXTRA_TOML] > FILE
gateway_config() {
  printf '[gateway]\nid = "bench"\nstate_dir = "%s/state"\n[logging]\ntarget = "stderr"\nlevel = "warn"\n' "$work"
  printf '[mqtt]\nbroker = "127.0.0.1"\nport = %s\nstatus_interval = %s\noutbox_capacity = %s\n' "$port" "$3" "${OUTBOX_CAPACITY:-1000000}"
  printf '%s[bluetooth]\nbackend = "simulated"\n[defaults]\npoll_interval = 1\nmode = "passive"\n' "${4:-}"
  printf '[simulation]\ninterval_ms = %s\nforeign_advertisers = %s\n' "$2" "${FOREIGN_ADVERTISERS:-0}"
  for i in $(seq 1 "$1"); do printf '[[device]]\nmac = "AA:00:00:00:%02X:%02X"\ntype = "BM6"\n' $((i / 256)) $((i % 256)); done
}
