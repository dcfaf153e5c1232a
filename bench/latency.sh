#!/usr/bin/env bash
# Frame-to-broker latency at a nominal load: N simulated monitors each producing a frame every second
# (default 200), through the whole gateway into a local mosquitto. A mosquitto_sub stamps each reading on
# arrival (%U, ns); latency = arrival − the reading's `timestamp`, which the simulated link sets when it
# hands the frame over. The timestamp is truncated to the millisecond, so figures are high by up to 1 ms,
# and they include the broker's hop to the subscriber: an upper bound of frame-to-broker.
# Usage: bench/latency.sh [monitors=200] [seconds=30]
N=${1:-200}; SECS=${2:-30}
source "$(dirname "$0")/common.sh"
gateway_config "$N" 1000 3600 $'[homeassistant]\nenabled = false\n' > "$work/config.toml"
mosquitto_sub -p "$port" -q 1 -t 'battery_hawk/device/+/reading' -F '%U|%p' > "$work/arrivals" &
sleep 0.3
"$BIN" run --config "$work/config.toml" 2>/dev/null &
gw=$!
sleep "$SECS"
kill -TERM $gw; wait $gw 2>/dev/null || true
python3 - "$work/arrivals" "$N" "$SECS" <<'PY'
import datetime, json, sys
lat = []
for line in open(sys.argv[1]):
    arrived, payload = line.rstrip("\n").split("|", 1)
    stamp = datetime.datetime.strptime(json.loads(payload)["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ")
    stamp = stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
    lat.append((float(arrived) - stamp) * 1000)
lat = sorted(lat[len(lat) // 10:])  # the first 10 % (start-up) left out
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"latency at {sys.argv[2]} monitors x 1/s over {sys.argv[3]} s ({len(lat)} readings): "
      f"p50 {pick(0.5):.2f} ms, p99 {pick(0.99):.2f} ms, max {lat[-1]:.2f} ms")
PY
