//! The API key and the id it is known by.
//!
//! A key is a secret: [`ApiKey`] holds its bytes but neither `Debug` nor `Display` prints them,
//! so a key cannot reach a log line by accident. Everything past extraction (cache, store,
//! limiter) speaks in [`KeyId`]s, the SHA-256 of the key's bytes, which is also what Redis holds.

use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;

/// A syntactically valid API key, as the client sent it.
///
/// Borrowed from the request where possible: a header value or an un-encoded query value costs
/// no allocation; only a percent-encoded query value is decoded into an owned buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey<'a>(Cow<'a, [u8]>);

impl<'a> ApiKey<'a> {
    /// Wraps bytes already checked by extraction (non-empty, visible ASCII, within length).
    pub(crate) fn new(bytes: Cow<'a, [u8]>) -> Self {
        ApiKey(bytes)
    }

    /// A key given on the command line (`keygate keys add KEY`).
    pub fn from_cli(key: &'a str) -> Self {
        ApiKey(Cow::Borrowed(key.as_bytes()))
    }

    /// The id the store and the cache know this key by.
    pub fn id(&self) -> KeyId {
        KeyId(Sha256::digest(&self.0).into())
    }
}

impl fmt::Debug for ApiKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(MASKED)")
    }
}

impl fmt::Display for ApiKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MASKED")
    }
}

/// The lowercase-hex SHA-256 of a key's bytes, as 32 raw bytes.
///
/// Safe to log: it names a key without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 32]);

impl KeyId {
    /// Parses the 64 lowercase or uppercase hex digits of an id (a store record, an announcement).
    pub fn from_hex(hex_id: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_id.trim(), &mut bytes).ok()?;
        Some(KeyId(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id as the Redis data model writes it: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_the_sha256_of_the_key() {
        let id = ApiKey::from_cli("demo-key-0001").id();
        let expected = hex::encode(Sha256::digest(b"demo-key-0001"));
        assert_eq!(id.to_hex(), expected);
        assert_eq!(KeyId::from_hex(&expected), Some(id));
        assert_eq!(KeyId::from_hex(&expected.to_uppercase()), Some(id));
        assert_eq!(KeyId::from_hex("abc"), None);
    }

    #[test]
    fn a_key_never_prints_itself() {
        let key = ApiKey::from_cli("secret-key-value");
        assert!(!format!("{key:?} {key}").contains("secret"));
    }
}
