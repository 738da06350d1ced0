//! keygate: an API-key edge gateway on Pingora.
//!
//! It sits in front of an ingestion API, rejects requests whose key is missing, malformed,
//! unknown, disabled or over its limit, and forwards the rest. Known *and* unknown keys are
//! cached, so a flood of bogus keys never reaches the key store more than once per key.
//!
//! # Layout
//!
//! The request path, in the order a request meets it:
//!
//! 1. [`connection`]: every accepted connection gets a deadline for its request headers, and a
//!    new one's first request is read whole before Pingora takes it (so a stop or upgrade
//!    never drops it).
//! 2. [`proxy`] (Pingora's `ProxyHttp`, with a chart of the phases) or [`auth`] (nginx's
//!    `auth_request`): the two listeners. Each loads the [`settings`] snapshot once and asks
//!    [`decide`], which runs:
//!    1. [`extract`]: where the key comes from, and what is malformed;
//!       [`key`]: the [`key::ApiKey`] that cannot print itself, and its [`key::KeyId`];
//!    2. [`lookup`]: the [`cache`], else the membership [`filter`], else the [`store`], one
//!       query per key id in flight ([`lookup::flights`]) and a bound on them all
//!       ([`lookup::admission`]); a known key is a [`grant`];
//!    3. [`limit`]: the per-IP limit ([`client_ip`] says whose IP) before a store read or for a
//!       request without a usable key, and the key's own limit last (with `scope: fleet` or a
//!       quota, shared with the other gateways: [`limit::fleet`]).
//! 3. [`answer`]: the gateway's own rejections; or [`upstream`]: which ingestion node a
//!    forwarded request goes to.
//! 4. [`edge`]: what both listeners do at the end (drain a rejected body, count and log the
//!    request): [`metrics`] and [`access_log`].
//!
//! Around it: [`config`] (the YAML and its validation) becomes a [`settings`] snapshot, which
//! [`reload`] rebuilds and swaps on SIGHUP; [`gateway`] builds every stage once and owns the
//! runtime state; [`background`] runs the tasks beside the request path: [`invalidate`]
//! (announcements from Redis), the filter's rebuilds, the per-IP limiter's sweep, the fleet's
//! syncs. [`server`]
//! runs Pingora with [`admin`] (`/metrics`, `/healthz`, `/readyz`); [`cli`] is the command
//! line, [`keys`] manages keys, [`logging`] writes stderr (never a key).
//!
//! Public: what the binary, the fuzz targets and the tests use ([`cli`], [`config`], [`extract`],
//! [`key`], [`logging`]); with the `test-util` feature, [`testing`] exposes the stages to the
//! benchmarks.

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod answer;
pub(crate) mod auth;
pub(crate) mod background;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod client_ip;
pub mod config;
pub(crate) mod connection;
pub(crate) mod decide;
pub(crate) mod edge;
pub mod extract;
pub(crate) mod filter;
pub(crate) mod gateway;
pub(crate) mod grant;
pub(crate) mod invalidate;
pub mod key;
pub(crate) mod keys;
pub(crate) mod limit;
pub mod logging;
pub(crate) mod lookup;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod reload;
pub(crate) mod server;
pub(crate) mod settings;
pub(crate) mod store;
pub(crate) mod upstream;

/// The stages, and a gateway to run the whole decision on, for the benchmarks (`test-util`
/// only; not the library's API).
#[cfg(feature = "test-util")]
pub mod testing {
    pub use crate::cache::KeyCache;
    pub use crate::filter::Bloom;
    pub use crate::grant::{FleetLimits, Grant};
    pub use crate::limit::fleet::Fleet;
    pub use crate::limit::gcra::{Cell, Gcra};
    pub use crate::limit::IpLimiter;
    pub use crate::lookup::{KeyLookup, LookupSettings, Verdict};
    pub use crate::metrics::Metrics;
    pub use crate::store::memory::MemoryStore;
    pub use crate::store::redis::{RedisSettings, RedisStore, ScanPacing};
    pub use crate::store::KeyRecord;
    pub use crate::store::KeyStore;

    pub use crate::answer::Rejection;
    pub use crate::decide::{decide, RequestFacts};
    pub use crate::gateway::Gateway;
    pub use crate::settings::Settings;
    pub use fixture::DecisionFixture;
    mod fixture;
}
