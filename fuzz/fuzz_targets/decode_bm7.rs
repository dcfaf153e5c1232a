//! Fuzz the BM7 decoder: `cargo fuzz run decode_bm7 fuzz/corpus/decode_bm7` (see README).
#![no_main]

#[path = "decoder.rs"]
mod decoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoder::check("BM7", data));
