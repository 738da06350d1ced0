use super::*;

const MINIMAL: &str =
    "listen: [127.0.0.1:6188]\nupstream:\n  peers: [127.0.0.1:8080]\nstore:\n  file: keys.yaml\n";

fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    Config::parse(text, Path::new("/etc/keygate"))
}

fn fields(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.field.as_str()).collect()
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.store.backend, StoreBackend::File("/etc/keygate/keys.yaml".into()));
    assert_eq!(c.cache.ttl, Duration::from_secs(300));
    assert_eq!(c.cache.negative_ttl, Duration::from_secs(60));
    assert_eq!(c.cache.stale, Duration::from_secs(86_400));
    assert_eq!(c.rate_limit.per_key, Rate { per_second: 100.0, burst: 200 });
    assert_eq!(c.rate_limit.unauthenticated_per_ip, Rate { per_second: 10.0, burst: 20 });
    assert_eq!(c.api_key.max_length, 128);
    assert_eq!(c.api_key.sources.len(), 2);
    assert_eq!(c.upstream.health_check, HealthCheck::Tcp { interval: Duration::from_secs(1) });
}

#[test]
fn the_readmes_full_example_is_valid() {
    let text = r#"
listen:
  - 127.0.0.1:6188
  - unix:/run/keygate/keygate.sock
admin_listen: 127.0.0.1:9188
auth_listen: 127.0.0.1:6190
threads: 2
pid_file: /run/keygate/keygate.pid
upgrade_sock: /run/keygate/upgrade.sock
upstream:
  peers: [127.0.0.1:8080]
  health_check: {kind: http, path: /health, interval_ms: 1000}
  connect_timeout_ms: 1000
  read_timeout_ms: 30000
api_key:
  sources: [{header: X-ApiKey}, {query: apikey}]
  max_length: 128
  forward: true
store:
  redis: {url: "redis://127.0.0.1:6379/0", prefix: "keygate:", timeout_ms: 50, max_inflight: 64}
cache: {capacity: 1000000, negative_capacity: 1000000, ttl_s: 300, negative_ttl_s: 60, stale_s: 86400}
rate_limit:
  per_second: 100
  burst: 200
  unauthenticated_per_ip: {per_second: 10, burst: 20}
trusted_proxies: [127.0.0.1/32, "::1/128"]
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.listen[1], Listener::Unix("/run/keygate/keygate.sock".into()));
    assert_eq!(c.store.max_inflight, 64);
    assert_eq!(
        c.upstream.health_check,
        HealthCheck::Http { path: "/health".into(), interval: Duration::from_secs(1) }
    );
}

#[test]
fn every_problem_is_reported_at_once_with_its_line() {
    let text = "listen: [nowhere]\nupstream:\n  peers: []\nstore:\n  file: k.yaml\n  redis: {url: 'redis://x'}\ncache:\n  ttl_s: 0\n  capacit: 5\nrate_limit:\n  per_second: -1\nbogus: 1\n";
    let problems = parse(text).unwrap_err();
    let f = fields(&problems);
    for expected in
        ["listen[0]", "upstream.peers", "store", "cache.capacit", "rate_limit.per_second", "bogus"]
    {
        assert!(f.contains(&expected), "{expected} missing from {f:?}");
    }
    let line = |field: &str| problems.iter().find(|p| p.field == field).and_then(|p| p.line);
    assert_eq!(line("listen[0]"), Some(1));
    assert_eq!(line("cache.capacit"), Some(9));
    assert_eq!(line("rate_limit.per_second"), Some(11));
    assert_eq!(line("bogus"), Some(12));
}

#[test]
fn required_sections_are_named_when_absent() {
    let problems = parse("threads: 2\n").unwrap_err();
    let f = fields(&problems);
    for expected in ["listen", "upstream", "store"] {
        assert!(f.contains(&expected), "{expected} missing from {f:?}");
    }
}

#[test]
fn a_source_names_exactly_one_place() {
    let text = format!("{MINIMAL}api_key:\n  sources: [{{header: A, query: b}}, {{}}]\n");
    let problems = parse(&text).unwrap_err();
    assert_eq!(fields(&problems), ["api_key.sources[0]", "api_key.sources[1]"]);
}

#[test]
fn a_syntax_error_has_its_line() {
    let problems = parse("listen: [a\nstore: {").unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(problems[0].line.is_some());
}

#[test]
fn bounded_fields_name_their_bounds() {
    let text = format!(
        "{MINIMAL}cache: {{ttl_s: 315360001, stale_s: 999999999999}}\nfilter: {{bits_per_key: 3, scan_batch: 0}}\n"
    );
    let problems = parse(&text).unwrap_err();
    let f = fields(&problems);
    for expected in ["cache.ttl_s", "cache.stale_s", "filter.bits_per_key", "filter.scan_batch"] {
        assert!(f.contains(&expected), "{expected} missing from {f:?}");
    }
    assert!(!f.contains(&"cache.negative_ttl_s"), "{f:?}");
    let at_the_bounds =
        format!("{MINIMAL}cache: {{ttl_s: 315360000, stale_s: 315360000}}\nfilter: {{bits_per_key: 32}}\n");
    assert!(parse(&at_the_bounds).is_ok());
}

#[test]
fn a_missing_required_field_hides_no_other_problem() {
    let text =
        "listen: [127.0.0.1:6188]\nupstream:\n  connect_timeout_ms: 0\nstore:\n  redis: {timeout_ms: 0}\n";
    let problems = parse(text).unwrap_err();
    let found: Vec<(&str, Option<usize>, &str)> =
        problems.iter().map(|p| (p.field.as_str(), p.line, p.message.as_str())).collect();
    assert_eq!(
        found,
        [
            ("upstream", Some(2), "missing field `peers`"),
            ("upstream.connect_timeout_ms", Some(3), "must be above 0"),
            ("store", Some(4), "missing field `url`"),
            ("store.redis.timeout_ms", None, "must be above 0"),
        ]
    );
}

#[test]
fn a_required_field_written_empty_is_not_missing() {
    let text = "listen: [127.0.0.1:6188]\nupstream:\n  peers:\nstore:\n  file: keys.yaml\n";
    let problems = parse(text).unwrap_err();
    assert_eq!(fields(&problems), ["upstream.peers"]);
}

#[test]
fn the_filters_defaults_are_the_configs() {
    assert_eq!(parse(MINIMAL).unwrap().filter, FilterConfig::default());
}

/// `MINIMAL` with `store.redis` written as `redis` (a flow mapping's inside).
fn with_redis(redis: &str) -> String {
    format!("listen: [127.0.0.1:6188]\nupstream:\n  peers: [127.0.0.1:8080]\nstore:\n  redis: {{{redis}}}\n")
}

#[test]
fn redis_is_one_url_a_sentinel_group_or_a_cluster() {
    let url = parse(&with_redis("url: 'redis://127.0.0.1:6379/0'")).unwrap();
    let StoreBackend::Redis { nodes, auth, prefix } = url.store.backend else { panic!("not redis") };
    assert_eq!(nodes, RedisNodes::Url("redis://127.0.0.1:6379/0".into()));
    assert_eq!((auth, prefix.as_str()), (RedisAuth::default(), "keygate:"));

    let text = "sentinel: {master: keygate, nodes: ['127.0.0.1:26379', 'sentinel-2:26380']}, username: gw, password: s3cret";
    let sentinel = parse(&with_redis(text)).unwrap();
    let StoreBackend::Redis { nodes, auth, .. } = &sentinel.store.backend else { panic!("not redis") };
    let node = |host: &str, port| NodeAddress { host: host.into(), port };
    assert_eq!(
        *nodes,
        RedisNodes::Sentinel {
            master: "keygate".into(),
            nodes: vec![node("127.0.0.1", 26379), node("sentinel-2", 26380)]
        }
    );
    assert_eq!(auth.username.as_deref(), Some("gw"));
    assert_eq!(auth.password.as_ref().map(Secret::expose), Some("s3cret"));
    assert!(!format!("{sentinel:?}").contains("s3cret"), "a password in Debug output");

    let cluster = parse(&with_redis("cluster: {nodes: ['127.0.0.1:7000', '[::1]:7001']}")).unwrap();
    let StoreBackend::Redis { nodes, .. } = cluster.store.backend else { panic!("not redis") };
    assert_eq!(nodes, RedisNodes::Cluster { nodes: vec![node("127.0.0.1", 7000), node("::1", 7001)] });
}

#[test]
fn a_mix_of_topologies_is_named_by_its_field() {
    let text = "url: 'redis://x', cluster: {nodes: ['a:1']}, sentinel: {master: m, nodes: ['b:2']}";
    let problems = parse(&with_redis(text)).unwrap_err();
    assert_eq!(fields(&problems), ["store.redis.sentinel", "store.redis.cluster"]);
    assert!(problems[0].message.contains("url"), "{problems:?}");
}

#[test]
fn sentinel_and_cluster_fields_are_checked_each_by_its_path() {
    let problems = parse(&with_redis("sentinel: {master: keygate}")).unwrap_err();
    assert_eq!(fields(&problems), ["store.redis.sentinel"]);
    assert!(problems[0].message.contains("`nodes`"), "{problems:?}");

    let problems = parse(&with_redis("cluster: {nodes: ['127.0.0.1', 'a:0', 'ok:7000']}")).unwrap_err();
    assert_eq!(fields(&problems), ["store.redis.cluster.nodes[0]", "store.redis.cluster.nodes[1]"]);

    let problems = parse(&with_redis("cluster: {nodes: []}, username: gw")).unwrap_err();
    assert_eq!(fields(&problems), ["store.redis.username", "store.redis.cluster.nodes"]);

    let problems = parse(&with_redis("url: 'redis://u:p@127.0.0.1/0', password: q")).unwrap_err();
    assert_eq!(fields(&problems), ["store.redis.password"]);
}

#[test]
fn a_clusters_prefix_may_not_put_every_key_in_one_slot() {
    let problems = parse(&with_redis("cluster: {nodes: ['a:1']}, prefix: '{kg}:'")).unwrap_err();
    assert_eq!(fields(&problems), ["store.redis.prefix"]);
    // Not a hash tag: nothing inside the braces; and one server has no slots at all.
    assert!(parse(&with_redis("cluster: {nodes: ['a:1']}, prefix: 'kg{}:'")).is_ok());
    assert!(parse(&with_redis("url: 'redis://x', prefix: '{kg}:'")).is_ok());
}

#[test]
fn the_limits_scope_is_local_or_fleet_and_sync_ms_is_bounded() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!((c.rate_limit.scope, c.rate_limit.sync), (LimitScope::Local, Duration::from_millis(100)));
    let c = parse(&format!("{MINIMAL}rate_limit:\n  scope: fleet\n  sync_ms: 250\n")).unwrap();
    assert_eq!((c.rate_limit.scope, c.rate_limit.sync), (LimitScope::Fleet, Duration::from_millis(250)));
    let problems = parse(&format!("{MINIMAL}rate_limit:\n  scope: global\n  sync_ms: 0\n")).unwrap_err();
    assert_eq!(fields(&problems), ["rate_limit.scope", "rate_limit.sync_ms"]);
}

#[test]
fn work_stealing_is_a_bool_off_by_default() {
    assert!(!parse(MINIMAL).unwrap().work_stealing);
    assert!(parse(&format!("{MINIMAL}work_stealing: true\n")).unwrap().work_stealing);
    let problems = parse(&format!("{MINIMAL}work_stealing: sometimes\n")).unwrap_err();
    assert_eq!(fields(&problems), ["work_stealing"]);
}
