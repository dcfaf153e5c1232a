//! Bluetooth device addresses: parsing any common spelling, printing the one canonical form
//! (`AA:BB:CC:DD:EE:FF`) that topics, payloads and the registry use.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Bluetooth address, most significant byte first (as printed).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a MAC address (expected six hex pairs, e.g. AA:BB:CC:DD:EE:FF)",
            self.0
        )
    }
}

impl std::error::Error for BadMac {}

impl FromStr for Mac {
    type Err = BadMac;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF` and `aabbccddeeff`.
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let bad = || BadMac(s.to_string());
        let trimmed = s.trim();
        let hex: String = if trimmed.len() == 12 {
            trimmed.to_string()
        } else {
            let parts: Vec<&str> = trimmed.split([':', '-']).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return Err(bad());
            }
            parts.concat()
        };
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand: it is in every topic and payload, and `write!` with six `{:02X}` is slow.
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            out[3 * i] = HEX[usize::from(b >> 4)];
            out[3 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_every_spelling() {
        for s in [
            "aa:bb:cc:dd:ee:ff",
            "AA-BB-CC-DD-EE-FF",
            "aabbccddeeff",
            " Aa:bB:cc:DD:ee:FF ",
        ] {
            assert_eq!(s.parse::<Mac>().unwrap().to_string(), "AA:BB:CC:DD:EE:FF");
        }
        let every_digit = Mac([0x01, 0x23, 0x45, 0x67, 0x89, 0xab]);
        assert_eq!(every_digit.to_string(), "01:23:45:67:89:AB");
    }

    #[test]
    fn rejects_what_is_not_six_hex_pairs() {
        for s in [
            "",
            "AA:BB:CC:DD:EE",
            "AA:BB:CC:DD:EE:FF:00",
            "GG:BB:CC:DD:EE:FF",
            "A:BB:CC:DD:EE:FFF",
            "+abbccddeeff",
            "aabbccddeefg",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s} accepted");
        }
    }
}
