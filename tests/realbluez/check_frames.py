"""Host-side unit check: the emulated monitors' encoder against the test vectors of SPEC §5.6.

Run by run.sh before booting the VM (python3 check_frames.py); exit status 1 and one line per mismatch."""
import sys

import frames as f

failures = []


def check(what, got, want):
    if got != want:
        failures.append(f"{what}: got {got.hex() if isinstance(got, bytes) else got}, want "
                        f"{want.hex() if isinstance(want, bytes) else want}")


H = bytes.fromhex
check("BM6 request", f.request("BM6"), H("697ea0b5d54cf024e794772355554114"))
check("BM7 request", f.request("BM7"), H("586d7b2377c6924dcd750acb29f5bf8d"))
check("BM6 gatt 12.70 V 25 C SoC 80 status 0", f.gatt_reading("BM6", 12.70, 25, 0, 80),
      H("71543b749f6f614dd6333f21546f681d"))
check("BM6 gatt 12.50 V -5 C SoC 50 status 2", f.gatt_reading("BM6", 12.50, -5, 2, 50),
      H("8d15e48e2f10fdb9536e0a95bd871c05"))
check("BM6 gatt 13.22 V 15 C SoC 84 status 1 accel 3 decel 4", f.gatt_reading("BM6", 13.22, 15, 1, 84, 3, 4),
      H("319b051ed6943b2a6919cc278b4220ef"))
check("BM6 echo", f.echo("BM6"), H("8ae0358523fe154976de18fc102eb1d4"))
check("BM2 advert 50:54:7B:22:2F:20 12.83 V SoC 93",
      f.advert_frame("BM2", "50:54:7B:22:2F:20", 12.83, 93, H("01030000000900")),
      H("e18911ed76d18e5ba793d5574f205b61"))
check("BM6 advert 38:3B:26:B5:30:AB 12.53 V SoC 85",
      f.advert_frame("BM6", "38:3B:26:B5:30:AB", 12.53, 85, H("00040000000108")),
      H("ee6e22884c11f151c1760465b2fe9003"))
check("BM2 iBeacon SoC 68", f.ibeacon("BM2", 68), H("0215655f83caae16a10a702e31f30d58dd82f441423144"))
# A BM2 stream frame decodes back to what was encoded (SPEC §5.2 has no vector).
p = f.decrypt("BM2", f.bm2_stream(12.83, 3, 93))
check("BM2 stream round trip", ((p[1] << 8 | p[2]) >> 4, p[2] & 0xF, p[3], p[0]), (1283, 3, 93, 0xF5))
cid, value = f.manufacturer_ad(H("ee6e22884c11f151c1760465b2fe9003"))
check("company id of an advert", cid, 0x6EEE)
check("value of an advert", value, H("22884c11f151c1760465b2fe9003"))

# History (HISTORY-NOTES §5.7.7 examples A and E): request, reply to [0, 1) of a one-record log, empty log.
check("BM6 history request [0,20)", f.history_request(f.decrypt("BM6", H("2bd4b713e1c452e6c1a4eb384262e36b"))),
      (0, 20))
check("BM6 history reply [0,1)", b"|".join(f.history_reply("BM6", [H("52e64180")], 0, 1)),
      b"|".join([H("2e6a4e19b27a6a3332696e9d43e6a916"),
                 H("5080ab8a013813b0904ba217326800f3") + 9 * H("485ee1040e6ff06db409a84383d55c8e"),
                 H("5071c1321c31cf66c844bca3da142670")]))
check("BM6 history empty log", b"|".join(f.history_reply("BM6", [], 0, 20)),
      b"|".join([H("7e5cb931800dbc0c789ccd531167dc82"), H("538c869b02bd33007b8ac90858904006")]))
check("BM6 history record 52e64180", f.decode_history_record(H("52e64180")), (13.26, 100, 24, 0))

for line in failures:
    print("frame check FAIL:", line)
print(f"frame check: {17 - len(failures)} of 17 vectors match")
sys.exit(1 if failures else 0)
