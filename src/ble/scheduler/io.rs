//! What goes into the scheduler from the radio (what was heard, how a poll ended), what it remembers from
//! earlier runs, and the actions it asks the radio for. Plain data.

use crate::devices::Model;
use crate::devices::history::{History, Synced};
use crate::mac::Mac;
use crate::messages::{BleEvent, LinkError, RawFrame};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What the radio heard: a device's advertisement, with what BlueZ (or the simulated air) reports of it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub mac: Mac,
    /// When it was received (wall clock, for the stamps of what it becomes: a reading, a sighting).
    pub at: chrono::DateTime<chrono::Utc>,
    pub name: Option<String>,
    pub service_uuids: Vec<String>,
    pub rssi: Option<i16>,
    /// Manufacturer data, company id → value.
    pub manufacturer: Vec<(u16, Vec<u8>)>,
    /// True when `manufacturer` was carried by a change received after the gateway started listening; false
    /// for a value read from BlueZ's cache (which may hold adverts from before the scan: never a reading).
    pub fresh: bool,
}

impl Heard {
    /// `mac` heard at `at`, with nothing else known yet.
    pub fn new(mac: Mac, at: chrono::DateTime<chrono::Utc>) -> Heard {
        Heard {
            mac,
            at,
            name: None,
            service_uuids: Vec::new(),
            rssi: None,
            manufacturer: Vec::new(),
            fresh: false,
        }
    }
}

/// What the gateway remembers of earlier runs (the registry), for a new scheduler.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// Auto-configured monitors: address and model.
    pub auto: Vec<(Mac, Option<Model>)>,
    /// Every address ever known: never auto-configured again.
    pub known: HashSet<Mac>,
    /// Where the last download of each monitor's own log ended.
    pub synced: HashMap<Mac, Synced>,
}

/// A request to download a monitor's own log after the live reading (SPEC §5.7).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryAsk {
    /// Where the last download ended (`None`: never synced: reach back `initial_days`).
    pub last: Option<Synced>,
    pub initial_days: u32,
}

/// How a poll ended: the frames to hand to the decode stage and the outcome.
#[derive(Debug, Clone)]
pub struct PollOutcome {
    /// The reading frame on success; on failure the frames that arrived but were no reading (so that the
    /// decode stage counts them as rejections).
    pub frames: Vec<RawFrame>,
    pub result: Result<(), LinkError>,
    /// The model the link used (it may have learned it from the advertisement).
    pub model: Option<Model>,
    /// The monitor's own log, when it was asked for (what was read before a failure, too).
    pub history: Option<History>,
}

impl PollOutcome {
    /// A poll that ended in `error` with nothing received.
    pub fn failed(model: Option<Model>, error: LinkError) -> PollOutcome {
        PollOutcome {
            frames: Vec::new(),
            result: Err(error),
            model,
            history: None,
        }
    }
}

/// What the radio must do.
#[derive(Debug, Clone)]
pub enum Action {
    StartScan,
    StopScan,
    /// Connect, ask for one reading (and, with `history`, download the monitor's log in the same
    /// connection), disconnect: one attempt, ending in [`Scheduler::poll_done`].
    Poll {
        mac: Mac,
        model: Option<Model>,
        history: Option<HistoryAsk>,
    },
    /// Open a long-lived link that reports every notification through [`Scheduler::stream_frame`] and its end
    /// through [`Scheduler::stream_ended`].
    OpenStream {
        mac: Mac,
        model: Option<Model>,
        interval: Duration,
    },
    CloseStream {
        mac: Mac,
    },
    /// Download the monitor's own log on its open stream link, between two live frames (SPEC §5.7); the
    /// link reports the read through [`Scheduler::stream_history`] and keeps streaming.
    StreamHistory {
        mac: Mac,
        ask: HistoryAsk,
    },
    /// Hand this to the decode stage.
    Emit(BleEvent),
}
