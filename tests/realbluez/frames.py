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


# --- the monitor's own log (HISTORY-NOTES §5.7.2: BM6, command 05) ----------------------------------------
RECORD_S = 120                # one record every 2 minutes
RECORDS_PER_NOTIFICATION = 40  # 160-byte notifications: 10 blocks, each encrypted on its own


def history_record(slot):
    """The 4 bytes logged in 2-minute slot `slot` (Unix time // 120): a daily swing of ±0.6 V around
    12.0 V plus a little noise, SoC following the voltage, 12-24 °C, no flags. Big-endian bit fields:
    voltage/100 (12 bits), SoC (8), temperature (8), flags (4)."""
    import math
    day = 2 * math.pi * (slot % 720) / 720
    noise = (slot * 2654435761) % 5
    cv = round(1200 + 60 * math.sin(day) + noise)
    soc = max(0, min(100, cv - 1180))
    temp = round(18 + 6 * math.cos(day))
    return ((cv << 20) | (soc << 12) | (temp << 4)).to_bytes(4, "big")


def decode_history_record(raw):
    """(voltage V, SoC %, temperature °C, flags) of a record."""
    w = int.from_bytes(raw, "big")
    return (w >> 20) / 100, (w >> 12) & 0xFF, (w >> 4) & 0xFF, w & 0xF


def history_request(plain):
    """(start, end) of a decrypted `d1 55 05 | start (24-bit BE) | end (24-bit BE)` request, or None. Only
    the low 16 bits of an index are used (HISTORY-NOTES §5.7.2)."""
    if plain[:3] != bytes.fromhex("d15505"):
        return None
    return int.from_bytes(plain[3:6], "big") & 0xFFFF, int.from_bytes(plain[6:9], "big") & 0xFFFF


def _block(head):
    return bytes(head) + bytes(16 - len(head))


def history_reply(model, log, start, end):
    """The notifications a BM6 sends for records [start, end) of `log` (newest first) as AK measured:
    acknowledgement `d1 55 05 CC CC`, 160-byte data notifications (40 records, the last zero-padded), and
    the terminator `ff fe fe 00 LL LL` with LL = 4 x records + 9; an empty log: `fe fe fe` marker, then
    LL = 12; start > end: LL = 9 only. (Past the end of the log the real unit returns raw memory: the
    gateway must never ask for that, so it is not played here.)"""
    def term(length):
        return encrypt(model, _block([0xFF, 0xFE, 0xFE, length >> 16 & 0xFF, length >> 8 & 0xFF, length & 0xFF]))
    if start > end:
        return [term(9)]
    if not log:
        return [encrypt(model, _block([0xFE, 0xFE, 0xFE])), term(12)]
    records = log[start:min(end, len(log))]
    n = len(records)
    out = [encrypt(model, _block([0xD1, 0x55, 0x05, n >> 8 & 0xFF, n & 0xFF]))]
    for i in range(0, n, RECORDS_PER_NOTIFICATION):
        data = b"".join(records[i:i + RECORDS_PER_NOTIFICATION]).ljust(160, b"\0")
        out.append(b"".join(encrypt(model, data[j:j + 16]) for j in range(0, 160, 16)))
    out.append(term(4 * n + 9))
    return out
