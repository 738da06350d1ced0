//! The auth listener (`auth_listen`), for nginx's `auth_request`: the same decision as the
//! proxy, answered instead of forwarded. 204 with `X-Keygate-App` (and the `RateLimit-*` headers
//! a forwarded response would carry, for `auth_request_set`) where the proxy would forward;
//! otherwise the very status, body and headers the proxy would send. A query key is
//! read from `X-Original-URI` (nginx: `proxy_set_header X-Original-URI $request_uri;`).

use crate::answer::{self, Rejection};
use crate::decide::{decide, RequestFacts};
use crate::edge::{self, Finished};
use crate::gateway::Gateway;
use crate::metrics::Outcome;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An auth subrequest carries no body, so what one sends anyway is not waited for long.
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
        let settings = self.gateway.settings.load_full();
        let peer = edge::client_peer(session);
        let facts = RequestFacts { headers: &request.headers, query, peer, now: started };
        let decision = decide(&self.gateway, &settings, &facts).await;
        edge::drain_body(session, DRAIN_DEADLINE).await;
        if self.gateway.is_draining() {
            session.set_keepalive(None);
        }
        let (response, outcome) = match &decision {
            Ok(admitted) => {
                let mut allowed =
                    Response::builder().status(204).header("X-Keygate-App", admitted.grant.app.as_bytes());
                for (name, value) in answer::rate_limit_headers(admitted.allowance) {
                    allowed = allowed.header(name, value);
                }
                (allowed.body(Vec::new()), Outcome::Forwarded)
            }
            Err(rejection) => (rejected(*rejection), rejection.outcome()),
        };
        let response = response
            .unwrap_or_else(|_| Response::builder().status(500).body(Vec::new()).expect("a bare 500"));
        let finished = Finished {
            started,
            outcome,
            path: original.as_ref().map_or(session.req_header().uri.path(), |uri| uri.path()),
            status: response.status().as_u16(),
            app: decision.as_ref().ok().map(|a| &*a.grant.app),
            upstream: None,
        };
        edge::record(&self.gateway, &settings, session, finished);
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
