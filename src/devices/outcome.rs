//! What decoding one frame can come to: a reading, a frame of the model that is not a reading, or an error.

use super::Measurement;
use std::fmt;

/// A frame of the model that is not a reading and not an error (SPEC §5.1, §5.2, §5.7): skipped at debug,
/// never counted as a decode error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// `d1 55 07 ff …`: the monitor echoed the request.
    Echo,
    /// `d1 55 01 …`: firmware version reply.
    Version,
    /// `d1 55 03 …`: cranking test reply.
    CrankingTest,
    /// `d1 55 04 …`: charging test reply.
    ChargingTest,
    /// `d1 55 05 …`: acknowledgement of a history request.
    HistoryHeader,
    /// `d1 55 06 …`: the app's "history end" command.
    HistoryStop,
    /// `d1 55 08 …`: acknowledgement of the app's battery-type table.
    TableAck,
    /// Another `d1 55 NN` command reply: the key is right, the meaning is not established.
    Command(u8),
    /// BM2 `e7 …`: number of stored history samples.
    HistoryCount,
    /// BM2 `ff ff fe …`: history data follows.
    HistoryStart,
    /// BM6/BM7 `ff ff fe …`: end of a cranking curve.
    CrankingEnd,
    /// A block of 4-byte history records (BM6/BM7; SPEC §5.7).
    HistoryData,
    /// `ff fe fe …`: end of a history transfer.
    HistoryEnd,
    /// `fe fe fe …`: the history log is empty.
    HistoryEmpty,
}

impl FrameKind {
    /// Snake-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Echo => "echo",
            FrameKind::Version => "version",
            FrameKind::CrankingTest => "cranking_test",
            FrameKind::ChargingTest => "charging_test",
            FrameKind::HistoryHeader => "history_header",
            FrameKind::HistoryStop => "history_stop",
            FrameKind::TableAck => "table_ack",
            FrameKind::Command(_) => "command",
            FrameKind::HistoryCount => "history_count",
            FrameKind::HistoryStart => "history_start",
            FrameKind::CrankingEnd => "cranking_end",
            FrameKind::HistoryData => "history_data",
            FrameKind::HistoryEnd => "history_end",
            FrameKind::HistoryEmpty => "history_empty",
        }
    }
}

/// The outcome of decoding one frame that decrypted to this model's format.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Reading(Measurement),
    /// Not a reading and not an error.
    NotReading(FrameKind),
}

/// Why a frame did not give a reading. Every variant is "bad data" (SPEC §2.2 code 1005).
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// Not the length the source needs.
    Length { got: usize, expected: usize },
    /// Decrypted to something that is not this model's frame (wrong key or model, or corrupt).
    NotMine,
    /// An advertisement whose embedded address is not the sender's.
    WrongAddress,
    /// A value outside SPEC §5.5's plausible range (or a field byte outside its defined values).
    OutOfRange { field: &'static str, value: f64 },
    /// The model does not broadcast this kind of frame (encrypted advertisement or iBeacon).
    NoAdvertisement,
}

impl DecodeError {
    /// The reason's kind, for per-model, per-reason counting (SPEC §5.5).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Length { .. } => "length",
            DecodeError::NotMine => "not_mine",
            DecodeError::WrongAddress => "wrong_address",
            DecodeError::OutOfRange { .. } => "out_of_range",
            DecodeError::NoAdvertisement => "no_advertisement",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length { got, expected } => {
                write!(f, "frame is {got} bytes, expected {expected}")
            }
            DecodeError::NotMine => write!(f, "frame does not decrypt to this model's format"),
            DecodeError::WrongAddress => {
                write!(f, "advertisement carries another device's address")
            }
            DecodeError::OutOfRange { field, value } => {
                write!(f, "{field} {value} is outside the plausible range")
            }
            DecodeError::NoAdvertisement => {
                write!(f, "this model does not broadcast this kind of frame")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_and_messages() {
        let e = DecodeError::Length {
            got: 3,
            expected: 23,
        };
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            ("length", "frame is 3 bytes, expected 23")
        );
        assert_eq!(DecodeError::NotMine.kind(), "not_mine");
        assert_eq!(DecodeError::WrongAddress.kind(), "wrong_address");
        assert_eq!(DecodeError::NoAdvertisement.kind(), "no_advertisement");
    }
}
