//! The YAML as users write it: one serde type per section, mirroring the contract exactly.
//!
//! Nothing here is validated beyond its shape; [`super::Config`] is what the rest of keygate
//! sees. Every struct denies unknown fields so that a typo is an error, not a silent default.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub peers: Vec<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "defaults::read_timeout_ms")]
    pub read_timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(default = "defaults::health_kind")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "defaults::health_interval_ms")]
    pub interval_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    #[serde(default = "defaults::sources")]
    pub sources: Vec<SourceFile>,
    #[serde(default = "defaults::max_length")]
    pub max_length: usize,
    #[serde(default = "defaults::yes")]
    pub forward: bool,
}

impl Default for ApiKeyFile {
    fn default() -> Self {
        ApiKeyFile { sources: defaults::sources(), max_length: defaults::max_length(), forward: true }
    }
}

/// One entry of `api_key.sources`: `{header: NAME}` or `{query: NAME}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    #[serde(default)]
    pub redis: Option<RedisFile>,
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub url: String,
    #[serde(default = "defaults::prefix")]
    pub prefix: String,
    #[serde(default = "defaults::store_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "defaults::max_inflight")]
    pub max_inflight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    #[serde(default = "defaults::capacity")]
    pub capacity: usize,
    #[serde(default = "defaults::capacity")]
    pub negative_capacity: usize,
    #[serde(default = "defaults::ttl_s")]
    pub ttl_s: u64,
    #[serde(default = "defaults::negative_ttl_s")]
    pub negative_ttl_s: u64,
    #[serde(default = "defaults::stale_s")]
    pub stale_s: u64,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            capacity: defaults::capacity(),
            negative_capacity: defaults::capacity(),
            ttl_s: defaults::ttl_s(),
            negative_ttl_s: defaults::negative_ttl_s(),
            stale_s: defaults::stale_s(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    #[serde(default = "defaults::per_second")]
    pub per_second: f64,
    #[serde(default = "defaults::burst")]
    pub burst: u32,
    #[serde(default)]
    pub unauthenticated_per_ip: Option<RateFile>,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        RateLimitFile {
            per_second: defaults::per_second(),
            burst: defaults::burst(),
            unauthenticated_per_ip: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterFile {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default = "defaults::rebuild_interval_s")]
    pub rebuild_interval_s: u64,
    #[serde(default = "defaults::bits_per_key")]
    pub bits_per_key: u32,
    #[serde(default = "defaults::scan_batch")]
    pub scan_batch: usize,
    #[serde(default = "defaults::scan_pause_ms")]
    pub scan_pause_ms: u64,
}

impl Default for FilterFile {
    fn default() -> Self {
        FilterFile {
            enabled: true,
            rebuild_interval_s: defaults::rebuild_interval_s(),
            bits_per_key: defaults::bits_per_key(),
            scan_batch: defaults::scan_batch(),
            scan_pause_ms: defaults::scan_pause_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFile {
    /// `stderr`, or a file to append to.
    #[serde(default = "defaults::access_log_path")]
    pub path: String,
    #[serde(default = "defaults::rejections_per_second")]
    pub rejections_per_second: u32,
}

/// The defaults the contract documents, in one place.
pub mod defaults {
    use super::SourceFile;

    pub fn connect_timeout_ms() -> u64 {
        1000
    }
    pub fn read_timeout_ms() -> u64 {
        30_000
    }
    pub fn health_kind() -> String {
        "tcp".into()
    }
    pub fn health_interval_ms() -> u64 {
        1000
    }
    pub fn sources() -> Vec<SourceFile> {
        vec![
            SourceFile { header: Some("X-ApiKey".into()), query: None },
            SourceFile { header: None, query: Some("apikey".into()) },
        ]
    }
    pub fn max_length() -> usize {
        128
    }
    pub fn yes() -> bool {
        true
    }
    pub fn prefix() -> String {
        "keygate:".into()
    }
    pub fn store_timeout_ms() -> u64 {
        50
    }
    pub fn max_inflight() -> usize {
        64
    }
    pub fn capacity() -> usize {
        1_000_000
    }
    pub fn ttl_s() -> u64 {
        300
    }
    pub fn negative_ttl_s() -> u64 {
        60
    }
    pub fn stale_s() -> u64 {
        86_400
    }
    pub fn per_second() -> f64 {
        100.0
    }
    pub fn burst() -> u32 {
        200
    }
    pub fn unauthenticated_per_second() -> f64 {
        10.0
    }
    pub fn unauthenticated_burst() -> u32 {
        20
    }
    pub fn grace_period_s() -> u64 {
        5
    }
    pub fn header_timeout_ms() -> u64 {
        10_000
    }
    pub fn access_log_path() -> String {
        "stderr".into()
    }
    pub fn rejections_per_second() -> u32 {
        100
    }
    pub fn rebuild_interval_s() -> u64 {
        300
    }
    pub fn bits_per_key() -> u32 {
        12
    }
    pub fn scan_batch() -> usize {
        1000
    }
    pub fn scan_pause_ms() -> u64 {
        1
    }
}
