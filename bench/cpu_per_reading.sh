#!/usr/bin/env bash
# CPU per reading at a fixed offered load: N simulated passive monitors (one reading per second each, from
# adverts every 500 ms) through the scheduler and the whole gateway into a local mosquitto; after a 3 s
# warm-up, the gateway's CPU time (user + system, /proc) over SECS seconds divided by the readings a
# mosquitto_sub counted in that window. Repeats RUNS times and prints the median and range.
# Not a test: a measurement. Usage: bench/cpu_per_reading.sh [monitors=1000] [seconds=15] [runs=3]
N=${1:-1000}; SECS=${2:-15}; RUNS=${3:-3}
source "$(dirname "$0")/common.sh"
gateway_config "$N" 500 3600 $'[homeassistant]\nenabled = false\n' > "$work/config.toml"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
results=()
for run in $(seq 1 "$RUNS"); do
  rm -rf "$work/state"
  "$BIN" run --config "$work/config.toml" 2>/dev/null &
  gw=$!
  sleep 3
  mosquitto_sub -p "$port" -t 'battery_hawk/device/+/reading' -q 0 > "$work/readings" &
  sub=$!
  c0=$(cpu "$gw"); sleep "$SECS"; c1=$(cpu "$gw")
  kill "$sub"; kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
  n=$(wc -l < "$work/readings")
  tick=$(getconf CLK_TCK)
  results+=("$(python3 -c "print(round(($c1 - $c0) / $tick / max($n, 1) * 1e6, 1))")")
  echo "run $run: $n readings in ${SECS} s, $(python3 -c "print(round(($c1 - $c0) / $tick, 2))") s CPU → ${results[-1]} µs/reading"
done
python3 - "${results[@]}" <<'PY'
import statistics, sys
v = sorted(float(x) for x in sys.argv[1:])
print(f"CPU per reading: median {statistics.median(v)} µs (range {v[0]}–{v[-1]}), {len(v)} runs")
PY
