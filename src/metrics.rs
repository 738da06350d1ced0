//! What is counted: the documented metrics, owned by one struct and registered once.
//!
//! Every labelled child the request path touches is resolved at start into a fixed array indexed
//! by an enum, so counting a request is an atomic add, with no label lookup or allocation. No
//! label ever holds a key, a key id or a client address.
//!
//! Sizes (cache entries, the filter's bits, addresses held, peers' health) are not kept here:
//! each subsystem registers, beside its own code, how to read them at scrape time
//! ([`Metrics::sampled`]).

mod sampled;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};
use sampled::Sampled;
use std::time::Duration;

/// How a request ended: the `outcome` label of `keygate_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    MissingKey,
    MalformedKey,
    UnknownKey,
    DisabledKey,
    RateLimited,
    StoreUnavailable,
    Overloaded,
    UpstreamError,
    QuotaExceeded,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Forwarded,
        Outcome::MissingKey,
        Outcome::MalformedKey,
        Outcome::UnknownKey,
        Outcome::DisabledKey,
        Outcome::RateLimited,
        Outcome::StoreUnavailable,
        Outcome::Overloaded,
        Outcome::UpstreamError,
        Outcome::QuotaExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::MissingKey => "missing_key",
            Outcome::MalformedKey => "malformed_key",
            Outcome::UnknownKey => "unknown_key",
            Outcome::DisabledKey => "disabled_key",
            Outcome::RateLimited => "rate_limited",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::Overloaded => "overloaded",
            Outcome::UpstreamError => "upstream_error",
            Outcome::QuotaExceeded => "quota_exceeded",
        }
    }
}

/// The `result` label of `keygate_cache_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    NegativeHit,
    StaleHit,
    Miss,
}

const CACHE_RESULTS: [&str; 4] = ["hit", "negative_hit", "stale_hit", "miss"];

/// The `result` label of `keygate_store_queries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreResult {
    Found,
    NotFound,
    Error,
    Timeout,
}

const STORE_RESULTS: [&str; 4] = ["found", "not_found", "error", "timeout"];

pub struct Metrics {
    registry: Registry,
    /// `keygate_requests_total` and `keygate_request_seconds`, one child per [`Outcome`] (its
    /// index), and the children of the counters below by their enums: resolved once, so the
    /// request path indexes an array (no label hashing, no lock, no bounds left to a `Vec`).
    requests: [IntCounter; Outcome::ALL.len()],
    request_seconds: [Histogram; Outcome::ALL.len()],
    cache_lookups: [IntCounter; CACHE_RESULTS.len()],
    store_queries: [IntCounter; STORE_RESULTS.len()],
    store_query_seconds: Histogram,
    /// `keygate_config_reloads_total`: ok, then error.
    config_reloads: [IntCounter; 2],
    filter_rejections: IntCounter,
    /// Counted by the access log itself.
    pub access_log_skipped: IntCounter,
    /// `keygate_filter_rebuilds_total`: ok, then error.
    pub(crate) filter_rebuilds: [IntCounter; 2],
    /// Failovers of the Redis store followed (Sentinel's master moved, a cluster replica
    /// promoted): counted by the store that followed them.
    pub(crate) store_failovers: IntCounter,
    /// `keygate_fleet_syncs_total`: ok, then error.
    fleet_syncs: [IntCounter; 2],
}

/// Upper bounds of `keygate_request_seconds`, from half a millisecond to ten seconds.
const REQUEST_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of `keygate_store_query_seconds`: a lookup times out at 50 ms by default.
const STORE_QUERY_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

impl Metrics {
    pub fn new() -> Self {
        let reg = Registrar(Registry::new());
        let requests = reg.counters("keygate_requests_total", "Requests by how they ended.", "outcome");
        let request_seconds = reg.histograms(
            "keygate_request_seconds",
            "Time from request to answer, by outcome.",
            &REQUEST_BUCKETS,
            "outcome",
        );
        let cache_lookups =
            reg.counters("keygate_cache_lookups_total", "Key cache lookups by result.", "result");
        let store_queries =
            reg.counters("keygate_store_queries_total", "Key store queries by result.", "result");
        Metrics {
            requests: Outcome::ALL.map(|o| requests.with_label_values(&[o.as_str()])),
            request_seconds: Outcome::ALL.map(|o| request_seconds.with_label_values(&[o.as_str()])),
            cache_lookups: CACHE_RESULTS.map(|r| cache_lookups.with_label_values(&[r])),
            store_queries: STORE_RESULTS.map(|r| store_queries.with_label_values(&[r])),
            store_query_seconds: reg.histogram(
                "keygate_store_query_seconds",
                "Key store query time.",
                &STORE_QUERY_BUCKETS,
            ),
            config_reloads: reg.by_result("keygate_config_reloads_total", "Config reloads by result."),
            filter_rejections: reg.counter(
                "keygate_filter_rejections_total",
                "Keys answered unknown by the membership filter, without a store query.",
            ),
            access_log_skipped: reg.counter(
                "keygate_access_log_skipped_total",
                "Access log lines not written: rejections sampled out, or dropped on a full queue.",
            ),
            filter_rebuilds: reg
                .by_result("keygate_filter_rebuilds_total", "Membership filter rebuilds by result."),
            store_failovers: reg.counter(
                "keygate_store_failovers_total",
                "Failovers of the Redis key store followed: a new master found and used.",
            ),
            fleet_syncs: reg.by_result(
                "keygate_fleet_syncs_total",
                "Exchanges of the fleet's counters (shared rates, quotas) with the store, by result.",
            ),
            registry: reg.0,
        }
    }

    pub fn request(&self, outcome: Outcome, elapsed: Duration) {
        self.requests[outcome as usize].inc();
        self.request_seconds[outcome as usize].observe(elapsed.as_secs_f64());
    }

    pub fn cache_lookup(&self, result: CacheResult) {
        self.cache_lookups[result as usize].inc();
    }

    pub fn store_query(&self, result: StoreResult, elapsed: Duration) {
        self.store_queries[result as usize].inc();
        self.store_query_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads[usize::from(!ok)].inc();
    }

    pub fn filter_rejection(&self) {
        self.filter_rejections.inc();
    }

    pub fn filter_rebuild(&self, ok: bool) {
        self.filter_rebuilds[usize::from(!ok)].inc();
    }

    pub fn fleet_sync(&self, ok: bool) {
        self.fleet_syncs[usize::from(!ok)].inc();
    }

    /// Registers a metric that `sample` brings up to date at each scrape: how a subsystem
    /// exposes its sizes (see [`Sampled`]). Panics on an invalid or duplicate name, which is
    /// a programming error found at start.
    pub fn sampled<M: Collector + 'static>(
        &self,
        metric: prometheus::Result<M>,
        sample: impl Fn(&M) + Send + Sync + 'static,
    ) {
        let sampled = Sampled::new(metric.expect("a valid metric"), sample);
        self.registry.register(Box::new(sampled)).expect("metric names are unique");
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Makes metrics and registers them as it goes. Every name, help text and label here is a
/// constant, so a failure is a programming error (an invalid or duplicate name): it panics at
/// start, never later.
struct Registrar(Registry);

impl Registrar {
    fn add<C: Collector + Clone + 'static>(&self, metric: prometheus::Result<C>) -> C {
        let metric = metric.expect("a valid metric");
        self.0.register(Box::new(metric.clone())).expect("metric names are unique");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help))
    }

    /// Counters by one label; the caller resolves the children it counts on.
    fn counters(&self, name: &str, help: &str, label: &str) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), &[label]))
    }

    /// The `ok` and `error` children of a counter by `result`, in that order: both exported
    /// from the start, at zero.
    fn by_result(&self, name: &str, help: &str) -> [IntCounter; 2] {
        let counters = self.counters(name, help, "result");
        ["ok", "error"].map(|result| counters.with_label_values(&[result]))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.add(Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())))
    }

    fn histograms(&self, name: &str, help: &str, buckets: &[f64], label: &str) -> HistogramVec {
        self.add(HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &[label]))
    }
}
