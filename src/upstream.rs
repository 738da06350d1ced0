//! Stage 4 of the request path: where a forwarded request goes.
//!
//! Round robin over `upstream.peers`, skipping peers that fail their health check and peers
//! this request already failed to connect to (a connect failure sent nothing, so it is safe to
//! try the next peer).

use crate::config::{HealthCheck, UpstreamConfig};
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub struct Upstreams {
    balancer: Arc<LoadBalancer<RoundRobin>>,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// The configured peers, in order, for the health gauge.
    pub peers: Vec<SocketAddr>,
}

impl Upstreams {
    /// Builds the balancer and the background service that runs its health checks.
    pub fn new(config: &UpstreamConfig) -> (Upstreams, GenBackgroundService<LoadBalancer<RoundRobin>>) {
        let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(config.peers.iter().copied())
            .expect("peers are resolved addresses");
        let interval = match &config.health_check {
            HealthCheck::Tcp { interval } => {
                balancer.set_health_check(TcpHealthCheck::new());
                *interval
            }
            HealthCheck::Http { path, interval } => {
                let mut check = HttpHealthCheck::new("localhost", false);
                check.req.set_uri(path.parse().expect("validated path"));
                balancer.set_health_check(Box::new(check));
                *interval
            }
        };
        balancer.health_check_frequency = Some(interval);
        balancer.parallel_health_check = true;
        let service = background_service("upstream health check", balancer);
        let upstreams = Upstreams {
            balancer: service.task(),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            peers: config.peers.clone(),
        };
        (upstreams, service)
    }

    /// A healthy peer this request has not failed on yet.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Box<HttpPeer>> {
        let backend = self
            .balancer
            .select_with(b"", 256, |backend, healthy| healthy && !tried.contains(&socket_addr(backend)))?;
        let mut peer = HttpPeer::new(socket_addr(&backend), false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        Some(Box::new(peer))
    }

    /// Each configured peer and whether it passes its health check.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.balancer.backends();
        let all = backends.get_backend();
        all.iter().map(|b| (socket_addr(b), backends.ready(b))).collect()
    }

    pub fn any_healthy(&self) -> bool {
        self.health().iter().any(|(_, healthy)| *healthy)
    }
}

fn socket_addr(backend: &Backend) -> SocketAddr {
    backend.addr.as_inet().copied().unwrap_or_else(|| ([0, 0, 0, 0], 0).into())
}
