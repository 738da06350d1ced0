//! The admin endpoint at `admin_listen`: `/metrics` (Prometheus text), `/healthz` (the process
//! answers) and `/readyz` (the store answers and at least one upstream is healthy).

use crate::gateway::Gateway;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::Duration;

/// The longest `/readyz` waits for the store to answer a ping.
const READY_PING_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Admin {
    gateway: Arc<Gateway>,
}

impl Admin {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Admin { gateway }
    }

    fn metrics(&self) -> Vec<u8> {
        let gateway = &self.gateway;
        let metrics = &gateway.metrics;
        let cache = &gateway.lookup.cache;
        metrics.cache_entries.with_label_values(&["positive"]).set(cache.known_len() as i64);
        metrics.cache_entries.with_label_values(&["negative"]).set(cache.unknown_len() as i64);
        if let Some(log) = &gateway.access_log {
            let skipped = log.skipped.load(std::sync::atomic::Ordering::Relaxed);
            metrics.access_log_skipped.inc_by(skipped.saturating_sub(metrics.access_log_skipped.get()));
        }
        let (keys, bytes, age) = gateway.lookup.filter.stats();
        metrics.filter_keys.set(keys as i64);
        metrics.filter_bytes.set(bytes as i64);
        metrics.filter_age_seconds.set(age);
        metrics.filter_trusted.set(gateway.lookup.filter.is_trusted() as i64);
        metrics.ip_limiter_addresses.set(gateway.settings.load().ip_limiter.len() as i64);
        metrics.store_in_flight.set(gateway.lookup.queries_running() as i64);
        // Reset first, so a peer removed by a reload leaves no series behind.
        metrics.upstream_healthy.reset();
        for (peer, healthy) in gateway.upstreams.health() {
            metrics.upstream_healthy.with_label_values(&[&peer.to_string()]).set(healthy as i64);
        }
        metrics.encode()
    }

    async fn readiness(&self) -> Result<(), &'static str> {
        let store = Arc::clone(&self.gateway.settings.load().lookup.store);
        let ping = tokio::time::timeout(READY_PING_TIMEOUT, store.ping()).await;
        if !matches!(ping, Ok(Ok(()))) {
            return Err("key store unreachable");
        }
        if !self.gateway.upstreams.any_healthy() {
            return Err("no healthy upstream");
        }
        Ok(())
    }
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .body(body)
        .expect("valid response")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/metrics" => text(200, "text/plain; version=0.0.4", self.metrics()),
            "/healthz" => text(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => match self.readiness().await {
                Ok(()) => text(200, "text/plain", b"ready\n".to_vec()),
                Err(why) => text(503, "text/plain", format!("not ready: {why}\n").into_bytes()),
            },
            _ => text(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
