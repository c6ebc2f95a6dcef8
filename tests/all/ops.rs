//! The operations port: probes, and metrics whose values match what happened.

use std::time::Duration;

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

fn metric(text: &str, line_start: &str) -> Option<u64> {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn probes_and_metrics_follow_what_happens() {
    let dir = TempDir::new("ops");
    let names = ["a@127.0.78.1", "b@127.0.78.2", "c@127.0.78.3"];
    let port = "127.0.78.1:8080";
    let a_config = format!("{}\n[http]\nlisten = \"{port}\"\n", static_topology(&names, 200));
    let a = Node::start(names[0], &dir.write("a.toml", &a_config));
    let b = Node::start(names[1], &dir.write("b.toml", &static_topology(&names, 200)));
    wait_mesh(&[&a, &b], &names[..2], FORM);

    assert_eq!(http(port, "GET", "/healthz", b""), (200, "ok\n".to_string()));
    wait_until(FORM, "a to be ready", || http(port, "GET", "/readyz", b"").0 == 200, || a.log());
    let scrape = || http(port, "GET", "/metrics", b"").1;
    let m = scrape();
    assert_eq!(metric(&m, "wasmnode_members "), Some(2), "{m}");
    assert!(metric(&m, "wasmnode_connects_total ").unwrap_or(0) >= 1, "{m}");
    assert!(metric(&m, "wasmnode_strategy_polls_total{topology=\"local\"} ").unwrap_or(0) >= 1, "{m}");
    assert!(m.contains("# TYPE wasmnode_calls_seconds histogram"), "{m}");

    // A node with another cookie: counted as a handshake failure by its cause.
    let c = Node::start_with_cookie(names[2], &dir.write("c.toml", &static_topology(&names, 200)), "another-cookie-5e9d");
    wait_until(
        FORM,
        "a cookie mismatch counted",
        || metric(&scrape(), "wasmnode_handshake_failures_total{cause=\"cookie_mismatch\"} ").unwrap_or(0) >= 1,
        scrape,
    );

    // SIGKILL b: one disconnect, counted by its reason; one member left.
    b.signal(libc::SIGKILL);
    wait_until(FORM, "the disconnect counted", || metric(&scrape(), "wasmnode_disconnects_total{reason=\"connection_closed\"} ") == Some(1), scrape);
    assert_eq!(metric(&scrape(), "wasmnode_members "), Some(1));
    drop(c);
}

/// `WASMNODE_LOG_FORMAT=json`: every line a node writes is one JSON object, and the
/// node, the peer, the worker and the reason stand as fields of their own.
#[test]
fn json_logs_carry_node_peer_worker_and_reason_as_fields() {
    let dir = TempDir::new("json-logs");
    let names = ["a@127.0.10.21", "b@127.0.10.22"];
    let config = dir.write("t.toml", &worker_topology(&names, &[("probe", "worker_probe.wasm", "activate_on_call = true")], None));
    let a = Node::start_with(names[0], &config, &[], &[("WASMNODE_LOG_FORMAT", "json")]);
    let mut b = Node::start(names[1], &config);
    a.wait_members(&names, FORM);
    b.wait_members(&names, FORM);
    // Traps: the instances that ran on a log `worker … trapped` there (placement is a
    // hash of the names, so which do is the same every run).
    for k in 0..10 {
        let (ok, out) = call(names[0], &format!("probe/p{k}"), "crash");
        assert!(!ok, "{out}");
    }
    b.signal(libc::SIGKILL);
    a.wait_log("node down b@127.0.10.22", FORM);
    let _ = b.wait_exit(FORM);
    // Every line, the worker's own stderr (Rust's panic message) included, is JSON.
    let log = a.log();
    let lines: Vec<serde_json::Value> =
        log.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l}"))).collect();
    assert!(lines.iter().all(|v| v["level"].is_string() && v["message"].is_string() && v["timestamp"].is_string()), "{lines:?}");
    let down = lines.iter().find(|v| v["message"].as_str().is_some_and(|m| m.starts_with("node down b@"))).expect("a node-down line");
    assert_eq!(down["node"], names[0], "{down}");
    assert_eq!(down["peer"], names[1], "{down}");
    assert!(down["reason"].as_str().is_some_and(|r| !r.is_empty()), "{down}");
    let trap = lines.iter().find(|v| v["message"].as_str().is_some_and(|m| m.contains("trapped"))).expect("a trap line");
    assert!(trap["worker"].as_str().is_some_and(|w| w.starts_with("probe/p")), "{trap}");
    assert!(trap["reason"].as_str().is_some_and(|r| !r.is_empty()), "{trap}");
    let panic =
        lines.iter().find(|v| v["stream"] == "stderr" && v["message"].as_str().is_some_and(|m| m.contains("crashing on purpose"))).expect("the guest's stderr");
    assert!(panic["worker"].as_str().is_some_and(|w| w.starts_with("probe/p")), "{panic}");
    assert!(lines.iter().any(|v| v["peer"] == names[1] && v["message"].as_str().is_some_and(|m| m.starts_with("connected to"))), "{lines:?}");
    // A bad format is refused, naming the ones there are.
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .args(["--name", "c@127.0.10.23"])
        .env("WASMNODE_COOKIE", COOKIE)
        .env("WASMNODE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the log formats are `text` and `json`"), "{}", output_text(&out));
}
