//! Config parsing over arbitrary text: problems are reported, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = keygate::config::Config::parse(text, std::path::Path::new("/etc/keygate"));
    }
});
