//! Properties of extraction over arbitrary input: it never panics, and it accepts exactly the
//! values the README calls well-formed.

use super::*;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn extractor() -> KeyExtractor {
    KeyExtractor {
        sources: vec![
            KeySource::Header(HeaderName::from_static("x-apikey")),
            KeySource::Query("apikey".into()),
        ],
        max_length: 64,
        forward: true,
    }
}

fn well_formed(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= 64 && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

proptest! {
    #[test]
    fn a_header_value_is_a_key_exactly_when_well_formed(value in proptest::collection::vec(any::<u8>(), 0..100)) {
        let Ok(header) = http::HeaderValue::from_bytes(&value) else { return Ok(()) };
        let mut headers = HeaderMap::new();
        headers.insert("x-apikey", header);
        match extractor().extract(&headers, None) {
            Extracted::Key(key) => {
                prop_assert!(well_formed(&value));
                prop_assert_eq!(key.id().to_hex(), hex::encode(Sha256::digest(&value)));
            }
            Extracted::Malformed => prop_assert!(!well_formed(&value)),
            Extracted::Missing => prop_assert!(false, "a present header is never missing"),
        }
    }

    #[test]
    fn any_query_string_is_handled_without_panicking(query in "\\PC{0,200}") {
        let _ = extractor().extract(&HeaderMap::new(), Some(&query));
    }

    #[test]
    fn a_percent_encoded_query_key_decodes_to_itself(key in "[!-~]{1,64}") {
        let encoded: String = key.bytes().map(|b| format!("%{b:02X}")).collect();
        let query = format!("a=1&apikey={encoded}&b=2");
        match extractor().extract(&HeaderMap::new(), Some(&query)) {
            Extracted::Key(found) => prop_assert_eq!(found.id(), ApiKey::from_cli(&key).id()),
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
