//! Fuzz the BM6 decoder: `cargo fuzz run decode_bm6 fuzz/corpus/decode_bm6` (see README).
#![no_main]

#[path = "decoder.rs"]
mod decoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoder::check("BM6", data));
