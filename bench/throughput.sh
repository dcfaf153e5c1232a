#!/usr/bin/env bash
# Rough pipeline figure: N simulated passive monitors (one reading per second each, from adverts every
# INTERVAL_MS) through the scheduler and the whole gateway into a local mosquitto (QoS 1); a mosquitto_sub
# counts the readings delivered. Prints readings/s offered and delivered, and the gateway's peak RSS.
# Not a test: a measurement. Usage: bench/throughput.sh [devices=2000] [interval_ms=500] [seconds=10]
N=${1:-2000}; INTERVAL=${2:-500}; SECS=${3:-10}
source "$(dirname "$0")/common.sh"
gateway_config "$N" "$INTERVAL" 3600 > "$work/config.toml"
mosquitto_sub -p "$port" -t 'battery_hawk/device/+/reading' -q 1 > "$work/readings" &
sleep 0.3
/usr/bin/time -v "$BIN" run --config "$work/config.toml" 2> "$work/time" &
gw=$!
if [ -n "${SHOW_THREADS:-}" ]; then sleep 4; top -H -b -n 1 -p "$(pgrep -n -x battery-hawk)" | head -20; sleep $((SECS-4)); else sleep "$SECS"; fi
kill -TERM $(pgrep -P $gw battery-hawk || echo $gw) 2>/dev/null || true
wait $gw 2>/dev/null || true
sleep 1
delivered=$(wc -l < "$work/readings")
expected=$N
rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$work/time")
echo "devices=$N interval_ms=$INTERVAL seconds=$SECS"
echo "offered load:        $expected readings/s"
echo "delivered:           $delivered readings ($(( delivered / SECS )) readings/s)"
echo "gateway peak RSS:    ${rss} KiB"
