//! The contract, whatever shape the Redis store has: one test body run on a single server, a
//! Sentinel group and a cluster. Valid keys are forwarded with their app, unknown ones refused,
//! an announcement is heard within a second, `keygate keys` adds and revokes, and the filter
//! built at start (from every master, in a cluster) rejects no valid key.

use crate::support::http;
use crate::support::topology::{id_of, keys_cli, put_keys, Cluster, KeyWriter, SentinelGroup};
use crate::support::{eventually, Redis, Setup, Upstream};
use std::time::Duration;

fn the_contract_holds(writer: &dyn KeyWriter) {
    let upstream = Upstream::start();
    // Enough keys that a cluster spreads them over every master.
    let keys = put_keys(writer, "mode-key", 30);
    let gateway = Setup::with_store_yaml(writer.store_yaml(), &upstream).start();

    // The filter, trusted by now, was built from the whole store: it rejects no valid key.
    for key in &keys {
        assert_eq!(gateway.with_key(key).text(), r#"{"app":"acme","bytes":0}"#);
    }
    gateway.with_key("mode-unknown-key").assert_rejected(403, "unknown_api_key");
    assert_eq!(gateway.metric("keygate_filter_rejections_total"), 1.0, "the filter did not answer");

    // An announced change is applied within a second.
    writer.put_key(&keys[0], &[("app", "acme"), ("status", "revoked")]);
    writer.announce(&keys[0]);
    let heard = eventually(Duration::from_secs(1), || gateway.with_key(&keys[0]).status == 403);
    assert!(heard.is_some(), "the invalidation was not heard within a second");
    gateway.with_key(&keys[0]).assert_rejected(403, "disabled_api_key");

    // `keygate keys` writes where the store is, and announces.
    let secret = "mode-cli-secret-key";
    let added = keys_cli(&gateway.config, &["keys", "add", secret, "--app", "cli"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let accepted = eventually(Duration::from_secs(1), || gateway.with_key(secret).status == 200);
    assert!(accepted.is_some(), "the added key was not accepted within a second");
    assert_eq!(gateway.with_key(secret).text(), r#"{"app":"cli","bytes":0}"#);
    let shown = keys_cli(&gateway.config, &["keys", "show", secret]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&format!("id: {}", id_of(secret))));
    assert!(keys_cli(&gateway.config, &["keys", "revoke", secret]).status.success());
    let refused = eventually(Duration::from_secs(1), || gateway.with_key(secret).status == 403);
    assert!(refused.is_some(), "the revoked key was still accepted a second later");

    assert_eq!(http::get(gateway.admin, "/readyz").unwrap().status, 200);
    assert!(gateway.metrics().contains("keygate_store_failovers_total 0"));
    gateway.assert_no_key_in_logs(&[secret, &keys[1]]);
}

#[test]
fn on_a_single_redis() {
    the_contract_holds(&Redis::start());
}

#[test]
fn on_a_sentinel_group() {
    the_contract_holds(&SentinelGroup::start());
}

#[test]
fn on_a_cluster_whose_masters_all_hold_keys() {
    let cluster = Cluster::start(false);
    the_contract_holds(&cluster);
    let masters = cluster.keys_per_master();
    assert_eq!(masters.len(), 3);
    assert!(masters.values().all(|&keys| keys > 0), "keys on one slot's master only: {masters:?}");
}
