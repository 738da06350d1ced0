//! The metrics as the README documents them, read from `/metrics` after real traffic: each
//! metric's type, a `keygate_request_seconds` series for every outcome, and no key or key id in
//! any label.

use crate::support::http;
use crate::support::{self, eventually, Gateway, Redis, Setup, Upstream};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every sample in `text`, and every `# TYPE` line as name → type. Panics on a line it cannot
/// read: a malformed exposition is a failure too.
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let (mut samples, mut types) = (Vec::new(), BTreeMap::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').expect("# TYPE name type");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect("labels end with }"))),
        };
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    (samples, types)
}

/// `a="x",b="y \"quoted\""` as a map.
fn parse_labels(mut text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (name, rest) = text.split_once("=\"").unwrap_or_else(|| panic!("a label: {text}"));
        let (mut value, mut chars) = (String::new(), rest.char_indices());
        let end = loop {
            match chars.next().expect("a closing quote") {
                (_, '\\') => value.push(chars.next().expect("an escaped character").1),
                (at, '"') => break at,
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_string(), value);
        text = rest[end + 1..].trim_start_matches(',');
    }
    labels
}

/// The one sample of `name` whose labels include `labels`; fails when there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .collect();
    assert_eq!(matching.len(), 1, "{name}{labels:?}: {matching:?}");
    matching[0].value
}

const OUTCOMES: [&str; 9] = [
    "forwarded",
    "missing_key",
    "malformed_key",
    "unknown_key",
    "disabled_key",
    "rate_limited",
    "store_unavailable",
    "overloaded",
    "upstream_error",
];

/// A frozen store, one lookup holding the only permit (`max_inflight: 1`) until its timeout,
/// and a second one shed meanwhile: one `store_unavailable` and one `overloaded`.
fn one_unavailable_and_one_overloaded(
    gateway: &Gateway,
    redis: &Redis,
    held: &'static str,
    shed: &'static str,
) {
    let addr = gateway.addr;
    redis.freeze();
    let holder = std::thread::spawn(move || {
        http::request(addr, "GET", "/ingest", &[("X-ApiKey", held)], b"").unwrap()
    });
    let holding =
        eventually(Duration::from_secs(3), || gateway.metric("keygate_store_lookups_in_flight") == 1.0);
    assert!(holding.is_some(), "the first lookup never was in flight");
    gateway.with_key(shed).assert_rejected(503, "overloaded");
    holder.join().unwrap().assert_rejected(503, "key_store_unavailable");
    redis.thaw();
}

/// A gateway (`max_inflight: 1`, a 1 s store timeout) over a store holding the keys the tests
/// use, all in the membership filter from the start.
fn gateway(redis: &Redis, upstream: &Upstream, extra: &str) -> Gateway {
    redis.put_key("valid-metric-key", &[("app", "acme")]);
    redis.put_key("revoked-metric-key", &[("app", "acme"), ("status", "revoked")]);
    redis.put_key("tight-metric-key", &[("app", "acme"), ("rate", "0.1"), ("burst", "1")]);
    redis.put_key("held-metric-key", &[("app", "acme")]);
    redis.put_key("shed-metric-key", &[("app", "acme")]);
    redis.put_key("down-metric-key", &[("app", "acme")]);
    let mut setup = Setup::redis(redis, upstream).extra(extra);
    setup.store = format!("  redis:\n    url: {}\n    timeout_ms: 1000\n    max_inflight: 1\n", redis.url());
    setup.start()
}

#[test]
fn every_outcome_has_its_request_seconds_series_counting_what_requests_total_counts() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = gateway(&redis, &upstream, "");
    assert_eq!(gateway.with_key("valid-metric-key").status, 200);
    gateway.get("/ingest", &[]).assert_rejected(401, "missing_api_key");
    gateway.with_key(&"m".repeat(200)).assert_rejected(401, "malformed_api_key");
    gateway.with_key("never-written-key").assert_rejected(403, "unknown_api_key");
    gateway.with_key("revoked-metric-key").assert_rejected(403, "disabled_api_key");
    assert_eq!(gateway.with_key("tight-metric-key").status, 200);
    gateway.with_key("tight-metric-key").assert_rejected(429, "rate_limited");
    one_unavailable_and_one_overloaded(&gateway, &redis, "held-metric-key", "shed-metric-key");
    upstream.kill();
    assert_eq!(gateway.with_key("valid-metric-key").status, 502);

    let expected = |outcome: &str| if outcome == "forwarded" { 2.0 } else { 1.0 };
    let counted = eventually(Duration::from_secs(3), || {
        let (samples, _) = parse(&gateway.metrics());
        OUTCOMES.iter().all(|o| value(&samples, "keygate_requests_total", &[("outcome", o)]) == expected(o))
    });
    assert!(counted.is_some(), "not every outcome was counted as sent:\n{}", gateway.metrics());
    let (samples, _) = parse(&gateway.metrics());
    for outcome in OUTCOMES {
        let of = [("outcome", outcome)];
        let requests = value(&samples, "keygate_requests_total", &of);
        assert_eq!(value(&samples, "keygate_request_seconds_count", &of), requests, "{outcome}");
        let all = [("outcome", outcome), ("le", "+Inf")];
        assert_eq!(value(&samples, "keygate_request_seconds_bucket", &all), requests, "{outcome}");
        let sum = value(&samples, "keygate_request_seconds_sum", &of);
        assert!(sum > 0.0, "{outcome}: no time observed");
    }
    // The held lookup waited out the store's timeout, and its observation says so.
    let waited = value(&samples, "keygate_request_seconds_sum", &[("outcome", "store_unavailable")]);
    assert!(waited >= 0.95, "store_unavailable observed {waited} s");
}

/// The README's metrics table: name and type.
const DOCUMENTED: [(&str, &str); 8] = [
    ("keygate_requests_total", "counter"),
    ("keygate_cache_lookups_total", "counter"),
    ("keygate_store_queries_total", "counter"),
    ("keygate_store_query_seconds", "histogram"),
    ("keygate_cache_entries", "gauge"),
    ("keygate_upstream_healthy", "gauge"),
    ("keygate_request_seconds", "histogram"),
    ("keygate_config_reloads_total", "counter"),
];

#[test]
fn each_metric_has_its_documented_type_and_no_label_holds_a_key_or_a_key_id() {
    let (mut redis, upstream) = (Redis::start(), Upstream::start());
    let auth: SocketAddr = format!("127.0.0.1:{}", support::free_port()).parse().unwrap();
    let gateway = gateway(&redis, &upstream, &format!("auth_listen: \"{auth}\""));
    let malformed = "m".repeat(200);
    let mut used = vec!["valid-metric-key", "revoked-metric-key", "tight-metric-key", "never-written-key"];
    assert_eq!(gateway.with_key("valid-metric-key").status, 200);
    assert_eq!(gateway.get("/ingest?apikey=valid-metric-key", &[]).status, 200);
    gateway.with_key("revoked-metric-key").assert_rejected(403, "disabled_api_key");
    gateway.with_key("never-written-key").assert_rejected(403, "unknown_api_key");
    gateway.with_key("tight-metric-key");
    gateway.with_key("tight-metric-key").assert_rejected(429, "rate_limited");
    gateway.with_key(&malformed).assert_rejected(401, "malformed_api_key");
    let allowed = http::request(auth, "GET", "/_keygate", &[("X-ApiKey", "valid-metric-key")], b"").unwrap();
    assert_eq!(allowed.status, 204);
    one_unavailable_and_one_overloaded(&gateway, &redis, "held-metric-key", "shed-metric-key");
    used.extend(["held-metric-key", "shed-metric-key"]);
    redis.kill();
    gateway.with_key("down-metric-key").assert_rejected(503, "key_store_unavailable");
    used.push("down-metric-key");
    upstream.kill();
    assert_eq!(gateway.with_key("valid-metric-key").status, 502);
    let settled = eventually(Duration::from_secs(3), || {
        gateway.metric(r#"keygate_requests_total{outcome="upstream_error"}"#) == 1.0
    });
    assert!(settled.is_some(), "the last request was never counted");

    let text = gateway.metrics();
    let (samples, types) = parse(&text);
    for (name, kind) in DOCUMENTED {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "# TYPE of {name}");
        let suffixes: &[&str] = if kind == "histogram" { &["_bucket", "_sum", "_count"] } else { &[""] };
        for suffix in suffixes {
            let series = format!("{name}{suffix}");
            assert!(samples.iter().any(|s| s.name == series), "no {series} series:\n{text}");
        }
    }

    // Guarantee 7 and the table's last line: labels hold outcomes, results, kinds, peers and
    // bucket bounds, and nothing of a key.
    let mut secrets: Vec<String> = used.iter().map(|k| k.to_string()).collect();
    secrets.push(malformed);
    for key in used {
        let id = keygate::key::ApiKey::from_cli(key).id().to_hex();
        secrets.extend([id[..16].to_string(), id.to_uppercase()[..16].to_string(), id]);
    }
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "`{secret}` (a key or key id) is in /metrics:\n{text}");
    }
    let peer = upstream.addr.to_string();
    for sample in &samples {
        for (label, value) in &sample.labels {
            let allowed = match label.as_str() {
                "outcome" | "result" | "kind" => value.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "peer" => *value == peer,
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                _ => false,
            };
            assert!(allowed, "{}: label {label}=\"{value}\" is none of the documented ones", sample.name);
        }
    }
}
