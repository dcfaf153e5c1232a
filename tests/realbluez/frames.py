"""Leagend BM2/BM6/BM7 frames (SPEC §5), built the way a real monitor sends them.

Pure functions, no Bumble: `monitors.py` uses them on the air and `check_frames.py` checks them against the
test vectors of SPEC §5.6. Every frame is one 16-byte block, AES-128 (CBC with a zero IV = ECB of one block).
"""
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# SPEC §5: "leagend" + FF FE + 7 ASCII characters.
KEYS = {
    "BM2": b"leagend\xff\xfe1882466",
    "BM6": b"leagend\xff\xfe0100009",
    "BM7": b"leagend\xff\xfe010000@",
}
# SPEC §5.3 / §5.4: iBeacon UUIDs (Apple company id 76).
IBEACON_UUID = {
    "BM2": bytes.fromhex("655f83caae16a10a702e31f30d58dd82"),
    "BM6": bytes.fromhex("3ba29cd9a42c894856badaf2606ef777"),
}
APPLE = 0x004C


def encrypt(model, plain):
    """AES-128-ECB of one 16-byte block with the model key."""
    assert len(plain) == 16, plain.hex()
    e = Cipher(algorithms.AES(KEYS[model]), modes.ECB()).encryptor()
    return e.update(plain) + e.finalize()


def decrypt(model, cipher):
    d = Cipher(algorithms.AES(KEYS[model]), modes.ECB()).decryptor()
    return d.update(cipher) + d.finalize()


def request(model):
    """The encrypted reading request `d1 55 07` + 13 zero bytes (SPEC §5.1)."""
    return encrypt(model, bytes.fromhex("d15507") + bytes(13))


def echo(model):
    """What a BM6/BM7 notifies first after a request: byte 3 = FF (SPEC §5.1, §5.6)."""
    return encrypt(model, bytes.fromhex("d15507ff") + bytes(12))


def gatt_reading(model, volts, temp_c=25, status=1, soc=80, accel=0, decel=0):
    """A BM6/BM7 reply frame (SPEC §5.1): sign, |temp|, status, SoC, voltage/100 BE, counters BE."""
    mv = round(volts * 100)
    plain = bytes([0xD1, 0x55, 0x07, 1 if temp_c < 0 else 0, abs(temp_c), status, soc]) \
        + mv.to_bytes(2, "big") + accel.to_bytes(2, "big") + decel.to_bytes(2, "big") + bytes(3)
    return encrypt(model, plain)


def bm2_stream(volts, status=1, soc=90):
    """A BM2 stream frame (SPEC §5.2): F5, (voltage/100 << 4 | status) BE, SoC."""
    word = (round(volts * 100) << 4) | (status & 0xF)
    return encrypt("BM2", bytes([0xF5]) + word.to_bytes(2, "big") + bytes([soc]) + bytes(12))


def advert_frame(model, mac, volts, soc, tail=b"\x00\x04\x00\x00\x00\x01\x08"):
    """The encrypted advertisement (SPEC §5.4): MAC (BM2 reversed), voltage/100 BE, SoC, 7 more bytes.

    `tail` carries what a monitor varies between adverts (a counter), so that each advert is a new
    ciphertext: its first two bytes become the company id BlueZ reports, which therefore rotates."""
    addr = bytes.fromhex(mac.replace(":", ""))
    if model == "BM2":
        addr = addr[::-1]
    plain = addr + round(volts * 100).to_bytes(2, "big") + bytes([soc]) + tail
    return encrypt(model, plain)


def manufacturer_ad(frame):
    """(company id, value) as BlueZ reports the 16-byte frame: first two bytes little-endian = company id."""
    return frame[0] | frame[1] << 8, frame[2:]


def ibeacon(model, soc):
    """Apple iBeacon manufacturer value (after company id 76), SPEC §5.4: BM2 carries the SoC in the last
    (TX power) byte, BM6 in the low byte of major."""
    if model == "BM2":
        return b"\x02\x15" + IBEACON_UUID["BM2"] + bytes.fromhex("f4414231") + bytes([soc])
    return b"\x02\x15" + IBEACON_UUID["BM6"] + bytes([0x00, soc]) + bytes.fromhex("0001c5")
