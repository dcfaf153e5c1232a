#!/usr/bin/env bash
# Soak: 1000 simulated monitors (one frame per second each) through the gateway into a local mosquitto
# for MINUTES minutes (default 3). Prints the gateway's RSS after warm-up and at the end, and the outbox
# length from the last system status, to show memory stays flat and queues do not grow while the broker
# is healthy. A measurement, not a test (not run by CI).
# Usage: bench/soak.sh [minutes=3] [devices=1000]
MIN=${1:-3}; N=${2:-1000}
source "$(dirname "$0")/common.sh"
gateway_config "$N" 1000 10 > "$work/config.toml"
mosquitto_sub -p "$port" -t 'battery_hawk/system/status' > "$work/status" &
mosquitto_sub -p "$port" -t 'battery_hawk/device/+/reading' | wc -l > "$work/count" &
"$BIN" run --config "$work/config.toml" 2> "$work/gw.err" &
gw=$!
rss() { awk '/VmRSS/ {print $2}' "/proc/$gw/status"; }
sleep 20
start=$(rss)
echo "devices=$N minutes=$MIN"
echo "RSS after 20 s warm-up: $start KiB"
for m in $(seq 1 "$MIN"); do sleep 60; echo "RSS after $m min: $(rss) KiB"; done
end=$(rss)
last=$(tail -n 1 "$work/status")
kill -TERM $gw; wait $gw 2>/dev/null || true
sleep 1; kill $(jobs -p) 2>/dev/null || true; sleep 0.5
echo "RSS end: $end KiB (start $start KiB, change $(( end - start )) KiB)"
echo "last status storage: $(echo "$last" | python3 -c 'import json,sys; print(json.load(sys.stdin)["storage"])')"
echo "readings delivered: $(cat "$work/count")"
