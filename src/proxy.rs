//! The proxy: Pingora's `ProxyHttp`, wiring the stages of the request path together.
//!
//! ```text
//!  request ──► request_filter ─────────────────────────────────────────► upstream_peer
//!              │ decide (decide.rs):                                          pick a healthy
//!              │ extract   key from the configured sources (extract.rs)      peer not yet tried
//!              │ identify  its id, sha256                   (key.rs)         (upstream.rs)
//!              │ look up   cache, else filter, else store (lookup.rs)
//!              │ limit     per key, or per IP without one   (limit.rs)          │
//!              └─ any "no" ─► answer.rs: status + JSON body, Ok(true)       upstream_request_filter
//!                                                                            X-Keygate-* replaced,
//!  logging ◄── every request: outcome and time counted (metrics.rs)          X-Forwarded-For added
//! ```
//!
//! `request_filter` returning `Ok(true)` means the gateway answered and nothing is forwarded.

use crate::answer::{self, Rejection};
use crate::decide::{decide, RequestFacts};
use crate::edge::{self, Finished};
use crate::extract::KeySource;
use crate::gateway::Gateway;
use crate::grant::Grant;
use crate::limit::Allowance;
use crate::metrics::Outcome;
use crate::settings::Settings;
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct KeyGateProxy {
    gateway: Arc<Gateway>,
}

impl KeyGateProxy {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        KeyGateProxy { gateway }
    }
}

/// What one request has learnt on its way through the phases.
pub struct RequestCtx {
    started: Instant,
    /// The settings in force when the request began, loaded once for all its phases.
    settings: Arc<Settings>,
    /// Set when the gateway answered the request itself.
    rejected: Option<Rejection>,
    /// The key's grant, once the request is allowed through.
    grant: Option<Arc<Grant>>,
    /// What the request left of its key's limit, for the response's `RateLimit-*` headers.
    allowance: Option<Allowance>,
    /// Peers this request failed to connect to, so a retry goes elsewhere.
    tried: Vec<SocketAddr>,
}

#[async_trait]
impl ProxyHttp for KeyGateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            settings: self.gateway.settings.load_full(),
            rejected: None,
            grant: None,
            allowance: None,
            tried: Vec::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let request = session.req_header();
        let facts = RequestFacts {
            headers: &request.headers,
            query: request.uri.query(),
            peer: edge::client_peer(session),
        };
        match decide(&self.gateway, &ctx.settings, &facts).await {
            Ok(admitted) => {
                ctx.grant = Some(admitted.grant);
                ctx.allowance = Some(admitted.allowance);
                Ok(false)
            }
            Err(rejection) => {
                ctx.rejected = Some(rejection);
                // An upgrade's hand-over closes the connection after this answer (a forwarded
                // request's is closed in `response_filter`).
                if self.gateway.is_draining() {
                    session.set_keepalive(None);
                }
                answer::reject(session, rejection).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let peer =
            self.gateway.upstreams.pick(&ctx.tried, &ctx.settings.config.upstream).ok_or_else(|| {
                Error::create(
                    ErrorType::HTTPStatus(502),
                    ErrorSource::Upstream,
                    Some("no healthy upstream".into()),
                    None,
                )
            })?;
        if let Some(addr) = peer._address.as_inet() {
            ctx.tried.push(*addr);
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = ctx.tried.last() {
            self.gateway.upstreams.connect_failed(*addr);
        }
        // Nothing was sent on a failed connect, so any request may go to the next peer.
        if ctx.tried.len() < ctx.settings.config.upstream.peers.len() {
            e.set_retry(true);
        }
        e
    }

    /// A forwarded response carries what is left of the key's limit; once an upgrade's
    /// hand-over has begun, it closes its connection.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(allowance) = ctx.allowance {
            for (name, value) in answer::rate_limit_headers(allowance) {
                upstream.insert_header(name, value)?;
            }
        }
        if self.gateway.is_draining() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let doomed: Vec<_> =
            upstream.headers.keys().filter(|name| name.as_str().starts_with("x-keygate-")).cloned().collect();
        for name in doomed {
            upstream.remove_header(&name);
        }
        if let Some(grant) = &ctx.grant {
            // From bytes: an app may be UTF-8, which a header carries as opaque octets.
            let app = http::HeaderValue::from_bytes(grant.app.as_bytes())
                .map_err(|_| Error::explain(ErrorType::InternalError, "app is not a header value"))?;
            upstream.insert_header("X-Keygate-App", app)?;
        }
        let peer = edge::client_peer(session).to_string();
        let forwarded = match upstream
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
        {
            earlier if earlier.is_empty() => peer,
            earlier => format!("{}, {peer}", earlier.join(", ")),
        };
        upstream.insert_header("X-Forwarded-For", forwarded)?;
        let api_key = &ctx.settings.config.api_key;
        if !api_key.forward {
            strip_key(upstream, &api_key.sources);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let outcome = match (ctx.rejected, error) {
            (Some(rejection), _) => rejection.outcome(),
            (None, Some(e)) if *e.esource() == ErrorSource::Upstream || ctx.grant.is_some() => {
                Outcome::UpstreamError
            }
            _ => Outcome::Forwarded,
        };
        let finished = Finished {
            started: ctx.started,
            outcome,
            path: session.req_header().uri.path(),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            app: ctx.grant.as_ref().map(|g| &*g.app),
            upstream: ctx.tried.last().copied(),
        };
        edge::record(&self.gateway, &ctx.settings, session, finished);
    }

    /// Pingora's default summary holds the query string, where a key may be: never log it.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let request = session.req_header();
        format!("{} {}", request.method, request.uri.path())
    }
}

/// Removes the key from what the upstream receives (`api_key.forward: false`).
fn strip_key(upstream: &mut RequestHeader, sources: &[KeySource]) {
    for source in sources {
        match source {
            KeySource::Header(name) => {
                upstream.remove_header(name);
            }
            KeySource::Query(param) => {
                let Some(query) = upstream.uri.query() else {
                    continue;
                };
                let kept: Vec<&str> =
                    query.split('&').filter(|pair| pair.split('=').next() != Some(param.as_str())).collect();
                let path = upstream.uri.path().to_string();
                let uri = match kept.is_empty() {
                    true => path,
                    false => format!("{path}?{}", kept.join("&")),
                };
                if let Ok(uri) = uri.parse() {
                    upstream.set_uri(uri);
                }
            }
        }
    }
}
