//! Config text → settings: any text gives settings or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = egressd::config::Settings::parse("fuzz.ron", text)
    {
        let _ = e.to_string();
    }
});
