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
