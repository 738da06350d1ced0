//! The pass-through floor (`passthrough.rs`) plus the header edits every forwarded request of
//! keygate's makes, with fixed values and no decision: `X-Keygate-App` and `X-Forwarded-For`
//! to the upstream, `RateLimit-Limit`, `-Remaining` and `-Reset` back to the client. Not a
//! floor to be measured against: `make bench` prints it beside the floor to show how much of
//! keygate's cost is Pingora's header API doing what every forwarded request must do, and how
//! much is keygate's own.
//!
//! ```text
//! cargo run --release --example passthrough_headers -- 127.0.0.1:6202 127.0.0.1:8080 [THREADS] [WORK_STEALING]
//! curl -i localhost:6202/
//! ```

#[path = "reference/mod.rs"]
mod reference;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

struct PassThroughHeaders(HttpPeer);

#[async_trait]
impl ProxyHttp for PassThroughHeaders {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.0.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream.insert_header("X-Keygate-App", HeaderValue::from_static("bench"))?;
        upstream.insert_header("X-Forwarded-For", HeaderValue::from_static("127.0.0.1"))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream.insert_header("RateLimit-Limit", HeaderValue::from_static("1000000000"))?;
        upstream.insert_header("RateLimit-Remaining", HeaderValue::from_static("999999999"))?;
        upstream.insert_header("RateLimit-Reset", HeaderValue::from_static("1"))
    }
}

fn main() {
    reference::serve(PassThroughHeaders);
}
