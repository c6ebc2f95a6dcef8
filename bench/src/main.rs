//! `wasmnode-bench`: wasmnode's benchmarks between real node processes on loopback.
//!
//! `./dev bench` runs every figure and prints a table; `--json FILE` (default
//! `bench-results/bench.json`) gets the same figures. The method of each figure is in
//! docs/benchmarks.md. Latency and throughput are measured in two placements
//! (../shared/BENCHMARKING.md): `free`, where the OS places both processes, and
//! `pinned`, where the bench client and the node both run on CPU 0. For each placement
//! the bench re-runs itself (`wasmnode-bench measure …`) so its own threads are pinned
//! from their start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use wasmnode::dist::{Dist, DistConfig, Peer};
use wasmnode_proto::{Frame, Service};
use wasmnode_testkit::{command, http, plugin_in, static_strategy, Launch, Node, TempDir};

const COOKIE: &str = "bench-cookie-0b5e1";

struct Args {
    bin: PathBuf,
    plugins: PathBuf,
    json: PathBuf,
    quick: bool,
    only: Option<String>,
    /// This process's config files, removed when it ends.
    tmp: TempDir,
}

impl Args {
    /// Starts a node for a benchmark: the bench's cookie, info logs (as in production),
    /// on CPU 0 when `pinned`.
    fn node(&self, name: &str, config: &Path, pinned: bool) -> Node {
        Launch::new(&self.bin).cookie(COOKIE).log_filter("info").cpu0(pinned).start(name, config)
    }

    /// Writes config file `tag`.toml.
    fn config(&self, tag: &str, body: &str) -> PathBuf {
        self.tmp.write(&format!("{tag}.toml"), body)
    }

    /// A built plugin, by file name.
    fn plugin(&self, file: &str) -> PathBuf {
        plugin_in(&self.plugins, file)
    }

    /// The config of a node alone at `host`: empty, or with `[node.tls]` (a certificate
    /// from the bench's development CA); and the TLS setting for a client at 127.0.30.9.
    fn lone(&self, host: &str, tls: bool) -> (PathBuf, Option<std::sync::Arc<wasmnode::tls::Tls>>) {
        if !tls {
            return (self.config("empty", ""), None);
        }
        let dir = self.tmp.0.join("certs");
        wasmnode::certs::write(&dir, &[host.to_string(), "127.0.30.9".to_string()]).expect("wasmnode certs");
        let files = |h: &str| wasmnode::tls::TlsFiles {
            cert: dir.join(format!("{h}.crt")),
            key: dir.join(format!("{h}.key")),
            ca: dir.join("ca.crt"),
            reload_interval: Duration::from_secs(3600),
        };
        let f = files(host);
        let body = format!("[node.tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n", f.cert.display(), f.key.display(), f.ca.display());
        let client = wasmnode::tls::Tls::load(files("127.0.30.9"), "127.0.30.9").expect("the client's certificate");
        (self.config(&format!("tls-{host}"), &body), Some(std::sync::Arc::new(client)))
    }

    /// Topology `local`: the static strategy listing `hosts`, polled every 5 s.
    fn static_topology(&self, hosts: &[String]) -> String {
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        static_strategy(&self.plugin("strategy_static.wasm"), &hosts, 5000)
    }
}

fn parse_args() -> (Option<(String, String)>, Args) {
    let mut bin = PathBuf::from("wasmnode");
    let mut plugins = PathBuf::from("plugins/dist");
    let mut json = PathBuf::from("bench-results/bench.json");
    let mut quick = false;
    let mut only = None;
    let mut measure = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bin" => bin = it.next().expect("--bin PATH").into(),
            "--plugins" => plugins = it.next().expect("--plugins DIR").into(),
            "--json" => json = it.next().expect("--json FILE").into(),
            "--quick" => quick = true,
            "--only" => only = Some(it.next().expect("--only FIGURE")),
            "echo-server" => {
                echo_server(&it.next().expect("echo-server ADDR"));
                std::process::exit(0);
            }
            "measure" => measure = Some((it.next().expect("measure FIGURE"), it.next().expect("measure FIGURE PLACEMENT"))),
            "-h" | "--help" => {
                println!("wasmnode-bench [--bin WASMNODE] [--plugins DIR] [--json FILE] [--quick] [--only rtt|throughput|connect|workers|workers-pooled|workers-nowasi|remote-call|durable|mesh|down|rss|handoff|gateway|failover]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    (measure, Args { bin, plugins, json, quick, only, tmp: TempDir::new("bench") })
}

fn main() {
    let (measure, args) = parse_args();
    if let Some((figure, placement)) = measure {
        if placement == "pinned" {
            pin_to_cpu0();
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let v = rt.block_on(measure_figure(&figure, &placement, &args));
        println!("{v}");
        return;
    }
    run_all(&args);
}

/// The baseline's far end: a blocking echo over one TCP connection, as plain as
/// ../shared/BENCHMARKING.md's C ping-pong.
fn echo_server(addr: &str) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr).expect("bind the echo server");
    let (mut s, _) = listener.accept().unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => s.write_all(&buf[..n]).unwrap(),
        }
    }
}

/// Round trips of 16 bytes over blocking sockets between two processes placed like
/// the node benchmark's: the floor this machine sets for any implementation.
fn baseline_rtt(pinned: bool, n: usize) -> (f64, f64) {
    use std::io::{Read, Write};
    let addr = "127.0.30.5:4999";
    let mut server = command(std::env::current_exe().unwrap(), pinned).args(["echo-server", addr]).spawn().unwrap();
    let start = Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => std::thread::yield_now(),
            Err(e) => panic!("baseline echo server: {e}"),
        }
    };
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 16];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 10_000 {
        let t = Instant::now();
        s.write_all(&buf).unwrap();
        s.read_exact(&mut buf).unwrap();
        if i >= 10_000 {
            samples.push(t.elapsed());
        }
    }
    drop(s);
    let _ = server.wait();
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; we set one bit and apply it to this process
    // before any other thread exists, so every later thread inherits it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity");
    }
}

fn run_all(args: &Args) {
    let wants = |f: &str| args.only.as_deref().is_none_or(|o| o == f);
    let mut results = serde_json::Map::new();
    let mut table: Vec<(String, String, String)> = Vec::new();
    for figure in
        ["rtt", "throughput", "connect", "rtt-tls", "throughput-tls", "connect-tls", "workers", "workers-pooled", "workers-nowasi", "remote-call", "durable"]
    {
        if !wants(figure) {
            continue;
        }
        for placement in ["free", "pinned"] {
            let me = std::env::current_exe().unwrap();
            let mut cmd = Command::new(me);
            cmd.args(["measure", figure, placement, "--bin"]).arg(&args.bin).arg("--plugins").arg(&args.plugins);
            if args.quick {
                cmd.arg("--quick");
            }
            let out = cmd.stderr(Stdio::inherit()).output().expect("run the measuring child");
            assert!(out.status.success(), "measuring {figure} ({placement}) failed");
            let v: Value = serde_json::from_slice(&out.stdout).expect("child prints JSON");
            for (k, val) in v.as_object().unwrap() {
                table.push((k.clone(), placement.to_string(), fmt_value(k, val)));
            }
            results.insert(format!("{figure}_{placement}"), v);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for figure in ["mesh", "down", "rss", "handoff", "gateway", "failover", "outbound"] {
        if !wants(figure) {
            continue;
        }
        let v = rt.block_on(measure_figure(figure, "free", args));
        for (k, val) in v.as_object().unwrap() {
            table.push((k.clone(), "free".into(), fmt_value(k, val)));
        }
        results.insert(format!("{figure}_free"), v);
    }
    println!("\n| figure | placement | value |\n|---|---|---|");
    for (k, p, v) in &table {
        println!("| {k} | {p} | {v} |");
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let doc = json!({ "machine": machine(), "results": results });
    std::fs::write(&args.json, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nwrote {}", args.json.display());
}

fn fmt_value(key: &str, v: &Value) -> String {
    let f = v.as_f64().unwrap_or(f64::NAN);
    if key.ends_with("_us") {
        format!("{f:.1} µs")
    } else if key.ends_with("_ms") {
        format!("{f:.1} ms")
    } else if key.ends_with("_msgs_per_s") {
        format!("{:.0} k msgs/s", f / 1e3)
    } else if key.ends_with("_gb_per_s") {
        format!("{f:.2} GB/s")
    } else if key.ends_with("_kib") {
        format!("{f:.1} KiB")
    } else if key.ends_with("_per_s") {
        format!("{f:.0} /s")
    } else if key.ends_with("_mib") {
        format!("{f:.1} MiB")
    } else if key.ends_with("_bytes_per_call") {
        format!("{f:.0} B/call")
    } else {
        v.to_string()
    }
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    json!({ "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "cpu": cpu })
}

/// Connects a client endpoint to `target` (retrying until it listens).
async fn client(name: &str, target: &str) -> Peer {
    client_tls(name, target, None).await
}

/// [`client`], with mutual TLS when `tls` is given.
async fn client_tls(name: &str, target: &str, tls: Option<std::sync::Arc<wasmnode::tls::Tls>>) -> Peer {
    let (tx, _rx) = mpsc::unbounded_channel();
    let dist = Dist::new(DistConfig { hidden: true, tls, ..DistConfig::new(name, COOKIE.as_bytes().to_vec()) }, tx);
    std::mem::forget(_rx);
    let start = Instant::now();
    loop {
        match dist.connect(target).await {
            Ok(p) => return p,
            Err(e) if start.elapsed() > Duration::from_secs(10) => panic!("cannot connect to {target}: {e}"),
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// Spawn, local call and memory of workers of `component` (a counter), on demand or
/// from the pool, in this process, through the node's own registry and worker runtime
/// (no network: a node alone owns every name).
async fn workers_in_process(args: &Args, component: &str, spawns: usize, idle: usize, pooled: bool) -> Value {
    use wasmnode::config::WorkerConfig;
    use wasmnode::membership::Membership;
    use wasmnode::registry::Registry;
    use wasmnode::runtime::worker::WorkerRuntime;
    let counter = args.plugin(component);
    let pool = pooled.then_some(wasmnode::runtime::Pool { instances: idle as u32 + 1000, max_memory: 64 << 20 });
    let engine = wasmnode::runtime::engine_with(pool).unwrap();
    wasmnode::runtime::spawn_epoch_ticker(engine.clone());
    // The node's runtime (`node::runtime_for`): a thread per CPU for networking and workers.
    let threads = std::env::var("BENCH_WORKER_THREADS").ok().and_then(|v| v.parse().ok());
    let threads = threads.unwrap_or_else(wasmnode::node::runtime_threads);
    let worker_threads = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
    let kind = WorkerConfig::new("counter", counter);
    let workers = std::sync::Arc::new(WorkerRuntime::load(&engine, &[kind], worker_threads.handle().clone()).expect("load the counter"));
    // Measure from a task on that runtime, where workers call and start each other.
    let out = worker_threads
        .spawn(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            let dist = Dist::new(DistConfig::new("bench@127.0.36.1", COOKIE.as_bytes().to_vec()), tx);
            let registry = Registry::start(Membership::start(dist, rx, false), workers.clone());
            let rss = || {
                let status = std::fs::read_to_string("/proc/self/status").unwrap();
                status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse::<f64>().unwrap() * 1024.0
            };
            // Warm up (first instantiation touches shared code pages), then time each spawn.
            for i in 0..100 {
                registry.start_local("counter", &format!("w{i}"), Vec::new()).await.unwrap();
            }
            let before = rss();
            let mut samples = Vec::with_capacity(spawns);
            for i in 0..spawns {
                let t = Instant::now();
                registry.start_local("counter", &format!("s{i}"), Vec::new()).await.unwrap_or_else(|e| panic!("spawn {i}: {e}"));
                samples.push(t.elapsed());
            }
            let per_worker = (rss() - before) / spawns as f64;
            samples.sort();
            let spawn_median = percentile(&samples, 0.5);
            // Local calls through the mailbox: registry → mailbox → instance task → reply.
            let mut calls = Vec::with_capacity(100_000);
            for i in 0..110_000 {
                let t = Instant::now();
                registry.call("counter", "w0", b"value".to_vec(), Duration::from_secs(5)).await.unwrap();
                if i >= 10_000 {
                    calls.push(t.elapsed());
                }
            }
            calls.sort();
            // Churn: stop an instance, start another; the new one can take the slot (memory,
            // stack) the old one freed. Only the start is timed.
            let mut churn = Vec::with_capacity(spawns);
            for i in 0..spawns + 100 {
                assert!(registry.stop_local("counter", &format!("c{}", i.wrapping_sub(1)), "churn").await || i == 0);
                let t = Instant::now();
                registry.start_local("counter", &format!("c{i}"), Vec::new()).await.unwrap_or_else(|e| panic!("churn spawn {i}: {e}"));
                if i >= 100 {
                    churn.push(t.elapsed());
                }
            }
            churn.sort();
            // The parts of a spawn that are wasmtime's alone, each timed apart, in a slot freed
            // just before (as in the churn): a store with its WASI context, the component's
            // instantiation, and `init`. What a spawn after stop takes beyond their sum is the
            // registry's and the mailbox task's.
            let mut parts: [Vec<Duration>; 3] = Default::default();
            for i in 0..spawns + 100 {
                let p = workers.time_spawn_parts(&registry, "counter").await.unwrap_or_else(|e| panic!("spawn parts {i}: {e}"));
                if i >= 100 {
                    for (v, d) in parts.iter_mut().zip(p) {
                        v.push(d);
                    }
                }
            }
            for v in &mut parts {
                v.sort();
            }
            // Many idle workers: spawn up to `idle` in all, and report the process's RSS.
            let t = Instant::now();
            let mut started = 100 + spawns;
            let mut failure = None;
            while started < idle {
                if let Err(e) = registry.start_local("counter", &format!("i{started}"), Vec::new()).await {
                    failure = Some(e.to_string());
                    break;
                }
                started += 1;
            }
            let idle_secs = t.elapsed().as_secs_f64();
            json!({
                "worker_spawn_median_us": spawn_median,
                "worker_spawn_p99_us": percentile(&samples, 0.99),
                "worker_spawn_after_stop_median_us": percentile(&churn, 0.5),
                "worker_spawn_after_stop_p99_us": percentile(&churn, 0.99),
                "worker_spawn_part_store_median_us": percentile(&parts[0], 0.5),
                "worker_spawn_part_instantiate_median_us": percentile(&parts[1], 0.5),
                "worker_spawn_part_init_median_us": percentile(&parts[2], 0.5),
                "worker_local_call_median_us": percentile(&calls, 0.5),
                "worker_local_call_p99_us": percentile(&calls, 0.99),
                "worker_idle_rss_per_worker_kib": per_worker / 1024.0,
                "workers_idle_started": started,
                "workers_idle_process_rss_mib": rss() / (1 << 20) as f64,
                "workers_idle_spawn_rate_per_s": (started - 100 - spawns) as f64 / idle_secs,
                "workers_idle_failure": failure,
            })
        })
        .await
        .expect("the measuring task");
    worker_threads.shutdown_background();
    out
}

/// One run of the handoff figure: three nodes, `n` counters; SIGTERM one node and time
/// until it exits (every handoff acknowledged: each moved instance has run `init` on its
/// new owner); then SIGKILL another and time until every instance runs again.
async fn handoff_run(args: &Args, n: usize, run: usize) -> (Duration, Duration) {
    let names: Vec<String> = (1..=3).map(|i| format!("h{i}@127.0.37.{i}")).collect();
    let counter = args.plugin("worker_counter.wasm");
    let base = args.static_topology(&names);
    let config = args.config(
        &format!("handoff-{n}-{run}"),
        &format!("[node]\nhandoff_deadline_ms = 60000\n\n{base}\n[worker.counter]\ncomponent = \"{}\"\n", counter.display()),
    );
    let mut nodes: Vec<Node> = names.iter().map(|name| args.node(name, &config, false)).collect();
    for node in &nodes {
        node.wait_line("members (3):", Duration::from_secs(30));
    }
    let ctl = client(&format!("handoffctl{run}@127.0.37.9"), &names[0]).await;
    let ask = |v: Value| {
        let ctl = ctl.clone();
        async move {
            let body = ctl.request(Service::Control, Bytes::from(v.to_string()), Duration::from_secs(60)).await.expect("control request");
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    for i in 0..n {
        let v = ask(json!({"op": "start", "kind": "counter", "key": format!("k{i}")})).await;
        assert!(v["started"].is_string(), "start: {v}");
    }
    let total = |v: &Value| v["nodes"].as_array().map(|a| a.iter().map(|n| n["workers"].as_array().map(|w| w.len()).unwrap_or(0)).sum::<usize>()).unwrap_or(0);
    assert_eq!(total(&ask(json!({"op": "workers"})).await), n);

    // SIGTERM node 3: it exits once every one of its instances has been handed over.
    let t = Instant::now();
    nodes[2].signal(libc::SIGTERM);
    nodes[2].wait_exit(Duration::from_secs(600));
    let term = t.elapsed();
    assert_eq!(total(&ask(json!({"op": "workers"})).await), n, "every instance runs after the handoff");

    // SIGKILL node 2: its instances are restarted by their new owners.
    let t = Instant::now();
    nodes[1].signal(libc::SIGKILL);
    loop {
        let v = ask(json!({"op": "workers"})).await;
        if v["nodes"].as_array().map(|a| a.len()) == Some(1) && total(&v) == n {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "instances were not all restarted: {}", total(&v));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let kill = t.elapsed();
    nodes.clear();
    (term, kill)
}

/// Seals `n` messages of `size` bytes into a connection's records and opens them again,
/// in this thread: GB/s of plaintext sealed, and opened.
fn record_layer_rates(size: usize, n: usize) -> (f64, f64) {
    use wasmnode_proto::handshake::{Acceptor, Dialer, Identity};
    let cookie = COOKIE.as_bytes();
    let (me, you) = (Identity { name: "a@h".into(), flags: 0, creation: 1 }, Identity { name: "b@h".into(), flags: 0, creation: 2 });
    let (dialer, hello) = Dialer::start(&me, "b@h", cookie).unwrap();
    let (acceptor, challenge) = Acceptor::on_hello(&you, cookie, hello).unwrap();
    let (proven, proof) = dialer.on_challenge(challenge).unwrap();
    let (_, mut receiving) = acceptor.on_proof(proof).unwrap();
    let (_, sending) = proven.on_accept(receiving.accept()).unwrap();
    let plain = vec![0x5au8; size];
    let (mut wire, mut opened) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    let (mut sealing, mut opening) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..n {
        let t = Instant::now();
        sending.sealer.seal(&plain, &mut wire);
        sealing += t.elapsed();
        let t = Instant::now();
        receiving.opener.open(&mut wire, &mut opened).unwrap();
        opening += t.elapsed();
        assert_eq!(opened.len(), size);
        opened.clear();
    }
    let bytes = (size * n) as f64 / 1e9;
    (bytes / sealing.as_secs_f64(), bytes / opening.as_secs_f64())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn measure_figure(figure: &str, placement: &str, args: &Args) -> Value {
    let pinned = placement == "pinned";
    // `rtt-tls`, `throughput-tls`, `connect-tls`: the same figures under `[node.tls]`,
    // their keys suffixed `_tls`.
    if let Some(base) = figure.strip_suffix("-tls") {
        let v = measure(base, pinned, args, true).await;
        return Value::Object(v.as_object().unwrap().iter().map(|(k, v)| (tls_key(k), v.clone())).collect());
    }
    measure(figure, pinned, args, false).await
}

/// `rtt_16b_median_us` → `rtt_16b_median_tls_us` (the unit stays last, for the table).
fn tls_key(k: &str) -> String {
    for unit in ["_us", "_gb_per_s", "_msgs_per_s"] {
        if let Some(stem) = k.strip_suffix(unit) {
            return format!("{stem}_tls{unit}");
        }
    }
    format!("{k}_tls")
}

async fn measure(figure: &str, pinned: bool, args: &Args, tls: bool) -> Value {
    match figure {
        "rtt" => {
            let (config, client_config) = args.lone("127.0.30.1", tls);
            let node = args.node("rtt@127.0.30.1", &config, pinned);
            node.wait_line("listening on", Duration::from_secs(10));
            let peer = client_tls("bench@127.0.30.9", "rtt@127.0.30.1", client_config).await;
            let payload = Bytes::from_static(b"0123456789abcdef");
            let n = if args.quick { 20_000 } else { 200_000 };
            for _ in 0..10_000 {
                peer.ping(payload.clone()).await.unwrap();
            }
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let back = peer.ping(payload.clone()).await.unwrap();
                samples.push(t.elapsed());
                debug_assert_eq!(back.len(), 16);
            }
            samples.sort();
            let (base_median, base_p99) = baseline_rtt(pinned, n);
            let median = percentile(&samples, 0.5);
            json!({
                "rtt_16b_median_us": median,
                "rtt_16b_p99_us": percentile(&samples, 0.99),
                "baseline_rtt_16b_median_us": base_median,
                "baseline_rtt_16b_p99_us": base_p99,
                "rtt_over_baseline": (median / base_median * 100.0).round() / 100.0,
                "rtt_samples": n,
            })
        }
        "throughput" => {
            let (config, client_config) = args.lone("127.0.30.2", tls);
            let node = args.node("sink@127.0.30.2", &config, pinned);
            node.wait_line("listening on", Duration::from_secs(10));
            let peer = client_tls("bench@127.0.30.9", "sink@127.0.30.2", client_config).await;
            let mut out = serde_json::Map::new();
            for (label, size, count) in [("16b", 16usize, 3_000_000usize), ("1kib", 1024, 1_000_000), ("64kib", 65536, 40_000)] {
                let count = if args.quick { count / 10 } else { count };
                let payload = Bytes::from(vec![0x5au8; size]);
                // At most 64 MiB in flight: the client's connection, like a node's, ends
                // when more than its backlog limit (128 MiB) waits to be written.
                let window = 50_000.min(count).min((64 << 20) / size);
                // Streams `n` one-way messages in windows, each ended by a ping whose
                // pong returns once the node has read them all.
                let stream = |n: usize| {
                    let (peer, payload) = (peer.clone(), payload.clone());
                    async move {
                        let mut sent = 0;
                        while sent < n {
                            let batch = window.min(n - sent);
                            for _ in 0..batch {
                                peer.send(Frame::Send(payload.clone()));
                            }
                            sent += batch;
                            peer.ping(Bytes::new()).await.unwrap();
                        }
                    }
                };
                // Warm up, then time `count`.
                stream(count / 10).await;
                let t = Instant::now();
                stream(count).await;
                let secs = t.elapsed().as_secs_f64();
                out.insert(format!("oneway_{label}_msgs_per_s"), json!(count as f64 / secs));
                out.insert(format!("oneway_{label}_gb_per_s"), json!(count as f64 * size as f64 / secs / 1e9));
            }
            if !tls {
                // The record layer alone on this core, no socket: the ceiling the encrypted
                // one-way figures sit under (docs/benchmarks.md does the arithmetic).
                let (seal, open) = record_layer_rates(65_536, if args.quick { 2_000 } else { 20_000 });
                out.insert("seal_64kib_gb_per_s".into(), json!(seal));
                out.insert("open_64kib_gb_per_s".into(), json!(open));
            }
            Value::Object(out)
        }
        "connect" => {
            let (config, client_config) = args.lone("127.0.30.3", tls);
            let node = args.node("acc@127.0.30.3", &config, pinned);
            node.wait_line("listening on", Duration::from_secs(10));
            let n = if args.quick { 200 } else { 2000 };
            let mut samples = Vec::with_capacity(n);
            for i in 0..n {
                let (tx, _rx) = mpsc::unbounded_channel();
                let dist = Dist::new(
                    DistConfig { hidden: true, tls: client_config.clone(), ..DistConfig::new(format!("c{i}@127.0.30.9"), COOKIE.as_bytes().to_vec()) },
                    tx,
                );
                let t = Instant::now();
                let peer = dist.connect("acc@127.0.30.3").await.expect("connect");
                samples.push(t.elapsed());
                peer.close(wasmnode::dist::DownReason::LocalShutdown);
                peer.closed().await;
            }
            samples.sort();
            json!({ "connect_handshake_median_us": percentile(&samples, 0.5), "connect_handshake_p99_us": percentile(&samples, 0.99) })
        }
        "mesh" => {
            let mut out = serde_json::Map::new();
            for n in [2usize, 5, 10, 20] {
                let reps = if args.quick { 1 } else { 5 };
                let mut times = Vec::new();
                for rep in 0..reps {
                    let names: Vec<String> = (1..=n).map(|i| format!("m{i}@127.0.32.{i}")).collect();
                    let config = args.config(&format!("mesh{n}-{rep}"), &args.static_topology(&names));
                    let t = Instant::now();
                    let nodes: Vec<Node> = names.iter().map(|name| args.node(name, &config, false)).collect();
                    let needle = format!("members ({n}):");
                    let mut last = t;
                    for node in &nodes {
                        let at = node.wait_line(&needle, Duration::from_secs(30));
                        last = last.max(at);
                    }
                    times.push(last - t);
                    drop(nodes);
                }
                times.sort();
                out.insert(format!("launch_to_mesh_{n}_nodes_ms"), json!(times[times.len() / 2].as_secs_f64() * 1e3));
            }
            Value::Object(out)
        }
        "down" => {
            let names = vec!["d1@127.0.33.1".to_string(), "d2@127.0.33.2".to_string()];
            let config = args.config("down", &args.static_topology(&names));
            let a = args.node(&names[0], &config, false);
            let mut out = serde_json::Map::new();
            for (label, sig, reps) in [("sigkill", libc::SIGKILL, 5), ("sigstop", libc::SIGSTOP, 3)] {
                let mut times = Vec::new();
                for _ in 0..if args.quick { 1 } else { reps } {
                    let b = args.node(&names[1], &config, false);
                    b.wait_line("members (2):", Duration::from_secs(10));
                    let watcher = client("watch@127.0.33.9", &names[0]).await;
                    let mut events = watcher.subscribe(Service::Control, Bytes::from_static(br#"{"op":"watch"}"#));
                    events.recv().await.expect("snapshot");
                    let t = Instant::now();
                    b.signal(sig);
                    loop {
                        let Some(Frame::Reply { body, .. }) = events.recv().await else { panic!("watch ended") };
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        if v["event"] == "down" && v["node"] == names[1].as_str() {
                            break;
                        }
                    }
                    times.push(t.elapsed());
                    watcher.close(wasmnode::dist::DownReason::LocalShutdown);
                    drop(b);
                }
                times.sort();
                out.insert(format!("node_down_after_{label}_ms"), json!(times[times.len() / 2].as_secs_f64() * 1e3));
            }
            drop(a);
            Value::Object(out)
        }
        "rss" => {
            let names: Vec<String> = (1..=3).map(|i| format!("r{i}@127.0.34.{i}")).collect();
            let config = args.config("rss", &args.static_topology(&names));
            let nodes: Vec<Node> = names.iter().map(|n| args.node(n, &config, false)).collect();
            for n in &nodes {
                n.wait_line("members (3):", Duration::from_secs(10));
            }
            // Idle means: formed, then a few heartbeat intervals and one poll later.
            tokio::time::sleep(Duration::from_secs(6)).await;
            let mut rss: Vec<f64> = nodes.iter().map(Node::rss_mib).collect();
            rss.sort_by(|a, b| a.partial_cmp(b).unwrap());
            json!({ "idle_node_rss_mib": rss[1] })
        }
        "workers" | "workers-pooled" => {
            // On demand, a node runs out of mappings near 9,300 instances: time 5,000 there.
            let pooled = figure == "workers-pooled";
            let (spawns, idle) = match (args.quick, pooled) {
                (true, _) => (2_000, 10_000),
                (false, false) => (5_000, 100_000),
                (false, true) => (10_000, 100_000),
            };
            workers_in_process(args, "worker_counter.wasm", spawns, idle, pooled).await
        }
        "workers-nowasi" => {
            // The same Rust counter built for wasm32-unknown-unknown: no WASI imports.
            // Pooled; its keys are the pooled figure's with `nowasi_` in front.
            let (spawns, idle) = if args.quick { (2_000, 10_000) } else { (10_000, 20_000) };
            let v = workers_in_process(args, "worker_counter_nowasi.wasm", spawns, idle, true).await;
            Value::Object(v.as_object().unwrap().iter().map(|(k, v)| (format!("nowasi_{k}"), v.clone())).collect())
        }
        "remote-call" => {
            let names = ["w1@127.0.35.1".to_string(), "w2@127.0.35.2".to_string()];
            let probe = args.plugin("worker_probe.wasm");
            let base = args.static_topology(&names);
            let config_path = args.config("remote", &format!("{base}\n[worker.probe]\ncomponent = \"{}\"\n", probe.display()));
            let n1 = args.node(&names[0], &config_path, pinned);
            let n2 = args.node(&names[1], &config_path, pinned);
            for n in [&n1, &n2] {
                n.wait_line("members (2):", Duration::from_secs(30));
            }
            let ctl = client("benchctl@127.0.35.9", &names[0]).await;
            let n = if args.quick { 20_000 } else { 100_000 };
            let (median, p99) = remote_call(&ctl, &names, n).await;
            drop((n1, n2));
            // This machine's floor in the same run and placement: a blocking ping-pong
            // between two processes. Targets in µs compare across machines only through it.
            let (base_median, base_p99) = baseline_rtt(pinned, n);
            json!({
                "worker_remote_call_16b_median_us": median,
                "worker_remote_call_16b_p99_us": p99,
                "worker_remote_call_samples": n,
                "remote_call_baseline_rtt_16b_median_us": base_median,
                "remote_call_baseline_rtt_16b_p99_us": base_p99,
                "remote_call_over_baseline": (median / base_median * 100.0).round() / 100.0,
            })
        }
        "durable" => {
            // A durable counter's `increment` against a plain one's, called from a probe
            // on the other node: the durable call also copies the new state to its replica
            // (the caller's node, the only other one) before it answers.
            let names = ["d1@127.0.36.1".to_string(), "d2@127.0.36.2".to_string()];
            let (probe, counter) = (args.plugin("worker_probe.wasm"), args.plugin("worker_counter.wasm"));
            let base = args.static_topology(&names);
            let kinds = format!(
                "{base}\n[worker.probe]\ncomponent = \"{}\"\n[worker.plain]\ncomponent = \"{}\"\n[worker.durable]\ncomponent = \"{}\"\ndurability = \"replicated\"\n",
                probe.display(),
                counter.display(),
                counter.display()
            );
            let config_path = args.config("durable", &kinds);
            let n1 = args.node(&names[0], &config_path, pinned);
            let n2 = args.node(&names[1], &config_path, pinned);
            for n in [&n1, &n2] {
                n.wait_line("members (2):", Duration::from_secs(30));
            }
            let ctl = client("benchctl@127.0.36.9", &names[0]).await;
            let n = if args.quick { 5_000 } else { 20_000 };
            let mut out = serde_json::Map::new();
            // Alternated, two rounds each.
            for round in 0..2 {
                for kind in ["plain", "durable"] {
                    let (median, p99) = call_from_probe(&ctl, &names, kind, "increment", n, 2_000).await;
                    out.insert(format!("{kind}_increment_median_us_round{round}"), json!(median));
                    out.insert(format!("{kind}_increment_p99_us_round{round}"), json!(p99));
                }
            }
            // Throughput: 1 and 16 probes on the first node calling as fast as they can,
            // each its own counter on the second.
            for callers in [1usize, 16] {
                for kind in ["plain", "durable"] {
                    let per = n / callers.max(4);
                    let rate = calls_per_second(&ctl, &names, kind, "increment", callers, per).await;
                    out.insert(format!("{kind}_increment_{callers}_callers_per_s"), json!(rate));
                }
            }
            drop((n1, n2));
            Value::Object(out)
        }
        "gateway" => gateway(args).await,
        "outbound" => outbound(args).await,
        "failover" => failover(args).await,
        "handoff" => {
            let mut out = serde_json::Map::new();
            for n in [1_000usize, 10_000] {
                let runs = if args.quick { 1 } else { 3 };
                let (mut term, mut kill) = (Vec::new(), Vec::new());
                for run in 0..runs {
                    let (t, k) = handoff_run(args, n, run).await;
                    term.push(t);
                    kill.push(k);
                }
                term.sort();
                kill.sort();
                out.insert(format!("sigterm_all_{n}_serving_again_ms"), json!(term[term.len() / 2].as_secs_f64() * 1e3));
                out.insert(format!("sigkill_all_{n}_restarted_ms"), json!(kill[kill.len() / 2].as_secs_f64() * 1e3));
            }
            Value::Object(out)
        }
        other => panic!("unknown figure {other}"),
    }
}

/// Median and p99, in µs, of `n` calls of `msg` from a probe on `names[0]` to a worker
/// of `kind` on `names[1]`, timed in the guest after `warmup` calls.
async fn call_from_probe(ctl: &Peer, names: &[String], kind: &str, msg: &str, n: usize, warmup: usize) -> (f64, f64) {
    let caller = start_on(ctl, "probe", "p", &names[0], 1).await.remove(0);
    let callee = start_on(ctl, kind, "c", &names[1], 1).await.remove(0);
    ask(ctl, json!({"op":"call","kind":"probe","key":caller,"msg":format!("bench {warmup} {kind}/{callee} {msg}"),"timeout_ms":600000})).await;
    let v = ask(ctl, json!({"op":"call","kind":"probe","key":caller,"msg":format!("bench {n} {kind}/{callee} {msg}"),"timeout_ms":600000})).await;
    let reply = v["reply"].as_str().unwrap_or_else(|| panic!("bench call failed: {v}")).to_string();
    let mut it = reply.split_whitespace().map(|x| x.parse::<f64>().unwrap() / 1000.0);
    (it.next().unwrap(), it.next().unwrap())
}

/// Median and p99, in µs, of `n` calls from a probe worker on `names[0]` to one on
/// `names[1]`, timed in the guest (both nodes run the probe kind); `ctl` is connected to
/// `names[0]`.
async fn remote_call(ctl: &Peer, names: &[String], n: usize) -> (f64, f64) {
    call_from_probe(ctl, names, "probe", "0123456789abcdef", n, 10_000).await
}

/// Calls per second of `callers` probes on `names[0]`, each making `per` calls of `msg`
/// to its own worker of `kind` on `names[1]`, all at once.
async fn calls_per_second(ctl: &Peer, names: &[String], kind: &str, msg: &str, callers: usize, per: usize) -> f64 {
    let probes = start_on(ctl, "probe", &format!("tp-{kind}-{callers}-"), &names[0], callers).await;
    let callees = start_on(ctl, kind, &format!("tc-{callers}-"), &names[1], callers).await;
    let run = |calls: usize| {
        futures_util::future::join_all(probes.iter().zip(&callees).map(|(p, c)| {
            let v = json!({"op": "call", "kind": "probe", "key": p, "msg": format!("bench {calls} {kind}/{c} {msg}"), "timeout_ms": 600000});
            async move {
                let v = ask(ctl, v).await;
                assert!(v["reply"].is_string(), "bench call failed: {v}");
            }
        }))
    };
    run(per / 10 + 1).await;
    let t = Instant::now();
    run(per).await;
    (callers * per) as f64 / t.elapsed().as_secs_f64()
}

/// What wrk measured: requests per second, and the 99th percentile of latency in µs.
fn wrk(url: &str, connections: usize, seconds: u64, script: &Path) -> (f64, f64) {
    let threads = connections.min(2);
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &connections.to_string(), "-d", &format!("{seconds}s"), "--latency", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk ({e}): ./dev bench installs it"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk {url}: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("Non-2xx"), "wrk {url} got errors:\n{text}");
    let rps = text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or_else(|| panic!("{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| {
            let v = v.trim();
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().unwrap_or(f64::NAN);
            match unit {
                "us" => n,
                "ms" => n * 1e3,
                "s" => n * 1e6,
                _ => f64::NAN,
            }
        })
        .unwrap_or(f64::NAN);
    (rps, p99)
}

/// A control request to the node `ctl` is connected to; its JSON answer.
async fn ask(ctl: &Peer, v: Value) -> Value {
    let body = ctl.request(Service::Control, Bytes::from(v.to_string()), Duration::from_secs(600)).await.expect("control request");
    serde_json::from_slice::<Value>(&body).unwrap()
}

/// A counter of a node's `/metrics` at `addr` (its `_total` sample).
fn metric(addr: &str, name: &str) -> f64 {
    let (status, body) = http(addr, "GET", "/metrics", b"");
    assert_eq!(status, 200, "{body}");
    let prefix = format!("{name}_total ");
    body.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

/// Starts `kind/{prefix}{i}` for i = 0, 1, … until `want` run on `node`; their keys.
/// A name started before (by an earlier round) counts where it runs.
async fn start_on(ctl: &Peer, kind: &str, prefix: &str, node: &str, want: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0.. {
        let key = format!("{prefix}{i}");
        let v = ask(ctl, json!({"op": "start", "kind": kind, "key": key})).await;
        let on = match (v["started"].as_str(), v["error"].as_str()) {
            (Some(on), _) => on,
            (None, Some("already_started")) => v["node"].as_str().unwrap_or_default(),
            _ => panic!("start {kind}/{key}: {v}"),
        };
        if on == node {
            keys.push(key);
            if keys.len() == want {
                break;
            }
        }
    }
    keys
}

/// Durable kinds around a kill -9, on three nodes (replicas = 1): the bytes a call
/// copies to the replica (the Rust and the Python counter, a worker holding 10 MiB), how
/// long after a kill -9 of its node a name holding 10 MiB answers again (its state
/// restored from the replica's copy), and how long each of 1,000 durable names on the
/// killed node takes to answer its first call again.
async fn failover(args: &Args) -> Value {
    let names: Vec<String> = (1..=3).map(|i| format!("f{i}@127.0.38.{i}")).collect();
    let base = args.static_topology(&names);
    let durable = "durability = \"replicated\"";
    let kinds = format!(
        "[worker.counter]\ncomponent = \"{}\"\n{durable}\n[worker.counterpy]\ncomponent = \"{}\"\n{durable}\n\
         [worker.big]\ncomponent = \"{}\"\n{durable}\nmemory_limit_mb = 256\ncall_timeout_ms = 20000\n",
        args.plugin("worker_counter.wasm").display(),
        args.plugin("worker_counter_py.wasm").display(),
        args.plugin("worker_probe.wasm").display(),
    );
    let config = |i: usize| args.config(&format!("failover{i}"), &format!("{base}\n{kinds}\n[http]\nlisten = \"127.0.38.{}:9090\"\n", i + 1));
    let mut nodes: Vec<Node> = (0..3).map(|i| args.node(&names[i], &config(i), false)).collect();
    for n in &nodes {
        n.wait_line("members (3):", Duration::from_secs(120));
    }
    let ctl = client("failoverctl@127.0.38.9", &names[0]).await;
    let metrics = |node: usize| format!("127.0.38.{}:9090", node + 1);
    let mut out = serde_json::Map::new();

    // Bytes per call: names on node 1 (index 1), called from node 0.
    let calls = if args.quick { 200 } else { 1_000 };
    for (kind, label, msg) in [("counter", "rust_counter", "increment"), ("counterpy", "python_counter", "increment"), ("big", "10mib_worker", "slow-add 0")] {
        // Each call of the 10 MiB worker snapshots and compares 10 MiB: fewer of them.
        let calls = if kind == "big" { calls / 10 } else { calls };
        let key = start_on(&ctl, kind, "bytes", &names[1], 1).await.remove(0);
        if kind == "big" {
            let v = ask(&ctl, json!({"op": "call", "kind": kind, "key": key, "msg": "ballast 10", "timeout_ms": 60000})).await;
            assert_eq!(v["reply"], "ok", "{v}");
        }
        let before = metric(&metrics(1), "wasmnode_replicated_bytes");
        for _ in 0..calls {
            let v = ask(&ctl, json!({"op": "call", "kind": kind, "key": key, "msg": msg})).await;
            assert!(v["reply"].is_string(), "{kind}/{key}: {v}");
        }
        let after = metric(&metrics(1), "wasmnode_replicated_bytes");
        out.insert(format!("durable_{label}_replicated_bytes_per_call"), json!((after - before) / calls as f64));
    }

    // A 10 MiB state restored: kill -9 of the node running it, to its first answer.
    let key = start_on(&ctl, "big", "restore", &names[2], 1).await.remove(0);
    let v = ask(&ctl, json!({"op": "call", "kind": "big", "key": key, "msg": "ballast 10", "timeout_ms": 60000})).await;
    assert_eq!(v["reply"], "ok", "{v}");
    let t = Instant::now();
    nodes[2].signal(libc::SIGKILL);
    loop {
        let v = ask(&ctl, json!({"op": "call", "kind": "big", "key": key, "msg": "count", "timeout_ms": 2000})).await;
        if v["reply"].is_string() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "big/{key} did not come back: {v}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    out.insert("durable_10mib_kill9_to_first_call_ms".into(), json!(t.elapsed().as_secs_f64() * 1e3));
    // The restore itself, as the node that took the name over timed it: a new instance,
    // and its `init` with the 10 MiB copy.
    let line = format!("restored big/{key} from ");
    let restored =
        nodes[..2].iter().find_map(|n| n.log().lines().find(|l| l.contains(&line)).map(str::to_string)).unwrap_or_else(|| panic!("no node logged {line:?}"));
    let ms: f64 = restored.split(" in ").last().and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{restored}"));
    out.insert("durable_10mib_restore_ms".into(), json!(ms));
    nodes[2].restart();
    for n in &nodes {
        n.wait_line("members (3):", Duration::from_secs(60));
    }
    // Every name copied to its replicas again (the restarted node among them) before the
    // next kill.
    let settled = Instant::now();
    loop {
        let v = ask(&ctl, json!({"op": "workers"})).await;
        let behind =
            v["durable"].as_array().into_iter().flatten().filter(|d| d["replicas"].as_array().is_none_or(|r| r.iter().all(|r| r["current"] != true))).count();
        if behind == 0 {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(60), "{behind} durable names without a current replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1,000 durable names on node 2, killed: each name's first answer after the kill.
    let n = if args.quick { 200 } else { 1_000 };
    let keys = start_on(&ctl, "counter", "f", &names[2], n).await;
    let t = Instant::now();
    nodes[2].signal(libc::SIGKILL);
    let waits = keys.into_iter().map(|key| {
        let ctl = ctl.clone();
        async move {
            loop {
                let v = ask(&ctl, json!({"op": "call", "kind": "counter", "key": key, "msg": "value", "timeout_ms": 2000})).await;
                if v["reply"].is_string() {
                    return t.elapsed();
                }
                assert!(t.elapsed() < Duration::from_secs(60), "counter/{key} did not come back: {v}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut times = futures_util::future::join_all(waits).await;
    times.sort();
    out.insert(format!("durable_failover_{n}_names_median_ms"), json!(percentile(&times, 0.5) / 1e3));
    out.insert(format!("durable_failover_{n}_names_p99_ms"), json!(percentile(&times, 0.99) / 1e3));
    drop(nodes);
    Value::Object(out)
}

/// The worker gateway on keep-alive connections against nginx's `return 200` on the same
/// machine in the same run: requests per second at 16 connections and the p99 at one, for
/// a call answered by a worker on the node itself and one on another node.
async fn gateway(args: &Args) -> Value {
    let names = ["g1@127.0.39.1".to_string(), "g2@127.0.39.2".to_string()];
    let base = args.static_topology(&names);
    let counter = args.plugin("worker_counter.wasm");
    let probe = args.plugin("worker_probe.wasm");
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let http = format!("\n[http]\nlisten = \"127.0.39.{}:8080\"\ngateway = true\n", i + 1);
            let workers = format!("[worker.counter]\ncomponent = \"{}\"\n[worker.probe]\ncomponent = \"{}\"\n", counter.display(), probe.display());
            let config = args.config(&format!("gateway{i}"), &format!("{base}\n{workers}{http}"));
            args.node(n, &config, false)
        })
        .collect();
    for n in &nodes {
        n.wait_line("members (2):", Duration::from_secs(30));
    }
    // A counter on g1 and one on g2, both called through g1's gateway.
    let (mut local, mut remote) = (None, None);
    for i in 0..200 {
        let (status, body) = http("127.0.39.1:8080", "POST", &format!("/v1/workers/counter/k{i}"), b"");
        assert_eq!(status, 201, "{body}");
        let on = serde_json::from_str::<Value>(&body).unwrap()["node"].as_str().unwrap().to_string();
        if on == names[0] && local.is_none() {
            local = Some(format!("k{i}"));
        } else if on == names[1] && remote.is_none() {
            remote = Some(format!("k{i}"));
        }
        if local.is_some() && remote.is_some() {
            break;
        }
    }
    let (local, remote) = (local.unwrap(), remote.unwrap());
    // nginx, one worker process, answering 200 to everything.
    let dir = args.tmp.0.join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\nuser root;\npid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {0};\n  server {{ listen 127.0.39.9:8080; location / {{ return 200 \"ok\"; }} }}\n}}\n",
            dir.display()
        ),
    )
    .unwrap();
    let mut nginx =
        Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(&dir).spawn().unwrap_or_else(|e| panic!("cannot run nginx ({e}): ./dev bench installs it"));
    let start = Instant::now();
    while std::net::TcpStream::connect("127.0.39.9:8080").is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = dir.join("increment.lua");
    std::fs::write(&script, "wrk.method = \"POST\"\nwrk.body = \"increment\"\n").unwrap();
    let secs = if args.quick { 3 } else { 10 };
    let url = |key: &str| format!("http://127.0.39.1:8080/v1/workers/counter/{key}/call");
    // Warm up each, then alternate: nginx, local, remote.
    for u in ["http://127.0.39.9:8080/".to_string(), url(&local), url(&remote)] {
        wrk(&u, 16, 1, &script);
    }
    let (nginx16, _) = wrk("http://127.0.39.9:8080/", 16, secs, &script);
    let (local16, _) = wrk(&url(&local), 16, secs, &script);
    let (remote16, _) = wrk(&url(&remote), 16, secs, &script);
    let (_, nginx_p99) = wrk("http://127.0.39.9:8080/", 1, secs, &script);
    let (_, local_p99) = wrk(&url(&local), 1, secs, &script);
    let (_, remote_p99) = wrk(&url(&remote), 1, secs, &script);
    // SIGTERM: nginx's master stops its worker too (SIGKILL left the worker running,
    // holding the bench's stdout open).
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(nginx.id() as i32, libc::SIGTERM) };
    let _ = nginx.wait();
    // The allowance for a gateway call that crosses to another node: nginx's p99 plus
    // three remote calls between these two nodes, measured now (their p99).
    let ctl = client("benchctl@127.0.39.8", &names[0]).await;
    let (_, call_p99) = remote_call(&ctl, &names, if args.quick { 20_000 } else { 100_000 }).await;
    drop(nodes);
    json!({
        "nginx_return_200_c16_per_s": nginx16,
        "gateway_local_call_c16_per_s": local16,
        "gateway_remote_call_c16_per_s": remote16,
        "gateway_local_over_nginx": (local16 / nginx16 * 100.0).round() / 100.0,
        "gateway_remote_over_nginx": (remote16 / nginx16 * 100.0).round() / 100.0,
        "nginx_return_200_c1_p99_us": nginx_p99,
        "gateway_local_call_c1_p99_us": local_p99,
        "gateway_remote_call_c1_p99_us": remote_p99,
        "worker_remote_call_p99_us": call_p99,
        "gateway_remote_c1_p99_allowance_us": nginx_p99 + 3.0 * call_p99,
    })
}

/// A local HTTP server for the outbound figure: answers every request `200 ok` and
/// closes the connection (what the worker's client and the host's both expect: one
/// connection per request).
async fn ok_server(addr: &str, keep_alive: bool) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().keep_alive(keep_alive).serve_connection(hyper_util::rt::TokioIo::new(conn), service).await;
            });
        }
    });
}

/// An HTTP/1.1 connection to `addr` (hyper's client), driven on a task of its own.
async fn http_connection(addr: &str) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).ok();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(conn);
    sender
}

/// `n` GETs of `http://{addr}/` by the host itself, each timed with its body read to the
/// end: on one kept-alive connection (`kept`, made before the first is timed), or on a
/// new connection each (its connecting timed with it).
async fn host_gets(addr: &str, n: usize, kept: bool) -> Vec<f64> {
    use http_body_util::BodyExt;
    let mut one = if kept { Some(http_connection(addr).await) } else { None };
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut fresh;
        let sender = match one.as_mut() {
            Some(s) => s,
            None => {
                fresh = http_connection(addr).await;
                &mut fresh
            }
        };
        sender.ready().await.expect("ready");
        let request = hyper::Request::get("/").header("host", addr).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let response = sender.send_request(request).await.expect("send");
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.expect("body");
        ns.push(t.elapsed().as_nanos() as f64);
    }
    ns
}

/// A worker's `n` GETs of `url` (`http-bench`, timed in the guest): median and p99, µs.
async fn worker_gets(ctl: &Peer, n: usize, url: &str) -> (f64, f64) {
    let v = ask(ctl, json!({"op":"call","kind":"probe","key":"o","msg":format!("http-bench {n} {url}"),"timeout_ms":600000})).await;
    let reply = v["reply"].as_str().unwrap_or_else(|| panic!("http-bench failed: {v}")).to_string();
    let mut it = reply.split_whitespace().map(|x| x.parse::<f64>().unwrap() / 1000.0);
    (it.next().unwrap(), it.next().unwrap())
}

/// Outbound HTTP: N GETs of a local server by a worker (`wasi:http`, timed in the
/// guest) against the same GETs made by the host directly (hyper's client, timed in the
/// bench): to a server that closes each connection (a connection per request both
/// ways), then to one that keeps them (the worker's kind reuses its pooled connection,
/// the host one connection).
async fn outbound(args: &Args) -> Value {
    let (server, kept) = ("127.0.31.9:8089", "127.0.31.9:8090");
    ok_server(server, false).await;
    ok_server(kept, true).await;
    let names = ["o1@127.0.31.1".to_string()];
    let kinds = format!(
        "{}\n[worker.probe]\ncomponent = \"{}\"\nallowed_outbound_hosts = [\"http://{server}\", \"http://{kept}\"]\n",
        args.static_topology(&names),
        args.plugin("worker_probe.wasm").display()
    );
    let config = args.config("outbound", &kinds);
    let node = args.node(&names[0], &config, false);
    node.wait_line("listening on", Duration::from_secs(60));
    let ctl = client("benchctl@127.0.31.8", &names[0]).await;
    let n = if args.quick { 500 } else { 2_000 };
    let mut out = serde_json::Map::new();
    let v = ask(&ctl, json!({"op": "start", "kind": "probe", "key": "o"})).await;
    assert!(v["started"].is_string(), "start probe/o: {v}");
    for (addr, label, keep) in [(server, "", false), (kept, "_kept", true)] {
        let url = format!("http://{addr}/");
        // Alternated, two rounds each, after a warm-up of each.
        worker_gets(&ctl, 200, &url).await;
        host_gets(addr, 200, keep).await;
        for round in 0..2 {
            let (median, p99) = worker_gets(&ctl, n, &url).await;
            out.insert(format!("worker_get{label}_median_us_round{round}"), json!(median));
            out.insert(format!("worker_get{label}_p99_us_round{round}"), json!(p99));
            let mut ns = host_gets(addr, n, keep).await;
            ns.sort_by(|a, b| a.total_cmp(b));
            out.insert(format!("host_get{label}_median_us_round{round}"), json!(ns[n / 2] / 1000.0));
            out.insert(format!("host_get{label}_p99_us_round{round}"), json!(ns[n * 99 / 100] / 1000.0));
        }
    }
    drop(node);
    Value::Object(out)
}
