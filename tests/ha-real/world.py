#!/usr/bin/env python3
"""The world check.py runs in: the scenario (gateway, monitors, vehicles), the processes (mosquitto with
a capturing mosquitto_sub, the gateway, Home Assistant in its chroot) and readers of Home Assistant's records
(`.storage`, the recorder's database, its log). No checks here."""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
from datetime import datetime, timezone

GATEWAY_ID = "ha-check"
PREFIX = "battery_hawk"
# mac, model, mode, name ("" = left to the gateway's default), vehicle
DEVICES = [
    ("AA:BB:CC:00:00:11", "BM6", "poll", "Starter", "van"),
    ("AA:BB:CC:00:00:12", "BM7", "poll", "Service", "van"),
    ("AA:BB:CC:00:00:13", "BM2", "stream", "House", "van"),
    ("AA:BB:CC:00:00:14", "BM6", "passive", "", "boat"),
    ("AA:BB:CC:00:00:15", "BM2", "passive", "Outboard", "boat"),
    ("AA:BB:CC:00:00:16", "BM6", "poll", "Spare", None),
]
REMOVED = "AA:BB:CC:00:00:16"
VEHICLES = [("van", "Van"), ("boat", "Boat")]
INTERVAL_S = 10  # poll_interval, and simulation.interval_ms / 1000 (how often the simulated monitors advertise)

# The cluster scenario (SPEC §6): three gateways on one simulated site, each hearing every monitor at its
# own RSSI (dBm, in the order of CLUSTER_DEVICES). g1 serves the first monitor (g2 next best), g2 the
# second, g3 the third; the vehicle's summary goes with its lowest-MAC device.
CLUSTER = {"g1": (-50, -80, -80), "g2": (-65, -50, -80), "g3": (-80, -65, -50)}
# mac, model, name, vehicle
CLUSTER_DEVICES = [
    ("AA:BB:CC:00:02:01", "BM6", "Cart front", "cart"),
    ("AA:BB:CC:00:02:02", "BM7", "Cart rear", "cart"),
    ("AA:BB:CC:00:02:03", "BM2", "Shed", None),
]
CLUSTER_VEHICLES = [("cart", "Cart")]
CLUSTER_POLL_S = 5       # poll_interval of the cluster's monitors
CLUSTER_KEEPALIVE_S = 5  # mqtt.keepalive: the broker publishes a killed gateway's last will within 1.5 × this
# cluster.report_interval: a gateway lists a monitor heard in the last 3 of these, so one paused for
# 1.5 × keepalive still hears its monitors when it resumes.
CLUSTER_REPORT_S = 5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(timeout, what, poll=0.5):
    """Call `what` until it returns a truthy value or `timeout` seconds pass; the last value."""
    deadline = time.time() + timeout
    while True:
        value = what()
        if value or time.time() > deadline:
            return value
        time.sleep(poll)


# --- processes ------------------------------------------------------------------------------------------


class Proc:
    def __init__(self, name, argv, log, env=None):
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.p = None

    def start(self):
        out = open(self.log, "ab")
        self.p = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                  start_new_session=True)
        out.close()
        return self

    def send(self, sig):
        if self.p and self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if not self.p:
            return None
        self.send(sig)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait()

    def alive(self):
        return self.p is not None and self.p.poll() is None


class World:
    def __init__(self, args, work):
        self.args, self.work = args, work
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.cfg = os.path.join(work, "ha")
        self.state = os.path.join(work, "gw-state")
        self.capture = os.path.join(work, "mqtt.jsonl")
        self.ha_runs = 0
        self.ha = self.gw = self.broker = self.sub = None
        self.members = {}  # gateway id → Proc, the cluster scenario's gateways
        os.makedirs(os.path.join(self.cfg, ".storage"))
        os.makedirs(os.path.join(work, "mosquitto"))

    # mosquitto
    def start_broker(self):
        conf = os.path.join(self.work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"user root\nlistener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {self.work}/mosquitto/\nautosave_interval 1\n")
        self.broker = Proc("mosquitto", ["/usr/sbin/mosquitto", "-c", conf],
                           os.path.join(self.work, "mosquitto.log")).start()
        ok = wait_until(10, self.broker_up, 0.1)
        if ok:
            self.sub = Proc("mosquitto_sub", ["mosquitto_sub", "-h", "127.0.0.1", "-p",
                                              str(self.mqtt_port), "-t", f"{PREFIX}/#",
                                              "-t", "homeassistant/#", "-q", "1", "-F", "%j"],
                            self.capture).start()
        return ok

    def broker_up(self):
        try:
            with socket.create_connection(("127.0.0.1", self.mqtt_port), 0.5):
                return True
        except OSError:
            return False

    def stop_broker(self):
        if self.sub:
            self.sub.stop()
        if self.broker:
            self.broker.stop()

    # the gateway
    def gateway_config(self, failure_rate=0.0, without=()):
        text = (f'[gateway]\nid = "{GATEWAY_ID}"\nstate_dir = "{self.state}"\n'
                f'[logging]\nlevel = "info"\ntarget = "stderr"\n'
                f'[mqtt]\nbroker = "127.0.0.1"\nport = {self.mqtt_port}\n'
                # One slot for the stream device, one for polling; short timeouts so a silent monitor
                # is reported within an interval.
                f'[bluetooth]\nbackend = "simulated"\nmax_concurrent_connections = 2\nconnection_timeout = 2\n'
                f'[simulation]\ninterval_ms = {INTERVAL_S * 1000}\nfailure_rate = {failure_rate}\n')
        for vid, name in VEHICLES:
            text += f'[[vehicle]]\nid = "{vid}"\nname = "{name}"\n'
        for mac, model, mode, name, vehicle in DEVICES:
            if mac in without:
                continue
            text += (f'[[device]]\nmac = "{mac}"\ntype = "{model}"\nmode = "{mode}"\nname = "{name}"\n'
                     f'poll_interval = {INTERVAL_S}\n')
            if vehicle:
                text += f'vehicle = "{vehicle}"\n'
        path = os.path.join(self.work, "gateway.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_gateway(self):
        path = os.path.join(self.work, "gateway.toml")
        if not os.path.exists(path):
            self.gateway_config()
        self.gw = Proc("gateway", [self.args.gateway, "run", "--config", path],
                       os.path.join(self.work, "gateway.log")).start()

    def reload_gateway(self, **kw):
        self.gateway_config(**kw)
        self.gw.send(signal.SIGHUP)

    # the cluster scenario's gateways
    def cluster_config(self, gid):
        state = os.path.join(self.work, f"gw-state-{gid}")
        text = (f'[gateway]\nid = "{gid}"\nstate_dir = "{state}"\n'
                f'[logging]\nlevel = "info"\ntarget = "stderr"\n'
                f'[mqtt]\nbroker = "127.0.0.1"\nport = {self.mqtt_port}\nkeepalive = {CLUSTER_KEEPALIVE_S}\n'
                f'[bluetooth]\nbackend = "simulated"\nmax_concurrent_connections = 2\nconnection_timeout = 2\n'
                f'[discovery]\ninitial_scan = false\n'
                f'[cluster]\nenabled = true\nreport_interval = {CLUSTER_REPORT_S}\n'
                f'[simulation]\ninterval_ms = 1000\nsite_dir = "{os.path.join(self.work, "site")}"\n')
        for (mac, _, _, _), rssi in zip(CLUSTER_DEVICES, CLUSTER[gid]):
            text += f'[[simulation.monitor]]\nmac = "{mac}"\nrssi = {rssi}\n'
        for vid, name in CLUSTER_VEHICLES:
            text += f'[[vehicle]]\nid = "{vid}"\nname = "{name}"\n'
        for mac, model, name, vehicle in CLUSTER_DEVICES:
            text += (f'[[device]]\nmac = "{mac}"\ntype = "{model}"\nmode = "poll"\nname = "{name}"\n'
                     f'poll_interval = {CLUSTER_POLL_S}\n')
            if vehicle:
                text += f'vehicle = "{vehicle}"\n'
        path = os.path.join(self.work, f"cluster-{gid}.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_cluster(self):
        os.makedirs(os.path.join(self.work, "site"), exist_ok=True)
        for gid in CLUSTER:
            self.members[gid] = Proc(gid, [self.args.gateway, "run", "--config", self.cluster_config(gid)],
                                     os.path.join(self.work, f"cluster-{gid}.log")).start()

    def owner_events(self, since=0):
        """[(mac, gateway id or None when cleared)] from the `since`-th message captured on."""
        out = []
        for m in self.published()[since:]:
            topic = m.get("topic", "")
            if not (topic.startswith(f"{PREFIX}/device/") and topic.endswith("/owner")):
                continue
            mac = topic[len(PREFIX) + len("/device/"):-len("/owner")]
            try:
                out.append((mac, json.loads(m.get("payload") or "")["gateway_id"]))
            except (ValueError, TypeError, KeyError):
                out.append((mac, None))
        return out

    def owners(self):
        """The retained `P/device/{mac}/owner` announcements as last published: mac → gateway id."""
        out = {}
        for mac, gid in self.owner_events():
            out[mac] = gid
        return {mac: gid for mac, gid in out.items() if gid}

    def owners_of(self, want):
        """The current owners of the monitors in `want`."""
        owners = self.owners()
        return {mac: owners.get(mac) for mac in want}

    # Home Assistant
    def in_root(self, *argv):
        return ["chroot", self.args.root, "env", "-i", "HOME=/root",
                f"PATH={self.args.venv}/bin:/usr/bin:/bin", "LANG=C.UTF-8", "TZ=UTC",
                "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt", *argv]

    def write_ha_config(self):
        now = datetime.now(timezone.utc).isoformat()
        with open(os.path.join(self.cfg, "configuration.yaml"), "w") as f:
            f.write("homeassistant:\n  name: Battery Hawk check\n  latitude: 52.5\n  longitude: 13.4\n"
                    "  elevation: 30\n  unit_system: metric\n  time_zone: UTC\n  country: DE\n"
                    "  currency: EUR\n  language: en\n"
                    "recorder:\n  commit_interval: 1\n"
                    "logger:\n  default: info\n  logs:\n"
                    "    homeassistant.components.mqtt.client: debug\n")
        entry = {
            "created_at": now, "modified_at": now, "data": {"broker": "127.0.0.1", "port": self.mqtt_port},
            "disabled_by": None, "discovery_keys": {}, "domain": "mqtt", "entry_id": "01BATTERYHAWKCHECKMQTT0000",
            "minor_version": 1, "version": 2,
            "options": {"discovery": True, "discovery_prefix": "homeassistant"},
            "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
            "subentries": [], "title": "127.0.0.1", "unique_id": None,
        }
        self.write_storage("core.config_entries", 1, 5, {"entries": [entry]})
        # A confirmed (stable) loopback setting: a YAML `http:` block would become a pending trial that
        # Home Assistant reverts — by restarting — after 5 minutes.
        stable = json.loads(subprocess.check_output(self.in_root(
            "python3", "-c",
            "import json,sys\n"
            "from homeassistant.components.http.config import HTTP_STORAGE_SCHEMA\n"
            "c = HTTP_STORAGE_SCHEMA({'server_host': ['127.0.0.1'], 'server_port': int(sys.argv[1])})\n"
            "print(json.dumps(c, default=str))\n", str(self.http_port))))
        stable.update(created_at=now, error=None, error_message=None)
        self.write_storage("http", 3, 1, {"stable": stable, "pending": None, "yaml_migration_done": True})

    def write_storage(self, key, version, minor, data):
        with open(os.path.join(self.cfg, ".storage", key), "w") as f:
            json.dump({"version": version, "minor_version": minor, "key": key, "data": data}, f, indent=2)

    def ha_log(self, run=None):
        return os.path.join(self.cfg, f"home-assistant-{run or self.ha_runs}.log")

    def start_ha(self):
        """Start Home Assistant; the time its log says it is initialized (None if it did not start)."""
        self.ha_runs += 1
        root = self.args.root
        os.makedirs(os.path.join(root, "config"), exist_ok=True)
        # A private mount namespace: /proc, /dev and the config vanish with the process.
        script = (f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
                  f"mount --bind {self.cfg} {root}/config && exec \"$@\"")
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                *self.in_root(f"{self.args.venv}/bin/hass", "-c", "/config",
                              "--log-file", f"/config/home-assistant-{self.ha_runs}.log")]
        self.ha = Proc("hass", argv, os.path.join(self.work, f"hass-stdout-{self.ha_runs}.log")).start()
        log = self.ha_log()
        line = wait_until(300, lambda: self.ha.alive() and grep_first(log, "Home Assistant initialized in"), 0.5)
        return log_time(line) if line else None

    def stop_ha(self):
        return self.ha.stop(signal.SIGTERM, 120) if self.ha else None

    def stop_all(self):
        for p in (self.gw, *self.members.values(), self.ha):
            if p:
                p.stop()
        self.stop_broker()

    # Home Assistant's records
    def storage(self, key):
        try:
            with open(os.path.join(self.cfg, ".storage", key)) as f:
                return json.load(f)["data"]
        except (OSError, ValueError, KeyError):
            return None

    def db_rows(self, since=0.0):
        """[(entity_id, state, last_updated_ts)] recorded since `since`, in order."""
        path = os.path.join(self.cfg, "home-assistant_v2.db")
        if not os.path.exists(path):
            return []
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                return con.execute(
                    "SELECT m.entity_id, s.state, s.last_updated_ts FROM states s "
                    "JOIN states_meta m ON s.metadata_id = m.metadata_id "
                    "WHERE s.last_updated_ts >= ? ORDER BY s.state_id", (since,)).fetchall()
            finally:
                con.close()
        except sqlite3.Error:
            return []

    def latest(self, since=0.0):
        return {e: s for e, s, _ in self.db_rows(since)}

    def published(self):
        out = []
        try:
            with open(self.capture, errors="replace") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        return out


def grep_first(path, needle):
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if needle in line:
                    return line
    except OSError:
        pass
    return None


def grep_all(path, needle):
    try:
        with open(path, errors="replace") as f:
            return [line for line in f if needle in line]
    except OSError:
        return []


# `2026-11-29 22:50:47.125+00:00 DEBUG (MainThread) [logger] message` (time zone UTC, configured below)
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)([+-]\d\d:\d\d)? (\w+) ")


def log_time(line):
    m = LOG_LINE.match(line)
    if not m:
        raise ValueError(f"not a Home Assistant log line: {line!r}")
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
