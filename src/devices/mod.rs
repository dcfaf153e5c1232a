//! Device knowledge: what each monitor model sends and how to turn its bytes into a measurement.
//!
//! Owns: the [`Monitor`] trait, one file per model, the registry [`ALL`], AES framing ([`crypto`]) and the
//! validation rules of SPEC §5.5. Everything here is a pure function of its input: no I/O, no clocks,
//! no threads, no JSON, no topics. Adding a model means one new file and one line in [`ALL`].

pub mod crypto;

mod bm2;
mod bm6;
mod bm7;
pub mod history;

use crate::mac::Mac;
use std::fmt;

/// The registry: every supported model, in the order detection tries them.
pub const ALL: &[&dyn Monitor] = &[&bm2::Bm2, &bm6::Bm6, &bm7::Bm7];

/// GATT service and characteristics shared by the whole Leagend family.
pub const SERVICE_UUID: &str = "0000fff0-0000-1000-8000-00805f9b34fb";
pub const WRITE_UUID: &str = "0000fff3-0000-1000-8000-00805f9b34fb";
pub const NOTIFY_UUID: &str = "0000fff4-0000-1000-8000-00805f9b34fb";

/// One monitor model: its key, how it announces itself, and how its frames decode and encode.
pub trait Monitor: Sync {
    /// Model name as it appears in config and payloads (`BM6`).
    fn name(&self) -> &'static str;
    /// The AES-128 key of the model.
    fn key(&self) -> &'static [u8; 16];
    /// Names the model advertises under.
    fn advertised_names(&self) -> &'static [&'static str];
    /// The iBeacon UUID in its Apple manufacturer data, where known.
    fn ibeacon_uuid(&self) -> Option<&'static str>;
    /// Whether readings carry a temperature.
    fn measures_temperature(&self) -> bool;
    /// Plaintext to write to `fff3` to ask for a reading; `None` when the model streams unasked.
    fn gatt_request(&self) -> Option<[u8; 16]>;
    /// Decode a decrypted GATT notification.
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

/// Where a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A notification on `fff4` over a connection.
    Gatt,
    /// An encrypted manufacturer-data advertisement.
    Advertisement,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Gatt => "gatt",
            Source::Advertisement => "advertisement",
        }
    }
}

/// What a monitor measured. `None` means the frame does not carry the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub voltage: f64,
    pub temperature: Option<f64>,
    pub state_of_charge: Option<f64>,
    /// Battery state reported by the monitor (`normal`, `low_voltage`, `charging`, `unknown_<n>`).
    pub state: Option<String>,
    /// Model-specific counters and codes, published under `extra` by name.
    pub counters: Vec<(&'static str, i64)>,
}

/// The outcome of decoding one frame that decrypted to this model's format.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Reading(Measurement),
    /// The monitor echoed our request: not a reading, not an error.
    Echo,
    /// A firmware version reply: not a reading.
    Version,
}

/// Why a frame did not give a reading. Every variant is "bad data" (SPEC §2.2 code 1005).
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// Not 16 bytes (the length seen).
    Length(usize),
    /// Decrypted to something that is not this model's frame (wrong key or model, or corrupt).
    NotMine,
    /// An advertisement whose embedded address is not the sender's.
    WrongAddress,
    /// A value outside SPEC §5.5's plausible range.
    OutOfRange { field: &'static str, value: f64 },
    /// The model does not broadcast readings.
    NoAdvertisement,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length(n) => write!(f, "frame is {n} bytes, expected 16"),
            DecodeError::NotMine => write!(f, "frame does not decrypt to this model's format"),
            DecodeError::WrongAddress => {
                write!(f, "advertisement carries another device's address")
            }
            DecodeError::OutOfRange { field, value } => {
                write!(f, "{field} {value} is outside the plausible range")
            }
            DecodeError::NoAdvertisement => {
                write!(f, "this model does not broadcast readings")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decrypt `ciphertext` with `model`'s key and decode it. Returns the plaintext too (for `raw_data`).
pub fn decode_frame(
    model: Model,
    source: Source,
    mac: Mac,
    ciphertext: &[u8],
) -> Result<([u8; 16], Decoded), DecodeError> {
    let block: &[u8; 16] = ciphertext
        .try_into()
        .map_err(|_| DecodeError::Length(ciphertext.len()))?;
    let plain = crypto::decrypt(model.key(), block);
    let decoded = match source {
        Source::Gatt => model.decode_gatt(&plain)?,
        Source::Advertisement => model.decode_advert(&plain, mac)?,
    };
    if let Decoded::Reading(m) = &decoded {
        validate(m)?;
    }
    Ok((plain, decoded))
}

/// Encrypt a frame as `model` would send it (the simulated monitors use this).
pub fn encrypt_frame(model: Model, plain: &[u8; 16]) -> [u8; 16] {
    crypto::encrypt(model.key(), plain)
}

/// The model whose decrypted advertisement carries `mac` (SPEC §5.3: the decisive test).
pub fn identify_by_advert(mac: Mac, frame: &[u8]) -> Option<Model> {
    ALL.iter()
        .map(|m| Model(*m))
        .find(|m| decode_frame(*m, Source::Advertisement, mac, frame).is_ok())
}

/// The model an advertised name suggests (weaker than [`identify_by_advert`]).
pub fn identify_by_name(name: &str) -> Option<Model> {
    ALL.iter()
        .find(|m| m.advertised_names().contains(&name))
        .map(|m| Model(*m))
}

/// Rebuild the 16-byte advertisement frame from BlueZ's manufacturer data entry (SPEC §5.4): the first two
/// frame bytes became the company id, little-endian. `None` when the value is not 14 bytes.
pub fn advert_frame(company_id: u16, value: &[u8]) -> Option<[u8; 16]> {
    let mut frame = [0u8; 16];
    frame[0..2].copy_from_slice(&company_id.to_le_bytes());
    frame
        .get_mut(2..)?
        .copy_from_slice(value.get(..14).filter(|_| value.len() == 14)?);
    Some(frame)
}

/// Apple's company id, under which iBeacon data comes.
const APPLE: u16 = 76;

/// Which model a device is, from what it advertises: an encrypted advertisement carrying its own address
/// decides (SPEC §5.3); else the iBeacon UUID; else the advertised name. `None`: not a monitor we know.
pub fn classify(mac: Mac, name: Option<&str>, manufacturer: &[(u16, Vec<u8>)]) -> Option<Model> {
    let by_advert = manufacturer
        .iter()
        .filter_map(|(cid, v)| advert_frame(*cid, v))
        .find_map(|f| identify_by_advert(mac, &f));
    let by_beacon = || {
        manufacturer
            .iter()
            .filter(|(cid, v)| *cid == APPLE && v.len() >= 18 && v[0..2] == [0x02, 0x15])
            .find_map(|(_, v)| {
                let uuid = to_hex(&v[2..18]);
                ALL.iter()
                    .find(|m| m.ibeacon_uuid().is_some_and(|u| u.replace('-', "") == uuid))
                    .map(|m| Model(*m))
            })
    };
    by_advert
        .or_else(by_beacon)
        .or_else(|| name.and_then(identify_by_name))
}

/// The reading an advertisement carries, if it is `model`'s and from `mac`.
pub fn advert_reading(model: Model, mac: Mac, manufacturer: &[(u16, Vec<u8>)]) -> Option<[u8; 16]> {
    manufacturer
        .iter()
        .filter_map(|(cid, v)| advert_frame(*cid, v))
        .find(|f| decode_frame(model, Source::Advertisement, mac, f).is_ok())
}

/// SPEC §5.5: 0 < V ≤ 40, −40 ≤ T ≤ 85 °C, 0 ≤ SoC ≤ 100.
fn validate(m: &Measurement) -> Result<(), DecodeError> {
    let out = |field, value| Err(DecodeError::OutOfRange { field, value });
    if !(m.voltage > 0.0 && m.voltage <= 40.0) {
        return out("voltage", m.voltage);
    }
    if let Some(t) = m.temperature
        && !(-40.0..=85.0).contains(&t)
    {
        return out("temperature", t);
    }
    if let Some(s) = m.state_of_charge
        && !(0.0..=100.0).contains(&s)
    {
        return out("state_of_charge", s);
    }
    Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY: &str = "00:00:00:00:00:00";

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
        let bm6 = Model::by_name("BM6").unwrap();
        for len in [0, 1, 15, 17, 32] {
            let r = decode_frame(bm6, Source::Gatt, ANY.parse().unwrap(), &vec![0u8; len]);
            assert_eq!(r.unwrap_err(), DecodeError::Length(len));
        }
    }

    #[test]
    fn adverts_identify_their_model_by_the_embedded_address() {
        let bm2 = parse_hex("e18911ed76d18e5ba793d5574f205b61").unwrap();
        let bm6 = parse_hex("ee6e22884c11f151c1760465b2fe9003").unwrap();
        let m = identify_by_advert("50:54:7B:22:2F:20".parse().unwrap(), &bm2).unwrap();
        assert_eq!(m.name(), "BM2");
        let m = identify_by_advert("38:3B:26:B5:30:AB".parse().unwrap(), &bm6).unwrap();
        assert_eq!(m.name(), "BM6");
        assert!(identify_by_advert("38:3B:26:B5:30:AC".parse().unwrap(), &bm6).is_none());
    }

    #[test]
    fn classification_from_adverts_beacons_and_names() {
        let mac: Mac = "38:3B:26:B5:30:AB".parse().unwrap();
        let f = parse_hex("ee6e22884c11f151c1760465b2fe9003").unwrap();
        let mfr = vec![(u16::from_le_bytes([f[0], f[1]]), f[2..].to_vec())];
        assert_eq!(
            classify(mac, Some("Battery Monitor"), &mfr).unwrap().name(),
            "BM6"
        );
        assert!(advert_reading(Model::by_name("BM6").unwrap(), mac, &mfr).is_some());
        assert!(advert_reading(Model::by_name("BM2").unwrap(), mac, &mfr).is_none());
        let mut beacon = vec![0x02, 0x15];
        beacon.extend(parse_hex("655f83caae16a10a702e31f30d58dd82").unwrap());
        beacon.extend([0, 0, 0, 0, 0xc5]);
        assert_eq!(classify(mac, None, &[(76, beacon)]).unwrap().name(), "BM2");
        assert_eq!(classify(mac, Some("BM7"), &[]).unwrap().name(), "BM7");
        assert!(classify(mac, Some("Mi Band"), &[(76, vec![1, 2, 3])]).is_none());
        assert!(advert_frame(1, &[0; 13]).is_none());
    }

    #[test]
    fn names_suggest_models() {
        assert_eq!(identify_by_name("ZX-1689").unwrap().name(), "BM2");
        assert_eq!(identify_by_name("Battery Guard").unwrap().name(), "BM6");
        assert!(identify_by_name("Mi Band").is_none());
    }

    #[test]
    fn validation_bounds() {
        let ok = Measurement {
            voltage: 12.0,
            temperature: Some(20.0),
            state_of_charge: Some(50.0),
            state: None,
            counters: vec![],
        };
        assert!(validate(&ok).is_ok());
        for (v, t, s) in [
            (0.0, 20.0, 50.0),
            (40.01, 20.0, 50.0),
            (12.0, -41.0, 50.0),
            (12.0, 86.0, 50.0),
            (12.0, 20.0, 101.0),
            (f64::NAN, 20.0, 50.0),
        ] {
            let m = Measurement {
                voltage: v,
                temperature: Some(t),
                state_of_charge: Some(s),
                ..ok.clone()
            };
            assert!(validate(&m).is_err(), "{v} {t} {s}");
        }
    }

    #[test]
    fn hex_parsing() {
        assert_eq!(parse_hex("d1 55").unwrap(), vec![0xd1, 0x55]);
        assert!(parse_hex("d15").is_err());
        assert!(parse_hex("zz").is_err());
        assert_eq!(to_hex(&[0xd1, 0x05]), "d105");
    }
}
