#!/usr/bin/env bash
# Side by side, in one run, against one local mosquitto (each with one subscriber attached):
#   - the gateway pipeline: N simulated monitors producing frames as fast as the tick allows → decode →
#     fleet → MQTT QoS 1 (readings + the status each causes), counted by the subscriber;
#   - the same kind of message stream (alternating ~400-byte readings and retained statuses, QoS 1)
#     from a minimal Python paho-mqtt publisher, and from a bare rumqttc publisher (the single-connection
#     ceiling), counted by their broker acknowledgements.
# Prints median and range over RUNS runs, and the ratios. Usage: bench/compare.sh [runs=3] [monitors=500]
RUNS=${1:-3}; N=${2:-500}; COUNT=100000; WINDOW=6
source "$(dirname "$0")/common.sh"
cargo build --release --locked --quiet
cargo build --release --locked --quiet --example bare_publisher
python3 -c 'import paho.mqtt' 2>/dev/null || python3 -m pip install --quiet paho-mqtt

"$BIN" decode --type bm6 71543b749f6f614dd6333f21546f681d | tr -d '\n' > "$work/reading.json"
python3 - "$work/status.json" <<'PY'
import json, sys
json.dump({"device_id": "AA:00:00:00:00:01", "timestamp": "2026-01-01T00:00:00.000Z", "connected": True,
           "device_type": "BM6", "vehicle_id": None, "protocol_version": None, "last_command": "read_data",
           "error_code": None, "error_message": None, "last_reading_at": "2026-01-01T00:00:00.000Z",
           "extra": {"signal_strength": -67, "consecutive_failures": 0, "mode": "poll"}},
          open(sys.argv[1], "w"), separators=(",", ":"))
PY

gateway_config "$N" 10 3600 $'[homeassistant]\nenabled = false\n' > "$work/config.toml"

pipeline() {
  rm -rf "$work/state"
  "$BIN" run --config "$work/config.toml" 2>/dev/null &
  local gw=$!
  sleep 2
  local n
  n=$(timeout "$WINDOW" mosquitto_sub -p "$port" -t 'battery_hawk/device/#' 2>/dev/null | wc -l || true)
  kill -TERM $gw; wait $gw 2>/dev/null || true
  echo $(( n / WINDOW ))
}
with_subscriber() {
  mosquitto_sub -p "$port" -t 'bench/#' > /dev/null 2>&1 &
  local sub=$!
  sleep 0.2
  "$@"
  kill $sub 2>/dev/null || true
}
paho() { with_subscriber python3 bench/paho_publisher.py "$port" "$COUNT" "$work/reading.json" "$work/status.json"; }
bare() { with_subscriber target/release/examples/bare_publisher "$port" "$COUNT" "$work/reading.json" "$work/status.json"; }

declare -A R
for run in $(seq 1 "$RUNS"); do
  R[pipeline]+="$(pipeline) "
  R[paho]+="$(paho) "
  R[rumqttc]+="$(bare) "
done
stats() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%d %d %d", a[int((NR+1)/2)], a[1], a[NR]}'; }
read -r pm pl ph <<< "$(echo "${R[pipeline]}" | stats)"
read -r ym yl yh <<< "$(echo "${R[paho]}" | stats)"
read -r bm bl bh <<< "$(echo "${R[rumqttc]}" | stats)"
printf '\n%-46s %12s %20s\n' "publisher (QoS 1, messages/s into mosquitto)" "median" "range (${RUNS} runs)"
printf '%-46s %12d %20s\n' "battery-hawk pipeline ($N simulated monitors)" "$pm" "$pl–$ph"
printf '%-46s %12d %20s\n' "Python paho-mqtt publisher" "$ym" "$yl–$yh"
printf '%-46s %12d %20s\n' "bare rumqttc publisher (inflight 100)" "$bm" "$bl–$bh"
python3 -c "print(f'ratios: pipeline / paho = {$pm/$ym:.2f}x, pipeline / bare rumqttc = {100*$pm/$bm:.0f} %')"
