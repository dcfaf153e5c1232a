"""The Python baseline for bench/compare.sh: the message stream published with paho-mqtt (the library the
Python gateways use), QoS 1, at most 1000 messages outstanding (paho cannot track more than 65,535).
Prints messages/s once the broker acknowledged all. Usage: paho_publisher.py PORT COUNT READING STATUS"""
import sys
import threading
import time

import paho.mqtt.client as mqtt

port, count = int(sys.argv[1]), int(sys.argv[2])
reading = open(sys.argv[3], 'rb').read()
status = open(sys.argv[4], 'rb').read()
window = threading.Semaphore(1000)
done = threading.Event()
acked = 0


def on_publish(_client, _userdata, _mid, _reason=None, _props=None):
    global acked
    acked += 1
    window.release()
    if acked == count:
        done.set()


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='bench-paho')
client.max_inflight_messages_set(100)
client.max_queued_messages_set(0)
client.on_publish = on_publish
client.connect('127.0.0.1', port)
client.loop_start()
start = time.monotonic()
for i in range(count):
    window.acquire()
    if i % 2 == 0:
        client.publish(f'bench/device/AA:00:00:00:00:{i % 250:02X}/reading', reading, qos=1)
    else:
        client.publish(f'bench/device/AA:00:00:00:00:{i % 250:02X}/status', status, qos=1, retain=True)
done.wait()
print(f'{count / (time.monotonic() - start):.0f}')
client.loop_stop()
