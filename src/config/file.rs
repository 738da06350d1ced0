//! The YAML as users write it: one serde type per section, mirroring the documented config exactly.
//!
//! Nothing here is validated beyond its shape; [`super::Config`] is what the rest of keygate
//! sees. Every struct denies unknown fields so that a typo is an error, not a silent default.
//! A section's documented defaults are its one `Default` impl, which serde fills absent fields
//! from (`#[serde(default)]`); a field users must write is an `Option` marked `required`, and
//! validation names it when it is absent.

use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamFile {
    #[serde(deserialize_with = "required")]
    pub peers: Option<Vec<String>>,
    pub health_check: Option<HealthCheckFile>,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        UpstreamFile { peers: None, health_check: None, connect_timeout_ms: 1000, read_timeout_ms: 30_000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckFile {
    /// `tcp` or `http`.
    pub kind: String,
    pub path: Option<String>,
    pub interval_ms: u64,
}

impl Default for HealthCheckFile {
    fn default() -> Self {
        HealthCheckFile { kind: "tcp".into(), path: None, interval_ms: 1000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeyFile {
    pub sources: Vec<SourceFile>,
    pub max_length: usize,
    pub forward: bool,
}

impl Default for ApiKeyFile {
    fn default() -> Self {
        ApiKeyFile {
            sources: vec![
                SourceFile { header: Some("X-ApiKey".into()), query: None },
                SourceFile { header: None, query: Some("apikey".into()) },
            ],
            max_length: 128,
            forward: true,
        }
    }
}

/// One entry of `api_key.sources`: `{header: NAME}` or `{query: NAME}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceFile {
    pub header: Option<String>,
    pub query: Option<String>,
}

/// Exactly one of the two, which validation checks.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreFile {
    pub redis: Option<RedisFile>,
    pub file: Option<String>,
}

/// `store.redis`: where the Redis key store is (exactly one of `url`, `sentinel` or `cluster`,
/// which validation checks) and how it is used.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisFile {
    /// One server.
    pub url: Option<String>,
    /// A master and its replicas, watched by sentinels.
    pub sentinel: Option<SentinelFile>,
    /// A Redis Cluster.
    pub cluster: Option<ClusterFile>,
    /// ACL user for every Redis node (not the sentinels); needs `password`.
    pub username: Option<String>,
    /// For every Redis node (not the sentinels).
    pub password: Option<String>,
    pub prefix: String,
    /// Also the file store's timeout, which no one configures.
    pub timeout_ms: u64,
    /// Also the file store's bound, which no one configures.
    pub max_inflight: usize,
}

impl Default for RedisFile {
    fn default() -> Self {
        RedisFile {
            url: None,
            sentinel: None,
            cluster: None,
            username: None,
            password: None,
            prefix: "keygate:".into(),
            timeout_ms: 50,
            max_inflight: 64,
        }
    }
}

/// `store.redis.sentinel`: both fields are required.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentinelFile {
    /// The name the sentinels monitor the master by.
    #[serde(deserialize_with = "required")]
    pub master: Option<String>,
    /// The sentinels, `HOST:PORT` each.
    #[serde(deserialize_with = "required")]
    pub nodes: Option<Vec<String>>,
}

/// `store.redis.cluster`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterFile {
    /// Seed nodes, `HOST:PORT` each; the rest of the cluster is discovered from them.
    #[serde(deserialize_with = "required")]
    pub nodes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheFile {
    pub capacity: usize,
    pub negative_capacity: usize,
    pub ttl_s: u64,
    pub negative_ttl_s: u64,
    pub stale_s: u64,
}

impl Default for CacheFile {
    fn default() -> Self {
        CacheFile {
            capacity: 1_000_000,
            negative_capacity: 1_000_000,
            ttl_s: 300,
            negative_ttl_s: 60,
            stale_s: 86_400,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitFile {
    pub per_second: f64,
    pub burst: u32,
    pub unauthenticated_per_ip: Option<RateFile>,
    /// `local` or `fleet`.
    pub scope: String,
    pub sync_ms: u64,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        RateLimitFile {
            per_second: 100.0,
            burst: 200,
            unauthenticated_per_ip: None,
            scope: "local".into(),
            sync_ms: 100,
        }
    }
}

/// `rate_limit.unauthenticated_per_ip`. Written, it needs its rate and burst (serde has no
/// defaults for them); its `Default` is what an absent section means.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub per_second: f64,
    pub burst: u32,
    #[serde(default = "RateFile::default_max_addresses")]
    pub max_addresses: usize,
}

impl RateFile {
    fn default_max_addresses() -> usize {
        1_000_000
    }
}

impl Default for RateFile {
    fn default() -> Self {
        RateFile { per_second: 10.0, burst: 20, max_addresses: RateFile::default_max_addresses() }
    }
}

/// The membership filter's settings; also where [`crate::filter::FilterConfig::default`] comes
/// from, so the defaults are written once.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterFile {
    pub enabled: bool,
    pub rebuild_interval_s: u64,
    pub bits_per_key: u32,
    pub scan_batch: usize,
    pub scan_pause_ms: u64,
}

impl Default for FilterFile {
    fn default() -> Self {
        FilterFile {
            enabled: true,
            rebuild_interval_s: 300,
            bits_per_key: 12,
            scan_batch: 1000,
            scan_pause_ms: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogFile {
    /// `stderr`, or a file to append to.
    pub path: String,
    pub rejections_per_second: u32,
}

impl Default for AccessLogFile {
    fn default() -> Self {
        AccessLogFile { path: "stderr".into(), rejections_per_second: 100 }
    }
}

/// A field users must write, in a struct whose other fields have defaults: absent, it stays
/// `None` for validation to name; written (even as `null`), it is read as `T` would be.
fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
