//! The gateway's own answers: every rejection of the README's answer table, with its status, JSON
//! body and `Retry-After`; and the `RateLimit-*` headers an admitted request's answer carries.
//!
//! Before answering, a small request body is read and thrown away (`edge::drain_body`), so the
//! client keeps its connection.

use crate::edge;
use crate::limit::{Allowance, Exhausted, Limited};
use crate::metrics::Outcome;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::LazyLock;
use std::time::Duration;

/// The longest a rejection waits for the request body.
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);
/// What a 503 asks the client to wait: store trouble is usually over in about a second.
const RETRY_AFTER_UNAVAILABLE: u64 = 1;

/// Why the gateway answers a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MissingKey,
    MalformedKey,
    UnknownKey,
    DisabledKey,
    RateLimited(Limited),
    QuotaExceeded(Exhausted),
    StoreUnavailable,
    Overloaded,
}

impl Rejection {
    pub fn status(self) -> u16 {
        match self {
            Rejection::MissingKey | Rejection::MalformedKey => 401,
            Rejection::UnknownKey | Rejection::DisabledKey => 403,
            Rejection::RateLimited(_) | Rejection::QuotaExceeded(_) => 429,
            Rejection::StoreUnavailable | Rejection::Overloaded => 503,
        }
    }

    /// The error code, as in the body.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::MissingKey => "missing_api_key",
            Rejection::MalformedKey => "malformed_api_key",
            Rejection::UnknownKey => "unknown_api_key",
            Rejection::DisabledKey => "disabled_api_key",
            Rejection::RateLimited(_) => "rate_limited",
            Rejection::QuotaExceeded(_) => "quota_exceeded",
            Rejection::StoreUnavailable => "key_store_unavailable",
            Rejection::Overloaded => "overloaded",
        }
    }

    /// The JSON body; static, so a rejection allocates nothing for it.
    pub fn body(self) -> &'static str {
        match self {
            Rejection::MissingKey => r#"{"error":"missing_api_key"}"#,
            Rejection::MalformedKey => r#"{"error":"malformed_api_key"}"#,
            Rejection::UnknownKey => r#"{"error":"unknown_api_key"}"#,
            Rejection::DisabledKey => r#"{"error":"disabled_api_key"}"#,
            Rejection::RateLimited(_) => r#"{"error":"rate_limited"}"#,
            Rejection::QuotaExceeded(_) => r#"{"error":"quota_exceeded"}"#,
            Rejection::StoreUnavailable => r#"{"error":"key_store_unavailable"}"#,
            Rejection::Overloaded => r#"{"error":"overloaded"}"#,
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            Rejection::MissingKey => Outcome::MissingKey,
            Rejection::MalformedKey => Outcome::MalformedKey,
            Rejection::UnknownKey => Outcome::UnknownKey,
            Rejection::DisabledKey => Outcome::DisabledKey,
            Rejection::RateLimited(_) => Outcome::RateLimited,
            Rejection::QuotaExceeded(_) => Outcome::QuotaExceeded,
            Rejection::StoreUnavailable => Outcome::StoreUnavailable,
            Rejection::Overloaded => Outcome::Overloaded,
        }
    }

    pub fn retry_after(self) -> Option<u64> {
        match self {
            Rejection::RateLimited(limited) => Some(limited.retry_after),
            Rejection::QuotaExceeded(exhausted) => Some(exhausted.retry_after),
            Rejection::StoreUnavailable | Rejection::Overloaded => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        }
    }

    /// The answer's header. Built field by field at every rejection (a `ResponseHeader` is
    /// consumed by the answer), but from values made once: nothing is formatted for it.
    pub fn response_header(self) -> ResponseHeader {
        let content_type = HeaderValue::from_static("application/json");
        let content_length = number(self.body().len() as u64);
        // A 401 or 403 has only fields whose names Pingora writes in their usual case itself,
        // so it keeps no second map of names' case (two allocations fewer). Two fields more
        // come: Pingora's `Date` and `Connection`.
        let Some(retry_after) = self.retry_after() else {
            let mut headers = HeaderMap::with_capacity(4);
            headers.insert(CONTENT_TYPE, content_type);
            headers.insert(CONTENT_LENGTH, content_length);
            let mut parts = http::Response::new(()).into_parts().0;
            parts.status = StatusCode::from_u16(self.status()).expect("a valid status");
            parts.headers = headers;
            return ResponseHeader::from(parts);
        };
        // `Retry-After` and `RateLimit-*` keep the case they are written in.
        let fields = if self.status() == 429 { 8 } else { 5 };
        let mut header = ResponseHeader::build(self.status(), Some(fields)).expect("valid status");
        let _ = header.insert_header(CONTENT_TYPE, content_type);
        let _ = header.insert_header(CONTENT_LENGTH, content_length);
        let _ = header.insert_header("Retry-After", number(retry_after));
        // The IETF RateLimit header fields draft: what the limit is and when it resets.
        let spent = match self {
            Rejection::RateLimited(limited) => Some((u64::from(limited.burst), limited.retry_after)),
            Rejection::QuotaExceeded(exhausted) => Some((exhausted.quota, exhausted.retry_after)),
            _ => None,
        };
        if let Some((limit, reset)) = spent {
            for (name, value) in rate_limit_headers(Allowance { limit, remaining: 0, reset }) {
                let _ = header.insert_header(name, value);
            }
        }
        header
    }
}

/// Numbers below this are formatted once, at start: most `RateLimit-*` values are small, and
/// a forwarded response then carries its three headers without formatting or allocating.
const PREFORMATTED: u64 = 4096;

/// The header value of `n`: shared for a small number, formatted for a larger one.
fn number(n: u64) -> HeaderValue {
    static SMALL: LazyLock<Vec<HeaderValue>> =
        LazyLock::new(|| (0..PREFORMATTED).map(HeaderValue::from).collect());
    match SMALL.get(n as usize) {
        Some(value) if n < PREFORMATTED => value.clone(),
        _ => HeaderValue::from(n),
    }
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` for `allowance`: on a forwarded response, the
/// auth listener's 204 (for nginx's `auth_request_set`) and a 429.
pub fn rate_limit_headers(allowance: Allowance) -> [(&'static str, HeaderValue); 3] {
    [
        ("RateLimit-Limit", number(allowance.limit)),
        ("RateLimit-Remaining", number(allowance.remaining)),
        ("RateLimit-Reset", number(allowance.reset)),
    ]
}

/// Answers `rejection` on a proxied request, keeping the connection open where it can.
pub async fn reject(session: &mut Session, rejection: Rejection) -> pingora::Result<()> {
    edge::drain_body(session, DRAIN_DEADLINE).await;
    session.write_response_header(Box::new(rejection.response_header()), false).await?;
    session.write_response_body(Some(Bytes::from_static(rejection.body().as_bytes())), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_matches_the_answer_table() {
        let cases = [
            (Rejection::MissingKey, 401, "missing_api_key", None),
            (Rejection::MalformedKey, 401, "malformed_api_key", None),
            (Rejection::UnknownKey, 403, "unknown_api_key", None),
            (Rejection::DisabledKey, 403, "disabled_api_key", None),
            (Rejection::RateLimited(Limited { retry_after: 3, burst: 9 }), 429, "rate_limited", Some(3)),
            (
                Rejection::QuotaExceeded(Exhausted { retry_after: 7, quota: 300 }),
                429,
                "quota_exceeded",
                Some(7),
            ),
            (Rejection::StoreUnavailable, 503, "key_store_unavailable", Some(1)),
            (Rejection::Overloaded, 503, "overloaded", Some(1)),
        ];
        for (rejection, status, code, retry_after) in cases {
            assert_eq!(rejection.status(), status);
            assert_eq!(rejection.body(), format!(r#"{{"error":"{code}"}}"#));
            assert_eq!(rejection.code(), code);
            assert_eq!(rejection.retry_after(), retry_after);
            let header = rejection.response_header();
            assert_eq!(header.status, status);
            assert_eq!(header.headers["content-type"], "application/json");
            assert_eq!(header.headers["content-length"], rejection.body().len().to_string().as_str());
            let retry =
                header.headers.get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(retry, retry_after);
            assert_eq!(header.headers.get("ratelimit-limit").is_some(), status == 429);
        }
        let quota = Rejection::QuotaExceeded(Exhausted { retry_after: 7, quota: 300 }).response_header();
        assert_eq!(quota.headers["ratelimit-limit"], "300");
        assert_eq!(quota.headers["ratelimit-remaining"], "0");
        assert_eq!(quota.headers["ratelimit-reset"], "7");
    }

    #[test]
    fn numbers_are_written_alike_shared_or_formatted() {
        for n in [0, 1, 4095, 4096, 86_400, u64::MAX] {
            assert_eq!(number(n), n.to_string().as_str());
        }
    }
}
