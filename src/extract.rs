//! Where the key comes from: the first step of the decision ([`crate::decide`]).
//!
//! The configured sources are looked at in order and the first one present decides. A present
//! but unusable value (empty, too long, not visible ASCII, or two differing values in one
//! source) is malformed: it is refused here and never costs a store read.

use crate::key::ApiKey;
use http::header::{HeaderMap, HeaderName};
use percent_encoding::percent_decode;
use std::borrow::Cow;

/// One place a key may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header, e.g. `X-ApiKey`.
    Header(HeaderName),
    /// A query parameter, e.g. `apikey`, percent-decoded once.
    Query(String),
}

/// What the sources say about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Extracted<'a> {
    Key(ApiKey<'a>),
    Missing,
    Malformed,
}

/// The validated `api_key` section: the sources in order and the longest key accepted.
#[derive(Debug, Clone)]
pub struct KeyExtractor {
    pub sources: Vec<KeySource>,
    pub max_length: usize,
    /// Whether the key travels on to the upstream; when false it is stripped there.
    pub forward: bool,
}

impl KeyExtractor {
    /// Finds the key in `headers` or in `query` (the part of the URI after `?`).
    pub fn extract<'a>(&self, headers: &'a HeaderMap, query: Option<&'a str>) -> Extracted<'a> {
        for source in &self.sources {
            let found = match source {
                KeySource::Header(name) => self.in_header(headers, name),
                KeySource::Query(name) => query.and_then(|q| self.in_query(q, name)),
            };
            if let Some(found) = found {
                return found;
            }
        }
        Extracted::Missing
    }

    fn in_header<'a>(&self, headers: &'a HeaderMap, name: &HeaderName) -> Option<Extracted<'a>> {
        let mut values = headers.get_all(name).iter();
        let first = values.next()?.as_bytes();
        if values.any(|other| other.as_bytes() != first) {
            return Some(Extracted::Malformed);
        }
        Some(self.checked(Cow::Borrowed(first)))
    }

    fn in_query<'a>(&self, query: &'a str, name: &str) -> Option<Extracted<'a>> {
        let mut found: Option<&'a str> = None;
        for pair in query.split('&') {
            let (param, value) = pair.split_once('=').unwrap_or((pair, ""));
            if param != name {
                continue;
            }
            match found {
                Some(earlier) if earlier != value => return Some(Extracted::Malformed),
                _ => found = Some(value),
            }
        }
        let raw = found?;
        // Decoding exactly once is the documented rule: `%2541` is the three bytes `%41`, not `A`.
        Some(self.checked(percent_decode(raw.as_bytes()).into()))
    }

    fn checked<'a>(&self, bytes: Cow<'a, [u8]>) -> Extracted<'a> {
        let visible = |b: &u8| (0x21..=0x7e).contains(b);
        if bytes.is_empty() || bytes.len() > self.max_length || !bytes.iter().all(visible) {
            Extracted::Malformed
        } else {
            Extracted::Key(ApiKey::new(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extractor() -> KeyExtractor {
        KeyExtractor {
            sources: vec![
                KeySource::Header(HeaderName::from_static("x-apikey")),
                KeySource::Query("apikey".into()),
            ],
            max_length: 16,
            forward: true,
        }
    }

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn key(bytes: &[u8]) -> Extracted<'_> {
        Extracted::Key(ApiKey::new(Cow::Borrowed(bytes)))
    }

    #[test]
    fn header_comes_before_query() {
        let h = headers(&[("x-apikey", b"from-header")]);
        assert_eq!(extractor().extract(&h, Some("apikey=from-query")), key(b"from-header"));
        assert_eq!(extractor().extract(&HeaderMap::new(), Some("a=1&apikey=q")), key(b"q"));
    }

    #[test]
    fn nothing_anywhere_is_missing() {
        assert_eq!(extractor().extract(&HeaderMap::new(), None), Extracted::Missing);
        assert_eq!(extractor().extract(&HeaderMap::new(), Some("other=1")), Extracted::Missing);
    }

    #[test]
    fn bad_values_are_malformed() {
        let e = extractor();
        for bad in [&b""[..], b"seventeen-bytes-x", b"has space", b"tab\there", b"\xc3\xa9t\xc3\xa9"] {
            let h = headers(&[("x-apikey", bad)]);
            assert_eq!(e.extract(&h, None), Extracted::Malformed, "{:?}", bad);
        }
        assert_eq!(e.extract(&HeaderMap::new(), Some("apikey=")), Extracted::Malformed);
        assert_eq!(e.extract(&HeaderMap::new(), Some("apikey")), Extracted::Malformed);
        assert_eq!(e.extract(&HeaderMap::new(), Some("apikey=%20x")), Extracted::Malformed);
    }

    #[test]
    fn differing_duplicates_are_malformed_and_equal_ones_are_not() {
        let e = extractor();
        let two = headers(&[("x-apikey", b"aaa"), ("x-apikey", b"bbb")]);
        assert_eq!(e.extract(&two, None), Extracted::Malformed);
        let same = headers(&[("x-apikey", b"aaa"), ("x-apikey", b"aaa")]);
        assert_eq!(e.extract(&same, None), key(b"aaa"));
        assert_eq!(e.extract(&HeaderMap::new(), Some("apikey=a&apikey=b")), Extracted::Malformed);
        assert_eq!(e.extract(&HeaderMap::new(), Some("apikey=a&apikey=a")), key(b"a"));
    }

    #[test]
    fn query_values_are_decoded_exactly_once() {
        let e = extractor();
        assert_eq!(e.extract(&HeaderMap::new(), Some("apikey=ab%2Dc")), key(b"ab-c"));
        assert_eq!(e.extract(&HeaderMap::new(), Some("apikey=%2541")), key(b"%41"));
    }
}

#[cfg(test)]
mod proptests;
