"""The Python reference gateway of bench/cpu_per_reading.sh: the work a minimal Python gateway does per
reading, at a fixed offered load. Per reading: AES-128 decryption of a BM6 encrypted advertisement
(`cryptography`), the decode and its checks (SPEC §5.4: the device's own address, voltage, SoC), the reading
and the retained device status carrying it rendered with `json` (SPEC §2.1, §2.2), both published with
paho-mqtt at QoS 1 (2 messages per reading; the gateway also sends vehicle summaries where it has vehicles).

Input: MONITORS simulated BM6 monitors, RATE readings/s in all, paced on a 10 ms grid like the gateway's
simulated air. Their frames are encrypted once at start-up (a pool per monitor), so the simulated air costs
this process nothing, while the gateway's own simulated air runs inside the gateway: the comparison favours
Python. Runs until killed. Usage: python_gateway.py PORT MONITORS RATE"""
import datetime
import json
import sys
import time

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY = bytes.fromhex("6c656167656e64fffe30313030303039")  # BM6 (SPEC §5)
IV = bytes(16)
TICK = 0.01
POOL = 8

port, monitors, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])


def mac_bytes(i):
    return bytes([0xAA, 0, 0, 0, i // 256, i % 256])


def encrypt(plain):
    e = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
    return e.update(plain) + e.finalize()


# The simulated monitors' broadcasts: company id (little-endian) + 14 bytes, as BlueZ reports them.
pool = []
for i in range(monitors):
    frames = []
    for k in range(POOL):
        volts = 1230 + (i * 7 + k * 3) % 60
        plain = mac_bytes(i) + volts.to_bytes(2, "big") + bytes([min(100, (volts - 1180))]) + bytes(7)
        f = encrypt(plain)
        frames.append((int.from_bytes(f[0:2], "little"), f[2:]))
    pool.append(frames)


def stamp(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def handle(i, company_id, value, rssi):
    """One advertisement: decrypt, check, decode, render, publish."""
    received = datetime.datetime.now(datetime.timezone.utc)
    frame = company_id.to_bytes(2, "little") + value
    d = Cipher(algorithms.AES(KEY), modes.CBC(IV)).decryptor()
    plain = d.update(frame) + d.finalize()
    mac = ":".join(f"{b:02X}" for b in plain[0:6])
    if plain[0:6] != mac_bytes(i):
        return
    voltage = round(int.from_bytes(plain[6:8], "big") / 100, 2)
    soc = float(plain[8])
    if not (0 < voltage < 30 and soc <= 100):
        return
    ts = stamp(received)
    extra = {"state": None, "status_code": None, "rssi": rssi, "source": "advertisement",
             "raw_data": plain.hex()}
    reading = {"device_id": mac, "timestamp": ts, "voltage": voltage, "current": None, "temperature": None,
               "state_of_charge": soc, "capacity": None, "cycles": None, "power": None, "vehicle_id": None,
               "device_type": "BM6", "gateway_id": "pyref", "extra": extra}
    client.publish(f"pyref/device/{mac}/reading", json.dumps(reading, separators=(",", ":")), qos=1)
    latest = {k: reading[k] for k in ("timestamp", "voltage", "current", "temperature", "state_of_charge",
                                      "capacity", "cycles", "power", "device_type")}
    latest["extra"] = {"state": None, "status_code": None, "source": "advertisement"}
    status = {"device_id": mac, "timestamp": ts, "connected": True, "device_type": "BM6", "vehicle_id": None,
              "protocol_version": None, "last_command": None, "error_code": None, "error_message": None,
              "last_reading_at": ts, "extra": {"signal_strength": rssi, "consecutive_failures": 0,
                                               "mode": "passive"},
              "reading": latest}
    client.publish(f"pyref/device/{mac}/status", json.dumps(status, separators=(",", ":")), qos=1, retain=True)


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pyref")
client.max_inflight_messages_set(100)
client.max_queued_messages_set(0)
client.connect("127.0.0.1", port)
client.loop_start()

per_tick = rate * TICK
owed = 0.0
n = 0
next_tick = time.monotonic()
while True:
    owed += per_tick
    while owed >= 1:
        owed -= 1
        i = n % monitors
        company_id, value = pool[i][(n // monitors) % POOL]
        handle(i, company_id, value, -60 - n % 20)
        n += 1
    next_tick += TICK
    time.sleep(max(0.0, next_tick - time.monotonic()))
