"""Helpers of the real-BlueZ scenarios (run in the VM): the control port to the emulated monitors, BlueZ
through dbus-send and bluetoothctl, an MQTT subscriber, the gateway's configuration and processes.

Nothing here asserts a scenario's outcome except through `Fail` raised by `wait_for`/`expect`.
"""
import json
import os
import signal
import subprocess
import threading
import time

OUT = "/mnt/out"
GW = os.environ.get("RB_GATEWAY", "")
PREFIX = "battery_hawk"
BM6, BM2, BM7 = "C4:3B:26:B5:30:A6", "C5:54:7B:22:2F:20", "C7:00:00:00:07:07"
PHANTOM, ABSENT = "C9:00:00:00:09:09", "C8:11:22:33:44:55"
T0 = time.monotonic()


class Fail(Exception):
    """A scenario's assertion failed; the message says what was expected and what happened."""


def log(msg):
    print(f"[scenario +{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def wait_for(pred, timeout, what):
    """Poll `pred` (cheap, event-driven state) every 0.2 s until it is truthy; Fail after `timeout` s."""
    end = time.monotonic() + timeout
    while True:
        r = pred()
        if r:
            return r
        if time.monotonic() > end:
            raise Fail(f"no {what} within {timeout} s")
        time.sleep(0.2)


# --- the emulated world (host) ---------------------------------------------------------------------------
class Control:
    """JSON lines to monitors.py through the virtio-serial port `ctl`; `open` it once per boot."""

    def open(self, path):
        self.fd = os.open(path, os.O_RDWR)
        self.buf = b""

    def request(self, **req):
        """The whole reply to `req`."""
        os.write(self.fd, (json.dumps(req) + "\n").encode())
        while b"\n" not in self.buf:
            self.buf += os.read(self.fd, 65536)
        line, self.buf = self.buf.split(b"\n", 1)
        reply = json.loads(line)
        if not reply.get("ok"):
            raise Fail(f"monitor control {req}: {reply.get('error')}")
        return reply

    def send(self, **req):
        """The monitors' state after `req`."""
        return self.request(**req)["state"]

    def history(self, monitor):
        """`monitor`'s log now: [[logged_at Unix s, voltage, soc, temp, flags], ...], newest first."""
        return self.request(op="history", monitor=monitor)["history"]

    def set(self, monitor, **kv):
        return self.send(op="set", monitor=monitor, **kv)


CTL = Control()


# --- BlueZ through D-Bus (dbus-send) and bluetoothctl ------------------------------------------------------
def dev_path(mac):
    return "/org/bluez/hci0/dev_" + mac.replace(":", "_")


def bluez_prop(mac, prop):
    """A Device1 property as dbus-send prints it, or None when BlueZ has no such device."""
    r = subprocess.run(["dbus-send", "--system", "--print-reply", "--dest=org.bluez", dev_path(mac),
                        "org.freedesktop.DBus.Properties.Get", "string:org.bluez.Device1", f"string:{prop}"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        return None
    return r.stdout.split("variant", 1)[-1].strip()


def bluez_knows(mac):
    return bluez_prop(mac, "Address") is not None


def connected(mac):
    return bluez_prop(mac, "Connected") == "boolean true"


def bluetoothctl_scan(seconds):
    """`bluetoothctl scan on` for a while: BlueZ caches what it hears (without DuplicateData, merged)."""
    subprocess.run(["bluetoothctl", "--timeout", str(seconds), "scan", "on"], capture_output=True,
                   timeout=seconds + 60)


def bluez_forget(mac):
    subprocess.run(["bluetoothctl", "remove", mac], capture_output=True, timeout=30)


def assert_released(mac, monitor):
    """The link is down: BlueZ says Connected=false and the monitor has no central."""
    wait_for(lambda: not connected(mac), 10, f"Connected=false on {mac} after the command")
    wait_for(lambda: CTL.send(op="state")[monitor]["connections"] == 0, 10,
             f"{monitor} free of centrals (the monitor still sees a link)")


# --- MQTT -------------------------------------------------------------------------------------------------
class Subscriber:
    """mosquitto_sub on P/#: every message (topic, parsed payload, arrival) in order, read by a thread."""

    def __init__(self):
        self.msgs = []
        self.p = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", "1883", "-v", "-t", f"{PREFIX}/#"],
                                  stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            topic, _, payload = line.rstrip("\n").partition(" ")
            try:
                payload = json.loads(payload)
            except ValueError:
                pass
            self.msgs.append((topic, payload, time.monotonic()))

    def find(self, pred, start=0):
        return [(t, p, at) for (t, p, at) in self.msgs[start:] if pred(t, p)]

    def close(self):
        self.p.terminate()
        self.p.wait(10)


def reading_of(mac, volts=None):
    def pred(t, p):
        return t == f"{PREFIX}/device/{mac}/reading" and isinstance(p, dict) and (
            volts is None or p.get("voltage") == volts)
    return pred


def status_of(mac, code):
    def pred(t, p):
        return t == f"{PREFIX}/device/{mac}/status" and isinstance(p, dict) and p.get("error_code") == code
    return pred


def last_status(sub, mac):
    """error_code and error_message of the newest device status of `mac`, for failure messages."""
    found = sub.find(lambda t, p: t == f"{PREFIX}/device/{mac}/status" and isinstance(p, dict))
    return (found[-1][1].get("error_code"), found[-1][1].get("error_message")) if found else None


def system_bluetooth(state):
    def pred(t, p):
        return t == f"{PREFIX}/system/status" and isinstance(p, dict) and \
            p.get("components", {}).get("bluetooth") == state
    return pred


# --- the gateway ------------------------------------------------------------------------------------------
def config(name, devices=(), auto_configure=False, initial_scan=True, default_mode="poll", poll_interval=300):
    d = f"/run/sc/{name}"
    os.makedirs(d + "/state", exist_ok=True)
    lines = [
        "[gateway]", 'id = "realbluez"', f'state_dir = "{d}/state"',
        "[logging]", 'level = "debug"', 'target = "stderr"',
        "[mqtt]", 'broker = "127.0.0.1"', "port = 1883", "status_interval = 10",
        "[bluetooth]", "connection_timeout = 10", "data_wait_timeout = 5",
        "[discovery]", f"initial_scan = {str(initial_scan).lower()}", "periodic_interval = 43200",
        "scan_duration = 5", f"auto_configure = {str(auto_configure).lower()}",
        "[defaults]", f"poll_interval = {poll_interval}", f'mode = "{default_mode}"',
        "[homeassistant]", "enabled = false",
    ]
    for mac, model, mode, interval in devices:
        lines += ["[[device]]", f'mac = "{mac}"', f'type = "{model}"', f'mode = "{mode}"',
                  f"poll_interval = {interval}"]
    path = f"{d}/config.toml"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class Gateway:
    def __init__(self, name, cfg):
        self.log = open(f"{OUT}/{name}.gateway.log", "ab")
        self.p = subprocess.Popen([GW, "run", "--config", cfg], stdout=self.log, stderr=self.log)

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                raise Fail("the gateway did not stop within 60 s of SIGTERM")
        return self.p.returncode


def cli(name, *args, timeout=180):
    """Run a one-shot command of the gateway; (exit status, stdout, stderr), both kept in the log."""
    r = subprocess.run([GW, *args], capture_output=True, text=True, timeout=timeout)
    with open(f"{OUT}/{name}.gateway.log", "a") as f:
        f.write(f"$ battery-hawk {' '.join(args)}\n-> {r.returncode}\n{r.stdout}{r.stderr}\n")
    return r.returncode, r.stdout, r.stderr


def read_json(name, mac, *extra):
    cfg = config(name)
    rc, out, err = cli(name, "read", mac, "--json", "--config", cfg, *extra)
    if rc != 0:
        raise Fail(f"read {mac} exited {rc}: {err.strip()[-300:]}")
    try:
        return json.loads(out)
    except ValueError:
        raise Fail(f"read {mac} --json printed no JSON: {out[:200]!r}")


def expect(what, got, want):
    if got != want:
        raise Fail(f"{what}: got {got!r}, want {want!r}")


def restart_bluetoothd():
    log_f = open(f"{OUT}/bluetoothd.log", "ab")
    args = ["/usr/libexec/bluetooth/bluetoothd", "-n"] + os.environ.get("RB_BTD_ARGS", "").split()
    p = subprocess.Popen(args, stdout=log_f, stderr=log_f)
    with open("/run/bluetoothd.pid", "w") as f:
        f.write(str(p.pid))
    wait_for(lambda: b"Controller" in subprocess.run(["bluetoothctl", "list"], capture_output=True,
                                                     timeout=30).stdout, 60, "the restarted bluetoothd's adapter")


def bluetoothd_alive():
    try:
        os.kill(int(open("/run/bluetoothd.pid").read()), 0)
        return True
    except (OSError, ValueError):
        return False
