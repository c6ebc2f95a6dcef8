//! Workers that reach the world: outbound HTTP only to the hosts their kind is granted,
//! their kind's configuration, their stdout and stderr in the node's log, and a slow
//! server that holds nothing but the waiting worker's own mailbox.

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmnode_testkit::*;

const FORM: Duration = Duration::from_secs(10);

/// A request a [`Server`] took: method, path, `Host` header, body.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    host: String,
    body: String,
}

/// A real HTTP/1.1 server on `addr`: it counts connections, records each request and
/// answers `200 got BODY` after `delay` (the first `fail_first` requests get a 500).
struct Server {
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(addr: &str, delay: Duration) -> Server {
        Server::start_failing(addr, delay, 0)
    }

    fn start_failing(addr: &str, delay: Duration, fail_first: usize) -> Server {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let connections = http_server(addr, false, move |request| {
            let (method, path) = request.method_and_path();
            let host = request.header("host").unwrap_or("").to_string();
            let body = String::from_utf8_lossy(&request.body).to_string();
            let nth = {
                let mut seen = s.lock().unwrap();
                seen.push(Seen { method, path, host, body: body.clone() });
                seen.len()
            };
            // The server is slow on purpose (what the tests measure), not the test waiting.
            std::thread::sleep(delay);
            if nth <= fail_first {
                ("500 Internal Server Error", "text/plain", b"failing on purpose".to_vec())
            } else {
                ("200 OK", "text/plain", format!("got {body}").into_bytes())
            }
        });
        Server { connections, seen }
    }
}

fn probe_kind(extra: &str) -> String {
    format!("activate_on_call = true\n{extra}")
}

#[test]
fn a_worker_reaches_only_the_hosts_its_kind_is_granted() {
    let dir = TempDir::new("outbound");
    let granted = Server::start("127.0.108.10:8089", Duration::ZERO);
    let other = Server::start("127.0.108.11:8089", Duration::ZERO);
    let names = ["a@127.0.108.1"];
    let extra = probe_kind(
        "allowed_outbound_hosts = [\"http://127.0.108.10:8089\"]\n[worker.probe.config]\nwebhook = \"http://127.0.108.10:8089/hook\"\nsecret = \"${WASMNODE_TEST_SECRET}\"\n",
    );
    let config = dir.write("t.toml", &worker_topology(&names, &[("probe", "worker_probe.wasm", &extra)], None));
    let a = Node::start_with(names[0], &config, &[], &[("WASMNODE_TEST_SECRET", "s3cret-from-env")]);
    a.wait_members(&names, FORM);

    // Granted: the request arrives, with its Host header, and the answer comes back.
    let (ok, out) = call(names[0], "probe/p1", "http-post http://127.0.108.10:8089/hook hello");
    assert!(ok, "{out}");
    assert_eq!(out, "200 got hello");
    let seen = granted.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].method.as_str(), seen[0].path.as_str(), seen[0].host.as_str(), seen[0].body.as_str()), ("POST", "/hook", "127.0.108.10:8089", "hello"));

    // Not granted (another host; the granted host on another port; https): refused at
    // once, nothing dialled, and the log names the worker and the host.
    for url in ["http://127.0.108.11:8089/", "http://127.0.108.10:8090/", "https://127.0.108.10:8089/"] {
        let t = Instant::now();
        let (ok, out) = call(names[0], "probe/p1", &format!("http-get {url}"));
        assert!(ok && out.starts_with("error: ") && out.contains("HttpRequestDenied"), "{url}: {out}");
        assert!(t.elapsed() < Duration::from_secs(3), "{url}: refused after {:?}", t.elapsed());
    }
    a.wait_log("worker probe/p1 may not reach http://127.0.108.11:8089: refused", FORM);
    // A worker that keeps trying costs the log one line per host per window.
    for _ in 0..5 {
        assert!(call(names[0], "probe/p1", "http-get http://127.0.108.11:8089/again").1.contains("HttpRequestDenied"));
    }
    assert_eq!(a.count("may not reach http://127.0.108.11:8089"), 1, "{}", a.log());
    assert_eq!(other.connections.load(Ordering::SeqCst), 0, "a refused request must not connect");
    assert_eq!(granted.connections.load(Ordering::SeqCst), 1, "only the granted request connected");

    // Another kind with no grants reaches nothing.
    // (The probe kind is the only one here; its config answers through wasi:config/store.)
    assert_eq!(call(names[0], "probe/p1", "config webhook"), (true, "http://127.0.108.10:8089/hook".to_string()));
    assert_eq!(call(names[0], "probe/p1", "config secret"), (true, "s3cret-from-env".to_string()), "${{VAR}} expands");
    assert_eq!(call(names[0], "probe/p1", "config missing"), (true, "none".to_string()));

    // The worker's stdout and stderr are log lines under its name.
    assert_eq!(call(names[0], "probe/p1", "print hello from the guest"), (true, "ok".to_string()));
    a.wait_log_count("[probe/p1] hello from the guest", 2, FORM);
    let log = a.log();
    assert!(log.lines().any(|l| l.contains("INFO") && l.contains("[probe/p1] hello from the guest") && l.contains("stream=\"stdout\"")), "{log}");
    assert!(log.lines().any(|l| l.contains("WARN") && l.contains("[probe/p1] hello from the guest") && l.contains("stream=\"stderr\"")), "{log}");
    // Whatever a line holds, it stays one line of the log: a carriage return (which on a
    // terminal writes over what came before it), a vertical tab, a line separator.
    let forged = "a\r2026-12-05T00:00:00.000000Z  INFO started order/forged\u{b}b\u{2028}c";
    assert_eq!(call(names[0], "probe/p1", &format!("print {forged}")), (true, "ok".to_string()));
    let escaped = r"[probe/p1] a\r2026-12-05T00:00:00.000000Z  INFO started order/forged\x0bb\u{2028}c";
    a.wait_log_count(escaped, 2, FORM);
    let log = a.log();
    assert!(!log.contains(['\r', '\u{b}', '\u{2028}']), "{log:?}");
}

#[test]
fn a_worker_without_grants_reaches_nothing() {
    let dir = TempDir::new("outbound-none");
    let server = Server::start("127.0.108.20:8089", Duration::ZERO);
    let names = ["a@127.0.108.2"];
    let config = dir.write("t.toml", &worker_topology(&names, &[("probe", "worker_probe.wasm", &probe_kind(""))], None));
    let a = Node::start(names[0], &config);
    a.wait_members(&names, FORM);
    let (ok, out) = call(names[0], "probe/p1", "http-get http://127.0.108.20:8089/");
    assert!(ok && out.contains("HttpRequestDenied"), "{out}");
    a.wait_log("worker probe/p1 may not reach http://127.0.108.20:8089: refused", FORM);
    assert_eq!(server.connections.load(Ordering::SeqCst), 0);
}

/// A worker waiting 10 s on a slow server holds only its own mailbox: other instances
/// on its node answer at once, the nodes stay members, and its answer then arrives. A
/// kind whose timeout is shorter gets a timeout instead.
#[test]
fn a_worker_waiting_on_a_slow_server_holds_only_its_own_mailbox() {
    let dir = TempDir::new("outbound-slow");
    let slow = Server::start("127.0.108.30:8089", Duration::from_secs(10));
    let names = ["a@127.0.108.3", "b@127.0.108.4"];
    let grant = "allowed_outbound_hosts = [\"http://127.0.108.30:8089\"]";
    let kinds = [("probe", "worker_probe.wasm", probe_kind(grant)), ("hasty", "worker_probe.wasm", probe_kind(&format!("{grant}\noutbound_timeout_ms = 500")))];
    let kinds: Vec<(&str, &str, &str)> = kinds.iter().map(|(k, f, e)| (*k, *f, e.as_str())).collect();
    let config = dir.write("t.toml", &worker_topology(&names, &kinds, None));
    let nodes = [Node::start(names[0], &config), Node::start(names[1], &config)];
    for n in &nodes {
        n.wait_members(&names, FORM);
    }
    // Start the slow one where we can see it, then the fast ones beside it.
    let (ok, out) = start_worker(names[0], "probe", "slow");
    assert!(ok, "{out}");
    let on = started_on(&out);
    let node = nodes.iter().find(|n| n.name == on).unwrap();
    let t = Instant::now();
    let waiting = {
        let on = on.clone();
        std::thread::spawn(move || cli(&["call", "--node", &on, "--timeout-ms", "20000", "probe/slow", "http-get http://127.0.108.30:8089/slow"], COOKIE))
    };
    wait_until(FORM, "the slow request to arrive", || !slow.seen.lock().unwrap().is_empty(), String::new);
    // Meanwhile, everything else goes on: other instances on the same node answer.
    for i in 0..20 {
        let key = format!("fast{i}");
        let (ok, out) = call(&on, &format!("probe/{key}"), "hello");
        assert!(ok && out == "hello", "{key}: {out}");
    }
    assert!(t.elapsed() < Duration::from_secs(8), "the other calls waited for the slow one ({:?})", t.elapsed());
    let out = waiting.join().unwrap();
    let text = output_text(&out);
    assert!(out.status.success() && text.trim() == "200 got", "{text}");
    assert!(t.elapsed() >= Duration::from_secs(10), "answered before the server did");
    for n in &nodes {
        assert_eq!(n.count("node down"), 0, "{}", n.log());
    }
    assert_eq!(node.count("trapped"), 0, "waiting is not the worker's own time: {}", node.log());
    // A kind with a 500 ms timeout gets a timeout error, not a hang.
    let t = Instant::now();
    let (ok, out) = call(&on, "hasty/h1", "http-get http://127.0.108.30:8089/hasty");
    assert!(ok && out.starts_with("error: ") && out.contains("Timeout"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// A worker that keeps a request in flight while it computes is charged for its
/// computing: only the time it is stopped in a host call (blocked on an answer) is left
/// out of its deadline. (Before, each request credited its own wait to the worker from
/// the request's own task, so a worker that kept requests to a 100 ms server in flight
/// while it spun was never stopped by its 1 s deadline.)
#[test]
fn a_worker_computing_while_its_requests_are_under_way_meets_its_deadline() {
    let dir = TempDir::new("outbound-spin");
    let server = Server::start("127.0.108.91:8089", Duration::from_millis(100));
    let name = "a@127.0.108.90";
    let kind = probe_kind("allowed_outbound_hosts = [\"http://127.0.108.91:8089\"]\ncall_timeout_ms = 1000");
    let config = dir.write("t.toml", &worker_topology(&[name], &[("probe", "worker_probe.wasm", &kind)], None));
    let node = Node::start(name, &config);
    node.wait_members(&[name], FORM);
    let t = Instant::now();
    let (ok, out) = call(name, "probe/s", "http-spin 4000 http://127.0.108.91:8089/spin");
    let took = t.elapsed();
    assert!(!ok && out.contains("exceeded its deadline of 1000 ms"), "{out}\n{}", node.log());
    assert!(took < Duration::from_secs(3), "stopped after {took:?}, not about 1 s");
    assert!(!server.seen.lock().unwrap().is_empty(), "no request reached the server");
    node.wait_log("worker probe/s trapped: exceeded its deadline of 1000 ms", FORM);
    // Blocking on an answer is still not its own time: 20 GETs of 100 ms each, 2 s in
    // all, within the same 1 s deadline.
    let (ok, out) = call(name, "probe/w", "http-bench 20 http://127.0.108.91:8089/wait");
    assert!(ok && out.split_whitespace().count() == 2, "{out}\n{}", node.log());
    assert_eq!(node.count("trapped"), 1, "{}", node.log());
}

/// The deliveries a webhook took, by customer: (customer, items).
fn deliveries(server: &Server) -> Vec<(String, serde_json::Value)> {
    server
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s.body).ok())
        .map(|v| (v["customer"].as_str().unwrap_or("").to_string(), v["items"].clone()))
        .collect()
}

fn order_kind(kind: &str, webhook: &str, quiet_ms: u64) -> (String, String) {
    let host = webhook.split('/').take(3).collect::<Vec<_>>().join("/");
    (
        kind.to_string(),
        format!("activate_on_call = true\nallowed_outbound_hosts = [\"{host}\"]\n[worker.{kind}.config]\nwebhook = \"{webhook}\"\nquiet_ms = {quiet_ms}\n"),
    )
}

/// Orders collect items per customer and deliver them all in one POST once nothing was
/// added for the quiet period; a pending delivery moves with its order on SIGTERM and is
/// sent once, by the new owner; a failing webhook is tried again with backoff.
#[test]
fn orders_deliver_once_per_customer_after_a_quiet_period() {
    let dir = TempDir::new("orders");
    let hook = Server::start("127.0.108.40:8089", Duration::ZERO);
    let flaky = Server::start_failing("127.0.108.40:8090", Duration::ZERO, 2);
    let names = ["a@127.0.108.41", "b@127.0.108.42", "c@127.0.108.43"];
    let kinds = [
        order_kind("order", "http://127.0.108.40:8089/deliveries", 600),
        order_kind("slow_order", "http://127.0.108.40:8089/deliveries", 4000),
        order_kind("flaky_order", "http://127.0.108.40:8090/deliveries", 300),
    ];
    let kinds: Vec<(&str, &str, &str)> = kinds.iter().map(|(k, e)| (k.as_str(), "worker_order.wasm", e.as_str())).collect();
    let config = dir.write("t.toml", &worker_topology(&names, &kinds, None));
    let mut nodes: Vec<Node> = names.iter().map(|n| Node::start(n, &config)).collect();
    for n in &nodes {
        n.wait_members(&names, FORM);
    }

    // Three customers, items added through every node.
    for (i, (who, items)) in [("John", "[1,2]"), ("Mary", "[\"tea\"]"), ("Ann", "[7]"), ("John", "[3]"), ("Mary", "[\"milk\"]")].iter().enumerate() {
        let (ok, out) = call(names[i % 3], &format!("order/{who}"), &format!("{{\"add\":{items}}}"));
        assert!(ok, "{out}");
    }
    wait_until(FORM, "three deliveries", || deliveries(&hook).len() >= 3, || format!("{:?}", deliveries(&hook)));
    let mut got = deliveries(&hook);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("Ann".to_string(), serde_json::json!([7])),
            ("John".to_string(), serde_json::json!([1, 2, 3])),
            ("Mary".to_string(), serde_json::json!(["tea", "milk"])),
        ]
    );
    // Delivered and cleared: nothing is left to be delivered twice.
    for who in ["John", "Mary", "Ann"] {
        assert_eq!(call(names[0], &format!("order/{who}"), "contents"), (true, "[]".to_string()), "{who}");
    }
    assert!(hook.seen.lock().unwrap().iter().all(|s| s.method == "POST" && s.path == "/deliveries"));

    // SIGTERM with a delivery pending: the order and its timer move; the new owner sends it, once.
    let (ok, out) = start_worker(names[0], "slow_order", "Zed");
    assert!(ok, "{out}");
    let owner = started_on(&out);
    let at = names.iter().position(|n| *n == owner).unwrap();
    let via = names[(at + 1) % 3];
    assert_eq!(call(via, "slow_order/Zed", "{\"add\":[\"a\",\"b\"]}"), (true, "[\"a\",\"b\"]".to_string()));
    nodes[at].signal(libc::SIGTERM);
    assert_eq!(nodes[at].wait_exit(FORM), Some(0), "{}", nodes[at].log());
    assert_eq!(deliveries(&hook).iter().filter(|d| d.0 == "Zed").count(), 0, "delivered before its quiet period");
    wait_until(FORM, "Zed's delivery", || deliveries(&hook).iter().any(|d| d.0 == "Zed"), || format!("{:?}", deliveries(&hook)));
    let zed: Vec<_> = deliveries(&hook).into_iter().filter(|d| d.0 == "Zed").collect();
    assert_eq!(zed, vec![("Zed".to_string(), serde_json::json!(["a", "b"]))]);
    // The owner logs the delivery once the webhook has answered (after it took the request).
    let logged = || nodes.iter().map(|n| n.count("delivered 2 items for Zed")).sum::<usize>();
    wait_until(FORM, "the new owner to log Zed's delivery", || logged() >= 1, || nodes.iter().map(|n| n.log()).collect());
    assert_eq!(nodes[at].count("delivered 2 items for Zed"), 0, "the old owner must not send it");
    assert_eq!(logged(), 1);
    assert_eq!(call(via, "slow_order/Zed", "contents"), (true, "[]".to_string()));

    // A failing webhook: tried again with backoff, logged, delivered once it answers.
    let live: Vec<&str> = names.iter().enumerate().filter(|(i, _)| *i != at).map(|(_, n)| *n).collect();
    assert!(call(live[0], "flaky_order/Bob", "{\"add\":[42]}").0);
    wait_until(
        Duration::from_secs(20),
        "Bob's delivery after two failures",
        || flaky.seen.lock().unwrap().len() >= 3,
        || format!("{:?}", flaky.seen.lock().unwrap()),
    );
    let logs: String = nodes.iter().map(|n| n.log()).collect();
    assert!(logs.contains("delivery of 1 items for Bob to http://127.0.108.40:8090/deliveries failed (HTTP 500); try 2 in 1000 ms"), "{logs}");
    assert!(logs.contains("failed (HTTP 500); try 3 in 2000 ms"), "{logs}");
    wait_until(FORM, "Bob's order to clear", || call(live[1], "flaky_order/Bob", "contents") == (true, "[]".to_string()), String::new);
    assert_eq!(flaky.seen.lock().unwrap().len(), 3, "two failures, one success, nothing after");
}

/// A TLS web server (Python's `http.server` under `ssl`) on `host:port` with the
/// certificate `wasmnode certs` made for `host` in `dir`; answers `200 secure`.
struct TlsServer(std::process::Child);

impl TlsServer {
    fn start(host: &str, port: u16, dir: &std::path::Path) -> TlsServer {
        const SERVER: &str = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"secure"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", SERVER, host, &port.to_string()])
            .arg(dir.join(format!("{host}.crt")))
            .arg(dir.join(format!("{host}.key")))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (./dev test installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the TLS server did not start");
        TlsServer(child)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HTTPS from a worker trusts the host's CA bundle (`SSL_CERT_FILE`): a server whose
/// certificate that bundle's CA signed answers; one signed by another CA is refused.
#[test]
fn https_from_a_worker_trusts_the_hosts_ca_bundle() {
    let dir = TempDir::new("outbound-tls");
    let (trusted, other) = (dir.0.join("trusted"), dir.0.join("other"));
    for (d, host) in [(&trusted, "127.0.108.50"), (&other, "127.0.108.51")] {
        let out = Command::new(bin()).args(["certs", "--dir"]).arg(d).arg(host).output().unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let _good = TlsServer::start("127.0.108.50", 8443, &trusted);
    let _bad = TlsServer::start("127.0.108.51", 8443, &other);
    let names = ["a@127.0.108.5"];
    let extra = probe_kind("allowed_outbound_hosts = [\"https://127.0.108.50:8443\", \"https://127.0.108.51:8443\"]");
    let config = dir.write("t.toml", &worker_topology(&names, &[("probe", "worker_probe.wasm", &extra)], None));
    let ca = trusted.join("ca.crt");
    let a = Node::start_with(names[0], &config, &[], &[("SSL_CERT_FILE", ca.to_str().unwrap())]);
    a.wait_members(&names, FORM);
    assert_eq!(call(names[0], "probe/p1", "http-get https://127.0.108.50:8443/"), (true, "200 secure".to_string()));
    let (ok, out) = call(names[0], "probe/p1", "http-get https://127.0.108.51:8443/");
    assert!(ok && out.starts_with("error: ") && out.contains("Tls"), "a certificate from another CA must be refused: {out}");
    a.wait_log("outbound TLS of probe/p1 failed", FORM);
}

/// The same outbound call from a C worker and a Python worker (plugins/worker-notify-c,
/// plugins/worker-notify-py, built against wit/worker-outbound@0.1.0): each call POSTs
/// its message to the webhook in the kind's config and replies the status; a webhook
/// the kind is not granted is refused with `HttpRequestDenied`, nothing dialled.
#[test]
fn c_and_python_workers_post_to_their_kinds_webhook() {
    let dir = TempDir::new("outbound-polyglot");
    let granted = Server::start("127.0.108.60:8089", Duration::ZERO);
    let other = Server::start("127.0.108.61:8089", Duration::ZERO);
    let names = ["a@127.0.108.6"];
    let kind = |name: &str, webhook: &str| {
        format!("activate_on_call = true\ncall_timeout_ms = 10000\nallowed_outbound_hosts = [\"http://127.0.108.60:8089\"]\n[worker.{name}.config]\nwebhook = \"{webhook}\"\n")
    };
    let kinds: Vec<(String, &str, String)> = [("c", "worker_notify_c.wasm"), ("py", "worker_notify_py.wasm")]
        .into_iter()
        .flat_map(|(lang, file)| {
            let (granted, denied) = (format!("notify{lang}"), format!("denied{lang}"));
            [
                (granted.clone(), file, kind(&granted, &format!("http://127.0.108.60:8089/{lang}"))),
                (denied.clone(), file, kind(&denied, "http://127.0.108.61:8089/nope")),
            ]
        })
        .collect();
    let kinds: Vec<(&str, &str, &str)> = kinds.iter().map(|(k, f, e)| (k.as_str(), *f, e.as_str())).collect();
    let config = dir.write("t.toml", &worker_topology(&names, &kinds, None));
    let a = Node::start(names[0], &config);
    // On a cold code cache (a fresh machine) the node compiles the Python kind, which
    // bundles CPython, before it listens: tens of seconds on 2 busy cores.
    a.wait_members(&names, Duration::from_secs(60));

    for lang in ["c", "py"] {
        let (ok, out) = call(names[0], &format!("notify{lang}/n1"), &format!("hello from {lang}"));
        assert!(ok && out == "200", "{lang}: {out}\n{}", a.log());
        let t = Instant::now();
        let (ok, out) = call(names[0], &format!("denied{lang}/n1"), "never sent");
        assert!(!ok && out.contains("POST http://127.0.108.61:8089/nope: HttpRequestDenied"), "{lang}: {out}");
        assert!(t.elapsed() < Duration::from_secs(5), "{lang}: refused after {:?}", t.elapsed());
        a.wait_log(&format!("worker denied{lang}/n1 may not reach http://127.0.108.61:8089: refused"), FORM);
    }
    let seen = granted.seen.lock().unwrap().clone();
    let got: Vec<(&str, &str, &str)> = seen.iter().map(|s| (s.method.as_str(), s.path.as_str(), s.body.as_str())).collect();
    assert_eq!(got, [("POST", "/c", "hello from c"), ("POST", "/py", "hello from py")], "{seen:?}");
    assert_eq!(other.connections.load(Ordering::SeqCst), 0, "a refused request must not connect");
}

/// A kind keeps its connections alive: five requests to a server that keeps
/// connections open take one connection; another kind granted the same server makes
/// its own (kinds never share a connection).
#[test]
fn a_kind_keeps_its_connections_alive_and_to_itself() {
    let dir = TempDir::new("outbound-pool");
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    let connections = http_server("127.0.108.70:8089", true, move |_| {
        r.fetch_add(1, Ordering::SeqCst);
        ("200 OK", "text/plain", b"kept".to_vec())
    });
    let names = ["a@127.0.108.7"];
    let grant = "allowed_outbound_hosts = [\"http://127.0.108.70:8089\"]";
    let kinds = [("probe", "worker_probe.wasm", probe_kind(grant)), ("other", "worker_probe.wasm", probe_kind(grant))];
    let kinds: Vec<(&str, &str, &str)> = kinds.iter().map(|(k, f, e)| (*k, *f, e.as_str())).collect();
    let config = dir.write("t.toml", &worker_topology(&names, &kinds, None));
    let a = Node::start(names[0], &config);
    a.wait_members(&names, FORM);
    for i in 0..5 {
        // From two instances of the kind: the pool is the kind's, not an instance's.
        assert_eq!(call(names[0], &format!("probe/p{}", i % 2), "http-get http://127.0.108.70:8089/again"), (true, "200 kept".to_string()));
    }
    assert_eq!(requests.load(Ordering::SeqCst), 5);
    assert_eq!(connections.load(Ordering::SeqCst), 1, "the kind's five requests should share one kept connection");
    assert_eq!(call(names[0], "other/o1", "http-get http://127.0.108.70:8089/mine"), (true, "200 kept".to_string()));
    assert_eq!(connections.load(Ordering::SeqCst), 2, "another kind makes its own connection");
}

/// `outbound_max_in_flight` caps a kind's requests in flight: with a cap of one, two
/// instances' requests to a server that answers after 1 s go one after the other (the
/// second waits for the first's answer, then goes), and both succeed.
#[test]
fn a_kinds_requests_in_flight_are_capped() {
    let dir = TempDir::new("outbound-cap");
    let server = Server::start("127.0.108.80:8089", Duration::from_secs(1));
    let names = ["a@127.0.108.8"];
    let extra = probe_kind("allowed_outbound_hosts = [\"http://127.0.108.80:8089\"]\noutbound_max_in_flight = 1");
    let config = dir.write("t.toml", &worker_topology(&names, &[("probe", "worker_probe.wasm", &extra)], None));
    let a = Node::start(names[0], &config);
    a.wait_members(&names, FORM);
    for key in ["p1", "p2"] {
        assert_eq!(call(names[0], &format!("probe/{key}"), "hello"), (true, "hello".to_string()), "start {key} first");
    }
    let t = Instant::now();
    let calls: Vec<_> = ["p1", "p2"]
        .map(|key| std::thread::spawn(move || (call("a@127.0.108.8", &format!("probe/{key}"), "http-get http://127.0.108.80:8089/slow"), t.elapsed())))
        .into_iter()
        .collect();
    let done: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    for ((ok, out), _) in &done {
        assert!(*ok && out == "200 got", "{out}");
    }
    let last = done.iter().map(|(_, took)| *took).max().unwrap();
    assert!(last >= Duration::from_secs(2), "the second request went before the first was answered ({last:?})");
    assert_eq!(server.seen.lock().unwrap().len(), 2);
}
