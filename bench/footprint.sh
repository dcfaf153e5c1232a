#!/usr/bin/env bash
# Footprint: peak RSS (VmHWM) of the gateway with N simulated monitors at one frame per second each, after
# SECS seconds, for N = 10, 200 and 2000 (shipped outbox and spool settings); then CPU share while idle:
# 10 monitors polled every 300 s (the shipped default poll interval) over IDLE_SECS seconds, from the
# process's user + system time in /proc. Usage: bench/footprint.sh [secs=20] [idle_secs=60]
SECS=${1:-20}; IDLE_SECS=${2:-60}
source "$(dirname "$0")/common.sh"
export OUTBOX_CAPACITY=10000
mosquitto_sub -p "$port" -t 'battery_hawk/#' > /dev/null &

# start_gateway N INTERVAL_MS: sets gw to the gateway's pid
start_gateway() {
  rm -rf "$work/state"
  gateway_config "$1" "$2" 60 > "$work/config.toml"
  "$BIN" run --config "$work/config.toml" 2>/dev/null &
  gw=$!
}
stop_gateway() { kill -TERM "$gw"; wait "$gw" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for n in 10 200 2000; do
  start_gateway "$n" 1000
  sleep "$SECS"
  echo "peak RSS, $n monitors x 1/s, after $SECS s: $(awk '/VmHWM/ {print $2}' "/proc/$gw/status") KiB"
  stop_gateway
done

start_gateway 10 300000
sleep 5
before=$(cpu_ticks "$gw"); t0=$(date +%s.%N)
sleep "$IDLE_SECS"
after=$(cpu_ticks "$gw"); t1=$(date +%s.%N)
stop_gateway
python3 -c "
ticks = $after - $before; hz = $(getconf CLK_TCK); wall = $t1 - $t0
print(f'idle CPU, 10 monitors polled every 300 s: {ticks / hz:.2f} s in {wall:.0f} s = {100 * ticks / hz / wall:.3f} % of one core')"
