//! `keygate -t -c FILE`: every shipped config passes; a bad one fails with every problem named.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keygate")).arg("-t").arg("-c").arg(path).output().unwrap()
}

#[test]
fn every_shipped_config_passes_the_check() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&conf).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // Key files and other tools' configs live beside the gateway's own.
        let is_gateway_config =
            name.ends_with(".yaml") && !name.contains("keys") && !name.starts_with("prometheus");
        if !is_gateway_config {
            continue;
        }
        let out = check(&path);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        checked.push(name);
    }
    assert!(!checked.is_empty(), "no config in conf/ was checked");
}

#[test]
fn a_bad_config_exits_1_naming_every_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "listen: [nowhere]\nupstream:\n  peers: []\n  colour: blue\nstore:\n  file: k.yaml\ncache:\n  ttl_s: 0\n").unwrap();
    // The key file is sound: every problem is in the config itself (a broken key file has a
    // test of its own below).
    std::fs::write(dir.path().join("k.yaml"), "keys:\n  - key: config-check-key-1\n    app: a\n").unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Each problem on a line of its own, with the line it is on; the empty `peers` beside the
    // unknown `colour` in the same section too.
    let expected = [
        "line 1: listen[0]: `nowhere` is not HOST:PORT",
        "line 1: listen: at least one listener is required",
        "line 3: upstream.peers: at least one peer is required",
        "line 4: upstream.colour: unknown field `colour`",
        "line 8: cache.ttl_s: must be at least 1",
    ];
    for problem in expected {
        assert!(stderr.lines().any(|l| l.contains(problem)), "`{problem}` not in:\n{stderr}");
    }
    assert!(stderr.starts_with(&format!("{}: 5 problems\n", path.display())), "{stderr}");
    assert!(!stderr.contains("config-check-key-1"), "the check printed a key: {stderr}");
}

#[test]
fn a_missing_file_is_an_error_not_a_panic() {
    let out = check(Path::new("/nonexistent/keygate.yaml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn a_broken_key_file_fails_the_check_naming_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.yaml");
    std::fs::write(
        &path,
        "listen: [127.0.0.1:6188]\nupstream:\n  peers: [127.0.0.1:8080]\nstore:\n  file: keys.yaml\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("keys.yaml"), "keys:\n  - key: fine\n    app: a\n  - app: b\n").unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("store.file") && stderr.contains("keys[1]"), "{stderr}");
    assert!(!stderr.contains("fine"), "the check printed a key: {stderr}");

    std::fs::write(dir.path().join("keys.yaml"), "keys:\n  - key: fine\n    app: a\n").unwrap();
    assert!(check(&path).status.success());
}
