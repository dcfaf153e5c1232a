//! Device knowledge: what each monitor model sends and how to turn its bytes into a measurement.
//!
//! Owns: the [`Monitor`] trait, one file per model, the registry [`ALL`], AES framing ([`crypto`]),
//! recognising monitors in a scan ([`identify`]) and the validation rules of SPEC §5.5. Everything here is a
//! pure function of its input: no I/O, no clocks, no threads, no logging, no JSON, no topics. Adding a model
//! means one new file and one line in [`ALL`] (ARCHITECTURE.md, "How to add a model").

pub mod crypto;
mod identify;
mod outcome;

mod bm2;
mod bm6;
mod bm7;
pub mod history;

pub use identify::{
    APPLE, Evidence, Identity, advert_frame, advert_reading, classify, ibeacon_payload,
    ibeacon_value, identify_by_advert, identify_by_name,
};

pub use outcome::{DecodeError, Decoded, FrameKind};

use crate::mac::Mac;
use std::fmt;

/// The registry: every supported model, in the order detection tries them.
pub const ALL: &[&dyn Monitor] = &[&bm2::Bm2, &bm6::Bm6, &bm7::Bm7];

/// GATT service and characteristics shared by the whole Leagend family.
pub const SERVICE_UUID: &str = "0000fff0-0000-1000-8000-00805f9b34fb";
pub const WRITE_UUID: &str = "0000fff3-0000-1000-8000-00805f9b34fb";
pub const NOTIFY_UUID: &str = "0000fff4-0000-1000-8000-00805f9b34fb";

/// Length of every encrypted frame (one AES block).
pub const BLOCK: usize = 16;

/// Length of an iBeacon manufacturer-data value (`02 15`, 16-byte UUID, major, minor, TX power).
pub const IBEACON_LEN: usize = 23;

/// A model's iBeacon (SPEC §5.3/§5.4): its UUID and which byte of the 23-byte Apple value carries the SoC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ibeacon {
    pub uuid: [u8; 16],
    /// Index into the Apple value (`02 15 …`) of the state of charge, %.
    pub soc_byte: usize,
}

/// One monitor model: its key, how it announces itself, and how its frames decode and encode.
pub trait Monitor: Sync {
    /// Model name as it appears in config and payloads (`BM6`).
    fn name(&self) -> &'static str;
    /// The AES-128 key of the model.
    fn key(&self) -> &'static [u8; 16];
    /// Names the model advertises under (a hint only: SPEC §5.3, a name alone never confirms a model).
    fn advertised_names(&self) -> &'static [&'static str];
    /// The model's iBeacon, where it broadcasts one.
    fn ibeacon(&self) -> Option<Ibeacon>;
    /// Whether readings carry a temperature.
    fn measures_temperature(&self) -> bool;
    /// Plaintext to write to `fff3` to ask for a reading; `None` when the model streams unasked.
    fn gatt_request(&self) -> Option<[u8; 16]>;
    /// Decode one decrypted 16-byte block of a GATT notification.
    fn decode_gatt(&self, plain: &[u8; 16]) -> Result<Decoded, DecodeError>;
    /// Decode a decrypted advertisement frame of the device `mac` (SPEC §5.4).
    fn decode_advert(&self, plain: &[u8; 16], mac: Mac) -> Result<Decoded, DecodeError>;
    /// The plaintext GATT frame this model sends for `m` (used by the simulated monitors).
    fn encode_gatt(&self, m: &Measurement) -> [u8; 16];
    /// The plaintext advertisement this model broadcasts for `m`, if it broadcasts readings.
    fn encode_advert(&self, m: &Measurement, mac: Mac) -> Option<[u8; 16]>;
}

/// A model, passed between threads by value; compares and prints by name.
#[derive(Clone, Copy)]
pub struct Model(pub &'static dyn Monitor);

impl Model {
    /// Look a model up by name, case-insensitively (`bm6`, `BM6`).
    pub fn by_name(name: &str) -> Option<Model> {
        ALL.iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
            .map(|m| Model(*m))
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// Names of all models, for error messages.
    pub fn all_names() -> String {
        ALL.iter().map(|m| m.name()).collect::<Vec<_>>().join("|")
    }
}

impl std::ops::Deref for Model {
    type Target = dyn Monitor;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl PartialEq for Model {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Model {}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a frame came from (published as `extra.source`, SPEC §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A notification on `fff4` over a connection: one or more encrypted 16-byte blocks.
    Gatt,
    /// An encrypted manufacturer-data advertisement, rebuilt to 16 bytes ([`advert_frame`]).
    Advertisement,
    /// The Apple iBeacon value (`02 15 …`, 23 bytes, not encrypted): SoC only (SPEC §5.4).
    Ibeacon,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Gatt => "gatt",
            Source::Advertisement => "advertisement",
            Source::Ibeacon => "ibeacon",
        }
    }
}

/// What a monitor measured. `None` means the frame does not carry the value.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Measurement {
    /// Volts; `None` only for an iBeacon reading (SPEC §5.5).
    pub voltage: Option<f64>,
    /// °C; `None` when the model does not measure it or the value was implausible (see `dropped_temperature`).
    pub temperature: Option<f64>,
    /// %.
    pub state_of_charge: Option<f64>,
    /// Battery state from BM6/BM7 byte 5 (SPEC §5.1): one of [`battery_states`].
    pub state: Option<String>,
    /// Model-specific counters and codes, published under `extra` by name.
    pub counters: Vec<(&'static str, i64)>,
    /// A temperature the frame carried outside −40…85 °C (SPEC §5.5): not published, the reading kept;
    /// the decode stage logs it at debug.
    pub dropped_temperature: Option<f64>,
}

/// `extra.state` of a BM6/BM7 reading for status byte `b` (SPEC §5.1): byte 5 is not a low-battery flag.
pub fn battery_state(b: u8) -> String {
    match b {
        2 => "charging".to_string(),
        0 | 1 => "not_charging".to_string(),
        n => format!("unknown_{n}"),
    }
}

/// Every value `extra.state` can take, in byte order of first appearance: `not_charging`, `charging`,
/// `unknown_3` … `unknown_255` (255 values; for Home Assistant's enum `options`).
pub fn battery_states() -> Vec<String> {
    let mut states = vec![battery_state(0), battery_state(2)];
    states.extend((3..=255).map(battery_state));
    states
}

/// One decoded frame: the plaintext (for `extra.raw_data`: the decrypted block, or the iBeacon value as
/// received) and what it is.
pub type Frame = (Vec<u8>, Decoded);

/// Decode one frame of `model` from `mac`: a 16-byte encrypted block (`Gatt`, `Advertisement`) or the
/// 23-byte Apple iBeacon value (`Ibeacon`). A reading comes back validated (SPEC §5.5).
pub fn decode_frame(
    model: Model,
    source: Source,
    mac: Mac,
    data: &[u8],
) -> Result<Frame, DecodeError> {
    if source == Source::Ibeacon {
        return decode_ibeacon(model, data);
    }
    let block: &[u8; 16] = data.try_into().map_err(|_| DecodeError::Length {
        got: data.len(),
        expected: BLOCK,
    })?;
    let plain = crypto::decrypt(model.key(), block);
    let decoded = match source {
        Source::Advertisement => model.decode_advert(&plain, mac)?,
        _ => model.decode_gatt(&plain)?,
    };
    Ok((plain.to_vec(), validate(decoded)?))
}

/// Decode a whole notification: a GATT notification longer than 16 bytes is a sequence of 16-byte blocks,
/// each decrypted on its own (SPEC §5.1); a trailing partial block is a [`DecodeError::Length`]. One outcome
/// per block, in order. Other sources are one frame.
pub fn decode_notification(
    model: Model,
    source: Source,
    mac: Mac,
    data: &[u8],
) -> Vec<Result<Frame, DecodeError>> {
    if source != Source::Gatt || data.len() <= BLOCK {
        return vec![decode_frame(model, source, mac, data)];
    }
    let blocks = data.chunks_exact(BLOCK);
    let rest = blocks.remainder().len();
    let mut out: Vec<_> = blocks
        .map(|b| decode_frame(model, source, mac, b))
        .collect();
    if rest > 0 {
        out.push(Err(DecodeError::Length {
            got: rest,
            expected: BLOCK,
        }));
    }
    out
}

/// SPEC §5.4: the SoC from the model's iBeacon value (`02 15`, UUID, major, minor, TX power).
fn decode_ibeacon(model: Model, value: &[u8]) -> Result<Frame, DecodeError> {
    let beacon = model.ibeacon().ok_or(DecodeError::NoAdvertisement)?;
    if value.len() != IBEACON_LEN {
        return Err(DecodeError::Length {
            got: value.len(),
            expected: IBEACON_LEN,
        });
    }
    if value[0..2] != [0x02, 0x15] || value[2..18] != beacon.uuid {
        return Err(DecodeError::NotMine);
    }
    let m = Measurement {
        state_of_charge: Some(f64::from(value[beacon.soc_byte])),
        ..Measurement::default()
    };
    Ok((value.to_vec(), validate(Decoded::Reading(m))?))
}

/// Encrypt a frame as `model` would send it (the simulated monitors use this).
pub fn encrypt_frame(model: Model, plain: &[u8; 16]) -> [u8; 16] {
    crypto::encrypt(model.key(), plain)
}

/// SPEC §5.5: a reading needs 0 < V ≤ 40 and 0 ≤ SoC ≤ 100; a temperature outside −40…85 °C becomes
/// `None` (kept in `dropped_temperature`) without discarding the reading.
fn validate(decoded: Decoded) -> Result<Decoded, DecodeError> {
    let Decoded::Reading(mut m) = decoded else {
        return Ok(decoded);
    };
    let out = |field, value| Err(DecodeError::OutOfRange { field, value });
    if let Some(v) = m.voltage
        && !(v > 0.0 && v <= 40.0)
    {
        return out("voltage", v);
    }
    if let Some(s) = m.state_of_charge
        && !(0.0..=100.0).contains(&s)
    {
        return out("state_of_charge", s);
    }
    if let Some(t) = m.temperature
        && !(-40.0..=85.0).contains(&t)
    {
        m.temperature = None;
        m.dropped_temperature = Some(t);
    }
    Ok(Decoded::Reading(m))
}

/// Parse a hex string (spaces allowed) into bytes; used by `decode` and the tests.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if clean.len() % 2 != 0 {
        return Err(format!("'{s}' has an odd number of hex digits"));
    }
    (0..clean.len())
        .step_by(2)
        .map(|i| {
            clean
                .get(i..i + 2)
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("'{s}' is not hex"))
        })
        .collect()
}

/// Bytes as lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Decode a spec vector (ciphertext hex) and return plaintext hex and the outcome.
    pub fn run(model: &str, source: Source, mac: &str, hex: &str) -> (String, Decoded) {
        let model = Model::by_name(model).unwrap();
        let mac: Mac = mac.parse().unwrap();
        let (plain, d) = decode_frame(model, source, mac, &parse_hex(hex).unwrap()).unwrap();
        (to_hex(&plain), d)
    }

    pub fn reading(d: Decoded) -> Measurement {
        match d {
            Decoded::Reading(m) => m,
            other => panic!("expected a reading, got {other:?}"),
        }
    }

    /// `plain` (hex) encrypted with `model`'s key.
    pub fn cipher(model: &str, plain: &str) -> Vec<u8> {
        let p: [u8; 16] = parse_hex(plain).unwrap().try_into().unwrap();
        encrypt_frame(Model::by_name(model).unwrap(), &p).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{cipher, reading};
    use super::*;

    fn any() -> Mac {
        Mac([0; 6])
    }

    fn bm(name: &str) -> Model {
        Model::by_name(name).unwrap()
    }

    #[test]
    fn registry_names_are_unique_and_found() {
        for m in ALL {
            assert_eq!(Model::by_name(m.name()).unwrap().name(), m.name());
        }
        assert!(Model::by_name("bm6").is_some());
        assert!(Model::by_name("BM9").is_none());
    }

    #[test]
    fn short_long_and_empty_input_is_rejected() {
        for len in [0, 1, 15, 17, 32] {
            let r = decode_frame(bm("BM6"), Source::Gatt, any(), &vec![0u8; len]);
            let expected = DecodeError::Length {
                got: len,
                expected: 16,
            };
            assert_eq!(r.unwrap_err(), expected);
        }
    }

    #[test]
    fn a_long_notification_is_decrypted_block_by_block() {
        let mut data = cipher("BM6", "d155070019005004f600000000000000");
        data.extend(cipher("BM6", "d155010d0a0b0c000000000000000000"));
        data.extend(cipher("BM6", "d155070105023204e200000000000000"));
        data.extend([1, 2, 3]);
        let out = decode_notification(bm("BM6"), Source::Gatt, any(), &data);
        assert_eq!(out.len(), 4);
        let (plain, first) = out[0].clone().unwrap();
        assert_eq!(to_hex(&plain), "d155070019005004f600000000000000");
        assert_eq!(reading(first).voltage, Some(12.7));
        assert_eq!(
            out[1].clone().unwrap().1,
            Decoded::NotReading(FrameKind::Version)
        );
        assert_eq!(reading(out[2].clone().unwrap().1).voltage, Some(12.5));
        let partial = DecodeError::Length {
            got: 3,
            expected: 16,
        };
        assert_eq!(out[3].clone().unwrap_err(), partial);
        // 16 bytes or fewer, and other sources: exactly one outcome.
        let one = decode_notification(bm("BM6"), Source::Gatt, any(), &data[..16]);
        assert_eq!(one.len(), 1);
        let advert = decode_notification(bm("BM6"), Source::Advertisement, any(), &data);
        assert_eq!(advert.len(), 1);
    }

    #[test]
    fn ibeacon_vector_gives_the_soc_and_no_voltage() {
        let value = parse_hex("0215655f83caae16a10a702e31f30d58dd82f441423144").unwrap();
        let (raw, d) = decode_frame(bm("BM2"), Source::Ibeacon, any(), &value).unwrap();
        assert_eq!(raw, value);
        let m = reading(d);
        assert_eq!((m.voltage, m.state_of_charge), (None, Some(68.0)));
        assert_eq!((m.temperature, m.state.as_deref()), (None, None));
    }

    #[test]
    fn bm6_ibeacon_soc_is_the_low_byte_of_major() {
        // OpenMQTTGateway issue #1792: the app and the decrypted advert agree on 85 %.
        let value = parse_hex("02153ba29cd9a42c894856badaf2606ef77711550000cd").unwrap();
        let (_, d) = decode_frame(bm("BM6"), Source::Ibeacon, any(), &value).unwrap();
        assert_eq!(reading(d).state_of_charge, Some(85.0));
    }

    #[test]
    fn ibeacon_must_reject() {
        let bm2_value = parse_hex("0215655f83caae16a10a702e31f30d58dd82f441423144").unwrap();
        // Another model's UUID, a non-iBeacon value, a wrong length, a model without iBeacon, SoC > 100.
        let e = decode_frame(bm("BM6"), Source::Ibeacon, any(), &bm2_value);
        assert_eq!(e.unwrap_err(), DecodeError::NotMine);
        let mut not_beacon = bm2_value.clone();
        not_beacon[1] = 0x16;
        let e = decode_frame(bm("BM2"), Source::Ibeacon, any(), &not_beacon);
        assert_eq!(e.unwrap_err(), DecodeError::NotMine);
        let e = decode_frame(bm("BM2"), Source::Ibeacon, any(), &bm2_value[..22]);
        assert_eq!(e.unwrap_err().kind(), "length");
        let e = decode_frame(bm("BM7"), Source::Ibeacon, any(), &bm2_value);
        assert_eq!(e.unwrap_err(), DecodeError::NoAdvertisement);
        let mut too_full = bm2_value;
        too_full[22] = 101;
        let e = decode_frame(bm("BM2"), Source::Ibeacon, any(), &too_full);
        assert_eq!(e.unwrap_err().kind(), "out_of_range");
    }

    #[test]
    fn validation_bounds() {
        let ok = Measurement {
            voltage: Some(12.0),
            temperature: Some(20.0),
            state_of_charge: Some(50.0),
            ..Measurement::default()
        };
        assert_eq!(
            validate(Decoded::Reading(ok.clone())).unwrap(),
            Decoded::Reading(ok.clone())
        );
        for (v, s) in [
            (0.0, 50.0),
            (40.01, 50.0),
            (12.0, 101.0),
            (12.0, -1.0),
            (f64::NAN, 50.0),
        ] {
            let m = Measurement {
                voltage: Some(v),
                state_of_charge: Some(s),
                ..ok.clone()
            };
            assert!(validate(Decoded::Reading(m)).is_err(), "{v} {s}");
        }
        for edge in [(40.0, 0.0), (0.01, 100.0)] {
            let m = Measurement {
                voltage: Some(edge.0),
                state_of_charge: Some(edge.1),
                ..ok.clone()
            };
            assert!(validate(Decoded::Reading(m)).is_ok(), "{edge:?}");
        }
    }

    #[test]
    fn an_implausible_temperature_is_dropped_and_the_voltage_kept() {
        for t in [-41.0, 86.0, 255.0] {
            let m = Measurement {
                voltage: Some(12.6),
                temperature: Some(t),
                ..Measurement::default()
            };
            let kept = reading(validate(Decoded::Reading(m)).unwrap());
            assert_eq!(kept.voltage, Some(12.6));
            assert_eq!(
                (kept.temperature, kept.dropped_temperature),
                (None, Some(t))
            );
        }
        for t in [-40.0, 85.0] {
            let m = Measurement {
                voltage: Some(12.6),
                temperature: Some(t),
                ..Measurement::default()
            };
            assert_eq!(
                reading(validate(Decoded::Reading(m)).unwrap()).temperature,
                Some(t)
            );
        }
    }

    #[test]
    fn byte_five_is_charging_or_not_never_low_voltage() {
        assert_eq!(battery_state(0), "not_charging");
        assert_eq!(battery_state(1), "not_charging");
        assert_eq!(battery_state(2), "charging");
        assert_eq!(battery_state(7), "unknown_7");
        let all = battery_states();
        assert_eq!(all.len(), 255);
        for b in 0..=255u8 {
            assert!(all.contains(&battery_state(b)), "{b}");
        }
        assert!(!all.iter().any(|s| s == "low_voltage" || s == "normal"));
    }

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_hex("d1 55").unwrap(), vec![0xd1, 0x55]);
        assert!(parse_hex("d15").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(to_hex(&[0xd1, 0x05]), "d105");
    }
}
