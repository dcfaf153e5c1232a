#!/usr/bin/env bash
# Throughput side by side, in one run, against one local mosquitto, all three counted the same way: a
# mosquitto_sub subscribed to the publisher's reading topics counts the readings it receives in a
# WINDOW-second window after a 2 s warm-up. It subscribes at QoS 0 (SUB_QOS=1 to change): a QoS 1
# subscriber doubles the broker's work per message, and the broker, not the publishers, becomes the limit. Each reading travels with the device status it causes (SPEC §1),
# so every publisher sends the same stream: a ~430-byte reading, then a retained ~330-byte status, QoS 1,
# inflight 100:
#   - the gateway pipeline: N simulated passive monitors, one reading per second each (N/s offered), through
#     the scheduler → decode → fleet → MQTT. The bench config keeps readings in memory (outbox 100,000, spool off), so
#     overload drops the oldest readings instead of writing them to disk;
#   - a minimal Python paho-mqtt publisher (the library the Python gateways use);
#   - a bare rumqttc publisher (the single-connection ceiling).
# Prints median and range over RUNS runs, and the ratios. Usage: bench/compare.sh [runs=3] [monitors=20000]
RUNS=${1:-3}; N=${2:-20000}; WINDOW=5
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

OUTBOX_CAPACITY=100000 gateway_config "$N" 500 3600 $'spool_max_mb = 0\n[homeassistant]\nenabled = false\n' \
  > "$work/config.toml"

# count WARMUP TOPIC_FILTER COMMAND...: start COMMAND, wait WARMUP s, count readings on TOPIC_FILTER over
# the window, stop it. The pipeline needs longer: its simulated monitors are heard, identified and
# announced first (20,000 of them take ~10 s), as on a real radio.
count() {
  local warmup=$1 filter=$2; shift 2
  rm -rf "$work/state"
  "$@" >/dev/null 2>&1 &
  local pid=$!
  sleep "$warmup"
  local n
  n=$(timeout -k 2 "$WINDOW" mosquitto_sub -p "$port" -q ${SUB_QOS:-0} -t "$filter" 2>/dev/null | wc -l || true)
  kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true
  echo $(( n / WINDOW ))
}
pipeline() { count 15 'battery_hawk/device/+/reading' "$BIN" run --config "$work/config.toml"; }
paho() { count 2 'bench/device/+/reading' python3 bench/paho_publisher.py "$port" 100000000 "$work/reading.json" "$work/status.json"; }
bare() { count 2 'bench/device/+/reading' target/release/examples/bare_publisher "$port" 100000000 "$work/reading.json" "$work/status.json"; }

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
printf '\n%-56s %10s %18s\n' "publisher (QoS 1; readings/s, each with its status)" "median" "range (${RUNS} runs)"
printf '%-56s %10d %18s\n' "battery-hawk pipeline ($N simulated monitors)" "$pm" "$pl–$ph"
printf '%-56s %10d %18s\n' "Python paho-mqtt publisher" "$ym" "$yl–$yh"
printf '%-56s %10d %18s\n' "bare rumqttc publisher (inflight 100)" "$bm" "$bl–$bh"
python3 -c "print(f'ratios: pipeline / paho = {$pm/$ym:.2f}x, pipeline / bare rumqttc = {100*$pm/$bm:.0f} %')"
