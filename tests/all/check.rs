//! `wasmnode check` and start-up errors. Topology cases are data: each folder of
//! tests/check-cases holds a `topology.toml` and, in `expected.txt`, the error text
//! (file:line:col and key included) that `check` must print.

use std::process::Command;

use wasmnode_testkit::*;

#[test]
fn every_check_case_fails_with_its_expected_error() {
    let cases = repo_root().join("tests/check-cases");
    let mut seen = 0;
    for entry in std::fs::read_dir(&cases).unwrap() {
        let dir = entry.unwrap().path();
        let config = dir.join("topology.toml");
        let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        let out = Command::new(bin()).args(["check", "--config"]).arg(&config).env("WASMNODE_COOKIE", COOKIE).current_dir(repo_root()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: check must fail\n{stderr}", dir.display());
        for want in expected.lines().filter(|l| !l.trim().is_empty()) {
            let want = want.replace("$CASE", &dir.display().to_string());
            assert!(stderr.contains(&want), "{}: expected {want:?} in:\n{stderr}", dir.display());
        }
        seen += 1;
    }
    assert!(seen >= 8, "only {seen} check cases found in {}", cases.display());
}

/// Every topology in config/ passes `check`, with the variables the platform would set.
#[test]
fn the_shipped_topologies_pass_check() {
    let mut seen = 0;
    // swarm.toml reads the cookie and the gateway's token from the files Swarm mounts
    // secrets at.
    let cookie_file = std::env::temp_dir().join(format!("wasmnode-check-cookie-{}", std::process::id()));
    std::fs::write(&cookie_file, COOKIE).unwrap();
    let token_file = std::env::temp_dir().join(format!("wasmnode-check-token-{}", std::process::id()));
    std::fs::write(&token_file, GATEWAY_TOKEN).unwrap();
    for entry in std::fs::read_dir(repo_root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&path)
            .env("WASMNODE_COOKIE", COOKIE)
            .env("POD_IP", "10.1.0.65")
            .env("POD_NAME", "myapp-0")
            .env("NAMESPACE", "default")
            .env("NODES", "a@127.0.0.1,b@127.0.0.2")
            .env("WASMNODE_COOKIE_FILE", &cookie_file)
            .env("WASMNODE_GATEWAY_TOKEN", GATEWAY_TOKEN)
            .env("WASMNODE_GATEWAY_TOKEN_FILE", &token_file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        assert!(stdout.ends_with(": ok\n"), "{stdout}");
        seen += 1;
    }
    let _ = std::fs::remove_file(&cookie_file);
    let _ = std::fs::remove_file(&token_file);
    assert!(seen >= 7, "only {seen} topologies in config/");
}

#[test]
fn run_without_a_cookie_fails_clearly() {
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(repo_root().join("config/local.toml"))
        .args(["--name", "a@127.0.22.1"])
        .env_remove("WASMNODE_COOKIE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no cookie: environment variable WASMNODE_COOKIE is not set"), "{stderr}");
}

#[test]
fn an_insecure_literal_cookie_is_allowed_only_when_asked_and_warned_about() {
    let dir = TempDir::new("literal");
    let config = dir.write("t.toml", "[node]\nname = \"a@127.0.23.1\"\ncookie = \"dev\"\nallow_insecure_cookie = true\n");
    let out = Command::new(bin()).args(["check", "--config"]).arg(&config).env_remove("WASMNODE_COOKIE").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut node = Node::start("a@127.0.23.1", &config);
    node.wait_log("the cookie is a literal in the config", std::time::Duration::from_secs(10));
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(std::time::Duration::from_secs(5)), Some(0));
}
