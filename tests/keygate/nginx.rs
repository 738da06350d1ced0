//! keygate beside a real nginx, in both shipped modes: nginx in front of the proxy over a unix
//! socket, and nginx asking the auth listener (`auth_request`) before proxying itself.

use crate::support::http::{self, Connection, Response};
use crate::support::nginx::Nginx;
use crate::support::{self, Redis, Setup, Upstream};

fn through(nginx: &Nginx, path: &str, headers: &[(&str, &str)]) -> Response {
    http::request(nginx.addr, "GET", path, headers, b"").unwrap()
}

#[test]
fn nginx_in_front_over_a_unix_socket_forwards_and_the_per_ip_limit_sees_the_client() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("keygate.sock");
    let _gateway = Setup::redis(&redis, &upstream)
        .listen(&format!("unix:{}", socket.display()))
        .extra("rate_limit:\n  per_second: 1000\n  burst: 1000\n  unauthenticated_per_ip: {per_second: 0.5, burst: 3}")
        .extra("trusted_proxies: [127.0.0.1/32]")
        .start();
    let nginx = Nginx::start(
        "nginx-proxy.conf",
        &[("unix:/run/keygate/keygate.sock", format!("unix:{}", socket.display()))],
    );

    let response = through(&nginx, "/ingest", &[("X-ApiKey", "valid-key"), ("X-Keygate-App", "forged")]);
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    assert_eq!(response.text(), r#"{"app":"acme","bytes":0}"#);
    assert_eq!(upstream.received()[0].header_values("x-keygate-app"), ["acme"]);

    // Keyless traffic from 127.0.0.2 runs out; 127.0.0.3, behind the same nginx, does not.
    let mut attacker = Connection::open_from("127.0.0.2", nginx.addr).unwrap();
    let statuses: Vec<u16> =
        (0..5).map(|_| attacker.request("GET", "/ingest", &[], b"").unwrap().status).collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    let mut neighbour = Connection::open_from("127.0.0.3", nginx.addr).unwrap();
    neighbour.request("GET", "/ingest", &[], b"").unwrap().assert_rejected(401, "missing_api_key");
}

#[test]
fn nginx_auth_request_proxies_valid_keys_with_their_app_and_answers_the_rest_like_the_proxy() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    redis.put_key("valid-key", &[("app", "acme")]);
    redis.put_key("query-key", &[("app", "by-query")]);
    redis.put_key("tight-key", &[("app", "acme"), ("rate", "0.1"), ("burst", "1")]);
    let auth = format!("127.0.0.1:{}", support::free_port());
    let gateway = Setup::redis(&redis, &upstream)
        .extra(&format!("auth_listen: \"{auth}\"\ntrusted_proxies: [127.0.0.1/32]"))
        .start();
    gateway.uses_key("unknown-key");
    let nginx = Nginx::start(
        "nginx-auth-request.conf",
        &[
            ("server 127.0.0.1:6190;", format!("server {auth};")),
            ("server 127.0.0.1:8080;", format!("server {};", upstream.addr)),
        ],
    );

    let response = through(&nginx, "/ingest", &[("X-ApiKey", "valid-key"), ("X-Keygate-App", "forged")]);
    assert_eq!(response.status, 200, "{}", nginx.error_log());
    assert_eq!(response.text(), r#"{"app":"acme","bytes":0}"#);
    assert_eq!(upstream.received()[0].header_values("x-keygate-app"), ["acme"]);

    assert_eq!(through(&nginx, "/ingest?apikey=query-key", &[]).text(), r#"{"app":"by-query","bytes":0}"#);
    through(&nginx, "/ingest", &[("X-ApiKey", "unknown-key")]).assert_rejected(403, "unknown_api_key");
    through(&nginx, "/ingest", &[]).assert_rejected(401, "missing_api_key");
    assert_eq!(through(&nginx, "/ingest", &[("X-ApiKey", "tight-key")]).status, 200);
    let limited = through(&nginx, "/ingest", &[("X-ApiKey", "tight-key")]);
    limited.assert_rejected(429, "rate_limited");
    assert!(limited.retry_after() >= 1);
    assert_eq!(upstream.count(), 3, "nothing refused reached the ingestion node");

    // The auth listener directly: 204 and the app, or the proxy's own answer.
    let direct: std::net::SocketAddr = auth.parse().unwrap();
    let allowed = http::request(direct, "GET", "/_keygate", &[("X-ApiKey", "valid-key")], b"").unwrap();
    assert_eq!((allowed.status, allowed.header("x-keygate-app")), (204, Some("acme")));
    let via_uri =
        http::request(direct, "GET", "/_keygate", &[("X-Original-URI", "/ingest?apikey=query-key")], b"");
    assert_eq!(via_uri.unwrap().header("x-keygate-app"), Some("by-query"));
    let refused = http::request(direct, "GET", "/", &[("X-ApiKey", "unknown-key")], b"").unwrap();
    refused.assert_rejected(403, "unknown_api_key");
    assert_eq!(refused.header("x-keygate-error"), Some("unknown_api_key"));
    assert!(gateway.settled_metric(r#"keygate_requests_total{outcome="forwarded"}"#, 5.0) >= 5.0);
}

#[test]
fn with_keygate_down_nginx_auth_request_answers_a_retryable_503() {
    let upstream = Upstream::start();
    let nginx = Nginx::start(
        "nginx-auth-request.conf",
        &[
            ("server 127.0.0.1:6190;", format!("server 127.0.0.1:{};", support::free_port())),
            ("server 127.0.0.1:8080;", format!("server {};", upstream.addr)),
        ],
    );
    let response = through(&nginx, "/ingest", &[("X-ApiKey", "any-key")]);
    response.assert_rejected(503, "key_store_unavailable");
    assert_eq!(response.retry_after(), 1);
    assert_eq!(upstream.count(), 0);
}
