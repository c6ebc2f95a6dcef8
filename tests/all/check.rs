//! `wasmnode check` and start-up errors. Topology cases are data: each folder of
//! tests/check-cases holds a `topology.toml` and, in `expected.txt`, the error text
//! (file:line:col and key included) that `check` must print.

use std::process::Command;
use std::time::Duration;

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
        assert_eq!(out.status.code(), Some(1), "{}: check must fail\n{stderr}", dir.display());
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

/// `check --offline` passes every shipped topology with none of the environment a pod
/// or container has (no cookie, no POD_IP, no NAMESPACE, no secret files): what a CI job
/// runs before deploying.
#[test]
fn the_shipped_topologies_pass_an_offline_check_without_their_environment() {
    let dir = TempDir::new("offline");
    let paths: Vec<std::path::PathBuf> =
        std::fs::read_dir(repo_root().join("config")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect();
    assert!(paths.len() >= 7, "{paths:?}");
    for path in paths {
        let out = Command::new(bin())
            .args(["check", "--offline", "--config"])
            .arg(&path)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WASMNODE_CACHE_DIR", dir.0.join("cache"))
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), output_text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("compiled-code cache: ") && stdout.ends_with(": ok\n"), "{stdout}");
    }
    // Without --offline, the same check of a pod's topology says what is missing.
    let out = Command::new(bin()).args(["check", "--config"]).arg(repo_root().join("config/kubernetes-api.toml")).env_remove("POD_IP").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("POD_IP is not set"), "{}", output_text(&out));
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
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no cookie: environment variable WASMNODE_COOKIE is not set"), "{stderr}");
}

/// A cookie shorter than 16 bytes stops the node before it listens, saying how to make one.
#[test]
fn run_with_a_short_cookie_fails_clearly() {
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(repo_root().join("config/local.toml"))
        .args(["--name", "a@127.0.22.1"])
        .env("WASMNODE_COOKIE", "secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is 6 bytes; at least 16 are needed (make one with `head -c 32 /dev/urandom | base64`)"), "{stderr}");
}

#[test]
fn an_insecure_literal_cookie_is_allowed_only_when_asked_and_warned_about() {
    let dir = TempDir::new("literal");
    let config = dir.write("t.toml", "[node]\nname = \"a@127.0.23.1\"\ncookie = \"dev\"\nallow_insecure_cookie = true\n");
    let out = Command::new(bin()).args(["check", "--config"]).arg(&config).env_remove("WASMNODE_COOKIE").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: ") && stderr.contains("t.toml: the cookie is a literal in the config"), "check passes, and says so: {stderr}");
    let mut node = Node::start("a@127.0.23.1", &config);
    node.wait_log("the cookie is a literal in the config", std::time::Duration::from_secs(10));
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(std::time::Duration::from_secs(5)), Some(0));
}

/// A cookie file every user of the machine can read: `check` passes and says so, the
/// node says so when it starts, and with the file made private neither does.
#[test]
fn a_cookie_file_others_can_read_is_warned_about_by_check_and_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("check-readable-cookie");
    let cookie = dir.write("cookie", COOKIE);
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o644)).unwrap();
    let name = "a@127.0.23.3";
    let config = dir.write("t.toml", &format!("[node]\nname = \"{name}\"\ncookie_file = \"cookie\"\n"));
    let want = format!("the cookie file {} can be read by every user of this machine: chmod o-r it", cookie.display());
    let check = || Command::new(bin()).args(["check", "--config"]).arg(&config).env_remove("WASMNODE_COOKIE").output().unwrap();
    let out = check();
    assert!(out.status.success(), "a warning, not an error: {}", output_text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("warning: {want}")), "{}", output_text(&out));
    let mut node = Node::start(name, &config);
    node.wait_log(&want, Duration::from_secs(10));
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(Duration::from_secs(5)), Some(0));
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check();
    assert!(out.status.success() && !output_text(&out).contains("can be read by every user"), "{}", output_text(&out));
}

/// A durable kind whose state could outgrow the one message a copy goes in passes
/// `check` with a warning at the key that allows it, and the node says the same at start.
#[test]
fn a_durable_kind_that_can_outgrow_a_copy_is_warned_about_by_check_and_at_start() {
    let dir = TempDir::new("check-big-state");
    let name = "a@127.0.23.2";
    let kinds = [("counter", "worker_counter.wasm", "durability = \"replicated\"\nmemory_limit_mb = 128")];
    let config = dir.write("t.toml", &worker_topology(&[name], &kinds, None));
    let line = std::fs::read_to_string(&config).unwrap().lines().position(|l| l.starts_with("memory_limit_mb")).unwrap() + 1;
    let want = format!("t.toml:{line}:19: key `worker.counter.memory_limit_mb`: a durable instance's state may grow to 128 MiB here");
    let out = Command::new(bin()).args(["check", "--config"]).arg(&config).env("WASMNODE_COOKIE", COOKIE).output().unwrap();
    assert!(out.status.success(), "a warning, not an error: {}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: ") && stderr.contains(&want), "{stderr}");
    let a = Node::start(name, &config);
    a.wait_log(&want, Duration::from_secs(10));
    a.wait_log("listening on", Duration::from_secs(10));
    assert!(start_worker(name, "counter", "c").0, "{}", a.log());
}

/// The compiled-code cache runs only what it compiled from a component: with its entries
/// swapped on disk (each under another's name), each is compiled again and each kind runs
/// its own code.
#[test]
fn a_swapped_compiled_code_cache_entry_is_compiled_again_not_run() {
    let dir = TempDir::new("check-cache");
    let cache = dir.0.join("cache");
    let name = "a@127.0.95.1";
    let kinds = [("counter", "worker_counter.wasm", ""), ("order", "worker_order.wasm", "activate_on_call = true")];
    let config = dir.write("t.toml", &worker_topology(&[name], &kinds, None));
    let out = Command::new(bin()).args(["check", "--config"]).arg(&config).env("WASMNODE_COOKIE", COOKIE).env("WASMNODE_CACHE_DIR", &cache).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let mut entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "cwasm")).collect();
    entries.sort();
    // The strategy's, the counter's and the order's: each moves to the next one's name.
    assert_eq!(entries.len(), 3, "{entries:?}");
    let swap = dir.0.join("swap");
    std::fs::rename(&entries[0], &swap).unwrap();
    std::fs::rename(&entries[1], &entries[0]).unwrap();
    std::fs::rename(&entries[2], &entries[1]).unwrap();
    std::fs::rename(&swap, &entries[2]).unwrap();

    let cache_env = cache.display().to_string();
    let a = Node::start_with(name, &config, &[], &[("WASMNODE_CACHE_DIR", cache_env.as_str())]);
    a.wait_log("listening on", Duration::from_secs(10));
    assert_eq!(a.count("is not the code compiled from"), 3, "{}", a.log());
    assert!(start_worker(name, "counter", "c").0);
    assert_eq!(call(name, "counter/c", "increment"), (true, "1".to_string()));
    assert_eq!(call(name, "order/o", r#"{"add":[5]}"#), (true, "[5]".to_string()));
}
