//! `wasmnode`: run a node, check a topology, or act on a running cluster as a hidden
//! node authenticated by the cookie (Erlang's remote console).
//!
//! Every command exits with one of [`Exit`]'s codes (docs/operations.md has the table).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use clap::{CommandFactory, Parser, Subcommand};
use tokio::sync::mpsc;
use wasmnode::config::{Config, CookieSource, Overrides, DEFAULT_COOKIE_ENV};
use wasmnode::dist::{Dist, DistConfig, Peer};
use wasmnode::registry::WorkerName;
use wasmnode::time::rfc3339;
use wasmnode_proto::{Frame, Service};

#[derive(Parser)]
#[command(
    name = "wasmnode",
    version,
    about = "A node host for WebAssembly applications",
    after_help = "Exit codes: 0 done, 1 other failure (a bad topology, a failed check), 2 usage error, \
                  3 cannot reach the node, 4 refused by the cluster, 5 the worker failed, 6 timed out."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a command ends: its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Anything else: a topology that does not load, a check that found problems.
    Failure = 1,
    /// A command line that does not parse (clap's own code), or a malformed argument.
    Usage = 2,
    /// The node could not be reached: no connection, a refused handshake (cookie), or
    /// the node running the worker went down.
    Unreachable = 3,
    /// The cluster refused the request: no such worker or kind, already started, a bad request.
    Refused = 4,
    /// The worker failed: it trapped, returned an error, or refused to start.
    WorkerFailed = 5,
    /// No answer in time.
    Timeout = 6,
}

/// An error that knows its exit code.
#[derive(Debug)]
struct Coded(Exit, String);

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Coded {}

fn coded(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Coded(exit, message.into()))
}

/// The exit code of a control-plane error answer (`{"error": …}`).
fn exit_of(v: &serde_json::Value) -> Exit {
    match v["error"].as_str() {
        Some("timeout") => Exit::Timeout,
        Some("failed") => Exit::WorkerFailed,
        Some("unavailable" | "in_doubt") => Exit::Unreachable,
        _ => Exit::Refused,
    }
}

/// `KIND/KEY`, e.g. `counter/c1`.
fn worker_name(name: &str) -> anyhow::Result<(&str, &str)> {
    match name.split_once('/') {
        Some((kind, key)) if !kind.is_empty() && !key.is_empty() => match WorkerName::check(kind, key) {
            Ok(()) => Ok((kind, key)),
            Err(e) => Err(coded(Exit::Usage, e.to_string())),
        },
        _ => Err(coded(Exit::Usage, format!("`{}` is not KIND/KEY (for example counter/c1)", name.escape_debug()))),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a topology file.
    Run {
        /// The topology file (TOML).
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
        /// The topology file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Without what only a running node has: an unset ${VAR} stands for a
        /// placeholder (127.0.0.1 for *IP, else the name in lower case), a plugin's unset
        /// env variable is empty, and the cookie, the gateway token and the TLS files are
        /// not read. For CI.
        #[arg(long)]
        offline: bool,
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
        /// KIND/KEY, e.g. counter/c1.
        name: String,
        /// Arguments handed to the worker's init (text).
        #[arg(default_value = "")]
        args: String,
        /// Take the cookie source (and, without --node, the node) from this topology file
        /// instead of WASMNODE_COOKIE.
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
        /// How long to wait for the reply, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// A call id: the worker applies a call with this id once, however often it is
        /// retried (after a timeout or `unavailable`, retry with the same id).
        #[arg(long)]
        id: Option<String>,
        /// Take the cookie source (and, without --node, the node) from this topology file
        /// instead of WASMNODE_COOKIE.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// List the workers running on every node.
    Workers {
        /// The node to ask (default: the one --config describes).
        #[arg(long)]
        node: Option<String>,
        /// Print JSON (with each durable name's owner and replicas) instead of a table.
        #[arg(long)]
        json: bool,
        /// Take the cookie source (and, without --node, the node) from this topology file
        /// instead of WASMNODE_COOKIE.
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
        /// The hosts to make certificates for.
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// GET a URL of a node's HTTP port (e.g. http://127.0.0.1:9090/readyz) and print the
    /// body; exits 0 on a 2xx answer, 1 on another answer, 3 with no answer. The image has
    /// no curl: Docker's HEALTHCHECK and `docker exec` use this.
    Probe {
        /// The URL (http://HOST:PORT/PATH).
        url: String,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print shell completions for SHELL (e.g. `wasmnode completions bash > /etc/bash_completion.d/wasmnode`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Run { config, name, listen } = cli.command {
        if let Err(e) = wasmnode::logging::init() {
            eprintln!("error: {e}");
            return ExitCode::from(Exit::Usage as u8);
        }
        wasmnode::logging::log_panics();
        let result = Config::load(&config, &Overrides { name, listen, offline: false })
            .map_err(|e| anyhow!("{e}"))
            .and_then(|cfg| Ok((wasmnode::node::runtime_for(&cfg)?, cfg)))
            .and_then(|(runtime, cfg)| runtime.block_on(wasmnode::node::run(cfg)));
        return exit(result);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if let Command::Probe { url, timeout_ms } = &cli.command {
        return probe(&runtime, url, *timeout_ms);
    }
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "wasmnode", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { .. } => unreachable!("handled above"),
            Command::Check { config, offline } => {
                let overrides = Overrides { offline, ..Overrides::default() };
                let errors = match Config::load_all(&config, &overrides) {
                    Ok(cfg) => {
                        // What the node would warn about at start, said now: it passes, but
                        // the operator should read it before deploying.
                        for w in &cfg.warnings {
                            eprintln!("warning: {w}");
                        }
                        if let Some(p) = cfg.node.cookie.world_readable().filter(|_| !offline) {
                            eprintln!("warning: {}", CookieSource::readable_warning(p));
                        }
                        if offline {
                            // A variable a topology hands its plugin (`env = [...]`) that only
                            // a running pod sets is handed over empty.
                            for var in cfg.topologies.iter().flat_map(|t| &t.env) {
                                if std::env::var_os(var).is_none() {
                                    std::env::set_var(var, "");
                                }
                            }
                        }
                        tokio::task::spawn_blocking(move || wasmnode::node::check(&cfg, offline)).await?
                    }
                    Err(errors) => errors,
                };
                println!("{}", wasmnode::runtime::cache::describe());
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
            Command::Start { node, name, args, config } => {
                let (kind, key) = worker_name(&name)?;
                let v = ask(node, config, serde_json::json!({ "op": "start", "kind": kind, "key": key, "args": args })).await?;
                match v["started"].as_str() {
                    Some(on) => {
                        println!("started {name} on {on}");
                        Ok(())
                    }
                    None => Err(coded(exit_of(&v), format!("{name}: {}", describe(&v)))),
                }
            }
            Command::Call { node, name, msg, timeout_ms, id, config } => {
                let (kind, key) = worker_name(&name)?;
                let request = serde_json::json!({ "op": "call", "kind": kind, "key": key, "msg": msg, "timeout_ms": timeout_ms, "id": id });
                let v = ask(node, config, request).await?;
                match (v["reply"].as_str(), v["reply_hex"].as_str()) {
                    (Some(text), _) => println!("{text}"),
                    (None, Some(hex)) => println!("{hex}"),
                    _ => return Err(coded(exit_of(&v), format!("{name}: {}", describe(&v)))),
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
            Command::Probe { .. } | Command::Completions { .. } => unreachable!("handled above"),
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
            eprintln!("error: {}", once(&e));
            let code = e.chain().find_map(|c| c.downcast_ref::<Coded>()).map_or(Exit::Failure, |c| c.0);
            ExitCode::from(code as u8)
        }
    }
}

/// An error and its causes in one line, each said once: a cause whose text its
/// context already contains (an I/O error that wraps the handshake's refusal, say) is
/// not repeated.
fn once(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
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
        (None, None) => return Err(coded(Exit::Usage, "which node? give --node NAME, or --config FILE to ask the node that file describes")),
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
    dist.connect(&node).await.map_err(|e| coded(Exit::Unreachable, format!("cannot connect to {node}: {e}")))
}

/// One control-plane request as a hidden node; the JSON answer.
async fn ask(node: Option<String>, config: Option<PathBuf>, request: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let peer = connect_hidden(node, config).await?;
    let timeout = Duration::from_millis(request["timeout_ms"].as_u64().unwrap_or(5000)) + Duration::from_secs(30);
    // A script's trace (the OpenTelemetry convention for processes: `TRACEPARENT`) goes
    // with the request, so the node's spans of a call join it.
    let trace = std::env::var("TRACEPARENT").ok().and_then(|t| wasmnode_proto::TraceContext::from_traceparent(&t));
    let body = peer.request_traced(Service::Control, Bytes::from(request.to_string()), trace, timeout).await.map_err(request_failed(&peer))?;
    Ok(serde_json::from_slice(&body)?)
}

/// A control request that got no answer: timed out, or the connection closed.
fn request_failed(peer: &Peer) -> impl Fn(std::io::Error) -> anyhow::Error + '_ {
    move |e| match e.kind() {
        std::io::ErrorKind::TimedOut => coded(Exit::Timeout, format!("{} did not answer in time", peer.name())),
        _ => coded(Exit::Unreachable, format!("{}: {e}", peer.name())),
    }
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
        let body = peer.request(Service::Control, Bytes::from_static(br#"{"op":"nodes"}"#), Duration::from_secs(5)).await.map_err(request_failed(&peer))?;
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
    Err(coded(Exit::Unreachable, format!("connection to {} closed", peer.name())))
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

/// `wasmnode probe URL`: 0 when the answer is 2xx, 1 for any other answer, 3 when there is none.
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
            ExitCode::from(Exit::Unreachable as u8)
        }
        Err(_) => {
            eprintln!("error: {url}: no answer within {timeout_ms} ms");
            ExitCode::from(Exit::Unreachable as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_argument_has_help() {
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(sub.get_name().to_string());
            }
            for arg in sub.get_arguments().filter(|a| !["help", "version"].contains(&a.get_id().as_str())) {
                if arg.get_help().is_none() {
                    missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_are_said_once_with_their_code() {
        let inner = std::io::Error::other("cookie mismatch");
        let e = anyhow::Error::new(inner).context("cannot connect to a@h: cookie mismatch");
        assert_eq!(once(&e), "cannot connect to a@h: cookie mismatch");
        let e = coded(Exit::Timeout, "b@h did not answer in time").context("nodes");
        assert_eq!(once(&e), "nodes: b@h did not answer in time");
        assert_eq!(e.chain().find_map(|c| c.downcast_ref::<Coded>()).map(|c| c.0), Some(Exit::Timeout));
        assert!(matches!(worker_name("counter/c1"), Ok(("counter", "c1"))));
        for bad in ["counter", "counter/", "/c1", "counter/c\n1", "a b/c1"] {
            let e = worker_name(bad).unwrap_err();
            assert_eq!(e.downcast_ref::<Coded>().map(|c| c.0), Some(Exit::Usage), "{bad}");
        }
        assert_eq!(exit_of(&serde_json::json!({"error": "not_found"})), Exit::Refused);
        assert_eq!(exit_of(&serde_json::json!({"error": "failed"})), Exit::WorkerFailed);
        // A call whose node went down under way: in doubt, and the same code as before it
        // had its own word (3: the node could not be reached).
        let doubt = wasmnode::control::call_error_json(&wasmnode::registry::CallError::went_down("b@h"), "counter/c1");
        assert_eq!(doubt["error"], "in_doubt", "{doubt}");
        assert_eq!(exit_of(&doubt), Exit::Unreachable);
        let refused = wasmnode::control::call_error_json(&wasmnode::registry::CallError::Unavailable("b@h is not connected".into()), "counter/c1");
        assert_eq!((refused["error"].as_str(), exit_of(&refused)), (Some("unavailable"), Exit::Unreachable));
    }
}
