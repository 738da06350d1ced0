//! The framework's floor: a Pingora proxy that forwards everything to one peer and checks
//! nothing, built as keygate is (mimalloc, the same runtime settings, the peer's address parsed
//! once). `make bench` measures keygate's forwarded requests against it.
//!
//! ```text
//! cargo run --release --example passthrough -- 127.0.0.1:6200 127.0.0.1:8080 [THREADS] [WORK_STEALING]
//! curl -i localhost:6200/
//! ```

#[path = "reference/mod.rs"]
mod reference;

use async_trait::async_trait;
use pingora::prelude::*;

/// The one peer, built once: a request only clones it (as keygate clones the prebuilt peer it
/// picks).
struct PassThrough(HttpPeer);

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.0.clone()))
    }
}

fn main() {
    reference::serve(PassThrough);
}
