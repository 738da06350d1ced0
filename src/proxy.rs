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
use crate::client_ip::X_FORWARDED_FOR;
use crate::decide::{decide, RequestFacts};
use crate::edge::{self, Finished};
use crate::extract::KeySource;
use crate::gateway::Gateway;
use crate::grant::Grant;
use crate::limit::Allowance;
use crate::metrics::Outcome;
use crate::settings::Settings;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::{Error, ErrorSource, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
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
    /// The peers this request was sent to, so a retry goes elsewhere.
    tried: Tried,
    /// The connecting peer's address, read once for the decision and `X-Forwarded-For`.
    peer: IpAddr,
}

/// The peers one request was sent to: the last apart, so the usual request, sent once, keeps
/// its one peer without a `Vec` (an allocation per request); only a retry moves it into
/// `earlier`.
#[derive(Default)]
struct Tried {
    earlier: Vec<SocketAddr>,
    last: Option<SocketAddr>,
}

impl Tried {
    /// The peers to pass over now: every one tried, once the last has been set aside.
    fn before_next(&mut self) -> &[SocketAddr] {
        if let Some(last) = self.last.take() {
            self.earlier.push(last);
        }
        &self.earlier
    }

    fn len(&self) -> usize {
        self.earlier.len() + usize::from(self.last.is_some())
    }
}

#[async_trait]
impl ProxyHttp for KeyGateProxy {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default is response compression, disabled (level 0):
    /// it changes nothing, yet costs allocations and filter calls on every request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            settings: self.gateway.settings.load_full(),
            rejected: None,
            grant: None,
            allowance: None,
            tried: Tried::default(),
            peer: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.peer = edge::client_peer(session);
        let request = session.req_header();
        let facts = RequestFacts {
            headers: &request.headers,
            query: request.uri.query(),
            peer: ctx.peer,
            now: ctx.started,
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
        let tried = ctx.tried.before_next();
        let peer = self.gateway.upstreams.pick(tried, &ctx.settings.config.upstream).ok_or_else(|| {
            Error::create(
                ErrorType::HTTPStatus(502),
                ErrorSource::Upstream,
                Some("no healthy upstream".into()),
                None,
            )
        })?;
        ctx.tried.last = peer._address.as_inet().copied();
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = ctx.tried.last {
            self.gateway.upstreams.connect_failed(addr);
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
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Collected (a `Vec`) only when a client sent one, which is rare.
        if upstream.headers.keys().any(is_ours) {
            let doomed: Vec<_> = upstream.headers.keys().filter(|name| is_ours(name)).cloned().collect();
            for name in doomed {
                upstream.remove_header(&name);
            }
        }
        if let Some(grant) = &ctx.grant {
            let app = app_value(&grant.app)
                .ok_or_else(|| Error::explain(ErrorType::InternalError, "app is not a header value"))?;
            upstream.insert_header("X-Keygate-App", app)?;
        }
        let peer = ctx.peer;
        let earlier: Vec<&str> =
            upstream.headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
        match earlier.is_empty() {
            true => upstream.insert_header("X-Forwarded-For", forwarded_for(peer))?,
            false => upstream.insert_header("X-Forwarded-For", format!("{}, {peer}", earlier.join(", ")))?,
        }
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
            upstream: ctx.tried.last,
        };
        edge::record(&self.gateway, &ctx.settings, session, finished);
    }

    /// Pingora's default summary holds the query string, where a key may be: never log it.
    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        let request = session.req_header();
        format!("{} {}", request.method, request.uri.path())
    }
}

/// Whether a header name is one the gateway sets itself, which a client's must not pass for.
fn is_ours(name: &http::HeaderName) -> bool {
    name.as_str().starts_with("x-keygate-")
}

thread_local! {
    /// The last peer this worker thread forwarded for, with its `X-Forwarded-For` value. Behind
    /// a load balancer most requests come from a few peers: a hit costs a reference count, where
    /// formatting the address costs two allocations.
    static LAST_PEER: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
}

thread_local! {
    /// The last app this worker thread forwarded for, with its `X-Keygate-App` value. App names
    /// are shared by every key of an app (`grant::AppNames`), so a run of requests for one app
    /// finds the very name here and costs a reference count, not a copy. Kept per thread rather
    /// than in each grant: a value there would cost every cached key its own copy of the name.
    static LAST_APP: RefCell<Option<(Arc<str>, HeaderValue)>> = const { RefCell::new(None) };
}

/// `app` as the value of `X-Keygate-App`; none if its bytes cannot be a header value.
fn app_value(app: &Arc<str>) -> Option<HeaderValue> {
    LAST_APP.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((name, value)) = &*last {
            if Arc::ptr_eq(name, app) {
                return Some(value.clone());
            }
        }
        // From bytes: an app may be UTF-8, which a header carries as opaque octets.
        let value = HeaderValue::from_bytes(app.as_bytes()).ok()?;
        *last = Some((Arc::clone(app), value.clone()));
        Some(value)
    })
}

/// `peer` as the value of an `X-Forwarded-For` that had none.
fn forwarded_for(peer: IpAddr) -> HeaderValue {
    LAST_PEER.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((ip, value)) = &*last {
            if *ip == peer {
                return value.clone();
            }
        }
        // An address's text is at most 45 bytes (IPv6 with an IPv4 tail).
        let mut text = [0u8; 64];
        let mut unwritten = &mut text[..];
        let _ = write!(unwritten, "{peer}");
        let written = 64 - unwritten.len();
        let value = HeaderValue::from_bytes(&text[..written]).expect("an address is a header value");
        *last = Some((peer, value.clone()));
        value
    })
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
