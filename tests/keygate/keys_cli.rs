//! `keygate keys add|revoke|show` against a running gateway: changes take effect within a
//! second (Redis) or on SIGHUP (file store), and the key itself is never stored or printed.

use crate::support::{eventually, Redis, Setup, Upstream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

fn keygate(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keygate")).args(args).arg("-c").arg(config).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn add_and_revoke_take_effect_within_a_second_and_redis_holds_no_key() {
    let (redis, upstream) = (Redis::start(), Upstream::start());
    let gateway = Setup::redis(&redis, &upstream).start();
    let secret = "cli-secret-key-0001";
    let id = keygate::key::ApiKey::from_cli(secret).id().to_hex();
    gateway.with_key(secret).assert_rejected(403, "unknown_api_key");

    let added =
        keygate(&gateway.config, &["keys", "add", secret, "--app", "acme", "--rate", "5", "--burst", "9"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert!(stdout(&added).contains(&id) && !stdout(&added).contains(secret));
    let accepted = eventually(Duration::from_secs(1), || gateway.with_key(secret).status == 200);
    assert!(accepted.is_some(), "the added key was not accepted within a second");

    let shown = keygate(&gateway.config, &["keys", "show", secret]);
    let text = stdout(&shown);
    assert!(shown.status.success());
    for line in [
        format!("id: {id}"),
        "app: acme".into(),
        "rate: 5".into(),
        "burst: 9".into(),
        "status: active".into(),
    ] {
        assert!(text.contains(&line), "`{line}` not in:\n{text}");
    }
    assert!(!text.contains(secret));

    let revoked = keygate(&gateway.config, &["keys", "revoke", secret]);
    assert!(revoked.status.success());
    let refused = eventually(Duration::from_secs(1), || gateway.with_key(secret).status == 403);
    assert!(refused.is_some(), "the revoked key was still accepted a second later");
    gateway.with_key(secret).assert_rejected(403, "disabled_api_key");

    assert_eq!(redis.keys(), [format!("keygate:key:{id}")]);
    let fields: Vec<String> =
        redis::cmd("HVALS").arg(format!("keygate:key:{id}")).query(&mut redis.connection()).unwrap();
    assert!(fields.iter().all(|v| !v.contains(secret)), "Redis holds the key: {fields:?}");

    let missing = keygate(&gateway.config, &["keys", "revoke", "never-added"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&missing.stderr).contains("never-added"));
    gateway.assert_no_key_in_logs(&[secret]);
}

#[test]
fn in_the_file_store_keys_are_written_by_id_and_applied_on_sighup() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, "keys:\n  - key: existing-key\n    app: one\n").unwrap();
    let gateway = Setup::file(&keys, &upstream).start();
    let secret = "file-cli-secret";

    let added = keygate(&gateway.config, &["keys", "add", secret, "--app", "two"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let file = std::fs::read_to_string(&keys).unwrap();
    assert!(!file.contains(secret), "the key itself was written:\n{file}");
    gateway.reload(|yaml| yaml);
    assert_eq!(gateway.with_key(secret).text(), r#"{"app":"two","bytes":0}"#);
    assert_eq!(gateway.with_key("existing-key").status, 200);

    assert!(keygate(&gateway.config, &["keys", "revoke", secret]).status.success());
    gateway.reload(|yaml| yaml);
    gateway.with_key(secret).assert_rejected(403, "disabled_api_key");
    assert!(stdout(&keygate(&gateway.config, &["keys", "show", secret])).contains("status: revoked"));
}
