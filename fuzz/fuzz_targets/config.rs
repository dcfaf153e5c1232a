//! Fuzz the configuration parser: any text must give a configuration or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = battery_hawk::config::Config::from_toml(
            text,
            std::path::Path::new("fuzz.toml"),
            Vec::new(),
        );
    }
});
