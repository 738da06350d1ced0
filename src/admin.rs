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
            "/metrics" => text(200, "text/plain; version=0.0.4", self.gateway.metrics.encode()),
            "/healthz" => text(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => match self.readiness().await {
                Ok(()) => text(200, "text/plain", b"ready\n".to_vec()),
                Err(why) => text(503, "text/plain", format!("not ready: {why}\n").into_bytes()),
            },
            _ => text(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
