#!/usr/bin/env bash
# CPU per reading at a fixed offered load, side by side in one run with the Python reference gateway
# (bench/python_gateway.py), both into the same local mosquitto at QoS 1.
#   - the gateway: RATE simulated passive BM6 monitors (a monitor gives at most one reading per
#     poll_interval, 1 s, so N readings/s need N monitors), advertising every 500 ms, through the simulated
#     air, the scheduler, decode, fleet and MQTT stages. Its simulated air (advert generation and AES
#     encryption) runs in the gateway's BLE thread and is counted with it; the per-thread figures show it;
#   - the Python reference: the same readings/s from pre-encrypted frames (AES, decode, json, paho QoS 1).
# Each run measures both over SECS seconds after a 3 s warm-up: CPU (user + system, /proc) divided by the
# readings a mosquitto_sub counted in that window, and messages per reading (every message the process
# published in the window, over its readings). RUNS runs; prints medians and ranges and the ratio. Then one
# window of each under `strace -c -f` for the system calls per reading (strace slows the process: the
# counts, not its CPU, are the figure). Not a test: a measurement.
# Usage: bench/cpu_per_reading.sh [readings_per_s=2000] [seconds=20] [runs=3]
RATE=${1:-2000}; SECS=${2:-20}; RUNS=${3:-3}
source "$(dirname "$0")/common.sh"
python3 -c 'import paho.mqtt, cryptography' 2>/dev/null || python3 -m pip install --quiet paho-mqtt cryptography
gateway_config "$RATE" 500 3600 $'[homeassistant]\nenabled = false\n' > "$work/config.toml"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)

# start WHO: sets pid and prefix
start() {
  rm -rf "$work/state"
  if [ "$1" = gateway ]; then
    "$BIN" run --config "$work/config.toml" 2>/dev/null & pid=$!; prefix=battery_hawk
  else
    python3 bench/python_gateway.py "$port" "$RATE" "$RATE" & pid=$!; prefix=pyref
  fi
  sleep 3
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }
# Every message the process publishes in the window (topics only; -R: no retained replay at subscribe).
subscribe() { mosquitto_sub -p "$port" -R -q 0 -t "$prefix/#" -F '%t' > "$work/topics" & sub=$!; }
readings() { grep -c '/reading$' "$work/topics" || true; }

# measure WHO: one window; prints "µs/reading messages/reading" and keeps per-thread ticks for the gateway
measure() {
  start "$1"; subscribe
  for t in /proc/$pid/task/*; do echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done | sort > "$work/t0"
  c0=$(cpu "$pid"); sleep "$SECS"; c1=$(cpu "$pid")
  for t in /proc/$pid/task/*; do echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done | sort > "$work/t1"
  kill "$sub"; wait "$sub" 2>/dev/null || true; stop
  local n m; n=$(readings); m=$(wc -l < "$work/topics")
  python3 -c "print(round(($c1 - $c0) / $tick / max($n, 1) * 1e6, 1), round($m / max($n, 1), 2), $n)"
}

declare -A R
for run in $(seq 1 "$RUNS"); do
  for who in gateway python; do
    read -r us mpr n <<< "$(measure $who)"
    R[$who]+="$us "; R[$who-msg]+="$mpr "
    echo "run $run, $who: $n readings in $SECS s, $us µs CPU per reading, $mpr messages per reading"
    if [ "$who" = gateway ]; then
      join "$work/t0" "$work/t1" | awk -v n="$n" -v hz="$tick" \
        '$3 > $2 {printf "    thread %-10s %6.1f µs per reading\n", $1, ($3 - $2) / hz / n * 1e6}'
    fi
  done
done

# syscalls WHO: system calls per reading over one window under strace
syscalls() {
  start "$1"; subscribe
  timeout -s INT "$SECS" strace -c -f -p "$pid" -o "$work/strace" 2>/dev/null || true
  kill "$sub"; wait "$sub" 2>/dev/null || true; stop
  local n; n=$(readings)
  awk -v n="$n" '$NF == "total" {printf "%.1f", $4 / (n > 0 ? n : 1)}' "$work/strace"
  echo " ($(grep -E '^ *[0-9]' "$work/strace" | grep -v total | sort -k4 -n -r | head -n 3 | awk '{printf "%s %s, ", $NF, $4}')of $n readings)"
}
sys_gw=$(syscalls gateway); sys_py=$(syscalls python)

python3 - "$RATE" "$SECS" "$RUNS" "${R[gateway]}" "${R[python]}" "${R[gateway-msg]}" "${R[python-msg]}" \
  "$sys_gw" "$sys_py" <<'PY'
import statistics, sys
rate, secs, runs = sys.argv[1:4]
vals = [sorted(float(x) for x in a.split()) for a in sys.argv[4:8]]
(gw, py, gwm, pym), (sgw, spy) = vals, sys.argv[8:10]
f = lambda v: f"{statistics.median(v):.1f} (range {v[0]:.1f}–{v[-1]:.1f})"
print(f"\nCPU per reading at {rate} readings/s offered, {secs} s windows, {runs} runs (medians, ranges):")
print(f"  battery-hawk gateway:      {f(gw)} µs, {statistics.median(gwm):.2f} messages per reading, "
      f"{sgw} syscalls per reading")
print(f"  Python reference gateway:  {f(py)} µs, {statistics.median(pym):.2f} messages per reading, "
      f"{spy} syscalls per reading")
print(f"  ratio Python / gateway:    {statistics.median(py) / statistics.median(gw):.1f} x")
PY
