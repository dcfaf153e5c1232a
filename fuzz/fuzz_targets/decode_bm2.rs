//! Fuzz the BM2 decoder: `cargo fuzz run decode_bm2 fuzz/corpus/decode_bm2` (see README).
#![no_main]

#[path = "decoder.rs"]
mod decoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoder::check("BM2", data));
