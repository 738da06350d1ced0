//! keygate's integration tests, one crate so the suite links once: each area below starts real
//! processes (a `redis-server` of its own, the demo upstream, the `keygate` binary, nginx) on
//! free ports and checks what a client, the upstream and Redis saw.
//!
//! - [`answers`]: every row of the answer table, and what the upstream receives.
//! - [`config_check`]: `keygate -t` on every shipped config and on a bad one.
//! - [`failover`]: Sentinel and cluster failovers under load refuse no valid key.
//! - [`fleet`]: three gateways on one Redis share a key's rate and quota, within the bound,
//!   through a frozen Redis and a changed record.
//! - [`filter`]: the membership filter keeps a flood of unknown keys away from Redis.
//! - [`hostile`]: hostile input gets a 4xx or a closed connection, never a crash.
//! - [`keys_cli`]: `keygate keys add|revoke|show` against a running gateway.
//! - [`ledger`]: no accepted request is lost while a node dies and Redis freezes.
//! - [`lifecycle`]: stopping and upgrading without losing a request; the shipped unit.
//! - [`metric_promises`]: each metric's type, every outcome timed, no key or key id in a label.
//! - [`nginx`]: keygate beside a real nginx, in both shipped modes.
//! - [`operations`]: reload on SIGHUP, unix-socket listeners.
//! - [`promises`]: expiry, the Redis prefix, `forward: false`, the http health check, the
//!   connect timeout, the default thread count, the auth listener's 503s, guarantee 8 behind
//!   nginx.
//! - [`quickstart`]: the README's quickstart as written.
//! - [`rate_limits`]: per-key and per-address limits from the outside.
//! - [`memory_bounds`]: what clients send cannot grow the gateway without bound.
//! - [`reloads`]: the reloadable settings `operations` does not change, each seen to change.
//! - [`store_faults`]: the store frozen, killed, restarted.
//! - [`store_modes`]: one contract test run on one Redis, a Sentinel group and a cluster.
//! - [`store_shield`]: the store is asked as little as possible.
//! - [`upstream_faults`]: dead, hung and resetting ingestion nodes.
//!
//! [`support`] is the shared harness.

mod support;

mod answers;
mod config_check;
mod failover;
mod filter;
mod fleet;
mod hostile;
mod keys_cli;
mod ledger;
mod lifecycle;
mod memory_bounds;
mod metric_promises;
mod nginx;
mod operations;
mod promises;
mod quickstart;
mod rate_limits;
mod reloads;
mod store_faults;
mod store_modes;
mod store_shield;
mod upstream_faults;
