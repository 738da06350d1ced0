//! Key extraction over arbitrary header values and query strings: never a panic, and a key
//! only when it is well formed. The answer is checked against the rules worked out here,
//! apart from the code under test: the first source present decides; a header's values must
//! all be equal, and so must the query's `apikey` values, decoded once; a key is 1 to 128
//! visible ASCII bytes.
#![no_main]

use keygate::extract::{Extracted, KeyExtractor, KeySource};
use keygate::key::ApiKey;
use libfuzzer_sys::fuzz_target;

const MAX_LENGTH: usize = 128;

fn well_formed(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= MAX_LENGTH && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// `%XX` (two hex digits) decoded once; any other `%` kept as it is.
fn decoded_once(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let escape = match raw.get(i..i + 3) {
            Some(&[b'%', high, low]) => hex(high).zip(hex(low)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escape {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(raw[i]);
                i += 1;
            }
        }
    }
    out
}

/// What the documented rules say the input holds.
enum Expected {
    Key(Vec<u8>),
    Malformed,
    Missing,
}

/// What `values` (every value the deciding source holds, in order) amount to: the key they
/// agree on, or malformed.
fn judged(values: &[Vec<u8>]) -> Expected {
    let first = &values[0];
    if values.iter().any(|v| v != first) || !well_formed(first) {
        return Expected::Malformed;
    }
    Expected::Key(first.clone())
}

fuzz_target!(|data: &[u8]| {
    let extractor = KeyExtractor {
        sources: vec![
            KeySource::Header(http::HeaderName::from_static("x-apikey")),
            KeySource::Query("apikey".into()),
        ],
        max_length: MAX_LENGTH,
        forward: true,
    };
    let (header, query) = data.split_at(data.len() / 2);
    let mut headers = http::HeaderMap::new();
    let mut header_values = Vec::new();
    for value in header.split(|b| *b == b'\n') {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            header_values.push(value.as_bytes().to_vec());
            headers.append("x-apikey", value);
        }
    }
    let query = String::from_utf8_lossy(query);
    // Two equal raw values are one key; two differing ones are malformed, even if they decode
    // to the same bytes.
    let raw_query_values: Vec<&str> = query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == "apikey").then_some(value)
        })
        .collect();

    let expected = if !header_values.is_empty() {
        judged(&header_values)
    } else if let Some(first) = raw_query_values.first() {
        if raw_query_values.iter().any(|v| v != first) {
            Expected::Malformed
        } else {
            judged(&[decoded_once(first.as_bytes())])
        }
    } else {
        Expected::Missing
    };

    match (extractor.extract(&headers, Some(&query)), expected) {
        (Extracted::Key(key), Expected::Key(bytes)) => {
            // A well-formed key is visible ASCII, so valid UTF-8.
            let text = std::str::from_utf8(&bytes).expect("a well-formed key is ASCII");
            assert!(key.id() == ApiKey::from_cli(text).id(), "extracted a key other than the one sent");
        }
        (Extracted::Key(_), _) => panic!("a key was extracted where none is well formed"),
        (Extracted::Malformed, Expected::Malformed) | (Extracted::Missing, Expected::Missing) => {}
        (Extracted::Malformed, _) => panic!("malformed, where the rules see a key or none"),
        (Extracted::Missing, _) => panic!("missing, where a source holds a value"),
    }
});
