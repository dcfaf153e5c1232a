#!/usr/bin/python3
"""Scenarios of the real-BlueZ harness: run inside the VM by guest-init.sh, one boot for all.

Each scenario drives the gateway (target/debug/battery-hawk, built on the host) against the real bluetoothd
and the emulated monitors (monitors.py on the host, reached through the control port $RB_CTL), asserts what
the gateway prints or publishes (a mosquitto on 127.0.0.1:1883), and appends {"name", "ok", "why"} to
/mnt/out/results.jsonl. Expected behaviour is SPEC revision 2, not what the current code happens to do.

  scenarios.py [NAME...]          run (in the guest)
  scenarios.py --list             the scenario names
  scenarios.py --report OUT [NAME...]   on the host: one line per scenario and "N passed, M failed"
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

from guestlib import (ABSENT, BM2, BM6, BM7, CTL, OUT, PHANTOM, PREFIX, Fail, Gateway, Subscriber,
                      bluetoothctl_scan, bluetoothd_alive, bluez_forget, bluez_knows, cli, config,
                      connected, dev_path, expect, last_status, log, read_json, reading_of,
                      restart_bluetoothd, status_of, system_bluetooth, wait_for, assert_released)


# --- scenarios --------------------------------------------------------------------------------------------
def scan_json():
    """`scan --json`: models, RSSI and advert voltage; the phantom is not a confirmed monitor."""
    CTL.set("bm6", voltage=12.64)
    CTL.set("bm2", voltage=12.47)
    problems = []
    for attempt in (1, 2):  # a BM2 alternates iBeacon and encrypted adverts: the newest reading one counts
        rc, out, err = cli("scan_json", "scan", "--json", "--duration", "8", "--config", config("scan_json"))
        if rc != 0:
            raise Fail(f"scan exited {rc}: {err.strip()[-300:]}")
        rows = {r.get("address"): r for r in json.loads(out)}
        for mac, model, volts in ((BM6, "BM6", 12.64), (BM2, "BM2", 12.47), (BM7, "BM7", None)):
            r = rows.get(mac)
            if r is None:
                problems.append(f"scan {attempt}: {model} {mac} not listed")
                continue
            # SPEC §5.3: a BM7 (no broadcast readings) may be listed unconfirmed with its model as a guess.
            if r.get("model") != model and model not in [v for v in r.values() if isinstance(v, str)]:
                problems.append(f"scan {attempt}: {mac} model {r.get('model')!r}, want {model}")
            if not isinstance(r.get("rssi"), int) or not -127 <= r["rssi"] <= 20:
                problems.append(f"scan {attempt}: {mac} rssi {r.get('rssi')!r} is not a dBm value")
            if r.get("voltage") != volts:
                problems.append(f"scan {attempt}: {model} voltage {r.get('voltage')!r}, want {volts!r} "
                                "(the newest advert)")
        ph = rows.get(PHANTOM)
        if ph is not None and ph.get("confirmed") is not False and "unconfirmed" not in json.dumps(ph):
            problems.append(f"scan {attempt}: the phantom (no fff0, no manufacturer data) is listed as a "
                            f"monitor, not as unconfirmed: {json.dumps(ph)}")
    if problems:
        raise Fail("; ".join(problems))
    return "BM6 12.64 V, BM2 12.47 V, BM7 without broadcast, phantom not confirmed, in two scans"


def read_bm6():
    """`read` of a BM6 BlueZ knows from a recent scan: exact values, link released."""
    CTL.set("bm6", voltage=12.61)
    bluetoothctl_scan(5)
    r = read_json("read_bm6", BM6)
    extra = r.get("extra", {})
    got = {k: r.get(k) for k in ("device_type", "voltage", "temperature", "state_of_charge")}
    got.update({f"extra.{k}": extra.get(k) for k in ("status_code", "state", "source")})
    want = {"device_type": "BM6", "voltage": 12.61, "temperature": 25.0, "state_of_charge": 80.0,
            "extra.status_code": 1, "extra.state": "not_charging", "extra.source": "gatt"}
    wrong = [f"{k}: got {got[k]!r}, want {v!r}" for k, v in want.items() if got[k] != v]
    assert_released(BM6, "bm6")
    if wrong:
        raise Fail("; ".join(wrong) + " (link released)")
    return "12.61 V 25 °C SoC 80, Connected=false afterwards"


def read_after_forget():
    """`read` of a BM6 BlueZ does not know (forgotten ~30 s after the last scan): the gateway finds it."""
    CTL.set("bm6", voltage=12.62)
    bluez_forget(BM6)
    wait_for(lambda: not bluez_knows(BM6), 10, "BlueZ forgetting the BM6 (bluetoothctl remove)")
    r = read_json("read_after_forget", BM6, "--type", "bm6")
    expect("voltage", r.get("voltage"), 12.62)
    assert_released(BM6, "bm6")
    return "12.62 V read with no device object in BlueZ beforehand"


def read_bm7():
    """`read --type bm7` of a `BM300 Pro`: exact values, link released."""
    CTL.set("bm7", voltage=13.05)
    bluetoothctl_scan(5)
    r = read_json("read_bm7", BM7, "--type", "bm7")
    for k, want in (("device_type", "BM7"), ("voltage", 13.05), ("temperature", 15.0), ("state_of_charge", 84.0)):
        expect(k, r.get(k), want)
    assert_released(BM7, "bm7")
    return "13.05 V 15 °C SoC 84, Connected=false afterwards"


def poll_after_forget():
    """`run`, BM6 polled every 45 s: every poll reads, also those > 40 s after the only scan."""
    sub = Subscriber()
    gw = Gateway("poll_after_forget", config("poll_after_forget", [(BM6, "BM6", "poll", 45)]))
    try:
        notes = []
        for i, volts in enumerate((12.51, 12.52, 12.53)):
            CTL.set("bm6", voltage=volts)
            start = time.monotonic()
            try:
                wait_for(lambda: sub.find(reading_of(BM6, volts)), 45 + 60, f"poll {i + 1}: a reading of {volts} V")
            except Fail as e:
                raise Fail(f"{e}; BlueZ knows the BM6: {bluez_knows(BM6)}; last status: {last_status(sub, BM6)}")
            notes.append(f"{volts} V after {time.monotonic() - start:.0f} s")
            if i == 0:
                # Real bluetoothd drops an unpaired device ~30 s after discovery stops: check it happened.
                wait_for(lambda: not bluez_knows(BM6), 60, "BlueZ forgetting the BM6 after the scan")
                notes.append("BlueZ forgot it")
        errors = sub.find(status_of(BM6, 1003))
        if errors:
            raise Fail(f"device status 1003 published {len(errors)} times while the BM6 advertised")
        return ", ".join(notes)
    finally:
        gw.stop()
        sub.close()


def passive_newest():
    """Passive BM2: only adverts heard after the gateway started listening count, and the newest of them."""
    CTL.set("bm2", voltage=12.06)
    bluetoothctl_scan(10)       # BlueZ caches ~10 frames of 12.06 V, one per company id
    CTL.set("bm2", advertising=False)
    sub = Subscriber()
    gw = Gateway("passive_newest", config("passive_newest", [(BM2, "BM2", "passive", 5),
                                                             (BM6, "BM6", "passive", 5)]))
    try:
        # The BM6's reading proves the gateway is listening; the silent BM2 is still in BlueZ's cache.
        wait_for(lambda: sub.find(reading_of(BM6)), 60, "a passive BM6 reading (the gateway listening)")
        stale = sub.find(reading_of(BM2))
        if stale:
            raise Fail(f"published {[p.get('voltage') for _, p, _ in stale]} V for the silent BM2: adverts "
                       "BlueZ cached before the gateway started listening")
        CTL.set("bm2", advertising=True, voltage=12.43)
        first = wait_for(lambda: sub.find(reading_of(BM2)), 60, "a passive BM2 reading")[0][1]
        expect("first passive BM2 reading's voltage (12.06 V is what the earlier scan cached)",
               first.get("voltage"), 12.43)
        expect("extra.source", first.get("extra", {}).get("source"), "advertisement")
        CTL.set("bm2", voltage=12.55)
        changed = time.monotonic() + 1
        later = lambda: [p for _, p, at in sub.find(reading_of(BM2)) if at > changed]  # noqa: E731
        wait_for(lambda: len(later()) >= 2, 45, "two passive readings after the change to 12.55 V")
        got = [p.get("voltage") for p in later()]
        if any(v != 12.55 for v in got):
            raise Fail(f"readings after the change to 12.55 V: {got} (older adverts from BlueZ's cache)")
        return f"nothing while silent; first reading 12.43 V (not the cached 12.06), then {got}"
    finally:
        gw.stop()
        sub.close()


def stream_bm2():
    """Streamed BM2: readings about once a second, a new voltage follows, the link drops at a clean stop."""
    sub = Subscriber()
    gw = Gateway("stream_bm2", config("stream_bm2", [(BM2, "BM2", "stream", 1)]))
    stopped = False
    try:
        wait_for(lambda: len(sub.find(reading_of(BM2, 12.83))) >= 3, 90, "three streamed readings of 12.83 V")
        CTL.set("bm2", voltage=12.71)
        wait_for(lambda: sub.find(reading_of(BM2, 12.71)), 30, "a streamed reading of the new 12.71 V")
        expect("extra.source", sub.find(reading_of(BM2))[-1][1].get("extra", {}).get("source"), "gatt")
        rc = gw.stop()
        stopped = True
        expect("gateway exit status after SIGTERM", rc, 0)
        assert_released(BM2, "bm2")
        return "streamed 12.83 then 12.71 V; link released at stop"
    finally:
        if not stopped:
            gw.stop()
        sub.close()


def read_error(name, mac, code, *extra):
    rc, out, err = cli(name, "read", mac, "--config", config(name), *extra)
    if rc == 0:
        raise Fail(f"read {mac} succeeded ({out.strip()}); want error {code}")
    if f"error {code}" not in err:
        raise Fail(f"read {mac}: want error {code}, got: {err.strip()[-300:]}")
    return err.strip().splitlines()[-1][-160:]


def error_1003():
    """`read` of an address nobody advertises: 1003."""
    return read_error("error_1003", ABSENT, 1003, "--type", "bm6")


def error_1004():
    """A BM6 that connects but never answers: 1004, link released."""
    bluetoothctl_scan(5)
    CTL.set("bm6", answers=False)
    msg = read_error("error_1004", BM6, 1004, "--type", "bm6")
    assert_released(BM6, "bm6")
    return msg


def error_1001():
    """A BM6 that advertises but accepts no connection (non-connectable adverts): 1001. (Powered off, it
    does not advertise at all: that is 1003, "not found", as SPEC §2.2 says.)"""
    CTL.set("bm6", connectable=False)
    # The gateway gives up (3 s) before the kernel's own LE connection timeout: when the kernel times out
    # first, bluetoothd 5.66 here leaves the bus without answering Connect (seen: the gateway then
    # rightly reports 1006 and finds bluetoothd again), which is not what this scenario is about.
    os.environ["BATTERYHAWK_BLUETOOTH_CONNECTION_TIMEOUT"] = "3"
    try:
        msg = read_error("error_1001", BM6, 1001, "--type", "bm6")
    finally:
        del os.environ["BATTERYHAWK_BLUETOOTH_CONNECTION_TIMEOUT"]
        # The kernel's cancelled connection request may still be pending in the emulated controller:
        # power-cycle the monitor, which drops any link, so the next scenario starts clean.
        CTL.set("bm6", connectable=True, advertising=False)
        CTL.set("bm6", advertising=True)
    return msg


def busy_phone():
    """A BM6 held by another central (the owner's phone): a clear error, then a reading once it is free."""
    bluetoothctl_scan(5)
    state = CTL.set("bm6", busy=True)["bm6"]
    if state["connections"] != 1 or state["advertising"]:
        raise Fail(f"the emulated phone did not take the BM6: {state}")
    rc, out, err = cli("busy_phone", "read", BM6, "--type", "bm6", "--config", config("busy_phone"))
    if rc == 0:
        raise Fail(f"read succeeded while another central held the BM6: {out.strip()}")
    codes = [c for c in (1001, 1003, 1007) if f"error {c}" in err]
    if not codes:
        raise Fail(f"want error 1007 (or 1001/1003: a held monitor does not advertise), got: {err.strip()[-300:]}")
    CTL.set("bm6", busy=False, voltage=12.67)
    r = read_json("busy_phone", BM6, "--type", "bm6")
    expect("voltage once the phone let go", r.get("voltage"), 12.67)
    assert_released(BM6, "bm6")
    return f"error {codes[0]} while held; 12.67 V once free"


def bluetoothd_sigkill():
    """bluetoothd SIGKILLed mid-run: 1006 and `bluetooth: unavailable`; restarted: readings resume."""
    sub = Subscriber()
    gw = Gateway("bluetoothd_sigkill", config("bluetoothd_sigkill", [(BM6, "BM6", "poll", 15),
                                                                     (BM2, "BM2", "passive", 5)]))
    problems = []

    def check(pred, timeout, what):
        try:
            wait_for(pred, timeout, what)
        except Fail as e:
            problems.append(str(e))
    try:
        CTL.set("bm6", voltage=12.41)
        CTL.set("bm2", voltage=12.42)
        wait_for(lambda: sub.find(reading_of(BM6, 12.41)) and sub.find(reading_of(BM2, 12.42)), 90,
                 "readings of both the polled BM6 and the passive BM2 before the kill")
        mark = len(sub.msgs)
        pid = int(open("/run/bluetoothd.pid").read())
        os.kill(pid, signal.SIGKILL)
        log(f"bluetoothd {pid} killed")
        check(lambda: sub.find(system_bluetooth("unavailable"), mark), 60,
              "system status with bluetooth: unavailable after SIGKILL")
        for mac in (BM6, BM2):
            check(lambda: sub.find(status_of(mac, 1006), mark), 60 if not problems else 5,
                  f"device status 1006 for {mac} (last: {last_status(sub, mac)})")
        restart_bluetoothd()
        mark = len(sub.msgs)
        CTL.set("bm6", voltage=12.44)
        CTL.set("bm2", voltage=12.45)
        if not any("unavailable" in p for p in problems):
            check(lambda: sub.find(system_bluetooth("active"), mark), 90,
                  "system status with bluetooth: active after the restart")
        check(lambda: sub.find(reading_of(BM6, 12.44), mark), 90, "a BM6 poll reading after the restart")
        check(lambda: sub.find(reading_of(BM2, 12.45), mark), 60, "a passive BM2 reading after the restart")
        if not gw.alive():
            problems.append("the gateway exited")
        if problems:
            raise Fail("; ".join(problems))
        return "1006 + unavailable after SIGKILL; active and both monitors read after the restart"
    finally:
        gw.stop()
        sub.close()


def no_phantom_adoption():
    """auto_configure adopts and reads the confirmed BM6/BM2, never the name-only phantom `Battery Monitor`."""
    sub = Subscriber()
    gw = Gateway("no_phantom_adoption", config("no_phantom_adoption", auto_configure=True,
                                               default_mode="passive", poll_interval=10))
    try:
        def associated(mac):
            return sub.find(lambda t, p: t.endswith("/device_associated") and isinstance(p, dict)
                            and p.get("device_id") == mac)
        wait_for(lambda: associated(BM6) and associated(BM2), 60, "the BM6 and the BM2 adopted (device_associated)")
        problems = []
        # Adoption happens when the initial scan (5 s) hears a monitor: by the time both readings are in (or
        # the wait ran out) the phantom, heard as often as they are, would have been adopted too.
        try:
            wait_for(lambda: sub.find(reading_of(BM6)) and sub.find(reading_of(BM2)), 60,
                     "passive readings of the adopted BM6 and BM2")
        except Fail as e:
            problems.append(str(e))
        bad = sub.find(lambda t, p: PHANTOM in t or (isinstance(p, dict) and p.get("device_id") == PHANTOM))
        if bad:
            problems.insert(0, f"the phantom was adopted: published on {sorted({t for t, _, _ in bad})}")
        if problems:
            raise Fail("; ".join(problems))
        return "BM6 and BM2 adopted and read; nothing published for the phantom"
    finally:
        gw.stop()
        sub.close()


def bluez_info():
    """Not a check: what BlueZ holds and signals for the monitors, logged to scenarios.log and dbus-*.log."""
    def monitored(name, action):
        with open(f"{OUT}/dbus-{name}.log", "w") as f:
            mon = subprocess.Popen(["dbus-monitor", "--system",
                                    f"type='signal',sender='org.bluez',path='{dev_path(BM2)}'"], stdout=f)
            try:
                action()
            finally:
                mon.terminate()
                mon.wait(10)
    monitored("bluetoothctl-scan", lambda: bluetoothctl_scan(8))
    for mac in (BM6, BM2, BM7, PHANTOM):
        r = subprocess.run(["bluetoothctl", "info", mac], capture_output=True, text=True, timeout=30)
        log(f"bluetoothctl info {mac}:\n{r.stdout}")

    def passive_run():
        gw = Gateway("bluez_info", config("bluez_info", [(BM2, "BM2", "passive", 5)]))
        sub = Subscriber()
        try:
            wait_for(lambda: len(sub.find(reading_of(BM2))) >= 2, 60, "two passive readings")
        finally:
            gw.stop()
            sub.close()
    monitored("gateway-passive", passive_run)
    return "see scenarios.log, dbus-bluetoothctl-scan.log, dbus-gateway-passive.log"


# --- the monitor's own log (SPEC §5.7, HISTORY-NOTES §5.7.6) ------------------------------------------------
HISTORY_DIR = "/run/sc/history"


def history_of(sub, mac):
    """Every history message of `mac` so far, and their records in order."""
    msgs = [p for t, p, _ in sub.find(lambda t, p: t == f"{PREFIX}/device/{mac}/history" and isinstance(p, dict))]
    return msgs, [r for m in msgs for r in m.get("records", [])]


def unix(ts):
    """Seconds since 1970 of an RFC 3339 UTC timestamp (`2026-11-30T01:02:03.456Z`)."""
    from datetime import datetime
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def check_history(msgs, records, log_now):
    """The published records are consecutive slots of the monitor's log `log_now` ([[logged_at, V, SoC,
    °C, flags]] newest first): every value equal, each timestamp within ±2 min of when the record was
    logged, at most a day per message, messages oldest first. Returns the slots (logged_at) in order."""
    problems = []
    for m in msgs:
        span = unix(m["to"]) - unix(m["from"])
        if span >= 86400:
            problems.append(f"a message spans {span / 3600:.1f} h (at most a day)")
    starts = [unix(m["from"]) for m in msgs]
    if starts != sorted(starts):
        problems.append("messages not oldest first")
    by_slot = {int(e[0]) // 120: e for e in log_now}
    stamped = [int(unix(r["timestamp"])) // 120 for r in records]
    if any(b != a + 1 for a, b in zip(stamped, stamped[1:])):
        problems.append("records are not consecutive 2-minute slots (a duplicate or a gap)")
    same = lambda r, e: e is not None and (r.get("voltage"), r.get("state_of_charge"), r.get("temperature")) \
        == (e[1], e[2], e[3])  # noqa: E731
    # Own slot first: a read of one or two records may look the same one slot off (equal neighbours).
    offset = next((d for d in (0, 1, -1) if all(same(r, by_slot.get(s + d)) for r, s in zip(records, stamped))),
                  None)
    if offset is None:
        bad = next((r, by_slot.get(s)) for r, s in zip(records, stamped) if not same(r, by_slot.get(s)))
        raise Fail("; ".join(problems + [f"published record {bad[0]} is not the monitor's {bad[1]}"]))
    slots = [s + offset for s in stamped]
    worst = max((abs(unix(r["timestamp"]) - by_slot[s][0]) for r, s in zip(records, slots)), default=0)
    if worst > 120:
        problems.append(f"a timestamp is {worst:.0f} s off the time the record was logged (±120 s)")
    if problems:
        raise Fail("; ".join(problems))
    return slots, worst


def gateway_read_ms(name):
    """The last 'N history record(s) read in M ms' of the gateway's log, as (N, M)."""
    import re
    found = re.findall(rb"(\d+) history record\(s\) read in (\d+) ms", open(f"{OUT}/{name}.gateway.log", "rb").read())
    return tuple(map(int, found[-1])) if found else (None, None)


def history_sync(name, days=None, state=HISTORY_DIR, want=None):
    """Run the gateway on the polled BM6 until its download is published and the link released; returns
    (messages, records, link seconds, (records read, read ms))."""
    if days is not None:
        CTL.set("bm6", history_days=days)
    sub = Subscriber()
    cfg = config(os.path.basename(state), [(BM6, "BM6", "poll", 300)])
    gw = Gateway(name, cfg)
    try:
        wait_for(lambda: sub.find(reading_of(BM6)), 90, "the BM6's reading")
        if want:
            wait_for(lambda: len(history_of(sub, BM6)[1]) >= want, 60, f"{want} history records published")
        else:
            wait_for(lambda: history_of(sub, BM6)[0], 60, "a history message")
        assert_released(BM6, "bm6")
        msgs, records = history_of(sub, BM6)
        link = CTL.send(op="state")["bm6"]["last_link_s"]
        return msgs, records, link, gateway_read_ms(name)
    finally:
        gw.stop()
        sub.close()


def forbidden_writes():
    n = CTL.send(op="state")["bm6"]["forbidden"]
    if n:
        raise Fail(f"the gateway wrote {n} command(s) other than the reading and history requests")


def history_first():
    """A polled BM6 with a 3-day log: every record published once, oldest first, ±2 min; link released."""
    subprocess.run(["rm", "-rf", HISTORY_DIR])
    msgs, records, link, (read, ms) = history_sync("history_first", days=3, want=2160)
    slots, worst = check_history(msgs, records, CTL.history("bm6"))
    if not 2160 <= len(records) <= 2161:
        raise Fail(f"{len(records)} records published for a 3-day log (2160 or 2161)")
    forbidden_writes()
    # Connect (~1-2 s here), reading, 2160 records at ~1500/s, disconnect: ~5 s; 3x slack for a busy host.
    if link is None or link > 15:
        raise Fail(f"the link was held {link} s (expected about 5 s)")
    with open(f"{HISTORY_DIR}/first.json", "w") as f:
        json.dump({"last_slot": slots[-1], "newest": unix(records[-1]["timestamp"])}, f)
    return (f"{len(records)} records in {len(msgs)} messages, worst timestamp {worst:.0f} s off; read {read} "
            f"records in {ms} ms; link held {link} s in all, then released")


def history_again():
    """The same BM6 synced again later (after history_first, registry kept): only records logged since."""
    if not os.path.exists(f"{HISTORY_DIR}/first.json"):
        history_first()
    first = json.load(open(f"{HISTORY_DIR}/first.json"))
    # A record is logged every 2 minutes: make sure at least one was logged since the first download.
    while time.time() < first["newest"] + 125:
        time.sleep(1)
    msgs, records, link, (read, ms) = history_sync("history_again")
    slots, worst = check_history(msgs, records, CTL.history("bm6"))
    if slots[0] != first["last_slot"] + 1:
        raise Fail(f"the second download starts at slot {slots[0]}, the first ended at {first['last_slot']} "
                   "(a record twice, or one missing)")
    forbidden_writes()
    return (f"{len(records)} new record(s), continuing the first download exactly; read {read} records in "
            f"{ms} ms; link held {link} s")


def history_stream():
    """A streamed BM6: its log is downloaded on the open link after the first reading; the link streams on."""
    sub = Subscriber()
    links = CTL.send(op="state")["bm6"]["links"]
    gw = Gateway("history_stream", config("history_stream", [(BM6, "BM6", "stream", 2)]))
    stopped = False
    try:
        wait_for(lambda: len(history_of(sub, BM6)[1]) >= 2160, 90, "the streamed BM6's log (>= 2160 records)")
        mark = len(sub.msgs)
        wait_for(lambda: len(sub.find(reading_of(BM6), mark)) >= 2, 30, "two streamed readings after the download")
        msgs, records = history_of(sub, BM6)
        log_now = CTL.history("bm6")
        slots, worst = check_history(msgs, records, log_now)
        if slots[-1] < int(log_now[0][0]) // 120 - 1:
            raise Fail("the newest records of the log were not published")
        state = CTL.send(op="state")["bm6"]
        if state["links"] != links + 1 or state["connections"] != 1:
            raise Fail(f"want one link held throughout, monitor state {state}")
        forbidden_writes()
        read, ms = gateway_read_ms("history_stream")
        stopped = True
        expect("gateway exit status after SIGTERM", gw.stop(), 0)
        assert_released(BM6, "bm6")
        return (f"{len(records)} records on the open link (read in {ms} ms), worst timestamp {worst:.0f} s off; "
                "readings streamed on; one link; released at stop")
    finally:
        if not stopped:
            gw.stop()
        sub.close()


def history_week():
    """Measurement, not a check: a 7-day first sync (5040 records): link time and records per second."""
    msgs, records, link, (read, ms) = history_sync("history_week", days=7, state="/run/sc/history_week",
                                                   want=5040)
    CTL.set("bm6", history_days=3)
    rate = read / (ms / 1000) if read and ms else None
    return (f"{len(records)} records published; read {read} in {ms} ms ({rate:.0f} records/s); link held "
            f"{link} s in all (connect, reading, history, disconnect)")


SCENARIOS = [scan_json, read_bm6, history_first, read_bm7, read_after_forget, poll_after_forget, passive_newest,
             stream_bm2, history_stream, error_1003, error_1004, error_1001, busy_phone, no_phantom_adoption, bluetoothd_sigkill,
             history_again]
BY_NAME = {f.__name__: f for f in SCENARIOS}
EXTRA = {"bluez_info": bluez_info, "history_week": history_week}  # run only when named


def release_all():
    """Between scenarios: bluetoothd runs, and no link survives into the next scenario (a monitor takes one
    central at a time)."""
    if not bluetoothd_alive():
        restart_bluetoothd()
    held = [mac for mac in (BM6, BM2, BM7, PHANTOM) if connected(mac)]
    for mac in held:
        subprocess.run(["bluetoothctl", "disconnect", mac], capture_output=True, timeout=60)
    try:
        wait_for(lambda: not any(s["connections"] for k, s in CTL.send(op="state").items()), 30,
                 "every monitor free of centrals")
    except Fail as e:
        return f"{e}"
    return f"links still up and disconnected by the harness: {held}" if held else ""


def wait_broker():
    def up():
        try:
            socket.create_connection(("127.0.0.1", 1883), 1).close()
            return True
        except OSError:
            return False
    wait_for(up, 60, "mosquitto on 127.0.0.1:1883")


def run(names):
    CTL.open(os.environ["RB_CTL"])
    wait_broker()
    for name in names or list(BY_NAME):
        scenario = BY_NAME.get(name) or EXTRA[name]
        log(f"--- {name}: {scenario.__doc__.splitlines()[0]}")
        start = time.monotonic()
        try:
            CTL.send(op="reset")
            why, ok = scenario(), True
        except Fail as e:
            why, ok = str(e), False
        except Exception as e:  # noqa: BLE001 - a broken scenario is a failure, the others still run
            why, ok = f"{type(e).__name__}: {e}", False
        left = release_all()
        if left:
            why += f" [after it: {left}]"
        why = f"{why} ({time.monotonic() - start:.0f} s)"
        log(f"{'PASS' if ok else 'FAIL'} {name}: {why}")
        with open(f"{OUT}/results.jsonl", "a") as f:
            f.write(json.dumps({"name": name, "ok": ok, "why": why}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def report(out, names):
    results = {}
    try:
        for line in open(os.path.join(out, "results.jsonl")):
            r = json.loads(line)
            results[r["name"]] = r
    except FileNotFoundError:
        pass
    setup = os.path.join(out, "setup-failed")
    because = open(setup).read().strip() if os.path.exists(setup) else "VM crashed or timed out"
    passed = failed = 0
    for name in names or list(BY_NAME):
        r = results.get(name, {"ok": False, "why": f"no result ({because}; see {out}/console.log)"})
        print(f"{'PASS' if r['ok'] else 'FAIL'} {name}: {r['why']}")
        passed, failed = passed + r["ok"], failed + (not r["ok"])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--list"]:
        print("\n".join([*BY_NAME, *EXTRA]))
    elif sys.argv[1:2] == ["--report"]:
        sys.exit(report(sys.argv[2], sys.argv[3:]))
    else:
        run(sys.argv[1:])
