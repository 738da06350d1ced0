//! What every listener does at the edge of a request, the proxy ([`crate::proxy`]) and the
//! nginx auth listener ([`crate::auth`]) alike: whose address it came from, the request body
//! read and thrown away before the gateway answers, and the request counted and logged once
//! it is finished.
//!
//! Both listeners hold a Pingora `ServerSession` (the proxy's `Session` dereferences to one),
//! so each helper is written once, against it.

use crate::access_log::Entry;
use crate::gateway::Gateway;
use crate::metrics::Outcome;
use crate::settings::Settings;
use pingora::protocols::http::ServerSession;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

/// The most request body read and discarded to keep a connection open after the gateway's own
/// answer.
const DRAIN_MAX_BYTES: usize = 64 * 1024;

/// The connecting peer's address. A unix-socket peer (a local nginx) has none, and counts as
/// loopback.
pub fn client_peer(session: &ServerSession) -> IpAddr {
    session.client_addr().and_then(|a| a.as_inet()).map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip())
}

/// Reads and discards the request body before the gateway answers, or else marks the
/// connection to close after the answer.
///
/// Pingora closes a connection whose request body is unread when the answer is written, and a
/// client that must reconnect after every rejection costs several times the work. A body past
/// `DRAIN_MAX_BYTES` (declared or read) or not done within `deadline` is not waited for.
///
/// Pingora's own `drain_request_body` does not fit: it is bounded only in time (by
/// `set_total_drain_timeout`), so a fast client could make one rejection read a whole
/// deadline's worth of upload; and a declared length cannot stand in for the bound in bytes,
/// as a chunked body declares none.
pub async fn drain_body(session: &mut ServerSession, deadline: Duration) {
    if !drained(session, deadline).await {
        session.set_keepalive(None);
    }
}

/// Whether the whole body was read within the bounds.
async fn drained(session: &mut ServerSession, deadline: Duration) -> bool {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > DRAIN_MAX_BYTES) {
        return false;
    }
    let drain = async {
        let mut read = 0;
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > DRAIN_MAX_BYTES {
                        return false;
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    // The small body of a rejected request has almost always arrived with its header: one poll
    // reads it to the end. Only a body still to come is raced against the deadline, so the
    // usual rejection registers no timer (and reads no clock for one).
    let mut drain = pin!(drain);
    match poll_fn(|cx| Poll::Ready(drain.as_mut().poll(cx))).await {
        Poll::Ready(done) => done,
        Poll::Pending => tokio::time::timeout(deadline, drain).await.unwrap_or(false),
    }
}

/// How a request ended, as the metrics and the access log count it.
pub struct Finished<'a> {
    /// When the request's handling began, for its duration.
    pub started: Instant,
    pub outcome: Outcome,
    /// The path the client asked for, never with its query string (which may hold a key).
    pub path: &'a str,
    /// The status answered; 0 when no answer was written.
    pub status: u16,
    /// The app of the key it was allowed under.
    pub app: Option<&'a str>,
    /// The ingestion node it was last sent to.
    pub upstream: Option<SocketAddr>,
}

/// Counts a finished request and writes its access log line, by the `settings` it ran under.
pub fn record(gateway: &Gateway, settings: &Settings, session: &ServerSession, finished: Finished<'_>) {
    let elapsed = finished.started.elapsed();
    gateway.metrics.request(finished.outcome, elapsed);
    if let Some(log) = &gateway.access_log {
        let request = session.req_header();
        log.record(&Entry {
            client: Some(settings.client_address.resolve(client_peer(session), &request.headers)),
            method: request.method.as_str(),
            path: finished.path,
            status: finished.status,
            outcome: finished.outcome,
            app: finished.app,
            upstream: finished.upstream,
            duration: elapsed,
        });
    }
}
