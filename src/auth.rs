//! The auth listener (`auth_listen`), for nginx's `auth_request`: the same decision as the
//! proxy, answered instead of forwarded. 204 with `X-Keygate-App` where the proxy would
//! forward; otherwise the very status, body and headers the proxy would send. A query key is
//! read from `X-Original-URI` (nginx: `proxy_set_header X-Original-URI $request_uri;`).

use crate::access_log::Entry;
use crate::answer::Rejection;
use crate::decide::{decide, RequestFacts};
use crate::gateway::Gateway;
use crate::metrics::Outcome;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An auth subrequest carries no body; anything past this is not waited for.
const DRAIN_MAX_BYTES: usize = 64 * 1024;
const DRAIN_DEADLINE: Duration = Duration::from_millis(200);

pub struct AuthApp {
    gateway: Arc<Gateway>,
}

impl AuthApp {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        AuthApp { gateway }
    }
}

#[async_trait]
impl ServeHttp for AuthApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let started = Instant::now();
        let request = session.req_header();
        let original: Option<http::Uri> =
            request.headers.get("x-original-uri").and_then(|v| v.to_str().ok()?.parse().ok());
        let query = original.as_ref().map_or(request.uri.query(), |uri| uri.query());
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let settings = self.gateway.settings.load_full();
        let facts = RequestFacts { headers: &request.headers, query, peer };
        let decision = decide(&self.gateway, &settings, &facts).await;
        if !drain(session).await || self.gateway.is_draining() {
            session.set_keepalive(None);
        }
        let (response, outcome) = match &decision {
            Ok(grant) => {
                let allowed = Response::builder().status(204).header("X-Keygate-App", grant.app.as_bytes());
                (allowed.body(Vec::new()), Outcome::Forwarded)
            }
            Err(rejection) => (rejected(*rejection), rejection.outcome()),
        };
        let response = response
            .unwrap_or_else(|_| Response::builder().status(500).body(Vec::new()).expect("a bare 500"));
        let elapsed = started.elapsed();
        self.gateway.metrics.request(outcome, elapsed);
        if let Some(log) = &self.gateway.access_log {
            let request = session.req_header();
            let client = settings.client_address.resolve(
                peer.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
                &request.headers,
            );
            log.record(&Entry {
                client: Some(client),
                method: request.method.as_str(),
                path: original.as_ref().map_or(request.uri.path(), |uri| uri.path()),
                status: response.status().as_u16(),
                outcome,
                app: decision.as_ref().ok().map(|g| &*g.app),
                upstream: None,
                duration: elapsed,
            });
        }
        response
    }
}

/// The proxy's rejection, as an `http::Response`, plus `X-Keygate-Error: CODE`: nginx's
/// `auth_request` drops the subrequest's body, and this is how its config can answer the
/// client with the same JSON (see `conf/nginx-auth-request.conf`).
fn rejected(rejection: Rejection) -> http::Result<Response<Vec<u8>>> {
    let header = rejection.response_header();
    let mut response = Response::builder().status(header.status).header("X-Keygate-Error", rejection.code());
    for (name, value) in header.headers.iter() {
        response = response.header(name, value);
    }
    response.body(rejection.body().as_bytes().to_vec())
}

async fn drain(session: &mut ServerSession) -> bool {
    let drain = async {
        let mut read = 0;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if read + chunk.len() <= DRAIN_MAX_BYTES => read += chunk.len(),
                Ok(Some(_)) | Err(_) => return false,
                Ok(None) => return true,
            }
        }
    };
    tokio::time::timeout(DRAIN_DEADLINE, drain).await.unwrap_or(false)
}
