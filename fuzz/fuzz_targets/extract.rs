//! Key extraction over arbitrary header values and query strings: never a panic, and a key
//! only when it is well formed.
#![no_main]

use keygate::extract::{Extracted, KeyExtractor, KeySource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let extractor = KeyExtractor {
        sources: vec![
            KeySource::Header(http::HeaderName::from_static("x-apikey")),
            KeySource::Query("apikey".into()),
        ],
        max_length: 128,
        forward: true,
    };
    let (header, query) = data.split_at(data.len() / 2);
    let mut headers = http::HeaderMap::new();
    for value in header.split(|b| *b == b'\n') {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            headers.append("x-apikey", value);
        }
    }
    let query = String::from_utf8_lossy(query);
    if let Extracted::Key(key) = extractor.extract(&headers, Some(&query)) {
        let _ = key.id();
    }
});
