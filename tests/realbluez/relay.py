#!/usr/bin/python3
"""In the guest: relay HCI between the kernel's /dev/vhci and a virtio-serial port to the host's Bumble.

vhci gives and takes whole H4 packets per read/write; the serial port is a byte stream, so packets from the
host are re-framed from their H4 headers before each write to vhci. Opening vhci with the vendor packet
FF 00 makes the kernel create a primary controller (hci0); its reply (FF 00 + index) stays here.

Usage: relay.py PORT_DEVICE
"""
import os
import select
import sys

# H4 type -> (header length, function of the header giving the payload length)
H4 = {
    0x02: (4, lambda h: h[2] | h[3] << 8),           # ACL
    0x03: (3, lambda h: h[2]),                       # SCO
    0x04: (2, lambda h: h[1]),                       # event
    0x05: (4, lambda h: (h[2] | h[3] << 8) & 0x3FFF),  # ISO
}


def main(port_path):
    port = os.open(port_path, os.O_RDWR)
    vhci = os.open("/dev/vhci", os.O_RDWR)
    os.write(vhci, bytes([0xFF, 0x00]))
    buf = b""
    while True:
        ready, _, _ = select.select([vhci, port], [], [])
        if vhci in ready:
            pkt = os.read(vhci, 4096)
            if pkt and pkt[0] == 0xFF:
                print(f"relay: vhci index {pkt[2] << 8 | pkt[3] if len(pkt) >= 4 else '?'}", flush=True)
            elif pkt:
                os.write(port, pkt)
        if port in ready:
            data = os.read(port, 65536)
            if not data:
                continue
            buf += data
            while buf:
                kind = H4.get(buf[0])
                if kind is None:
                    print(f"relay: bad H4 type {buf[0]:#x}, dropping {len(buf)} bytes", flush=True)
                    buf = b""
                    break
                hlen, plen = kind
                if len(buf) < 1 + hlen or len(buf) < 1 + hlen + plen(buf[1:1 + hlen]):
                    break
                n = 1 + hlen + plen(buf[1:1 + hlen])
                os.write(vhci, buf[:n])
                buf = buf[n:]


if __name__ == "__main__":
    main(sys.argv[1])
