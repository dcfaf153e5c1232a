//! Battery Hawk: a gateway from Bluetooth LE 12 V battery monitors (Leagend BM2/BM6/BM7) to MQTT.
//!
//! The pipeline, one named thread per stage, joined by bounded channels carrying the plain data enums of
//! [`messages`]: [`ble`] hears monitors and emits encrypted frames → [`decode`] turns frames into readings
//! with the pure decoders of [`devices`] → [`fleet`] keeps device and vehicle state and decides what to
//! publish → [`mqtt`] renders topics and JSON, holds the outbox and talks to the broker. [`pipeline`] wires
//! them; [`config`] and [`logging`] serve the binary's `main`.

pub mod backoff;
pub mod ble;
pub mod config;
pub mod decode;
pub mod devices;
pub mod fleet;
pub mod history_report;
pub mod logging;
pub mod mac;
pub mod messages;
pub mod mqtt;
pub mod pipeline;
