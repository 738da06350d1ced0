//! Pingora's cheapest rejection: every request's small body is read and dropped (so the
//! connection stays open, as keygate does), then a fixed 403 with a JSON body is answered.
//! Built as keygate is (see `reference`); `make bench` measures keygate's rejections against it.
//!
//! ```text
//! cargo run --release --example passthrough_reject -- 127.0.0.1:6201 127.0.0.1:8080 [THREADS] [WORK_STEALING]
//! curl -i localhost:6201/ -d '{}'
//! ```
//! (The upstream argument is never used; it keeps the references' command lines alike.)

#[path = "reference/mod.rs"]
mod reference;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

const BODY: &str = r#"{"error":"unknown_api_key"}"#;

struct Reject;

#[async_trait]
impl ProxyHttp for Reject {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        // Read to the end of the body: Pingora closes a connection whose body is left unread.
        while session.read_request_body().await?.is_some() {}
        // The same header fields as keygate's 403 (src/answer.rs).
        let mut header = ResponseHeader::build(403, Some(2))?;
        header.insert_header("Content-Type", "application/json")?;
        header.insert_header("Content-Length", BODY.len())?;
        session.write_response_header(Box::new(header), false).await?;
        session.write_response_body(Some(Bytes::from_static(BODY.as_bytes())), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::new(ErrorType::InternalError))
    }
}

fn main() {
    reference::serve(|_peer| Reject);
}
