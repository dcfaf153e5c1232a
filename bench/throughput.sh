#!/usr/bin/env bash
# Rough pipeline figure: N simulated monitors, each producing a frame every INTERVAL_MS, through the
# whole gateway into a local mosquitto (QoS 1); a mosquitto_sub counts the readings delivered.
# Prints readings/s produced and delivered, and the gateway's peak RSS. Not a test: a measurement.
# Usage: bench/throughput.sh [devices=500] [interval_ms=20] [seconds=10]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500}; INTERVAL=${2:-20}; SECS=${3:-10}
BIN=target/release/battery-hawk
[ -x "$BIN" ] || cargo build --release --locked
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n' "$port" > "$work/m.conf"
/usr/sbin/mosquitto -c "$work/m.conf" 2>/dev/null & sleep 0.5
{
  printf '[gateway]\nid = "bench"\nstate_dir = "%s/state"\n[logging]\ntarget = "stderr"\nlevel = "warn"\n' "$work"
  printf '[mqtt]\nbroker = "127.0.0.1"\nport = %s\nstatus_interval = 3600\noutbox_capacity = 1000000\n' "$port"
  printf '[bluetooth]\nbackend = "simulated"\n[simulation]\ninterval_ms = %s\n' "$INTERVAL"
  for i in $(seq 1 "$N"); do printf '[[device]]\nmac = "AA:00:00:00:%02X:%02X"\ntype = "BM6"\n' $((i / 256)) $((i % 256)); done
} > "$work/config.toml"
mosquitto_sub -p "$port" -t 'battery_hawk/device/+/reading' -q 1 > "$work/readings" &
sleep 0.3
/usr/bin/time -v "$BIN" run --config "$work/config.toml" 2> "$work/time" &
gw=$!
if [ -n "${SHOW_THREADS:-}" ]; then sleep 4; top -H -b -n 1 -p "$(pgrep -n -x battery-hawk)" | head -20; sleep $((SECS-4)); else sleep "$SECS"; fi
kill -TERM $(pgrep -P $gw battery-hawk || echo $gw) 2>/dev/null || true
wait $gw 2>/dev/null || true
sleep 1
delivered=$(wc -l < "$work/readings")
expected=$(( N * 1000 / INTERVAL ))
rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/time")
echo "devices=$N interval_ms=$INTERVAL seconds=$SECS"
echo "offered load:        $expected readings/s"
echo "delivered:           $delivered readings ($(( delivered / SECS )) readings/s)"
echo "gateway peak RSS:    ${rss} KiB"
