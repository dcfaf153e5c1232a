#!/usr/bin/env bash
# Busy neighbourhood: 10 passive monitors (one reading per second each) among FOREIGN non-monitor
# advertisers (phones, watches) advertising twice a second each on the simulated air, release build, into a
# local mosquitto. Prints the gateway's CPU share of one core over SECS seconds (user + system, /proc, after
# 5 s of warm-up) and its RSS at the start and end of the window (memory must not grow with the devices
# heard); then the same 10 monitors alone, so the neighbours' own share shows. The simulated air runs inside
# the gateway and is counted with it. Not a test: a measurement.
# Usage: bench/neighbourhood.sh [foreign=200] [secs=60]
FOREIGN=${1:-200}; SECS=${2:-60}
source "$(dirname "$0")/common.sh"
mosquitto_sub -p "$port" -t 'battery_hawk/#' > /dev/null &
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
for f in "$FOREIGN" 0; do
  rm -rf "$work/state"
  FOREIGN_ADVERTISERS=$f gateway_config 10 1000 60 $'[homeassistant]\nenabled = false\n' > "$work/config.toml"
  "$BIN" run --config "$work/config.toml" 2>/dev/null &
  gw=$!
  sleep 5
  c0=$(cpu "$gw"); r0=$(rss "$gw"); t0=$(date +%s.%N)
  sleep "$SECS"
  c1=$(cpu "$gw"); r1=$(rss "$gw"); t1=$(date +%s.%N)
  kill -TERM "$gw"; wait "$gw" 2>/dev/null || true
  python3 -c "
ticks = $c1 - $c0; hz = $(getconf CLK_TCK); wall = $t1 - $t0
print(f'10 passive monitors + $f foreign advertisers (2 Hz each): {ticks / hz:.2f} s CPU in {wall:.0f} s = '
      f'{100 * ticks / hz / wall:.2f} % of one core; RSS {$r0} KiB at the start, {$r1} KiB at the end')"
done
