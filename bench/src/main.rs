//! `wasmnode-bench`: wasmnode's benchmarks between real node processes on loopback.
//!
//! `./dev bench` runs every figure and prints a table; `--json FILE` (default
//! `bench-results/bench.json`) gets the same figures. The method of each figure is in
//! docs/benchmarks.md. Latency and throughput are measured in two placements
//! (../shared/BENCHMARKING.md): `free`, where the OS places both processes, and
//! `pinned`, where the bench client and the node both run on CPU 0. For each placement
//! the bench re-runs itself (`wasmnode-bench measure …`) so its own threads are pinned
//! from their start.
//!
//! The figures by what they measure: `wire` (the connection: round trip, throughput,
//! connect), `cluster` (mesh, node down, idle memory, handoff, failover), `workers`
//! (spawns, remote and durable calls) and `web` (the gateway and outbound HTTP); this
//! file holds the command line, the runner and what every figure shares.

mod against;
mod cluster;
mod web;
mod wire;
mod workers;

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

    /// Two nodes named `names` on one config, once each counts the other a member.
    fn pair(&self, names: &[String; 2], config: &Path, pinned: bool) -> (Node, Node) {
        let (a, b) = (self.node(&names[0], config, pinned), self.node(&names[1], config, pinned));
        for n in [&a, &b] {
            n.wait_line("members (2):", Duration::from_secs(30));
        }
        (a, b)
    }

    /// Topology `local`: the static strategy listing `hosts`, polled every 5 s.
    fn static_topology(&self, hosts: &[String]) -> String {
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        static_strategy(&self.plugin("strategy_static.wasm"), &hosts, 5000)
    }
}

/// The figures measured in a child process per placement (free, then pinned to CPU 0).
const PLACED: [&str; 11] =
    ["rtt", "throughput", "connect", "rtt-tls", "throughput-tls", "connect-tls", "workers", "workers-pooled", "workers-nowasi", "remote-call", "durable"];

/// The figures measured once, in this process, with the OS placing everything.
const FREE: [&str; 7] = ["mesh", "down", "rss", "handoff", "gateway", "failover", "outbound"];

/// wasmnode's benchmarks between real node processes on loopback: every figure, or one,
/// printed as a table and written as JSON (the method: docs/benchmarks.md).
#[derive(clap::Parser)]
#[command(name = "wasmnode-bench")]
struct Cli {
    /// The wasmnode binary the nodes run.
    #[arg(long, default_value = "wasmnode", global = true)]
    bin: PathBuf,
    /// Where the built plugins are (`./dev plugins` puts them in plugins/dist).
    #[arg(long, default_value = "plugins/dist", global = true)]
    plugins: PathBuf,
    /// Where the figures go, as JSON.
    #[arg(long, default_value = "bench-results/bench.json")]
    json: PathBuf,
    /// Fewer samples: a check that every figure runs, not figures to compare.
    #[arg(long, global = true)]
    quick: bool,
    /// Only this figure.
    #[arg(long, value_name = "FIGURE", value_parser = clap::builder::PossibleValuesParser::new(PLACED.iter().chain(FREE.iter())))]
    only: Option<String>,
    #[command(subcommand)]
    child: Option<Child>,
}

/// What the bench runs itself as, so that a placement applies from a process's start.
#[derive(clap::Subcommand)]
enum Child {
    /// Measures one figure in one placement and prints it as JSON.
    #[command(hide = true)]
    Measure { figure: String, placement: String },
    /// The baseline's far end: a blocking echo server.
    #[command(hide = true)]
    EchoServer { addr: String },
    /// The connection's figures (round trip, one-way throughput, connect) of this
    /// build against another's, in alternated rounds: medians, the ratio each keeps,
    /// and the record layer's ceiling on one-way throughput pinned.
    /// (`./dev bench-against REV` builds REV and runs this.)
    Against {
        /// The other build's wasmnode-bench.
        #[arg(long)]
        before_bench: PathBuf,
        /// The other build's wasmnode.
        #[arg(long)]
        before_bin: PathBuf,
        /// What to call the other build in the table.
        #[arg(long, default_value = "before")]
        before_label: String,
        /// Rounds, each measuring every figure with both builds in both placements (or
        /// the one `--placement` names).
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        /// Only this figure.
        #[arg(long, value_name = "FIGURE", value_parser = clap::builder::PossibleValuesParser::new(against::FIGURES))]
        only: Option<String>,
        /// Only this placement: `pinned` re-runs the figures the targets judge without
        /// the free runs' minutes (a round of `rtt` free takes about two).
        #[arg(long, value_name = "PLACEMENT", value_parser = clap::builder::PossibleValuesParser::new(against::PLACEMENTS))]
        placement: Option<String>,
        /// Where every round's figures and the summary go, as JSON.
        #[arg(long, default_value = "bench-results/against.json")]
        json: PathBuf,
    },
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let args = Args { bin: cli.bin, plugins: cli.plugins, json: cli.json, quick: cli.quick, only: cli.only, tmp: TempDir::new("bench") };
    let measure = match cli.child {
        Some(Child::EchoServer { addr }) => return wire::echo_server(&addr),
        Some(Child::Measure { figure, placement }) => Some((figure, placement)),
        Some(Child::Against { before_bench, before_bin, before_label, rounds, only, placement, json }) => {
            let before = against::Build { label: before_label, bench: before_bench, bin: before_bin };
            let after = against::Build { label: "this".into(), bench: std::env::current_exe().unwrap(), bin: args.bin.clone() };
            let (figures, placements) = (against::chosen(against::FIGURES, only.as_deref()), against::chosen(against::PLACEMENTS, placement.as_deref()));
            let plan = against::Plan { figures: &figures, placements: &placements, rounds, quick: args.quick };
            return against::run(&before, &after, &args.plugins, &plan, &json);
        }
        None => None,
    };
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
    for figure in PLACED {
        if !wants(figure) {
            continue;
        }
        for placement in ["free", "pinned"] {
            let v = measure_in_child(&std::env::current_exe().unwrap(), &args.bin, &args.plugins, figure, placement, args.quick);
            for (k, val) in v.as_object().unwrap() {
                table.push((k.clone(), placement.to_string(), fmt_value(k, val)));
            }
            results.insert(format!("{figure}_{placement}"), v);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for figure in FREE {
        if !wants(figure) {
            continue;
        }
        let steal = Steal::start();
        let v = steal.add_to(rt.block_on(measure_figure(figure, "free", args)));
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

/// Runs `bench measure FIGURE PLACEMENT` (this bench, or another build's: every bench
/// has that subcommand) with nodes running `bin`, and returns the figures it prints,
/// with the hypervisor's steal while it ran ([`Steal`]).
fn measure_in_child(bench: &Path, bin: &Path, plugins: &Path, figure: &str, placement: &str, quick: bool) -> Value {
    let steal = Steal::start();
    let mut cmd = Command::new(bench);
    cmd.args(["measure", figure, placement, "--bin"]).arg(bin).arg("--plugins").arg(plugins);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd.stderr(Stdio::inherit()).output().unwrap_or_else(|e| panic!("run {}: {e}", bench.display()));
    assert!(out.status.success(), "{} measuring {figure} ({placement}) failed", bin.display());
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{} measuring {figure} ({placement}) printed no JSON: {e}", bin.display()));
    steal.add_to(v)
}

/// The share of this machine's CPU time its hypervisor took while a figure ran (the
/// `steal` of `/proc/stat`): on a VM whose neighbours come and go, the figure that
/// says which runs were disturbed. Every figure gets it as `hypervisor_steal_pct`,
/// percent of all vCPUs' time; none where the kernel does not count steal.
struct Steal {
    ticks: Option<u64>,
    at: Instant,
}

impl Steal {
    fn start() -> Steal {
        Steal { ticks: read_steal_ticks(), at: Instant::now() }
    }

    /// Percent of every vCPU's time since [`Steal::start`] that the hypervisor took.
    fn pct(&self) -> Option<f64> {
        let stolen = read_steal_ticks()?.saturating_sub(self.ticks?);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        steal_share(stolen, hz, self.at.elapsed().as_secs_f64(), cpus)
    }

    /// `figures` with `hypervisor_steal_pct` added (when the kernel counts it).
    fn add_to(&self, mut figures: Value) -> Value {
        if let (Some(pct), Some(map)) = (self.pct(), figures.as_object_mut()) {
            map.insert("hypervisor_steal_pct".into(), json!((pct * 100.0).round() / 100.0));
        }
        figures
    }
}

/// `stolen` clock ticks (`hz` a second) as a percent of `cpus` vCPUs' time over `secs`.
fn steal_share(stolen: u64, hz: i64, secs: f64, cpus: usize) -> Option<f64> {
    let all = secs * cpus as f64;
    (hz > 0 && all > 0.0).then(|| stolen as f64 / hz as f64 / all * 100.0)
}

fn read_steal_ticks() -> Option<u64> {
    steal_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The steal of all CPUs, in clock ticks, from `/proc/stat`'s text: the eighth number
/// of its `cpu` line (user nice system idle iowait irq softirq steal …).
fn steal_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    line.split_whitespace().nth(8)?.parse().ok()
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
    } else if key.ends_with("_pct") {
        format!("{f:.1} %")
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
        "rtt" => wire::rtt(args, pinned, tls).await,
        "throughput" => wire::throughput(args, pinned, tls).await,
        "connect" => wire::connect(args, pinned, tls).await,
        "mesh" => cluster::mesh(args).await,
        "down" => cluster::down(args).await,
        "rss" => cluster::rss(args).await,
        "handoff" => cluster::handoff(args).await,
        "failover" => cluster::failover(args).await,
        "workers" | "workers-pooled" => workers::spawns(args, figure).await,
        "workers-nowasi" => workers::nowasi(args).await,
        "remote-call" => workers::remote(args, pinned).await,
        "durable" => workers::durable(args, pinned).await,
        "gateway" => web::gateway(args).await,
        "outbound" => web::outbound(args).await,
        other => panic!("unknown figure {other}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_number_of_the_cpu_line() {
        let stat = "cpu  584257 0 93332 251170 2451 0 33621 41446 0 0\ncpu0 292128 0 46666 125585 1225 0 16810 20723 0 0\nintr 1 2\n";
        assert_eq!(steal_ticks(stat), Some(41446));
        // A kernel without the steal column (before 2.6.11), or no cpu line at all.
        assert_eq!(steal_ticks("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(steal_ticks("intr 1 2\n"), None);
    }

    #[test]
    fn steal_is_a_share_of_every_vcpus_time() {
        // 50 ticks of 10 ms over 1 s on 2 vCPUs: a quarter of their time.
        assert_eq!(steal_share(50, 100, 1.0, 2), Some(25.0));
        assert_eq!(steal_share(0, 100, 4.0, 2), Some(0.0));
        // No clock rate, or no time elapsed: no share rather than a division by zero.
        assert_eq!(steal_share(5, 0, 1.0, 2), None);
        assert_eq!(steal_share(5, 100, 0.0, 2), None);
    }

    #[test]
    fn the_figures_get_the_steal_beside_them() {
        let steal = Steal { ticks: read_steal_ticks(), at: Instant::now() - Duration::from_secs(1) };
        let v = steal.add_to(json!({ "x_us": 1.0 }));
        assert_eq!(v["x_us"], 1.0, "the figures themselves are kept");
        // Where the kernel counts steal (Linux since 2.6.11: every machine this runs on).
        let pct = v["hypervisor_steal_pct"].as_f64().expect("hypervisor_steal_pct beside the figures");
        assert!((0.0..=100.0).contains(&pct), "{pct}");
        assert_eq!(fmt_value("hypervisor_steal_pct", &json!(2.345)), "2.3 %");
    }
}
