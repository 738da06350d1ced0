//! The gateway's decision for one request, shared by the proxy and the auth listener: extract
//! the key, look it up, apply the limits. It sees only what a request carries (headers, the
//! query string, the peer's address), so both listeners decide alike.

use crate::answer::Rejection;
use crate::client_ip::limit_key;
use crate::extract::Extracted;
use crate::gateway::Gateway;
use crate::grant::Grant;
use crate::limit::{Allowance, KeyRefusal};
use crate::lookup::{LookupError, Verdict};
use crate::settings::Settings;
use http::HeaderMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// What a request carries that the decision reads.
pub struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    /// The query string, where a query key may be.
    pub query: Option<&'a str>,
    /// The connecting peer; loopback for a unix-socket peer (a local nginx).
    pub peer: IpAddr,
    /// When the request began: the cache judges its entries' age by it.
    pub now: Instant,
}

/// A request allowed through.
pub struct Admitted {
    /// The key's grant, which the request is forwarded under.
    pub grant: Arc<Grant>,
    /// What it leaves of the key's limit, for the `RateLimit-*` headers.
    pub allowance: Allowance,
}

/// The grant to forward the request under, or why not, by the `settings` the request loaded.
pub async fn decide(
    gateway: &Gateway,
    settings: &Settings,
    request: &RequestFacts<'_>,
) -> Result<Admitted, Rejection> {
    let client = || limit_key(settings.client_address.resolve(request.peer, request.headers));
    // Requests without a usable key are charged to their client's address. Limiters are
    // charged at an instant already read (`at`): the request's start, or the end of the store
    // read it waited for.
    let charge = |at| settings.ip_limiter.check_at(client(), at).map_err(Rejection::RateLimited);
    let id = match settings.config.api_key.extract(request.headers, request.query) {
        Extracted::Key(key) => key.id(),
        Extracted::Missing => return Err(charge(request.now).err().unwrap_or(Rejection::MissingKey)),
        Extracted::Malformed => return Err(charge(request.now).err().unwrap_or(Rejection::MalformedKey)),
    };
    let mut at = request.now;
    let (lookup, stored) = (&gateway.lookup, &settings.lookup);
    let (verdict, charged) = match lookup.cached_at(stored, &id, request.now.into()) {
        Some(verdict) => (verdict, false),
        None if lookup.filter_excludes(&id) => (Verdict::Unknown, false),
        None => {
            // A store read follows. While the filter cannot answer, any key may be junk: it is
            // charged first, so junk costs its sender, not Redis. While it can, the key is most
            // likely valid and is not charged (only a key found unknown is, below), but an
            // address already refused stays refused: the filter's rare false positives cannot
            // work the store for it either.
            let charged = !lookup.filter_answers();
            if charged {
                charge(at)?;
            } else {
                settings.ip_limiter.refusing(client()).map_err(Rejection::RateLimited)?;
            }
            let verdict = lookup.fetch(stored, id).await.map_err(|e| match e {
                LookupError::Unavailable => Rejection::StoreUnavailable,
                LookupError::Overloaded => Rejection::Overloaded,
            })?;
            // The read may have taken a while: a charge after it (per key or per address) is at
            // the time it ended.
            at = Instant::now();
            (verdict, charged)
        }
    };
    match verdict {
        Verdict::Known(grant) if !grant.is_enabled() => Err(Rejection::DisabledKey),
        Verdict::Known(grant) => match grant.limiter.check_at(at) {
            Ok(allowance) => Ok(Admitted { grant, allowance }),
            Err(KeyRefusal::Rate(limited)) => Err(Rejection::RateLimited(limited)),
            Err(KeyRefusal::Quota(exhausted)) => Err(Rejection::QuotaExceeded(exhausted)),
        },
        Verdict::Unknown if charged => Err(Rejection::UnknownKey),
        Verdict::Unknown => Err(charge(at).err().unwrap_or(Rejection::UnknownKey)),
    }
}
