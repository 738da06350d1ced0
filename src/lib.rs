//! keygate: an API-key edge gateway on Pingora.
//!
//! It sits in front of an ingestion API, rejects requests whose key is missing, malformed,
//! unknown, disabled or over its limit, and forwards the rest. Known *and* unknown keys are
//! cached, so a flood of bogus keys never reaches the key store more than once per key.
//!
//! # Layout
//!
//! The request path, one module per stage ([`proxy`] wires them under a chart of the phases):
//!
//! - [`extract`]: where the key comes from (headers, query), and what is malformed.
//! - [`key`]: the [`key::ApiKey`] that cannot print itself, and the [`key::KeyId`] it is known by.
//! - [`lookup`]: what the cache ([`cache`]), the membership filter ([`filter`]) or else the
//!   store ([`store`]) says about a key id.
//! - [`limit`]: per-key and per-IP rate limits; [`client_ip`] says whose IP.
//! - [`decide`]: the decision itself, shared by [`proxy`] and the nginx [`auth`] listener.
//! - [`answer`]: the gateway's own rejections, as the contract's table says.
//! - [`upstream`]: which ingestion node a forwarded request goes to.
//! - [`metrics`]: what is counted, served by [`admin`]; [`access_log`]: one JSON line a request.
//!
//! Around it: [`config`] (the YAML and its validation), [`invalidate`] (announcements from
//! Redis), [`logging`] (stderr, never a key), [`gateway`] (the shared state), [`reload`] (SIGHUP), [`server`] (the Pingora server), [`cli`] (the
//! command line) and [`keys`] (key management).

pub mod access_log;
pub mod admin;
pub mod answer;
pub mod auth;
pub mod background;
pub mod cache;
pub mod cli;
pub mod client_ip;
pub mod config;
pub(crate) mod connection;
pub mod decide;
pub(crate) mod edge;
pub mod extract;
pub mod filter;
pub mod gateway;
pub mod grant;
pub mod invalidate;
pub mod key;
pub mod keys;
pub mod limit;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod settings;
pub mod store;
pub mod upstream;
