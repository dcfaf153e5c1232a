#!/usr/bin/env python3
"""Emulated Leagend monitors on a virtual radio (Google Bumble), run on the host for the VM harness.

The guest kernel's /dev/vhci is relayed (guest relay.py, a virtio-serial port) to the unix socket HCI_SOCK;
here a Bumble software controller C0 serves that HCI, and one more controller per monitor shares a LocalLink
with it. The monitors speak SPEC §5 with the real keys (frames.py):

  bm6      "BM6"             fff0; fff3 request -> echo frame, then an encrypted reading on fff4;
                              history request d1 55 05 [start, end) -> its own log, newest first, in
                              160-byte notifications at the pace AK measured (HISTORY-NOTES §5.7.2);
                              adverts: encrypted frame (company id rotates with each ciphertext) / iBeacon
  bm2      "Battery Monitor" fff0; after subscribing, one F5 frame per second on fff4;
                              adverts: encrypted frame (MAC reversed) / iBeacon / name + fff0
  bm7      "BM300 Pro"       fff0 with the BM7 key; no broadcast readings
  phantom  "Battery Monitor" no fff0, no manufacturer data (a BMS board or a helmet)

Control channel: JSON lines on the unix socket CTL_SOCK (the guest reaches it through a second virtio-serial
port). {"op": "set", "monitor": "bm6", <key>: <value>} with keys voltage, soc, answers (false: connects,
never notifies), advertising (false: silent and not connectable, a monitor powered off), connectable (false:
advertises as a non-connectable advertiser, so connection attempts time out), busy (true: another
central connects to it and holds it), history_days (its log restarts holding that many days; a reset
leaves the log alone, as a power loss is what restarts a real one); {"op": "reset"}; {"op": "state"};
{"op": "history", "monitor": "bm6"} (its log now: [[logged_at Unix s, voltage, soc, temp], ...] newest
first). The monitors log one record every 2 minutes, on the 2-minute grid of Unix time; a BM6 starts with
HISTORY_DAYS of log. Writes other than the reading and history requests (the table 08, the lock 02, ...)
are counted ("forbidden" in the state): the gateway must never send them. Every request gets one JSON line
back.

Usage: monitors.py HCI_SOCK CTL_SOCK READY_FILE
"""
import asyncio
import json
import logging
import os
import sys
import time

import bumble.controller as bc
from bumble.device import AdvertisingType
import bumble.link
from bumble import hci
from bumble.controller import Controller
from bumble.core import AdvertisingData, PhysicalTransport, UUID
from bumble.device import Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink

import frames

# --- Two Bumble gaps, patched at run time (see /work/shared/guide/REAL-BLUEZ.md and README.md) -------------
# 1. LocalLink sends LE ACL data from the sender's *random* address; Linux connects from its public one.
_orig_send_acl_data = bumble.link.LocalLink.send_acl_data


def _send_acl_data(self, sender_controller, destination_address, transport, data):
    if transport == PhysicalTransport.LE:
        conn = sender_controller.le_connections.get(destination_address)
        dest = self.find_le_controller(destination_address)
        if conn is not None and dest is not None:
            src = conn.self_address
            asyncio.get_running_loop().call_soon(lambda: dest.on_link_acl_data(src, transport, data))
            return
    _orig_send_acl_data(self, sender_controller, destination_address, transport, data)


bumble.link.LocalLink.send_acl_data = _send_acl_data

# 2. With LE event-mask bit 9 set (Linux >= 6.1) the controller must send LE Enhanced Connection Complete.
_orig_send_hci_packet = bc.Controller.send_hci_packet
_NO_RPA = hci.Address("00:00:00:00:00:00")


def _send_hci_packet(self, packet):
    if isinstance(packet, hci.HCI_LE_Connection_Complete_Event) and self.le_event_mask & (1 << 9):
        packet = hci.HCI_LE_Enhanced_Connection_Complete_Event(
            status=packet.status, connection_handle=packet.connection_handle, role=packet.role,
            peer_address_type=packet.peer_address_type, peer_address=packet.peer_address,
            local_resolvable_private_address=_NO_RPA, peer_resolvable_private_address=_NO_RPA,
            connection_interval=packet.connection_interval, peripheral_latency=packet.peripheral_latency,
            supervision_timeout=packet.supervision_timeout,
            central_clock_accuracy=packet.central_clock_accuracy)
    _orig_send_hci_packet(self, packet)


bc.Controller.send_hci_packet = _send_hci_packet

T0 = time.monotonic()
ADVERT_INTERVAL_MS = 200      # each advertising PDU
SLOT_S = 0.5                  # how long one of a monitor's alternating adverts stays on the air
NEW_FRAME_S = 1.0             # a new encrypted advert frame (new counter, new ciphertext, new company id)
STREAM_S = 1.0                # BM2 notification period
HISTORY_DAYS = 3              # the BM6's log at start (days)
HISTORY_NOTIFY_S = 0.027      # between two history notifications: 40 records each, ~1500 records/s [hw: AK]
HISTORY_CAPACITY = 51200      # records a BM6 keeps (HISTORY-NOTES §5.7.2)


def log(msg):
    print(f"[monitors +{time.monotonic() - T0:7.2f}s] {msg}", flush=True)


# Defaults every scenario starts from ({"op": "reset"}); the scenarios assert these values.
DEFAULTS = {
    "bm6": dict(model="BM6", name="BM6", address="C4:3B:26:B5:30:A6", voltage=12.70, temp=25, status=1,
                soc=80),
    "bm2": dict(model="BM2", name="Battery Monitor", address="C5:54:7B:22:2F:20", voltage=12.83, status=1,
                soc=93),
    "bm7": dict(model="BM7", name="BM300 Pro", address="C7:00:00:00:07:07", voltage=13.22, temp=15, status=1,
                soc=84),
    "phantom": dict(model=None, name="Battery Monitor", address="C9:00:00:00:09:09"),
}


def ad(*fields):
    data = bytes(AdvertisingData(list(fields)))
    assert len(data) <= 31, (len(data), data.hex())
    return data


FLAGS = (AdvertisingData.FLAGS, bytes([0x06]))
FFF0 = (AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, bytes(UUID("FFF0")))


def mfr(company, value):
    return (AdvertisingData.MANUFACTURER_SPECIFIC_DATA, company.to_bytes(2, "little") + value)


class Monitor:
    def __init__(self, key, link):
        self.key = key
        self.link = link
        d = DEFAULTS[key]
        self.model, self.name, self.address = d["model"], d["name"], d["address"]
        self.advertising_type = None
        self.reset()
        self.counter = 0
        self.slot = 0
        self.controller = Controller(key, link=link, public_address=self.address)
        self.device = Device(name=self.name, address=Address(self.address),
                             host=Host(self.controller, AsyncPipeSink(self.controller)))
        self.connections = set()
        self.streams = {}
        self.forbidden = 0
        self.links = 0
        self.last_link_s = None
        self.history_began = time.time() - HISTORY_DAYS * 86400
        self.history_reads = 0
        self.busy_central = None
        self.busy_conn = None
        self.notify_char = None
        if self.model is not None:
            self.notify_char = Characteristic(
                "FFF4", Characteristic.Properties.NOTIFY | Characteristic.Properties.READ,
                Characteristic.READABLE, bytes(16))
            write_char = Characteristic(
                "FFF3", Characteristic.Properties.WRITE | Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
                Characteristic.WRITEABLE, CharacteristicValue(write=self.on_write))
            self.device.add_service(Service("FFF0", [write_char, self.notify_char]))
        else:
            # Something that is not a monitor: the standard battery service only.
            self.device.add_service(Service("180F", [Characteristic(
                "2A19", Characteristic.Properties.READ, Characteristic.READABLE, bytes([77]))]))
        self.device.on("connection", self.on_connection)
        self.device.on("characteristic_subscription", self.on_subscription)

    def reset(self):
        d = DEFAULTS[self.key]
        self.voltage, self.soc = d.get("voltage"), d.get("soc")
        self.temp, self.status = d.get("temp"), d.get("status")
        self.answers = True
        self.advertising = True
        self.connectable = True
        self.busy = False

    # --- air ---------------------------------------------------------------------------------------------
    def adverts(self):
        """The advertising PDUs this monitor alternates between (legacy adverts: 31 bytes each)."""
        name = (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode())
        if self.model == "BM6":
            tail = bytes([0x00, 0x04, 0x00, 0x00, 0x00, self.counter & 0xFF, 0x08])
            company, value = frames.manufacturer_ad(
                frames.advert_frame("BM6", self.address, self.voltage, self.soc, tail))
            return [ad(FLAGS, name, FFF0, mfr(company, value)),
                    ad(FLAGS, mfr(frames.APPLE, frames.ibeacon("BM6", self.soc)))]
        if self.model == "BM2":
            tail = bytes([0x01, 0x03, 0x00, 0x00, 0x00, self.counter & 0xFF, 0x00])
            company, value = frames.manufacturer_ad(
                frames.advert_frame("BM2", self.address, self.voltage, self.soc, tail))
            return [ad(FLAGS, name, FFF0), ad(FLAGS, mfr(company, value)),
                    ad(FLAGS, mfr(frames.APPLE, frames.ibeacon("BM2", self.soc)))]
        if self.model == "BM7":
            return [ad(FLAGS, name, FFF0)]
        return [ad(FLAGS, name)]

    def current_advert(self):
        pdus = self.adverts()
        return pdus[self.slot % len(pdus)]

    async def start(self):
        await self.device.power_on()
        self.device.advertising_data = self.current_advert()
        await self.sync_advertising()
        asyncio.get_running_loop().create_task(self.rotate())

    async def sync_advertising(self):
        """Advertise exactly while the monitor is on and no central holds it (a real one stops when connected)."""
        want = self.advertising and not self.connections
        kind = (AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE if self.connectable
                else AdvertisingType.UNDIRECTED_SCANNABLE)
        if self.device.is_advertising and (not want or kind != self.advertising_type):
            await self.device.stop_advertising()
        if want and not self.device.is_advertising:
            self.advertising_type = kind
            await self.device.start_advertising(advertising_type=kind, auto_restart=False,
                                                advertising_interval_min=ADVERT_INTERVAL_MS,
                                                advertising_interval_max=ADVERT_INTERVAL_MS)

    async def rotate(self):
        last_frame = time.monotonic()
        while True:
            await asyncio.sleep(SLOT_S)
            if time.monotonic() - last_frame >= NEW_FRAME_S:
                self.counter += 1
                last_frame = time.monotonic()
            self.slot += 1
            self.refresh_advert()

    def refresh_advert(self):
        """Put the current advert on the air now (a new voltage is broadcast from this moment on)."""
        data = self.current_advert()
        self.device.advertising_data = data
        # Straight into the controller: Bumble's Device advertises through an extended advertising set
        # (legacy PDUs) when the controller supports it, else through the legacy advertiser.
        self.controller.le_legacy_advertiser.advertising_data = data
        for adv_set in self.controller.advertising_sets.values():
            adv_set.data = bytearray(data)

    # --- links ---------------------------------------------------------------------------------------------
    def on_connection(self, conn):
        self.connections.add(conn)
        self.links += 1
        began = time.monotonic()
        log(f"{self.key}: connected by {conn.peer_address}")

        def gone(reason):
            self.connections.discard(conn)
            self.last_link_s = round(time.monotonic() - began, 2)
            task = self.streams.pop(conn, None)
            if task:
                task.cancel()
            log(f"{self.key}: disconnected from {conn.peer_address} (reason {reason})")
            asyncio.get_running_loop().create_task(self.sync_advertising())
        conn.on("disconnection", gone)

    def notify(self, frame):
        async def send():
            await self.device.notify_subscribers(self.notify_char, frame)
        asyncio.get_running_loop().create_task(send())

    # --- its own log ---------------------------------------------------------------------------------------
    def history_log(self, now=None):
        """Raw records, newest first: one per 2-minute slot from history_began to `now`."""
        now = time.time() if now is None else now
        newest = int(now) // frames.RECORD_S
        oldest = -(-int(self.history_began) // frames.RECORD_S)
        n = max(0, min(newest - oldest + 1, HISTORY_CAPACITY))
        return [(s * frames.RECORD_S, frames.history_record(s)) for s in range(newest, newest - n, -1)]

    async def send_history(self, conn, start, end):
        """Answer a history request: the reply streams on its own (no live frames meanwhile)."""
        log_now = [raw for _, raw in self.history_log()]
        reply = frames.history_reply(self.model, log_now, start, end)
        began = time.monotonic()
        for n in reply:
            await self.device.notify_subscriber(conn, self.notify_char, n)
            await asyncio.sleep(HISTORY_NOTIFY_S)
        self.history_reads += 1
        log(f"{self.key}: history [{start}, {end}) of {len(log_now)} records: {len(reply)} notifications "
            f"in {time.monotonic() - began:.2f} s")

    def on_write(self, conn, value):
        value = bytes(value)
        if self.model not in ("BM6", "BM7"):
            return
        if not self.answers:
            log(f"{self.key}: request ignored (answers=false)")
            return
        plain = frames.decrypt(self.model, value) if len(value) == 16 else b""
        asked = frames.history_request(plain) if self.model == "BM6" else None
        if asked is not None:
            asyncio.get_running_loop().create_task(self.send_history(conn, *asked))
            return
        if value != frames.request(self.model):
            if plain[:3] == bytes.fromhex("d15507") or len(value) != 16:
                log(f"{self.key}: ignored write {value.hex()}")
            else:
                self.forbidden += 1
                log(f"{self.key}: FORBIDDEN write {value.hex()} (plaintext {plain.hex()})")
            return
        self.notify(frames.echo(self.model))
        self.notify(frames.gatt_reading(self.model, self.voltage, self.temp, self.status, self.soc))
        log(f"{self.key}: answered the request with {self.voltage:.2f} V")

    def on_subscription(self, conn, char, notify, indicate):
        if self.model != "BM2":
            return
        task = self.streams.pop(conn, None)
        if task:
            task.cancel()
        if notify:
            self.streams[conn] = asyncio.get_running_loop().create_task(self.stream(conn))

    async def stream(self, conn):
        log(f"{self.key}: streaming to {conn.peer_address}")
        while True:
            if self.answers:
                frame = frames.bm2_stream(self.voltage, self.status, self.soc)
                await self.device.notify_subscriber(conn, self.notify_char, frame)
            await asyncio.sleep(STREAM_S)

    async def set_busy(self, busy):
        self.busy = busy
        if busy and self.busy_conn is None:
            if self.busy_central is None:
                c = Controller(self.key + "-phone", link=self.link, public_address="CA:FE:00:00:00:01")
                self.busy_central = Device(name="phone", address=Address("CA:FE:00:00:00:01"),
                                           host=Host(c, AsyncPipeSink(c)))
                await self.busy_central.power_on()
            self.busy_conn = await self.busy_central.connect(Address(self.address), timeout=10)
        elif not busy and self.busy_conn is not None:
            await self.busy_conn.disconnect()
            self.busy_conn = None

    async def control(self, req):
        for k in ("voltage", "soc"):
            if k in req:
                setattr(self, k, req[k])
        if "answers" in req:
            self.answers = bool(req["answers"])
        if "advertising" in req:
            self.advertising = bool(req["advertising"])
        if "connectable" in req:
            # false: still advertising, but as a non-connectable advertiser: connection attempts time out.
            self.connectable = bool(req["connectable"])
            # The kernel gave up its connection attempt long ago; Bumble's controller would still hold it
            # and connect the moment the monitor is connectable again.
            pending = C0[0].pending_le_connection if C0 else None
            if self.connectable and pending is not None and \
                    str(pending.peer_address).upper().split("/")[0] == str(self.address).upper():
                C0[0].pending_le_connection = None
        if "busy" in req:
            await self.set_busy(bool(req["busy"]))
        if "history_days" in req:
            self.history_began = time.time() - float(req["history_days"]) * 86400
        self.refresh_advert()
        # A powered-off monitor also drops its links.
        if not self.advertising:
            for conn in list(self.connections):
                if conn is not self.busy_conn:
                    await conn.disconnect()
        await self.sync_advertising()

    def state(self):
        return {"advertising": self.device.is_advertising, "connections": len(self.connections),
                "voltage": self.voltage, "answers": self.answers, "busy": self.busy,
                "forbidden": self.forbidden, "history_reads": self.history_reads,
                "links": self.links, "last_link_s": self.last_link_s}


async def serve_control(path, monitors):
    async def handle(reader, writer):
        while line := await reader.readline():
            try:
                req = json.loads(line)
                op = req.get("op")
                if op == "set":
                    await monitors[req["monitor"]].control(req)
                elif op == "reset":
                    for m in monitors.values():
                        if m.busy:
                            await m.set_busy(False)
                        m.reset()
                        m.refresh_advert()
                        await m.sync_advertising()
                elif op not in ("state", "history"):
                    raise ValueError(f"unknown op {op!r}")
                reply = {"ok": True, "state": {k: m.state() for k, m in monitors.items()}}
                if op == "history":
                    reply["history"] = [[t, *frames.decode_history_record(raw)]
                                        for t, raw in monitors[req["monitor"]].history_log()]
                log(f"control {req} -> ok")
            except Exception as e:  # noqa: BLE001 - any bad request is answered, never kills the radio
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                log(f"control {line!r} -> {reply['error']}")
            writer.write((json.dumps(reply) + "\n").encode())
            await writer.drain()
    await asyncio.start_unix_server(handle, path)


# The controller the guest kernel drives (set in main), for the control channel.
C0 = []


def refuse_connections_to_unconnectable(c0, monitors):
    """Bumble's controller connects to any advertiser it was asked to, whatever the advertising type. A
    monitor set `connectable: false` keeps advertising (the kernel sees it, reports it), but C0 never
    creates the connection to it: the kernel's LE Create Connection waits, as it would for a real
    advertiser that does not accept connections, until the caller's timeout."""
    unconnectable = lambda address: any(  # noqa: E731
        str(m.address).upper() == str(address).upper().split("/")[0] and not m.connectable
        for m in monitors.values())
    original = c0.on_advertising_pdu

    def on_advertising_pdu(pdu):
        if not unconnectable(pdu.advertiser_address):
            return original(pdu)
        pending, c0.pending_le_connection = c0.pending_le_connection, None
        try:
            return original(pdu)
        finally:
            c0.pending_le_connection = pending

    c0.on_advertising_pdu = on_advertising_pdu


async def main(hci_sock, ctl_sock, ready):
    for p in (hci_sock, ctl_sock):
        if os.path.exists(p):
            os.unlink(p)
    link = LocalLink()
    transport = await open_transport("unix-server:" + hci_sock)
    c0 = Controller("C0", host_source=transport.source, host_sink=transport.sink, link=link,
                    public_address="F0:F1:F2:F3:F4:F5")
    monitors = {k: Monitor(k, link) for k in DEFAULTS}
    refuse_connections_to_unconnectable(c0, monitors)
    C0.append(c0)
    for m in monitors.values():
        await m.start()
        log(f"{m.key}: {m.name!r} advertising from {m.address}")
    await serve_control(ctl_sock, monitors)
    with open(ready, "w") as f:
        f.write("ready\n")
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("BUMBLE_LOGLEVEL", "WARNING").upper(),
                        format="%(relativeCreated)8.0fms %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(*sys.argv[1:4]))
