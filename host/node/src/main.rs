//! `wasmnode`: run a node, check a topology, or act on a running cluster as a hidden
//! node authenticated by the cookie (Erlang's remote console).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use tokio::sync::mpsc;
use wasmnode::config::{Config, CookieSource, Overrides, DEFAULT_COOKIE_ENV};
use wasmnode::dist::{Dist, DistConfig, Peer};
use wasmnode::time::rfc3339;
use wasmnode_proto::{Frame, Service};

#[derive(Parser)]
#[command(name = "wasmnode", version, about = "A node host for WebAssembly applications")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a topology file.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Node name (basename@host[:port]); overrides [node].name.
        #[arg(long)]
        name: Option<String>,
        /// Listen address (ip:port); overrides [node].listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate a topology and its plugins without starting.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a running node's members, or stream its node-up / node-down events.
    Nodes {
        /// The node to ask (default: the one --config describes).
        #[arg(long)]
        node: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep streaming node-up and node-down events until interrupted.
        #[arg(long)]
        watch: bool,
        /// Take the cookie source (and, without --node, the node) from this topology file
        /// instead of WASMNODE_COOKIE.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start worker KIND/KEY on its owner; prints the node it runs on.
    Start {
        /// The node to ask (default: the one --config describes).
        #[arg(long)]
        node: Option<String>,
        kind: String,
        key: String,
        /// Arguments handed to the worker's init (text).
        #[arg(default_value = "")]
        args: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Call worker KIND/KEY wherever it runs; prints its reply.
    Call {
        /// The node to ask (default: the one --config describes).
        #[arg(long)]
        node: Option<String>,
        /// KIND/KEY, e.g. counter/c1.
        name: String,
        /// The message (text).
        msg: String,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// A call id: the worker applies a call with this id once, however often it is
        /// retried (after a timeout or `unavailable`, retry with the same id).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the workers running on every node.
    Workers {
        /// The node to ask (default: the one --config describes).
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Make a development CA (once: DIR/ca.crt, DIR/ca.key) and, signed by it, a
    /// certificate and key for each HOST (DIR/HOST.crt, DIR/HOST.key), for [node.tls].
    /// HOST is the host part of a node name: an IP address, a DNS name, or a wildcard
    /// such as '*.myapp-headless.default.svc.cluster.local'.
    Certs {
        /// Where the files go (made if missing; an existing CA there is reused).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// GET a URL of a node's HTTP port (e.g. http://127.0.0.1:9090/readyz) and print the
    /// body; exits 0 on a 2xx answer, 1 otherwise. The image has no curl: Docker's
    /// HEALTHCHECK and `docker exec` use this.
    Probe {
        url: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run { config, name, listen } = cli.command {
        init_logging();
        let result = Config::load(&config, &Overrides { name, listen })
            .map_err(|e| anyhow!("{e}"))
            .and_then(|cfg| Ok((wasmnode::node::runtime_for(&cfg)?, cfg)))
            .and_then(|(runtime, cfg)| runtime.block_on(wasmnode::node::run(cfg)));
        return exit(result);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Command::Probe { url, timeout_ms } = &cli.command {
        return probe(&runtime, url, *timeout_ms);
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { .. } => unreachable!("handled above"),
            Command::Check { config } => {
                let cfg = Config::load(&config, &Overrides::default()).map_err(|e| anyhow!("{e}"))?;
                let errors = tokio::task::spawn_blocking(move || wasmnode::node::check(&cfg)).await?;
                if errors.is_empty() {
                    println!("{}: ok", config.display());
                    Ok(())
                } else {
                    for e in &errors {
                        eprintln!("error: {e}");
                    }
                    Err(anyhow!("{} problem(s) in {}", errors.len(), config.display()))
                }
            }
            Command::Nodes { node, json, watch, config } => nodes(node, json, watch, config).await,
            Command::Start { node, kind, key, args, config } => {
                let v = ask(node, config, serde_json::json!({ "op": "start", "kind": kind, "key": key, "args": args })).await?;
                match v["started"].as_str() {
                    Some(on) => {
                        println!("started {kind}/{key} on {on}");
                        Ok(())
                    }
                    None => Err(anyhow!("{kind}/{key}: {}", describe(&v))),
                }
            }
            Command::Call { node, name, msg, timeout_ms, id, config } => {
                let (kind, key) = name.split_once('/').ok_or_else(|| anyhow!("`{name}` is not KIND/KEY"))?;
                let request = serde_json::json!({ "op": "call", "kind": kind, "key": key, "msg": msg, "timeout_ms": timeout_ms, "id": id });
                let v = ask(node, config, request).await?;
                match (v["reply"].as_str(), v["reply_hex"].as_str()) {
                    (Some(text), _) => println!("{text}"),
                    (None, Some(hex)) => println!("{hex}"),
                    _ => return Err(anyhow!("{name}: {}", describe(&v))),
                }
                Ok(())
            }
            Command::Workers { node, json, config } => {
                let v = ask(node, config, serde_json::json!({ "op": "workers" })).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for n in v["nodes"].as_array().into_iter().flatten() {
                        let workers: Vec<&str> = n["workers"].as_array().into_iter().flatten().filter_map(|w| w.as_str()).collect();
                        println!("{} ({}): {}", n["node"].as_str().unwrap_or("?"), workers.len(), workers.join(", "));
                    }
                    let durable = v["durable"].as_array().map(Vec::len).unwrap_or(0);
                    if durable > 0 {
                        let behind = v["durable"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|d| d["replicas"].as_array().is_none_or(|r| r.is_empty() || r.iter().any(|r| r["current"] != true)))
                            .count();
                        println!("durable: {durable} names, {behind} without a current replica (--json for each name's replicas)");
                    }
                }
                Ok(())
            }
            Command::Probe { .. } => unreachable!("handled above"),
            Command::Certs { dir, hosts } => {
                let written = wasmnode::certs::write(&dir, &hosts).map_err(|e| anyhow!(e))?;
                if !written.ca_created {
                    println!("reused the CA in {}", dir.join("ca.crt").display());
                }
                for f in &written.files {
                    println!("wrote {}", f.display());
                }
                Ok(())
            }
        }
    });
    exit(result)
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).init();
}

/// Connects as a hidden node with the cookie to `node`, or, without it, to the node the
/// topology file describes (inside a container: `wasmnode nodes --config FILE`).
async fn connect_hidden(node: Option<String>, config: Option<PathBuf>) -> anyhow::Result<Peer> {
    let cfg = match &config {
        Some(path) => Some(Config::load(path, &Overrides::default()).map_err(|e| anyhow!("{e}"))?),
        None => None,
    };
    let node = match (node, &cfg) {
        (Some(n), _) => n,
        (None, Some(c)) => c.node.name.to_string(),
        (None, None) => return Err(anyhow!("which node? give --node NAME, or --config FILE to ask the node that file describes")),
    };
    // With [node.tls], the CLI presents the node's own certificate, so it names itself
    // under the node's host, which that certificate names.
    let (tls, host) = match cfg.as_ref().and_then(|c| c.node.tls.clone().map(|t| (t, c.node.name.host.clone()))) {
        Some((files, host)) => (Some(std::sync::Arc::new(wasmnode::tls::Tls::load(files, &host).map_err(|e| anyhow!(e))?)), host),
        None => (None, "127.0.0.1".to_string()),
    };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let source = cfg.map(|c| c.node.cookie).unwrap_or_else(|| CookieSource::Env(DEFAULT_COOKIE_ENV.into()));
    let cookie = source.resolve().map_err(|e| anyhow!(e))?;
    let me = format!("wasmnode-cli-{}@{host}", std::process::id());
    let (tx, _rx) = mpsc::unbounded_channel();
    let dist = Dist::new(DistConfig { hidden: true, tls, ..DistConfig::new(me, cookie) }, tx);
    // The events receiver is dropped: the CLI only reads replies, which dist routes itself.
    dist.connect(&node).await.with_context(|| format!("cannot connect to {node}"))
}

/// One control-plane request as a hidden node; the JSON answer.
async fn ask(node: Option<String>, config: Option<PathBuf>, request: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let peer = connect_hidden(node, config).await?;
    let timeout = Duration::from_millis(request["timeout_ms"].as_u64().unwrap_or(5000)) + Duration::from_secs(30);
    let body = peer.request(Service::Control, Bytes::from(request.to_string()), timeout).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// An error answer in words: `not_found`, `already_started on b@…`, `timeout`, …
fn describe(v: &serde_json::Value) -> String {
    let mut s = v["error"].as_str().unwrap_or("unexpected answer").to_string();
    if let Some(node) = v["node"].as_str() {
        s.push_str(&format!(" on {node}"));
    }
    if let Some(reason) = v["reason"].as_str() {
        s.push_str(&format!(": {reason}"));
    }
    s
}

async fn nodes(node: Option<String>, json: bool, watch: bool, config: Option<PathBuf>) -> anyhow::Result<()> {
    let peer = connect_hidden(node, config).await?;
    if !watch {
        let body = peer.request(Service::Control, Bytes::from_static(br#"{"op":"nodes"}"#), Duration::from_secs(5)).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_members(&v);
        }
        return Ok(());
    }
    let mut replies = peer.subscribe(Service::Control, Bytes::from_static(br#"{"op":"watch"}"#));
    let mut first = true;
    while let Some(Frame::Reply { body, .. }) = replies.recv().await {
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if json {
            println!("{}", serde_json::to_string(&v)?);
        } else if first {
            print_members(&v);
        } else {
            let at = rfc3339(v["at_ms"].as_u64().unwrap_or(0));
            let who = v["node"].as_str().unwrap_or("?");
            match v["event"].as_str() {
                Some("up") => println!("{at} node up {who}"),
                Some("down") => println!("{at} node down {who}: {}", v["reason"].as_str().unwrap_or("?")),
                _ => println!("{v}"),
            }
        }
        first = false;
    }
    Err(anyhow!("connection to {} closed", peer.name()))
}

fn print_members(v: &serde_json::Value) {
    let empty = Vec::new();
    let members = v["members"].as_array().unwrap_or(&empty);
    println!("{} members of {}:", members.len(), v["node"].as_str().unwrap_or("?"));
    for m in members {
        let since = rfc3339(m["since_ms"].as_u64().unwrap_or(0));
        let me = if m["self"].as_bool() == Some(true) { "  (this node)" } else { "" };
        println!("  {:<40} since {since}{me}", m["name"].as_str().unwrap_or("?"));
    }
}

/// `wasmnode probe URL`: 0 when the answer is 2xx, 1 for any other answer, 2 when there is none.
fn probe(runtime: &tokio::runtime::Runtime, url: &str, timeout_ms: u64) -> ExitCode {
    let answer = runtime.block_on(async { tokio::time::timeout(Duration::from_millis(timeout_ms), wasmnode::http::get(url)).await });
    match answer {
        Ok(Ok((status, body))) => {
            print!("{body}");
            if (200..300).contains(&status) {
                ExitCode::SUCCESS
            } else {
                eprintln!("{url}: HTTP {status}");
                ExitCode::from(1)
            }
        }
        Ok(Err(e)) => {
            eprintln!("error: {url}: {e}");
            ExitCode::from(2)
        }
        Err(_) => {
            eprintln!("error: {url}: no answer within {timeout_ms} ms");
            ExitCode::from(2)
        }
    }
}
