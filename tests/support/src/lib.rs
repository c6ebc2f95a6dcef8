//! The process harness of the integration tests (`tests/all`) and the bench
//! (`wasmnode-bench`): real `wasmnode` processes on loopback ([`Launch`], [`Node`]),
//! their logs, waits with deadlines, temporary folders and topologies; and, for the
//! tests, the CLI, a DNS server, an HTTP client and network cuts.
//!
//! Every test gets its own loopback subnet (`127.0.N.x`, all on port 4370 as in
//! production), so tests run in parallel without sharing ports. Nothing here sleeps a
//! fixed time: [`wait_until`] polls a condition until its deadline and fails with
//! what it was waiting for and the nodes' logs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod process;
pub use process::{command, reap, wait_mesh, Launch, Lines, Node};

/// The cookie the tests' clusters share.
pub const COOKIE: &str = "test-cookie-7f3a9c";

/// The worker gateway's token in the shipped topologies the tests run (config/, k8s/).
pub const GATEWAY_TOKEN: &str = "test-gateway-token-51c2";

/// The repository's root.
pub fn repo_root() -> PathBuf {
    // tests/support
    Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap().to_path_buf()
}

/// The `wasmnode` binary under test.
pub fn bin() -> PathBuf {
    let path = std::env::var_os("WASMNODE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        // target/<profile>/deps/all-<hash> -> target/<profile>/wasmnode
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("wasmnode")
    });
    assert!(path.is_file(), "the wasmnode binary is missing at {}: build it first with `./dev build` (or run every test with `./dev test`)", path.display());
    path
}

/// A built plugin from `plugins/dist/`.
pub fn plugin(file: &str) -> PathBuf {
    plugin_in(&repo_root().join("plugins/dist"), file)
}

/// A built plugin from the folder `dist` (made absolute, for a config file anywhere).
pub fn plugin_in(dist: &Path, file: &str) -> PathBuf {
    let path = dist.join(file);
    assert!(path.is_file(), "plugin {} is missing: build the plugins first: ./dev plugins", path.display());
    std::path::absolute(&path).unwrap()
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes; on timeout
/// panics with `what` and whatever `context` returns (the nodes' logs, say).
pub fn wait_until(timeout: Duration, what: &str, cond: impl FnMut() -> bool, context: impl Fn() -> String) -> Duration {
    wait_every(Duration::from_millis(5), timeout, what, cond, context)
}

/// [`wait_until`], polling every `every`.
pub fn wait_every(every: Duration, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}\n{}", context());
        }
        std::thread::yield_now();
        std::thread::park_timeout(every);
    }
}

/// Held by every test that runs config/local.toml's cluster itself (a@127.0.0.1,
/// b@127.0.0.2, c@127.0.0.3 on port 4370): one at a time.
pub fn local_toml_cluster() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A folder for one test's files, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wasmnode-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `body` to `file` in this folder and returns its path.
    pub fn write(&self, file: &str, body: &str) -> PathBuf {
        let p = self.0.join(file);
        std::fs::write(&p, body).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TOML string list: `["a", "b"]`.
pub fn toml_list(names: &[&str]) -> String {
    format!("[{}]", names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "))
}

/// A topology with one static strategy listing `hosts`, with the tests' fast heartbeats.
pub fn static_topology(hosts: &[&str], polling_ms: u64) -> String {
    format!("[node]\nheartbeat_interval_ms = 250\nheartbeat_timeout_ms = 1500\n\n{}", static_strategy(&plugin("strategy_static.wasm"), hosts, polling_ms))
}

/// Topology `local`: the static strategy at `strategy` listing `hosts`.
pub fn static_strategy(strategy: &Path, hosts: &[&str], polling_ms: u64) -> String {
    format!(
        "[topology.local]\nstrategy = \"{}\"\npolling_interval_ms = {polling_ms}\n[topology.local.config]\nhosts = {}\n",
        strategy.display(),
        toml_list(hosts)
    )
}

/// The member names, sorted, in what `wasmnode nodes --json` printed (none if it failed).
pub fn member_names(out: &std::process::Output) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut names: Vec<String> = v["members"].as_array().into_iter().flatten().filter_map(|m| m["name"].as_str().map(str::to_string)).collect();
    names.sort();
    names
}

/// A finished command's stdout and stderr, as text, for messages and log checks.
pub fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs the CLI to completion with `cookie` in WASMNODE_COOKIE.
pub fn cli(args: &[&str], cookie: &str) -> std::process::Output {
    Launch::test().cookie(cookie).cli(args)
}

/// A real DNS server for tests: dnsmasq on a loopback address and port, answering from
/// a hosts file the test rewrites (dnsmasq re-reads it on SIGHUP) and from SRV records.
pub struct Dnsmasq {
    child: Option<Child>,
    pub addr: String,
    hosts: PathBuf,
    log: Lines,
    _dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on `ip:port` with `records` (name, address) and further dnsmasq
    /// `options` (`--srv-host=_service._tcp.name,target,port`, `--server=/zone/ip#port`).
    pub fn start(tag: &str, ip: &str, port: u16, records: &[(&str, &str)], options: &[&str]) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| panic!("dnsmasq is missing: install it with `apt-get install dnsmasq-base` (./dev test does)"));
        let dir = TempDir::new(&format!("dnsmasq-{tag}"));
        let hosts = dir.0.join("hosts");
        write_hosts(&hosts, records);
        let mut cmd = Command::new(bin);
        cmd.args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces", "--log-facility=-"])
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args(["--local-ttl=0", "--neg-ttl=0", "--cache-size=0", "--pid-file=", "--user=root", "--conf-file=/dev/null"]);
        cmd.args(options);
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start dnsmasq");
        let log = Lines::default();
        log.capture(&mut child);
        let d = Dnsmasq { child: Some(child), addr: format!("{ip}:{port}"), hosts, log, _dir: dir };
        d.wait_reads(1);
        d
    }

    fn reads(&self) -> usize {
        self.log.count(&format!("read {}", self.hosts.display()))
    }

    fn wait_reads(&self, n: usize) {
        wait_until(Duration::from_secs(10), "dnsmasq to read its hosts file", || self.reads() >= n, || self.log.text());
    }

    /// Replaces the A/AAAA records and waits until dnsmasq has re-read them.
    pub fn set_records(&self, records: &[(&str, &str)]) {
        let before = self.reads();
        write_hosts(&self.hosts, records);
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, libc::SIGHUP);
        }
        self.wait_reads(before + 1);
    }

    /// Stops the server (a DNS outage).
    pub fn stop(&mut self) {
        reap(&mut self.child);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_hosts(path: &Path, records: &[(&str, &str)]) {
    let body: String = records.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect();
    std::fs::write(path, body).unwrap();
}

/// A topology with the static strategy over `hosts` and the given worker kinds
/// (`(kind, component file in plugins/dist, extra keys)`), plus an HTTP gateway on `http`.
pub fn worker_topology(hosts: &[&str], kinds: &[(&str, &str, &str)], http: Option<&str>) -> String {
    let mut t = static_topology(hosts, 500);
    for (kind, file, extra) in kinds {
        t.push_str(&format!("\n[worker.{kind}]\ncomponent = \"{}\"\n{extra}\n", plugin(file).display()));
    }
    if let Some(addr) = http {
        t.push_str(&format!("\n[http]\nlisten = \"{addr}\"\ngateway = true\n"));
    }
    t
}

/// `wasmnode call` through `node`; (success, stdout or stderr).
pub fn call(node: &str, name: &str, msg: &str) -> (bool, String) {
    let out = cli(&["call", "--node", node, name, msg], COOKIE);
    let text = if out.status.success() { out.stdout } else { out.stderr };
    (out.status.success(), String::from_utf8_lossy(&text).trim().to_string())
}

/// `wasmnode call --id ID` of `msg` to `name` through `via` (applied once however
/// often it is retried with the same id); (success, stdout or stderr).
pub fn call_once(via: &str, id: &str, name: &str, msg: &str) -> (bool, String) {
    let out = cli(&["call", "--node", via, "--id", id, "--timeout-ms", "15000", name, msg], COOKIE);
    let text = if out.status.success() { out.stdout } else { out.stderr };
    (out.status.success(), String::from_utf8_lossy(&text).trim().to_string())
}

/// `wasmnode start` through `node`; (success, stdout or stderr).
pub fn start_worker(node: &str, kind: &str, key: &str) -> (bool, String) {
    let out = cli(&["start", "--node", node, &format!("{kind}/{key}")], COOKIE);
    let text = if out.status.success() { out.stdout } else { out.stderr };
    (out.status.success(), String::from_utf8_lossy(&text).trim().to_string())
}

/// One HTTP/1.1 request with a body; (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    http_with(addr, method, path, &[], body)
}

/// [`http`] with extra request headers.
pub fn http_with(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (status, _head, body) = http_answer(addr, method, path, headers, body);
    (status, body)
}

/// [`http_with`], with the answer's head too (its status line and headers); (status, head,
/// body).
pub fn http_answer(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let text = http_exchange(addr, method, path, headers, body).unwrap_or_else(|e| panic!("HTTP {method} {path} at {addr}: {e}"));
    let (status, head, body) = split_answer(&text);
    (status.unwrap_or(0), head, body)
}

/// Like [`http`], but `None` when the node does not accept the connection (it is down)
/// or drops it before answering.
pub fn try_http(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let text = http_exchange(addr, method, path, &[], body).ok()?;
    let (status, _head, body) = split_answer(&text);
    Some((status?, body))
}

/// One request with `Connection: close` on a new connection; what came back, until the
/// node closed it.
fn http_exchange(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(String::from_utf8_lossy(&raw).to_string())
}

/// An answer's status (if it has one), head and body.
fn split_answer(text: &str) -> (Option<u16>, String, String) {
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    let (head, body) = text.split_once("\r\n\r\n").map(|(h, b)| (h.to_string(), b.to_string())).unwrap_or((text.to_string(), String::new()));
    (status, head, body)
}

/// Three nodes `a`, `b`, `c` on 127.0.`subnet`.1–3 with the static strategy over all
/// three and the given worker kinds (and, with `gateway`, an HTTP gateway on port 8080
/// of each), started and meshed.
pub fn three_nodes(tag: &str, subnet: u8, kinds: &[(&str, &str, &str)], gateway: bool) -> (TempDir, Vec<String>, Vec<Node>) {
    let dir = TempDir::new(tag);
    let names: Vec<String> = (1..=3).map(|i| format!("{}@127.0.{subnet}.{i}", ["a", "b", "c"][i - 1])).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let http = gateway.then(|| format!("127.0.{subnet}.{}:8080", i + 1));
            Node::start(n, &dir.write(&format!("{i}.toml"), &worker_topology(&refs, kinds, http.as_deref())))
        })
        .collect();
    wait_mesh(&nodes.iter().collect::<Vec<_>>(), &refs, Duration::from_secs(10));
    (dir, names, nodes)
}

/// One node, `name`, alone, running `kind` (`(kind, plugin file, extra lines)`) with
/// `KIND/key` started on it; its folder lives as long as the returned `TempDir`.
pub fn lone_worker(tag: &str, name: &str, kind: (&str, &str, &str), key: &str) -> (TempDir, Node) {
    let form = Duration::from_secs(30);
    let dir = TempDir::new(tag);
    let a = Node::start(name, &dir.write("t.toml", &worker_topology(&[name], &[kind], None)));
    a.wait_log("listening on", form);
    wait_until(form, &format!("{}/{key} started", kind.0), || start_worker(name, kind.0, key).0, || a.log());
    (dir, a)
}

/// The node a `wasmnode start` answer names (`started K/K on NODE`, or the error's
/// `already_started on NODE`).
pub fn started_on(out: &str) -> String {
    out.rsplit(' ').next().unwrap_or_default().to_string()
}

/// `wasmnode workers --json` through `node`: each node with the names it runs (empty if
/// the node did not answer).
pub fn workers_by_node(node: &str) -> Vec<(String, Vec<String>)> {
    let out = cli(&["workers", "--node", node, "--json"], COOKIE);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let workers = n["workers"].as_array().into_iter().flatten().filter_map(|w| w.as_str().map(str::to_string)).collect();
            (n["node"].as_str().unwrap_or_default().to_string(), workers)
        })
        .collect()
}

/// Where each name runs, as `via` lists the cluster (a name may be listed twice).
pub fn placement(via: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut at: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for (node, names) in workers_by_node(via) {
        for n in names {
            at.entry(n).or_default().push(node.clone());
        }
    }
    at
}

/// Waits (up to `timeout`) until every name of `want` runs exactly once and answers
/// `value` with `want`'s value; on failure, names each that does not, where it runs and
/// what it answers.
pub fn wait_exactly_once_with(via: &str, want: &std::collections::BTreeMap<String, u64>, timeout: Duration, what: &str) {
    wait_until(
        timeout,
        what,
        || {
            let at = placement(via);
            want.keys().all(|n| at.get(n).is_some_and(|nodes| nodes.len() == 1)) && want.iter().all(|(n, v)| call(via, n, "value") == (true, v.to_string()))
        },
        || {
            let at = placement(via);
            want.iter()
                .filter(|(n, v)| at.get(*n).is_none_or(|nodes| nodes.len() != 1) || call(via, n, "value") != (true, v.to_string()))
                .map(|(n, v)| format!("{n}: on {:?}, value {:?}, want {v}", at.get(n), call(via, n, "value")))
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
}

/// Every running name in the cluster, sorted (duplicates kept), as `node` lists them.
pub fn all_workers(node: &str) -> Vec<String> {
    let mut all: Vec<String> = workers_by_node(node).into_iter().flat_map(|(_, w)| w).collect();
    all.sort();
    all
}

/// iptables rules dropping traffic between nodes: all of it both ways or one way, or a
/// random share of it; removed when dropped, even if the test fails. Needs root and iptables; it fails (never
/// skips) otherwise.
pub struct Cut {
    /// (source, destination, the iptables match that picks the packets dropped).
    rules: Vec<(String, String, Vec<String>)>,
}

impl Cut {
    /// Every packet between `island` and each of `others` is dropped, both ways.
    pub fn new(island: &str, others: &[&str]) -> Cut {
        Cut::with(island, others, true)
    }

    /// A one-way cut: packets from `from` to each of `to` are dropped; the other way
    /// goes through.
    pub fn one_way(from: &str, to: &[&str]) -> Cut {
        Cut::with(from, to, false)
    }

    /// A flaky network among `hosts`: each packet between any two of them is dropped
    /// with probability `p`, independently (`iptables -m statistic`).
    pub fn lossy(hosts: &[&str], p: f64) -> Cut {
        let mut cut = Cut { rules: Vec::new() };
        let matcher: Vec<String> = ["-m", "statistic", "--mode", "random", "--probability", &p.to_string()].map(String::from).to_vec();
        for src in hosts {
            for dst in hosts.iter().filter(|d| *d != src) {
                cut.add(src, dst, matcher.clone());
            }
        }
        cut
    }

    fn with(island: &str, others: &[&str], both: bool) -> Cut {
        let mut cut = Cut { rules: Vec::new() };
        for o in others {
            let ways: &[(&str, &str)] = if both { &[(island, *o), (*o, island)] } else { &[(island, *o)] };
            for (src, dst) in ways {
                cut.add(src, dst, Vec::new());
            }
        }
        cut
    }

    fn add(&mut self, src: &str, dst: &str, matcher: Vec<String>) {
        let status = std::process::Command::new("iptables").args(Cut::rule("-I", src, dst, &matcher)).status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "cannot add an iptables rule ({status:?}): this test needs root and iptables (apt-get install iptables)"
        );
        self.rules.push((src.to_string(), dst.to_string(), matcher));
    }

    fn rule(op: &str, src: &str, dst: &str, matcher: &[String]) -> Vec<String> {
        let mut args: Vec<String> = [op, "INPUT", "-s", src, "-d", dst].map(String::from).to_vec();
        args.extend(matcher.iter().cloned());
        args.extend(["-j", "DROP"].map(String::from));
        args
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for (src, dst, matcher) in self.rules.drain(..) {
            let _ = std::process::Command::new("iptables").args(Cut::rule("-D", &src, &dst, &matcher)).status();
        }
    }
}

/// One HTTP/1.1 request as a test's server read it: the request line, the headers (names
/// lower-cased) and the body (`Content-Length` bytes).
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The request line's method and path.
    pub fn method_and_path(&self) -> (String, String) {
        let mut parts = self.line.split_whitespace();
        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string())
    }
}

/// Reads the next request from a connection; `None` once the client has closed it.
pub fn read_http_request(reader: &mut impl std::io::BufRead) -> Option<HttpRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    Some(HttpRequest { line: line.trim_end().to_string(), headers, body })
}

/// What a test's HTTP server answers: status line (`200 OK`), content type, body.
pub type HttpAnswer = (&'static str, &'static str, Vec<u8>);

/// A real HTTP/1.1 server for tests on `addr`, a thread per connection; `answer` turns
/// each request into the response. With `keep_alive` a connection serves requests until
/// the client closes it; without, it answers one with `connection: close`. Returns the
/// count of connections accepted.
pub fn http_server(
    addr: &str,
    keep_alive: bool,
    answer: impl Fn(HttpRequest) -> HttpAnswer + Send + Sync + 'static,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let (connections, answer) = (Arc::new(AtomicUsize::new(0)), Arc::new(answer));
    let count = connections.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                while let Some(request) = read_http_request(&mut reader) {
                    let (status, content_type, body) = answer(request);
                    let close = if keep_alive { "" } else { "connection: close\r\n" };
                    let head = format!("HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{close}\r\n", body.len());
                    if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(&body)).is_err() || !keep_alive {
                        return;
                    }
                }
            });
        }
    });
    connections
}
