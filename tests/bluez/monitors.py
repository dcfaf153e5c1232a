# -*- coding: utf-8 -*-
'''python-dbusmock template: BlueZ (the stock bluez5 template) plus Leagend battery monitors.

Loaded by tests/common/bluez.rs as
    /usr/bin/python3 -m dbusmock --system --template tests/bluez/monitors.py -p '{"scenario": "PATH"}'
on a private bus. The scenario file (JSON, written by the Rust test) lists the adapter and the devices:

    {"adapter": "hci0",
     "devices": [{"address": "38:3B:26:B5:30:AB", "name": "BM6", "rssi": -60,
                  "manufacturer": {"76": "0215...", "18190": "..."},   # company id -> hex value
                  "adverts": ["hex16" | "CID:hex", ...],               # rotated adverts: encrypted
                  "advert_ms": 200,                                    # frames, or entries as is
                  "gatt": true,                                        # has the fff0 service
                  "connect": "ok" | "Failed" | "InProgress" | "hang",  # hang: sleep hang_s
                  "request": "hex16",     # the encrypted request the monitor answers (BM6/BM7)
                  "replies": ["hex16"],   # notified after the request (or, without request, streamed)
                  "stream_ms": 0,         # > 0: notify replies[i] every stream_ms after StartNotify (BM2)
                  "mtu": 23,              # ATT MTU reported on the characteristics (history needs >= 163)
                  "answers": {"hex16": [["hex", ...], ...]},  # the monitor's log (see below)
                  "notify_ms": 10}]}      # pause between two notifications of one reply

`answers` plays a monitor's stored history (HISTORY-NOTES §5.7): each encrypted command the test expects
maps to a list of replies (each a list of notifications, any length); the n-th time the command arrives the
n-th reply is sent (the last one again once they run out), so a spurious first reply can be followed by a
good one. A command not listed gets no reply at all, as a real monitor ignores what it does not understand.

Frames are computed by the Rust tests with the real model keys; this file does no cryptography: a monitor
answers only a request that equals the encrypted request, exactly as a real one ignores anything else.

Extra mock methods on / (org.bluez.Mock): RestoreAdapter() re-creates the adapter and every device after
the test removed them with RemoveAdapterWithDevices('hci0').

Like bluetoothd, the mock forgets unpaired devices that are not connected `forget_s` seconds (scenario
key, default 30: bluetoothd's TemporaryTimeout) after discovery stopped, and a new discovery finds again
every device whose spec does not say `"advertising": false`. `"connect": "hang"` keeps the caller waiting
`hang_s` seconds without blocking the mock (other devices keep answering meanwhile).
'''

import json
import time

import dbus
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.templates import bluez5
from dbusmock.templates.bluez5 import *  # noqa: F401,F403 (the stock methods: AddAdapter, ...)
from gi.repository import GLib

GATT_SERVICE_IFACE = 'org.bluez.GattService1'
GATT_CHRC_IFACE = 'org.bluez.GattCharacteristic1'
SERVICE_UUID = '0000fff0-0000-1000-8000-00805f9b34fb'
WRITE_UUID = '0000fff3-0000-1000-8000-00805f9b34fb'
NOTIFY_UUID = '0000fff4-0000-1000-8000-00805f9b34fb'

SCENARIO = {}


def load(mock, parameters):
    bluez5.load(mock, parameters)
    # dbusmock registers the main object only after load(); the stock helpers look it up there.
    mockobject.objects.setdefault('/', mock)
    with open(parameters['scenario'], encoding='utf-8') as f:
        SCENARIO.update(json.load(f))
    build(mock)


def build(mock):
    mock.AddAdapter(SCENARIO.get('adapter', 'hci0'), 'battery-hawk-test')
    adapter = mockobject.objects['/org/bluez/' + SCENARIO.get('adapter', 'hci0')]
    adapter.forget_timer = None
    adapter.AddMethod(bluez5.ADAPTER_IFACE, 'StartDiscovery', '', '', start_discovery)
    adapter.AddMethod(bluez5.ADAPTER_IFACE, 'StopDiscovery', '', '', stop_discovery)
    for spec in SCENARIO.get('devices', []):
        add_monitor(mock, spec)


def device_path(spec):
    return '/org/bluez/' + SCENARIO.get('adapter', 'hci0') + '/dev_' + spec['address'].replace(':', '_').upper()


def start_discovery(adapter):
    bluez5.StartDiscovery(adapter)
    if adapter.forget_timer is not None:
        GLib.source_remove(adapter.forget_timer)
        adapter.forget_timer = None
    for spec in SCENARIO.get('devices', []):
        if spec.get('advertising', True) and device_path(spec) not in mockobject.objects:
            add_monitor(mockobject.objects['/'], spec)


def stop_discovery(adapter):
    bluez5.StopDiscovery(adapter)

    def forget():
        adapter.forget_timer = None
        for spec in SCENARIO.get('devices', []):
            path = device_path(spec)
            device = mockobject.objects.get(path)
            if device is None or device.connected:
                continue
            for t in device.timers:
                GLib.source_remove(t)
            for child in [p for p in mockobject.objects if p == path or p.startswith(path + '/')]:
                mockobject.objects['/'].RemoveObject(child)
            mockobject.objects['/'].EmitSignal(OBJECT_MANAGER_IFACE, 'InterfacesRemoved', 'oas',
                                               [dbus.ObjectPath(path), [bluez5.DEVICE_IFACE]])
        return False

    adapter.forget_timer = GLib.timeout_add(int(SCENARIO.get('forget_s', 30) * 1000), forget)


@dbus.service.method(bluez5.BLUEZ_MOCK_IFACE, in_signature='', out_signature='')
def RestoreAdapter(self):
    build(self)


def manufacturer(mapping):
    return dbus.Dictionary(
        {dbus.UInt16(int(cid)): dbus.Array(bytes.fromhex(v), signature='y', variant_level=1)
         for cid, v in mapping.items()},
        signature='qv', variant_level=1)


def emit_changed(obj, iface, changes):
    obj.props[iface].update(changes)
    obj.EmitSignal(dbus.PROPERTIES_IFACE, 'PropertiesChanged', 'sa{sv}as', [iface, changes, []])


def add_monitor(mock, spec):
    adapter_path = '/org/bluez/' + SCENARIO.get('adapter', 'hci0')
    path = adapter_path + '/dev_' + spec['address'].replace(':', '_').upper()
    props = {
        'Address': dbus.String(spec['address'], variant_level=1),
        'AddressType': dbus.String('public', variant_level=1),
        'Name': dbus.String(spec.get('name', ''), variant_level=1),
        'Alias': dbus.String(spec.get('name', spec['address']), variant_level=1),
        'Icon': dbus.String('', variant_level=1),
        'Class': dbus.UInt32(0, variant_level=1),
        'Appearance': dbus.UInt16(0, variant_level=1),
        'UUIDs': dbus.Array([SERVICE_UUID] if spec.get('gatt', True) else [], signature='s',
                            variant_level=1),
        'Paired': dbus.Boolean(False, variant_level=1),
        'Connected': dbus.Boolean(False, variant_level=1),
        'Trusted': dbus.Boolean(False, variant_level=1),
        'Blocked': dbus.Boolean(False, variant_level=1),
        'WakeAllowed': dbus.Boolean(False, variant_level=1),
        'Adapter': dbus.ObjectPath(adapter_path, variant_level=1),
        'LegacyPairing': dbus.Boolean(False, variant_level=1),
        'Modalias': dbus.String('', variant_level=1),
        'RSSI': dbus.Int16(spec.get('rssi', -70), variant_level=1),
        'TxPower': dbus.Int16(0, variant_level=1),
        'ManufacturerData': manufacturer(spec.get('manufacturer', {})),
        'ServiceData': dbus.Dictionary({}, signature='sv', variant_level=1),
        'ServicesResolved': dbus.Boolean(False, variant_level=1),
        'AdvertisingFlags': dbus.Array([], signature='y', variant_level=1),
        'AdvertisingData': dbus.Dictionary({}, signature='yv', variant_level=1),
    }
    mock.AddObject(path, bluez5.DEVICE_IFACE, props, [
        ('Connect', '', '', Connect),
        ('Disconnect', '', '', Disconnect),
        ('ConnectProfile', 's', '', ''),
        ('DisconnectProfile', 's', '', ''),
        ('CancelPairing', '', '', ''),
        ('Pair', '', '', ''),
    ])
    device = mockobject.objects[path]
    device.spec = spec
    device.connected = False
    device.timers = []
    device.answered = {}
    interfaces = {bluez5.DEVICE_IFACE: props}

    if spec.get('gatt', True):
        service = path + '/service000c'
        mock.AddObject(service, GATT_SERVICE_IFACE, {
            'UUID': dbus.String(SERVICE_UUID, variant_level=1),
            'Primary': dbus.Boolean(True, variant_level=1),
            'Device': dbus.ObjectPath(path, variant_level=1),
            'Includes': dbus.Array([], signature='o', variant_level=1),
            'Handle': dbus.UInt16(0x0c, variant_level=1),
        }, [])
        for handle, uuid, flags in [(0x0d, WRITE_UUID, ['write', 'write-without-response']),
                                    (0x10, NOTIFY_UUID, ['notify'])]:
            chrc = service + f'/char{handle:04x}'
            mock.AddObject(chrc, GATT_CHRC_IFACE, {
                'UUID': dbus.String(uuid, variant_level=1),
                'Service': dbus.ObjectPath(service, variant_level=1),
                'Value': dbus.Array([], signature='y', variant_level=1),
                'Notifying': dbus.Boolean(False, variant_level=1),
                'Flags': dbus.Array(flags, signature='s', variant_level=1),
                'MTU': dbus.UInt16(spec.get('mtu', 23), variant_level=1),
                'Handle': dbus.UInt16(handle, variant_level=1),
            }, [
                ('ReadValue', 'a{sv}', 'ay', 'ret = self.props["%s"]["Value"]' % GATT_CHRC_IFACE),
                ('WriteValue', 'aya{sv}', '', WriteValue),
                ('StartNotify', '', '', StartNotify),
                ('StopNotify', '', '', StopNotify),
            ])
            mockobject.objects[chrc].device = device
        device.notify_path = service + '/char0010'

    mockobject.objects['/'].EmitSignal(OBJECT_MANAGER_IFACE, 'InterfacesAdded', 'oa{sa{sv}}',
                                       [dbus.ObjectPath(path), interfaces])

    adverts = spec.get('adverts', [])
    if adverts:
        state = {'i': 0}

        def advertise():
            if path not in mockobject.objects:
                return False
            entry = adverts[state['i'] % len(adverts)]
            state['i'] += 1
            if ':' in entry:
                # "CID:HEX": a manufacturer entry as is (an iBeacon: "76:0215...").
                cid, value = entry.split(':', 1)
                data = {cid: value}
            else:
                frame = bytes.fromhex(entry)
                data = {str(frame[0] | (frame[1] << 8)): frame[2:].hex()}
            emit_changed(device, bluez5.DEVICE_IFACE, {'ManufacturerData': manufacturer(data)})
            return True

        GLib.timeout_add(spec.get('advert_ms', 200), advertise)


def notify(device, frame_hex):
    if device.notify_path not in mockobject.objects or not device.connected:
        return False
    chrc = mockobject.objects[device.notify_path]
    emit_changed(chrc, GATT_CHRC_IFACE,
                 {'Value': dbus.Array(bytes.fromhex(frame_hex), signature='y', variant_level=1)})
    return True


def Connect(device):
    how = device.spec.get('connect', 'ok')
    if how == 'hang':
        # Never answers in time: the caller's connection timeout must fire. The main loop keeps running
        # meanwhile, so the other devices go on answering.
        hang_s = device.spec.get('hang_s', 3)
        end = time.time() + hang_s
        GLib.timeout_add(int(hang_s * 1000) + 10, lambda: False)
        context = GLib.MainContext.default()
        while time.time() < end:
            context.iteration(True)
        raise dbus.exceptions.DBusException('le-connection-abort-by-local',
                                            name='org.bluez.Error.Failed')
    if how != 'ok':
        raise dbus.exceptions.DBusException(how, name='org.bluez.Error.' + how)
    device.connected = True
    emit_changed(device, bluez5.DEVICE_IFACE, {
        'Connected': dbus.Boolean(True, variant_level=1),
        'ServicesResolved': dbus.Boolean(True, variant_level=1),
    })


def Disconnect(device):
    device.connected = False
    for t in device.timers:
        GLib.source_remove(t)
    device.timers = []
    emit_changed(device, bluez5.DEVICE_IFACE, {
        'Connected': dbus.Boolean(False, variant_level=1),
        'ServicesResolved': dbus.Boolean(False, variant_level=1),
    })


def send_all(device, replies, every_ms):
    replies = list(replies)

    def send_next():
        if replies:
            notify(device, replies.pop(0))
        return bool(replies)

    device.timers.append(GLib.timeout_add(every_ms, send_next))


def WriteValue(chrc, value, _options):
    device = chrc.device
    spec = device.spec
    command = bytes(value).hex()
    if spec.get('request') and command == spec['request']:
        send_all(device, spec.get('replies', []), 10)
    answers = spec.get('answers', {}).get(command)
    if answers:
        n = device.answered.get(command, 0)
        device.answered[command] = n + 1
        send_all(device, answers[min(n, len(answers) - 1)], spec.get('notify_ms', 10))


def StartNotify(chrc):
    emit_changed(chrc, GATT_CHRC_IFACE, {'Notifying': dbus.Boolean(True, variant_level=1)})
    device = chrc.device
    every = device.spec.get('stream_ms', 0)
    replies = device.spec.get('replies', [])
    if every and replies:
        state = {'i': 0}

        def stream():
            ok = notify(device, replies[state['i'] % len(replies)])
            state['i'] += 1
            return ok

        device.timers.append(GLib.timeout_add(every, stream))


def StopNotify(chrc):
    emit_changed(chrc, GATT_CHRC_IFACE, {'Notifying': dbus.Boolean(False, variant_level=1)})
