#!/usr/bin/env python3
"""The real Home Assistant check (issue 14), started by run.sh once Home Assistant is installed.

Runs, all on loopback: a test mosquitto (persistent, so retained messages survive its restart), the gateway
(`battery-hawk run`, simulated Bluetooth) and Home Assistant in the chroot (its MQTT config entry and a
confirmed loopback HTTP setting written into `.storage` before the first start: no UI, no onboarding).
Every check reads Home Assistant's own records — `.storage/core.device_registry`, `core.entity_registry`,
the recorder's `home-assistant_v2.db`, its log — and compares them with what the gateway published
(captured by mosquitto_sub). Then the cluster scenario (SPEC §6, `check_cluster`): three gateways against
the same broker and Home Assistant, an owner killed, another paused. One line per check, then
`N passed, M failed`; exit 1 on a failure. Standard library only (runs on the host's /usr/bin/python3).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from datetime import datetime, timezone

from world import (CLUSTER, CLUSTER_DEVICES, CLUSTER_KEEPALIVE_S, CLUSTER_POLL_S, CLUSTER_VEHICLES, DEVICES,
                   GATEWAY_ID, INTERVAL_S, LOG_LINE, PREFIX, REMOVED, VEHICLES, World, grep_all, log_time,
                   wait_until)

SETTLE = 3 * INTERVAL_S + 10

results = []


def check(name, ok, why="", info=""):
    """Print one line: `ok   name (info)` or `FAIL name: why`."""
    results.append(bool(ok))
    line = f"{'ok  ' if ok else 'FAIL'} {name}"
    if why and not ok:
        line += f": {why}"
    elif info:
        line += f" ({info})"
    print(line, flush=True)
    return ok


def note(text):
    print(f"     {text}", flush=True)


def mac_hex(mac):
    return mac.replace(":", "").lower()


def default_name(model, mac):
    return f"{model} {mac[-8:]}"

# --- what should exist ----------------------------------------------------------------------------------


def expected_entities():
    """unique_id → (device object id, device_class, unit, state_class, entity_category)."""
    out = {}
    for mac, model, mode, _, _ in DEVICES:
        obj = f"{PREFIX}_{mac_hex(mac)}"
        out[f"{obj}_voltage"] = (obj, "voltage", "V", "measurement", None)
        out[f"{obj}_soc"] = (obj, "battery", "%", "measurement", None)
        if model != "BM2" and mode != "passive":
            out[f"{obj}_temperature"] = (obj, "temperature", "°C", "measurement", None)
            out[f"{obj}_state"] = (obj, None, None, None, None)
        out[f"{obj}_rssi"] = (obj, "signal_strength", "dBm", "measurement", "diagnostic")
        out[f"{obj}_last_reading"] = (obj, "timestamp", None, None, "diagnostic")
    for vid, _ in VEHICLES:
        obj = f"{PREFIX}_vehicle_{vid}"
        out[f"{obj}_health"] = (obj, "enum", None, None, None)
        out[f"{obj}_health_score"] = (obj, None, None, "measurement", None)
        out[f"{obj}_average_voltage"] = (obj, "voltage", "V", "measurement", None)
        out[f"{obj}_connected_devices"] = (obj, None, None, "measurement", None)
    obj = f"{PREFIX}_gateway_{GATEWAY_ID}"
    out[f"{obj}_connectivity"] = (obj, "connectivity", None, None, "diagnostic")
    out[f"{obj}_uptime"] = (obj, "duration", "s", "measurement", "diagnostic")
    for key in ("readings", "decode_errors", "connection_failures"):
        out[f"{obj}_{key}"] = (obj, None, None, "total_increasing", "diagnostic")
    return out


def expected_devices():
    """object id → (name, model, via gateway)."""
    gw = f"{PREFIX}_gateway_{GATEWAY_ID}"
    out = {gw: (f"Battery Hawk {GATEWAY_ID}", "Gateway", False)}
    for mac, model, _, name, _ in DEVICES:
        out[f"{PREFIX}_{mac_hex(mac)}"] = (name or default_name(model, mac), model, True)
    for vid, name in VEHICLES:
        out[f"{PREFIX}_vehicle_{vid}"] = (name, "Vehicle", True)
    return out


# --- the checks -----------------------------------------------------------------------------------------


def registries(w):
    """(devices by our object id, entities by unique id) from Home Assistant's registry files."""
    devs = {}
    for d in (w.storage("core.device_registry") or {}).get("devices", []):
        for domain, ident in d.get("identifiers", []):
            if domain == "mqtt" and ident.startswith(PREFIX):
                devs[ident] = d
    ents = {e["unique_id"]: e for e in (w.storage("core.entity_registry") or {}).get("entities", [])
            if e.get("platform") == "mqtt" and str(e.get("unique_id", "")).startswith(PREFIX)}
    return devs, ents


def check_registries(w):
    """Read after Home Assistant stopped: a registry change made while it starts is written 180 s later."""
    want_e, want_d = expected_entities(), expected_devices()
    devs, ents = registries(w)
    missing = sorted(set(want_d) - set(devs))
    check("every device is in core.device_registry", not missing, f"missing {missing}",
          f"{len(devs)} devices")
    gw_id = devs.get(f"{PREFIX}_gateway_{GATEWAY_ID}", {}).get("id")
    wrong = []
    for obj, (name, model, via) in want_d.items():
        d = devs.get(obj)
        if d is None:
            continue
        got = (d.get("name"), d.get("model"), d.get("via_device_id") == gw_id if via else True)
        if got != (name, model, True):
            wrong.append(f"{obj}: name/model/via {got}")
    check("devices have the right name, model and gateway", not wrong, "; ".join(wrong))
    missing = sorted(set(want_e) - set(ents))
    extra = sorted(set(ents) - set(want_e))
    check("exactly the expected entities are in core.entity_registry",
          not missing and not extra, f"missing {missing}; unexpected {extra}", f"{len(ents)} entities")
    wrong = []
    for uid, (obj, cls, unit, state_class, category) in want_e.items():
        e = ents.get(uid)
        if e is None:
            continue
        got = (e.get("original_device_class"), e.get("unit_of_measurement"),
               (e.get("capabilities") or {}).get("state_class"), e.get("entity_category"))
        if got != (cls, unit, state_class, category):
            wrong.append(f"{uid}: {got} != {(cls, unit, state_class, category)}")
        if devs.get(obj, {}).get("id") != e.get("device_id"):
            wrong.append(f"{uid}: on the wrong device")
    check("entities have the right class, unit, state class and category", not wrong, "; ".join(wrong))
    return {uid: e["entity_id"] for uid, e in ents.items()}


def field(payload, path):
    for k in path:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(k)
    return payload


def published_values(w, mac, path):
    """Every value of `path` the gateway published for `mac`: in readings and in statuses' `reading`."""
    values = set()
    for m in w.published():
        if m.get("topic") == f"{PREFIX}/device/{mac}/reading":
            body = m.get("payload")
        elif m.get("topic") == f"{PREFIX}/device/{mac}/status":
            body = field(parse(m.get("payload")), ["reading"])
        else:
            continue
        v = field(parse(body) if isinstance(body, str) else body, path)
        if v is not None:
            values.add(norm(v))
    return values


def parse(text):
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


def norm(v):
    try:
        return f"{float(v):.2f}"
    except (TypeError, ValueError):
        return str(v)


def check_values(w, ids, since):
    rows = w.db_rows(since)
    compared = wrong = 0
    bad = []
    for mac, model, mode, _, _ in DEVICES:
        obj = f"{PREFIX}_{mac_hex(mac)}"
        for key, path in (("voltage", ["voltage"]), ("soc", ["state_of_charge"]),
                          ("temperature", ["temperature"]), ("state", ["extra", "state"])):
            entity = ids.get(f"{obj}_{key}")
            if not entity:
                continue
            sent = published_values(w, mac, path)
            for e, state, _ in rows:
                if e != entity or state in ("unavailable", "unknown"):
                    continue
                compared += 1
                if norm(state) not in sent:
                    wrong += 1
                    bad.append(f"{entity}={state}")
    check("every value Home Assistant recorded equals one the gateway published",
          compared > 0 and wrong == 0, f"{compared - wrong} of {compared} right; wrong: {bad[:8]}",
          f"{compared} of {compared} state changes right")
    # Every monitor shows a value (none stays unknown for ever).
    latest = w.latest()
    empty = [ids.get(f"{PREFIX}_{mac_hex(m)}_{k}") for m, _, _, _, _ in DEVICES for k in ("voltage", "soc")
             if latest.get(ids.get(f"{PREFIX}_{mac_hex(m)}_{k}")) in (None, "unknown", "unavailable")]
    check("every monitor's voltage and state of charge has a value", not empty, f"without: {empty}")


def measurement_entities(ids, macs=None):
    return [ids[f"{PREFIX}_{mac_hex(m)}_{k}"] for m, _, _, _, _ in DEVICES if macs is None or m in macs
            for k in ("voltage", "soc") if f"{PREFIX}_{mac_hex(m)}_{k}" in ids]


def numeric(state):
    try:
        float(state)
        return True
    except (TypeError, ValueError):
        return False


def first_values_after(w, entities, since, timeout):
    """entity → time of its first numeric state at or after `since` (waits up to `timeout` s)."""
    def seen():
        got = {}
        for e, s, t in w.db_rows(since):
            if e in entities and e not in got and numeric(s):
                got[e] = t
        return got if len(got) == len(entities) else None
    return wait_until(timeout, seen, 0.25) or {
        e: t for e, s, t in w.db_rows(since) if e in entities and numeric(s)}


def all_in_state(w, entities, states, timeout, since=0.0):
    def done():
        latest = w.latest(since)
        return all(latest.get(e) in states for e in entities)
    ok = wait_until(timeout, done, 0.5)
    latest = w.latest()
    return ok, {e: latest.get(e) for e in entities if latest.get(e) not in states}


def check_availability(w, ids):
    gw = f"{PREFIX}_gateway_{GATEWAY_ID}"
    monitors = measurement_entities(ids)
    gateway_sensors = [ids[f"{gw}_{k}"] for k in ("uptime", "readings") if f"{gw}_{k}" in ids]
    vehicles = [ids[f"{PREFIX}_vehicle_{v}_health"] for v, _ in VEHICLES if f"{PREFIX}_vehicle_{v}_health" in ids]
    connectivity = ids.get(f"{gw}_connectivity")
    # Gateway killed: the broker publishes its last will.
    t = time.time()
    w.gw.stop(signal.SIGKILL)
    ok, left = all_in_state(w, monitors + gateway_sensors + vehicles, {"unavailable"}, 20, t)
    check("gateway killed: monitors, vehicles and the gateway's sensors go unavailable", ok, f"not: {left}")
    ok, left = all_in_state(w, [connectivity], {"off"}, 10, t)
    check("gateway killed: its connectivity shows off", ok, f"shows {left}")
    t = time.time()
    w.start_gateway()
    got = first_values_after(w, monitors, t, 20)
    missing = sorted(set(monitors) - set(got))
    check("gateway restarted: every monitor has a value again", not missing, f"without: {missing}",
          f"slowest {max(got.values(), default=t) - t:.1f} s after the start")
    ok = wait_until(20, lambda: all(numeric(w.latest(t).get(e)) for e in gateway_sensors), 0.5)
    check("gateway restarted: its sensors are available again", ok,
          f"{ {e: w.latest().get(e) for e in gateway_sensors} }")


def check_silent_monitors(w, ids):
    """Every monitor stops answering (simulation.failure_rate = 1.0, by a config reload), then recovers."""
    polled = [m for m, _, mode, _, _ in DEVICES if mode != "passive" and m != REMOVED]
    entities = measurement_entities(ids, polled)
    t = time.time()
    w.reload_gateway(failure_rate=1.0)
    ok, left = all_in_state(w, entities, {"unavailable"}, SETTLE, t)
    check("silent monitors go unavailable", ok, f"still: {left}")
    passive = [m for m, _, mode, _, _ in DEVICES if mode == "passive"]
    timeouts = [m["topic"] for m in w.published()
                if any(m.get("topic") == f"{PREFIX}/device/{p}/status" for p in passive)
                and (parse(m.get("payload")) or {}).get("error_code") == 1001]
    # A passive device never connects: a connection failure rate cannot make it time out.
    check("passive devices never report a connection timeout", not timeouts,
          f"{len(timeouts)} 1001 statuses: {sorted(set(timeouts))}")
    t = time.time()
    w.reload_gateway(failure_rate=0.0)
    got = first_values_after(w, entities, t, SETTLE)
    missing = sorted(set(entities) - set(got))
    check("monitors answering again have values again", not missing, f"without: {missing}")


def check_start_health(w, ids, until):
    """All simulated monitors are healthy: a start must not show a `poor` vehicle on its way up."""
    health = {ids.get(f"{PREFIX}_vehicle_{v}_health") for v, _ in VEHICLES}
    seen = [(e, s) for e, s, t in w.db_rows() if e in health and t <= until]
    poor = [e for e, s in seen if s == "poor"]
    check("no false 'poor' vehicle health while the gateway starts", seen and not poor,
          f"{len(poor)} 'poor' of {len(seen)} health states", f"{[s for _, s in seen]}")


def discovered(w, count):
    """Home Assistant recorded a state for at least `count` sensors and binary sensors."""
    def enough():
        names = {e for e, _, _ in w.db_rows()}
        return len([e for e in names if e.startswith(("sensor.", "binary_sensor."))]) >= count
    return wait_until(90, enough, 1)


def check_ha_restart(w, ids):
    """Home Assistant stopped; start it again: values from the retained statuses at once."""
    entities = measurement_entities(ids)
    started = time.time()
    ready = w.start_ha()
    if not check("Home Assistant restarts", ready is not None, f"see {w.work}/hass-stdout-{w.ha_runs}.log"):
        return
    got = first_values_after(w, entities, started, 30)
    late = {e: round(t - ready, 1) for e, t in got.items() if t - ready > 5}
    missing = sorted(set(entities) - set(got))
    slowest = max((t - ready for t in got.values()), default=0)
    check("values present within 5 s after a Home Assistant restart", not late and not missing,
          f"late {late}; missing {missing}", f"slowest {slowest:.1f} s after 'initialized'")


def check_broker_restart(w, ids):
    entities = measurement_entities(ids)
    log = w.ha_log()
    before = len(grep_all(log, "Connected to MQTT server"))
    lost = len(grep_all(log, "Disconnected from MQTT server"))
    w.stop_broker()
    t = time.time()
    seen = wait_until(20, lambda: len(grep_all(log, "Disconnected from MQTT server")) > lost, 0.25)
    check("Home Assistant notices the broker stopped", seen, "nothing logged within 20 s")
    if not check("the broker restarts (retained messages kept)", w.start_broker(), "mosquitto did not come back"):
        return
    line = wait_until(30, lambda: (grep_all(log, "Connected to MQTT server")[before:] or [None])[0], 0.25)
    if not check("Home Assistant reconnects to the broker", line is not None, "no reconnection within 30 s"):
        return
    connected = log_time(line)
    note(f"Home Assistant reconnected {connected - t:.1f} s after the broker stopped")
    got = first_values_after(w, entities, t, 30)
    late = {e: round(s - connected, 1) for e, s in got.items() if s - connected > 5}
    missing = sorted(set(entities) - set(got))
    slowest = max((s - connected for s in got.values()), default=0)
    check("values present within 5 s after Home Assistant reconnected to a restarted broker",
          not late and not missing, f"late {late}; missing {missing}", f"slowest {slowest:.1f} s")


def check_removal(w, ids):
    obj = f"{PREFIX}_{mac_hex(REMOVED)}"
    # Let Home Assistant finish re-discovering everything after the broker restart: a removal that arrives
    # while it still sets the device up leaves the device in its registry (Home Assistant's race).
    time.sleep(10)
    t = time.time()
    w.reload_gateway(without=(REMOVED,))
    entities = [e for u, e in ids.items() if u.startswith(obj + "_")]
    # Home Assistant records a removed entity's state as gone (no row) or unavailable.
    time.sleep(10)
    latest = w.latest(t)
    check("a removed device's entities leave Home Assistant's states",
          all(latest.get(e) in (None, "unavailable") for e in entities),
          f"{ {e: latest.get(e) for e in entities} }")
    check("Home Assistant stops cleanly", w.stop_ha() == 0)
    devs, ents = registries(w)
    check("a device removed by a config reload leaves both registries",
          obj not in devs and not any(u.startswith(obj + "_") for u in ents),
          f"device left: {obj in devs}; entities left: {[u for u in ents if u.startswith(obj)]}")


# --- the cluster scenario (SPEC §6) -------------------------------------------------------------------


def cluster_owners(online):
    """mac → the gateway the ownership rule names with `online` gateways (no pins here: best RSSI)."""
    return {mac: max(online, key=lambda g: CLUSTER[g][i]) for i, (mac, _, _, _) in enumerate(CLUSTER_DEVICES)}


def cluster_monitor_entities(mac, model):
    obj = f"{PREFIX}_{mac_hex(mac)}"
    keys = ["voltage", "soc", "rssi", "last_reading"]
    if model != "BM2":
        keys += ["temperature", "state"]
    return {f"{obj}_{k}" for k in keys}


def cluster_view(w, owners):
    """Problems (by kind) in Home Assistant's registries with `owners` (mac → gateway id), and
    unique id → entity id of the cluster's entities."""
    devices = (w.storage("core.device_registry") or {}).get("devices", [])
    entities = [e for e in (w.storage("core.entity_registry") or {}).get("entities", [])
                if e.get("platform") == "mqtt"]
    problems = {"gateways": [], "monitors": [], "via": [], "duplicates": []}

    def matching(obj, mac=None):
        return [d for d in devices
                if ["mqtt", obj] in d.get("identifiers", [])
                or (mac and ["mac", mac.lower()] in d.get("connections", []))]

    gateway_ids = {}
    for gid in CLUSTER:
        found = matching(f"{PREFIX}_gateway_{gid}")
        if len(found) != 1 or found[0].get("model") != "Gateway":
            problems["gateways"].append(f"{gid}: {len(found)} device(s) {[d.get('model') for d in found]}")
        if found:
            gateway_ids[gid] = found[0]["id"]
    names = {v: k for k, v in gateway_ids.items()}
    ids = {}
    # A vehicle's summary goes with the owner of its lowest-MAC device.
    vehicle_owner = {vid: owners.get(min(m for m, _, _, v in CLUSTER_DEVICES if v == vid))
                     for vid, _ in CLUSTER_VEHICLES}
    wanted = [(f"{PREFIX}_{mac_hex(mac)}", mac, name, owners.get(mac), cluster_monitor_entities(mac, model))
              for mac, model, name, _ in CLUSTER_DEVICES]
    wanted += [(f"{PREFIX}_vehicle_{vid}", None, name, vehicle_owner[vid],
                {f"{PREFIX}_vehicle_{vid}_{k}"
                 for k in ("health", "health_score", "average_voltage", "connected_devices")})
               for vid, name in CLUSTER_VEHICLES]
    for obj, mac, name, owner, uids in wanted:
        found = matching(obj, mac)
        if len(found) != 1:
            problems["duplicates" if found else "monitors"].append(f"{obj}: {len(found)} devices")
            continue
        d = found[0]
        mine = {e["unique_id"]: e for e in entities if e.get("device_id") == d["id"]}
        ids.update({u: e["entity_id"] for u, e in mine.items()})
        if set(mine) != uids or d.get("name") != name:
            problems["monitors"].append(f"{obj} ({d.get('name')}): missing {sorted(uids - set(mine))}, "
                                        f"unexpected {sorted(set(mine) - uids)}")
        if owner is None or d.get("via_device_id") != gateway_ids.get(owner):
            problems["via"].append(f"{obj}: via {names.get(d.get('via_device_id'), d.get('via_device_id'))}, "
                                   f"owner {owner}")
    # No entity of ours twice (Home Assistant would name the second one `…_2`).
    ours = [e for e in entities if str(e.get("unique_id", "")).startswith(PREFIX)]
    for e in ours:
        if re.search(r"_\d+$", e["entity_id"]):
            problems["duplicates"].append(f"{e['entity_id']} ({e['unique_id']})")
    return problems, ids


def cluster_configs_at(w):
    """When the cluster's last discovery config was published (the capture's clock)."""
    objects = [f"{PREFIX}_{mac_hex(m)}" for m, _, _, _ in CLUSTER_DEVICES]
    objects += [f"{PREFIX}_vehicle_{v}" for v, _ in CLUSTER_VEHICLES]
    topics = {f"homeassistant/device/{o}/config" for o in objects}
    times = [m["tst"] for m in w.published() if m.get("topic") in topics and m.get("tst")]
    if not times:
        return 0.0
    return datetime.strptime(max(times)[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


def wait_cluster_view(w, owners, timeout):
    """Wait until Home Assistant's registry files agree with `owners`; the problems left and the entity
    ids. Home Assistant saves a registry change 10 s after the last one while it runs: a file older than
    the last discovery config counts only once that config would have been saved."""
    last = {}
    registry = os.path.join(w.cfg, ".storage", "core.device_registry")

    def agrees():
        configs_at = cluster_configs_at(w)
        try:
            saved_at = os.path.getmtime(registry)
        except OSError:
            saved_at = 0.0
        problems, ids = cluster_view(w, owners)
        now = w.owners_of(owners)
        if now != owners:
            problems["via"].append(f"owners announced {now}")
        if saved_at < configs_at and time.time() < configs_at + 25:
            problems["via"].append("the device registry was not saved since the last discovery config")
        last.update(problems=problems, ids=ids)
        return not any(problems.values())
    wait_until(timeout, agrees, 1)
    return last["problems"], last["ids"]


def recorded_after(w, entity, since):
    return [s for e, s, _ in w.db_rows(since) if e == entity]


def reading_times(states):
    out = set()
    for s in states:
        try:
            out.add(datetime.fromisoformat(s).timestamp())
        except (TypeError, ValueError):
            pass
    return out


def check_cluster(w):
    """SPEC §6 in Home Assistant's own registries: three gateways (simulated Bluetooth, `[cluster]`, one
    shared site, each hearing the monitors at its own RSSI) against the same broker and Home Assistant;
    then SIGKILL of an owner (its last will hands over), then SIGSTOP of the new owner past its keepalive
    (a lost broker connection: hand-over, and back)."""
    if w.gw:
        w.gw.stop()  # the single gateway of the checks above: its devices stay in the registries, unused
    started = time.time()
    ready = w.start_ha()
    if not check("cluster: Home Assistant starts again", ready is not None,
                 f"see {w.work}/hass-stdout-{w.ha_runs}.log"):
        return
    w.start_cluster()
    everyone = cluster_owners(list(CLUSTER))
    settled = wait_until(60, lambda: w.owners_of(everyone) == everyone, 0.5)
    check("cluster: three gateways agree on one owner per monitor", settled,
          f"owners {w.owners_of(everyone)}, want {everyone}", f"{everyone}")
    problems, ids = wait_cluster_view(w, everyone, 60)
    note(f"cluster: registries agree {time.time() - started:.0f} s after Home Assistant's start")
    check("cluster: each gateway is a Home Assistant device", not problems["gateways"],
          "; ".join(problems["gateways"]))
    check("cluster: each monitor (and the vehicle) is one Home Assistant device with its entities",
          not problems["monitors"] and not problems["duplicates"],
          "; ".join(problems["monitors"] + problems["duplicates"]))
    check("cluster: each monitor's device is via its owner gateway's device", not problems["via"],
          "; ".join(problems["via"]))

    # SIGKILL of the first monitor's owner: its last will hands the monitor to the next best gateway.
    mac = CLUSTER_DEVICES[0][0]
    victim = everyone[mac]
    survivors = [g for g in CLUSTER if g != victim]
    after = cluster_owners(survivors)
    killed = time.time()
    w.members[victim].stop(signal.SIGKILL)
    bound = 2 * CLUSTER_KEEPALIVE_S + CLUSTER_POLL_S + 10
    moved = wait_until(bound, lambda: w.owners_of(after) == after, 0.25)
    check(f"cluster: {victim} killed: {after[mac]} announces itself the owner of {mac}", moved,
          f"owners {w.owners_of(after)} {bound} s after the kill, want {after}",
          f"{time.time() - killed:.1f} s after the kill")
    problems, ids = wait_cluster_view(w, after, 60)
    note(f"cluster: registries agree {time.time() - killed:.0f} s after the kill")
    check(f"cluster: after the hand-over {mac}'s device is via {after[mac]}'s device", not problems["via"],
          "; ".join(problems["via"]))
    check("cluster: after the hand-over still one device per monitor, every entity once (no `_2`)",
          not problems["monitors"] and not problems["duplicates"],
          "; ".join(problems["monitors"] + problems["duplicates"]))
    obj = f"{PREFIX}_{mac_hex(mac)}"
    last_reading, voltage = ids.get(f"{obj}_last_reading"), ids.get(f"{obj}_voltage")

    # Readings made after the kill (by the new owner) reach the same entities: two of them, and a voltage.
    def updating():
        fresh = {t for t in reading_times(recorded_after(w, last_reading, killed)) if t > killed}
        return len(fresh) >= 2 and any(numeric(s) for s in recorded_after(w, voltage, killed)) and fresh
    fresh = wait_until(4 * CLUSTER_POLL_S + 10, updating, 0.5)
    check(f"cluster: after the hand-over {mac}'s sensors keep updating in the recorder", fresh,
          f"after the kill: {last_reading} {recorded_after(w, last_reading, killed)}, "
          f"{voltage} {recorded_after(w, voltage, killed)}",
          f"readings {', '.join(f'{t - killed:.0f}' for t in sorted(fresh or []))} s after the kill")

    # The new owner loses the broker for longer than its keepalive (SIGSTOP): its last will hands its
    # monitors to the last gateway. Back, it is better by far: the last gateway lets go (clearing the
    # owner topic) and it takes them back — never re-announcing its old claim before — and Home
    # Assistant's devices follow it back.
    paused = after[mac]
    last = [g for g in survivors if g != paused][0]
    moving = [m for m, g in after.items() if g == paused]
    during = {m: last for m in after}
    w.members[paused].send(signal.SIGSTOP)
    t = time.time()
    moved = wait_until(3 * CLUSTER_KEEPALIVE_S + 10, lambda: w.owners_of(during) == during, 0.25)
    check(f"cluster: {paused} paused past its keepalive: {last} takes its monitors", moved,
          f"owners {w.owners_of(during)}", f"{time.time() - t:.1f} s after the pause")
    # Resumed at once: it still hears its monitors, and learns that it lost the broker only then.
    mark = len(w.published())
    w.members[paused].send(signal.SIGCONT)
    t = time.time()
    back = wait_until(60, lambda: w.owners_of(after) == after, 0.25)
    check(f"cluster: {paused} back: it takes its monitors back", back, f"owners {w.owners_of(after)}",
          f"{time.time() - t:.1f} s after it resumed")
    events = w.owner_events(mark)
    early = {m: [g for e, g in events if e == m] for m in moving}
    early = {m: seq for m, seq in early.items() if not seq or seq[0] is not None}
    check(f"cluster: {paused} back: no claim of it before {last} released the monitor", not early,
          f"owner announcements after the resume: {early}")
    problems, ids = wait_cluster_view(w, after, 60)
    check(f"cluster: {paused} back: its monitors' devices are via its device again",
          not any(problems.values()), "; ".join(p for ps in problems.values() for p in ps))

    check("cluster: Home Assistant stops cleanly", w.stop_ha() == 0)
    problems, _ = cluster_view(w, after)
    check("cluster: the registries Home Assistant saved at its stop agree", not any(problems.values()),
          "; ".join(p for ps in problems.values() for p in ps))


def check_log(w, ids):
    """No warning or error mentioning the gateway's entities, devices or topics (all runs' logs)."""
    needles = ["battery_hawk", "value_json", "homeassistant/device/"] + list(ids.values())
    relevant, others = [], {}
    for run in range(1, w.ha_runs + 1):
        try:
            lines = open(w.ha_log(run), errors="replace").read().splitlines()
        except OSError:
            continue
        entry = None
        for line in lines + [""]:
            m = LOG_LINE.match(line)
            if m or not line:
                if entry and entry[0] in ("WARNING", "ERROR", "CRITICAL"):
                    text = "\n".join(entry[1])
                    if any(n in text for n in needles):
                        relevant.append(text)
                    else:
                        key = re.sub(r"^\S+ \S+ ", "", entry[1][0])[:160]
                        others[key] = others.get(key, 0) + 1
                entry = (m.group(3), [line]) if m else None
            elif entry:
                entry[1].append(line)
    check("no warning or error in home-assistant.log mentions the gateway's entities", not relevant,
          f"{len(relevant)} entries")
    for text in relevant[:12]:
        note(text.replace("\n", "\n     "))
    for text, n in sorted(others.items()):
        note(f"other Home Assistant warning/error ({n}x): {text}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the chroot with Home Assistant")
    ap.add_argument("--venv", required=True, help="Home Assistant's venv inside the chroot")
    ap.add_argument("--gateway", required=True, help="the battery-hawk binary")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--values-for", type=int, default=60, help="seconds of readings before comparing values")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bh-ha-real-")
    w = World(args, work)
    t0 = time.time()
    try:
        if not check("mosquitto starts", w.start_broker()):
            return 1
        w.write_ha_config()
        w.start_gateway()
        ready = w.start_ha()
        if not check("Home Assistant starts with the MQTT entry written into .storage", ready is not None,
                     f"see {work}/hass-stdout-1.log", f"initialized {ready - t0:.1f} s after start"
                     if ready else ""):
            return 1
        check("Home Assistant discovers the gateway's entities", discovered(w, len(expected_entities())))
        check("Home Assistant stops cleanly", w.stop_ha() == 0)
        first_run_end = time.time()
        ids = check_registries(w)
        check_start_health(w, ids, first_run_end)
        check_ha_restart(w, ids)
        t = time.time()
        time.sleep(args.values_for)
        check_values(w, ids, t)
        check_availability(w, ids)
        check_silent_monitors(w, ids)
        check_broker_restart(w, ids)
        check_removal(w, ids)
        check_cluster(w)
        check_log(w, ids)
    finally:
        w.stop_all()
        if args.keep or not all(results):
            note(f"records in {work}")
        if not args.keep and all(results):
            subprocess.call(["rm", "-rf", work])
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed ({time.time() - t0:.0f} s)")
    return 0 if results and all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
