//! The framework's floor: a Pingora proxy that forwards everything to one peer and checks
//! nothing. `make bench` measures keygate against it.
//!
//! ```text
//! cargo run --release --example passthrough -- 127.0.0.1:6200 127.0.0.1:8080
//! curl -i localhost:6200/
//! ```

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct PassThrough(String);

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0.as_str(), false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:6200".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let conf = ServerConf { threads: 1, grace_period_seconds: Some(0), ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, PassThrough(upstream));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
